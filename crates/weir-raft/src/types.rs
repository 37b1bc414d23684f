//! The core's vocabulary: ids, terms, indexes, entries, messages, outputs.
//!
//! Everything here is plain data (`Clone, Debug, PartialEq, Eq`, serde) so the node can put it on
//! the wire and the simulator can record it. Nothing here trusts its contents: values that come
//! from a peer are validated by [`crate::Raft::handle_message`] before use.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

/// A member of the group. Stable for the lifetime of the node (never reused for another node).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub u64);

/// A Raft term. Only ever increases on a node (asserted).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Term(pub u64);

/// Position in the replicated log. `LogIndex(0)` is "before the first entry" (its term is 0).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct LogIndex(pub u64);

/// The driver's monotonic clock, in milliseconds. Only differences matter.
pub type Millis = u64;

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}", self.0)
    }
}

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "t{}", self.0)
    }
}

impl fmt::Display for LogIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "i{}", self.0)
    }
}

impl LogIndex {
    /// The next index, saturating (a hostile `u64::MAX` must not overflow-panic in debug builds).
    pub fn next(self) -> LogIndex {
        LogIndex(self.0.saturating_add(1))
    }

    /// The previous index, saturating at 0.
    pub fn prev(self) -> LogIndex {
        LogIndex(self.0.saturating_sub(1))
    }
}

/// What an entry carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Payload {
    /// Appended by every new leader at the start of its term: committing it commits everything
    /// before it (an entry of the current term is needed to commit older ones, Raft §5.4.2).
    Noop,
    /// Application data, opaque to the core.
    Normal(Vec<u8>),
    /// A new configuration. Takes effect as soon as it is appended (committed or not).
    Membership(Membership),
}

impl Payload {
    /// Rough size in bytes, used for the per-append and per-apply byte budgets.
    pub fn size_bytes(&self) -> usize {
        match self {
            Payload::Noop => 0,
            Payload::Normal(data) => data.len(),
            Payload::Membership(m) => 8 * (m.voters.len() + m.learners.len()),
        }
    }
}

/// One log entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub term: Term,
    pub index: LogIndex,
    pub payload: Payload,
}

impl Entry {
    /// Bytes counted against `max_bytes_per_append` / apply batches: payload plus a fixed header.
    pub fn size_bytes(&self) -> usize {
        ENTRY_OVERHEAD_BYTES + self.payload.size_bytes()
    }
}

/// Fixed per-entry cost in byte budgets (term + index + tag), so empty entries are not free.
pub const ENTRY_OVERHEAD_BYTES: usize = 24;

/// A configuration: who votes, who only receives the log.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    pub voters: BTreeSet<NodeId>,
    pub learners: BTreeSet<NodeId>,
}

impl Membership {
    /// A configuration of voters only (how a founding cluster is described).
    pub fn with_voters(voters: impl IntoIterator<Item = NodeId>) -> Self {
        Membership {
            voters: voters.into_iter().collect(),
            learners: BTreeSet::new(),
        }
    }

    /// Voter or learner.
    pub fn contains(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.learners.contains(&id)
    }

    /// Votes needed for a majority of the voters.
    pub fn quorum(&self) -> usize {
        self.voters.len() / 2 + 1
    }

    /// Every member, voters first.
    pub fn members(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.voters.iter().chain(self.learners.iter()).copied()
    }

    /// Well-formed per the limits: 1..=VOTERS_MAX voters, at most LEARNERS_MAX learners, disjoint.
    pub fn is_valid(&self) -> bool {
        !self.voters.is_empty()
            && self.voters.len() <= crate::VOTERS_MAX
            && self.learners.len() <= crate::LEARNERS_MAX
            && self.voters.is_disjoint(&self.learners)
    }
}

/// One-server-at-a-time configuration changes (Raft dissertation §4.1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MembershipChange {
    /// A new node that receives the log but does not vote (catch it up before promoting it).
    AddLearner(NodeId),
    /// A learner becomes a voter.
    PromoteLearner(NodeId),
    /// Make a node a voter directly (a learner is promoted; a new node joins as a voter).
    AddVoter(NodeId),
    /// Remove a voter or learner. A leader removing itself steps down once the change commits.
    RemoveNode(NodeId),
}

/// What must be durable before the node says anything that depends on it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardState {
    pub term: Term,
    pub voted_for: Option<NodeId>,
}

/// Describes what a snapshot covers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    pub last_index: LogIndex,
    pub last_term: Term,
    /// The configuration in effect at `last_index` (see [`crate::Raft::membership_at`]).
    pub membership: Membership,
}

/// A snapshot of the application state; `data` is opaque to the core.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub meta: SnapshotMeta,
    pub data: Vec<u8>,
}

/// Raft messages between members of one group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// `term` is the term the candidate WOULD use (its current + 1); the receiver does not adopt it.
    PreVote {
        term: Term,
        last_log_index: LogIndex,
        last_log_term: Term,
    },
    /// `term` is the pre-vote's term when granted, the receiver's own term when rejected.
    PreVoteResponse {
        term: Term,
        granted: bool,
    },
    RequestVote {
        term: Term,
        last_log_index: LogIndex,
        last_log_term: Term,
        /// Sent because of TimeoutNow: receivers ignore their leader lease.
        leadership_transfer: bool,
    },
    RequestVoteResponse {
        term: Term,
        granted: bool,
    },
    AppendEntries {
        term: Term,
        prev_log_index: LogIndex,
        prev_log_term: Term,
        entries: Vec<Entry>,
        leader_commit: LogIndex,
    },
    /// On success `match_index` is the highest index the follower has DURABLY and knows to match
    /// the leader's log. On rejection `match_index` echoes the rejected `prev_log_index` (so the
    /// leader can drop stale rejections), and the hints follow MIT 6.5840: `conflict_term` is the
    /// follower's term at `prev_log_index` (None if its log is shorter), `conflict_index` the first
    /// index the follower holds with that term (or its last index + 1 if shorter).
    AppendEntriesResponse {
        term: Term,
        success: bool,
        match_index: LogIndex,
        conflict_term: Option<Term>,
        conflict_index: LogIndex,
        last_log_index: LogIndex,
    },
    /// Data at most `SNAPSHOT_BYTES_MAX` (larger ones are dropped by the receiver).
    InstallSnapshot {
        term: Term,
        snapshot: Snapshot,
    },
    /// `last_index`: the follower now durably holds everything up to here.
    InstallSnapshotResponse {
        term: Term,
        last_index: LogIndex,
    },
    /// Leadership transfer: the receiver campaigns at once, skipping PreVote and leases.
    TimeoutNow {
        term: Term,
    },
}

impl Message {
    /// The term carried by every message.
    pub fn term(&self) -> Term {
        match self {
            Message::PreVote { term, .. }
            | Message::PreVoteResponse { term, .. }
            | Message::RequestVote { term, .. }
            | Message::RequestVoteResponse { term, .. }
            | Message::AppendEntries { term, .. }
            | Message::AppendEntriesResponse { term, .. }
            | Message::InstallSnapshot { term, .. }
            | Message::InstallSnapshotResponse { term, .. }
            | Message::TimeoutNow { term } => *term,
        }
    }
}

/// A message with its addresses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub from: NodeId,
    pub to: NodeId,
    pub message: Message,
}

/// What the driver must do, in queue order. See the crate docs for the driver contract.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Output {
    /// Make durable, BEFORE executing any later output of the queue (in particular any Send after it).
    PersistHardState(HardState),
    /// Append `entries` to the stored log, first truncating every stored entry with index >=
    /// `entries[0].index`. Asynchronous: the driver may execute later outputs (Sends) before this is
    /// durable; when it is durable it calls `handle_persisted(now, last.index, last.term)`.
    /// Entries are contiguous and non-empty.
    PersistEntries(Vec<Entry>),
    /// Follower: replace the state machine and the log with this snapshot (the log now starts after
    /// `meta.last_index`), then call `handle_snapshot_persisted(now, meta.last_index)`.
    PersistSnapshot(Snapshot),
    /// Deliver to `envelope.to` (best effort: the core tolerates loss, duplication, reordering).
    Send(Envelope),
    /// Committed entries to apply, in order, each exactly once, contiguous with the previous Apply.
    /// Call `handle_applied(now, last.index)` once applied; at most `APPLY_INFLIGHT_MAX` entries are
    /// handed out beyond the last `handle_applied`.
    Apply(Vec<Entry>),
    /// Informational: role, leader or term changed.
    StateChanged {
        role: Role,
        term: Term,
        leader: Option<NodeId>,
    },
}

/// A node's role in the group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    Follower,
    PreCandidate,
    Candidate,
    Leader,
    /// Receives the log, never campaigns, its vote never counts.
    Learner,
}

/// The leader's view of one peer's replication.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub match_index: LogIndex,
    pub next_index: LogIndex,
}

/// A snapshot of the node's state, for drivers, tests and operators.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub id: NodeId,
    pub role: Role,
    pub term: Term,
    pub voted_for: Option<NodeId>,
    pub leader: Option<NodeId>,
    pub commit_index: LogIndex,
    /// Highest index the driver reported applied (`handle_applied`).
    pub applied_index: LogIndex,
    pub last_index: LogIndex,
    /// Highest index known durable locally (`handle_persisted`).
    pub persisted_index: LogIndex,
    pub membership: Membership,
    /// Per peer (not self), only when leader.
    pub progress: BTreeMap<NodeId, Progress>,
}

/// Why a proposal (or transfer) was refused. Nothing was appended.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ProposeError {
    #[error("not the leader (leader hint: {leader_hint:?})")]
    NotLeader { leader_hint: Option<NodeId> },
    #[error("leadership transfer in progress")]
    TransferInProgress,
    #[error("entry larger than ENTRY_BYTES_MAX")]
    TooLarge,
    #[error(
        "a membership change is not committed yet (or this leader has not committed in its term)"
    )]
    MembershipChangePending,
    #[error("too many entries waiting to be persisted")]
    Busy,
    #[error("invalid membership change: {0}")]
    InvalidMembershipChange(&'static str),
    #[error("cannot transfer leadership to {0}: not a voter")]
    InvalidTransferTarget(NodeId),
}
