//! Helpers of [`crate::Log::truncate_from`]: where a segment is cut, and the marker file that
//! makes a truncation spanning several segments atomic across a crash. Also the marker of
//! [`crate::Log::reset_to`], which works the same way.
//!
//! The marker (`truncation.pending`, 36 bytes, all integers little endian):
//! ```text
//! | magic "weirtrnc" | from u64 | base_offset u64 | position u64 | crc32 u32 of the 32 bytes before |
//! ```
//! It says: "the log is being truncated from offset `from`: every segment above `base_offset` goes,
//! and `<base_offset>.log` is cut at byte `position`". It is synced (file and directory) before
//! any segment is touched and deleted (and the directory synced) only after every change is
//! durable, so at open a valid marker means "finish this", and an invalid one (torn by a crash
//! while it was written) means nothing was touched yet.

use crate::config::LogConfig;
use crate::error::{IoAt, IoResultExt};
use crate::index::{INDEX_ENTRY_BYTES, IndexBuilder, IndexEntry};
use crate::record::{PositionedReader, u32_at, u64_at};
use crate::segment::{Segment, scan_records, sync_dir};
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use weir_proto::Offset;

pub(crate) const MARKER_FILE_NAME: &str = "truncation.pending";
const MARKER_MAGIC: [u8; 8] = *b"weirtrnc";
const MARKER_BYTES: usize = 36;

/// A truncation in progress, as recorded in the marker file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Marker {
    /// The first offset removed.
    pub from: Offset,
    /// The segment that ends just before `from` and becomes the active one.
    pub base_offset: Offset,
    /// Where that segment's `.log` is cut: the position of record `from`, or its size.
    pub position: u64,
}

impl Marker {
    pub fn encode(&self) -> [u8; MARKER_BYTES] {
        let mut out = [0u8; MARKER_BYTES];
        out[0..8].copy_from_slice(&MARKER_MAGIC);
        out[8..16].copy_from_slice(&self.from.get().to_le_bytes());
        out[16..24].copy_from_slice(&self.base_offset.get().to_le_bytes());
        out[24..32].copy_from_slice(&self.position.to_le_bytes());
        let crc = crc32fast::hash(&out[..32]);
        out[32..36].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// `None` unless `bytes` is exactly a marker with a valid CRC.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != MARKER_BYTES
            || bytes[0..8] != MARKER_MAGIC
            || u32_at(bytes, 32) != crc32fast::hash(&bytes[..32])
        {
            return None;
        }
        Some(Self {
            from: Offset(u64_at(bytes, 8)),
            base_offset: Offset(u64_at(bytes, 16)),
            position: u64_at(bytes, 24),
        })
    }
}

/// Writes the marker and makes it durable (the file's contents, then its name). Returns the
/// fsyncs made.
pub(crate) fn write_marker(dir: &Path, marker: &Marker) -> Result<u64, IoAt> {
    write_durably(dir, MARKER_FILE_NAME, &marker.encode())
}

/// Creates `dir/name` holding `bytes` and makes it durable (the file's contents, then its name).
/// Returns the fsyncs made.
fn write_durably(dir: &Path, name: &str, bytes: &[u8]) -> Result<u64, IoAt> {
    let path = dir.join(name);
    let file = File::create(&path).at(&path)?;
    file.write_all_at(bytes, 0).at(&path)?;
    file.sync_all().at(&path)?;
    sync_dir(dir)?;
    Ok(2)
}

/// Deletes the marker and makes that durable: after this, a crash can no longer redo the
/// truncation (which would cut records appended after it). Returns the fsyncs made.
pub(crate) fn remove_marker(dir: &Path) -> Result<u64, IoAt> {
    remove_durably(dir, MARKER_FILE_NAME)
}

/// Deletes `dir/name` (if it is there) and fsyncs the directory. Returns the fsyncs made.
fn remove_durably(dir: &Path, name: &str) -> Result<u64, IoAt> {
    let path = dir.join(name);
    match fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).at(&path),
    }
    sync_dir(dir)?;
    Ok(1)
}

/// The marker of a [`crate::Log::reset_to`] (`reset.pending`, 20 bytes, little endian):
/// `| magic "weirrset" | offset u64 | crc32 u32 of the 16 bytes before |`. It says: "the log is
/// being emptied to restart at `offset`: every segment other than `<offset>.log` goes, and
/// `<offset>.log` (created if missing) is emptied". Synced (file and directory) before any
/// segment is touched, deleted (and the directory synced) only once the empty log is durable:
/// at open a valid one means "finish this", an invalid one (torn) means nothing was touched.
pub(crate) const RESET_MARKER_FILE_NAME: &str = "reset.pending";
const RESET_MAGIC: [u8; 8] = *b"weirrset";
const RESET_MARKER_BYTES: usize = 20;

pub(crate) fn encode_reset_marker(offset: Offset) -> [u8; RESET_MARKER_BYTES] {
    let mut out = [0u8; RESET_MARKER_BYTES];
    out[0..8].copy_from_slice(&RESET_MAGIC);
    out[8..16].copy_from_slice(&offset.get().to_le_bytes());
    let crc = crc32fast::hash(&out[..16]);
    out[16..20].copy_from_slice(&crc.to_le_bytes());
    out
}

/// The offset of a reset marker; `None` unless `bytes` is exactly one with a valid CRC.
pub(crate) fn parse_reset_marker(bytes: &[u8]) -> Option<Offset> {
    if bytes.len() != RESET_MARKER_BYTES
        || bytes[0..8] != RESET_MAGIC
        || u32_at(bytes, 16) != crc32fast::hash(&bytes[..16])
    {
        return None;
    }
    Some(Offset(u64_at(bytes, 8)))
}

/// Writes the reset marker and makes it durable. Returns the fsyncs made.
pub(crate) fn write_reset_marker(dir: &Path, offset: Offset) -> Result<u64, IoAt> {
    write_durably(dir, RESET_MARKER_FILE_NAME, &encode_reset_marker(offset))
}

/// Deletes the reset marker and makes that durable: after this, a crash can no longer redo the
/// reset (which would delete records appended after it). Returns the fsyncs made.
pub(crate) fn remove_reset_marker(dir: &Path) -> Result<u64, IoAt> {
    remove_durably(dir, RESET_MARKER_FILE_NAME)
}

/// How a segment is cut so that it ends just before `from`.
#[derive(Debug)]
pub(crate) struct Cut {
    /// The segment's new size: the position of record `from`, or the whole file when `from` is
    /// the next segment's base offset.
    pub position: u64,
    /// The index entries kept: those of records below `from`.
    pub entries: Vec<IndexEntry>,
    /// The index builder as it was right after appending record `from - 1`, so appends after the
    /// cut place index entries (and track the segment's newest timestamp) exactly as if the cut
    /// records had never been appended.
    pub builder: IndexBuilder,
}

/// Finds where `segment` (whose `.log` is `log_file`, `file_bytes` long, all of it written to
/// the file) must be cut to end just before `from`. Reads only the last kept index entry's
/// timestamp and the records from that entry to `from` (about one index interval), checking
/// them like recovery does. Changes nothing.
pub(crate) fn plan_cut(
    segment: &Segment,
    log_file: &File,
    file_bytes: u64,
    from: Offset,
    config: &LogConfig,
) -> Result<Cut, IoAt> {
    let entries = segment.entries_below(from);
    let Some(&last) = entries.last() else {
        // The first record of a segment always has an entry: nothing below `from` is in it.
        debug_assert_eq!(from, segment.base_offset);
        return Ok(Cut {
            position: 0,
            entries,
            builder: IndexBuilder::new(config.index_interval_bytes),
        });
    };
    // The in-memory entries lack the timestamps; the file has every entry (the caller flushed).
    let index_path = &segment.index_path;
    let mut raw = [0u8; INDEX_ENTRY_BYTES];
    File::open(index_path)
        .and_then(|f| f.read_exact_at(&mut raw, ((entries.len() - 1) * INDEX_ENTRY_BYTES) as u64))
        .at(index_path)?;
    let max_timestamp_ms = u64_at(&raw, 8);
    let mut reader = PositionedReader::new(log_file);
    let scan = scan_records(
        &mut reader,
        file_bytes,
        segment.base_offset,
        (
            u64::from(last.position),
            Offset(segment.base_offset.get() + u64::from(last.relative_offset)),
        ),
        from,
        IndexBuilder::resume(config.index_interval_bytes, max_timestamp_ms),
        config.record_bytes_max,
    )
    .at(&segment.log_path)?;
    let problem = if let Some(bad) = &scan.bad {
        Some(format!(
            "record at byte position {} (offset {}): {}",
            bad.position, bad.offset, bad.reason
        ))
    } else if scan.next_offset != from {
        Some(format!(
            "the segment ends at offset {} before offset {from}",
            scan.next_offset
        ))
    } else if !scan.entries.is_empty() {
        Some("the index lacks entries the log needs".to_owned())
    } else {
        None
    };
    if let Some(problem) = problem {
        return Err(IoAt {
            path: segment.log_path.clone(),
            source: io::Error::new(
                io::ErrorKind::InvalidData,
                format!("cannot truncate from offset {from}: {problem}"),
            ),
        });
    }
    Ok(Cut {
        position: scan.end_position,
        entries,
        builder: scan.builder,
    })
}
