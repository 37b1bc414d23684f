//! Deterministic simulation of clusters of weir's sans-IO Raft core (`weir-raft`), in the style
//! of FoundationDB's and TigerBeetle's simulators.
//!
//! # How it works
//!
//! A [`Simulation`] runs N `weir_raft::Raft<SimStore>` cores in one thread on **simulated time**:
//! a priority queue of events ordered by (time in ms, insertion sequence). Nothing sleeps; a
//! step pops the earliest event and executes it:
//!
//! | event | what the driver does |
//! |---|---|
//! | message delivery | `handle_message` (dropped if the link is cut or the node is down) |
//! | timer | `handle_timeout` at the core's `next_timeout()` |
//! | fsync completion | the oldest pending write becomes durable; `handle_persisted` / `handle_snapshot_persisted` |
//! | apply completion | `handle_applied`, then maybe snapshot + compact + `handle_compacted` |
//! | client tick | a client proposes a unique payload to the node it believes leads (following `NotLeader` hints) |
//! | nemesis tick | crash a node (or the leader), partition (isolate one / majority-minority / bridge / one-way link), heal, flip the network between reliable and unreliable |
//! | restart | `Raft::new` from the node's durable store |
//!
//! After every `handle_*` / `propose*` call the driver drains `poll_output()` in order, following
//! the contract in `spec/raft-api.md`: `PersistHardState` is durable at once; `PersistEntries` is
//! written to the [`SimStore`] at once (visible through `LogStore`) but durable only after a
//! simulated fsync delay (completions in order); `Send` goes to the [`Network`] (per directed
//! link: loss, duplication, random latency hence reordering, rare long delays, cuts); `Apply`
//! goes to the node's [`StateMachine`] (a digest chain; snapshot data is its encoding) and
//! `handle_applied` follows after a small delay; `PersistSnapshot` replaces the state machine and
//! the log. A crash drops the core, the un-fsynced writes and the in-flight completions; the
//! restart rebuilds the core from what was durable.
//!
//! **All randomness comes from one `u64` seed** (splitmix64, [`rng::SplitMix64`]): latencies,
//! losses, fault schedule, client timing, and each core's `Config::random_seed`. The same seed
//! replays the same run exactly ([`RunStats::fingerprint`] hashes the event sequence).
//!
//! # Checkers
//!
//! [`Checker`] runs after every step and reports the first broken invariant as a [`Violation`]
//! (a value, so tests can observe it): election safety (one leader per term), log matching
//! (same index+term ⇒ same payload and same predecessor, checked as entries are written),
//! leader completeness (a new leader holds every committed entry), state machine safety (every
//! node applies the same entry at each index, exactly once, in order; state-machine digests and
//! snapshots agree), durability of committed entries (the highest committed entry is durable on
//! enough voters that every majority holds it, also across crashes), persistence (terms and
//! votes never go back, commit index never decreases, a node never overwrites an entry it knows
//! committed), and the driver contract. At the end, [`Simulation::finish`] heals everything and
//! checks liveness (a leader is elected and a fresh proposal commits within 10 election
//! timeouts, and every member applies it) and the client oracle (every acknowledged proposal is
//! in the final log exactly once, at the acknowledged index and term).
//!
//! # Scenarios, seeds, replay
//!
//! [`scenarios::all`] lists the named scenarios (the MIT 6.5840 Raft lab list, churn, snapshots,
//! leadership transfer, membership changes, crash storms); `tests/scenarios.rs` runs each for a
//! fixed set of seeds (about 2,000 runs in all), `tests/checker_bites.rs` shows that each of
//! weir-raft's fault-injection switches is caught. For big runs use the release binary:
//!
//! ```text
//! # 10,000 seeds, cycling through every scenario (seed s runs scenario s % count):
//! cargo run -p weir-sim --release -- --scenario all --seeds 10000
//! # 2,000 seeds of one scenario, starting at seed 5000, on 2 threads:
//! cargo run -p weir-sim --release -- --scenario unreliable_churn --seeds 2000 --start 5000 --jobs 2
//! # replay one failing seed (the runner prints this line on failure), optionally with every event:
//! cargo run -p weir-sim --release -- --scenario unreliable_churn --seed 12345 --trace
//! # show the fault-injection switches being caught:
//! cargo run -p weir-sim --release -- --scenario unreliable_churn --seeds 500 --bug ack_before_persist
//! ```
//!
//! A failing seed prints one `replay:` line with the command that reproduces it, e.g.
//! `replay: cargo run -p weir-sim --release -- --scenario unreliable_churn --seed 745`
//! (plus `--bug` / `--disable` flags when the run had them). `--list` lists the scenarios.
//!
//! # Writing a scenario
//!
//! A scenario drives a [`Simulation`] through its public API: faults
//! ([`Simulation::crash`], [`Simulation::isolate`], [`Simulation::partition`],
//! [`Simulation::bridge`], [`Simulation::set_net`], [`Simulation::start_nemesis`]), clients
//! ([`Simulation::start_clients`], [`Simulation::propose`], MIT-style [`Simulation::one`]),
//! administration ([`Simulation::propose_membership`], [`Simulation::transfer_leadership`],
//! [`Simulation::add_node`]), and time ([`Simulation::run_for`], [`Simulation::run_until`]).
//! Every call returns `Err(Violation)` as soon as a checker fails.
//!
//! ```
//! use weir_sim::{ClientConfig, NemesisConfig, NetConfig, SimConfig, Simulation};
//!
//! let mut cfg = SimConfig::new(42, 5); // seed 42, five founding voters
//! cfg.net = NetConfig::unreliable();
//! let mut sim = Simulation::new(cfg);
//! sim.start_clients(ClientConfig::default());
//! sim.start_nemesis(NemesisConfig::churn());
//! sim.run_for(3_000)?; // 3 simulated seconds, checked after every event
//! let stats = sim.finish()?; // heal, then liveness + client oracle
//! assert!(stats.acked > 0);
//! # Ok::<(), weir_sim::Violation>(())
//! ```

pub mod check;
pub mod net;
pub mod rng;
pub mod scenarios;
pub mod sim;
pub mod store;

pub use check::{Check, Checker, SimResult, Violation};
pub use net::{NetConfig, Network};
pub use scenarios::{Failure, RunOptions, Scenario, replay_command};
pub use sim::{
    Ack, ClientConfig, NemesisConfig, ProposeFail, Proposed, RaftTuning, RunStats, SimConfig,
    Simulation, StateMachine,
};
pub use store::SimStore;
