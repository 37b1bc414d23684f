//! What [`crate::Log::open`] does to a directory before the log accepts appends: find the
//! segments, check sealed ones cheaply (their index and last records), scan the active one in
//! full, truncate a torn tail, refuse corruption. First of all, finish a reset
//! ([`crate::Log::reset_to`]) or a truncation ([`crate::Log::truncate_from`]) that a crash
//! interrupted.
//!
//! Apart from finishing such a truncation (a change that was already decided and recorded),
//! every check runs before anything on disk is changed, so a refused log is left as it was.

use crate::config::LogConfig;
use crate::error::{IoResultExt, OpenError};
use crate::index::{INDEX_ENTRY_BYTES, IndexBuilder, IndexEntry, parse_index};
use crate::record::{PositionedReader, RECORD_HEADER_BYTES};
use crate::segment::{
    INDEX_SUFFIX, LOG_SUFFIX, Scan, SealedMeta, Segment, create_segment, find_record_after,
    parse_file_name, scan_records, sync_dir,
};
use crate::truncate::{
    MARKER_FILE_NAME, Marker, RESET_MARKER_FILE_NAME, parse_reset_marker, remove_marker,
    remove_reset_marker,
};
use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use weir_proto::{Offset, TimestampMs};

/// `until` for scans that run to the end of the file.
const END: Offset = Offset(u64::MAX);

/// What recovery found and did when the log was opened.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// The directory held no segment: a new, empty log was created.
    pub created: bool,
    /// Segments after recovery.
    pub segments: u64,
    pub start_offset: Offset,
    pub next_offset: Offset,
    /// The torn tail cut from the active segment, if there was one.
    pub truncation: Option<Truncation>,
    /// Index files rewritten because they were missing or inconsistent (the active segment's
    /// index is always rewritten and not listed).
    pub indexes_rebuilt: Vec<PathBuf>,
    /// `.idx` files without a `.log` (left by an interrupted retention pass), deleted.
    pub orphans_removed: Vec<PathBuf>,
    /// A [`crate::Log::truncate_from`] spanning segments that a crash interrupted, finished
    /// before anything else: the offset it truncated from (now `next_offset`, unless a torn
    /// tail was cut below it too).
    pub resumed_truncation: Option<Offset>,
    /// A [`crate::Log::reset_to`] that a crash interrupted, finished before anything else: the
    /// offset the log was restarted at (now both the start and the next offset).
    pub resumed_reset: Option<Offset>,
}

/// A torn tail removed from the active segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Truncation {
    pub file: PathBuf,
    /// Byte position the file was cut at: the start of the first bad record.
    pub position: u64,
    pub truncated_bytes: u64,
    /// Offset the first dropped record would have had; the next append gets it.
    pub offset: Offset,
    /// What was wrong with the first dropped record.
    pub reason: String,
}

/// The active segment, ready for appends.
#[derive(Debug)]
pub(crate) struct RecoveredActive {
    pub segment: Segment,
    pub log_file: File,
    pub index_file: File,
    pub size_bytes: u64,
    pub index_bytes: u64,
    pub builder: IndexBuilder,
}

#[derive(Debug)]
pub(crate) struct Recovered {
    /// Sealed segments, oldest first, each with its metadata set.
    pub sealed: Vec<Segment>,
    pub sealed_bytes: u64,
    pub active: RecoveredActive,
    pub next_offset: Offset,
    pub report: RecoveryReport,
    pub fsyncs: u64,
}

pub(crate) fn recover(dir: &Path, config: &LogConfig) -> Result<Recovered, OpenError> {
    let mut fsyncs = 0;
    // A reset supersedes everything before it (and no truncation can follow one before it is
    // finished: the log that crashed during a reset was never written to again).
    let resumed_reset = resume_reset(dir, &mut fsyncs)?;
    let mut report = RecoveryReport {
        resumed_truncation: resume_truncation(dir, &mut fsyncs)?,
        resumed_reset,
        ..RecoveryReport::default()
    };
    let listing = list_segments(dir)?;
    let Some((&active_base, sealed_bases)) = listing.bases.split_last() else {
        let (segment, log_file, index_file) = create_segment(dir, Offset::ZERO)?;
        report.created = true;
        report.segments = 1;
        return Ok(Recovered {
            sealed: Vec::new(),
            sealed_bytes: 0,
            active: RecoveredActive {
                segment,
                log_file,
                index_file,
                size_bytes: 0,
                index_bytes: 0,
                builder: IndexBuilder::new(config.index_interval_bytes),
            },
            next_offset: Offset::ZERO,
            report,
            fsyncs: fsyncs + 1,
        });
    };

    let mut sealed = Vec::with_capacity(sealed_bases.len());
    let mut sealed_bytes = 0;
    let mut rewrites = Vec::new();
    for (i, &base) in sealed_bases.iter().enumerate() {
        let next_base = listing.bases[i + 1];
        let (segment, meta, rewrite) = load_sealed(dir, base, next_base, config)?;
        if let Some(bytes) = rewrite {
            rewrites.push((segment.index_path.clone(), bytes));
        }
        sealed_bytes += meta.size_bytes;
        segment.seal(meta);
        sealed.push(segment);
    }
    let ActivePlan {
        segment,
        log_file,
        scan,
        truncation,
    } = check_active(dir, active_base, config)?;

    // Everything is checked: from here on, make the changes recovery decided on.
    if let Some(t) = &truncation {
        tracing::warn!(
            file = %t.file.display(),
            position = t.position,
            truncated_bytes = t.truncated_bytes,
            offset = t.offset.get(),
            reason = %t.reason,
            "truncating the torn tail of the active segment"
        );
        log_file.set_len(t.position).at(&t.file)?;
    }
    if truncation.is_some() || scan.end_position > 0 {
        // Readers will see every record kept, but the process that wrote them may have died
        // before syncing (or run with a weaker fsync policy): make them durable first. This also
        // makes a truncation durable before new records are written after it, so a crash cannot
        // bring torn bytes back behind them. Cheap when the pages are already clean.
        log_file.sync_all().at(&segment.log_path)?;
        fsyncs += 1;
    }
    // The active index is rewritten from the scan just made rather than validated: same cost,
    // and the scan is the authority.
    let index_file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&segment.index_path)
        .at(&segment.index_path)?;
    index_file
        .write_all_at(&scan.index_bytes, 0)
        .at(&segment.index_path)?;
    for (path, bytes) in rewrites {
        fs::write(&path, bytes).at(&path)?;
        report.indexes_rebuilt.push(path);
    }
    for orphan in listing.orphans {
        match fs::remove_file(&orphan) {
            Ok(()) => report.orphans_removed.push(orphan),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Err(e).at(&orphan)?),
        }
    }

    report.segments = sealed.len() as u64 + 1;
    report.start_offset = sealed.first().map_or(active_base, |s| s.base_offset);
    report.next_offset = scan.next_offset;
    report.truncation = truncation;
    Ok(Recovered {
        sealed,
        sealed_bytes,
        active: RecoveredActive {
            segment,
            log_file,
            index_file,
            size_bytes: scan.end_position,
            index_bytes: scan.index_bytes.len() as u64,
            builder: scan.builder,
        },
        next_offset: scan.next_offset,
        report,
        fsyncs,
    })
}

/// Finishes a [`crate::Log::truncate_from`] spanning segments that a crash interrupted (its
/// marker is still there; see `truncate.rs`): deletes every segment above the marker's, highest
/// first, cuts the marker's segment at the marker's position, syncs, and removes the marker.
/// Returns the offset truncated from. Each step is idempotent, so a crash during this is
/// finished by the next open just the same.
///
/// A marker that does not parse was torn while being written, which happens before any segment
/// is touched: it is deleted and the log is left as it was. A valid marker that does not match
/// the segments (its segment missing, shorter than the cut, or holding another record at the cut)
/// is corruption, refused before anything is changed.
fn resume_truncation(dir: &Path, fsyncs: &mut u64) -> Result<Option<Offset>, OpenError> {
    let marker_path = dir.join(MARKER_FILE_NAME);
    let bytes = match fs::read(&marker_path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Err(e).at(&marker_path)?),
    };
    let Some(marker) = Marker::parse(&bytes) else {
        tracing::warn!(
            file = %marker_path.display(),
            "deleting an incomplete truncation marker: the truncation had not started"
        );
        *fsyncs += remove_marker(dir)?;
        return Ok(None);
    };
    let Marker {
        from,
        base_offset,
        position,
    } = marker;
    let target = Segment::new(dir, base_offset, Vec::new());
    let corrupt = |position, reason: String| OpenError::Corrupt {
        file: target.log_path.clone(),
        position,
        offset: Some(from),
        reason: format!("{reason} (finishing the truncation from offset {from})"),
    };
    let log_file = match OpenOptions::new()
        .read(true)
        .write(true)
        .open(&target.log_path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(corrupt(0, "the segment to cut is missing".into()));
        }
        Err(e) => return Err(Err(e).at(&target.log_path)?),
    };
    let log_bytes = log_file.metadata().at(&target.log_path)?.len();
    if base_offset > from || log_bytes < position {
        return Err(corrupt(
            log_bytes,
            format!("the segment of {log_bytes} bytes cannot be cut at byte position {position}"),
        ));
    }
    if log_bytes > position {
        // Not cut yet: the first record to go must be where the marker says.
        let header = PositionedReader::new(&log_file)
            .header(position)
            .at(&target.log_path)?;
        if header.is_none_or(|h| h.offset != from) {
            return Err(corrupt(
                position,
                "the record at the cut is not the first one to remove".into(),
            ));
        }
    }
    tracing::warn!(
        from = from.get(),
        segment = %target.log_path.display(),
        "finishing a truncation interrupted by a crash"
    );
    let listing = list_segments(dir)?;
    for &base in listing.bases.iter().rev().filter(|&&b| b > base_offset) {
        let doomed = Segment::new(dir, base, Vec::new());
        for path in [&doomed.log_path, &doomed.index_path] {
            match fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(Err(e).at(path)?),
            }
        }
    }
    if log_bytes > position {
        log_file.set_len(position).at(&target.log_path)?;
    }
    log_file.sync_all().at(&target.log_path)?;
    // The segment's index may hold entries beyond the cut: it is the last segment now, whose
    // index recovery rewrites anyway.
    sync_dir(dir)?;
    *fsyncs += 2 + remove_marker(dir)?;
    Ok(Some(from))
}

/// Finishes a [`crate::Log::reset_to`] that a crash interrupted (its marker, `reset.pending`, is
/// still there; see `truncate.rs`): deletes every segment but `<offset>.log`, highest first
/// (`.log` before `.idx`), creates or empties `<offset>.log` and its index, syncs them and the
/// directory, and removes the marker. Returns the offset the log restarts at. Every step is
/// idempotent, so a crash during this is finished by the next open just the same.
///
/// Whatever segments the crash left (a prefix of the old log, a gap before `<offset>.log`, only
/// the new segment, nothing at all), a valid marker decides: they are never checked for
/// contiguity, so a half-finished reset is never mistaken for a missing segment. A marker that
/// does not parse was torn while being written, before any segment was touched: it is deleted
/// and the old log is left as it was.
fn resume_reset(dir: &Path, fsyncs: &mut u64) -> Result<Option<Offset>, OpenError> {
    let marker_path = dir.join(RESET_MARKER_FILE_NAME);
    let bytes = match fs::read(&marker_path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Err(e).at(&marker_path)?),
    };
    let Some(offset) = parse_reset_marker(&bytes) else {
        tracing::warn!(
            file = %marker_path.display(),
            "deleting an incomplete reset marker: the reset had not started"
        );
        *fsyncs += remove_reset_marker(dir)?;
        return Ok(None);
    };
    tracing::warn!(
        offset = offset.get(),
        "finishing a log reset interrupted by a crash"
    );
    let listing = list_segments(dir)?;
    for &base in listing.bases.iter().rev().filter(|&&b| b != offset) {
        let doomed = Segment::new(dir, base, Vec::new());
        for path in [&doomed.log_path, &doomed.index_path] {
            match fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(Err(e).at(path)?),
            }
        }
    }
    let target = Segment::new(dir, offset, Vec::new());
    for path in [&target.log_path, &target.index_path] {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .at(path)?;
        if path == &target.log_path {
            file.sync_all().at(path)?;
            *fsyncs += 1;
        }
    }
    sync_dir(dir)?;
    // A truncation marker cannot be pending under a reset one; if one were, it would describe
    // segments that are gone.
    *fsyncs += 1 + remove_marker(dir)? + remove_reset_marker(dir)?;
    Ok(Some(offset))
}

#[derive(Debug)]
struct Listing {
    /// Base offsets of the `.log` files, ascending.
    bases: Vec<Offset>,
    /// `.idx` files whose `.log` is gone.
    orphans: Vec<PathBuf>,
}

fn list_segments(dir: &Path) -> Result<Listing, OpenError> {
    let mut logs = BTreeSet::new();
    let mut indexes = Vec::new();
    for entry in fs::read_dir(dir).at(dir)? {
        let entry = entry.at(dir)?;
        let name = entry.file_name();
        // Names that are not ours (including non-UTF-8 ones) are left alone.
        let Some(name) = name.to_str() else { continue };
        if let Some(base) = parse_file_name(name, LOG_SUFFIX) {
            logs.insert(base);
        } else if let Some(base) = parse_file_name(name, INDEX_SUFFIX) {
            indexes.push((base, entry.path()));
        }
    }
    let orphans = indexes
        .into_iter()
        .filter(|(base, _)| !logs.contains(base))
        .map(|(_, path)| path)
        .collect();
    Ok(Listing {
        bases: logs.into_iter().collect(),
        orphans,
    })
}

/// Loads a sealed segment whose successor starts at `next_base`. Reads its index and only the
/// records after the last index entry; reads the whole segment only to rebuild a missing or
/// inconsistent index (returned for writing once the whole log checked out).
fn load_sealed(
    dir: &Path,
    base: Offset,
    next_base: Offset,
    config: &LogConfig,
) -> Result<(Segment, SealedMeta, Option<Vec<u8>>), OpenError> {
    let paths = Segment::new(dir, base, Vec::new());
    let log_path = &paths.log_path;
    let file = File::open(log_path).at(log_path)?;
    let size_bytes = file.metadata().at(log_path)?.len();
    let mut reader = PositionedReader::new(&file);

    let why =
        match check_index(&mut reader, &paths.index_path, size_bytes, base, config).at(log_path)? {
            Ok((entries, scan)) if scan.next_offset == next_base => {
                let meta = SealedMeta {
                    size_bytes,
                    max_timestamp_ms: TimestampMs(scan.builder.max_timestamp_ms),
                };
                return Ok((Segment::new(dir, base, entries), meta, None));
            }
            Ok(_) => "index and log disagree with the next segment's base offset".to_owned(),
            Err(why) => why,
        };
    tracing::warn!(file = %paths.index_path.display(), reason = %why, "rebuilding segment index");

    let scan = scan_records(
        &mut reader,
        size_bytes,
        base,
        (0, base),
        END,
        IndexBuilder::new(config.index_interval_bytes),
        config.record_bytes_max,
    )
    .at(log_path)?;
    if let Some(bad) = scan.bad {
        // A segment is synced before the next one is created, so it cannot have a torn tail.
        return Err(OpenError::Corrupt {
            file: log_path.clone(),
            position: bad.position,
            offset: Some(bad.offset),
            reason: format!("{} (in a sealed segment)", bad.reason),
        });
    }
    if scan.next_offset != next_base {
        return Err(OpenError::Corrupt {
            file: log_path.clone(),
            position: scan.end_position,
            offset: Some(scan.next_offset),
            reason: format!(
                "the segment ends at offset {} but the next segment starts at offset {next_base}",
                scan.next_offset
            ),
        });
    }
    let meta = SealedMeta {
        size_bytes,
        max_timestamp_ms: TimestampMs(scan.builder.max_timestamp_ms),
    };
    Ok((
        Segment::new(dir, base, scan.entries),
        meta,
        Some(scan.index_bytes),
    ))
}

/// Loads the index of a sealed segment and checks the records after its last entry (which also
/// proves that entry points at the record it names). `Ok(Err(why))` means: rebuild the index.
/// Only errors reading the log are returned as I/O errors.
fn check_index(
    reader: &mut PositionedReader<'_>,
    index_path: &Path,
    log_bytes: u64,
    base: Offset,
    config: &LogConfig,
) -> io::Result<Result<(Vec<IndexEntry>, Scan), String>> {
    let index_bytes = match fs::metadata(index_path) {
        Ok(meta) => meta.len(),
        Err(e) => return Ok(Err(format!("cannot read the index: {e}"))),
    };
    // At most one entry per record and a record takes at least a header: refuse to read more.
    let most_bytes = (log_bytes / RECORD_HEADER_BYTES as u64 + 1) * INDEX_ENTRY_BYTES as u64;
    if index_bytes > most_bytes {
        return Ok(Err(format!(
            "index of {index_bytes} bytes is larger than a {log_bytes}-byte log can need"
        )));
    }
    let loaded = match fs::read(index_path) {
        Ok(bytes) => match parse_index(&bytes, log_bytes) {
            Ok(loaded) => loaded,
            Err(why) => return Ok(Err(why)),
        },
        Err(e) => return Ok(Err(format!("cannot read the index: {e}"))),
    };
    let Some(&last) = loaded.entries.last() else {
        return Ok(Err("the index is empty".into()));
    };
    // The base offset comes from the file name: near u64::MAX a plain add overflows.
    let Some(last_offset) = base.get().checked_add(u64::from(last.relative_offset)) else {
        return Ok(Err(format!(
            "the last index entry {last:?} is beyond the largest offset"
        )));
    };
    let scan = scan_records(
        reader,
        log_bytes,
        base,
        (u64::from(last.position), Offset(last_offset)),
        END,
        IndexBuilder::resume(config.index_interval_bytes, loaded.last_max_timestamp_ms),
        config.record_bytes_max,
    )?;
    if let Some(bad) = &scan.bad {
        return Ok(Err(format!(
            "record at byte position {} after the last index entry: {}",
            bad.position, bad.reason
        )));
    }
    if !scan.entries.is_empty() {
        return Ok(Err(
            "the index lacks entries for the segment's last records".into(),
        ));
    }
    Ok(Ok((loaded.entries, scan)))
}

#[derive(Debug)]
struct ActivePlan {
    segment: Segment,
    log_file: File,
    scan: Scan,
    truncation: Option<Truncation>,
}

/// Scans the whole active segment and decides between "clean", "torn tail: truncate" and
/// "corrupt: refuse".
fn check_active(dir: &Path, base: Offset, config: &LogConfig) -> Result<ActivePlan, OpenError> {
    let paths = Segment::new(dir, base, Vec::new());
    let log_path = &paths.log_path;
    let log_file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(log_path)
        .at(log_path)?;
    let log_bytes = log_file.metadata().at(log_path)?.len();
    let limit = config.record_bytes_max;
    let mut reader = PositionedReader::new(&log_file);
    let mut scan = scan_records(
        &mut reader,
        log_bytes,
        base,
        (0, base),
        END,
        IndexBuilder::new(config.index_interval_bytes),
        limit,
    )
    .at(log_path)?;
    let truncation = match &scan.bad {
        None => None,
        Some(bad) => {
            let later = if bad.torn_candidate {
                find_record_after(&mut reader, log_bytes, bad.position, bad.offset, limit)
                    .at(log_path)?
            } else {
                None
            };
            if !bad.torn_candidate || later.is_some() {
                let reason = match later {
                    Some(p) => format!(
                        "{}; a valid record follows at byte position {p}, so this is not a torn tail",
                        bad.reason
                    ),
                    None => bad.reason.clone(),
                };
                return Err(OpenError::Corrupt {
                    file: log_path.clone(),
                    position: bad.position,
                    offset: Some(bad.offset),
                    reason,
                });
            }
            Some(Truncation {
                file: log_path.clone(),
                position: bad.position,
                truncated_bytes: log_bytes - bad.position,
                offset: bad.offset,
                reason: bad.reason.clone(),
            })
        }
    };
    drop(reader);
    let segment = Segment::new(dir, base, std::mem::take(&mut scan.entries));
    Ok(ActivePlan {
        segment,
        log_file,
        scan,
        truncation,
    })
}
