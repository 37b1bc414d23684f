//! The read side: a cheap, cloneable handle that reads committed records while the writer appends.

use crate::error::{IoResultExt, ReadError};
use crate::record::PositionedReader;
use crate::segment::Segment;
use std::fs::File;
use std::io;
use std::sync::{Arc, PoisonError, RwLock};
use weir_proto::{Offset, TimestampMs};

/// One record as a reader returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub offset: Offset,
    pub timestamp_ms: TimestampMs,
    pub payload: Vec<u8>,
}

/// What readers see of the log. The writer replaces it as a whole under a short write lock;
/// readers copy it (an `Arc` and an integer) and do their I/O without holding the lock.
#[derive(Clone, Debug)]
pub(crate) struct View {
    /// Oldest first; never empty; the last one is the active segment.
    pub segments: Arc<Vec<Arc<Segment>>>,
    pub committed_offset: Offset,
    /// Bumped by every [`crate::Log::truncate_from`], in the same publish that cuts the committed
    /// offset and before any file is changed. Records below the committed offset of one
    /// generation never change; a read that finds the generation changed under it retries.
    pub generation: u64,
}

impl View {
    pub fn start_offset(&self) -> Offset {
        self.segments
            .first()
            .map_or(self.committed_offset, |s| s.base_offset)
    }
}

/// State shared by the writer and every reader of one log.
#[derive(Debug)]
pub(crate) struct Shared {
    view: RwLock<View>,
    record_bytes_max: usize,
}

impl Shared {
    pub fn new(view: View, record_bytes_max: usize) -> Self {
        Self {
            view: RwLock::new(view),
            record_bytes_max,
        }
    }

    pub fn view(&self) -> View {
        self.view
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn generation(&self) -> u64 {
        self.view
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .generation
    }

    pub fn publish(&self, view: View) {
        debug_assert!(view.start_offset() <= view.committed_offset);
        *self.view.write().unwrap_or_else(PoisonError::into_inner) = view;
    }
}

/// Reads committed records. Cheap to clone, `Send + Sync`; every read opens its own file handles,
/// so readers never block the writer for longer than copying the `View`.
#[derive(Clone, Debug)]
pub struct LogReader {
    shared: Arc<Shared>,
}

impl LogReader {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// Records with `from <= offset < committed_offset`, oldest first. Stops after `max_records`
    /// records, or before a record that would take the payload total above `max_bytes`, except
    /// that the first record is always returned, however large. `from == committed_offset` gives
    /// an empty result (nothing new yet); `from` outside `[start_offset, committed_offset]` gives
    /// [`ReadError::OutOfRange`].
    ///
    /// A read is never torn by a concurrent [`crate::Log::truncate_from`]: it returns records of
    /// the log either before or after the truncation, never a mix, and never fails because of it.
    pub fn read(
        &self,
        from: Offset,
        max_bytes: usize,
        max_records: usize,
    ) -> Result<Vec<Record>, ReadError> {
        loop {
            let view = self.shared.view();
            let result = self.read_view(&view, from, max_bytes, max_records);
            // The writer publishes a new generation before it changes any file, and this check
            // comes after every byte was read: if the generation is unchanged, no truncation
            // touched the files during the read, and what it read matches `view`. Otherwise the
            // read may have seen a file half cut, a deleted segment, or a newer record at an
            // offset `view` calls committed: whatever it got (records or an error) is dropped,
            // and the read starts over on the new view. Truncations are rare; this loops again
            // only if another one lands during the retry.
            if self.shared.generation() == view.generation {
                return result;
            }
            tracing::debug!(
                from = from.get(),
                "a truncation overtook the read; reading again"
            );
        }
    }

    /// Exclusive upper bound of the records a read can return now.
    pub fn committed_offset(&self) -> Offset {
        self.shared.view().committed_offset
    }

    /// Oldest offset still retained.
    pub fn start_offset(&self) -> Offset {
        self.shared.view().start_offset()
    }

    #[cfg(test)]
    pub(crate) fn view(&self) -> View {
        self.shared.view()
    }

    /// [`LogReader::read`] against a view taken earlier, which retention may have overtaken.
    pub(crate) fn read_view(
        &self,
        view: &View,
        from: Offset,
        max_bytes: usize,
        max_records: usize,
    ) -> Result<Vec<Record>, ReadError> {
        let _span = tracing::trace_span!("log_read", from = from.get()).entered();
        let committed = view.committed_offset;
        let start = view.start_offset();
        if from < start || from > committed {
            return Err(ReadError::OutOfRange {
                requested: from,
                start,
                committed,
            });
        }
        let mut batch = Batch {
            records: Vec::new(),
            payload_bytes: 0,
            max_bytes,
            max_records,
            stopped: false,
        };
        let segments = &view.segments;
        // The segment holding `from`: the last one whose base is at or below it. `from >= start`
        // makes the count at least 1.
        let mut i = segments
            .partition_point(|s| s.base_offset <= from)
            .saturating_sub(1);
        let mut next = from;
        while next < committed && !batch.full() {
            let Some(segment) = segments.get(i) else {
                break;
            };
            let end = segments
                .get(i + 1)
                .map_or(committed, |s| s.base_offset.min(committed));
            let file = match File::open(&segment.log_path) {
                Ok(file) => file,
                // Retention deleted the segment after `view` was taken.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if !batch.records.is_empty() {
                        break;
                    }
                    let now = self.shared.view();
                    return Err(ReadError::OutOfRange {
                        requested: from,
                        start: now.start_offset(),
                        committed: now.committed_offset,
                    });
                }
                Err(e) => return Err(Err(e).at(&segment.log_path)?),
            };
            next = self.read_segment(segment, &file, next, end, &mut batch)?;
            i += 1;
        }
        Ok(batch.records)
    }

    /// Appends records `from..end` of `segment` to `batch` until it is full; returns the offset
    /// after the last one taken.
    fn read_segment(
        &self,
        segment: &Segment,
        file: &File,
        from: Offset,
        end: Offset,
        batch: &mut Batch,
    ) -> Result<Offset, ReadError> {
        let limit = self.shared.record_bytes_max;
        let mut reader = PositionedReader::new(file);
        let (mut position, mut offset) = segment.seek(from);
        // Open checks a sealed index's structure and last entry, not every entry: an entry that
        // does not point at its record costs a scan from the segment's start, not the data.
        if position != 0
            && !entry_matches(&mut reader, position, offset, limit).at(&segment.log_path)?
        {
            tracing::warn!(
                file = %segment.index_path.display(),
                offset = offset.get(),
                position,
                "index entry does not match the log; scanning the segment from its start"
            );
            (position, offset) = (0, segment.base_offset);
        }
        let corrupt = |position, offset, reason: String| ReadError::Corrupt {
            file: segment.log_path.clone(),
            position,
            offset: Some(offset),
            reason,
        };
        while offset < end {
            let header = reader
                .header(position)
                .at(&segment.log_path)?
                .ok_or_else(|| {
                    corrupt(
                        position,
                        offset,
                        "the file ends inside a committed record".into(),
                    )
                })?;
            header
                .check_len(limit)
                .map_err(|reason| corrupt(position, offset, reason))?;
            if header.offset != offset {
                return Err(corrupt(
                    position,
                    offset,
                    format!(
                        "record has offset {} where {offset} was expected",
                        header.offset
                    ),
                ));
            }
            if offset >= from {
                if !batch.fits(header.payload_bytes()) {
                    batch.stopped = true;
                    break;
                }
                let good = reader
                    .record(position, offset, limit, true)
                    .at(&segment.log_path)?
                    .map_err(|bad| corrupt(bad.position, bad.offset, bad.reason))?;
                batch.push(Record {
                    offset,
                    timestamp_ms: good.timestamp_ms,
                    payload: good.payload.unwrap_or_default(),
                });
                if batch.full() {
                    return Ok(offset.next());
                }
            }
            // Records before `from` are only skipped over (between the index entry and `from`):
            // their length and offset fields are checked, their CRC is not.
            position += header.total_bytes();
            offset = offset.next();
        }
        Ok(offset)
    }
}

/// Whether a record with this offset and a sane length starts at `position`.
fn entry_matches(
    reader: &mut PositionedReader<'_>,
    position: u64,
    offset: Offset,
    record_bytes_max: usize,
) -> io::Result<bool> {
    Ok(reader
        .header(position)?
        .is_some_and(|h| h.offset == offset && h.check_len(record_bytes_max).is_ok()))
}

/// Records gathered by one read and its limits.
struct Batch {
    records: Vec<Record>,
    payload_bytes: usize,
    max_bytes: usize,
    max_records: usize,
    /// A record did not fit under `max_bytes`: nothing after it may be taken either.
    stopped: bool,
}

impl Batch {
    fn full(&self) -> bool {
        self.stopped || self.records.len() >= self.max_records
    }

    /// Whether a record with this payload may join: the first always may.
    fn fits(&self, payload_bytes: usize) -> bool {
        self.records.is_empty()
            || self.payload_bytes.saturating_add(payload_bytes) <= self.max_bytes
    }

    fn push(&mut self, record: Record) {
        self.payload_bytes += record.payload.len();
        self.records.push(record);
    }
}
