//! weir's async client library: topics, pipelined PUTs, resumable listeners.
//!
//! A [`Client`] talks to a cluster of nodes over QUIC (TLS 1.3, verified against the cluster
//! CA): one connection per node it needs, each with one request stream over which requests are
//! pipelined; replies are matched by request id. Every topic is replicated by a Raft group on
//! some of the nodes; the client sends PUTs to the topic's leader and topic/cluster
//! administration to the catalog leader, learning where they are from the nodes and following
//! their "not leader" answers ([`LeaderRetryPolicy`]). [`Producer`] keeps a bounded window of
//! PUTs in flight; [`Listener`] follows a topic on its own stream from any replica and survives
//! reconnects and leader changes without skipping or repeating a message.
//!
//! Offsets increase strictly along a topic but may have gaps: some offsets hold Raft's own
//! entries rather than messages.
//!
//! Retries never risk a duplicate. PUTs ([`Producer::send`] and [`Client::put`], which uses a
//! producer per topic) carry a producer id and sequence numbers, which the topic's replicated
//! state de-duplicates: the client resends them after "not leader", "busy" and "out of order"
//! answers and after a lost connection, and a resend of a committed PUT gets its original
//! offset (exactly-once, in send order; see [`Producer`]). That includes PUTs waiting on a
//! leader that died or was deposed: once a PUT has waited [`ClientConfig::leader_check_after`]
//! the client checks its node, and gives up on that connection if the node no longer answers
//! or no longer leads (see [`Client`] on failover); the PUTs it held go to the new leader.
//! Other requests are resent only if the node refused them without acting on them ("not
//! leader"), or they never left the client.
//!
//! ```no_run
//! use weir_client::{Client, ClientConfig, ListenFrom, TopicConfig};
//!
//! # async fn f() -> Result<(), weir_client::ClientError> {
//! let config = ClientConfig::from_cluster("127.0.0.1:7070", "weir-data/certs/ca.crt").await?;
//! let client = Client::connect(config).await?;
//! client.create_topic("events", TopicConfig::default()).await?;
//!
//! let mut listener = client.listen("events", ListenFrom::Start).await?;
//!
//! let mut producer = client.producer("events", 64)?;
//! let mut handles = Vec::new();
//! for i in 0..100 {
//!     handles.push(producer.send(None, format!("event {i}")).await?);
//! }
//! for handle in handles {
//!     let committed = handle.await?;
//!     assert!(committed.timestamp_ms.get() > 0);
//! }
//!
//! let first = listener.next().await.expect("listener ended")?;
//! assert_eq!(first.value, b"event 0");
//! # Ok(()) }
//! ```
//!
//! The client needs a tokio runtime (it spawns its connection tasks).

mod client;
mod config;
mod error;
mod listener;
mod producer;
mod routing;
mod session;

pub use client::Client;
pub use config::{ClientAuth, ClientConfig, LeaderRetryPolicy, ReconnectPolicy, resolve_cluster};
pub use error::ClientError;
pub use listener::Listener;
pub use producer::{
    PRODUCER_BATCH_BYTES_MAX, PRODUCER_BATCH_MESSAGES_MAX, PRODUCER_BATCHES_IN_FLIGHT_MAX,
    Producer, PutHandle,
};
pub use weir_proto::{
    ClusterInfo, Committed, ErrorCode, Event, FollowerStatus, ListenFrom, NodeInfo, NodeStatus,
    Offset, PeerStatus, ProgramInfo, ProgramOutcome, ProgramSpec, RaftStatus, TimestampMs,
    TopicConfig, TopicInfo, TopicPlacement, TopicStatus,
};
