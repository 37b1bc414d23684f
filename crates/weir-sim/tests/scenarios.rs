//! Every named scenario for a fixed set of seeds (the release binary runs thousands: see the crate
//! docs). A failure prints the violation and the one-line replay command.

use weir_sim::scenarios::assert_seeds;

macro_rules! scenario_tests {
    ($($test:ident => $scenario:literal, $seeds:expr;)*) => {
        $(
            #[test]
            fn $test() {
                assert_seeds($scenario, $seeds);
            }
        )*

        const TESTED: &[&str] = &[$($scenario),*];
    };
}

// test name => scenario name (for `--scenario`), seeds
scenario_tests! {
    initial_election_elects_one_stable_leader => "initial_election", 0..80;
    reelection_after_leader_disconnect_and_none_without_majority => "reelection", 0..80;
    many_elections_seven_nodes_elect_whenever_a_majority_is_connected => "many_elections", 0..40;
    basic_agree_commits_everywhere_at_consecutive_indexes => "basic_agree", 0..80;
    fail_agree_commits_with_a_follower_disconnected => "fail_agree", 0..80;
    fail_no_agree_nothing_commits_without_a_majority => "fail_no_agree", 0..80;
    concurrent_starts_all_commit => "concurrent_starts", 0..80;
    rejoin_of_partitioned_leader_replaces_its_uncommitted_entries => "rejoin", 0..80;
    backup_fast_backtracking_replaces_many_conflicting_entries => "backup", 0..30;
    rpc_count_messages_per_agreement_and_idle_second_bounded => "rpc_count", 0..80;
    persist1_state_survives_crashes_and_restarts => "persist1", 0..80;
    persist2_partial_crashes_and_partitions_keep_committed_state => "persist2", 0..40;
    persist3_partitioned_leader_and_follower_crash_lose_nothing => "persist3", 0..80;
    figure8_old_term_entries_never_commit_by_counting => "figure8", 0..50;
    figure8_unreliable_network => "figure8_unreliable", 0..50;
    unreliable_agree_commits_on_a_lossy_reordering_network => "unreliable_agree", 0..50;
    reliable_churn_keeps_every_acknowledged_write => "reliable_churn", 0..120;
    unreliable_churn_keeps_every_acknowledged_write => "unreliable_churn", 0..120;
    partition_churn_is_safe_and_live_after_heal => "partition_churn", 0..120;
    crash_storm_loses_nothing_committed => "crash_storm", 0..80;
    bridge_partition_keeps_committing => "bridge_partition", 0..60;
    snapshot_install_catches_up_a_lagging_follower => "snapshot_install", 0..50;
    snapshot_install_with_crashes => "snapshot_install_crash", 0..50;
    snapshot_install_with_crashes_on_an_unreliable_network => "snapshot_install_unreliable", 0..50;
    leadership_transfer_moves_the_leader_and_aborts_when_unreachable => "leadership_transfer", 0..60;
    membership_add_learner_promote_and_add_voter => "membership_add", 0..60;
    membership_remove_follower_then_leader_under_load => "membership_remove", 0..60;
    membership_churn_random_changes_under_faults => "membership_churn", 0..80;
}

#[test]
fn every_scenario_has_a_test() {
    for s in weir_sim::scenarios::all() {
        assert!(TESTED.contains(&s.name), "scenario {} has no test", s.name);
    }
    let total: u64 = TESTED.len() as u64;
    assert_eq!(total, weir_sim::scenarios::all().len() as u64);
}

/// Seeds that once made a leader resend the same entries forever: a snapshot response or a late
/// ack raised a follower's match index past its next index. Fixed in the core (`raise_match`
/// keeps next above match, asserted after every step); these seeds must keep passing.
#[test]
fn regression_match_raised_past_next_no_longer_livelocks() {
    for seed in [466_199, 324_099, 152_235] {
        assert_seeds("membership_churn", seed..seed + 1);
    }
}
