//! [`Client`]: connection management and the request/reply calls.

use crate::config::quinn_client_config;
use crate::listener::Listener;
use crate::producer::Producer;
use crate::session::{PendingReply, Session, unexpected};
use crate::{ClientConfig, ClientError};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use weir_proto::limits::{KEY_BYTES_MAX, VALUE_BYTES_MAX};
use weir_proto::{
    Committed, ListenFrom, NodeStatus, ProducerId, Put, Reply, Request, Seq, TopicConfig,
    TopicInfo, validate_topic_name,
};

/// A connection to a weir node. Cheap to clone (an `Arc` inside) and usable from many tasks at
/// once: all requests, including PUTs from concurrent tasks, are pipelined over one request
/// stream and their replies matched by request id.
///
/// The connection is made by [`Client::connect`]. If it breaks, requests outstanding on it fail
/// with [`ClientError::ConnectionLost`] and the next call reconnects (trying the addresses in
/// order). Listeners reconnect on their own.
///
/// ```no_run
/// use weir_client::{Client, ClientConfig, ListenFrom, TopicConfig};
///
/// # async fn f() -> Result<(), weir_client::ClientError> {
/// let config = ClientConfig::new("127.0.0.1:7070".parse().unwrap(), "weir-data/certs/ca.crt");
/// let client = Client::connect(config).await?;
/// client.create_topic("orders", TopicConfig::default()).await?;
/// let committed = client.put("orders", Some(b"customer-7".as_slice()), "hello").await?;
/// println!("stored at offset {}", committed.offset);
///
/// let mut listener = client.listen("orders", ListenFrom::Start).await?;
/// while let Some(event) = listener.next().await {
///     let event = event?;
///     println!("{} {}", event.offset, String::from_utf8_lossy(&event.value));
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) config: ClientConfig,
    quinn_config: quinn::ClientConfig,
    /// The live session, if any: the fast path for every request.
    current: Mutex<Option<Arc<Session>>>,
    /// Held while (re)connecting so concurrent callers wait for one connection attempt.
    connecting: tokio::sync::Mutex<Endpoints>,
    in_flight: Arc<Semaphore>,
    pub(crate) producer_id: ProducerId,
    seq: Arc<AtomicU64>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("addrs", &self.config.addrs)
            .field("producer_id", &self.producer_id)
            .finish_non_exhaustive()
    }
}

/// One UDP endpoint per address family, made when first needed.
#[derive(Default)]
struct Endpoints {
    v4: Option<quinn::Endpoint>,
    v6: Option<quinn::Endpoint>,
}

impl Endpoints {
    fn for_addr(&mut self, addr: SocketAddr) -> std::io::Result<&quinn::Endpoint> {
        let (slot, bind): (_, SocketAddr) = if addr.is_ipv4() {
            (&mut self.v4, (std::net::Ipv4Addr::UNSPECIFIED, 0).into())
        } else {
            (&mut self.v6, (std::net::Ipv6Addr::UNSPECIFIED, 0).into())
        };
        if slot.is_none() {
            *slot = Some(quinn::Endpoint::client(bind)?);
        }
        Ok(slot.as_ref().expect("just set"))
    }
}

impl Client {
    /// Connects to the first node in `config.addrs` that accepts (TLS verified against
    /// `config.ca_cert`) and says hello.
    pub async fn connect(config: ClientConfig) -> Result<Self, ClientError> {
        config.validate()?;
        let quinn_config = quinn_client_config(&config)?;
        let inner = Arc::new(Inner {
            in_flight: Arc::new(Semaphore::new(config.max_in_flight)),
            config,
            quinn_config,
            current: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(Endpoints::default()),
            producer_id: new_producer_id(),
            seq: Arc::new(AtomicU64::new(0)),
        });
        inner.session().await?;
        Ok(Self { inner })
    }

    /// The configuration this client was made with.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// The producer id this client stamps on its PUTs.
    pub fn producer_id(&self) -> ProducerId {
        self.inner.producer_id
    }

    /// Creates a topic. [`ClientError::AlreadyExists`] if it exists,
    /// [`ClientError::InvalidArgument`] for a bad name or config.
    pub async fn create_topic(&self, name: &str, config: TopicConfig) -> Result<(), ClientError> {
        check_topic(name)?;
        let request = Request::CreateTopic {
            name: name.to_owned(),
            config,
        };
        match self.inner.call(request).await? {
            Reply::TopicCreated => Ok(()),
            other => Err(unexpected("TopicCreated", &other)),
        }
    }

    /// Deletes a topic and its data. [`ClientError::NotFound`] if it does not exist.
    pub async fn delete_topic(&self, name: &str) -> Result<(), ClientError> {
        check_topic(name)?;
        let request = Request::DeleteTopic {
            name: name.to_owned(),
        };
        match self.inner.call(request).await? {
            Reply::TopicDeleted => Ok(()),
            other => Err(unexpected("TopicDeleted", &other)),
        }
    }

    /// The node's topics with their offsets.
    pub async fn list_topics(&self) -> Result<Vec<TopicInfo>, ClientError> {
        match self.inner.call(Request::ListTopics).await? {
            Reply::Topics(topics) => Ok(topics),
            other => Err(unexpected("Topics", &other)),
        }
    }

    /// The node's version, uptime, fsync mode and per-topic counters.
    pub async fn status(&self) -> Result<NodeStatus, ClientError> {
        match self.inner.call(Request::Status).await? {
            Reply::Status(status) => Ok(status),
            other => Err(unexpected("Status", &other)),
        }
    }

    /// Appends one message to `topic` and waits until it is durable. Keys and values above the
    /// protocol's hard limits fail with [`ClientError::TooLarge`] before anything is sent.
    ///
    /// Calls from concurrent tasks are pipelined; for many PUTs from one task use
    /// [`Client::producer`].
    ///
    /// ```no_run
    /// # async fn f(client: weir_client::Client) -> Result<(), weir_client::ClientError> {
    /// let c = client.put("orders", None, b"no key".as_slice()).await?;
    /// let d = client.put("orders", Some(b"k".as_slice()), "keyed").await?;
    /// assert_eq!(d.offset.get(), c.offset.get() + 1); // if nobody else writes to "orders"
    /// # Ok(()) }
    /// ```
    pub async fn put(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        value: impl Into<Vec<u8>>,
    ) -> Result<Committed, ClientError> {
        let request = self.inner.put_request(topic, key, value.into())?;
        let pending = self.inner.start(request, None).await?;
        committed(pending.wait().await?)
    }

    /// A producer that keeps up to `window` PUTs to `topic` in flight (at least 1).
    pub fn producer(&self, topic: &str, window: usize) -> Result<Producer, ClientError> {
        check_topic(topic)?;
        Ok(Producer::new(self.clone(), topic.to_owned(), window))
    }

    /// Follows `topic` from `from`: every committed entry, in offset order, then the tail.
    ///
    /// The topic is looked up first, so a missing topic fails here with
    /// [`ClientError::NotFound`] and an offset outside the retained range with
    /// [`ClientError::OffsetOutOfRange`] (the node re-checks both). [`ListenFrom::End`] is
    /// resolved here to the topic's committed offset, so the listener sees every entry committed
    /// after `listen` was called, even across reconnects.
    ///
    /// The listener reconnects on connection loss (see [`ClientConfig::reconnect`]) and resumes
    /// after the last event it received: no gap, no repeat.
    pub async fn listen(&self, topic: &str, from: ListenFrom) -> Result<Listener, ClientError> {
        check_topic(topic)?;
        let status = self.status().await?;
        let Some(info) = status.topics.iter().find(|t| t.name == topic) else {
            return Err(ClientError::NotFound(format!(
                "topic {topic:?} does not exist"
            )));
        };
        let from = match from {
            ListenFrom::Start => ListenFrom::Start,
            ListenFrom::End => ListenFrom::Offset(info.committed_offset),
            ListenFrom::Offset(n) if n < info.start_offset || n > info.committed_offset => {
                return Err(ClientError::OffsetOutOfRange(format!(
                    "offset {n} is outside topic {topic:?}'s range [{}, {}]",
                    info.start_offset, info.committed_offset
                )));
            }
            ListenFrom::Offset(n) => ListenFrom::Offset(n),
        };
        Ok(Listener::spawn(self.inner.clone(), topic.to_owned(), from))
    }

    /// Closes the connection now (outstanding requests fail with
    /// [`ClientError::ConnectionLost`]). The client stays usable: the next call reconnects.
    pub async fn close(&self) {
        let session = self.inner.take_current();
        if let Some(session) = session {
            session.conn.close(0u32.into(), b"client closed");
        }
        let endpoints = self.inner.connecting.lock().await;
        for endpoint in [&endpoints.v4, &endpoints.v6].into_iter().flatten() {
            // Bounded: wait_idle waits for the close to be acknowledged or to time out.
            let _ =
                tokio::time::timeout(std::time::Duration::from_secs(1), endpoint.wait_idle()).await;
        }
    }
}

impl Inner {
    fn take_current(&self) -> Option<Arc<Session>> {
        self.current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
    }

    fn live_session(&self) -> Option<Arc<Session>> {
        let current = self
            .current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        current.as_ref().filter(|s| s.is_alive()).cloned()
    }

    /// The live session, connecting (lazily, once for all concurrent callers) if there is none.
    pub(crate) async fn session(&self) -> Result<Arc<Session>, ClientError> {
        if let Some(session) = self.live_session() {
            return Ok(session);
        }
        let mut endpoints = self.connecting.lock().await;
        if let Some(session) = self.live_session() {
            return Ok(session);
        }
        let session = self.connect_any(&mut endpoints).await?;
        *self
            .current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(session.clone());
        Ok(session)
    }

    async fn connect_any(&self, endpoints: &mut Endpoints) -> Result<Arc<Session>, ClientError> {
        let config = &self.config;
        let mut failures = Vec::new();
        for &addr in &config.addrs {
            let attempt = async {
                let endpoint = endpoints
                    .for_addr(addr)
                    .map_err(|e| ClientError::Connect(format!("cannot open a UDP socket: {e}")))?;
                let connecting = endpoint
                    .connect_with(self.quinn_config.clone(), addr, &config.server_name)
                    .map_err(|e| ClientError::Config(e.to_string()))?;
                let conn = connecting
                    .await
                    .map_err(|e| ClientError::Connect(e.to_string()))?;
                Session::start(
                    conn,
                    self.seq.clone(),
                    &config.client_name,
                    config.request_timeout,
                )
                .await
            };
            let result = match tokio::time::timeout(config.connect_timeout, attempt).await {
                Ok(result) => result,
                Err(_) => Err(ClientError::Connect(format!(
                    "timed out after {:?}",
                    config.connect_timeout
                ))),
            };
            match result {
                Ok(session) => {
                    tracing::debug!(%addr, "connected to node");
                    return Ok(session);
                }
                // A config error will not get better with another address.
                Err(e @ ClientError::Config(_)) => return Err(e),
                Err(e) => {
                    tracing::debug!(%addr, error = %e, "connection attempt failed");
                    failures.push(format!("{addr}: {}", strip_connect_prefix(&e)));
                }
            }
        }
        Err(ClientError::Connect(failures.join("; ")))
    }

    /// Sends `request` and waits for its reply.
    pub(crate) async fn call(&self, request: Request) -> Result<Reply, ClientError> {
        self.start(request, None).await?.wait().await
    }

    /// Sends `request` once an in-flight slot is free; `window` is an extra permit (a
    /// producer's) released with the in-flight slot when the reply arrives.
    pub(crate) async fn start(
        &self,
        request: Request,
        window: Option<OwnedSemaphorePermit>,
    ) -> Result<PendingReply, ClientError> {
        let timeout = self.config.request_timeout;
        let deadline = Instant::now() + timeout;
        let slot = tokio::time::timeout_at(deadline, self.in_flight.clone().acquire_owned())
            .await
            .map_err(|_| ClientError::Timeout(timeout))?
            .map_err(|_| ClientError::ConnectionLost("client closed".into()))?;
        let session = self.session().await?;
        let mut permits = vec![slot];
        permits.extend(window);
        session.send(request, permits, deadline).await
    }

    /// Builds a PUT after the client-side checks. `seq` is stamped by the writer.
    pub(crate) fn put_request(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        value: Vec<u8>,
    ) -> Result<Request, ClientError> {
        check_put(topic, key, &value)?;
        Ok(Request::Put(Put {
            topic: topic.to_owned(),
            key: key.map(<[u8]>::to_vec),
            value,
            producer_id: self.producer_id,
            seq: Seq(0),
        }))
    }
}

fn strip_connect_prefix(e: &ClientError) -> String {
    match e {
        ClientError::Connect(msg) => msg.clone(),
        other => other.to_string(),
    }
}

pub(crate) fn committed(reply: Reply) -> Result<Committed, ClientError> {
    match reply {
        Reply::Committed(c) => Ok(c),
        other => Err(unexpected("Committed", &other)),
    }
}

pub(crate) fn check_topic(name: &str) -> Result<(), ClientError> {
    validate_topic_name(name).map_err(ClientError::InvalidArgument)
}

/// The checks a PUT must pass before it is sent: topic name and the protocol's hard size limits
/// (the node may be configured lower and then answers `TooLarge` itself).
pub(crate) fn check_put(topic: &str, key: Option<&[u8]>, value: &[u8]) -> Result<(), ClientError> {
    check_topic(topic)?;
    if let Some(key) = key
        && key.len() > KEY_BYTES_MAX
    {
        return Err(ClientError::TooLarge(format!(
            "key of {} bytes exceeds the limit of {KEY_BYTES_MAX} bytes",
            key.len()
        )));
    }
    if value.len() > VALUE_BYTES_MAX {
        return Err(ClientError::TooLarge(format!(
            "value of {} bytes exceeds the limit of {VALUE_BYTES_MAX} bytes",
            value.len()
        )));
    }
    Ok(())
}

/// A producer id unlikely to collide with another client's: time, process id and a per-process
/// counter, mixed. Never 0 (0 means anonymous).
fn new_producer_id() -> ProducerId {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let pid = u64::from(std::process::id());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mixed = splitmix64(nanos ^ pid.rotate_left(32) ^ splitmix64(n));
    ProducerId(mixed.max(1))
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_key_or_value_is_too_large_without_a_round_trip() {
        let big_key = vec![0u8; KEY_BYTES_MAX + 1];
        let err = check_put("t", Some(&big_key), b"v").unwrap_err();
        assert!(
            matches!(&err, ClientError::TooLarge(m) if m.contains("key")),
            "{err}"
        );
        let big_value = vec![0u8; VALUE_BYTES_MAX + 1];
        let err = check_put("t", None, &big_value).unwrap_err();
        assert!(
            matches!(&err, ClientError::TooLarge(m) if m.contains("value")),
            "{err}"
        );
        check_put(
            "t",
            Some(&vec![0; KEY_BYTES_MAX]),
            &vec![0; VALUE_BYTES_MAX],
        )
        .unwrap();
    }

    #[test]
    fn bad_topic_name_is_invalid_argument() {
        for bad in ["", "a/b", "..", "white space"] {
            assert!(
                matches!(
                    check_put(bad, None, b""),
                    Err(ClientError::InvalidArgument(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn producer_ids_are_nonzero_and_distinct_within_a_process() {
        let ids: std::collections::HashSet<_> = (0..1000).map(|_| new_producer_id()).collect();
        assert_eq!(ids.len(), 1000);
        assert!(!ids.contains(&ProducerId(0)));
    }
}
