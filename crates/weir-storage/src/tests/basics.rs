use super::*;
use crate::{OpenError, ReadError};
use tempfile::tempdir;

#[test]
fn fsync_policy_parses_and_displays_its_text_form() {
    for (text, policy) in [
        ("always", FsyncPolicy::Always),
        ("never", FsyncPolicy::Never),
        ("interval:250", FsyncPolicy::Interval { interval_ms: 250 }),
        ("interval:0", FsyncPolicy::Interval { interval_ms: 0 }),
    ] {
        assert_eq!(text.parse::<FsyncPolicy>().unwrap(), policy);
        assert_eq!(policy.to_string(), text);
    }
    for bad in [
        "",
        "Always",
        "interval",
        "interval:",
        "interval:+5",
        "interval:-1",
        "sometimes",
    ] {
        let err = bad.parse::<FsyncPolicy>().unwrap_err();
        assert!(err.to_string().contains("interval:<ms>"), "{err}");
    }
    assert_eq!(FsyncPolicy::default(), FsyncPolicy::Always);
}

#[test]
fn invalid_config_is_refused_at_open() {
    let dir = tempdir().unwrap();
    for config in [
        LogConfig {
            segment_bytes_max: 0,
            ..LogConfig::default()
        },
        LogConfig {
            segment_bytes_max: crate::SEGMENT_BYTES_MAX + 1,
            ..LogConfig::default()
        },
        LogConfig {
            index_interval_bytes: 0,
            ..LogConfig::default()
        },
        LogConfig {
            record_bytes_max: crate::RECORD_BYTES_MAX + 1,
            ..LogConfig::default()
        },
    ] {
        assert!(matches!(
            Log::open(dir.path(), config),
            Err(OpenError::Config(_))
        ));
    }
}

#[test]
fn open_creates_missing_directory_with_first_segment() {
    let root = tempdir().unwrap();
    let dir = root.path().join("a/b/topic");
    let log = open(&dir, &LogConfig::default());
    assert!(log.recovery().created);
    assert_eq!(
        segment_files(&dir, ".log"),
        [dir.join("00000000000000000000.log")]
    );
    assert_eq!(
        (
            log.start_offset(),
            log.committed_offset(),
            log.next_offset()
        ),
        (Offset(0), Offset(0), Offset(0))
    );
}

#[test]
fn appended_records_are_invisible_until_commit() {
    let dir = tempdir().unwrap();
    let mut log = open(dir.path(), &LogConfig::default());
    let reader = log.reader();
    assert_eq!(log.append(ts(0), &payload(0)).unwrap(), Offset(0));
    assert_eq!(log.next_offset(), Offset(1));
    assert_eq!(log.committed_offset(), Offset(0));
    assert!(reader.read(Offset(0), 1024, 10).unwrap().is_empty());
    assert_eq!(log.commit().unwrap(), Offset(1));
    assert_eq!(reader.committed_offset(), Offset(1));
    assert_records(&reader.read(Offset(0), 1024, 10).unwrap(), 0, 1);
}

#[test]
fn read_stops_at_max_records_or_before_exceeding_max_bytes_but_returns_one() {
    let dir = tempdir().unwrap();
    let mut log = open(dir.path(), &LogConfig::default());
    for i in 0..10 {
        log.append(ts(i), &[i as u8; 10]).unwrap();
    }
    log.commit().unwrap();
    let reader = log.reader();
    let count = |from, max_bytes, max_records| {
        reader
            .read(Offset(from), max_bytes, max_records)
            .unwrap()
            .len()
    };
    assert_eq!(count(0, 1000, 100), 10);
    assert_eq!(count(0, 25, 100), 2);
    assert_eq!(count(0, 30, 100), 3);
    assert_eq!(count(0, 5, 100), 1, "the first record always comes");
    assert_eq!(count(0, 0, 100), 1);
    assert_eq!(count(2, 1000, 3), 3);
    assert_eq!(count(9, 1000, 100), 1);
    assert_eq!(count(0, 1000, 0), 0);
    assert_eq!(count(10, 1000, 100), 0, "caught up: empty, not an error");
    assert!(matches!(
        reader.read(Offset(11), 1000, 100),
        Err(ReadError::OutOfRange {
            requested: Offset(11),
            start: Offset(0),
            committed: Offset(10),
        })
    ));
}

#[test]
fn group_commit_costs_one_fsync_and_an_idle_commit_none() {
    let dir = tempdir().unwrap();
    let mut log = open(dir.path(), &LogConfig::default());
    let before = log.stats().fsyncs;
    for i in 0..100 {
        log.append(ts(i), &payload(i)).unwrap();
    }
    assert_eq!(log.stats().fsyncs, before, "append never syncs");
    log.commit().unwrap();
    assert_eq!(log.stats().fsyncs, before + 1);
    log.commit().unwrap();
    assert_eq!(log.stats().fsyncs, before + 1, "nothing new to sync");
    assert_eq!(log.stats().appends, 100);
}

#[test]
fn interval_and_never_policies_commit_without_fsync_and_sync_forces_one() {
    for fsync in [
        FsyncPolicy::Never,
        FsyncPolicy::Interval {
            interval_ms: 3_600_000,
        },
    ] {
        let dir = tempdir().unwrap();
        let config = LogConfig {
            fsync,
            ..LogConfig::default()
        };
        let mut log = open(dir.path(), &config);
        let before = log.stats().fsyncs;
        append_committed(&mut log, 0, 5);
        assert_eq!(log.stats().fsyncs, before, "{fsync}");
        assert_records(&read_all(&log, 0), 0, 5);
        log.sync().unwrap();
        assert_eq!(log.stats().fsyncs, before + 1, "{fsync}");
    }
}

#[test]
fn interval_policy_with_zero_interval_syncs_every_commit() {
    let dir = tempdir().unwrap();
    let config = LogConfig {
        fsync: FsyncPolicy::Interval { interval_ms: 0 },
        ..LogConfig::default()
    };
    let mut log = open(dir.path(), &config);
    let before = log.stats().fsyncs;
    append_committed(&mut log, 0, 1);
    append_committed(&mut log, 1, 2);
    assert_eq!(log.stats().fsyncs, before + 2);
}

#[test]
fn reopen_keeps_committed_and_flushed_uncommitted_records() {
    let dir = tempdir().unwrap();
    let config = LogConfig::default();
    {
        let mut log = open(dir.path(), &config);
        append_committed(&mut log, 0, 3);
        // Never committed: dropping the log flushes it, so a clean reopen keeps it.
        log.append(ts(3), &payload(3)).unwrap();
    }
    let log = open(dir.path(), &config);
    assert_eq!(log.recovery().truncation, None);
    assert_eq!(log.next_offset(), Offset(4));
    assert_eq!(log.committed_offset(), Offset(4));
    assert_records(&read_all(&log, 0), 0, 4);
}

#[test]
fn a_second_writer_on_the_same_directory_is_refused() {
    let dir = tempdir().unwrap();
    let log = open(dir.path(), &LogConfig::default());
    assert!(matches!(
        Log::open(dir.path(), LogConfig::default()),
        Err(OpenError::Locked { .. })
    ));
    drop(log);
    open(dir.path(), &LogConfig::default());
}

#[test]
fn records_larger_than_the_write_buffer_round_trip() {
    let dir = tempdir().unwrap();
    let mut log = open(dir.path(), &LogConfig::default());
    let big: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    log.append(ts(0), b"small").unwrap();
    log.append(ts(1), &big).unwrap();
    log.append(ts(2), b"after").unwrap();
    log.commit().unwrap();
    let records = log.reader().read(Offset(0), usize::MAX, 10).unwrap();
    let payloads: Vec<&[u8]> = records.iter().map(|r| r.payload.as_slice()).collect();
    assert_eq!(payloads, [b"small".as_slice(), &big, b"after"]);
}
