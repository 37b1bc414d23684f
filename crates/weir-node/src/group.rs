//! The group runtime: the thread that drives ONE Raft group ([`weir_raft::Raft`] over a
//! [`GroupStore`]) by the core's driver contract.
//!
//! ```text
//! deliver / propose / stop ──► std mpsc ──► group thread ──► Raft<GroupStore>
//!                                 ▲            │ outputs, in queue order:
//!                                 │            │  PersistHardState → store.set_hard_state (durable)
//!                                 │            │  PersistEntries   → store.append (written)
//!                                 │            │  Send             → Transport::send (best effort)
//!                                 │            │  Apply            → applier thread (queued)
//!                                 │            │  PersistSnapshot  → applier: restore (waited for),
//!                                 │            │                     then store.install_snapshot
//!                                 │            └─ end of round: ONE store.sync() → handle_persisted
//!          Applied / Compaction ──┴── applier thread ──► StateMachine (apply, compaction, restore)
//! ```
//!
//! The state machine runs on its own thread (the *applier*), so a slow apply (a topic program
//! compiling a module or burning its fuel) never delays heartbeats, votes or appends: Raft keeps
//! its leader while the machine catches up. The core hands out at most
//! [`weir_raft::APPLY_INFLIGHT_MAX`] entries ahead of `handle_applied`, which bounds the queue.
//! The applier answers with an `Applied` input carrying the machine's outcomes; the group
//! thread then answers the proposals and reports `handle_applied`.
//!
//! One round: wait for an input until the core's next timeout (`recv_timeout`), take up to
//! [`GROUP_INPUT_BATCH_MAX`] more queued inputs without blocking, executing each one's outputs
//! right after it (writes without fsync, sends, applies queued to the applier), then fsync once for everything
//! appended in the round (group commit) and report it with `handle_persisted`, draining again
//! until a drain appends nothing more. Followers acknowledge only after `handle_persisted`, so
//! sending before the round's fsync is what the contract allows.
//!
//! A proposal is answered once the applier reports its index applied: the entry there has its
//! term (`Ok`) or another term (`Lost`). Losing leadership does not answer it; stopping does (`Stopped`).
//!
//! A storage failure is final for this runtime: the failure is recorded in the status, pending
//! proposals fail with `Storage`, the core is no longer called (nothing more is sent) and every
//! later proposal gets `Storage`. Reopen the store (restart the group) to recover from disk.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use weir_proto::{ProgramOutcome, TimestampMs};
use weir_raft::{
    Config, Entry, Envelope, LogIndex, LogStore, Membership, MembershipChange, Millis, NodeId,
    Output, ProposeError, Raft, Role, Term,
};
use weir_storage::FsyncPolicy;

use crate::group_store::GroupStore;
use crate::peer::{GroupId, PeerNet};
use crate::producers::{ProducerAdmission, Verdict};

/// Most inputs handled in one round (one fsync) before the thread fsyncs and reports.
pub const GROUP_INPUT_BATCH_MAX: usize = 1024;
/// Most proposals in one [`GroupHandle::propose_batch`] input: one step of the group thread,
/// so bounded like the inputs it takes per round.
pub const PROPOSE_BATCH_MAX: usize = 1024;
/// Most proposals waiting for their Apply; beyond it `propose` answers `Busy`.
pub const PROPOSALS_PENDING_MAX: usize = weir_raft::UNSTABLE_ENTRIES_MAX;
/// Longest the thread blocks when the core has no timer (a learner, a failed group).
const IDLE_WAIT_MS: u64 = 1_000;

/// Where the group's messages go: the peer network in a node, an in-memory router in tests.
pub trait Transport: Send + Sync + 'static {
    /// Best effort: the core tolerates loss, duplication and reordering.
    fn send(&self, group: GroupId, envelope: Envelope);
}

impl Transport for PeerNet {
    fn send(&self, group: GroupId, envelope: Envelope) {
        // A dropped message (queue full, unknown peer) is counted by PeerNet; Raft resends.
        let _ = PeerNet::send(self, group, envelope);
    }
}

/// What one group runs with. `raft.random_seed` is the caller's (fixed per node in tests).
#[derive(Clone, Debug)]
pub struct GroupConfig {
    pub group: GroupId,
    pub raft: Config,
    /// Membership if the store has none (every founding member passes the same set; a node
    /// joining an existing group passes an empty one and learns it from the leader).
    pub initial: Membership,
    /// Proposals are weir-proto entries ([`weir_proto::entry`]): the thread stamps each with
    /// the leader's timestamp, in log order, never below the log's last timestamp.
    pub stamp_timestamps: bool,
    /// `Always`: entries are reported persisted (and so acknowledged, voted on, committed)
    /// only after the round's fsync. `Interval`/`Never` report them at once and fsync every
    /// interval / never: explicit, documented trades of durability for speed.
    pub fsync: FsyncPolicy,
    /// Retention of the group's log, applied by compacting (an empty snapshot: for groups whose
    /// state machine needs none, as plain topics). `None`: keep everything.
    pub retention: Option<Retention>,
    /// Topic groups: each PUT a leader proposes is checked against the producers' applied
    /// state first (exactly-once; see `producers`), and no PUT is proposed before the
    /// leader's term-start entry is applied. `None`: proposals are not checked.
    pub producers: Option<ProducerAdmission>,
}

/// Size and age limits of a group's log, checked every `check_interval_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    pub bytes: Option<u64>,
    pub ms: Option<u64>,
    pub check_interval_ms: u64,
}

/// A proposal that committed: where, in which term, and the timestamp it was stamped with
/// (0 for groups without `stamp_timestamps` and for membership changes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decided {
    pub index: LogIndex,
    pub term: Term,
    pub timestamp_ms: TimestampMs,
    /// What the state machine said of the entry, if anything (a topic program's outcome).
    pub program: Option<ProgramOutcome>,
}

/// Why a proposal did not (or may not have) become a committed entry.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProposalError {
    #[error("not the leader (leader hint: {leader_hint:?})")]
    NotLeader { leader_hint: Option<NodeId> },
    /// Another term's entry was committed at the proposal's index: it will never commit.
    #[error("the proposal was replaced by another leader's entry")]
    Lost,
    /// The group stopped before the proposal was decided (it may still commit later).
    #[error("the group stopped")]
    Stopped,
    /// Too many proposals pending (here or in the core): retry later.
    #[error("too many proposals pending")]
    Busy,
    /// The group's storage failed; the group no longer takes part.
    #[error("group storage failed: {0}")]
    Storage(String),
    /// Refused by the core for another reason (too large, leadership transfer in progress).
    #[error("proposal refused: {0}")]
    Rejected(ProposeError),
    /// A snapshot installed over the proposal's index: whether it committed is unknown.
    #[error("outcome unknown: a snapshot replaced the log at the proposal's index")]
    Unknown,
    /// The producer check refused the PUT (nothing was proposed): a duplicate, a gap, or one
    /// still in flight ([`Verdict`], never `Accept`).
    #[error("refused by the producer check: {0:?}")]
    Producer(Verdict),
    /// This node leads, but has not applied its term's first entry yet, so it cannot check a
    /// PUT against its producers' state, and [`PROPOSALS_PENDING_MAX`] proposals already wait
    /// for that: retry shortly.
    #[error("the leader is still applying its predecessors' entries")]
    NotReady,
}

/// Answer to one proposal, called once, from the group thread.
pub type ProposalReply = Box<dyn FnOnce(Result<Decided, ProposalError>) + Send>;
/// The state machine: committed entries, in order, each once (all payload kinds). It returns
/// what it has to say about some of them (by index, ascending), which goes into the `Decided`
/// of their proposals: they are answered right after, from the group thread. It runs on the
/// group's applier thread.
pub type OnApply = Box<dyn FnMut(&[Entry]) -> Applied + Send>;

/// What a group applies its committed entries to, and what its snapshots hold.
///
/// Any `FnMut(&[Entry]) -> Applied` is one whose state is the log itself (a plain topic, the
/// catalog): compacting needs no data, and installing a snapshot restores nothing.
pub trait StateMachine: Send + 'static {
    /// Committed entries, in order, each once; see [`OnApply`].
    fn apply(&mut self, entries: &[Entry]) -> Applied;

    /// Retention wants to compact the log through `upto` (never beyond the applied index):
    /// the index the state machine can cover instead (at most `upto`) and the snapshot data a
    /// replica that lacks the compacted entries installs to get there. `None`: not now.
    fn compaction(&mut self, upto: LogIndex) -> Option<(LogIndex, Vec<u8>)> {
        Some((upto, Vec::new()))
    }

    /// A snapshot from the leader replaces everything through `snapshot.meta.last_index`: the
    /// state machine takes that state, durably, before the log is replaced (so a crash in
    /// between leaves a state machine ahead of its log, which re-applying skips). An error
    /// stops the group like a storage failure.
    fn restore(&mut self, snapshot: &weir_raft::Snapshot) -> Result<(), String> {
        let _ = snapshot;
        Ok(())
    }
}

impl<F> StateMachine for F
where
    F: FnMut(&[Entry]) -> Applied + Send + 'static,
{
    fn apply(&mut self, entries: &[Entry]) -> Applied {
        self(entries)
    }
}
/// Per-entry results of an [`OnApply`] call, ascending by index; empty for most state machines.
pub type Applied = Vec<(LogIndex, ProgramOutcome)>;

/// The group as last seen by its thread (updated after every round).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupStatus {
    pub group: GroupId,
    pub id: NodeId,
    pub role: Role,
    pub term: Term,
    pub leader: Option<NodeId>,
    pub commit_index: LogIndex,
    pub applied_index: LogIndex,
    pub last_index: LogIndex,
    pub persisted_index: LogIndex,
    /// Leader only: each peer's match index.
    pub peer_match: BTreeMap<NodeId, LogIndex>,
    /// The group's configuration as this replica knows it (latest appended).
    pub membership: Membership,
    /// Counters of the group's log.
    pub log_stats: weir_storage::LogStats,
    /// Last index actually fsynced (below `persisted_index` under `Interval`/`Never`).
    pub synced_index: LogIndex,
    /// Proposals waiting for their Apply.
    pub pending_proposals: usize,
    /// `store.sync()` calls made (each at most one fsync): group commit makes it far fewer
    /// than the entries appended.
    pub syncs: u64,
    /// Storage failure that stopped the group.
    pub failure: Option<String>,
    /// The thread has exited.
    pub stopped: bool,
}

enum Input {
    Deliver(Envelope),
    Propose(Vec<u8>, ReplyOnce),
    /// Proposed together: one append and one round of AppendEntries for all of them.
    ProposeBatch(Vec<(Vec<u8>, ReplyOnce)>),
    ProposeMembership(MembershipChange, ReplyOnce),
    Transfer(NodeId),
    Stop,
    /// From the applier: these entries (index, term) are applied, with the machine's outcomes.
    Applied {
        entries: Vec<(LogIndex, Term)>,
        outcomes: Applied,
    },
    /// From the applier: the machine's answer to `Job::Compaction(upto)`.
    Compaction {
        upto: LogIndex,
        offer: Option<(LogIndex, Vec<u8>)>,
    },
}

/// Work for the applier thread, done in order.
enum Job {
    Apply(Vec<Entry>),
    Compaction(LogIndex),
    /// Restores the machine from the snapshot and hands the snapshot back with the result.
    Restore(
        weir_raft::Snapshot,
        mpsc::SyncSender<(weir_raft::Snapshot, Result<(), String>)>,
    ),
    Stop,
}

/// The applier thread: runs the state machine on the jobs the group thread queues, in order,
/// and reports back through the group's input queue.
fn run_applier(
    mut machine: Box<dyn StateMachine>,
    jobs: mpsc::Receiver<Job>,
    results: mpsc::Sender<Input>,
) {
    while let Ok(job) = jobs.recv() {
        let report = match job {
            Job::Apply(entries) => {
                let outcomes = machine.apply(&entries);
                Input::Applied {
                    entries: entries.iter().map(|e| (e.index, e.term)).collect(),
                    outcomes,
                }
            }
            Job::Compaction(upto) => Input::Compaction {
                upto,
                offer: machine.compaction(upto),
            },
            Job::Restore(snapshot, reply) => {
                let result = machine.restore(&snapshot);
                // The group thread waits for this answer; if it is gone, so is the group.
                let _ = reply.send((snapshot, result));
                continue;
            }
            Job::Stop => break,
        };
        if results.send(report).is_err() {
            break; // the group thread has exited
        }
    }
}

/// A proposal's reply, answered exactly once: dropped unanswered (the group stopped with it
/// queued or pending) it answers `Stopped`.
struct ReplyOnce(Option<ProposalReply>);

impl ReplyOnce {
    fn send(mut self, result: Result<Decided, ProposalError>) {
        if let Some(reply) = self.0.take() {
            reply(result);
        }
    }
}

impl Drop for ReplyOnce {
    fn drop(&mut self) {
        if let Some(reply) = self.0.take() {
            reply(Err(ProposalError::Stopped));
        }
    }
}

struct Shared {
    status: Mutex<GroupStatus>,
    changed: Condvar,
}

struct Inner {
    group: GroupId,
    tx: mpsc::Sender<Input>,
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// The applier's thread: a `stop` from the state machine must not wait for the group.
    applier: std::thread::ThreadId,
}

impl Drop for Inner {
    /// The applier holds a sender of the input queue too, so the group thread cannot learn
    /// from a disconnected queue that every handle is gone: it is told.
    fn drop(&mut self) {
        let _ = self.tx.send(Input::Stop);
    }
}

/// A running group. Cheap to clone; every clone talks to the same thread.
#[derive(Clone)]
pub struct GroupHandle {
    inner: Arc<Inner>,
}

impl fmt::Debug for GroupHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupHandle")
            .field("group", &self.inner.group)
            .finish_non_exhaustive()
    }
}

impl GroupHandle {
    /// Builds the core from `store` (restoring its hard state and log) and starts the thread.
    /// `machine` gets every committed entry from the store's snapshot on (after a restart, the
    /// whole retained log again). Panics on an invalid `config.raft` (as `Raft::new`).
    pub fn start(
        config: GroupConfig,
        store: GroupStore,
        transport: Arc<dyn Transport>,
        machine: impl StateMachine,
    ) -> std::io::Result<GroupHandle> {
        let started = Instant::now();
        let id = config.raft.id;
        let group = config.group;
        let raft = Raft::new(config.raft, store, config.initial, 0);
        let shared = Arc::new(Shared {
            status: Mutex::new(status_of(group, &raft, 0, 0, None, false)),
            changed: Condvar::new(),
        });
        let (tx, rx) = mpsc::channel();
        let (jobs, jobs_rx) = mpsc::channel();
        let machine: Box<dyn StateMachine> = Box::new(machine);
        let results = tx.clone();
        let applier = std::thread::Builder::new()
            .name(format!("weir-apply-{group}"))
            .spawn(move || run_applier(machine, jobs_rx, results))?;
        let applier_id = applier.thread().id();
        let runner = Runner {
            group,
            id,
            started,
            raft,
            rx,
            transport,
            jobs,
            applier: Some(applier),
            compaction_asked: false,
            shared: shared.clone(),
            pending: BTreeMap::new(),
            stamp_timestamps: config.stamp_timestamps,
            fsync: config.fsync,
            retention: config.retention,
            producers: config.producers,
            parked: Vec::new(),
            last_retention: Instant::now(),
            last_sync: Instant::now(),
            unsynced: false,
            appended: None,
            syncs: 0,
            failure: None,
        };
        // If this fails, the runner drops: its job queue closes and the applier exits.
        let thread = std::thread::Builder::new()
            .name(format!("weir-group-{group}"))
            .spawn(move || runner.run())?;
        Ok(GroupHandle {
            inner: Arc::new(Inner {
                group,
                tx,
                shared,
                thread: Mutex::new(Some(thread)),
                applier: applier_id,
            }),
        })
    }

    pub fn group(&self) -> GroupId {
        self.inner.group
    }

    /// A message from a peer (dropped if the group has stopped).
    pub fn deliver(&self, envelope: Envelope) {
        let _ = self.inner.tx.send(Input::Deliver(envelope));
    }

    /// Proposes `data`; `reply` is called once the entry is applied (committed) with its
    /// (index, term), or with why not.
    pub fn propose(&self, data: Vec<u8>, reply: ProposalReply) {
        // If the thread is gone, the returned input drops its reply: `Stopped`.
        let _ = self
            .inner
            .tx
            .send(Input::Propose(data, ReplyOnce(Some(reply))));
    }

    /// Proposes each of `batch` in order, as many [`GroupHandle::propose`] calls would, but as
    /// one step of the group thread: the entries are appended with one write and sent to the
    /// followers together (at most [`PROPOSE_BATCH_MAX`] at a time: a longer batch is split).
    pub fn propose_batch(&self, batch: Vec<(Vec<u8>, ProposalReply)>) {
        let mut batch = batch
            .into_iter()
            .map(|(data, reply)| (data, ReplyOnce(Some(reply))));
        loop {
            let chunk: Vec<(Vec<u8>, ReplyOnce)> = batch.by_ref().take(PROPOSE_BATCH_MAX).collect();
            if chunk.is_empty() {
                return;
            }
            // If the thread is gone, the returned input drops its replies: `Stopped`.
            let _ = self.inner.tx.send(Input::ProposeBatch(chunk));
        }
    }

    /// Proposes a one-server membership change; `reply` is called once it is applied, or with
    /// why not (`Rejected(MembershipChangePending)` while another change is uncommitted).
    pub fn propose_membership(&self, change: MembershipChange, reply: ProposalReply) {
        let _ = self
            .inner
            .tx
            .send(Input::ProposeMembership(change, ReplyOnce(Some(reply))));
    }

    /// Asks the leader to hand leadership to voter `to` (ignored unless this node leads and
    /// `to` is a voter: best effort, like the core's transfer).
    pub fn transfer_leadership(&self, to: NodeId) {
        let _ = self.inner.tx.send(Input::Transfer(to));
    }

    pub fn status(&self) -> GroupStatus {
        lock(&self.inner.shared.status).clone()
    }

    /// Waits (at most `timeout`) until the status satisfies `pred`; returns it, or None on
    /// timeout.
    pub fn wait_for(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&GroupStatus) -> bool,
    ) -> Option<GroupStatus> {
        let deadline = Instant::now() + timeout;
        let mut status = lock(&self.inner.shared.status);
        loop {
            if pred(&status) {
                return Some(status.clone());
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            if left.is_zero() {
                return None;
            }
            status = self
                .inner
                .shared
                .changed
                .wait_timeout(status, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Stops the thread after the inputs queued before this call, syncs, and waits for it.
    /// Pending proposals get `Stopped`. Idempotent.
    pub fn stop(&self) {
        let _ = self.inner.tx.send(Input::Stop);
        let thread = lock(&self.inner.thread).take();
        if let Some(t) = thread {
            let current = std::thread::current().id();
            if t.thread().id() == current || self.inner.applier == current {
                // Called from a reply or the state machine: the group thread exits after this
                // round, the applier after this job.
                return;
            }
            if t.join().is_err() {
                tracing::error!(group = %self.inner.group, "group thread panicked");
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn status_of(
    group: GroupId,
    raft: &Raft<GroupStore>,
    pending: usize,
    syncs: u64,
    failure: Option<String>,
    stopped: bool,
) -> GroupStatus {
    let s = raft.status();
    GroupStatus {
        group,
        id: s.id,
        role: s.role,
        term: s.term,
        leader: s.leader,
        commit_index: s.commit_index,
        applied_index: s.applied_index,
        last_index: s.last_index,
        persisted_index: s.persisted_index,
        peer_match: s
            .progress
            .into_iter()
            .map(|(id, p)| (id, p.match_index))
            .collect(),
        membership: s.membership,
        log_stats: raft.store().log_stats(),
        synced_index: raft.store().synced_index(),
        pending_proposals: pending,
        syncs,
        failure,
        stopped,
    }
}

enum Proposal {
    Data(Vec<u8>),
    Membership(MembershipChange),
}

struct Runner {
    group: GroupId,
    id: NodeId,
    started: Instant,
    raft: Raft<GroupStore>,
    rx: mpsc::Receiver<Input>,
    transport: Arc<dyn Transport>,
    /// The applier's queue and thread (`None` once joined).
    jobs: mpsc::Sender<Job>,
    applier: Option<JoinHandle<()>>,
    /// A `Job::Compaction` is out: retention waits for its answer before asking again.
    compaction_asked: bool,
    shared: Arc<Shared>,
    /// Proposals by index: (term, stamped timestamp, reply).
    pending: BTreeMap<LogIndex, (Term, TimestampMs, ReplyOnce)>,
    stamp_timestamps: bool,
    fsync: FsyncPolicy,
    retention: Option<Retention>,
    producers: Option<ProducerAdmission>,
    /// With a producer check: proposals a new leader took before its term-start entry was
    /// applied, proposed (checked) once it is, answered as not leader if it loses leadership
    /// first. At most [`PROPOSALS_PENDING_MAX`]; it is empty again within a round trip of a
    /// working leader, which commits its term start at once (CheckQuorum deposes one that
    /// cannot).
    parked: Vec<(Vec<u8>, ReplyOnce)>,
    last_retention: Instant,
    last_sync: Instant,
    /// Entries were reported persisted without an fsync (`Interval`/`Never`).
    unsynced: bool,
    /// Last entry written since the last sync.
    appended: Option<(LogIndex, Term)>,
    syncs: u64,
    failure: Option<String>,
}

impl Runner {
    fn now(&self) -> Millis {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn run(mut self) {
        let span = tracing::info_span!("group", group = %self.group, id = %self.id);
        let _enter = span.enter();
        self.drain();
        self.finish_round();
        let mut stop = false;
        while !stop {
            let now = self.now();
            let mut wait_ms = match self.raft.next_timeout() {
                Some(t) if self.failure.is_none() => t.saturating_sub(now),
                _ => IDLE_WAIT_MS,
            };
            if let (true, FsyncPolicy::Interval { interval_ms }) = (self.unsynced, self.fsync) {
                let since = u64::try_from(self.last_sync.elapsed().as_millis()).unwrap_or(u64::MAX);
                wait_ms = wait_ms.min(interval_ms.saturating_sub(since));
            }
            match self.rx.recv_timeout(Duration::from_millis(wait_ms)) {
                Ok(input) => stop = self.handle(input),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => stop = true,
            }
            self.maybe_timeout();
            let mut taken = 1;
            while !stop && taken < GROUP_INPUT_BATCH_MAX {
                match self.rx.try_recv() {
                    Ok(input) => stop = self.handle(input),
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => stop = true,
                }
                taken += 1;
            }
            self.maybe_timeout();
            self.unpark();
            self.finish_round();
            self.maybe_apply_retention();
        }
        self.shutdown();
    }

    /// Returns true on Stop.
    fn handle(&mut self, input: Input) -> bool {
        match input {
            Input::Stop => return true,
            Input::Deliver(envelope) => {
                if self.failure.is_none() {
                    let now = self.now();
                    self.raft.handle_message(now, envelope);
                    self.drain();
                }
            }
            Input::Propose(data, reply) => self.propose(Proposal::Data(data), reply),
            Input::ProposeBatch(batch) => self.propose_batch(batch),
            Input::ProposeMembership(change, reply) => {
                self.propose(Proposal::Membership(change), reply)
            }
            Input::Transfer(to) => {
                if self.failure.is_none() {
                    let now = self.now();
                    if let Err(e) = self.raft.transfer_leadership(now, to) {
                        tracing::debug!(%to, error = %e, "leadership transfer not started");
                    }
                    self.drain();
                }
            }
            Input::Applied { entries, outcomes } => self.applied(&entries, outcomes),
            Input::Compaction { upto, offer } => {
                self.compaction_asked = false;
                self.compact(upto, offer);
            }
        }
        false
    }

    /// The applier applied `entries` (contiguous, ascending): answers their proposals and
    /// tells the core. Entries a snapshot installed since covered are answered already, and
    /// the core ignores an applied index below the one it has.
    fn applied(&mut self, entries: &[(LogIndex, Term)], outcomes: Applied) {
        let Some(&(last, _)) = entries.last() else {
            return;
        };
        self.answer_applied(entries, outcomes);
        if self.failure.is_none() {
            let now = self.now();
            self.raft.handle_applied(now, last);
            self.drain();
        }
    }

    /// Answers the proposals of applied `entries` with the machine's outcomes.
    fn answer_applied(&mut self, entries: &[(LogIndex, Term)], outcomes: Applied) {
        let mut outcomes = outcomes.into_iter().peekable();
        for &(index, term) in entries {
            let mut program = None;
            while let Some((at, _)) = outcomes.peek() {
                if *at > index {
                    break;
                }
                let (at, outcome) = outcomes.next().expect("peeked");
                if at == index {
                    program = Some(outcome);
                }
            }
            self.decide(index, term, program);
        }
    }

    /// Queues work for the applier; if it is gone (its state machine panicked), the group
    /// cannot go on.
    fn queue_for_applier(&mut self, job: Job) {
        if self.jobs.send(job).is_err() {
            self.fail("the state machine's thread exited".to_owned());
        }
    }

    fn propose(&mut self, proposal: Proposal, reply: ReplyOnce) {
        if let Some(reason) = &self.failure {
            return reply.send(Err(ProposalError::Storage(reason.clone())));
        }
        if self.pending.len() >= PROPOSALS_PENDING_MAX {
            return reply.send(Err(ProposalError::Busy));
        }
        let now = self.now();
        let mut timestamp_ms = TimestampMs::ZERO;
        let result = match proposal {
            Proposal::Data(mut data) => {
                if self.stamp_timestamps && self.raft.role() == Role::Leader {
                    // Stamped here, on the group thread, so timestamps follow log order; the
                    // store's last timestamp covers entries of earlier leaders too.
                    let last = self.raft.store().last_timestamp();
                    timestamp_ms = TimestampMs(crate::clock::now_ms().max(last.0));
                    weir_proto::entry::stamp_timestamp(&mut data, timestamp_ms);
                }
                self.raft.propose(now, data)
            }
            Proposal::Membership(change) => self.raft.propose_membership(now, change),
        };
        self.proposed(result, timestamp_ms, reply);
        self.drain();
    }

    /// Files a proposal the core took as pending (answered at its apply), or answers why not.
    fn proposed(
        &mut self,
        result: Result<(LogIndex, Term), ProposeError>,
        timestamp_ms: TimestampMs,
        reply: ReplyOnce,
    ) {
        match result {
            Ok((index, term)) => {
                // An older proposal at this index can no longer commit: this term replaced it.
                if let Some((_, _, old)) = self.pending.insert(index, (term, timestamp_ms, reply)) {
                    old.send(Err(ProposalError::Lost));
                }
            }
            Err(ProposeError::NotLeader { leader_hint }) => {
                reply.send(Err(ProposalError::NotLeader { leader_hint }))
            }
            Err(ProposeError::Busy) => reply.send(Err(ProposalError::Busy)),
            Err(e) => reply.send(Err(ProposalError::Rejected(e))),
        }
    }

    /// [`Runner::propose`] for many, as one step of the core (`Raft::propose_batch`). With a
    /// producer check, a leader first checks each PUT (in order, counting the ones before it
    /// in the batch) and proposes only the accepted ones.
    fn propose_batch(&mut self, batch: Vec<(Vec<u8>, ReplyOnce)>) {
        if let Some(reason) = &self.failure {
            for (_, reply) in batch {
                reply.send(Err(ProposalError::Storage(reason.clone())));
            }
            return;
        }
        let room = PROPOSALS_PENDING_MAX.saturating_sub(self.pending.len());
        let leader = self.raft.role() == Role::Leader;
        // As in `propose`: stamped on the group thread (one stamp for the batch), leader only.
        let stamp = (self.stamp_timestamps && leader).then(|| {
            let last = self.raft.store().last_timestamp();
            TimestampMs(crate::clock::now_ms().max(last.0))
        });
        // Checked only by a leader (anyone else refuses every proposal as not leader), and
        // only once its applied state holds everything before its term.
        let ready = self
            .raft
            .term_start()
            .is_some_and(|start| self.raft.applied_index() >= start);
        let term = self.raft.term().0;
        let now = self.now();
        let mut check = match &mut self.producers {
            Some(admission) if leader => {
                if !ready {
                    // Held until the leader can check them (see `parked`).
                    let room = PROPOSALS_PENDING_MAX.saturating_sub(self.parked.len());
                    for (i, proposal) in batch.into_iter().enumerate() {
                        if i < room {
                            self.parked.push(proposal);
                        } else {
                            proposal.1.send(Err(ProposalError::NotReady));
                        }
                    }
                    return;
                }
                Some(admission.check(term))
            }
            _ => None,
        };
        let mut datas = Vec::with_capacity(batch.len().min(room));
        let mut replies = Vec::with_capacity(batch.len().min(room));
        let mut puts = Vec::new();
        for (i, (mut data, reply)) in batch.into_iter().enumerate() {
            if i >= room {
                reply.send(Err(ProposalError::Busy));
                continue;
            }
            if let Some(check) = &mut check {
                // Refused here rather than by the core: a refusal after the check accepted
                // the PUT would leave a gap in its producer's sequence.
                if data.len() > weir_raft::ENTRY_BYTES_MAX {
                    reply.send(Err(ProposalError::Rejected(ProposeError::TooLarge)));
                    continue;
                }
                let put = weir_proto::entry::entry_producer(&data);
                if let Some((producer, seq)) = put {
                    let verdict = check.verdict(producer, seq);
                    if verdict != Verdict::Accept {
                        reply.send(Err(ProposalError::Producer(verdict)));
                        continue;
                    }
                }
                puts.push(put);
            }
            if let Some(timestamp_ms) = stamp {
                weir_proto::entry::stamp_timestamp(&mut data, timestamp_ms);
            }
            datas.push(data);
            replies.push(reply);
        }
        let results = self.raft.propose_batch(now, datas);
        debug_assert_eq!(results.len(), replies.len(), "one result per proposal");
        if let Some(check) = &mut check {
            debug_assert_eq!(results.len(), puts.len(), "one check per proposal");
            let mut refused = false;
            for (result, put) in results.iter().zip(&puts) {
                match (result, put) {
                    (Ok((index, _)), Some((producer, seq))) => {
                        // The core refuses only a suffix (`Busy`): no gap behind an accepted PUT.
                        debug_assert!(!refused, "a PUT proposed after a refused one");
                        check.proposed(*producer, *seq, weir_proto::Offset(index.0 - 1));
                    }
                    (Ok(_), None) => {}
                    (Err(_), _) => refused = true,
                }
            }
        }
        drop(check);
        let timestamp_ms = stamp.unwrap_or(TimestampMs::ZERO);
        for (result, reply) in results.into_iter().zip(replies) {
            self.proposed(result, timestamp_ms, reply);
        }
        self.drain();
    }

    /// Proposes the parked proposals once the leader has applied its term start, or once it
    /// no longer leads (then the core refuses them as not leader).
    fn unpark(&mut self) {
        if self.parked.is_empty() {
            return;
        }
        let leads = self.raft.role() == Role::Leader;
        let ready = self
            .raft
            .term_start()
            .is_some_and(|start| self.raft.applied_index() >= start);
        if leads && !ready && self.failure.is_none() {
            return;
        }
        let parked = std::mem::take(&mut self.parked);
        self.propose_batch(parked);
    }

    fn maybe_timeout(&mut self) {
        if self.failure.is_some() {
            return;
        }
        let now = self.now();
        if self.raft.next_timeout().is_some_and(|t| t <= now) {
            self.raft.handle_timeout(now);
            self.drain();
        }
    }

    /// Executes every queued output in order (no fsync of entries: see `finish_round`).
    fn drain(&mut self) {
        while self.failure.is_none() {
            let Some(output) = self.raft.poll_output() else {
                break;
            };
            let now = self.now();
            match output {
                Output::PersistHardState(hs) => {
                    if let Err(e) = self.raft.store_mut().set_hard_state(hs) {
                        self.fail(format!("persisting the hard state: {e}"));
                    }
                }
                Output::PersistEntries(entries) => match self.raft.store_mut().append(&entries) {
                    Ok(()) => {
                        if let Some(last) = entries.last() {
                            self.appended = Some((last.index, last.term));
                        }
                    }
                    Err(e) => self.fail(format!("appending entries: {e}")),
                },
                Output::Send(envelope) => self.transport.send(self.group, envelope),
                Output::Apply(entries) => {
                    if !entries.is_empty() {
                        self.queue_for_applier(Job::Apply(entries));
                    }
                }
                Output::PersistSnapshot(snapshot) => {
                    let meta = snapshot.meta.clone();
                    // The state machine first: a crash between leaves it ahead of the old log
                    // (re-applying skips what it holds) and the leader sends the snapshot again.
                    // The applier restores after the applies queued before; waited for here,
                    // since the log must not move on before the machine holds the snapshot.
                    let (reply, answer) = mpsc::sync_channel(1);
                    self.queue_for_applier(Job::Restore(snapshot, reply));
                    let snapshot = match answer.recv() {
                        Ok((snapshot, Ok(()))) => snapshot,
                        Ok((_, Err(e))) => {
                            self.fail(format!("restoring the state machine from a snapshot: {e}"));
                            continue;
                        }
                        Err(_) => {
                            self.fail("the state machine's thread exited".to_owned());
                            continue;
                        }
                    };
                    match self.raft.store_mut().install_snapshot(snapshot) {
                        Ok(()) => {
                            tracing::info!(last_index = %meta.last_index, "snapshot installed");
                            // Proposals the snapshot covers: decided unless at its last index.
                            let covered: Vec<LogIndex> = self
                                .pending
                                .range(..=meta.last_index)
                                .map(|(i, _)| *i)
                                .collect();
                            for index in covered {
                                if let Some((term, timestamp_ms, reply)) =
                                    self.pending.remove(&index)
                                {
                                    reply.send(if index == meta.last_index {
                                        if term == meta.last_term {
                                            Ok(Decided {
                                                index,
                                                term,
                                                timestamp_ms,
                                                program: None,
                                            })
                                        } else {
                                            Err(ProposalError::Lost)
                                        }
                                    } else {
                                        Err(ProposalError::Unknown)
                                    });
                                }
                            }
                            // The log restarts after the snapshot: earlier writes are gone.
                            self.appended = None;
                            self.raft.handle_snapshot_persisted(now, meta.last_index);
                        }
                        Err(e) => self.fail(format!("installing a snapshot: {e}")),
                    }
                }
                Output::StateChanged { role, term, leader } => {
                    tracing::info!(?role, %term, ?leader, "group state changed");
                }
            }
        }
    }

    /// An entry at `index` with `term` was applied: answers the proposal at that index.
    fn decide(&mut self, index: LogIndex, term: Term, mut program: Option<ProgramOutcome>) {
        // Apply is contiguous: anything pending below `index` was covered already (defensive).
        while let Some(entry) = self.pending.first_entry() {
            if *entry.key() > index {
                break;
            }
            let (at, (proposed_term, timestamp_ms, reply)) = entry.remove_entry();
            reply.send(if at == index && proposed_term == term {
                Ok(Decided {
                    index,
                    term,
                    timestamp_ms,
                    program: program.take(),
                })
            } else {
                Err(ProposalError::Lost)
            });
        }
    }

    /// Group commit: one sync for everything appended this round, reported to the core, and
    /// again while reporting makes the core append more. Then publishes the status.
    fn finish_round(&mut self) {
        while self.failure.is_none() {
            let Some((index, term)) = self.appended.take() else {
                break;
            };
            let synced = match self.fsync {
                FsyncPolicy::Always => self.sync_now(),
                FsyncPolicy::Interval { .. } | FsyncPolicy::Never => {
                    self.unsynced = true;
                    Ok(())
                }
            };
            match synced {
                Ok(()) => {
                    let now = self.now();
                    self.raft.handle_persisted(now, index, term);
                    self.drain();
                }
                Err(e) => self.fail(format!("syncing the log: {e}")),
            }
        }
        if let (true, FsyncPolicy::Interval { interval_ms }) = (self.unsynced, self.fsync)
            && self.failure.is_none()
            && self.last_sync.elapsed() >= Duration::from_millis(interval_ms)
            && let Err(e) = self.sync_now()
        {
            self.fail(format!("syncing the log: {e}"));
        }
        if self.failure.is_none()
            && let Some(reason) = self.raft.store().failure()
        {
            let reason = reason.to_owned();
            self.fail(reason);
        }
        self.publish(false);
    }

    /// Asks the state machine (on the applier) what it can cover of what retention lets go,
    /// never beyond the applied index; [`Self::compact`] takes its answer. Followers behind the
    /// compacted log get that snapshot and restart their log after it.
    fn maybe_apply_retention(&mut self) {
        let Some(retention) = self.retention else {
            return;
        };
        if self.failure.is_some()
            || self.compaction_asked
            || self.last_retention.elapsed() < Duration::from_millis(retention.check_interval_ms)
        {
            return;
        }
        self.last_retention = Instant::now();
        let now_ms = TimestampMs(crate::clock::now_ms());
        let cutoff = self
            .raft
            .store()
            .retention_cutoff(now_ms, retention.bytes, retention.ms);
        let applied = self.raft.status().applied_index;
        // Asked even when retention lets nothing go: the state machine does its own upkeep.
        self.compaction_asked = true;
        self.queue_for_applier(Job::Compaction(cutoff.min(applied)));
    }

    /// Compacts the log through the index the state machine offered for `upto`, with its
    /// snapshot data (unless the log moved past it meanwhile).
    fn compact(&mut self, upto: LogIndex, offer: Option<(LogIndex, Vec<u8>)>) {
        let Some((index, data)) = offer else {
            return;
        };
        if self.failure.is_some() {
            return;
        }
        if index > upto {
            tracing::warn!(%index, %upto, "state machine offered a snapshot beyond the retention cutoff; not compacting");
            return;
        }
        let snapshot_index = self.raft.store().first_index().0 - 1;
        if index.0 <= snapshot_index {
            return;
        }
        let (Some(term), Some(membership)) = (
            self.raft.store().term(index),
            self.raft.membership_at(index),
        ) else {
            tracing::debug!(%index, "retention: no term or membership known at the cutoff; later");
            return;
        };
        let snapshot = weir_raft::Snapshot {
            meta: weir_raft::SnapshotMeta {
                last_index: index,
                last_term: term,
                membership,
            },
            data,
        };
        match self.raft.store_mut().compact(snapshot) {
            Ok(()) => {
                tracing::info!(%index, "retention compacted the log");
                let now = self.now();
                self.raft.handle_compacted(now);
                self.drain();
                self.publish(false);
            }
            Err(e) => self.fail(format!("compacting the log: {e}")),
        }
    }

    fn sync_now(&mut self) -> Result<(), crate::group_store::GroupStoreError> {
        self.syncs += 1;
        self.last_sync = Instant::now();
        self.unsynced = false;
        self.raft.store_mut().sync().map(|_| ())
    }

    fn fail(&mut self, reason: String) {
        if self.failure.is_some() {
            return;
        }
        tracing::error!(error = %reason, "group storage failed; the group stops taking part");
        for (_, (_, _, reply)) in std::mem::take(&mut self.pending) {
            reply.send(Err(ProposalError::Storage(reason.clone())));
        }
        self.appended = None;
        self.failure = Some(reason);
    }

    fn publish(&self, stopped: bool) {
        let status = status_of(
            self.group,
            &self.raft,
            self.pending.len(),
            self.syncs,
            self.failure.clone(),
            stopped,
        );
        *lock(&self.shared.status) = status;
        self.shared.changed.notify_all();
    }

    fn shutdown(mut self) {
        if self.failure.is_none()
            && let Err(e) = self.raft.store_mut().sync()
        {
            tracing::error!(error = %e, "final sync failed");
        }
        // The applier finishes what it was given; proposals it applied are answered.
        let _ = self.jobs.send(Job::Stop);
        if let Some(applier) = self.applier.take()
            && applier.join().is_err()
        {
            tracing::error!("the state machine's thread panicked");
        }
        while let Ok(input) = self.rx.try_recv() {
            if let Input::Applied { entries, outcomes } = input {
                self.answer_applied(&entries, outcomes);
            }
        }
        // Pending and still-queued proposals answer `Stopped` as their replies drop.
        self.pending.clear();
        self.publish(true);
        tracing::debug!(last_index = %self.raft.store().last_index(), "group stopped");
    }
}
