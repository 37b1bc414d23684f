//! [`Client`]: connections to the cluster's nodes and the request/reply calls.

use crate::config::quinn_client_config;
use crate::listener::Listener;
use crate::producer::Producer;
use crate::routing::{ClusterView, RouteTable, RoutedCall, Target, resolve_node_addr};
use crate::session::{PendingReply, Session, unexpected};
use crate::{ClientConfig, ClientError};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use weir_proto::limits::{KEY_BYTES_MAX, VALUE_BYTES_MAX};
use weir_proto::{
    ClusterInfo, Committed, ListenFrom, NodeInfo, NodeStatus, ProducerId, Put, Reply, Request, Seq,
    TopicConfig, TopicInfo, TopicStatus, validate_topic_name,
};

/// A client of a weir cluster. Cheap to clone (an `Arc` inside) and usable from many tasks at
/// once: requests to one node, including PUTs from concurrent tasks, are pipelined over one
/// request stream per node and their replies matched by request id.
///
/// [`Client::connect`] connects to the first seed address ([`ClientConfig::addrs`]) that
/// accepts. From there the client learns the cluster: which node leads each topic (PUTs must
/// go to it) and which leads the catalog (topic and cluster administration must go to it). It
/// connects to those nodes lazily, keeps one connection per node, and follows the nodes'
/// "not leader" answers to the current leader as described in
/// [`crate::LeaderRetryPolicy`]. If a connection breaks, requests outstanding on it fail with
/// [`ClientError::ConnectionLost`] and the next call reconnects (to the seeds in order, then
/// to the other members it heard of). Listeners reconnect on their own.
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
    /// The session used for requests any node can answer: the fast path for those.
    current: Mutex<Option<Arc<Session>>>,
    /// Held while looking for "any node", so concurrent callers wait for one attempt.
    connecting_any: tokio::sync::Mutex<()>,
    /// One connection slot per node address, made when first needed.
    nodes: Mutex<HashMap<SocketAddr, Arc<NodeSlot>>>,
    endpoints: Mutex<Endpoints>,
    routes: Mutex<RouteTable>,
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

/// The connection to one node.
#[derive(Default)]
struct NodeSlot {
    session: Mutex<Option<Arc<Session>>>,
    /// Held while connecting, so concurrent callers wait for one attempt.
    connecting: tokio::sync::Mutex<()>,
}

impl NodeSlot {
    fn live(&self) -> Option<Arc<Session>> {
        lock(&self.session)
            .as_ref()
            .filter(|s| s.is_alive())
            .cloned()
    }
}

/// Locks a mutex whose data stays consistent even if a holder panicked (single assignments).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One UDP endpoint per address family, made when first needed.
#[derive(Default)]
struct Endpoints {
    v4: Option<quinn::Endpoint>,
    v6: Option<quinn::Endpoint>,
}

impl Endpoints {
    fn for_addr(&mut self, addr: SocketAddr) -> std::io::Result<quinn::Endpoint> {
        let (slot, bind): (_, SocketAddr) = if addr.is_ipv4() {
            (&mut self.v4, (std::net::Ipv4Addr::UNSPECIFIED, 0).into())
        } else {
            (&mut self.v6, (std::net::Ipv6Addr::UNSPECIFIED, 0).into())
        };
        if let Some(endpoint) = slot {
            return Ok(endpoint.clone());
        }
        let endpoint = quinn::Endpoint::client(bind)?;
        *slot = Some(endpoint.clone());
        Ok(endpoint)
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
            connecting_any: tokio::sync::Mutex::new(()),
            nodes: Mutex::new(HashMap::new()),
            endpoints: Mutex::new(Endpoints::default()),
            routes: Mutex::new(RouteTable::default()),
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
    ///
    /// Sent to the catalog leader, following "not leader" answers as described in
    /// [`crate::LeaderRetryPolicy`] ([`ClientError::NotLeader`] if none answers in time). If
    /// the connection breaks after the request was sent it is not resent, and the topic may or
    /// may not exist.
    pub async fn create_topic(&self, name: &str, config: TopicConfig) -> Result<(), ClientError> {
        check_topic(name)?;
        let request = Request::CreateTopic {
            name: name.to_owned(),
            config,
        };
        match self.catalog_call(request).await? {
            Reply::TopicCreated => Ok(()),
            other => Err(unexpected("TopicCreated", &other)),
        }
    }

    /// Deletes a topic and its data. [`ClientError::NotFound`] if it does not exist.
    ///
    /// Routed and retried like [`Client::create_topic`].
    pub async fn delete_topic(&self, name: &str) -> Result<(), ClientError> {
        check_topic(name)?;
        let request = Request::DeleteTopic {
            name: name.to_owned(),
        };
        let reply = self.catalog_call(request).await?;
        self.inner.routes().forget_topic(name);
        match reply {
            Reply::TopicDeleted => Ok(()),
            other => Err(unexpected("TopicDeleted", &other)),
        }
    }

    /// Adds node `node_id`, reachable by clients at `addr` (`host:port`), to the cluster.
    ///
    /// Routed and retried like [`Client::create_topic`].
    pub async fn add_node(&self, node_id: u64, addr: &str) -> Result<(), ClientError> {
        let request = Request::AddNode {
            node_id,
            addr: addr.to_owned(),
        };
        match self.catalog_call(request).await? {
            Reply::ClusterChanged => Ok(()),
            other => Err(unexpected("ClusterChanged", &other)),
        }
    }

    /// Removes node `node_id` from the cluster.
    ///
    /// Routed and retried like [`Client::create_topic`].
    pub async fn remove_node(&self, node_id: u64) -> Result<(), ClientError> {
        let request = Request::RemoveNode { node_id };
        match self.catalog_call(request).await? {
            Reply::ClusterChanged => Ok(()),
            other => Err(unexpected("ClusterChanged", &other)),
        }
    }

    /// The cluster's members, its catalog leader and each topic's replicas and leader, as the
    /// catalog leader (or, if it is not known or cannot be reached, any node) sees them. Also
    /// refreshes this client's routes.
    pub async fn cluster(&self) -> Result<ClusterInfo, ClientError> {
        let deadline = Instant::now() + self.inner.config.request_timeout;
        Ok(self.inner.refresh_cluster(deadline).await?.info)
    }

    /// The topics with their offsets, as the node this client is connected to knows them.
    pub async fn list_topics(&self) -> Result<Vec<TopicInfo>, ClientError> {
        match self.inner.call(Request::ListTopics).await? {
            Reply::Topics(topics) => Ok(topics),
            other => Err(unexpected("Topics", &other)),
        }
    }

    /// The version, uptime, fsync mode, peers and per-topic counters of the node this client
    /// is connected to (its `topics` lists only the topics that node hosts). See
    /// [`Client::statuses`] for every node.
    pub async fn status(&self) -> Result<NodeStatus, ClientError> {
        status_reply(self.inner.call(Request::Status).await?)
    }

    /// The status of the node at `addr` (connecting to it if needed).
    pub async fn status_of(&self, addr: SocketAddr) -> Result<NodeStatus, ClientError> {
        self.inner.status_of(addr).await
    }

    /// The status of every member of the cluster (from [`Client::cluster`]), asked
    /// concurrently, in the order of [`ClusterInfo::nodes`]. A node that cannot be reached has
    /// its error in place of its status; only failing to get the member list fails the call.
    pub async fn statuses(
        &self,
    ) -> Result<Vec<(NodeInfo, Result<NodeStatus, ClientError>)>, ClientError> {
        let deadline = Instant::now() + self.inner.config.request_timeout;
        let view = self.inner.refresh_cluster(deadline).await?;
        let mut tasks = tokio::task::JoinSet::new();
        for (i, node) in view.info.nodes.iter().enumerate() {
            let inner = self.inner.clone();
            let addr = view.addr_of(node.node_id);
            let node = node.clone();
            tasks.spawn(async move {
                let status = match addr {
                    Some(addr) => inner.status_of(addr).await,
                    None => Err(ClientError::Config(format!(
                        "node {} has an address that does not resolve: {:?}",
                        node.node_id, node.addr
                    ))),
                };
                (i, node, status)
            });
        }
        let mut out: Vec<(usize, NodeInfo, Result<NodeStatus, ClientError>)> = Vec::new();
        while let Some(done) = tasks.join_next().await {
            match done {
                Ok(entry) => out.push(entry),
                Err(e) => {
                    return Err(ClientError::ConnectionLost(format!(
                        "a status request task ended: {e}"
                    )));
                }
            }
        }
        out.sort_by_key(|(i, _, _)| *i);
        Ok(out.into_iter().map(|(_, node, s)| (node, s)).collect())
    }

    /// Appends one message to `topic` and waits until it is committed. Keys and values above
    /// the protocol's hard limits fail with [`ClientError::TooLarge`] before anything is sent.
    ///
    /// The PUT goes to the topic's leader (or, while the client does not know it, to any node,
    /// which names the leader). A node answering "not leader" did not append the message, so
    /// the PUT is resent to the leader it names, or after a backoff and a cluster refresh, as
    /// described in [`crate::LeaderRetryPolicy`]; [`ClientError::NotLeader`] (naming the topic)
    /// if no leader answers in time. A `NotFound` answer is returned only once the cluster also
    /// lacks the topic (a node may not have applied a brand-new topic yet).
    ///
    /// A PUT whose connection broke after it was sent is **not** resent: its outcome is unknown
    /// and it fails with [`ClientError::ConnectionLost`] (or [`ClientError::Timeout`]); sending
    /// it again may store the message twice.
    ///
    /// Calls from concurrent tasks are pipelined; for many PUTs from one task use
    /// [`Client::producer`].
    ///
    /// ```no_run
    /// # async fn f(client: weir_client::Client) -> Result<(), weir_client::ClientError> {
    /// let c = client.put("orders", None, b"no key".as_slice()).await?;
    /// let d = client.put("orders", Some(b"k".as_slice()), "keyed").await?;
    /// assert!(d.offset > c.offset); // offsets increase, possibly with gaps
    /// # Ok(()) }
    /// ```
    pub async fn put(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        value: impl Into<Vec<u8>>,
    ) -> Result<Committed, ClientError> {
        let request = self.inner.put_request(topic, key, value.into())?;
        let call = RoutedCall::new(self.inner.clone(), Target::Topic(topic.to_owned()));
        committed(call.run(request).await?)
    }

    /// A producer that keeps up to `window` PUTs to `topic` in flight (at least 1).
    pub fn producer(&self, topic: &str, window: usize) -> Result<Producer, ClientError> {
        check_topic(topic)?;
        Ok(Producer::new(self.clone(), topic.to_owned(), window))
    }

    /// Follows `topic` from `from`: every committed message, in offset order, then the tail.
    ///
    /// The topic is looked up first on a node that hosts it (its leader if known, else another
    /// replica, else the node this client is connected to), so a missing topic fails here with
    /// [`ClientError::NotFound`] and an offset outside the retained range with
    /// [`ClientError::OffsetOutOfRange`] (the node re-checks both). [`ListenFrom::End`] is
    /// resolved here to that replica's committed offset, so the listener sees every message
    /// committed after `listen` was called, even across reconnects.
    ///
    /// The listener attaches to a replica of the topic, reconnects on connection loss (see
    /// [`ClientConfig::reconnect`]) and resumes after the last event it received: no repeat,
    /// and nothing committed is skipped (offsets holding no message are skipped by the node).
    pub async fn listen(&self, topic: &str, from: ListenFrom) -> Result<Listener, ClientError> {
        check_topic(topic)?;
        let (node, info) = self.inner.replica_topic_status(topic).await?;
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
        Ok(Listener::spawn(
            self.inner.clone(),
            topic.to_owned(),
            from,
            node,
        ))
    }

    /// Closes every connection now (outstanding requests fail with
    /// [`ClientError::ConnectionLost`]). The client stays usable: the next call reconnects.
    pub async fn close(&self) {
        let mut sessions: Vec<Arc<Session>> =
            lock(&self.inner.current).take().into_iter().collect();
        let slots: Vec<Arc<NodeSlot>> = lock(&self.inner.nodes).values().cloned().collect();
        sessions.extend(slots.iter().filter_map(|slot| lock(&slot.session).take()));
        for session in sessions {
            session.conn.close(0u32.into(), b"client closed");
        }
        let endpoints: Vec<quinn::Endpoint> = {
            let endpoints = lock(&self.inner.endpoints);
            [&endpoints.v4, &endpoints.v6]
                .into_iter()
                .flatten()
                .cloned()
                .collect()
        };
        for endpoint in endpoints {
            // Bounded: wait_idle waits for the close to be acknowledged or to time out.
            let _ =
                tokio::time::timeout(std::time::Duration::from_secs(1), endpoint.wait_idle()).await;
        }
    }

    async fn catalog_call(&self, request: Request) -> Result<Reply, ClientError> {
        RoutedCall::new(self.inner.clone(), Target::Catalog)
            .run(request)
            .await
    }
}

fn status_reply(reply: Reply) -> Result<NodeStatus, ClientError> {
    match reply {
        Reply::Status(status) => Ok(status),
        other => Err(unexpected("Status", &other)),
    }
}

impl Inner {
    pub(crate) fn routes(&self) -> MutexGuard<'_, RouteTable> {
        lock(&self.routes)
    }

    /// The node believed to lead `target`, if any.
    pub(crate) fn route(&self, target: &Target) -> Option<SocketAddr> {
        self.routes().route(target)
    }

    pub(crate) fn set_route(&self, target: &Target, addr: SocketAddr) {
        self.routes().set(target, addr);
    }

    pub(crate) fn forget_route(&self, target: &Target, addr: SocketAddr) {
        self.routes().forget(target, addr);
    }

    fn live_current(&self) -> Option<Arc<Session>> {
        lock(&self.current)
            .as_ref()
            .filter(|s| s.is_alive())
            .cloned()
    }

    /// A live session with any node, connecting (lazily, once for all concurrent callers) if
    /// there is none: the seeds in order, then the other members last heard of.
    pub(crate) async fn session(&self) -> Result<Arc<Session>, ClientError> {
        if let Some(session) = self.live_current() {
            return Ok(session);
        }
        let _connecting = self.connecting_any.lock().await;
        if let Some(session) = self.live_current() {
            return Ok(session);
        }
        let mut candidates = self.config.addrs.clone();
        for addr in self.routes().known_nodes() {
            if !candidates.contains(addr) {
                candidates.push(*addr);
            }
        }
        let mut failures = Vec::new();
        for addr in candidates {
            match self.session_for(addr).await {
                Ok(session) => {
                    *lock(&self.current) = Some(session.clone());
                    return Ok(session);
                }
                // A config error will not get better with another address.
                Err(e @ ClientError::Config(_)) => return Err(e),
                Err(e) => failures.push(format!("{addr}: {}", strip_connect_prefix(&e))),
            }
        }
        Err(ClientError::Connect(failures.join("; ")))
    }

    /// The live session with the node at `addr`, connecting (once for all concurrent callers)
    /// if there is none.
    pub(crate) async fn session_for(&self, addr: SocketAddr) -> Result<Arc<Session>, ClientError> {
        let slot = lock(&self.nodes).entry(addr).or_default().clone();
        if let Some(session) = slot.live() {
            return Ok(session);
        }
        let _connecting = slot.connecting.lock().await;
        if let Some(session) = slot.live() {
            return Ok(session);
        }
        let session = self.connect(addr).await?;
        *lock(&slot.session) = Some(session.clone());
        Ok(session)
    }

    /// One connection attempt, bounded by the connect timeout.
    async fn connect(&self, addr: SocketAddr) -> Result<Arc<Session>, ClientError> {
        let config = &self.config;
        let attempt = async {
            let endpoint = lock(&self.endpoints)
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
        match &result {
            Ok(_) => tracing::debug!(%addr, "connected to node"),
            Err(e) => tracing::debug!(%addr, error = %e, "connection attempt failed"),
        }
        result
    }

    /// Sends `request` to any node and waits for its reply.
    pub(crate) async fn call(&self, request: Request) -> Result<Reply, ClientError> {
        self.start(request).await?.wait().await
    }

    /// An in-flight slot, released with the reply of the request it is given to.
    pub(crate) async fn in_flight_slot(
        &self,
        deadline: Instant,
    ) -> Result<OwnedSemaphorePermit, ClientError> {
        tokio::time::timeout_at(deadline, self.in_flight.clone().acquire_owned())
            .await
            .map_err(|_| ClientError::Timeout(self.config.request_timeout))?
            .map_err(|_| ClientError::ConnectionLost("client closed".into()))
    }

    /// Sends `request` to any node once an in-flight slot is free.
    async fn start(&self, request: Request) -> Result<PendingReply, ClientError> {
        let deadline = Instant::now() + self.config.request_timeout;
        let slot = self.in_flight_slot(deadline).await?;
        let session = self.session().await?;
        Ok(session.send(request, vec![slot], deadline, false).await?)
    }

    /// The status of the node at `addr`.
    pub(crate) async fn status_of(&self, addr: SocketAddr) -> Result<NodeStatus, ClientError> {
        let deadline = Instant::now() + self.config.request_timeout;
        let slot = self.in_flight_slot(deadline).await?;
        let session = self.session_for(addr).await?;
        let pending = session
            .send(Request::Status, vec![slot], deadline, false)
            .await?;
        status_reply(pending.wait().await?)
    }

    /// Asks the catalog leader (or, if unknown or unreachable, any node) for the cluster's
    /// layout and updates the routes from the answer.
    pub(crate) async fn refresh_cluster(
        self: &Arc<Self>,
        deadline: Instant,
    ) -> Result<ClusterView, ClientError> {
        let mut call = RoutedCall::new(self.clone(), Target::Catalog);
        let pending = call.dispatch(Request::Cluster).await?;
        let answered_by = pending.remote();
        let reply = match tokio::time::timeout_at(deadline, pending.wait()).await {
            Ok(reply) => reply?,
            Err(_) => return Err(ClientError::Timeout(self.config.request_timeout)),
        };
        let info = match reply {
            Reply::Cluster(info) => info,
            other => return Err(unexpected("Cluster", &other)),
        };
        let mut addrs = HashMap::with_capacity(info.nodes.len());
        for node in &info.nodes {
            match resolve_node_addr(&node.addr, answered_by, self.config.connect_timeout).await {
                Some(addr) => {
                    addrs.insert(node.node_id, addr);
                }
                None => {
                    tracing::debug!(node = node.node_id, addr = %node.addr, "unusable node address")
                }
            }
        }
        let view = ClusterView::new(info, addrs);
        self.routes().apply(&view);
        Ok(view)
    }

    /// `topic`'s status on a node that hosts it, and that node (`None`: the node this client
    /// is connected to, used when the cluster layout does not place the topic).
    async fn replica_topic_status(
        self: &Arc<Self>,
        topic: &str,
    ) -> Result<(Option<SocketAddr>, TopicStatus), ClientError> {
        let deadline = Instant::now() + self.config.request_timeout;
        let hosts = match self.refresh_cluster(deadline).await {
            Ok(view) => view.hosts_of(topic),
            Err(e) => {
                tracing::debug!(error = %e, "cluster refresh failed; asking the connected node");
                Vec::new()
            }
        };
        let find = |status: &NodeStatus| status.topics.iter().find(|t| t.name == topic).cloned();
        let mut unreachable = None;
        for addr in hosts {
            match self.status_of(addr).await {
                Ok(status) => {
                    if let Some(info) = find(&status) {
                        return Ok((Some(addr), info));
                    }
                }
                Err(e @ ClientError::Config(_)) => return Err(e),
                Err(e) => {
                    tracing::debug!(%addr, error = %e, "a replica did not answer Status");
                    unreachable = Some(e);
                }
            }
        }
        let status = status_reply(self.call(Request::Status).await?)?;
        match find(&status) {
            Some(info) => Ok((None, info)),
            None => Err(unreachable.unwrap_or_else(|| {
                ClientError::NotFound(format!("topic {topic:?} does not exist"))
            })),
        }
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
