//! `weir-sim`: run simulation seeds, or replay one.
//!
//! ```text
//! weir-sim [--scenario NAME|all] (--seed N | --seeds COUNT [--start S]) [--jobs J] [--trace]
//!          [--bug commit_without_majority|ack_before_persist|vote_for_stale_candidate]...
//!          [--disable CHECK]... [--strict-progress] [--list]
//! ```
//! With `--scenario all` and `--seeds`, seed `s` runs scenario `s % count` (so N seeds are N runs);
//! with `--seed`, every scenario runs that seed. Failures print the violation and a `replay:` line.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Instant;

use std::collections::BTreeSet;

use weir_raft::Bugs;
use weir_sim::Check;
use weir_sim::scenarios::{self, RunOptions, Scenario};

struct Args {
    scenario: String,
    seed: Option<u64>,
    seeds: u64,
    start: u64,
    jobs: usize,
    trace: bool,
    bugs: Bugs,
    disabled: BTreeSet<Check>,
    strict_progress: bool,
    list: bool,
}

fn usage() -> String {
    "usage: weir-sim [--scenario NAME|all] (--seed N | --seeds COUNT [--start S]) [--jobs J] [--trace] [--bug NAME]... [--disable CHECK]... [--strict-progress] [--list]"
        .to_string()
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        scenario: "all".into(),
        seed: None,
        seeds: 100,
        start: 0,
        jobs: 1,
        trace: false,
        bugs: Bugs::default(),
        disabled: BTreeSet::new(),
        strict_progress: false,
        list: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .ok_or_else(|| format!("{name} needs a value\n{}", usage()))
        };
        let num = |s: String| {
            s.parse::<u64>()
                .map_err(|e| format!("bad number {s:?}: {e}"))
        };
        match flag.as_str() {
            "--scenario" => a.scenario = value("--scenario")?,
            "--seed" => a.seed = Some(num(value("--seed")?)?),
            "--seeds" => a.seeds = num(value("--seeds")?)?,
            "--start" => a.start = num(value("--start")?)?,
            "--jobs" => a.jobs = num(value("--jobs")?)?.max(1) as usize,
            "--trace" => a.trace = true,
            "--list" => a.list = true,
            "--strict-progress" => a.strict_progress = true,
            "--bug" => match value("--bug")?.as_str() {
                "commit_without_majority" => a.bugs.commit_without_majority = true,
                "ack_before_persist" => a.bugs.ack_before_persist = true,
                "vote_for_stale_candidate" => a.bugs.vote_for_stale_candidate = true,
                other => return Err(format!("unknown bug {other:?}")),
            },
            "--disable" => {
                let name = value("--disable")?;
                let check = Check::parse(&name).ok_or_else(|| {
                    let names: Vec<&str> = Check::ALL.iter().map(|c| c.name()).collect();
                    format!("unknown check {name:?}; one of {names:?}")
                })?;
                a.disabled.insert(check);
            }
            "-h" | "--help" => return Err(usage()),
            other => return Err(format!("unknown argument {other:?}\n{}", usage())),
        }
    }
    Ok(a)
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    if args.list {
        for s in scenarios::all() {
            println!("{:<28} {}", s.name, s.proves);
        }
        return ExitCode::SUCCESS;
    }
    let chosen: Vec<&'static Scenario> = if args.scenario == "all" {
        scenarios::all().iter().collect()
    } else {
        match scenarios::find(&args.scenario) {
            Some(s) => vec![s],
            None => {
                eprintln!("no scenario {:?}; --list shows them", args.scenario);
                return ExitCode::from(2);
            }
        }
    };
    // The runs to do: (scenario, seed).
    let runs: Vec<(&'static Scenario, u64)> = match args.seed {
        Some(seed) => chosen.iter().map(|&s| (s, seed)).collect(),
        None => (args.start..args.start + args.seeds)
            .map(|seed| (chosen[(seed % chosen.len() as u64) as usize], seed))
            .collect(),
    };
    let total = runs.len() as u64;
    let runs = Arc::new(runs);
    let next = Arc::new(AtomicU64::new(0));
    let (tx, rx) = mpsc::channel();
    let started = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..args.jobs.min(runs.len().max(1)) {
        let (runs, next, tx) = (Arc::clone(&runs), Arc::clone(&next), tx.clone());
        let (bugs, trace, disabled) = (args.bugs.clone(), args.trace, args.disabled.clone());
        let strict_progress = args.strict_progress;
        handles.push(std::thread::spawn(move || {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(&(scenario, seed)) = runs.get(i as usize) else {
                    break;
                };
                let opts = RunOptions {
                    seed,
                    bugs: bugs.clone(),
                    trace,
                    disabled_checks: disabled.clone(),
                    strict_progress,
                };
                let r = scenarios::run(scenario, &opts);
                if tx.send((scenario.name, seed, r)).is_err() {
                    break;
                }
            }
        }));
    }
    drop(tx);
    let mut done = 0u64;
    let mut failures = 0u64;
    let mut events = 0u64;
    let mut sim_ms = 0u64;
    let mut acked = 0u64;
    let mut by_check = std::collections::BTreeMap::<String, u64>::new();
    for (name, seed, r) in rx {
        done += 1;
        match r {
            Ok(stats) => {
                events += stats.events;
                sim_ms += stats.sim_ms;
                acked += stats.acked;
                if runs.len() == 1 {
                    println!("{name} seed {seed}: ok {stats:?}");
                }
            }
            Err(f) => {
                failures += 1;
                *by_check.entry(f.violation.check.to_string()).or_default() += 1;
                println!("FAIL {name} seed {seed}: {}", f.violation);
                println!("replay: {}", f.replay());
            }
        }
        if done.is_multiple_of(1000) {
            println!(
                "progress: {done}/{total} runs, {failures} failed, {:.1}s",
                started.elapsed().as_secs_f64()
            );
        }
    }
    for h in handles {
        let _ = h.join();
    }
    println!(
        "summary: {done} runs, {} passed, {failures} failed, {events} events, {:.1} simulated hours, {acked} acknowledged writes, {:.1}s wall",
        done - failures,
        sim_ms as f64 / 3_600_000.0,
        started.elapsed().as_secs_f64()
    );
    for (check, n) in &by_check {
        println!("  {n} failures: {check}");
    }
    if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
