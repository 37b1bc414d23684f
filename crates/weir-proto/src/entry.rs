//! The payload weir stores per topic message: the data of a Raft `Normal` entry.
//!
//! Layout: `| version u8 = 2 | timestamp_ms u64 LE | codec(producer_id, seq, key, value) |`.
//! The timestamp sits at a fixed position so the topic leader can stamp it, in log order, just
//! before proposing ([`stamp_timestamp`]), and so readers find it without decoding the rest.
//!
//! A programmable topic's input log also holds program switches (version byte
//! [`PROGRAM_ENTRY_VERSION`], same header, then `codec(ProgramSpec, reset_state)`), and its event
//! log holds event records (`| EVENT_RECORD_VERSION | codec(source_offset, key, value,
//! tombstone) |`, the timestamp in the storage record's header).

use crate::codec::{self, DecodeError, EncodeError};
use crate::message::ProgramSpec;
use crate::types::{Offset, ProducerId, Seq, TimestampMs};
use serde::{Deserialize, Serialize};

/// Version byte of the stored entry format.
pub const ENTRY_FORMAT_VERSION: u8 = 2;
/// Bytes before the codec-encoded part: version and timestamp.
pub const ENTRY_HEADER_BYTES: usize = 9;
/// Version byte of a program switch in a programmable topic's input log.
pub const PROGRAM_ENTRY_VERSION: u8 = 0x50;
/// Version byte of a record of a programmable topic's event log.
pub const EVENT_RECORD_VERSION: u8 = 0x45;

fn stamped(version: u8) -> bool {
    version == ENTRY_FORMAT_VERSION || version == PROGRAM_ENTRY_VERSION
}

/// One stored entry, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEntry {
    pub timestamp_ms: TimestampMs,
    pub producer_id: ProducerId,
    pub seq: Seq,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
}

#[derive(Deserialize)]
struct StoredBody {
    producer_id: ProducerId,
    seq: Seq,
    #[serde(with = "serde_bytes")]
    key: Option<Vec<u8>>,
    #[serde(with = "serde_bytes")]
    value: Vec<u8>,
}

/// The same fields, borrowed, for encoding without copying the payload twice.
#[derive(Serialize)]
struct StoredBodyRef<'a> {
    producer_id: ProducerId,
    seq: Seq,
    #[serde(with = "serde_bytes")]
    key: Option<&'a [u8]>,
    #[serde(with = "serde_bytes")]
    value: &'a [u8],
}

/// Appends the stored form of an entry to `out`, with timestamp 0 (the leader stamps it).
pub fn encode_entry(
    producer_id: ProducerId,
    seq: Seq,
    key: Option<&[u8]>,
    value: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    out.push(ENTRY_FORMAT_VERSION);
    out.extend_from_slice(&0u64.to_le_bytes());
    codec::encode_into(
        &StoredBodyRef {
            producer_id,
            seq,
            key,
            value,
        },
        out,
    )
}

/// Writes `timestamp` into an encoded entry. Returns false (and changes nothing) if `entry`
/// is not an entry of this format.
pub fn stamp_timestamp(entry: &mut [u8], timestamp: TimestampMs) -> bool {
    match entry.get_mut(..ENTRY_HEADER_BYTES) {
        Some(header) if stamped(header[0]) => {
            header[1..].copy_from_slice(&timestamp.0.to_le_bytes());
            true
        }
        _ => false,
    }
}

/// The timestamp of an encoded entry, without decoding the rest.
pub fn entry_timestamp(entry: &[u8]) -> Option<TimestampMs> {
    let header = entry.get(..ENTRY_HEADER_BYTES)?;
    if !stamped(header[0]) {
        return None;
    }
    let mut ts = [0u8; 8];
    ts.copy_from_slice(&header[1..]);
    Some(TimestampMs(u64::from_le_bytes(ts)))
}

/// The leading fields of the body: what the producer table reads of every message.
#[derive(Deserialize)]
struct StoredProducer {
    producer_id: ProducerId,
    seq: Seq,
}

/// The producer id and sequence number of an encoded message, without decoding (or copying)
/// its key and value. `None` for anything that is not a message of this format.
pub fn entry_producer(entry: &[u8]) -> Option<(ProducerId, Seq)> {
    if entry.first() != Some(&ENTRY_FORMAT_VERSION) {
        return None;
    }
    let body: StoredProducer = codec::decode_prefix(entry.get(ENTRY_HEADER_BYTES..)?).ok()?;
    Some((body.producer_id, body.seq))
}

pub fn decode_entry(bytes: &[u8]) -> Result<StoredEntry, DecodeError> {
    match bytes.first() {
        Some(&ENTRY_FORMAT_VERSION) => {
            let timestamp_ms = entry_timestamp(bytes)
                .ok_or_else(|| DecodeError::new("entry shorter than its header".into()))?;
            let body: StoredBody = codec::decode(&bytes[ENTRY_HEADER_BYTES..])?;
            Ok(StoredEntry {
                timestamp_ms,
                producer_id: body.producer_id,
                seq: body.seq,
                key: body.key,
                value: body.value,
            })
        }
        Some(v) => Err(DecodeError::new(format!(
            "unknown entry format version {v} (this weir reads version {ENTRY_FORMAT_VERSION})"
        ))),
        None => Err(DecodeError::new("empty entry".into())),
    }
}

/// An entry of a topic's input log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TopicEntry {
    Message(StoredEntry),
    /// Switch the topic's program (programmable topics only).
    Program {
        timestamp_ms: TimestampMs,
        spec: ProgramSpec,
        reset_state: bool,
    },
}

#[derive(Serialize)]
struct ProgramBodyRef<'a> {
    spec: &'a ProgramSpec,
    reset_state: bool,
}

#[derive(Deserialize)]
struct ProgramBody {
    spec: ProgramSpec,
    reset_state: bool,
}

/// Appends a program switch entry to `out`, with timestamp 0 (the leader stamps it).
pub fn encode_program_entry(
    spec: &ProgramSpec,
    reset_state: bool,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    out.push(PROGRAM_ENTRY_VERSION);
    out.extend_from_slice(&0u64.to_le_bytes());
    codec::encode_into(&ProgramBodyRef { spec, reset_state }, out)
}

/// Decodes a message or a program switch.
pub fn decode_topic_entry(bytes: &[u8]) -> Result<TopicEntry, DecodeError> {
    if bytes.first() == Some(&PROGRAM_ENTRY_VERSION) {
        let timestamp_ms = entry_timestamp(bytes)
            .ok_or_else(|| DecodeError::new("entry shorter than its header".into()))?;
        let body: ProgramBody = codec::decode(&bytes[ENTRY_HEADER_BYTES..])?;
        return Ok(TopicEntry::Program {
            timestamp_ms,
            spec: body.spec,
            reset_state: body.reset_state,
        });
    }
    decode_entry(bytes).map(TopicEntry::Message)
}

/// One event of a programmable topic's event log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    /// The input offset whose processing produced it.
    pub source_offset: Offset,
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    pub tombstone: bool,
}

pub fn encode_event_record(event: &EventRecord, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    out.push(EVENT_RECORD_VERSION);
    codec::encode_into(event, out)
}

pub fn decode_event_record(bytes: &[u8]) -> Result<EventRecord, DecodeError> {
    match bytes.split_first() {
        Some((&EVENT_RECORD_VERSION, body)) => codec::decode(body),
        Some((v, _)) => Err(DecodeError::new(format!(
            "unknown event record version {v} (this weir reads version {EVENT_RECORD_VERSION})"
        ))),
        None => Err(DecodeError::new("empty event record".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_entries_are_stamped_and_decode_apart_from_messages() {
        let spec = ProgramSpec {
            module: b"\0asm".to_vec(),
            config: vec![("k".into(), "v".into())],
        };
        let mut buf = Vec::new();
        encode_program_entry(&spec, true, &mut buf).unwrap();
        assert!(stamp_timestamp(&mut buf, TimestampMs(77)));
        assert_eq!(
            decode_topic_entry(&buf).unwrap(),
            TopicEntry::Program {
                timestamp_ms: TimestampMs(77),
                spec,
                reset_state: true
            }
        );
        let mut message = Vec::new();
        encode_entry(ProducerId(1), Seq(1), None, b"v", &mut message).unwrap();
        assert!(matches!(
            decode_topic_entry(&message).unwrap(),
            TopicEntry::Message(_)
        ));
        // A program switch is not a message.
        assert!(decode_entry(&buf).is_err());
    }

    #[test]
    fn event_records_round_trip_and_foreign_bytes_are_refused() {
        let event = EventRecord {
            source_offset: Offset(9),
            key: b"k".to_vec(),
            value: b"3".to_vec(),
            tombstone: false,
        };
        let mut buf = Vec::new();
        encode_event_record(&event, &mut buf).unwrap();
        assert_eq!(decode_event_record(&buf).unwrap(), event);
        assert!(decode_event_record(&[ENTRY_FORMAT_VERSION, 0]).is_err());
        assert!(decode_event_record(&[]).is_err());
    }

    #[test]
    fn entries_round_trip_with_and_without_key() {
        for key in [None, Some(&b"k"[..]), Some(&b""[..])] {
            let mut buf = Vec::new();
            encode_entry(ProducerId(7), Seq(9), key, b"value", &mut buf).unwrap();
            assert!(stamp_timestamp(&mut buf, TimestampMs(1234)));
            let e = decode_entry(&buf).unwrap();
            assert_eq!(e.key.as_deref(), key);
            assert_eq!(e.value, b"value");
            assert_eq!(e.timestamp_ms, TimestampMs(1234));
            assert_eq!((e.producer_id, e.seq), (ProducerId(7), Seq(9)));
        }
    }

    #[test]
    fn stamping_changes_only_the_timestamp() {
        let mut buf = Vec::new();
        encode_entry(ProducerId(1), Seq(2), None, b"v", &mut buf).unwrap();
        let before = buf.clone();
        assert_eq!(entry_timestamp(&buf), Some(TimestampMs::ZERO));
        assert!(stamp_timestamp(&mut buf, TimestampMs(u64::MAX)));
        assert_eq!(entry_timestamp(&buf), Some(TimestampMs(u64::MAX)));
        assert_eq!(buf[ENTRY_HEADER_BYTES..], before[ENTRY_HEADER_BYTES..]);
    }

    #[test]
    fn foreign_or_short_bytes_are_not_stamped_or_decoded() {
        let mut short = vec![ENTRY_FORMAT_VERSION, 1, 2];
        assert!(!stamp_timestamp(&mut short, TimestampMs(5)));
        assert_eq!(short, [ENTRY_FORMAT_VERSION, 1, 2]);
        assert_eq!(entry_timestamp(&short), None);
        assert!(decode_entry(&short).is_err());
        let mut other = vec![1u8; 20];
        assert!(!stamp_timestamp(&mut other, TimestampMs(5)));
        assert!(decode_entry(&other).is_err());
        assert!(decode_entry(&[]).is_err());
    }
}
