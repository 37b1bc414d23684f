//! A programmable topic on one replica: its program (weir-topic-runtime), fed by the topic
//! group's apply path; the event log its listeners read; its durable snapshots.
//!
//! Layout under the group's directory: `events/` (a weir-storage log of event records),
//! `program/snapshots/` (program checkpoints, with this module's bookkeeping as their extra
//! bytes) and `program/specs/<id>.spec` (every program version ever switched to: module and
//! config, so a restart finds the one its snapshot names).
//!
//! The event log is derived data: it is written without fsync, and synced only before a
//! snapshot is saved, so every durable snapshot has its events durable below it. On start, the
//! newest snapshot is restored, the event log is cut back to the snapshot's position, and the
//! group re-applies the input log after it, which regenerates exactly the events that were cut
//! (programs are deterministic).
//!
//! Compaction: the input log is compacted below a durable program snapshot ([`ProgramReplica::
//! compaction`]): the Raft snapshot then carries that program snapshot ([`Shipped`]: state,
//! bookkeeping and the program version's spec), so a replica that lacks the compacted inputs
//! installs it ([`ProgramReplica::restore`]) and continues from there. The snapshot used is the
//! one that was newest at the previous compaction, so the inputs of about one segment stay for
//! followers to catch up from before they need a snapshot. The event log keeps the topic's
//! retention (size, age), never above the newest durable snapshot's position.
//!
//! Reserved program config keys (`weir.checkpoint.inputs`, `weir.checkpoint.bytes`,
//! `weir.checkpoint.ms`) set the checkpoint schedule: they are part of the replicated spec, so
//! every replica checkpoints at the same inputs; they are not passed to the program.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use weir_proto::entry::{EventRecord, TopicEntry, decode_topic_entry, encode_event_record};
use weir_proto::{Offset, ProgramInfo, ProgramOutcome, ProgramSpec, TimestampMs, codec};
use weir_raft::{Entry, LogIndex, Payload};
use weir_storage::{FsyncPolicy, Log, LogConfig, LogReader};
use weir_topic_runtime::{
    Checkpoint, CheckpointSchedule, EventKind, Input, Limits, ModuleHash, Outcome, Program,
    ProgramModule, Runtime, SnapshotStore, UpgradeError,
};

use crate::group::Applied;

/// The process's one Wasm runtime (one engine, one linker, one module cache).
pub(crate) fn runtime() -> Result<Arc<Runtime>, String> {
    static RUNTIME: OnceLock<Result<Arc<Runtime>, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| Runtime::new(Limits::default()).map_err(|e| e.to_string()))
        .clone()
}

/// The largest Raft snapshot of a program (state, bookkeeping, module) a compaction makes: it
/// travels to a follower in one peer message. A larger state is still snapshotted locally, but
/// its input log is not compacted (chunked snapshot transfer does not exist yet).
pub(crate) const SHIPPED_SNAPSHOT_BYTES_MAX: usize =
    crate::peer::PEER_MESSAGE_BYTES_MAX - 64 * 1024;

/// Prefix of the program config keys weir reads itself (never passed to the program).
pub(crate) const RESERVED_CONFIG_PREFIX: &str = "weir.";

/// Splits a spec's config into the program's own keys and the checkpoint schedule the
/// reserved keys set (defaults otherwise). An unknown reserved key or a bad value is an error.
pub(crate) fn split_config(
    spec: &ProgramSpec,
) -> Result<(Vec<(String, String)>, CheckpointSchedule), String> {
    let mut schedule = CheckpointSchedule::default();
    let mut config = Vec::with_capacity(spec.config.len());
    for (key, value) in &spec.config {
        let Some(name) = key.strip_prefix(RESERVED_CONFIG_PREFIX) else {
            config.push((key.clone(), value.clone()));
            continue;
        };
        let field = match name {
            "checkpoint.inputs" => &mut schedule.every_inputs,
            "checkpoint.bytes" => &mut schedule.every_input_bytes,
            "checkpoint.ms" => &mut schedule.every_ms,
            _ => {
                return Err(format!(
                    "unknown reserved config key {key:?} (weir reads weir.checkpoint.inputs, \
                     weir.checkpoint.bytes and weir.checkpoint.ms)"
                ));
            }
        };
        *field = match value.parse::<u64>() {
            Ok(n) if n > 0 => n,
            _ => {
                return Err(format!(
                    "{key} must be a whole number above 0, got {value:?}"
                ));
            }
        };
    }
    Ok((config, schedule))
}

/// Durable snapshots are saved at most this often (checkpoints in between stay in memory; a
/// restart from an older one replays a little more, to the same result).
const SNAPSHOT_SAVE_INTERVAL_MS: u64 = 1_000;

/// Identifies a program version: SHA-256 of the module and its config.
fn spec_id(spec: &ProgramSpec) -> Result<[u8; 32], String> {
    let config = codec::encode(&spec.config).map_err(|e| e.to_string())?;
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    context.update(&(spec.module.len() as u64).to_le_bytes());
    context.update(&spec.module);
    context.update(&config);
    let mut id = [0u8; 32];
    id.copy_from_slice(context.finish().as_ref());
    Ok(id)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a snapshot's extra bytes hold (codec-encoded).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct Bookkeeping {
    /// Event-log offset after the events of the inputs the snapshot includes.
    events_next: u64,
    spec_id: [u8; 32],
    version: u64,
    deployed_at: Option<u64>,
    inputs_accepted: u64,
    inputs_rejected: u64,
}

/// A program snapshot as a Raft snapshot's data (codec-encoded): everything a replica that
/// lacks the inputs up to `after_offset` needs to continue after it.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct Shipped {
    format: u8,
    after_offset: u64,
    module: [u8; 32],
    state: Option<Vec<u8>>,
    book: Bookkeeping,
    spec: ProgramSpec,
}

const SHIPPED_FORMAT: u8 = 1;

/// A durable program snapshot held in memory for compaction.
#[derive(Clone, Debug)]
struct Saved {
    checkpoint: Checkpoint,
    book: Bookkeeping,
}

impl Saved {
    /// The input offset the snapshot includes (checkpoints without one are never kept).
    fn after(&self) -> u64 {
        self.checkpoint.after_offset.unwrap_or(0)
    }
}

/// Retention of a programmable topic's event log (the topic's `retention_*`).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct EventRetention {
    pub bytes: Option<u64>,
    pub ms: Option<u64>,
}

enum State {
    Running(Box<Program>),
    /// Stopped on this replica; the reason says why. Inputs are rejected with it until a
    /// program switch with `reset_state` replaces it.
    Halted(String),
}

pub(crate) struct ProgramReplica {
    topic: String,
    runtime: Arc<Runtime>,
    specs_dir: PathBuf,
    snapshots: SnapshotStore,
    events: Log,
    events_tx: watch::Sender<Offset>,
    state: State,
    spec: ProgramSpec,
    /// Now.
    book: Bookkeeping,
    /// As of the program's newest checkpoint: what its snapshot records.
    checkpoint_book: Bookkeeping,
    /// Last input offset processed (state includes it); entries up to it are skipped on replay.
    applied_through: Option<u64>,
    /// `after_offset` of the last checkpoint saved durably, and when.
    saved: Option<u64>,
    saved_at: Option<Instant>,
    /// The newest durable snapshot (with an input offset).
    newest_saved: Option<Saved>,
    /// The snapshot the next compaction uses, once the retention cutoff passes it: the one
    /// that was newest at the previous compaction.
    candidate: Option<Saved>,
    /// Input offset the last compaction covered.
    compacted_through: Option<u64>,
    event_retention: EventRetention,
}

impl std::fmt::Debug for ProgramReplica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProgramReplica")
            .field("topic", &self.topic)
            .field("applied_through", &self.applied_through)
            .finish_non_exhaustive()
    }
}

fn io_error(what: &str, e: impl std::fmt::Display) -> String {
    format!("{what}: {e}")
}

impl ProgramReplica {
    /// Opens the replica's program side. `created_with` is the program the topic was created
    /// with (used when there is no snapshot yet).
    pub fn open(
        topic: &str,
        group_dir: &Path,
        created_with: &ProgramSpec,
        segment_bytes_max: u64,
        event_retention: EventRetention,
    ) -> Result<Self, String> {
        let runtime = runtime()?;
        let specs_dir = group_dir.join("program").join("specs");
        std::fs::create_dir_all(&specs_dir).map_err(|e| io_error("creating program/specs", e))?;
        let snapshots = SnapshotStore::open(group_dir.join("program").join("snapshots"))
            .map_err(|e| e.to_string())?;
        let events_dir = group_dir.join("events");
        let mut events = Log::open(
            &events_dir,
            LogConfig {
                segment_bytes_max,
                // Derived from the input log: synced before each snapshot, not per event.
                fsync: FsyncPolicy::Never,
                ..LogConfig::default()
            },
        )
        .map_err(|e| io_error("opening the event log", e))?;
        let newest = snapshots.load_newest().map_err(|e| e.to_string())?;
        let (spec, book, checkpoint) = match newest {
            Some((checkpoint, extra)) => {
                let book: Bookkeeping = codec::decode(&extra)
                    .map_err(|e| format!("program snapshot bookkeeping: {e}"))?;
                let spec = read_spec(&specs_dir, &book.spec_id)?;
                (spec, book, Some(checkpoint))
            }
            None => {
                let id = spec_id(created_with)?;
                write_spec(&specs_dir, &id, created_with)?;
                let book = Bookkeeping {
                    events_next: 0,
                    spec_id: id,
                    version: 1,
                    deployed_at: None,
                    inputs_accepted: 0,
                    inputs_rejected: 0,
                };
                (created_with.clone(), book, None)
            }
        };
        // Cut the event log back to the snapshot: what follows is regenerated by replay.
        let events_next = Offset(book.events_next);
        if events.next_offset() < events_next {
            return Err(format!(
                "event log in {} ends at offset {} but the program snapshot says {}: events are missing",
                events_dir.display(),
                events.next_offset(),
                events_next
            ));
        }
        if events.start_offset() > events_next {
            return Err(format!(
                "event log in {} starts at offset {}, after the snapshot's position {}",
                events_dir.display(),
                events.start_offset(),
                events_next
            ));
        }
        events
            .truncate_from(events_next)
            .map_err(|e| io_error("cutting the event log back to the snapshot", e))?;
        events
            .commit()
            .map_err(|e| io_error("committing the event log", e))?;
        let (events_tx, _) = watch::channel(events.reader().committed_offset());
        let applied_through = checkpoint.as_ref().and_then(|c| c.after_offset);
        let saved = applied_through;
        let newest_saved = checkpoint
            .as_ref()
            .filter(|c| c.after_offset.is_some())
            .map(|c| Saved {
                checkpoint: c.clone(),
                book: book.clone(),
            });
        let state = start_program(&runtime, &spec, checkpoint);
        if let State::Halted(reason) = &state {
            tracing::error!(%topic, %reason, "topic program cannot start on this replica");
        }
        Ok(Self {
            topic: topic.to_owned(),
            runtime,
            specs_dir,
            snapshots,
            events,
            events_tx,
            state,
            spec,
            checkpoint_book: book.clone(),
            book,
            applied_through,
            saved,
            saved_at: None,
            candidate: newest_saved.clone(),
            newest_saved,
            compacted_through: None,
            event_retention,
        })
    }

    /// Last input offset the program's state includes.
    pub fn applied_through(&self) -> Option<u64> {
        self.applied_through
    }

    /// The input log may be compacted through Raft index `upto` (the retention cutoff, at most
    /// the applied index): the index of a durable program snapshot at or below it and that
    /// snapshot as Raft snapshot data, if there is one not used yet. Also saves a pending
    /// checkpoint and applies the event log's retention (called every retention check).
    pub fn compaction(&mut self, upto: LogIndex) -> Option<(LogIndex, Vec<u8>)> {
        // A topic that went quiet saves its last checkpoint here (apply saves at most once a
        // second, so the last one of a burst waits for this).
        self.maybe_save();
        self.apply_event_retention();
        let fresh = |saved: &Option<Saved>, done: Option<u64>| {
            saved
                .as_ref()
                .is_some_and(|s| done.is_none_or(|done| s.after() > done))
        };
        if !fresh(&self.candidate, self.compacted_through) {
            self.candidate = self.newest_saved.clone();
            return None;
        }
        let candidate = self.candidate.as_ref()?;
        // Entry i is at input offset i - 1.
        let index = LogIndex(candidate.after() + 1);
        if index > upto {
            return None; // the cutoff has not passed it yet: inputs after it stay
        }
        let shipped = self.ship(candidate);
        // Whatever happens, the next compaction waits for the snapshot that is newest now.
        self.candidate = self.newest_saved.clone();
        match shipped {
            Ok(data) => {
                self.compacted_through = Some(index.0 - 1);
                tracing::debug!(topic = %self.topic, %index, bytes = data.len(), "input log compaction point");
                Some((index, data))
            }
            Err(reason) => {
                tracing::warn!(topic = %self.topic, %reason, "input log not compacted");
                None
            }
        }
    }

    fn ship(&self, saved: &Saved) -> Result<Vec<u8>, String> {
        let spec = read_spec(&self.specs_dir, &saved.book.spec_id)?;
        let shipped = Shipped {
            format: SHIPPED_FORMAT,
            after_offset: saved.after(),
            module: saved.checkpoint.module.0,
            state: saved.checkpoint.state.as_deref().cloned(),
            book: saved.book.clone(),
            spec,
        };
        let data = codec::encode(&shipped).map_err(|e| e.to_string())?;
        if data.len() > SHIPPED_SNAPSHOT_BYTES_MAX {
            return Err(format!(
                "the program snapshot is {} bytes, above SHIPPED_SNAPSHOT_BYTES_MAX ({SHIPPED_SNAPSHOT_BYTES_MAX})",
                data.len()
            ));
        }
        Ok(data)
    }

    /// Installs a program snapshot from the leader (the data of a Raft snapshot a compaction
    /// made): state, bookkeeping and spec, durably, and the event log restarts at its position
    /// if this replica's events do not reach it (events below it are then not on this
    /// replica). Nothing changes if the program is already past it. An error is an I/O error
    /// or data that does not decode: the group stops.
    pub fn restore(&mut self, data: &[u8]) -> Result<(), String> {
        if data.is_empty() {
            return Err("the snapshot holds no program state (it was taken without one)".into());
        }
        let shipped: Shipped =
            codec::decode(data).map_err(|e| format!("program snapshot does not decode: {e}"))?;
        if shipped.format != SHIPPED_FORMAT {
            return Err(format!(
                "program snapshot format {} is not known here",
                shipped.format
            ));
        }
        if self
            .applied_through
            .is_some_and(|done| done >= shipped.after_offset)
        {
            return Ok(());
        }
        let id = spec_id(&shipped.spec)?;
        if id != shipped.book.spec_id {
            return Err("program snapshot's spec does not match its bookkeeping".into());
        }
        write_spec(&self.specs_dir, &id, &shipped.spec)?;
        let checkpoint = Checkpoint {
            after_offset: Some(shipped.after_offset),
            module: ModuleHash(shipped.module),
            state: shipped.state.map(Arc::new),
        };
        let book = shipped.book;
        let events_next = Offset(book.events_next);
        if self.events.next_offset() != events_next {
            tracing::info!(
                topic = %self.topic,
                from = %self.events.next_offset(),
                to = %events_next,
                "event log restarts at the installed snapshot's position"
            );
            self.events
                .reset_to(events_next)
                .map_err(|e| io_error("restarting the event log", e))?;
        }
        let extra = codec::encode(&book).map_err(|e| e.to_string())?;
        self.snapshots
            .save(&checkpoint, &extra)
            .map_err(|e| e.to_string())?;
        let state = start_program(&self.runtime, &shipped.spec, Some(checkpoint.clone()));
        if let State::Halted(reason) = &state {
            tracing::error!(topic = %self.topic, %reason, "topic program cannot start from the installed snapshot");
        }
        tracing::info!(topic = %self.topic, after_offset = shipped.after_offset, "program snapshot installed");
        self.state = state;
        self.spec = shipped.spec;
        self.book = book.clone();
        self.checkpoint_book = book.clone();
        self.applied_through = Some(shipped.after_offset);
        self.saved = Some(shipped.after_offset);
        self.saved_at = Some(Instant::now());
        self.newest_saved = Some(Saved { checkpoint, book });
        self.candidate = self.newest_saved.clone();
        self.events_tx
            .send_replace(self.events.reader().committed_offset());
        Ok(())
    }

    /// Deletes the event log's oldest whole segments the topic's retention lets go, never at
    /// or above the newest durable snapshot's position (a restart regenerates events from
    /// there, so those must stay).
    fn apply_event_retention(&mut self) {
        let EventRetention { bytes, ms } = self.event_retention;
        if bytes.is_none() && ms.is_none() {
            return;
        }
        let Some(durable) = self.newest_saved.as_ref().map(|s| s.book.events_next) else {
            return;
        };
        let now_ms = TimestampMs(crate::clock::now_ms());
        let cutoff = self
            .events
            .retention_cutoff(now_ms, bytes, ms)
            .min(Offset(durable));
        if cutoff <= self.events.start_offset() {
            return;
        }
        match self.events.remove_segments_below(cutoff) {
            Ok(report) if report.deleted_segments > 0 => {
                tracing::info!(topic = %self.topic, segments = report.deleted_segments, bytes = report.deleted_bytes, "event log retention")
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(topic = %self.topic, error = %e, "event log retention failed; will retry")
            }
        }
    }

    /// A reader of the event log and the watch of its committed offset (listeners read below).
    pub fn events(&self) -> (LogReader, watch::Receiver<Offset>) {
        (self.events.reader(), self.events_tx.subscribe())
    }

    /// The apply path: committed entries of the input log, in order, each once.
    pub fn apply(&mut self, entries: &[Entry]) -> Applied {
        let mut applied = Vec::new();
        let mut batch: Vec<(LogIndex, weir_proto::entry::StoredEntry)> = Vec::new();
        for entry in entries {
            let offset = entry.index.0 - 1;
            if self.applied_through.is_some_and(|done| offset <= done) {
                continue; // in the restored state already
            }
            let Payload::Normal(data) = &entry.payload else {
                continue;
            };
            match decode_topic_entry(data) {
                Ok(TopicEntry::Message(message)) => batch.push((entry.index, message)),
                Ok(TopicEntry::Program {
                    spec, reset_state, ..
                }) => {
                    self.flush(&mut batch, &mut applied);
                    let outcome = self.switch(offset, spec, reset_state);
                    applied.push((entry.index, outcome));
                }
                Err(e) => {
                    self.flush(&mut batch, &mut applied);
                    // The same bytes on every replica: the same rejection.
                    self.book.inputs_rejected += 1;
                    self.applied_through = Some(offset);
                    applied.push((
                        entry.index,
                        ProgramOutcome::Rejected {
                            message: format!("entry does not decode: {e}"),
                        },
                    ));
                }
            }
        }
        self.flush(&mut batch, &mut applied);
        match self.events.commit() {
            Ok(committed) => {
                self.events_tx.send_replace(committed);
            }
            Err(e) => self.halt(format!("event log failed: {e}")),
        }
        self.maybe_save();
        applied
    }

    /// Runs the program on the pending messages and appends their events.
    fn flush(
        &mut self,
        batch: &mut Vec<(LogIndex, weir_proto::entry::StoredEntry)>,
        applied: &mut Applied,
    ) {
        if batch.is_empty() {
            return;
        }
        let inputs: Vec<Input<'_>> = batch
            .iter()
            .map(|(index, m)| Input {
                offset: index.0 - 1,
                timestamp_ms: m.timestamp_ms.0,
                key: m.key.as_deref().unwrap_or(&[]),
                value: &m.value,
            })
            .collect();
        let outcomes = match &mut self.state {
            State::Running(program) => match program.process(&inputs) {
                Ok(outcomes) => Ok(outcomes),
                Err(e) => Err(e.to_string()),
            },
            State::Halted(reason) => Err(reason.clone()),
        };
        let outcomes = match outcomes {
            Ok(outcomes) => outcomes,
            Err(reason) => {
                self.halt(reason.clone());
                vec![Outcome::Rejected(format!("program halted: {reason}")); inputs.len()]
            }
        };
        drop(inputs);
        let mut record = Vec::new();
        for ((index, message), outcome) in batch.drain(..).zip(outcomes) {
            let offset = index.0 - 1;
            let reply = match outcome {
                Outcome::Accepted(events) => {
                    let first_event = self.events.next_offset();
                    let count = events.len() as u32;
                    for event in events {
                        record.clear();
                        let tombstone = event.kind == EventKind::Delete;
                        let encoded = encode_event_record(
                            &EventRecord {
                                source_offset: Offset(offset),
                                key: event.key,
                                value: event.value,
                                tombstone,
                            },
                            &mut record,
                        );
                        let appended = encoded.map_err(|e| e.to_string()).and_then(|()| {
                            self.events
                                .append(TimestampMs(message.timestamp_ms.0), &record)
                                .map_err(|e| e.to_string())
                        });
                        if let Err(e) = appended {
                            self.halt(format!("event log failed: {e}"));
                            break;
                        }
                    }
                    self.book.inputs_accepted += 1;
                    ProgramOutcome::Accepted {
                        first_event,
                        events: count,
                    }
                }
                Outcome::Rejected(message) => {
                    self.book.inputs_rejected += 1;
                    ProgramOutcome::Rejected { message }
                }
            };
            self.applied_through = Some(offset);
            self.note_checkpoint(offset);
            applied.push((index, reply));
        }
    }

    /// After input `offset`: if the program checkpointed right there, its bookkeeping is what
    /// we have now.
    fn note_checkpoint(&mut self, offset: u64) {
        if let State::Running(program) = &self.state
            && program.checkpoint().after_offset == Some(offset)
        {
            self.book.events_next = self.events.next_offset().0;
            self.checkpoint_book = self.book.clone();
        }
    }

    /// A program switch at input offset `offset`.
    fn switch(&mut self, offset: u64, spec: ProgramSpec, reset_state: bool) -> ProgramOutcome {
        self.applied_through = Some(offset);
        let rejected = |message: String| ProgramOutcome::Rejected { message };
        let module = match self.runtime.load(&spec.module) {
            Ok(module) => module,
            Err(e) => return rejected(format!("module refused: {e}")),
        };
        let id = match spec_id(&spec)
            .and_then(|id| write_spec(&self.specs_dir, &id, &spec).map(|()| id))
        {
            Ok(id) => id,
            Err(e) => {
                self.halt(e.clone());
                return rejected(e);
            }
        };
        let (config, schedule) = match split_config(&spec) {
            Ok(split) => split,
            Err(e) => return rejected(e),
        };
        let result = match &mut self.state {
            State::Running(program) => match program.upgrade(module, config, reset_state, offset) {
                Ok(()) => {
                    program.set_schedule(schedule);
                    Ok(())
                }
                Err(UpgradeError::Refused(e)) => Err(e.to_string()),
                Err(UpgradeError::Current(e)) => {
                    let reason = e.to_string();
                    self.halt(reason.clone());
                    return rejected(reason);
                }
            },
            State::Halted(reason) if !reset_state => Err(format!(
                "the program halted ({reason}); deploy with reset_state to start over"
            )),
            State::Halted(_) => self.fresh(module, config, schedule),
        };
        match result {
            Ok(()) => {
                tracing::info!(topic = %self.topic, offset, module = %module_hash(&self.state), "program switched");
                self.spec = spec;
                self.book.spec_id = id;
                self.book.version += 1;
                self.book.deployed_at = Some(offset);
                self.book.events_next = self.events.next_offset().0;
                self.checkpoint_book = self.book.clone();
                // Persist the switch now: a restart must not run the old version past it.
                self.saved_at = None;
                ProgramOutcome::Accepted {
                    first_event: self.events.next_offset(),
                    events: 0,
                }
            }
            Err(message) => {
                self.note_checkpoint(offset);
                rejected(message)
            }
        }
    }

    fn fresh(
        &mut self,
        module: ProgramModule,
        config: Vec<(String, String)>,
        schedule: CheckpointSchedule,
    ) -> Result<(), String> {
        let program = Program::start(self.runtime.clone(), module, config, schedule, None)
            .map_err(|e| e.to_string())?;
        self.state = State::Running(Box::new(program));
        Ok(())
    }

    fn halt(&mut self, reason: String) {
        if let State::Running(_) = self.state {
            tracing::error!(topic = %self.topic, %reason, "topic program halted on this replica");
            self.state = State::Halted(reason);
        }
    }

    /// Saves the newest checkpoint durably if it is new and the last save is old enough.
    fn maybe_save(&mut self) {
        let State::Running(program) = &self.state else {
            return;
        };
        let checkpoint = program.checkpoint();
        if checkpoint.after_offset.is_none() || checkpoint.after_offset == self.saved {
            return;
        }
        if self
            .saved_at
            .is_some_and(|at| at.elapsed() < Duration::from_millis(SNAPSHOT_SAVE_INTERVAL_MS))
        {
            return;
        }
        let result = (|| {
            let extra = codec::encode(&self.checkpoint_book).map_err(|e| e.to_string())?;
            // Events below the snapshot's position must be durable before it is.
            self.events.sync().map_err(|e| e.to_string())?;
            self.snapshots
                .save(checkpoint, &extra)
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(())
        })();
        match result {
            Ok(()) => {
                self.saved = checkpoint.after_offset;
                self.saved_at = Some(Instant::now());
                self.newest_saved = Some(Saved {
                    checkpoint: checkpoint.clone(),
                    book: self.checkpoint_book.clone(),
                });
                if self.candidate.is_none() {
                    self.candidate = self.newest_saved.clone();
                }
            }
            Err(e) => {
                tracing::warn!(topic = %self.topic, error = %e, "saving a program snapshot failed; will retry")
            }
        }
    }

    /// For `weir program show`.
    pub fn info(&mut self) -> ProgramInfo {
        let (module_hash, state_hash, failure) = match &mut self.state {
            State::Running(program) => {
                let module = program.module().hash().to_string();
                match program.state() {
                    Ok(state) => (module, ModuleHash::of(&state).to_string(), None),
                    Err(e) => (module, String::new(), Some(e.to_string())),
                }
            }
            State::Halted(reason) => (
                ModuleHash::of(&self.spec.module).to_string(),
                String::new(),
                Some(reason.clone()),
            ),
        };
        ProgramInfo {
            topic: self.topic.clone(),
            module_hash,
            version: self.book.version,
            config: self.spec.config.clone(),
            deployed_at_offset: self.book.deployed_at.map(Offset),
            applied_offset: self.applied_through.map(Offset),
            next_event_offset: self.events.next_offset(),
            first_event_offset: self.events.start_offset(),
            snapshot_offset: self.saved.map(Offset),
            state_hash,
            inputs_accepted: self.book.inputs_accepted,
            inputs_rejected: self.book.inputs_rejected,
            failure,
        }
    }
}

/// Starts the program of `spec` (fresh, or from `checkpoint`), or the reason it cannot run.
fn start_program(
    runtime: &Arc<Runtime>,
    spec: &ProgramSpec,
    checkpoint: Option<Checkpoint>,
) -> State {
    let (config, schedule) = match split_config(spec) {
        Ok(split) => split,
        Err(e) => return State::Halted(e),
    };
    match runtime.load(&spec.module) {
        Ok(module) => match Program::start(runtime.clone(), module, config, schedule, checkpoint) {
            Ok(program) => State::Running(Box::new(program)),
            Err(e) => State::Halted(e.to_string()),
        },
        Err(e) => State::Halted(format!("module refused: {e}")),
    }
}

fn module_hash(state: &State) -> String {
    match state {
        State::Running(program) => program.module().hash().to_string(),
        State::Halted(_) => "-".into(),
    }
}

fn spec_path(dir: &Path, id: &[u8; 32]) -> PathBuf {
    dir.join(format!("{}.spec", hex(id)))
}

fn write_spec(dir: &Path, id: &[u8; 32], spec: &ProgramSpec) -> Result<(), String> {
    let path = spec_path(dir, id);
    if path.exists() {
        return Ok(());
    }
    let bytes = codec::encode(spec).map_err(|e| e.to_string())?;
    let temporary = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(&bytes)?;
        file.sync_data()?;
        std::fs::rename(&temporary, &path)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| io_error(&format!("writing {}", path.display()), e))
}

fn read_spec(dir: &Path, id: &[u8; 32]) -> Result<ProgramSpec, String> {
    let path = spec_path(dir, id);
    let bytes =
        std::fs::read(&path).map_err(|e| io_error(&format!("reading {}", path.display()), e))?;
    let spec: ProgramSpec =
        codec::decode(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    if spec_id(&spec)? != *id {
        return Err(format!(
            "{} does not match its name (corrupt)",
            path.display()
        ));
    }
    Ok(spec)
}

/// Validates a module for upload (create or deploy) with the process's runtime.
pub(crate) fn validate(spec: &ProgramSpec) -> Result<(), String> {
    split_config(spec)?;
    let runtime = runtime()?;
    runtime
        .load(&spec.module)
        .map(|_| ())
        .map_err(|e| e.to_string())
}
