//! The weir topic-program ABI, version 1: names, limits and the byte formats that cross the
//! host/guest boundary. Both sides use this module (the host runtime encodes batches and decodes
//! outcomes with it, the guest the other way round), so the two cannot drift. The ABI is
//! specified in `docs/PROGRAMS.md` for programs written in other languages.
//!
//! Every integer is little-endian. A byte string is a `u32` length followed by the bytes.

/// The value `weir_abi_version` returns.
pub const ABI_VERSION: i32 = 1;

/// The only import module a program may use.
pub const IMPORT_MODULE: &str = "weir";
/// `weir.begin_input(index: i32)`: called by the guest before input `index` (0-based) of a batch.
/// The host resets the fuel budget there, so each input gets the same budget whatever batch it
/// arrived in, and knows which input a trap belongs to.
pub const IMPORT_BEGIN_INPUT: &str = "begin_input";
/// `weir.end_batch(processed: i32)`: called by the guest after the last input it processed; what
/// follows (writing the outcome count) runs on a small fixed budget of its own.
pub const IMPORT_END_BATCH: &str = "end_batch";

pub const EXPORT_MEMORY: &str = "memory";
/// `() -> i32`, returns [`ABI_VERSION`].
pub const EXPORT_ABI_VERSION: &str = "weir_abi_version";
/// `(len: i32) -> i32`: a pointer to at least `len` writable bytes, where the host puts the
/// argument of the next call; 0 if the guest cannot provide them.
pub const EXPORT_INPUT_BUFFER: &str = "weir_input_buffer";
/// `(len: i32) -> i64`: the config ([`encode_config`]) is in the input buffer; returns a status.
pub const EXPORT_INIT: &str = "weir_init";
/// `(len: i32) -> i64`: a state from `weir_snapshot` is in the input buffer; returns a status.
pub const EXPORT_RESTORE: &str = "weir_restore";
/// `(len: i32) -> i64`: a batch ([`encode_batch`]) is in the input buffer; returns outcomes.
pub const EXPORT_PROCESS: &str = "weir_process";
/// `(len: i32) -> i64` (len is 0): returns the program state as bytes.
pub const EXPORT_SNAPSHOT: &str = "weir_snapshot";

/// A batch's encoding never exceeds this, so a guest can allocate its input buffer once and
/// never grow it while processing (which keeps its heap, and so its fuel use, independent of
/// how inputs were batched).
pub const BATCH_BYTES_MAX: usize = 2 * 1024 * 1024;
/// A batch never holds more inputs than this.
pub const BATCH_INPUTS_MAX: usize = 4096;
/// Bytes of an input's encoding besides key and value: offset, timestamp, two lengths.
pub const INPUT_OVERHEAD_BYTES: usize = 8 + 8 + 4 + 4;
/// An input whose encoding is larger is rejected by the host before the program sees it.
pub const INPUT_BYTES_MAX: usize = BATCH_BYTES_MAX - 4;
/// Bytes one input's outcome may take in the guest's output (its events, or its rejection).
pub const OUTCOME_BYTES_MAX: usize = 1024 * 1024 + 64 * 1024;
/// Events one input may produce.
pub const EVENTS_PER_INPUT_MAX: usize = 1024;
/// A rejection message is cut to this many bytes (at a character boundary).
pub const REJECT_MESSAGE_BYTES_MAX: usize = 4 * 1024;
/// Keys and values of config entries.
pub const CONFIG_ENTRY_BYTES_MAX: usize = 4 * 1024;
/// Config entries.
pub const CONFIG_ENTRIES_MAX: usize = 256;

pub const STATUS_OK: u8 = 0;
pub const STATUS_ERROR: u8 = 1;
pub const OUTCOME_ACCEPTED: u8 = 0;
pub const OUTCOME_REJECTED: u8 = 1;
pub const EVENT_PUT: u8 = 0;
pub const EVENT_DELETE: u8 = 1;

/// Bytes of an event's encoding besides key and value: kind, two lengths.
pub const EVENT_OVERHEAD_BYTES: usize = 1 + 4 + 4;
/// Bytes of an outcome's encoding besides its events or message: tag, count or length.
pub const OUTCOME_OVERHEAD_BYTES: usize = 1 + 4;

/// Packs a guest pointer and length into the `i64` that exports return.
pub fn pack(ptr: u32, len: u32) -> i64 {
    ((u64::from(ptr) << 32) | u64::from(len)) as i64
}

/// The inverse of [`pack`].
pub fn unpack(packed: i64) -> (u32, u32) {
    let bits = packed as u64;
    ((bits >> 32) as u32, bits as u32)
}

/// One committed message as the program sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Input<'a> {
    /// Its offset in the topic's input log.
    pub offset: u64,
    /// The leader-assigned timestamp, in milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    pub key: &'a [u8],
    pub value: &'a [u8],
}

impl Input<'_> {
    /// Bytes of this input's encoding inside a batch.
    pub fn encoded_len(&self) -> usize {
        INPUT_OVERHEAD_BYTES + self.key.len() + self.value.len()
    }
}

/// What a program makes of one input.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Accepted, with the events it produced (possibly none).
    Accepted(Vec<Event>),
    /// Rejected; the producer receives the message.
    Rejected(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    Put,
    Delete,
}

/// One entry of a programmable topic's event log.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Event {
    pub kind: EventKind,
    pub key: Vec<u8>,
    /// Empty for a delete.
    pub value: Vec<u8>,
}

/// Bytes that do not follow the format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub &'static str);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for DecodeError {}

/// Reads the formats above from a byte slice, checking every length against what is left.
#[derive(Debug)]
pub struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, pos: 0 }
    }

    pub fn is_empty(&self) -> bool {
        self.pos == self.bytes.len()
    }

    pub fn take(&mut self, len: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(len)
            .filter(|&end| end <= self.bytes.len())
            .ok_or(DecodeError("length runs past the end"))?;
        let slice = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(slice)
    }

    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        let bytes = self.take(4)?;
        Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        let bytes = self.take(8)?;
        let mut array = [0u8; 8];
        array.copy_from_slice(bytes);
        Ok(u64::from_le_bytes(array))
    }

    /// A `u32` length, checked against `max`, then that many bytes.
    pub fn bytes(&mut self, max: usize) -> Result<&'a [u8], DecodeError> {
        let len = self.u32()? as usize;
        if len > max {
            return Err(DecodeError("byte string longer than its limit"));
        }
        self.take(len)
    }

    /// One input of a batch.
    pub fn input(&mut self) -> Result<Input<'a>, DecodeError> {
        let offset = self.u64()?;
        let timestamp_ms = self.u64()?;
        let key = self.bytes(INPUT_BYTES_MAX)?;
        let value = self.bytes(INPUT_BYTES_MAX)?;
        Ok(Input {
            offset,
            timestamp_ms,
            key,
            value,
        })
    }
}

pub fn put_u32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_le_bytes());
}

pub fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    // Every caller bounds `bytes` by a limit far below 4 GiB.
    put_u32(out, bytes.len() as u32);
    out.extend_from_slice(bytes);
}

/// A batch: `u32 count`, then per input `u64 offset, u64 timestamp_ms, bytes key, bytes value`.
pub fn encode_batch(inputs: &[Input<'_>], out: &mut Vec<u8>) {
    out.clear();
    put_u32(out, inputs.len() as u32);
    for input in inputs {
        out.extend_from_slice(&input.offset.to_le_bytes());
        out.extend_from_slice(&input.timestamp_ms.to_le_bytes());
        put_bytes(out, input.key);
        put_bytes(out, input.value);
    }
}

/// A config: `u32 count`, then per entry `bytes key, bytes value` (UTF-8).
pub fn encode_config(entries: &[(String, String)], out: &mut Vec<u8>) {
    out.clear();
    put_u32(out, entries.len() as u32);
    for (key, value) in entries {
        put_bytes(out, key.as_bytes());
        put_bytes(out, value.as_bytes());
    }
}

pub fn decode_config(bytes: &[u8]) -> Result<Vec<(String, String)>, DecodeError> {
    let mut reader = Reader::new(bytes);
    let count = reader.u32()? as usize;
    if count > CONFIG_ENTRIES_MAX {
        return Err(DecodeError("too many config entries"));
    }
    let mut entries = Vec::with_capacity(count);
    for _ in 0..count {
        let key = reader.bytes(CONFIG_ENTRY_BYTES_MAX)?;
        let value = reader.bytes(CONFIG_ENTRY_BYTES_MAX)?;
        let key = std::str::from_utf8(key).map_err(|_| DecodeError("config key is not UTF-8"))?;
        let value =
            std::str::from_utf8(value).map_err(|_| DecodeError("config value is not UTF-8"))?;
        entries.push((key.to_owned(), value.to_owned()));
    }
    if !reader.is_empty() {
        return Err(DecodeError("bytes after the config"));
    }
    Ok(entries)
}

/// A status, as `weir_init` and `weir_restore` return it: `u8 status`, then for an error the
/// UTF-8 message (the rest of the bytes).
pub fn decode_status(bytes: &[u8]) -> Result<Result<(), String>, DecodeError> {
    match bytes.split_first() {
        Some((&STATUS_OK, [])) => Ok(Ok(())),
        Some((&STATUS_ERROR, message)) => Ok(Err(String::from_utf8_lossy(
            &message[..message.len().min(REJECT_MESSAGE_BYTES_MAX)],
        )
        .into_owned())),
        _ => Err(DecodeError("malformed status")),
    }
}

/// Outcomes, as `weir_process` returns them: `u32 processed`, then per processed input
/// `u8 OUTCOME_ACCEPTED, u32 events, (u8 kind, bytes key, bytes value)*` or
/// `u8 OUTCOME_REJECTED, bytes message`. `processed` may be less than the batch's count (the
/// guest ran short of output space); the host sends the rest again.
///
/// Returns the outcomes in order; each input's outcome is checked against the per-input limits.
pub fn decode_outcomes(bytes: &[u8], batch_len: usize) -> Result<Vec<Outcome>, DecodeError> {
    let mut reader = Reader::new(bytes);
    let processed = reader.u32()? as usize;
    if processed > batch_len {
        return Err(DecodeError("more outcomes than inputs"));
    }
    let mut outcomes = Vec::with_capacity(processed);
    for _ in 0..processed {
        outcomes.push(decode_outcome(&mut reader)?);
    }
    if !reader.is_empty() {
        return Err(DecodeError("bytes after the outcomes"));
    }
    Ok(outcomes)
}

fn decode_outcome(reader: &mut Reader<'_>) -> Result<Outcome, DecodeError> {
    match reader.u8()? {
        OUTCOME_ACCEPTED => {
            let count = reader.u32()? as usize;
            if count > EVENTS_PER_INPUT_MAX {
                return Err(DecodeError("more events than an input may produce"));
            }
            let mut events = Vec::with_capacity(count);
            let mut bytes = OUTCOME_OVERHEAD_BYTES;
            for _ in 0..count {
                let kind = match reader.u8()? {
                    EVENT_PUT => EventKind::Put,
                    EVENT_DELETE => EventKind::Delete,
                    _ => return Err(DecodeError("unknown event kind")),
                };
                let key = reader.bytes(OUTCOME_BYTES_MAX)?;
                let value = reader.bytes(OUTCOME_BYTES_MAX)?;
                if kind == EventKind::Delete && !value.is_empty() {
                    return Err(DecodeError("a delete event carries a value"));
                }
                bytes += EVENT_OVERHEAD_BYTES + key.len() + value.len();
                if bytes > OUTCOME_BYTES_MAX {
                    return Err(DecodeError("an input's events exceed their limit"));
                }
                events.push(Event {
                    kind,
                    key: key.to_vec(),
                    value: value.to_vec(),
                });
            }
            Ok(Outcome::Accepted(events))
        }
        OUTCOME_REJECTED => {
            let message = reader.bytes(REJECT_MESSAGE_BYTES_MAX)?;
            let message =
                std::str::from_utf8(message).map_err(|_| DecodeError("message is not UTF-8"))?;
            Ok(Outcome::Rejected(message.to_owned()))
        }
        _ => Err(DecodeError("unknown outcome tag")),
    }
}

/// The longest prefix of `message` that fits [`REJECT_MESSAGE_BYTES_MAX`], cut at a character
/// boundary.
pub fn clip_message(message: &str) -> &str {
    if message.len() <= REJECT_MESSAGE_BYTES_MAX {
        return message;
    }
    let mut end = REJECT_MESSAGE_BYTES_MAX;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    &message[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_round_trips_pointers_and_lengths() {
        for (ptr, len) in [(0, 0), (1, 2), (u32::MAX, u32::MAX), (0x8000_0000, 7)] {
            assert_eq!(unpack(pack(ptr, len)), (ptr, len));
        }
    }

    #[test]
    fn a_batch_decodes_to_the_inputs_it_was_encoded_from() {
        let inputs = [
            Input {
                offset: 3,
                timestamp_ms: 1_700_000_000_000,
                key: b"k",
                value: b"value",
            },
            Input {
                offset: 4,
                timestamp_ms: 1_700_000_000_001,
                key: b"",
                value: b"",
            },
        ];
        let mut bytes = Vec::new();
        encode_batch(&inputs, &mut bytes);
        assert_eq!(
            bytes.len(),
            4 + inputs.iter().map(Input::encoded_len).sum::<usize>()
        );
        let mut reader = Reader::new(&bytes);
        assert_eq!(reader.u32().unwrap(), 2);
        assert_eq!(reader.input().unwrap(), inputs[0]);
        assert_eq!(reader.input().unwrap(), inputs[1]);
        assert!(reader.is_empty());
    }

    #[test]
    fn outcomes_with_lengths_past_the_end_or_over_limits_are_refused() {
        // Claims one outcome but has none.
        assert!(decode_outcomes(&[1, 0, 0, 0], 1).is_err());
        // More outcomes than inputs.
        assert!(decode_outcomes(&[2, 0, 0, 0], 1).is_err());
        // A rejection whose message length runs past the end.
        assert!(decode_outcomes(&[1, 0, 0, 0, OUTCOME_REJECTED, 9, 0, 0, 0, b'x'], 1).is_err());
        // Too many events.
        let mut bytes = vec![1, 0, 0, 0, OUTCOME_ACCEPTED];
        put_u32(&mut bytes, EVENTS_PER_INPUT_MAX as u32 + 1);
        assert!(decode_outcomes(&bytes, 1).is_err());
        // A well-formed pair.
        let mut bytes = vec![2, 0, 0, 0, OUTCOME_ACCEPTED, 1, 0, 0, 0, EVENT_DELETE];
        put_bytes(&mut bytes, b"key");
        put_bytes(&mut bytes, b"");
        bytes.push(OUTCOME_REJECTED);
        put_bytes(&mut bytes, "no".as_bytes());
        assert_eq!(
            decode_outcomes(&bytes, 2).unwrap(),
            vec![
                Outcome::Accepted(vec![Event {
                    kind: EventKind::Delete,
                    key: b"key".to_vec(),
                    value: Vec::new(),
                }]),
                Outcome::Rejected("no".into()),
            ]
        );
    }

    #[test]
    fn config_round_trips_and_rejects_trailing_bytes() {
        let entries = vec![("window_ms".to_owned(), "1000".to_owned())];
        let mut bytes = Vec::new();
        encode_config(&entries, &mut bytes);
        assert_eq!(decode_config(&bytes).unwrap(), entries);
        bytes.push(0);
        assert!(decode_config(&bytes).is_err());
    }

    #[test]
    fn long_messages_are_clipped_at_a_character_boundary() {
        let message = "é".repeat(REJECT_MESSAGE_BYTES_MAX);
        let clipped = clip_message(&message);
        assert!(clipped.len() <= REJECT_MESSAGE_BYTES_MAX);
        assert!(clipped.len() > REJECT_MESSAGE_BYTES_MAX - 2);
    }
}
