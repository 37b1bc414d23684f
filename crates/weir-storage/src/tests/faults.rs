use super::*;
use crate::LogError;
use tempfile::tempdir;

#[test]
fn failed_sync_poisons_the_log_and_later_appends_are_refused() {
    let dir = tempdir().unwrap();
    let mut log = open(dir.path(), &LogConfig::default());
    append_committed(&mut log, 0, 2);
    let reader = log.reader();
    log.append(ts(2), &payload(2)).unwrap();
    log.inject_fault_next_sync();
    let err = log.commit().unwrap_err();
    assert!(matches!(err, LogError::Io { .. }), "{err}");
    assert!(err.to_string().contains("injected fault"), "{err}");
    // Readers never see a record whose sync failed.
    assert_eq!(reader.committed_offset(), Offset(2));
    assert_eq!(log.committed_offset(), Offset(2));

    for result in [
        log.append(ts(3), &payload(3)).map(|_| ()),
        log.commit().map(|_| ()),
        log.sync(),
        log.apply_retention(ts(0)).map(|_| ()),
    ] {
        match result {
            Err(LogError::Poisoned(text)) => assert!(text.contains("injected fault"), "{text}"),
            other => panic!("expected Poisoned, got {other:?}"),
        }
    }
    // Committed records stay readable.
    assert_records(&read_all(&log, 0), 0, 2);
    drop(log);
    // Reopening recovers from what is on disk.
    let mut log = open(dir.path(), &LogConfig::default());
    assert!(log.next_offset() >= Offset(2));
    let next = log.next_offset();
    assert_eq!(log.append(ts(9), b"again").unwrap(), next);
}

#[test]
fn failed_sync_during_a_segment_roll_poisons_the_log() {
    let dir = tempdir().unwrap();
    let mut log = open(dir.path(), &small_config());
    // Records 0..5 fill 175 of the segment's 200 bytes; record 5 (38 bytes) rolls.
    append_committed(&mut log, 0, 5);
    assert_eq!(position_of(0, 5), 175);
    assert_eq!(log.stats().segments, 1);
    log.inject_fault_next_sync();
    assert!(matches!(
        log.append(ts(5), &payload(5)),
        Err(LogError::Io { .. })
    ));
    assert!(matches!(
        log.append(ts(5), &payload(5)),
        Err(LogError::Poisoned(_))
    ));
    assert_eq!(log.stats().segments, 1);
}

#[test]
fn too_large_append_is_refused_with_nothing_written() {
    let dir = tempdir().unwrap();
    let config = LogConfig {
        record_bytes_max: 100,
        ..LogConfig::default()
    };
    let mut log = open(dir.path(), &config);
    append_committed(&mut log, 0, 1);
    let bytes = log.stats().bytes;
    assert!(matches!(
        log.append(ts(1), &[0; 101]),
        Err(LogError::TooLarge {
            bytes: 101,
            max: 100
        })
    ));
    assert_eq!(log.next_offset(), Offset(1));
    log.commit().unwrap();
    assert_eq!(log.stats().bytes, bytes);
    let file = dir.path().join("00000000000000000000.log");
    assert_eq!(fs::metadata(&file).unwrap().len(), bytes);
    // Refusing a record is not a failure of the log.
    assert_eq!(log.append(ts(1), &[0; 100]).unwrap(), Offset(1));
}
