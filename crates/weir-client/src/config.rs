//! [`ClientConfig`], [`ReconnectPolicy`], [`LeaderRetryPolicy`] and the TLS setup built from
//! them.

use crate::ClientError;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Where the nodes are and how to talk to them.
///
/// ```
/// use std::time::Duration;
/// use weir_client::ClientConfig;
///
/// let mut config = ClientConfig::new(
///     "127.0.0.1:7070".parse().unwrap(),
///     "weir-data/certs/ca.crt",
/// );
/// config.request_timeout = Duration::from_secs(10);
/// assert_eq!(config.server_name, "localhost");
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ClientConfig {
    /// Seed node addresses, tried in order until one accepts. The client learns the other
    /// members of the cluster (and which node leads each topic) from the nodes themselves and
    /// connects to them as needed; the seeds are where it starts and what it falls back to.
    pub addrs: Vec<SocketAddr>,
    /// PEM file with the cluster CA certificate(s) the node's certificate must chain to.
    pub ca_cert: PathBuf,
    /// Name the node's certificate must be valid for. Node certificates always carry
    /// `localhost`, `127.0.0.1` and `::1`, plus the hosts given to `weir certs init`. Default
    /// `localhost`.
    pub server_name: String,
    /// Client certificate and key (PEM) to present, for nodes that require them. Default none.
    pub client_auth: Option<ClientAuth>,
    /// Bound on one connection attempt (QUIC + TLS handshake and protocol hello) per address.
    /// Default 5 s.
    ///
    /// A dead address is only found out by this timeout (QUIC over UDP gets no refusal), so
    /// requests do not sit out the whole of it while another node is known: see
    /// [`ClientConfig::connect_patience`].
    pub connect_timeout: Duration,
    /// How long a request waits for a new connection to the node it is routed to (the leader it
    /// was told of, or the next address when looking for any node) before it goes to another
    /// node instead, when another node is known. The connection attempt itself goes on in the
    /// background up to [`ClientConfig::connect_timeout`], so a slow but live node is still
    /// reached (the other node names it again). A node whose connection was lost or could not
    /// be made is passed over for about a second, as long as another node can be tried; with no
    /// other node known, requests wait for the whole connection attempt. Default 500 ms.
    pub connect_patience: Duration,
    /// Bound on waiting for the reply to one request. Default 30 s.
    pub request_timeout: Duration,
    /// Most requests outstanding on the connection at once, across all tasks and producers.
    /// Callers wait for a slot beyond this. Default 4096.
    pub max_in_flight: usize,
    /// QUIC keep-alive interval: how often the client makes a quiet connection carry a packet,
    /// which keeps it open and lets [`ClientConfig::idle_timeout`] notice a dead node. Default
    /// 500 ms: a few dozen bytes each way per interval and connection.
    pub keep_alive_interval: Duration,
    /// A connection that hears nothing from the node for this long is considered lost: the
    /// requests outstanding on it fail with [`crate::ClientError::ConnectionLost`] and
    /// listeners on it reconnect elsewhere. Default 3 s (the node's own setting applies if it
    /// is lower).
    ///
    /// The trade-off: this is how long a node that died without closing its connections (a
    /// crash, a lost host, a partition) can hold up requests, so shorter fails over faster;
    /// but a live node that cannot get a packet through for this long (heavy loss or
    /// congestion, a stalled process) loses its connections, and PUTs in flight on them end
    /// with an unknown outcome. Keep it several times [`ClientConfig::keep_alive_interval`].
    /// A dead topic leader is usually noticed sooner, by [`ClientConfig::leader_check_after`].
    pub idle_timeout: Duration,
    /// When the oldest PUT outstanding on a node's connection has waited this long, the client
    /// checks that node. It first asks the node itself who leads, on that connection: if the
    /// node neither answers nor acknowledges anything within a quarter of this (at least
    /// three round trips), the connection is dead (the node crashed, restarted, or cannot be
    /// reached). If it is alive, the other nodes are asked (`Cluster` requests, one after the
    /// other) who leads the topics of the waiting PUTs: when none of the replicas that answer
    /// names the node, and the node does not name another leader itself (a leader that handed
    /// over decides the PUTs it holds as soon as it catches up), it is a deposed leader cut
    /// off from the others. In both cases its connection is closed, the requests outstanding
    /// on it fail with [`crate::ClientError::ConnectionLost`] (their outcome is unknown: they
    /// are not resent), it is dropped from the routes and passed over for about a second, and
    /// the other nodes are asked again every 50 ms (for a few seconds at most) until they
    /// name the new leaders, to which the requests waiting for a leader then go at once.
    /// Otherwise nothing is done, and the check is repeated every half of this while PUTs
    /// keep waiting: one check at a time per connection, none while no PUT waits that long.
    ///
    /// Only PUTs count: administration requests may take long legitimately. A slow but live
    /// leader costs only these checks (a few small requests each). A crashed leader is given
    /// up about this plus a quarter of it after its last answer; lower values fail over sooner
    /// but check more often when PUTs are merely slow. `None` turns the check off (dead nodes
    /// are then found by [`ClientConfig::idle_timeout`] only). Default `Some(750 ms)`.
    pub leader_check_after: Option<Duration>,
    /// How listeners reconnect after losing their connection ([`ReconnectPolicy::default`]).
    pub reconnect: ReconnectPolicy,
    /// How requests that must reach a leader (PUTs, topic and cluster administration) are
    /// redirected and retried while the leader moves or is being elected
    /// ([`LeaderRetryPolicy::default`]).
    pub leader_retry: LeaderRetryPolicy,
    /// Sent to the node in the protocol hello (shows up in the node's logs). Default
    /// `weir-client/<version>`.
    pub client_name: String,
}

/// A client certificate and its private key, both PEM files.
#[derive(Clone, Debug)]
pub struct ClientAuth {
    /// The client certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
}

impl ClientConfig {
    /// One node address and the cluster CA certificate file; everything else at its default.
    pub fn new(addr: SocketAddr, ca_cert: impl Into<PathBuf>) -> Self {
        Self::with_addrs(vec![addr], ca_cert)
    }

    /// Several node addresses (tried in order) and the cluster CA certificate file.
    pub fn with_addrs(addrs: Vec<SocketAddr>, ca_cert: impl Into<PathBuf>) -> Self {
        Self {
            addrs,
            ca_cert: ca_cert.into(),
            server_name: "localhost".to_owned(),
            client_auth: None,
            connect_timeout: Duration::from_secs(5),
            connect_patience: Duration::from_millis(500),
            request_timeout: Duration::from_secs(30),
            max_in_flight: 4096,
            keep_alive_interval: Duration::from_millis(500),
            idle_timeout: Duration::from_secs(3),
            leader_check_after: Some(Duration::from_millis(750)),
            reconnect: ReconnectPolicy::default(),
            leader_retry: LeaderRetryPolicy::default(),
            client_name: format!("weir-client/{}", env!("CARGO_PKG_VERSION")),
        }
    }

    /// Resolves a cluster spec `host:port[,host:port...]` (DNS names allowed, IPv6 as
    /// `[::1]:7070`) and builds a config from it.
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), weir_client::ClientError> {
    /// let config = weir_client::ClientConfig::from_cluster(
    ///     "node1.example:7070,node2.example:7070",
    ///     "ca.crt",
    /// ).await?;
    /// # Ok(()) }
    /// ```
    pub async fn from_cluster(
        cluster: &str,
        ca_cert: impl Into<PathBuf>,
    ) -> Result<Self, ClientError> {
        Ok(Self::with_addrs(resolve_cluster(cluster).await?, ca_cert))
    }

    /// Checks the settings that do not need the network.
    pub(crate) fn validate(&self) -> Result<(), ClientError> {
        if self.addrs.is_empty() {
            return Err(ClientError::Config("no node address given".into()));
        }
        if rustls_pki_types::ServerName::try_from(self.server_name.as_str()).is_err() {
            return Err(ClientError::Config(format!(
                "server name {:?} is not a valid DNS name or IP address",
                self.server_name
            )));
        }
        if self.max_in_flight == 0 {
            return Err(ClientError::Config(
                "max_in_flight must be at least 1".into(),
            ));
        }
        if self.leader_check_after.is_some_and(|d| d.is_zero()) {
            return Err(ClientError::Config(
                "leader_check_after must be above zero (None turns the check off)".into(),
            ));
        }
        Ok(())
    }
}

/// Resolves `host:port[,host:port...]` into socket addresses, keeping the order given (all
/// addresses of the first host first). Empty entries are skipped.
pub async fn resolve_cluster(cluster: &str) -> Result<Vec<SocketAddr>, ClientError> {
    let mut addrs = Vec::new();
    for part in cluster.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Ok(addr) = part.parse::<SocketAddr>() {
            addrs.push(addr);
            continue;
        }
        if !has_port(part) {
            return Err(ClientError::Config(format!(
                "{part:?} is not host:port (example: 127.0.0.1:7070)"
            )));
        }
        let resolved = tokio::net::lookup_host(part)
            .await
            .map_err(|e| ClientError::Config(format!("cannot resolve {part:?}: {e}")))?;
        let before = addrs.len();
        addrs.extend(resolved);
        if addrs.len() == before {
            return Err(ClientError::Config(format!(
                "{part:?} resolved to no address"
            )));
        }
    }
    if addrs.is_empty() {
        return Err(ClientError::Config(format!(
            "no node address in {cluster:?} (expected host:port[,host:port])"
        )));
    }
    Ok(addrs)
}

fn has_port(part: &str) -> bool {
    part.rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
}

/// How a listener reconnects after it lost its stream: exponential backoff from
/// `initial_backoff`, doubling up to `max_backoff`, giving up after `max_attempts` consecutive
/// failed attempts or once `max_elapsed` has passed since the first of them (whichever comes
/// first; `None` means no such limit).
///
/// ```
/// use std::time::Duration;
/// use weir_client::ReconnectPolicy;
///
/// let policy = ReconnectPolicy::default();
/// assert_eq!(policy.backoff(1), policy.initial_backoff);
/// assert!(policy.backoff(100) <= policy.max_backoff);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReconnectPolicy {
    /// Wait before the first reconnect attempt.
    pub initial_backoff: Duration,
    /// Longest wait between two attempts.
    pub max_backoff: Duration,
    /// Give up after this many consecutive failed attempts.
    pub max_attempts: Option<u32>,
    /// Give up once this much time has passed since the first failed attempt.
    pub max_elapsed: Option<Duration>,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
            max_attempts: None,
            max_elapsed: Some(Duration::from_secs(300)),
        }
    }
}

impl ReconnectPolicy {
    /// The wait before attempt number `attempt` (1-based).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(31);
        self.initial_backoff
            .saturating_mul(1u32 << doublings)
            .min(self.max_backoff)
    }

    /// Whether to give up after `attempts` consecutive failures spanning `elapsed`.
    pub fn exhausted(&self, attempts: u32, elapsed: Duration) -> bool {
        self.max_attempts.is_some_and(|max| attempts > max)
            || self.max_elapsed.is_some_and(|max| elapsed >= max)
    }
}

/// How a request that must reach a leader is retried when a node answers "not leader".
///
/// A node that knows the leader names it in its answer and the request is resent there at once
/// (the first [`LeaderRetryPolicy::IMMEDIATE_HOPS`] redirections in a row; later ones wait like
/// the rest). A node that does not know it (an election is in progress) makes the client wait
/// — exponential backoff from `initial_backoff`, doubling up to `max_backoff` — and then ask the
/// cluster for its current layout before resending. Retrying stops when a wait is due once
/// `max_elapsed` has passed since the request was first sent, or when the next resend would
/// pass the request timeout, with [`crate::ClientError::NotLeader`] naming the topic (or the
/// catalog). A known leader that cannot be connected to (within
/// [`ClientConfig::connect_patience`], or lost less than about a second ago) is dropped from
/// the client's routes and the request (which never left) goes to another node.
///
/// Only requests the node answered "not leader" (it did not act on them), and requests that
/// could not be sent at all, are resent: a request whose connection broke after it was sent is
/// never resent (its outcome is unknown).
///
/// Defaults: `initial_backoff` 20 ms, `max_backoff` 500 ms, `max_elapsed` 10 s.
///
/// ```
/// use std::time::Duration;
/// use weir_client::LeaderRetryPolicy;
///
/// let policy = LeaderRetryPolicy::default();
/// assert_eq!(policy.backoff(1), Duration::from_millis(20));
/// assert_eq!(policy.backoff(10), Duration::from_millis(500));
/// assert!(policy.exhausted(Duration::from_secs(10)));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderRetryPolicy {
    /// Wait before the first retry that has no leader to go to.
    pub initial_backoff: Duration,
    /// Longest wait between two retries.
    pub max_backoff: Duration,
    /// Give up once this much time has passed since the request was first sent.
    pub max_elapsed: Duration,
}

impl Default for LeaderRetryPolicy {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(500),
            max_elapsed: Duration::from_secs(10),
        }
    }
}

impl LeaderRetryPolicy {
    /// Redirections to a named leader that are followed without waiting, in a row.
    pub const IMMEDIATE_HOPS: u32 = 2;

    /// The wait before retry number `attempt` (1-based).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(31);
        self.initial_backoff
            .saturating_mul(1u32 << doublings)
            .min(self.max_backoff)
    }

    /// Whether to stop retrying `elapsed` after the request was first sent.
    pub fn exhausted(&self, elapsed: Duration) -> bool {
        elapsed >= self.max_elapsed
    }
}

/// Builds the QUIC client config: TLS 1.3 only, ring, ALPN `weir/1`, server certificate verified
/// against the CA file. There is deliberately no way to skip verification.
pub(crate) fn quinn_client_config(
    config: &ClientConfig,
) -> Result<quinn::ClientConfig, ClientError> {
    let roots = load_roots(&config.ca_cert)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ClientError::Config(format!("TLS setup: {e}")))?
        .with_root_certificates(roots);
    let mut tls = match &config.client_auth {
        None => builder.with_no_client_auth(),
        Some(auth) => {
            let certs = load_certs(&auth.cert)?;
            let key = read_pem(&auth.key, "client key").and_then(|pem| {
                PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
                    ClientError::Config(format!("no private key in {}: {e}", auth.key.display()))
                })
            })?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| ClientError::Config(format!("client certificate: {e}")))?
        }
    };
    tls.alpn_protocols = vec![weir_proto::ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| ClientError::Config(format!("TLS setup for QUIC: {e}")))?;
    let mut quinn_config = quinn::ClientConfig::new(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(config.keep_alive_interval));
    transport.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(config.idle_timeout)
            .map_err(|_| ClientError::Config("idle_timeout is too large".into()))?,
    ));
    quinn_config.transport_config(Arc::new(transport));
    Ok(quinn_config)
}

fn read_pem(path: &Path, what: &str) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path)
        .map_err(|e| ClientError::Config(format!("cannot read {what} {}: {e}", path.display())))
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let pem = read_pem(path, "certificate file")?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ClientError::Config(format!("bad PEM in {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(ClientError::Config(format!(
            "no certificate in {}",
            path.display()
        )));
    }
    Ok(certs)
}

/// Reads the CA file into a root store.
pub(crate) fn load_roots(path: &Path) -> Result<rustls::RootCertStore, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|e| {
            ClientError::Config(format!("bad CA certificate in {}: {e}", path.display()))
        })?;
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn cluster_spec_with_ip_literals_keeps_the_order_given() {
        let addrs = resolve_cluster("127.0.0.1:7070, [::1]:7071,,127.0.0.2:1")
            .await
            .unwrap();
        let want: Vec<SocketAddr> = vec![
            "127.0.0.1:7070".parse().unwrap(),
            "[::1]:7071".parse().unwrap(),
            "127.0.0.2:1".parse().unwrap(),
        ];
        assert_eq!(addrs, want);
    }

    #[tokio::test]
    async fn cluster_spec_resolves_localhost_by_name() {
        let addrs = resolve_cluster("localhost:7070").await.unwrap();
        assert!(!addrs.is_empty());
        assert!(
            addrs
                .iter()
                .all(|a| a.port() == 7070 && a.ip().is_loopback())
        );
    }

    #[tokio::test]
    async fn cluster_spec_without_port_or_empty_is_a_config_error() {
        for bad in ["localhost", "", " , ", "127.0.0.1:notaport", ":7070"] {
            match resolve_cluster(bad).await {
                Err(ClientError::Config(msg)) => assert!(!msg.is_empty()),
                other => panic!("{bad:?}: expected a config error, got {other:?}"),
            }
        }
    }

    #[test]
    fn backoff_doubles_from_initial_and_is_capped() {
        let p = ReconnectPolicy {
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(100),
            max_attempts: Some(3),
            max_elapsed: None,
        };
        let delays: Vec<_> = (1..=6).map(|a| p.backoff(a).as_millis()).collect();
        assert_eq!(delays, [10, 20, 40, 80, 100, 100]);
        assert_eq!(p.backoff(u32::MAX), Duration::from_millis(100));
        assert!(!p.exhausted(3, Duration::from_secs(1000)));
        assert!(p.exhausted(4, Duration::ZERO));
    }

    #[test]
    fn leader_retry_backoff_doubles_from_initial_and_is_capped() {
        let p = LeaderRetryPolicy::default();
        let delays: Vec<_> = (1..=7).map(|a| p.backoff(a).as_millis()).collect();
        assert_eq!(delays, [20, 40, 80, 160, 320, 500, 500]);
        assert_eq!(p.backoff(u32::MAX), Duration::from_millis(500));
        assert!(!p.exhausted(Duration::from_millis(9_999)));
        assert!(p.exhausted(Duration::from_secs(10)));
    }

    #[test]
    fn reconnect_gives_up_after_max_elapsed() {
        let p = ReconnectPolicy {
            max_elapsed: Some(Duration::from_secs(5)),
            ..ReconnectPolicy::default()
        };
        assert!(!p.exhausted(1000, Duration::from_secs(4)));
        assert!(p.exhausted(1, Duration::from_secs(5)));
    }

    #[test]
    fn missing_ca_file_is_a_config_error_naming_the_path() {
        let err = load_roots(Path::new("/nonexistent/weir/ca.crt")).unwrap_err();
        let ClientError::Config(msg) = err else {
            panic!("expected Config, got {err:?}");
        };
        assert!(msg.contains("/nonexistent/weir/ca.crt"), "{msg}");
    }

    #[test]
    fn ca_file_without_certificates_is_a_config_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.crt");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let err = load_roots(&path).unwrap_err();
        assert!(
            matches!(&err, ClientError::Config(m) if m.contains("no certificate")),
            "{err:?}"
        );
    }

    #[test]
    fn invalid_server_name_and_empty_addrs_are_rejected() {
        let mut c = ClientConfig::new("127.0.0.1:1".parse().unwrap(), "ca.crt");
        assert!(c.validate().is_ok());
        c.server_name = "not a name!".into();
        assert!(matches!(c.validate(), Err(ClientError::Config(_))));
        let c = ClientConfig::with_addrs(Vec::new(), "ca.crt");
        assert!(matches!(c.validate(), Err(ClientError::Config(_))));
    }

    #[test]
    fn a_zero_leader_check_delay_is_rejected_and_none_turns_the_check_off() {
        let mut c = ClientConfig::new("127.0.0.1:1".parse().unwrap(), "ca.crt");
        assert_eq!(c.leader_check_after, Some(Duration::from_millis(750)));
        c.leader_check_after = Some(Duration::ZERO);
        assert!(matches!(c.validate(), Err(ClientError::Config(_))));
        c.leader_check_after = None;
        assert!(c.validate().is_ok());
    }
}
