use super::*;
use crate::{OpenError, RECORD_HEADER_BYTES, ReadError};
use tempfile::tempdir;

const N: u64 = 6;

/// A log of records `0..N` in one segment; returns its `.log` path and the last record's
/// `(position, length)`.
fn write_log(dir: &Path) -> (PathBuf, u64, u64) {
    let mut log = open(dir, &LogConfig::default());
    append_committed(&mut log, 0, N);
    drop(log);
    let file = dir.join("00000000000000000000.log");
    let start = position_of(0, N - 1);
    let len = fs::metadata(&file).unwrap().len() - start;
    assert_eq!(len, (RECORD_HEADER_BYTES + payload(N - 1).len()) as u64);
    (file, start, len)
}

/// Opens a damaged log and checks that record `N - 1` is gone, cut at `start`, and that the next
/// append takes its offset.
fn assert_last_record_dropped(dir: &Path, start: u64, dropped_bytes: u64) {
    let mut log = open(dir, &LogConfig::default());
    let file = dir.join("00000000000000000000.log");
    match &log.recovery().truncation {
        None => assert_eq!(dropped_bytes, 0),
        Some(t) => {
            assert_eq!(t.file, file);
            assert_eq!(t.position, start);
            assert_eq!(t.truncated_bytes, dropped_bytes);
            assert_eq!(t.offset, Offset(N - 1));
        }
    }
    assert_eq!(fs::metadata(&file).unwrap().len(), start);
    assert_eq!(log.next_offset(), Offset(N - 1));
    assert_records(&read_all(&log, 0), 0, N - 1);
    assert_eq!(
        log.append(ts(N - 1), &payload(N - 1)).unwrap(),
        Offset(N - 1)
    );
    log.commit().unwrap();
    drop(log);
    let log = open(dir, &LogConfig::default());
    assert_eq!(log.recovery().truncation, None);
    assert_records(&read_all(&log, 0), 0, N);
}

#[test]
fn torn_tail_at_every_byte_of_the_last_record_is_truncated() {
    let original = tempdir().unwrap();
    let (_, start, len) = write_log(original.path());
    for kept in 0..len {
        let dir = tempdir().unwrap();
        copy_log(original.path(), dir.path());
        let file = dir.path().join("00000000000000000000.log");
        fs::OpenOptions::new()
            .write(true)
            .open(&file)
            .unwrap()
            .set_len(start + kept)
            .unwrap();
        assert_last_record_dropped(dir.path(), start, kept);
    }
}

#[test]
fn last_record_with_bad_crc_is_truncated() {
    // Flip a byte in each covered field: offset, timestamp, payload, and the CRC itself.
    for at in [4, 8, 16, RECORD_HEADER_BYTES as u64 + 2] {
        let dir = tempdir().unwrap();
        let (file, start, len) = write_log(dir.path());
        flip_byte(&file, start + at);
        assert_last_record_dropped(dir.path(), start, len);
        let log = open(dir.path(), &LogConfig::default());
        assert_eq!(log.recovery().truncation, None);
    }
}

#[test]
fn last_record_with_impossible_length_is_truncated() {
    let dir = tempdir().unwrap();
    let (file, start, len) = write_log(dir.path());
    let mut bytes = fs::read(&file).unwrap();
    bytes[start as usize + 3] = 0xff; // length far above record_bytes_max
    fs::write(&file, bytes).unwrap();
    assert_last_record_dropped(dir.path(), start, len);
}

#[test]
fn zero_filled_tail_after_the_last_record_is_truncated() {
    let dir = tempdir().unwrap();
    let (file, start, len) = write_log(dir.path());
    // What a crash can leave: the file grew but the data never reached the disk.
    let mut bytes = fs::read(&file).unwrap();
    bytes.truncate(start as usize);
    bytes.resize(start as usize + 4096, 0);
    fs::write(&file, bytes).unwrap();
    assert!(len < 4096);
    assert_last_record_dropped(dir.path(), start, 4096);
}

#[test]
fn corrupt_record_followed_by_valid_ones_refuses_to_open_and_changes_nothing() {
    let dir = tempdir().unwrap();
    let (file, _, _) = write_log(dir.path());
    let before = fs::read(&file).unwrap();
    let index_before = fs::read(dir.path().join("00000000000000000000.idx")).unwrap();
    let middle = 2;
    let position = position_of(0, middle);
    flip_byte(&file, position + RECORD_HEADER_BYTES as u64 + 3);
    let damaged = fs::read(&file).unwrap();

    let err = Log::open(dir.path(), LogConfig::default()).unwrap_err();
    match &err {
        OpenError::Corrupt {
            file: f,
            position: p,
            offset,
            reason,
        } => {
            assert_eq!(f, &file);
            assert_eq!(*p, position);
            assert_eq!(*offset, Some(Offset(middle)));
            assert!(reason.contains("CRC"), "{reason}");
            assert!(reason.contains("not a torn tail"), "{reason}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    let text = err.to_string();
    assert!(text.contains("00000000000000000000.log"), "{text}");
    assert!(
        text.contains(&format!("byte position {position}")),
        "{text}"
    );

    assert_eq!(fs::read(&file).unwrap(), damaged, "nothing truncated");
    assert_eq!(damaged.len(), before.len());
    assert_eq!(
        fs::read(dir.path().join("00000000000000000000.idx")).unwrap(),
        index_before
    );
}

#[test]
fn valid_crc_with_wrong_offset_is_corruption_even_at_the_tail() {
    let dir = tempdir().unwrap();
    let (file, _, _) = write_log(dir.path());
    let end = fs::metadata(&file).unwrap().len();
    // A well-formed record that claims an offset the log never had next.
    let header = crate::record::encode_header(Offset(N + 5), ts(0), b"stray");
    let mut bytes = fs::read(&file).unwrap();
    bytes.extend_from_slice(&header);
    bytes.extend_from_slice(b"stray");
    fs::write(&file, bytes).unwrap();
    match Log::open(dir.path(), LogConfig::default()) {
        Err(OpenError::Corrupt {
            position, reason, ..
        }) => {
            assert_eq!(position, end);
            assert!(reason.contains("offset"), "{reason}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

/// Found by fuzz/storage_recovery: `find_record_after` bounded the plausible offsets with a
/// plain add, which overflowed for a segment whose base offset (from its file name) is next to
/// u64::MAX: a panic in debug builds, and in release a wrapped, empty range that missed a valid
/// record after the bad one and so cut it off as part of a torn tail.
#[test]
fn bad_record_near_the_largest_offset_is_told_apart_from_a_torn_tail() {
    let base = u64::MAX - 1;
    let name = format!("{base:020}.log");
    // Garbage (its length field is far above the limit) long enough to reach the overflow.
    let garbage = [0x24u8; 3 * RECORD_HEADER_BYTES + 1];

    let dir = tempdir().unwrap();
    fs::write(dir.path().join(&name), garbage).unwrap();
    let log = open(dir.path(), &LogConfig::default());
    let truncation = log.recovery().truncation.as_ref().expect("a torn tail");
    assert_eq!((truncation.position, truncation.offset), (0, Offset(base)));
    assert_eq!(log.next_offset(), Offset(base));
    drop(log);

    // The same garbage followed by a valid record at offset u64::MAX: corruption, not a tail.
    let dir = tempdir().unwrap();
    let mut bytes = garbage.to_vec();
    let header = crate::record::encode_header(Offset(u64::MAX), ts(0), b"last");
    bytes.extend_from_slice(&header);
    bytes.extend_from_slice(b"last");
    fs::write(dir.path().join(&name), &bytes).unwrap();
    match Log::open(dir.path(), LogConfig::default()) {
        Err(OpenError::Corrupt {
            position, reason, ..
        }) => {
            assert_eq!(position, 0);
            assert!(reason.contains("a valid record follows"), "{reason}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert_eq!(fs::read(dir.path().join(&name)).unwrap(), bytes);
}

/// Found with fuzz/storage_recovery: `check_index` added a sealed segment's base offset (from
/// its file name) and its index's last relative offset with a plain add, which overflowed (a
/// panic in debug builds) for a segment based next to u64::MAX. Such an index is now rebuilt
/// like any other inconsistent one (and here the log under it is garbage).
#[test]
fn index_entry_beyond_the_largest_offset_is_rebuilt_not_added() {
    let dir = tempdir().unwrap();
    let base = u64::MAX - 1;
    fs::write(dir.path().join(format!("{base:020}.log")), [0u8; 49]).unwrap();
    // Well formed (entry 1 is two headers' worth of bytes after entry 0), but base + 2 overflows.
    let mut index = Vec::new();
    for (relative, position) in [(0u32, 0u32), (2, 48)] {
        index.extend_from_slice(&relative.to_le_bytes());
        index.extend_from_slice(&position.to_le_bytes());
        index.extend_from_slice(&0u64.to_le_bytes());
    }
    fs::write(dir.path().join(format!("{base:020}.idx")), index).unwrap();
    fs::write(dir.path().join(format!("{:020}.log", u64::MAX)), b"").unwrap();
    match Log::open(dir.path(), LogConfig::default()) {
        Err(OpenError::Corrupt {
            position, reason, ..
        }) => {
            assert_eq!(position, 0);
            assert!(reason.contains("in a sealed segment"), "{reason}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

/// Records 0..SEALED_N over six small segments, with a dense index; returns the config.
const SEALED_N: u64 = 150;

fn write_sealed_log(dir: &Path) -> LogConfig {
    let config = LogConfig {
        segment_bytes_max: 1000,
        index_interval_bytes: 64,
        ..LogConfig::default()
    };
    let mut log = open(dir, &config);
    append_committed(&mut log, 0, SEALED_N);
    assert!(log.stats().segments > 4);
    config
}

#[test]
fn corruption_in_a_sealed_segment_is_reported_by_reads() {
    let dir = tempdir().unwrap();
    let config = write_sealed_log(dir.path());
    let first = dir.path().join("00000000000000000000.log");
    // Record 1 lies before the segment's last index entry, which is all open checks.
    let position = position_of(0, 1);
    flip_byte(&first, position + RECORD_HEADER_BYTES as u64);

    let log = open(dir.path(), &config);
    assert!(log.recovery().indexes_rebuilt.is_empty());
    let reader = log.reader();
    for from in [0, 1] {
        match reader.read(Offset(from), 1 << 20, 1000) {
            Err(ReadError::Corrupt {
                file,
                position: p,
                offset,
                ..
            }) => {
                assert_eq!(file, first);
                assert_eq!(p, position);
                assert_eq!(offset, Some(Offset(1)));
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }
    // Record 0 alone is intact, and so is everything after the damage.
    assert_records(&reader.read(Offset(0), 1 << 20, 1).unwrap(), 0, 1);
    assert_records(&read_all(&log, 2), 2, SEALED_N);
}

#[test]
fn corruption_in_a_sealed_segment_refuses_open_when_its_index_must_be_rebuilt() {
    let dir = tempdir().unwrap();
    let config = write_sealed_log(dir.path());
    let first = dir.path().join("00000000000000000000.log");
    let position = position_of(0, 1);
    flip_byte(&first, position + RECORD_HEADER_BYTES as u64);
    fs::remove_file(dir.path().join("00000000000000000000.idx")).unwrap();
    match Log::open(dir.path(), config) {
        Err(OpenError::Corrupt {
            file, position: p, ..
        }) => {
            assert_eq!(file, first);
            assert_eq!(p, position);
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert!(
        !dir.path().join("00000000000000000000.idx").exists(),
        "a refused open writes nothing"
    );
}

#[test]
fn torn_end_of_a_sealed_segment_is_corruption_not_truncation() {
    let dir = tempdir().unwrap();
    let config = write_sealed_log(dir.path());
    let first = dir.path().join("00000000000000000000.log");
    let len = fs::metadata(&first).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&first)
        .unwrap()
        .set_len(len - 3)
        .unwrap();
    assert!(matches!(
        Log::open(dir.path(), config),
        Err(OpenError::Corrupt { .. })
    ));
    assert_eq!(fs::metadata(&first).unwrap().len(), len - 3);
}

#[test]
fn missing_segment_in_the_middle_is_corruption() {
    let dir = tempdir().unwrap();
    let config = write_sealed_log(dir.path());
    let logs = segment_files(dir.path(), ".log");
    fs::remove_file(&logs[1]).unwrap();
    match Log::open(dir.path(), config) {
        Err(OpenError::Corrupt { file, reason, .. }) => {
            assert_eq!(file, logs[0]);
            assert!(reason.contains("next segment"), "{reason}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn reopen_after_clean_shutdown_with_index_files_deleted_rebuilds_them() {
    let dir = tempdir().unwrap();
    let config = write_sealed_log(dir.path());
    let indexes = segment_files(dir.path(), ".idx");
    let contents: Vec<Vec<u8>> = indexes.iter().map(|p| fs::read(p).unwrap()).collect();
    for path in &indexes {
        fs::remove_file(path).unwrap();
    }
    let log = open(dir.path(), &config);
    // The active segment's index is always rewritten, so only sealed ones are reported.
    assert_eq!(log.recovery().indexes_rebuilt, indexes[..indexes.len() - 1]);
    let rebuilt: Vec<Vec<u8>> = indexes.iter().map(|p| fs::read(p).unwrap()).collect();
    assert_eq!(rebuilt, contents, "rebuilt indexes equal the originals");
    assert_records(&read_all(&log, 0), 0, SEALED_N);
    for from in [17, 50, SEALED_N - 1] {
        assert_records(
            &log.reader().read(Offset(from), 1 << 20, 1).unwrap(),
            from,
            from + 1,
        );
    }
}

#[test]
fn inconsistent_index_files_are_rebuilt_and_clean_ones_are_not() {
    let dir = tempdir().unwrap();
    let config = write_sealed_log(dir.path());
    let indexes = segment_files(dir.path(), ".idx");
    {
        let log = open(dir.path(), &config);
        assert!(log.recovery().indexes_rebuilt.is_empty());
    }
    let first = fs::read(&indexes[0]).unwrap();
    fs::write(&indexes[0], &first[..first.len() - 5]).unwrap(); // torn entry
    fs::write(&indexes[1], vec![0u8; 64]).unwrap(); // zeros
    let mut shifted = fs::read(&indexes[2]).unwrap();
    // The second entry's position no longer points at its record: open does not check that
    // entry, reads detect it and scan the segment from its start instead.
    shifted[20] = shifted[20].wrapping_add(1);
    fs::write(&indexes[2], &shifted).unwrap();
    let shortened = fs::read(&indexes[3]).unwrap();
    fs::write(&indexes[3], &shortened[..16]).unwrap(); // entries lost
    let log = open(dir.path(), &config);
    let rebuilt = &log.recovery().indexes_rebuilt;
    assert!(rebuilt.contains(&indexes[0]), "{rebuilt:?}");
    assert!(rebuilt.contains(&indexes[1]), "{rebuilt:?}");
    assert!(rebuilt.contains(&indexes[3]), "{rebuilt:?}");
    assert!(!rebuilt.contains(&indexes[2]), "{rebuilt:?}");
    assert_records(&read_all(&log, 0), 0, SEALED_N);
    for from in 0..SEALED_N {
        assert_records(
            &log.reader().read(Offset(from), 1 << 20, 1).unwrap(),
            from,
            from + 1,
        );
    }
}

#[test]
fn orphan_index_files_are_removed_at_open() {
    let dir = tempdir().unwrap();
    {
        let mut log = open(dir.path(), &LogConfig::default());
        append_committed(&mut log, 0, 3);
    }
    let orphan = dir.path().join("00000000000000000100.idx");
    fs::write(&orphan, [0u8; 16]).unwrap();
    let log = open(dir.path(), &LogConfig::default());
    assert_eq!(
        log.recovery().orphans_removed,
        std::slice::from_ref(&orphan)
    );
    assert!(!orphan.exists());
}
