//! Tests of the whole crate through its public API (plus a few internal probes).

mod basics;
mod compaction;
mod concurrency;
mod faults;
mod model;
mod recovery;
mod segments;
mod truncation;

use crate::{FsyncPolicy, Log, LogConfig, Offset, Record, TimestampMs};
use std::fs;
use std::path::{Path, PathBuf};

/// A deterministic payload for record `i`, of varying length.
pub(crate) fn payload(i: u64) -> Vec<u8> {
    format!("record-{i}-{}", "x".repeat((i % 7) as usize)).into_bytes()
}

/// Small segments and a dense index, so a few records exercise rolls and index seeks.
pub(crate) fn small_config() -> LogConfig {
    LogConfig {
        segment_bytes_max: 200,
        index_interval_bytes: 64,
        fsync: FsyncPolicy::Never,
        ..LogConfig::default()
    }
}

pub(crate) fn open(dir: &Path, config: &LogConfig) -> Log {
    Log::open(dir, config.clone()).unwrap()
}

/// Appends records `from..to` with [`payload`] and timestamp `1000 + 10 * i`, then commits.
pub(crate) fn append_committed(log: &mut Log, from: u64, to: u64) {
    for i in from..to {
        assert_eq!(log.append(ts(i), &payload(i)).unwrap(), Offset(i));
    }
    assert_eq!(log.commit().unwrap(), Offset(to));
}

pub(crate) fn ts(i: u64) -> TimestampMs {
    TimestampMs(1000 + 10 * i)
}

/// Every committed record from `from`, read in small batches.
pub(crate) fn read_all(log: &Log, from: u64) -> Vec<Record> {
    let reader = log.reader();
    let mut out = Vec::new();
    let mut next = Offset(from);
    while next < reader.committed_offset() {
        let batch = reader.read(next, 100, 3).unwrap();
        assert!(!batch.is_empty());
        next = batch.last().unwrap().offset.next();
        out.extend(batch);
    }
    out
}

pub(crate) fn assert_records(records: &[Record], from: u64, to: u64) {
    let offsets: Vec<u64> = records.iter().map(|r| r.offset.get()).collect();
    assert_eq!(offsets, (from..to).collect::<Vec<_>>());
    for r in records {
        assert_eq!(
            r.payload,
            payload(r.offset.get()),
            "payload of {}",
            r.offset
        );
        assert_eq!(r.timestamp_ms, ts(r.offset.get()));
    }
}

/// The segment files (`.log` and `.idx`) of a log directory, sorted.
pub(crate) fn segment_files(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    files.sort();
    files
}

/// Copies a log directory's segment files (not its lock) into `to`.
pub(crate) fn copy_log(from: &Path, to: &Path) {
    for path in segment_files(from, ".log")
        .into_iter()
        .chain(segment_files(from, ".idx"))
    {
        fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
    }
}

pub(crate) fn flip_byte(path: &Path, position: u64) {
    let mut bytes = fs::read(path).unwrap();
    bytes[position as usize] ^= 0x55;
    fs::write(path, bytes).unwrap();
}

/// Byte position of record `i` in a segment holding records `base..` written with [`payload`].
pub(crate) fn position_of(base: u64, i: u64) -> u64 {
    (base..i)
        .map(|j| (crate::RECORD_HEADER_BYTES + payload(j).len()) as u64)
        .sum()
}
