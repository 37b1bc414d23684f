//! Write a weir topic program in Rust.
//!
//! A programmable topic runs a WebAssembly program on every committed message, on every
//! replica. With this crate a program is a serde-serializable struct (its state) that
//! implements [`Program`], exported with [`export_program!`] and built for
//! `wasm32-unknown-unknown`:
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use weir_topic_sdk::{Message, Output, Program, Reject};
//!
//! #[derive(Default, Serialize, Deserialize)]
//! struct Count {
//!     seen: u64,
//! }
//!
//! impl Program for Count {
//!     fn on_message(&mut self, msg: &Message<'_>, out: &mut Output<'_>) -> Result<(), Reject> {
//!         self.seen += 1;
//!         out.put(msg.key, self.seen.to_string().as_bytes())
//!     }
//! }
//!
//! weir_topic_sdk::export_program!(Count);
//! ```
//!
//! The SDK does the ABI (`docs/PROGRAMS.md`), the batching, and the state's (de)serialization
//! for snapshots (bincode). It keeps its buffers out of the way of the program's heap: they are
//! allocated once, so what a message costs in fuel does not depend on how messages were
//! batched, and every replica rejects the same messages for running out of it.
//!
//! A program sees only the message, its offset and the leader-assigned timestamp: no clock,
//! no randomness, no I/O. That is what makes every replica compute the same events.

pub mod abi;
#[doc(hidden)]
pub mod guest;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use abi::EventKind;

/// A topic program. Its value is the program's state: snapshotted with serde (bincode) every
/// so often and restored after a restart, a leader change or an upgrade.
pub trait Program: Default + Serialize + DeserializeOwned + 'static {
    /// Called once when the program starts, on a fresh state or a restored one, with the
    /// topic's `--config K=V` entries. An error stops the program on every replica.
    fn configure(&mut self, _config: &Config) -> Result<(), String> {
        Ok(())
    }

    /// Called for every committed message, in log order. Events written to `out` become the
    /// topic's events for this message; an `Err` rejects the message (its events are dropped,
    /// changes to `self` are kept) and the producer gets the reason.
    fn on_message(&mut self, msg: &Message<'_>, out: &mut Output<'_>) -> Result<(), Reject>;
}

/// A committed message.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    /// Offset in the topic's input log.
    pub offset: u64,
    /// The leader-assigned timestamp, milliseconds since the Unix epoch. Never decreases along
    /// the log; the only notion of time a program has.
    pub timestamp_ms: u64,
    pub key: &'a [u8],
    pub value: &'a [u8],
}

/// The topic's `--config K=V` entries.
#[derive(Debug, Clone, Default)]
pub struct Config {
    entries: Vec<(String, String)>,
}

impl Config {
    pub fn new(entries: Vec<(String, String)>) -> Self {
        Self { entries }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `key` parsed as `T`; `default` when absent, an error naming the key when malformed.
    pub fn parse_or<T: std::str::FromStr>(&self, key: &str, default: T) -> Result<T, String> {
        match self.get(key) {
            None => Ok(default),
            Some(text) => text
                .parse()
                .map_err(|_| format!("config {key}={text:?} is not a valid value")),
        }
    }

    pub fn entries(&self) -> &[(String, String)] {
        &self.entries
    }
}

/// Why a message was rejected; the producer receives the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject(pub String);

impl Reject {
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

impl From<&str> for Reject {
    fn from(message: &str) -> Self {
        Self(message.to_owned())
    }
}

impl From<String> for Reject {
    fn from(message: String) -> Self {
        Self(message)
    }
}

impl std::fmt::Display for Reject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a program writes the events of the message it is handling.
#[derive(Debug)]
pub struct Output<'a> {
    buf: &'a mut Vec<u8>,
    /// Where this input's outcome starts in `buf`.
    start: usize,
    events: u32,
}

impl<'a> Output<'a> {
    pub(crate) fn new(buf: &'a mut Vec<u8>, start: usize) -> Self {
        Self {
            buf,
            start,
            events: 0,
        }
    }

    pub(crate) fn events(&self) -> u32 {
        self.events
    }

    /// Emits a put event: listeners of the topic see `key` and `value`.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), Reject> {
        self.push(abi::EVENT_PUT, key, value)
    }

    /// Emits a delete event for `key` (a tombstone, as in a compacted Kafka topic).
    pub fn delete(&mut self, key: &[u8]) -> Result<(), Reject> {
        self.push(abi::EVENT_DELETE, key, &[])
    }

    fn push(&mut self, kind: u8, key: &[u8], value: &[u8]) -> Result<(), Reject> {
        let used = self.buf.len() - self.start;
        let needed = abi::EVENT_OVERHEAD_BYTES + key.len() + value.len();
        if self.events as usize >= abi::EVENTS_PER_INPUT_MAX {
            return Err(Reject::new(format!(
                "a message may produce at most {} events",
                abi::EVENTS_PER_INPUT_MAX
            )));
        }
        if used + needed > abi::OUTCOME_BYTES_MAX {
            return Err(Reject::new(format!(
                "a message's events may take at most {} bytes",
                abi::OUTCOME_BYTES_MAX
            )));
        }
        self.buf.push(kind);
        abi::put_bytes(self.buf, key);
        abi::put_bytes(self.buf, value);
        self.events += 1;
        Ok(())
    }
}
