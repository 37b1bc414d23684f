//! The `storage_record` and `storage_recovery` targets: weir-storage's record decoder and the
//! recovery scan that runs it over segment files.
//!
//! The record decoder (`RecordHeader`, `PositionedReader::{header, record,
//! plausible_record_at}`) is crate-private to weir-storage, so this module compiles that very
//! source file, `crates/weir-storage/src/record.rs`, in as a module of its own (it depends only
//! on std, crc32fast and weir-proto). What is fuzzed is the project's code, unchanged; if that
//! file ever starts using other items of its crate, this `#[path]` include stops compiling and
//! needs those items too (or a `pub` hook in weir-storage).
//!
//! Both targets can recompute record CRCs (flag bit 0) before writing the bytes: a fuzzer cannot
//! guess a CRC-32, so without this nearly every mutated record would fail its CRC and nothing
//! after that check would ever run.

use crate::alloc_guard;
use crate::input::Input;
use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use weir_storage::{Log, LogConfig, Offset, ReadError, Record, TimestampMs};

// Skipped by `cargo fmt` here: the file belongs to weir-storage (and is formatted there).
#[allow(dead_code)]
#[rustfmt::skip]
#[path = "../../crates/weir-storage/src/record.rs"]
mod record;

pub use record::RECORD_HEADER_BYTES;
use record::{PositionedReader, encode_header, record_bytes};

/// Bytes of a record's `len` and `crc` fields (not counted by `len`).
const PREFIX_BYTES: usize = 8;
/// `PositionedReader` reads at least this much per `pread` (`READ_CHUNK_BYTES` in record.rs).
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// `record_bytes_max` picked by two bits of a flags byte: the node's default (the protocol's
/// frame limit), then limits small enough for fuzzer-made records to exceed them.
fn record_limit(bits: u8) -> usize {
    match bits & 3 {
        0 => LogConfig::default().record_bytes_max,
        1 => 4096,
        2 => 64,
        _ => 0,
    }
}

/// Largest single allocation allowed while decoding `input_len` bytes with this record limit:
/// the reader's buffer (one chunk, or one record of a length already checked against the limit;
/// twice that while a `Vec` grows), plus copies of the input and of payloads found in it.
fn allocation_bound(record_bytes_max: usize, input_len: usize) -> usize {
    2 * READ_CHUNK_BYTES.max(RECORD_HEADER_BYTES + record_bytes_max) + 64 * input_len + (1 << 20)
}

/// Rewrites the CRC field of every record that can be walked from the start of `bytes` (as long
/// as the length fields lead from one record to the next inside `bytes`).
pub fn fix_record_crcs(bytes: &mut [u8]) {
    let mut position = 0;
    while position + RECORD_HEADER_BYTES <= bytes.len() {
        let len = record::u32_at(bytes, position) as usize;
        let end = position + PREFIX_BYTES + len;
        if len < RECORD_HEADER_BYTES - PREFIX_BYTES || end > bytes.len() {
            break;
        }
        let crc = crc32fast::hash(&bytes[position + PREFIX_BYTES..end]);
        bytes[position + 4..position + 8].copy_from_slice(&crc.to_le_bytes());
        position = end;
    }
}

/// Rewrites the trailing CRC-32 of a marker file (`truncation.pending`: 32 bytes + CRC;
/// `reset.pending`: 16 bytes + CRC), if it is long enough to have one.
fn fix_marker_crc(bytes: &mut [u8], covered: usize) {
    if bytes.len() >= covered + 4 {
        let crc = crc32fast::hash(&bytes[..covered]);
        bytes[covered..covered + 4].copy_from_slice(&crc.to_le_bytes());
    }
}

/// One record as the writer encodes it: `encode_header` then the payload.
pub fn encode_record(offset: Offset, timestamp_ms: TimestampMs, payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&encode_header(offset, timestamp_ms, payload));
    out.extend_from_slice(payload);
}

/// Where scratch files go: `$WEIR_FUZZ_SCRATCH` (run.sh sets it to a directory it removes
/// afterwards), else `/dev/shm` (tmpfs: no disk I/O), else the system's temporary directory.
fn scratch_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("WEIR_FUZZ_SCRATCH") {
        return dir.into();
    }
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_owned()
    } else {
        std::env::temp_dir()
    }
}

/// A file reused by every run of this process (unlinked already: nothing is left behind).
fn scratch_file() -> &'static File {
    static FILE: OnceLock<File> = OnceLock::new();
    FILE.get_or_init(|| tempfile::tempfile_in(scratch_root()).expect("a scratch file"))
}

fn write_scratch(bytes: &[u8]) -> &'static File {
    let file = scratch_file();
    file.set_len(0).expect("truncate the scratch file");
    file.write_all_at(bytes, 0).expect("write the scratch file");
    file
}

/// `storage_record`. Input: `| flags u8 | base offset u64 LE | segment file bytes |`. Flags: bit 0
/// recompute CRCs; bits 1-2 the record limit ([`record_limit`]).
///
/// Reads the bytes as the active segment is scanned (records from position 0, offsets from the
/// base offset, until the first bad record) and checks:
/// - nothing panics; no allocation beyond the reader's buffer for a length checked against the
///   record limit (a length field of up to 4 GiB is refused before anything is reserved);
/// - a record accepted is exactly `encode_header(offset, timestamp, payload) ++ payload` (decode
///   then encode is the identity), fits in the file, respects the limit, and is accepted the
///   same with and without its payload and by `plausible_record_at`;
/// - a record refused is reported at its position and expected offset, and "not torn" only when
///   its CRC is valid and its offset wrong;
/// - past a refused record, `plausible_record_at` at every later position agrees with `record`
///   (what recovery relies on to tell a torn tail from corruption);
/// - records built from the input and written with `encode_header` read back equal.
pub fn run_record(data: &[u8]) {
    alloc_guard::reset();
    let mut input = Input::new(data);
    let flags = input.u8();
    let base = Offset(input.u64());
    let record_bytes_max = record_limit(flags >> 1);
    let mut bytes = input.rest().to_vec();
    if flags & 1 == 1 {
        fix_record_crcs(&mut bytes);
    }
    let file = write_scratch(&bytes);
    scan_segment(file, &bytes, base, record_bytes_max);
    alloc_guard::assert_peak_at_most(
        allocation_bound(record_bytes_max, data.len()),
        "decoding records",
    );

    // The writer's bytes round-trip.
    let mut input = Input::new(&data[data.len().min(9)..]);
    let mut expected = Vec::new();
    let mut encoded = Vec::new();
    let mut offset = base;
    while !input.is_empty() && expected.len() < 16 {
        let timestamp_ms = TimestampMs(input.u64());
        let payload = if input.bool() {
            input.chunk().to_vec()
        } else {
            input.short_bytes()
        };
        encode_record(offset, timestamp_ms, &payload, &mut encoded);
        assert_eq!(
            record_bytes(payload.len()),
            (RECORD_HEADER_BYTES + payload.len()) as u64
        );
        expected.push((offset, timestamp_ms, payload));
        match offset.get().checked_add(1) {
            Some(next) => offset = Offset(next),
            None => break,
        }
    }
    let file = write_scratch(&encoded);
    let mut reader = PositionedReader::new(file);
    let mut position = 0;
    for (offset, timestamp_ms, payload) in expected {
        let limit = LogConfig::default().record_bytes_max;
        let good = reader
            .record(position, offset, limit, true)
            .expect("read the scratch file")
            .unwrap_or_else(|bad| panic!("a record the writer encoded is refused: {bad:?}"));
        assert_eq!(good.timestamp_ms, timestamp_ms);
        assert_eq!(good.payload.as_deref(), Some(&payload[..]));
        assert_eq!(good.total_bytes, record_bytes(payload.len()));
        position += good.total_bytes;
    }
    assert_eq!(position, encoded.len() as u64);
}

fn scan_segment(file: &File, bytes: &[u8], base: Offset, record_bytes_max: usize) {
    let file_bytes = bytes.len() as u64;
    let header_bytes = RECORD_HEADER_BYTES as u64;
    let mut reader = PositionedReader::new(file);
    // A second reader, so each verdict is also reached with another buffer state.
    let mut fresh = PositionedReader::new(file);
    let mut position = 0u64;
    let mut expected = base;
    while position < file_bytes {
        let verdict = reader
            .record(position, expected, record_bytes_max, true)
            .expect("read the scratch file");
        match verdict {
            Ok(good) => {
                let payload = good.payload.expect("the payload was asked for");
                assert!(payload.len() <= record_bytes_max);
                assert_eq!(good.total_bytes, record_bytes(payload.len()));
                let end = position + good.total_bytes;
                assert!(
                    end <= file_bytes,
                    "a record accepted past the end of the file"
                );
                let stored = &bytes[position as usize..end as usize];
                let header = encode_header(expected, good.timestamp_ms, &payload);
                assert_eq!(
                    &stored[..RECORD_HEADER_BYTES],
                    &header[..],
                    "re-encoded header"
                );
                assert_eq!(&stored[RECORD_HEADER_BYTES..], &payload[..], "payload");

                let without = fresh
                    .record(position, expected, record_bytes_max, false)
                    .expect("read the scratch file")
                    .expect("accepted with its payload, so without it too");
                assert_eq!(without.total_bytes, good.total_bytes);
                assert_eq!(without.timestamp_ms, good.timestamp_ms);
                assert!(without.payload.is_none());
                assert!(
                    fresh
                        .plausible_record_at(
                            position,
                            expected.get()..=expected.get(),
                            record_bytes_max
                        )
                        .expect("read the scratch file"),
                    "an accepted record is not plausible"
                );

                position = end;
                match expected.get().checked_add(1) {
                    Some(next) => expected = Offset(next),
                    None => break,
                }
            }
            Err(bad) => {
                assert_eq!(bad.position, position);
                assert_eq!(bad.offset, expected);
                let header = fresh.header(position).expect("read the scratch file");
                if !bad.torn_candidate {
                    let header = header.expect("a record refused as corrupt has a header");
                    assert_ne!(header.offset, expected, "refused as corrupt: {bad:?}");
                    let at_its_offset = fresh
                        .record(position, header.offset, record_bytes_max, false)
                        .expect("read the scratch file");
                    assert!(
                        at_its_offset.is_ok(),
                        "refused as corrupt (not torn), yet invalid at its own offset: {bad:?}"
                    );
                }
                // What recovery's find_record_after asks at every later position.
                let mut probe = PositionedReader::new(file);
                let mut p = position + 1;
                while p + header_bytes <= file_bytes {
                    let lo = expected.get();
                    let hi = lo.saturating_add((p - position) / header_bytes);
                    let plausible = probe
                        .plausible_record_at(p, lo..=hi, record_bytes_max)
                        .expect("read the scratch file");
                    let h = probe
                        .header(p)
                        .expect("read the scratch file")
                        .expect("a whole header fits");
                    let valid = (lo..=hi).contains(&h.offset.get())
                        && probe
                            .record(p, h.offset, record_bytes_max, false)
                            .expect("read the scratch file")
                            .is_ok();
                    assert_eq!(plausible, valid, "plausible_record_at at byte position {p}");
                    p += 1;
                }
                break;
            }
        }
    }
}

/// A directory for this process under [`scratch_root`]. libFuzzer ends the process with `exit`,
/// which runs no destructor, so it stays behind unless its root is removed (run.sh does).
fn scratch_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        tempfile::Builder::new()
            .prefix("weir-fuzz-")
            .tempdir_in(scratch_root())
            .expect("a scratch directory")
    })
    .path()
}

fn segment_path(dir: &Path, base: Offset, suffix: &str) -> PathBuf {
    dir.join(format!("{:020}{suffix}", base.get()))
}

/// `storage_recovery`. Input:
/// `| flags u8 | index interval u8 | segment bytes max u16 | base u64 | second base - base u32 |
///  log chunk | idx chunk | [second log chunk | second idx chunk] | [marker 36] | [reset 20] |`
/// (chunks are a `u16` length then bytes). Flags: bit 0 recompute CRCs (records and markers);
/// bit 1 a second segment; bit 2 write the `.idx` files (else recovery rebuilds them); bit 3 a
/// `truncation.pending` marker; bit 4 a `reset.pending` marker; bits 5-6 the record limit.
///
/// Writes those files into an empty directory and opens it with `Log::open`. Refusing is fine;
/// nothing may panic, and no allocation may exceed the reader's bound. A log that opens must be
/// consistent: start <= next, every record from start to next reads back in order (or a
/// sealed segment, checked only cheaply at open, reports corruption), an append continues it
/// and reads back, and reopening finds the same log plus that record, with nothing to repair.
pub fn run_recovery(data: &[u8]) {
    let mut input = Input::new(data);
    let flags = input.u8();
    let index_interval_bytes = u64::from(input.u8()) + 1;
    let segment_bytes_max = u64::from(input.u16()) + 1;
    let base = Offset(input.u64());
    let second_base = Offset(base.get().saturating_add(u64::from(input.u32())));
    let record_bytes_max = record_limit(flags >> 5);
    let fix = flags & 1 == 1;

    let dir = scratch_dir().join("log");
    match fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => panic!("cannot clear {}: {e}", dir.display()),
    }
    fs::create_dir(&dir).expect("create the log directory");

    let mut segments = vec![base];
    if flags & 2 != 0 && second_base != base {
        segments.push(second_base);
    }
    for &segment_base in &segments {
        let mut log = input.chunk().to_vec();
        let index = input.chunk();
        if fix {
            fix_record_crcs(&mut log);
        }
        fs::write(segment_path(&dir, segment_base, ".log"), &log).expect("write a segment");
        if flags & 4 != 0 {
            fs::write(segment_path(&dir, segment_base, ".idx"), index).expect("write an index");
        }
    }
    for (bit, name, len, covered) in [
        (8, "truncation.pending", 36, 32),
        (16, "reset.pending", 20, 16),
    ] {
        if flags & bit != 0 {
            let mut marker = input.take(len).to_vec();
            if fix {
                fix_marker_crc(&mut marker, covered);
            }
            fs::write(dir.join(name), marker).expect("write a marker");
        }
    }

    let config = LogConfig {
        segment_bytes_max,
        index_interval_bytes,
        record_bytes_max,
        retention_bytes: None,
        retention_ms: None,
        fsync: weir_storage::FsyncPolicy::Never,
    };
    alloc_guard::reset();
    if let Ok(log) = Log::open(&dir, config.clone()) {
        check_opened(log, &dir, &config);
    }
    alloc_guard::assert_peak_at_most(
        allocation_bound(record_bytes_max, data.len()),
        "recovering a log",
    );
}

/// Reads `[start, next)`; `None` if a sealed segment turns out corrupt on the way.
fn read_all(
    log: &Log,
    start: Offset,
    next: Offset,
    record_bytes_max: usize,
) -> Option<Vec<Record>> {
    let reader = log.reader();
    let mut records = Vec::new();
    let mut at = start;
    while at < next {
        match reader.read(at, 1 << 20, 64) {
            Ok(batch) => {
                assert!(
                    !batch.is_empty(),
                    "an empty read at {at} below the committed offset {next}"
                );
                for record in batch {
                    assert_eq!(record.offset, at, "records out of order");
                    assert!(record.payload.len() <= record_bytes_max);
                    at = Offset(at.get() + 1);
                    records.push(record);
                }
                assert!(at <= next, "read past the committed offset");
            }
            Err(ReadError::Corrupt { .. }) => return None,
            Err(e) => panic!("reading a recovered log at {at}: {e}"),
        }
    }
    let tail = reader
        .read(next, 1 << 20, 64)
        .expect("a read at the committed offset");
    assert!(tail.is_empty(), "records past the committed offset");
    Some(records)
}

fn check_opened(mut log: Log, dir: &Path, config: &LogConfig) {
    let start = log.start_offset();
    let next = log.next_offset();
    assert!(start <= next);
    assert_eq!(log.recovery().start_offset, start);
    assert_eq!(log.recovery().next_offset, next);
    assert_eq!(log.committed_offset(), next);
    let before = read_all(&log, start, next, config.record_bytes_max);

    // Offset::next panics at u64::MAX by design ("2^64 entries never reach it").
    if next.get() >= u64::MAX - 1 {
        return;
    }
    let payload = &b"fuzz"[..config.record_bytes_max.min(4)];
    let timestamp_ms = TimestampMs(7);
    assert_eq!(log.append(timestamp_ms, payload).expect("append"), next);
    assert_eq!(log.commit().expect("commit"), Offset(next.get() + 1));
    let appended = Record {
        offset: next,
        timestamp_ms,
        payload: payload.to_vec(),
    };
    let got = log
        .reader()
        .read(next, 1 << 20, 64)
        .expect("read the appended record");
    assert_eq!(got, std::slice::from_ref(&appended));
    drop(log);

    let log = Log::open(dir, config.clone())
        .unwrap_or_else(|e| panic!("reopening a log that opened and took an append: {e}"));
    assert_eq!(log.start_offset(), start);
    assert_eq!(log.next_offset(), Offset(next.get() + 1));
    assert!(
        log.recovery().truncation.is_none(),
        "reopening cut a torn tail: {:?}",
        log.recovery()
    );
    assert!(log.recovery().resumed_truncation.is_none());
    assert!(log.recovery().resumed_reset.is_none());
    let after = read_all(&log, start, log.next_offset(), config.record_bytes_max);
    if let (Some(mut before), Some(after)) = (before, after) {
        before.push(appended);
        assert_eq!(after, before, "the reopened log differs");
    }
}
