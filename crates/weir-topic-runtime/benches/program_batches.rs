//! What a topic program costs per message inside the runtime: the `counter` example on
//! 200,000 inputs in batches of 1 to 4,096, with the default checkpoint schedule (every 10,000
//! inputs the state is serialized and the instance rebuilt from it). Read against the floor in
//! `../shared/reference/limits.md` (0.0012 µs/message for a bare Wasm call with 256 messages
//! per call): the rest is encoding, per-input fuel resets, the program itself and checkpoints.
//!
//! `cargo bench -p weir-topic-runtime --bench program_batches [-- --inputs N]`

use std::time::Instant;
use weir_topic_runtime::{CheckpointSchedule, Input, Limits, Program, Runtime};

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> anyhow::Result<()> {
    let inputs_total = arg("--inputs", 200_000);
    let runtime = Runtime::new(Limits::default())?;
    let module = runtime.load(&weir_wasm_examples::module("counter")?)?;
    // Laminar's shape: 4-byte keys (1,000 distinct), 1-byte values.
    let keys: Vec<[u8; 4]> = (0..1_000u32).map(u32::to_le_bytes).collect();
    let inputs: Vec<Input<'_>> = (0..inputs_total)
        .map(|i| Input {
            offset: i as u64 + 1,
            timestamp_ms: 1_700_000_000_000 + i as u64 / 100,
            key: &keys[i % keys.len()],
            value: b"x",
        })
        .collect();
    println!("counter program, {inputs_total} inputs, 1,000 keys, default checkpoints");
    println!("| batch | seconds | inputs/s | µs/input | checkpoints |");
    println!("|---:|---:|---:|---:|---:|");
    let mut rows = Vec::new();
    for batch in [1usize, 16, 256, 4096] {
        let mut program = Program::start(
            runtime.clone(),
            module.clone(),
            Vec::new(),
            CheckpointSchedule::default(),
            None,
        )?;
        let started = Instant::now();
        for chunk in inputs.chunks(batch) {
            program.process(chunk)?;
        }
        let elapsed = started.elapsed();
        let us = elapsed.as_secs_f64() * 1e6 / inputs_total as f64;
        println!(
            "| {batch} | {:.3} | {:.0} | {us:.3} | {} |",
            elapsed.as_secs_f64(),
            inputs_total as f64 / elapsed.as_secs_f64(),
            program.checkpoints_taken()
        );
        rows.push((batch, us));
    }
    println!();
    println!("µs/input");
    let max = rows.iter().map(|r| r.1).fold(f64::MIN_POSITIVE, f64::max);
    for (batch, us) in rows {
        let bar = ((us / max) * 50.0).round() as usize;
        println!("batch {batch:>5} | {:<50} {us:.3}", "#".repeat(bar.max(1)));
    }
    Ok(())
}
