//! Malformed, stale and hostile input never panics the core, and random input sequences never
//! violate its asserted invariants.

use proptest::prelude::*;

use super::harness::*;
use crate::testing::MemStore;
use crate::*;

fn follower_with_log() -> Node {
    let mut f = Node::new(
        config(1),
        store_with_terms(&[1, 1, 2, 2, 3], 3),
        voters(&[1, 2, 3]),
        0,
    );
    f.recv(
        1,
        msg(
            2,
            1,
            Message::AppendEntries {
                term: t(3),
                prev_log_index: idx(5),
                prev_log_term: t(3),
                entries: vec![],
                leader_commit: idx(3),
            },
        ),
    );
    f
}

#[test]
fn hostile_messages_are_ignored_without_panicking() {
    let mut f = follower_with_log();
    let before = f.raft.status();
    let huge = LogIndex(u64::MAX);
    let bad: Vec<Envelope> = vec![
        // Not for us / from ourselves.
        msg(2, 9, Message::TimeoutNow { term: t(3) }),
        msg(1, 1, Message::TimeoutNow { term: t(3) }),
        // Huge indexes and terms.
        msg(
            2,
            1,
            Message::AppendEntries {
                term: t(3),
                prev_log_index: huge,
                prev_log_term: t(3),
                entries: vec![entry(1, 3)],
                leader_commit: huge,
            },
        ),
        msg(
            2,
            1,
            Message::AppendEntries {
                term: Term(u64::MAX),
                prev_log_index: idx(0),
                prev_log_term: t(0),
                entries: vec![],
                leader_commit: huge,
            },
        ),
        // Non-contiguous entries, entry terms above the message term, decreasing terms.
        msg(
            2,
            1,
            Message::AppendEntries {
                term: t(3),
                prev_log_index: idx(5),
                prev_log_term: t(3),
                entries: vec![entry(6, 3), entry(8, 3)],
                leader_commit: idx(0),
            },
        ),
        msg(
            2,
            1,
            Message::AppendEntries {
                term: t(3),
                prev_log_index: idx(5),
                prev_log_term: t(3),
                entries: vec![entry(6, 9)],
                leader_commit: idx(0),
            },
        ),
        msg(
            2,
            1,
            Message::AppendEntries {
                term: t(3),
                prev_log_index: idx(5),
                prev_log_term: t(3),
                entries: vec![entry(6, 3), entry(7, 2)],
                leader_commit: idx(0),
            },
        ),
        // An invalid membership entry.
        msg(
            2,
            1,
            Message::AppendEntries {
                term: t(3),
                prev_log_index: idx(5),
                prev_log_term: t(3),
                entries: vec![Entry {
                    term: t(3),
                    index: idx(6),
                    payload: Payload::Membership(Membership::default()),
                }],
                leader_commit: idx(0),
            },
        ),
        // A second "leader" in the same term.
        msg(
            3,
            1,
            Message::AppendEntries {
                term: t(3),
                prev_log_index: idx(5),
                prev_log_term: t(3),
                entries: vec![entry(6, 3)],
                leader_commit: idx(6),
            },
        ),
        // Snapshots: index 0, huge index, last_term above term, oversized data.
        msg(
            2,
            1,
            Message::InstallSnapshot {
                term: t(3),
                snapshot: Snapshot {
                    meta: SnapshotMeta {
                        last_index: huge,
                        last_term: t(3),
                        membership: voters(&[1, 2, 3]),
                    },
                    data: vec![],
                },
            },
        ),
        msg(
            2,
            1,
            Message::InstallSnapshot {
                term: t(3),
                snapshot: Snapshot {
                    meta: SnapshotMeta {
                        last_index: idx(0),
                        last_term: t(0),
                        membership: voters(&[1, 2, 3]),
                    },
                    data: vec![],
                },
            },
        ),
        msg(
            2,
            1,
            Message::InstallSnapshot {
                term: t(3),
                snapshot: Snapshot {
                    meta: SnapshotMeta {
                        last_index: idx(9),
                        last_term: t(7),
                        membership: voters(&[1, 2, 3]),
                    },
                    data: vec![],
                },
            },
        ),
        // Responses a follower did not ask for.
        msg(
            7,
            1,
            Message::AppendEntriesResponse {
                term: t(3),
                success: true,
                match_index: huge,
                conflict_term: Some(Term(u64::MAX)),
                conflict_index: huge,
                last_log_index: huge,
            },
        ),
        msg(
            7,
            1,
            Message::InstallSnapshotResponse {
                term: t(3),
                last_index: huge,
            },
        ),
        msg(
            7,
            1,
            Message::RequestVoteResponse {
                term: t(3),
                granted: true,
            },
        ),
        msg(
            7,
            1,
            Message::PreVoteResponse {
                term: Term(u64::MAX),
                granted: true,
            },
        ),
        // TimeoutNow from a non-leader.
        msg(3, 1, Message::TimeoutNow { term: t(3) }),
        // Old-term messages.
        msg(
            2,
            1,
            Message::AppendEntries {
                term: t(1),
                prev_log_index: idx(0),
                prev_log_term: t(0),
                entries: vec![entry(1, 1)],
                leader_commit: idx(1),
            },
        ),
        msg(
            3,
            1,
            Message::RequestVote {
                term: t(2),
                last_log_index: huge,
                last_log_term: t(2),
                leadership_transfer: true,
            },
        ),
    ];
    for env in bad {
        f.recv(2, env);
    }
    let after = f.raft.status();
    assert_eq!(after.term, before.term);
    assert_eq!(after.leader, before.leader);
    assert_eq!(after.last_index, before.last_index);
    assert_eq!(after.commit_index, before.commit_index);
    assert_eq!(after.role, Role::Follower);
}

#[test]
fn hostile_responses_to_a_leader_do_not_panic_or_corrupt_progress() {
    let (mut leader, now) = super::replication::make_leader(MemStore::new(), &[1, 2, 3]);
    let term = leader.raft.term();
    for (success, m, ct, ci) in [
        (true, u64::MAX, None, 0),
        (true, LOG_INDEX_MAX, None, 0),
        (false, u64::MAX, Some(u64::MAX), u64::MAX),
        (false, 0, Some(0), 0),
        (false, 1, Some(9), 0),
        (false, 1, None, 1 << 40),
    ] {
        leader.recv(
            now,
            msg(
                2,
                1,
                Message::AppendEntriesResponse {
                    term,
                    success,
                    match_index: LogIndex(m),
                    conflict_term: ct.map(Term),
                    conflict_index: LogIndex(ci),
                    last_log_index: LogIndex(m),
                },
            ),
        );
    }
    leader.recv(
        now,
        msg(
            2,
            1,
            Message::InstallSnapshotResponse {
                term,
                last_index: LogIndex(1 << 40),
            },
        ),
    );
    leader.recv(
        now,
        msg(
            9,
            1,
            Message::InstallSnapshotResponse {
                term,
                last_index: idx(1),
            },
        ),
    );
    let st = leader.raft.status();
    assert_eq!(st.role, Role::Leader);
    assert!(st.progress[&n(2)].match_index <= st.last_index);
    assert!(st.progress[&n(2)].next_index >= idx(1));
}

#[test]
fn driver_misreports_are_ignored() {
    let mut f = follower_with_log();
    f.raft
        .handle_persisted(3, LogIndex(u64::MAX), Term(u64::MAX));
    f.raft.handle_snapshot_persisted(3, LogIndex(77));
    f.raft.handle_applied(3, LogIndex(u64::MAX));
    f.drain(3);
    let st = f.raft.status();
    assert!(st.applied_index <= st.commit_index);
}

// ---------------------------------------------------------------------------------------------
// Property test: random inputs from a small world of peers.
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Action {
    Message {
        from: u64,
        kind: u8,
        term: u64,
        a: u64,
        b: u64,
        count: u8,
        flag: bool,
    },
    Timeout(u16),
    PersistOne,
    PersistBogus(u64, u64),
    Applied,
    Propose,
    Membership(u8, u64),
    Transfer(u64),
    Compact,
    Crash,
}

fn small_index() -> impl Strategy<Value = u64> {
    prop_oneof![8 => 0u64..12, 1 => Just(u64::MAX), 1 => Just(LOG_INDEX_MAX)]
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        10 => (0u64..6, 0u8..9, 0u64..6, small_index(), small_index(), 0u8..4, any::<bool>()).prop_map(
            |(from, kind, term, a, b, count, flag)| Action::Message { from, kind, term, a, b, count, flag }
        ),
        3 => (0u16..300).prop_map(Action::Timeout),
        3 => Just(Action::PersistOne),
        1 => (small_index(), 0u64..6).prop_map(|(i, t)| Action::PersistBogus(i, t)),
        2 => Just(Action::Applied),
        2 => Just(Action::Propose),
        1 => (0u8..4, 1u64..6).prop_map(|(k, id)| Action::Membership(k, id)),
        1 => (0u64..6).prop_map(Action::Transfer),
        1 => Just(Action::Compact),
        1 => Just(Action::Crash),
    ]
}

/// Builds a message of the given kind; entries are well-formed-ish so they get past validation
/// often enough to exercise the log code.
fn build(kind: u8, term: u64, a: u64, b: u64, count: u8, flag: bool) -> Message {
    let term = Term(term);
    let prev_term = Term(b.min(term.0));
    match kind {
        0 => Message::PreVote {
            term,
            last_log_index: LogIndex(a),
            last_log_term: prev_term,
        },
        1 => Message::PreVoteResponse {
            term,
            granted: flag,
        },
        2 => Message::RequestVote {
            term,
            last_log_index: LogIndex(a),
            last_log_term: prev_term,
            leadership_transfer: flag,
        },
        3 => Message::RequestVoteResponse {
            term,
            granted: flag,
        },
        4 => {
            let prev = a.min(LOG_INDEX_MAX - 8);
            let entries = (0..u64::from(count))
                .map(|i| Entry {
                    term,
                    index: LogIndex(prev + 1 + i),
                    payload: if flag && i == 0 {
                        Payload::Membership(Membership::with_voters([
                            NodeId(1),
                            NodeId(2),
                            NodeId(3),
                        ]))
                    } else {
                        Payload::Normal(vec![i as u8])
                    },
                })
                .collect();
            Message::AppendEntries {
                term,
                prev_log_index: LogIndex(prev),
                prev_log_term: prev_term,
                entries,
                leader_commit: LogIndex(b),
            }
        }
        5 => Message::AppendEntriesResponse {
            term,
            success: flag,
            match_index: LogIndex(a),
            conflict_term: (count > 0).then_some(prev_term),
            conflict_index: LogIndex(b),
            last_log_index: LogIndex(a),
        },
        6 => Message::InstallSnapshot {
            term,
            snapshot: Snapshot {
                meta: SnapshotMeta {
                    last_index: LogIndex(a),
                    last_term: prev_term,
                    membership: Membership::with_voters([NodeId(1), NodeId(2), NodeId(3)]),
                },
                data: vec![count],
            },
        },
        7 => Message::InstallSnapshotResponse {
            term,
            last_index: LogIndex(a),
        },
        _ => Message::TimeoutNow { term },
    }
}

fn run_actions(actions: Vec<Action>, pre_vote: bool) {
    let cfg = Config {
        pre_vote,
        ..config(1)
    };
    let mut node = Node::new(cfg, MemStore::new(), voters(&[1, 2, 3]), 0);
    node.auto_persist = false;
    node.auto_apply = false;
    let mut now: Millis = 0;
    for action in actions {
        match action {
            Action::Message {
                from,
                kind,
                term,
                a,
                b,
                count,
                flag,
            } => {
                node.recv(now, msg(from, 1, build(kind, term, a, b, count, flag)));
            }
            Action::Timeout(ms) => {
                now += u64::from(ms);
                node.timeout(now);
            }
            Action::PersistOne => {
                if let Some(i) = node.pending_snapshot.take() {
                    node.raft.handle_snapshot_persisted(now, i);
                } else if let Some((i, tm)) = node.unpersisted.pop_front() {
                    node.raft.store_mut().mark_durable(i);
                    node.raft.handle_persisted(now, i, tm);
                }
                node.drain(now);
            }
            Action::PersistBogus(i, tm) => {
                node.raft.handle_persisted(now, LogIndex(i), Term(tm));
                node.drain(now);
            }
            Action::Applied => {
                let i = node.applied_index;
                node.raft.handle_applied(now, i);
                node.drain(now);
            }
            Action::Propose => {
                let _ = node.raft.propose(now, b"p".to_vec());
                node.drain(now);
            }
            Action::Membership(k, id) => {
                let change = match k {
                    0 => MembershipChange::AddLearner(NodeId(id)),
                    1 => MembershipChange::PromoteLearner(NodeId(id)),
                    2 => MembershipChange::AddVoter(NodeId(id)),
                    _ => MembershipChange::RemoveNode(NodeId(id)),
                };
                let _ = node.raft.propose_membership(now, change);
                node.drain(now);
            }
            Action::Transfer(to) => {
                let _ = node.raft.transfer_leadership(now, NodeId(to));
                node.drain(now);
            }
            Action::Compact => {
                let applied = node.raft.status().applied_index;
                let first = node.raft.store().first_index();
                if applied >= first && node.pending_snapshot.is_none() {
                    let meta = SnapshotMeta {
                        last_index: applied,
                        last_term: node
                            .raft
                            .store()
                            .term(applied)
                            .expect("applied entry stored"),
                        membership: node
                            .raft
                            .membership_at(applied)
                            .expect("membership known at applied"),
                    };
                    node.raft
                        .store_mut()
                        .compact(applied, Snapshot { meta, data: vec![] });
                    node.raft.handle_compacted(now);
                    node.drain(now);
                }
            }
            Action::Crash => node.crash_restart(now),
        }
        node.sent.clear();
        let st = node.raft.status();
        assert!(st.commit_index <= st.last_index);
        assert!(st.applied_index <= st.commit_index);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_message_sequences_never_violate_invariants(
        actions in proptest::collection::vec(action(), 1..120),
        pre_vote in any::<bool>(),
    ) {
        run_actions(actions, pre_vote);
    }
}
