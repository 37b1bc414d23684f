//! weir's wire protocol: newtypes, limits, requests and replies, and the frame codec.
//!
//! See `docs/PROTOCOL.md` for the byte-level description. Only [`codec`] knows bincode.

pub mod codec;
pub mod entry;
pub mod frame;
pub mod limits;
pub mod message;
pub mod types;

pub use frame::{FrameDecoder, FrameError, encode_frame};
pub use message::*;
pub use types::*;
