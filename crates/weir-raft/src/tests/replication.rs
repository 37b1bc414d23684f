//! Log replication: commit rule, persistence acks, backtracking, pipelining, snapshots, apply.

use super::harness::*;
use crate::testing::MemStore;
use crate::*;

/// Makes node 1 leader by hand: fire its election timeout and grant every (pre-)vote.
pub(crate) fn make_leader(store: MemStore, ids: &[u64]) -> (Node, Millis) {
    let mut node = Node::new(config(1), store, voters(ids), 0);
    let now = node.fire_timeout();
    for _ in 0..2 {
        for env in node.take_sent() {
            let reply = match env.message {
                Message::PreVote { term, .. } => Message::PreVoteResponse {
                    term,
                    granted: true,
                },
                Message::RequestVote { term, .. } => Message::RequestVoteResponse {
                    term,
                    granted: true,
                },
                _ => continue,
            };
            node.recv(now, msg(env.to.0, 1, reply));
        }
    }
    assert_eq!(node.raft.role(), Role::Leader);
    (node, now)
}

fn ack(from: u64, term: Term, match_index: u64) -> Envelope {
    msg(
        from,
        1,
        Message::AppendEntriesResponse {
            term,
            success: true,
            match_index: idx(match_index),
            conflict_term: None,
            conflict_index: idx(0),
            last_log_index: idx(match_index),
        },
    )
}

fn appends_to(sent: &[Envelope], to: u64) -> Vec<(LogIndex, Term, Vec<Entry>, LogIndex)> {
    sent.iter()
        .filter(|e| e.to == n(to))
        .filter_map(|e| match &e.message {
            Message::AppendEntries {
                prev_log_index,
                prev_log_term,
                entries,
                leader_commit,
                ..
            } => Some((
                *prev_log_index,
                *prev_log_term,
                entries.clone(),
                *leader_commit,
            )),
            _ => None,
        })
        .collect()
}

fn append(
    from: u64,
    to: u64,
    term: u64,
    prev: (u64, u64),
    entries: Vec<Entry>,
    commit: u64,
) -> Envelope {
    msg(
        from,
        to,
        Message::AppendEntries {
            term: t(term),
            prev_log_index: idx(prev.0),
            prev_log_term: t(prev.1),
            entries,
            leader_commit: idx(commit),
        },
    )
}

fn responses(sent: &[Envelope]) -> Vec<Message> {
    sent.iter()
        .filter(|e| matches!(e.message, Message::AppendEntriesResponse { .. }))
        .map(|e| e.message.clone())
        .collect()
}

#[test]
fn commit_requires_an_entry_of_the_current_term_figure_8() {
    // Figure 8: the leader (term 4) holds an entry of term 2 that an older leader replicated
    // to a minority. Replicating it to a majority must not commit it; only once the term-4
    // Noop after it reaches a majority are both committed.
    let (mut leader, now) = make_leader(store_with_terms(&[1, 2], 3), &[1, 2, 3, 4, 5]);
    assert_eq!(leader.raft.term(), t(4));
    assert_eq!(leader.raft.status().last_index, idx(3)); // Noop at 3
    leader.take_sent();
    leader.recv(now, ack(2, t(4), 2));
    leader.recv(now, ack(3, t(4), 2));
    leader.recv(now, ack(4, t(4), 2));
    assert_eq!(
        leader.raft.commit_index(),
        idx(0),
        "term-2 entry on a majority is not committed"
    );
    leader.recv(now, ack(2, t(4), 3));
    assert_eq!(
        leader.raft.commit_index(),
        idx(0),
        "leader + 1 of 5 is no majority"
    );
    leader.recv(now, ack(3, t(4), 3));
    assert_eq!(leader.raft.commit_index(), idx(3));
    assert_eq!(leader.applied.len(), 3);
}

#[test]
fn leader_counts_its_own_match_only_after_handle_persisted() {
    let mut leader = Node::new(config(1), MemStore::new(), voters(&[1, 2, 3]), 0);
    leader.auto_persist = false;
    let now = leader.fire_timeout();
    for env in leader.take_sent() {
        if let Message::PreVote { term, .. } = env.message {
            leader.recv(
                now,
                msg(
                    env.to.0,
                    1,
                    Message::PreVoteResponse {
                        term,
                        granted: true,
                    },
                ),
            );
        }
    }
    for env in leader.take_sent() {
        if let Message::RequestVote { term, .. } = env.message {
            leader.recv(
                now,
                msg(
                    env.to.0,
                    1,
                    Message::RequestVoteResponse {
                        term,
                        granted: true,
                    },
                ),
            );
        }
    }
    assert_eq!(leader.raft.role(), Role::Leader);
    let term = leader.raft.term();
    // Noop at 1 acked by one follower: leader + follower would be a majority, but the leader's
    // own copy is not durable yet.
    leader.recv(now, ack(2, term, 1));
    assert_eq!(leader.raft.commit_index(), idx(0));
    assert_eq!(leader.raft.status().persisted_index, idx(0));
    leader.persist_all(now);
    leader.drain(now);
    assert_eq!(leader.raft.commit_index(), idx(1));
}

#[test]
fn follower_acks_appended_entries_only_after_handle_persisted() {
    let mut f = Node::new(config(2), MemStore::new(), voters(&[1, 2, 3]), 0);
    f.auto_persist = false;
    f.recv(
        5,
        append(1, 2, 1, (0, 0), vec![entry(1, 1), entry(2, 1)], 0),
    );
    assert!(
        responses(&f.take_sent()).is_empty(),
        "no ack before persistence"
    );
    assert!(
        matches!(f.log.iter().rev().find(|o| matches!(o, Output::PersistEntries(_))), Some(Output::PersistEntries(es)) if es.len() == 2)
    );
    // A heartbeat meanwhile is answered at once, but only for what is durable.
    f.recv(6, append(1, 2, 1, (0, 0), vec![], 0));
    let r = responses(&f.take_sent());
    assert!(matches!(
        r[..],
        [Message::AppendEntriesResponse {
            success: true,
            match_index: LogIndex(0),
            ..
        }]
    ));
    f.persist_all(7);
    f.drain(7);
    let r = responses(&f.take_sent());
    assert!(matches!(
        r[..],
        [Message::AppendEntriesResponse {
            success: true,
            match_index: LogIndex(2),
            ..
        }]
    ));
}

#[test]
fn stale_handle_persisted_is_ignored() {
    let mut f = Node::new(config(2), MemStore::new(), voters(&[1, 2, 3]), 0);
    f.auto_persist = false;
    f.recv(
        1,
        append(
            1,
            2,
            1,
            (0, 0),
            vec![entry(1, 1), entry(2, 1), entry(3, 1)],
            0,
        ),
    );
    // New leader of term 2 replaces index 2.. before the first write was reported durable.
    f.recv(2, append(3, 2, 2, (1, 1), vec![entry(2, 2)], 0));
    assert_eq!(f.raft.status().last_index, idx(2));
    f.take_sent();
    // The first write's report names (3, t1), which no longer exists: ignored.
    let (i, tm) = f.unpersisted.pop_front().unwrap();
    f.raft.store_mut().mark_durable(i);
    f.raft.handle_persisted(3, i, tm);
    f.drain(3);
    assert_eq!(f.raft.status().persisted_index, idx(0));
    assert!(responses(&f.take_sent()).is_empty());
    // A report (2, t1) is just as stale: index 2 now holds term 2.
    f.raft.handle_persisted(3, idx(2), t(1));
    assert_eq!(f.raft.status().persisted_index, idx(0));
    f.persist_all(4);
    f.drain(4);
    assert_eq!(f.raft.status().persisted_index, idx(2));
    let r = responses(&f.take_sent());
    assert!(matches!(
        r[..],
        [Message::AppendEntriesResponse {
            term: Term(2),
            success: true,
            match_index: LogIndex(2),
            ..
        }]
    ));
    f.raft.handle_persisted(5, idx(1), t(1)); // old and covered: ignored
    assert_eq!(f.raft.status().persisted_index, idx(2));
}

#[test]
fn fast_backtracking_reaches_the_conflict_point_in_o_terms_round_trips() {
    // Leader: 3 entries of term 1, then 7 of term 4. Follower: 3 of term 1, then 50 of term 2
    // and 50 of term 3 (from leaders that never committed). One-at-a-time backtracking would
    // need ~100 round trips; the hints need one per conflicting term at most.
    let mut leader_terms = vec![1, 1, 1];
    leader_terms.extend([4; 7]);
    let mut follower_terms = vec![1, 1, 1];
    follower_terms.extend([2; 50]);
    follower_terms.extend([3; 50]);
    let (mut leader, now) = make_leader(store_with_terms(&leader_terms, 4), &[1, 2, 3]);
    let mut follower = Node::new(
        config(2),
        store_with_terms(&follower_terms, 4),
        voters(&[1, 2, 3]),
        0,
    );
    leader.take_sent();
    leader.timeout(now + HEARTBEAT_MS); // heartbeat: probes follower 2
    let mut rejections = 0;
    for _ in 0..50 {
        let to_follower: Vec<Envelope> = leader
            .take_sent()
            .into_iter()
            .filter(|e| e.to == n(2))
            .collect();
        if to_follower.is_empty() {
            break;
        }
        for env in to_follower {
            follower.recv(now, env);
        }
        for env in follower.take_sent() {
            if matches!(
                env.message,
                Message::AppendEntriesResponse { success: false, .. }
            ) {
                rejections += 1;
            }
            leader.recv(now, env);
        }
    }
    assert!(rejections <= 2, "{rejections} rejections");
    let st = follower.raft.status();
    assert_eq!(st.last_index, idx(11));
    assert_eq!(follower.raft.store().term(idx(11)), Some(t(5)));
    assert_eq!(follower.raft.store().term(idx(4)), Some(t(4)));
    assert_eq!(leader.raft.status().progress[&n(2)].match_index, idx(11));
}

#[test]
fn backtracking_when_follower_log_is_shorter_uses_its_length() {
    let (mut leader, now) = make_leader(store_with_terms(&[1; 30], 1), &[1, 2, 3]);
    let mut follower = Node::new(
        config(2),
        store_with_terms(&[1; 3], 1),
        voters(&[1, 2, 3]),
        0,
    );
    leader.take_sent();
    leader.timeout(now + HEARTBEAT_MS);
    let mut rejections = 0;
    for _ in 0..20 {
        let out: Vec<Envelope> = leader
            .take_sent()
            .into_iter()
            .filter(|e| e.to == n(2))
            .collect();
        if out.is_empty() {
            break;
        }
        for env in out {
            follower.recv(now, env);
        }
        for env in follower.take_sent() {
            rejections += usize::from(matches!(
                env.message,
                Message::AppendEntriesResponse { success: false, .. }
            ));
            leader.recv(now, env);
        }
    }
    assert_eq!(rejections, 1);
    assert_eq!(follower.raft.status().last_index, idx(31));
}

#[test]
fn pipelined_appends_fill_the_inflight_window_then_probe_after_rejection() {
    let (mut leader, now) = make_leader(MemStore::new(), &[1, 2, 3]);
    let term = leader.raft.term();
    leader.take_sent();
    // Probe state: only the first probe (the Noop) went out; proposals wait for a reply.
    leader.recv(now, ack(2, term, 1));
    leader.take_sent();
    for i in 0..100u8 {
        leader.raft.propose(now, vec![i]).unwrap();
        leader.drain(now);
    }
    let appends = appends_to(&leader.take_sent(), 2);
    let window = INFLIGHT_APPENDS_MAX;
    assert_eq!(
        appends.len(),
        window,
        "replicate mode pipelines up to the window"
    );
    assert!(
        appends.windows(2).all(|w| w[1].0 > w[0].0),
        "optimistic next_index"
    );
    // A rejection of an in-flight append drops back to probing: exactly one append out.
    let rejected = appends[5].0;
    leader.recv(
        now,
        msg(
            2,
            1,
            Message::AppendEntriesResponse {
                term,
                success: false,
                match_index: rejected,
                conflict_term: None,
                conflict_index: idx(3),
                last_log_index: idx(2),
            },
        ),
    );
    let appends = appends_to(&leader.take_sent(), 2);
    assert_eq!(appends.len(), 1);
    assert_eq!(
        appends[0].0,
        idx(2),
        "probe from the follower's last index + 1"
    );
    // More proposals do not send while the probe is outstanding.
    leader.raft.propose(now, vec![1]).unwrap();
    leader.drain(now);
    assert!(appends_to(&leader.take_sent(), 2).is_empty());
}

#[test]
fn a_proposed_batch_is_one_persist_and_one_append_and_refusals_do_not_stop_the_rest() {
    let (mut leader, now) = make_leader(MemStore::new(), &[1, 2, 3]);
    let term = leader.raft.term();
    leader.recv(now, ack(2, term, 1));
    leader.take_sent();
    let last_before = leader.raft.status().last_index;
    let too_large = vec![0u8; crate::ENTRY_BYTES_MAX + 1];
    let batch = vec![vec![1], vec![2], too_large, vec![3]];
    let results = leader.raft.propose_batch(now, batch);
    assert_eq!(results.len(), 4);
    assert_eq!(results[2], Err(ProposeError::TooLarge));
    let indexes: Vec<LogIndex> = results
        .iter()
        .filter_map(|r| {
            r.as_ref().ok().map(|(i, t)| {
                assert_eq!(*t, term);
                *i
            })
        })
        .collect();
    let first = last_before.next();
    assert_eq!(indexes, vec![first, first.next(), first.next().next()]);
    // One PersistEntries for the three, before any send.
    let mut persists = Vec::new();
    let mut sends = Vec::new();
    while let Some(out) = leader.raft.poll_output() {
        match out {
            Output::PersistEntries(entries) => persists.push(entries),
            Output::Send(env) => sends.push(env),
            _ => {}
        }
    }
    assert_eq!(persists.len(), 1, "one write for the batch");
    let payloads: Vec<&Payload> = persists[0].iter().map(|e| &e.payload).collect();
    assert_eq!(
        payloads,
        vec![
            &Payload::Normal(vec![1]),
            &Payload::Normal(vec![2]),
            &Payload::Normal(vec![3])
        ]
    );
    // The follower in replicate mode gets the three in one append.
    let appends = appends_to(&sends, 2);
    assert_eq!(appends.len(), 1);
    assert_eq!(appends[0].2.len(), 3);
    // A follower (or a candidate) refuses every payload of a batch.
    let mut follower = Node::new(config(2), MemStore::new(), voters(&[1, 2, 3]), 0);
    let refused = follower.raft.propose_batch(now, vec![vec![1], vec![2]]);
    assert!(
        refused
            .iter()
            .all(|r| matches!(r, Err(ProposeError::NotLeader { .. })))
    );
}

#[test]
fn install_snapshot_is_sent_when_follower_is_behind_first_index() {
    let mut c = Cluster::new(&[1, 2, 3]);
    let leader = c.elect();
    let lagging = c.nodes.keys().copied().find(|i| *i != leader).unwrap();
    c.isolated.insert(lagging);
    for i in 0..30u8 {
        c.propose(leader, &[i]);
    }
    c.run_for(50);
    // The leader snapshots at its applied index and compacts.
    let now = c.now;
    let node = c.nodes.get_mut(&leader).unwrap();
    let applied = node.raft.status().applied_index;
    assert_eq!(applied, idx(31));
    let snapshot = Snapshot {
        meta: SnapshotMeta {
            last_index: applied,
            last_term: node.raft.store().term(applied).unwrap(),
            membership: node.raft.membership_at(applied).unwrap(),
        },
        data: b"state@31".to_vec(),
    };
    node.raft.store_mut().compact(applied, snapshot.clone());
    node.raft.handle_compacted(now);
    node.drain(now);
    c.isolated.clear();
    c.run_for(100);
    let lag = &c.nodes[&lagging];
    assert!(
        lag.log
            .iter()
            .any(|o| matches!(o, Output::PersistSnapshot(s) if *s == snapshot))
    );
    assert_eq!(lag.raft.store().snapshot(), Some(snapshot));
    assert_eq!(lag.raft.commit_index(), idx(31));
    // Replication continues after the snapshot.
    c.propose(leader, b"after");
    c.run_for(50);
    assert_eq!(c.nodes[&lagging].raft.commit_index(), idx(32));
    assert_eq!(c.nodes[&lagging].applied.last().unwrap().index, idx(32));
}

#[test]
fn follower_ignores_snapshot_older_than_its_commit() {
    let mut f = Node::new(config(2), MemStore::new(), voters(&[1, 2, 3]), 0);
    f.recv(
        1,
        append(
            1,
            2,
            1,
            (0, 0),
            vec![entry(1, 1), entry(2, 1), entry(3, 1)],
            3,
        ),
    );
    assert_eq!(f.raft.commit_index(), idx(3));
    f.take_sent();
    let old = Snapshot {
        meta: SnapshotMeta {
            last_index: idx(2),
            last_term: t(1),
            membership: voters(&[1, 2, 3]),
        },
        data: vec![],
    };
    f.recv(
        2,
        msg(
            1,
            2,
            Message::InstallSnapshot {
                term: t(1),
                snapshot: old,
            },
        ),
    );
    assert!(
        !f.log
            .iter()
            .any(|o| matches!(o, Output::PersistSnapshot(_)))
    );
    assert_eq!(f.raft.status().last_index, idx(3));
    assert_eq!(f.raft.commit_index(), idx(3));
}

#[test]
fn apply_is_exactly_once_in_order_in_bounded_batches() {
    let mut node = Node::new(config(1), MemStore::new(), voters(&[1]), 0);
    node.auto_apply = false;
    let now = node.fire_timeout();
    for i in 0..3000u32 {
        node.raft.propose(now, i.to_be_bytes().to_vec()).unwrap();
        node.drain(now);
    }
    assert_eq!(node.raft.commit_index(), idx(3001));
    // Without handle_applied, at most APPLY_INFLIGHT_MAX entries are handed out.
    assert_eq!(node.applied.len(), APPLY_INFLIGHT_MAX);
    let mut batches = 0;
    while node.applied.len() < 3001 {
        let last = node.applied.last().unwrap().index;
        node.raft.handle_applied(now, last);
        node.drain(now);
        batches += 1;
        assert!(batches < 100);
    }
    for (i, e) in node.applied.iter().enumerate() {
        assert_eq!(e.index, idx(i as u64 + 1));
    }
    let max_batch = node
        .log
        .iter()
        .filter_map(|o| match o {
            Output::Apply(es) => Some(es.len()),
            _ => None,
        })
        .max()
        .unwrap();
    assert!(max_batch <= APPLY_BATCH_MAX);
}

#[test]
fn follower_applies_only_what_it_knows_committed() {
    let mut f = Node::new(config(2), MemStore::new(), voters(&[1, 2, 3]), 0);
    // leader_commit beyond what this append proves to match: commit only up to the append.
    f.recv(
        1,
        append(1, 2, 1, (0, 0), vec![entry(1, 1), entry(2, 1)], 10),
    );
    assert_eq!(f.raft.commit_index(), idx(2));
    assert_eq!(f.applied.len(), 2);
    // A heartbeat at an older prev does not commit stale entries beyond it.
    let mut g = Node::new(
        config(3),
        store_with_terms(&[1, 1, 1, 1], 1),
        voters(&[1, 2, 3]),
        0,
    );
    g.recv(1, append(1, 3, 2, (2, 1), vec![], 4));
    assert_eq!(g.raft.commit_index(), idx(2));
}

#[test]
fn crash_and_restart_keeps_committed_entries() {
    let mut c = Cluster::new(&[1, 2, 3]);
    let leader = c.elect();
    for i in 0..10u8 {
        c.propose(leader, &[i]);
    }
    c.run_for(50);
    let now = c.now;
    for node in c.nodes.values_mut() {
        node.crash_restart(now);
    }
    let leader = c.elect();
    c.propose(leader, b"x");
    c.run_for(100);
    for node in c.nodes.values() {
        assert_eq!(node.raft.commit_index(), node.raft.status().last_index);
        assert!(node.applied.len() >= 12);
    }
    c.check_applied_agree();
}

#[test]
fn lost_appends_are_resent_after_a_stall() {
    let (mut leader, mut now) = make_leader(MemStore::new(), &[1, 2, 3]);
    let term = leader.raft.term();
    leader.take_sent();
    leader.recv(now, ack(2, term, 1)); // follower 2 now in Replicate mode
    leader.take_sent();
    leader.raft.propose(now, b"lost".to_vec()).unwrap();
    leader.drain(now);
    // The append carrying index 2 is lost. Heartbeats alone (prev = match) cannot reveal that;
    // after a stall period the leader probes again from the match and resends index 2.
    assert_eq!(appends_to(&leader.take_sent(), 2).len(), 1);
    let mut resent = false;
    for _ in 0..20 {
        now += HEARTBEAT_MS;
        leader.timeout(now);
        let sent = appends_to(&leader.take_sent(), 2);
        if sent.iter().any(|a| a.2.iter().any(|e| e.index == idx(2))) {
            resent = true;
            break;
        }
        // Answer heartbeats (match 1) so CheckQuorum keeps the leader alive.
        leader.recv(now, ack(2, term, 1));
        leader.recv(now, ack(3, term, 1));
    }
    assert!(resent, "index 2 resent");
}

#[test]
fn snapshot_install_is_acknowledged_after_it_is_persisted() {
    let mut f = Node::new(config(2), MemStore::new(), voters(&[1, 2, 3]), 0);
    f.auto_persist = false;
    let snapshot = Snapshot {
        meta: SnapshotMeta {
            last_index: idx(50),
            last_term: t(2),
            membership: voters(&[1, 2, 3]),
        },
        data: b"sm".to_vec(),
    };
    f.recv(
        1,
        msg(
            1,
            2,
            Message::InstallSnapshot {
                term: t(2),
                snapshot: snapshot.clone(),
            },
        ),
    );
    assert!(
        f.log
            .iter()
            .any(|o| matches!(o, Output::PersistSnapshot(s) if *s == snapshot))
    );
    assert!(
        f.take_sent().is_empty(),
        "no ack before the snapshot is durable"
    );
    assert_eq!(f.raft.commit_index(), idx(50));
    // Entries after the snapshot can arrive before it is durable.
    f.recv(2, append(1, 2, 2, (50, 2), vec![entry(51, 2)], 51));
    f.persist_all(3);
    f.drain(3);
    let sent = f.take_sent();
    assert!(sent.iter().any(|e| e.message
        == Message::InstallSnapshotResponse {
            term: t(2),
            last_index: idx(50)
        }));
    assert!(sent.iter().any(|e| matches!(
        e.message,
        Message::AppendEntriesResponse {
            success: true,
            match_index: LogIndex(51),
            ..
        }
    )));
    assert_eq!(f.raft.store().first_index(), idx(51));
    assert_eq!(f.applied_index, idx(51));
}
