//! Hard limits of the protocol. Everything that comes from the network is checked against one of
//! these before memory is allocated for it. Configurable limits (the node's `max_message_bytes`,
//! ...) must stay at or below these.

/// Largest value a PUT may carry, whatever the node is configured to accept.
pub const VALUE_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Default for the node's configurable message (value) size limit, as Kafka's `message.max.bytes`.
pub const VALUE_BYTES_DEFAULT: usize = 1024 * 1024;
/// Largest key a PUT may carry.
pub const KEY_BYTES_MAX: usize = 64 * 1024;
/// Default for the node's configurable key size limit.
pub const KEY_BYTES_DEFAULT: usize = 4 * 1024;
/// Topic names: 1..=TOPIC_NAME_BYTES_MAX characters of `[A-Za-z0-9._-]` (Kafka's rule).
pub const TOPIC_NAME_BYTES_MAX: usize = 249;
/// Room in a frame for everything that is not key or value (ids, names, varints).
pub const FRAME_OVERHEAD_BYTES_MAX: usize = 64 * 1024;
/// Largest frame body (version byte + bincode message). A length prefix above this is rejected
/// before any allocation.
pub const FRAME_BYTES_MAX: usize = VALUE_BYTES_MAX + KEY_BYTES_MAX + FRAME_OVERHEAD_BYTES_MAX;
/// A batch of events for a listener stops growing at this many bytes (it always holds at least
/// one event, which may be larger).
pub const EVENTS_BATCH_BYTES_MAX: usize = 1024 * 1024;
/// A batch of events for a listener stops growing at this many events.
pub const EVENTS_BATCH_COUNT_MAX: usize = 4096;
/// Longest error message a node sends; longer ones are cut.
pub const ERROR_MESSAGE_BYTES_MAX: usize = 4 * 1024;
/// Most messages in one `PutBatch` (the bytes are bounded by [`FRAME_BYTES_MAX`]).
pub const PUT_BATCH_MESSAGES_MAX: usize = 1024;
/// Most topics a node holds.
pub const TOPICS_MAX: usize = 10_000;
