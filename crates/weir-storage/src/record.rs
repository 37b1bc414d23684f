//! The record frame and a buffered positional reader that parses it.
//!
//! ```text
//! | len u32 LE | crc32 u32 LE | offset u64 LE | timestamp_ms u64 LE | payload (len - 16 bytes) |
//! ```
//! `len` counts the bytes after the CRC; the CRC (crc32fast, IEEE) covers those same bytes.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use weir_proto::{Offset, TimestampMs};

/// Bytes before the payload: len, crc, offset, timestamp.
pub const RECORD_HEADER_BYTES: usize = 24;
/// Bytes not counted by `len`: the length and CRC fields themselves.
const PREFIX_BYTES: usize = 8;
/// Bytes counted by `len` and covered by the CRC before the payload: offset and timestamp.
const BODY_HEADER_BYTES: usize = RECORD_HEADER_BYTES - PREFIX_BYTES;
/// A positional reader fetches at least this much per `pread`, so scanning small records costs
/// one system call per chunk, not one per record.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Total bytes a record with this payload takes on disk.
pub(crate) fn record_bytes(payload_bytes: usize) -> u64 {
    (RECORD_HEADER_BYTES + payload_bytes) as u64
}

/// The header of a record with this offset, timestamp and payload, CRC included.
pub(crate) fn encode_header(
    offset: Offset,
    timestamp_ms: TimestampMs,
    payload: &[u8],
) -> [u8; RECORD_HEADER_BYTES] {
    // The caller checked the payload against record_bytes_max, which is far below u32::MAX.
    let len = u32::try_from(BODY_HEADER_BYTES + payload.len()).expect("payload size was checked");
    let mut header = [0u8; RECORD_HEADER_BYTES];
    header[0..4].copy_from_slice(&len.to_le_bytes());
    header[8..16].copy_from_slice(&offset.get().to_le_bytes());
    header[16..24].copy_from_slice(&timestamp_ms.get().to_le_bytes());
    let crc = crc_of(&header[PREFIX_BYTES..], payload);
    header[4..8].copy_from_slice(&crc.to_le_bytes());
    header
}

fn crc_of(body_header: &[u8], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(body_header);
    hasher.update(payload);
    hasher.finalize()
}

pub(crate) fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut raw = [0u8; 4];
    raw.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(raw)
}

pub(crate) fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(raw)
}

/// A header as read from disk, not yet trusted.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RecordHeader {
    len: u32,
    crc: u32,
    pub offset: Offset,
    pub timestamp_ms: TimestampMs,
}

impl RecordHeader {
    fn parse(bytes: &[u8]) -> Self {
        debug_assert_eq!(bytes.len(), RECORD_HEADER_BYTES);
        Self {
            len: u32_at(bytes, 0),
            crc: u32_at(bytes, 4),
            offset: Offset(u64_at(bytes, 8)),
            timestamp_ms: TimestampMs(u64_at(bytes, 16)),
        }
    }

    /// Payload size, once [`RecordHeader::check_len`] passed.
    pub fn payload_bytes(&self) -> usize {
        self.len as usize - BODY_HEADER_BYTES
    }

    /// Bytes the whole record takes, once [`RecordHeader::check_len`] passed.
    pub fn total_bytes(&self) -> u64 {
        PREFIX_BYTES as u64 + u64::from(self.len)
    }

    /// Checks the length field before anything is allocated for the payload.
    pub fn check_len(&self, record_bytes_max: usize) -> Result<(), String> {
        let len = self.len as usize;
        if len < BODY_HEADER_BYTES {
            Err(format!(
                "length field {len} is below the {BODY_HEADER_BYTES}-byte minimum"
            ))
        } else if len - BODY_HEADER_BYTES > record_bytes_max {
            Err(format!(
                "length field {len} exceeds the record limit of {record_bytes_max} payload bytes"
            ))
        } else {
            Ok(())
        }
    }
}

/// A failed check of the record at `position`.
#[derive(Clone, Debug)]
pub(crate) struct BadRecord {
    pub position: u64,
    /// The offset the record should have had.
    pub offset: Offset,
    pub reason: String,
    /// A record whose CRC is valid but whose offset is wrong cannot come from a torn write: it is
    /// corruption wherever it is.
    pub torn_candidate: bool,
}

/// A record that passed every check.
#[derive(Clone, Debug)]
pub(crate) struct GoodRecord {
    pub total_bytes: u64,
    pub timestamp_ms: TimestampMs,
    /// Only when asked for.
    pub payload: Option<Vec<u8>>,
}

/// Buffered `pread` over a file that may grow while it is read (the active segment). Only bytes
/// the file held at read time are buffered, and bytes of records below the committed offset
/// never change, so the buffer is never stale for what a caller asks.
pub(crate) struct PositionedReader<'a> {
    file: &'a File,
    buf: Vec<u8>,
    buf_start: u64,
}

impl<'a> PositionedReader<'a> {
    pub fn new(file: &'a File) -> Self {
        Self {
            file,
            buf: Vec::new(),
            buf_start: 0,
        }
    }

    /// The bytes `[position, position + n)`, or `None` if the file ends before them. `n` must
    /// already be bounded by the caller (a checked record length).
    pub fn get(&mut self, position: u64, n: usize) -> io::Result<Option<&[u8]>> {
        let buf_end = self.buf_start + self.buf.len() as u64;
        let hit = position >= self.buf_start && position + n as u64 <= buf_end;
        if !hit {
            self.buf.clear();
            self.buf.resize(n.max(READ_CHUNK_BYTES), 0);
            let filled = read_at_most(self.file, &mut self.buf, position)?;
            self.buf.truncate(filled);
            self.buf_start = position;
            if filled < n {
                return Ok(None);
            }
        }
        let at = (position - self.buf_start) as usize;
        Ok(Some(&self.buf[at..at + n]))
    }

    /// The header at `position`, or `None` if the file ends first.
    pub fn header(&mut self, position: u64) -> io::Result<Option<RecordHeader>> {
        Ok(self
            .get(position, RECORD_HEADER_BYTES)?
            .map(RecordHeader::parse))
    }

    /// Reads and checks the whole record at `position`, which must have offset `expected`.
    /// Returns its payload when `want_payload`, else only checks it.
    pub fn record(
        &mut self,
        position: u64,
        expected: Offset,
        record_bytes_max: usize,
        want_payload: bool,
    ) -> io::Result<Result<GoodRecord, BadRecord>> {
        let bad = |reason: String, torn_candidate| {
            Ok(Err(BadRecord {
                position,
                offset: expected,
                reason,
                torn_candidate,
            }))
        };
        let Some(header) = self.header(position)? else {
            return bad("the file ends inside the record header".into(), true);
        };
        if let Err(reason) = header.check_len(record_bytes_max) {
            return bad(reason, true);
        }
        let Some(body) = self.get(position, header.total_bytes() as usize)? else {
            return bad("the file ends inside the record".into(), true);
        };
        let computed = crc32fast::hash(&body[PREFIX_BYTES..]);
        if computed != header.crc {
            return bad(
                format!(
                    "CRC mismatch: stored {:#010x}, computed {computed:#010x}",
                    header.crc
                ),
                true,
            );
        }
        if header.offset != expected {
            return bad(
                format!(
                    "record has offset {} where {expected} was expected",
                    header.offset
                ),
                false,
            );
        }
        Ok(Ok(GoodRecord {
            total_bytes: header.total_bytes(),
            timestamp_ms: header.timestamp_ms,
            payload: want_payload.then(|| body[RECORD_HEADER_BYTES..].to_vec()),
        }))
    }

    /// Whether a complete record with a valid CRC and an offset in `offsets` starts at
    /// `position`. Used to tell a torn tail from corruption followed by good data.
    pub fn plausible_record_at(
        &mut self,
        position: u64,
        offsets: std::ops::RangeInclusive<u64>,
        record_bytes_max: usize,
    ) -> io::Result<bool> {
        let Some(header) = self.header(position)? else {
            return Ok(false);
        };
        // Cheap checks first: almost every position of garbage fails one of them.
        if !offsets.contains(&header.offset.get()) || header.check_len(record_bytes_max).is_err() {
            return Ok(false);
        }
        let Some(body) = self.get(position, header.total_bytes() as usize)? else {
            return Ok(false);
        };
        Ok(crc32fast::hash(&body[PREFIX_BYTES..]) == header.crc)
    }
}

/// Fills `buf` from `position` until it is full or the file ends; returns the bytes read.
fn read_at_most(file: &File, buf: &mut [u8], position: u64) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], position + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}
