use super::*;
use crate::{RECORD_HEADER_BYTES, ReadError, RetentionReport};
use tempfile::tempdir;

/// Records of exactly 44 bytes (20-byte payloads): four fit a 200-byte segment.
fn fixed(i: u64) -> Vec<u8> {
    format!("{i:020}").into_bytes()
}

fn append_fixed(log: &mut Log, from: u64, to: u64) {
    for i in from..to {
        assert_eq!(log.append(ts(i), &fixed(i)).unwrap(), Offset(i));
    }
}

fn assert_fixed(records: &[crate::Record], from: u64, to: u64) {
    let offsets: Vec<u64> = records.iter().map(|r| r.offset.get()).collect();
    assert_eq!(offsets, (from..to).collect::<Vec<_>>());
    for r in records {
        assert_eq!(r.payload, fixed(r.offset.get()));
        assert_eq!(r.timestamp_ms, ts(r.offset.get()));
    }
}

#[test]
fn segments_roll_at_segment_bytes_max_and_reads_cross_boundaries() {
    let dir = tempdir().unwrap();
    let config = small_config();
    let mut log = open(dir.path(), &config);
    append_fixed(&mut log, 0, 20);
    log.commit().unwrap();
    let names: Vec<String> = segment_files(dir.path(), ".log")
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [0, 4, 8, 12, 16].map(|b| format!("{b:020}.log")),
        "4 records of 44 bytes per 200-byte segment"
    );
    for path in segment_files(dir.path(), ".log") {
        assert_eq!(fs::metadata(path).unwrap().len(), 4 * 44);
    }
    assert_eq!(log.stats().segments, 5);
    assert_eq!(log.stats().bytes, 20 * 44);
    let reader = log.reader();
    // Every start offset, batches spanning several segments.
    for from in 0..20 {
        assert_fixed(
            &reader.read(Offset(from), 1 << 20, 9).unwrap(),
            from,
            20.min(from + 9),
        );
    }
    assert_fixed(&reader.read(Offset(3), 40, 100).unwrap(), 3, 5);
    drop(log);
    let log = open(dir.path(), &config);
    assert_eq!(log.stats().segments, 5);
    assert_fixed(&log.reader().read(Offset(0), 1 << 20, 100).unwrap(), 0, 20);
}

#[test]
fn a_record_larger_than_a_segment_gets_a_segment_of_its_own() {
    let dir = tempdir().unwrap();
    let mut log = open(dir.path(), &small_config());
    log.append(ts(0), b"a").unwrap();
    log.append(ts(1), &[7; 500]).unwrap();
    log.append(ts(2), b"c").unwrap();
    log.commit().unwrap();
    assert_eq!(log.stats().segments, 3);
    let records = log.reader().read(Offset(0), usize::MAX, 10).unwrap();
    assert_eq!(records[1].payload, [7; 500]);
    assert_eq!(records.len(), 3);
}

#[test]
fn index_seek_lands_within_one_interval_below_the_offset() {
    let dir = tempdir().unwrap();
    let config = LogConfig {
        segment_bytes_max: 1 << 20,
        index_interval_bytes: 4096,
        fsync: FsyncPolicy::Never,
        ..LogConfig::default()
    };
    let mut log = open(dir.path(), &config);
    let payload = [1u8; 100];
    let record = (RECORD_HEADER_BYTES + payload.len()) as u64;
    let count = 5000;
    for i in 0..count {
        log.append(ts(i), &payload).unwrap();
    }
    log.commit().unwrap();
    let segment = &log.segments()[0];
    assert_eq!(log.segments().len(), 1, "one big segment");
    let entries = segment.index_len() as u64;
    let expected_entries = count * record / (4096 + record);
    assert!(
        entries >= expected_entries && entries <= expected_entries + 2,
        "{entries} entries"
    );
    for n in [0, 1, 33, 34, 1000, 2500, 4999] {
        let (position, offset) = segment.seek(Offset(n));
        let target = n * record;
        assert_eq!(
            position,
            offset.get() * record,
            "entry points at its record"
        );
        assert!(position <= target);
        assert!(
            target - position <= 4096 + record,
            "seek for {n} starts {} bytes early",
            target - position
        );
    }
    // And the index survives a reopen (rewritten for the active segment).
    drop(log);
    let log = open(dir.path(), &config);
    assert_eq!(log.segments()[0].index_len() as u64, entries);
    assert_eq!(log.segments()[0].seek(Offset(4999)).0 % record, 0);
}

#[test]
fn retention_by_bytes_deletes_oldest_segments_and_keeps_the_active_one() {
    let dir = tempdir().unwrap();
    let config = LogConfig {
        retention_bytes: Some(400),
        ..small_config()
    };
    let mut log = open(dir.path(), &config);
    append_fixed(&mut log, 0, 20);
    log.commit().unwrap();
    // 5 segments of 176 bytes: deleting 3 brings 880 bytes down to 352.
    let report = log.apply_retention(ts(0)).unwrap();
    assert_eq!(
        report,
        RetentionReport {
            deleted_segments: 3,
            deleted_bytes: 3 * 176,
            start_offset: Offset(12),
        }
    );
    assert_eq!(log.start_offset(), Offset(12));
    assert_eq!(log.stats().bytes, 2 * 176);
    assert_eq!(segment_files(dir.path(), ".log").len(), 2);
    assert_eq!(segment_files(dir.path(), ".idx").len(), 2);
    let reader = log.reader();
    assert_eq!(reader.start_offset(), Offset(12));
    assert!(matches!(
        reader.read(Offset(11), 1 << 20, 100),
        Err(ReadError::OutOfRange {
            requested: Offset(11),
            start: Offset(12),
            committed: Offset(20),
        })
    ));
    assert_fixed(&reader.read(Offset(12), 1 << 20, 100).unwrap(), 12, 20);
    // Nothing more to delete: the active segment stays even when alone over the limit.
    assert_eq!(log.apply_retention(ts(0)).unwrap().deleted_segments, 0);
    drop(log);
    let log = open(dir.path(), &config);
    assert_eq!(log.start_offset(), Offset(12));
    assert_fixed(&read_all_fixed(&log, 12), 12, 20);
}

fn read_all_fixed(log: &Log, from: u64) -> Vec<crate::Record> {
    log.reader()
        .read(Offset(from), usize::MAX, usize::MAX)
        .unwrap()
}

#[test]
fn retention_by_age_deletes_segments_whose_newest_record_is_too_old() {
    let dir = tempdir().unwrap();
    let config = LogConfig {
        retention_ms: Some(100),
        ..small_config()
    };
    let mut log = open(dir.path(), &config);
    append_fixed(&mut log, 0, 20);
    log.commit().unwrap();
    // Record i has timestamp 1000 + 10 i; segment k holds 4k..4k+4, newest 1030 + 40 k.
    // At now = 1170 the cutoff is 1070: segment 0 (1030) goes, segment 1 (1070) is not older.
    let report = log.apply_retention(TimestampMs(1170)).unwrap();
    assert_eq!(report.deleted_segments, 1);
    assert_eq!(log.start_offset(), Offset(4));
    assert_eq!(
        log.apply_retention(TimestampMs(1171))
            .unwrap()
            .deleted_segments,
        1
    );
    assert_eq!(log.start_offset(), Offset(8));
    // Far in the future everything sealed is old, but the active segment stays.
    log.apply_retention(TimestampMs(u64::MAX)).unwrap();
    assert_eq!(log.start_offset(), Offset(16));
    assert_eq!(log.stats().segments, 1);
    assert_fixed(&read_all_fixed(&log, 16), 16, 20);
    // Ages come from the index after a reopen, without reading the segments.
    drop(log);
    let dir = tempdir().unwrap();
    let mut log = open(dir.path(), &config);
    append_fixed(&mut log, 0, 20);
    log.commit().unwrap();
    drop(log);
    let mut log = open(dir.path(), &config);
    assert_eq!(
        log.apply_retention(TimestampMs(1171)).unwrap().start_offset,
        Offset(8)
    );
}

#[test]
fn retention_never_deletes_segments_with_uncommitted_records() {
    let dir = tempdir().unwrap();
    let config = LogConfig {
        retention_bytes: Some(0),
        ..small_config()
    };
    let mut log = open(dir.path(), &config);
    append_fixed(&mut log, 0, 6);
    log.commit().unwrap();
    append_fixed(&mut log, 6, 14); // rolls twice, none committed
    assert_eq!(log.stats().segments, 4);
    let report = log.apply_retention(TimestampMs(u64::MAX)).unwrap();
    // Segment 0..4 is wholly committed; 4..8 holds uncommitted 6 and 7.
    assert_eq!(report.deleted_segments, 1);
    assert_eq!(log.start_offset(), Offset(4));
    log.commit().unwrap();
    log.apply_retention(TimestampMs(u64::MAX)).unwrap();
    assert_eq!(log.start_offset(), Offset(12));
}

#[test]
fn reader_racing_with_retention_gets_out_of_range_not_an_error() {
    let dir = tempdir().unwrap();
    let config = LogConfig {
        retention_bytes: Some(0),
        ..small_config()
    };
    let mut log = open(dir.path(), &config);
    append_fixed(&mut log, 0, 20);
    log.commit().unwrap();
    let reader = log.reader();
    // The reader took its view of the segments, then retention deleted their files.
    let stale = reader.view();
    log.apply_retention(TimestampMs(0)).unwrap();
    match reader.read_view(&stale, Offset(0), 1 << 20, 100) {
        Err(ReadError::OutOfRange {
            requested, start, ..
        }) => {
            assert_eq!(requested, Offset(0));
            assert_eq!(start, Offset(16));
        }
        other => panic!("expected OutOfRange, got {other:?}"),
    }
    // The surviving active segment is still readable through the stale view.
    assert_fixed(
        &reader.read_view(&stale, Offset(17), 1 << 20, 100).unwrap(),
        17,
        20,
    );
}

#[test]
fn retention_cutoff_names_the_first_kept_segment_without_deleting_anything() {
    let dir = tempdir().unwrap();
    // The log's own config has no retention: the limits are arguments (a replicated log
    // compacts through a snapshot instead of deleting behind the consensus core's back).
    let mut log = open(dir.path(), &small_config());
    append_fixed(&mut log, 0, 20);
    log.commit().unwrap();
    assert_eq!(log.retention_cutoff(ts(0), None, None), Offset(0));
    // Same arithmetic as retention_by_bytes_...: 3 of 5 segments go.
    assert_eq!(log.retention_cutoff(ts(0), Some(400), None), Offset(12));
    // Same as retention_by_age_...: at 1170 with 100 ms only segment 0 is too old.
    assert_eq!(
        log.retention_cutoff(TimestampMs(1170), None, Some(100)),
        Offset(4)
    );
    assert_eq!(log.start_offset(), Offset(0), "nothing deleted");
    assert_eq!(segment_files(dir.path(), ".log").len(), 5);
}
