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

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use weir_proto::entry::{EventRecord, TopicEntry, decode_topic_entry, encode_event_record};
use weir_proto::{Offset, ProgramInfo, ProgramOutcome, ProgramSpec, TimestampMs, codec};
use weir_raft::{Entry, LogIndex, Payload};
use weir_storage::{FsyncPolicy, Log, LogConfig, LogReader};
use weir_topic_runtime::{
    CheckpointSchedule, EventKind, Input, Limits, ModuleHash, Outcome, Program, ProgramModule,
    Runtime, SnapshotStore, UpgradeError,
};

use crate::group::Applied;

/// The process's one Wasm runtime (one engine, one linker, one module cache).
pub(crate) fn runtime() -> Result<Arc<Runtime>, String> {
    static RUNTIME: OnceLock<Result<Arc<Runtime>, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| Runtime::new(Limits::default()).map_err(|e| e.to_string()))
        .clone()
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
    schedule: CheckpointSchedule,
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
        let schedule = CheckpointSchedule::default();
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
        let state = match runtime.load(&spec.module) {
            Ok(module) => match Program::start(
                runtime.clone(),
                module,
                spec.config.clone(),
                schedule,
                checkpoint,
            ) {
                Ok(program) => State::Running(Box::new(program)),
                Err(e) => State::Halted(e.to_string()),
            },
            Err(e) => State::Halted(format!("module refused: {e}")),
        };
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
            schedule,
            state,
            spec,
            checkpoint_book: book.clone(),
            book,
            applied_through,
            saved,
            saved_at: None,
        })
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
        let result = match &mut self.state {
            State::Running(program) => {
                match program.upgrade(module, spec.config.clone(), reset_state, offset) {
                    Ok(()) => Ok(()),
                    Err(UpgradeError::Refused(e)) => Err(e.to_string()),
                    Err(UpgradeError::Current(e)) => {
                        let reason = e.to_string();
                        self.halt(reason.clone());
                        return rejected(reason);
                    }
                }
            }
            State::Halted(reason) if !reset_state => Err(format!(
                "the program halted ({reason}); deploy with reset_state to start over"
            )),
            State::Halted(_) => self.fresh(module, &spec),
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

    fn fresh(&mut self, module: ProgramModule, spec: &ProgramSpec) -> Result<(), String> {
        let program = Program::start(
            self.runtime.clone(),
            module,
            spec.config.clone(),
            self.schedule,
            None,
        )
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
            snapshot_offset: self.saved.map(Offset),
            state_hash,
            inputs_accepted: self.book.inputs_accepted,
            inputs_rejected: self.book.inputs_rejected,
            failure,
        }
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
    let runtime = runtime()?;
    runtime
        .load(&spec.module)
        .map(|_| ())
        .map_err(|e| e.to_string())
}
