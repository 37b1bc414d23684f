//! The sparse offset index of one segment.
//!
//! On disk (`<base>.idx`), a sequence of 16-byte entries:
//! ```text
//! | relative_offset u32 LE | position u32 LE | max_timestamp_ms u64 LE |
//! ```
//! `relative_offset` is the record's offset minus the segment's base offset, `position` its byte
//! position in the `.log` file, `max_timestamp_ms` the largest timestamp of the segment's records
//! up to and including that one (so age-based retention knows a sealed segment's newest timestamp
//! without reading it). The first record always has an entry. The file is derivable from the log,
//! so it is never fsynced on the hot path, and it is validated whenever it is loaded.

use crate::record::{RECORD_HEADER_BYTES, u32_at, u64_at};

/// Bytes of one entry in an `.idx` file.
pub(crate) const INDEX_ENTRY_BYTES: usize = 16;

/// The in-memory form: only what a read needs to seek.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    pub relative_offset: u32,
    pub position: u32,
}

pub(crate) fn encode_entry(entry: IndexEntry, max_timestamp_ms: u64) -> [u8; INDEX_ENTRY_BYTES] {
    let mut out = [0u8; INDEX_ENTRY_BYTES];
    out[0..4].copy_from_slice(&entry.relative_offset.to_le_bytes());
    out[4..8].copy_from_slice(&entry.position.to_le_bytes());
    out[8..16].copy_from_slice(&max_timestamp_ms.to_le_bytes());
    out
}

/// A loaded and structurally valid `.idx` file.
#[derive(Debug)]
pub(crate) struct LoadedIndex {
    pub entries: Vec<IndexEntry>,
    /// `max_timestamp_ms` of the last entry.
    pub last_max_timestamp_ms: u64,
}

/// Parses an `.idx` file of a segment whose `.log` is `log_bytes` long. Rejects anything a
/// writer of this crate would not have produced, so a stale or half-written index is rebuilt
/// instead of misdirecting reads. Whether the last entry really points at its record is checked by
/// the caller, which reads that record anyway.
pub(crate) fn parse_index(bytes: &[u8], log_bytes: u64) -> Result<LoadedIndex, String> {
    if bytes.is_empty() {
        return Err("the index is empty".into());
    }
    if !bytes.len().is_multiple_of(INDEX_ENTRY_BYTES) {
        return Err(format!(
            "index length {} is not a multiple of {INDEX_ENTRY_BYTES}",
            bytes.len()
        ));
    }
    let mut entries: Vec<IndexEntry> = Vec::with_capacity(bytes.len() / INDEX_ENTRY_BYTES);
    let mut last_max_timestamp_ms = 0;
    for (i, raw) in bytes.chunks_exact(INDEX_ENTRY_BYTES).enumerate() {
        let entry = IndexEntry {
            relative_offset: u32_at(raw, 0),
            position: u32_at(raw, 4),
        };
        let max_timestamp_ms = u64_at(raw, 8);
        let well_placed = match entries.last() {
            None => entry.relative_offset == 0 && entry.position == 0,
            Some(prev) => {
                entry.relative_offset > prev.relative_offset
                    && entry.position > prev.position
                    // Every record takes at least a header's worth of bytes.
                    && u64::from(entry.position - prev.position)
                        >= u64::from(entry.relative_offset - prev.relative_offset)
                            * RECORD_HEADER_BYTES as u64
                    && max_timestamp_ms >= last_max_timestamp_ms
            }
        };
        if !well_placed || u64::from(entry.position) >= log_bytes {
            return Err(format!(
                "entry {i} {entry:?} is out of order or out of range"
            ));
        }
        entries.push(entry);
        last_max_timestamp_ms = max_timestamp_ms;
    }
    Ok(LoadedIndex {
        entries,
        last_max_timestamp_ms,
    })
}

/// Decides where index entries go, identically when appending and when rebuilding from the log,
/// and tracks the segment's largest timestamp.
#[derive(Clone, Debug)]
pub(crate) struct IndexBuilder {
    interval_bytes: u64,
    /// Bytes of records since (and including) the record of the last entry.
    bytes_since_entry: u64,
    has_entries: bool,
    pub max_timestamp_ms: u64,
}

impl IndexBuilder {
    /// For an empty segment. `interval_bytes` is at least 1 (checked by the config).
    pub fn new(interval_bytes: u64) -> Self {
        debug_assert!(interval_bytes >= 1);
        Self {
            interval_bytes,
            bytes_since_entry: 0,
            has_entries: false,
            max_timestamp_ms: 0,
        }
    }

    /// To continue scanning at the record of an existing last entry, which the next
    /// [`IndexBuilder::on_record`] call must pass (it will not produce an entry again, because
    /// `bytes_since_entry` starts below the interval).
    pub fn resume(interval_bytes: u64, last_max_timestamp_ms: u64) -> Self {
        Self {
            has_entries: true,
            max_timestamp_ms: last_max_timestamp_ms,
            ..Self::new(interval_bytes)
        }
    }

    /// Accounts for one record; returns the entry to add for it, if any, with its
    /// `max_timestamp_ms`.
    pub fn on_record(
        &mut self,
        relative_offset: u32,
        position: u32,
        total_bytes: u64,
        timestamp_ms: u64,
    ) -> Option<(IndexEntry, u64)> {
        self.max_timestamp_ms = self.max_timestamp_ms.max(timestamp_ms);
        let add = !self.has_entries || self.bytes_since_entry >= self.interval_bytes;
        if add {
            self.has_entries = true;
            self.bytes_since_entry = 0;
        }
        self.bytes_since_entry += total_bytes;
        add.then_some((
            IndexEntry {
                relative_offset,
                position,
            },
            self.max_timestamp_ms,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(entries: &[(u32, u32, u64)]) -> Vec<u8> {
        entries
            .iter()
            .flat_map(|&(r, p, t)| {
                encode_entry(
                    IndexEntry {
                        relative_offset: r,
                        position: p,
                    },
                    t,
                )
            })
            .collect()
    }

    #[test]
    fn parse_index_accepts_what_the_builder_writes() {
        let loaded = parse_index(&file(&[(0, 0, 5), (3, 100, 7)]), 200).unwrap();
        assert_eq!(loaded.entries.len(), 2);
        assert_eq!(loaded.last_max_timestamp_ms, 7);
    }

    #[test]
    fn parse_index_rejects_inconsistent_files() {
        let cases: &[(&[u8], &str)] = &[
            (&[], "empty"),
            (&[0; 17], "partial entry"),
            (&file(&[(1, 0, 0)]), "first entry not at 0"),
            (&file(&[(0, 0, 0), (0, 0, 0)]), "zero-filled"),
            (&file(&[(0, 0, 0), (2, 30, 0)]), "positions too close"),
            (&file(&[(0, 0, 9), (1, 30, 8)]), "timestamps go back"),
            (&file(&[(0, 0, 0), (1, 300, 0)]), "beyond the log"),
        ];
        for (bytes, what) in cases {
            assert!(parse_index(bytes, 200).is_err(), "{what} accepted");
        }
    }

    #[test]
    fn builder_indexes_first_record_then_every_interval() {
        let mut b = IndexBuilder::new(100);
        let added: Vec<bool> = (0..6)
            .map(|i| b.on_record(i, i * 40, 40, 0).is_some())
            .collect();
        // 0: first; 3: 120 bytes since entry 0 >= 100; then 40, 80 < 100.
        assert_eq!(added, [true, false, false, true, false, false]);
    }
}
