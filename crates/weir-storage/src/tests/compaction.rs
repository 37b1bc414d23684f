//! `Log::remove_segments_below` (Raft compaction) and `Log::reset_to` (snapshot installation):
//! the cases, crash safety of the reset, reopen, and readers taken before either.

use super::*;
use crate::truncate::{RESET_MARKER_FILE_NAME, encode_reset_marker};
use crate::{LogError, ReadError, RetentionReport};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use tempfile::tempdir;

/// Records of exactly 44 bytes (20-byte payloads): four fit a 200-byte segment of
/// [`small_config`], so segment `k` holds offsets `4k..4k+4`.
fn fixed(i: u64) -> Vec<u8> {
    format!("{i:020}").into_bytes()
}

/// A record written after a reset: same size as [`fixed`], different bytes.
fn renewed(i: u64) -> Vec<u8> {
    format!("new-{i:016}").into_bytes()
}

fn append_with(log: &mut Log, from: u64, to: u64, make: fn(u64) -> Vec<u8>) {
    for i in from..to {
        assert_eq!(log.append(ts(i), &make(i)).unwrap(), Offset(i));
    }
    assert_eq!(log.commit().unwrap(), Offset(to));
}

fn assert_made_by(records: &[Record], from: u64, to: u64, make: fn(u64) -> Vec<u8>) {
    let offsets: Vec<u64> = records.iter().map(|r| r.offset.get()).collect();
    assert_eq!(offsets, (from..to).collect::<Vec<_>>());
    for r in records {
        assert_eq!(r.payload, make(r.offset.get()), "payload of {}", r.offset);
    }
}

fn read_from(log: &Log, from: u64) -> Vec<Record> {
    log.reader()
        .read(Offset(from), usize::MAX, usize::MAX)
        .unwrap()
}

fn log_names(dir: &Path) -> Vec<String> {
    segment_files(dir, ".log")
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

/// Names and bytes of every file of a log directory but its lock.
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

/// What a log reset to `offset` holds: one empty segment.
fn reset_contents(offset: u64) -> BTreeMap<String, Vec<u8>> {
    [".log", ".idx"]
        .into_iter()
        .map(|suffix| (format!("{offset:020}{suffix}"), Vec::new()))
        .collect()
}

fn out_of_range(result: Result<Vec<Record>, ReadError>) -> bool {
    matches!(result, Err(ReadError::OutOfRange { .. }))
}

// ---------------------------------------------------------------- remove_segments_below

#[test]
fn remove_segments_below_keeps_the_active_segment_and_moves_start() {
    let dir = tempdir().unwrap();
    let config = small_config();
    let mut log = open(dir.path(), &config);
    append_with(&mut log, 0, 20, fixed); // segments at 0, 4, 8, 12, 16
    // Offset 10 is inside segment 8: segments 0 and 4 go, 8 stays (it holds 8 and 9 too).
    let fsyncs = log.stats().fsyncs;
    let report = log.remove_segments_below(Offset(10)).unwrap();
    assert_eq!(
        report,
        RetentionReport {
            deleted_segments: 2,
            deleted_bytes: 2 * 176,
            start_offset: Offset(8),
        }
    );
    assert_eq!(
        log.stats().fsyncs,
        fsyncs + 1,
        "the deletion is made durable"
    );
    assert_eq!(log.start_offset(), Offset(8));
    assert_eq!(log.stats().segments, 3);
    assert_eq!(log.stats().bytes, 3 * 176);
    assert_eq!(log_names(dir.path())[0], format!("{:020}.log", 8));
    assert_eq!(segment_files(dir.path(), ".idx").len(), 3);
    // A segment base: the segment starting there stays.
    assert_eq!(
        log.remove_segments_below(Offset(12))
            .unwrap()
            .deleted_segments,
        1
    );
    assert_eq!(log.start_offset(), Offset(12));
    // Below the start: nothing.
    assert_eq!(
        log.remove_segments_below(Offset(3))
            .unwrap()
            .deleted_segments,
        0
    );
    // Far beyond the end: every sealed segment goes, never the active one.
    let report = log.remove_segments_below(Offset(1000)).unwrap();
    assert_eq!(
        (report.deleted_segments, report.start_offset),
        (1, Offset(16))
    );
    assert_eq!(log.stats().segments, 1);
    assert_eq!(log_names(dir.path()), vec![format!("{:020}.log", 16)]);
    assert_made_by(&read_from(&log, 16), 16, 20, fixed);
    append_with(&mut log, 20, 30, fixed);
    assert_made_by(&read_from(&log, 16), 16, 30, fixed);
    drop(log);
    let log = open(dir.path(), &config);
    assert_eq!(log.start_offset(), Offset(16));
    assert_made_by(&read_from(&log, 16), 16, 30, fixed);
}

#[test]
fn remove_segments_below_never_deletes_segments_with_uncommitted_records() {
    let dir = tempdir().unwrap();
    let mut log = open(dir.path(), &small_config());
    append_with(&mut log, 0, 4, fixed);
    for i in 4..12 {
        log.append(ts(i), &fixed(i)).unwrap();
    }
    // Segments 0, 4, 8; committed offset 4: segment 4 holds uncommitted records.
    let report = log.remove_segments_below(Offset(12)).unwrap();
    assert_eq!(
        (report.deleted_segments, report.start_offset),
        (1, Offset(4))
    );
    log.commit().unwrap();
    assert_eq!(
        log.remove_segments_below(Offset(12))
            .unwrap()
            .deleted_segments,
        1
    );
}

#[test]
fn readers_below_the_new_start_get_out_of_range() {
    let dir = tempdir().unwrap();
    let mut log = open(dir.path(), &small_config());
    append_with(&mut log, 0, 20, fixed);
    let reader = log.reader();
    log.remove_segments_below(Offset(9)).unwrap();
    assert_eq!(reader.start_offset(), Offset(8));
    for from in [0, 4, 7] {
        assert!(
            matches!(
                reader.read(Offset(from), usize::MAX, 100),
                Err(ReadError::OutOfRange {
                    start: Offset(8),
                    committed: Offset(20),
                    ..
                })
            ),
            "read from {from}"
        );
    }
    assert_made_by(
        &reader.read(Offset(8), usize::MAX, 100).unwrap(),
        8,
        20,
        fixed,
    );
    // After a reset, everything below the new offset is out of range too.
    log.reset_to(Offset(50)).unwrap();
    for from in [0, 8, 19, 20, 49, 51] {
        assert!(
            out_of_range(reader.read(Offset(from), usize::MAX, 100)),
            "read from {from}"
        );
    }
    assert_eq!(reader.read(Offset(50), usize::MAX, 100).unwrap(), vec![]);
}

// ---------------------------------------------------------------- reset_to

#[test]
fn reset_to_then_append_lands_at_offset() {
    let config = small_config();
    // Beyond the end, inside a sealed segment, a sealed segment's base, the active segment's
    // base, the next offset, the start, below... (the start is 0 here, so nothing is below).
    for offset in [50, 10, 8, 16, 20, 0] {
        let dir = tempdir().unwrap();
        let mut log = open(dir.path(), &config);
        append_with(&mut log, 0, 20, fixed);
        log.append(ts(20), &fixed(20)).unwrap(); // uncommitted: dropped too
        let fsyncs = log.stats().fsyncs;
        log.reset_to(Offset(offset)).unwrap();
        assert_eq!(
            log.stats().fsyncs,
            fsyncs + 5,
            "marker 2, segment, dir, marker removal"
        );
        assert_eq!(log.start_offset(), Offset(offset));
        assert_eq!(log.next_offset(), Offset(offset));
        assert_eq!(log.committed_offset(), Offset(offset));
        assert_eq!(log.synced_offset(), Offset(offset));
        assert_eq!(log.stats().segments, 1);
        assert_eq!(log.stats().bytes, 0);
        assert_eq!(
            dir_contents(dir.path()),
            reset_contents(offset),
            "offset {offset}"
        );
        assert_eq!(read_from(&log, offset), vec![]);
        append_with(&mut log, offset, offset + 10, renewed);
        assert_made_by(&read_from(&log, offset), offset, offset + 10, renewed);
        assert_eq!(log.stats().segments, 3, "rolls as usual after the reset");
        // Reset where it already is: nothing to do.
        log.reset_to(Offset(offset + 10)).unwrap();
        let fsyncs = log.stats().fsyncs;
        log.reset_to(Offset(offset + 10)).unwrap();
        assert_eq!(
            log.stats().fsyncs,
            fsyncs,
            "already empty at the offset: a no-op"
        );
    }
}

#[test]
fn reopen_after_reset_to_starts_at_offset() {
    let dir = tempdir().unwrap();
    let config = small_config();
    let mut log = open(dir.path(), &config);
    append_with(&mut log, 0, 20, fixed);
    log.reset_to(Offset(100)).unwrap();
    drop(log);
    // Empty, first segment at 100, nothing before it.
    let log = open(dir.path(), &config);
    assert!(!log.recovery().created);
    assert_eq!(log.recovery().resumed_reset, None);
    assert_eq!(log.start_offset(), Offset(100));
    assert_eq!(log.next_offset(), Offset(100));
    assert!(out_of_range(log.reader().read(Offset(0), 100, 10)));
    let mut log = log;
    append_with(&mut log, 100, 111, renewed);
    drop(log);
    // Several segments, the first at 100.
    let mut log = open(dir.path(), &config);
    assert_eq!(log.start_offset(), Offset(100));
    assert_eq!(log.next_offset(), Offset(111));
    assert_eq!(log.stats().segments, 3);
    assert!(log.recovery().indexes_rebuilt.is_empty());
    assert_made_by(&read_from(&log, 100), 100, 111, renewed);
    // Retention, truncation and compaction work above a non-zero start.
    log.truncate_from(Offset(106)).unwrap();
    assert_eq!(
        log.remove_segments_below(Offset(106)).unwrap().start_offset,
        Offset(104)
    );
    log.truncate_from(Offset(104)).unwrap();
    assert_eq!(log.next_offset(), Offset(104));
    drop(log);
    let log = open(dir.path(), &config);
    assert_eq!(
        (log.start_offset(), log.next_offset()),
        (Offset(104), Offset(104))
    );
}

/// Runs `reset_to(offset)` on a log of `0..n` that stops before each of its changes on disk in
/// turn, as a crash there would; each time, the reopened log must be exactly the old log or
/// exactly the empty log at `offset`. Returns how many crash points led to each.
fn crash_reset_at_every_step(n: u64, offset: u64) -> (u32, u32) {
    let config = small_config();
    let old = {
        let dir = tempdir().unwrap();
        let mut log = open(dir.path(), &config);
        append_with(&mut log, 0, n, fixed);
        drop(log);
        dir_contents(dir.path())
    };
    let reset = reset_contents(offset);
    let (mut olds, mut resets) = (0, 0);
    for step in 0.. {
        let dir = tempdir().unwrap();
        let mut log = open(dir.path(), &config);
        append_with(&mut log, 0, n, fixed);
        log.inject_fault_in_reset(step);
        match log.reset_to(Offset(offset)) {
            Ok(()) => {
                assert_eq!(dir_contents(dir.path()), reset);
                break;
            }
            Err(e) => assert!(e.to_string().contains("injected fault"), "{e}"),
        }
        assert!(matches!(log.commit(), Err(LogError::Poisoned(_))));
        // Readers already see the reset log: nothing at `offset`, nothing else in range.
        let reader = log.reader();
        assert_eq!(reader.read(Offset(offset), 100, 10).unwrap(), vec![]);
        assert!(offset == 0 || out_of_range(reader.read(Offset(0), 100, 10)));
        drop(log);
        let mut log = open(dir.path(), &config);
        assert!(log.recovery().indexes_rebuilt.is_empty());
        let reopened = dir_contents(dir.path());
        if reopened == old {
            olds += 1;
            assert_eq!(log.recovery().resumed_reset, None);
            assert_made_by(&read_from(&log, 0), 0, n, fixed);
        } else if reopened == reset {
            resets += 1;
            assert_eq!(log.recovery().resumed_reset, Some(Offset(offset)));
            assert_eq!(
                (log.start_offset(), log.next_offset()),
                (Offset(offset), Offset(offset))
            );
            append_with(&mut log, offset, offset + 5, renewed);
            assert_made_by(&read_from(&log, offset), offset, offset + 5, renewed);
        } else {
            panic!(
                "crash before step {step}: neither the old nor the reset log: {:?}",
                reopened.keys()
            );
        }
    }
    (olds, resets)
}

#[test]
fn crash_at_any_step_of_reset_to_recovers_the_old_or_the_reset_log() {
    // Beyond the end, inside a sealed segment, on a sealed segment's base (its file is reused),
    // the active segment's base, the start.
    for offset in [50, 10, 8, 16, 0] {
        let (olds, resets) = crash_reset_at_every_step(20, offset);
        // Only a crash before the marker is durable leaves the old log.
        assert_eq!(olds, 1, "offset {offset}");
        assert!(resets >= 5, "offset {offset}: {resets}");
    }
}

#[test]
fn interrupted_reset_with_a_gap_before_the_new_segment_is_finished_at_open() {
    // The state another order of the same steps could leave: older segments, then a gap, then
    // the new empty segment. Without the marker open calls that a missing segment; with it,
    // the reset is finished.
    let config = small_config();
    let dir = tempdir().unwrap();
    let mut log = open(dir.path(), &config);
    append_with(&mut log, 0, 20, fixed);
    drop(log);
    for base in [12, 16] {
        for suffix in [".log", ".idx"] {
            fs::remove_file(dir.path().join(format!("{base:020}{suffix}"))).unwrap();
        }
    }
    fs::write(dir.path().join(format!("{:020}.log", 50)), b"").unwrap();
    fs::write(
        dir.path().join(RESET_MARKER_FILE_NAME),
        encode_reset_marker(Offset(50)),
    )
    .unwrap();
    let log = open(dir.path(), &config);
    assert_eq!(log.recovery().resumed_reset, Some(Offset(50)));
    assert_eq!(
        (log.start_offset(), log.next_offset()),
        (Offset(50), Offset(50))
    );
    drop(log);
    assert_eq!(dir_contents(dir.path()), reset_contents(50));
}

#[test]
fn torn_reset_marker_is_discarded_and_the_old_log_kept() {
    let config = small_config();
    let dir = tempdir().unwrap();
    let mut log = open(dir.path(), &config);
    append_with(&mut log, 0, 20, fixed);
    drop(log);
    let old = dir_contents(dir.path());
    let marker = encode_reset_marker(Offset(50));
    fs::write(
        dir.path().join(RESET_MARKER_FILE_NAME),
        &marker[..marker.len() - 1],
    )
    .unwrap();
    let log = open(dir.path(), &config);
    assert_eq!(log.recovery().resumed_reset, None);
    assert_made_by(&read_from(&log, 0), 0, 20, fixed);
    drop(log);
    assert_eq!(dir_contents(dir.path()), old);
}

// ---------------------------------------------------------------- readers taken earlier

#[test]
fn reader_taken_before_compaction_or_reset_keeps_working() {
    let dir = tempdir().unwrap();
    let mut log = open(dir.path(), &small_config());
    append_with(&mut log, 0, 20, fixed);
    let reader = log.reader();
    assert_made_by(
        &reader.read(Offset(0), usize::MAX, 100).unwrap(),
        0,
        20,
        fixed,
    );

    log.remove_segments_below(Offset(10)).unwrap();
    assert!(out_of_range(reader.read(Offset(0), usize::MAX, 100)));
    assert_made_by(
        &reader.read(Offset(8), usize::MAX, 100).unwrap(),
        8,
        20,
        fixed,
    );
    append_with(&mut log, 20, 24, fixed);
    assert_made_by(
        &reader.read(Offset(20), usize::MAX, 100).unwrap(),
        20,
        24,
        fixed,
    );

    // Reset into the old range: the same offsets now hold other records, and the reader sees
    // those, never the old ones.
    log.reset_to(Offset(12)).unwrap();
    assert_eq!(reader.committed_offset(), Offset(12));
    assert_eq!(reader.start_offset(), Offset(12));
    assert!(out_of_range(reader.read(Offset(8), usize::MAX, 100)));
    assert!(out_of_range(reader.read(Offset(13), usize::MAX, 100)));
    assert_eq!(reader.read(Offset(12), usize::MAX, 100).unwrap(), vec![]);
    append_with(&mut log, 12, 30, renewed);
    assert_made_by(
        &reader.read(Offset(12), usize::MAX, 100).unwrap(),
        12,
        30,
        renewed,
    );
    let clone = reader.clone();
    drop(log);
    assert_made_by(
        &clone.read(Offset(12), usize::MAX, 100).unwrap(),
        12,
        30,
        renewed,
    );
}

#[test]
fn reader_thread_racing_resets_gets_old_or_new_records_never_a_mix() {
    let dir = tempdir().unwrap();
    let mut log = open(dir.path(), &small_config());
    append_with(&mut log, 0, 40, fixed);
    let reader = log.reader();
    let done = Arc::new(AtomicBool::new(false));
    // Reads that returned records; the writer waits for one more before each reset, so every
    // round races at least one read (a loaded machine might otherwise run all rounds first).
    let reads = Arc::new(AtomicU64::new(0));
    let reading = {
        let done = Arc::clone(&done);
        let reads = Arc::clone(&reads);
        thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                for from in [8, 20] {
                    match reader.read(Offset(from), usize::MAX, 100) {
                        Ok(records) => {
                            let Some(first) = records.first() else {
                                continue;
                            };
                            let make = if first.payload == fixed(first.offset.get()) {
                                fixed
                            } else {
                                renewed
                            };
                            let to = from + records.len() as u64;
                            assert_made_by(&records, from, to, make);
                            reads.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(ReadError::OutOfRange { .. }) => {}
                        Err(e) => panic!("read from {from}: {e}"),
                    }
                }
            }
        })
    };
    for round in 0..30 {
        let before = reads.load(Ordering::Relaxed);
        while reads.load(Ordering::Relaxed) == before {
            assert!(!reading.is_finished(), "the reader thread died");
            thread::yield_now();
        }
        // Alternately: the new log over the old offsets, then the old one back.
        let (base, make): (u64, fn(u64) -> Vec<u8>) = if round % 2 == 0 {
            (8, renewed)
        } else {
            (0, fixed)
        };
        log.reset_to(Offset(base)).unwrap();
        append_with(&mut log, base, 40, make);
    }
    done.store(true, Ordering::Relaxed);
    reading.join().unwrap();
    assert!(reads.load(Ordering::Relaxed) >= 30);
}
