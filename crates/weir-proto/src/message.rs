//! Requests and replies. Encoded by [`crate::codec`]; framed by [`crate::frame`].
//!
//! Compatibility rule: new variants and fields are only ever appended, and a node answers a
//! frame it cannot decode with [`ErrorCode::BadRequest`] and closes that stream.

use crate::limits::{ERROR_MESSAGE_BYTES_MAX, TOPIC_NAME_BYTES_MAX};
use crate::types::{Offset, ProducerId, RequestId, Seq, TimestampMs};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Version spoken in `Hello` and in every frame's version byte.
pub const PROTOCOL_VERSION: u8 = 1;
/// QUIC ALPN identifier of this protocol.
pub const ALPN: &[u8] = b"weir/1";

/// What a client sends: one request with the id its reply will carry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientFrame {
    pub id: RequestId,
    pub request: Request,
}

/// What a node sends: the reply to the request with the same id. A `Listen` request gets many
/// `Events` replies with its id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerFrame {
    pub id: RequestId,
    pub reply: Reply,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Optional first request on a stream; the node answers with its version.
    Hello {
        protocol_version: u8,
        client_name: String,
    },
    CreateTopic {
        name: String,
        config: TopicConfig,
    },
    DeleteTopic {
        name: String,
    },
    ListTopics,
    Put(Put),
    /// Turns the stream into an event stream: the node sends `Events` until the client closes it.
    Listen {
        topic: String,
        from: ListenFrom,
    },
    Status,
    /// The cluster as this node knows it: members, the metadata leader, each topic's replicas
    /// and leader. Clients use it to route PUTs to topic leaders.
    Cluster,
    /// Adds a node to the cluster (catalog and metadata group). Answered by the metadata leader.
    AddNode {
        node_id: u64,
        addr: String,
    },
    /// Removes a node from the cluster. Answered by the metadata leader.
    RemoveNode {
        node_id: u64,
    },
    /// Upgrades a programmable topic's program. Answered by the topic leader once the switch
    /// is committed: every replica switches at that entry of the topic's log.
    DeployProgram {
        topic: String,
        program: ProgramSpec,
        /// Start the new program with an empty state instead of its predecessor's.
        reset_state: bool,
    },
    /// A programmable topic's program as this replica runs it.
    ShowProgram {
        topic: String,
    },
    /// Appends several messages to one topic, in order, as one request: how a producer
    /// batches (docs/PROTOCOL.md). Answered with `CommittedBatch` (one result per message, in
    /// order) or, when the whole batch is refused before any of it is proposed (unknown topic,
    /// not the leader, malformed batch), with one `Error`.
    PutBatch(PutBatch),
}

/// Messages for one topic from one producer: message `i` has sequence number `first_seq + i`.
/// At most [`crate::limits::PUT_BATCH_MESSAGES_MAX`] messages, at least one.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutBatch {
    pub topic: String,
    pub producer_id: ProducerId,
    pub first_seq: Seq,
    pub messages: Vec<PutMessage>,
}

impl fmt::Debug for PutBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Payloads can be megabytes: log counts, not bytes.
        f.debug_struct("PutBatch")
            .field("topic", &self.topic)
            .field("producer_id", &self.producer_id)
            .field("first_seq", &self.first_seq)
            .field("messages", &self.messages.len())
            .finish()
    }
}

/// One message of a [`PutBatch`].
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutMessage {
    #[serde(with = "serde_bytes")]
    pub key: Option<Vec<u8>>,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
}

impl fmt::Debug for PutMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PutMessage")
            .field("key_bytes", &self.key.as_ref().map(Vec::len))
            .field("value_bytes", &self.value.len())
            .finish()
    }
}

/// The outcome of one message of a [`PutBatch`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PutResult {
    Committed(Committed),
    Error(ErrorReply),
}

/// A topic program: a WebAssembly module (docs/PROGRAMS.md) and its `K=V` config.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgramSpec {
    #[serde(with = "serde_bytes")]
    pub module: Vec<u8>,
    pub config: Vec<(String, String)>,
}

impl fmt::Debug for ProgramSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProgramSpec")
            .field("module_bytes", &self.module.len())
            .field("config", &self.config)
            .finish()
    }
}

/// Append one message to a topic. Acknowledged with `Committed` once durable.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Put {
    pub topic: String,
    #[serde(with = "serde_bytes")]
    pub key: Option<Vec<u8>>,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    pub producer_id: ProducerId,
    pub seq: Seq,
}

impl fmt::Debug for Put {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Payloads can be megabytes: log sizes, not bytes.
        f.debug_struct("Put")
            .field("topic", &self.topic)
            .field("key_bytes", &self.key.as_ref().map(Vec::len))
            .field("value_bytes", &self.value.len())
            .field("producer_id", &self.producer_id)
            .field("seq", &self.seq)
            .finish()
    }
}

/// Where a listener starts reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ListenFrom {
    /// The oldest retained entry.
    Start,
    /// This offset (must be within the retained range, or the next offset to be written).
    Offset(Offset),
    /// Only entries committed after the listener attached.
    End,
}

/// Per-topic settings; `None` means "the node's default".
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicConfig {
    /// Delete the oldest segments while the topic holds more than this many bytes.
    pub retention_bytes: Option<u64>,
    /// Delete segments whose newest entry is older than this.
    pub retention_ms: Option<u64>,
    /// Roll to a new segment file at this size.
    pub segment_bytes: Option<u64>,
    /// How many nodes hold a copy (the topic's Raft group). Default: 3, or the cluster size if
    /// smaller. Fixed at creation.
    pub replicas: Option<u32>,
    /// Makes the topic programmable: every committed PUT goes through this program, whose
    /// events are what listeners read. Fixed at creation (upgrade with `DeployProgram`).
    pub program: Option<ProgramSpec>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    Hello {
        protocol_version: u8,
        server_version: String,
        /// This node's limits on a PUT's value and key (its `max_message_bytes` and
        /// `max_key_bytes`): a client checks them before it sends, so that a producer's PUT is
        /// not refused for its size after later ones were numbered behind it.
        max_message_bytes: u64,
        max_key_bytes: u64,
    },
    TopicCreated,
    TopicDeleted,
    Topics(Vec<TopicInfo>),
    Committed(Committed),
    Events(Vec<Event>),
    Status(NodeStatus),
    Error(ErrorReply),
    Cluster(ClusterInfo),
    /// AddNode / RemoveNode took effect in the catalog.
    ClusterChanged,
    /// The program switch committed at this offset of the topic's input log.
    ProgramDeployed {
        at_offset: Offset,
    },
    Program(ProgramInfo),
    /// The answer to a `PutBatch`: one result per message, in the batch's order.
    CommittedBatch(Vec<PutResult>),
}

/// What a programmable topic's program did with one PUT.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProgramOutcome {
    /// Accepted: its events are at `first_event .. first_event + events` of the event log.
    Accepted { first_event: Offset, events: u32 },
    /// Rejected by the program (or for breaking its limits); the message says why. The PUT is
    /// in the input log but produced no events.
    Rejected { message: String },
}

/// A programmable topic's program on one replica.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgramInfo {
    pub topic: String,
    /// SHA-256 of the running module, hex.
    pub module_hash: String,
    /// 1 for the program the topic was created with, +1 per upgrade.
    pub version: u64,
    pub config: Vec<(String, String)>,
    /// Input offset of the entry that switched to this version (None: since creation).
    pub deployed_at_offset: Option<Offset>,
    /// Last input offset the program has processed.
    pub applied_offset: Option<Offset>,
    /// Next offset of the event log.
    pub next_event_offset: Offset,
    /// Oldest event this replica holds (retention, or a snapshot installed from the leader,
    /// let the ones below it go).
    pub first_event_offset: Offset,
    /// Last input offset of the newest durable snapshot.
    pub snapshot_offset: Option<Offset>,
    /// SHA-256 of the program's state now, hex: equal on every replica at the same offset.
    pub state_hash: String,
    pub inputs_accepted: u64,
    pub inputs_rejected: u64,
    /// Why the program stopped on this replica, if it did.
    pub failure: Option<String>,
}

/// Where a request should have gone: the current leader, as far as the answering node knows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderHint {
    pub node_id: u64,
    /// The leader's client address (`host:port`).
    pub addr: String,
}

/// A cluster member.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub node_id: u64,
    pub addr: String,
}

/// A topic's placement: its Raft group, replica set and (as far as this node knows) leader.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicPlacement {
    pub name: String,
    pub group: u64,
    pub replicas: Vec<u64>,
    pub leader: Option<u64>,
}

/// The answer to `Cluster`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterInfo {
    /// The node that answered.
    pub node_id: u64,
    pub nodes: Vec<NodeInfo>,
    /// Leader of the metadata group (catalog), if known.
    pub metadata_leader: Option<u64>,
    pub topics: Vec<TopicPlacement>,
}

/// The acknowledgement of a PUT: where it landed and the timestamp it was given.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed {
    pub offset: Offset,
    pub timestamp_ms: TimestampMs,
    /// On a programmable topic, what its program made of the PUT; `None` on a plain topic.
    pub program: Option<ProgramOutcome>,
}

/// One committed entry, as a listener sees it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub offset: Offset,
    pub timestamp_ms: TimestampMs,
    #[serde(with = "serde_bytes")]
    pub key: Option<Vec<u8>>,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// A delete event of a programmable topic (the key's tombstone); always false on a plain
    /// topic.
    pub tombstone: bool,
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("offset", &self.offset)
            .field("timestamp_ms", &self.timestamp_ms)
            .field("key_bytes", &self.key.as_ref().map(Vec::len))
            .field("value_bytes", &self.value.len())
            .field("tombstone", &self.tombstone)
            .finish()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicInfo {
    pub name: String,
    pub config: TopicConfig,
    /// Oldest retained offset.
    pub start_offset: Offset,
    /// Offset the next PUT will get.
    pub next_offset: Offset,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub server_version: String,
    pub uptime_ms: u64,
    pub fsync: String,
    pub topics: Vec<TopicStatus>,
    /// This node's id in its cluster (1 for a node alone).
    pub node_id: u64,
    /// The other members of the cluster, from the node's static peer list.
    pub peers: Vec<PeerStatus>,
    /// The metadata (catalog) group as this node sees it.
    pub metadata: Option<RaftStatus>,
}

/// One other node of the cluster, as this node sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    pub node_id: u64,
    pub addr: String,
    /// A peer connection with a completed hello is up.
    pub connected: bool,
    /// Connections established with this peer since the node started.
    pub connections: u64,
    pub messages_sent: u64,
    pub messages_received: u64,
    /// Messages dropped (queue full, too large, or lost with a connection).
    pub messages_dropped: u64,
    /// Why the last connection or dial attempt ended.
    pub last_error: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicStatus {
    pub name: String,
    pub start_offset: Offset,
    pub next_offset: Offset,
    /// Entries below this offset are durable (fsynced) and visible to listeners.
    pub committed_offset: Offset,
    /// Entries below this are known to be fsynced. Equals `committed_offset` under
    /// `fsync = "always"`; may lag it under `interval:<ms>` or `never`.
    pub durable_offset: Offset,
    pub segments: u64,
    pub bytes: u64,
    /// fsyncs done for this topic's log since the node started.
    pub fsyncs: u64,
    /// Entries appended since the node started.
    pub appends: u64,
    /// `None` while healthy; the reason the topic stopped serving otherwise.
    pub failure: Option<String>,
    /// The topic's Raft group on this node.
    pub raft: Option<RaftStatus>,
    /// What listeners read on this node: offsets in `[read_start_offset, read_end_offset)`.
    /// The topic's log for a plain topic (= `start_offset`, `committed_offset`); the event
    /// log for a programmable topic (its offsets are event offsets, not input offsets).
    pub read_start_offset: Offset,
    pub read_end_offset: Offset,
}

/// One Raft group as one of its replicas sees it. Indexes are Raft log indexes: the entry at
/// index `i` is at offset `i - 1`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftStatus {
    pub group: u64,
    /// "leader", "follower", "candidate", "precandidate" or "learner".
    pub role: String,
    pub term: u64,
    pub leader: Option<u64>,
    pub commit_index: u64,
    pub applied_index: u64,
    pub last_index: u64,
    /// Voters and learners of the group.
    pub replicas: Vec<u64>,
    /// Leader only: each other replica's match index and lag (`last_index - match`).
    pub followers: Vec<FollowerStatus>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FollowerStatus {
    pub node_id: u64,
    pub match_index: u64,
    pub lag: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub code: ErrorCode,
    pub message: String,
    /// With [`ErrorCode::NotLeader`]: the leader to retry with, if the node knows it.
    pub leader: Option<LeaderHint>,
}

impl ErrorReply {
    /// Builds an error reply, cutting the message to [`ERROR_MESSAGE_BYTES_MAX`].
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        let mut message = message.into();
        if message.len() > ERROR_MESSAGE_BYTES_MAX {
            let mut cut = ERROR_MESSAGE_BYTES_MAX;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        Self {
            code,
            message,
            leader: None,
        }
    }

    /// `NotLeader`, with the leader to retry with if known.
    pub fn not_leader(message: impl Into<String>, leader: Option<LeaderHint>) -> Self {
        Self {
            leader,
            ..Self::new(ErrorCode::NotLeader, message)
        }
    }
}

impl fmt::Display for ErrorReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// Error codes. `is_retryable` tells a client whether sending the same request later may work.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorCode {
    /// Malformed, unknown or out-of-order request. The stream is closed after this reply.
    BadRequest,
    /// Frame version or `Hello` version the node does not speak.
    UnsupportedVersion,
    /// The topic does not exist.
    NotFound,
    /// CreateTopic for a name that exists.
    AlreadyExists,
    /// A key, value or frame above the limit.
    TooLarge,
    /// A topic name outside `[A-Za-z0-9._-]{1,249}` or an invalid config.
    InvalidArgument,
    /// A listener asked for an offset outside the retained range.
    OffsetOutOfRange,
    /// The topic cannot serve (its log is poisoned or corrupt); see the message.
    Unavailable,
    /// The node is overloaded; retry later.
    Busy,
    /// A bug or an unexpected condition on the node.
    Internal,
    /// This node does not lead the topic (or the catalog): retry with `ErrorReply::leader`, or
    /// ask any node for `Cluster` if it is `None` (an election is in progress).
    NotLeader,
    /// A PUT of a producer whose sequence number is not the next one the topic expects from
    /// it: an earlier PUT of the producer is missing (still on its way, or failed), or the
    /// topic does not know the producer (its state expired) and the PUT does not start at 0.
    /// Nothing was written; resending in order (the earlier PUTs first) succeeds.
    OutOfOrderSequence,
    /// A PUT of a producer was committed already, so it is not appended again, but its offset
    /// is no longer remembered (only the producer's most recent PUTs are).
    DuplicateSequence,
}

impl ErrorCode {
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            Self::Busy | Self::Unavailable | Self::NotLeader | Self::OutOfOrderSequence
        )
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Self::BadRequest => "bad request",
            Self::UnsupportedVersion => "unsupported version",
            Self::NotFound => "not found",
            Self::AlreadyExists => "already exists",
            Self::TooLarge => "too large",
            Self::InvalidArgument => "invalid argument",
            Self::OffsetOutOfRange => "offset out of range",
            Self::Unavailable => "unavailable",
            Self::Busy => "busy",
            Self::Internal => "internal error",
            Self::NotLeader => "not leader",
            Self::OutOfOrderSequence => "out of order sequence",
            Self::DuplicateSequence => "duplicate sequence",
        };
        f.write_str(s)
    }
}

/// Checks a topic name: 1..=249 bytes of `[A-Za-z0-9._-]`, and not `.` or `..`
/// (a topic name becomes a directory name).
pub fn validate_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > TOPIC_NAME_BYTES_MAX {
        return Err(format!(
            "topic name must be 1 to {TOPIC_NAME_BYTES_MAX} characters, got {}",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("topic name {name:?} is reserved"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "topic name {name:?} has {c:?}; allowed are letters, digits, '.', '_' and '-'"
        ));
    }
    Ok(())
}
