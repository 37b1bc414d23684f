//! The host of weir's topic programs: WebAssembly modules (wasmtime 48, no WASI) that run on
//! every committed message of a programmable topic, on every replica, in batches.
//!
//! - [`Runtime`]: one per process. One `Engine` (Cranelift, fuel on, NaN canonicalization on,
//!   relaxed SIMD, threads, memory64 and multi-memory off), one `Linker` with the two functions
//!   of the weir ABI, and a cache of compiled modules by hash. [`Runtime::load`] validates an
//!   upload: size, compilation, imports (nothing but the weir ABI), exports, memory, ABI version.
//! - [`Program`]: one topic's program: a `Store` and an instance, fed batches of committed
//!   inputs ([`Program::process`]), returning one [`Outcome`] per input.
//! - [`SnapshotStore`]: durable program snapshots (CRC-checked files) for restart.
//!
//! # Determinism
//!
//! Every replica must compute the same outcomes and state, whatever batches its inputs came in,
//! whether it restarted from a snapshot or ran straight through, and whatever the machine's
//! load. So:
//! - fuel is per input: the guest calls `weir.begin_input(i)` before input `i` and the host
//!   resets the budget there; running out rejects that input. Wall-clock limits never decide a
//!   message's outcome.
//! - a trap (fuel, memory limit, stack overflow, a guest panic) rejects the input that caused it.
//!   The instance is then rebuilt from the last checkpoint and the inputs since are replayed,
//!   so the program continues from its state before that input.
//! - checkpoints happen at points that depend only on the log (every N inputs, B bytes or T ms
//!   of leader timestamps, and after a trapped input), and at each one the instance is rebuilt
//!   from the state bytes it just produced: a replica that restarted from a snapshot is, from
//!   there on, in exactly the state of one that never stopped.
//! - the SDK allocates its buffers once, so a batch's size never shapes the program's heap.

mod program;
mod snapshot;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use wasmtime::{Caller, Engine, ExternType, Linker, Module, OptLevel, StoreLimits, ValType};
use weir_topic_sdk::abi;

pub use program::{Checkpoint, CheckpointSchedule, Program, ProgramError, UpgradeError};
pub use snapshot::{
    EXTRA_BYTES_MAX, SNAPSHOTS_KEPT, STATE_BYTES_MAX, SnapshotError, SnapshotStore,
};
pub use weir_topic_sdk::abi::{Event, EventKind, Input, Outcome};

/// Native stack a program's calls may use; deeper recursion traps (and rejects its input).
/// Engine-wide: every node of a cluster runs the same build, so the same input overflows on
/// every replica.
pub const STACK_BYTES_MAX: usize = 512 * 1024;
/// Fuel for everything that is not an input: instantiation, `weir_init`, `weir_restore`,
/// `weir_snapshot`, `weir_input_buffer`. Exhausting it halts the program (on every replica).
pub const SETUP_FUEL: u64 = 5_000_000_000;
/// Fuel of a batch before its first `begin_input`, and after `end_batch`.
pub const BATCH_EDGE_FUEL: u64 = 100_000;
/// Compiled modules kept in the cache.
pub const MODULES_CACHED_MAX: usize = 256;

/// Limits for programs. They must be equal on every node of a cluster: they decide outcomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Fuel (roughly, Wasm instructions) one input may use; exhausting it rejects the input.
    pub fuel_per_input: u64,
    /// A program's linear memory may not grow past this; a failed growth usually ends in a
    /// trap, which rejects the input.
    pub memory_bytes_max: usize,
    /// Largest module accepted.
    pub module_bytes_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            fuel_per_input: 50_000_000,
            memory_bytes_max: 64 * 1024 * 1024,
            // Well inside one request frame (weir_proto::limits::FRAME_BYTES_MAX) with its config.
            module_bytes_max: 4 * 1024 * 1024,
        }
    }
}

/// The SHA-256 of a module's bytes: how a program version is named.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModuleHash(pub [u8; 32]);

impl ModuleHash {
    pub fn of(bytes: &[u8]) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
        let mut hash = [0u8; 32];
        hash.copy_from_slice(digest.as_ref());
        Self(hash)
    }
}

impl fmt::Display for ModuleHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ModuleHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ModuleHash({self})")
    }
}

/// Why an uploaded module is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModuleError {
    #[error("module is {bytes} bytes, more than the limit of {max}")]
    TooLarge { bytes: usize, max: usize },
    #[error("not a valid WebAssembly module: {0}")]
    Invalid(String),
    #[error(
        "module imports {module}.{name} ({kind}); a weir program may import only \
         weir.begin_input and weir.end_batch (no WASI, no other host functions)"
    )]
    ForbiddenImport {
        module: String,
        name: String,
        kind: String,
    },
    #[error("module does not export {name} ({expected}); see docs/PROGRAMS.md for the ABI")]
    MissingExport { name: String, expected: String },
    #[error("module exports {name} as {found}, the ABI wants {expected}")]
    WrongExport {
        name: String,
        expected: String,
        found: String,
    },
    #[error(
        "module's memory starts at {bytes} bytes, more than the limit of {max}; \
         or it is 64-bit or shared, which weir does not run"
    )]
    Memory { bytes: u64, max: usize },
    #[error("module speaks ABI version {found}; this node runs version {expected}")]
    AbiVersion { found: i32, expected: i32 },
    #[error("module does not start: {0}")]
    Start(String),
}

/// A validated, compiled module.
#[derive(Clone)]
pub struct ProgramModule {
    hash: ModuleHash,
    module: Module,
    bytes_len: usize,
}

impl ProgramModule {
    pub fn hash(&self) -> ModuleHash {
        self.hash
    }

    pub fn bytes_len(&self) -> usize {
        self.bytes_len
    }
}

impl fmt::Debug for ProgramModule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProgramModule")
            .field("hash", &self.hash)
            .field("bytes_len", &self.bytes_len)
            .finish()
    }
}

/// What the host keeps per store, and what `begin_input`/`end_batch` act on.
pub(crate) struct HostState {
    limits: StoreLimits,
    fuel_per_input: u64,
    /// Inputs in the batch being processed.
    batch_len: u32,
    /// The input `begin_input` must name next.
    next_input: u32,
    /// The input being processed: a trap now belongs to it.
    current: Option<u32>,
    /// `end_batch(processed)` was called.
    ended: Option<u32>,
}

impl HostState {
    fn start_batch(&mut self, len: u32) {
        self.batch_len = len;
        self.next_input = 0;
        self.current = None;
        self.ended = None;
    }
}

/// One per process: the engine, the linker and the module cache.
pub struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
    modules: Mutex<HashMap<ModuleHash, ProgramModule>>,
    limits: Limits,
}

impl fmt::Debug for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runtime")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// The runtime could not be set up (a wasmtime configuration error: a bug or an unsupported
/// platform).
#[derive(Debug, thiserror::Error)]
#[error("setting up the Wasm engine: {0}")]
pub struct RuntimeError(String);

/// The type of an ABI function, for checks and messages.
struct Signature {
    params: &'static [ValType],
    results: &'static [ValType],
}

impl Signature {
    fn matches(&self, ty: &wasmtime::FuncType) -> bool {
        let same = |expected: &[ValType], found: &mut dyn ExactSizeIterator<Item = ValType>| {
            expected.len() == found.len()
                && expected.iter().zip(found).all(|(a, b)| ValType::eq(a, &b))
        };
        same(self.params, &mut ty.params()) && same(self.results, &mut ty.results())
    }
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = |types: &[ValType]| {
            types
                .iter()
                .map(|t| t.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        write!(
            f,
            "func ({}) -> ({})",
            names(self.params),
            names(self.results)
        )
    }
}

const I32_TO_NOTHING: Signature = Signature {
    params: &[ValType::I32],
    results: &[],
};
const I32_TO_I32: Signature = Signature {
    params: &[ValType::I32],
    results: &[ValType::I32],
};
const I32_TO_I64: Signature = Signature {
    params: &[ValType::I32],
    results: &[ValType::I64],
};
const NOTHING_TO_I32: Signature = Signature {
    params: &[],
    results: &[ValType::I32],
};

const IMPORTS: [(&str, Signature); 2] = [
    (abi::IMPORT_BEGIN_INPUT, I32_TO_NOTHING),
    (abi::IMPORT_END_BATCH, I32_TO_NOTHING),
];

const EXPORTS: [(&str, Signature); 6] = [
    (abi::EXPORT_ABI_VERSION, NOTHING_TO_I32),
    (abi::EXPORT_INPUT_BUFFER, I32_TO_I32),
    (abi::EXPORT_INIT, I32_TO_I64),
    (abi::EXPORT_RESTORE, I32_TO_I64),
    (abi::EXPORT_PROCESS, I32_TO_I64),
    (abi::EXPORT_SNAPSHOT, I32_TO_I64),
];

fn extern_kind(ty: &ExternType) -> String {
    match ty {
        ExternType::Func(func) => func.to_string(),
        ExternType::Memory(_) => "memory".into(),
        ExternType::Table(_) => "table".into(),
        ExternType::Global(_) => "global".into(),
        ExternType::Tag(_) => "tag".into(),
    }
}

impl Runtime {
    pub fn new(limits: Limits) -> Result<Arc<Self>, RuntimeError> {
        let mut config = wasmtime::Config::new();
        config
            .consume_fuel(true)
            // NaN bit patterns differ between CPUs otherwise.
            .cranelift_nan_canonicalization(true)
            // Relaxed SIMD results are platform-defined. Threads and the component model are
            // not compiled into this build (default features off).
            .wasm_relaxed_simd(false)
            .wasm_multi_memory(false)
            .wasm_memory64(false)
            .max_wasm_stack(STACK_BYTES_MAX)
            .cranelift_opt_level(OptLevel::Speed);
        let engine = Engine::new(&config).map_err(|e| RuntimeError(e.to_string()))?;
        let mut linker = Linker::new(&engine);
        linker
            .func_wrap(
                abi::IMPORT_MODULE,
                abi::IMPORT_BEGIN_INPUT,
                |mut caller: Caller<'_, HostState>, index: i32| -> wasmtime::Result<()> {
                    let state = caller.data_mut();
                    let expected = state.next_input;
                    if u32::try_from(index) != Ok(expected) || expected >= state.batch_len {
                        wasmtime::bail!(
                            "begin_input({index}) out of order: expected input {expected} of {}",
                            state.batch_len
                        );
                    }
                    state.current = Some(expected);
                    state.next_input = expected + 1;
                    let fuel = state.fuel_per_input;
                    caller.set_fuel(fuel)
                },
            )
            .map_err(|e| RuntimeError(e.to_string()))?;
        linker
            .func_wrap(
                abi::IMPORT_MODULE,
                abi::IMPORT_END_BATCH,
                |mut caller: Caller<'_, HostState>, processed: i32| -> wasmtime::Result<()> {
                    let state = caller.data_mut();
                    if u32::try_from(processed) != Ok(state.next_input) || state.ended.is_some() {
                        wasmtime::bail!(
                            "end_batch({processed}) after {} inputs began",
                            state.next_input
                        );
                    }
                    state.current = None;
                    state.ended = Some(state.next_input);
                    caller.set_fuel(BATCH_EDGE_FUEL)
                },
            )
            .map_err(|e| RuntimeError(e.to_string()))?;
        Ok(Arc::new(Self {
            engine,
            linker,
            modules: Mutex::new(HashMap::new()),
            limits,
        }))
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Validates and compiles `bytes` (or returns the cached compilation of the same bytes).
    /// Refuses, with the reason, a module that is too large, does not compile, imports anything
    /// but the weir ABI, lacks an ABI export, declares too much memory, speaks another ABI
    /// version, or does not start.
    pub fn load(&self, bytes: &[u8]) -> Result<ProgramModule, ModuleError> {
        if bytes.len() > self.limits.module_bytes_max {
            return Err(ModuleError::TooLarge {
                bytes: bytes.len(),
                max: self.limits.module_bytes_max,
            });
        }
        let hash = ModuleHash::of(bytes);
        if let Some(module) = self.cached(&hash) {
            return Ok(module);
        }
        if bytes.get(..4) != Some(b"\0asm") {
            return Err(ModuleError::Invalid(
                "missing the \\0asm magic (a .wasm binary is expected, not text)".into(),
            ));
        }
        let module =
            Module::new(&self.engine, bytes).map_err(|e| ModuleError::Invalid(e.to_string()))?;
        self.check_interface(&module)?;
        let module = ProgramModule {
            hash,
            module,
            bytes_len: bytes.len(),
        };
        program::check_starts(self, &module)?;
        let mut modules = self.modules.lock().unwrap_or_else(|e| e.into_inner());
        if modules.len() < MODULES_CACHED_MAX {
            modules.insert(hash, module.clone());
        }
        Ok(module)
    }

    fn cached(&self, hash: &ModuleHash) -> Option<ProgramModule> {
        let modules = self.modules.lock().unwrap_or_else(|e| e.into_inner());
        modules.get(hash).cloned()
    }

    fn check_interface(&self, module: &Module) -> Result<(), ModuleError> {
        for import in module.imports() {
            let ty = import.ty();
            let allowed = import.module() == abi::IMPORT_MODULE
                && IMPORTS.iter().any(|(name, signature)| {
                    *name == import.name()
                        && matches!(&ty, ExternType::Func(func) if signature.matches(func))
                });
            if !allowed {
                return Err(ModuleError::ForbiddenImport {
                    module: import.module().to_owned(),
                    name: import.name().to_owned(),
                    kind: extern_kind(&ty),
                });
            }
        }
        match module.get_export(abi::EXPORT_MEMORY) {
            Some(ExternType::Memory(memory)) => {
                let bytes = memory.minimum().saturating_mul(64 * 1024);
                if memory.is_64()
                    || memory.is_shared()
                    || bytes > self.limits.memory_bytes_max as u64
                {
                    return Err(ModuleError::Memory {
                        bytes,
                        max: self.limits.memory_bytes_max,
                    });
                }
            }
            Some(other) => {
                return Err(ModuleError::WrongExport {
                    name: abi::EXPORT_MEMORY.into(),
                    expected: "memory".into(),
                    found: extern_kind(&other),
                });
            }
            None => {
                return Err(ModuleError::MissingExport {
                    name: abi::EXPORT_MEMORY.into(),
                    expected: "memory".into(),
                });
            }
        }
        for (name, signature) in &EXPORTS {
            match module.get_export(name) {
                Some(ExternType::Func(func)) if signature.matches(&func) => {}
                Some(other) => {
                    return Err(ModuleError::WrongExport {
                        name: (*name).into(),
                        expected: signature.to_string(),
                        found: extern_kind(&other),
                    });
                }
                None => {
                    return Err(ModuleError::MissingExport {
                        name: (*name).into(),
                        expected: signature.to_string(),
                    });
                }
            }
        }
        Ok(())
    }
}
