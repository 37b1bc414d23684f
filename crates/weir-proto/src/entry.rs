//! The payload weir stores per log record (the storage record header already holds the offset
//! and timestamp). Prefixed by a format version byte so the disk format can evolve.

use crate::codec::{self, DecodeError, EncodeError};
use crate::types::{ProducerId, Seq};
use serde::{Deserialize, Serialize};

/// Version byte of the stored entry format.
pub const ENTRY_FORMAT_VERSION: u8 = 1;

/// One stored entry, decoded.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct StoredEntry {
    pub producer_id: ProducerId,
    pub seq: Seq,
    #[serde(with = "serde_bytes")]
    pub key: Option<Vec<u8>>,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
}

/// The same fields, borrowed, for encoding without copying the payload twice.
#[derive(Serialize)]
struct StoredEntryRef<'a> {
    producer_id: ProducerId,
    seq: Seq,
    #[serde(with = "serde_bytes")]
    key: Option<&'a [u8]>,
    #[serde(with = "serde_bytes")]
    value: &'a [u8],
}

/// Appends the stored form of an entry to `out`.
pub fn encode_entry(
    producer_id: ProducerId,
    seq: Seq,
    key: Option<&[u8]>,
    value: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    out.push(ENTRY_FORMAT_VERSION);
    codec::encode_into(
        &StoredEntryRef {
            producer_id,
            seq,
            key,
            value,
        },
        out,
    )
}

pub fn decode_entry(bytes: &[u8]) -> Result<StoredEntry, DecodeError> {
    match bytes.split_first() {
        Some((&ENTRY_FORMAT_VERSION, rest)) => codec::decode(rest),
        Some((v, _)) => Err(DecodeError::new(format!(
            "unknown entry format version {v}"
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
            let e = decode_entry(&buf).unwrap();
            assert_eq!(e.key.as_deref(), key);
            assert_eq!(e.value, b"value");
            assert_eq!((e.producer_id, e.seq), (ProducerId(7), Seq(9)));
        }
    }

    #[test]
    fn unknown_entry_version_is_an_error() {
        assert!(decode_entry(&[2, 0, 0]).is_err());
        assert!(decode_entry(&[]).is_err());
    }
}
