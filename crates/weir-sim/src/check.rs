//! Safety checkers. They observe every output of every node (the simulation calls them after each
//! step) and report the first broken invariant as a [`Violation`] value.
//!
//! Cost is kept proportional to what changed: written entries are checked as they are written
//! (log matching via an `(index, term) -> (payload hash, previous term)` table), applied entries as
//! they are applied (against one global committed log), leader completeness once per new leader,
//! and the durable-quorum check looks only at the highest committed index.

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use weir_raft::{
    Entry, HardState, Membership, Millis, NodeId, Payload, Role, SnapshotMeta, Status, Term,
};

use crate::rng::{hash_bytes, mix};
use crate::store::LogImage;

/// Which invariant (or expectation) was broken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Check {
    /// At most one leader per term.
    ElectionSafety,
    /// Same index and term implies same payload and same prefix.
    LogMatching,
    /// Every committed entry is in the log of every later leader.
    LeaderCompleteness,
    /// Every node applies the same entry at the same index, once, in order.
    StateMachineSafety,
    /// A committed entry stays durable on enough voters that every majority holds it.
    CommittedDurable,
    /// Hard state and commit index only move forward; a node never overwrites an entry it knows
    /// committed.
    Persistence,
    /// Every acknowledged proposal is in the final log exactly once; no payload is committed twice.
    ClientOracle,
    /// After faults heal, a leader is elected and a proposal commits within the bound.
    Liveness,
    /// The core broke the driver contract (malformed outputs, inconsistent status).
    Contract,
    /// A scenario's own expectation (e.g. "no commit without a majority").
    Scenario,
    /// The core (or the simulation) panicked.
    Panic,
    /// The run exceeded its event budget (e.g. a busy loop at one instant).
    Budget,
}

impl Check {
    /// Every variant, for documentation and option parsing.
    pub const ALL: [Check; 12] = [
        Check::ElectionSafety,
        Check::LogMatching,
        Check::LeaderCompleteness,
        Check::StateMachineSafety,
        Check::CommittedDurable,
        Check::Persistence,
        Check::ClientOracle,
        Check::Liveness,
        Check::Contract,
        Check::Scenario,
        Check::Panic,
        Check::Budget,
    ];

    /// snake_case name (for `--disable`).
    pub fn name(self) -> &'static str {
        match self {
            Check::ElectionSafety => "election_safety",
            Check::LogMatching => "log_matching",
            Check::LeaderCompleteness => "leader_completeness",
            Check::StateMachineSafety => "state_machine_safety",
            Check::CommittedDurable => "committed_durable",
            Check::Persistence => "persistence",
            Check::ClientOracle => "client_oracle",
            Check::Liveness => "liveness",
            Check::Contract => "contract",
            Check::Scenario => "scenario",
            Check::Panic => "panic",
            Check::Budget => "budget",
        }
    }

    /// Inverse of [`Check::name`].
    pub fn parse(name: &str) -> Option<Check> {
        Check::ALL.into_iter().find(|c| c.name() == name)
    }

    /// Safety invariants proper (as opposed to liveness, scenario expectations, panics).
    pub fn is_safety(self) -> bool {
        matches!(
            self,
            Check::ElectionSafety
                | Check::LogMatching
                | Check::LeaderCompleteness
                | Check::StateMachineSafety
                | Check::CommittedDurable
                | Check::Persistence
                | Check::ClientOracle
        )
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Check::ElectionSafety => "election safety",
            Check::LogMatching => "log matching",
            Check::LeaderCompleteness => "leader completeness",
            Check::StateMachineSafety => "state machine safety",
            Check::CommittedDurable => "committed entry durable on a quorum",
            Check::Persistence => "persistence",
            Check::ClientOracle => "client oracle",
            Check::Liveness => "liveness",
            Check::Contract => "driver contract",
            Check::Scenario => "scenario expectation",
            Check::Panic => "panic",
            Check::Budget => "event budget",
        };
        f.write_str(s)
    }
}

/// A broken invariant: what, when (simulated ms), where, and the details.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub check: Check,
    pub at_ms: Millis,
    pub node: Option<NodeId>,
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} violated at t={}ms", self.check, self.at_ms)?;
        if let Some(n) = self.node {
            write!(f, " on {n}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for Violation {}

/// Result of a simulation step or scenario.
pub type SimResult<T> = Result<T, Violation>;

/// Build a violation.
pub fn violation(
    check: Check,
    at_ms: Millis,
    node: Option<NodeId>,
    message: impl Into<String>,
) -> Violation {
    Violation {
        check,
        at_ms,
        node,
        message: message.into(),
    }
}

/// Marker byte that starts every payload the simulation proposes.
pub const PAYLOAD_MAGIC: u8 = b'W';

/// The unique id the simulation put in a payload, if it is one of ours.
pub fn payload_id(p: &Payload) -> Option<u64> {
    match p {
        Payload::Normal(d) if d.len() >= 9 && d[0] == PAYLOAD_MAGIC => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&d[1..9]);
            Some(u64::from_le_bytes(b))
        }
        _ => None,
    }
}

/// A payload with the given id and `pad` bytes of id-derived filler.
pub fn make_payload(id: u64, pad: usize) -> Vec<u8> {
    let mut d = Vec::with_capacity(9 + pad);
    d.push(PAYLOAD_MAGIC);
    d.extend_from_slice(&id.to_le_bytes());
    let mut x = mix(id);
    for _ in 0..pad {
        d.push(x as u8);
        x = mix(x);
    }
    d
}

/// A 64-bit fingerprint of a payload (index and term are not included).
pub fn payload_fp(p: &Payload) -> u64 {
    match p {
        Payload::Noop => mix(0x4e4f_4f50),
        Payload::Normal(d) => hash_bytes(1, d),
        Payload::Membership(m) => membership_fp(m),
    }
}

fn membership_fp(m: &Membership) -> u64 {
    let mut h = mix(0x4d45_4d42);
    for v in &m.voters {
        h = mix(h ^ v.0);
    }
    h = mix(h ^ 0xffff);
    for l in &m.learners {
        h = mix(h ^ l.0);
    }
    h
}

/// The state-machine digest after applying `entry` on top of `prev`.
pub fn digest_step(prev: u64, entry: &Entry) -> u64 {
    mix(prev ^ mix(entry.index.0 ^ mix(entry.term.0 ^ payload_fp(&entry.payload))))
}

/// Short human description of a payload.
pub fn describe_payload(p: &Payload) -> String {
    match p {
        Payload::Noop => "noop".into(),
        Payload::Normal(d) => match payload_id(&Payload::Normal(d.clone())) {
            Some(id) => format!("p{id}"),
            None => format!("{} bytes", d.len()),
        },
        Payload::Membership(m) => format!(
            "membership voters={:?} learners={:?}",
            m.voters.iter().map(|n| n.0).collect::<Vec<_>>(),
            m.learners.iter().map(|n| n.0).collect::<Vec<_>>()
        ),
    }
}

/// What the checkers know about a committed index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommittedEntry {
    pub term: Term,
    pub fp: u64,
    pub payload_id: Option<u64>,
    /// Which node first showed it committed, and how.
    pub witness: NodeId,
}

#[derive(Clone, Copy, Debug)]
struct EntryFacts {
    fp: u64,
    prev_term: Option<Term>,
    first_writer: NodeId,
}

/// The checkers' memory of the whole run.
#[derive(Debug, Default)]
pub struct Checker {
    disabled: BTreeSet<Check>,
    /// Also flag a leader whose progress for a peer has next_index <= match_index.
    pub strict_progress: bool,
    leaders: HashMap<u64, NodeId>,
    entries: HashMap<(u64, u64), EntryFacts>,
    committed: Vec<Option<CommittedEntry>>,
    apply_digest: Vec<Option<u64>>,
    payload_index: HashMap<u64, u64>,
    max_committed: u64,
    membership_index: u64,
    membership: Membership,
    membership_changes: u64,
}

impl Checker {
    /// `initial` is the founding configuration (voters used by the durable-quorum check until a
    /// membership entry commits).
    pub fn new(initial: Membership, disabled: BTreeSet<Check>) -> Self {
        Self {
            disabled,
            membership: initial,
            committed: vec![None],
            apply_digest: vec![Some(0)],
            ..Self::default()
        }
    }

    /// Is this check active?
    pub fn enabled(&self, check: Check) -> bool {
        !self.disabled.contains(&check)
    }

    fn fail(&self, check: Check, now: Millis, node: Option<NodeId>, msg: String) -> SimResult<()> {
        if self.enabled(check) {
            Err(violation(check, now, node, msg))
        } else {
            Ok(())
        }
    }

    /// Highest index known committed.
    pub fn max_committed(&self) -> u64 {
        self.max_committed
    }

    /// What is known committed at `index`.
    pub fn committed(&self, index: u64) -> Option<&CommittedEntry> {
        self.committed.get(index as usize).and_then(Option::as_ref)
    }

    /// Membership entries committed so far.
    pub fn membership_changes(&self) -> u64 {
        self.membership_changes
    }

    /// Latest committed configuration.
    pub fn committed_membership(&self) -> &Membership {
        &self.membership
    }

    /// The leader recorded for `term`.
    pub fn leader_of(&self, term: u64) -> Option<NodeId> {
        self.leaders.get(&term).copied()
    }

    /// `PersistHardState`: terms never go back, one vote per term.
    pub fn hard_state(
        &mut self,
        now: Millis,
        node: NodeId,
        old: &HardState,
        new: &HardState,
    ) -> SimResult<()> {
        if new.term < old.term {
            return self.fail(
                Check::Persistence,
                now,
                Some(node),
                format!("persisted term went back from {} to {}", old.term, new.term),
            );
        }
        if new.term == old.term
            && let Some(v) = old.voted_for
            && new.voted_for != Some(v)
        {
            return self.fail(
                Check::Persistence,
                now,
                Some(node),
                format!(
                    "vote changed within {}: voted for {v}, now {:?}",
                    new.term, new.voted_for
                ),
            );
        }
        Ok(())
    }

    /// A status observed after a step. `prev` is the previous status of the same incarnation.
    pub fn status(&mut self, now: Millis, prev: Option<&Status>, st: &Status) -> SimResult<()> {
        let node = Some(st.id);
        if st.commit_index > st.last_index {
            self.fail(
                Check::Contract,
                now,
                node,
                format!(
                    "commit index {} beyond last index {}",
                    st.commit_index, st.last_index
                ),
            )?;
        }
        if st.applied_index > st.commit_index {
            self.fail(
                Check::Contract,
                now,
                node,
                format!(
                    "applied index {} beyond commit index {}",
                    st.applied_index, st.commit_index
                ),
            )?;
        }
        if let Some(p) = prev {
            if st.term < p.term {
                self.fail(
                    Check::Persistence,
                    now,
                    node,
                    format!("term went back from {} to {}", p.term, st.term),
                )?;
            }
            if st.commit_index < p.commit_index {
                self.fail(
                    Check::Persistence,
                    now,
                    node,
                    format!(
                        "commit index went back from {} to {}",
                        p.commit_index, st.commit_index
                    ),
                )?;
            }
        }
        if st.role == Role::Leader {
            if self.strict_progress {
                for (peer, p) in &st.progress {
                    if p.next_index <= p.match_index {
                        self.fail(
                            Check::Contract,
                            now,
                            node,
                            format!(
                                "leader's progress for {peer} has next index {} <= match index {}",
                                p.next_index, p.match_index
                            ),
                        )?;
                    }
                }
            }
            match self.leaders.get(&st.term.0) {
                Some(&other) if other != st.id => {
                    return self.fail(
                        Check::ElectionSafety,
                        now,
                        node,
                        format!("two leaders in {}: {other} and {}", st.term, st.id),
                    );
                }
                Some(_) => {}
                None => {
                    self.leaders.insert(st.term.0, st.id);
                }
            }
        }
        Ok(())
    }

    /// `PersistEntries` about to be written on `node`, whose log is `before` and whose commit
    /// index (before this step) is `node_commit`.
    pub fn entries_written(
        &mut self,
        now: Millis,
        node: NodeId,
        before: &LogImage,
        entries: &[Entry],
        node_commit: u64,
    ) -> SimResult<()> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        let mut prev_term = before.term(first.index.0.saturating_sub(1));
        for e in entries {
            let i = e.index.0;
            if i <= node_commit
                && let Some(old) = before.term(i)
                && old != e.term
            {
                self.fail(
                    Check::Persistence,
                    now,
                    Some(node),
                    format!(
                        "overwrites entry {i} (term {old}) that it knew committed (commit index {node_commit}) with term {}",
                        e.term
                    ),
                )?;
            }
            if i > before.snapshot_index() {
                let fp = payload_fp(&e.payload);
                match self.entries.get(&(i, e.term.0)) {
                    Some(f) => {
                        if f.fp != fp {
                            self.fail(
                                Check::LogMatching,
                                now,
                                Some(node),
                                format!(
                                    "entry {i} term {} written with payload {} but {} wrote a different payload at the same index and term",
                                    e.term,
                                    describe_payload(&e.payload),
                                    f.first_writer
                                ),
                            )?;
                        }
                        if let (Some(a), Some(b)) = (f.prev_term, prev_term)
                            && a != b
                        {
                            self.fail(
                                Check::LogMatching,
                                now,
                                Some(node),
                                format!(
                                    "entry {i} term {}: preceded by term {b} here but by term {a} on {} (same index+term, different prefix)",
                                    e.term, f.first_writer
                                ),
                            )?;
                        }
                    }
                    None => {
                        self.entries.insert(
                            (i, e.term.0),
                            EntryFacts {
                                fp,
                                prev_term,
                                first_writer: node,
                            },
                        );
                    }
                }
            }
            prev_term = Some(e.term);
        }
        Ok(())
    }

    /// `node` shows `entry` as committed (through its commit index, or by applying it).
    pub fn committed_entry(
        &mut self,
        now: Millis,
        node: NodeId,
        entry: &Entry,
        how: &str,
    ) -> SimResult<()> {
        let i = entry.index.0 as usize;
        if self.committed.len() <= i {
            self.committed.resize(i + 1, None);
        }
        let fp = payload_fp(&entry.payload);
        if let Some(c) = &self.committed[i] {
            if c.term != entry.term || c.fp != fp {
                return self.fail(
                    Check::StateMachineSafety,
                    now,
                    Some(node),
                    format!(
                        "index {i} {how} as term {} {} but {} showed term {} committed there",
                        entry.term,
                        describe_payload(&entry.payload),
                        c.witness,
                        c.term
                    ),
                );
            }
            return Ok(());
        }
        let pid = payload_id(&entry.payload);
        if let Some(id) = pid
            && let Some(&other) = self.payload_index.get(&id)
            && other != i as u64
        {
            return self.fail(
                Check::ClientOracle,
                now,
                Some(node),
                format!("payload p{id} committed twice: at index {other} and at index {i}"),
            );
        }
        if let Some(id) = pid {
            self.payload_index.insert(id, i as u64);
        }
        self.committed[i] = Some(CommittedEntry {
            term: entry.term,
            fp,
            payload_id: pid,
            witness: node,
        });
        self.max_committed = self.max_committed.max(i as u64);
        if let Payload::Membership(m) = &entry.payload
            && entry.index.0 > self.membership_index
        {
            self.membership_index = entry.index.0;
            self.membership = m.clone();
            self.membership_changes += 1;
        }
        Ok(())
    }

    /// `node` applied `entry`; its state-machine digest is now `digest`.
    pub fn applied(
        &mut self,
        now: Millis,
        node: NodeId,
        entry: &Entry,
        digest: u64,
    ) -> SimResult<()> {
        self.committed_entry(now, node, entry, "applied")?;
        self.digest_at(now, node, entry.index.0, digest, "after applying")
    }

    fn digest_at(
        &mut self,
        now: Millis,
        node: NodeId,
        index: u64,
        digest: u64,
        how: &str,
    ) -> SimResult<()> {
        let i = index as usize;
        if self.apply_digest.len() <= i {
            self.apply_digest.resize(i + 1, None);
        }
        match self.apply_digest[i] {
            Some(d) if d != digest => self.fail(
                Check::StateMachineSafety,
                now,
                Some(node),
                format!("state machine {how} index {index} differs from other nodes' (digest {digest:016x} vs {d:016x})"),
            ),
            Some(_) => Ok(()),
            None => {
                self.apply_digest[i] = Some(digest);
                Ok(())
            }
        }
    }

    /// `node`'s state machine was replaced by a snapshot (installed or restored after a crash).
    pub fn snapshot_state(
        &mut self,
        now: Millis,
        node: NodeId,
        meta: &SnapshotMeta,
        digest: u64,
    ) -> SimResult<()> {
        let i = meta.last_index.0;
        if let Some(c) = self.committed(i)
            && c.term != meta.last_term
        {
            let msg = format!(
                "snapshot up to {i} has last term {} but {} committed term {} there",
                meta.last_term, c.witness, c.term
            );
            return self.fail(Check::StateMachineSafety, now, Some(node), msg);
        }
        self.digest_at(now, node, i, digest, "restored from snapshot at")
    }

    /// `node` just became leader of `term` with log `log`: it must hold every committed entry.
    pub fn leader_completeness(
        &mut self,
        now: Millis,
        node: NodeId,
        term: Term,
        log: &LogImage,
    ) -> SimResult<()> {
        let snap = log.snapshot_index();
        if let Some(s) = &log.snapshot
            && let Some(c) = self.committed(snap)
            && c.term != s.meta.last_term
        {
            return self.fail(
                Check::LeaderCompleteness,
                now,
                Some(node),
                format!(
                    "new leader of {term} has a snapshot ending at {snap} term {} but term {} is committed there",
                    s.meta.last_term, c.term
                ),
            );
        }
        for i in (snap + 1)..=self.max_committed {
            let Some(c) = self.committed(i) else { continue };
            let have = log.term(i);
            if have != Some(c.term) {
                let have = have.map_or("nothing".to_string(), |t| format!("term {t}"));
                return self.fail(
                    Check::LeaderCompleteness,
                    now,
                    Some(node),
                    format!(
                        "new leader of {term} lacks committed entry {i} (term {}, first shown committed by {}): it has {have} (log {}..={})",
                        c.term,
                        c.witness,
                        log.first_index(),
                        log.last_index()
                    ),
                );
            }
        }
        Ok(())
    }

    /// The highest committed entry must be durable on so many voters of the committed
    /// configuration that every majority of them contains a holder. `holds(n, index, term)` says
    /// whether node `n`'s durable state covers that entry (false for unknown nodes).
    pub fn durable_quorum(
        &self,
        now: Millis,
        holds: impl Fn(NodeId, u64, Term) -> bool,
    ) -> SimResult<()> {
        let k = self.max_committed;
        if k == 0 || !self.enabled(Check::CommittedDurable) {
            return Ok(());
        }
        let Some(c) = self.committed(k) else {
            return Ok(());
        };
        let mut holders = Vec::new();
        let mut missing = Vec::new();
        for &v in &self.membership.voters {
            if holds(v, k, c.term) {
                holders.push(v.0);
            } else {
                missing.push(v.0);
            }
        }
        if missing.len() >= self.membership.quorum() {
            return self.fail(
                Check::CommittedDurable,
                now,
                None,
                format!(
                    "committed entry {k} (term {}, first shown committed by {}) is durable only on nodes {holders:?}; nodes {missing:?} form a majority of voters {:?} without it",
                    c.term,
                    c.witness,
                    self.membership.voters.iter().map(|n| n.0).collect::<Vec<_>>()
                ),
            );
        }
        Ok(())
    }

    /// Where payload `id` was committed, if it was.
    pub fn payload_index(&self, id: u64) -> Option<u64> {
        self.payload_index.get(&id).copied()
    }
}
