//! The group runtime: one Raft group driven by its thread over a GroupStore on disk, with an
//! in-memory transport between the nodes of one process.

use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use weir_node::group::{
    Decided, GroupConfig, GroupHandle, GroupStatus, OnApply, ProposalError, ProposalReply,
    Transport,
};
use weir_node::group_store::GroupStore;
use weir_node::peer::GroupId;
use weir_proto::TimestampMs;
use weir_raft::{Config, Entry, Envelope, LogIndex, Membership, NodeId, Payload, Role, Term};
use weir_storage::LogConfig;

const GROUP: GroupId = GroupId(7);
/// Bound of every wait (generous: CI disks fsync slowly).
const WAIT: Duration = Duration::from_secs(30);

fn timestamp_of(_: &Payload) -> Option<TimestampMs> {
    None
}

fn open_store(dir: &Path) -> GroupStore {
    GroupStore::open(dir, LogConfig::default(), timestamp_of).expect("open group store")
}

fn config(id: u64, voters: &[u64]) -> GroupConfig {
    let mut raft = Config::new(NodeId(id));
    raft.election_timeout_min_ms = 150;
    raft.election_timeout_max_ms = 300;
    raft.heartbeat_interval_ms = 30;
    raft.random_seed = 1000 + id;
    GroupConfig {
        group: GROUP,
        raft,
        initial: Membership::with_voters(voters.iter().map(|&v| NodeId(v))),
        stamp_timestamps: false,
        fsync: weir_storage::FsyncPolicy::Always,
        retention: None,
        producers: None,
    }
}

/// What a node's state machine saw: (index, term, payload) in apply order.
#[derive(Default)]
struct Applied {
    entries: Mutex<Vec<(LogIndex, Term, Payload)>>,
    changed: Condvar,
}

impl Applied {
    fn on_apply(self: &Arc<Self>) -> OnApply {
        let me = self.clone();
        Box::new(move |entries: &[Entry]| {
            let mut all = me.entries.lock().unwrap();
            all.extend(entries.iter().map(|e| (e.index, e.term, e.payload.clone())));
            me.changed.notify_all();
            Vec::new()
        })
    }

    /// Waits until the state machine applied index `index` or beyond.
    fn wait_applied(&self, index: LogIndex) -> Vec<(LogIndex, Term, Payload)> {
        let deadline = Instant::now() + WAIT;
        let mut all = self.entries.lock().unwrap();
        while all.last().is_none_or(|e| e.0 < index) {
            let left = deadline
                .checked_duration_since(Instant::now())
                .unwrap_or_else(|| panic!("not applied up to {index} within {WAIT:?}"));
            all = self.changed.wait_timeout(all, left).unwrap().0;
        }
        all.clone()
    }
}

fn normal_payloads(entries: &[(LogIndex, Term, Payload)]) -> Vec<Vec<u8>> {
    entries
        .iter()
        .filter_map(|(_, _, p)| match p {
            Payload::Normal(d) => Some(d.clone()),
            _ => None,
        })
        .collect()
}

fn assert_dense(entries: &[(LogIndex, Term, Payload)]) {
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(
            e.0,
            LogIndex(i as u64 + 1),
            "applied indexes are dense from 1"
        );
    }
}

type Outcome = Result<(LogIndex, Term), ProposalError>;

fn reply_to(tx: &mpsc::Sender<(usize, Outcome)>, n: usize) -> ProposalReply {
    let tx = tx.clone();
    Box::new(move |r: Result<Decided, ProposalError>| {
        let _ = tx.send((n, r.map(|d| (d.index, d.term))));
    })
}

fn wait_leader(handle: &GroupHandle) -> GroupStatus {
    handle
        .wait_for(WAIT, |s| s.role == Role::Leader)
        .expect("elected within the bound")
}

#[test]
fn single_node_elects_itself_applies_proposals_in_order_with_group_commit_and_replays_on_restart() {
    let dir = tempfile::tempdir().unwrap();
    let transport: Arc<dyn Transport> = Arc::new(Cluster::default());
    let applied = Arc::new(Applied::default());
    let handle = GroupHandle::start(
        config(1, &[1]),
        open_store(dir.path()),
        transport.clone(),
        applied.on_apply(),
    )
    .unwrap();
    wait_leader(&handle);

    let (tx, rx) = mpsc::channel();
    let n = 1_000;
    for i in 0..n {
        handle.propose(format!("p{i}").into_bytes(), reply_to(&tx, i));
    }
    let mut answers = vec![None; n];
    for _ in 0..n {
        let (i, r) = rx.recv_timeout(WAIT).expect("every proposal answered");
        answers[i] = Some(r.expect("committed"));
    }
    // Proposed in order to one leader: indexes increase with the proposal order.
    let indexes: Vec<LogIndex> = answers.iter().map(|a| a.unwrap().0).collect();
    assert!(indexes.windows(2).all(|w| w[1] == w[0].next()));

    let status = handle.status();
    let all = applied.wait_applied(*indexes.last().unwrap());
    assert_dense(&all);
    let expected: Vec<Vec<u8>> = (0..n).map(|i| format!("p{i}").into_bytes()).collect();
    assert_eq!(normal_payloads(&all), expected);
    for (i, (index, term)) in answers.iter().map(|a| a.unwrap()).enumerate() {
        let at = &all[index.0 as usize - 1];
        assert_eq!((at.0, at.1), (index, term));
        assert_eq!(at.2, Payload::Normal(format!("p{i}").into_bytes()));
    }
    assert!(
        status.syncs < n as u64 / 2,
        "group commit: {} syncs for {n} proposals",
        status.syncs
    );
    assert_eq!(status.pending_proposals, 0);
    assert!(status.failure.is_none());
    handle.stop();
    assert!(handle.status().stopped);
    // After stop: proposals are answered Stopped.
    handle.propose(b"late".to_vec(), reply_to(&tx, 0));
    assert_eq!(
        rx.recv_timeout(WAIT).unwrap().1,
        Err(ProposalError::Stopped)
    );

    // Restart from the same directory: the whole log is applied again, then new proposals follow.
    let replayed = Arc::new(Applied::default());
    let handle = GroupHandle::start(
        config(1, &[1]),
        open_store(dir.path()),
        transport,
        replayed.on_apply(),
    )
    .unwrap();
    wait_leader(&handle);
    let again = replayed.wait_applied(all.last().unwrap().0);
    assert_eq!(again[..all.len()], all[..]);
    handle.propose(b"after restart".to_vec(), reply_to(&tx, 0));
    let (index, term) = rx.recv_timeout(WAIT).unwrap().1.unwrap();
    assert!(index > all.last().unwrap().0);
    let again = replayed.wait_applied(index);
    assert_dense(&again);
    assert_eq!(
        again.last().unwrap(),
        &(index, term, Payload::Normal(b"after restart".to_vec()))
    );
    handle.stop();
}

/// Routes envelopes to the destination's handle; nodes not in the map are down (dropped).
#[derive(Default)]
struct Cluster {
    nodes: Mutex<HashMap<NodeId, GroupHandle>>,
}

impl Transport for Cluster {
    fn send(&self, group: GroupId, envelope: Envelope) {
        assert_eq!(group, GROUP);
        let to = self.nodes.lock().unwrap().get(&envelope.to).cloned();
        if let Some(handle) = to {
            handle.deliver(envelope);
        }
    }
}

impl Cluster {
    fn handle(&self, id: NodeId) -> Option<GroupHandle> {
        self.nodes.lock().unwrap().get(&id).cloned()
    }

    /// Waits for a node that is up and sees itself as leader.
    fn leader(&self) -> GroupHandle {
        let deadline = Instant::now() + WAIT;
        loop {
            let handles: Vec<GroupHandle> = self.nodes.lock().unwrap().values().cloned().collect();
            for h in &handles {
                if h.wait_for(Duration::from_millis(20), |s| s.role == Role::Leader)
                    .is_some()
                {
                    return h.clone();
                }
            }
            assert!(Instant::now() < deadline, "no leader within {WAIT:?}");
        }
    }

    /// Proposes every payload, following NotLeader hints and retrying what cannot commit
    /// (NotLeader / Lost / Busy), until each one committed once.
    fn propose_all(&self, payloads: Vec<Vec<u8>>) -> Vec<(LogIndex, Term)> {
        let mut results = vec![None; payloads.len()];
        let mut todo: Vec<usize> = (0..payloads.len()).collect();
        let deadline = Instant::now() + WAIT;
        let mut target = self.leader();
        while !todo.is_empty() {
            assert!(Instant::now() < deadline, "proposals not committed in time");
            let (tx, rx) = mpsc::channel();
            for &i in &todo {
                target.propose(payloads[i].clone(), reply_to(&tx, i));
            }
            let mut retry = Vec::new();
            let mut hint = None;
            for _ in 0..todo.len() {
                let (i, r) = rx.recv_timeout(WAIT).expect("every proposal answered");
                match r {
                    Ok(at) => results[i] = Some(at),
                    Err(ProposalError::NotLeader { leader_hint }) => {
                        hint = hint.or(leader_hint);
                        retry.push(i);
                    }
                    // Neither committed nor ever will: safe to propose again.
                    Err(ProposalError::Lost | ProposalError::Busy) => retry.push(i),
                    Err(e) => panic!("proposal {i} failed: {e}"),
                }
            }
            retry.sort_unstable();
            todo = retry;
            if !todo.is_empty() {
                target = match hint.and_then(|h| self.handle(h)) {
                    Some(h) => h,
                    None => self.leader(),
                };
            }
        }
        results.into_iter().map(Option::unwrap).collect()
    }
}

fn start_node(cluster: &Arc<Cluster>, id: u64, dir: &Path, applied: &Arc<Applied>) -> GroupHandle {
    let transport: Arc<dyn Transport> = cluster.clone();
    let handle = GroupHandle::start(
        config(id, &[1, 2, 3]),
        open_store(dir),
        transport,
        applied.on_apply(),
    )
    .unwrap();
    cluster
        .nodes
        .lock()
        .unwrap()
        .insert(NodeId(id), handle.clone());
    handle
}

#[test]
fn three_nodes_replicate_survive_leader_stop_and_the_restarted_leader_catches_up() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let cluster = Arc::new(Cluster::default());
    let mut applied: Vec<Arc<Applied>> = (0..3).map(|_| Arc::new(Applied::default())).collect();
    for id in 1..=3u64 {
        start_node(
            &cluster,
            id,
            dirs[id as usize - 1].path(),
            &applied[id as usize - 1],
        );
    }

    // 500 proposals through whoever leads; every node applies the same log.
    let first: Vec<Vec<u8>> = (0..500).map(|i| format!("a{i}").into_bytes()).collect();
    let at = cluster.propose_all(first.clone());
    let last = at.iter().map(|a| a.0).max().unwrap();
    let logs: Vec<_> = applied.iter().map(|a| a.wait_applied(last)).collect();
    assert_dense(&logs[0]);
    assert_eq!(logs[0][..last.0 as usize], logs[1][..last.0 as usize]);
    assert_eq!(logs[0][..last.0 as usize], logs[2][..last.0 as usize]);
    for (payload, (index, term)) in first.iter().zip(&at) {
        let e = &logs[0][index.0 as usize - 1];
        assert_eq!(e, &(*index, *term, Payload::Normal(payload.clone())));
    }

    // Stop the leader: the other two elect a new one and commit 100 more.
    let old = cluster.leader();
    let old_status = old.status();
    let old_id = old_status.id;
    cluster.nodes.lock().unwrap().remove(&old_id);
    old.stop();
    assert!(old.status().stopped);
    let new = cluster.leader();
    let new_status = new.status();
    assert_ne!(new_status.id, old_id);
    assert!(new_status.term > old_status.term);
    let second: Vec<Vec<u8>> = (0..100).map(|i| format!("b{i}").into_bytes()).collect();
    let at2 = cluster.propose_all(second.clone());
    let last = at2.iter().map(|a| a.0).max().unwrap();

    // Restart the old leader from its directory: it replays and catches up.
    let slot = old_id.0 as usize - 1;
    applied[slot] = Arc::new(Applied::default());
    let restarted = start_node(&cluster, old_id.0, dirs[slot].path(), &applied[slot]);
    let logs: Vec<_> = applied.iter().map(|a| a.wait_applied(last)).collect();
    let n = last.0 as usize;
    assert_dense(&logs[0][..n]);
    assert_eq!(logs[0][..n], logs[1][..n]);
    assert_eq!(logs[0][..n], logs[2][..n]);
    // Retries after a leader change may reorder: compare as multisets.
    let mut payloads = normal_payloads(&logs[0][..n]);
    let mut expected = first;
    expected.extend(second);
    payloads.sort();
    expected.sort();
    assert_eq!(payloads, expected, "every proposal applied exactly once");
    let s = restarted
        .wait_for(WAIT, |s| s.applied_index >= last)
        .expect("restarted node applied everything");
    assert_eq!(s.leader, Some(new_status.id));

    let handles: Vec<GroupHandle> = cluster
        .nodes
        .lock()
        .unwrap()
        .drain()
        .map(|(_, h)| h)
        .collect();
    for h in handles {
        h.stop();
    }
}

#[test]
fn storage_failure_stops_the_group_and_fails_proposals_with_storage() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open_store(dir.path());
    // The first fsync of the log (the new leader's Noop) fails as a disk would.
    store.inject_fault_next_sync();
    let applied = Arc::new(Applied::default());
    let transport: Arc<dyn Transport> = Arc::new(Cluster::default());
    let handle = GroupHandle::start(config(1, &[1]), store, transport, applied.on_apply()).unwrap();
    let status = handle
        .wait_for(WAIT, |s| s.failure.is_some())
        .expect("the failure is reported in the status");
    assert_eq!(
        status.commit_index,
        LogIndex(0),
        "nothing commits without fsync"
    );
    let (tx, rx) = mpsc::channel();
    handle.propose(b"x".to_vec(), reply_to(&tx, 0));
    match rx.recv_timeout(WAIT).unwrap().1 {
        Err(ProposalError::Storage(reason)) => assert!(!reason.is_empty()),
        other => panic!("expected a Storage error, got {other:?}"),
    }
    assert!(applied.entries.lock().unwrap().is_empty());
    handle.stop();
    assert!(handle.status().stopped);
}

#[test]
fn a_proposal_pending_when_leadership_is_lost_is_kept_then_answered_stopped_on_stop() {
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let cluster = Arc::new(Cluster::default());
    let applied: Vec<Arc<Applied>> = (0..2).map(|_| Arc::new(Applied::default())).collect();
    // Nodes 1 and 2 of a three-voter group: a quorum, node 3 never runs.
    for id in 1..=2u64 {
        start_node(
            &cluster,
            id,
            dirs[id as usize - 1].path(),
            &applied[id as usize - 1],
        );
    }
    let leader = cluster.leader();
    let leader_id = leader.status().id;
    let follower_id = NodeId(3 - leader_id.0);
    let follower = cluster.nodes.lock().unwrap().remove(&follower_id).unwrap();
    follower.stop();

    // No quorum: the proposal cannot commit; CheckQuorum makes the leader step down, and the
    // proposal stays pending (no Apply has decided it).
    let (tx, rx) = mpsc::channel();
    leader.propose(b"stranded".to_vec(), reply_to(&tx, 0));
    leader
        .wait_for(WAIT, |s| s.role != Role::Leader && s.pending_proposals == 1)
        .expect("the leader steps down with the proposal still pending");
    assert!(rx.try_recv().is_err(), "not answered before a decision");
    cluster.nodes.lock().unwrap().remove(&leader_id);
    leader.stop();
    assert_eq!(
        rx.recv_timeout(WAIT).unwrap().1,
        Err(ProposalError::Stopped)
    );
}

/// Holds back every state machine that applies a `block` entry until opened.
#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    changed: Condvar,
}

impl Gate {
    fn machine(self: &Arc<Self>) -> OnApply {
        let gate = self.clone();
        Box::new(move |entries: &[Entry]| {
            if entries
                .iter()
                .any(|e| e.payload == Payload::Normal(b"block".to_vec()))
            {
                let mut open = gate.open.lock().unwrap();
                while !*open {
                    open = gate.changed.wait(open).unwrap();
                }
            }
            Vec::new()
        })
    }

    fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.changed.notify_all();
    }
}

#[test]
fn a_state_machine_that_blocks_neither_stops_replication_nor_costs_the_leader_its_term() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let cluster = Arc::new(Cluster::default());
    let gate = Arc::new(Gate::default());
    for id in 1..=3u64 {
        let transport: Arc<dyn Transport> = cluster.clone();
        let handle = GroupHandle::start(
            config(id, &[1, 2, 3]),
            open_store(dirs[id as usize - 1].path()),
            transport,
            gate.machine(),
        )
        .unwrap();
        cluster.nodes.lock().unwrap().insert(NodeId(id), handle);
    }
    let leader = cluster.leader();
    let before = leader
        .wait_for(WAIT, |s| {
            s.role == Role::Leader && s.commit_index == s.last_index && s.commit_index.0 > 0
        })
        .expect("the leader's first entry committed");
    let (tx, rx) = mpsc::channel();
    leader.propose(b"block".to_vec(), reply_to(&tx, 0));

    // Every replica's state machine is stuck on `block`, for three maximum election timeouts
    // (300 ms): proposals still commit one after the other, none is answered (answers wait
    // for the apply), and nobody starts an election.
    let started = Instant::now();
    let mut proposed = 1;
    while started.elapsed() < Duration::from_millis(3 * 300) {
        leader.propose(format!("p{proposed}").into_bytes(), reply_to(&tx, proposed));
        let index = LogIndex(before.last_index.0 + 1 + proposed as u64);
        proposed += 1;
        let status = leader
            .wait_for(WAIT, |s| s.commit_index >= index || s.role != Role::Leader)
            .expect("committed while the state machines block");
        assert_eq!(status.role, Role::Leader, "leadership lost: {status:?}");
        assert!(rx.try_recv().is_err(), "answered before its apply");
    }
    for id in 1..=3 {
        let status = cluster.handle(NodeId(id)).unwrap().status();
        assert_eq!(
            status.term, before.term,
            "node {id} changed term: {status:?}"
        );
        assert!(status.applied_index <= before.last_index, "{status:?}");
    }

    // Opened: every proposal is answered, in this term, and applied everywhere.
    gate.open();
    let mut answered = vec![false; proposed];
    for _ in 0..proposed {
        let (i, r) = rx.recv_timeout(WAIT).expect("every proposal answered");
        let (_, term) = r.expect("committed");
        assert_eq!(term, before.term);
        answered[i] = true;
    }
    assert!(answered.iter().all(|a| *a));
    let last = LogIndex(before.last_index.0 + proposed as u64);
    // Every replica first: a stopped leader would no longer tell the followers the last commit.
    for id in 1..=3 {
        cluster
            .handle(NodeId(id))
            .unwrap()
            .wait_for(WAIT, |s| s.applied_index >= last)
            .expect("every replica applies everything once unblocked");
    }
    for id in 1..=3 {
        cluster.handle(NodeId(id)).unwrap().stop();
    }
}
