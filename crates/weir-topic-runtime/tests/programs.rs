//! The topic runtime against the real example programs (built from `wasm-examples/` for
//! wasm32 by this test run) and hostile modules.

use std::sync::{Arc, OnceLock};

use weir_topic_runtime::{
    Checkpoint, CheckpointSchedule, EventKind, Input, Limits, ModuleError, Outcome, Program,
    ProgramModule, Runtime, SnapshotStore, UpgradeError,
};

fn runtime() -> Arc<Runtime> {
    static RUNTIME: OnceLock<Arc<Runtime>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| Runtime::new(Limits::default()).expect("engine"))
        .clone()
}

fn module(name: &str) -> ProgramModule {
    let bytes = weir_wasm_examples::module(name).expect("examples build");
    runtime().load(&bytes).expect("example validates")
}

fn start(name: &str, config: &[(&str, &str)], schedule: CheckpointSchedule) -> Program {
    let config = config
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Program::start(runtime(), module(name), config, schedule, None).expect("program starts")
}

/// An owned input, for building test logs.
#[derive(Debug, Clone)]
struct Msg {
    offset: u64,
    timestamp_ms: u64,
    key: Vec<u8>,
    value: Vec<u8>,
}

impl Msg {
    fn input(&self) -> Input<'_> {
        Input {
            offset: self.offset,
            timestamp_ms: self.timestamp_ms,
            key: &self.key,
            value: &self.value,
        }
    }
}

/// A log of `values`, keys cycling through `keys`, offsets from 1 (with gaps, as a Raft log has
/// for no-ops), 150 ms of leader time apart.
fn log(keys: &[&str], values: &[&str]) -> Vec<Msg> {
    values
        .iter()
        .enumerate()
        .map(|(i, value)| Msg {
            offset: 1 + i as u64 + i as u64 / 10,
            timestamp_ms: 1_700_000_000_000 + 150 * i as u64,
            key: keys[i % keys.len()].as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
        })
        .collect()
}

fn numbers(n: usize) -> Vec<String> {
    (0..n).map(|i| ((i * 7919) % 1000).to_string()).collect()
}

/// Runs `msgs` through `program` in batches whose sizes come from `seed` (0: one call).
fn run(program: &mut Program, msgs: &[Msg], seed: u64) -> Vec<Outcome> {
    let inputs: Vec<Input<'_>> = msgs.iter().map(Msg::input).collect();
    if seed == 0 {
        return program.process(&inputs).expect("program runs");
    }
    let mut rng = seed;
    let mut outcomes = Vec::new();
    let mut rest = &inputs[..];
    while !rest.is_empty() {
        // xorshift: batch sizes 1..=37, deterministic per seed.
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let take = (1 + rng % 37) as usize;
        let (batch, tail) = rest.split_at(take.min(rest.len()));
        outcomes.extend(program.process(batch).expect("program runs"));
        rest = tail;
    }
    outcomes
}

fn put_values(outcome: &Outcome) -> Vec<String> {
    match outcome {
        Outcome::Accepted(events) => events
            .iter()
            .map(|e| {
                assert_eq!(e.kind, EventKind::Put);
                String::from_utf8(e.value.clone()).unwrap()
            })
            .collect(),
        Outcome::Rejected(message) => panic!("unexpected rejection: {message}"),
    }
}

const SMALL: CheckpointSchedule = CheckpointSchedule {
    every_inputs: 7,
    every_input_bytes: 64 * 1024 * 1024,
    every_ms: 60_000,
};

#[test]
fn every_example_and_fixture_passes_upload_validation() {
    for name in weir_wasm_examples::EXAMPLES
        .iter()
        .chain(weir_wasm_examples::FIXTURES)
    {
        let module = module(name);
        assert!(module.bytes_len() > 0, "{name}");
    }
}

#[test]
fn counter_counts_per_key_in_log_order() {
    let mut program = start("counter", &[], CheckpointSchedule::default());
    let msgs = log(&["a", "b", "a"], &["x"; 6]);
    let outcomes = run(&mut program, &msgs, 0);
    let values: Vec<String> = outcomes.iter().flat_map(put_values).collect();
    assert_eq!(values, ["1", "1", "2", "3", "2", "4"]);
}

#[test]
fn validator_rejects_invalid_json_and_oversized_values_with_a_reason() {
    let mut program = start(
        "validator",
        &[("max_bytes", "16")],
        CheckpointSchedule::default(),
    );
    let msgs = log(
        &["k"],
        &[r#"{"a":1}"#, "{not json", r#"{"long":"0123456789"}"#, "[]"],
    );
    let outcomes = run(&mut program, &msgs, 0);
    assert!(matches!(&outcomes[0], Outcome::Accepted(events) if events.len() == 1));
    assert!(matches!(&outcomes[1], Outcome::Rejected(m) if m.contains("not valid JSON")));
    assert!(matches!(&outcomes[2], Outcome::Rejected(m) if m.contains("max_bytes=16")));
    assert!(matches!(&outcomes[3], Outcome::Accepted(_)));
}

#[test]
fn a_program_that_refuses_its_config_does_not_start() {
    let result = Program::start(
        runtime(),
        module("window-sum"),
        vec![("window_ms".into(), "soon".into())],
        CheckpointSchedule::default(),
        None,
    );
    let error = result.expect_err("bad config is refused");
    assert!(error.to_string().contains("window_ms"), "{error}");
}

#[test]
fn dedupe_drops_keys_seen_in_the_window() {
    let mut program = start("dedupe", &[("window", "3")], CheckpointSchedule::default());
    // Keys a b a c d e a: the second "a" is within 3 of the first; the third is not.
    let msgs = log(&["a", "b", "a", "c", "d", "e", "a"], &["v"; 7]);
    let events: Vec<usize> = run(&mut program, &msgs, 0)
        .iter()
        .map(|o| put_values(o).len())
        .collect();
    assert_eq!(events, [1, 1, 0, 1, 1, 1, 1]);
}

#[test]
fn window_sum_emits_each_closed_window_by_leader_time() {
    let mut program = start(
        "window-sum",
        &[("window_ms", "300")],
        CheckpointSchedule::default(),
    );
    // 150 ms apart: windows of two messages each.
    let msgs = log(&["k"], &["1", "2", "3", "4", "5"]);
    let values: Vec<String> = run(&mut program, &msgs, 0)
        .iter()
        .flat_map(put_values)
        .collect();
    // Leader times modulo 300 ms are 200, 50, 200, 50, 200: windows {1}, {2, 3}, {4, 5}; the
    // last is still open.
    let window = 1_699_999_999_800u64;
    assert_eq!(
        values,
        [
            format!(r#"{{"window_start_ms":{window},"window_ms":300,"sum":1}}"#),
            format!(
                r#"{{"window_start_ms":{},"window_ms":300,"sum":5}}"#,
                window + 300
            ),
        ]
    );
}

#[test]
fn outcomes_and_state_do_not_depend_on_how_inputs_are_batched() {
    let values = numbers(300);
    let values: Vec<&str> = values.iter().map(String::as_str).collect();
    let msgs = log(&["a", "b", "c", "d", "e"], &values);
    for (name, config) in [
        ("counter", vec![]),
        ("dedupe", vec![("window", "4")]),
        ("window-sum", vec![("window_ms", "1000")]),
    ] {
        let mut reference = start(name, &config, SMALL);
        let expected = run(&mut reference, &msgs, 0);
        let expected_state = reference.state().unwrap();
        for seed in [1, 2, 3, 0x5eed] {
            let mut program = start(name, &config, SMALL);
            assert_eq!(
                run(&mut program, &msgs, seed),
                expected,
                "{name}, seed {seed}"
            );
            assert_eq!(
                program.state().unwrap(),
                expected_state,
                "{name}, seed {seed}"
            );
            assert_eq!(
                program.checkpoint(),
                reference.checkpoint(),
                "{name}, seed {seed}"
            );
        }
    }
}

#[test]
fn snapshot_and_replay_equal_an_uninterrupted_run_also_across_a_restart_in_between() {
    let values = numbers(200);
    let values: Vec<&str> = values.iter().map(String::as_str).collect();
    let msgs = log(&["a", "b", "c"], &values);
    let mut uninterrupted = start("counter", &[], SMALL);
    let expected = run(&mut uninterrupted, &msgs, 3);

    let dir = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open(dir.path()).unwrap();
    let mut program = start("counter", &[], SMALL);
    let mut outcomes = run(&mut program, &msgs[..95], 5);
    store.save(program.checkpoint(), b"").unwrap();
    drop(program);

    // Restart from the snapshot, replay part of what followed it, and crash again.
    let restart = |store: &SnapshotStore| -> (Program, usize) {
        let (checkpoint, _): (Checkpoint, _) = store.load_newest().unwrap().expect("a snapshot");
        let after = checkpoint.after_offset.expect("after some input");
        let program = Program::start(
            runtime(),
            module("counter"),
            vec![],
            SMALL,
            Some(checkpoint),
        )
        .unwrap();
        let next = msgs.iter().position(|m| m.offset > after).unwrap();
        (program, next)
    };
    let (mut program, next) = restart(&store);
    assert!(next <= 95 && next > 80, "the snapshot is recent: {next}");
    let replayed = run(&mut program, &msgs[next..120], 7);
    assert_eq!(replayed, expected[next..120], "replay after a restart");
    drop(program);

    let (mut program, next) = restart(&store);
    let replayed = run(&mut program, &msgs[next..], 11);
    assert_eq!(replayed, expected[next..], "replay after a second restart");
    outcomes.truncate(next);
    outcomes.extend(replayed);
    assert_eq!(outcomes, expected);
    assert_eq!(program.state().unwrap(), uninterrupted.state().unwrap());
}

#[test]
fn hostile_inputs_are_rejected_and_the_program_continues_from_its_state_before_them() {
    let msgs = log(
        &["k"],
        &[
            "ok", "loop", "ok", "grow", "ok", "recurse", "ok", "panic", "ok",
        ],
    );
    let mut reference: Option<Vec<Outcome>> = None;
    for seed in [0, 1, 2] {
        let mut program = start("hostile", &[], CheckpointSchedule::default());
        let outcomes = run(&mut program, &msgs, seed);
        let reasons: Vec<&str> = outcomes
            .iter()
            .filter_map(|o| match o {
                Outcome::Rejected(m) => Some(m.as_str()),
                Outcome::Accepted(_) => None,
            })
            .collect();
        assert_eq!(reasons.len(), 4, "{outcomes:?}");
        assert!(reasons[0].contains("fuel"), "{reasons:?}");
        assert!(reasons[1].contains("unreachable"), "{reasons:?}");
        assert!(
            reasons[2].contains("stack") || reasons[2].contains("out of bounds"),
            "{reasons:?}"
        );
        assert!(reasons[3].contains("unreachable"), "{reasons:?}");
        // Each misbehaving input had bumped the count before trapping: rolled back.
        let counts: Vec<String> = outcomes
            .iter()
            .filter(|o| matches!(o, Outcome::Accepted(_)))
            .flat_map(put_values)
            .collect();
        assert_eq!(counts, ["1", "2", "3", "4", "5"]);
        // The same on every "replica", however it batched.
        match &reference {
            None => reference = Some(outcomes),
            Some(expected) => assert_eq!(&outcomes, expected, "seed {seed}"),
        }
    }
    // Another program in the same runtime is unaffected.
    let mut counter = start("counter", &[], CheckpointSchedule::default());
    assert_eq!(
        put_values(&run(&mut counter, &log(&["a"], &["x"]), 0)[0]),
        ["1"]
    );
}

#[test]
fn upgrade_at_an_offset_hands_the_state_to_the_new_program() {
    let msgs = log(&["a", "b"], &["x"; 8]);
    let mut program = start("counter", &[], CheckpointSchedule::default());
    let before = run(&mut program, &msgs[..4], 0);
    program
        .upgrade(module("counter-v2"), vec![], false, msgs[3].offset)
        .unwrap();
    assert_eq!(program.module().hash(), module("counter-v2").hash());
    assert_eq!(program.checkpoint().after_offset, Some(msgs[3].offset));
    let after = run(&mut program, &msgs[4..], 0);
    assert_eq!(
        before.iter().flat_map(put_values).collect::<Vec<_>>(),
        ["1", "1", "2", "2"]
    );
    assert_eq!(
        after.iter().flat_map(put_values).collect::<Vec<_>>(),
        [
            r#"{"key":"a","count":3}"#,
            r#"{"key":"b","count":3}"#,
            r#"{"key":"a","count":4}"#,
            r#"{"key":"b","count":4}"#,
        ]
    );

    // With reset_state the new program starts empty.
    program
        .upgrade(module("counter"), vec![], true, msgs[7].offset)
        .unwrap();
    assert_eq!(
        put_values(&run(&mut program, &log(&["a"], &["x"]), 0)[0]),
        ["1"]
    );

    // A program that cannot read the state is refused; the old one carries on.
    let error = program
        .upgrade(module("window-sum"), vec![], false, msgs[7].offset + 1)
        .expect_err("window-sum cannot read counter's state");
    assert!(matches!(error, UpgradeError::Refused(_)), "{error}");
    assert_eq!(program.module().hash(), module("counter").hash());
    assert_eq!(
        put_values(&run(&mut program, &log(&["a"], &["x"]), 0)[0]),
        ["2"]
    );
}

fn wasm(text: &str) -> Vec<u8> {
    wat::parse_str(text).expect("valid WAT")
}

/// The ABI's exports, for WAT modules that are otherwise well-formed.
const ABI_EXPORTS: &str = r#"
  (memory (export "memory") 1)
  (func (export "weir_abi_version") (result i32) i32.const 1)
  (func (export "weir_input_buffer") (param i32) (result i32) i32.const 1024)
  (func (export "weir_init") (param i32) (result i64) i64.const 1)
  (func (export "weir_restore") (param i32) (result i64) i64.const 1)
  (func (export "weir_process") (param i32) (result i64) i64.const 0)
  (func (export "weir_snapshot") (param i32) (result i64) i64.const 0)
"#;

#[test]
fn forbidden_imports_and_broken_abis_are_refused_at_upload_with_the_reason() {
    let runtime = runtime();
    let wasi = wasm(&format!(
        r#"(module (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32))) {ABI_EXPORTS})"#
    ));
    match runtime.load(&wasi) {
        Err(ModuleError::ForbiddenImport { module, name, .. }) => {
            assert_eq!(
                (module.as_str(), name.as_str()),
                ("wasi_snapshot_preview1", "fd_write")
            );
        }
        other => panic!("expected a forbidden import, got {other:?}"),
    }
    let clock = wasm(&format!(
        r#"(module (import "weir" "now" (func (result i64))) {ABI_EXPORTS})"#
    ));
    assert!(matches!(
        runtime.load(&clock),
        Err(ModuleError::ForbiddenImport { .. })
    ));
    let wrong_type = wasm(&format!(
        r#"(module (import "weir" "begin_input" (func (param i64))) {ABI_EXPORTS})"#
    ));
    assert!(matches!(
        runtime.load(&wrong_type),
        Err(ModuleError::ForbiddenImport { .. })
    ));

    let missing = wasm(r#"(module (memory (export "memory") 1))"#);
    let error = runtime.load(&missing).unwrap_err();
    assert!(
        matches!(error, ModuleError::MissingExport { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("weir_abi_version"), "{error}");

    let version = wasm(&format!(
        "(module {})",
        ABI_EXPORTS.replace("(result i32) i32.const 1)", "(result i32) i32.const 2)")
    ));
    assert!(matches!(
        runtime.load(&version),
        Err(ModuleError::AbiVersion {
            found: 2,
            expected: 1
        })
    ));

    let big_memory = wasm(&format!(
        "(module {})",
        ABI_EXPORTS.replace(
            r#"(memory (export "memory") 1)"#,
            r#"(memory (export "memory") 2000)"#
        )
    ));
    assert!(matches!(
        runtime.load(&big_memory),
        Err(ModuleError::Memory { .. })
    ));

    assert!(matches!(
        runtime.load(b"(module)"),
        Err(ModuleError::Invalid(_))
    ));
    assert!(matches!(
        runtime.load(b"\0asm\x01\0\0\0garbage"),
        Err(ModuleError::Invalid(_))
    ));
    let huge = vec![0u8; Limits::default().module_bytes_max + 1];
    assert!(matches!(
        runtime.load(&huge),
        Err(ModuleError::TooLarge { .. })
    ));

    let well_formed = wasm(&format!("(module {ABI_EXPORTS})"));
    runtime
        .load(&well_formed)
        .expect("the ABI alone is a valid module");
}

#[test]
fn a_module_that_breaks_the_abi_at_run_time_rejects_inputs_instead_of_crashing() {
    // Returns a result pointer far outside its memory.
    let liar = wasm(&format!(
        "(module {})",
        ABI_EXPORTS.replace(
            r#"(func (export "weir_process") (param i32) (result i64) i64.const 0)"#,
            r#"(func (export "weir_process") (param i32) (result i64) i64.const 0x7fff000000000010)"#
        )
    ));
    let module = runtime().load(&liar).unwrap();
    let mut program = Program::start(
        runtime(),
        module,
        vec![],
        CheckpointSchedule::default(),
        None,
    )
    .unwrap();
    let msgs = log(&["k"], &["a", "b"]);
    let outcomes = run(&mut program, &msgs, 0);
    assert_eq!(outcomes.len(), 2);
    for outcome in outcomes {
        assert!(
            matches!(&outcome, Outcome::Rejected(m) if m.contains("outside memory")),
            "{outcome:?}"
        );
    }
}
