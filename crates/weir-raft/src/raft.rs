//! The Raft state machine. See the crate docs for the driver contract.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;

use tracing::{debug, warn};

use crate::config::Config;
use crate::rng::SplitMix64;
use crate::store::LogStore;
use crate::types::*;
use crate::{
    APPEND_BYTES_MAX, APPLY_BATCH_BYTES_MAX, APPLY_BATCH_MAX, APPLY_INFLIGHT_MAX,
    ENTRIES_PER_APPEND_MAX, ENTRY_BYTES_MAX, INFLIGHT_APPENDS_MAX, LEARNERS_MAX, LOG_INDEX_MAX,
    SNAPSHOT_BYTES_MAX, TERM_MAX, UNSTABLE_ENTRIES_MAX, VOTERS_MAX,
};

/// How the leader currently replicates to one peer (etcd raft's progress states).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Next index unknown: one AppendEntries at a time; `paused` until a reply or the next
    /// heartbeat, so a lagging follower is not flooded with appends it will reject.
    Probe { paused: bool },
    /// Follower known to match up to `match_index`: pipeline up to `max_inflight_appends`.
    Replicate,
    /// InstallSnapshot of `index` sent; wait for its reply (or retry after an election timeout).
    Snapshot { index: LogIndex },
}

#[derive(Clone, Debug)]
struct Peer {
    match_index: LogIndex,
    next_index: LogIndex,
    mode: Mode,
    /// Last index of each AppendEntries in flight (Replicate mode), oldest first.
    inflight: VecDeque<LogIndex>,
    /// Last time any current-term message came from this peer (CheckQuorum).
    last_heard_ms: Millis,
    snapshot_sent_ms: Millis,
    /// When match_index last advanced, or the peer last went from caught-up to behind: a peer
    /// behind for too long without progress had appends (or their replies) lost.
    last_progress_ms: Millis,
}

impl Peer {
    fn new(next_index: LogIndex, now: Millis) -> Self {
        Peer {
            match_index: LogIndex(0),
            next_index,
            mode: Mode::Probe { paused: false },
            inflight: VecDeque::new(),
            // A new leader (or new member) gets a full election timeout of grace before CheckQuorum
            // counts it as silent.
            last_heard_ms: now,
            snapshot_sent_ms: 0,
            last_progress_ms: now,
        }
    }

    /// Raises the match index (never lowers it). `next` always stays above `match`: entries up
    /// to `match` are on the follower, so sending from below it again would only loop (the
    /// livelock weir-sim found when a snapshot or a late ack raised `match` past `next`).
    fn raise_match(&mut self, index: LogIndex, now: Millis) -> bool {
        if index <= self.match_index {
            return false;
        }
        self.match_index = index;
        self.last_progress_ms = now;
        self.next_index = self.next_index.max(index.next());
        true
    }

    fn become_probe(&mut self) {
        self.mode = Mode::Probe { paused: false };
        self.inflight.clear();
        self.next_index = self.next_index.max(self.match_index.next());
    }

    fn become_replicate(&mut self, now: Millis) {
        self.last_progress_ms = now;
        self.mode = Mode::Replicate;
        self.inflight.clear();
        self.next_index = self.match_index.next();
    }
}

#[derive(Clone, Debug)]
struct Transfer {
    to: NodeId,
    deadline_ms: Millis,
    timeout_now_sent: bool,
}

#[derive(Clone, Debug)]
struct LeaderState {
    peers: BTreeMap<NodeId, Peer>,
    /// Index of this term's Noop: until it commits, this leader has not committed in its term
    /// and must not start a membership change (the one-at-a-time bug fixed in Ongaro's thesis).
    term_start: LogIndex,
    heartbeat_deadline_ms: Millis,
    check_quorum_deadline_ms: Millis,
    transfer: Option<Transfer>,
}

/// What the invariant checks remember from the previous step.
#[derive(Clone, Debug)]
struct Memo {
    term: Term,
    voted_for: Option<NodeId>,
    commit: LogIndex,
    commit_term: Option<Term>,
}

/// One node of one Raft group, as a deterministic state machine. See the crate docs.
pub struct Raft<S: LogStore> {
    config: Config,
    store: S,
    rng: SplitMix64,
    /// The `now` of the call being handled.
    now: Millis,

    // Hard state (in memory; `emitted_hard_state` is what the driver has been told to persist).
    term: Term,
    voted_for: Option<NodeId>,
    emitted_hard_state: HardState,

    role: Role,
    leader: Option<NodeId>,
    /// When this follower last heard from `leader` (leader lease).
    leader_heard_ms: Option<Millis>,
    election_deadline_ms: Millis,

    // The log: store[first_index .. unstable_offset) ++ unstable.
    /// Entries not yet reported durable by handle_persisted, starting at `unstable_offset`.
    unstable: Vec<Entry>,
    unstable_offset: LogIndex,
    /// A snapshot handed out in PersistSnapshot and not yet reported persisted: the log starts
    /// after it even if the store does not say so yet.
    pending_snapshot: Option<SnapshotMeta>,

    commit: LogIndex,
    /// Last index handed out in an Apply output.
    apply_sent: LogIndex,
    /// Last index the driver reported applied.
    applied: LogIndex,

    /// Configuration in effect before every entry of `config_log` (initial, snapshot, or an
    /// applied Membership entry), with the index it took effect at.
    config_base: (LogIndex, Membership),
    /// Membership entries in the log after `config_base`, in index order. The latest one is the
    /// configuration in effect (Raft dissertation §4.1: effective on append, committed or not).
    config_log: Vec<(LogIndex, Membership)>,

    // Follower acknowledgement state for the current term's leader.
    /// Highest index known to match the current leader's log.
    verified: LogIndex,
    /// Highest match_index already acknowledged to the current leader.
    acked: LogIndex,

    /// (Pre)vote tally of the current campaign.
    votes: BTreeMap<NodeId, bool>,
    leader_state: Option<LeaderState>,

    outputs: VecDeque<Output>,
    reported: Option<(Role, Term, Option<NodeId>)>,
    memo: Memo,
}

impl<S: LogStore> fmt::Debug for Raft<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Raft")
            .field("id", &self.config.id)
            .field("role", &self.role)
            .field("term", &self.term)
            .field("leader", &self.leader)
            .field("commit", &self.commit)
            .field("last_index", &self.last_index())
            .finish_non_exhaustive()
    }
}

impl<S: LogStore> Raft<S> {
    /// Restores from the store (hard state, snapshot, log). `initial` is the membership to use if
    /// the store has none (a brand-new cluster bootstrapped from a static peer list): every
    /// founding member passes the same set. Panics on an invalid `config` (driver bug).
    ///
    /// Commit and applied restart at the store's snapshot index: the driver's state machine must
    /// restart from `store.snapshot()` and will get every later committed entry in Apply again.
    pub fn new(mut config: Config, store: S, initial: Membership, now: Millis) -> Self {
        if let Err(e) = config.validate() {
            panic!("invalid weir-raft config: {e}");
        }
        config.max_entries_per_append = config
            .max_entries_per_append
            .clamp(1, ENTRIES_PER_APPEND_MAX);
        config.max_bytes_per_append = config.max_bytes_per_append.clamp(1, APPEND_BYTES_MAX);
        config.max_inflight_appends = config.max_inflight_appends.clamp(1, INFLIGHT_APPENDS_MAX);

        let hard_state = store.hard_state();
        let snapshot_meta = store.snapshot().map(|s| s.meta);
        let base_index = snapshot_meta.as_ref().map_or(LogIndex(0), |m| m.last_index);
        let base_membership = snapshot_meta.map_or(initial, |m| m.membership);
        let unstable_offset = store.last_index().next();
        // Seed mixes in the id so nodes given the same seed still get different timeouts.
        let rng =
            SplitMix64::new(config.random_seed ^ config.id.0.wrapping_mul(0xA24B_AED4_963E_E407));
        let mut raft = Raft {
            rng,
            now,
            term: hard_state.term,
            voted_for: hard_state.voted_for,
            emitted_hard_state: hard_state.clone(),
            role: Role::Follower,
            leader: None,
            leader_heard_ms: None,
            election_deadline_ms: now,
            unstable: Vec::new(),
            unstable_offset,
            pending_snapshot: None,
            commit: base_index,
            apply_sent: base_index,
            applied: base_index,
            config_base: (base_index, base_membership),
            config_log: Vec::new(),
            verified: LogIndex(0),
            acked: LogIndex(0),
            votes: BTreeMap::new(),
            leader_state: None,
            outputs: VecDeque::new(),
            reported: None,
            memo: Memo {
                term: hard_state.term,
                voted_for: hard_state.voted_for,
                commit: base_index,
                commit_term: None,
            },
            config,
            store,
        };
        raft.memo.commit_term = raft.term_at(base_index);
        // Rebuild the configuration history from the stored log (O(log since snapshot), once).
        let last = raft.last_index();
        let mut lo = raft.first_index();
        while lo <= last {
            let Some(batch) =
                raft.entries_range(lo, last.next(), APPEND_BYTES_MAX, ENTRIES_PER_APPEND_MAX)
            else {
                warn!(id = %raft.config.id, %lo, "store is missing entries while restoring");
                break;
            };
            let Some(batch_last) = batch.last().map(|e| e.index) else {
                break;
            };
            for entry in batch {
                if let Payload::Membership(m) = entry.payload {
                    raft.config_log.push((entry.index, m));
                }
            }
            lo = batch_last.next();
        }
        raft.role = raft.follower_role();
        raft.reset_election_deadline();
        raft.finish_step();
        raft
    }

    // ---------------------------------------------------------------------------------------
    // Public API
    // ---------------------------------------------------------------------------------------

    /// The driver's store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The driver writes through this while executing Persist* outputs (and when compacting).
    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }

    /// This node's config (with `max_*` clamped).
    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn id(&self) -> NodeId {
        self.config.id
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn term(&self) -> Term {
        self.term
    }

    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }

    pub fn commit_index(&self) -> LogIndex {
        self.commit
    }

    /// Highest index the driver reported applied (`handle_applied`).
    pub fn applied_index(&self) -> LogIndex {
        self.applied
    }

    /// Leader only: the index of this term's first entry (its no-op). Once the driver has
    /// applied it, every entry of an earlier term this leader will ever commit is applied, so a
    /// state machine check of a proposal against applied state (plus the leader's own pending
    /// proposals) is complete.
    pub fn term_start(&self) -> Option<LogIndex> {
        self.leader_state
            .as_ref()
            .filter(|_| self.role == Role::Leader)
            .map(|ls| ls.term_start)
    }

    /// The configuration in effect (latest Membership entry in the log, committed or not).
    pub fn membership(&self) -> &Membership {
        self.config_log
            .last()
            .map_or(&self.config_base.1, |(_, m)| m)
    }

    /// The configuration in effect at `index`, for the SnapshotMeta of a snapshot taken at
    /// `index`. Known for any index >= the last `handle_applied` index (older history is pruned);
    /// None below that.
    pub fn membership_at(&self, index: LogIndex) -> Option<Membership> {
        if index < self.config_base.0 {
            return None;
        }
        let latest = self.config_log.iter().rev().find(|(i, _)| *i <= index);
        Some(latest.map_or(&self.config_base.1, |(_, m)| m).clone())
    }

    /// Handles one message from a peer. Messages not addressed to this node, from itself,
    /// malformed, or stale are ignored (logged at debug); they never panic the core.
    pub fn handle_message(&mut self, now: Millis, envelope: Envelope) {
        self.now = now;
        let Envelope { from, to, message } = envelope;
        if to != self.config.id || from == self.config.id {
            debug!(id = %self.config.id, %from, %to, "message not for this node");
            return self.finish_step();
        }
        if let Err(why) = validate(&message) {
            debug!(id = %self.config.id, %from, why, "malformed message ignored");
            return self.finish_step();
        }
        self.step(from, message);
        self.finish_step();
    }

    /// Call at or after `next_timeout()`. Calls before a deadline are harmless.
    pub fn handle_timeout(&mut self, now: Millis) {
        self.now = now;
        match self.role {
            Role::Leader => self.leader_tick(),
            Role::Follower | Role::PreCandidate | Role::Candidate => {
                if self.can_campaign() && now >= self.election_deadline_ms {
                    debug!(id = %self.config.id, term = %self.term, "election timeout");
                    self.campaign(self.config.pre_vote, false);
                }
            }
            Role::Learner => {}
        }
        self.finish_step();
    }

    /// When to call `handle_timeout` next; None = only on other input (learners, removed nodes).
    pub fn next_timeout(&self) -> Option<Millis> {
        match self.role {
            Role::Leader => {
                let ls = self.leader_state.as_ref()?;
                let mut t = ls.heartbeat_deadline_ms;
                if self.config.check_quorum {
                    t = t.min(ls.check_quorum_deadline_ms);
                }
                if let Some(tr) = &ls.transfer {
                    t = t.min(tr.deadline_ms);
                }
                Some(t)
            }
            Role::Follower | Role::PreCandidate | Role::Candidate if self.can_campaign() => {
                Some(self.election_deadline_ms)
            }
            _ => None,
        }
    }

    /// Appends `data` as a new entry (leader only). Success iff a later Apply contains an entry
    /// with the returned (index, term).
    pub fn propose(
        &mut self,
        now: Millis,
        data: Vec<u8>,
    ) -> Result<(LogIndex, Term), ProposeError> {
        self.now = now;
        self.check_can_propose()?;
        if data.len() > ENTRY_BYTES_MAX {
            return Err(ProposeError::TooLarge);
        }
        let index = self.append_leader(Payload::Normal(data));
        self.broadcast_appends();
        self.finish_step();
        Ok((index, self.term))
    }

    /// Proposes every payload of `batch`, in order, as many [`Raft::propose`] calls would, but
    /// as one step: one `PersistEntries` output for all the accepted entries and one round of
    /// appends to the followers, which is what makes group commit pay off. One result per
    /// payload, in order: the accepted ones have consecutive indexes; a payload refused
    /// (`TooLarge`, or `Busy` once the unstable log is full) does not stop the ones after it.
    pub fn propose_batch(
        &mut self,
        now: Millis,
        batch: Vec<Vec<u8>>,
    ) -> Vec<Result<(LogIndex, Term), ProposeError>> {
        self.now = now;
        let mut results = Vec::with_capacity(batch.len());
        let mut appended: Vec<Entry> = Vec::new();
        for data in batch {
            if let Err(e) = self.check_can_propose() {
                results.push(Err(e));
                continue;
            }
            if data.len() > ENTRY_BYTES_MAX {
                results.push(Err(ProposeError::TooLarge));
                continue;
            }
            let entry = Entry {
                term: self.term,
                index: self.last_index().next(),
                payload: Payload::Normal(data),
            };
            results.push(Ok((entry.index, entry.term)));
            self.unstable.push(entry.clone());
            #[cfg(feature = "fault-injection")]
            if self.config.bugs.commit_without_majority {
                self.commit = entry.index;
            }
            appended.push(entry);
        }
        if !appended.is_empty() {
            self.flush_hard_state();
            self.outputs.push_back(Output::PersistEntries(appended));
            self.broadcast_appends();
        }
        self.finish_step();
        results
    }

    /// Proposes a one-server configuration change (leader only). At most one uncommitted change;
    /// none before this leader has committed an entry of its term.
    pub fn propose_membership(
        &mut self,
        now: Millis,
        change: MembershipChange,
    ) -> Result<(LogIndex, Term), ProposeError> {
        self.now = now;
        self.check_can_propose()?;
        let term_start = self
            .leader_state
            .as_ref()
            .map_or(LogIndex(0), |ls| ls.term_start);
        if self.membership_index() > self.commit || self.commit < term_start {
            return Err(ProposeError::MembershipChangePending);
        }
        let mut m = self.membership().clone();
        match change {
            MembershipChange::AddLearner(id) => {
                if m.contains(id) {
                    return Err(ProposeError::InvalidMembershipChange("already a member"));
                }
                if m.learners.len() >= LEARNERS_MAX {
                    return Err(ProposeError::InvalidMembershipChange(
                        "LEARNERS_MAX reached",
                    ));
                }
                m.learners.insert(id);
            }
            MembershipChange::PromoteLearner(id) => {
                if !m.learners.contains(&id) {
                    return Err(ProposeError::InvalidMembershipChange("not a learner"));
                }
                if m.voters.len() >= VOTERS_MAX {
                    return Err(ProposeError::InvalidMembershipChange("VOTERS_MAX reached"));
                }
                m.learners.remove(&id);
                m.voters.insert(id);
            }
            MembershipChange::AddVoter(id) => {
                if m.voters.contains(&id) {
                    return Err(ProposeError::InvalidMembershipChange("already a voter"));
                }
                if m.voters.len() >= VOTERS_MAX {
                    return Err(ProposeError::InvalidMembershipChange("VOTERS_MAX reached"));
                }
                m.learners.remove(&id);
                m.voters.insert(id);
            }
            MembershipChange::RemoveNode(id) => {
                if !m.contains(id) {
                    return Err(ProposeError::InvalidMembershipChange("not a member"));
                }
                if m.voters.len() == 1 && m.voters.contains(&id) {
                    return Err(ProposeError::InvalidMembershipChange(
                        "cannot remove the last voter",
                    ));
                }
                m.voters.remove(&id);
                m.learners.remove(&id);
            }
        }
        debug_assert!(m.is_valid());
        let index = self.append_leader(Payload::Membership(m));
        self.broadcast_appends();
        self.finish_step();
        Ok((index, self.term))
    }

    /// Starts handing leadership to voter `to`: proposals are refused until the transfer
    /// completes (this node steps down) or aborts after an election timeout.
    pub fn transfer_leadership(&mut self, now: Millis, to: NodeId) -> Result<(), ProposeError> {
        self.now = now;
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader_hint: self.leader,
            });
        }
        if to == self.config.id {
            return Ok(());
        }
        if !self.membership().voters.contains(&to) {
            return Err(ProposeError::InvalidTransferTarget(to));
        }
        let deadline_ms = now.saturating_add(self.config.election_timeout_min_ms);
        if let Some(ls) = self.leader_state.as_mut() {
            ls.transfer = Some(Transfer {
                to,
                deadline_ms,
                timeout_now_sent: false,
            });
        }
        debug!(id = %self.config.id, %to, "leadership transfer started");
        self.maybe_send_timeout_now();
        self.send_appends(to);
        self.finish_step();
        Ok(())
    }

    /// Entries up to `index`, whose term at `index` is `term`, are durable. Stale reports (the
    /// entry at `index` was truncated or replaced since) are ignored.
    pub fn handle_persisted(&mut self, now: Millis, index: LogIndex, term: Term) {
        self.now = now;
        if index < self.unstable_offset || index > self.last_index() {
            debug!(id = %self.config.id, %index, "persisted report outside the unstable log");
            return self.finish_step();
        }
        if self.term_at(index) != Some(term) {
            debug!(id = %self.config.id, %index, %term, "stale persisted report");
            return self.finish_step();
        }
        let n = usize::try_from(index.0 - self.unstable_offset.0 + 1).unwrap_or(usize::MAX);
        self.unstable.drain(..n.min(self.unstable.len()));
        self.unstable_offset = index.next();
        if self.role == Role::Leader {
            self.maybe_commit();
        } else {
            self.maybe_ack(None);
        }
        self.finish_step();
    }

    /// The PersistSnapshot for `last_index` is durable.
    pub fn handle_snapshot_persisted(&mut self, now: Millis, last_index: LogIndex) {
        self.now = now;
        match &self.pending_snapshot {
            Some(meta) if meta.last_index == last_index => {
                self.pending_snapshot = None;
                if let Some(leader) = self.leader
                    && self.role != Role::Leader
                {
                    self.acked = self.acked.max(last_index);
                    self.send(
                        leader,
                        Message::InstallSnapshotResponse {
                            term: self.term,
                            last_index,
                        },
                    );
                }
                self.maybe_ack(None);
            }
            _ => debug!(id = %self.config.id, %last_index, "stale snapshot-persisted report"),
        }
        self.finish_step();
    }

    /// The driver applied every entry up to `index` (from Apply outputs).
    pub fn handle_applied(&mut self, now: Millis, index: LogIndex) {
        self.now = now;
        if index > self.apply_sent {
            warn!(id = %self.config.id, %index, apply_sent = %self.apply_sent, "applied beyond what was handed out");
        }
        self.applied = self.applied.max(index.min(self.apply_sent));
        self.prune_config_log();
        self.finish_step();
    }

    /// The driver took a snapshot and compacted its store below `store.first_index()`.
    pub fn handle_compacted(&mut self, now: Millis) {
        self.now = now;
        if let Some(snap_index) = self.store.snapshot().map(|s| s.meta.last_index) {
            if snap_index > self.applied {
                warn!(id = %self.config.id, %snap_index, applied = %self.applied, "store compacted beyond the applied index");
                self.commit = self.commit.max(snap_index).min(self.last_index());
                self.apply_sent = self.apply_sent.max(snap_index).min(self.commit);
                self.applied = self.applied.max(snap_index).min(self.apply_sent);
            }
            self.prune_config_log();
        }
        self.finish_step();
    }

    /// Next output to execute, in order. Drain until None after every call into the core.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// A snapshot of this node's state.
    pub fn status(&self) -> Status {
        let progress = self
            .leader_state
            .as_ref()
            .map(|ls| {
                ls.peers
                    .iter()
                    .map(|(id, p)| {
                        (
                            *id,
                            Progress {
                                match_index: p.match_index,
                                next_index: p.next_index,
                            },
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        Status {
            id: self.config.id,
            role: self.role,
            term: self.term,
            voted_for: self.voted_for,
            leader: self.leader,
            commit_index: self.commit,
            applied_index: self.applied,
            last_index: self.last_index(),
            persisted_index: self.persisted_index(),
            membership: self.membership().clone(),
            progress,
        }
    }

    // ---------------------------------------------------------------------------------------
    // Log view
    // ---------------------------------------------------------------------------------------

    fn first_index(&self) -> LogIndex {
        match &self.pending_snapshot {
            Some(meta) => meta.last_index.next(),
            None => self.store.first_index(),
        }
    }

    fn last_index(&self) -> LogIndex {
        LogIndex(self.unstable_offset.0 - 1 + self.unstable.len() as u64)
    }

    fn last_term(&self) -> Term {
        self.term_at(self.last_index()).unwrap_or_else(|| {
            warn!(id = %self.config.id, "term of the last index unknown (store inconsistent?)");
            Term(0)
        })
    }

    /// Highest index known durable locally (what a follower may acknowledge, what the leader
    /// counts for itself).
    fn persisted_index(&self) -> LogIndex {
        if self.pending_snapshot.is_some() {
            // Nothing is known durable in the log the snapshot will replace.
            return LogIndex(0);
        }
        self.unstable_offset.prev()
    }

    fn term_at(&self, index: LogIndex) -> Option<Term> {
        if index == LogIndex(0) {
            return Some(Term(0));
        }
        if index >= self.unstable_offset {
            let pos = usize::try_from(index.0 - self.unstable_offset.0).ok()?;
            return self.unstable.get(pos).map(|e| e.term);
        }
        if let Some(meta) = &self.pending_snapshot {
            if index == meta.last_index {
                return Some(meta.last_term);
            }
            if index < meta.last_index {
                return None;
            }
        }
        self.store.term(index)
    }

    /// Entries in `[lo, hi)` within the budgets (at least one if any), or None if `lo` is
    /// compacted (or the store is missing it).
    fn entries_range(
        &self,
        lo: LogIndex,
        hi: LogIndex,
        max_bytes: usize,
        max_count: usize,
    ) -> Option<Vec<Entry>> {
        let hi = hi.min(self.last_index().next());
        if lo >= hi {
            return Some(Vec::new());
        }
        if lo < self.first_index() {
            return None;
        }
        let mut out: Vec<Entry> = Vec::new();
        let mut bytes = 0usize;
        let mut push = |out: &mut Vec<Entry>, entry: Entry| -> bool {
            if out.len() >= max_count {
                return false;
            }
            bytes = bytes.saturating_add(entry.size_bytes());
            if !out.is_empty() && bytes > max_bytes {
                return false;
            }
            out.push(entry);
            true
        };
        if lo < self.unstable_offset {
            // Ask the store for no more than `max_count`: it would read (and decode) every
            // entry up to its byte budget, only for all but `max_count` to be dropped here.
            let count_hi = LogIndex(lo.0.saturating_add(max_count as u64));
            let store_hi = hi.min(self.unstable_offset).min(count_hi);
            let mut expected = lo;
            for entry in self.store.entries(lo, store_hi, max_bytes) {
                if entry.index != expected || entry.index >= store_hi {
                    break;
                }
                if !push(&mut out, entry) {
                    return Some(out);
                }
                expected = expected.next();
            }
            if out.is_empty() {
                warn!(id = %self.config.id, %lo, "store returned no entries");
                return None;
            }
            if expected < store_hi || hi <= self.unstable_offset {
                return Some(out); // store stopped at its byte budget, or the range ends in it
            }
        }
        let start = lo.max(self.unstable_offset);
        let from = usize::try_from(start.0 - self.unstable_offset.0).ok()?;
        let to = usize::try_from(hi.0 - self.unstable_offset.0).ok()?;
        for entry in &self.unstable[from..to] {
            if !push(&mut out, entry.clone()) {
                break;
            }
        }
        Some(out)
    }

    /// Smallest index in `[max(commit+1, first), hi]` whose term is >= `term` (terms are
    /// non-decreasing along the log, so binary search). Entries up to commit always match.
    fn first_index_of_term(&self, term: Term, hi: LogIndex) -> LogIndex {
        let mut lo = self.commit.next().max(self.first_index());
        let mut hi = hi;
        if lo > hi {
            return hi;
        }
        while lo < hi {
            let mid = LogIndex(lo.0 + (hi.0 - lo.0) / 2);
            if self.term_at(mid).is_some_and(|t| t >= term) {
                hi = mid;
            } else {
                lo = mid.next();
            }
        }
        lo
    }

    /// Largest index <= `hi` holding `term`, if any (binary search on non-decreasing terms).
    fn last_index_of_term(&self, term: Term, hi: LogIndex) -> Option<LogIndex> {
        let mut lo = self.first_index().prev();
        let mut hi = hi.min(self.last_index());
        if self.term_at(lo)? > term || lo > hi {
            return None;
        }
        // Invariant: term_at(lo) <= term.
        while lo < hi {
            let mid = LogIndex(lo.0 + (hi.0 - lo.0).div_ceil(2));
            if self.term_at(mid).is_some_and(|t| t <= term) {
                lo = mid;
            } else {
                hi = mid.prev();
            }
        }
        (self.term_at(lo) == Some(term)).then_some(lo)
    }

    // ---------------------------------------------------------------------------------------
    // Membership
    // ---------------------------------------------------------------------------------------

    fn membership_index(&self) -> LogIndex {
        self.config_log
            .last()
            .map_or(self.config_base.0, |(i, _)| *i)
    }

    fn is_voter(&self) -> bool {
        self.membership().voters.contains(&self.config.id)
    }

    /// A voter of the latest configuration may campaign; so may a voter of an older one as long
    /// as every configuration after it is uncommitted (as far as this node knows): it may still
    /// be needed to commit its own removal (dissertation §4.2.2; otherwise a crash of the leader
    /// can leave the survivors unable to elect anyone). Once the removal is known committed, the
    /// node stops campaigning. Vote counting always uses the latest configuration.
    fn can_campaign(&self) -> bool {
        let id = self.config.id;
        for (index, m) in self.config_log.iter().rev() {
            if m.voters.contains(&id) {
                return true;
            }
            if *index <= self.commit {
                return false;
            }
        }
        self.config_base.1.voters.contains(&id)
    }

    fn follower_role(&self) -> Role {
        if self.membership().learners.contains(&self.config.id) {
            Role::Learner
        } else {
            Role::Follower
        }
    }

    /// Entries at or below `applied` can never be truncated (applied <= commit), so only the
    /// latest of them matters.
    fn prune_config_log(&mut self) {
        let upto = self.applied;
        while self.config_log.first().is_some_and(|(i, _)| *i <= upto) {
            self.config_base = self.config_log.remove(0);
        }
    }

    /// The configuration changed (appended or truncated): adjust role / replication targets.
    fn on_membership_changed(&mut self) {
        match self.role {
            Role::Follower | Role::Learner => {
                let role = self.follower_role();
                if role != self.role {
                    self.role = role;
                    self.reset_election_deadline();
                }
            }
            Role::Leader => self.sync_peers(),
            Role::PreCandidate | Role::Candidate => {
                if !self.can_campaign() {
                    self.become_follower(self.term, None);
                }
            }
        }
    }

    /// Leader: replicate to every member of the configuration in effect and, while it is not
    /// committed, of the previous one too, so a node being removed still learns of its removal
    /// (and stops campaigning). Only the configuration in effect counts for quorums.
    fn sync_peers(&mut self) {
        let id = self.config.id;
        let mut targets: BTreeSet<NodeId> = self.membership().members().collect();
        if self.membership_index() > self.commit {
            let previous = match self.config_log.len() {
                0 | 1 => &self.config_base.1,
                n => &self.config_log[n - 2].1,
            };
            targets.extend(previous.members());
        }
        targets.remove(&id);
        let voters = self.membership().voters.clone();
        let next = self.last_index().next();
        let now = self.now;
        // Tell each dropped node the commit index once more, so it learns that its removal
        // committed and stops campaigning (best effort: a lost message leaves a harmless zombie
        // whose PreVotes are refused).
        let dropped: Vec<NodeId> = self
            .leader_state
            .as_ref()
            .map(|ls| {
                ls.peers
                    .keys()
                    .filter(|p| !targets.contains(p))
                    .copied()
                    .collect()
            })
            .unwrap_or_default();
        for p in dropped {
            self.send_heartbeat(p);
        }
        if let Some(ls) = self.leader_state.as_mut() {
            ls.peers.retain(|p, _| targets.contains(p));
            for m in targets {
                ls.peers.entry(m).or_insert_with(|| Peer::new(next, now));
            }
            if ls
                .transfer
                .as_ref()
                .is_some_and(|t| !voters.contains(&t.to))
            {
                ls.transfer = None;
            }
        }
    }

    // ---------------------------------------------------------------------------------------
    // Role transitions
    // ---------------------------------------------------------------------------------------

    fn reset_election_deadline(&mut self) {
        let timeout = self.rng.range(
            self.config.election_timeout_min_ms,
            self.config.election_timeout_max_ms,
        );
        self.election_deadline_ms = self.now.saturating_add(timeout);
    }

    /// Becomes follower (or learner) at `term` (>= current) under `leader`.
    fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        debug_assert!(term >= self.term);
        let term_changed = term > self.term;
        if term_changed {
            self.term = term;
            self.voted_for = None;
        }
        if term_changed || self.leader != leader {
            self.verified = LogIndex(0);
            self.acked = LogIndex(0);
            self.leader_heard_ms = None;
        }
        self.role = self.follower_role();
        self.leader = leader;
        self.leader_state = None;
        self.votes.clear();
        self.reset_election_deadline();
    }

    /// Starts a (pre-)election. `transfer`: triggered by TimeoutNow (receivers skip their lease).
    fn campaign(&mut self, pre: bool, transfer: bool) {
        if !self.can_campaign() {
            return;
        }
        let Some(next_term) = self.term.0.checked_add(1).map(Term) else {
            warn!(id = %self.config.id, "term space exhausted; cannot campaign");
            return;
        };
        self.leader = None;
        self.leader_heard_ms = None;
        self.leader_state = None;
        self.votes.clear();
        self.votes.insert(self.config.id, true);
        self.reset_election_deadline();
        let (last_log_index, last_log_term) = (self.last_index(), self.last_term());
        let peers: Vec<NodeId> = self
            .membership()
            .voters
            .iter()
            .copied()
            .filter(|v| *v != self.config.id)
            .collect();
        if pre {
            // PreVote: ask whether we could win at next_term without touching our own term, so a
            // node that cannot win never disrupts the cluster with term bumps.
            self.role = Role::PreCandidate;
            debug!(id = %self.config.id, term = %next_term, "pre-campaign");
            for p in peers {
                self.send(
                    p,
                    Message::PreVote {
                        term: next_term,
                        last_log_index,
                        last_log_term,
                    },
                );
            }
        } else {
            self.term = next_term;
            self.voted_for = Some(self.config.id);
            self.verified = LogIndex(0);
            self.acked = LogIndex(0);
            self.role = Role::Candidate;
            debug!(id = %self.config.id, term = %next_term, transfer, "campaign");
            // `send` flushes PersistHardState(term, self-vote) before the first RequestVote.
            for p in peers {
                self.send(
                    p,
                    Message::RequestVote {
                        term: next_term,
                        last_log_index,
                        last_log_term,
                        leadership_transfer: transfer,
                    },
                );
            }
        }
        self.tally_votes();
    }

    fn tally_votes(&mut self) {
        let voters = &self.membership().voters;
        let quorum = self.membership().quorum();
        let granted = self
            .votes
            .iter()
            .filter(|(v, g)| **g && voters.contains(v))
            .count();
        let rejected = self
            .votes
            .iter()
            .filter(|(v, g)| !**g && voters.contains(v))
            .count();
        if granted >= quorum {
            match self.role {
                Role::PreCandidate => self.campaign(false, false),
                Role::Candidate => self.become_leader(),
                _ => {}
            }
        } else if rejected >= quorum {
            debug!(id = %self.config.id, "election lost");
            self.become_follower(self.term, None);
        }
    }

    fn become_leader(&mut self) {
        debug!(id = %self.config.id, term = %self.term, "became leader");
        self.role = Role::Leader;
        self.leader = Some(self.config.id);
        self.votes.clear();
        let next = self.last_index().next();
        let now = self.now;
        self.leader_state = Some(LeaderState {
            peers: BTreeMap::new(),
            term_start: next,
            heartbeat_deadline_ms: now.saturating_add(self.config.heartbeat_interval_ms),
            check_quorum_deadline_ms: now.saturating_add(self.config.election_timeout_min_ms),
            transfer: None,
        });
        self.sync_peers();
        // The Noop lets this leader commit (and so learn the commit index of) older entries.
        self.append_leader(Payload::Noop);
        for p in self.peer_ids() {
            self.maybe_send_append(p, true);
        }
        self.maybe_commit();
    }

    // ---------------------------------------------------------------------------------------
    // Messages
    // ---------------------------------------------------------------------------------------

    fn in_lease(&self) -> bool {
        if !self.config.check_quorum {
            return false;
        }
        match self.role {
            // CheckQuorum makes the leader step down when its lease is gone.
            Role::Leader => true,
            Role::Follower | Role::Learner => {
                self.leader.is_some()
                    && self.leader_heard_ms.is_some_and(|h| {
                        self.now < h.saturating_add(self.config.election_timeout_min_ms)
                    })
            }
            Role::PreCandidate | Role::Candidate => false,
        }
    }

    fn step(&mut self, from: NodeId, message: Message) {
        let msg_term = message.term();
        if msg_term > self.term {
            match &message {
                // Not adopted: a PreVote's term is hypothetical, a granted response echoes it.
                Message::PreVote { .. } | Message::PreVoteResponse { granted: true, .. } => {}
                Message::RequestVote {
                    leadership_transfer: false,
                    ..
                } if self.in_lease() => {
                    debug!(id = %self.config.id, %from, "vote request rejected: leader lease");
                    self.send(
                        from,
                        Message::RequestVoteResponse {
                            term: self.term,
                            granted: false,
                        },
                    );
                    return;
                }
                Message::AppendEntries { .. }
                | Message::InstallSnapshot { .. }
                | Message::TimeoutNow { .. } => {
                    debug!(id = %self.config.id, %from, term = %msg_term, "higher term from a leader");
                    self.become_follower(msg_term, Some(from));
                }
                _ => {
                    debug!(id = %self.config.id, %from, term = %msg_term, "higher term");
                    self.become_follower(msg_term, None);
                }
            }
        } else if msg_term < self.term {
            match message {
                // Tell a stale leader about the newer term so it steps down.
                Message::AppendEntries { .. } | Message::InstallSnapshot { .. } => {
                    let last_log_index = self.last_index();
                    self.send(
                        from,
                        Message::AppendEntriesResponse {
                            term: self.term,
                            success: false,
                            match_index: LogIndex(0),
                            conflict_term: None,
                            conflict_index: LogIndex(0),
                            last_log_index,
                        },
                    );
                }
                Message::PreVote { .. } => self.send(
                    from,
                    Message::PreVoteResponse {
                        term: self.term,
                        granted: false,
                    },
                ),
                Message::RequestVote { .. } => self.send(
                    from,
                    Message::RequestVoteResponse {
                        term: self.term,
                        granted: false,
                    },
                ),
                _ => debug!(id = %self.config.id, %from, term = %msg_term, "stale message ignored"),
            }
            return;
        }

        // Any current-term message from a peer proves it is alive (CheckQuorum).
        if msg_term == self.term {
            let now = self.now;
            if let Some(peer) = self
                .leader_state
                .as_mut()
                .and_then(|ls| ls.peers.get_mut(&from))
            {
                peer.last_heard_ms = now;
            }
        }

        match message {
            Message::PreVote {
                term,
                last_log_index,
                last_log_term,
            } => self.on_pre_vote(from, term, last_log_index, last_log_term),
            Message::PreVoteResponse { term, granted } => {
                if self.role == Role::PreCandidate
                    && self.membership().voters.contains(&from)
                    && (!granted || Some(term) == self.term.0.checked_add(1).map(Term))
                {
                    self.votes.insert(from, granted);
                    self.tally_votes();
                }
            }
            Message::RequestVote {
                term,
                last_log_index,
                last_log_term,
                ..
            } => self.on_request_vote(from, term, last_log_index, last_log_term),
            Message::RequestVoteResponse { term, granted } => {
                if self.role == Role::Candidate
                    && term == self.term
                    && self.membership().voters.contains(&from)
                {
                    self.votes.insert(from, granted);
                    self.tally_votes();
                }
            }
            Message::AppendEntries {
                prev_log_index,
                prev_log_term,
                entries,
                leader_commit,
                ..
            } => {
                self.on_append_entries(from, prev_log_index, prev_log_term, entries, leader_commit)
            }
            Message::AppendEntriesResponse {
                success,
                match_index,
                conflict_term,
                conflict_index,
                ..
            } => {
                if self.role != Role::Leader {
                    return;
                }
                if success {
                    self.on_append_accepted(from, match_index);
                } else {
                    self.on_append_rejected(from, match_index, conflict_term, conflict_index);
                }
            }
            Message::InstallSnapshot { snapshot, .. } => self.on_install_snapshot(from, snapshot),
            Message::InstallSnapshotResponse { last_index, .. } => {
                self.on_snapshot_response(from, last_index)
            }
            Message::TimeoutNow { .. } => {
                if self.role != Role::Leader && self.leader == Some(from) && self.can_campaign() {
                    debug!(id = %self.config.id, %from, "TimeoutNow: campaigning");
                    self.campaign(false, true);
                }
            }
        }
    }

    /// Raft §5.4.1: the candidate's log is at least as up-to-date as ours.
    fn log_up_to_date(&self, last_log_index: LogIndex, last_log_term: Term) -> bool {
        #[cfg(feature = "fault-injection")]
        if self.config.bugs.vote_for_stale_candidate {
            return true;
        }
        let our_term = self.last_term();
        last_log_term > our_term
            || (last_log_term == our_term && last_log_index >= self.last_index())
    }

    fn on_pre_vote(
        &mut self,
        from: NodeId,
        term: Term,
        last_log_index: LogIndex,
        last_log_term: Term,
    ) {
        // Our own term is unchanged whatever we answer: pre-votes are hypothetical.
        let can_vote = term > self.term
            || self.voted_for == Some(from)
            || (term == self.term && self.voted_for.is_none() && self.leader.is_none());
        let granted =
            can_vote && !self.in_lease() && self.log_up_to_date(last_log_index, last_log_term);
        debug!(id = %self.config.id, %from, %term, granted, "pre-vote");
        let term = if granted { term } else { self.term };
        self.send(from, Message::PreVoteResponse { term, granted });
    }

    fn on_request_vote(
        &mut self,
        from: NodeId,
        term: Term,
        last_log_index: LogIndex,
        last_log_term: Term,
    ) {
        debug_assert_eq!(term, self.term);
        let can_vote =
            self.voted_for == Some(from) || (self.voted_for.is_none() && self.leader.is_none());
        let granted = can_vote && self.log_up_to_date(last_log_index, last_log_term);
        if granted {
            self.voted_for = Some(from);
            // Granting a vote is hearing from a plausible leader: do not compete with it at once.
            self.reset_election_deadline();
        }
        debug!(id = %self.config.id, %from, %term, granted, "vote");
        // `send` emits PersistHardState(vote) first: the vote is durable before it is announced.
        self.send(
            from,
            Message::RequestVoteResponse {
                term: self.term,
                granted,
            },
        );
    }

    /// A current-term AppendEntries/InstallSnapshot came from `from`: follow it. False if it
    /// cannot be our leader (another node already leads this term: hostile or buggy peer).
    fn accept_leader(&mut self, from: NodeId) -> bool {
        match self.role {
            Role::Leader => {
                warn!(id = %self.config.id, %from, term = %self.term, "another leader in my term; ignored");
                return false;
            }
            Role::PreCandidate | Role::Candidate => self.become_follower(self.term, Some(from)),
            Role::Follower | Role::Learner => match self.leader {
                Some(l) if l != from => {
                    warn!(id = %self.config.id, %from, leader = %l, "two leaders in one term; ignored");
                    return false;
                }
                Some(_) => {}
                None => self.become_follower(self.term, Some(from)),
            },
        }
        self.leader_heard_ms = Some(self.now);
        self.reset_election_deadline();
        true
    }

    fn on_append_entries(
        &mut self,
        from: NodeId,
        prev_log_index: LogIndex,
        prev_log_term: Term,
        mut entries: Vec<Entry>,
        leader_commit: LogIndex,
    ) {
        if !self.accept_leader(from) {
            return;
        }
        let (mut prev, mut prev_term) = (prev_log_index, prev_log_term);
        if prev < self.commit {
            // Everything up to our commit index matches every later leader's log: skip it (it may
            // also be compacted here).
            let skip = usize::try_from(self.commit.0 - prev.0).unwrap_or(usize::MAX);
            entries.drain(..skip.min(entries.len()));
            prev = self.commit;
            let Some(t) = self.term_at(prev) else {
                warn!(id = %self.config.id, commit = %prev, "term of commit index unknown");
                return;
            };
            prev_term = t;
        }
        if prev > self.last_index() || self.term_at(prev) != Some(prev_term) {
            return self.reject_append(from, prev);
        }
        let mut upto = LogIndex(prev.0 + entries.len() as u64);
        let last = self.last_index();
        let first_new = entries
            .iter()
            .position(|e| e.index > last || self.term_at(e.index) != Some(e.term));
        if let Some(pos) = first_new {
            let mut new = entries.split_off(pos);
            // Bound memory: accept only what fits in the unstable log; the leader resends the rest.
            let first = new[0].index;
            let kept = usize::try_from(first.0.saturating_sub(self.unstable_offset.0))
                .unwrap_or(usize::MAX);
            let room = UNSTABLE_ENTRIES_MAX.saturating_sub(kept.min(self.unstable.len()));
            if room == 0 {
                debug!(id = %self.config.id, "unstable log full; append dropped");
                return;
            }
            if new.len() > room {
                new.truncate(room);
                upto = new[new.len() - 1].index;
            }
            self.append_follower(new);
        }
        self.verified = self.verified.max(upto);
        // Commit only what we know matches the leader: min(leader_commit, last verified index).
        let commit = leader_commit.min(upto);
        if commit > self.commit {
            self.commit = commit;
        }
        self.maybe_ack(Some(upto));
    }

    fn reject_append(&mut self, to: NodeId, prev: LogIndex) {
        let last_log_index = self.last_index();
        let (conflict_term, conflict_index) = match self.term_at(prev) {
            Some(t) if prev <= last_log_index => (Some(t), self.first_index_of_term(t, prev)),
            _ => (None, last_log_index.next()),
        };
        debug!(id = %self.config.id, %prev, ?conflict_term, %conflict_index, "append rejected");
        self.send(
            to,
            Message::AppendEntriesResponse {
                term: self.term,
                success: false,
                match_index: prev,
                conflict_term,
                conflict_index,
                last_log_index,
            },
        );
    }

    /// Appends entries from the leader (first one > commit, <= last + 1), truncating conflicts.
    fn append_follower(&mut self, entries: Vec<Entry>) {
        let first = entries[0].index;
        assert!(first > self.commit, "truncating committed entries");
        if first < self.unstable_offset {
            self.unstable.clear();
            self.unstable_offset = first;
        } else {
            let keep = usize::try_from(first.0 - self.unstable_offset.0).unwrap_or(usize::MAX);
            self.unstable.truncate(keep);
        }
        // A configuration takes effect on append and is reverted when its entry is truncated.
        let before = self.config_log.len();
        self.config_log.retain(|(i, _)| *i < first);
        let mut changed = self.config_log.len() != before;
        for e in &entries {
            if let Payload::Membership(m) = &e.payload {
                self.config_log.push((e.index, m.clone()));
                changed = true;
            }
        }
        self.unstable.extend(entries.iter().cloned());
        self.flush_hard_state();
        self.outputs.push_back(Output::PersistEntries(entries));
        if changed {
            self.on_membership_changed();
        }
    }

    /// Follower: acknowledge what is durable and matches the leader. `upto`: the AppendEntries
    /// being answered (answer only if it is wholly covered); None: persistence progressed.
    fn maybe_ack(&mut self, upto: Option<LogIndex>) {
        let Some(leader) = self.leader else { return };
        if !matches!(self.role, Role::Follower | Role::Learner) {
            return;
        }
        let ack = self.ack_index();
        let respond = match upto {
            Some(u) => ack >= u,
            None => ack > self.acked,
        };
        if respond {
            self.acked = self.acked.max(ack);
            let last_log_index = self.last_index();
            self.send(
                leader,
                Message::AppendEntriesResponse {
                    term: self.term,
                    success: true,
                    match_index: ack,
                    conflict_term: None,
                    conflict_index: LogIndex(0),
                    last_log_index,
                },
            );
        }
    }

    /// What this follower may claim to hold: durable AND known to match the current leader.
    fn ack_index(&self) -> LogIndex {
        #[cfg(feature = "fault-injection")]
        if self.config.bugs.ack_before_persist {
            return self.verified;
        }
        self.verified.min(self.persisted_index())
    }

    fn on_install_snapshot(&mut self, from: NodeId, snapshot: Snapshot) {
        if !self.accept_leader(from) {
            return;
        }
        let last = snapshot.meta.last_index;
        let have_entry = self.term_at(last) == Some(snapshot.meta.last_term);
        if last <= self.commit || have_entry {
            // Never go backwards. If we hold the snapshot's last entry it is committed and our
            // log already covers it: no need to replace anything. Either way, tell the leader what
            // we durably hold so it resumes appending from there.
            self.commit = self.commit.max(last);
            self.verified = self.verified.max(self.commit);
            let last_index = self.ack_index();
            self.acked = self.acked.max(last_index);
            return self.send(
                from,
                Message::InstallSnapshotResponse {
                    term: self.term,
                    last_index,
                },
            );
        }
        debug!(id = %self.config.id, %last, "installing snapshot");
        self.pending_snapshot = Some(snapshot.meta.clone());
        self.unstable.clear();
        self.unstable_offset = last.next();
        self.commit = last;
        // The driver replaces its state machine with the snapshot: everything up to `last` is
        // applied by that, and earlier Apply outputs precede it in the queue.
        self.apply_sent = last;
        self.applied = last;
        self.config_base = (last, snapshot.meta.membership.clone());
        self.config_log.clear();
        self.verified = last;
        self.flush_hard_state();
        self.outputs.push_back(Output::PersistSnapshot(snapshot));
        self.on_membership_changed();
    }

    // ---------------------------------------------------------------------------------------
    // Leader
    // ---------------------------------------------------------------------------------------

    fn check_can_propose(&self) -> Result<(), ProposeError> {
        let Some(ls) = self
            .leader_state
            .as_ref()
            .filter(|_| self.role == Role::Leader)
        else {
            return Err(ProposeError::NotLeader {
                leader_hint: self.leader,
            });
        };
        if ls.transfer.is_some() {
            return Err(ProposeError::TransferInProgress);
        }
        if self.unstable.len() >= UNSTABLE_ENTRIES_MAX {
            return Err(ProposeError::Busy);
        }
        Ok(())
    }

    fn peer_ids(&self) -> Vec<NodeId> {
        self.leader_state
            .as_ref()
            .map(|ls| ls.peers.keys().copied().collect())
            .unwrap_or_default()
    }

    fn peer(&self, id: NodeId) -> Option<&Peer> {
        self.leader_state.as_ref()?.peers.get(&id)
    }

    fn peer_mut(&mut self, id: NodeId) -> Option<&mut Peer> {
        self.leader_state.as_mut()?.peers.get_mut(&id)
    }

    fn append_leader(&mut self, payload: Payload) -> LogIndex {
        let index = self.last_index().next();
        let is_membership = matches!(payload, Payload::Membership(_));
        if let Payload::Membership(m) = &payload {
            self.config_log.push((index, m.clone()));
        }
        let entry = Entry {
            term: self.term,
            index,
            payload,
        };
        self.unstable.push(entry.clone());
        self.flush_hard_state();
        self.outputs.push_back(Output::PersistEntries(vec![entry]));
        if is_membership {
            self.on_membership_changed();
        }
        #[cfg(feature = "fault-injection")]
        if self.config.bugs.commit_without_majority {
            self.commit = index;
        }
        index
    }

    fn broadcast_appends(&mut self) {
        for p in self.peer_ids() {
            self.send_appends(p);
        }
    }

    /// Sends as many appends as the peer's mode allows.
    fn send_appends(&mut self, peer: NodeId) {
        // Each successful send in Replicate mode advances next_index or fills the window, so this
        // terminates; in Probe mode the first send pauses the peer.
        while self.maybe_send_append(peer, false) {}
    }

    /// Sends one AppendEntries (or InstallSnapshot) if the peer's mode allows; true if an
    /// AppendEntries went out.
    fn maybe_send_append(&mut self, peer_id: NodeId, allow_empty: bool) -> bool {
        let Some(peer) = self.peer(peer_id) else {
            return false;
        };
        match peer.mode {
            Mode::Snapshot { .. } | Mode::Probe { paused: true } => return false,
            Mode::Replicate if peer.inflight.len() >= self.config.max_inflight_appends => {
                return false;
            }
            _ => {}
        }
        let next = peer.next_index;
        let prev = next.prev();
        let last = self.last_index();
        let Some(prev_term) = self.term_at(prev) else {
            self.send_snapshot(peer_id);
            return false;
        };
        let entries = if next <= last {
            match self.entries_range(
                next,
                last.next(),
                self.config.max_bytes_per_append,
                self.config.max_entries_per_append,
            ) {
                Some(entries) => entries,
                None => {
                    self.send_snapshot(peer_id);
                    return false;
                }
            }
        } else {
            Vec::new()
        };
        if entries.is_empty() && !allow_empty {
            return false;
        }
        let sent_last = entries.last().map(|e| e.index);
        let message = Message::AppendEntries {
            term: self.term,
            prev_log_index: prev,
            prev_log_term: prev_term,
            entries,
            leader_commit: self.commit,
        };
        self.send(peer_id, message);
        let now = self.now;
        if let Some(peer) = self.peer_mut(peer_id) {
            match peer.mode {
                Mode::Probe { .. } => peer.mode = Mode::Probe { paused: true },
                Mode::Replicate => {
                    if let Some(l) = sent_last {
                        if peer.next_index.prev() == peer.match_index {
                            peer.last_progress_ms = now; // start waiting from here
                        }
                        peer.next_index = l.next();
                        peer.inflight.push_back(l);
                    }
                }
                Mode::Snapshot { .. } => {}
            }
        }
        true
    }

    /// Heartbeat that claims nothing new: prev = what the peer is known to match.
    fn send_heartbeat(&mut self, peer_id: NodeId) {
        let Some(peer) = self.peer(peer_id) else {
            return;
        };
        let (prev, prev_term) = match self.term_at(peer.match_index) {
            Some(t) => (peer.match_index, t),
            None => (LogIndex(0), Term(0)), // compacted: index 0 always matches
        };
        let message = Message::AppendEntries {
            term: self.term,
            prev_log_index: prev,
            prev_log_term: prev_term,
            entries: Vec::new(),
            leader_commit: self.commit,
        };
        self.send(peer_id, message);
    }

    fn send_snapshot(&mut self, peer_id: NodeId) {
        let Some(snapshot) = self.store.snapshot() else {
            warn!(id = %self.config.id, peer = %peer_id, "peer needs compacted entries but the store has no snapshot");
            return;
        };
        if snapshot.data.len() > SNAPSHOT_BYTES_MAX {
            warn!(id = %self.config.id, bytes = snapshot.data.len(), "snapshot exceeds SNAPSHOT_BYTES_MAX; not sent");
            return;
        }
        let index = snapshot.meta.last_index;
        let now = self.now;
        if let Some(peer) = self.peer_mut(peer_id) {
            peer.mode = Mode::Snapshot { index };
            peer.inflight.clear();
            peer.snapshot_sent_ms = now;
        }
        debug!(id = %self.config.id, peer = %peer_id, %index, "sending snapshot");
        let term = self.term;
        self.send(peer_id, Message::InstallSnapshot { term, snapshot });
    }

    fn on_append_accepted(&mut self, from: NodeId, match_index: LogIndex) {
        if match_index > self.last_index() {
            debug!(id = %self.config.id, %from, %match_index, "ack beyond our log ignored");
            return;
        }
        let first_index = self.first_index();
        let max_inflight = self.config.max_inflight_appends;
        let now = self.now;
        let Some(peer) = self.peer_mut(from) else {
            return;
        };
        if peer.raise_match(match_index, now) {
            while peer.inflight.front().is_some_and(|i| *i <= match_index) {
                peer.inflight.pop_front();
            }
            match peer.mode {
                Mode::Probe { .. } => peer.become_replicate(now),
                Mode::Snapshot { index } => {
                    if match_index >= index || match_index.next() >= first_index {
                        peer.become_replicate(now);
                    }
                }
                Mode::Replicate => {}
            }
            self.maybe_commit();
            self.maybe_send_timeout_now();
        } else {
            match peer.mode {
                Mode::Probe { .. } => peer.mode = Mode::Probe { paused: false },
                // A reply that does not advance the match while the window is full may mean
                // appends were lost: free one slot so replication resumes (and a gap makes the
                // follower reject, which falls back to probing), as etcd does on heartbeat replies.
                Mode::Replicate if peer.inflight.len() >= max_inflight => {
                    peer.inflight.pop_front();
                }
                _ => {}
            }
        }
        self.send_appends(from);
    }

    fn on_append_rejected(
        &mut self,
        from: NodeId,
        rejected: LogIndex,
        conflict_term: Option<Term>,
        conflict_index: LogIndex,
    ) {
        let Some(peer) = self.peer(from) else { return };
        let stale = match peer.mode {
            Mode::Replicate => rejected <= peer.match_index,
            Mode::Probe { .. } => rejected != peer.next_index.prev(),
            Mode::Snapshot { .. } => true,
        };
        if stale || rejected > self.last_index() {
            debug!(id = %self.config.id, %from, %rejected, "stale rejection ignored");
            return;
        }
        let match_index = peer.match_index;
        // Fast backtracking (6.5840): skip the follower's whole conflicting term at once.
        let hint = match conflict_term {
            None => conflict_index,
            Some(t) => match self.last_index_of_term(t, rejected) {
                Some(k) => k.next(),
                None => conflict_index,
            },
        };
        // Always move back (the hint may be hostile) but never below what is known to match.
        let next = hint.min(rejected).max(match_index.next());
        debug!(id = %self.config.id, %from, %rejected, %next, "backtracking");
        if let Some(peer) = self.peer_mut(from) {
            peer.next_index = next;
            peer.become_probe();
        }
        self.send_appends(from);
    }

    fn on_snapshot_response(&mut self, from: NodeId, last_index: LogIndex) {
        if self.role != Role::Leader {
            return;
        }
        if last_index > self.last_index() {
            debug!(id = %self.config.id, %from, %last_index, "snapshot ack beyond our log ignored");
            return;
        }
        let now = self.now;
        let Some(peer) = self.peer_mut(from) else {
            return;
        };
        peer.raise_match(last_index, now);
        if matches!(peer.mode, Mode::Snapshot { .. }) {
            peer.next_index = peer.match_index.next();
            peer.become_probe();
        }
        self.maybe_commit();
        self.maybe_send_timeout_now();
        self.send_appends(from);
    }

    /// Commit = the majority's match index, only for an entry of the current term (Raft §5.4.2,
    /// Figure 8). The leader counts itself only for what it has durably (handle_persisted).
    fn maybe_commit(&mut self) {
        if self.role != Role::Leader {
            return;
        }
        let Some(ls) = self.leader_state.as_ref() else {
            return;
        };
        let own = self.persisted_index();
        let mut matches: Vec<LogIndex> = self
            .membership()
            .voters
            .iter()
            .map(|v| {
                if *v == self.config.id {
                    own
                } else {
                    ls.peers.get(v).map_or(LogIndex(0), |p| p.match_index)
                }
            })
            .collect();
        matches.sort_unstable_by(|a, b| b.cmp(a));
        let quorum = self.membership().quorum();
        let Some(&candidate) = matches.get(quorum - 1) else {
            return;
        };
        if candidate > self.commit && self.term_at(candidate) == Some(self.term) {
            debug!(id = %self.config.id, commit = %candidate, "commit advanced");
            let config_was_pending = self.membership_index() > self.commit;
            self.commit = candidate;
            if config_was_pending && self.membership_index() <= self.commit {
                self.sync_peers(); // stop replicating to nodes the committed change removed
            }
        }
        // A leader removed from the configuration steps down once its removal commits (it kept
        // leading, without counting itself, until then: dissertation §4.2.2).
        if !self.is_voter() && self.membership_index() <= self.commit {
            debug!(id = %self.config.id, "removed from the configuration; stepping down");
            self.become_follower(self.term, None);
        }
    }

    fn maybe_send_timeout_now(&mut self) {
        let last = self.last_index();
        let Some(tr) = self
            .leader_state
            .as_ref()
            .and_then(|ls| ls.transfer.clone())
        else {
            return;
        };
        if tr.timeout_now_sent || self.peer(tr.to).is_none_or(|p| p.match_index < last) {
            return;
        }
        if let Some(t) = self
            .leader_state
            .as_mut()
            .and_then(|ls| ls.transfer.as_mut())
        {
            t.timeout_now_sent = true;
        }
        debug!(id = %self.config.id, to = %tr.to, "TimeoutNow");
        self.send(tr.to, Message::TimeoutNow { term: self.term });
    }

    fn leader_tick(&mut self) {
        let now = self.now;
        let Some(ls) = self.leader_state.as_mut() else {
            return;
        };
        if ls.transfer.as_ref().is_some_and(|t| now >= t.deadline_ms) {
            debug!(id = %self.config.id, "leadership transfer timed out");
            ls.transfer = None;
        }
        let check_quorum = self.config.check_quorum && now >= ls.check_quorum_deadline_ms;
        if check_quorum {
            ls.check_quorum_deadline_ms = now.saturating_add(self.config.election_timeout_min_ms);
            let window = self.config.election_timeout_min_ms;
            let id = self.config.id;
            let membership = self
                .config_log
                .last()
                .map_or(&self.config_base.1, |(_, m)| m);
            let active = membership
                .voters
                .iter()
                .filter(|v| {
                    **v == id
                        || ls
                            .peers
                            .get(v)
                            .is_some_and(|p| now.saturating_sub(p.last_heard_ms) <= window)
                })
                .count();
            if active < membership.quorum() {
                debug!(id = %self.config.id, active, "CheckQuorum failed; stepping down");
                self.become_follower(self.term, None);
                return;
            }
        }
        if now >= ls.heartbeat_deadline_ms {
            ls.heartbeat_deadline_ms = now.saturating_add(self.config.heartbeat_interval_ms);
            let retry_snapshot_ms = self.config.election_timeout_max_ms;
            let stall_ms = self.config.election_timeout_min_ms / 2;
            for p in self.peer_ids() {
                let Some(peer) = self.peer_mut(p) else {
                    continue;
                };
                match peer.mode {
                    Mode::Probe { .. } => {
                        peer.mode = Mode::Probe { paused: false };
                        self.maybe_send_append(p, true);
                    }
                    // Appends sent but no progress for a while: they (or their replies) were
                    // probably lost, and nothing else would resend them. Probe from the match.
                    Mode::Replicate
                        if peer.next_index.prev() > peer.match_index
                            && now.saturating_sub(peer.last_progress_ms) >= stall_ms =>
                    {
                        peer.next_index = peer.match_index.next();
                        peer.become_probe();
                        self.maybe_send_append(p, true);
                    }
                    Mode::Replicate => self.send_heartbeat(p),
                    Mode::Snapshot { .. } => {
                        if now.saturating_sub(peer.snapshot_sent_ms) >= retry_snapshot_ms {
                            // The snapshot (or its reply) was probably lost: probe again.
                            peer.become_probe();
                            self.maybe_send_append(p, true);
                        } else {
                            self.send_heartbeat(p);
                        }
                    }
                }
            }
        }
    }

    // ---------------------------------------------------------------------------------------
    // Outputs and invariants
    // ---------------------------------------------------------------------------------------

    /// Every Send goes through here, so a pending hard-state change is always queued before any
    /// message that depends on it (votes, terms).
    fn send(&mut self, to: NodeId, message: Message) {
        self.flush_hard_state();
        self.outputs.push_back(Output::Send(Envelope {
            from: self.config.id,
            to,
            message,
        }));
    }

    fn flush_hard_state(&mut self) {
        let hs = HardState {
            term: self.term,
            voted_for: self.voted_for,
        };
        if hs != self.emitted_hard_state {
            self.emitted_hard_state = hs.clone();
            self.outputs.push_back(Output::PersistHardState(hs));
        }
    }

    /// Hands out committed entries we hold, in bounded batches.
    fn emit_applies(&mut self) {
        let limit = self.commit.min(self.last_index());
        while self.apply_sent < limit {
            let in_flight =
                usize::try_from(self.apply_sent.0 - self.applied.0).unwrap_or(usize::MAX);
            if in_flight >= APPLY_INFLIGHT_MAX {
                break;
            }
            let count = APPLY_BATCH_MAX.min(APPLY_INFLIGHT_MAX - in_flight);
            let lo = self.apply_sent.next();
            let Some(batch) = self
                .entries_range(lo, limit.next(), APPLY_BATCH_BYTES_MAX, count)
                .filter(|b| !b.is_empty())
            else {
                warn!(id = %self.config.id, %lo, "committed entries unavailable for apply");
                break;
            };
            self.apply_sent = batch[batch.len() - 1].index;
            self.outputs.push_back(Output::Apply(batch));
        }
    }

    fn finish_step(&mut self) {
        self.emit_applies();
        self.flush_hard_state();
        let state = (self.role, self.term, self.leader);
        if self.reported != Some(state) {
            self.reported = Some(state);
            self.outputs.push_back(Output::StateChanged {
                role: self.role,
                term: self.term,
                leader: self.leader,
            });
        }
        self.check_invariants();
    }

    fn check_invariants(&mut self) {
        let last = self.last_index();
        assert!(self.term >= self.memo.term, "term went backwards");
        if self.term == self.memo.term
            && let Some(v) = self.memo.voted_for
        {
            assert_eq!(self.voted_for, Some(v), "vote changed within a term");
        }
        assert!(
            self.commit <= last,
            "commit {} beyond last index {}",
            self.commit,
            last
        );
        assert!(self.commit >= self.memo.commit, "commit went backwards");
        assert!(
            self.applied <= self.apply_sent && self.apply_sent <= self.commit,
            "apply beyond commit"
        );
        if let (Some(before), Some(now)) = (self.memo.commit_term, self.term_at(self.memo.commit)) {
            assert_eq!(before, now, "a committed entry changed");
        }
        assert_eq!(
            self.emitted_hard_state,
            HardState {
                term: self.term,
                voted_for: self.voted_for
            },
            "hard state not flushed"
        );
        match self.role {
            Role::Leader => {
                assert_eq!(self.leader, Some(self.config.id));
                assert!(self.leader_state.is_some());
                assert_eq!(
                    self.voted_for,
                    Some(self.config.id),
                    "leader without self-vote"
                );
            }
            Role::Candidate => assert_eq!(self.voted_for, Some(self.config.id)),
            _ => assert!(self.leader_state.is_none()),
        }
        if let Some(ls) = &self.leader_state {
            for (id, peer) in &ls.peers {
                assert!(
                    peer.next_index > peer.match_index,
                    "peer {id}: next {} not above match {}",
                    peer.next_index,
                    peer.match_index
                );
            }
        }
        assert!(
            self.pending_snapshot.is_some()
                || self.store.last_index().next() >= self.unstable_offset,
            "unstable log not contiguous with the store"
        );
        assert!(self.unstable.len() <= UNSTABLE_ENTRIES_MAX + 1);
        debug_assert!(
            self.unstable
                .iter()
                .enumerate()
                .all(|(i, e)| e.index.0 == self.unstable_offset.0 + i as u64 && e.term <= self.term),
            "unstable entries not contiguous"
        );
        debug_assert!(
            self.unstable.windows(2).all(|w| w[0].term <= w[1].term),
            "terms decrease along the log"
        );
        self.memo = Memo {
            term: self.term,
            voted_for: self.voted_for,
            commit: self.commit,
            commit_term: self.term_at(self.commit),
        };
    }
}

/// Shape checks on a peer's message, before any state changes (hostile-input defence).
fn validate(message: &Message) -> Result<(), &'static str> {
    if message.term().0 > TERM_MAX {
        return Err("term above TERM_MAX");
    }
    let index_ok = |i: &LogIndex| i.0 <= LOG_INDEX_MAX;
    match message {
        Message::PreVote { last_log_index, .. } | Message::RequestVote { last_log_index, .. }
            if !index_ok(last_log_index) =>
        {
            return Err("index above LOG_INDEX_MAX");
        }
        Message::AppendEntries {
            prev_log_index,
            entries,
            leader_commit,
            ..
        } if !index_ok(leader_commit)
            || prev_log_index.0.saturating_add(entries.len() as u64) > LOG_INDEX_MAX =>
        {
            return Err("index above LOG_INDEX_MAX");
        }
        Message::AppendEntriesResponse {
            match_index,
            conflict_index,
            last_log_index,
            ..
        } if !index_ok(match_index) || !index_ok(conflict_index) || !index_ok(last_log_index) => {
            return Err("index above LOG_INDEX_MAX");
        }
        Message::InstallSnapshot { snapshot, .. } if !index_ok(&snapshot.meta.last_index) => {
            return Err("index above LOG_INDEX_MAX");
        }
        Message::InstallSnapshotResponse { last_index, .. } if !index_ok(last_index) => {
            return Err("index above LOG_INDEX_MAX");
        }
        _ => {}
    }
    match message {
        Message::PreVote {
            term,
            last_log_term,
            ..
        }
        | Message::RequestVote {
            term,
            last_log_term,
            ..
        } => {
            if last_log_term > term {
                return Err("last_log_term above term");
            }
        }
        Message::AppendEntries {
            term,
            prev_log_index,
            prev_log_term,
            entries,
            ..
        } => {
            if prev_log_term > term {
                return Err("prev_log_term above term");
            }
            if entries.len() > ENTRIES_PER_APPEND_MAX {
                return Err("too many entries");
            }
            let mut expected = prev_log_index.next();
            let mut min_term = *prev_log_term;
            for e in entries {
                if e.index != expected {
                    return Err("entries not contiguous");
                }
                if e.term < min_term || e.term > *term {
                    return Err("entry terms out of order");
                }
                match &e.payload {
                    Payload::Normal(d) if d.len() > ENTRY_BYTES_MAX => {
                        return Err("entry too large");
                    }
                    Payload::Membership(m) if !m.is_valid() => return Err("invalid membership"),
                    _ => {}
                }
                min_term = e.term;
                expected = expected.next();
            }
        }
        Message::InstallSnapshot { term, snapshot } => {
            if snapshot.data.len() > SNAPSHOT_BYTES_MAX {
                return Err("snapshot too large");
            }
            if snapshot.meta.last_term > *term || snapshot.meta.last_index == LogIndex(0) {
                return Err("bad snapshot meta");
            }
            if !snapshot.meta.membership.is_valid() {
                return Err("invalid snapshot membership");
            }
        }
        Message::PreVoteResponse { .. }
        | Message::RequestVoteResponse { .. }
        | Message::AppendEntriesResponse { .. }
        | Message::InstallSnapshotResponse { .. }
        | Message::TimeoutNow { .. } => {}
    }
    Ok(())
}
