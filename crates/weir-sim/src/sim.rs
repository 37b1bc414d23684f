//! The simulation proper: nodes, the event queue, the driver loop, clients and the nemesis.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::fmt::Write as _;

use weir_raft::{
    APPEND_BYTES_MAX, Bugs, Config, ENTRIES_PER_APPEND_MAX, Entry, Envelope, INFLIGHT_APPENDS_MAX,
    LogIndex, Membership, MembershipChange, Message, Millis, NodeId, Output, Payload, ProposeError,
    Raft, Role, Snapshot, SnapshotMeta, Status, Term,
};

use crate::check::{
    Check, Checker, SimResult, describe_payload, digest_step, make_payload, payload_id, violation,
};
use crate::net::{Fate, NetConfig, Network};
use crate::rng::{SplitMix64, mix};
use crate::store::{PendingWrite, SimStore};

/// The cores' timing and feature knobs (same for every node of a run).
#[derive(Clone, Debug)]
pub struct RaftTuning {
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    pub heartbeat_interval_ms: u64,
    pub pre_vote: bool,
    pub check_quorum: bool,
    pub max_entries_per_append: usize,
    pub max_bytes_per_append: usize,
    pub max_inflight_appends: usize,
    /// Fault-injection switches (all off for real tests).
    pub bugs: Bugs,
}

impl Default for RaftTuning {
    fn default() -> Self {
        Self {
            election_timeout_min_ms: 300,
            election_timeout_max_ms: 600,
            heartbeat_interval_ms: 50,
            pre_vote: true,
            check_quorum: true,
            max_entries_per_append: ENTRIES_PER_APPEND_MAX,
            max_bytes_per_append: APPEND_BYTES_MAX,
            max_inflight_appends: INFLIGHT_APPENDS_MAX,
            bugs: Bugs::default(),
        }
    }
}

/// Everything that defines a run besides the scenario's script.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The one seed every random choice derives from.
    pub seed: u64,
    /// Founding voters `n1..=nN`.
    pub nodes: usize,
    pub raft: RaftTuning,
    pub net: NetConfig,
    /// Simulated fsync latency of `PersistEntries` / `PersistSnapshot` (completions stay in order).
    pub fsync_min_ms: u64,
    pub fsync_max_ms: u64,
    /// The driver calls `handle_applied` up to this long after an `Apply`.
    pub apply_delay_max_ms: u64,
    /// Take a snapshot and compact once this many entries were applied since the last one (0: never).
    pub snapshot_every: u64,
    /// Checks that report nothing (for demonstrating that another checker bites on its own).
    pub disabled_checks: BTreeSet<Check>,
    /// Print every event.
    pub trace: bool,
    /// Diagnostic: also report a leader whose progress for a peer has next_index <= match_index
    /// (not required by the spec; off by default).
    pub strict_progress: bool,
    /// Give up (Budget violation) after this many events.
    pub max_events: u64,
}

impl SimConfig {
    /// Reasonable defaults: reliable network, fsync 1-5 ms, snapshots every 40 entries.
    pub fn new(seed: u64, nodes: usize) -> Self {
        Self {
            seed,
            nodes,
            raft: RaftTuning::default(),
            net: NetConfig::reliable(),
            fsync_min_ms: 1,
            fsync_max_ms: 5,
            apply_delay_max_ms: 3,
            snapshot_every: 40,
            disabled_checks: BTreeSet::new(),
            trace: false,
            strict_progress: false,
            max_events: 3_000_000,
        }
    }
}

/// Random faults injected while a scenario runs (see [`Simulation::start_nemesis`]).
/// Weights are relative; an action that is impossible at the time does nothing.
#[derive(Clone, Debug)]
pub struct NemesisConfig {
    /// Time between two actions.
    pub interval_min_ms: u64,
    pub interval_max_ms: u64,
    /// Crash a random node (it restarts after a random down time).
    pub crash: u32,
    /// Crash the current leader.
    pub crash_leader: u32,
    /// Isolate a node, split majority/minority, bridge, or cut one direction of a link.
    pub partition: u32,
    /// Heal every partition.
    pub heal: u32,
    /// Toggle the network between reliable and unreliable.
    pub flaky_net: u32,
    /// At most this many nodes down at once.
    pub max_down: usize,
    pub down_min_ms: u64,
    pub down_max_ms: u64,
}

impl NemesisConfig {
    /// Crashes, partitions and network changes, all enabled.
    pub fn churn() -> Self {
        Self {
            interval_min_ms: 100,
            interval_max_ms: 1_500,
            crash: 3,
            crash_leader: 2,
            partition: 3,
            heal: 3,
            flaky_net: 1,
            max_down: usize::MAX,
            down_min_ms: 10,
            down_max_ms: 2_000,
        }
    }

    /// Only crashes and restarts (network untouched).
    pub fn crashes_only() -> Self {
        Self {
            partition: 0,
            heal: 0,
            flaky_net: 0,
            ..Self::churn()
        }
    }

    /// Only partitions (nodes never crash).
    pub fn partitions_only() -> Self {
        Self {
            crash: 0,
            crash_leader: 0,
            flaky_net: 0,
            ..Self::churn()
        }
    }
}

/// Background clients (see [`Simulation::start_clients`]).
#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub clients: usize,
    /// Time between two proposals of one client.
    pub interval_min_ms: u64,
    pub interval_max_ms: u64,
    /// Payloads get up to this many filler bytes after the 9-byte id.
    pub pad_max: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            clients: 3,
            interval_min_ms: 20,
            interval_max_ms: 300,
            pad_max: 64,
        }
    }
}

/// Counters of one run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunStats {
    pub seed: u64,
    pub sim_ms: Millis,
    pub events: u64,
    pub messages_sent: u64,
    pub messages_dropped: u64,
    pub messages_delivered: u64,
    pub proposals: u64,
    pub acked: u64,
    /// Proposals whose index ended up with another entry (the client is told "not committed").
    pub lost: u64,
    /// Proposals whose node crashed before it could answer.
    pub unknown: u64,
    pub committed_index: u64,
    pub max_term: u64,
    pub crashes: u64,
    pub snapshots_taken: u64,
    pub snapshots_installed: u64,
    pub elections_won: u64,
    /// Membership entries committed.
    pub membership_changes: u64,
    /// AppendEntriesResponse { success: false } sent (backtracking cost).
    pub append_rejections: u64,
    /// Messages sent, by kind.
    pub by_kind: BTreeMap<&'static str, u64>,
    /// Hash of the event sequence: equal for two runs of the same seed.
    pub fingerprint: u64,
}

/// Why `propose_*` did not append anything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProposeFail {
    /// The node is crashed or shut down.
    Down,
    /// The core refused.
    Refused(ProposeError),
}

/// A proposal the core accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Proposed {
    pub node: NodeId,
    pub index: LogIndex,
    pub term: Term,
    /// The unique id inside the payload.
    pub payload_id: u64,
}

/// A proposal acknowledged to its client: its node applied `(index, term)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ack {
    pub payload_id: u64,
    pub index: LogIndex,
    pub term: Term,
    pub node: NodeId,
    pub at_ms: Millis,
}

/// A node's application state: a digest chain over applied entries (snapshot data = its encoding).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateMachine {
    pub applied: u64,
    pub digest: u64,
    /// Configuration as of `applied` (goes into snapshot metadata).
    pub membership: Membership,
    /// Entries applied since the node (re)started.
    pub applied_since_start: u64,
}

impl StateMachine {
    fn encode(&self) -> Vec<u8> {
        let mut d = Vec::with_capacity(16);
        d.extend_from_slice(&self.applied.to_le_bytes());
        d.extend_from_slice(&self.digest.to_le_bytes());
        d
    }

    /// Decode snapshot data; None if it is not ours.
    fn decode(snapshot: &Snapshot) -> Option<Self> {
        if snapshot.data.len() != 16 {
            return None;
        }
        let mut a = [0u8; 8];
        let mut b = [0u8; 8];
        a.copy_from_slice(&snapshot.data[..8]);
        b.copy_from_slice(&snapshot.data[8..]);
        Some(Self {
            applied: u64::from_le_bytes(a),
            digest: u64::from_le_bytes(b),
            membership: snapshot.meta.membership.clone(),
            applied_since_start: 0,
        })
    }
}

#[derive(Clone, Copy, Debug)]
struct Pending {
    term: Term,
    payload_id: u64,
}

#[derive(Debug)]
struct SimNode {
    id: NodeId,
    store: SimStore,
    raft: Option<Raft<SimStore>>,
    /// Bumped at every crash: completions scheduled before it are void.
    incarnation: u64,
    /// Shut down for good (removed from the cluster by the scenario).
    removed: bool,
    initial: Membership,
    timer_at: Option<Millis>,
    timer_gen: u64,
    sm: StateMachine,
    status: Option<Status>,
    fsync_free_at: Millis,
    apply_free_at: Millis,
    /// Bumped when a snapshot replaces the state machine: pending handle_applied calls are void.
    apply_epoch: u64,
    /// Last index the state machine got from an installed snapshot (not through Apply).
    snapshot_floor: u64,
    reported_applied: u64,
    commit_recorded: u64,
    leader_checked_term: Option<Term>,
    pending: BTreeMap<u64, Pending>,
}

#[derive(Clone, Debug)]
enum Event {
    Deliver(Envelope),
    Timer {
        node: usize,
        generation: u64,
    },
    Fsync {
        node: usize,
        incarnation: u64,
    },
    Applied {
        node: usize,
        incarnation: u64,
        epoch: u64,
        index: u64,
    },
    Client {
        client: usize,
        epoch: u64,
    },
    Restart {
        node: usize,
        incarnation: u64,
    },
    Nemesis {
        epoch: u64,
    },
}

#[derive(Debug)]
struct Scheduled {
    at: Millis,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    // BinaryHeap is a max-heap: the earliest (time, seq) must compare greatest.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

#[derive(Clone, Debug, Default)]
struct ClientState {
    leader_guess: Option<NodeId>,
}

/// A deterministic simulated cluster. See the crate docs.
#[derive(Debug)]
pub struct Simulation {
    cfg: SimConfig,
    now: Millis,
    seq: u64,
    queue: BinaryHeap<Scheduled>,
    nodes: Vec<SimNode>,
    founders: Membership,
    net: Network,
    /// Nodes isolated with [`Simulation::isolate`] (MIT's "disconnect").
    isolated: BTreeSet<NodeId>,
    rng_disk: SplitMix64,
    rng_client: SplitMix64,
    rng_nemesis: SplitMix64,
    rng_seeds: SplitMix64,
    checker: Checker,
    clients: Vec<ClientState>,
    client_cfg: ClientConfig,
    client_epoch: u64,
    nemesis: Option<NemesisConfig>,
    nemesis_epoch: u64,
    next_payload: u64,
    acks: Vec<Ack>,
    stats: RunStats,
    events_now: u64,
    trace_log: Option<Vec<String>>,
}

const SAME_INSTANT_EVENTS_MAX: u64 = 200_000;

thread_local! {
    static NOW: std::cell::Cell<Millis> = const { std::cell::Cell::new(0) };
}

/// Simulated time of the simulation running on this thread (for panic reports).
pub(crate) fn current_time() -> Millis {
    NOW.with(std::cell::Cell::get)
}

fn msg_kind(m: &Message) -> &'static str {
    match m {
        Message::PreVote { .. } => "PreVote",
        Message::PreVoteResponse { .. } => "PreVoteResponse",
        Message::RequestVote { .. } => "RequestVote",
        Message::RequestVoteResponse { .. } => "RequestVoteResponse",
        Message::AppendEntries { .. } => "AppendEntries",
        Message::AppendEntriesResponse { .. } => "AppendEntriesResponse",
        Message::InstallSnapshot { .. } => "InstallSnapshot",
        Message::InstallSnapshotResponse { .. } => "InstallSnapshotResponse",
        Message::TimeoutNow { .. } => "TimeoutNow",
    }
}

fn msg_code(m: &Message) -> u64 {
    match m {
        Message::PreVote { .. } => 1,
        Message::PreVoteResponse { .. } => 2,
        Message::RequestVote { .. } => 3,
        Message::RequestVoteResponse { .. } => 4,
        Message::AppendEntries { .. } => 5,
        Message::AppendEntriesResponse { .. } => 6,
        Message::InstallSnapshot { .. } => 7,
        Message::InstallSnapshotResponse { .. } => 8,
        Message::TimeoutNow { .. } => 9,
    }
}

/// One-line summary of a message for traces.
pub fn describe_message(m: &Message) -> String {
    match m {
        Message::PreVote {
            term,
            last_log_index,
            last_log_term,
        } => format!("PreVote {term} last={last_log_index}/{last_log_term}"),
        Message::PreVoteResponse { term, granted } => {
            format!("PreVoteResponse {term} granted={granted}")
        }
        Message::RequestVote {
            term,
            last_log_index,
            last_log_term,
            leadership_transfer,
        } => format!(
            "RequestVote {term} last={last_log_index}/{last_log_term} transfer={leadership_transfer}"
        ),
        Message::RequestVoteResponse { term, granted } => {
            format!("RequestVoteResponse {term} granted={granted}")
        }
        Message::AppendEntries {
            term,
            prev_log_index,
            prev_log_term,
            entries,
            leader_commit,
        } => {
            let range = match (entries.first(), entries.last()) {
                (Some(a), Some(b)) => format!(" entries {}..={}", a.index, b.index),
                _ => String::new(),
            };
            format!(
                "AppendEntries {term} prev={prev_log_index}/{prev_log_term}{range} commit={leader_commit}"
            )
        }
        Message::AppendEntriesResponse {
            term,
            success,
            match_index,
            conflict_term,
            conflict_index,
            last_log_index,
        } => format!(
            "AppendEntriesResponse {term} success={success} match={match_index} conflict={conflict_term:?}/{conflict_index} last={last_log_index}"
        ),
        Message::InstallSnapshot { term, snapshot } => format!(
            "InstallSnapshot {term} upto={}/{}",
            snapshot.meta.last_index, snapshot.meta.last_term
        ),
        Message::InstallSnapshotResponse { term, last_index } => {
            format!("InstallSnapshotResponse {term} last={last_index}")
        }
        Message::TimeoutNow { term } => format!("TimeoutNow {term}"),
    }
}

impl Simulation {
    /// A cluster of `cfg.nodes` founding voters, all started at time 0.
    pub fn new(cfg: SimConfig) -> Self {
        let mut master = SplitMix64::new(cfg.seed);
        let rng_net = master.fork();
        let rng_disk = master.fork();
        let rng_client = master.fork();
        let rng_nemesis = master.fork();
        let rng_seeds = master.fork();
        let founders = Membership::with_voters((1..=cfg.nodes as u64).map(NodeId));
        let mut checker = Checker::new(founders.clone(), cfg.disabled_checks.clone());
        checker.strict_progress = cfg.strict_progress;
        let trace_log = None;
        let mut sim = Self {
            net: Network::new(cfg.net.clone(), rng_net),
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            nodes: Vec::new(),
            founders: founders.clone(),
            isolated: BTreeSet::new(),
            rng_disk,
            rng_client,
            rng_nemesis,
            rng_seeds,
            checker,
            clients: Vec::new(),
            client_cfg: ClientConfig::default(),
            client_epoch: 0,
            nemesis: None,
            nemesis_epoch: 0,
            next_payload: 1,
            acks: Vec::new(),
            stats: RunStats {
                seed: cfg.seed,
                fingerprint: mix(cfg.seed),
                ..RunStats::default()
            },
            events_now: 0,
            trace_log,
            cfg,
        };
        NOW.with(|c| c.set(0));
        for _ in 0..sim.cfg.nodes {
            sim.spawn_node(founders.clone());
        }
        for n in 0..sim.nodes.len() {
            // Founders boot in a fixed order at t=0; a boot cannot violate anything.
            if let Err(v) = sim.start_node(n) {
                panic!("boot failed: {v}");
            }
        }
        sim
    }

    /// Keep the trace in memory instead of printing it (see [`Simulation::take_trace`]).
    pub fn record_trace(&mut self) {
        self.trace_log = Some(Vec::new());
    }

    /// The recorded trace lines so far.
    pub fn take_trace(&mut self) -> Vec<String> {
        self.trace_log
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    fn trace(&mut self, line: impl FnOnce() -> String) {
        if self.cfg.trace || self.trace_log.is_some() {
            let l = format!("[{:>7}ms] {}", self.now, line());
            if let Some(log) = &mut self.trace_log {
                log.push(l);
            } else {
                println!("{l}");
            }
        }
    }

    fn fp(&mut self, x: u64) {
        self.stats.fingerprint = mix(self.stats.fingerprint ^ x);
    }

    fn spawn_node(&mut self, initial: Membership) -> usize {
        let id = NodeId(self.nodes.len() as u64 + 1);
        self.nodes.push(SimNode {
            id,
            store: SimStore::new(),
            raft: None,
            incarnation: 0,
            removed: false,
            initial,
            timer_at: None,
            timer_gen: 0,
            sm: StateMachine::default(),
            status: None,
            fsync_free_at: 0,
            apply_free_at: 0,
            apply_epoch: 0,
            snapshot_floor: 0,
            reported_applied: 0,
            commit_recorded: 0,
            leader_checked_term: None,
            pending: BTreeMap::new(),
        });
        self.nodes.len() - 1
    }

    fn raft_config(&mut self, id: NodeId) -> Config {
        let t = &self.cfg.raft;
        let mut c = Config::new(id);
        c.election_timeout_min_ms = t.election_timeout_min_ms;
        c.election_timeout_max_ms = t.election_timeout_max_ms;
        c.heartbeat_interval_ms = t.heartbeat_interval_ms;
        c.pre_vote = t.pre_vote;
        c.check_quorum = t.check_quorum;
        c.max_entries_per_append = t.max_entries_per_append;
        c.max_bytes_per_append = t.max_bytes_per_append;
        c.max_inflight_appends = t.max_inflight_appends;
        c.bugs = t.bugs.clone();
        c.random_seed = self.rng_seeds.next_u64();
        c
    }

    /// (Re)start node `n` from its store.
    fn start_node(&mut self, n: usize) -> SimResult<()> {
        let id = self.nodes[n].id;
        let config = self.raft_config(id);
        let now = self.now;
        let store = self.nodes[n].store.clone();
        let snapshot = store.state().written.snapshot.clone();
        let sm = match &snapshot {
            Some(s) => match StateMachine::decode(s) {
                Some(sm) => sm,
                None => {
                    return Err(violation(
                        Check::Contract,
                        now,
                        Some(id),
                        "stored snapshot data is not the simulation's",
                    ));
                }
            },
            None => StateMachine {
                membership: self.nodes[n].initial.clone(),
                ..StateMachine::default()
            },
        };
        if let Some(s) = &snapshot {
            self.checker.snapshot_state(now, id, &s.meta, sm.digest)?;
        }
        let snap_index = snapshot.as_ref().map_or(0, |s| s.meta.last_index.0);
        let initial = self.nodes[n].initial.clone();
        let raft = Raft::new(config, store, initial, now);
        let node = &mut self.nodes[n];
        node.raft = Some(raft);
        node.snapshot_floor = sm.applied;
        node.sm = sm;
        node.status = None;
        node.fsync_free_at = now;
        node.apply_free_at = now;
        node.reported_applied = snap_index;
        node.commit_recorded = snap_index;
        node.leader_checked_term = None;
        node.timer_at = None;
        node.timer_gen += 1;
        self.trace(|| format!("{id} starts (snapshot up to {snap_index})"));
        self.after_call(n)
    }

    // ------------------------------------------------------------------ accessors

    /// Simulated time (ms).
    pub fn now(&self) -> Millis {
        self.now
    }

    /// The run's configuration.
    pub fn config(&self) -> &SimConfig {
        &self.cfg
    }

    /// Every node ever created (including removed ones).
    pub fn node_ids(&self) -> Vec<NodeId> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    fn idx(&self, id: NodeId) -> Option<usize> {
        let i = (id.0 as usize).checked_sub(1)?;
        (i < self.nodes.len()).then_some(i)
    }

    /// Is the node running?
    pub fn is_up(&self, id: NodeId) -> bool {
        self.idx(id).is_some_and(|i| self.nodes[i].raft.is_some())
    }

    /// Running and not isolated.
    pub fn is_connected(&self, id: NodeId) -> bool {
        self.is_up(id) && !self.isolated.contains(&id)
    }

    /// Running, not removed nodes.
    pub fn up_nodes(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|n| n.raft.is_some())
            .map(|n| n.id)
            .collect()
    }

    /// Running, not isolated nodes.
    pub fn connected_nodes(&self) -> Vec<NodeId> {
        self.up_nodes()
            .into_iter()
            .filter(|n| !self.isolated.contains(n))
            .collect()
    }

    /// Status observed after the node's last step (None when down).
    pub fn status(&self, id: NodeId) -> Option<&Status> {
        let i = self.idx(id)?;
        self.nodes[i].raft.as_ref()?;
        self.nodes[i].status.as_ref()
    }

    /// Read-only access to a running node's core.
    pub fn raft(&self, id: NodeId) -> Option<&Raft<SimStore>> {
        self.nodes[self.idx(id)?].raft.as_ref()
    }

    /// A node's storage (also while it is down).
    pub fn store(&self, id: NodeId) -> Option<&SimStore> {
        self.idx(id).map(|i| &self.nodes[i].store)
    }

    /// A node's state machine.
    pub fn state_machine(&self, id: NodeId) -> Option<&StateMachine> {
        self.idx(id).map(|i| &self.nodes[i].sm)
    }

    /// The checkers' view (committed log etc.).
    pub fn checker(&self) -> &Checker {
        &self.checker
    }

    /// The running leader with the highest term, if any (it may be stale and not know it yet).
    pub fn leader(&self) -> Option<NodeId> {
        self.leader_among(&self.up_nodes())
    }

    /// The leader with the highest term among `nodes`.
    pub fn leader_among(&self, nodes: &[NodeId]) -> Option<NodeId> {
        nodes
            .iter()
            .filter_map(|&n| {
                self.status(n)
                    .filter(|s| s.role == Role::Leader)
                    .map(|s| (s.term, n))
            })
            .max()
            .map(|(_, n)| n)
    }

    /// Highest term among running nodes.
    pub fn max_term(&self) -> Term {
        self.up_nodes()
            .iter()
            .filter_map(|&n| self.status(n).map(|s| s.term))
            .max()
            .unwrap_or_default()
    }

    /// Counters so far.
    pub fn stats(&self) -> RunStats {
        let mut s = self.stats.clone();
        s.sim_ms = self.now;
        s.committed_index = self.checker.max_committed();
        s.acked = self.acks.len() as u64;
        s.max_term = self.max_term().0;
        s.membership_changes = self.checker.membership_changes();
        s
    }

    /// Acknowledged proposals so far.
    pub fn acks(&self) -> &[Ack] {
        &self.acks
    }

    /// Was payload `id` acknowledged?
    pub fn is_acked(&self, payload_id: u64) -> bool {
        self.acks.iter().rev().any(|a| a.payload_id == payload_id)
    }

    /// Number of running nodes that applied `index`, and the payload id committed there.
    pub fn n_committed(&self, index: u64) -> (usize, Option<u64>) {
        let count = self
            .nodes
            .iter()
            .filter(|n| n.raft.is_some() && n.sm.applied >= index)
            .count();
        (
            count,
            self.checker.committed(index).and_then(|c| c.payload_id),
        )
    }

    /// One line per node: role, term, indexes, durability.
    pub fn describe_nodes(&self) -> String {
        let mut s = String::new();
        for n in &self.nodes {
            let st = n.store.state();
            let disk = format!(
                "log {}..={} durable ..={} pending {}",
                st.written.first_index(),
                st.written.last_index(),
                st.durable.last_index(),
                st.pending.len()
            );
            drop(st);
            let state = match (&n.raft, &n.status) {
                _ if n.removed => "removed".to_string(),
                (None, _) => "DOWN".to_string(),
                (Some(_), Some(st)) => format!(
                    "{:?} {} leader={:?} commit={} applied={}",
                    st.role,
                    st.term,
                    st.leader.map(|l| l.0),
                    st.commit_index,
                    st.applied_index
                ),
                (Some(_), None) => "?".to_string(),
            };
            let progress = match &n.status {
                Some(st) if n.raft.is_some() && st.role == Role::Leader => {
                    let p: Vec<String> = st
                        .progress
                        .iter()
                        .map(|(id, p)| {
                            format!("{id}: match {} next {}", p.match_index, p.next_index)
                        })
                        .collect();
                    format!("; progress [{}]", p.join(", "))
                }
                _ => String::new(),
            };
            let iso = if self.isolated.contains(&n.id) {
                " isolated"
            } else {
                ""
            };
            let _ = writeln!(
                s,
                "  {}: {state}; sm applied {}; {disk}{iso}{progress}",
                n.id, n.sm.applied
            );
        }
        s
    }

    // ------------------------------------------------------------------ event queue

    fn set_now(&mut self, t: Millis) {
        self.now = t;
        NOW.with(|c| c.set(t));
    }

    fn push(&mut self, at: Millis, event: Event) {
        self.seq += 1;
        self.queue.push(Scheduled {
            at: at.max(self.now),
            seq: self.seq,
            event,
        });
    }

    /// Run one event. `Ok(false)` when nothing is scheduled.
    pub fn step(&mut self) -> SimResult<bool> {
        let Some(s) = self.queue.pop() else {
            return Ok(false);
        };
        if s.at > self.now {
            self.set_now(s.at);
            self.events_now = 0;
        } else {
            self.events_now += 1;
            if self.events_now > SAME_INSTANT_EVENTS_MAX {
                return Err(violation(
                    Check::Budget,
                    self.now,
                    None,
                    format!(
                        "more than {SAME_INSTANT_EVENTS_MAX} events at one instant (busy loop?)\n{}",
                        self.describe_nodes()
                    ),
                ));
            }
        }
        self.stats.events += 1;
        if self.stats.events > self.cfg.max_events {
            return Err(violation(
                Check::Budget,
                self.now,
                None,
                format!("more than {} events", self.cfg.max_events),
            ));
        }
        self.fp(self.now);
        match s.event {
            Event::Deliver(env) => self.deliver(env)?,
            Event::Timer { node, generation } => {
                if self.nodes[node].raft.is_some() && self.nodes[node].timer_gen == generation {
                    self.nodes[node].timer_at = None;
                    self.fp(0x7100 + node as u64);
                    let id = self.nodes[node].id;
                    self.trace(|| format!("{id} timer fires"));
                    self.call(node, |r, now| r.handle_timeout(now))?;
                }
            }
            Event::Fsync { node, incarnation } => self.fsync_done(node, incarnation)?,
            Event::Applied {
                node,
                incarnation,
                epoch,
                index,
            } => {
                let nd = &self.nodes[node];
                if nd.raft.is_some() && nd.incarnation == incarnation && nd.apply_epoch == epoch {
                    self.fp(0xA000 + index);
                    self.nodes[node].reported_applied = index;
                    let id = self.nodes[node].id;
                    self.trace(|| format!("{id} reports applied up to i{index}"));
                    self.call(node, |r, now| r.handle_applied(now, LogIndex(index)))?;
                    self.maybe_compact(node)?;
                }
            }
            Event::Client { client, epoch } => {
                if epoch == self.client_epoch {
                    self.client_tick(client)?;
                }
            }
            Event::Restart { node, incarnation } => {
                let nd = &self.nodes[node];
                if nd.raft.is_none() && !nd.removed && nd.incarnation == incarnation {
                    self.start_node(node)?;
                }
            }
            Event::Nemesis { epoch } => {
                if epoch == self.nemesis_epoch {
                    self.nemesis_tick()?;
                }
            }
        }
        Ok(true)
    }

    /// Run events until `ms` of simulated time have passed.
    pub fn run_for(&mut self, ms: Millis) -> SimResult<()> {
        let deadline = self.now + ms;
        self.run_until(deadline, |_| false).map(|_| ())
    }

    /// Run until `done(self)` holds (checked after every event; true) or `deadline` (false).
    pub fn run_until(
        &mut self,
        deadline: Millis,
        mut done: impl FnMut(&Self) -> bool,
    ) -> SimResult<bool> {
        loop {
            if done(self) {
                return Ok(true);
            }
            match self.queue.peek() {
                Some(s) if s.at <= deadline => {
                    self.step()?;
                }
                _ => {
                    self.set_now(self.now.max(deadline));
                    return Ok(done(self));
                }
            }
        }
    }

    // ------------------------------------------------------------------ driver

    fn call<R>(
        &mut self,
        n: usize,
        f: impl FnOnce(&mut Raft<SimStore>, Millis) -> R,
    ) -> SimResult<Option<R>> {
        let now = self.now;
        let Some(raft) = self.nodes[n].raft.as_mut() else {
            return Ok(None);
        };
        let r = f(raft, now);
        self.after_call(n)?;
        Ok(Some(r))
    }

    fn after_call(&mut self, n: usize) -> SimResult<()> {
        self.drain(n)?;
        self.observe(n)?;
        self.refresh_timer(n);
        let nodes = &self.nodes;
        self.checker.durable_quorum(self.now, |id, k, term| {
            let Some(i) = (id.0 as usize).checked_sub(1) else {
                return false;
            };
            nodes.get(i).is_some_and(|nd| {
                let st = nd.store.state();
                st.durable.snapshot_index() >= k || st.durable.term(k) == Some(term)
            })
        })
    }

    fn drain(&mut self, n: usize) -> SimResult<()> {
        let id = self.nodes[n].id;
        loop {
            let Some(out) = self.nodes[n].raft.as_mut().and_then(|r| r.poll_output()) else {
                return Ok(());
            };
            let now = self.now;
            match out {
                Output::PersistHardState(hs) => {
                    self.fp(0x4853 ^ hs.term.0);
                    let store = self.nodes[n].store.clone();
                    let old = store.state().hard_state.clone();
                    self.trace(|| {
                        format!(
                            "{id} persist hard state {} vote={:?}",
                            hs.term,
                            hs.voted_for.map(|v| v.0)
                        )
                    });
                    self.checker.hard_state(now, id, &old, &hs)?;
                    store.set_hard_state(hs);
                }
                Output::PersistEntries(es) => {
                    let (Some(first), Some(last)) = (es.first(), es.last()) else {
                        return Err(violation(
                            Check::Contract,
                            now,
                            Some(id),
                            "PersistEntries with no entries",
                        ));
                    };
                    self.fp(0x5045 ^ mix(first.index.0) ^ last.index.0);
                    let (fi, li) = (first.index, last.index);
                    self.trace(|| format!("{id} write entries {fi}..={li}"));
                    let commit = self.nodes[n]
                        .status
                        .as_ref()
                        .map_or(0, |s| s.commit_index.0);
                    let store = self.nodes[n].store.clone();
                    {
                        let st = store.state();
                        self.checker
                            .entries_written(now, id, &st.written, &es, commit)?;
                    }
                    store
                        .write_entries(es)
                        .map_err(|e| violation(Check::Contract, now, Some(id), e))?;
                    self.schedule_fsync(n);
                }
                Output::PersistSnapshot(snap) => {
                    self.fp(0x5053 ^ snap.meta.last_index.0);
                    let meta = snap.meta.clone();
                    self.trace(|| {
                        format!(
                            "{id} install snapshot up to {}/{}",
                            meta.last_index, meta.last_term
                        )
                    });
                    let Some(mut sm) = StateMachine::decode(&snap) else {
                        return Err(violation(
                            Check::Contract,
                            now,
                            Some(id),
                            "PersistSnapshot data is not a simulation snapshot",
                        ));
                    };
                    if sm.applied != meta.last_index.0 {
                        return Err(violation(
                            Check::Contract,
                            now,
                            Some(id),
                            format!(
                                "snapshot data covers {} but its meta says {}",
                                sm.applied, meta.last_index
                            ),
                        ));
                    }
                    let node = &self.nodes[n];
                    if meta.last_index.0 < node.sm.applied {
                        return Err(violation(
                            Check::StateMachineSafety,
                            now,
                            Some(id),
                            format!(
                                "PersistSnapshot up to {} would take the state machine back from {}",
                                meta.last_index, node.sm.applied
                            ),
                        ));
                    }
                    self.checker.snapshot_state(now, id, &meta, sm.digest)?;
                    sm.applied_since_start = self.nodes[n].sm.applied_since_start;
                    let node = &mut self.nodes[n];
                    node.snapshot_floor = sm.applied;
                    node.sm = sm;
                    node.apply_epoch += 1;
                    let before = node.pending.len();
                    node.pending.retain(|&i, _| i > meta.last_index.0);
                    self.stats.unknown += (before - node.pending.len()) as u64;
                    node.store.write_snapshot(snap);
                    self.stats.snapshots_installed += 1;
                    self.schedule_fsync(n);
                }
                Output::Send(env) => {
                    if env.from != id {
                        return Err(violation(
                            Check::Contract,
                            now,
                            Some(id),
                            format!("sends a message from {} to {}", env.from, env.to),
                        ));
                    }
                    self.send(env);
                }
                Output::Apply(es) => self.apply(n, es)?,
                Output::StateChanged { role, term, leader } => {
                    self.fp(0x5343 ^ term.0);
                    self.trace(|| {
                        format!(
                            "{id} is now {role:?} in {term} (leader {:?})",
                            leader.map(|l| l.0)
                        )
                    });
                }
            }
        }
    }

    fn schedule_fsync(&mut self, n: usize) {
        let delay = self
            .rng_disk
            .range_inclusive(self.cfg.fsync_min_ms, self.cfg.fsync_max_ms);
        let at = self.nodes[n].fsync_free_at.max(self.now + delay);
        self.nodes[n].fsync_free_at = at;
        let incarnation = self.nodes[n].incarnation;
        self.push(
            at,
            Event::Fsync {
                node: n,
                incarnation,
            },
        );
    }

    fn fsync_done(&mut self, n: usize, incarnation: u64) -> SimResult<()> {
        let node = &self.nodes[n];
        if node.raft.is_none() || node.incarnation != incarnation {
            return Ok(());
        }
        let id = node.id;
        match node.store.complete_oldest() {
            Some(PendingWrite::Entries(es)) => {
                let last = es.last().expect("non-empty");
                let (index, term) = (last.index, last.term);
                self.fp(0xF5 ^ index.0);
                self.trace(|| format!("{id} durable up to {index}/{term}"));
                self.call(n, |r, now| r.handle_persisted(now, index, term))?;
            }
            Some(PendingWrite::Snapshot(s)) => {
                let index = s.meta.last_index;
                self.fp(0xF6 ^ index.0);
                self.trace(|| format!("{id} snapshot durable up to {index}"));
                self.call(n, |r, now| r.handle_snapshot_persisted(now, index))?;
            }
            None => {}
        }
        Ok(())
    }

    fn apply(&mut self, n: usize, es: Vec<Entry>) -> SimResult<()> {
        let now = self.now;
        let id = self.nodes[n].id;
        let Some(last) = es.last().map(|e| e.index.0) else {
            return Err(violation(
                Check::Contract,
                now,
                Some(id),
                "Apply with no entries",
            ));
        };
        self.fp(0xAB ^ mix(last));
        let first = es[0].index;
        self.trace(|| format!("{id} apply {first}..=i{last}"));
        for e in es {
            let node = &mut self.nodes[n];
            if e.index.0 != node.sm.applied + 1 {
                return Err(violation(
                    Check::StateMachineSafety,
                    now,
                    Some(id),
                    format!(
                        "applies entry {} right after {} (not in order / not exactly once)",
                        e.index, node.sm.applied
                    ),
                ));
            }
            node.sm.applied = e.index.0;
            node.sm.digest = digest_step(node.sm.digest, &e);
            node.sm.applied_since_start += 1;
            if let Payload::Membership(m) = &e.payload {
                node.sm.membership = m.clone();
            }
            let digest = node.sm.digest;
            if let Some(p) = node.pending.remove(&e.index.0) {
                if p.term == e.term {
                    if payload_id(&e.payload) != Some(p.payload_id) {
                        return Err(violation(
                            Check::Contract,
                            now,
                            Some(id),
                            format!(
                                "propose returned ({}, {}) for p{} but the entry applied there is {}",
                                e.index,
                                e.term,
                                p.payload_id,
                                describe_payload(&e.payload)
                            ),
                        ));
                    }
                    self.acks.push(Ack {
                        payload_id: p.payload_id,
                        index: e.index,
                        term: e.term,
                        node: id,
                        at_ms: now,
                    });
                } else {
                    self.stats.lost += 1;
                }
            }
            self.checker.applied(now, id, &e, digest)?;
        }
        let delay = self
            .rng_disk
            .range_inclusive(0, self.cfg.apply_delay_max_ms);
        let node = &mut self.nodes[n];
        let at = node.apply_free_at.max(now + delay);
        node.apply_free_at = at;
        let ev = Event::Applied {
            node: n,
            incarnation: node.incarnation,
            epoch: node.apply_epoch,
            index: last,
        };
        self.push(at, ev);
        Ok(())
    }

    fn observe(&mut self, n: usize) -> SimResult<()> {
        let now = self.now;
        let Some(raft) = self.nodes[n].raft.as_ref() else {
            return Ok(());
        };
        let st = raft.status();
        let id = self.nodes[n].id;
        if st.id != id {
            return Err(violation(
                Check::Contract,
                now,
                Some(id),
                format!("status says id {}", st.id),
            ));
        }
        self.checker
            .status(now, self.nodes[n].status.as_ref(), &st)?;
        let node = &self.nodes[n];
        if node.sm.applied > st.commit_index.0 && node.sm.applied != node.snapshot_floor {
            return Err(violation(
                Check::Contract,
                now,
                Some(id),
                format!(
                    "Apply handed out entry {} beyond the commit index {}",
                    self.nodes[n].sm.applied, st.commit_index
                ),
            ));
        }
        // Entries the node shows committed join the global committed log.
        let from = self.nodes[n].commit_recorded + 1;
        let mut recorded = self.nodes[n].commit_recorded;
        if st.commit_index.0 >= from {
            let store = self.nodes[n].store.clone();
            let img = store.state();
            for i in from..=st.commit_index.0 {
                match img.written.entry(i) {
                    Some(e) => {
                        self.checker
                            .committed_entry(now, id, e, "shown committed")?;
                        recorded = i;
                    }
                    None if i <= img.written.snapshot_index() => recorded = i,
                    None => break,
                }
            }
        }
        self.nodes[n].commit_recorded = recorded;
        if st.role == Role::Leader && self.nodes[n].leader_checked_term != Some(st.term) {
            self.stats.elections_won += 1;
            self.fp(0x1EAD ^ st.term.0);
            let store = self.nodes[n].store.clone();
            let img = store.state();
            self.checker
                .leader_completeness(now, id, st.term, &img.written)?;
            self.nodes[n].leader_checked_term = Some(st.term);
        }
        self.nodes[n].status = Some(st);
        Ok(())
    }

    fn refresh_timer(&mut self, n: usize) {
        let Some(raft) = self.nodes[n].raft.as_ref() else {
            return;
        };
        let t = raft.next_timeout();
        let node = &mut self.nodes[n];
        if t == node.timer_at {
            return;
        }
        node.timer_gen += 1;
        node.timer_at = t;
        if let Some(at) = t {
            let generation = node.timer_gen;
            self.push(
                at,
                Event::Timer {
                    node: n,
                    generation,
                },
            );
        }
    }

    fn send(&mut self, env: Envelope) {
        self.stats.messages_sent += 1;
        *self
            .stats
            .by_kind
            .entry(msg_kind(&env.message))
            .or_default() += 1;
        if let Message::AppendEntriesResponse { success: false, .. } = env.message {
            self.stats.append_rejections += 1;
        }
        self.fp(msg_code(&env.message) << 32
            ^ env.from.0 << 16
            ^ env.to.0
            ^ env.message.term().0 << 40);
        match self.net.route(env.from, env.to) {
            Fate::Dropped => {
                self.stats.messages_dropped += 1;
                if self.cfg.trace || self.trace_log.is_some() {
                    let d = describe_message(&env.message);
                    self.trace(|| format!("{} -> {} DROPPED {d}", env.from, env.to));
                }
            }
            Fate::Deliver(delays) => {
                for d in delays {
                    self.push(self.now + d, Event::Deliver(env.clone()));
                }
            }
        }
    }

    fn deliver(&mut self, env: Envelope) -> SimResult<()> {
        let Some(n) = self.idx(env.to) else {
            return Ok(());
        };
        if self.nodes[n].raft.is_none() || !self.net.connected(env.from, env.to) {
            self.stats.messages_dropped += 1;
            return Ok(());
        }
        self.stats.messages_delivered += 1;
        self.fp(0xDE ^ msg_code(&env.message) << 8 ^ env.to.0);
        if self.cfg.trace || self.trace_log.is_some() {
            let d = describe_message(&env.message);
            self.trace(|| format!("{} -> {} {d}", env.from, env.to));
        }
        self.call(n, |r, now| r.handle_message(now, env))?;
        Ok(())
    }

    fn maybe_compact(&mut self, n: usize) -> SimResult<()> {
        let every = self.cfg.snapshot_every;
        let node = &self.nodes[n];
        if every == 0 || node.raft.is_none() || node.sm.applied != node.reported_applied {
            return Ok(());
        }
        let snap_index = node.store.state().written.snapshot_index();
        if node.sm.applied < snap_index + every || node.store.pending_writes() > 0 {
            return Ok(());
        }
        let index = node.sm.applied;
        let Some(term) = node.store.state().written.term(index) else {
            return Ok(());
        };
        let snapshot = Snapshot {
            meta: SnapshotMeta {
                last_index: LogIndex(index),
                last_term: term,
                membership: node.sm.membership.clone(),
            },
            data: node.sm.encode(),
        };
        if node.store.compact(snapshot) {
            self.stats.snapshots_taken += 1;
            let id = node.id;
            self.fp(0xC0 ^ index);
            self.trace(|| format!("{id} snapshot + compact up to i{index}"));
            self.call(n, |r, now| r.handle_compacted(now))?;
        }
        Ok(())
    }

    // ------------------------------------------------------------------ faults

    /// Crash a node: it loses everything not durable, its pending writes and timers; messages
    /// to it are dropped until it restarts.
    pub fn crash(&mut self, id: NodeId) {
        let Some(n) = self.idx(id) else { return };
        let node = &mut self.nodes[n];
        if node.raft.is_none() {
            return;
        }
        node.raft = None;
        node.incarnation += 1;
        node.store.crash();
        node.timer_at = None;
        node.timer_gen += 1;
        node.status = None;
        self.stats.unknown += node.pending.len() as u64;
        node.pending.clear();
        self.stats.crashes += 1;
        self.fp(0xC4A5 ^ id.0);
        self.trace(|| format!("{id} CRASHES"));
    }

    /// Restart a crashed node from its durable store.
    pub fn restart(&mut self, id: NodeId) -> SimResult<()> {
        let Some(n) = self.idx(id) else { return Ok(()) };
        if self.nodes[n].raft.is_some() || self.nodes[n].removed {
            return Ok(());
        }
        self.start_node(n)
    }

    /// Crash and schedule a restart after `down_ms`.
    pub fn crash_for(&mut self, id: NodeId, down_ms: Millis) {
        self.crash(id);
        if let Some(n) = self.idx(id) {
            let incarnation = self.nodes[n].incarnation;
            self.push(
                self.now + down_ms,
                Event::Restart {
                    node: n,
                    incarnation,
                },
            );
        }
    }

    /// Shut a node down for good (after removing it from the cluster).
    pub fn shutdown(&mut self, id: NodeId) {
        self.crash(id);
        if let Some(n) = self.idx(id) {
            self.nodes[n].removed = true;
        }
    }

    /// Cut every link of `id` (MIT's `disconnect`).
    pub fn isolate(&mut self, id: NodeId) {
        let all = self.node_ids();
        self.net.isolate(id, &all);
        self.isolated.insert(id);
        self.trace(|| format!("{id} isolated"));
    }

    /// Restore every link of `id` (MIT's `connect`).
    pub fn reconnect(&mut self, id: NodeId) {
        self.net.reconnect(id);
        self.isolated.remove(&id);
        // Links to other isolated nodes stay cut.
        let all = self.node_ids();
        for &o in &self.isolated.clone() {
            self.net.isolate(o, &all);
        }
        self.trace(|| format!("{id} reconnected"));
    }

    /// Only nodes in the same group talk.
    pub fn partition(&mut self, groups: &[Vec<NodeId>]) {
        let all = self.node_ids();
        self.net.partition(groups, &all);
        self.isolated.clear();
        for &n in &all {
            if !groups.iter().any(|g| g.contains(&n)) {
                self.isolated.insert(n);
            }
        }
        self.fp(0x9A27);
        let desc = format!(
            "{:?}",
            groups
                .iter()
                .map(|g| g.iter().map(|n| n.0).collect::<Vec<_>>())
                .collect::<Vec<_>>()
        );
        self.trace(|| format!("partition {desc}"));
    }

    /// `left` and `right` cannot talk to each other; `bridge` talks to both.
    pub fn bridge(&mut self, left: &[NodeId], bridge: NodeId, right: &[NodeId]) {
        self.net.heal();
        self.isolated.clear();
        for &a in left {
            for &b in right {
                self.net.cut_pair(a, b);
            }
        }
        self.fp(0xB41D);
        let desc = format!(
            "{:?} <-> {} <-> {:?}",
            left.iter().map(|n| n.0).collect::<Vec<_>>(),
            bridge,
            right.iter().map(|n| n.0).collect::<Vec<_>>()
        );
        self.trace(|| format!("bridge {desc}"));
    }

    /// Cut one direction of one link.
    pub fn cut_link(&mut self, from: NodeId, to: NodeId) {
        self.net.cut_link(from, to);
        self.trace(|| format!("link {from} -> {to} cut"));
    }

    /// Every link works again.
    pub fn heal(&mut self) {
        self.net.heal();
        self.isolated.clear();
        self.fp(0x4EA1);
        self.trace(|| "network healed".to_string());
    }

    /// Change every link's behaviour.
    pub fn set_net(&mut self, cfg: NetConfig) {
        self.net.set_config(cfg);
    }

    /// Override one directed link's behaviour.
    pub fn set_link(&mut self, from: NodeId, to: NodeId, cfg: NetConfig) {
        self.net.set_link(from, to, cfg);
    }

    /// The current default link behaviour.
    pub fn net_config(&self) -> &NetConfig {
        self.net.config()
    }

    // ------------------------------------------------------------------ clients & admin

    fn new_payload(&mut self, pad_max: usize) -> (u64, Vec<u8>) {
        let id = self.next_payload;
        self.next_payload += 1;
        let pad = if pad_max == 0 {
            0
        } else {
            self.rng_client.index(pad_max + 1)
        };
        (id, make_payload(id, pad))
    }

    /// Propose a fresh unique payload on `id`. Acknowledged (see [`Simulation::acks`]) when that
    /// node applies the returned (index, term).
    pub fn propose(&mut self, id: NodeId) -> SimResult<Result<Proposed, ProposeFail>> {
        let pad_max = self.client_cfg.pad_max;
        self.propose_padded(id, pad_max)
    }

    fn propose_padded(
        &mut self,
        id: NodeId,
        pad_max: usize,
    ) -> SimResult<Result<Proposed, ProposeFail>> {
        let Some(n) = self.idx(id) else {
            return Ok(Err(ProposeFail::Down));
        };
        if self.nodes[n].raft.is_none() {
            return Ok(Err(ProposeFail::Down));
        }
        let (pid, data) = self.new_payload(pad_max);
        let r = self
            .call(n, |r, now| r.propose(now, data))?
            .expect("node is up");
        match r {
            Ok((index, term)) => {
                self.stats.proposals += 1;
                self.fp(0x9909 ^ index.0);
                let st = self.nodes[n].status.as_ref().expect("observed");
                if st.term != term || st.role != Role::Leader {
                    return Err(violation(
                        Check::Contract,
                        self.now,
                        Some(id),
                        format!(
                            "propose returned term {term} but the node is {:?} in {}",
                            st.role, st.term
                        ),
                    ));
                }
                self.nodes[n].pending.insert(
                    index.0,
                    Pending {
                        term,
                        payload_id: pid,
                    },
                );
                self.trace(|| format!("{id} accepted proposal p{pid} at {index}/{term}"));
                Ok(Ok(Proposed {
                    node: id,
                    index,
                    term,
                    payload_id: pid,
                }))
            }
            Err(e) => Ok(Err(ProposeFail::Refused(e))),
        }
    }

    /// Ask `id` to change the membership.
    pub fn propose_membership(
        &mut self,
        id: NodeId,
        change: MembershipChange,
    ) -> SimResult<Result<(LogIndex, Term), ProposeFail>> {
        let Some(n) = self.idx(id) else {
            return Ok(Err(ProposeFail::Down));
        };
        let desc = format!("{change:?}");
        let r = self.call(n, |r, now| r.propose_membership(now, change))?;
        self.trace(|| format!("{id} propose_membership {desc}: {r:?}"));
        Ok(match r {
            None => Err(ProposeFail::Down),
            Some(Ok(x)) => Ok(x),
            Some(Err(e)) => Err(ProposeFail::Refused(e)),
        })
    }

    /// Ask leader `id` to hand leadership to `to`.
    pub fn transfer_leadership(
        &mut self,
        id: NodeId,
        to: NodeId,
    ) -> SimResult<Result<(), ProposeFail>> {
        let Some(n) = self.idx(id) else {
            return Ok(Err(ProposeFail::Down));
        };
        let r = self.call(n, |r, now| r.transfer_leadership(now, to))?;
        self.trace(|| format!("{id} transfer leadership to {to}: {r:?}"));
        Ok(match r {
            None => Err(ProposeFail::Down),
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(ProposeFail::Refused(e)),
        })
    }

    /// Create and start a brand-new node (empty store) that knows `initial` as its bootstrap
    /// membership; the cluster must add it with a membership change.
    pub fn add_node(&mut self, initial: Membership) -> SimResult<NodeId> {
        let n = self.spawn_node(initial);
        self.start_node(n)?;
        Ok(self.nodes[n].id)
    }

    /// The founding configuration.
    pub fn founders(&self) -> &Membership {
        &self.founders
    }

    /// Start `cfg.clients` background clients that propose until [`Simulation::stop_clients`].
    pub fn start_clients(&mut self, cfg: ClientConfig) {
        self.client_epoch += 1;
        self.clients = vec![ClientState::default(); cfg.clients];
        for c in 0..cfg.clients {
            let d = self
                .rng_client
                .range_inclusive(cfg.interval_min_ms, cfg.interval_max_ms);
            let epoch = self.client_epoch;
            self.push(self.now + d, Event::Client { client: c, epoch });
        }
        self.client_cfg = cfg;
    }

    /// Background clients stop proposing.
    pub fn stop_clients(&mut self) {
        self.client_epoch += 1;
    }

    fn client_tick(&mut self, c: usize) -> SimResult<()> {
        let candidates: Vec<NodeId> = self.up_nodes();
        let guess = self.clients[c].leader_guess.filter(|g| self.is_up(*g));
        let target = match guess {
            Some(g) => Some(g),
            None => self.rng_client.pick(&candidates).copied(),
        };
        let cfg = self.client_cfg.clone();
        let epoch = self.client_epoch;
        let next = match target {
            None => self.rng_client.range_inclusive(10, 50),
            Some(t) => match self.propose(t)? {
                Ok(_) => {
                    self.clients[c].leader_guess = Some(t);
                    self.rng_client
                        .range_inclusive(cfg.interval_min_ms, cfg.interval_max_ms)
                }
                Err(ProposeFail::Refused(ProposeError::NotLeader { leader_hint })) => {
                    self.clients[c].leader_guess = leader_hint.filter(|&h| h != t);
                    self.rng_client.range_inclusive(1, 10)
                }
                Err(_) => {
                    self.clients[c].leader_guess = None;
                    self.rng_client.range_inclusive(10, 50)
                }
            },
        };
        self.push(self.now + next, Event::Client { client: c, epoch });
        Ok(())
    }

    /// Inject random faults until [`Simulation::stop_nemesis`].
    pub fn start_nemesis(&mut self, cfg: NemesisConfig) {
        self.nemesis_epoch += 1;
        let d = self
            .rng_nemesis
            .range_inclusive(cfg.interval_min_ms, cfg.interval_max_ms);
        let epoch = self.nemesis_epoch;
        self.nemesis = Some(cfg);
        self.push(self.now + d, Event::Nemesis { epoch });
    }

    /// No more random faults (already scheduled restarts still happen).
    pub fn stop_nemesis(&mut self) {
        self.nemesis_epoch += 1;
        self.nemesis = None;
    }

    fn nemesis_tick(&mut self) -> SimResult<()> {
        let Some(cfg) = self.nemesis.clone() else {
            return Ok(());
        };
        let weights = [
            cfg.crash,
            cfg.crash_leader,
            cfg.partition,
            cfg.heal,
            cfg.flaky_net,
        ];
        let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        if total > 0 {
            let mut x = self.rng_nemesis.range(0, total);
            let mut action = 0;
            for (i, &w) in weights.iter().enumerate() {
                if x < u64::from(w) {
                    action = i;
                    break;
                }
                x -= u64::from(w);
            }
            let live: Vec<NodeId> = self.up_nodes();
            let members: Vec<NodeId> = self
                .nodes
                .iter()
                .filter(|n| !n.removed)
                .map(|n| n.id)
                .collect();
            let down = members.len() - live.len();
            match action {
                0 | 1 => {
                    let victim = if action == 1 {
                        self.leader()
                    } else {
                        self.rng_nemesis.pick(&live).copied()
                    };
                    if let Some(v) = victim
                        && down < cfg.max_down
                    {
                        let d = self
                            .rng_nemesis
                            .range_inclusive(cfg.down_min_ms, cfg.down_max_ms);
                        self.crash_for(v, d);
                    }
                }
                2 => self.random_partition(&members),
                3 => self.heal(),
                _ => {
                    let cfg = if self.rng_nemesis.chance(0.5) {
                        NetConfig::unreliable()
                    } else {
                        NetConfig::reliable()
                    };
                    self.trace(|| format!("network now {cfg:?}"));
                    self.set_net(cfg);
                }
            }
        }
        let d = self
            .rng_nemesis
            .range_inclusive(cfg.interval_min_ms, cfg.interval_max_ms);
        let epoch = self.nemesis_epoch;
        self.push(self.now + d, Event::Nemesis { epoch });
        Ok(())
    }

    fn random_partition(&mut self, members: &[NodeId]) {
        if members.len() < 2 {
            return;
        }
        let mut shuffled = members.to_vec();
        self.rng_nemesis.shuffle(&mut shuffled);
        match self.rng_nemesis.range(0, 4) {
            0 => self.isolate(shuffled[0]),
            1 => {
                let minority = self
                    .rng_nemesis
                    .range_inclusive(1, (members.len() as u64).div_ceil(2))
                    as usize;
                let (a, b) = shuffled.split_at(minority.min(members.len() - 1));
                self.partition(&[a.to_vec(), b.to_vec()]);
            }
            2 if members.len() >= 3 => {
                let b = shuffled[0];
                let rest = &shuffled[1..];
                let cut = self.rng_nemesis.range_inclusive(1, rest.len() as u64 - 1) as usize;
                let (l, r) = rest.split_at(cut);
                self.bridge(l, b, r);
            }
            _ => self.cut_link(shuffled[0], shuffled[1]),
        }
    }

    // ------------------------------------------------------------------ MIT-style helpers

    /// Election timeout upper bound (ms).
    pub fn election_timeout(&self) -> Millis {
        self.cfg.raft.election_timeout_max_ms
    }

    /// MIT `checkOneLeader`: within ~10 election timeouts, exactly one leader (per term) among
    /// connected nodes; returns the one with the highest term.
    pub fn check_one_leader(&mut self) -> SimResult<NodeId> {
        for _ in 0..10 {
            let et = self.election_timeout();
            self.run_for(et)?;
            let connected = self.connected_nodes();
            let mut by_term: BTreeMap<Term, Vec<NodeId>> = BTreeMap::new();
            for &n in &connected {
                if let Some(s) = self.status(n).filter(|s| s.role == Role::Leader) {
                    by_term.entry(s.term).or_default().push(n);
                }
            }
            for (t, ls) in &by_term {
                if ls.len() > 1 {
                    return Err(violation(
                        Check::ElectionSafety,
                        self.now,
                        None,
                        format!("term {t} has {} leaders: {ls:?}", ls.len()),
                    ));
                }
            }
            if let Some((_, ls)) = by_term.iter().next_back() {
                return Ok(ls[0]);
            }
        }
        Err(violation(
            Check::Scenario,
            self.now,
            None,
            format!("expected one leader, got none\n{}", self.describe_nodes()),
        ))
    }

    /// MIT `checkNoLeader`: no connected node thinks it is leader.
    pub fn check_no_leader(&self) -> SimResult<()> {
        for n in self.connected_nodes() {
            if self.status(n).is_some_and(|s| s.role == Role::Leader) {
                return Err(violation(
                    Check::Scenario,
                    self.now,
                    Some(n),
                    "expected no leader among connected servers, but this one claims to be leader",
                ));
            }
        }
        Ok(())
    }

    /// MIT `checkTerms`: all connected nodes agree on the term.
    pub fn check_terms(&self) -> SimResult<Term> {
        let terms: BTreeSet<Term> = self
            .connected_nodes()
            .iter()
            .filter_map(|&n| self.status(n).map(|s| s.term))
            .collect();
        if terms.len() > 1 {
            return Err(violation(
                Check::Scenario,
                self.now,
                None,
                format!("servers disagree on term: {terms:?}"),
            ));
        }
        Ok(terms.into_iter().next().unwrap_or_default())
    }

    /// MIT `one`: propose a new payload through whichever connected node accepts it, and wait until
    /// `expected` running nodes applied it. Retries on other nodes when `retry`. Returns the index.
    pub fn one(&mut self, expected: usize, retry: bool) -> SimResult<u64> {
        let et = self.election_timeout();
        let deadline = self.now + 20 * et;
        let mut start = 0usize;
        while self.now < deadline {
            let connected = self.connected_nodes();
            let mut accepted = None;
            for k in 0..connected.len() {
                let n = connected[(start + k) % connected.len()];
                if let Ok(p) = self.propose(n)? {
                    accepted = Some(p);
                    break;
                }
            }
            start += 1;
            if let Some(p) = accepted {
                let t1 = self.now + 4 * et;
                let i = p.index.0;
                let ok = self.run_until(t1, |s| {
                    let (count, pid) = s.n_committed(i);
                    count >= expected && pid == Some(p.payload_id)
                })?;
                if ok {
                    return Ok(i);
                }
                if !retry {
                    return Err(violation(
                        Check::Scenario,
                        self.now,
                        None,
                        format!(
                            "one(): p{} at index {i} did not reach agreement on {expected} nodes\n{}",
                            p.payload_id,
                            self.describe_nodes()
                        ),
                    ));
                }
            } else {
                self.run_for(50)?;
            }
        }
        Err(violation(
            Check::Scenario,
            self.now,
            None,
            format!(
                "one(): no agreement on {expected} nodes within {}ms\n{}",
                20 * et,
                self.describe_nodes()
            ),
        ))
    }

    // ------------------------------------------------------------------ end of run

    /// Heal everything, then check liveness (a leader is elected and a fresh proposal commits
    /// within 10 election timeouts), convergence (every running member applies it) and the client
    /// oracle (every acknowledged proposal is in the final log, exactly once, where it was acked).
    pub fn finish(&mut self) -> SimResult<RunStats> {
        self.stop_nemesis();
        self.stop_clients();
        self.heal();
        self.set_net(NetConfig::reliable());
        for id in self.node_ids() {
            self.restart(id)?;
        }
        let healed_at = self.now;
        let bound = 10 * self.election_timeout();
        let deadline = healed_at + bound;
        let mut marker: Option<Proposed> = None;
        loop {
            if let Some(m) = marker {
                if self.is_acked(m.payload_id) {
                    break;
                }
                let still_leader = self
                    .status(m.node)
                    .is_some_and(|s| s.role == Role::Leader && s.term == m.term);
                if !still_leader {
                    marker = None;
                }
            }
            if marker.is_none()
                && let Some(l) = self.leader()
                && let Ok(p) = self.propose(l)?
            {
                marker = Some(p);
                continue;
            }
            if self.now > deadline {
                let what = if self.leader().is_none() {
                    "no leader elected"
                } else {
                    "no proposal committed"
                };
                return Err(violation(
                    Check::Liveness,
                    self.now,
                    None,
                    format!(
                        "{what} within {bound}ms (10 election timeouts) after healing at t={healed_at}ms\n{}",
                        self.describe_nodes()
                    ),
                ));
            }
            let next = self.queue.peek().map(|s| s.at);
            match next {
                Some(at) if at <= deadline + 1 => {
                    self.step()?;
                }
                _ => self.set_now(deadline + 1),
            }
        }
        let marker = marker.expect("acked marker");
        // Convergence: every running member applies the marker.
        let leader_status = self.status(marker.node).cloned();
        let members: Vec<NodeId> = match &leader_status {
            Some(s) => s.membership.members().collect(),
            None => self.up_nodes(),
        };
        let target = marker.index.0;
        // 10 election timeouts, plus the time a member that is far behind needs to fetch what it
        // lacks one append at a time (round trip + fsync per append, no pipelining assumed).
        let lag = members
            .iter()
            .filter_map(|&m| self.state_machine(m))
            .map(|sm| target.saturating_sub(sm.applied))
            .max()
            .unwrap_or(0);
        let per_append = 2 * self
            .cfg
            .net
            .latency_max_ms
            .max(NetConfig::reliable().latency_max_ms)
            + self.cfg.fsync_max_ms
            + self.cfg.apply_delay_max_ms;
        let appends = lag.div_ceil(self.cfg.raft.max_entries_per_append.max(1) as u64);
        let bound = bound + appends * per_append;
        let deadline = self.now + bound;
        let ok = self.run_until(deadline, |s| {
            members
                .iter()
                .all(|&m| !s.is_up(m) || s.state_machine(m).is_some_and(|sm| sm.applied >= target))
        })?;
        if !ok {
            return Err(violation(
                Check::Liveness,
                self.now,
                None,
                format!(
                    "members {:?} did not all apply index {target} within {bound}ms of its commit (lag {lag})\n{}",
                    members.iter().map(|m| m.0).collect::<Vec<_>>(),
                    self.describe_nodes()
                ),
            ));
        }
        self.check_oracle()?;
        Ok(self.stats())
    }

    /// Every acknowledged proposal is in the committed log at the acknowledged (index, term),
    /// and the committed log has no gaps up to the highest acknowledged index.
    pub fn check_oracle(&self) -> SimResult<()> {
        for a in &self.acks {
            let c = self.checker.committed(a.index.0);
            let ok = c.is_some_and(|c| c.term == a.term && c.payload_id == Some(a.payload_id));
            if !ok {
                return Err(violation(
                    Check::ClientOracle,
                    self.now,
                    Some(a.node),
                    format!(
                        "p{} was acknowledged at {}/{} (t={}ms) but the final log has {:?} there",
                        a.payload_id, a.index, a.term, a.at_ms, c
                    ),
                ));
            }
            if self.checker.payload_index(a.payload_id) != Some(a.index.0) {
                return Err(violation(
                    Check::ClientOracle,
                    self.now,
                    Some(a.node),
                    format!(
                        "p{} acknowledged at {} but committed elsewhere",
                        a.payload_id, a.index
                    ),
                ));
            }
        }
        let top = self.acks.iter().map(|a| a.index.0).max().unwrap_or(0);
        if let Some(gap) = (1..=top).find(|&i| self.checker.committed(i).is_none()) {
            return Err(violation(
                Check::ClientOracle,
                self.now,
                None,
                format!(
                    "no node ever applied or showed committed index {gap} (below acknowledged index {top})"
                ),
            ));
        }
        Ok(())
    }
}
