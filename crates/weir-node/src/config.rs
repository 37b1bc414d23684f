//! Node configuration: defaults that work with no file, optionally overridden by `weir.toml`.
//!
//! ```toml
//! listen = "127.0.0.1:7070"
//! fsync = "always"            # or "interval:<ms>" or "never": see docs/STORAGE.md
//! max_message_bytes = 1048576
//! retention_bytes = 10737418240
//! ```

use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use weir_proto::limits::{KEY_BYTES_DEFAULT, KEY_BYTES_MAX, VALUE_BYTES_DEFAULT, VALUE_BYTES_MAX};
use weir_raft::NodeId;
use weir_storage::FsyncPolicy;

/// Default client port.
pub const LISTEN_DEFAULT: &str = "127.0.0.1:7070";
/// Default segment size, as Kafka's `log.segment.bytes` is 1 GiB; smaller suits small machines.
pub const SEGMENT_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;
/// Retention is checked this often per topic (and after writes).
pub const RETENTION_CHECK_INTERVAL_MS_DEFAULT: u64 = 60_000;
/// Smallest segment size accepted (a segment must hold at least a few records' headers).
pub const SEGMENT_BYTES_MIN: u64 = 4096;
/// Default lower bound of the Raft election timeout (drawn in `[t, 2t)`). A dead leader is
/// replaced within about one to two of these; lower makes failover faster but risks needless
/// elections when a busy machine delays heartbeats.
pub const ELECTION_TIMEOUT_MS_DEFAULT: u64 = 500;
/// Default Raft heartbeat period (must be well below the election timeout).
pub const HEARTBEAT_INTERVAL_MS_DEFAULT: u64 = 100;

#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// This node's id in the cluster (default 1).
    pub node_id: NodeId,
    /// Every member of the cluster and the address its endpoint serves on, this node included
    /// or not (`--peers 1=ADDR,2=ADDR,3=ADDR`). Empty: a cluster of this node alone.
    pub peers: BTreeMap<NodeId, SocketAddr>,
    /// Optional cluster name that nodes check in their hello, so two clusters sharing a CA
    /// never talk to each other by mistake.
    pub cluster_id: Option<String>,
    /// Topics live in `data_dir/topics/<name>/`.
    pub data_dir: PathBuf,
    /// UDP address of the QUIC endpoint clients connect to.
    pub listen: SocketAddr,
    /// Certificates; default `data_dir/certs`. Created (with a new CA) if absent.
    pub certs_dir: Option<PathBuf>,
    pub fsync: FsyncPolicy,
    /// Largest value a PUT may carry (at most [`VALUE_BYTES_MAX`]).
    pub max_message_bytes: usize,
    /// Largest key a PUT may carry (at most [`KEY_BYTES_MAX`]).
    pub max_key_bytes: usize,
    /// Default segment size of new topics.
    pub segment_bytes: u64,
    /// Default retention of new topics by size (`None`: keep everything).
    pub retention_bytes: Option<u64>,
    /// Default retention of new topics by age (`None`: keep everything).
    pub retention_ms: Option<u64>,
    pub retention_check_interval_ms: u64,
    /// Raft election timeout lower bound; the timeout is drawn in `[t, 2t)`.
    pub election_timeout_ms: u64,
    /// Raft leader heartbeat period.
    pub heartbeat_interval_ms: u64,
    /// This node joins an existing cluster (`weir node --join`): it does not found a metadata
    /// group of its own but waits for `weir cluster add-node` to make it a member.
    pub join: bool,
}

impl NodeConfig {
    /// Defaults for everything but the data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            node_id: NodeId(1),
            peers: BTreeMap::new(),
            cluster_id: None,
            data_dir: data_dir.into(),
            listen: LISTEN_DEFAULT.parse().expect("valid default address"),
            certs_dir: None,
            fsync: FsyncPolicy::Always,
            max_message_bytes: VALUE_BYTES_DEFAULT,
            max_key_bytes: KEY_BYTES_DEFAULT,
            segment_bytes: SEGMENT_BYTES_DEFAULT,
            retention_bytes: None,
            retention_ms: None,
            retention_check_interval_ms: RETENTION_CHECK_INTERVAL_MS_DEFAULT,
            election_timeout_ms: ELECTION_TIMEOUT_MS_DEFAULT,
            heartbeat_interval_ms: HEARTBEAT_INTERVAL_MS_DEFAULT,
            join: false,
        }
    }

    /// The Raft core's configuration for this node (the seed is the caller's).
    pub fn raft_config(&self, random_seed: u64) -> weir_raft::Config {
        let mut raft = weir_raft::Config::new(self.node_id);
        raft.election_timeout_min_ms = self.election_timeout_ms;
        raft.election_timeout_max_ms = self.election_timeout_ms * 2;
        raft.heartbeat_interval_ms = self.heartbeat_interval_ms;
        raft.random_seed = random_seed;
        raft
    }

    /// The other members of the cluster (the peer list without this node).
    pub fn other_peers(&self) -> BTreeMap<NodeId, SocketAddr> {
        self.peers
            .iter()
            .filter(|(id, _)| **id != self.node_id)
            .map(|(id, addr)| (*id, *addr))
            .collect()
    }

    pub fn certs_dir(&self) -> PathBuf {
        self.certs_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("certs"))
    }

    /// Reads a `weir.toml`. Keys absent from the file keep their defaults; `data_dir` in the file
    /// is optional when the caller sets it afterwards.
    pub fn from_toml_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml_str(&text).map_err(|reason| ConfigError::Parse {
            path: path.to_path_buf(),
            reason,
        })
    }

    fn from_toml_str(text: &str) -> Result<Self, String> {
        let file: ConfigFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut c = Self::new(file.data_dir.unwrap_or_else(|| PathBuf::from("weir-data")));
        if let Some(v) = file.node_id {
            c.node_id = NodeId(v);
        }
        if let Some(v) = file.peers {
            c.peers = parse_peers(&v).map_err(|e| format!("peers: {e}"))?;
        }
        c.cluster_id = file.cluster_id;
        if let Some(v) = file.listen {
            c.listen = v;
        }
        c.certs_dir = file.certs_dir;
        if let Some(v) = file.fsync {
            c.fsync = v.parse().map_err(|e| format!("fsync: {e}"))?;
        }
        if let Some(v) = file.max_message_bytes {
            c.max_message_bytes = v;
        }
        if let Some(v) = file.max_key_bytes {
            c.max_key_bytes = v;
        }
        if let Some(v) = file.segment_bytes {
            c.segment_bytes = v;
        }
        c.retention_bytes = file.retention_bytes;
        c.retention_ms = file.retention_ms;
        if let Some(v) = file.retention_check_interval_ms {
            c.retention_check_interval_ms = v;
        }
        if let Some(v) = file.election_timeout_ms {
            c.election_timeout_ms = v;
        }
        if let Some(v) = file.heartbeat_interval_ms {
            c.heartbeat_interval_ms = v;
        }
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
    }

    /// Checks the limits against the protocol's hard maxima.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |reason: String| Err(ConfigError::Invalid(reason));
        if self.max_message_bytes == 0 || self.max_message_bytes > VALUE_BYTES_MAX {
            return bad(format!(
                "max_message_bytes must be 1..={VALUE_BYTES_MAX}, got {}",
                self.max_message_bytes
            ));
        }
        if self.max_key_bytes > KEY_BYTES_MAX {
            return bad(format!(
                "max_key_bytes must be at most {KEY_BYTES_MAX}, got {}",
                self.max_key_bytes
            ));
        }
        if self.segment_bytes < SEGMENT_BYTES_MIN {
            return bad(format!(
                "segment_bytes must be at least {SEGMENT_BYTES_MIN}, got {}",
                self.segment_bytes
            ));
        }
        if self.node_id == NodeId(0) {
            return bad("node_id must be above 0".into());
        }
        if self.peers.len() > crate::peer::PEERS_MAX {
            return bad(format!(
                "{} peers exceed PEERS_MAX ({})",
                self.peers.len(),
                crate::peer::PEERS_MAX
            ));
        }
        if !self.peers.is_empty() && !self.peers.contains_key(&self.node_id) {
            return bad(format!(
                "the peer list names nodes {:?} but not this node ({})",
                self.peers.keys().map(|id| id.0).collect::<Vec<_>>(),
                self.node_id
            ));
        }
        if self.retention_check_interval_ms == 0 {
            return bad("retention_check_interval_ms must be above 0".into());
        }
        if self.heartbeat_interval_ms == 0
            || self.heartbeat_interval_ms >= self.election_timeout_ms
            || self.election_timeout_ms > 60_000
        {
            return bad(format!(
                "need 0 < heartbeat_interval_ms ({}) < election_timeout_ms ({}) <= 60000",
                self.heartbeat_interval_ms, self.election_timeout_ms
            ));
        }
        Ok(())
    }
}

/// Parses `1=127.0.0.1:7001,2=127.0.0.1:7002`: node ids above 0, each once.
pub fn parse_peers(spec: &str) -> Result<BTreeMap<NodeId, SocketAddr>, String> {
    let mut peers = BTreeMap::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (id, addr) = item
            .split_once('=')
            .ok_or_else(|| format!("{item:?} is not ID=ADDRESS (e.g. 2=127.0.0.1:7002)"))?;
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|_| format!("{id:?} in {item:?} is not a node id"))?;
        if id == 0 {
            return Err(format!("node ids start at 1 ({item:?})"));
        }
        let addr: SocketAddr = addr
            .trim()
            .parse()
            .map_err(|e| format!("{addr:?} in {item:?}: {e}"))?;
        if peers.insert(NodeId(id), addr).is_some() {
            return Err(format!("node {id} is listed twice"));
        }
    }
    Ok(peers)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    node_id: Option<u64>,
    peers: Option<String>,
    cluster_id: Option<String>,
    data_dir: Option<PathBuf>,
    listen: Option<SocketAddr>,
    certs_dir: Option<PathBuf>,
    fsync: Option<String>,
    max_message_bytes: Option<usize>,
    max_key_bytes: Option<usize>,
    segment_bytes: Option<u64>,
    retention_bytes: Option<u64>,
    retention_ms: Option<u64>,
    retention_check_interval_ms: Option<u64>,
    election_timeout_ms: Option<u64>,
    heartbeat_interval_ms: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path}: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("invalid config: {0}")]
    Invalid(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_the_defaults() {
        let c = NodeConfig::from_toml_str("").unwrap();
        assert_eq!(c.listen, LISTEN_DEFAULT.parse().unwrap());
        assert_eq!(c.fsync, FsyncPolicy::Always);
        assert_eq!(c.max_message_bytes, VALUE_BYTES_DEFAULT);
    }

    #[test]
    fn file_values_override_defaults() {
        let c = NodeConfig::from_toml_str(
            "listen = \"0.0.0.0:9000\"\nfsync = \"interval:50\"\nmax_message_bytes = 1000\n",
        )
        .unwrap();
        assert_eq!(c.listen, "0.0.0.0:9000".parse().unwrap());
        assert_eq!(c.fsync, FsyncPolicy::Interval { interval_ms: 50 });
        assert_eq!(c.max_message_bytes, 1000);
    }

    #[test]
    fn peer_lists_parse_and_must_name_this_node() {
        let c = NodeConfig::from_toml_str(
            "node_id = 2\npeers = \"1=127.0.0.1:7001, 2=127.0.0.1:7002,3=127.0.0.1:7003\"\n",
        )
        .unwrap();
        assert_eq!(c.node_id, NodeId(2));
        assert_eq!(c.peers.len(), 3);
        assert_eq!(
            c.other_peers().keys().copied().collect::<Vec<_>>(),
            vec![NodeId(1), NodeId(3)]
        );
        let e = NodeConfig::from_toml_str("node_id = 4\npeers = \"1=127.0.0.1:7001\"").unwrap_err();
        assert!(e.contains("not this node"), "{e}");
        assert!(
            parse_peers("1=127.0.0.1:1,1=127.0.0.1:2")
                .unwrap_err()
                .contains("twice")
        );
        assert!(parse_peers("0=127.0.0.1:1").is_err());
        assert!(parse_peers("x=127.0.0.1:1").is_err());
        assert!(parse_peers("1:127.0.0.1:1").is_err());
        assert!(parse_peers("").unwrap().is_empty());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_with_their_name() {
        let e = NodeConfig::from_toml_str("fsynk = \"never\"").unwrap_err();
        assert!(e.contains("fsynk"), "{e}");
        let e = NodeConfig::from_toml_str("fsync = \"sometimes\"").unwrap_err();
        assert!(e.contains("fsync"), "{e}");
        let e = NodeConfig::from_toml_str("max_message_bytes = 999999999").unwrap_err();
        assert!(e.contains("max_message_bytes"), "{e}");
    }
}
