//! One segment: a `<base>.log` file of records and its `<base>.idx` sparse index, plus the scans
//! that check a segment's records and rebuild its index.

use crate::error::{IoAt, IoResultExt};
use crate::index::{IndexBuilder, IndexEntry, encode_entry};
use crate::record::{BadRecord, PositionedReader, RECORD_HEADER_BYTES};
use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{OnceLock, PoisonError, RwLock};
use weir_proto::{Offset, TimestampMs};

/// Digits of the zero-padded base offset in segment file names: enough for any `u64`, so names
/// sort like offsets.
const FILE_NAME_DIGITS: usize = 20;
pub(crate) const LOG_SUFFIX: &str = ".log";
pub(crate) const INDEX_SUFFIX: &str = ".idx";

pub(crate) fn file_name(base_offset: Offset, suffix: &str) -> String {
    format!(
        "{:0width$}{suffix}",
        base_offset.get(),
        width = FILE_NAME_DIGITS
    )
}

/// The base offset in a segment file name with this suffix, if it is one.
pub(crate) fn parse_file_name(name: &str, suffix: &str) -> Option<Offset> {
    let digits = name.strip_suffix(suffix)?;
    if digits.len() != FILE_NAME_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().map(Offset)
}

/// What is known of a segment once no more records go into it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SealedMeta {
    pub size_bytes: u64,
    /// Largest record timestamp in the segment: age-based retention compares it.
    pub max_timestamp_ms: TimestampMs,
}

/// A segment as readers and the writer share it. Readers open `log_path` themselves.
#[derive(Debug)]
pub(crate) struct Segment {
    pub base_offset: Offset,
    pub log_path: PathBuf,
    pub index_path: PathBuf,
    /// Grows while the segment is active; entries for records not yet committed are never
    /// chosen by a read, because a read's target offset is below the committed offset.
    index: RwLock<Vec<IndexEntry>>,
    sealed: OnceLock<SealedMeta>,
}

impl Segment {
    pub fn new(dir: &Path, base_offset: Offset, entries: Vec<IndexEntry>) -> Self {
        Self {
            base_offset,
            log_path: dir.join(file_name(base_offset, LOG_SUFFIX)),
            index_path: dir.join(file_name(base_offset, INDEX_SUFFIX)),
            index: RwLock::new(entries),
            sealed: OnceLock::new(),
        }
    }

    /// Where a scan for `offset` (in this segment) starts: the position and offset of the
    /// nearest index entry at or below it, so a read scans at most about one index interval.
    pub fn seek(&self, offset: Offset) -> (u64, Offset) {
        debug_assert!(offset >= self.base_offset);
        let relative = offset.get() - self.base_offset.get();
        let index = self.index.read().unwrap_or_else(PoisonError::into_inner);
        let at = index.partition_point(|e| u64::from(e.relative_offset) <= relative);
        match at.checked_sub(1).map(|i| index[i]) {
            Some(entry) => (
                u64::from(entry.position),
                Offset(self.base_offset.get() + u64::from(entry.relative_offset)),
            ),
            None => (0, self.base_offset),
        }
    }

    pub fn push_index_entry(&self, entry: IndexEntry) {
        let mut index = self.index.write().unwrap_or_else(PoisonError::into_inner);
        debug_assert!(index.last().is_none_or(|last| {
            last.relative_offset < entry.relative_offset && last.position < entry.position
        }));
        index.push(entry);
    }

    pub fn sealed(&self) -> Option<SealedMeta> {
        self.sealed.get().copied()
    }

    pub fn seal(&self, meta: SealedMeta) {
        let first = self.sealed.set(meta).is_ok();
        debug_assert!(first, "segment {} sealed twice", self.base_offset);
    }

    /// The index entries of records below `offset` (a truncation keeps exactly these).
    pub fn entries_below(&self, offset: Offset) -> Vec<IndexEntry> {
        let relative = offset.get().saturating_sub(self.base_offset.get());
        let index = self.index.read().unwrap_or_else(PoisonError::into_inner);
        let kept = index.partition_point(|e| u64::from(e.relative_offset) < relative);
        index[..kept].to_vec()
    }

    #[cfg(test)]
    pub fn index_len(&self) -> usize {
        self.index
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// Creates the empty files of a new segment and fsyncs the directory, so the new file's name is
/// as durable as the records later synced into it. Returns the segment, its log file (read and
/// write) and its index file (write).
pub(crate) fn create_segment(
    dir: &Path,
    base_offset: Offset,
) -> Result<(Segment, File, File), IoAt> {
    let segment = Segment::new(dir, base_offset, Vec::new());
    // create_new: a file with this name can only be left over from a log this one does not
    // describe; never append to it.
    let log_file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&segment.log_path)
        .at(&segment.log_path)?;
    let index_file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&segment.index_path)
        .at(&segment.index_path)?;
    sync_dir(dir)?;
    Ok((segment, log_file, index_file))
}

/// Makes the directory's entries (file creations) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), IoAt> {
    File::open(dir).and_then(|d| d.sync_all()).at(dir)
}

/// The result of checking records from some position to the end of a segment file.
#[derive(Debug)]
pub(crate) struct Scan {
    /// Index entries for the records scanned (see [`IndexBuilder`]), in memory form and encoded.
    pub entries: Vec<IndexEntry>,
    pub index_bytes: Vec<u8>,
    /// The offset after the last good record.
    pub next_offset: Offset,
    /// The byte position after the last good record.
    pub end_position: u64,
    pub builder: IndexBuilder,
    /// The first record that failed a check; `None` if the scan reached the end of the file.
    pub bad: Option<BadRecord>,
}

/// Checks every record from `(position, offset)` to `file_bytes`, or up to (not including) the
/// record with offset `until`, building index entries.
pub(crate) fn scan_records(
    reader: &mut PositionedReader<'_>,
    file_bytes: u64,
    base_offset: Offset,
    (mut position, mut offset): (u64, Offset),
    until: Offset,
    mut builder: IndexBuilder,
    record_bytes_max: usize,
) -> io::Result<Scan> {
    let mut entries = Vec::new();
    let mut index_bytes = Vec::new();
    let mut bad = None;
    while position < file_bytes && offset < until {
        // Index entries hold u32s; a writer of this crate never goes beyond them (see
        // SEGMENT_BYTES_MAX), so a file that does was not written by it.
        let (Ok(position32), Ok(relative32)) = (
            u32::try_from(position),
            u32::try_from(offset.get() - base_offset.get()),
        ) else {
            bad = Some(BadRecord {
                position,
                offset,
                reason: "the segment is larger than this storage format supports".into(),
                torn_candidate: false,
            });
            break;
        };
        match reader.record(position, offset, record_bytes_max, false)? {
            Ok(good) => {
                if let Some((entry, max_ts)) = builder.on_record(
                    relative32,
                    position32,
                    good.total_bytes,
                    good.timestamp_ms.get(),
                ) {
                    entries.push(entry);
                    index_bytes.extend_from_slice(&encode_entry(entry, max_ts));
                }
                position += good.total_bytes;
                offset = offset.next();
            }
            Err(b) => {
                bad = Some(b);
                break;
            }
        }
    }
    Ok(Scan {
        entries,
        index_bytes,
        next_offset: offset,
        end_position: position,
        builder,
        bad,
    })
}

/// After a bad record at `bad_position` (which should have had offset `expected`), the first later
/// position where a record with a valid CRC and a plausible offset starts. Such a record means the
/// bad one is corruption inside the log, not a torn tail.
///
/// Plausible: at least `expected` (offsets only grow) and at most one more per header's worth of
/// bytes skipped, which rules out nearly all garbage before the CRC is even computed.
pub(crate) fn find_record_after(
    reader: &mut PositionedReader<'_>,
    file_bytes: u64,
    bad_position: u64,
    expected: Offset,
    record_bytes_max: usize,
) -> io::Result<Option<u64>> {
    let header_bytes = RECORD_HEADER_BYTES as u64;
    let mut position = bad_position + 1;
    while position + header_bytes <= file_bytes {
        // Saturating: near u64::MAX (a segment's base offset comes from its file name) a plain
        // add overflows, which panics in debug builds and in release wraps to an empty range.
        let most = expected
            .get()
            .saturating_add((position - bad_position) / header_bytes);
        if reader.plausible_record_at(position, expected.get()..=most, record_bytes_max)? {
            return Ok(Some(position));
        }
        position += 1;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_round_trip_and_reject_lookalikes() {
        let name = file_name(Offset(42), LOG_SUFFIX);
        assert_eq!(name, "00000000000000000042.log");
        assert_eq!(parse_file_name(&name, LOG_SUFFIX), Some(Offset(42)));
        assert_eq!(parse_file_name(&name, INDEX_SUFFIX), None);
        assert_eq!(parse_file_name("42.log", LOG_SUFFIX), None);
        assert_eq!(
            parse_file_name("0000000000000000004x.log", LOG_SUFFIX),
            None
        );
        // 20 digits but above u64::MAX.
        assert_eq!(
            parse_file_name("99999999999999999999.log", LOG_SUFFIX),
            None
        );
    }
}
