//! weir's server: a QUIC endpoint in front of the node's topics.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let mut config = weir_node::NodeConfig::new("/var/lib/weir");
//! config.listen = "127.0.0.1:7070".parse()?;
//! let node = weir_node::Node::start(config).await?;
//! println!("serving on {}, CA at {}", node.local_addr(), node.certs().ca_cert.display());
//! node.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! Layout: [`server`] moves frames between QUIC streams and topics; `topics` is the registry
//! (create, delete, list); `topic` owns one log and its group-commit writer thread. Only this
//! crate and `weir-client` know tokio and quinn.

pub mod catalog;
pub mod certs;
mod clock;
pub mod cluster;
pub mod config;
pub mod group;
pub mod group_store;
pub mod peer;
pub mod producers;
mod program;
pub mod server;
mod topic;

pub use config::{ConfigError, NodeConfig};
pub use weir_raft::NodeId;
pub use weir_storage::FsyncPolicy;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};
use tracing::Instrument;

/// How long shutdown waits for connections to close before giving up on them.
const SHUTDOWN_IDLE_WAIT_MS: u64 = 2_000;
/// How long a node alone waits at start for its groups to elect it.
const SINGLE_NODE_READY_WAIT_MS: u64 = 10_000;
/// A client that sends nothing (not even keep-alives) for this long is disconnected.
const IDLE_TIMEOUT_MS: u32 = 30_000;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("certificates: {0}")]
    Certs(#[from] certs::CertError),
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("cannot open the cluster state: {0}")]
    Cluster(#[from] cluster::ClusterError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Entry point: `Node::start(config)`.
#[derive(Debug)]
pub struct Node;

impl Node {
    /// Opens the data directory (recovering every topic's log), creates certificates in
    /// `certs_dir` if there are none, and starts serving. Must run inside a tokio runtime.
    pub async fn start(config: NodeConfig) -> Result<RunningNode, StartError> {
        config.validate()?;
        let certs_dir = config.certs_dir();
        let cert_paths = certs::paths(&certs_dir);
        if !cert_paths.ca_cert.exists() {
            tracing::warn!(dir = %certs_dir.display(), "no certificates found: creating a new cluster CA (clients need its ca.crt)");
            certs::init(&certs_dir, &[])?;
        } else if !cert_paths.node_files_exist() {
            return Err(StartError::Tls(format!(
                "{} has a CA but no node.crt/node.key",
                certs_dir.display()
            )));
        }
        let server_config = server_config(&cert_paths)?;

        let bind_error = |source| StartError::Bind {
            addr: config.listen,
            source,
        };
        let socket = std::net::UdpSocket::bind(config.listen).map_err(bind_error)?;
        let endpoint = quinn::Endpoint::new(
            endpoint_config(&cert_paths)?,
            Some(server_config),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(bind_error)?;
        let local_addr = endpoint.local_addr().map_err(bind_error)?;
        let other_peers = config.other_peers();
        let (peers, inbound) = if other_peers.is_empty() && !config.join {
            (None, None)
        } else {
            let tls = peer::PeerTls::from_cert_paths(&cert_paths)
                .map_err(|e| StartError::Tls(format!("peer TLS: {e}")))?;
            let mut peer_config = peer::PeerConfig::new(config.node_id, other_peers.clone());
            peer_config.cluster_id = config.cluster_id.clone();
            let (net, inbound) = peer::PeerNet::start(endpoint.clone(), peer_config, tls)
                .map_err(|e| StartError::Tls(format!("peer transport: {e}")))?;
            tracing::info!(node_id = %config.node_id, peers = other_peers.len(), "peer transport started");
            (Some(net), Some(inbound))
        };
        let open_config = config.clone();
        let open_peers = peers.clone();
        let cluster = tokio::task::spawn_blocking(move || {
            cluster::Cluster::open(&open_config, local_addr, open_peers)
        })
        .await
        .map_err(|e| StartError::Tls(format!("cluster opening task failed: {e}")))??;
        if let Some(inbound) = inbound {
            tokio::spawn(route_peer_messages(inbound, Arc::downgrade(&cluster)));
        } else {
            // A node alone elects itself within one election timeout; wait for that so its
            // first answers are not `NotLeader`.
            let waiting = cluster.clone();
            let ready = tokio::task::spawn_blocking(move || {
                waiting.wait_for_leaders(Duration::from_millis(SINGLE_NODE_READY_WAIT_MS))
            })
            .await
            .unwrap_or(false);
            if !ready {
                tracing::warn!("not every group elected itself in time; serving anyway");
            }
        }
        let maintenance = tokio::spawn(maintain(Arc::downgrade(&cluster)));
        let ctx = Arc::new(server::Ctx {
            cluster: cluster.clone(),
            started: Instant::now(),
            fsync: config.fsync.to_string(),
            max_message_bytes: config.max_message_bytes,
            max_key_bytes: config.max_key_bytes,
            connections: AtomicUsize::new(0),
            node_id: config.node_id,
            peer_addrs: other_peers,
            peers: peers.clone(),
        });
        let span = tracing::info_span!("node", id = %config.node_id, addr = %local_addr);
        let accept = tokio::spawn(server::accept_loop(endpoint.clone(), ctx).instrument(span));
        tracing::info!(addr = %local_addr, data_dir = %config.data_dir.display(), fsync = %config.fsync, "weir node serving");
        Ok(RunningNode {
            endpoint,
            peers,
            cluster,
            accept,
            maintenance,
            certs: cert_paths,
            local_addr,
        })
    }
}

/// A node that is serving. Dropping it without [`RunningNode::shutdown`] stops accepting but
/// does not wait for the topics' final sync.
#[derive(Debug)]
pub struct RunningNode {
    endpoint: quinn::Endpoint,
    peers: Option<peer::PeerNet>,
    cluster: Arc<cluster::Cluster>,
    accept: tokio::task::JoinHandle<()>,
    maintenance: tokio::task::JoinHandle<()>,
    certs: certs::CertPaths,
    local_addr: SocketAddr,
}

impl RunningNode {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn certs(&self) -> &certs::CertPaths {
        &self.certs
    }

    /// Closes every connection, lets each topic commit what it has queued, syncs, and returns.
    pub async fn shutdown(self) {
        if let Some(peers) = &self.peers {
            peers.shutdown();
        }
        self.endpoint.close(0u32.into(), b"node shutting down");
        self.accept.abort();
        self.maintenance.abort();
        let cluster = self.cluster.clone();
        let _ = tokio::task::spawn_blocking(move || cluster.shutdown()).await;
        let _ = tokio::time::timeout(
            Duration::from_millis(SHUTDOWN_IDLE_WAIT_MS),
            self.endpoint.wait_idle(),
        )
        .await;
        tracing::info!("weir node stopped");
    }
}

/// Hands every message from the peer transport to its Raft group.
async fn route_peer_messages(
    mut inbound: tokio::sync::mpsc::Receiver<(peer::GroupId, weir_raft::Envelope)>,
    cluster: std::sync::Weak<cluster::Cluster>,
) {
    while let Some((group, envelope)) = inbound.recv().await {
        let Some(cluster) = cluster.upgrade() else {
            return;
        };
        cluster.deliver(group, envelope);
    }
}

/// Runs the cluster's maintenance tick until the node stops.
async fn maintain(cluster: std::sync::Weak<cluster::Cluster>) {
    let mut tick = tokio::time::interval(Duration::from_millis(cluster::MAINTENANCE_INTERVAL_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(cluster) = cluster.upgrade() else {
            return;
        };
        // Status reads and channel sends only: cheap enough for the runtime thread.
        cluster.maintain();
    }
}

/// Labels that separate the endpoint's keys from any other use of the node key.
const RESET_KEY_LABEL: &[u8] = b"weir/1 QUIC stateless reset key";
const CID_KEY_LABEL: &[u8] = b"weir/1 QUIC connection id key";

/// The endpoint config, with a stateless-reset key and connection-id key that survive restarts.
///
/// Why: quinn's default keys are random per process. After a `kill -9` and a restart, packets
/// on a peer's (or client's) old connection reach a node that has forgotten it. With the same
/// CID key it recognizes the connection ids as its own (quinn drops packets whose id it did not
/// sign), and with the same reset key it answers with a stateless reset the peer can verify, so
/// the peer drops the dead connection at once and redials instead of waiting out the idle
/// timeout (seconds of failover). Both keys are derived from the node's private key, which is
/// secret and stable, so an off-path attacker can no more forge resets than with random keys.
fn endpoint_config(paths: &certs::CertPaths) -> Result<quinn::EndpointConfig, StartError> {
    use ring::hmac;
    let secret = std::fs::read(&paths.node_key).map_err(|source| certs::CertError::Io {
        path: paths.node_key.clone(),
        source,
    })?;
    let master = hmac::Key::new(hmac::HMAC_SHA256, &secret);
    let reset_key = hmac::Key::new(
        hmac::HMAC_SHA256,
        hmac::sign(&master, RESET_KEY_LABEL).as_ref(),
    );
    let cid_tag = hmac::sign(&master, CID_KEY_LABEL);
    let mut cid_key = [0u8; 8];
    cid_key.copy_from_slice(&cid_tag.as_ref()[..8]);
    let cid_key = u64::from_le_bytes(cid_key);
    let mut config = quinn::EndpointConfig::new(Arc::new(reset_key));
    config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    Ok(config)
}

/// The QUIC server config of the node's endpoint: TLS 1.3, the node certificate, ALPN `weir/1`
/// (clients) and `weir-peer/1` (other nodes). Client certificates are optional and, when
/// presented, must chain to the cluster CA; peer connections must present a node certificate.
pub fn server_config(paths: &certs::CertPaths) -> Result<quinn::ServerConfig, StartError> {
    let chain = certs::load_certs(&paths.node_cert)?;
    let key = certs::load_key(&paths.node_key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client_verifier = peer::client_cert_verifier(&paths.ca_cert, provider.clone())
        .map_err(|e| StartError::Tls(e.to_string()))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| StartError::Tls(e.to_string()))?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(chain, key)
        .map_err(|e| StartError::Tls(e.to_string()))?;
    tls.alpn_protocols = vec![weir_proto::ALPN.to_vec(), peer::PEER_ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| StartError::Tls(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(server::STREAMS_PER_CONNECTION_MAX.into())
        .max_concurrent_uni_streams(0u32.into())
        .max_idle_timeout(Some(quinn::VarInt::from_u32(IDLE_TIMEOUT_MS).into()));
    server.transport_config(Arc::new(transport));
    Ok(server)
}
