//! A seed is a complete description of a run: replaying it gives the same event sequence.

use weir_sim::scenarios::{RunOptions, find, run};
use weir_sim::{ClientConfig, NemesisConfig, NetConfig, SimConfig, Simulation};

fn traced_run(seed: u64) -> (Vec<String>, weir_sim::RunStats) {
    let mut cfg = SimConfig::new(seed, 5);
    cfg.net = NetConfig::unreliable();
    cfg.snapshot_every = 10;
    let mut sim = Simulation::new(cfg);
    sim.record_trace();
    sim.start_clients(ClientConfig::default());
    sim.start_nemesis(NemesisConfig::churn());
    sim.run_for(3_000).expect("no violation");
    let stats = sim.finish().expect("no violation");
    (sim.take_trace(), stats)
}

#[test]
fn same_seed_same_trace() {
    let (t1, s1) = traced_run(7);
    let (t2, s2) = traced_run(7);
    assert!(t1.len() > 500, "a real run: {} trace lines", t1.len());
    assert_eq!(s1, s2);
    if let Some(i) = t1.iter().zip(&t2).position(|(a, b)| a != b) {
        panic!("traces diverge at line {i}:\n{}\n{}", t1[i], t2[i]);
    }
    assert_eq!(t1.len(), t2.len());
}

#[test]
fn different_seeds_differ() {
    let (_, a) = traced_run(1);
    let (_, b) = traced_run(2);
    assert_ne!(a.fingerprint, b.fingerprint);
}

#[test]
fn scenario_replay_is_exact() {
    let s = find("unreliable_churn").expect("exists");
    let a = run(s, &RunOptions::seed(42)).expect("passes");
    let b = run(s, &RunOptions::seed(42)).expect("passes");
    assert_eq!(a, b);
}
