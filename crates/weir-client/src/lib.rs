//! weir's async client library: topics, pipelined PUTs, resumable listeners.
//!
//! A [`Client`] holds one QUIC connection (TLS 1.3, verified against the cluster CA) with one
//! request stream, over which every request is pipelined; replies are matched by request id.
//! [`Producer`] keeps a bounded window of PUTs in flight; [`Listener`] follows a topic on its
//! own stream and survives reconnects without gaps or repeats.
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
mod session;

pub use client::Client;
pub use config::{ClientAuth, ClientConfig, ReconnectPolicy, resolve_cluster};
pub use error::ClientError;
pub use listener::Listener;
pub use producer::{Producer, PutHandle};
pub use weir_proto::{
    Committed, ErrorCode, Event, ListenFrom, NodeStatus, Offset, TimestampMs, TopicConfig,
    TopicInfo, TopicStatus,
};
