//! The payload weir stores per topic message: the data of a Raft `Normal` entry.
//!
//! Layout: `| version u8 = 2 | timestamp_ms u64 LE | codec(producer_id, seq, key, value) |`.
//! The timestamp sits at a fixed position so the topic leader can stamp it, in log order, just
//! before proposing ([`stamp_timestamp`]), and so readers find it without decoding the rest.

use crate::codec::{self, DecodeError, EncodeError};
use crate::types::{ProducerId, Seq, TimestampMs};
use serde::{Deserialize, Serialize};

/// Version byte of the stored entry format.
pub const ENTRY_FORMAT_VERSION: u8 = 2;
/// Bytes before the codec-encoded part: version and timestamp.
pub const ENTRY_HEADER_BYTES: usize = 9;

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
        Some(header) if header[0] == ENTRY_FORMAT_VERSION => {
            header[1..].copy_from_slice(&timestamp.0.to_le_bytes());
            true
        }
        _ => false,
    }
}

/// The timestamp of an encoded entry, without decoding the rest.
pub fn entry_timestamp(entry: &[u8]) -> Option<TimestampMs> {
    let header = entry.get(..ENTRY_HEADER_BYTES)?;
    if header[0] != ENTRY_FORMAT_VERSION {
        return None;
    }
    let mut ts = [0u8; 8];
    ts.copy_from_slice(&header[1..]);
    Some(TimestampMs(u64::from_le_bytes(ts)))
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

#[cfg(test)]
mod tests {
    use super::*;

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
