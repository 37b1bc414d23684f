//! Node-to-node transport: one QUIC connection per node pair carries every Raft group's messages.
//! See docs/PROTOCOL.md, "Node-to-node".
//!
//! - **Endpoint and TLS.** Peers use the client endpoint with ALPN [`PEER_ALPN`] and mutual TLS:
//!   the dialer presents its node certificate and checks the acceptor's against the cluster CA
//!   (a client certificate is not valid for server authentication, so it cannot pose as a node);
//!   the acceptor's TLS layer checks client certificates against the CA when one is presented,
//!   and [`PeerNet::handle_incoming`] closes a `weir-peer/1` connection at once unless it carries
//!   a node certificate (one valid for server authentication, which client certificates are not).
//! - **Who dials.** The node with the lower id dials, the higher one accepts: there is never a
//!   second connection racing the first. The dialer redials with capped exponential backoff.
//!   A hello on the connection's single bidirectional stream names both ends; the acceptor
//!   refuses ids outside its peer list, and both refuse a different cluster id.
//! - **Sending.** [`PeerNet::send`] never blocks: it appends to the peer's bounded queue, or drops
//!   the message (the newest) when the queue is full, counting it; Raft tolerates loss. A writer
//!   per connection takes everything queued (up to [`PEER_FRAME_BYTES_TARGET`]) and writes it as
//!   one frame with one `write_all`, messages grouped by Raft group.
//! - **Dynamic peer set.** The peer list given to [`PeerNet::start`] is only the first one:
//!   [`PeerNet::add_peer`] and [`PeerNet::remove_peer`] change it at run time, and
//!   [`PeerNet::peers`] reads it. An added peer is treated exactly like a listed one (dialed if
//!   its id is higher, its hello accepted if lower). A removed peer's connection is closed with
//!   [`CLOSE_NORMAL`] and a reason, its dialer stops, its queue is dropped, and its hello is
//!   refused like any unlisted node's. Re-adding an id starts afresh (new queue, counters from
//!   zero). Giving a known peer a new address makes the dialer drop its connection and dial the
//!   new address at once; an acceptor only records it (the peer's next connection replaces the
//!   old one).
//!
//! Heartbeat coalescing happens at this level only: the heartbeats of every group due on the same
//! tick go to each peer in one frame (one write, one QUIC packet when small), each still a full
//! `Envelope` of its group. One node-level heartbeat standing for every idle group (as
//! CockroachDB coalesces heartbeats) is a follow-up for the Raft driver, if idle-group traffic
//! shows up in profiles.

use crate::certs::{self, CertError, CertPaths};
use crate::server::{StreamEnd, read_frame};
use rustls_pki_types::{CertificateDer, UnixTime};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;
use tokio::sync::{Notify, mpsc, watch};
use tracing::Instrument;
use weir_proto::limits::{FRAME_BYTES_MAX, FRAME_OVERHEAD_BYTES_MAX};
use weir_proto::{FrameDecoder, encode_frame};
use weir_raft::{Envelope, Message, NodeId};

/// QUIC ALPN identifier of the node-to-node protocol (clients use `weir/1`).
pub const PEER_ALPN: &[u8] = b"weir-peer/1";
/// Most peers one node talks to.
pub const PEERS_MAX: usize = 1024;
/// Longest cluster id.
pub const CLUSTER_ID_BYTES_MAX: usize = 256;
/// Most messages queued for one peer; beyond it `send` drops the message.
pub const PEER_QUEUE_MESSAGES_MAX: usize = 65_536;
/// Most bytes (estimated) queued for one peer; beyond it `send` drops the message.
pub const PEER_QUEUE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// A frame stops taking queued messages at this many bytes (estimated); it always holds one.
pub const PEER_FRAME_BYTES_TARGET: usize = 1024 * 1024;
/// Largest single message (estimated bytes): it must fit in one frame. Larger ones are dropped.
pub const PEER_MESSAGE_BYTES_MAX: usize = FRAME_BYTES_MAX - FRAME_OVERHEAD_BYTES_MAX;
/// Received messages waiting for the caller; past it the connections stop being read and QUIC
/// flow control pushes back on the senders (whose queues then drop).
pub const PEER_INBOUND_MAX: usize = 65_536;
/// Bound on dialing plus the hello exchange, on either side.
pub const PEER_HANDSHAKE_TIMEOUT_MS: u64 = 5_000;
/// First redial delay after a failed attempt or a lost connection; doubles up to the max.
pub const PEER_REDIAL_BACKOFF_MIN_MS: u64 = 100;
/// Longest redial delay.
pub const PEER_REDIAL_BACKOFF_MAX_MS: u64 = 5_000;
/// The dialer sends QUIC keep-alives this often, so idle peer connections stay open.
const PEER_KEEP_ALIVE_MS: u64 = 1_000;
/// A peer connection that hears nothing (keep-alives included) for this long is lost.
const PEER_IDLE_TIMEOUT_MS: u32 = 10_000;
/// Estimated encoding of an envelope besides its entries and snapshot data.
const ENVELOPE_OVERHEAD_BYTES: usize = 64;
/// Estimated encoding of one entry besides its payload (term, index, tag, length varints).
const ENTRY_OVERHEAD_BYTES: usize = 40;

/// Close code: shutdown, peer removed or given a new address, or replaced by a newer connection
/// from the same node.
pub const CLOSE_NORMAL: u32 = 0;
/// Close code: refused at the handshake (certificate, hello); the reason says why.
pub const CLOSE_REFUSED: u32 = 1;
/// Close code: the peer broke the protocol after the handshake (bad frame, forged sender).
pub const CLOSE_PROTOCOL: u32 = 2;

/// A Raft group (one per topic, plus the metadata group).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct GroupId(pub u64);

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "g{}", self.0)
    }
}

/// Every frame of a peer connection, in both directions. The dialer's first frame is `Hello`,
/// the acceptor's first frame is its `Hello` answer; after that only `Messages`.
/// Compatibility: variants and fields are only ever appended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerFrame {
    Hello(PeerHello),
    Messages(Vec<GroupMessages>),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerHello {
    /// Both ends must have the same (or both none).
    pub cluster_id: Option<String>,
    pub node_id: NodeId,
}

/// Messages of one group, in the order they were sent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMessages {
    pub group: GroupId,
    pub envelopes: Vec<Envelope>,
}

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("certificates: {0}")]
    Certs(#[from] CertError),
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("peer configuration: {0}")]
    Config(String),
    #[error("the peer transport is shut down")]
    ShutDown,
}

/// Who this node is and whom it talks to.
#[derive(Clone, Debug)]
pub struct PeerConfig {
    pub node_id: NodeId,
    /// Every other node of the cluster (not this one) and its endpoint's address.
    pub peers: BTreeMap<NodeId, SocketAddr>,
    /// Sent in the hello; both ends must agree.
    pub cluster_id: Option<String>,
    /// Name the other nodes' certificates are checked against when dialing. `None`: the peer's
    /// IP address (node certificates carry `127.0.0.1`, `::1` and every `--host` of
    /// `certs init`). Default `localhost`, as for clients.
    pub server_name: Option<String>,
}

impl PeerConfig {
    pub fn new(node_id: NodeId, peers: BTreeMap<NodeId, SocketAddr>) -> Self {
        Self {
            node_id,
            peers,
            cluster_id: None,
            server_name: Some("localhost".to_owned()),
        }
    }

    fn validate(&self) -> Result<(), PeerError> {
        let bad = |m: String| Err(PeerError::Config(m));
        if self.peers.contains_key(&self.node_id) {
            return bad(format!("{} is in its own peer list", self.node_id));
        }
        if self.peers.len() > PEERS_MAX {
            return bad(format!(
                "{} peers exceed PEERS_MAX ({PEERS_MAX})",
                self.peers.len()
            ));
        }
        if self
            .cluster_id
            .as_ref()
            .is_some_and(|c| c.len() > CLUSTER_ID_BYTES_MAX)
        {
            return bad(format!(
                "cluster id longer than {CLUSTER_ID_BYTES_MAX} bytes"
            ));
        }
        if let Some(name) = &self.server_name
            && rustls_pki_types::ServerName::try_from(name.as_str()).is_err()
        {
            return bad(format!("{name:?} is not a valid server name"));
        }
        Ok(())
    }
}

/// The node's TLS material for peer connections: the client side of dialing (node certificate
/// presented, the other node's verified against the CA) and the CA to check accepted peers with.
#[derive(Clone)]
pub struct PeerTls {
    client: quinn::ClientConfig,
    roots: Arc<rustls::RootCertStore>,
    algs: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerTls")
            .field("roots", &self.roots.len())
            .finish_non_exhaustive()
    }
}

impl PeerTls {
    /// From a certificate directory: `ca.crt`, `node.crt`, `node.key`.
    pub fn from_cert_paths(paths: &CertPaths) -> Result<Self, PeerError> {
        let tls_err = |e: &dyn fmt::Display| PeerError::Tls(e.to_string());
        let roots = Arc::new(load_roots(&paths.ca_cert)?);
        let chain = certs::load_certs(&paths.node_cert)?;
        let key = certs::load_key(&paths.node_key)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let algs = provider.signature_verification_algorithms;
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| tls_err(&e))?
            .with_root_certificates(roots.clone())
            .with_client_auth_cert(chain, key)
            .map_err(|e| tls_err(&e))?;
        tls.alpn_protocols = vec![PEER_ALPN.to_vec()];
        let quic =
            quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| tls_err(&e))?;
        let mut client = quinn::ClientConfig::new(Arc::new(quic));
        let mut transport = quinn::TransportConfig::default();
        transport
            .keep_alive_interval(Some(Duration::from_millis(PEER_KEEP_ALIVE_MS)))
            .max_idle_timeout(Some(quinn::VarInt::from_u32(PEER_IDLE_TIMEOUT_MS).into()))
            // The acceptor never opens streams.
            .max_concurrent_bidi_streams(0u32.into())
            .max_concurrent_uni_streams(0u32.into());
        client.transport_config(Arc::new(transport));
        Ok(Self {
            client,
            roots,
            algs,
        })
    }

    /// Accepts only a node certificate of the cluster CA: one that chains to the CA and is valid
    /// for server authentication. Client certificates ("weir client") carry client
    /// authentication only, so they fail here even though the TLS layer let them in.
    fn check_node_cert(&self, conn: &quinn::Connection) -> Result<(), String> {
        let certs = conn
            .peer_identity()
            .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok())
            .ok_or(
                "no certificate presented: weir-peer/1 needs a node certificate of the cluster CA",
            )?;
        let (end_entity, intermediates) = certs.split_first().ok_or(
            "empty certificate chain: weir-peer/1 needs a node certificate of the cluster CA",
        )?;
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)
            .map_err(|e| format!("unreadable certificate: {e}"))?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            UnixTime::now(),
            self.algs.all,
        )
        .map_err(|e| {
            format!(
                "not a node certificate of the cluster CA ({e}): weir-peer/1 needs one (client certificates are refused)"
            )
        })
    }
}

/// Reads a PEM file of CA certificates into a root store.
fn load_roots(path: &Path) -> Result<rustls::RootCertStore, PeerError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs::load_certs(path)? {
        roots.add(cert).map_err(|e| {
            PeerError::Tls(format!("bad CA certificate in {}: {e}", path.display()))
        })?;
    }
    Ok(roots)
}

/// The node's client-certificate verifier: certificates must chain to the cluster CA, but a
/// client may present none (clients on `weir/1` need not; `weir-peer/1` connections without a
/// node certificate are closed by [`PeerNet::handle_incoming`]).
pub(crate) fn client_cert_verifier(
    ca_cert: &Path,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, PeerError> {
    let roots = Arc::new(load_roots(ca_cert)?);
    rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider)
        .allow_unauthenticated()
        .build()
        .map_err(|e| PeerError::Tls(e.to_string()))
}

/// The application protocol a connection negotiated.
pub(crate) fn negotiated_alpn(conn: &quinn::Connection) -> Option<Vec<u8>> {
    conn.handshake_data()?
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .ok()?
        .protocol
}

/// Closes a connection at the handshake with a reason the other side can read.
pub(crate) fn refuse(conn: &quinn::Connection, reason: &str) {
    tracing::warn!(remote = %conn.remote_address(), reason, "refusing a peer connection");
    conn.close(CLOSE_REFUSED.into(), reason.as_bytes());
}

/// Counters and state of one peer, from [`PeerNet::stats`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerStats {
    pub connected: bool,
    /// Connections established with this peer so far (hello completed).
    pub connections: u64,
    /// Messages written to the peer's stream.
    pub sent: u64,
    /// Messages received from the peer and handed to the caller.
    pub received: u64,
    /// Messages dropped: queue full, too large, or lost in a failed write.
    pub dropped: u64,
    /// Frames written; each is one `write_all` and carries every message queued at the time.
    pub frames_sent: u64,
    pub frames_received: u64,
    /// Messages waiting in the queue.
    pub queued: usize,
    /// Why the last connection or dial attempt ended.
    pub last_error: Option<String>,
}

/// The node-to-node transport. Cheap to clone. Runs until [`PeerNet::shutdown`]: dropping every
/// handle without it leaves the dialing tasks running.
#[derive(Clone, Debug)]
pub struct PeerNet {
    inner: Arc<Inner>,
}

struct Inner {
    me: NodeId,
    cluster_id: Option<String>,
    server_name: Option<String>,
    endpoint: quinn::Endpoint,
    tls: PeerTls,
    /// The current peer set: [`PeerNet::add_peer`] and [`PeerNet::remove_peer`] change it, the
    /// acceptor checks hellos against it. Lock order: `peers` before `dialers`.
    peers: RwLock<BTreeMap<NodeId, Arc<Peer>>>,
    inbound: mpsc::Sender<(GroupId, Envelope)>,
    shutdown: watch::Sender<bool>,
    /// Dial tasks, aborted at shutdown. A removed peer's task ends by itself.
    dialers: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Where dial tasks run, so that `add_peer` works from any thread.
    runtime: tokio::runtime::Handle,
    span: tracing::Span,
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerNet")
            .field("me", &self.me)
            .field("peers", &read(&self.peers).keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

struct Peer {
    id: NodeId,
    /// The peer's address; `None` once removed. Its tasks watch it: a dialer drops its
    /// connection when it changes, every connection of the peer closes when it becomes `None`.
    target: watch::Sender<Option<SocketAddr>>,
    queue: Mutex<Queue>,
    /// Signalled when something is queued.
    wake: Notify,
    link: Mutex<Link>,
    sent: AtomicU64,
    received: AtomicU64,
    dropped: AtomicU64,
    frames_sent: AtomicU64,
    frames_received: AtomicU64,
}

#[derive(Default)]
struct Queue {
    items: VecDeque<Queued>,
    bytes: usize,
    /// Set when the peer is removed: nothing is queued any more.
    closed: bool,
}

struct Queued {
    group: GroupId,
    envelope: Envelope,
    bytes: usize,
}

#[derive(Default)]
struct Link {
    /// The live connection and its generation number.
    current: Option<(u64, quinn::Connection)>,
    connections: u64,
    last_error: Option<String>,
}

/// How a connection's run ended.
enum Ended {
    /// The connection is gone already (closed by the peer, timed out, reset).
    Lost(String),
    /// This side closes it with this code and reason.
    Close(u32, String),
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn read<T>(m: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(m: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|e| e.into_inner())
}

/// The connection's own close reason if it has one (it names the peer's reason), else `e`.
fn lost(conn: &quinn::Connection, e: &dyn fmt::Display) -> String {
    conn.close_reason()
        .map_or_else(|| e.to_string(), |c| c.to_string())
}

/// Estimated encoded size of an envelope, for the queue's and the frame's byte budgets.
fn envelope_bytes(envelope: &Envelope) -> usize {
    ENVELOPE_OVERHEAD_BYTES
        + match &envelope.message {
            Message::AppendEntries { entries, .. } => entries
                .iter()
                .map(|e| ENTRY_OVERHEAD_BYTES + e.payload.size_bytes())
                .sum(),
            Message::InstallSnapshot { snapshot, .. } => {
                let m = &snapshot.meta.membership;
                snapshot.data.len() + 16 * (m.voters.len() + m.learners.len())
            }
            _ => 0,
        }
}

impl Peer {
    fn new(id: NodeId, addr: SocketAddr) -> Self {
        Self {
            id,
            target: watch::Sender::new(Some(addr)),
            queue: Mutex::default(),
            wake: Notify::new(),
            link: Mutex::default(),
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            frames_sent: AtomicU64::new(0),
            frames_received: AtomicU64::new(0),
        }
    }

    fn count(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Resolves once `stop` holds for the peer's target (checked at once, then on every change).
    async fn until(&self, stop: impl FnMut(&Option<SocketAddr>) -> bool) {
        // The sender lives in `self`, so this only returns once `stop` held.
        let _ = self.target.subscribe().wait_for(stop).await;
    }

    /// Takes queued messages, oldest first, up to [`PEER_FRAME_BYTES_TARGET`] (at least one),
    /// grouped by group with each group's order kept.
    fn take_batch(&self) -> (usize, Vec<GroupMessages>) {
        let mut q = lock(&self.queue);
        let mut bytes = 0;
        let mut count = 0;
        let mut groups: Vec<GroupMessages> = Vec::new();
        let mut index: HashMap<GroupId, usize> = HashMap::new();
        while let Some(item) = q.items.pop_front() {
            if count > 0 && bytes + item.bytes > PEER_FRAME_BYTES_TARGET {
                q.items.push_front(item);
                break;
            }
            bytes += item.bytes;
            count += 1;
            let i = *index.entry(item.group).or_insert_with(|| {
                groups.push(GroupMessages {
                    group: item.group,
                    envelopes: Vec::new(),
                });
                groups.len() - 1
            });
            groups[i].envelopes.push(item.envelope);
        }
        q.bytes -= bytes;
        (count, groups)
    }

    /// Makes `conn` this peer's connection, closing the one it replaces. Returns its generation.
    fn attach(&self, conn: &quinn::Connection) -> u64 {
        let mut link = lock(&self.link);
        link.connections += 1;
        let generation = link.connections;
        if let Some((_, old)) = link.current.replace((generation, conn.clone())) {
            old.close(CLOSE_NORMAL.into(), b"replaced by a newer connection");
        }
        generation
    }

    fn detach(&self, generation: u64, reason: String) {
        let mut link = lock(&self.link);
        if link.current.as_ref().is_some_and(|(g, _)| *g == generation) {
            link.current = None;
        }
        link.last_error = Some(reason);
    }

    /// Records a failed dial attempt; true if the reason is new (worth a warning, not a repeat).
    fn dial_failed(&self, reason: String) -> bool {
        let mut link = lock(&self.link);
        let new = link.last_error.as_ref() != Some(&reason);
        link.last_error = Some(reason);
        new
    }

    /// Writes queued messages until the stream fails.
    async fn write_loop(&self, conn: &quinn::Connection, send: &mut quinn::SendStream) -> Ended {
        let mut buf = Vec::new();
        loop {
            let (count, groups) = self.take_batch();
            if count == 0 {
                self.wake.notified().await;
                continue;
            }
            buf.clear();
            if let Err(e) = encode_frame(&PeerFrame::Messages(groups), &mut buf) {
                // Only if the size estimate is far off: a bug, but not this connection's fault.
                tracing::error!(error = %e, messages = count, "cannot encode a peer frame; dropping its messages");
                Self::count(&self.dropped, count);
                continue;
            }
            if let Err(e) = send.write_all(&buf).await {
                Self::count(&self.dropped, count);
                return Ended::Lost(lost(conn, &e));
            }
            Self::count(&self.sent, count);
            Self::count(&self.frames_sent, 1);
        }
    }
}

impl PeerNet {
    /// Starts dialing every peer with a higher id than `config.node_id`. Connections from peers
    /// with lower ids come in through [`PeerNet::handle_incoming`], which the endpoint's accept
    /// loop calls for connections that negotiated [`PEER_ALPN`]. Received messages come out of
    /// the returned receiver; each envelope's `from` is the verified sending node and its `to`
    /// is this node. Must run inside a tokio runtime; the dial tasks, including those of peers
    /// added later, run on it.
    pub fn start(
        endpoint: quinn::Endpoint,
        config: PeerConfig,
        tls: PeerTls,
    ) -> Result<(PeerNet, mpsc::Receiver<(GroupId, Envelope)>), PeerError> {
        config.validate()?;
        let (inbound, rx) = mpsc::channel(PEER_INBOUND_MAX);
        let me = config.node_id;
        let inner = Arc::new(Inner {
            me,
            cluster_id: config.cluster_id,
            server_name: config.server_name,
            endpoint,
            tls,
            peers: RwLock::default(),
            inbound,
            shutdown: watch::channel(false).0,
            dialers: Mutex::default(),
            runtime: tokio::runtime::Handle::current(),
            span: tracing::info_span!("node", id = %me),
        });
        let net = PeerNet { inner };
        for (id, addr) in config.peers {
            net.add_peer(id, addr)?;
        }
        Ok((net, rx))
    }

    /// Starts talking to node `id` at `addr`, exactly as if it had been in the peer list given
    /// to [`PeerNet::start`]: dials it if its id is higher than this node's, accepts its hello if
    /// lower. Adding a known peer with its current address does nothing; with another address,
    /// it records it, and a dialer drops its connection and dials the new address at once.
    /// Refuses this node's own id, a new peer beyond [`PEERS_MAX`], and any call after
    /// [`PeerNet::shutdown`].
    pub fn add_peer(&self, id: NodeId, addr: SocketAddr) -> Result<(), PeerError> {
        let inner = &self.inner;
        if id == inner.me {
            return Err(PeerError::Config(format!("{id} cannot be its own peer")));
        }
        let mut peers = write(&inner.peers);
        // Checked under the dialers' lock, which `shutdown` takes after setting the flag: a dial
        // task pushed here is either aborted by it or never spawned.
        let mut dialers = lock(&inner.dialers);
        if inner.is_shut_down() {
            return Err(PeerError::ShutDown);
        }
        if let Some(peer) = peers.get(&id) {
            let moved = peer.target.send_if_modified(|target| {
                let moved = *target != Some(addr);
                *target = Some(addr);
                moved
            });
            if moved {
                tracing::info!(parent: &inner.span, peer = %id, %addr, "peer address changed");
            }
            return Ok(());
        }
        if peers.len() >= PEERS_MAX {
            return Err(PeerError::Config(format!(
                "cannot add {id}: {} peers already (PEERS_MAX)",
                peers.len()
            )));
        }
        let peer = Arc::new(Peer::new(id, addr));
        peers.insert(id, peer.clone());
        if inner.me < id {
            let span =
                tracing::info_span!(parent: &inner.span, "peer", %id, addr = tracing::field::Empty);
            dialers.retain(|task| !task.is_finished());
            dialers.push(
                inner
                    .runtime
                    .spawn(inner.clone().dial_loop(peer).instrument(span)),
            );
        }
        tracing::debug!(parent: &inner.span, peer = %id, %addr, "peer added");
        Ok(())
    }

    /// Stops talking to node `id`: closes its connection ([`CLOSE_NORMAL`], with a reason),
    /// stops dialing it and drops its queued messages (counted as dropped). From then on its
    /// hello is refused like any unlisted node's and `send` to it returns false. Does nothing
    /// if `id` is not a peer.
    pub fn remove_peer(&self, id: NodeId) {
        let Some(peer) = write(&self.inner.peers).remove(&id) else {
            return;
        };
        // Stops its dial task and the tasks of any connection, even one being set up now.
        peer.target.send_replace(None);
        let dropped = {
            let mut q = lock(&peer.queue);
            q.closed = true;
            q.bytes = 0;
            std::mem::take(&mut q.items).len()
        };
        Peer::count(&peer.dropped, dropped);
        if let Some((_, conn)) = lock(&peer.link).current.take() {
            conn.close(CLOSE_NORMAL.into(), self.inner.removed(id).as_bytes());
        }
        tracing::info!(parent: &self.inner.span, peer = %id, dropped, "peer removed");
    }

    /// The current peer set and each peer's address.
    pub fn peers(&self) -> BTreeMap<NodeId, SocketAddr> {
        read(&self.inner.peers)
            .values()
            .filter_map(|p| Some((p.id, (*p.target.borrow())?)))
            .collect()
    }

    /// Queues `envelope` for `envelope.to`, to travel with everything else queued for that node.
    /// Never blocks. Returns false if the message was dropped: unknown destination, `from` not
    /// this node, larger than [`PEER_MESSAGE_BYTES_MAX`], or the peer's queue is full
    /// ([`PEER_QUEUE_MESSAGES_MAX`] / [`PEER_QUEUE_BYTES_MAX`]).
    pub fn send(&self, group: GroupId, envelope: Envelope) -> bool {
        let Some(peer) = read(&self.inner.peers).get(&envelope.to).cloned() else {
            tracing::debug!(to = %envelope.to, %group, "dropping a message to a node that is not a peer");
            return false;
        };
        if envelope.from != self.inner.me {
            tracing::warn!(from = %envelope.from, me = %self.inner.me, "dropping a message that claims another sender");
            Peer::count(&peer.dropped, 1);
            return false;
        }
        let bytes = envelope_bytes(&envelope);
        let queued = bytes <= PEER_MESSAGE_BYTES_MAX && {
            let mut q = lock(&peer.queue);
            // `closed`: removed since the lookup above.
            let fits = !q.closed
                && q.items.len() < PEER_QUEUE_MESSAGES_MAX
                && q.bytes + bytes <= PEER_QUEUE_BYTES_MAX;
            if fits {
                q.bytes += bytes;
                q.items.push_back(Queued {
                    group,
                    envelope,
                    bytes,
                });
            }
            fits
        };
        if queued {
            peer.wake.notify_one();
        } else {
            Peer::count(&peer.dropped, 1);
            tracing::debug!(to = %peer.id, %group, bytes, "peer queue full or message too large: dropped");
        }
        queued
    }

    /// Takes over a connection accepted on the node's endpoint that negotiated [`PEER_ALPN`]:
    /// checks the node certificate and the hello, then carries messages both ways until the
    /// connection ends. Anything wrong closes the connection at once with the reason.
    pub async fn handle_incoming(&self, conn: quinn::Connection) {
        let span =
            tracing::info_span!(parent: &self.inner.span, "peer", remote = %conn.remote_address());
        self.inner.clone().accept(conn).instrument(span).await;
    }

    /// Per peer: connection state and counters.
    pub fn stats(&self) -> BTreeMap<NodeId, PeerStats> {
        read(&self.inner.peers)
            .values()
            .map(|p| {
                let link = lock(&p.link);
                let stats = PeerStats {
                    connected: link.current.is_some(),
                    connections: link.connections,
                    sent: p.sent.load(Ordering::Relaxed),
                    received: p.received.load(Ordering::Relaxed),
                    dropped: p.dropped.load(Ordering::Relaxed),
                    frames_sent: p.frames_sent.load(Ordering::Relaxed),
                    frames_received: p.frames_received.load(Ordering::Relaxed),
                    queued: lock(&p.queue).items.len(),
                    last_error: link.last_error.clone(),
                };
                (p.id, stats)
            })
            .collect()
    }

    /// Stops dialing, closes every peer connection and refuses new ones (and new peers).
    /// Queued messages are dropped. The endpoint itself is the caller's.
    pub fn shutdown(&self) {
        self.inner.shutdown.send_replace(true);
        let dialers = std::mem::take(&mut *lock(&self.inner.dialers));
        for task in dialers {
            task.abort();
        }
        for peer in read(&self.inner.peers).values() {
            if let Some((_, conn)) = lock(&peer.link).current.take() {
                conn.close(CLOSE_NORMAL.into(), b"node shutting down");
            }
        }
    }
}

impl Inner {
    fn hello(&self) -> PeerFrame {
        PeerFrame::Hello(PeerHello {
            cluster_id: self.cluster_id.clone(),
            node_id: self.me,
        })
    }

    fn is_shut_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// The close reason of a removed peer's connection.
    fn removed(&self, id: NodeId) -> String {
        format!("{} removed {id} from its peers", self.me)
    }

    /// Why a connection of `peer` is given up when its target changes: removed, or moved.
    fn stop_reason(&self, peer: &Peer) -> String {
        match *peer.target.borrow() {
            None => self.removed(peer.id),
            Some(addr) => format!("{} now dials {} at {addr}", self.me, peer.id),
        }
    }

    /// Dials the peer's current address until shutdown or the peer's removal. An address change
    /// cuts short the attempt, the connection or the backoff, and the new address is dialed.
    async fn dial_loop(self: Arc<Self>, peer: Arc<Peer>) {
        let backoff_min = Duration::from_millis(PEER_REDIAL_BACKOFF_MIN_MS);
        let mut backoff = backoff_min;
        let handshake_timeout = Duration::from_millis(PEER_HANDSHAKE_TIMEOUT_MS);
        while !self.is_shut_down() {
            let Some(addr) = *peer.target.borrow() else {
                break;
            };
            tracing::Span::current().record("addr", tracing::field::display(addr));
            let moved = move |target: &Option<SocketAddr>| *target != Some(addr);
            // The connection while the hello is exchanged, to close with a reason if abandoned.
            let mut pending = None;
            let dialed = tokio::select! {
                dialed = tokio::time::timeout(handshake_timeout, self.dial(&peer, addr, &mut pending)) => dialed,
                () = peer.until(moved) => {
                    if let Some(conn) = pending {
                        conn.close(CLOSE_NORMAL.into(), self.stop_reason(&peer).as_bytes());
                    }
                    continue;
                }
            };
            match dialed {
                Ok(Ok((conn, send, recv, decoder))) => {
                    backoff = backoff_min;
                    self.run(&peer, conn, send, recv, decoder, Some(addr)).await;
                }
                Ok(Err(reason)) => self.dial_failed(&peer, reason),
                Err(_) => {
                    let reason =
                        format!("no connection and hello within {PEER_HANDSHAKE_TIMEOUT_MS} ms");
                    if let Some(conn) = pending {
                        conn.close(CLOSE_REFUSED.into(), reason.as_bytes());
                    }
                    self.dial_failed(&peer, reason);
                }
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = peer.until(moved) => {
                    backoff = backoff_min;
                    continue;
                }
            }
            backoff = (backoff * 2).min(Duration::from_millis(PEER_REDIAL_BACKOFF_MAX_MS));
        }
    }

    fn dial_failed(&self, peer: &Peer, reason: String) {
        if peer.dial_failed(reason.clone()) {
            tracing::warn!(%reason, "cannot connect to peer; redialing with backoff");
        } else {
            tracing::debug!(%reason, "cannot connect to peer");
        }
    }

    /// Connects to `addr`, sends the hello and checks the answer. The connection is put in
    /// `pending` as soon as it exists, for the caller to close if it gives up on the hello.
    async fn dial(
        &self,
        peer: &Peer,
        addr: SocketAddr,
        pending: &mut Option<quinn::Connection>,
    ) -> Result<
        (
            quinn::Connection,
            quinn::SendStream,
            quinn::RecvStream,
            FrameDecoder,
        ),
        String,
    > {
        let name = match &self.server_name {
            Some(name) => name.clone(),
            None => addr.ip().to_string(),
        };
        let conn = self
            .endpoint
            .connect_with(self.tls.client.clone(), addr, &name)
            .map_err(|e| format!("cannot connect: {e}"))?
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        *pending = Some(conn.clone());
        let (mut send, mut recv) = conn
            .open_bi()
            .await
            .map_err(|e| format!("cannot open the stream: {}", lost(&conn, &e)))?;
        write_frame(&mut send, &self.hello())
            .await
            .map_err(|e| format!("cannot send the hello: {}", lost(&conn, &e)))?;
        let mut decoder = FrameDecoder::new(FRAME_BYTES_MAX);
        let answer = match read_frame::<PeerFrame>(&mut recv, &mut decoder).await {
            Ok(Some(PeerFrame::Hello(hello))) => hello,
            Ok(Some(PeerFrame::Messages(_))) | Ok(None) => {
                let reason = "expected a hello answer".to_owned();
                conn.close(CLOSE_PROTOCOL.into(), reason.as_bytes());
                return Err(reason);
            }
            Err(StreamEnd::Frame(e)) => {
                let reason = format!("bad hello answer: {e}");
                conn.close(CLOSE_PROTOCOL.into(), reason.as_bytes());
                return Err(reason);
            }
            // A refusal lands here: the connection's close reason says why.
            Err(StreamEnd::Read(e)) => return Err(format!("refused: {}", lost(&conn, &e))),
        };
        let mismatch = if answer.node_id != peer.id {
            Some(format!(
                "expected {} at {addr}, {} answered",
                peer.id, answer.node_id
            ))
        } else if answer.cluster_id != self.cluster_id {
            Some(format!(
                "cluster id {:?} does not match this node's {:?}",
                answer.cluster_id, self.cluster_id
            ))
        } else {
            None
        };
        if let Some(reason) = mismatch {
            conn.close(CLOSE_REFUSED.into(), reason.as_bytes());
            return Err(reason);
        }
        Ok((conn, send, recv, decoder))
    }

    async fn accept(self: Arc<Self>, conn: quinn::Connection) {
        let handshake_timeout = Duration::from_millis(PEER_HANDSHAKE_TIMEOUT_MS);
        match tokio::time::timeout(handshake_timeout, self.accept_hello(&conn)).await {
            Ok(Ok((peer, send, recv, decoder))) => {
                self.run(&peer, conn, send, recv, decoder, None).await;
            }
            Ok(Err(reason)) => refuse(&conn, &reason),
            Err(_) => refuse(
                &conn,
                &format!("no hello within {PEER_HANDSHAKE_TIMEOUT_MS} ms"),
            ),
        }
    }

    /// Checks the certificate and the dialer's hello, and answers it.
    async fn accept_hello(
        &self,
        conn: &quinn::Connection,
    ) -> Result<
        (
            Arc<Peer>,
            quinn::SendStream,
            quinn::RecvStream,
            FrameDecoder,
        ),
        String,
    > {
        if self.is_shut_down() {
            return Err("node shutting down".into());
        }
        if negotiated_alpn(conn).as_deref() != Some(PEER_ALPN) {
            return Err("this endpoint takes only weir-peer/1 connections here".into());
        }
        self.tls.check_node_cert(conn)?;
        let (mut send, mut recv) = conn
            .accept_bi()
            .await
            .map_err(|e| format!("no stream: {e}"))?;
        let mut decoder = FrameDecoder::new(FRAME_BYTES_MAX);
        let hello = match read_frame::<PeerFrame>(&mut recv, &mut decoder).await {
            Ok(Some(PeerFrame::Hello(hello))) => hello,
            Ok(Some(PeerFrame::Messages(_))) | Ok(None) => {
                return Err("the first frame must be a hello".into());
            }
            Err(StreamEnd::Frame(e)) => return Err(format!("bad hello: {e}")),
            Err(StreamEnd::Read(e)) => return Err(format!("no hello: {e}")),
        };
        if hello.cluster_id != self.cluster_id {
            return Err(format!(
                "cluster id {:?} does not match this node's {:?}",
                hello.cluster_id, self.cluster_id
            ));
        }
        // Cloned out of the lock; if the peer is removed from here on, `run` closes the connection.
        let Some(peer) = read(&self.peers).get(&hello.node_id).cloned() else {
            return Err(format!(
                "{} is not in the peer list of {}",
                hello.node_id, self.me
            ));
        };
        if peer.id > self.me {
            return Err(format!(
                "{} dials {}, not the other way round (the lower id dials)",
                self.me, peer.id
            ));
        }
        write_frame(&mut send, &self.hello())
            .await
            .map_err(|e| format!("cannot answer the hello: {e}"))?;
        Ok((peer, send, recv, decoder))
    }

    /// Carries messages both ways on an established connection until it ends, the node shuts
    /// down, the peer is removed, or (`dialed`: the address this side dialed) its address changes.
    async fn run(
        &self,
        peer: &Peer,
        conn: quinn::Connection,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
        mut decoder: FrameDecoder,
        dialed: Option<SocketAddr>,
    ) {
        let generation = peer.attach(&conn);
        tracing::info!(peer = %peer.id, remote = %conn.remote_address(), "peer connected");
        let mut shutdown = self.shutdown.subscribe();
        // Checked at once too: the peer may have been removed or moved while this connection
        // was being set up, after `remove_peer` closed the one attached then.
        let stale = |target: &Option<SocketAddr>| {
            target.is_none() || dialed.is_some_and(|addr| *target != Some(addr))
        };
        // Stop conditions first: nothing more is written to a connection being given up.
        let ended = tokio::select! {
            biased;
            _ = shutdown.wait_for(|down| *down) => Ended::Close(CLOSE_NORMAL, "node shutting down".into()),
            () = peer.until(stale) => Ended::Close(CLOSE_NORMAL, self.stop_reason(peer)),
            ended = peer.write_loop(&conn, &mut send) => ended,
            ended = self.read_loop(peer, &conn, &mut recv, &mut decoder) => ended,
        };
        let reason = match ended {
            Ended::Lost(reason) => reason,
            Ended::Close(code, reason) => {
                conn.close(code.into(), reason.as_bytes());
                reason
            }
        };
        tracing::info!(peer = %peer.id, %reason, "peer disconnected");
        peer.detach(generation, reason);
    }

    /// Hands received messages to the caller, checking that each comes from this peer and is for
    /// this node.
    async fn read_loop(
        &self,
        peer: &Peer,
        conn: &quinn::Connection,
        recv: &mut quinn::RecvStream,
        decoder: &mut FrameDecoder,
    ) -> Ended {
        loop {
            let groups = match read_frame::<PeerFrame>(recv, decoder).await {
                Ok(Some(PeerFrame::Messages(groups))) => groups,
                Ok(Some(PeerFrame::Hello(_))) => {
                    return Ended::Close(CLOSE_PROTOCOL, "hello after the handshake".into());
                }
                Ok(None) => return Ended::Lost("the peer finished its stream".into()),
                Err(StreamEnd::Frame(e)) => return Ended::Close(CLOSE_PROTOCOL, e.to_string()),
                Err(StreamEnd::Read(e)) => return Ended::Lost(lost(conn, &e)),
            };
            let forged = groups
                .iter()
                .flat_map(|g| &g.envelopes)
                .find(|e| e.from != peer.id || e.to != self.me);
            if let Some(e) = forged {
                return Ended::Close(
                    CLOSE_PROTOCOL,
                    format!(
                        "envelope from {} to {} on the connection between {} and {}",
                        e.from, e.to, peer.id, self.me
                    ),
                );
            }
            Peer::count(&peer.frames_received, 1);
            for GroupMessages { group, envelopes } in groups {
                for envelope in envelopes {
                    if self.inbound.send((group, envelope)).await.is_err() {
                        return Ended::Close(CLOSE_NORMAL, "node stopped receiving".into());
                    }
                    Peer::count(&peer.received, 1);
                }
            }
        }
    }
}

async fn write_frame(send: &mut quinn::SendStream, frame: &PeerFrame) -> Result<(), String> {
    let mut buf = Vec::new();
    encode_frame(frame, &mut buf).map_err(|e| e.to_string())?;
    send.write_all(&buf).await.map_err(|e| e.to_string())
}
