//! [`Client`]: connections to the cluster's nodes and the request/reply calls.

use crate::config::quinn_client_config;
use crate::listener::Listener;
use crate::producer::Producer;
use crate::routing::{ClusterView, RouteTable, RoutedCall, Target, resolve_node_addr};
use crate::session::{PendingReply, PutLimits, PutWatch, Session, unexpected};
use crate::{ClientConfig, ClientError};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;
use weir_proto::limits::{KEY_BYTES_MAX, VALUE_BYTES_MAX};
use weir_proto::{
    ClusterInfo, Committed, ListenFrom, NodeInfo, NodeStatus, Offset, ProducerId, ProgramInfo,
    ProgramOutcome, ProgramSpec, PutMessage, Reply, Request, TopicConfig, TopicInfo, TopicStatus,
    validate_topic_name,
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
/// Failover: a node that died is noticed when its connection hears nothing for
/// [`ClientConfig::idle_timeout`], or sooner when PUTs wait on it: once one has waited
/// [`ClientConfig::leader_check_after`], the node is checked (does its connection still
/// answer? do the other nodes still take it for the leader?), and if it is dead, or a deposed
/// leader cut off from the others, the client gives up on its connection (the PUTs outstanding
/// there fail with [`ClientError::ConnectionLost`]: their outcome is unknown, and they are not
/// resent) and learns the new leader from the other nodes. A node whose connection was lost or
/// could not be made is passed over for about a second while another node can be tried, a new
/// connection is awaited only [`ClientConfig::connect_patience`] before a request goes to
/// another node instead, and requests waiting for a leader to be elected go as soon as one is
/// learned, so they reach the new leader about as soon as it is elected.
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

/// How long a node whose connection was lost, or could not be made, is passed over while
/// another node can be tried.
pub(crate) const NODE_DOWN_FOR: Duration = Duration::from_secs(1);
/// Shortest pause between two leader checks of one session.
/// Topics a client keeps the [`Client::put`] producer of (each holds a producer id, its next
/// sequence number and an empty buffer when idle: a few hundred bytes).
pub const LONE_PRODUCERS_MAX: usize = 1024;

const LEADER_RECHECK_MIN: Duration = Duration::from_millis(50);

pub(crate) struct Inner {
    pub(crate) config: ClientConfig,
    quinn_config: quinn::ClientConfig,
    /// The session used for requests any node can answer: the fast path for those.
    current: Mutex<Option<Arc<Session>>>,
    /// Held while looking for "any node", so concurrent callers wait for one attempt.
    connecting_any: tokio::sync::Mutex<()>,
    /// One connection slot per node address, made when first needed.
    nodes: Mutex<HashMap<SocketAddr, Arc<NodeSlot>>>,
    /// Nodes recently lost or not reachable, with when they may be tried again (see
    /// [`NODE_DOWN_FOR`]).
    down: Mutex<HashMap<SocketAddr, Instant>>,
    endpoints: Mutex<Endpoints>,
    routes: Mutex<RouteTable>,
    /// Bumped whenever a leader is learned: requests waiting to resend (the leader being
    /// unknown) look again at once.
    leader_learned: watch::Sender<u64>,
    in_flight: Arc<Semaphore>,
    /// Per topic, the producer behind [`Client::put`] (at most [`LONE_PRODUCERS_MAX`]).
    lone: Mutex<HashMap<String, Arc<crate::producer::Shared>>>,
    /// The smallest PUT limits any node announced (the protocol's hard limits until one has):
    /// what PUTs are checked against before they are sent ([`Inner::check_put`]).
    put_limits: Mutex<PutLimits>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("addrs", &self.config.addrs)
            .finish_non_exhaustive()
    }
}

/// The outcome of a connection attempt, once it is known.
type Outcome = Option<Result<Arc<Session>, ClientError>>;

/// The connection to one node.
#[derive(Default)]
struct NodeSlot {
    session: Mutex<Option<Arc<Session>>>,
    /// The connection attempt under way, if any (one at a time per node): concurrent callers
    /// wait for its outcome.
    attempt: Mutex<Option<watch::Receiver<Outcome>>>,
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
            lone: Mutex::new(HashMap::new()),
            put_limits: Mutex::new(PutLimits {
                value_bytes: VALUE_BYTES_MAX,
                key_bytes: KEY_BYTES_MAX,
            }),
            config,
            quinn_config,
            current: Mutex::new(None),
            connecting_any: tokio::sync::Mutex::new(()),
            nodes: Mutex::new(HashMap::new()),
            down: Mutex::new(HashMap::new()),
            endpoints: Mutex::new(Endpoints::default()),
            routes: Mutex::new(RouteTable::default()),
            leader_learned: watch::Sender::new(0),
        });
        inner.session().await?;
        Ok(Self { inner })
    }

    /// The configuration this client was made with.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
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
    /// the nodes' limits (as their `Hello` announced them; the protocol's hard limits until a
    /// node has) fail with [`ClientError::TooLarge`] before anything is sent.
    ///
    /// The PUT goes to the topic's leader (or, while the client does not know it, to any node,
    /// which names the leader). A node answering "not leader" did not append the message, so
    /// the PUT is resent to the leader it names, or after a backoff and a cluster refresh, as
    /// described in [`crate::LeaderRetryPolicy`]; [`ClientError::NotLeader`] (naming the topic)
    /// if no leader answers in time. A `NotFound` answer is returned only once the cluster also
    /// lacks the topic (a node may not have applied a brand-new topic yet).
    ///
    /// Exactly-once: the client keeps a producer per topic for these PUTs (see [`Producer`]),
    /// so each carries a producer id and sequence number, and a PUT whose connection broke
    /// after it was sent, or that a busy or new leader did not take yet, is resent and
    /// answered once, with its original offset if it had been committed. It fails only once
    /// the request timeout has passed, or for a reason that resending cannot change.
    ///
    /// Calls from concurrent tasks share that producer: their PUTs go out together, as
    /// batches, numbered in the order the calls were made. Once a call has queued its PUT the
    /// PUT goes out even if the call's future is dropped. For many PUTs from one task use
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
        let value = value.into();
        self.inner.check_put(topic, key, &value)?;
        let put = PutMessage {
            key: key.map(<[u8]>::to_vec),
            value,
        };
        crate::producer::lone_put(self.inner.lone_producer(topic), self, put).await
    }

    /// Upgrades the program of programmable topic `topic` to `program`. The switch is an entry
    /// of the topic's log: every replica switches there, and the returned input offset is it.
    /// The new program gets its predecessor's state, or an empty one with `reset_state`.
    /// [`ClientError::InvalidArgument`] says why a module or switch was refused.
    ///
    /// Sent to the topic's leader, routed and retried like [`Client::put`].
    pub async fn deploy_program(
        &self,
        topic: &str,
        program: ProgramSpec,
        reset_state: bool,
    ) -> Result<Offset, ClientError> {
        check_topic(topic)?;
        let request = Request::DeployProgram {
            topic: topic.to_owned(),
            program,
            reset_state,
        };
        let call = RoutedCall::new(self.inner.clone(), Target::Topic(topic.into()));
        match call.run(request).await? {
            Reply::ProgramDeployed { at_offset } => Ok(at_offset),
            other => Err(unexpected("ProgramDeployed", &other)),
        }
    }

    /// The program of `topic` as its leader runs it: version, hash, offsets, snapshot, state
    /// hash. See [`Client::program_at`] for one replica.
    pub async fn program(&self, topic: &str) -> Result<ProgramInfo, ClientError> {
        check_topic(topic)?;
        let call = RoutedCall::new(self.inner.clone(), Target::Topic(topic.into()));
        program_reply(
            call.run(Request::ShowProgram {
                topic: topic.to_owned(),
            })
            .await?,
        )
    }

    /// The program of `topic` as the node at `addr` (a replica) runs it.
    pub async fn program_at(
        &self,
        addr: SocketAddr,
        topic: &str,
    ) -> Result<ProgramInfo, ClientError> {
        check_topic(topic)?;
        let request = Request::ShowProgram {
            topic: topic.to_owned(),
        };
        program_reply(self.inner.call_at(addr, request).await?)
    }

    /// A producer that keeps up to `window` PUTs to `topic` in flight (at least 1).
    pub fn producer(&self, topic: &str, window: usize) -> Result<Producer, ClientError> {
        check_topic(topic)?;
        Producer::new(self.clone(), topic.to_owned(), window)
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
        let replicas = self.inner.replica_topic_statuses(topic).await?;
        // Replicas may hold different ranges (each applies retention itself; one that caught
        // up from a snapshot of a programmable topic holds events from there on): attach to
        // one that has what was asked for, the leader if it does.
        let (node, info) = match from {
            ListenFrom::Start => replicas
                .iter()
                .min_by_key(|(_, info)| info.read_start_offset)
                .cloned(),
            ListenFrom::Offset(n) => replicas
                .iter()
                .find(|(_, info)| info.read_start_offset <= n && n <= info.read_end_offset)
                .cloned(),
            ListenFrom::End => None,
        }
        .unwrap_or_else(|| replicas[0].clone());
        let from = match from {
            ListenFrom::Start => ListenFrom::Start,
            ListenFrom::End => ListenFrom::Offset(info.read_end_offset),
            ListenFrom::Offset(n) if n < info.read_start_offset || n > info.read_end_offset => {
                return Err(ClientError::OffsetOutOfRange(format!(
                    "offset {n} is outside topic {topic:?}'s range [{}, {}]",
                    info.read_start_offset, info.read_end_offset
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
        let changed = {
            let mut routes = self.routes();
            let changed = routes.route(target) != Some(addr);
            routes.set(target, addr);
            changed
        };
        if changed {
            self.leader_learned.send_modify(|n| *n += 1);
        }
    }

    /// Waits until `until`, or until a leader of `target` is learned (see
    /// [`Inner::set_route`]) if that comes first.
    pub(crate) async fn wait_for_leader(&self, target: &Target, until: Instant) {
        let mut learned = self.leader_learned.subscribe();
        let sleep = tokio::time::sleep_until(until);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => return,
                changed = learned.changed() => {
                    // (The sender lives as long as `self`.)
                    if changed.is_err() || self.route(target).is_some() {
                        return;
                    }
                }
            }
        }
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

    /// Passes `addr` over for a while (see [`NODE_DOWN_FOR`]).
    pub(crate) fn mark_down(&self, addr: SocketAddr) {
        lock(&self.down).insert(addr, Instant::now() + NODE_DOWN_FOR);
    }

    /// Whether `addr` was lost or unreachable less than [`NODE_DOWN_FOR`] ago.
    pub(crate) fn is_down(&self, addr: SocketAddr) -> bool {
        let mut down = lock(&self.down);
        match down.get(&addr) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                down.remove(&addr);
                false
            }
            None => false,
        }
    }

    /// A session to `addr` was lost (not closed by this client): the node is passed over for a
    /// while and no route points at it any more.
    fn node_lost(&self, addr: SocketAddr) {
        self.mark_down(addr);
        self.routes().forget_node(addr);
    }

    /// Every node address this client knows of: the seeds, then the members last heard of,
    /// then the other nodes it has a connection slot for (leaders it was told of).
    fn known_addrs(&self) -> Vec<SocketAddr> {
        let mut addrs = self.config.addrs.clone();
        for addr in self.routes().known_nodes() {
            if !addrs.contains(addr) {
                addrs.push(*addr);
            }
        }
        for addr in lock(&self.nodes).keys() {
            if !addrs.contains(addr) {
                addrs.push(*addr);
            }
        }
        addrs
    }

    /// Whether a node other than `addr`, not passed over, is known.
    fn has_alternative(&self, addr: SocketAddr) -> bool {
        self.known_addrs()
            .into_iter()
            .any(|other| other != addr && !self.is_down(other))
    }

    /// A live session with any node, connecting (lazily, once for all concurrent callers) if
    /// there is none: the seeds in order, then the other members last heard of. Nodes passed
    /// over recently come last; each address but the last is given
    /// [`ClientConfig::connect_patience`] before the next is tried, and then every attempt
    /// still under way (and the nodes passed over) may answer first.
    pub(crate) async fn session(self: &Arc<Self>) -> Result<Arc<Session>, ClientError> {
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
        let (up, down): (Vec<SocketAddr>, Vec<SocketAddr>) = candidates
            .into_iter()
            .partition(|addr| !self.is_down(*addr));
        let patience = self.config.connect_patience;
        let mut failures = Vec::new();
        let mut later = Vec::new();
        for (i, &addr) in up.iter().enumerate() {
            let last = i + 1 == up.len() && down.is_empty();
            match self.try_session(addr, (!last).then_some(patience)).await {
                Ok(Some(session)) => return Ok(self.use_current(session)),
                Ok(None) => later.push(addr),
                // A config error will not get better with another address.
                Err(e @ ClientError::Config(_)) => return Err(e),
                Err(e) => failures.push(format!("{addr}: {}", strip_connect_prefix(&e))),
            }
        }
        later.extend(down);
        if !later.is_empty() {
            let mut attempts = tokio::task::JoinSet::new();
            for addr in later {
                let inner = self.clone();
                attempts.spawn(async move { (addr, inner.session_for(addr).await) });
            }
            while let Some(done) = attempts.join_next().await {
                match done {
                    Ok((_, Ok(session))) => return Ok(self.use_current(session)),
                    Ok((_, Err(e @ ClientError::Config(_)))) => return Err(e),
                    Ok((addr, Err(e))) => {
                        failures.push(format!("{addr}: {}", strip_connect_prefix(&e)));
                    }
                    Err(e) => failures.push(format!("a connection task ended: {e}")),
                }
            }
        }
        Err(ClientError::Connect(failures.join("; ")))
    }

    /// A live session with any node but those in `avoid` (nodes that just said they know no
    /// leader): the current one if it is not avoided, else one with another known node that
    /// is not passed over (connected ones first, each new one given
    /// [`ClientConfig::connect_patience`]); if there is none, the usual [`Inner::session`].
    pub(crate) async fn session_avoiding(
        self: &Arc<Self>,
        avoid: &[SocketAddr],
    ) -> Result<Arc<Session>, ClientError> {
        if avoid.is_empty() {
            return self.session().await;
        }
        if let Some(current) = self.live_current()
            && !avoid.contains(&current.remote())
        {
            return Ok(current);
        }
        let (connected, others): (Vec<SocketAddr>, Vec<SocketAddr>) = self
            .known_addrs()
            .into_iter()
            .filter(|addr| !avoid.contains(addr) && !self.is_down(*addr))
            .partition(|addr| self.live_session(*addr).is_some());
        let patience = Some(self.config.connect_patience);
        for addr in connected.into_iter().chain(others) {
            if let Ok(Some(session)) = self.try_session(addr, patience).await {
                return Ok(session);
            }
        }
        self.session().await
    }

    fn use_current(&self, session: Arc<Session>) -> Arc<Session> {
        *lock(&self.current) = Some(session.clone());
        session
    }

    /// The live session with the node at `addr`, connecting (once for all concurrent callers)
    /// if there is none, and waiting for the whole attempt.
    pub(crate) async fn session_for(
        self: &Arc<Self>,
        addr: SocketAddr,
    ) -> Result<Arc<Session>, ClientError> {
        match self.try_session(addr, None).await? {
            Some(session) => Ok(session),
            None => Err(ClientError::Connect(format!(
                "{addr}: the connection attempt was abandoned"
            ))),
        }
    }

    /// The session for a request routed to `addr` (a leader): the live one, or a new one
    /// within [`ClientConfig::connect_patience`] if another node could take the request
    /// instead. A node passed over recently is not tried then (fails at once).
    pub(crate) async fn routed_session(
        self: &Arc<Self>,
        addr: SocketAddr,
    ) -> Result<Arc<Session>, ClientError> {
        if let Some(session) = self.live_session(addr) {
            return Ok(session);
        }
        if !self.has_alternative(addr) {
            return self.session_for(addr).await;
        }
        if self.is_down(addr) {
            return Err(ClientError::Connect(format!(
                "{addr} was lost or unreachable less than {NODE_DOWN_FOR:?} ago"
            )));
        }
        let patience = self.config.connect_patience;
        match self.try_session(addr, Some(patience)).await? {
            Some(session) => Ok(session),
            None => Err(ClientError::Connect(format!(
                "{addr}: not connected after {patience:?} (still trying in the background)"
            ))),
        }
    }

    fn slot(&self, addr: SocketAddr) -> Arc<NodeSlot> {
        lock(&self.nodes).entry(addr).or_default().clone()
    }

    fn live_session(&self, addr: SocketAddr) -> Option<Arc<Session>> {
        let slot = lock(&self.nodes).get(&addr).cloned()?;
        slot.live()
    }

    /// The live session with `addr`, or the outcome of a connection attempt (joining the one
    /// under way, or starting one in the background, where it goes on up to the connect
    /// timeout whether or not anyone waits). With `patience`, `Ok(None)` if the attempt has
    /// not finished within it.
    async fn try_session(
        self: &Arc<Self>,
        addr: SocketAddr,
        patience: Option<Duration>,
    ) -> Result<Option<Arc<Session>>, ClientError> {
        let slot = self.slot(addr);
        if let Some(session) = slot.live() {
            return Ok(Some(session));
        }
        let mut outcome = {
            let mut attempt = lock(&slot.attempt);
            if let Some(session) = slot.live() {
                return Ok(Some(session));
            }
            match &*attempt {
                // Under way (its task still holds the sender).
                Some(rx) if rx.borrow().is_none() && rx.has_changed().is_ok() => rx.clone(),
                _ => {
                    let rx = self.start_attempt(addr, slot.clone());
                    *attempt = Some(rx.clone());
                    rx
                }
            }
        };
        let finished = outcome.wait_for(Option::is_some);
        let finished = match patience {
            None => finished.await,
            Some(patience) => match tokio::time::timeout(patience, finished).await {
                Ok(finished) => finished,
                Err(_) => return Ok(None),
            },
        };
        match finished {
            Ok(outcome) => match &*outcome {
                Some(Ok(session)) => Ok(Some(session.clone())),
                Some(Err(e)) => Err(e.clone()),
                None => Ok(None),
            },
            Err(_) => Err(ClientError::Connect(format!(
                "{addr}: the connection attempt was abandoned"
            ))),
        }
    }

    /// Connects to `addr` in a task of its own; its outcome is published on the returned
    /// receiver, after the session is stored in `slot` (or the node passed over).
    fn start_attempt(
        self: &Arc<Self>,
        addr: SocketAddr,
        slot: Arc<NodeSlot>,
    ) -> watch::Receiver<Outcome> {
        let (tx, rx) = watch::channel(None);
        let inner = self.clone();
        tokio::spawn(async move {
            let outcome = inner.connect(addr).await;
            match &outcome {
                Ok(session) => {
                    *lock(&slot.session) = Some(session.clone());
                    lock(&inner.down).remove(&addr);
                }
                Err(ClientError::Config(_)) => {}
                Err(_) => inner.mark_down(addr),
            }
            let _ = tx.send(Some(outcome));
        });
        rx
    }

    /// One connection attempt, bounded by the connect timeout. A session made here is watched
    /// for a leader that stopped answering ([`ClientConfig::leader_check_after`]) and for its
    /// loss.
    async fn connect(self: &Arc<Self>, addr: SocketAddr) -> Result<Arc<Session>, ClientError> {
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
            let inner = Arc::downgrade(self);
            let on_lost = Box::new(move || {
                if let Some(inner) = inner.upgrade() {
                    tracing::debug!(node = %addr, "connection lost: passing the node over for a while");
                    inner.node_lost(addr);
                }
            });
            let (session, limits) =
                Session::start(conn, &config.client_name, config.request_timeout, on_lost).await?;
            self.learn_limits(limits);
            Ok(session)
        };
        let result = match tokio::time::timeout(config.connect_timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::Connect(format!(
                "timed out after {:?}",
                config.connect_timeout
            ))),
        };
        match &result {
            Ok(session) => {
                tracing::debug!(%addr, "connected to node");
                if let Some(after) = config.leader_check_after {
                    tokio::spawn(watch_leader(
                        Arc::downgrade(self),
                        Arc::downgrade(session),
                        session.put_watch(),
                        addr,
                        after,
                    ));
                }
            }
            Err(e) => tracing::debug!(%addr, error = %e, "connection attempt failed"),
        }
        result
    }

    /// Sends `request` to any node and waits for its reply.
    pub(crate) async fn call(self: &Arc<Self>, request: Request) -> Result<Reply, ClientError> {
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
    async fn start(self: &Arc<Self>, request: Request) -> Result<PendingReply, ClientError> {
        let deadline = Instant::now() + self.config.request_timeout;
        let slot = self.in_flight_slot(deadline).await?;
        let session = self.session().await?;
        Ok(session.send(request, vec![slot], deadline, false).await?)
    }

    /// The status of the node at `addr`.
    pub(crate) async fn status_of(
        self: &Arc<Self>,
        addr: SocketAddr,
    ) -> Result<NodeStatus, ClientError> {
        status_reply(self.call_at(addr, Request::Status).await?)
    }

    /// One request to the node at `addr` (connecting to it if needed), without routing.
    pub(crate) async fn call_at(
        self: &Arc<Self>,
        addr: SocketAddr,
        request: Request,
    ) -> Result<Reply, ClientError> {
        let deadline = Instant::now() + self.config.request_timeout;
        let slot = self.in_flight_slot(deadline).await?;
        let session = self.session_for(addr).await?;
        let pending = session.send(request, vec![slot], deadline, false).await?;
        pending.wait().await
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
        let view = self.cluster_view(reply, answered_by).await?;
        if self.routes().apply(&view) {
            self.leader_learned.send_modify(|n| *n += 1);
        }
        Ok(view)
    }

    /// A `Cluster` reply from `answered_by` with the members' addresses resolved.
    async fn cluster_view(
        &self,
        reply: Reply,
        answered_by: SocketAddr,
    ) -> Result<ClusterView, ClientError> {
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
        Ok(ClusterView::new(info, addrs))
    }

    /// Asks the nodes other than `suspect` who leads `topics` (the ones connected first, each
    /// given [`ClientConfig::connect_patience`] to connect and `answer_within` to answer). One
    /// that names the suspect settles it ([`Verdict::Leads`]); otherwise the suspect is
    /// deposed if any node that hosts the topics answered, since none of them takes it for the
    /// leader. (One node's answer is not enough: a replica that is cut off, or has just
    /// restarted, knows no leader while the suspect still leads.)
    async fn check_leader(
        self: &Arc<Self>,
        suspect: SocketAddr,
        topics: &[String],
        answer_within: Duration,
    ) -> Verdict {
        let (mut candidates, unconnected): (Vec<SocketAddr>, Vec<SocketAddr>) = self
            .known_addrs()
            .into_iter()
            .filter(|addr| *addr != suspect && !self.is_down(*addr))
            .partition(|addr| self.live_session(*addr).is_some());
        candidates.extend(unconnected);
        let mut deposed: Vec<(String, Option<SocketAddr>)> = Vec::new();
        let mut heard = false;
        for addr in candidates {
            let session = match self
                .try_session(addr, Some(self.config.connect_patience))
                .await
            {
                Ok(Some(session)) => session,
                Ok(None) | Err(_) => continue,
            };
            let deadline = Instant::now() + answer_within;
            let reply = match session
                .send(Request::Cluster, Vec::new(), deadline, false)
                .await
            {
                Ok(pending) => pending.wait().await,
                Err(not_sent) => Err(not_sent.err),
            };
            let view = match reply {
                Ok(reply) => self.cluster_view(reply, addr).await,
                Err(e) => Err(e),
            };
            match view {
                Ok(view) => match Verdict::of(&view, suspect, topics) {
                    Verdict::Leads => return Verdict::Leads,
                    Verdict::Deposed(leaders) => {
                        heard = true;
                        for (topic, leader) in leaders {
                            match deposed.iter_mut().find(|(t, _)| *t == topic) {
                                Some((_, known)) => *known = known.or(leader),
                                None => deposed.push((topic, leader)),
                            }
                        }
                    }
                    Verdict::Unknown => {}
                },
                Err(e) => tracing::debug!(%addr, error = %e, "leader check: no answer"),
            }
        }
        if heard {
            Verdict::Deposed(deposed)
        } else {
            Verdict::Unknown
        }
    }

    /// Checks the node of `suspect`, on which PUTs for `topics` have waited `after`: first
    /// whether the connection is alive at all (the node is asked who leads, on that
    /// connection, and must answer or at least acknowledge within a quarter of `after`, or
    /// three round trips if longer), then, if it is, whether the other nodes still take it for
    /// the leader.
    async fn check_suspect(
        self: &Arc<Self>,
        suspect: &Arc<Session>,
        topics: &[String],
        after: Duration,
    ) -> Suspect {
        let addr = suspect.remote();
        let window = (after / 4).max(suspect.conn.rtt() * 3 + Duration::from_millis(50));
        let heard_before = heard_from(&suspect.conn);
        let deadline = Instant::now() + window;
        let reply = match suspect
            .send(Request::Cluster, Vec::new(), deadline, false)
            .await
        {
            Ok(pending) => pending.wait().await,
            Err(not_sent) => Err(not_sent.err),
        };
        let own_view = match reply {
            Ok(reply) => self.cluster_view(reply, addr).await.ok(),
            Err(_) => None,
        };
        if own_view.is_none() && heard_from(&suspect.conn) == heard_before {
            return Suspect::Dead;
        }
        match self.check_leader(addr, topics, after).await {
            Verdict::Leads | Verdict::Unknown => Suspect::Fine,
            Verdict::Deposed(leaders) => match own_view {
                // It handed leadership over and follows the new leader: the PUTs it holds are
                // decided (committed, or refused as not leader) as soon as it catches up.
                Some(view) if follows_another(&view, addr, topics) => Suspect::Fine,
                // It still takes itself for the leader, or knows none: cut off from the others.
                Some(_) => Suspect::Deposed(leaders),
                // Alive but slow to answer: give it time.
                None => Suspect::Fine,
            },
        }
    }

    /// After the connection to `lost` was given up while PUTs for `topics` waited there: asks
    /// the other nodes every [`LEADER_RECHECK_MIN`] (for at most four times `after`) until they
    /// name the topics' leaders, so that requests waiting to resend go there at once. While
    /// they still name `lost` (they have not noticed yet, or it restarted and leads again), a
    /// new connection to it is tried in the background, and used once it is up.
    async fn learn_new_leaders(
        self: &Arc<Self>,
        lost: SocketAddr,
        mut topics: Vec<String>,
        after: Duration,
    ) {
        let until = Instant::now() + after * 4;
        while !topics.is_empty() && Instant::now() < until {
            tokio::time::sleep(LEADER_RECHECK_MIN).await;
            match self.check_leader(lost, &topics, after).await {
                Verdict::Deposed(leaders) => {
                    for (topic, leader) in leaders {
                        if let Some(leader) = leader {
                            self.set_route(&Target::Topic(topic.as_str().into()), leader);
                            topics.retain(|t| *t != topic);
                        }
                    }
                }
                Verdict::Leads if self.live_session(lost).is_some() => {
                    for topic in topics {
                        self.set_route(&Target::Topic(topic.into()), lost);
                    }
                    return;
                }
                Verdict::Leads => {
                    // Starts an attempt in the background if none is under way.
                    let _ = self.try_session(lost, Some(Duration::ZERO)).await;
                }
                Verdict::Unknown => return,
            }
        }
    }

    /// `topic`'s status on a node that hosts it, and that node (`None`: the node this client
    /// is connected to, used when the cluster layout does not place the topic).
    /// The topic's status on every replica that answers, the leader first (at least one:
    /// else the error).
    async fn replica_topic_statuses(
        self: &Arc<Self>,
        topic: &str,
    ) -> Result<Vec<(Option<SocketAddr>, TopicStatus)>, ClientError> {
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
        let mut found = Vec::new();
        for addr in hosts {
            match self.status_of(addr).await {
                Ok(status) => {
                    if let Some(info) = find(&status) {
                        found.push((Some(addr), info));
                    }
                }
                Err(e @ ClientError::Config(_)) => return Err(e),
                Err(e) => {
                    tracing::debug!(%addr, error = %e, "a replica did not answer Status");
                    unreachable = Some(e);
                }
            }
        }
        if !found.is_empty() {
            return Ok(found);
        }
        let status = status_reply(self.call(Request::Status).await?)?;
        match find(&status) {
            Some(info) => Ok(vec![(None, info)]),
            None => Err(unreachable.unwrap_or_else(|| {
                ClientError::NotFound(format!("topic {topic:?} does not exist"))
            })),
        }
    }

    /// The producer behind [`Client::put`] for `topic`. Past [`LONE_PRODUCERS_MAX`] topics the
    /// idle ones are forgotten (a PUT to such a topic starts a new producer, which is safe:
    /// none of its PUTs is unanswered); if none is idle, `topic` gets one not kept.
    pub(crate) fn lone_producer(&self, topic: &str) -> Arc<crate::producer::Shared> {
        let mut lone = lock(&self.lone);
        if let Some(shared) = lone.get(topic) {
            return shared.clone();
        }
        if lone.len() >= LONE_PRODUCERS_MAX {
            lone.retain(|_, shared| !shared.is_idle());
        }
        let shared = crate::producer::Shared::new(topic);
        if lone.len() < LONE_PRODUCERS_MAX {
            lone.insert(topic.to_owned(), shared.clone());
        }
        shared
    }

    /// Keeps the smaller of each limit a node announced in its `Hello`.
    fn learn_limits(&self, node: PutLimits) {
        let mut limits = lock(&self.put_limits);
        limits.value_bytes = limits.value_bytes.min(node.value_bytes);
        limits.key_bytes = limits.key_bytes.min(node.key_bytes);
    }

    /// [`check_put`], then the nodes' own limits: a PUT the node would refuse for its size
    /// fails here, before it is numbered among a producer's PUTs.
    pub(crate) fn check_put(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        value: &[u8],
    ) -> Result<(), ClientError> {
        check_put(topic, key, value)?;
        let limits = *lock(&self.put_limits);
        let key_bytes = key.map_or(0, <[u8]>::len);
        if key_bytes > limits.key_bytes {
            return Err(ClientError::TooLarge(format!(
                "key of {key_bytes} bytes exceeds the nodes' limit of {} bytes (max_key_bytes)",
                limits.key_bytes
            )));
        }
        if value.len() > limits.value_bytes {
            return Err(ClientError::TooLarge(format!(
                "value of {} bytes exceeds the nodes' limit of {} bytes (max_message_bytes)",
                value.len(),
                limits.value_bytes
            )));
        }
        Ok(())
    }
}

/// What other nodes say about a node suspected of no longer leading some topics.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// For these topics they name another leader (with its address, if known) or none.
    Deposed(Vec<(String, Option<SocketAddr>)>),
    /// One names the suspect as the leader of one of the topics.
    Leads,
    /// It hosts none of the topics (only a replica knows a topic's leader), or does not know
    /// them.
    Unknown,
}

impl Verdict {
    /// The verdict of the node that answered `view` on `suspect` as the leader of `topics`:
    /// [`Verdict::Leads`] if it names the suspect for any of them (the suspect is then alive
    /// and leading, so its slow PUTs will be answered).
    fn of(view: &ClusterView, suspect: SocketAddr, topics: &[String]) -> Self {
        let mut deposed = Vec::new();
        let mut leads = false;
        for topic in topics {
            let Some(placement) = view.info.topics.iter().find(|t| &t.name == topic) else {
                continue;
            };
            if !placement.replicas.contains(&view.info.node_id) {
                continue;
            }
            match placement.leader {
                None => deposed.push((topic.clone(), None)),
                Some(id) => match view.addr_of(id) {
                    Some(addr) if addr == suspect => leads = true,
                    Some(addr) => deposed.push((topic.clone(), Some(addr))),
                    // A leader whose address is unknown may be the suspect.
                    None => {}
                },
            }
        }
        if leads {
            Self::Leads
        } else if !deposed.is_empty() {
            Self::Deposed(deposed)
        } else {
            Self::Unknown
        }
    }
}

/// What a check of a node on which PUTs wait too long found.
#[derive(Debug)]
enum Suspect {
    /// The connection is dead: the node neither answered nor acknowledged anything.
    Dead,
    /// The node is alive but the others do not take it for the leader, and it does not follow
    /// another one: a deposed leader cut off from the others. The leaders they named, if any.
    Deposed(Vec<(String, Option<SocketAddr>)>),
    /// Alive, and the leader or about to decide its PUTs: wait.
    Fine,
}

/// Whether `view`, the answer of the node at `addr`, names another node as the leader of each
/// of `topics`.
fn follows_another(view: &ClusterView, addr: SocketAddr, topics: &[String]) -> bool {
    topics.iter().all(|topic| {
        view.info
            .topics
            .iter()
            .find(|t| &t.name == topic)
            .and_then(|t| t.leader)
            .and_then(|id| view.addr_of(id))
            .is_some_and(|leader| leader != addr)
    })
}

/// Frames acknowledging or carrying data received on `conn` so far: what only a live peer
/// sends (a restarted node answers an old connection with undecryptable resets at most).
fn heard_from(conn: &quinn::Connection) -> u64 {
    let frames = conn.stats().frame_rx;
    frames.acks + frames.stream
}

/// Watches one session until it ends, checking its node while PUTs wait there longer than
/// `after` ([`ClientConfig::leader_check_after`]): one check at a time, then a pause of half
/// of `after`. If the connection is dead, or the node is a deposed leader cut off from the
/// others, gives the session up (the PUTs outstanding there fail), passes the node over for a
/// while and routes its topics to the leaders the others name.
async fn watch_leader(
    inner: Weak<Inner>,
    session: Weak<Session>,
    puts: PutWatch,
    addr: SocketAddr,
    after: Duration,
) {
    let recheck = (after / 2).max(LEADER_RECHECK_MIN);
    while let Some(topics) = puts.slow_puts(after).await {
        let (Some(client), Some(suspect)) = (inner.upgrade(), session.upgrade()) else {
            return;
        };
        tracing::debug!(node = %addr, ?topics, "PUTs wait long: checking the node");
        let (leaders, why) = match client.check_suspect(&suspect, &topics, after).await {
            Suspect::Fine => {
                drop((client, suspect));
                tokio::select! {
                    () = tokio::time::sleep(recheck) => {}
                    () = puts.failed() => {}
                }
                continue;
            }
            Suspect::Dead => {
                tracing::info!(node = %addr, "no sign of life within the check: giving up its connection");
                (Vec::new(), "it stopped answering")
            }
            Suspect::Deposed(leaders) => {
                tracing::info!(
                    node = %addr, ?leaders,
                    "a deposed leader cut off from the others: giving up its connection"
                );
                (
                    leaders,
                    "it no longer leads and is cut off from the other nodes",
                )
            }
        };
        client.mark_down(addr);
        client.routes().forget_node(addr);
        let mut unknown = topics;
        for (topic, leader) in leaders {
            if let Some(leader) = leader {
                client.set_route(&Target::Topic(topic.as_str().into()), leader);
                unknown.retain(|t| *t != topic);
            }
        }
        suspect.abandon(ClientError::ConnectionLost(format!(
            "gave up on {addr} after this request waited {after:?} there: {why} (whether the \
             request took effect is unknown)"
        )));
        drop(suspect);
        client.learn_new_leaders(addr, unknown, after).await;
        return;
    }
}

fn strip_connect_prefix(e: &ClientError) -> String {
    match e {
        ClientError::Connect(msg) => msg.clone(),
        other => other.to_string(),
    }
}

/// A PUT's answer; a program's rejection is an error.
pub(crate) fn committed(reply: Reply) -> Result<Committed, ClientError> {
    match reply {
        Reply::Committed(Committed {
            offset,
            program: Some(ProgramOutcome::Rejected { message }),
            ..
        }) => Err(ClientError::Rejected { offset, message }),
        Reply::Committed(c) => Ok(c),
        other => Err(unexpected("Committed", &other)),
    }
}

fn program_reply(reply: Reply) -> Result<ProgramInfo, ClientError> {
    match reply {
        Reply::Program(info) => Ok(info),
        other => Err(unexpected("Program", &other)),
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
pub(crate) fn new_producer_id() -> ProducerId {
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

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// A `Cluster` answer from node `answering` of nodes 1..=4 (node i at port 7000 + i), with
    /// `(topic, replicas, leader)`.
    fn view(answering: u64, topics: &[(&str, &[u64], Option<u64>)]) -> ClusterView {
        let info = ClusterInfo {
            node_id: answering,
            nodes: (1..=4)
                .map(|id| NodeInfo {
                    node_id: id,
                    addr: format!("127.0.0.1:{}", 7000 + id),
                })
                .collect(),
            metadata_leader: None,
            topics: topics
                .iter()
                .map(|(name, replicas, leader)| weir_proto::TopicPlacement {
                    name: (*name).to_owned(),
                    group: 1,
                    replicas: replicas.to_vec(),
                    leader: *leader,
                })
                .collect(),
        };
        // Node 4's address does not resolve.
        let addrs = (1..=3).map(|id| (id, addr(7000 + id as u16))).collect();
        ClusterView::new(info, addrs)
    }

    #[test]
    fn a_replica_naming_another_leader_or_none_deposes_the_suspect() {
        let suspect = addr(7001);
        let t = ["t".to_owned()];
        let named = view(2, &[("t", &[1, 2, 3], Some(3))]);
        assert_eq!(
            Verdict::of(&named, suspect, &t),
            Verdict::Deposed(vec![("t".into(), Some(addr(7003)))])
        );
        let electing = view(2, &[("t", &[1, 2, 3], None)]);
        assert_eq!(
            Verdict::of(&electing, suspect, &t),
            Verdict::Deposed(vec![("t".into(), None)])
        );
        let agrees = view(2, &[("t", &[1, 2, 3], Some(1))]);
        assert_eq!(Verdict::of(&agrees, suspect, &t), Verdict::Leads);
    }

    #[test]
    fn a_node_that_does_not_host_the_topic_or_names_an_unknown_address_has_no_verdict() {
        let suspect = addr(7001);
        let t = ["t".to_owned()];
        // Node 2 is not a replica of "t": its "no leader" means nothing.
        let elsewhere = view(2, &[("t", &[1, 3], None)]);
        assert_eq!(Verdict::of(&elsewhere, suspect, &t), Verdict::Unknown);
        let missing = view(2, &[]);
        assert_eq!(Verdict::of(&missing, suspect, &t), Verdict::Unknown);
        // The leader it names has no known address: it may be the suspect.
        let unresolved = view(2, &[("t", &[1, 2, 4], Some(4))]);
        assert_eq!(Verdict::of(&unresolved, suspect, &t), Verdict::Unknown);
    }

    #[test]
    fn a_suspect_still_named_for_one_topic_is_taken_to_lead() {
        let suspect = addr(7001);
        let topics = ["a".to_owned(), "b".to_owned()];
        let v = view(2, &[("a", &[1, 2], Some(2)), ("b", &[1, 2], Some(1))]);
        assert_eq!(Verdict::of(&v, suspect, &topics), Verdict::Leads);
        let v = view(2, &[("a", &[1, 2], Some(2)), ("b", &[1, 2], None)]);
        assert_eq!(
            Verdict::of(&v, suspect, &topics),
            Verdict::Deposed(vec![("a".into(), Some(addr(7002))), ("b".into(), None)])
        );
    }

    #[test]
    fn producer_ids_are_nonzero_and_distinct_within_a_process() {
        let ids: std::collections::HashSet<_> = (0..1000).map(|_| new_producer_id()).collect();
        assert_eq!(ids.len(), 1000);
        assert!(!ids.contains(&ProducerId(0)));
    }
}
