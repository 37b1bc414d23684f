//! One topic's program: an instance in its own store, batches in, outcomes out, checkpoints at
//! points fixed by the log, and recovery from traps by rebuild and replay.

use std::sync::Arc;

use wasmtime::{Memory, Store, StoreLimitsBuilder, Trap, TypedFunc};
use weir_topic_sdk::abi::{self, Input, Outcome};

use crate::{
    BATCH_EDGE_FUEL, HostState, ModuleError, ModuleHash, ProgramModule, Runtime, SETUP_FUEL,
};

/// When a program checkpoints: after the input that makes any of these true (counted since the
/// last checkpoint). Every replica must use the same schedule: checkpoints shape the program's
/// memory, so they are part of what makes replicas agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointSchedule {
    pub every_inputs: u64,
    /// Bytes of inputs kept for replay; also bounds that buffer's memory.
    pub every_input_bytes: u64,
    /// Leader-timestamp span of the inputs since the last checkpoint.
    pub every_ms: u64,
}

impl Default for CheckpointSchedule {
    fn default() -> Self {
        Self {
            every_inputs: 10_000,
            every_input_bytes: 64 * 1024 * 1024,
            every_ms: 60_000,
        }
    }
}

/// A program's state at a point of its topic's input log: what a snapshot stores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The last input offset the state includes; `None` before any.
    pub after_offset: Option<u64>,
    /// The module the state belongs to.
    pub module: ModuleHash,
    /// The program's state bytes (from `weir_snapshot`); `None` for a fresh state (init only).
    pub state: Option<Arc<Vec<u8>>>,
}

/// The program cannot go on (on this replica; the deterministic ones on every replica).
/// Its topic stops applying inputs until an operator deploys a fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProgramError {
    #[error("program failed to initialise: {0}")]
    Init(String),
    #[error("program failed to restore its state: {0}")]
    Restore(String),
    #[error("program failed to produce its state: {0}")]
    Snapshot(String),
    #[error(
        "program is not deterministic: replaying inputs it had processed failed ({0}); \
         a weir program may not depend on anything but its inputs"
    )]
    Nondeterministic(String),
    #[error("module does not match the checkpoint: state of {checkpoint}, module {module}")]
    WrongModule {
        checkpoint: ModuleHash,
        module: ModuleHash,
    },
}

/// An upgrade did not take; the previous program continues with its state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpgradeError {
    #[error("new program refused its predecessor's state: {0}")]
    Refused(ProgramError),
    #[error("current program failed: {0}")]
    Current(ProgramError),
}

/// Something went wrong inside one call into the guest.
#[derive(Debug)]
enum Fault {
    /// A trap while input `index` of the batch was being processed.
    Input { index: usize, reason: String },
    /// A trap outside any input, or output that breaks the ABI.
    Call(String),
}

impl Fault {
    fn reason(&self) -> &str {
        match self {
            Fault::Input { reason, .. } | Fault::Call(reason) => reason,
        }
    }
}

/// Why a call trapped, in words that are the same on every replica (no backtrace, no address).
fn trap_reason(error: &wasmtime::Error) -> String {
    match error.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => "ran out of fuel (the per-message limit)".into(),
        Some(Trap::StackOverflow) => "overflowed its stack".into(),
        Some(Trap::UnreachableCodeReached) => {
            "trapped: unreachable (a panic or an abort, e.g. out of memory)".into()
        }
        Some(trap) => format!("trapped: {trap}"),
        None => format!("failed: {error}"),
    }
}

/// An instance of a module in its own store (so rebuilding frees the old one's memory).
struct Live {
    store: Store<HostState>,
    memory: Memory,
    input_buffer: TypedFunc<i32, i32>,
    init: TypedFunc<i32, i64>,
    restore: TypedFunc<i32, i64>,
    process: TypedFunc<i32, i64>,
    snapshot: TypedFunc<i32, i64>,
}

impl Live {
    fn instantiate(runtime: &Runtime, module: &ProgramModule) -> Result<Self, String> {
        let limits = runtime.limits();
        let host = HostState {
            limits: StoreLimitsBuilder::new()
                .memory_size(limits.memory_bytes_max)
                .instances(1)
                .memories(1)
                .tables(4)
                .build(),
            fuel_per_input: limits.fuel_per_input,
            batch_len: 0,
            next_input: 0,
            current: None,
            ended: None,
        };
        let mut store = Store::new(&runtime.engine, host);
        store.limiter(|host| &mut host.limits);
        store.set_fuel(SETUP_FUEL).map_err(|e| e.to_string())?;
        let instance = runtime
            .linker
            .instantiate(&mut store, &module.module)
            .map_err(|e| trap_reason(&e))?;
        let memory = instance
            .get_memory(&mut store, abi::EXPORT_MEMORY)
            .ok_or("no memory export")?;
        let mut func = |name: &str| {
            instance
                .get_typed_func::<i32, i64>(&mut store, name)
                .map_err(|e| format!("{name}: {e}"))
        };
        let (init, restore, process, snapshot) = (
            func(abi::EXPORT_INIT)?,
            func(abi::EXPORT_RESTORE)?,
            func(abi::EXPORT_PROCESS)?,
            func(abi::EXPORT_SNAPSHOT)?,
        );
        let input_buffer = instance
            .get_typed_func::<i32, i32>(&mut store, abi::EXPORT_INPUT_BUFFER)
            .map_err(|e| e.to_string())?;
        let version = instance
            .get_typed_func::<(), i32>(&mut store, abi::EXPORT_ABI_VERSION)
            .map_err(|e| e.to_string())?
            .call(&mut store, ())
            .map_err(|e| trap_reason(&e))?;
        if version != abi::ABI_VERSION {
            return Err(format!("ABI version {version}"));
        }
        Ok(Self {
            store,
            memory,
            input_buffer,
            init,
            restore,
            process,
            snapshot,
        })
    }

    /// Puts `argument` into the guest's input buffer; returns its length as the ABI passes it.
    fn write_argument(&mut self, argument: &[u8]) -> Result<i32, String> {
        let len = i32::try_from(argument.len()).map_err(|_| "argument over 2 GiB")?;
        self.store.set_fuel(SETUP_FUEL).map_err(|e| e.to_string())?;
        let ptr = self
            .input_buffer
            .call(&mut self.store, len)
            .map_err(|e| trap_reason(&e))?;
        if ptr == 0 {
            return Err(format!("guest has no input buffer of {len} bytes"));
        }
        self.memory
            .write(&mut self.store, ptr as u32 as usize, argument)
            .map_err(|_| format!("input buffer at {ptr} is outside memory"))?;
        Ok(len)
    }

    /// The bytes an export's packed result points to.
    fn result(&self, packed: i64) -> Result<&[u8], String> {
        let (ptr, len) = abi::unpack(packed);
        let start = ptr as usize;
        self.memory
            .data(&self.store)
            .get(start..start + len as usize)
            .ok_or_else(|| format!("result of {len} bytes at {ptr} is outside memory"))
    }

    fn call_status(&mut self, which: Which, argument: &[u8]) -> Result<(), String> {
        let len = self.write_argument(argument)?;
        self.store.set_fuel(SETUP_FUEL).map_err(|e| e.to_string())?;
        let func = match which {
            Which::Init => &self.init,
            Which::Restore => &self.restore,
        };
        let packed = func
            .call(&mut self.store, len)
            .map_err(|e| trap_reason(&e))?;
        abi::decode_status(self.result(packed)?).map_err(|e| e.to_string())?
    }

    fn take_snapshot(&mut self) -> Result<Vec<u8>, String> {
        self.store.set_fuel(SETUP_FUEL).map_err(|e| e.to_string())?;
        let packed = self
            .snapshot
            .call(&mut self.store, 0)
            .map_err(|e| trap_reason(&e))?;
        Ok(self.result(packed)?.to_vec())
    }

    /// One `weir_process` call. Returns the outcomes of the first `k >= 1` inputs.
    fn call_process(
        &mut self,
        batch: &[Input<'_>],
        encoded: &mut Vec<u8>,
    ) -> Result<Vec<Outcome>, Fault> {
        debug_assert!(!batch.is_empty() && batch.len() <= abi::BATCH_INPUTS_MAX);
        abi::encode_batch(batch, encoded);
        debug_assert!(encoded.len() <= abi::BATCH_BYTES_MAX);
        let len = self.write_argument(encoded).map_err(Fault::Call)?;
        self.store.data_mut().start_batch(batch.len() as u32);
        self.store
            .set_fuel(BATCH_EDGE_FUEL)
            .map_err(|e| Fault::Call(e.to_string()))?;
        let packed = match self.process.call(&mut self.store, len) {
            Ok(packed) => packed,
            Err(error) => {
                let reason = trap_reason(&error);
                return Err(match self.store.data().current {
                    Some(index) => Fault::Input {
                        index: index as usize,
                        reason,
                    },
                    None => Fault::Call(reason),
                });
            }
        };
        let ended = self.store.data().ended;
        let bytes = self.result(packed).map_err(Fault::Call)?;
        let outcomes = abi::decode_outcomes(bytes, batch.len())
            .map_err(|e| Fault::Call(format!("returned malformed outcomes: {e}")))?;
        if outcomes.is_empty() || ended != Some(outcomes.len() as u32) {
            return Err(Fault::Call(format!(
                "returned {} outcomes but called end_batch({ended:?})",
                outcomes.len()
            )));
        }
        Ok(outcomes)
    }
}

#[derive(Clone, Copy)]
enum Which {
    Init,
    Restore,
}

/// Instantiates once and initialises with an empty config: part of upload validation.
pub(crate) fn check_starts(runtime: &Runtime, module: &ProgramModule) -> Result<(), ModuleError> {
    let mut live = Live::instantiate(runtime, module).map_err(|reason| {
        if let Some(version) = reason.strip_prefix("ABI version ") {
            ModuleError::AbiVersion {
                found: version.parse().unwrap_or(-1),
                expected: abi::ABI_VERSION,
            }
        } else {
            ModuleError::Start(reason)
        }
    })?;
    let mut config = Vec::new();
    abi::encode_config(&[], &mut config);
    // A program may refuse an empty config (it needs keys the topic will give it); only a trap
    // or a broken ABI is a reason to refuse the module.
    match live.call_status(Which::Init, &config) {
        Ok(()) => Ok(()),
        Err(reason) if reason.starts_with("trapped") || reason.contains("outside") => {
            Err(ModuleError::Start(reason))
        }
        Err(_) => Ok(()),
    }
}

/// Inputs since the last checkpoint, as the schedule counts them.
#[derive(Debug, Clone, Copy, Default)]
struct Pending {
    inputs: u64,
    bytes: u64,
    first_timestamp_ms: Option<u64>,
}

impl Pending {
    /// Counts `input`; true if a checkpoint is due after it.
    fn add(&mut self, input: &Input<'_>, schedule: &CheckpointSchedule) -> bool {
        self.inputs += 1;
        self.bytes += input.encoded_len() as u64;
        let first = *self.first_timestamp_ms.get_or_insert(input.timestamp_ms);
        self.inputs >= schedule.every_inputs
            || self.bytes >= schedule.every_input_bytes
            || input.timestamp_ms.saturating_sub(first) >= schedule.every_ms
    }
}

/// An input kept for replay.
#[derive(Debug, Clone)]
struct OwnedInput {
    offset: u64,
    timestamp_ms: u64,
    key: Vec<u8>,
    value: Vec<u8>,
}

impl OwnedInput {
    fn of(input: &Input<'_>) -> Self {
        Self {
            offset: input.offset,
            timestamp_ms: input.timestamp_ms,
            key: input.key.to_vec(),
            value: input.value.to_vec(),
        }
    }

    fn as_input(&self) -> Input<'_> {
        Input {
            offset: self.offset,
            timestamp_ms: self.timestamp_ms,
            key: &self.key,
            value: &self.value,
        }
    }
}

/// A topic's program. Feed it the topic's committed inputs in log order with
/// [`Program::process`]; persist [`Program::checkpoint`] when it changes; after a restart,
/// [`Program::start`] from the newest persisted checkpoint and feed it the inputs after it.
pub struct Program {
    runtime: Arc<Runtime>,
    module: ProgramModule,
    config: Vec<(String, String)>,
    schedule: CheckpointSchedule,
    live: Live,
    checkpoint: Checkpoint,
    /// Inputs the program processed since the checkpoint (none of them trapped).
    since: Vec<OwnedInput>,
    pending: Pending,
    /// Reused batch encoding buffer.
    encoded: Vec<u8>,
    /// Checkpoints taken, for tests and metrics.
    checkpoints_taken: u64,
}

impl std::fmt::Debug for Program {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Program")
            .field("module", &self.module)
            .field("schedule", &self.schedule)
            .field("checkpoint_after", &self.checkpoint.after_offset)
            .field("inputs_since_checkpoint", &self.since.len())
            .finish_non_exhaustive()
    }
}

impl Program {
    /// Starts `module` with `config`, fresh (`from == None`) or from a checkpoint of the same
    /// module.
    pub fn start(
        runtime: Arc<Runtime>,
        module: ProgramModule,
        config: Vec<(String, String)>,
        schedule: CheckpointSchedule,
        from: Option<Checkpoint>,
    ) -> Result<Self, ProgramError> {
        let checkpoint = match from {
            Some(checkpoint) if checkpoint.module != module.hash() => {
                return Err(ProgramError::WrongModule {
                    checkpoint: checkpoint.module,
                    module: module.hash(),
                });
            }
            Some(checkpoint) => checkpoint,
            None => Checkpoint {
                after_offset: None,
                module: module.hash(),
                state: None,
            },
        };
        let live = build(
            &runtime,
            &module,
            &config,
            checkpoint.state.as_deref().map(Vec::as_slice),
        )?;
        Ok(Self {
            runtime,
            module,
            config,
            schedule,
            live,
            checkpoint,
            since: Vec::new(),
            pending: Pending::default(),
            encoded: Vec::new(),
            checkpoints_taken: 0,
        })
    }

    pub fn module(&self) -> &ProgramModule {
        &self.module
    }

    pub fn config(&self) -> &[(String, String)] {
        &self.config
    }

    /// The newest checkpoint: persist it (a [`crate::SnapshotStore`]) to restart from it.
    pub fn checkpoint(&self) -> &Checkpoint {
        &self.checkpoint
    }

    pub fn checkpoints_taken(&self) -> u64 {
        self.checkpoints_taken
    }

    /// Runs the program on `inputs` (committed, in log order, after everything it has seen)
    /// and returns one outcome per input. An error halts the program; the inputs' outcomes are
    /// then unknown and the caller must not apply any of them.
    pub fn process(&mut self, inputs: &[Input<'_>]) -> Result<Vec<Outcome>, ProgramError> {
        let mut outcomes = Vec::with_capacity(inputs.len());
        let mut rest = inputs;
        while let Some(first) = rest.first() {
            if first.encoded_len() > abi::INPUT_BYTES_MAX {
                // Decided by size alone: the same on every replica, and the program never sees it.
                outcomes.push(Outcome::Rejected(format!(
                    "message of {} bytes is larger than a program accepts ({} bytes)",
                    first.key.len() + first.value.len(),
                    abi::INPUT_BYTES_MAX - abi::INPUT_OVERHEAD_BYTES
                )));
                self.count(first, false)?;
                rest = &rest[1..];
                continue;
            }
            let batch = &rest[..self.batch_len(rest)];
            match self.live.call_process(batch, &mut self.encoded) {
                Ok(done) => {
                    for input in &batch[..done.len()] {
                        self.count(input, true)?;
                    }
                    rest = &rest[done.len()..];
                    outcomes.extend(done);
                }
                Err(Fault::Input { index, reason }) if index < batch.len() => {
                    // The inputs before `index` went through; `index` trapped and left the
                    // instance in an unknown state. Rebuild, redo the ones before, reject it.
                    self.recover()?;
                    outcomes.extend(self.process(&batch[..index])?);
                    outcomes.push(Outcome::Rejected(format!("program {reason}")));
                    self.count_trapped(&batch[index])?;
                    rest = &rest[index + 1..];
                }
                Err(fault) => {
                    self.recover()?;
                    if let [input] = batch {
                        outcomes.push(Outcome::Rejected(format!("program {}", fault.reason())));
                        self.count_trapped(input)?;
                    } else {
                        // Not attributable to one input: find out input by input.
                        for input in batch {
                            outcomes.extend(self.process(std::slice::from_ref(input))?);
                        }
                    }
                    rest = &rest[batch.len()..];
                }
            }
        }
        debug_assert_eq!(outcomes.len(), inputs.len());
        Ok(outcomes)
    }

    /// How many of `rest` go into the next call: within the batch limits, no oversized input,
    /// and ending at the first input after which a checkpoint is due.
    fn batch_len(&self, rest: &[Input<'_>]) -> usize {
        let mut pending = self.pending;
        let mut bytes = 4;
        let mut len = 0;
        for input in rest.iter().take(abi::BATCH_INPUTS_MAX) {
            let encoded = input.encoded_len();
            if encoded > abi::INPUT_BYTES_MAX || bytes + encoded > abi::BATCH_BYTES_MAX {
                break;
            }
            bytes += encoded;
            len += 1;
            if pending.add(input, &self.schedule) {
                break;
            }
        }
        debug_assert!(len >= 1, "the first input always fits");
        len
    }

    /// Records a processed input (kept for replay if the program saw it), and checkpoints if due.
    fn count(&mut self, input: &Input<'_>, seen_by_program: bool) -> Result<(), ProgramError> {
        if seen_by_program {
            self.since.push(OwnedInput::of(input));
        }
        if self.pending.add(input, &self.schedule) {
            self.checkpoint_now(input.offset)?;
        }
        Ok(())
    }

    /// A trapped input: checkpoint right after it, so no replay ever meets it again.
    fn count_trapped(&mut self, input: &Input<'_>) -> Result<(), ProgramError> {
        self.pending.add(input, &self.schedule);
        self.checkpoint_now(input.offset)
    }

    /// Takes the state, rebuilds the instance from it (so this replica's memory is what a
    /// replica restarting from this checkpoint will have) and makes it the checkpoint.
    fn checkpoint_now(&mut self, after_offset: u64) -> Result<(), ProgramError> {
        let state = self.live.take_snapshot().map_err(ProgramError::Snapshot)?;
        self.live = build(&self.runtime, &self.module, &self.config, Some(&state))?;
        self.checkpoint = Checkpoint {
            after_offset: Some(after_offset),
            module: self.module.hash(),
            state: Some(Arc::new(state)),
        };
        self.since.clear();
        self.pending = Pending::default();
        self.checkpoints_taken += 1;
        tracing::debug!(after_offset, "program checkpoint");
        Ok(())
    }

    /// Rebuilds the instance from the checkpoint and replays the inputs since.
    fn recover(&mut self) -> Result<(), ProgramError> {
        self.live = self.replayed()?;
        Ok(())
    }

    /// A new instance in the state the live one had before its last call.
    fn replayed(&mut self) -> Result<Live, ProgramError> {
        let mut live = build(
            &self.runtime,
            &self.module,
            &self.config,
            self.checkpoint.state.as_deref().map(Vec::as_slice),
        )?;
        let inputs: Vec<Input<'_>> = self.since.iter().map(OwnedInput::as_input).collect();
        let mut rest = &inputs[..];
        while !rest.is_empty() {
            let mut bytes = 4;
            let len = rest
                .iter()
                .take(abi::BATCH_INPUTS_MAX)
                .take_while(|input| {
                    bytes += input.encoded_len();
                    bytes <= abi::BATCH_BYTES_MAX
                })
                .count()
                .max(1);
            let done = live
                .call_process(&rest[..len], &mut self.encoded)
                .map_err(|fault| ProgramError::Nondeterministic(fault.reason().to_owned()))?;
            rest = &rest[done.len()..];
        }
        Ok(live)
    }

    /// The program's state now, as `weir_snapshot` encodes it. Computed on a replayed copy, so
    /// the live instance (and its checkpoint schedule) is untouched: for tests and diagnostics.
    pub fn state(&mut self) -> Result<Vec<u8>, ProgramError> {
        let mut copy = self.replayed()?;
        copy.take_snapshot().map_err(ProgramError::Snapshot)
    }

    /// Replaces the checkpoint schedule (it counts from the last checkpoint). Like the
    /// schedule given to `start`, it must change at the same input on every replica: call it
    /// at a point of the input log they agree on (an upgrade).
    pub fn set_schedule(&mut self, schedule: CheckpointSchedule) {
        self.schedule = schedule;
    }

    /// Switches to `module` at `at_offset` (a point of the input log every replica agrees on):
    /// the new program receives the current state, or starts fresh with `reset_state`. If the
    /// new program refuses the state, the current one continues, and the error says why; the
    /// outcome is the same on every replica.
    pub fn upgrade(
        &mut self,
        module: ProgramModule,
        config: Vec<(String, String)>,
        reset_state: bool,
        at_offset: u64,
    ) -> Result<(), UpgradeError> {
        let state = self
            .live
            .take_snapshot()
            .map_err(|e| UpgradeError::Current(ProgramError::Snapshot(e)))?;
        let carried = (!reset_state).then_some(state.as_slice());
        match build(&self.runtime, &module, &config, carried) {
            Ok(live) => {
                self.live = live;
                self.checkpoint = Checkpoint {
                    after_offset: Some(at_offset),
                    module: module.hash(),
                    state: carried.map(|state| Arc::new(state.to_vec())),
                };
                self.module = module;
                self.config = config;
            }
            Err(refused) => {
                // The old program goes on from the state it just produced, rebuilt like at
                // any checkpoint.
                self.live = build(&self.runtime, &self.module, &self.config, Some(&state))
                    .map_err(UpgradeError::Current)?;
                self.checkpoint = Checkpoint {
                    after_offset: Some(at_offset),
                    module: self.module.hash(),
                    state: Some(Arc::new(state)),
                };
                self.since.clear();
                self.pending = Pending::default();
                return Err(UpgradeError::Refused(refused));
            }
        }
        self.since.clear();
        self.pending = Pending::default();
        self.checkpoints_taken += 1;
        Ok(())
    }
}

/// A fresh instance, initialised with `config`, and restored to `state` if given.
fn build(
    runtime: &Runtime,
    module: &ProgramModule,
    config: &[(String, String)],
    state: Option<&[u8]>,
) -> Result<Live, ProgramError> {
    let mut live = Live::instantiate(runtime, module).map_err(ProgramError::Init)?;
    let mut encoded = Vec::new();
    abi::encode_config(config, &mut encoded);
    live.call_status(Which::Init, &encoded)
        .map_err(ProgramError::Init)?;
    if let Some(state) = state {
        live.call_status(Which::Restore, state)
            .map_err(ProgramError::Restore)?;
    }
    Ok(live)
}
