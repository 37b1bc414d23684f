//! A local cluster of real `weir node` processes sharing one CA, for end-to-end tests.

use crate::{NodeProcess, weir_bin};
use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use weir_client::{Client, ClientConfig};

/// Bound on waiting for a cluster to settle (elections, catch-up) in tests.
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Free loopback UDP ports, reserved together so they differ, released before the nodes bind.
pub fn free_ports(n: usize) -> Result<Vec<u16>> {
    let sockets: Vec<std::net::UdpSocket> = (0..n)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0"))
        .collect::<std::io::Result<_>>()?;
    sockets.iter().map(|s| Ok(s.local_addr()?.port())).collect()
}

/// One CA for the whole cluster: `weir certs init` once into `base/certs`, copied into
/// `base/node<i>/certs` for i in 1..=nodes. Returns the node data directories.
pub fn shared_certs(base: &Path, nodes: usize) -> Result<Vec<PathBuf>> {
    let certs = base.join("certs");
    let status = std::process::Command::new(weir_bin()?)
        .args(["certs", "init", "--dir"])
        .arg(&certs)
        .stdout(std::process::Stdio::null())
        .status()?;
    if !status.success() {
        bail!("weir certs init failed");
    }
    let mut dirs = Vec::new();
    for i in 1..=nodes {
        let dir = base.join(format!("node{i}"));
        std::fs::create_dir_all(dir.join("certs"))?;
        for f in std::fs::read_dir(&certs)? {
            let f = f?;
            std::fs::copy(f.path(), dir.join("certs").join(f.file_name()))?;
        }
        dirs.push(dir);
    }
    Ok(dirs)
}

/// Nodes 1..=n on loopback. Node `i` runs with `--id i --peers <peers_of(i)>`, so a test can
/// give each node its own view of the others' addresses (e.g. through fault proxies).
#[derive(Debug)]
pub struct LocalCluster {
    // Fields drop in order: the processes are killed before their directories go.
    nodes: BTreeMap<u64, NodeProcess>,
    /// Each node's own listen address.
    pub addrs: Vec<SocketAddr>,
    peers: Vec<String>,
    extra: Vec<String>,
    dirs: Vec<PathBuf>,
    base_path: PathBuf,
    _base: tempfile::TempDir,
}

impl LocalCluster {
    /// `n` nodes that reach each other directly.
    pub async fn start(n: usize, extra_args: &[&str]) -> Result<Self> {
        let ports = free_ports(n)?;
        let addrs: Vec<SocketAddr> = ports
            .iter()
            .map(|p| SocketAddr::from(([127, 0, 0, 1], *p)))
            .collect();
        let spec = peer_spec(&addrs.iter().copied().enumerate().collect::<Vec<_>>());
        Self::start_with(addrs, vec![spec; n], extra_args).await
    }

    /// Nodes listening on `addrs`; node `i + 1` gets `--peers peers[i]`.
    pub async fn start_with(
        addrs: Vec<SocketAddr>,
        peers: Vec<String>,
        extra_args: &[&str],
    ) -> Result<Self> {
        let base = tempfile::tempdir()?;
        let base_path = base.path().to_path_buf();
        let dirs = shared_certs(base.path(), addrs.len())?;
        let mut cluster = LocalCluster {
            _base: base,
            base_path,
            dirs,
            addrs,
            peers,
            extra: extra_args.iter().map(|s| s.to_string()).collect(),
            nodes: BTreeMap::new(),
        };
        for id in 1..=cluster.addrs.len() as u64 {
            cluster.start_node(id).await?;
        }
        Ok(cluster)
    }

    /// Where the cluster's files are (certs, node data directories).
    pub fn base(&self) -> &Path {
        &self.base_path
    }

    pub fn ca_cert(&self) -> PathBuf {
        self.base_path.join("certs").join("ca.crt")
    }

    /// Node `id`'s data directory (kept across restarts).
    pub fn data_dir(&self, id: u64) -> &Path {
        &self.dirs[(id - 1) as usize]
    }

    pub fn addr(&self, id: u64) -> SocketAddr {
        self.addrs[(id - 1) as usize]
    }

    /// (node id, process id) of every running node.
    pub fn pids(&self) -> Vec<(u64, u32)> {
        self.nodes
            .iter()
            .filter_map(|(&id, node)| Some((id, node.pid()?)))
            .collect()
    }

    pub fn is_running(&self, id: u64) -> bool {
        self.nodes.contains_key(&id)
    }

    /// Starts (or restarts, on its data directory) node `id`.
    pub async fn start_node(&mut self, id: u64) -> Result<()> {
        if self.nodes.contains_key(&id) {
            bail!("node {id} is running");
        }
        let i = (id - 1) as usize;
        let listen = self.addrs[i].to_string();
        let id_arg = id.to_string();
        let mut args: Vec<&str> = vec!["--id", &id_arg, "--peers", &self.peers[i]];
        args.extend(self.extra.iter().map(String::as_str));
        let node = NodeProcess::start(&self.dirs[i], &listen, &args)
            .await
            .with_context(|| format!("starting node {id}"))?;
        self.nodes.insert(id, node);
        Ok(())
    }

    /// Starts one more node, `id = addrs.len() + 1`, listening on `addr` with `--peers peers`
    /// and `extra_args` (e.g. `--join`), with the cluster's certificates. Returns its id.
    pub async fn start_extra(
        &mut self,
        addr: SocketAddr,
        peers: String,
        extra_args: &[&str],
    ) -> Result<u64> {
        let id = self.addrs.len() as u64 + 1;
        let dir = self.base_path.join(format!("node{id}"));
        std::fs::create_dir_all(dir.join("certs"))?;
        for f in std::fs::read_dir(self.base_path.join("certs"))? {
            let f = f?;
            std::fs::copy(f.path(), dir.join("certs").join(f.file_name()))?;
        }
        self.dirs.push(dir);
        self.addrs.push(addr);
        self.peers.push(peers);
        let before = self.extra.clone();
        self.extra.extend(extra_args.iter().map(|s| s.to_string()));
        let started = self.start_node(id).await;
        self.extra = before;
        started?;
        Ok(id)
    }

    /// SIGKILL node `id` (no shutdown, no final sync).
    pub async fn kill9(&mut self, id: u64) -> Result<()> {
        let node = self.nodes.remove(&id).context("node not running")?;
        node.kill9().await
    }

    /// A client that knows every node's address.
    pub async fn client(&self) -> Result<Client> {
        let config = ClientConfig::with_addrs(self.addrs.clone(), self.ca_cert());
        Ok(Client::connect(config).await?)
    }

    /// A client that talks to node `id` only (its seed list holds just that node).
    pub async fn client_of(&self, id: u64) -> Result<Client> {
        let config = ClientConfig::new(self.addr(id), self.ca_cert());
        Ok(Client::connect(config).await?)
    }

    /// Polls (bounded) until `topic`'s preferred leader (its first replica in the catalog) leads
    /// it; returns it. From then on leader placement leaves leadership where it is, so a test
    /// that picks the leader or a follower and then acts on it (kills, cuts off) acts on what it
    /// picked. (Right after creation the first leader elected may be another replica, which
    /// placement soon replaces.)
    pub async fn wait_for_preferred_leader(&self, topic: &str) -> Result<u64> {
        let deadline = tokio::time::Instant::now() + SETTLE_TIMEOUT;
        let mut ticker = tokio::time::interval(Duration::from_millis(50));
        let client = self.client().await?;
        let preferred = loop {
            ticker.tick().await;
            let info = client.cluster().await;
            let preferred = info.ok().and_then(|info| {
                info.topics
                    .iter()
                    .find(|t| t.name == topic)
                    .and_then(|t| t.replicas.first().copied())
            });
            if let Some(preferred) = preferred {
                break preferred;
            }
            if tokio::time::Instant::now() > deadline {
                bail!("{topic:?} has no replicas in the catalog within {SETTLE_TIMEOUT:?}");
            }
        };
        client.close().await;
        loop {
            let leader = self.wait_for_leader(topic, None).await?;
            if leader == preferred {
                return Ok(leader);
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "{topic:?} is led by {leader}, not its preferred leader {preferred}, after {SETTLE_TIMEOUT:?}"
                );
            }
            ticker.tick().await;
        }
    }

    /// Polls (bounded) until a node other than `not` reports a leader for `topic`; returns it.
    pub async fn wait_for_leader(&self, topic: &str, not: Option<u64>) -> Result<u64> {
        let deadline = tokio::time::Instant::now() + SETTLE_TIMEOUT;
        let mut ticker = tokio::time::interval(Duration::from_millis(50));
        loop {
            ticker.tick().await;
            // A deposed leader may still call itself one until it hears of the newer term: only
            // a leader of the newest term any answering replica knows counts.
            let mut newest_term = 0;
            let mut leaders = Vec::new();
            for (&id, _) in self.nodes.iter().filter(|(id, _)| Some(**id) != not) {
                let Ok(client) = self.client_of(id).await else {
                    continue;
                };
                let status = client.status().await;
                client.close().await;
                let Ok(status) = status else { continue };
                let Some(raft) = status
                    .topics
                    .iter()
                    .find(|t| t.name == topic)
                    .and_then(|t| t.raft.as_ref())
                else {
                    continue;
                };
                newest_term = newest_term.max(raft.term);
                if raft.role == "leader" {
                    leaders.push((raft.term, id));
                }
            }
            if let Some(&(_, leader)) = leaders.iter().find(|(term, _)| *term == newest_term) {
                return Ok(leader);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("no leader for {topic:?} within {SETTLE_TIMEOUT:?}");
            }
        }
    }
}

/// `1=ADDR,2=ADDR,...` from (index, address) pairs (index 0 is node 1).
pub fn peer_spec(addrs: &[(usize, SocketAddr)]) -> String {
    addrs
        .iter()
        .map(|(i, a)| format!("{}={a}", i + 1))
        .collect::<Vec<_>>()
        .join(",")
}
