//! The guest side of the ABI, instantiated for one [`Program`] by [`crate::export_program!`].
//!
//! Determinism across batchings: the buffers are allocated once (the input buffer at its first
//! use, at least [`abi::BATCH_BYTES_MAX`]; the output buffer when the guest is created) and the
//! batch is decoded in place, input by input, after `begin_input`. So the program's heap, and with
//! it the fuel each message costs, depends only on the messages before it, not on how the host
//! cut them into batches. The host relies on that to reject a message for fuel on every replica
//! alike.

use crate::abi::{self, OUTCOME_ACCEPTED, OUTCOME_REJECTED, STATUS_ERROR, STATUS_OK};
use crate::{Config, Message, Output, Program};

/// Output space: a batch stops early when less than one outcome's maximum is left, so one
/// outcome always fits and the buffer never grows.
const OUTPUT_BUFFER_BYTES: usize = 4 * 1024 * 1024;
const _: () = assert!(OUTPUT_BUFFER_BYTES >= 4 + abi::OUTCOME_BYTES_MAX);

#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)] // the one import of the ABI
mod host {
    #[link(wasm_import_module = "weir")]
    unsafe extern "C" {
        #[link_name = "begin_input"]
        safe fn weir_begin_input(index: i32);
        #[link_name = "end_batch"]
        safe fn weir_end_batch(processed: i32);
    }

    // Batches hold at most BATCH_INPUTS_MAX inputs, far below i32::MAX.
    pub fn begin_input(index: u32) {
        weir_begin_input(index as i32);
    }

    pub fn end_batch(processed: u32) {
        weir_end_batch(processed as i32);
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod host {
    //! Outside Wasm (the SDK's own tests) there is no fuel to reset.
    pub fn begin_input(_index: u32) {}
    pub fn end_batch(_processed: u32) {}
}

/// Pointers and lengths as the host sees them: addresses in the guest's 32-bit memory.
fn address(bytes: &[u8]) -> u32 {
    bytes.as_ptr() as usize as u32
}

#[derive(Debug)]
pub struct Guest<T> {
    input: Vec<u8>,
    output: Vec<u8>,
    state: Vec<u8>,
    config: Config,
    program: Option<T>,
}

impl<T: Program> Default for Guest<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Program> Guest<T> {
    pub fn new() -> Self {
        Self {
            input: Vec::new(),
            output: Vec::with_capacity(OUTPUT_BUFFER_BYTES),
            state: Vec::new(),
            config: Config::default(),
            program: None,
        }
    }

    /// `weir_input_buffer`: at least `len` bytes the host may write.
    pub fn input_buffer(&mut self, len: i32) -> i32 {
        let Ok(len) = usize::try_from(len) else {
            return 0;
        };
        if self.input.len() < len.max(abi::BATCH_BYTES_MAX) {
            // Only the first call, or a state (at init or restore) larger than any batch.
            self.input = vec![0; len.max(abi::BATCH_BYTES_MAX)];
        }
        address(&self.input) as i32
    }

    fn argument(&self, len: i32) -> Result<&[u8], String> {
        usize::try_from(len)
            .ok()
            .and_then(|len| self.input.get(..len))
            .ok_or_else(|| format!("argument of {len} bytes is outside the input buffer"))
    }

    /// `weir_init`: a fresh state, configured.
    pub fn init(&mut self, len: i32) -> i64 {
        let result = self.argument(len).and_then(|bytes| {
            let config = Config::new(abi::decode_config(bytes).map_err(|e| e.to_string())?);
            let mut program = T::default();
            program.configure(&config)?;
            Ok((config, program))
        });
        let result = result.map(|(config, program)| {
            self.config = config;
            self.program = Some(program);
        });
        self.status(result)
    }

    /// `weir_restore`: the state from an earlier `weir_snapshot`, configured.
    pub fn restore(&mut self, len: i32) -> i64 {
        let result = self.argument(len).and_then(|bytes| {
            let (mut program, used): (T, usize) =
                bincode::serde::decode_from_slice(bytes, bincode::config::standard())
                    .map_err(|e| format!("state does not decode: {e}"))?;
            if used != bytes.len() {
                return Err(format!("{} bytes after the state", bytes.len() - used));
            }
            program.configure(&self.config)?;
            Ok(program)
        });
        let result = result.map(|program| self.program = Some(program));
        self.status(result)
    }

    /// `weir_snapshot`: the state as bytes.
    pub fn snapshot(&mut self) -> i64 {
        let Some(program) = &self.program else {
            return self.status(Err("snapshot before init".into()));
        };
        match bincode::serde::encode_to_vec(program, bincode::config::standard()) {
            Ok(bytes) => {
                self.state = bytes;
                abi::pack(address(&self.state), self.state.len() as u32)
            }
            // A state that serde cannot encode traps; the host halts the program.
            Err(e) => panic!("program state does not encode: {e}"),
        }
    }

    /// `weir_process`: one batch, input by input, until the batch or the output space ends.
    pub fn process(&mut self, len: i32) -> i64 {
        let Self {
            input,
            output,
            program,
            ..
        } = self;
        let Some(program) = program else {
            return 0;
        };
        let Some(batch) = usize::try_from(len).ok().and_then(|len| input.get(..len)) else {
            return 0;
        };
        let mut reader = abi::Reader::new(batch);
        let Ok(count) = reader.u32() else {
            return 0;
        };
        output.clear();
        abi::put_u32(output, 0);
        let mut processed = 0u32;
        while processed < count {
            if output.capacity() - output.len() < abi::OUTCOME_BYTES_MAX {
                break;
            }
            host::begin_input(processed);
            let Ok(input) = reader.input() else {
                return 0;
            };
            let message = Message {
                offset: input.offset,
                timestamp_ms: input.timestamp_ms,
                key: input.key,
                value: input.value,
            };
            let start = output.len();
            output.push(OUTCOME_ACCEPTED);
            abi::put_u32(output, 0);
            let mut out = Output::new(output, start);
            match program.on_message(&message, &mut out) {
                Ok(()) => {
                    let events = out.events();
                    output[start + 1..start + 5].copy_from_slice(&events.to_le_bytes());
                }
                Err(reject) => {
                    output.truncate(start);
                    output.push(OUTCOME_REJECTED);
                    abi::put_bytes(output, abi::clip_message(&reject.0).as_bytes());
                }
            }
            processed += 1;
        }
        host::end_batch(processed);
        output[..4].copy_from_slice(&processed.to_le_bytes());
        abi::pack(address(output), output.len() as u32)
    }

    /// The bytes a pointer from an export refers to; for the SDK's tests, which run on the host.
    #[cfg(test)]
    fn output(&self) -> &[u8] {
        &self.output
    }

    fn status(&mut self, result: Result<(), String>) -> i64 {
        self.output.clear();
        match result {
            Ok(()) => self.output.push(STATUS_OK),
            Err(message) => {
                self.output.push(STATUS_ERROR);
                self.output
                    .extend_from_slice(abi::clip_message(&message).as_bytes());
            }
        }
        abi::pack(address(&self.output), self.output.len() as u32)
    }
}

/// Exports a [`Program`] type under the weir ABI. Use it once, in a `cdylib` crate built for
/// `wasm32-unknown-unknown`.
#[macro_export]
macro_rules! export_program {
    ($program:ty) => {
        const _: () = {
            ::std::thread_local! {
                static GUEST: ::core::cell::RefCell<$crate::guest::Guest<$program>> =
                    ::core::cell::RefCell::new($crate::guest::Guest::new());
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn weir_abi_version() -> i32 {
                $crate::abi::ABI_VERSION
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn weir_input_buffer(len: i32) -> i32 {
                GUEST.with(|guest| guest.borrow_mut().input_buffer(len))
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn weir_init(len: i32) -> i64 {
                GUEST.with(|guest| guest.borrow_mut().init(len))
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn weir_restore(len: i32) -> i64 {
                GUEST.with(|guest| guest.borrow_mut().restore(len))
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn weir_process(len: i32) -> i64 {
                GUEST.with(|guest| guest.borrow_mut().process(len))
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn weir_snapshot(_len: i32) -> i64 {
                GUEST.with(|guest| guest.borrow_mut().snapshot())
            }
        };
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Reject;
    use crate::abi::{Event, EventKind, Input, Outcome};
    use serde::{Deserialize, Serialize};

    /// Counts per key; rejects the value "bad"; emits one event per message.
    #[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
    struct Tally {
        counts: std::collections::BTreeMap<Vec<u8>, u64>,
        #[serde(skip)]
        prefix: String,
    }

    impl Program for Tally {
        fn configure(&mut self, config: &Config) -> Result<(), String> {
            self.prefix = config.get("prefix").unwrap_or("").to_owned();
            Ok(())
        }

        fn on_message(&mut self, msg: &Message<'_>, out: &mut Output<'_>) -> Result<(), Reject> {
            if msg.value == b"bad" {
                return Err(Reject::new("bad value"));
            }
            let count = self.counts.entry(msg.key.to_vec()).or_default();
            *count += 1;
            out.put(msg.key, format!("{}{count}", self.prefix).as_bytes())
        }
    }

    fn write_argument(guest: &mut Guest<Tally>, bytes: &[u8]) -> i32 {
        guest.input_buffer(bytes.len() as i32);
        guest.input[..bytes.len()].copy_from_slice(bytes);
        bytes.len() as i32
    }

    fn started() -> Guest<Tally> {
        let mut guest = Guest::<Tally>::new();
        let mut config = Vec::new();
        abi::encode_config(&[("prefix".into(), "n=".into())], &mut config);
        let len = write_argument(&mut guest, &config);
        guest.init(len);
        assert_eq!(abi::decode_status(guest.output()).unwrap(), Ok(()));
        guest
    }

    fn run(guest: &mut Guest<Tally>, inputs: &[Input<'_>]) -> Vec<Outcome> {
        let mut batch = Vec::new();
        abi::encode_batch(inputs, &mut batch);
        let len = write_argument(guest, &batch);
        guest.process(len);
        abi::decode_outcomes(guest.output(), inputs.len()).unwrap()
    }

    fn input<'a>(offset: u64, key: &'a [u8], value: &'a [u8]) -> Input<'a> {
        Input {
            offset,
            timestamp_ms: 1_000 + offset,
            key,
            value,
        }
    }

    #[test]
    fn a_batch_gets_one_outcome_per_input_in_order() {
        let mut guest = started();
        let outcomes = run(
            &mut guest,
            &[
                input(1, b"a", b"x"),
                input(2, b"a", b"bad"),
                input(3, b"a", b"y"),
            ],
        );
        let put = |value: &str| {
            Outcome::Accepted(vec![Event {
                kind: EventKind::Put,
                key: b"a".to_vec(),
                value: value.as_bytes().to_vec(),
            }])
        };
        assert_eq!(
            outcomes,
            vec![
                put("n=1"),
                Outcome::Rejected("bad value".into()),
                put("n=2")
            ]
        );
    }

    #[test]
    fn state_survives_snapshot_and_restore_and_is_reconfigured() {
        let mut guest = started();
        run(&mut guest, &[input(1, b"a", b"x"), input(2, b"b", b"x")]);
        let (_, len) = abi::unpack(guest.snapshot());
        let state = guest.state[..len as usize].to_vec();

        let mut restored = started();
        let len = write_argument(&mut restored, &state);
        restored.restore(len);
        assert_eq!(abi::decode_status(restored.output()).unwrap(), Ok(()));
        assert_eq!(restored.program, guest.program);
        assert_eq!(restored.program.as_ref().unwrap().prefix, "n=");

        let len = write_argument(&mut restored, b"\xff\xff\xff");
        restored.restore(len);
        assert!(abi::decode_status(restored.output()).unwrap().is_err());
    }

    #[test]
    fn a_program_exceeding_the_per_input_event_limit_is_rejected() {
        #[derive(Default, Serialize, Deserialize)]
        struct Flood;
        impl Program for Flood {
            fn on_message(&mut self, _: &Message<'_>, out: &mut Output<'_>) -> Result<(), Reject> {
                loop {
                    out.put(b"k", b"v")?;
                }
            }
        }
        let mut guest = Guest::<Flood>::new();
        let mut config = Vec::new();
        abi::encode_config(&[], &mut config);
        guest.input_buffer(config.len() as i32);
        guest.input[..config.len()].copy_from_slice(&config);
        guest.init(config.len() as i32);
        let mut batch = Vec::new();
        abi::encode_batch(&[input(1, b"k", b"v")], &mut batch);
        guest.input[..batch.len()].copy_from_slice(&batch);
        guest.process(batch.len() as i32);
        let outcomes = abi::decode_outcomes(guest.output(), 1).unwrap();
        assert!(matches!(&outcomes[..], [Outcome::Rejected(m)] if m.contains("at most")));
    }
}
