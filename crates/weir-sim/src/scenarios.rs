//! Named scenarios (the MIT 6.5840 Raft lab list plus churn, snapshots, leadership transfer and
//! membership changes), a seed runner, and the replay command.
//!
//! Every scenario is a function of [`RunOptions`] (seed, fault-injection switches, trace) that
//! returns the run's [`RunStats`] or the first [`Violation`]; a panic (of the core or of the
//! simulation) is caught and reported as a [`Check::Panic`] violation.

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::fmt;
use std::ops::Range;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Once;

use weir_raft::{Bugs, LogIndex, Membership, MembershipChange, NodeId, ProposeError, Role};

use crate::check::{Check, SimResult, Violation, violation};
use crate::net::NetConfig;
use crate::rng::{SplitMix64, mix};
use crate::sim::{ClientConfig, NemesisConfig, ProposeFail, RunStats, SimConfig, Simulation};

/// Per-run options shared by all scenarios.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    pub seed: u64,
    /// Fault-injection switches handed to every core.
    pub bugs: Bugs,
    /// Print every event.
    pub trace: bool,
    /// Checkers that stay silent.
    pub disabled_checks: BTreeSet<Check>,
    /// See [`SimConfig::strict_progress`].
    pub strict_progress: bool,
}

impl RunOptions {
    /// Options for one seed, everything else default.
    pub fn seed(seed: u64) -> Self {
        Self {
            seed,
            ..Self::default()
        }
    }

    /// The base configuration of a scenario with `nodes` founders.
    pub fn config(&self, nodes: usize) -> SimConfig {
        let mut c = SimConfig::new(self.seed, nodes);
        c.raft.bugs = self.bugs.clone();
        c.trace = self.trace;
        c.disabled_checks = self.disabled_checks.clone();
        c.strict_progress = self.strict_progress;
        c
    }

    /// A generator for the scenario script's own choices (independent of the simulation's).
    pub fn script_rng(&self) -> SplitMix64 {
        SplitMix64::new(mix(self.seed ^ 0x5C21_97ED))
    }
}

/// A named scenario.
#[derive(Clone, Copy)]
pub struct Scenario {
    pub name: &'static str,
    /// What a passing run demonstrates.
    pub proves: &'static str,
    pub run: fn(&RunOptions) -> SimResult<RunStats>,
}

impl fmt::Debug for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scenario")
            .field("name", &self.name)
            .finish()
    }
}

/// A failed seed, with the command that replays it.
#[derive(Clone, Debug)]
pub struct Failure {
    pub scenario: &'static str,
    pub seed: u64,
    pub violation: Violation,
    /// Fault-injection switches the run had on.
    pub bugs: Bugs,
    /// Checks the run had off.
    pub disabled_checks: BTreeSet<Check>,
    /// The run had `--strict-progress`.
    pub strict_progress: bool,
}

impl Failure {
    /// The one-line replay command (with the run's `--bug` / `--disable` flags).
    pub fn replay(&self) -> String {
        let mut cmd = replay_command(self.scenario, self.seed);
        let b = &self.bugs;
        for (on, name) in [
            (b.commit_without_majority, "commit_without_majority"),
            (b.ack_before_persist, "ack_before_persist"),
            (b.vote_for_stale_candidate, "vote_for_stale_candidate"),
        ] {
            if on {
                cmd.push_str(" --bug ");
                cmd.push_str(name);
            }
        }
        for c in &self.disabled_checks {
            cmd.push_str(" --disable ");
            cmd.push_str(c.name());
        }
        if self.strict_progress {
            cmd.push_str(" --strict-progress");
        }
        cmd
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "scenario {} seed {}: {}\nreplay: {}",
            self.scenario,
            self.seed,
            self.violation,
            self.replay()
        )
    }
}

impl std::error::Error for Failure {}

/// The command that replays one seed of one scenario.
pub fn replay_command(scenario: &str, seed: u64) -> String {
    format!("cargo run -p weir-sim --release -- --scenario {scenario} --seed {seed}")
}

/// Every scenario, in the order the runner cycles through them.
pub fn all() -> &'static [Scenario] {
    SCENARIOS
}

/// Look a scenario up by name.
pub fn find(name: &str) -> Option<&'static Scenario> {
    SCENARIOS.iter().find(|s| s.name == name)
}

thread_local! {
    static IN_SCENARIO: Cell<bool> = const { Cell::new(false) };
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Panics inside a scenario run are reported as violations (with their location), not printed;
/// every other panic goes to the previous hook.
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if IN_SCENARIO.with(Cell::get) {
                let location = info
                    .location()
                    .map(|l| format!(" at {}:{}", l.file(), l.line()))
                    .unwrap_or_default();
                LAST_PANIC.with(|p| *p.borrow_mut() = Some(location));
            } else {
                previous(info);
            }
        }));
    });
}

/// Run one scenario for one seed; panics become [`Check::Panic`] violations.
pub fn run(scenario: &Scenario, opts: &RunOptions) -> Result<RunStats, Failure> {
    install_panic_hook();
    IN_SCENARIO.with(|f| f.set(true));
    let outcome = catch_unwind(AssertUnwindSafe(|| (scenario.run)(opts)));
    IN_SCENARIO.with(|f| f.set(false));
    let result = match outcome {
        Ok(r) => r,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic".to_string());
            let location = LAST_PANIC
                .with(|p| p.borrow_mut().take())
                .unwrap_or_default();
            Err(violation(
                Check::Panic,
                crate::sim::current_time(),
                None,
                format!("{msg}{location}"),
            ))
        }
    };
    result.map_err(|v| Failure {
        scenario: scenario.name,
        seed: opts.seed,
        violation: v,
        bugs: opts.bugs.clone(),
        disabled_checks: opts.disabled_checks.clone(),
        strict_progress: opts.strict_progress,
    })
}

/// Run `seeds` of `scenario` with otherwise default options; the first failure is returned.
pub fn run_seeds(scenario: &Scenario, seeds: Range<u64>) -> Result<Vec<RunStats>, Failure> {
    seeds.map(|s| run(scenario, &RunOptions::seed(s))).collect()
}

/// For tests: run `seeds` of the named scenario and panic with the failure and its replay
/// command if one fails.
pub fn assert_seeds(name: &str, seeds: Range<u64>) -> Vec<RunStats> {
    let scenario = find(name).unwrap_or_else(|| panic!("no scenario named {name}"));
    match run_seeds(scenario, seeds) {
        Ok(stats) => stats,
        Err(f) => panic!("{f}"),
    }
}

/// Run seeds `0..max_seeds` of `scenario` with `bugs` until a checker reports a safety
/// violation. Returns it (or None). Panics and liveness failures are skipped: the point is to show
/// the safety checkers bite.
pub fn hunt(
    scenario: &Scenario,
    bugs: &Bugs,
    disabled: &BTreeSet<Check>,
    max_seeds: u64,
) -> Option<Failure> {
    for seed in 0..max_seeds {
        let opts = RunOptions {
            seed,
            bugs: bugs.clone(),
            trace: false,
            disabled_checks: disabled.clone(),
            strict_progress: false,
        };
        if let Err(f) = run(scenario, &opts)
            && f.violation.check.is_safety()
        {
            return Some(f);
        }
    }
    None
}

macro_rules! scenario {
    ($f:ident, $proves:expr) => {
        Scenario {
            name: stringify!($f),
            proves: $proves,
            run: $f,
        }
    };
}

static SCENARIOS: &[Scenario] = &[
    scenario!(
        initial_election,
        "a leader is elected and stays leader (same term) on a reliable network"
    ),
    scenario!(
        reelection,
        "a new leader is elected when the leader is disconnected; no leader without a majority; the old leader rejoins"
    ),
    scenario!(
        many_elections,
        "7 nodes: a leader is elected whenever a majority is connected, over many disconnections"
    ),
    scenario!(
        basic_agree,
        "entries commit on every node at consecutive indexes"
    ),
    scenario!(
        fail_agree,
        "a cluster with one follower disconnected still commits; the follower catches up"
    ),
    scenario!(
        fail_no_agree,
        "nothing commits without a majority; the cluster recovers when it returns"
    ),
    scenario!(
        concurrent_starts,
        "proposals started at the same instant all commit"
    ),
    scenario!(
        rejoin,
        "a partitioned leader's uncommitted entries are replaced when it rejoins"
    ),
    scenario!(
        backup,
        "fast backtracking: many conflicting uncommitted entries are replaced quickly"
    ),
    scenario!(
        rpc_count,
        "messages per agreement and per idle second stay bounded"
    ),
    scenario!(
        persist1,
        "state survives crashes and restarts of all nodes, leaders and followers"
    ),
    scenario!(
        persist2,
        "repeated partial crashes and partitions keep committed state"
    ),
    scenario!(
        persist3,
        "a partitioned leader and a follower crashing together lose nothing committed"
    ),
    scenario!(
        figure8,
        "Raft Figure 8: leaders crash right after appending; old-term entries never commit by counting"
    ),
    scenario!(
        figure8_unreliable,
        "Figure 8 on a network with loss, duplication and long reordering"
    ),
    scenario!(
        unreliable_agree,
        "concurrent proposals commit on a lossy, duplicating, reordering network"
    ),
    scenario!(
        reliable_churn,
        "clients + random crashes, restarts and partitions: every acknowledged write survives"
    ),
    scenario!(
        unreliable_churn,
        "churn on an unreliable network with snapshots: every acknowledged write survives"
    ),
    scenario!(
        partition_churn,
        "majority/minority splits, bridges and one-way links: safety, and liveness after heal"
    ),
    scenario!(
        crash_storm,
        "frequent crashes during slow fsyncs: nothing acknowledged or committed is lost"
    ),
    scenario!(
        bridge_partition,
        "A-B-C bridge (only B talks to both): the cluster keeps committing"
    ),
    scenario!(
        snapshot_install,
        "a follower that fell behind the leader's compaction catches up through InstallSnapshot"
    ),
    scenario!(
        snapshot_install_crash,
        "InstallSnapshot with crashes (snapshot and state machine restored on restart)"
    ),
    scenario!(
        snapshot_install_unreliable,
        "InstallSnapshot with crashes on an unreliable network"
    ),
    scenario!(
        leadership_transfer,
        "leadership moves to the chosen node; proposals are refused meanwhile; a transfer to an unreachable node aborts"
    ),
    scenario!(
        membership_add,
        "a node joins as a learner, catches up, is promoted; another joins directly as a voter"
    ),
    scenario!(
        membership_remove,
        "a follower and then the leader itself are removed under load; the rest keeps committing"
    ),
    scenario!(
        membership_churn,
        "random membership changes with crashes and partitions under load"
    ),
];

fn fail(sim: &Simulation, msg: impl Into<String>) -> Violation {
    violation(
        Check::Scenario,
        sim.now(),
        None,
        format!("{}\n{}", msg.into(), sim.describe_nodes()),
    )
}

fn ids(n: u64) -> Vec<NodeId> {
    (1..=n).map(NodeId).collect()
}

/// Crash and restart at once (MIT `start1`).
fn reboot(sim: &mut Simulation, n: NodeId) -> SimResult<()> {
    sim.crash(n);
    sim.restart(n)
}

/// The node after `n` in 1..=count, wrapping (MIT's `(leader + k) % servers`).
fn plus(n: NodeId, k: u64, count: u64) -> NodeId {
    NodeId((n.0 - 1 + k) % count + 1)
}

// ---------------------------------------------------------------------------------- elections

fn initial_election(o: &RunOptions) -> SimResult<RunStats> {
    let mut sim = Simulation::new(o.config(3));
    sim.check_one_leader()?;
    sim.run_for(50)?;
    let t1 = sim.check_terms()?;
    if t1.0 < 1 {
        return Err(fail(&sim, format!("term is {t1} after an election")));
    }
    let et = sim.election_timeout();
    sim.run_for(2 * et)?;
    let t2 = sim.check_terms()?;
    if t1 != t2 {
        return Err(fail(
            &sim,
            format!("term changed from {t1} to {t2} without failures"),
        ));
    }
    sim.check_one_leader()?;
    sim.finish()
}

fn reelection(o: &RunOptions) -> SimResult<RunStats> {
    let mut sim = Simulation::new(o.config(3));
    let et = sim.election_timeout();
    let l1 = sim.check_one_leader()?;
    sim.isolate(l1);
    sim.check_one_leader()?;
    sim.reconnect(l1);
    let l2 = sim.check_one_leader()?;
    sim.isolate(l2);
    sim.isolate(plus(l2, 1, 3));
    sim.run_for(2 * et)?;
    sim.check_no_leader()?;
    sim.reconnect(plus(l2, 1, 3));
    sim.check_one_leader()?;
    sim.reconnect(l2);
    sim.check_one_leader()?;
    sim.finish()
}

fn many_elections(o: &RunOptions) -> SimResult<RunStats> {
    let mut sim = Simulation::new(o.config(7));
    let mut rng = o.script_rng();
    sim.check_one_leader()?;
    for _ in 0..10 {
        let mut all = ids(7);
        rng.shuffle(&mut all);
        for &n in &all[..3] {
            sim.isolate(n);
        }
        sim.check_one_leader()?;
        for &n in &all[..3] {
            sim.reconnect(n);
        }
    }
    sim.check_one_leader()?;
    sim.finish()
}

// ---------------------------------------------------------------------------------- agreement

fn basic_agree(o: &RunOptions) -> SimResult<RunStats> {
    let mut sim = Simulation::new(o.config(3));
    sim.check_one_leader()?;
    let mut prev = 0;
    for _ in 0..3 {
        let (before, _) = sim.n_committed(prev + 2);
        if before > 0 {
            return Err(fail(&sim, "some node committed before the proposal"));
        }
        let i = sim.one(3, false)?;
        if i <= prev {
            return Err(fail(&sim, format!("index {i} after {prev}")));
        }
        if prev != 0 && i != prev + 1 {
            return Err(fail(
                &sim,
                format!(
                    "expected index {} got {i} (stable leader, no gaps)",
                    prev + 1
                ),
            ));
        }
        prev = i;
    }
    sim.finish()
}

fn fail_agree(o: &RunOptions) -> SimResult<RunStats> {
    let mut sim = Simulation::new(o.config(3));
    let et = sim.election_timeout();
    sim.one(3, false)?;
    let l = sim.check_one_leader()?;
    let f = plus(l, 1, 3);
    sim.isolate(f);
    sim.one(2, false)?;
    sim.one(2, false)?;
    sim.run_for(et)?;
    sim.one(2, false)?;
    sim.one(2, false)?;
    sim.reconnect(f);
    sim.one(3, true)?;
    sim.run_for(et)?;
    sim.one(3, true)?;
    sim.finish()
}

fn fail_no_agree(o: &RunOptions) -> SimResult<RunStats> {
    let mut sim = Simulation::new(o.config(5));
    let et = sim.election_timeout();
    sim.one(5, false)?;
    let l = sim.check_one_leader()?;
    for k in 1..=3 {
        sim.isolate(plus(l, k, 5));
    }
    let p = match sim.propose(l)? {
        Ok(p) => p,
        Err(e) => return Err(fail(&sim, format!("leader {l} refused a proposal: {e:?}"))),
    };
    sim.run_for(2 * et)?;
    let (n, _) = sim.n_committed(p.index.0);
    if n > 0 {
        return Err(fail(
            &sim,
            format!("{n} nodes committed index {} without a majority", p.index),
        ));
    }
    for k in 1..=3 {
        sim.reconnect(plus(l, k, 5));
    }
    let l2 = sim.check_one_leader()?;
    let deadline = sim.now() + 4 * et;
    loop {
        match sim.propose(l2)? {
            Ok(_) => break,
            Err(_) if sim.now() < deadline => sim.run_for(10)?,
            Err(e) => return Err(fail(&sim, format!("leader {l2} refused proposals: {e:?}"))),
        }
    }
    sim.one(5, true)?;
    sim.finish()
}

fn concurrent_starts(o: &RunOptions) -> SimResult<RunStats> {
    let mut sim = Simulation::new(o.config(3));
    let et = sim.election_timeout();
    for _attempt in 0..5 {
        let l = sim.check_one_leader()?;
        let Ok(first) = sim.propose(l)? else { continue };
        let mut ps = vec![first];
        for _ in 0..5 {
            if let Ok(p) = sim.propose(l)? {
                ps.push(p);
            }
        }
        let term = first.term;
        let done = sim.run_until(sim.now() + 4 * et, |s| {
            ps.iter().all(|p| s.is_acked(p.payload_id))
                || s.status(l).is_none_or(|st| st.term != term)
        })?;
        if !done || ps.iter().any(|p| !sim.is_acked(p.payload_id)) {
            // The term changed under us: try again, as the lab test does.
            continue;
        }
        let last = ps[ps.len() - 1].index.0;
        if !sim.run_until(sim.now() + 4 * et, |s| s.n_committed(last).0 == 3)? {
            return Err(fail(
                &sim,
                format!("index {last} not applied on all 3 nodes"),
            ));
        }
        return sim.finish();
    }
    Err(fail(
        &sim,
        "concurrent proposals never all committed within one term",
    ))
}

fn rejoin(o: &RunOptions) -> SimResult<RunStats> {
    let mut sim = Simulation::new(o.config(3));
    sim.one(3, true)?;
    let l1 = sim.check_one_leader()?;
    sim.isolate(l1);
    for _ in 0..3 {
        let _ = sim.propose(l1)?;
    }
    sim.one(2, true)?;
    let l2 = sim.check_one_leader()?;
    sim.isolate(l2);
    sim.reconnect(l1);
    sim.one(2, true)?;
    sim.reconnect(l2);
    sim.one(3, true)?;
    sim.finish()
}

fn backup(o: &RunOptions) -> SimResult<RunStats> {
    let mut sim = Simulation::new(o.config(5));
    let et = sim.election_timeout();
    sim.one(5, true)?;
    let l1 = sim.check_one_leader()?;
    let others: Vec<NodeId> = (2..=4).map(|k| plus(l1, k, 5)).collect();
    let f1 = plus(l1, 1, 5);
    for &n in &others {
        sim.isolate(n);
    }
    for _ in 0..50 {
        let _ = sim.propose(l1)?;
    }
    sim.run_for(et / 2)?;
    sim.isolate(l1);
    sim.isolate(f1);
    for &n in &others {
        sim.reconnect(n);
    }
    for _ in 0..50 {
        sim.one(3, true)?;
    }
    let l2 = sim.check_one_leader()?;
    let other = *others.iter().find(|&&n| n != l2).expect("3 others");
    sim.isolate(other);
    for _ in 0..50 {
        let _ = sim.propose(l2)?;
    }
    sim.run_for(et / 2)?;
    for n in ids(5) {
        sim.isolate(n);
    }
    sim.reconnect(l1);
    sim.reconnect(f1);
    sim.reconnect(other);
    for _ in 0..50 {
        sim.one(3, true)?;
    }
    for n in ids(5) {
        sim.reconnect(n);
    }
    sim.one(5, true)?;
    sim.finish()
}

fn rpc_count(o: &RunOptions) -> SimResult<RunStats> {
    let mut cfg = o.config(3);
    cfg.snapshot_every = 0;
    let hb = cfg.raft.heartbeat_interval_ms;
    let mut sim = Simulation::new(cfg);
    let et = sim.election_timeout();
    let l = sim.check_one_leader()?;
    // Elections: (Pre)Vote requests and responses of a few rounds, plus heartbeats so far.
    let total = sim.stats().messages_sent;
    let heartbeats = (sim.now() / hb + 1) * 2 * 2;
    if total > 60 + heartbeats {
        return Err(fail(
            &sim,
            format!("{total} messages to elect a leader (heartbeat allowance {heartbeats})"),
        ));
    }
    let mut ok = false;
    'attempts: for _ in 0..3 {
        let l = sim.check_one_leader().unwrap_or(l);
        let start_msgs = sim.stats().messages_sent;
        let start_t = sim.now();
        let iters = 10u64;
        let mut ps = Vec::new();
        for _ in 0..iters {
            match sim.propose(l)? {
                Ok(p) => ps.push(p),
                Err(_) => continue 'attempts,
            }
        }
        let term = ps[0].term;
        let done = sim.run_until(sim.now() + 4 * et, |s| {
            ps.iter().all(|p| s.n_committed(p.index.0).0 == 3)
                || s.status(l).is_none_or(|st| st.term != term)
        })?;
        if !done || sim.status(l).is_none_or(|st| st.term != term) {
            continue;
        }
        let used = sim.stats().messages_sent - start_msgs;
        let elapsed = sim.now() - start_t;
        // The lab's bound, (iters + 1 + 3) * servers RPCs, counted as requests + responses, plus
        // the heartbeats that fall in the elapsed time. (Pipelined appends that arrive out of order
        // are rejected and resent, which this allowance absorbs.)
        let allowed = (iters + 1 + 3) * 3 * 2 + (elapsed / hb + 1) * 2 * 2;
        if used > allowed {
            return Err(fail(
                &sim,
                format!(
                    "{used} messages for {iters} agreements in {elapsed}ms (allowed {allowed})"
                ),
            ));
        }
        ok = true;
        break;
    }
    if !ok {
        return Err(fail(&sim, "term changed too often to count messages"));
    }
    // Let the tail of the agreement (retransmissions of reordered appends) settle first.
    sim.run_for(et)?;
    let before = sim.stats().messages_sent;
    sim.run_for(1_000)?;
    let idle = sim.stats().messages_sent - before;
    let allowed = (1_000 / hb + 2) * 2 * 2;
    if idle > allowed {
        return Err(fail(
            &sim,
            format!("{idle} messages in 1s of idleness (allowed {allowed})"),
        ));
    }
    sim.finish()
}

// ---------------------------------------------------------------------------------- persistence

fn persist1(o: &RunOptions) -> SimResult<RunStats> {
    let mut sim = Simulation::new(o.config(3));
    sim.one(3, true)?;
    for n in ids(3) {
        reboot(&mut sim, n)?;
    }
    sim.one(3, true)?;
    let l1 = sim.check_one_leader()?;
    reboot(&mut sim, l1)?;
    sim.one(3, true)?;
    let l2 = sim.check_one_leader()?;
    sim.crash(l2);
    sim.one(2, true)?;
    sim.restart(l2)?;
    let deadline = sim.now() + 10 * sim.election_timeout();
    let target = sim.checker().max_committed();
    sim.run_until(deadline, |s| s.n_committed(target).0 == 3)?;
    let i3 = plus(sim.check_one_leader()?, 1, 3);
    sim.crash(i3);
    sim.one(2, true)?;
    sim.restart(i3)?;
    sim.one(3, true)?;
    sim.finish()
}

fn persist2(o: &RunOptions) -> SimResult<RunStats> {
    let mut sim = Simulation::new(o.config(5));
    let et = sim.election_timeout();
    for _ in 0..5 {
        sim.one(5, true)?;
        let l1 = sim.check_one_leader()?;
        sim.isolate(plus(l1, 1, 5));
        sim.isolate(plus(l1, 2, 5));
        sim.one(3, true)?;
        sim.isolate(l1);
        sim.isolate(plus(l1, 3, 5));
        sim.isolate(plus(l1, 4, 5));
        for k in [1, 2] {
            let n = plus(l1, k, 5);
            reboot(&mut sim, n)?;
            sim.reconnect(n);
        }
        sim.run_for(et)?;
        let n = plus(l1, 3, 5);
        reboot(&mut sim, n)?;
        sim.reconnect(n);
        sim.one(3, true)?;
        sim.reconnect(l1);
        sim.reconnect(plus(l1, 4, 5));
    }
    sim.one(5, true)?;
    sim.finish()
}

fn persist3(o: &RunOptions) -> SimResult<RunStats> {
    let mut sim = Simulation::new(o.config(3));
    sim.one(3, true)?;
    let l = sim.check_one_leader()?;
    sim.isolate(plus(l, 2, 3));
    sim.one(2, true)?;
    sim.crash(l);
    sim.crash(plus(l, 1, 3));
    sim.reconnect(plus(l, 2, 3));
    sim.reconnect(l);
    sim.restart(l)?;
    sim.one(2, true)?;
    sim.reconnect(plus(l, 1, 3));
    sim.restart(plus(l, 1, 3))?;
    sim.one(3, true)?;
    sim.finish()
}

fn figure8(o: &RunOptions) -> SimResult<RunStats> {
    let mut sim = Simulation::new(o.config(5));
    let mut rng = o.script_rng();
    let et = sim.election_timeout();
    sim.one(1, true)?;
    for _ in 0..150 {
        let mut leader = None;
        for n in sim.up_nodes() {
            if sim.propose(n)?.is_ok() {
                leader = Some(n);
            }
        }
        let pause = if rng.chance(0.1) {
            rng.range(0, et / 2)
        } else {
            rng.range(0, 13)
        };
        sim.run_for(pause)?;
        if let Some(l) = leader {
            sim.crash(l);
        }
        if sim.up_nodes().len() < 3 {
            let down: Vec<NodeId> = ids(5).into_iter().filter(|&n| !sim.is_up(n)).collect();
            if let Some(&n) = rng.pick(&down) {
                sim.restart(n)?;
            }
        }
    }
    for n in ids(5) {
        sim.restart(n)?;
    }
    sim.one(5, true)?;
    sim.finish()
}

fn figure8_unreliable(o: &RunOptions) -> SimResult<RunStats> {
    let mut cfg = o.config(5);
    cfg.net = NetConfig::unreliable();
    let mut sim = Simulation::new(cfg);
    let mut rng = o.script_rng();
    let et = sim.election_timeout();
    sim.one(1, true)?;
    for iter in 0..300 {
        if iter == 100 {
            sim.set_net(NetConfig::hostile());
        }
        let mut leader = None;
        for n in sim.connected_nodes() {
            if sim.propose(n)?.is_ok() && leader.is_none() {
                leader = Some(n);
            }
        }
        let pause = if rng.chance(0.1) {
            rng.range(0, et / 2)
        } else {
            rng.range(0, 13)
        };
        sim.run_for(pause)?;
        if let Some(l) = leader
            && rng.chance(0.5)
        {
            sim.isolate(l);
        }
        if sim.connected_nodes().len() < 3 {
            let iso: Vec<NodeId> = ids(5)
                .into_iter()
                .filter(|&n| !sim.is_connected(n))
                .collect();
            if let Some(&n) = rng.pick(&iso) {
                sim.reconnect(n);
            }
        }
    }
    sim.set_net(NetConfig::reliable());
    for n in ids(5) {
        sim.reconnect(n);
    }
    sim.one(5, true)?;
    sim.finish()
}

fn unreliable_agree(o: &RunOptions) -> SimResult<RunStats> {
    let mut cfg = o.config(5);
    cfg.net = NetConfig::unreliable();
    let mut sim = Simulation::new(cfg);
    sim.start_clients(ClientConfig {
        clients: 4,
        interval_min_ms: 1,
        interval_max_ms: 40,
        pad_max: 32,
    });
    for _ in 0..20 {
        sim.one(1, true)?;
    }
    sim.stop_clients();
    sim.set_net(NetConfig::reliable());
    sim.one(5, true)?;
    sim.finish()
}

// ---------------------------------------------------------------------------------- churn

/// Per-seed variation of the cores' batching knobs and the disk, so churn runs cover more
/// replication paths (one entry per append, no pipelining, tiny byte budgets, slow fsync...).
fn vary(cfg: &mut SimConfig, rng: &mut SplitMix64) {
    cfg.raft.max_entries_per_append = *rng
        .pick(&[1, 3, 64, cfg.raft.max_entries_per_append])
        .expect("non-empty");
    cfg.raft.max_inflight_appends = *rng
        .pick(&[1, 2, cfg.raft.max_inflight_appends])
        .expect("non-empty");
    cfg.raft.max_bytes_per_append = *rng
        .pick(&[100, 1_000, cfg.raft.max_bytes_per_append])
        .expect("non-empty");
    cfg.snapshot_every = *rng.pick(&[0, 7, 25, 100]).expect("non-empty");
    if rng.chance(0.3) {
        cfg.fsync_max_ms = 40;
    }
    if rng.chance(0.2) {
        cfg.raft.pre_vote = false;
    }
    if rng.chance(0.2) {
        cfg.raft.check_quorum = false;
    }
}

fn churn(
    o: &RunOptions,
    net: NetConfig,
    nemesis: NemesisConfig,
    nodes_choice: &[usize],
    duration_ms: u64,
) -> SimResult<RunStats> {
    let mut rng = o.script_rng();
    let nodes = *rng.pick(nodes_choice).expect("non-empty");
    let mut cfg = o.config(nodes);
    cfg.net = net;
    vary(&mut cfg, &mut rng);
    let mut sim = Simulation::new(cfg);
    sim.start_clients(ClientConfig::default());
    sim.start_nemesis(nemesis);
    sim.run_for(duration_ms)?;
    sim.finish()
}

fn reliable_churn(o: &RunOptions) -> SimResult<RunStats> {
    let mut n = NemesisConfig::churn();
    n.flaky_net = 0;
    churn(o, NetConfig::reliable(), n, &[3, 5], 8_000)
}

fn unreliable_churn(o: &RunOptions) -> SimResult<RunStats> {
    churn(
        o,
        NetConfig::unreliable(),
        NemesisConfig::churn(),
        &[3, 5],
        8_000,
    )
}

fn partition_churn(o: &RunOptions) -> SimResult<RunStats> {
    churn(
        o,
        NetConfig::reliable(),
        NemesisConfig::partitions_only(),
        &[3, 4, 5, 7],
        8_000,
    )
}

fn crash_storm(o: &RunOptions) -> SimResult<RunStats> {
    let mut rng = o.script_rng();
    let nodes = *rng.pick(&[3, 5]).expect("non-empty");
    let mut cfg = o.config(nodes);
    cfg.fsync_min_ms = 5;
    cfg.fsync_max_ms = 60;
    cfg.snapshot_every = *rng.pick(&[0, 10, 50]).expect("non-empty");
    let mut sim = Simulation::new(cfg);
    sim.start_clients(ClientConfig {
        clients: 4,
        interval_min_ms: 5,
        interval_max_ms: 60,
        pad_max: 16,
    });
    sim.start_nemesis(NemesisConfig {
        interval_min_ms: 30,
        interval_max_ms: 400,
        crash: 3,
        crash_leader: 2,
        partition: 0,
        heal: 0,
        flaky_net: 0,
        max_down: nodes / 2,
        down_min_ms: 0,
        down_max_ms: 400,
    });
    sim.run_for(6_000)?;
    sim.finish()
}

fn bridge_partition(o: &RunOptions) -> SimResult<RunStats> {
    let mut rng = o.script_rng();
    let mut sim = Simulation::new(o.config(3));
    sim.one(3, true)?;
    sim.start_clients(ClientConfig::default());
    let mut nodes = ids(3);
    rng.shuffle(&mut nodes);
    sim.bridge(&[nodes[0]], nodes[1], &[nodes[2]]);
    for _ in 0..5 {
        sim.one(2, true)?;
        let pause = rng.range(0, 2 * sim.election_timeout());
        sim.run_for(pause)?;
    }
    // Move the bridge while clients keep going.
    rng.shuffle(&mut nodes);
    sim.bridge(&[nodes[0]], nodes[1], &[nodes[2]]);
    for _ in 0..5 {
        sim.one(2, true)?;
    }
    sim.finish()
}

// ---------------------------------------------------------------------------------- snapshots

fn snapshot_config(o: &RunOptions, nodes: usize) -> SimConfig {
    let mut cfg = o.config(nodes);
    cfg.snapshot_every = 10;
    cfg
}

fn snapshot_install(o: &RunOptions) -> SimResult<RunStats> {
    let mut sim = Simulation::new(snapshot_config(o, 3));
    let mut rng = o.script_rng();
    sim.one(3, true)?;
    for _round in 0..3 {
        let l = sim.check_one_leader()?;
        let f = plus(l, 1 + rng.range(0, 2), 3);
        sim.isolate(f);
        for _ in 0..(25 + rng.range(0, 20)) {
            sim.one(2, true)?;
        }
        sim.reconnect(f);
        sim.one(3, true)?;
    }
    if sim.stats().snapshots_installed == 0 {
        return Err(fail(&sim, "no follower caught up through InstallSnapshot"));
    }
    sim.finish()
}

fn snapshot_crash_common(o: &RunOptions, unreliable: bool) -> SimResult<RunStats> {
    let mut cfg = snapshot_config(o, 3);
    if unreliable {
        cfg.net = NetConfig::unreliable();
    }
    let mut sim = Simulation::new(cfg);
    let mut rng = o.script_rng();
    sim.one(3, true)?;
    for _round in 0..4 {
        let victim = NodeId(rng.range_inclusive(1, 3));
        sim.crash(victim);
        for _ in 0..(12 + rng.range(0, 20)) {
            sim.one(2, true)?;
        }
        sim.restart(victim)?;
        sim.one(3, true)?;
    }
    if sim.stats().snapshots_installed == 0 {
        return Err(fail(&sim, "no follower caught up through InstallSnapshot"));
    }
    sim.set_net(NetConfig::reliable());
    sim.finish()
}

fn snapshot_install_crash(o: &RunOptions) -> SimResult<RunStats> {
    snapshot_crash_common(o, false)
}

fn snapshot_install_unreliable(o: &RunOptions) -> SimResult<RunStats> {
    snapshot_crash_common(o, true)
}

// ---------------------------------------------------------------------------------- leadership transfer

fn leadership_transfer(o: &RunOptions) -> SimResult<RunStats> {
    let mut sim = Simulation::new(o.config(5));
    let mut rng = o.script_rng();
    let et = sim.election_timeout();
    sim.one(5, true)?;
    sim.start_clients(ClientConfig::default());
    for _round in 0..4 {
        let l = sim.check_one_leader()?;
        let others: Vec<NodeId> = ids(5).into_iter().filter(|&n| n != l).collect();
        let target = *rng.pick(&others).expect("4 others");
        match sim.transfer_leadership(l, target)? {
            Ok(()) => {}
            Err(ProposeFail::Refused(ProposeError::NotLeader { .. })) => continue,
            Err(e) => {
                return Err(fail(
                    &sim,
                    format!("transfer {l} -> {target} refused: {e:?}"),
                ));
            }
        }
        if sim.status(l).is_some_and(|s| s.role == Role::Leader) {
            match sim.propose(l)? {
                Err(ProposeFail::Refused(ProposeError::TransferInProgress)) => {}
                other => {
                    return Err(fail(
                        &sim,
                        format!(
                            "leader {l} accepted a proposal during a transfer to {target}: {other:?}"
                        ),
                    ));
                }
            }
        }
        let moved = sim.run_until(sim.now() + 2 * et, |s| {
            s.status(target).is_some_and(|st| st.role == Role::Leader)
        })?;
        if !moved {
            return Err(fail(
                &sim,
                format!(
                    "leadership did not move from {l} to {target} within {}ms",
                    2 * et
                ),
            ));
        }
        sim.one(5, true)?;
    }
    // A transfer to an unreachable node must abort and the leader must serve again.
    let l = sim.check_one_leader()?;
    let target = plus(l, 1, 5);
    sim.isolate(target);
    let _ = sim.transfer_leadership(l, target)?;
    sim.run_for(2 * et)?;
    sim.one(4, true)?;
    sim.reconnect(target);
    sim.finish()
}

// ---------------------------------------------------------------------------------- membership

/// Propose `change` through the current leader until it is accepted, then wait until it commits
/// (the checker saw a committed entry at its index). Returns its index, or None on timeout.
fn change_membership(
    sim: &mut Simulation,
    change: MembershipChange,
    within_ms: u64,
) -> SimResult<Option<LogIndex>> {
    let deadline = sim.now() + within_ms;
    while sim.now() < deadline {
        let Some(l) = sim.leader() else {
            sim.run_for(20)?;
            continue;
        };
        match sim.propose_membership(l, change.clone())? {
            Ok((index, term)) => {
                let ok = sim.run_until(deadline, |s| {
                    s.checker().committed(index.0).is_some()
                        || s.status(l).is_none_or(|st| st.term != term)
                })?;
                if ok
                    && sim
                        .checker()
                        .committed(index.0)
                        .is_some_and(|c| c.term == term)
                {
                    return Ok(Some(index));
                }
            }
            Err(ProposeFail::Refused(ProposeError::InvalidMembershipChange(_))) => return Ok(None),
            Err(_) => sim.run_for(20)?,
        }
    }
    Ok(None)
}

fn membership_add(o: &RunOptions) -> SimResult<RunStats> {
    let mut sim = Simulation::new(o.config(3));
    let et = sim.election_timeout();
    sim.one(3, true)?;
    sim.start_clients(ClientConfig::default());
    // Long enough for the leader to compact: the new node starts from an InstallSnapshot.
    sim.run_for(2_000)?;
    let n4 = sim.add_node(Membership::default())?;
    if change_membership(&mut sim, MembershipChange::AddLearner(n4), 20 * et)?.is_none() {
        return Err(fail(&sim, format!("could not add {n4} as a learner")));
    }
    let caught_up = sim.run_until(sim.now() + 20 * et, |s| {
        let c = s.checker().max_committed();
        s.state_machine(n4).is_some_and(|sm| sm.applied + 5 >= c)
    })?;
    if !caught_up {
        return Err(fail(&sim, format!("learner {n4} did not catch up")));
    }
    if change_membership(&mut sim, MembershipChange::PromoteLearner(n4), 20 * et)?.is_none() {
        return Err(fail(&sim, format!("could not promote {n4}")));
    }
    let n5 = sim.add_node(Membership::default())?;
    if change_membership(&mut sim, MembershipChange::AddVoter(n5), 20 * et)?.is_none() {
        return Err(fail(&sim, format!("could not add {n5} as a voter")));
    }
    sim.run_for(1_000)?;
    let voters = sim.checker().committed_membership().voters.clone();
    if !voters.contains(&n4) || !voters.contains(&n5) || voters.len() != 5 {
        return Err(fail(&sim, format!("committed voters are {voters:?}")));
    }
    // The new voters must count: with two founders down, the cluster still commits.
    sim.stop_clients();
    sim.crash(NodeId(1));
    sim.crash(NodeId(2));
    sim.one(3, true)?;
    sim.finish()
}

fn membership_remove(o: &RunOptions) -> SimResult<RunStats> {
    let mut sim = Simulation::new(o.config(5));
    let et = sim.election_timeout();
    sim.one(5, true)?;
    sim.start_clients(ClientConfig::default());
    sim.run_for(500)?;
    let l = sim.check_one_leader()?;
    let f = plus(l, 1, 5);
    let Some(removal) = change_membership(&mut sim, MembershipChange::RemoveNode(f), 20 * et)?
    else {
        return Err(fail(&sim, format!("could not remove follower {f}")));
    };
    // The removed node stays up for a while. Once it knows its removal committed it must not
    // campaign (before that it may: it could be needed to commit its own removal, dissertation
    // §4.2.2); and it must never disrupt the cluster.
    let term_before = sim.status(l).map(|st| st.term);
    let campaigned = sim.run_until(sim.now() + 2 * et, |s| {
        s.status(f).is_some_and(|st| {
            matches!(st.role, Role::Candidate | Role::PreCandidate) && st.commit_index >= removal
        })
    })?;
    if campaigned {
        return Err(fail(
            &sim,
            format!(
                "removed node {f} campaigns although it knows its removal ({removal}) committed"
            ),
        ));
    }
    if sim.status(l).map(|st| st.term) != term_before {
        return Err(fail(
            &sim,
            format!("the removed node {f} disrupted the leader {l} (term changed)"),
        ));
    }
    sim.shutdown(f);
    let l = sim.check_one_leader()?;
    if change_membership(&mut sim, MembershipChange::RemoveNode(l), 20 * et)?.is_none() {
        return Err(fail(&sim, format!("could not remove leader {l}")));
    }
    let stepped_down = sim.run_until(sim.now() + 4 * et, |s| {
        s.status(l).is_none_or(|st| st.role != Role::Leader)
    })?;
    if !stepped_down {
        return Err(fail(&sim, format!("removed leader {l} did not step down")));
    }
    sim.run_for(2 * et)?;
    sim.shutdown(l);
    let new_leader = sim.check_one_leader()?;
    if new_leader == l || new_leader == f {
        return Err(fail(&sim, format!("removed node {new_leader} leads")));
    }
    sim.one(3, true)?;
    let voters = sim.checker().committed_membership().voters.clone();
    if voters.len() != 3 || voters.contains(&l) || voters.contains(&f) {
        return Err(fail(&sim, format!("committed voters are {voters:?}")));
    }
    sim.finish()
}

fn membership_churn(o: &RunOptions) -> SimResult<RunStats> {
    let mut rng = o.script_rng();
    let mut cfg = o.config(3);
    if rng.chance(0.5) {
        cfg.net = NetConfig::unreliable();
    }
    vary(&mut cfg, &mut rng);
    let mut sim = Simulation::new(cfg);
    let et = sim.election_timeout();
    sim.start_clients(ClientConfig::default());
    let mut nemesis = NemesisConfig::churn();
    nemesis.max_down = 1;
    nemesis.interval_min_ms = 300;
    sim.start_nemesis(nemesis);
    for _ in 0..6 {
        sim.run_for(rng.range(200, 1_500))?;
        let m = sim.checker().committed_membership().clone();
        let change = if m.voters.len() <= 3 || (m.voters.len() < 5 && rng.chance(0.5)) {
            if let Some(&learner) = m.learners.iter().next() {
                MembershipChange::PromoteLearner(learner)
            } else {
                let n = sim.add_node(Membership::default())?;
                if rng.chance(0.5) {
                    MembershipChange::AddLearner(n)
                } else {
                    MembershipChange::AddVoter(n)
                }
            }
        } else {
            let voters: Vec<NodeId> = m.voters.iter().copied().collect();
            MembershipChange::RemoveNode(*rng.pick(&voters).expect("voters"))
        };
        let removed = match &change {
            MembershipChange::RemoveNode(n) => Some(*n),
            _ => None,
        };
        // Under faults a change may not get through in time: that is not a failure here.
        if change_membership(&mut sim, change, 10 * et)?.is_some()
            && let Some(r) = removed
        {
            sim.run_for(et)?;
            sim.shutdown(r);
        }
    }
    sim.finish()
}
