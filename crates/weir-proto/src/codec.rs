//! The one place that knows bincode. Everything else calls [`encode`] and [`decode`], so the
//! encoding can be swapped here alone (bincode 2 is no longer maintained upstream).

use crate::limits::FRAME_BYTES_MAX;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Standard bincode config (varint integers, little endian) with a decode limit: a length
/// field inside a message that claims more than a frame can hold fails instead of allocating.
fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<FRAME_BYTES_MAX>()
}

#[derive(Debug, thiserror::Error)]
#[error("cannot encode message: {0}")]
pub struct EncodeError(String);

#[derive(Debug, thiserror::Error)]
#[error("cannot decode message: {0}")]
pub struct DecodeError(String);

impl DecodeError {
    pub fn new(reason: String) -> Self {
        Self(reason)
    }
}

/// Appends the encoding of `value` to `out`.
pub fn encode_into<T: Serialize>(value: &T, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    bincode::serde::encode_into_std_write(value, out, config())
        .map(|_| ())
        .map_err(|e| EncodeError(e.to_string()))
}

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::new();
    encode_into(value, &mut out)?;
    Ok(out)
}

/// Decodes one value from the start of `bytes`, ignoring what follows it: for reading the
/// leading fields of a longer encoding without decoding (and copying) the rest.
pub fn decode_prefix<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    bincode::serde::decode_from_slice::<T, _>(bytes, config())
        .map(|(value, _)| value)
        .map_err(|e| DecodeError(e.to_string()))
}

/// Decodes exactly one value that fills all of `bytes`; trailing bytes are an error.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let (value, used) = bincode::serde::decode_from_slice::<T, _>(bytes, config())
        .map_err(|e| DecodeError(e.to_string()))?;
    if used != bytes.len() {
        return Err(DecodeError(format!(
            "{} trailing bytes after the message",
            bytes.len() - used
        )));
    }
    Ok(value)
}
