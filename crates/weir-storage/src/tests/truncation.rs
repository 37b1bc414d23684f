//! `Log::truncate_from`: the cases, durability, crash safety, and readers racing it.

use super::*;
use crate::{LogError, OpenError, ReadError};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};
use tempfile::tempdir;

/// Records of exactly 44 bytes (20-byte payloads): four fit a 200-byte segment of
/// [`small_config`], so segment `k` holds offsets `4k..4k+4`.
fn fixed(i: u64) -> Vec<u8> {
    format!("{i:020}").into_bytes()
}

fn append_fixed(log: &mut Log, from: u64, to: u64) {
    for i in from..to {
        assert_eq!(log.append(ts(i), &fixed(i)).unwrap(), Offset(i));
    }
}

fn assert_fixed(records: &[Record], from: u64, to: u64) {
    let offsets: Vec<u64> = records.iter().map(|r| r.offset.get()).collect();
    assert_eq!(offsets, (from..to).collect::<Vec<_>>());
    for r in records {
        assert_eq!(r.payload, fixed(r.offset.get()));
        assert_eq!(r.timestamp_ms, ts(r.offset.get()));
    }
}

fn read_everything(log: &Log) -> Vec<Record> {
    log.reader()
        .read(log.start_offset(), usize::MAX, usize::MAX)
        .unwrap()
}

/// Names and bytes of a directory's segment files (`.log`, `.idx`) and truncation marker.
fn dir_contents(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap() != "writer.lock")
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, fs::read(&p).unwrap())
        })
        .collect()
}

/// The files a log has after appending only `0..to` with [`payload`] (varying sizes) under
/// `config`, and committing.
fn reference_contents(config: &LogConfig, to: u64) -> BTreeMap<String, Vec<u8>> {
    let dir = tempdir().unwrap();
    let mut log = open(dir.path(), config);
    if to > 0 {
        append_committed(&mut log, 0, to);
    }
    drop(log);
    dir_contents(dir.path())
}

/// Varying record sizes and a dense index: entries land mid-segment, rolls at varying offsets.
fn dense_config() -> LogConfig {
    LogConfig {
        segment_bytes_max: 300,
        index_interval_bytes: 50,
        ..small_config()
    }
}

#[test]
fn truncate_in_the_active_segment_then_append_continues_at_from() {
    let dir = tempdir().unwrap();
    let mut log = open(dir.path(), &small_config());
    append_fixed(&mut log, 0, 7); // segments 0..4 and 4..8 (active, 3 records)
    log.commit().unwrap();
    log.truncate_from(Offset(5)).unwrap();
    assert_eq!(log.next_offset(), Offset(5));
    assert_eq!(log.committed_offset(), Offset(5));
    assert_eq!(log.synced_offset(), Offset(5));
    assert_eq!(log.reader().committed_offset(), Offset(5));
    assert_eq!(log.stats().segments, 2);
    assert_eq!(log.stats().bytes, 5 * 44);
    let active = dir.path().join("00000000000000000004.log");
    assert_eq!(fs::metadata(&active).unwrap().len(), 44);
    assert_fixed(&read_everything(&log), 0, 5);
    // The next append takes the freed offset, and the log goes on as if 5 and 6 never were.
    assert_eq!(log.append(ts(5), b"new five").unwrap(), Offset(5));
    assert_eq!(log.commit().unwrap(), Offset(6));
    let records = log.reader().read(Offset(4), usize::MAX, 10).unwrap();
    assert_eq!(records.len(), 2);
    assert_eq!(records[0].payload, fixed(4));
    assert_eq!(records[1].payload, b"new five");
    append_fixed(&mut log, 6, 10); // rolls again at 8
    log.commit().unwrap();
    assert_eq!(log.stats().segments, 3);
}

#[test]
fn truncate_across_segments_reactivates_the_sealed_segment_and_deletes_later_files() {
    let dir = tempdir().unwrap();
    let config = small_config();
    let mut log = open(dir.path(), &config);
    append_fixed(&mut log, 0, 18); // segments 0, 4, 8, 12, 16 (active)
    log.commit().unwrap();
    let fsyncs = log.stats().fsyncs;
    log.truncate_from(Offset(6)).unwrap();
    let names = |suffix| -> Vec<String> {
        segment_files(dir.path(), suffix)
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect()
    };
    assert_eq!(names(".log"), [0, 4].map(|b| format!("{b:020}.log")));
    assert_eq!(names(".idx"), [0, 4].map(|b| format!("{b:020}.idx")));
    assert!(!dir.path().join("truncation.pending").exists());
    // Marker (file + directory), the cut segment, the directory, the marker's deletion.
    assert_eq!(log.stats().fsyncs, fsyncs + 5);
    assert_eq!(log.stats().segments, 2);
    assert_eq!(log.stats().bytes, 6 * 44);
    assert_eq!(log.next_offset(), Offset(6));
    assert_eq!(log.committed_offset(), Offset(6));
    let segments = log.segments();
    assert!(segments[0].sealed().is_some());
    assert!(segments[1].sealed().is_none(), "segment 4 is active again");
    assert_fixed(&read_everything(&log), 0, 6);
    // It fills up and rolls exactly where it did before.
    append_fixed(&mut log, 6, 18);
    log.commit().unwrap();
    assert_eq!(
        names(".log"),
        [0, 4, 8, 12, 16].map(|b| format!("{b:020}.log"))
    );
    assert_fixed(&read_everything(&log), 0, 18);
}

#[test]
fn truncate_at_a_segment_base_offset_removes_that_whole_segment() {
    let dir = tempdir().unwrap();
    let mut log = open(dir.path(), &small_config());
    append_fixed(&mut log, 0, 14);
    log.commit().unwrap();
    log.truncate_from(Offset(8)).unwrap();
    // Segment 8 goes entirely; segment 4 (full) is the active one, and the next append rolls.
    assert_eq!(segment_files(dir.path(), ".log").len(), 2);
    assert_eq!(log.stats().segments, 2);
    assert!(log.segments()[1].sealed().is_none());
    assert_eq!(log.append(ts(8), &fixed(8)).unwrap(), Offset(8));
    log.commit().unwrap();
    assert_eq!(log.stats().segments, 3);
    assert_eq!(log.segments()[2].base_offset, Offset(8));
    assert_fixed(&read_everything(&log), 0, 9);
}

#[test]
fn truncate_to_start_offset_empties_the_log() {
    let dir = tempdir().unwrap();
    let config = LogConfig {
        retention_bytes: Some(300), // keeps segments 8 and 12
        ..small_config()
    };
    let mut log = open(dir.path(), &config);
    append_fixed(&mut log, 0, 14);
    log.commit().unwrap();
    log.apply_retention(ts(0)).unwrap();
    assert_eq!(log.start_offset(), Offset(8));
    log.truncate_from(Offset(8)).unwrap();
    assert_eq!(log.start_offset(), Offset(8));
    assert_eq!(log.next_offset(), Offset(8));
    assert_eq!(log.committed_offset(), Offset(8));
    assert_eq!(log.stats().segments, 1);
    assert_eq!(log.stats().bytes, 0);
    let reader = log.reader();
    assert_eq!(reader.read(Offset(8), 100, 10).unwrap(), []);
    assert_eq!(segment_files(dir.path(), ".log").len(), 1);
    let file = dir.path().join("00000000000000000008.log");
    assert_eq!(fs::metadata(&file).unwrap().len(), 0);
    assert_eq!(log.append(ts(8), &fixed(8)).unwrap(), Offset(8));
    log.commit().unwrap();
    assert_fixed(&read_everything(&log), 8, 9);
    drop(log);
    // From offset 0 too, and the emptied log reopens empty.
    let dir = tempdir().unwrap();
    let mut log = open(dir.path(), &small_config());
    append_fixed(&mut log, 0, 10);
    log.truncate_from(Offset(0)).unwrap();
    assert_eq!((log.next_offset(), log.stats().bytes), (Offset(0), 0));
    drop(log);
    let log = open(dir.path(), &small_config());
    assert_eq!(log.next_offset(), Offset(0));
    assert_eq!(log.stats().segments, 1);
}

#[test]
fn truncate_at_or_after_next_offset_is_a_no_op() {
    let dir = tempdir().unwrap();
    let mut log = open(dir.path(), &small_config());
    append_fixed(&mut log, 0, 6);
    log.commit().unwrap();
    append_fixed(&mut log, 6, 7);
    let before = (log.stats(), log.committed_offset(), log.synced_offset());
    for from in [7, 8, u64::MAX] {
        log.truncate_from(Offset(from)).unwrap();
        assert_eq!(log.next_offset(), Offset(7));
        assert_eq!(
            (log.stats(), log.committed_offset(), log.synced_offset()),
            before
        );
    }
    assert_eq!(log.commit().unwrap(), Offset(7));
    assert_fixed(&read_everything(&log), 0, 7);
}

#[test]
fn truncate_below_start_offset_is_an_error_and_changes_nothing() {
    let dir = tempdir().unwrap();
    let config = LogConfig {
        retention_bytes: Some(300), // keeps segments 8 and 12
        ..small_config()
    };
    let mut log = open(dir.path(), &config);
    append_fixed(&mut log, 0, 14);
    log.commit().unwrap();
    log.apply_retention(ts(0)).unwrap();
    let before = dir_contents(dir.path());
    for from in [0, 7] {
        match log.truncate_from(Offset(from)) {
            Err(LogError::TruncateBelowStart { from: f, start }) => {
                assert_eq!((f, start), (Offset(from), Offset(8)));
            }
            other => panic!("expected TruncateBelowStart, got {other:?}"),
        }
    }
    assert_eq!(dir_contents(dir.path()), before);
    // Not a failure of the log: it goes on.
    assert_eq!(log.append(ts(14), &fixed(14)).unwrap(), Offset(14));
    log.commit().unwrap();
    assert_fixed(&read_everything(&log), 8, 15);
}

#[test]
fn truncate_discards_unflushed_buffered_appends() {
    let dir = tempdir().unwrap();
    let config = LogConfig {
        segment_bytes_max: 1 << 20,
        ..small_config()
    };
    let mut log = open(dir.path(), &config);
    append_fixed(&mut log, 0, 4);
    log.commit().unwrap();
    append_fixed(&mut log, 4, 10); // buffered, not even written to the file
    assert_eq!(log.stats().bytes, 10 * 44);
    log.truncate_from(Offset(6)).unwrap();
    assert_eq!(log.stats().bytes, 6 * 44);
    // Kept buffered records became durable and were not made visible: commit does that.
    assert_eq!(log.synced_offset(), Offset(6));
    assert_eq!(log.committed_offset(), Offset(4));
    assert_eq!(log.reader().committed_offset(), Offset(4));
    let fsyncs = log.stats().fsyncs;
    assert_eq!(log.commit().unwrap(), Offset(6));
    assert_eq!(log.stats().fsyncs, fsyncs, "nothing new to sync");
    drop(log);
    let log = open(dir.path(), &config);
    assert_eq!(log.next_offset(), Offset(6));
    assert_fixed(&read_everything(&log), 0, 6);
}

#[test]
fn truncated_log_files_equal_those_of_a_log_that_only_ever_appended_up_to_from() {
    let config = dense_config();
    const N: u64 = 40;
    let full = reference_contents(&config, N);
    assert!(full.len() > 8, "several segments: {:?}", full.keys());
    for from in 0..=N {
        let dir = tempdir().unwrap();
        let mut log = open(dir.path(), &config);
        append_committed(&mut log, 0, N);
        log.truncate_from(Offset(from)).unwrap();
        assert_eq!(
            dir_contents(dir.path()),
            reference_contents(&config, from),
            "truncated from {from}"
        );
        // And appending the rest again gives back the original files.
        append_committed(&mut log, from, N);
        drop(log);
        assert_eq!(dir_contents(dir.path()), full, "re-appended from {from}");
    }
}

#[test]
fn reopen_after_truncate_shows_exactly_the_truncated_log_with_consistent_indexes() {
    let config = dense_config();
    for from in [0, 3, 9, 17, 25, 33] {
        let dir = tempdir().unwrap();
        let mut log = open(dir.path(), &config);
        append_committed(&mut log, 0, 40);
        log.truncate_from(Offset(from)).unwrap();
        let stats = log.stats();
        drop(log);
        let log = open(dir.path(), &config);
        let report = log.recovery();
        assert_eq!(report.truncation, None);
        assert!(report.indexes_rebuilt.is_empty(), "{report:?}");
        assert_eq!(report.resumed_truncation, None);
        assert_eq!(log.next_offset(), Offset(from));
        assert_eq!(log.committed_offset(), Offset(from));
        assert_eq!(log.stats().segments, stats.segments);
        assert_eq!(log.stats().bytes, stats.bytes);
        // Every offset reads back through the index, one at a time and to the end.
        let reader = log.reader();
        for i in 0..from {
            let records = reader.read(Offset(i), usize::MAX, 1).unwrap();
            assert_records(&records, i, i + 1);
            assert_records(&reader.read(Offset(i), usize::MAX, 100).unwrap(), i, from);
        }
    }
}

#[test]
fn truncation_keeps_age_retention_bookkeeping_of_the_kept_records() {
    let dir = tempdir().unwrap();
    let config = LogConfig {
        retention_ms: Some(100),
        ..small_config()
    };
    let mut log = open(dir.path(), &config);
    append_fixed(&mut log, 0, 6);
    // Records 6..10 from a deposed leader, with timestamps far in the future.
    for i in 6..10 {
        log.append(TimestampMs(1 << 40), &fixed(i)).unwrap();
    }
    log.commit().unwrap();
    log.truncate_from(Offset(6)).unwrap();
    append_fixed(&mut log, 6, 9); // 8 rolls: segment 4..8 is sealed again
    log.commit().unwrap();
    let meta = log.segments()[1].sealed().unwrap();
    assert_eq!(meta.max_timestamp_ms, ts(7));
    // Segment 4..8's newest record is 1070: at 1171 it is expired, as are 0..4 (1030).
    assert_eq!(
        log.apply_retention(TimestampMs(1171)).unwrap().start_offset,
        Offset(8)
    );
    // The same after a reopen, where the age comes from the index file.
    let dir = tempdir().unwrap();
    let mut log = open(dir.path(), &config);
    append_fixed(&mut log, 0, 6);
    for i in 6..10 {
        log.append(TimestampMs(1 << 40), &fixed(i)).unwrap();
    }
    log.commit().unwrap();
    log.truncate_from(Offset(6)).unwrap();
    append_fixed(&mut log, 6, 9);
    log.commit().unwrap();
    drop(log);
    let mut log = open(dir.path(), &config);
    assert!(log.recovery().indexes_rebuilt.is_empty());
    assert_eq!(
        log.apply_retention(TimestampMs(1171)).unwrap().start_offset,
        Offset(8)
    );
}

/// Runs a truncation from `from` of a log of `0..n` that stops before each of its changes on
/// disk in turn, as a crash there would; each time, the reopened log must be exactly the old
/// log or exactly the truncated one. Returns how many crash points led to each.
fn crash_at_every_step(config: &LogConfig, n: u64, from: u64) -> (u32, u32) {
    let old = reference_contents(config, n);
    let truncated = reference_contents(config, from);
    let (mut olds, mut truncateds) = (0, 0);
    for step in 0.. {
        let dir = tempdir().unwrap();
        let mut log = open(dir.path(), config);
        append_committed(&mut log, 0, n);
        log.inject_fault_in_truncation(step);
        match log.truncate_from(Offset(from)) {
            Ok(()) => break,
            Err(e) => assert!(e.to_string().contains("injected fault"), "{e}"),
        }
        // A crashed truncation left the log poisoned; readers see the old records or, once
        // the truncation was published, only the kept ones.
        assert!(matches!(log.commit(), Err(LogError::Poisoned(_))));
        let seen = read_all(&log, 0).len() as u64;
        assert!(seen == n || seen == from, "{seen} records visible");
        drop(log);
        let log = open(dir.path(), config);
        assert!(log.recovery().indexes_rebuilt.is_empty());
        let reopened = dir_contents(dir.path());
        if reopened == old {
            olds += 1;
            assert_records(&read_all(&log, 0), 0, n);
        } else if reopened == truncated {
            truncateds += 1;
            assert_records(&read_all(&log, 0), 0, from);
        } else {
            panic!(
                "crash before step {step}: neither the old nor the truncated log: {:?}",
                reopened.keys()
            );
        }
    }
    (olds, truncateds)
}

#[test]
fn crash_at_any_step_of_a_truncation_recovers_the_old_or_the_truncated_log() {
    let config = dense_config();
    let n = 40;
    let full = reference_contents(&config, n);
    let last_base: u64 = full
        .keys()
        .filter_map(|name| name.strip_suffix(".log"))
        .map(|digits| digits.parse().unwrap())
        .max()
        .unwrap();
    assert!(last_base > 5 && last_base < n - 1);
    for from in [
        last_base + 1, // inside the active segment: one cut, the commit point
        last_base,     // the active segment's base: the one before it becomes active
        5,             // inside an early sealed segment: several segments deleted
        0,             // everything
    ] {
        let (olds, truncateds) = crash_at_every_step(&config, n, from);
        assert!(
            olds >= 1 && truncateds >= 1,
            "from {from}: {olds} / {truncateds}"
        );
    }
}

#[test]
fn crash_after_the_marker_is_finished_at_open() {
    let config = dense_config();
    let dir = tempdir().unwrap();
    let mut log = open(dir.path(), &config);
    append_committed(&mut log, 0, 40);
    // Step 0 writes the marker; stop before the first deletion.
    log.inject_fault_in_truncation(1);
    assert!(log.truncate_from(Offset(5)).is_err());
    drop(log);
    assert!(dir.path().join("truncation.pending").exists());
    assert!(segment_files(dir.path(), ".log").len() > 3);
    let mut log = open(dir.path(), &config);
    assert_eq!(log.recovery().resumed_truncation, Some(Offset(5)));
    assert_eq!(log.next_offset(), Offset(5));
    assert!(!dir.path().join("truncation.pending").exists());
    assert_eq!(
        dir_contents(dir.path()),
        reference_contents(&config, 5),
        "finished exactly"
    );
    // Records appended after it are not cut by a later open.
    append_committed(&mut log, 5, 12);
    drop(log);
    let log = open(dir.path(), &config);
    assert_eq!(log.recovery().resumed_truncation, None);
    assert_records(&read_all(&log, 0), 0, 12);
}

#[test]
fn torn_truncation_marker_is_discarded_and_the_old_log_kept() {
    let config = dense_config();
    let dir = tempdir().unwrap();
    let mut log = open(dir.path(), &config);
    append_committed(&mut log, 0, 40);
    log.inject_fault_in_truncation(1);
    assert!(log.truncate_from(Offset(5)).is_err());
    drop(log);
    let marker = dir.path().join("truncation.pending");
    let bytes = fs::read(&marker).unwrap();
    // The marker is synced before any segment is touched: a torn one comes with the old log.
    for torn in [Vec::new(), bytes[..20].to_vec(), vec![0; bytes.len()], {
        let mut b = bytes.clone();
        b[10] ^= 1;
        b
    }] {
        let copy = tempdir().unwrap();
        copy_log(dir.path(), copy.path());
        fs::write(copy.path().join("truncation.pending"), &torn).unwrap();
        let log = open(copy.path(), &config);
        assert_eq!(log.recovery().resumed_truncation, None);
        assert!(!copy.path().join("truncation.pending").exists());
        assert_records(&read_all(&log, 0), 0, 40);
    }
}

#[test]
fn truncation_marker_that_does_not_match_the_segments_refuses_to_open() {
    let config = dense_config();
    let dir = tempdir().unwrap();
    let mut log = open(dir.path(), &config);
    append_committed(&mut log, 0, 40);
    log.inject_fault_in_truncation(1);
    assert!(log.truncate_from(Offset(5)).is_err());
    drop(log);
    let marker = fs::read(dir.path().join("truncation.pending")).unwrap();
    // A log whose segment 0 now holds other records at the cut, and one whose segment 0 is gone.
    let other = tempdir().unwrap();
    let mut log = open(other.path(), &config);
    for i in 0..40 {
        log.append(ts(i), &fixed(i)).unwrap();
    }
    drop(log);
    let before = dir_contents(other.path());
    fs::write(other.path().join("truncation.pending"), &marker).unwrap();
    let err = Log::open(other.path(), config.clone()).unwrap_err();
    assert!(
        matches!(&err, OpenError::Corrupt { reason, .. } if reason.contains("truncation")),
        "{err}"
    );
    let mut after = dir_contents(other.path());
    after.remove("truncation.pending");
    assert_eq!(after, before, "nothing changed");

    let gone = tempdir().unwrap();
    copy_log(dir.path(), gone.path());
    fs::remove_file(gone.path().join("00000000000000000000.log")).unwrap();
    fs::write(gone.path().join("truncation.pending"), &marker).unwrap();
    let err = Log::open(gone.path(), config).unwrap_err();
    assert!(
        matches!(&err, OpenError::Corrupt { reason, .. } if reason.contains("missing")),
        "{err}"
    );
}

#[test]
fn failed_fsync_during_truncation_poisons_the_log_and_reopen_recovers() {
    for from in [38, 5] {
        let dir = tempdir().unwrap();
        let config = dense_config();
        let mut log = open(dir.path(), &config);
        append_committed(&mut log, 0, 40);
        log.inject_fault_next_sync();
        let err = log.truncate_from(Offset(from)).unwrap_err();
        assert!(matches!(err, LogError::Io { .. }), "{err}");
        for result in [
            log.append(ts(0), b"x").map(|_| ()),
            log.commit().map(|_| ()),
            log.truncate_from(Offset(1)),
        ] {
            assert!(matches!(result, Err(LogError::Poisoned(_))), "{result:?}");
        }
        drop(log);
        // The cut happened but its sync "failed": reopening finds the truncated log.
        let log = open(dir.path(), &config);
        assert_eq!(log.next_offset(), Offset(from));
        assert_records(&read_all(&log, 0), 0, from);
    }
}

#[test]
fn view_taken_before_a_truncation_is_stale_and_read_never_uses_it() {
    let dir = tempdir().unwrap();
    let mut log = open(dir.path(), &small_config());
    append_fixed(&mut log, 0, 10);
    log.commit().unwrap();
    let reader = log.reader();
    let stale = reader.view();
    log.truncate_from(Offset(5)).unwrap();
    for i in 5..10 {
        log.append(ts(i), format!("{:020}", i + 100).as_bytes())
            .unwrap();
    }
    log.commit().unwrap();
    // Reading through the stale view shows what a torn read could: the old view's bounds,
    // other records (or an error) at offsets it calls committed. The generation tells.
    assert_ne!(reader.view().generation, stale.generation);
    if let Ok(records) = reader.read_view(&stale, Offset(3), usize::MAX, 100) {
        assert!(records.iter().any(|r| r.payload != fixed(r.offset.get())));
    }
    let records = reader.read(Offset(3), usize::MAX, 100).unwrap();
    assert_fixed(&records[..2], 3, 5);
    assert_eq!(records[2].payload, format!("{:020}", 105).into_bytes());
}

/// A payload of fixed size (so a stale read lines up with newer records at the same byte
/// positions) naming its offset and the round that wrote it.
fn tagged(offset: u64, round: u32) -> Vec<u8> {
    format!("{offset:08}-{round:08}").into_bytes()
}

fn round_of(record: &Record) -> u32 {
    let text = std::str::from_utf8(&record.payload).unwrap();
    let (offset, round) = text.split_once('-').unwrap();
    assert_eq!(offset.parse::<u64>().unwrap(), record.offset.get());
    round.parse().unwrap()
}

const KEPT: u64 = 60;
const TAIL: u64 = 40;
/// Without the generation check in `LogReader::read`, the racing test fails within ~60 rounds.
const ROUNDS: u32 = 150;

/// Writes records `0..KEPT + TAIL` (round 0), then for `rounds` rounds: truncates from a point
/// in `KEPT..KEPT + TAIL` (inside the active segment or below it), appends the tail again
/// tagged with the round, commits. Every version of the log readers may see is pushed to
/// `versions` (round per offset) before it becomes visible.
fn truncating_writer(
    dir: &Path,
    rounds: u32,
    versions: &Mutex<Vec<Arc<Vec<u32>>>>,
    started: impl FnOnce(&Log),
) {
    let config = LogConfig {
        segment_bytes_max: 250, // 6 records of 41 bytes
        index_interval_bytes: 60,
        ..small_config()
    };
    let mut log = open(dir, &config);
    let end = KEPT + TAIL;
    let mut current = vec![0u32; end as usize];
    for i in 0..end {
        log.append(ts(i), &tagged(i, 0)).unwrap();
    }
    versions.lock().unwrap().push(Arc::new(current.clone()));
    log.commit().unwrap();
    started(&log);
    for round in 1..=rounds {
        let from = KEPT + u64::from(round) * 7 % TAIL;
        current.truncate(from as usize);
        versions.lock().unwrap().push(Arc::new(current.clone()));
        log.truncate_from(Offset(from)).unwrap();
        for i in from..end {
            log.append(ts(i), &tagged(i, round)).unwrap();
            current.push(round);
        }
        versions.lock().unwrap().push(Arc::new(current.clone()));
        log.commit().unwrap();
    }
}

#[test]
fn reader_thread_reading_committed_records_below_from_is_never_disturbed_by_truncations() {
    let dir = tempdir().unwrap();
    let versions = Mutex::new(Vec::new());
    let done = Arc::new(AtomicBool::new(false));
    let mut tail = None;
    truncating_writer(dir.path(), ROUNDS, &versions, |log| {
        let reader = log.reader();
        let done = Arc::clone(&done);
        tail = Some(thread::spawn(move || {
            let mut reads = 0u64;
            let mut from = 0;
            while !done.load(Ordering::Relaxed) || reads < 100 {
                // Up to (not including) KEPT, the lowest offset ever truncated from.
                let records = reader
                    .read(Offset(from), usize::MAX, (KEPT - from) as usize)
                    .unwrap();
                assert_eq!(records.len() as u64, KEPT - from);
                for (r, i) in records.iter().zip(from..) {
                    assert_eq!(r.offset, Offset(i));
                    assert_eq!(r.payload, tagged(i, 0));
                }
                reads += 1;
                from = (from + 7) % KEPT;
            }
            reads
        }));
    });
    done.store(true, Ordering::Relaxed);
    let reads = tail.unwrap().join().unwrap();
    assert!(reads >= 100);
}

#[test]
fn reads_racing_truncations_return_records_of_one_committed_version_of_the_log() {
    let dir = tempdir().unwrap();
    let versions = Arc::new(Mutex::new(Vec::new()));
    let done = Arc::new(AtomicBool::new(false));
    let mut tail = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    truncating_writer(dir.path(), ROUNDS, &versions, |log| {
        let reader = log.reader();
        let (done, versions) = (Arc::clone(&done), Arc::clone(&versions));
        tail = Some(thread::spawn(move || {
            let mut reads = 0u64;
            let mut pick = 0u64;
            while !done.load(Ordering::Relaxed) || reads < 100 {
                assert!(Instant::now() < deadline);
                pick = (pick + 11) % (TAIL + 10);
                let from = KEPT - 10 + pick;
                let records = match reader.read(Offset(from), usize::MAX, 30) {
                    Ok(records) => records,
                    // The committed end moved below `from` (never below KEPT).
                    Err(ReadError::OutOfRange { committed, .. }) if from > KEPT => {
                        assert!(committed >= Offset(KEPT));
                        continue;
                    }
                    Err(e) => panic!("read from {from}: {e}"),
                };
                reads += 1;
                let rounds: Vec<u32> = records.iter().map(round_of).collect();
                let offsets: Vec<u64> = records.iter().map(|r| r.offset.get()).collect();
                assert_eq!(
                    offsets,
                    (from..from + rounds.len() as u64).collect::<Vec<_>>()
                );
                let versions = versions.lock().unwrap();
                let consistent = versions.iter().rev().any(|v| {
                    v.len() >= (from as usize + rounds.len())
                        && v[from as usize..][..rounds.len()] == rounds[..]
                });
                assert!(consistent, "read from {from} mixes versions: {rounds:?}");
                drop(versions);
                thread::yield_now();
            }
            reads
        }));
    });
    done.store(true, Ordering::Relaxed);
    let reads = tail.unwrap().join().unwrap();
    assert!(reads >= 100);
}
