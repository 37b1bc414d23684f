//! "The checker bites": with each of weir-raft's fault-injection switches on, the simulation's
//! checkers must report a safety violation within 500 seeds. The violation comes back as a value
//! (`Failure`), with the replay command of the seed that exposed it.

use std::collections::BTreeSet;

use weir_raft::Bugs;
use weir_sim::Check;
use weir_sim::scenarios::{find, hunt};

fn caught(scenario: &str, bugs: Bugs, disabled: &[Check], expect: &[Check]) {
    let s = find(scenario).expect("scenario exists");
    let disabled: BTreeSet<Check> = disabled.iter().copied().collect();
    let Some(f) = hunt(s, &bugs, &disabled, 500) else {
        panic!("{bugs:?} on {scenario}: no safety violation within 500 seeds");
    };
    eprintln!("caught {bugs:?}: {f}");
    assert!(
        expect.contains(&f.violation.check),
        "{bugs:?}: expected one of {expect:?}, got {f}"
    );
    assert!(
        f.replay().contains("--bug"),
        "replay line carries the switch: {}",
        f.replay()
    );
}

#[test]
fn checkers_catch_commit_without_majority() {
    let bugs = Bugs {
        commit_without_majority: true,
        ..Bugs::default()
    };
    caught(
        "reliable_churn",
        bugs,
        &[],
        &[
            Check::CommittedDurable,
            Check::StateMachineSafety,
            Check::LeaderCompleteness,
        ],
    );
}

#[test]
fn checkers_catch_ack_before_persist() {
    let bugs = Bugs {
        ack_before_persist: true,
        ..Bugs::default()
    };
    caught(
        "crash_storm",
        bugs,
        &[],
        &[Check::CommittedDurable, Check::LeaderCompleteness],
    );
}

#[test]
fn checkers_catch_vote_for_stale_candidate() {
    let bugs = Bugs {
        vote_for_stale_candidate: true,
        ..Bugs::default()
    };
    caught(
        "reliable_churn",
        bugs,
        &[],
        &[
            Check::LeaderCompleteness,
            Check::StateMachineSafety,
            Check::CommittedDurable,
        ],
    );
}

/// Without the durable-quorum checker, committing without a majority is still caught where it
/// hurts: two different entries end up applied at the same index.
#[test]
fn commit_without_majority_diverges_state_machines() {
    let bugs = Bugs {
        commit_without_majority: true,
        ..Bugs::default()
    };
    caught(
        "figure8",
        bugs,
        &[Check::CommittedDurable],
        &[
            Check::StateMachineSafety,
            Check::LeaderCompleteness,
            Check::ClientOracle,
        ],
    );
}

/// Without the durable-quorum checker, acknowledging before persisting is still caught where it
/// hurts: after crashes, a leader is elected that lacks a committed entry.
#[test]
fn ack_before_persist_loses_committed_entries_in_crashes() {
    let bugs = Bugs {
        ack_before_persist: true,
        ..Bugs::default()
    };
    caught(
        "crash_storm",
        bugs,
        &[Check::CommittedDurable],
        &[
            Check::LeaderCompleteness,
            Check::StateMachineSafety,
            Check::ClientOracle,
        ],
    );
}
