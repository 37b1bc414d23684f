//! The node's view of the cluster: the metadata group (Raft group 0 over every member, whose
//! state machine is the [`Catalog`]), the topic replicas this node hosts, and the router that
//! hands peer messages to the right group.
//!
//! ```text
//! admin request ─► metadata leader: propose CatalogCommand ─► group 0 commits
//!                                                              │ on_apply, every node:
//!                                                              ▼
//!                      Catalog::apply ─► data_dir/catalog (durable) ─► reconcile():
//!                      start the groups of topics this node now replicates, stop and delete
//!                      the groups of deleted topics, update peer addresses
//! ```
//!
//! Topic groups never wait for the metadata group: a restarted node reads its applied catalog
//! from `data_dir/catalog` and starts its topic replicas at once.
//!
//! A maintenance tick (every [`MAINTENANCE_INTERVAL_MS`]) moves the cluster towards the
//! catalog: the metadata leader changes the metadata group's voters one at a time until they
//! are the catalog's nodes, and a topic leader that is not the topic's preferred leader (its
//! first replica) hands leadership to it once it is caught up, so leaders spread over nodes.

use crate::catalog::{Catalog, CatalogCommand};
use crate::config::NodeConfig;
use crate::group::{GroupConfig, GroupHandle, OnApply, ProposalError, Transport};
use crate::group_store::GroupStore;
use crate::peer::{GroupId, PeerNet};
use crate::topic::{self, Directory, Topic, TopicEnv};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::Duration;
use weir_proto::{
    ClusterInfo, ErrorCode, ErrorReply, NodeInfo, Offset, RaftStatus, TopicConfig, TopicInfo,
    TopicPlacement, validate_topic_name,
};
use weir_raft::{Entry, MembershipChange, NodeId, Payload, Role};
use weir_storage::LogConfig;

/// The metadata group's id; topic groups get the index of their creating entry (>= 1).
pub const METADATA_GROUP: GroupId = GroupId(0);
/// Results of applied catalog commands kept for their proposers (oldest dropped first).
const RESULTS_MAX: usize = 1024;
/// How often the maintenance tick runs.
pub const MAINTENANCE_INTERVAL_MS: u64 = 250;
/// How long a CreateTopic answered by this node waits for the new topic's first leader, so
/// PUTs right after creation find one.
const CREATE_WAIT_FOR_LEADER_MS: u64 = 5_000;
/// Bound on waiting for a catalog proposal's outcome.
const PROPOSAL_TIMEOUT_MS: u64 = 10_000;

/// Drops every message: the transport of a node without peers (its groups have one member).
struct NoPeers;

impl Transport for NoPeers {
    fn send(&self, group: GroupId, envelope: weir_raft::Envelope) {
        tracing::debug!(%group, to = %envelope.to, "no peer transport; message dropped");
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("{0}")]
    Catalog(String),
    #[error("metadata group store: {0}")]
    MetaStore(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub(crate) struct Cluster {
    pub node_id: NodeId,
    pub local_addr: SocketAddr,
    data_dir: PathBuf,
    env: TopicEnv,
    catalog: RwLock<Catalog>,
    topics: RwLock<BTreeMap<String, Arc<Topic>>>,
    /// Every group running here, by id (the router for peer messages).
    groups: RwLock<HashMap<GroupId, GroupHandle>>,
    meta: OnceLock<GroupHandle>,
    results: Mutex<BTreeMap<u64, Result<(), ErrorReply>>>,
    peers: Option<PeerNet>,
    /// Serialises reconcile (meta thread) with shutdown.
    reconcile_lock: Mutex<bool>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node_id", &self.node_id)
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}
fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Cluster {
    /// Blocking: loads the catalog, starts this node's topic replicas and the metadata group.
    pub fn open(
        node: &NodeConfig,
        local_addr: SocketAddr,
        peers: Option<PeerNet>,
    ) -> Result<Arc<Cluster>, ClusterError> {
        let data_dir = node.data_dir.clone();
        std::fs::create_dir_all(&data_dir).map_err(|source| ClusterError::Io {
            path: data_dir.clone(),
            source,
        })?;
        let founding_nodes: BTreeMap<u64, String> = if node.peers.is_empty() {
            BTreeMap::from([(node.node_id.0, local_addr.to_string())])
        } else {
            node.peers
                .iter()
                .map(|(id, addr)| (id.0, addr.to_string()))
                .collect()
        };
        let catalog = match Catalog::load(&data_dir).map_err(ClusterError::Catalog)? {
            Some(c) => c,
            None if node.join => Catalog::default(),
            None => Catalog::founding(founding_nodes.clone()),
        };
        let transport: Arc<dyn Transport> = match &peers {
            Some(p) => Arc::new(p.clone()),
            None => Arc::new(NoPeers),
        };
        let directory: Directory = Arc::new(RwLock::new(BTreeMap::new()));
        let cluster = Arc::new(Cluster {
            node_id: node.node_id,
            local_addr,
            data_dir: data_dir.clone(),
            env: TopicEnv {
                node: node.clone(),
                transport: transport.clone(),
                directory,
            },
            catalog: RwLock::new(catalog),
            topics: RwLock::new(BTreeMap::new()),
            groups: RwLock::new(HashMap::new()),
            meta: OnceLock::new(),
            results: Mutex::new(BTreeMap::new()),
            peers,
            reconcile_lock: Mutex::new(false),
        });
        cluster.reconcile();
        cluster.remove_orphan_groups();

        let store = GroupStore::open(&data_dir.join("meta"), LogConfig::default(), |_| None)
            .map_err(|e| ClusterError::MetaStore(e.to_string()))?;
        let initial = if node.join {
            weir_raft::Membership::default()
        } else {
            weir_raft::Membership::with_voters(founding_nodes.keys().map(|&id| NodeId(id)))
        };
        let weak: Weak<Cluster> = Arc::downgrade(&cluster);
        let on_apply: OnApply = Box::new(move |entries: &[Entry]| {
            if let Some(cluster) = weak.upgrade() {
                cluster.apply_meta(entries);
            }
            Vec::new()
        });
        let config = GroupConfig {
            group: METADATA_GROUP,
            raft: node.raft_config(node.node_id.0.rotate_left(7) ^ 0x5eed),
            initial,
            stamp_timestamps: false,
            fsync: weir_storage::FsyncPolicy::Always,
            retention: None,
            producers: None,
        };
        let meta = GroupHandle::start(config, store, transport, on_apply).map_err(|source| {
            ClusterError::Io {
                path: data_dir.join("meta"),
                source,
            }
        })?;
        write(&cluster.groups).insert(METADATA_GROUP, meta.clone());
        let _ = cluster.meta.set(meta);
        Ok(cluster)
    }

    fn meta(&self) -> Option<&GroupHandle> {
        self.meta.get()
    }

    /// Hands a peer message to its group (dropped if the group does not run here).
    pub fn deliver(&self, group: GroupId, envelope: weir_raft::Envelope) {
        match read(&self.groups).get(&group) {
            Some(handle) => handle.deliver(envelope),
            None => {
                tracing::debug!(%group, from = %envelope.from, "message for a group not running here; dropped")
            }
        }
    }

    /// The metadata group's state machine: applies catalog commands in log order.
    fn apply_meta(&self, entries: &[Entry]) {
        let mut applied_command = false;
        {
            let mut catalog = write(&self.catalog);
            let mut results = lock(&self.results);
            for entry in entries {
                if entry.index.0 <= catalog.applied_index {
                    continue; // already in the saved catalog (replayed after a restart)
                }
                if let Payload::Normal(data) = &entry.payload {
                    let result = match CatalogCommand::decode(data) {
                        Ok(command) => {
                            tracing::info!(index = %entry.index, ?command, "catalog command");
                            catalog.apply(entry.index.0, command)
                        }
                        Err(e) => Err(ErrorReply::new(
                            ErrorCode::Internal,
                            format!("undecodable catalog entry {}: {e}", entry.index),
                        )),
                    };
                    if let Err(e) = &result {
                        tracing::info!(index = %entry.index, error = %e, "catalog command refused");
                    }
                    results.insert(entry.index.0, result);
                    while results.len() > RESULTS_MAX {
                        results.pop_first();
                    }
                    applied_command = true;
                }
                catalog.applied_index = entry.index.0;
            }
            if applied_command && let Err(e) = catalog.save(&self.data_dir) {
                // The in-memory catalog is right; a restart replays the metadata log instead.
                tracing::error!(error = %e, "cannot save the catalog");
            }
        }
        if applied_command {
            self.reconcile();
        }
    }

    /// Makes the running topic replicas, the directory and the peer set match the catalog.
    fn reconcile(&self) {
        let stopped = lock(&self.reconcile_lock);
        if *stopped {
            return;
        }
        let catalog = read(&self.catalog).clone();
        {
            let mut dir = write(&self.env.directory);
            *dir = catalog.nodes.clone();
            if !dir.is_empty() || catalog.nodes.contains_key(&self.node_id.0) {
                dir.insert(self.node_id.0, self.local_addr.to_string());
            }
        }
        if let Some(peers) = &self.peers {
            let current = peers.peers();
            for (&id, addr) in &catalog.nodes {
                if id == self.node_id.0 {
                    continue;
                }
                let Ok(addr) = addr.parse::<SocketAddr>() else {
                    continue;
                };
                if current.get(&NodeId(id)) != Some(&addr)
                    && let Err(e) = peers.add_peer(NodeId(id), addr)
                {
                    tracing::warn!(node = id, error = %e, "cannot add peer");
                }
            }
            for id in current.keys() {
                if !catalog.nodes.contains_key(&id.0) && !catalog.nodes.is_empty() {
                    peers.remove_peer(*id);
                }
            }
        }
        let me = self.node_id.0;
        let wanted: BTreeMap<&String, &crate::catalog::TopicEntry> = catalog
            .topics
            .iter()
            .filter(|(_, t)| t.replicas.contains(&me))
            .collect();
        let mut removed = Vec::new();
        {
            let mut topics = write(&self.topics);
            topics.retain(|name, t| {
                let keep = wanted.get(name).is_some_and(|w| w.group == t.entry.group);
                if !keep {
                    removed.push(t.clone());
                }
                keep
            });
        }
        for t in removed {
            write(&self.groups).remove(&t.group());
            t.close();
            match std::fs::remove_dir_all(&t.dir) {
                Ok(()) => {
                    tracing::info!(topic = %t.name, group = %t.group(), "topic replica removed")
                }
                Err(e) => {
                    tracing::warn!(topic = %t.name, error = %e, "cannot remove the topic's directory")
                }
            }
        }
        for (name, entry) in wanted {
            if read(&self.topics).contains_key(name) {
                continue;
            }
            let topic = Arc::new(Topic::open(&self.env, name.clone(), entry.clone()));
            if let Some(handle) = topic.handle() {
                write(&self.groups).insert(topic.group(), handle.clone());
            }
            tracing::info!(topic = %name, group = entry.group, replicas = ?entry.replicas, "topic replica started");
            write(&self.topics).insert(name.clone(), topic);
        }
    }

    /// Deletes group directories no catalog topic of this node uses (left by a delete that a
    /// crash interrupted).
    fn remove_orphan_groups(&self) {
        let groups_dir = self.data_dir.join("groups");
        let Ok(entries) = std::fs::read_dir(&groups_dir) else {
            return;
        };
        let used: Vec<u64> = read(&self.topics).values().map(|t| t.entry.group).collect();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            match name.parse::<u64>() {
                Ok(g) if !used.contains(&g) => {
                    tracing::info!(group = g, "removing the directory of a deleted topic");
                    if let Err(e) = std::fs::remove_dir_all(entry.path()) {
                        tracing::warn!(group = g, error = %e, "cannot remove");
                    }
                }
                _ => {}
            }
        }
    }

    pub fn topic(&self, name: &str) -> Option<Arc<Topic>> {
        read(&self.topics).get(name).cloned()
    }

    pub fn local_topics(&self) -> Vec<Arc<Topic>> {
        read(&self.topics).values().cloned().collect()
    }

    /// The local replica of `name`, or the error a client should get: `NotLeader` with a
    /// replica's address if another node hosts it, `NotFound` if no topic has that name.
    pub fn topic_or_redirect(&self, name: &str) -> Result<Arc<Topic>, ErrorReply> {
        if let Some(t) = self.topic(name) {
            return Ok(t);
        }
        let catalog = read(&self.catalog);
        match catalog.topics.get(name) {
            Some(entry) => {
                let first = entry.replicas.first().map(|&id| NodeId(id));
                Err(ErrorReply::not_leader(
                    format!(
                        "node {} does not hold a replica of topic {name:?} (replicas: {:?})",
                        self.node_id, entry.replicas
                    ),
                    topic::hint(&self.env.directory, first),
                ))
            }
            None => Err(ErrorReply::new(
                ErrorCode::NotFound,
                format!("topic {name:?} does not exist"),
            )),
        }
    }

    pub fn is_known_topic(&self, name: &str) -> bool {
        read(&self.catalog).topics.contains_key(name)
    }

    /// Every topic of the cluster, with offsets where this node holds a replica.
    pub fn list(&self) -> Vec<TopicInfo> {
        let catalog = read(&self.catalog).clone();
        catalog
            .topics
            .into_iter()
            .map(|(name, entry)| {
                let (start_offset, next_offset) = self
                    .topic(&name)
                    .map_or((Offset::ZERO, Offset::ZERO), |t| t.start_and_committed());
                TopicInfo {
                    name,
                    config: entry.config,
                    start_offset,
                    next_offset,
                }
            })
            .collect()
    }

    pub fn cluster_info(&self) -> ClusterInfo {
        let catalog = read(&self.catalog).clone();
        let directory = read(&self.env.directory).clone();
        ClusterInfo {
            node_id: self.node_id.0,
            nodes: directory
                .into_iter()
                .map(|(node_id, addr)| NodeInfo { node_id, addr })
                .collect(),
            metadata_leader: self.meta().and_then(|m| m.status().leader).map(|l| l.0),
            topics: catalog
                .topics
                .into_iter()
                .map(|(name, entry)| {
                    let leader = self
                        .topic(&name)
                        .and_then(|t| t.group_status())
                        .and_then(|s| s.leader)
                        .map(|l| l.0);
                    TopicPlacement {
                        name,
                        group: entry.group,
                        replicas: entry.replicas,
                        leader,
                    }
                })
                .collect(),
        }
    }

    pub fn metadata_status(&self) -> Option<RaftStatus> {
        self.meta().map(|m| topic::raft_status(&m.status()))
    }

    /// Proposes a catalog command through the metadata leader (this node) and waits for its
    /// result, recording the founding members first if no Bootstrap entry was applied yet.
    async fn propose(&self, command: CatalogCommand) -> Result<(), ErrorReply> {
        if !read(&self.catalog).bootstrapped {
            let nodes = read(&self.catalog).nodes.clone();
            match self.propose_one(CatalogCommand::Bootstrap { nodes }).await {
                Ok(()) => {}
                Err(e) if e.code == ErrorCode::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        self.propose_one(command).await
    }

    /// Proposes one catalog command and waits for its result.
    async fn propose_one(&self, command: CatalogCommand) -> Result<(), ErrorReply> {
        let meta = self
            .meta()
            .ok_or_else(|| ErrorReply::new(ErrorCode::Unavailable, "metadata group not started"))?
            .clone();
        let status = meta.status();
        if status.role != Role::Leader {
            return Err(ErrorReply::not_leader(
                format!("node {} does not lead the catalog", self.node_id),
                topic::hint(&self.env.directory, status.leader),
            ));
        }
        let data = command
            .encode()
            .map_err(|e| ErrorReply::new(ErrorCode::Internal, e.to_string()))?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        meta.propose(
            data,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        let decided = tokio::time::timeout(Duration::from_millis(PROPOSAL_TIMEOUT_MS), rx)
            .await
            .map_err(|_| {
                ErrorReply::new(
                    ErrorCode::Unavailable,
                    "the catalog change did not commit in time (no majority?); it may still commit",
                )
            })?
            .unwrap_or(Err(ProposalError::Stopped))
            .map_err(|e| topic::proposal_error("the catalog", e, &self.env.directory, &meta))?;
        lock(&self.results)
            .remove(&decided.index.0)
            .unwrap_or_else(|| {
                Err(ErrorReply::new(
                    ErrorCode::Internal,
                    "the catalog change committed but its result was not recorded",
                ))
            })
    }

    pub async fn create_topic(&self, name: String, config: TopicConfig) -> Result<(), ErrorReply> {
        validate_topic_name(&name).map_err(|m| ErrorReply::new(ErrorCode::InvalidArgument, m))?;
        if let Some(s) = config.segment_bytes
            && s < crate::config::SEGMENT_BYTES_MIN
        {
            return Err(ErrorReply::new(
                ErrorCode::InvalidArgument,
                format!(
                    "segment_bytes must be at least {}, got {s}",
                    crate::config::SEGMENT_BYTES_MIN
                ),
            ));
        }
        if let Some(spec) = &config.program {
            crate::program::validate(spec).map_err(|reason| {
                ErrorReply::new(
                    ErrorCode::InvalidArgument,
                    format!("program refused: {reason}"),
                )
            })?;
        }
        let replicas = read(&self.catalog).place(config.replicas)?;
        self.propose(CatalogCommand::CreateTopic {
            name: name.clone(),
            config,
            replicas,
        })
        .await?;
        // So that a PUT right after creation finds a leader: wait (bounded) for the first
        // election, when this node holds a replica.
        if let Some(handle) = self.topic(&name).and_then(|t| t.handle().cloned()) {
            let _ = tokio::task::spawn_blocking(move || {
                handle.wait_for(Duration::from_millis(CREATE_WAIT_FOR_LEADER_MS), |s| {
                    s.leader.is_some()
                })
            })
            .await;
        }
        Ok(())
    }

    pub async fn delete_topic(&self, name: String) -> Result<(), ErrorReply> {
        self.propose(CatalogCommand::DeleteTopic { name }).await
    }

    pub async fn add_node(&self, node_id: u64, addr: String) -> Result<(), ErrorReply> {
        self.propose(CatalogCommand::AddNode { node_id, addr })
            .await
    }

    pub async fn remove_node(&self, node_id: u64) -> Result<(), ErrorReply> {
        self.propose(CatalogCommand::RemoveNode { node_id }).await
    }

    /// One maintenance step (see the module docs). Cheap when there is nothing to do.
    pub fn maintain(&self) {
        if let Some(meta) = self.meta() {
            let s = meta.status();
            let bootstrapped = read(&self.catalog).bootstrapped;
            if s.role == Role::Leader && s.commit_index >= s.last_index && !bootstrapped {
                // Put the founding member list into the log, for nodes that join later.
                let nodes = read(&self.catalog).nodes.clone();
                if let Ok(data) = (CatalogCommand::Bootstrap { nodes }).encode() {
                    tracing::info!("recording the founding members in the catalog");
                    meta.propose(data, Box::new(|_| {}));
                }
            } else if s.role == Role::Leader && s.commit_index >= s.last_index {
                let nodes: Vec<NodeId> = read(&self.catalog)
                    .nodes
                    .keys()
                    .map(|&id| NodeId(id))
                    .collect();
                let voters = &s.membership.voters;
                let change = if let Some(add) = nodes.iter().find(|id| !voters.contains(id)) {
                    Some(MembershipChange::AddVoter(*add))
                } else if !nodes.is_empty() {
                    voters
                        .iter()
                        .find(|id| !nodes.contains(id) && **id != self.node_id)
                        .map(|id| MembershipChange::RemoveNode(*id))
                } else {
                    None
                };
                if let Some(change) = change {
                    tracing::info!(?change, "metadata group membership follows the catalog");
                    meta.propose_membership(
                        change,
                        Box::new(|r| {
                            if let Err(e) = r {
                                tracing::info!(error = %e, "metadata membership change not done");
                            }
                        }),
                    );
                } else if !nodes.is_empty() && !nodes.contains(&self.node_id) {
                    // This node was removed: hand the catalog to a remaining member.
                    if let Some(to) = voters.iter().find(|id| **id != self.node_id) {
                        meta.transfer_leadership(*to);
                    }
                }
            }
        }
        for topic in self.local_topics() {
            let Some(handle) = topic.handle() else {
                continue;
            };
            let s = handle.status();
            if s.role != Role::Leader {
                continue;
            }
            let Some(&preferred) = topic.entry.replicas.first() else {
                continue;
            };
            let preferred = NodeId(preferred);
            if preferred == self.node_id || !s.membership.voters.contains(&preferred) {
                continue;
            }
            let caught_up = s
                .peer_match
                .get(&preferred)
                .is_some_and(|m| *m >= s.commit_index && s.commit_index >= s.last_index);
            if caught_up {
                tracing::info!(topic = %topic.name, to = %preferred, "handing leadership to the preferred leader");
                handle.transfer_leadership(preferred);
            }
        }
    }

    /// Blocking: waits (at most `timeout` in all) until the metadata group and every local
    /// topic replica know a leader. A node alone uses it at start, so that it answers its first
    /// requests instead of `NotLeader` during its first election.
    pub fn wait_for_leaders(&self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        let handles: Vec<GroupHandle> = read(&self.groups).values().cloned().collect();
        handles.iter().all(|h| {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            // Elected, and everything committed so far applied (so listeners and offsets
            // reflect the whole recovered log).
            h.wait_for(left, |s| {
                s.failure.is_some()
                    || (s.leader.is_some()
                        && s.commit_index.0 > 0
                        && s.applied_index >= s.commit_index
                        && s.commit_index >= s.last_index)
            })
            .is_some()
        })
    }

    /// Stops every group (each syncs what it has written).
    pub fn shutdown(&self) {
        *lock(&self.reconcile_lock) = true;
        if let Some(meta) = self.meta() {
            meta.stop();
        }
        for t in self.local_topics() {
            t.close();
        }
    }
}
