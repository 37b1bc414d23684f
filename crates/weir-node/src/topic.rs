//! One topic replica on this node: its Raft group ([`GroupHandle`] over a [`GroupStore`] in
//! `data_dir/groups/<group>/`) and the committed-offset watch that listeners follow.
//!
//! - [`Topic::append`] is the one path by which messages enter the log: a proposal to the
//!   group, answered once the entry is committed (durable on a majority) and applied here.
//! - The group's `on_apply` is the one path by which entries become visible: it advances the
//!   committed watch. Programmable topics hook in there: committed input → program → events.
//!
//! Offsets: the entry at Raft index `i` is at offset `i - 1`. Leader no-ops and membership
//! entries hold offsets but no message; listeners skip them.

use crate::catalog::TopicEntry;
use crate::config::NodeConfig;
use crate::group::{
    Applied, Decided, GroupConfig, GroupHandle, GroupStatus, PROPOSALS_PENDING_MAX, ProposalError,
    StateMachine, Transport,
};
use crate::group_store::GroupStore;
use crate::peer::GroupId;
use crate::producers::{self, ProducerAdmission, ProducerTable, Verdict};
use crate::program::{self, ProgramReplica};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use weir_proto::{
    Committed, ErrorCode, ErrorReply, FollowerStatus, LeaderHint, Offset, ProgramInfo,
    ProgramOutcome, ProgramSpec, RaftStatus, Reply, RequestId, ServerFrame, TimestampMs,
    TopicConfig, TopicStatus,
};
use weir_raft::{Entry, LogIndex, LogStore, Membership, NodeId, Payload, ProposeError, Role};
use weir_storage::{LogConfig, LogReader};

/// Most PUTs of one topic replica waiting for their commit. Further PUTs wait for room (their
/// stream is not read meanwhile: backpressure on the producer, as a full Kafka producer buffer
/// blocks `send`) rather than being refused; half the group's proposal limit, so a deploy or a
/// membership change always finds room.
pub const PUTS_PENDING_PER_TOPIC_MAX: usize = PROPOSALS_PENDING_MAX / 2;
/// Longest a PUT waits for room before it is answered `Busy` (retryable: nothing was written).
pub const PUT_ADMISSION_WAIT_MS_MAX: u64 = 10_000;

/// Where the reply to one PUT goes: the stream that sent it, as a frame of its own or as one
/// result of a `PutBatch` answer. Holding the permits bounds the PUTs in flight per stream and
/// per topic; they are released when the reply is handed over.
#[derive(Debug)]
pub(crate) struct ReplyTo {
    pub id: RequestId,
    pub tx: mpsc::UnboundedSender<ServerFrame>,
    pub permit: Option<OwnedSemaphorePermit>,
    /// The topic's admission permit ([`Topic::admit`]).
    pub admitted: Option<OwnedSemaphorePermit>,
    /// Set for a message of a `PutBatch`: its place in the batch's answer.
    pub batch: Option<(Arc<BatchReply>, usize)>,
}

impl ReplyTo {
    /// A reply of its own to request `id` on the stream `tx` writes to.
    pub fn frame(id: RequestId, tx: &mpsc::UnboundedSender<ServerFrame>) -> Self {
        Self {
            id,
            tx: tx.clone(),
            permit: None,
            admitted: None,
            batch: None,
        }
    }

    pub fn send(self, reply: Reply) {
        match self.batch {
            Some((batch, index)) => batch.record(index, reply),
            // The stream may be gone (client left): then nobody waits for this reply.
            None => {
                let _ = self.tx.send(ServerFrame { id: self.id, reply });
            }
        }
        drop(self.permit);
        drop(self.admitted);
    }
}

/// The answer to one `PutBatch`, filled in as its messages are answered (in any order) and
/// sent as one `CommittedBatch` frame once every message has its result. If the last
/// [`ReplyTo`] goes without answering (a bug), the missing results are sent as `Internal`.
#[derive(Debug)]
pub(crate) struct BatchReply {
    id: RequestId,
    tx: mpsc::UnboundedSender<ServerFrame>,
    /// The results so far, and how many are still missing.
    results: Mutex<(Vec<Option<weir_proto::PutResult>>, usize)>,
}

impl BatchReply {
    pub fn new(id: RequestId, tx: &mpsc::UnboundedSender<ServerFrame>, messages: usize) -> Self {
        Self {
            id,
            tx: tx.clone(),
            results: Mutex::new((vec![None; messages], messages)),
        }
    }

    fn record(&self, index: usize, reply: Reply) {
        use weir_proto::PutResult;
        let result = match reply {
            Reply::Committed(committed) => PutResult::Committed(committed),
            Reply::Error(e) => PutResult::Error(e),
            other => PutResult::Error(ErrorReply::new(
                ErrorCode::Internal,
                format!("unexpected answer to a PUT: {other:?}"),
            )),
        };
        let mut guard = self.results.lock().unwrap_or_else(|e| e.into_inner());
        let (results, missing) = &mut *guard;
        let Some(slot) = results.get_mut(index) else {
            return;
        };
        if slot.replace(result).is_none() {
            *missing -= 1;
        }
        if *missing == 0 && !results.is_empty() {
            let results: Vec<PutResult> = results.drain(..).flatten().collect();
            let _ = self.tx.send(ServerFrame {
                id: self.id,
                reply: Reply::CommittedBatch(results),
            });
        }
    }
}

impl Drop for BatchReply {
    fn drop(&mut self) {
        let (results, _) = self.results.get_mut().unwrap_or_else(|e| e.into_inner());
        if results.is_empty() {
            return; // sent
        }
        tracing::error!(id = %self.id, "a PUT of a batch was never answered");
        let results = results
            .drain(..)
            .map(|r| {
                r.unwrap_or_else(|| {
                    weir_proto::PutResult::Error(ErrorReply::new(
                        ErrorCode::Internal,
                        "this PUT was never answered; it may or may not have been committed",
                    ))
                })
            })
            .collect();
        let _ = self.tx.send(ServerFrame {
            id: self.id,
            reply: Reply::CommittedBatch(results),
        });
    }
}

/// Node id → address of every cluster member, shared with the catalog (for leader hints).
pub(crate) type Directory = Arc<RwLock<BTreeMap<u64, String>>>;

/// The hint for `leader`, if its address is known.
pub(crate) fn hint(directory: &Directory, leader: Option<NodeId>) -> Option<LeaderHint> {
    let leader = leader?;
    let nodes = directory.read().unwrap_or_else(|e| e.into_inner());
    nodes.get(&leader.0).map(|addr| LeaderHint {
        node_id: leader.0,
        addr: addr.clone(),
    })
}

/// Extracts the leader-assigned timestamp of a topic entry (for the store's record headers).
pub(crate) fn timestamp_of(payload: &Payload) -> Option<TimestampMs> {
    match payload {
        Payload::Normal(data) => weir_proto::entry::entry_timestamp(data),
        Payload::Noop | Payload::Membership(_) => None,
    }
}

/// What a topic replica needs from its node.
#[derive(Clone)]
pub(crate) struct TopicEnv {
    pub node: NodeConfig,
    pub transport: Arc<dyn Transport>,
    pub directory: Directory,
}

pub(crate) struct Topic {
    pub name: String,
    pub entry: TopicEntry,
    pub dir: PathBuf,
    directory: Directory,
    state: TopicState,
    /// [`PUTS_PENDING_PER_TOPIC_MAX`] permits, one per PUT waiting for its commit.
    admission: Arc<Semaphore>,
}

impl std::fmt::Debug for Topic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Topic")
            .field("name", &self.name)
            .field("group", &self.entry.group)
            .finish_non_exhaustive()
    }
}

enum TopicState {
    Open(OpenTopic),
    /// The group could not start (e.g. corruption); the reason names file and position.
    Failed(String),
}

struct OpenTopic {
    handle: GroupHandle,
    reader: LogReader,
    committed: watch::Receiver<Offset>,
    /// A programmable topic's program, event log and snapshots (shared with the apply path).
    program: Option<Arc<Mutex<ProgramReplica>>>,
    /// A programmable topic's event log reader and committed watch, taken once: the program's
    /// lock is held while it runs (or compiles a new module), so status and listeners must
    /// not wait for it. Both stay valid across the event log's resets.
    events: Option<(LogReader, watch::Receiver<Offset>)>,
    /// A programmable topic's latest program outcomes (shared with the apply path): what a
    /// resent PUT is answered with.
    outcomes: Option<Arc<Mutex<RecentOutcomes>>>,
}

/// Program outcomes remembered per topic for answering resent PUTs: a producer has at most a
/// few batches in flight (4 of up to 1,024 PUTs with the weir client), so a resend finds its
/// PUT's outcome here unless the replica restarted since it was applied.
pub const PROGRAM_OUTCOMES_RECENT_MAX: usize = 16 * 1024;

/// The last [`PROGRAM_OUTCOMES_RECENT_MAX`] program outcomes, by input offset. Not part of the
/// replicated state: a replica that restarted (or installed a snapshot) knows only the outcomes
/// it applied since, and answers a resend of an older PUT with its offset alone.
#[derive(Debug, Default)]
struct RecentOutcomes {
    /// Ascending offsets.
    outcomes: std::collections::VecDeque<(Offset, ProgramOutcome)>,
}

impl RecentOutcomes {
    fn push(&mut self, offset: Offset, outcome: ProgramOutcome) {
        debug_assert!(
            self.outcomes.back().is_none_or(|(last, _)| *last < offset),
            "outcomes are applied in offset order"
        );
        if self.outcomes.len() == PROGRAM_OUTCOMES_RECENT_MAX {
            self.outcomes.pop_front();
        }
        self.outcomes.push_back((offset, outcome));
    }

    fn get(&self, offset: Offset) -> Option<ProgramOutcome> {
        let i = self
            .outcomes
            .binary_search_by_key(&offset, |(o, _)| *o)
            .ok()?;
        Some(self.outcomes[i].1.clone())
    }
}

/// A topic replica's state machine: the committed watch, the producer table, and the program
/// if it has one.
struct TopicMachine {
    program: Option<Arc<Mutex<ProgramReplica>>>,
    committed_tx: watch::Sender<Offset>,
    /// Shared with the leader's check on the group thread ([`ProducerAdmission`]).
    producers: Arc<Mutex<ProducerTable>>,
    /// With a program: its outcomes, as they are applied.
    outcomes: Option<Arc<Mutex<RecentOutcomes>>>,
}

impl StateMachine for TopicMachine {
    fn apply(&mut self, entries: &[Entry]) -> Applied {
        {
            let mut table = lock(&self.producers);
            for entry in entries {
                // Entry i is at offset i - 1.
                let offset = Offset(entry.index.0 - 1);
                let put = match &entry.payload {
                    Payload::Normal(data) => weir_proto::entry::entry_producer(data)
                        .map(|put| (put, weir_proto::entry::entry_timestamp(data))),
                    Payload::Noop | Payload::Membership(_) => None,
                };
                match put {
                    Some(((producer, seq), timestamp_ms)) => table.apply(
                        offset,
                        timestamp_ms.unwrap_or(TimestampMs::ZERO),
                        producer,
                        seq,
                    ),
                    None => table.apply_other(offset),
                }
            }
        }
        let applied = match &self.program {
            Some(replica) => lock(replica).apply(entries),
            None => Vec::new(),
        };
        if let Some(outcomes) = &self.outcomes {
            let mut outcomes = lock(outcomes);
            for (index, outcome) in &applied {
                outcomes.push(Offset(index.0 - 1), outcome.clone());
            }
        }
        if let Some(last) = entries.last() {
            // Entry i is at offset i - 1: everything below offset i is committed.
            self.committed_tx.send_replace(Offset(last.index.0));
        }
        applied
    }

    /// The snapshot holds the producer table as applied now (possibly past the compaction
    /// index: a replica that installs it skips re-applying what the table holds), then the
    /// program's snapshot (nothing for a plain topic, whose state is its log).
    fn compaction(&mut self, upto: LogIndex) -> Option<(LogIndex, Vec<u8>)> {
        let (index, data) = match &self.program {
            Some(replica) => lock(replica).compaction(upto)?,
            None => (upto, Vec::new()),
        };
        Some((
            index,
            producers::encode_snapshot(&lock(&self.producers), &data),
        ))
    }

    fn restore(&mut self, snapshot: &weir_raft::Snapshot) -> Result<(), String> {
        let (table, data) = producers::decode_snapshot(&snapshot.data)
            .map_err(|e| format!("snapshot's producer table: {e}"))?;
        if let Some(replica) = &self.program {
            lock(replica).restore(data)?;
        }
        *lock(&self.producers) = table;
        // Everything through the snapshot is committed.
        self.committed_tx
            .send_replace(Offset(snapshot.meta.last_index.0));
        Ok(())
    }
}

/// What listeners of a topic read: the input log itself (plain topics) or the event log
/// (programmable topics).
pub(crate) struct TopicReader {
    pub reader: LogReader,
    /// Offsets below it are readable.
    pub committed: watch::Receiver<Offset>,
    /// Records are event records, not Raft entries.
    pub events: bool,
}

/// The directory of group `group` under the node's data directory.
pub(crate) fn group_dir(data_dir: &Path, group: u64) -> PathBuf {
    data_dir.join("groups").join(group.to_string())
}

fn log_config(node: &NodeConfig, config: &TopicConfig) -> LogConfig {
    LogConfig {
        segment_bytes_max: config.segment_bytes.unwrap_or(node.segment_bytes),
        ..LogConfig::default()
    }
}

fn retention(node: &NodeConfig, config: &TopicConfig) -> Option<crate::group::Retention> {
    let bytes = config.retention_bytes.or(node.retention_bytes);
    let ms = config.retention_ms.or(node.retention_ms);
    (bytes.is_some() || ms.is_some()).then_some(crate::group::Retention {
        bytes,
        ms,
        check_interval_ms: node.retention_check_interval_ms,
    })
}

impl Topic {
    /// Opens the replica's store and starts its group. Never fails: a replica that cannot start
    /// answers every request with `Unavailable` and the reason.
    pub fn open(env: &TopicEnv, name: String, entry: TopicEntry) -> Topic {
        let dir = group_dir(&env.node.data_dir, entry.group);
        let state = match Self::start(env, &name, &dir, &entry) {
            Ok(open) => TopicState::Open(open),
            Err(reason) => {
                tracing::error!(topic = %name, %reason, "topic replica cannot start; it will answer Unavailable");
                TopicState::Failed(reason)
            }
        };
        Topic {
            name,
            entry,
            dir,
            directory: env.directory.clone(),
            state,
            admission: Arc::new(Semaphore::new(PUTS_PENDING_PER_TOPIC_MAX)),
        }
    }

    fn start(
        env: &TopicEnv,
        name: &str,
        dir: &Path,
        entry: &TopicEntry,
    ) -> Result<OpenTopic, String> {
        let store = GroupStore::open(dir, log_config(&env.node, &entry.config), timestamp_of)
            .map_err(|e| e.to_string())?;
        let reader = store.reader();
        // Entries up to the snapshot are committed; the rest is re-applied once the group
        // learns the commit index.
        let snapshot_index = store.first_index().0 - 1;
        let (committed_tx, committed_rx) = watch::channel(Offset(snapshot_index));
        // The producer table as of the snapshot; the group re-applies the log after it.
        let snapshot_data = store.snapshot().map(|s| s.data).unwrap_or_default();
        let (table, program_data) = producers::decode_snapshot(&snapshot_data)
            .map_err(|e| format!("the snapshot's producer table: {e}"))?;
        let table = Arc::new(Mutex::new(table));
        let program = match &entry.config.program {
            Some(spec) => {
                let segment_bytes = log_config(&env.node, &entry.config).segment_bytes_max;
                let events_retention = retention(&env.node, &entry.config)
                    .map(|r| program::EventRetention {
                        bytes: r.bytes,
                        ms: r.ms,
                    })
                    .unwrap_or_default();
                let replica =
                    ProgramReplica::open(name, dir, spec, segment_bytes, events_retention)
                        .map_err(|e| format!("topic program: {e}"))?;
                Some(Arc::new(Mutex::new(replica)))
            }
            None => None,
        };
        if let Some(replica) = &program {
            let mut replica = lock(replica);
            // The program must hold every input the compacted log no longer has: if its own
            // snapshots do not reach that far (the newest was corrupt), the compaction's
            // snapshot (which carries the program's state) does.
            let covered = replica.applied_through().map_or(0, |done| done + 1);
            if covered < snapshot_index {
                replica.restore(program_data).map_err(|e| {
                    format!(
                        "topic program: the input log is compacted through offset {} but the program's state is not: {e}",
                        snapshot_index - 1
                    )
                })?;
            }
        }
        let outcomes = program
            .as_ref()
            .map(|_| Arc::new(Mutex::new(RecentOutcomes::default())));
        let machine = TopicMachine {
            program: program.clone(),
            outcomes: outcomes.clone(),
            committed_tx,
            producers: table.clone(),
        };
        let me = env.node.node_id;
        let initial = if entry.founders.contains(&me.0) {
            Membership::with_voters(entry.founders.iter().map(|&id| NodeId(id)))
        } else {
            Membership::default()
        };
        let config = GroupConfig {
            group: GroupId(entry.group),
            raft: env.node.raft_config(me.0 ^ entry.group.rotate_left(17)),
            initial,
            stamp_timestamps: true,
            fsync: env.node.fsync,
            retention: match &program {
                // A programmable topic's retention is its event log's; its input log goes
                // below the program's snapshots (whole segments, see `program`).
                Some(_) => Some(crate::group::Retention {
                    bytes: Some(0),
                    ms: None,
                    check_interval_ms: env.node.retention_check_interval_ms,
                }),
                None => retention(&env.node, &entry.config),
            },
            producers: Some(ProducerAdmission::new(table)),
        };
        let handle = GroupHandle::start(config, store, env.transport.clone(), machine)
            .map_err(|e| format!("cannot start the group thread: {e}"))?;
        let events = program.as_ref().map(|p| lock(p).events());
        Ok(OpenTopic {
            handle,
            reader,
            committed: committed_rx,
            program,
            events,
            outcomes,
        })
    }

    pub fn group(&self) -> GroupId {
        GroupId(self.entry.group)
    }

    pub fn handle(&self) -> Option<&GroupHandle> {
        match &self.state {
            TopicState::Open(o) => Some(&o.handle),
            TopicState::Failed(_) => None,
        }
    }

    fn open_state(&self) -> Result<&OpenTopic, ErrorReply> {
        match &self.state {
            TopicState::Open(o) => Ok(o),
            TopicState::Failed(reason) => Err(unavailable(&self.name, reason)),
        }
    }

    /// Room for `n` more PUTs (at most [`PUTS_PENDING_PER_TOPIC_MAX`]): waits (at most
    /// [`PUT_ADMISSION_WAIT_MS_MAX`]) while [`PUTS_PENDING_PER_TOPIC_MAX`] wait for their
    /// commit, then `Busy`. One permit per PUT goes into its [`ReplyTo`] and is released with
    /// its answer (split them off with `OwnedSemaphorePermit::split`).
    pub async fn admit(&self, n: usize) -> Result<OwnedSemaphorePermit, ErrorReply> {
        debug_assert!(
            n <= PUTS_PENDING_PER_TOPIC_MAX,
            "a batch larger than admission"
        );
        let n = u32::try_from(n.clamp(1, PUTS_PENDING_PER_TOPIC_MAX)).unwrap_or(1);
        let wait = Duration::from_millis(PUT_ADMISSION_WAIT_MS_MAX);
        match tokio::time::timeout(wait, self.admission.clone().acquire_many_owned(n)).await {
            Ok(Ok(permit)) => Ok(permit),
            // The semaphore is never closed; treated as full all the same.
            Ok(Err(_)) | Err(_) => Err(ErrorReply::new(
                ErrorCode::Busy,
                format!(
                    "{:?} has {PUTS_PENDING_PER_TOPIC_MAX} PUTs waiting for their commit and \
                     none finished within {PUT_ADMISSION_WAIT_MS_MAX} ms; retry later (nothing \
                     was written)",
                    self.name
                ),
            )),
        }
    }

    /// Proposes encoded entries (weir_proto::entry), in order and together: one write and one
    /// round of replication for all of them (see `GroupHandle::propose_batch`). Each reply
    /// goes to its [`ReplyTo`] once its entry is committed and applied here, or says why not.
    pub fn append_batch(&self, batch: Vec<(Vec<u8>, ReplyTo)>) {
        let open = match self.open_state() {
            Ok(o) => o,
            Err(e) => {
                for (_, reply) in batch {
                    reply.send(Reply::Error(e.clone()));
                }
                return;
            }
        };
        // What a failed proposal's answer needs, shared by the batch (not copied per entry).
        let context = Arc::new((
            self.name.clone(),
            self.directory.clone(),
            open.handle.clone(),
            open.outcomes.clone(),
        ));
        let proposals = batch
            .into_iter()
            .map(|(entry, reply)| {
                let context = context.clone();
                let answer: crate::group::ProposalReply = Box::new(move |result| {
                    reply.send(match result {
                        Ok(Decided {
                            index,
                            timestamp_ms,
                            program,
                            ..
                        }) => Reply::Committed(Committed {
                            offset: Offset(index.0 - 1),
                            timestamp_ms,
                            program,
                        }),
                        // Committed before: the original answer (with its program outcome if
                        // this replica still remembers it: see `RecentOutcomes`).
                        Err(ProposalError::Producer(Verdict::Duplicate(original))) => {
                            Reply::Committed(Committed {
                                offset: original.offset,
                                timestamp_ms: original.timestamp_ms,
                                program: context
                                    .3
                                    .as_ref()
                                    .and_then(|o| lock(o).get(original.offset)),
                            })
                        }
                        Err(e) => {
                            let (name, directory, handle, _) = &*context;
                            Reply::Error(proposal_error(name, e, directory, handle))
                        }
                    })
                });
                (entry, answer)
            })
            .collect();
        open.handle.propose_batch(proposals);
    }

    /// What listeners read: the log and the committed watch (offsets below it are
    /// committed), or for a programmable topic its event log.
    pub fn reader(&self) -> Result<TopicReader, ErrorReply> {
        let o = self.open_state()?;
        Ok(match &o.events {
            Some((reader, committed)) => TopicReader {
                reader: reader.clone(),
                committed: committed.clone(),
                events: true,
            },
            None => TopicReader {
                reader: o.reader.clone(),
                committed: o.committed.clone(),
                events: false,
            },
        })
    }

    /// Proposes a program switch; the reply says at which input offset it took effect, or
    /// why the new program was refused (identically on every replica).
    pub fn deploy(&self, spec: ProgramSpec, reset_state: bool, reply: ReplyTo) {
        let open = match self.open_state() {
            Ok(o) => o,
            Err(e) => return reply.send(Reply::Error(e)),
        };
        if open.program.is_none() {
            return reply.send(Reply::Error(ErrorReply::new(
                ErrorCode::InvalidArgument,
                format!(
                    "topic {:?} is not programmable (create it with a program to run one)",
                    self.name
                ),
            )));
        }
        if let Err(reason) = program::validate(&spec) {
            return reply.send(Reply::Error(ErrorReply::new(
                ErrorCode::InvalidArgument,
                format!("program refused: {reason}"),
            )));
        }
        let mut entry = Vec::with_capacity(spec.module.len() + 256);
        if let Err(e) = weir_proto::entry::encode_program_entry(&spec, reset_state, &mut entry) {
            return reply.send(Reply::Error(ErrorReply::new(
                ErrorCode::TooLarge,
                e.to_string(),
            )));
        }
        let name = self.name.clone();
        let directory = self.directory.clone();
        let handle = open.handle.clone();
        open.handle.propose(
            entry,
            Box::new(move |result| {
                reply.send(match result {
                    Ok(Decided {
                        index,
                        program: Some(ProgramOutcome::Accepted { .. }),
                        ..
                    }) => Reply::ProgramDeployed {
                        at_offset: Offset(index.0 - 1),
                    },
                    Ok(Decided {
                        program: Some(ProgramOutcome::Rejected { message }),
                        ..
                    }) => Reply::Error(ErrorReply::new(
                        ErrorCode::InvalidArgument,
                        format!("program switch refused: {message}"),
                    )),
                    Ok(Decided { program: None, .. }) => Reply::Error(ErrorReply::new(
                        ErrorCode::Internal,
                        "the program switch committed but its outcome was not recorded",
                    )),
                    Err(e) => Reply::Error(proposal_error(&name, e, &directory, &handle)),
                })
            }),
        );
    }

    /// The program as this replica runs it.
    pub fn program_info(&self) -> Result<ProgramInfo, ErrorReply> {
        let open = self.open_state()?;
        match &open.program {
            Some(program) => Ok(lock(program).info()),
            None => Err(ErrorReply::new(
                ErrorCode::InvalidArgument,
                format!("topic {:?} is not programmable", self.name),
            )),
        }
    }

    /// (oldest retained offset, committed offset).
    pub fn start_and_committed(&self) -> (Offset, Offset) {
        match &self.state {
            TopicState::Open(o) => (o.reader.start_offset(), *o.committed.borrow()),
            TopicState::Failed(_) => (Offset::ZERO, Offset::ZERO),
        }
    }

    pub fn group_status(&self) -> Option<GroupStatus> {
        self.handle().map(GroupHandle::status)
    }

    pub fn status(&self) -> TopicStatus {
        match &self.state {
            TopicState::Open(o) => {
                let s = o.handle.status();
                let (read_start_offset, read_end_offset) = match &o.events {
                    Some((reader, committed)) => (reader.start_offset(), *committed.borrow()),
                    None => (o.reader.start_offset(), *o.committed.borrow()),
                };
                TopicStatus {
                    read_start_offset,
                    read_end_offset,
                    name: self.name.clone(),
                    start_offset: o.reader.start_offset(),
                    next_offset: Offset(s.last_index.0),
                    committed_offset: *o.committed.borrow(),
                    durable_offset: Offset(s.synced_index.0.min(s.persisted_index.0)),
                    segments: s.log_stats.segments,
                    bytes: s.log_stats.bytes,
                    fsyncs: s.log_stats.fsyncs,
                    appends: s.log_stats.appends,
                    failure: s.failure.clone(),
                    raft: Some(raft_status(&s)),
                }
            }
            TopicState::Failed(reason) => TopicStatus {
                name: self.name.clone(),
                start_offset: Offset::ZERO,
                next_offset: Offset::ZERO,
                committed_offset: Offset::ZERO,
                durable_offset: Offset::ZERO,
                segments: 0,
                bytes: 0,
                fsyncs: 0,
                appends: 0,
                failure: Some(reason.clone()),
                raft: None,
                read_start_offset: Offset::ZERO,
                read_end_offset: Offset::ZERO,
            },
        }
    }

    /// Stops the group (pending PUTs answer `Unavailable`; listeners see the watch close).
    pub fn close(&self) {
        if let TopicState::Open(o) = &self.state {
            o.handle.stop();
        }
    }
}

impl Drop for Topic {
    fn drop(&mut self) {
        self.close();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A group's status in protocol form (also used for the metadata group).
pub(crate) fn raft_status(s: &GroupStatus) -> RaftStatus {
    RaftStatus {
        group: s.group.0,
        role: match s.role {
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::PreCandidate => "precandidate",
            Role::Learner => "learner",
        }
        .to_owned(),
        term: s.term.0,
        leader: s.leader.map(|l| l.0),
        commit_index: s.commit_index.0,
        applied_index: s.applied_index.0,
        last_index: s.last_index.0,
        replicas: s
            .membership
            .voters
            .iter()
            .chain(s.membership.learners.iter())
            .map(|id| id.0)
            .collect(),
        followers: s
            .peer_match
            .iter()
            .map(|(id, m)| FollowerStatus {
                node_id: id.0,
                match_index: m.0,
                lag: s.last_index.0.saturating_sub(m.0),
            })
            .collect(),
    }
}

pub(crate) fn unavailable(topic: &str, reason: &str) -> ErrorReply {
    ErrorReply::new(
        ErrorCode::Unavailable,
        format!("topic {topic:?} cannot serve: {reason}"),
    )
}

/// The client-facing error for a proposal that did not commit (or may not have).
pub(crate) fn proposal_error(
    what: &str,
    e: ProposalError,
    directory: &Directory,
    handle: &GroupHandle,
) -> ErrorReply {
    match e {
        ProposalError::NotLeader { leader_hint } => ErrorReply::not_leader(
            format!("this node does not lead {what:?}"),
            hint(directory, leader_hint),
        ),
        // Nothing was appended, or the entry was replaced: resending is safe.
        ProposalError::Lost | ProposalError::Rejected(ProposeError::TransferInProgress) => {
            ErrorReply::not_leader(
                format!(
                    "leadership of {what:?} changed before the request committed; it was not committed"
                ),
                hint(directory, handle.status().leader),
            )
        }
        ProposalError::Rejected(ProposeError::NotLeader { leader_hint }) => ErrorReply::not_leader(
            format!("this node does not lead {what:?}"),
            hint(directory, leader_hint),
        ),
        ProposalError::Busy | ProposalError::Rejected(ProposeError::Busy) => ErrorReply::new(
            ErrorCode::Busy,
            format!("{what:?} has too many requests pending; retry later"),
        ),
        ProposalError::Rejected(ProposeError::TooLarge) => ErrorReply::new(
            ErrorCode::TooLarge,
            "entry larger than the Raft entry limit",
        ),
        ProposalError::Rejected(other) => {
            ErrorReply::new(ErrorCode::Unavailable, format!("{what:?}: {other}"))
        }
        ProposalError::Stopped => ErrorReply::new(
            ErrorCode::Unavailable,
            format!(
                "{what:?} stopped on this node (deleted or shutting down); the request may or may not have committed"
            ),
        ),
        ProposalError::Unknown => ErrorReply::new(
            ErrorCode::Unavailable,
            format!("{what:?}: the outcome is unknown (a snapshot replaced the log here)"),
        ),
        ProposalError::Storage(reason) => unavailable(what, &reason),
        ProposalError::NotReady => ErrorReply::new(
            ErrorCode::Busy,
            format!(
                "the new leader of {what:?} is still applying its predecessors' entries and holds as many PUTs as it can until then; retry shortly (nothing was written)"
            ),
        ),
        ProposalError::Producer(verdict) => producer_error(what, verdict),
    }
}

/// The client-facing error for a PUT the producer check refused (nothing was written).
fn producer_error(what: &str, verdict: Verdict) -> ErrorReply {
    match verdict {
        Verdict::Gap {
            expected,
            known: true,
        } => ErrorReply::new(
            ErrorCode::OutOfOrderSequence,
            format!(
                "{what:?} expects this producer's sequence number {expected} next; send the PUTs before this one first"
            ),
        ),
        Verdict::Gap { known: false, .. } => ErrorReply::new(
            ErrorCode::OutOfOrderSequence,
            format!(
                "{what:?} does not know this producer (new, or its state expired after {} ms idle), so its first PUT must have sequence number 0",
                producers::PRODUCER_IDLE_EXPIRY_MS
            ),
        ),
        Verdict::InFlight => ErrorReply::new(
            ErrorCode::Busy,
            format!(
                "this PUT is already being committed to {what:?} (a resend of one in flight); retry to get its offset"
            ),
        ),
        Verdict::Forgotten { last_seq } => ErrorReply::new(
            ErrorCode::DuplicateSequence,
            format!(
                "this PUT was committed to {what:?} before (the producer is at sequence number {last_seq}), but its offset is no longer remembered"
            ),
        ),
        // Answered as committed by `Topic::append_batch`.
        Verdict::Duplicate(original) => ErrorReply::new(
            ErrorCode::DuplicateSequence,
            format!(
                "this PUT was committed to {what:?} before, at offset {}",
                original.offset
            ),
        ),
        Verdict::Accept => ErrorReply::new(
            ErrorCode::Internal,
            "a PUT accepted by the producer check was not proposed",
        ),
    }
}
