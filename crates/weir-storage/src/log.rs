//! The writer side of a log: append, group commit, fsync policy, segment roll, retention,
//! compaction by offset, suffix truncation, reset to an offset, poisoning.

use crate::config::{FsyncPolicy, LogConfig};
use crate::error::{IoAt, IoResultExt, LogError, OpenError};
use crate::index::{INDEX_ENTRY_BYTES, IndexBuilder, encode_entry};
use crate::reader::{LogReader, Shared, View};
use crate::record::{encode_header, record_bytes};
use crate::recovery::{RecoveryReport, recover};
use crate::segment::{SealedMeta, Segment, create_segment, sync_dir};
use crate::truncate::{
    Marker, plan_cut, remove_marker, remove_reset_marker, write_marker, write_reset_marker,
};
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir_proto::{Offset, TimestampMs};

/// Appended records are gathered up to this many bytes before a `write`, so a batch of small
/// appends costs one system call, not one each. Larger records are written directly.
const WRITE_BUFFER_BYTES: usize = 256 * 1024;
/// Held with an exclusive `flock` by the open `Log`, so two writers never share a directory.
const LOCK_FILE_NAME: &str = "writer.lock";

/// Counters of one open log (since it was opened, except `segments` and `bytes`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Segments currently in the log.
    pub segments: u64,
    /// Bytes of all segment `.log` files, including appended records not yet flushed.
    pub bytes: u64,
    /// `fsync`-type calls made (data, index at roll, directory).
    pub fsyncs: u64,
    pub appends: u64,
}

/// What one [`Log::apply_retention`] or [`Log::remove_segments_below`] call deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetentionReport {
    pub deleted_segments: u64,
    pub deleted_bytes: u64,
    /// Oldest retained offset after the pass.
    pub start_offset: Offset,
}

/// One topic's durable log: the single writer. Readers come from [`Log::reader`].
///
/// Records appended but not committed are flushed to the file (not synced) when the `Log` is
/// dropped, so a clean reopen finds every appended record; after a crash only what was synced
/// is guaranteed (see [`FsyncPolicy`]).
#[derive(Debug)]
pub struct Log {
    dir: PathBuf,
    config: LogConfig,
    shared: Arc<Shared>,
    /// Same list readers see (the writer is the only one that changes it). Oldest first; the last
    /// one is `active.segment`.
    segments: Arc<Vec<Arc<Segment>>>,
    active: Active,
    sealed_bytes: u64,
    next_offset: Offset,
    committed_offset: Offset,
    /// Records below this are durable.
    synced_offset: Offset,
    /// Of the view readers see: bumped by every truncation and reset (see [`View::generation`]).
    generation: u64,
    last_sync: Instant,
    /// Text of the write or fsync error that stopped this log.
    poisoned: Option<String>,
    fault_next_sync: bool,
    /// Test hook: the truncation stops (as if the process died) before its change on disk with
    /// this number.
    fault_truncation_step: Option<u32>,
    /// Test hook: the same for [`Log::reset_to`].
    fault_reset_step: Option<u32>,
    stats: LogStats,
    recovery: RecoveryReport,
    /// Holds the directory's lock for as long as the log is open.
    _lock: File,
}

/// The segment being appended to, with its write buffers.
#[derive(Debug)]
struct Active {
    segment: Arc<Segment>,
    log_file: File,
    index_file: File,
    /// Bytes of the segment, including those still in `buf`.
    size_bytes: u64,
    /// Bytes of the segment already handed to the file (the rest is in `buf`).
    written_bytes: u64,
    buf: Vec<u8>,
    index_buf: Vec<u8>,
    index_written_bytes: u64,
    builder: IndexBuilder,
}

impl Active {
    fn new(segment: Arc<Segment>, log_file: File, index_file: File, builder: IndexBuilder) -> Self {
        Self {
            segment,
            log_file,
            index_file,
            size_bytes: 0,
            written_bytes: 0,
            buf: Vec::new(),
            index_buf: Vec::new(),
            index_written_bytes: 0,
            builder,
        }
    }

    fn write_record(&mut self, header: &[u8], payload: &[u8]) -> Result<(), IoAt> {
        let bytes = header.len() + payload.len();
        if self.buf.len() + bytes > WRITE_BUFFER_BYTES {
            self.flush()?;
        }
        if bytes > WRITE_BUFFER_BYTES {
            // Copying a large payload into the buffer would only double its cost.
            let path = &self.segment.log_path;
            self.log_file
                .write_all_at(header, self.written_bytes)
                .at(path)?;
            self.log_file
                .write_all_at(payload, self.written_bytes + header.len() as u64)
                .at(path)?;
            self.written_bytes += bytes as u64;
        } else {
            self.buf.extend_from_slice(header);
            self.buf.extend_from_slice(payload);
        }
        self.size_bytes += bytes as u64;
        Ok(())
    }

    /// Hands buffered records and index entries to the OS (no fsync).
    fn flush(&mut self) -> Result<(), IoAt> {
        if !self.buf.is_empty() {
            self.log_file
                .write_all_at(&self.buf, self.written_bytes)
                .at(&self.segment.log_path)?;
            self.written_bytes += self.buf.len() as u64;
            self.buf.clear();
        }
        if !self.index_buf.is_empty() {
            self.index_file
                .write_all_at(&self.index_buf, self.index_written_bytes)
                .at(&self.segment.index_path)?;
            self.index_written_bytes += self.index_buf.len() as u64;
            self.index_buf.clear();
        }
        debug_assert_eq!(self.written_bytes, self.size_bytes);
        Ok(())
    }
}

impl Log {
    /// Opens the log in `dir`, creating the directory and an empty log if needed, and runs
    /// recovery (see [`RecoveryReport`]). Fails with [`OpenError::Corrupt`] rather than drop
    /// records that are followed by valid ones.
    pub fn open(dir: &Path, config: LogConfig) -> Result<Log, OpenError> {
        let _span = tracing::info_span!("log_open", dir = %dir.display()).entered();
        config.validate()?;
        let mut fsyncs = 0;
        if !dir.exists() {
            fs::create_dir_all(dir).at(dir)?;
            // The new directory's own name must be durable too.
            let parent = dir
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            sync_dir(parent)?;
            fsyncs += 1;
        }
        let lock = lock_dir(dir)?;
        let recovered = recover(dir, &config)?;
        fsyncs += recovered.fsyncs;

        let mut segments: Vec<Arc<Segment>> = recovered.sealed.into_iter().map(Arc::new).collect();
        let active_segment = Arc::new(recovered.active.segment);
        segments.push(Arc::clone(&active_segment));
        let segments = Arc::new(segments);
        let next_offset = recovered.next_offset;
        // Everything recovery kept is on disk and synced: readers may see all of it.
        let view = View {
            segments: Arc::clone(&segments),
            committed_offset: next_offset,
            generation: 0,
        };
        let shared = Arc::new(Shared::new(view, config.record_bytes_max));
        let active = Active {
            segment: active_segment,
            log_file: recovered.active.log_file,
            index_file: recovered.active.index_file,
            size_bytes: recovered.active.size_bytes,
            written_bytes: recovered.active.size_bytes,
            buf: Vec::new(),
            index_buf: Vec::new(),
            index_written_bytes: recovered.active.index_bytes,
            builder: recovered.active.builder,
        };
        let report = recovered.report;
        tracing::info!(
            segments = report.segments,
            start_offset = report.start_offset.get(),
            next_offset = next_offset.get(),
            truncated = report.truncation.is_some(),
            indexes_rebuilt = report.indexes_rebuilt.len(),
            "log opened"
        );
        Ok(Log {
            dir: dir.to_owned(),
            shared,
            segments,
            active,
            sealed_bytes: recovered.sealed_bytes,
            next_offset,
            committed_offset: next_offset,
            // Recovery synced the active segment; sealed ones were synced when they were rolled.
            synced_offset: next_offset,
            generation: 0,
            last_sync: Instant::now(),
            poisoned: None,
            fault_next_sync: false,
            fault_truncation_step: None,
            fault_reset_step: None,
            stats: LogStats {
                fsyncs,
                ..LogStats::default()
            },
            recovery: report,
            config,
            _lock: lock,
        })
    }

    /// What recovery found and did when this log was opened.
    pub fn recovery(&self) -> &RecoveryReport {
        &self.recovery
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// Writes a record (possibly only into a buffer) and returns its offset. It is neither
    /// durable nor visible to readers until [`Log::commit`].
    pub fn append(
        &mut self,
        timestamp_ms: TimestampMs,
        payload: &[u8],
    ) -> Result<Offset, LogError> {
        self.check_poisoned()?;
        if payload.len() > self.config.record_bytes_max {
            return Err(LogError::TooLarge {
                bytes: payload.len(),
                max: self.config.record_bytes_max,
            });
        }
        let result = self.append_inner(timestamp_ms, payload);
        result.map_err(|e| self.poison(e))
    }

    fn append_inner(&mut self, timestamp_ms: TimestampMs, payload: &[u8]) -> Result<Offset, IoAt> {
        let bytes = record_bytes(payload.len());
        let relative = self.next_offset.get() - self.active.segment.base_offset.get();
        // A segment always takes its first record; u32::MAX keeps relative offsets in the index
        // representable (unreachable in practice: SEGMENT_BYTES_MAX holds fewer records).
        let full = self.active.size_bytes + bytes > self.config.segment_bytes_max
            || relative >= u64::from(u32::MAX);
        if self.active.size_bytes > 0 && full {
            self.roll()?;
        }
        let offset = self.next_offset;
        let position = self.active.size_bytes;
        let relative = offset.get() - self.active.segment.base_offset.get();
        // Rolling above keeps both below 2^32 (positions stay below SEGMENT_BYTES_MAX).
        let (Ok(position32), Ok(relative32)) = (u32::try_from(position), u32::try_from(relative))
        else {
            unreachable!("segment {position} bytes / {relative} records despite rolling");
        };
        let header = encode_header(offset, timestamp_ms, payload);
        self.active.write_record(&header, payload)?;
        if let Some((entry, max_ts)) =
            self.active
                .builder
                .on_record(relative32, position32, bytes, timestamp_ms.get())
        {
            self.active.segment.push_index_entry(entry);
            self.active
                .index_buf
                .extend_from_slice(&encode_entry(entry, max_ts));
        }
        self.next_offset = offset.next();
        self.stats.appends += 1;
        Ok(offset)
    }

    /// Makes every record appended so far visible to readers, and durable as the fsync policy
    /// says; returns the new committed offset. At most one data fsync per call, however many
    /// records were appended since the last one (group commit), and none when nothing is new.
    pub fn commit(&mut self) -> Result<Offset, LogError> {
        self.check_poisoned()?;
        let result = self.commit_inner();
        result.map_err(|e| self.poison(e))
    }

    fn commit_inner(&mut self) -> Result<Offset, IoAt> {
        self.active.flush()?;
        let due = match self.config.fsync {
            FsyncPolicy::Always => true,
            FsyncPolicy::Interval { interval_ms } => {
                self.last_sync.elapsed() >= Duration::from_millis(interval_ms)
            }
            FsyncPolicy::Never => false,
        };
        if due && self.synced_offset < self.next_offset {
            self.sync_active()?;
        }
        if self.committed_offset != self.next_offset {
            self.committed_offset = self.next_offset;
            self.publish();
        }
        Ok(self.committed_offset)
    }

    /// Flushes and fsyncs everything appended, whatever the policy. Does not make records
    /// visible to readers (that is [`Log::commit`]).
    pub fn sync(&mut self) -> Result<(), LogError> {
        self.check_poisoned()?;
        let result = self.active.flush().and_then(|()| self.sync_active());
        result.map_err(|e| self.poison(e))
    }

    /// `sync_data` of the active segment, after a flush.
    fn sync_active(&mut self) -> Result<(), IoAt> {
        debug_assert!(self.active.buf.is_empty());
        self.sync_active_file()?;
        self.synced_offset = self.next_offset;
        self.last_sync = Instant::now();
        Ok(())
    }

    /// `sync_data` of the active segment's `.log` (subject to the injected fault).
    fn sync_active_file(&mut self) -> Result<(), IoAt> {
        self.stats.fsyncs += 1;
        let result = if std::mem::take(&mut self.fault_next_sync) {
            Err(io::Error::other("injected fault: sync_data failed"))
        } else {
            self.active.log_file.sync_data()
        };
        result.at(&self.active.segment.log_path)
    }

    /// Seals the active segment (synced, with its index) and starts a new one at `next_offset`.
    fn roll(&mut self) -> Result<(), IoAt> {
        self.active.flush()?;
        self.sync_active()?;
        // A sealed index is trusted at open after a cheap check; syncing it once here (one fsync
        // per segment) keeps a crash from leaving a stale one behind.
        self.stats.fsyncs += 1;
        self.active
            .index_file
            .sync_data()
            .at(&self.active.segment.index_path)?;
        let (segment, log_file, index_file) = create_segment(&self.dir, self.next_offset)?;
        self.stats.fsyncs += 1;
        let meta = SealedMeta {
            size_bytes: self.active.size_bytes,
            max_timestamp_ms: TimestampMs(self.active.builder.max_timestamp_ms),
        };
        self.active.segment.seal(meta);
        self.sealed_bytes += meta.size_bytes;
        let segment = Arc::new(segment);
        let builder = IndexBuilder::new(self.config.index_interval_bytes);
        self.active = Active::new(Arc::clone(&segment), log_file, index_file, builder);
        let mut segments = Vec::clone(&self.segments);
        segments.push(segment);
        self.segments = Arc::new(segments);
        self.publish();
        tracing::debug!(
            base_offset = self.next_offset.get(),
            sealed_bytes = meta.size_bytes,
            "rolled to a new segment"
        );
        Ok(())
    }

    /// Offset the next append gets.
    pub fn next_offset(&self) -> Offset {
        self.next_offset
    }

    /// Exclusive upper bound of the records known to be fsynced. Equal to the committed offset
    /// under `always`; may lag it under `interval:<ms>` and `never`.
    pub fn synced_offset(&self) -> Offset {
        self.synced_offset
    }

    /// Exclusive upper bound of the records readers see.
    pub fn committed_offset(&self) -> Offset {
        self.committed_offset
    }

    /// Oldest retained offset.
    pub fn start_offset(&self) -> Offset {
        self.segments
            .first()
            .map_or(self.committed_offset, |s| s.base_offset)
    }

    pub fn reader(&self) -> LogReader {
        LogReader::new(Arc::clone(&self.shared))
    }

    /// Deletes the oldest whole segments while the log is larger than `retention_bytes` or
    /// their newest record is older than `now_ms - retention_ms`. Never deletes the active
    /// segment, nor a segment holding records not yet committed. A failure to delete a file is
    /// returned but does not poison the log (the file is simply found again at the next open).
    pub fn apply_retention(&mut self, now_ms: TimestampMs) -> Result<RetentionReport, LogError> {
        self.check_poisoned()?;
        let count = self.retention_count(
            now_ms,
            self.config.retention_bytes,
            self.config.retention_ms,
        );
        self.delete_oldest_segments(count, "retention")
    }

    /// Where retention with these limits would start the log: the base offset of the first
    /// segment it would keep (the start offset if it would delete nothing). Deletes nothing:
    /// a replicated log compacts up to this offset through a snapshot instead.
    pub fn retention_cutoff(
        &self,
        now_ms: TimestampMs,
        retention_bytes: Option<u64>,
        retention_ms: Option<u64>,
    ) -> Offset {
        let count = self.retention_count(now_ms, retention_bytes, retention_ms);
        self.segments
            .get(count)
            .map_or(self.start_offset(), |s| s.base_offset)
    }

    /// How many of the oldest whole segments retention deletes: while the log is larger than
    /// `retention_bytes` or their newest record is older than `now_ms - retention_ms`. Never
    /// the active segment, nor a segment holding records not yet committed.
    fn retention_count(
        &self,
        now_ms: TimestampMs,
        retention_bytes: Option<u64>,
        retention_ms: Option<u64>,
    ) -> usize {
        let cutoff_ms = retention_ms.map(|age_ms| now_ms.get().saturating_sub(age_ms));
        let mut total_bytes = self.sealed_bytes + self.active.size_bytes;
        let mut count = 0;
        for (segment, successor) in self.segments.iter().zip(self.segments.iter().skip(1)) {
            // Only sealed segments have a successor; only they carry metadata.
            let Some(meta) = segment.sealed() else { break };
            if successor.base_offset > self.committed_offset {
                break;
            }
            let over_size = retention_bytes.is_some_and(|max| total_bytes > max);
            let expired = cutoff_ms.is_some_and(|cutoff| meta.max_timestamp_ms.get() < cutoff);
            if !(over_size || expired) {
                break;
            }
            total_bytes -= meta.size_bytes;
            count += 1;
        }
        count
    }

    /// Deletes the oldest whole segments whose records are all below `offset`: every segment
    /// whose successor starts at or below `offset` (Raft compaction: the records below `offset`
    /// are covered by a snapshot). Never deletes the active segment, nor a segment holding
    /// records not yet committed. The start offset moves up to the base offset of the first
    /// remaining segment, which may still hold records below `offset` (only whole segments go);
    /// reads below it get [`crate::ReadError::OutOfRange`], also from readers taken earlier.
    ///
    /// Like retention: the segment list readers see is published first, then the files are
    /// deleted oldest first, `.log` before `.idx` (a crash leaves a contiguous log and at most
    /// an orphan index, removed at open), then the directory is fsynced, so the deletion is
    /// durable before this returns. A failure to delete a file is returned but does not poison
    /// the log (the segment is found again at the next open, a valid log still).
    pub fn remove_segments_below(&mut self, offset: Offset) -> Result<RetentionReport, LogError> {
        self.check_poisoned()?;
        let committed = self.committed_offset;
        let count = self
            .segments
            .iter()
            .skip(1)
            .take_while(|successor| {
                successor.base_offset <= offset && successor.base_offset <= committed
            })
            .count();
        let report = self.delete_oldest_segments(count, "compaction")?;
        if count > 0 {
            sync_dir(&self.dir).map_err(LogError::from)?;
            self.stats.fsyncs += 1;
        }
        Ok(report)
    }

    /// Deletes the `count` oldest segments (all sealed): the view first, then the files.
    fn delete_oldest_segments(
        &mut self,
        count: usize,
        why: &'static str,
    ) -> Result<RetentionReport, LogError> {
        debug_assert!(count < self.segments.len());
        let mut report = RetentionReport {
            start_offset: self.start_offset(),
            ..RetentionReport::default()
        };
        if count == 0 {
            return Ok(report);
        }
        let deleted: Vec<Arc<Segment>> = self.segments[..count].to_vec();
        self.segments = Arc::new(self.segments[count..].to_vec());
        let deleted_bytes: u64 = deleted
            .iter()
            .filter_map(|s| s.sealed())
            .map(|m| m.size_bytes)
            .sum();
        self.sealed_bytes -= deleted_bytes;
        // Readers stop seeing the segments before their files go, so a reader either finds a
        // file or knows (from the new view) that it was retained away.
        self.publish();
        report.deleted_segments = count as u64;
        report.deleted_bytes = deleted_bytes;
        report.start_offset = self.start_offset();
        tracing::info!(
            deleted_segments = report.deleted_segments,
            deleted_bytes = report.deleted_bytes,
            start_offset = report.start_offset.get(),
            why,
            "deleted segments"
        );
        let mut first_error = None;
        for segment in &deleted {
            // The log first: an index without its log is an orphan that open removes, while a
            // log without its index would merely have its index rebuilt and come back.
            for path in [&segment.log_path, &segment.index_path] {
                match fs::remove_file(path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => {
                        tracing::warn!(file = %path.display(), error = %e, "cannot delete segment file");
                        first_error.get_or_insert(LogError::Io {
                            path: path.clone(),
                            source: e,
                        });
                    }
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(report),
        }
    }

    /// Removes every record with offset `>= from`, whether only appended, committed, synced or
    /// already returned to readers (a Raft follower dropping entries that conflict with its
    /// leader's). A no-op if `from >= next_offset`.
    ///
    /// Durable before it returns: the cut segment is truncated and fsynced, later segments are
    /// deleted and the directory fsynced, so a crash never brings removed records back, and a
    /// crash during the call leaves either the old or the truncated log (see `docs/STORAGE.md`).
    /// Afterwards `next_offset == from` (the next append gets `from`), `committed_offset` is at
    /// most `from`, and `synced_offset == from` (everything kept is durable). The files are then
    /// exactly what they would be had the removed records never been appended: the segment
    /// ending just before `from` is the active one again, its index trimmed. Truncating to the
    /// start offset leaves an empty log there.
    ///
    /// Readers are never disturbed: one that overlaps the truncation returns records of either
    /// the old or the new log, never a mix, and never fails because of it (see
    /// [`LogReader::read`]). It is the caller's job not to have shown readers records it is
    /// about to remove (the node bounds what its listeners see by the Raft commit index).
    ///
    /// Errors: `from < start_offset` (those records are gone already) is
    /// [`LogError::TruncateBelowStart`], with nothing changed. An I/O error poisons the log like
    /// any write error; reopening it finishes or discards the truncation.
    pub fn truncate_from(&mut self, from: Offset) -> Result<(), LogError> {
        self.check_poisoned()?;
        let start = self.start_offset();
        if from < start {
            return Err(LogError::TruncateBelowStart { from, start });
        }
        if from >= self.next_offset {
            return Ok(());
        }
        let _span =
            tracing::info_span!("log_truncate", dir = %self.dir.display(), from = from.get())
                .entered();
        let result = self.truncate_inner(from);
        result.map_err(|e| self.poison(e))
    }

    // The order of operations, and why a crash at any point leaves either the old log or the
    // truncated one (never a mix, never corruption):
    //
    // 1. Plan without changing anything (the active segment's buffer is written out first so the
    //    plan can read the records below `from`; a crash then leaves the old log).
    // 2. Readers first: the new view (committed offset cut to at most `from`, the cut segment
    //    last, a new generation) is published before any file changes. A read on the new view
    //    only touches bytes below `from`, which nothing here changes; a read that began on an
    //    older view sees the new generation when it is done and starts over.
    // 3a. The cut segment is the active one: `ftruncate` its `.log`, then fsync. That one size
    //    change is the commit point: not yet durable, the old log; durable, the truncated one.
    //    Its index is trimmed but not synced: the last segment's index is rebuilt at every open.
    // 3b. The cut segment is sealed: several files change, and no system call covers them all.
    //    Cutting the segment first would leave, after a crash, a sealed segment ending before
    //    its successor begins, which open refuses as corruption. Deleting the later segments
    //    first would leave a shorter version of the old log, neither old nor truncated. So a
    //    marker recording the truncation (`truncate.rs`) is made durable (file, then directory)
    //    first: that is the commit point. Then the later segments are deleted, highest first
    //    (`.log` before `.idx`), the segment cut and fsynced, the directory fsynced, and only
    //    then is the marker deleted and the directory fsynced again. At open, a complete marker
    //    makes recovery finish these (idempotent) steps before anything else, so every crash
    //    after the marker is durable yields the truncated log; a torn marker (a crash while
    //    writing it) means nothing else was touched: the old log. Deleting highest first keeps
    //    every intermediate state a contiguous prefix of the old log even if the marker were
    //    lost. The marker's deletion is durable before this returns, so no later crash can
    //    re-apply the truncation to records appended after it.
    fn truncate_inner(&mut self, from: Offset) -> Result<(), IoAt> {
        let fault = self.fault_truncation_step.take();
        let mut steps = 0;
        let old = Arc::clone(&self.segments);
        let last = old.len() - 1;
        // The segment that will end just before `from` and be the active one: the one holding
        // `from`, or the one before it when `from` is a segment's base offset, so the files are
        // exactly what appending `start..from` would have produced (the first segment, emptied,
        // when `from` is the start offset).
        let mut k = old.partition_point(|s| s.base_offset <= from) - 1;
        if k > 0 && old[k].base_offset == from {
            k -= 1;
        }
        let target = Arc::clone(&old[k]);
        let removed = self.next_offset.get() - from.get();

        if k == last {
            crash_point(fault, &mut steps, &self.dir)?;
            self.active.flush()?;
        } else {
            // Every record of the active segment goes: its buffers are dropped unwritten.
            let meta = target
                .sealed()
                .expect("a segment with a successor is sealed");
            let log_file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&target.log_path)
                .at(&target.log_path)?;
            let index_file = OpenOptions::new()
                .write(true)
                .open(&target.index_path)
                .at(&target.index_path)?;
            let index_bytes = index_file.metadata().at(&target.index_path)?.len();
            self.active = Active {
                size_bytes: meta.size_bytes,
                written_bytes: meta.size_bytes,
                index_written_bytes: index_bytes,
                ..Active::new(
                    Arc::clone(&target),
                    log_file,
                    index_file,
                    IndexBuilder::new(self.config.index_interval_bytes),
                )
            };
        }
        let cut = plan_cut(
            &target,
            &self.active.log_file,
            self.active.size_bytes,
            from,
            &self.config,
        )?;
        let kept_index_bytes = (cut.entries.len() * INDEX_ENTRY_BYTES) as u64;
        // A new object, not `target` trimmed: reads that began on an older view keep theirs.
        let segment = Arc::new(Segment::new(&self.dir, target.base_offset, cut.entries));

        let mut segments = old[..k].to_vec();
        segments.push(Arc::clone(&segment));
        self.segments = Arc::new(segments);
        self.committed_offset = self.committed_offset.min(from);
        self.generation += 1;
        self.publish();

        let log_path = &target.log_path;
        if k == last {
            crash_point(fault, &mut steps, &self.dir)?;
            self.active.log_file.set_len(cut.position).at(log_path)?;
            crash_point(fault, &mut steps, &self.dir)?;
            self.active
                .index_file
                .set_len(kept_index_bytes)
                .at(&target.index_path)?;
            crash_point(fault, &mut steps, &self.dir)?;
            self.sync_active_file()?;
        } else {
            let marker = Marker {
                from,
                base_offset: target.base_offset,
                position: cut.position,
            };
            crash_point(fault, &mut steps, &self.dir)?;
            self.stats.fsyncs += write_marker(&self.dir, &marker)?;
            for doomed in old[k + 1..].iter().rev() {
                for path in [&doomed.log_path, &doomed.index_path] {
                    crash_point(fault, &mut steps, &self.dir)?;
                    match fs::remove_file(path) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(e).at(path),
                    }
                }
            }
            crash_point(fault, &mut steps, &self.dir)?;
            self.active.log_file.set_len(cut.position).at(log_path)?;
            crash_point(fault, &mut steps, &self.dir)?;
            self.active
                .index_file
                .set_len(kept_index_bytes)
                .at(&target.index_path)?;
            crash_point(fault, &mut steps, &self.dir)?;
            self.sync_active_file()?;
            crash_point(fault, &mut steps, &self.dir)?;
            sync_dir(&self.dir)?;
            self.stats.fsyncs += 1;
            crash_point(fault, &mut steps, &self.dir)?;
            self.stats.fsyncs += remove_marker(&self.dir)?;
        }

        let reactivated_bytes: u64 = old[k..last]
            .iter()
            .filter_map(|s| s.sealed())
            .map(|m| m.size_bytes)
            .sum();
        self.sealed_bytes -= reactivated_bytes;
        let active = &mut self.active;
        active.segment = segment;
        active.size_bytes = cut.position;
        active.written_bytes = cut.position;
        active.buf.clear();
        active.index_buf.clear();
        active.index_written_bytes = kept_index_bytes;
        active.builder = cut.builder;
        self.next_offset = from;
        // The cut segment was just fsynced and every earlier one when it was sealed.
        self.synced_offset = from;
        self.last_sync = Instant::now();
        tracing::info!(
            from = from.get(),
            removed_records = removed,
            deleted_segments = last - k,
            committed_offset = self.committed_offset.get(),
            "log truncated"
        );
        Ok(())
    }

    /// Empties the log and restarts it so that the next append gets `offset` (a Raft follower
    /// installing a snapshot: everything it stored is replaced). `offset` may be anywhere:
    /// below, inside or beyond the current log. Afterwards the log is one empty segment
    /// `<offset>.log`, and `start_offset == next_offset == committed_offset == synced_offset
    /// == offset`; records appended but not committed are dropped too. A no-op when the log is
    /// already exactly that.
    ///
    /// Durable before it returns, and crash-safe: after a crash during the call, open yields
    /// either the old log or the empty log at `offset` (see the ordering argument on
    /// `reset_inner` and `docs/STORAGE.md`).
    ///
    /// Readers, including those taken earlier, are never disturbed: the new view is published
    /// with a new generation before any file changes, so a read returns the old log's records
    /// (if it was done before), or else [`crate::ReadError::OutOfRange`] below `offset` and
    /// the new records from `offset` on, never a mix.
    ///
    /// An I/O error poisons the log like any write error; reopening it finishes the reset or
    /// leaves the old log.
    pub fn reset_to(&mut self, offset: Offset) -> Result<(), LogError> {
        self.check_poisoned()?;
        if self.segments.len() == 1 && self.start_offset() == offset && self.next_offset == offset {
            return Ok(());
        }
        let _span =
            tracing::info_span!("log_reset", dir = %self.dir.display(), offset = offset.get())
                .entered();
        let result = self.reset_inner(offset);
        result.map_err(|e| self.poison(e))
    }

    // The order of operations, and why a crash at any point leaves either the old log or the
    // empty log at `offset` (never a mix, never a log open refuses):
    //
    // 1. Readers first: the new view (one empty segment at `offset`, committed offset `offset`,
    //    a new generation) is published before any file changes. A read on it touches no file
    //    (it returns nothing at `offset` and OutOfRange elsewhere); a read that began on an
    //    older view finds the generation changed when it is done and starts over on the new one.
    // 2. The marker `reset.pending` (the offset, CRC-protected; `truncate.rs`) is written and
    //    made durable, file then directory: that is the commit point. Nothing else has changed
    //    before it, so a crash before it (or while writing it: a torn marker, deleted at open)
    //    leaves the old log; once it is durable, open finishes the reset before anything else.
    // 3. Every old segment except one named `<offset>.log` is deleted, highest first, `.log`
    //    before `.idx`. Every state in between is a prefix of the old log, possibly followed by
    //    a gap and the new (or an old) `<offset>.log`: open would call such a gap corruption,
    //    which is why it never looks at the segments while a valid marker is there.
    // 4. `<offset>.log` and `.idx` are created, or emptied if an old segment had that name
    //    (`create + truncate`), the `.log` fsynced and the directory fsynced: the empty log at
    //    `offset` is now durable without the marker.
    // 5. The marker is deleted and the directory fsynced, before this returns: no later crash
    //    can re-apply the reset to records appended after it.
    // Open's finishing steps (`recovery::resume_reset`) are 3 to 5 again, each idempotent.
    // Cost: five fsyncs (marker file and directory, segment, directory, marker deletion).
    fn reset_inner(&mut self, offset: Offset) -> Result<(), IoAt> {
        let fault = self.fault_reset_step.take();
        let mut steps = 0;
        let old = Arc::clone(&self.segments);
        let removed = self
            .next_offset
            .get()
            .saturating_sub(self.start_offset().get());
        // A new object even if an old segment has this base: reads that began on an older view
        // keep theirs.
        let segment = Arc::new(Segment::new(&self.dir, offset, Vec::new()));
        self.segments = Arc::new(vec![Arc::clone(&segment)]);
        self.next_offset = offset;
        self.committed_offset = offset;
        self.generation += 1;
        self.publish();

        crash_point(fault, &mut steps, &self.dir)?;
        self.stats.fsyncs += write_reset_marker(&self.dir, offset)?;
        for doomed in old.iter().rev().filter(|s| s.base_offset != offset) {
            for path in [&doomed.log_path, &doomed.index_path] {
                crash_point(fault, &mut steps, &self.dir)?;
                match fs::remove_file(path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e).at(path),
                }
            }
        }
        crash_point(fault, &mut steps, &self.dir)?;
        let log_file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&segment.log_path)
            .at(&segment.log_path)?;
        crash_point(fault, &mut steps, &self.dir)?;
        let index_file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&segment.index_path)
            .at(&segment.index_path)?;
        crash_point(fault, &mut steps, &self.dir)?;
        // Dropping the old active segment drops its unwritten buffers with it.
        self.active = Active::new(
            Arc::clone(&segment),
            log_file,
            index_file,
            IndexBuilder::new(self.config.index_interval_bytes),
        );
        self.sync_active_file()?;
        crash_point(fault, &mut steps, &self.dir)?;
        sync_dir(&self.dir)?;
        self.stats.fsyncs += 1;
        crash_point(fault, &mut steps, &self.dir)?;
        self.stats.fsyncs += remove_reset_marker(&self.dir)?;

        self.sealed_bytes = 0;
        self.synced_offset = offset;
        self.last_sync = Instant::now();
        tracing::info!(
            offset = offset.get(),
            removed_records = removed,
            deleted_segments = old.len(),
            "log reset"
        );
        Ok(())
    }

    pub fn stats(&self) -> LogStats {
        LogStats {
            segments: self.segments.len() as u64,
            bytes: self.sealed_bytes + self.active.size_bytes,
            ..self.stats
        }
    }

    /// Test hook: the next data fsync (commit, sync, roll or truncation) fails as if the disk had.
    #[doc(hidden)]
    pub fn inject_fault_next_sync(&mut self) {
        self.fault_next_sync = true;
    }

    /// Test hook: the next [`Log::truncate_from`] fails before its change on disk number `step`
    /// (0-based), leaving the files as a process crash at that point would.
    #[cfg(test)]
    pub(crate) fn inject_fault_in_truncation(&mut self, step: u32) {
        self.fault_truncation_step = Some(step);
    }

    /// Test hook: the next [`Log::reset_to`] fails before its change on disk number `step`
    /// (0-based), leaving the files as a process crash at that point would.
    #[cfg(test)]
    pub(crate) fn inject_fault_in_reset(&mut self, step: u32) {
        self.fault_reset_step = Some(step);
    }

    #[cfg(test)]
    pub(crate) fn segments(&self) -> &[Arc<Segment>] {
        &self.segments
    }

    fn publish(&self) {
        debug_assert!(self.committed_offset <= self.next_offset);
        debug_assert!(self.start_offset() <= self.committed_offset);
        self.shared.publish(View {
            segments: Arc::clone(&self.segments),
            committed_offset: self.committed_offset,
            generation: self.generation,
        });
    }

    fn check_poisoned(&self) -> Result<(), LogError> {
        match &self.poisoned {
            Some(text) => Err(LogError::Poisoned(text.clone())),
            None => Ok(()),
        }
    }

    /// After a failed write or fsync the file's state (and, for fsync, the page cache's) is
    /// unknown: refuse everything from now on rather than build on it.
    fn poison(&mut self, e: IoAt) -> LogError {
        let error = LogError::from(e);
        let text = error.to_string();
        tracing::error!(dir = %self.dir.display(), error = %text, "log poisoned");
        self.poisoned = Some(text);
        error
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        // A poisoned log's buffers may describe a state the file never reached: leave them.
        if self.poisoned.is_none()
            && let Err(e) = self.active.flush()
        {
            tracing::warn!(error = %e.source, file = %e.path.display(), "flush at close failed");
        }
    }
}

/// Test hook of [`Log::truncate_from`] and [`Log::reset_to`]: counts their changes on disk and
/// fails before the one numbered `fault`, as if the process had died there.
fn crash_point(fault: Option<u32>, steps: &mut u32, dir: &Path) -> Result<(), IoAt> {
    let step = *steps;
    *steps += 1;
    if fault == Some(step) {
        return Err(IoAt {
            path: dir.to_owned(),
            source: io::Error::other(format!(
                "injected fault: crash before truncation/reset step {step}"
            )),
        });
    }
    Ok(())
}

fn lock_dir(dir: &Path) -> Result<File, OpenError> {
    let path = dir.join(LOCK_FILE_NAME);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .at(&path)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(OpenError::Locked {
            dir: dir.to_owned(),
        }),
        Err(TryLockError::Error(e)) => Err(Err(e).at(&path)?),
    }
}
