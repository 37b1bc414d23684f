//! Test drivers: `Node` executes one core's outputs on a `MemStore` (checking the output-order
//! contract as it goes); `Cluster` wires nodes together with zero-latency delivery.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::testing::MemStore;
use crate::*;

pub(crate) const ELECTION_MIN_MS: u64 = 100;
pub(crate) const ELECTION_MAX_MS: u64 = 200;
pub(crate) const HEARTBEAT_MS: u64 = 10;

pub(crate) fn n(id: u64) -> NodeId {
    NodeId(id)
}

pub(crate) fn idx(i: u64) -> LogIndex {
    LogIndex(i)
}

pub(crate) fn t(term: u64) -> Term {
    Term(term)
}

pub(crate) fn voters(ids: &[u64]) -> Membership {
    Membership::with_voters(ids.iter().map(|i| NodeId(*i)))
}

pub(crate) fn config(id: u64) -> Config {
    Config {
        election_timeout_min_ms: ELECTION_MIN_MS,
        election_timeout_max_ms: ELECTION_MAX_MS,
        heartbeat_interval_ms: HEARTBEAT_MS,
        random_seed: 42,
        ..Config::new(NodeId(id))
    }
}

pub(crate) fn entry(index: u64, term: u64) -> Entry {
    Entry {
        term: Term(term),
        index: LogIndex(index),
        payload: Payload::Normal(format!("e{index}t{term}").into_bytes()),
    }
}

/// A durable store holding entries with the given terms at indexes 1.., and hard state `term`.
pub(crate) fn store_with_terms(terms: &[u64], term: u64) -> MemStore {
    let mut store = MemStore::new();
    let entries: Vec<Entry> = terms
        .iter()
        .enumerate()
        .map(|(i, tm)| entry(i as u64 + 1, *tm))
        .collect();
    store.append(&entries);
    store.mark_durable(LogIndex(terms.len() as u64));
    store.set_hard_state(HardState {
        term: Term(term),
        voted_for: None,
    });
    store
}

/// One core plus a driver that executes its outputs on a MemStore, in order.
#[derive(Debug)]
pub(crate) struct Node {
    pub raft: Raft<MemStore>,
    /// Messages sent and not yet taken by the test / cluster.
    pub sent: Vec<Envelope>,
    /// Everything applied, in order (entries beyond the snapshot are dropped on crash: the state
    /// machine restarts from the snapshot).
    pub applied: Vec<Entry>,
    /// Last index applied (or covered by an installed snapshot).
    pub applied_index: LogIndex,
    /// Every output ever drained, for order assertions.
    pub log: Vec<Output>,
    /// PersistEntries written but not yet reported durable: (last index, last term).
    pub unpersisted: VecDeque<(LogIndex, Term)>,
    pub pending_snapshot: Option<LogIndex>,
    pub auto_persist: bool,
    pub auto_apply: bool,
    membership_initial: Membership,
}

impl Node {
    pub fn new(config: Config, store: MemStore, initial: Membership, now: Millis) -> Self {
        let applied_index = store.snapshot().map_or(LogIndex(0), |s| s.meta.last_index);
        let raft = Raft::new(config, store, initial.clone(), now);
        let mut node = Node {
            raft,
            sent: Vec::new(),
            applied: Vec::new(),
            applied_index,
            log: Vec::new(),
            unpersisted: VecDeque::new(),
            pending_snapshot: None,
            auto_persist: true,
            auto_apply: true,
            membership_initial: initial,
        };
        node.drain(now);
        node
    }

    pub fn id(&self) -> NodeId {
        self.raft.id()
    }

    /// Executes outputs in order; with auto_persist/auto_apply also reports durability and
    /// application at once (until quiescent).
    pub fn drain(&mut self, now: Millis) {
        loop {
            while let Some(out) = self.raft.poll_output() {
                self.execute(out);
            }
            let mut progressed = false;
            if self.auto_persist {
                progressed |= self.persist_all(now);
            }
            if self.auto_apply && self.applied_index > self.raft.status().applied_index {
                self.raft.handle_applied(now, self.applied_index);
                progressed = true;
            }
            if !progressed {
                break;
            }
        }
    }

    fn execute(&mut self, out: Output) {
        match &out {
            Output::PersistHardState(hs) => self.raft.store_mut().set_hard_state(hs.clone()),
            Output::PersistEntries(es) => {
                assert!(!es.is_empty(), "empty PersistEntries");
                self.raft.store_mut().append(es);
                let last = es.last().expect("non-empty");
                self.unpersisted.push_back((last.index, last.term));
            }
            Output::PersistSnapshot(s) => {
                self.raft.store_mut().apply_snapshot(s.clone());
                self.pending_snapshot = Some(s.meta.last_index);
                // The state machine is replaced by the snapshot.
                self.applied.retain(|e| e.index <= s.meta.last_index);
                self.applied_index = s.meta.last_index;
            }
            Output::Send(env) => {
                self.check_send_after_hard_state(env);
                self.sent.push(env.clone());
            }
            Output::Apply(es) => {
                assert!(!es.is_empty(), "empty Apply");
                assert!(es.len() <= APPLY_BATCH_MAX);
                for e in es {
                    assert_eq!(e.index, self.applied_index.next(), "Apply not contiguous");
                    self.applied_index = e.index;
                    self.applied.push(e.clone());
                }
            }
            Output::StateChanged { .. } => {}
        }
        self.log.push(out);
    }

    /// The in-order contract: whatever a Send reveals about term and vote is durable already.
    fn check_send_after_hard_state(&self, env: &Envelope) {
        let durable = self.raft.store().hard_state();
        match &env.message {
            Message::RequestVoteResponse {
                term,
                granted: true,
            } => {
                assert_eq!(durable.term, *term, "vote sent before its term is durable");
                assert_eq!(
                    durable.voted_for,
                    Some(env.to),
                    "vote sent before it is durable"
                );
            }
            Message::RequestVote { term, .. } => {
                assert_eq!(durable.term, *term);
                assert_eq!(durable.voted_for, Some(self.id()), "self-vote not durable");
            }
            Message::PreVote { .. } | Message::PreVoteResponse { .. } => {}
            m => assert!(m.term() <= durable.term, "message term above durable term"),
        }
    }

    /// Marks every written PersistEntries durable and reports it. True if anything was reported.
    pub fn persist_all(&mut self, now: Millis) -> bool {
        let mut progressed = false;
        if let Some(i) = self.pending_snapshot.take() {
            self.raft.handle_snapshot_persisted(now, i);
            progressed = true;
        }
        while let Some((i, tm)) = self.unpersisted.pop_front() {
            self.raft.store_mut().mark_durable(i);
            self.raft.handle_persisted(now, i, tm);
            progressed = true;
        }
        progressed
    }

    /// Crash and restart: non-durable writes are lost, the core is rebuilt from the store.
    pub fn crash_restart(&mut self, now: Millis) {
        let config = self.raft.config().clone();
        let mut store = self.raft.store().clone();
        store.crash();
        self.unpersisted.clear();
        self.pending_snapshot = None;
        self.sent.clear();
        let snap = store.snapshot().map_or(LogIndex(0), |s| s.meta.last_index);
        self.applied.retain(|e| e.index <= snap);
        self.applied_index = snap;
        self.raft = Raft::new(config, store, self.membership_initial.clone(), now);
        self.drain(now);
    }

    pub fn take_sent(&mut self) -> Vec<Envelope> {
        std::mem::take(&mut self.sent)
    }

    /// Handles a message and drains.
    pub fn recv(&mut self, now: Millis, env: Envelope) {
        self.raft.handle_message(now, env);
        self.drain(now);
    }

    pub fn timeout(&mut self, now: Millis) {
        self.raft.handle_timeout(now);
        self.drain(now);
    }

    /// Fires the next timeout (advancing to it) and returns the new time.
    pub fn fire_timeout(&mut self) -> Millis {
        let at = self.raft.next_timeout().expect("a timeout is armed");
        self.timeout(at);
        at
    }
}

pub(crate) fn msg(from: u64, to: u64, message: Message) -> Envelope {
    Envelope {
        from: NodeId(from),
        to: NodeId(to),
        message,
    }
}

/// A few nodes with zero-latency delivery and optional partitions.
#[derive(Debug)]
pub(crate) struct Cluster {
    pub nodes: BTreeMap<NodeId, Node>,
    pub now: Millis,
    /// Nodes cut off from everyone.
    pub isolated: BTreeSet<NodeId>,
    /// Every (term, leader) seen in StateChanged, to check election safety.
    pub leaders: BTreeMap<Term, NodeId>,
    pub delivered: usize,
}

impl Cluster {
    pub fn new(ids: &[u64]) -> Self {
        let membership = voters(ids);
        let nodes = ids
            .iter()
            .map(|i| {
                (
                    NodeId(*i),
                    Node::new(config(*i), MemStore::new(), membership.clone(), 0),
                )
            })
            .collect();
        Cluster::from_nodes(nodes)
    }

    pub fn from_nodes(nodes: BTreeMap<NodeId, Node>) -> Self {
        Cluster {
            nodes,
            now: 0,
            isolated: BTreeSet::new(),
            leaders: BTreeMap::new(),
            delivered: 0,
        }
    }

    /// Delivers messages until none are in flight (dropping those touching isolated nodes).
    pub fn deliver_all(&mut self) {
        for _ in 0..100_000 {
            let mut queue: Vec<Envelope> = Vec::new();
            for node in self.nodes.values_mut() {
                queue.extend(node.take_sent());
            }
            self.record_leaders();
            if queue.is_empty() {
                return;
            }
            for env in queue {
                if self.isolated.contains(&env.from) || self.isolated.contains(&env.to) {
                    continue;
                }
                let now = self.now;
                if let Some(node) = self.nodes.get_mut(&env.to) {
                    self.delivered += 1;
                    node.recv(now, env);
                }
            }
        }
        panic!("message storm: delivery did not quiesce");
    }

    fn record_leaders(&mut self) {
        for node in self.nodes.values() {
            let st = node.raft.status();
            if st.role == Role::Leader {
                let prev = self.leaders.insert(st.term, st.id);
                assert!(
                    prev.is_none() || prev == Some(st.id),
                    "two leaders in {}: {:?} and {}",
                    st.term,
                    prev,
                    st.id
                );
            }
        }
    }

    /// Runs timers and delivery until `until_ms`.
    pub fn run_until(&mut self, until_ms: Millis) {
        self.deliver_all();
        loop {
            let next = self
                .nodes
                .values()
                .filter_map(|n| n.raft.next_timeout())
                .min()
                .unwrap_or(Millis::MAX);
            if next > until_ms {
                self.now = self.now.max(until_ms);
                return;
            }
            self.now = self.now.max(next);
            let now = self.now;
            for node in self.nodes.values_mut() {
                if node.raft.next_timeout().is_some_and(|d| d <= now) {
                    node.timeout(now);
                }
            }
            self.deliver_all();
        }
    }

    pub fn run_for(&mut self, ms: Millis) {
        self.run_until(self.now + ms);
    }

    /// The unique leader among non-isolated nodes, if any.
    pub fn leader(&self) -> Option<NodeId> {
        let leaders: Vec<NodeId> = self
            .nodes
            .values()
            .filter(|n| n.raft.role() == Role::Leader && !self.isolated.contains(&n.id()))
            .map(|n| n.id())
            .collect();
        (leaders.len() == 1).then(|| leaders[0])
    }

    /// Runs until there is a leader (panics after 10 s of simulated time).
    pub fn elect(&mut self) -> NodeId {
        let deadline = self.now + 10_000;
        while self.now < deadline {
            if let Some(l) = self.leader() {
                return l;
            }
            self.run_for(10);
        }
        panic!("no leader elected");
    }

    pub fn propose(&mut self, leader: NodeId, data: &[u8]) -> (LogIndex, Term) {
        let now = self.now;
        let node = self.nodes.get_mut(&leader).expect("leader exists");
        let r = node
            .raft
            .propose(now, data.to_vec())
            .expect("proposal accepted");
        node.drain(now);
        r
    }

    /// State machine safety: applied sequences agree index by index.
    pub fn check_applied_agree(&self) {
        let mut seen: BTreeMap<LogIndex, &Entry> = BTreeMap::new();
        for node in self.nodes.values() {
            for e in &node.applied {
                if let Some(other) = seen.insert(e.index, e) {
                    assert_eq!(other, e, "nodes applied different entries at {}", e.index);
                }
            }
        }
    }
}
