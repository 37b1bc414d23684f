//! [`GroupStore`]: the durable storage of one Raft group, a [`weir_raft::LogStore`] on a
//! directory. The group's log is the topic's log: a weir-storage [`Log`] in which Raft index `i`
//! is the record at offset `i - 1` (dense on both sides).
//!
//! # On-disk layout
//!
//! ```text
//! <group dir>/
//!   group.lock        exclusive flock held while the store is open (one GroupStore per directory)
//!   log/              weir-storage Log (docs/STORAGE.md); record at offset i-1 = Raft entry i
//!   raft-state        HardState, replaced atomically (absent = default)
//!   snapshot          latest Snapshot, replaced atomically (absent = none)
//!   *.tmp             a replacement being written; removed at open (never read)
//! ```
//!
//! - A log record's payload is the weir-proto codec encoding of `(term, payload)` of the entry
//!   (its index is the record's offset + 1). Its header timestamp is `timestamp_of(payload)`, or
//!   the previous record's timestamp for entries without one, and never less than the previous
//!   record's: timestamps never decrease along the log, as age retention needs.
//! - `raft-state`: `| "weirhst1" | len u32 | crc32 u32 | HardState (codec, len bytes) |`, the CRC
//!   (CRC-32/IEEE) covering the length field and the body.
//! - `snapshot`: `| "weirsnp1" | meta_len u32 | data_len u64 | crc32 u32 | SnapshotMeta (codec) |
//!   data |`, the CRC covering both length fields, the meta and the data. The data is stored raw
//!   (the codec's decode limit is a frame, far below `SNAPSHOT_BYTES_MAX`).
//! - Both files are replaced by writing `<name>.tmp`, fsyncing it, renaming it over `<name>` and
//!   fsyncing the directory: a crash leaves the old or the new file, never a mix. A file whose
//!   magic, lengths or CRC do not check out makes [`GroupStore::open`] fail naming the file.
//!
//! # Writes and durability
//!
//! The log is opened with `FsyncPolicy::Never` and no retention (whatever the `LogConfig` says):
//! the store decides when to fsync and what may be deleted. [`GroupStore::append`] truncates a
//! conflicting suffix (weir-storage `truncate_from`, itself durable), appends, and commits without
//! fsync, so reads see the entries at once. [`GroupStore::sync`] fsyncs once for everything
//! appended since the previous sync (group commit). Hard state, snapshot installation and
//! compaction are durable before they return.
//!
//! A snapshot never leaves a gap: the log always starts at or before `snapshot.last_index + 1`
//! (storage offset `<= last_index`). [`GroupStore::install_snapshot`] writes the snapshot, then
//! empties the log and restarts it at offset `last_index` (weir-storage `Log::reset_to`, itself
//! durable and crash-safe: a crash leaves the old log or the empty one). [`GroupStore::compact`]
//! writes the snapshot, then deletes the whole segments it covers (weir-storage
//! `Log::remove_segments_below`; whole segments only: entries of a partly covered segment stay on
//! disk but are never served). Open repairs either operation interrupted by a crash: if the log
//! neither starts right after the snapshot nor holds the snapshot's last entry with its term, it
//! is restarted after the snapshot (the snapshot is committed state, so whatever the log held
//! there was uncommitted); segments the snapshot covers are deleted again.
//!
//! The log is opened once, by [`GroupStore::open`], and never closed or reopened while the store
//! is open: a `LogReader` taken from it stays valid across compactions and installations (it
//! gets `OutOfRange` below the new start, and the new entries after an installation), and the
//! log's counters ([`GroupStore::log_stats`]) keep counting.
//!
//! # Term cache
//!
//! `term()` is answered from memory: a list of term runs `(first index of the run, term)`, like
//! Kafka's leader-epoch cache, maintained on append, truncation, compaction and installation.
//! It is rebuilt at open by reading every entry from the first index to the last (CRC-checked,
//! decoded, terms checked to never decrease): open costs one sequential read of the retained log
//! after the snapshot. No checkpoint file is kept.
//!
//! # Failures
//!
//! Every I/O failure of a write poisons the store: that call and every later write return an
//! error (reopen to recover from disk). [`LogStore`] methods cannot return errors: a read that
//! finds the log corrupt returns what it read before the bad record (possibly nothing), logs a
//! `tracing::error!` naming the log and offset, and records a sticky failure that
//! [`GroupStore::failure`] reports (and that also stops every later write).

use std::cell::OnceCell;
use std::collections::VecDeque;
use std::fmt;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use weir_proto::codec;
use weir_proto::limits::FRAME_BYTES_MAX;
use weir_proto::{Offset, TimestampMs};
use weir_raft::{
    Entry, HardState, LogIndex, LogStore, Payload, SNAPSHOT_BYTES_MAX, Snapshot, SnapshotMeta, Term,
};
use weir_storage::{
    FsyncPolicy, Log, LogConfig, LogError, LogReader, LogStats, OpenError, ReadError,
};

/// The weir-storage log's directory inside the group directory.
pub const LOG_DIR_NAME: &str = "log";
/// The hard state file inside the group directory.
pub const HARD_STATE_FILE_NAME: &str = "raft-state";
/// The snapshot file inside the group directory.
pub const SNAPSHOT_FILE_NAME: &str = "snapshot";
/// Held with an exclusive flock while the store is open.
pub const LOCK_FILE_NAME: &str = "group.lock";

const TMP_SUFFIX: &str = ".tmp";
const HARD_STATE_MAGIC: [u8; 8] = *b"weirhst1";
const SNAPSHOT_MAGIC: [u8; 8] = *b"weirsnp1";
/// magic, len u32, crc u32.
const HARD_STATE_HEADER_BYTES: usize = 16;
/// A hard state is a term and an optional node id: a few bytes.
const HARD_STATE_BODY_BYTES_MAX: usize = 256;
/// magic, meta_len u32, data_len u64, crc u32.
const SNAPSHOT_HEADER_BYTES: usize = 24;
/// A snapshot's meta is two indexes and a membership of at most VOTERS_MAX + LEARNERS_MAX ids.
const SNAPSHOT_META_BYTES_MAX: usize = 64 * 1024;
/// Payload bytes asked of the log per read while scanning it.
const READ_BATCH_BYTES: usize = 1024 * 1024;
/// Records asked of the log per read.
const READ_BATCH_RECORDS: usize = 4096;
/// Most entries kept in memory after their append ([`GroupStore::entries`] serves them without
/// reading the log back): twice the PUTs a topic admits at once, so what a leader applies or
/// sends to followers next is almost always still there.
pub const TAIL_CACHE_ENTRIES_MAX: usize = 8192;
/// Most bytes ([`Entry::size_bytes`]) of those entries: bounds the memory per group.
pub const TAIL_CACHE_BYTES_MAX: usize = 2 * 1024 * 1024;

/// Extracts the leader-assigned timestamp a `Normal` payload carries, if any.
pub type TimestampOf = fn(&Payload) -> Option<TimestampMs>;

/// Why a [`GroupStore`] operation failed.
#[derive(Debug, thiserror::Error)]
pub enum GroupStoreError {
    #[error("group store I/O error on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot open the group's log: {0}")]
    OpenLog(#[from] OpenError),
    #[error("group log write failed: {0}")]
    Log(#[from] LogError),
    #[error("group log read failed: {0}")]
    Read(#[from] ReadError),
    /// A file of the store (or a record of its log) does not check out.
    #[error("corrupt group store file {}: {reason}", file.display())]
    Corrupt { file: PathBuf, reason: String },
    /// The files are individually valid but do not fit together (e.g. log entries missing
    /// between the snapshot and the log's start).
    #[error("inconsistent group store in {}: {reason}", dir.display())]
    Inconsistent { dir: PathBuf, reason: String },
    #[error("group store {} is in use by another process", dir.display())]
    Locked { dir: PathBuf },
    /// An earlier write failed (or a read found corruption): every write is refused. Holds that
    /// failure's text. Reopen the store to recover from what is on disk.
    #[error("group store is poisoned by an earlier failure: {0}")]
    Poisoned(String),
    /// The entries cannot follow the stored log (a driver bug); nothing was changed.
    #[error("invalid append: {0}")]
    InvalidAppend(String),
    /// The snapshot does not fit the stored log or is too large; nothing was changed.
    #[error("invalid snapshot: {0}")]
    InvalidSnapshot(String),
    /// The entry's encoding exceeds what a log record (and the codec) can hold; nothing changed.
    #[error("entry {index} takes {bytes} bytes encoded, above the {max}-byte record limit")]
    EntryTooLarge {
        index: LogIndex,
        bytes: usize,
        max: usize,
    },
    #[error(transparent)]
    Encode(#[from] codec::EncodeError),
}

/// A log record's payload, as written (borrowing the entry's payload).
#[derive(Serialize)]
struct StoredEntryRef<'a> {
    term: Term,
    payload: &'a Payload,
}

/// A log record's payload, as read back. Same encoding as [`StoredEntryRef`].
#[derive(Deserialize)]
struct StoredEntry {
    term: Term,
    payload: Payload,
}

/// Decodes a record payload of a group log into the entry's term and payload. For readers of
/// the topic's log (the index of the entry is the record's offset + 1).
pub fn decode_record(payload: &[u8]) -> Result<(Term, Payload), codec::DecodeError> {
    let stored: StoredEntry = codec::decode(payload)?;
    Ok((stored.term, stored.payload))
}

/// The durable storage of one Raft group. See the module docs for the layout and the rules.
pub struct GroupStore {
    dir: PathBuf,
    log_dir: PathBuf,
    log_config: LogConfig,
    log: Log,
    /// Reader of `log` (readers see every appended record: the store commits each append
    /// without fsync). The log is never closed while the store is open, so this reader, and
    /// any other taken from the log, stays valid across compactions and installations.
    reader: LogReader,
    timestamp_of: TimestampOf,
    hard_state: HardState,
    snapshot: Option<Snapshot>,
    /// Oldest offset the log retains (may be below the snapshot: whole segments only go).
    storage_start: u64,
    /// Offset the next append gets = the last stored index.
    next: u64,
    /// Terms of the entries `first_index()..=last_index()`.
    terms: TermRuns,
    /// Timestamp of the log's last record (0 when the log is empty).
    last_timestamp: TimestampMs,
    /// The last entries appended, in memory: see [`TailCache`].
    tail: TailCache,
    /// First failure of a write, or corruption found by a read. Sticky.
    failure: OnceCell<String>,
    _lock: File,
}

impl fmt::Debug for GroupStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupStore")
            .field("dir", &self.dir)
            .field("hard_state", &self.hard_state)
            .field(
                "snapshot",
                &self.snapshot.as_ref().map(|s| (&s.meta, s.data.len())),
            )
            .field("storage_start", &self.storage_start)
            .field("next", &self.next)
            .field("terms", &self.terms)
            .field("failure", &self.failure.get())
            .finish_non_exhaustive()
    }
}

impl GroupStore {
    /// Opens (creating if needed) the group store in `dir`: recovers the log (weir-storage
    /// recovery), reads the hard state and the snapshot (missing = default / none; a file that
    /// does not check out is an error naming it), repairs a snapshot installation or compaction
    /// a crash interrupted, and rebuilds the term cache by reading the log after the snapshot.
    ///
    /// `log_config`'s `fsync` and `retention_*` are ignored: the store fsyncs in
    /// [`GroupStore::sync`] and deletes only what a snapshot covers.
    pub fn open(
        dir: &Path,
        log_config: LogConfig,
        timestamp_of: TimestampOf,
    ) -> Result<Self, GroupStoreError> {
        let _span = tracing::info_span!("group_store_open", dir = %dir.display()).entered();
        create_dir_durably(dir)?;
        let lock = lock_dir(dir)?;
        for name in [HARD_STATE_FILE_NAME, SNAPSHOT_FILE_NAME] {
            let tmp = dir.join(format!("{name}{TMP_SUFFIX}"));
            match fs::remove_file(&tmp) {
                Ok(()) => {
                    tracing::warn!(file = %tmp.display(), "removed an unfinished replacement")
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error(&tmp, e)),
            }
        }
        let hard_state = read_hard_state(&dir.join(HARD_STATE_FILE_NAME))?.unwrap_or_default();
        let snapshot = read_snapshot(&dir.join(SNAPSHOT_FILE_NAME))?;
        let log_config = LogConfig {
            fsync: FsyncPolicy::Never,
            retention_bytes: None,
            retention_ms: None,
            ..log_config
        };
        let log_dir = dir.join(LOG_DIR_NAME);
        let log = Log::open(&log_dir, log_config.clone())?;
        let mut store = GroupStore {
            dir: dir.to_owned(),
            reader: log.reader(),
            storage_start: log.start_offset().get(),
            next: log.next_offset().get(),
            log,
            log_dir,
            log_config,
            timestamp_of,
            hard_state,
            snapshot,
            terms: TermRuns::default(),
            last_timestamp: TimestampMs::ZERO,
            tail: TailCache::default(),
            failure: OnceCell::new(),
            _lock: lock,
        };
        store.reconcile()?;
        store.rebuild_terms()?;
        store.last_timestamp = match store.next.checked_sub(1) {
            Some(offset) if offset >= store.storage_start => store.read_at(offset)?.0,
            _ => TimestampMs::ZERO,
        };
        store.delete_covered_segments()?;
        tracing::info!(
            first_index = %store.first_index(),
            last_index = %store.last_index(),
            snapshot_index = ?store.snapshot.as_ref().map(|s| s.meta.last_index),
            term_runs = store.terms.runs.len(),
            "group store opened"
        );
        Ok(store)
    }

    /// A reader of the group's log (record at offset `i - 1` = Raft entry `i`). It stays valid
    /// across compactions and snapshot installations (see the module docs).
    pub fn reader(&self) -> LogReader {
        self.reader.clone()
    }

    /// Timestamp of the log's last record: timestamps never decrease along the log, so a
    /// leader stamps new entries with at least this.
    pub fn last_timestamp(&self) -> TimestampMs {
        self.last_timestamp
    }

    /// The last index retention with these limits would let go: entries up to it sit in
    /// whole segments that are too old or beyond the size limit (0: none). Deletes nothing:
    /// the driver compacts up to it (at most its applied index) with [`GroupStore::compact`].
    pub fn retention_cutoff(
        &self,
        now_ms: TimestampMs,
        retention_bytes: Option<u64>,
        retention_ms: Option<u64>,
    ) -> LogIndex {
        // The record at offset o is entry o + 1: records below offset c are entries <= c.
        LogIndex(
            self.log
                .retention_cutoff(now_ms, retention_bytes, retention_ms)
                .get(),
        )
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The first failure of a write, or corruption found by a read, if any. Sticky: once set,
    /// every write fails; the driver should stop the group (reopening recovers from disk).
    pub fn failure(&self) -> Option<&str> {
        self.failure.get().map(String::as_str)
    }

    /// Counters of the underlying log (since the store was opened: the log is never reopened
    /// while the store is open).
    pub fn log_stats(&self) -> LogStats {
        self.log.stats()
    }

    /// Last index known durable (entries up to it survive a crash).
    pub fn synced_index(&self) -> LogIndex {
        let snapshot_index = self.snapshot_index();
        let synced = self.log.synced_offset().get();
        LogIndex(synced.max(snapshot_index))
    }

    /// `PersistEntries`: truncates every stored entry with index `>= entries[0].index`, then
    /// appends `entries` (contiguous, starting within `first_index()..=last_index() + 1`, terms
    /// not decreasing). Visible to reads at once, durable only after [`GroupStore::sync`] (the
    /// truncation itself is durable before this returns). Empty `entries` is a no-op.
    pub fn append(&mut self, entries: &[Entry]) -> Result<(), GroupStoreError> {
        self.check_writable()?;
        let Some(first) = entries.first() else {
            return Ok(());
        };
        self.check_append(entries)?;
        let limit = self.log_config.record_bytes_max.min(FRAME_BYTES_MAX);
        let mut buf = Vec::new();
        let mut ends = Vec::with_capacity(entries.len());
        for entry in entries {
            let start = buf.len();
            codec::encode_into(
                &StoredEntryRef {
                    term: entry.term,
                    payload: &entry.payload,
                },
                &mut buf,
            )?;
            if buf.len() - start > limit {
                return Err(GroupStoreError::EntryTooLarge {
                    index: entry.index,
                    bytes: buf.len() - start,
                    max: limit,
                });
            }
            ends.push(buf.len());
        }
        let from = first.index.0 - 1;
        let result = self.append_inner(entries, from, &buf, &ends);
        if result.is_err() {
            // The append may have stopped halfway: the cache no longer matches the log.
            self.tail.clear();
        }
        result.map_err(|e| self.poison(e))
    }

    /// `sync` half of group commit: makes every entry appended so far durable with at most one
    /// fsync (none if nothing was appended since the last sync), and returns the last index. The
    /// driver then reports `handle_persisted(last, term(last))`.
    pub fn sync(&mut self) -> Result<LogIndex, GroupStoreError> {
        self.check_writable()?;
        let log = &mut self.log;
        if log.synced_offset() < log.next_offset() {
            let result = log.sync();
            result.map_err(|e| self.poison(e.into()))?;
        }
        Ok(self.last_index())
    }

    /// `PersistHardState`: durable before it returns.
    pub fn set_hard_state(&mut self, hard_state: HardState) -> Result<(), GroupStoreError> {
        self.check_writable()?;
        let mut body = Vec::new();
        codec::encode_into(&hard_state, &mut body)?;
        let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
        let mut bytes = Vec::with_capacity(HARD_STATE_HEADER_BYTES + body.len());
        bytes.extend_from_slice(&HARD_STATE_MAGIC);
        bytes.extend_from_slice(&len.to_le_bytes());
        bytes.extend_from_slice(&hard_state_crc(len, &body).to_le_bytes());
        bytes.extend_from_slice(&body);
        let result = replace_file(&self.dir, HARD_STATE_FILE_NAME, &[&bytes]);
        result.map_err(|e| self.poison(e))?;
        self.hard_state = hard_state;
        Ok(())
    }

    /// `PersistSnapshot` (follower): makes `snapshot` durable, then empties the log and restarts
    /// it after `snapshot.meta.last_index`. Durable before it returns; the driver then reports
    /// `handle_snapshot_persisted(last_index)`. A snapshot older than the stored one, or with
    /// data above `SNAPSHOT_BYTES_MAX`, is refused and nothing changes.
    pub fn install_snapshot(&mut self, snapshot: Snapshot) -> Result<(), GroupStoreError> {
        self.check_writable()?;
        check_snapshot_size(&snapshot)?;
        let last = snapshot.meta.last_index;
        if last < LogIndex(self.snapshot_index()) {
            return Err(GroupStoreError::InvalidSnapshot(format!(
                "snapshot up to {last} is older than the stored one (up to {})",
                self.snapshot_index()
            )));
        }
        let result = self.install_inner(snapshot);
        result.map_err(|e| self.poison(e))
    }

    /// The driver took `snapshot` of its state machine: makes it durable, stops serving the
    /// entries it covers, and deletes the log segments it covers entirely. Durable before it
    /// returns; the driver then calls `handle_compacted`. A snapshot not newer than the stored
    /// one is ignored (`Ok`). It must cover a stored entry with the same term (or the last index
    /// of the stored snapshot); otherwise, or with data above `SNAPSHOT_BYTES_MAX`, it is refused
    /// and nothing changes.
    pub fn compact(&mut self, snapshot: Snapshot) -> Result<(), GroupStoreError> {
        self.check_writable()?;
        check_snapshot_size(&snapshot)?;
        let last = snapshot.meta.last_index;
        if self.snapshot.is_some() && last <= LogIndex(self.snapshot_index()) {
            tracing::debug!(%last, "compaction not beyond the stored snapshot: ignored");
            return Ok(());
        }
        if last > self.last_index() {
            return Err(GroupStoreError::InvalidSnapshot(format!(
                "snapshot up to {last} is beyond the last stored index {}",
                self.last_index()
            )));
        }
        if last != LogIndex(0) && self.term(last) != Some(snapshot.meta.last_term) {
            return Err(GroupStoreError::InvalidSnapshot(format!(
                "snapshot says term {} at {last}, the log holds {:?}",
                snapshot.meta.last_term,
                self.term(last)
            )));
        }
        let result = self.compact_inner(snapshot);
        result.map_err(|e| self.poison(e))
    }

    /// Test hook: the next data fsync of the log fails as if the disk had.
    #[doc(hidden)]
    pub fn inject_fault_next_sync(&mut self) {
        self.log.inject_fault_next_sync();
    }

    // ------------------------------------------------------------------ writes

    fn check_writable(&self) -> Result<(), GroupStoreError> {
        match self.failure.get() {
            Some(text) => Err(GroupStoreError::Poisoned(text.clone())),
            None => Ok(()),
        }
    }

    fn poison(&self, error: GroupStoreError) -> GroupStoreError {
        let text = error.to_string();
        tracing::error!(dir = %self.dir.display(), error = %text, "group store poisoned");
        let _ = self.failure.set(text);
        error
    }

    /// Checks that `entries` (non-empty) can follow the stored log.
    fn check_append(&self, entries: &[Entry]) -> Result<(), GroupStoreError> {
        let first = &entries[0];
        let (lo, hi) = (self.first_index(), self.last_index().next());
        if first.index < lo || first.index > hi {
            return Err(GroupStoreError::InvalidAppend(format!(
                "entries start at {} outside {lo}..={hi}",
                first.index
            )));
        }
        for pair in entries.windows(2) {
            if pair[1].index != pair[0].index.next() {
                return Err(GroupStoreError::InvalidAppend(format!(
                    "entries not contiguous: {} follows {}",
                    pair[1].index, pair[0].index
                )));
            }
            if pair[1].term < pair[0].term {
                return Err(GroupStoreError::InvalidAppend(format!(
                    "term decreases from {} to {} at {}",
                    pair[0].term, pair[1].term, pair[1].index
                )));
            }
        }
        let prev = first.index.prev();
        match self.term(prev) {
            Some(term) if term <= first.term => Ok(()),
            other => Err(GroupStoreError::InvalidAppend(format!(
                "entry {} of term {} cannot follow {prev} of term {other:?}",
                first.index, first.term
            ))),
        }
    }

    fn append_inner(
        &mut self,
        entries: &[Entry],
        from: u64,
        buf: &[u8],
        ends: &[usize],
    ) -> Result<(), GroupStoreError> {
        if from < self.next {
            self.tail.truncate_from(LogIndex(from + 1));
            self.log.truncate_from(Offset(from))?;
            self.next = from;
            self.terms.truncate_from(LogIndex(from + 1));
            self.last_timestamp = match from.checked_sub(1) {
                Some(prev) if prev >= self.storage_start => self.read_at(prev)?.0,
                _ => TimestampMs::ZERO,
            };
        }
        let timestamp_of = self.timestamp_of;
        let log = &mut self.log;
        let mut start = 0;
        for (entry, &end) in entries.iter().zip(ends) {
            let previous = self.last_timestamp;
            let timestamp = timestamp_of(&entry.payload).map_or(previous, |t| t.max(previous));
            let offset = log.append(timestamp, &buf[start..end])?;
            if offset.get() + 1 != entry.index.0 {
                return Err(GroupStoreError::Inconsistent {
                    dir: self.dir.clone(),
                    reason: format!(
                        "entry {} was stored at offset {offset} (expected {})",
                        entry.index,
                        entry.index.0 - 1
                    ),
                });
            }
            start = end;
            self.next = offset.get() + 1;
            self.terms.push(entry.index, entry.term);
            self.last_timestamp = timestamp;
        }
        log.commit()?;
        self.tail.extend(entries);
        Ok(())
    }

    fn install_inner(&mut self, snapshot: Snapshot) -> Result<(), GroupStoreError> {
        write_snapshot(&self.dir, &snapshot)?;
        let last = snapshot.meta.last_index;
        self.snapshot = Some(snapshot);
        self.reset_log_to(last.0)?;
        tracing::info!(%last, "snapshot installed; the log restarts after it");
        Ok(())
    }

    fn compact_inner(&mut self, snapshot: Snapshot) -> Result<(), GroupStoreError> {
        write_snapshot(&self.dir, &snapshot)?;
        let last = snapshot.meta.last_index;
        self.snapshot = Some(snapshot);
        self.terms.trim_below(last.next());
        self.tail.trim_below(last.next());
        tracing::debug!(%last, "compacted");
        self.delete_covered_segments()
    }

    /// Empties the log and restarts it at offset `base` (the next entry is index `base + 1`):
    /// weir-storage's `reset_to`, durable and crash-safe (a crash leaves the old log or the
    /// empty one at `base`; open repairs the old one, since the snapshot is already durable).
    /// The log stays open: readers taken from it keep working.
    fn reset_log_to(&mut self, base: u64) -> Result<(), GroupStoreError> {
        self.tail.clear();
        self.log.reset_to(Offset(base))?;
        self.storage_start = self.log.start_offset().get();
        self.next = self.log.next_offset().get();
        self.terms = TermRuns::default();
        self.last_timestamp = TimestampMs::ZERO;
        if self.storage_start != base || self.next != base {
            return Err(GroupStoreError::Inconsistent {
                dir: self.dir.clone(),
                reason: format!(
                    "the log restarted at offsets {}..{} instead of being empty at {base}",
                    self.storage_start, self.next
                ),
            });
        }
        Ok(())
    }

    /// Deletes the log segments the snapshot covers entirely (weir-storage's
    /// `remove_segments_below`: oldest first, `.log` before `.idx`, so a crash leaves a
    /// contiguous log and at most an orphan index that open removes; durable before it returns).
    /// A segment holding offsets `b..e` is covered iff `e <= last_index` (offset
    /// `last_index - 1` is the snapshot's last entry). The log stays open.
    fn delete_covered_segments(&mut self) -> Result<(), GroupStoreError> {
        if self.snapshot.is_none() {
            return Ok(());
        }
        let covered = self.snapshot_index();
        let report = self.log.remove_segments_below(Offset(covered))?;
        self.storage_start = report.start_offset.get();
        if self.storage_start > covered || self.log.next_offset().get() != self.next {
            return Err(GroupStoreError::Inconsistent {
                dir: self.dir.clone(),
                reason: format!(
                    "after deleting {} segments the log holds offsets {}..{}, expected a start at or below {covered} and the end at {}",
                    report.deleted_segments,
                    self.storage_start,
                    self.log.next_offset(),
                    self.next
                ),
            });
        }
        if report.deleted_segments > 0 {
            tracing::info!(
                deleted_segments = report.deleted_segments,
                start_offset = report.start_offset.get(),
                "deleted log segments covered by the snapshot"
            );
        }
        Ok(())
    }

    // ------------------------------------------------------------------ open

    /// Makes the log fit the snapshot: the log must start no later than right after the
    /// snapshot's last index, and either start right after it or hold it with the snapshot's
    /// term; otherwise it is what a crash left of an installation or a compaction (see the
    /// module docs) and is restarted after the snapshot.
    fn reconcile(&mut self) -> Result<(), GroupStoreError> {
        let start = self.storage_start;
        let Some(meta) = self.snapshot.as_ref().map(|s| s.meta.clone()) else {
            if start != 0 {
                return Err(self.inconsistent(format!(
                    "the log starts at index {} but there is no snapshot covering the entries before it",
                    start + 1
                )));
            }
            return Ok(());
        };
        let last = meta.last_index.0;
        if start > last {
            return Err(self.inconsistent(format!(
                "the log starts at index {} but the snapshot ends at {}: entries are missing",
                start + 1,
                meta.last_index
            )));
        }
        if start == last {
            return Ok(());
        }
        if last <= self.next {
            let (_, term) = self.read_at(last - 1)?;
            if term == meta.last_term {
                return Ok(());
            }
            tracing::warn!(
                snapshot_index = %meta.last_index,
                snapshot_term = %meta.last_term,
                log_term = %term,
                "the log disagrees with the snapshot: restarting it after the snapshot"
            );
        } else {
            tracing::warn!(
                snapshot_index = %meta.last_index,
                log_last_index = self.next,
                "the log ends before the snapshot: restarting it after the snapshot"
            );
        }
        self.reset_log_to(last)
    }

    /// Reads every entry from the first index to the last, checking it decodes and that terms
    /// never decrease, and builds the term cache.
    fn rebuild_terms(&mut self) -> Result<(), GroupStoreError> {
        let mut terms = TermRuns::default();
        let mut previous = self.snapshot.as_ref().map_or(Term(0), |s| s.meta.last_term);
        let mut offset = self.first_index().0 - 1;
        while offset < self.next {
            let records = self
                .reader
                .read(Offset(offset), READ_BATCH_BYTES, READ_BATCH_RECORDS)?;
            if records.is_empty() {
                return Err(self.inconsistent(format!(
                    "the log returned nothing at offset {offset} below its end {}",
                    self.next
                )));
            }
            for record in records {
                if record.offset.get() != offset {
                    return Err(self.corrupt_log(
                        offset,
                        format!("record with offset {} read", record.offset),
                    ));
                }
                let stored: StoredEntry = codec::decode(&record.payload)
                    .map_err(|e| self.corrupt_log(offset, e.to_string()))?;
                if stored.term < previous {
                    return Err(self.corrupt_log(
                        offset,
                        format!("term {} follows term {previous}", stored.term),
                    ));
                }
                previous = stored.term;
                terms.push(LogIndex(offset + 1), stored.term);
                offset += 1;
            }
        }
        self.terms = terms;
        Ok(())
    }

    /// Timestamp and term of the record at `offset` (which must be stored).
    fn read_at(&self, offset: u64) -> Result<(TimestampMs, Term), GroupStoreError> {
        let records = self.reader.read(Offset(offset), 0, 1)?;
        let Some(record) = records.into_iter().next() else {
            return Err(self.inconsistent(format!("no record at offset {offset}")));
        };
        if record.offset.get() != offset {
            return Err(self.corrupt_log(offset, format!("record {} read", record.offset)));
        }
        let stored: StoredEntry =
            codec::decode(&record.payload).map_err(|e| self.corrupt_log(offset, e.to_string()))?;
        Ok((record.timestamp_ms, stored.term))
    }

    fn inconsistent(&self, reason: String) -> GroupStoreError {
        GroupStoreError::Inconsistent {
            dir: self.dir.clone(),
            reason,
        }
    }

    fn corrupt_log(&self, offset: u64, reason: String) -> GroupStoreError {
        GroupStoreError::Corrupt {
            file: self.log_dir.clone(),
            reason: format!("record at offset {offset} (index {}): {reason}", offset + 1),
        }
    }

    // ------------------------------------------------------------------ reads

    fn snapshot_index(&self) -> u64 {
        self.snapshot.as_ref().map_or(0, |s| s.meta.last_index.0)
    }

    /// Records a read failure (sticky) and logs it.
    fn read_failed(&self, offset: u64, reason: String) {
        tracing::error!(
            log = %self.log_dir.display(),
            offset,
            index = offset + 1,
            %reason,
            "group log read failed"
        );
        let _ = self.failure.set(format!(
            "reading {} at offset {offset}: {reason}",
            self.log_dir.display()
        ));
    }
}

impl LogStore for GroupStore {
    fn hard_state(&self) -> HardState {
        self.hard_state.clone()
    }

    fn snapshot(&self) -> Option<Snapshot> {
        self.snapshot.clone()
    }

    fn first_index(&self) -> LogIndex {
        LogIndex((self.snapshot_index() + 1).max(self.storage_start + 1))
    }

    fn last_index(&self) -> LogIndex {
        LogIndex(self.next.max(self.snapshot_index()))
    }

    fn term(&self, index: LogIndex) -> Option<Term> {
        match &self.snapshot {
            Some(s) if s.meta.last_index == index => return Some(s.meta.last_term),
            None if index == LogIndex(0) => return Some(Term(0)),
            _ => {}
        }
        if index < self.first_index() || index > self.last_index() {
            return None;
        }
        self.terms.get(index)
    }

    fn entries(&self, lo: LogIndex, hi_exclusive: LogIndex, max_bytes: usize) -> Vec<Entry> {
        let mut out = Vec::new();
        let hi = hi_exclusive.min(self.last_index().next());
        if lo >= hi || lo < self.first_index() {
            return out;
        }
        if let Some(cached) = self.tail.entries(lo, hi, max_bytes) {
            return cached;
        }
        let mut bytes = 0usize;
        let mut next = lo.0;
        while next < hi.0 {
            if !out.is_empty() && bytes >= max_bytes {
                break;
            }
            let offset = next - 1;
            let want = usize::try_from(hi.0 - next)
                .unwrap_or(usize::MAX)
                .min(READ_BATCH_RECORDS);
            // The reader counts stored payload bytes, not `Entry::size_bytes`: ask for what is
            // left of the budget (capped, so one read holds at most a batch), then cut exactly.
            let budget = max_bytes.saturating_sub(bytes).min(READ_BATCH_BYTES);
            let records = match self.reader.read(Offset(offset), budget, want) {
                Ok(records) => records,
                Err(e) => {
                    self.read_failed(offset, e.to_string());
                    break;
                }
            };
            if records.is_empty() {
                self.read_failed(offset, "the log ends before the last index".to_owned());
                break;
            }
            for record in records {
                let offset = next - 1;
                if record.offset.get() != offset {
                    self.read_failed(offset, format!("record with offset {} read", record.offset));
                    return out;
                }
                let stored: StoredEntry = match codec::decode(&record.payload) {
                    Ok(stored) => stored,
                    Err(e) => {
                        self.read_failed(offset, e.to_string());
                        return out;
                    }
                };
                let index = LogIndex(next);
                let expected = self.terms.get(index);
                if expected != Some(stored.term) {
                    self.read_failed(
                        offset,
                        format!(
                            "the log holds term {} where term {expected:?} was written",
                            stored.term
                        ),
                    );
                    return out;
                }
                let entry = Entry {
                    term: stored.term,
                    index,
                    payload: stored.payload,
                };
                bytes = bytes.saturating_add(entry.size_bytes());
                if !out.is_empty() && bytes > max_bytes {
                    return out;
                }
                out.push(entry);
                next += 1;
                if next >= hi.0 {
                    break;
                }
            }
        }
        out
    }
}

/// The entries appended last, contiguous and ending at the store's last index (when not
/// empty), bounded by [`TAIL_CACHE_ENTRIES_MAX`] and [`TAIL_CACHE_BYTES_MAX`]: applying and
/// replicating read the newest entries, and this spares them a read and a decode of each.
/// Kept in step with the log: truncated with it, trimmed by compaction, emptied by a reset.
#[derive(Debug, Default)]
struct TailCache {
    entries: VecDeque<Entry>,
    bytes: usize,
}

impl TailCache {
    /// Adds `entries`, just appended after what the cache holds (else the cache restarts with
    /// them), then forgets the oldest past the bounds.
    fn extend(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first() else {
            return;
        };
        if self
            .entries
            .back()
            .is_some_and(|last| last.index.next() != first.index)
        {
            self.clear();
        }
        for entry in entries {
            self.bytes += entry.size_bytes();
            self.entries.push_back(entry.clone());
        }
        while self.entries.len() > TAIL_CACHE_ENTRIES_MAX || self.bytes > TAIL_CACHE_BYTES_MAX {
            let Some(oldest) = self.entries.pop_front() else {
                break;
            };
            self.bytes -= oldest.size_bytes();
        }
    }

    /// Forgets entries `>= index`.
    fn truncate_from(&mut self, index: LogIndex) {
        while self.entries.back().is_some_and(|last| last.index >= index) {
            if let Some(gone) = self.entries.pop_back() {
                self.bytes -= gone.size_bytes();
            }
        }
    }

    /// Forgets entries `< index`.
    fn trim_below(&mut self, index: LogIndex) {
        while self
            .entries
            .front()
            .is_some_and(|first| first.index < index)
        {
            if let Some(gone) = self.entries.pop_front() {
                self.bytes -= gone.size_bytes();
            }
        }
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    /// `lo..hi` (within the store's range, `lo < hi`) under the same byte budget as
    /// [`LogStore::entries`], if the cache holds `lo`; it holds everything above `lo` then.
    fn entries(&self, lo: LogIndex, hi: LogIndex, max_bytes: usize) -> Option<Vec<Entry>> {
        let first = self.entries.front()?.index;
        if lo < first {
            return None;
        }
        let skip = usize::try_from(lo.0 - first.0).ok()?;
        if skip >= self.entries.len() {
            return None;
        }
        let want = usize::try_from(hi.0 - lo.0).unwrap_or(usize::MAX);
        let mut out = Vec::with_capacity(want.min(self.entries.len() - skip));
        let mut bytes = 0usize;
        for entry in self.entries.iter().skip(skip).take(want) {
            bytes = bytes.saturating_add(entry.size_bytes());
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            out.push(entry.clone());
        }
        Some(out)
    }
}

/// Terms of a contiguous range of entries as runs: `(first index of the run, term)`, terms
/// strictly increasing from run to run. The range's bounds are the store's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct TermRuns {
    runs: Vec<(LogIndex, Term)>,
}

impl TermRuns {
    /// Entry `index` (the one after the last) has `term` (not below the last one's).
    fn push(&mut self, index: LogIndex, term: Term) {
        match self.runs.last() {
            Some(&(_, last)) if last == term => {}
            _ => self.runs.push((index, term)),
        }
    }

    /// Forgets entries `>= index`.
    fn truncate_from(&mut self, index: LogIndex) {
        let keep = self.runs.partition_point(|&(start, _)| start < index);
        self.runs.truncate(keep);
    }

    /// Forgets entries `< index`.
    fn trim_below(&mut self, index: LogIndex) {
        let holding = self.runs.partition_point(|&(start, _)| start <= index);
        if holding == 0 {
            return;
        }
        self.runs.drain(..holding - 1);
        self.runs[0].0 = index;
    }

    /// Term of `index`, which the caller checked is within the range.
    fn get(&self, index: LogIndex) -> Option<Term> {
        let holding = self.runs.partition_point(|&(start, _)| start <= index);
        holding.checked_sub(1).map(|i| self.runs[i].1)
    }
}

// ---------------------------------------------------------------------- files

fn io_error(path: &Path, source: io::Error) -> GroupStoreError {
    GroupStoreError::Io {
        path: path.to_owned(),
        source,
    }
}

fn corrupt(file: &Path, reason: impl Into<String>) -> GroupStoreError {
    GroupStoreError::Corrupt {
        file: file.to_owned(),
        reason: reason.into(),
    }
}

fn sync_dir(dir: &Path) -> Result<(), GroupStoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error(dir, e))
}

/// Creates `dir` if missing and makes its name durable.
fn create_dir_durably(dir: &Path) -> Result<(), GroupStoreError> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    sync_dir(parent)
}

fn lock_dir(dir: &Path) -> Result<File, GroupStoreError> {
    let path = dir.join(LOCK_FILE_NAME);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| io_error(&path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(GroupStoreError::Locked {
            dir: dir.to_owned(),
        }),
        Err(TryLockError::Error(e)) => Err(io_error(&path, e)),
    }
}

/// Replaces `dir/name` with `parts` (concatenated) atomically and durably: write `name.tmp`,
/// fsync it, rename it over `name`, fsync the directory.
fn replace_file(dir: &Path, name: &str, parts: &[&[u8]]) -> Result<(), GroupStoreError> {
    let tmp = dir.join(format!("{name}{TMP_SUFFIX}"));
    let path = dir.join(name);
    let mut file = File::create(&tmp).map_err(|e| io_error(&tmp, e))?;
    for part in parts {
        file.write_all(part).map_err(|e| io_error(&tmp, e))?;
    }
    file.sync_all().map_err(|e| io_error(&tmp, e))?;
    drop(file);
    fs::rename(&tmp, &path).map_err(|e| io_error(&path, e))?;
    sync_dir(dir)
}

/// The file's bytes, or `None` if it does not exist; refuses files larger than `max_bytes`.
fn read_small_file(path: &Path, max_bytes: usize) -> Result<Option<Vec<u8>>, GroupStoreError> {
    let len = match fs::metadata(path) {
        Ok(meta) => meta.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(path, e)),
    };
    if len > max_bytes as u64 {
        return Err(corrupt(
            path,
            format!("{len} bytes, more than the {max_bytes} it can hold"),
        ));
    }
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error(path, e)),
    }
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut raw = [0u8; 4];
    raw.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(raw)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(raw)
}

fn hard_state_crc(len: u32, body: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&len.to_le_bytes());
    hasher.update(body);
    hasher.finalize()
}

fn read_hard_state(path: &Path) -> Result<Option<HardState>, GroupStoreError> {
    let Some(bytes) = read_small_file(path, HARD_STATE_HEADER_BYTES + HARD_STATE_BODY_BYTES_MAX)?
    else {
        return Ok(None);
    };
    if bytes.len() < HARD_STATE_HEADER_BYTES || bytes[..8] != HARD_STATE_MAGIC {
        return Err(corrupt(
            path,
            "not a hard state file (bad magic or too short)",
        ));
    }
    let len = u32_at(&bytes, 8);
    let body = &bytes[HARD_STATE_HEADER_BYTES..];
    if body.len() as u64 != u64::from(len) {
        return Err(corrupt(
            path,
            format!(
                "length field says {len} bytes, the file holds {}",
                body.len()
            ),
        ));
    }
    if u32_at(&bytes, 12) != hard_state_crc(len, body) {
        return Err(corrupt(path, "CRC mismatch"));
    }
    codec::decode(body)
        .map(Some)
        .map_err(|e| corrupt(path, e.to_string()))
}

fn check_snapshot_size(snapshot: &Snapshot) -> Result<(), GroupStoreError> {
    if snapshot.data.len() > SNAPSHOT_BYTES_MAX {
        return Err(GroupStoreError::InvalidSnapshot(format!(
            "{} bytes of data, above SNAPSHOT_BYTES_MAX ({SNAPSHOT_BYTES_MAX})",
            snapshot.data.len()
        )));
    }
    Ok(())
}

fn snapshot_crc(lengths: &[u8], meta: &[u8], data: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(lengths);
    hasher.update(meta);
    hasher.update(data);
    hasher.finalize()
}

fn write_snapshot(dir: &Path, snapshot: &Snapshot) -> Result<(), GroupStoreError> {
    let mut meta = Vec::new();
    codec::encode_into(&snapshot.meta, &mut meta)?;
    let meta_len = u32::try_from(meta.len()).unwrap_or(u32::MAX);
    if meta.len() > SNAPSHOT_META_BYTES_MAX {
        return Err(GroupStoreError::InvalidSnapshot(format!(
            "meta of {} bytes",
            meta.len()
        )));
    }
    let mut header = [0u8; SNAPSHOT_HEADER_BYTES];
    header[..8].copy_from_slice(&SNAPSHOT_MAGIC);
    header[8..12].copy_from_slice(&meta_len.to_le_bytes());
    header[12..20].copy_from_slice(&(snapshot.data.len() as u64).to_le_bytes());
    let crc = snapshot_crc(&header[8..20], &meta, &snapshot.data);
    header[20..24].copy_from_slice(&crc.to_le_bytes());
    replace_file(dir, SNAPSHOT_FILE_NAME, &[&header, &meta, &snapshot.data])
}

fn read_snapshot(path: &Path) -> Result<Option<Snapshot>, GroupStoreError> {
    let max = SNAPSHOT_HEADER_BYTES + SNAPSHOT_META_BYTES_MAX + SNAPSHOT_BYTES_MAX;
    let Some(mut bytes) = read_small_file(path, max)? else {
        return Ok(None);
    };
    if bytes.len() < SNAPSHOT_HEADER_BYTES || bytes[..8] != SNAPSHOT_MAGIC {
        return Err(corrupt(
            path,
            "not a snapshot file (bad magic or too short)",
        ));
    }
    let meta_len = u32_at(&bytes, 8) as usize;
    let data_len = u64_at(&bytes, 12);
    let body = (bytes.len() - SNAPSHOT_HEADER_BYTES) as u64;
    if meta_len > SNAPSHOT_META_BYTES_MAX
        || data_len > SNAPSHOT_BYTES_MAX as u64
        || meta_len as u64 + data_len != body
    {
        return Err(corrupt(
            path,
            format!(
                "length fields say {meta_len} + {data_len} bytes, the file holds {body} after its header"
            ),
        ));
    }
    let meta_end = SNAPSHOT_HEADER_BYTES + meta_len;
    let crc = snapshot_crc(
        &bytes[8..20],
        &bytes[SNAPSHOT_HEADER_BYTES..meta_end],
        &bytes[meta_end..],
    );
    if u32_at(&bytes, 20) != crc {
        return Err(corrupt(path, "CRC mismatch"));
    }
    let meta: SnapshotMeta = codec::decode(&bytes[SNAPSHOT_HEADER_BYTES..meta_end])
        .map_err(|e| corrupt(path, e.to_string()))?;
    let data = bytes.split_off(meta_end);
    Ok(Some(Snapshot { meta, data }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn term_runs_push_truncate_trim() {
        let mut runs = TermRuns::default();
        for (i, t) in [(1, 1), (2, 1), (3, 2), (4, 2), (5, 5), (6, 5)] {
            runs.push(LogIndex(i), Term(t));
        }
        assert_eq!(runs.runs.len(), 3);
        assert_eq!(runs.get(LogIndex(2)), Some(Term(1)));
        assert_eq!(runs.get(LogIndex(3)), Some(Term(2)));
        assert_eq!(runs.get(LogIndex(6)), Some(Term(5)));
        runs.truncate_from(LogIndex(5));
        assert_eq!(
            runs.runs,
            vec![(LogIndex(1), Term(1)), (LogIndex(3), Term(2))]
        );
        runs.truncate_from(LogIndex(4));
        assert_eq!(runs.runs.len(), 2);
        runs.trim_below(LogIndex(2));
        assert_eq!(
            runs.runs,
            vec![(LogIndex(2), Term(1)), (LogIndex(3), Term(2))]
        );
        runs.trim_below(LogIndex(4));
        assert_eq!(runs.runs, vec![(LogIndex(4), Term(2))]);
        runs.truncate_from(LogIndex(4));
        assert!(runs.runs.is_empty());
        runs.trim_below(LogIndex(9));
        assert_eq!(runs.get(LogIndex(9)), None);
    }

    #[test]
    fn hard_state_file_round_trips_and_rejects_bit_flips() {
        let dir = tempfile::tempdir().unwrap();
        let hs = HardState {
            term: Term(7),
            voted_for: Some(weir_raft::NodeId(3)),
        };
        let mut body = Vec::new();
        codec::encode_into(&hs, &mut body).unwrap();
        let len = body.len() as u32;
        let mut bytes = HARD_STATE_MAGIC.to_vec();
        bytes.extend_from_slice(&len.to_le_bytes());
        bytes.extend_from_slice(&hard_state_crc(len, &body).to_le_bytes());
        bytes.extend_from_slice(&body);
        replace_file(dir.path(), HARD_STATE_FILE_NAME, &[&bytes]).unwrap();
        let path = dir.path().join(HARD_STATE_FILE_NAME);
        assert_eq!(read_hard_state(&path).unwrap(), Some(hs));
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            fs::write(&path, &bad).unwrap();
            assert!(read_hard_state(&path).is_err(), "flip at byte {i} accepted");
        }
        fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        assert!(read_hard_state(&path).is_err());
    }

    #[test]
    fn snapshot_file_round_trips_and_rejects_bit_flips() {
        let dir = tempfile::tempdir().unwrap();
        let snapshot = Snapshot {
            meta: SnapshotMeta {
                last_index: LogIndex(42),
                last_term: Term(3),
                membership: weir_raft::Membership::with_voters([weir_raft::NodeId(1)]),
            },
            data: b"state".to_vec(),
        };
        write_snapshot(dir.path(), &snapshot).unwrap();
        let path = dir.path().join(SNAPSHOT_FILE_NAME);
        assert_eq!(read_snapshot(&path).unwrap(), Some(snapshot));
        let bytes = fs::read(&path).unwrap();
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            fs::write(&path, &bad).unwrap();
            assert!(read_snapshot(&path).is_err(), "flip at byte {i} accepted");
        }
    }

    #[test]
    fn stored_entry_encoding_round_trips() {
        let payload = Payload::Normal(vec![1, 2, 3]);
        let mut buf = Vec::new();
        codec::encode_into(
            &StoredEntryRef {
                term: Term(9),
                payload: &payload,
            },
            &mut buf,
        )
        .unwrap();
        assert_eq!(decode_record(&buf).unwrap(), (Term(9), payload));
    }
}
