//! A small randomized cluster run (loss, duplication, reordering, slow disks, crashes,
//! partitions, compaction) checking election safety and state machine safety, then liveness
//! once faults stop. weir-sim does this at scale; this keeps the core honest on its own.

use std::collections::{BTreeMap, BTreeSet};

use super::harness::*;
use crate::rng::SplitMix64;
use crate::testing::MemStore;
use crate::*;

/// Adjusts every node's config (e.g. to switch on a fault).
type Tweak = fn(&mut Config);

struct Sim {
    nodes: BTreeMap<NodeId, Node>,
    rng: SplitMix64,
    now: Millis,
    net: Vec<Envelope>,
    cut: BTreeSet<NodeId>,
    /// Everything ever applied by anyone: index -> entry (must agree).
    applied: BTreeMap<LogIndex, Entry>,
    leaders: BTreeMap<Term, NodeId>,
    proposals: Vec<(LogIndex, Term)>,
    /// First safety violation seen (the run stops checking after it).
    violation: Option<String>,
}

impl Sim {
    /// `size` founding voters plus `spare` nodes that start outside the group (membership changes
    /// may add them). Seeds also vary PreVote / CheckQuorum.
    fn new(seed: u64, size: u64, spare: u64, tweak: Tweak) -> Self {
        let founders: Vec<u64> = (1..=size).collect();
        let nodes = (1..=size + spare)
            .map(|i| {
                let mut cfg = Config {
                    random_seed: seed,
                    max_entries_per_append: 4,
                    max_inflight_appends: 3,
                    pre_vote: seed % 4 != 1,
                    check_quorum: seed % 4 != 2,
                    ..config(i)
                };
                tweak(&mut cfg);
                let mut node = Node::new(cfg, MemStore::new(), voters(&founders), 0);
                node.auto_persist = false;
                node.auto_apply = false;
                (n(i), node)
            })
            .collect();
        Sim {
            nodes,
            rng: SplitMix64::new(seed),
            now: 0,
            net: Vec::new(),
            cut: BTreeSet::new(),
            applied: BTreeMap::new(),
            leaders: BTreeMap::new(),
            proposals: Vec::new(),
            violation: None,
        }
    }

    fn pick(&mut self, len: usize) -> usize {
        (self.rng.next_u64() % len as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.rng.next_u64() % 100 < percent
    }

    fn random_node(&mut self) -> NodeId {
        let i = self.pick(self.nodes.len());
        *self.nodes.keys().nth(i).expect("in range")
    }

    fn collect(&mut self) {
        for node in self.nodes.values_mut() {
            self.net.extend(node.take_sent());
            for e in &node.applied {
                if let Some(prev) = self.applied.insert(e.index, e.clone())
                    && &prev != e
                    && self.violation.is_none()
                {
                    self.violation = Some(format!("state machine safety violated at {}", e.index));
                }
            }
            node.applied.clear();
            let st = node.raft.status();
            if st.role == Role::Leader {
                let prev = self.leaders.insert(st.term, st.id);
                if prev.is_some_and(|p| p != st.id) && self.violation.is_none() {
                    self.violation = Some(format!("two leaders in {}", st.term));
                }
            }
        }
    }

    fn propose(&mut self) {
        let now = self.now;
        let leaders: Vec<NodeId> = self
            .nodes
            .values()
            .filter(|n| n.raft.role() == Role::Leader)
            .map(|n| n.id())
            .collect();
        if let Some(l) = leaders.first() {
            // Half the time a batch of 1 to 8 (propose_batch), else one proposal.
            let batch = self.rng.next_u64() % 16;
            let data: Vec<Vec<u8>> = (0..batch.saturating_sub(7).max(1))
                .map(|_| self.rng.next_u64().to_be_bytes().to_vec())
                .collect();
            let node = self.nodes.get_mut(l).expect("exists");
            if batch < 8 {
                for data in data {
                    if let Ok(p) = node.raft.propose(now, data) {
                        self.proposals.push(p);
                    }
                }
            } else {
                for p in node.raft.propose_batch(now, data).into_iter().flatten() {
                    self.proposals.push(p);
                }
            }
            node.drain(now);
        }
    }

    fn step(&mut self, faults: bool) {
        let roll = self.rng.next_u64() % 100;
        let now = self.now;
        match roll {
            0..=44 if !self.net.is_empty() => {
                let i = self.pick(self.net.len());
                let env = self.net.swap_remove(i);
                if faults && self.chance(5) {
                    self.net.push(env.clone()); // duplicate
                }
                let dropped = faults && self.chance(8);
                let cut = self.cut.contains(&env.from) || self.cut.contains(&env.to);
                if !dropped
                    && !cut
                    && let Some(node) = self.nodes.get_mut(&env.to)
                {
                    node.recv(now, env);
                }
            }
            45..=59 => {
                self.now += self.rng.next_u64() % 8;
                let now = self.now;
                for node in self.nodes.values_mut() {
                    if node.raft.next_timeout().is_some_and(|d| d <= now) {
                        node.timeout(now);
                    }
                }
            }
            60..=74 => {
                let id = self.random_node();
                let node = self.nodes.get_mut(&id).expect("exists");
                if let Some(i) = node.pending_snapshot.take() {
                    node.raft.handle_snapshot_persisted(now, i);
                } else if let Some((i, tm)) = node.unpersisted.pop_front() {
                    node.raft.store_mut().mark_durable(i);
                    node.raft.handle_persisted(now, i, tm);
                }
                node.drain(now);
            }
            75..=84 => {
                let id = self.random_node();
                let node = self.nodes.get_mut(&id).expect("exists");
                let i = node.applied_index;
                node.raft.handle_applied(now, i);
                node.drain(now);
            }
            85..=92 if faults => self.propose(),
            93 if faults => {
                let id = self.random_node();
                self.nodes.get_mut(&id).expect("exists").crash_restart(now);
            }
            94 if faults => {
                if self.cut.is_empty() {
                    let id = self.random_node();
                    self.cut.insert(id);
                } else {
                    self.cut.clear();
                }
            }
            96 => {
                // A random one-at-a-time membership change (most are refused: that is fine).
                let leader = self
                    .nodes
                    .values()
                    .find(|n| n.raft.role() == Role::Leader)
                    .map(|n| n.id());
                let target = self.random_node();
                let change = match self.rng.next_u64() % 4 {
                    0 => MembershipChange::AddLearner(target),
                    1 => MembershipChange::PromoteLearner(target),
                    2 => MembershipChange::AddVoter(target),
                    _ => MembershipChange::RemoveNode(target),
                };
                if let Some(l) = leader {
                    let node = self.nodes.get_mut(&l).expect("exists");
                    let _ = node.raft.propose_membership(now, change);
                    node.drain(now);
                }
            }
            97 => {
                // Leadership transfer to a random node.
                let leader = self
                    .nodes
                    .values()
                    .find(|n| n.raft.role() == Role::Leader)
                    .map(|n| n.id());
                let target = self.random_node();
                if let Some(l) = leader {
                    let node = self.nodes.get_mut(&l).expect("exists");
                    let _ = node.raft.transfer_leadership(now, target);
                    node.drain(now);
                }
            }
            95 => {
                // Compact a random node at its applied index.
                let id = self.random_node();
                let node = self.nodes.get_mut(&id).expect("exists");
                let applied = node.raft.status().applied_index;
                if applied >= node.raft.store().first_index() && node.pending_snapshot.is_none() {
                    let meta = SnapshotMeta {
                        last_index: applied,
                        last_term: node
                            .raft
                            .store()
                            .term(applied)
                            .expect("applied entry stored"),
                        membership: node.raft.membership_at(applied).expect("known"),
                    };
                    node.raft
                        .store_mut()
                        .compact(applied, Snapshot { meta, data: vec![] });
                    node.raft.handle_compacted(now);
                    node.drain(now);
                }
            }
            _ => {}
        }
        self.collect();
    }
}

/// Runs one seed: faults for `steps`, then healing. Err on a safety violation; panics if the
/// cluster does not make progress once healed.
fn run(seed: u64, size: u64, steps: usize, tweak: Tweak) -> Result<(), String> {
    let mut sim = Sim::new(seed, size, 2, tweak);
    for _ in 0..steps {
        sim.step(true);
        if let Some(v) = sim.violation.take() {
            return Err(format!("seed {seed}: {v}"));
        }
    }
    // Heal and stop injecting faults: a leader must emerge and commit a fresh proposal.
    sim.cut.clear();
    for round in 0..40_000 {
        sim.step(false);
        if let Some(v) = sim.violation.take() {
            return Err(format!("seed {seed}: {v}"));
        }
        if round % 500 == 499 {
            if round > 5_000
                && let Some(last) = sim.proposals.last()
                && sim.applied.get(&last.0).is_some_and(|e| e.term == last.1)
            {
                return Ok(());
            }
            sim.propose();
        }
    }
    for node in sim.nodes.values() {
        eprintln!(
            "{:?} next_timeout={:?}",
            node.raft.status(),
            node.raft.next_timeout()
        );
    }
    panic!(
        "seed {seed}: no progress after healing (proposals {}, applied up to {:?})",
        sim.proposals.len(),
        sim.applied.keys().last()
    );
}

/// `WEIR_RAFT_SEEDS=<n>` runs n seeds of each size instead of the quick default.
#[test]
fn random_cluster_runs_keep_safety_and_recover_liveness() {
    let seeds: u64 = std::env::var("WEIR_RAFT_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(16);
    let first: u64 = std::env::var("WEIR_RAFT_FIRST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    for seed in first..seeds {
        run(seed, 3, 4_000, |_| {}).unwrap();
    }
    for seed in 0..seeds.div_ceil(2) {
        run(1_000 + seed, 5, 4_000, |_| {}).unwrap();
    }
}

/// Each fault switch re-introduces its bug faithfully enough that this small checker finds a
/// safety violation within a few hundred seeds (weir-sim relies on the same property).
#[cfg(feature = "fault-injection")]
#[test]
fn fault_switches_produce_safety_violations() {
    let tweaks: [(&str, Tweak); 3] = [
        ("commit_without_majority", |c| {
            c.bugs.commit_without_majority = true
        }),
        ("ack_before_persist", |c| c.bugs.ack_before_persist = true),
        ("vote_for_stale_candidate", |c| {
            c.bugs.vote_for_stale_candidate = true
        }),
    ];
    for (name, tweak) in tweaks {
        let found = (0..300).find_map(|seed| run(seed, 3, 4_000, tweak).err());
        assert!(found.is_some(), "{name}: no violation found");
        eprintln!("{name}: {}", found.unwrap_or_default());
    }
}
