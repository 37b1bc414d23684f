//! Membership changes, learners, leadership transfer.

use super::harness::*;
use crate::testing::MemStore;
use crate::*;

fn add_node(c: &mut Cluster, id: u64, initial: Membership) {
    let now = c.now;
    c.nodes
        .insert(n(id), Node::new(config(id), MemStore::new(), initial, now));
}

fn change(
    c: &mut Cluster,
    leader: NodeId,
    ch: MembershipChange,
) -> Result<(LogIndex, Term), ProposeError> {
    let now = c.now;
    let node = c.nodes.get_mut(&leader).unwrap();
    let r = node.raft.propose_membership(now, ch);
    node.drain(now);
    r
}

#[test]
fn membership_add_learner_promote_and_remove_one_at_a_time() {
    let mut c = Cluster::new(&[1, 2, 3]);
    let leader = c.elect();
    c.run_for(50); // commit the Noop
    add_node(&mut c, 4, voters(&[1, 2, 3]));
    let (i, _) = change(&mut c, leader, MembershipChange::AddLearner(n(4))).unwrap();
    // Takes effect on append, before commit; a second change must wait.
    assert!(c.nodes[&leader].raft.membership().learners.contains(&n(4)));
    assert_eq!(
        change(&mut c, leader, MembershipChange::AddVoter(n(5))),
        Err(ProposeError::MembershipChangePending)
    );
    c.run_for(50);
    assert!(c.nodes[&leader].raft.commit_index() >= i);
    assert_eq!(c.nodes[&n(4)].raft.role(), Role::Learner);
    assert_eq!(
        c.nodes[&n(4)].raft.next_timeout(),
        None,
        "learners never campaign"
    );
    let applied_on_learner = c.nodes[&n(4)].applied.len();
    assert!(applied_on_learner >= 2, "learner receives the log");
    // Promote: now 4 voters, quorum 3.
    change(&mut c, leader, MembershipChange::PromoteLearner(n(4))).unwrap();
    c.run_for(50);
    assert_eq!(c.nodes[&n(4)].raft.role(), Role::Follower);
    assert_eq!(c.nodes[&leader].raft.membership().voters.len(), 4);
    // Remove a follower.
    let victim = c
        .nodes
        .keys()
        .copied()
        .find(|i| *i != leader && *i != n(4))
        .unwrap();
    change(&mut c, leader, MembershipChange::RemoveNode(victim)).unwrap();
    c.run_for(50);
    assert!(!c.nodes[&leader].raft.membership().contains(victim));
    assert!(
        !c.nodes[&leader]
            .raft
            .status()
            .progress
            .contains_key(&victim)
    );
    assert_eq!(
        c.nodes[&victim].raft.next_timeout(),
        None,
        "removed node stops campaigning"
    );
    c.propose(leader, b"after");
    c.run_for(50);
    c.check_applied_agree();
    // Invalid changes are refused without appending.
    assert!(matches!(
        change(&mut c, leader, MembershipChange::PromoteLearner(n(9))),
        Err(ProposeError::InvalidMembershipChange(_))
    ));
    assert!(matches!(
        change(&mut c, leader, MembershipChange::RemoveNode(n(9))),
        Err(ProposeError::InvalidMembershipChange(_))
    ));
}

#[test]
fn learners_do_not_count_for_commit() {
    let membership = Membership {
        voters: [n(1), n(2), n(3)].into(),
        learners: [n(4), n(5)].into(),
    };
    let (mut leader, now) = {
        let mut node = Node::new(config(1), MemStore::new(), membership, 0);
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
        (node, now)
    };
    assert_eq!(leader.raft.role(), Role::Leader);
    let term = leader.raft.term();
    // Pre-votes and votes went to voters only.
    let ack = |from: u64| {
        msg(
            from,
            1,
            Message::AppendEntriesResponse {
                term,
                success: true,
                match_index: idx(1),
                conflict_term: None,
                conflict_index: idx(0),
                last_log_index: idx(1),
            },
        )
    };
    leader.recv(now, ack(4));
    leader.recv(now, ack(5));
    assert_eq!(
        leader.raft.commit_index(),
        idx(0),
        "leader + 2 learners is not a majority"
    );
    leader.recv(now, ack(2));
    assert_eq!(leader.raft.commit_index(), idx(1));
}

#[test]
fn configuration_is_reverted_when_its_entry_is_truncated() {
    let mut f = Node::new(config(2), MemStore::new(), voters(&[1, 2, 3]), 0);
    let with_4 = Membership::with_voters([n(1), n(2), n(3), n(4)]);
    let cfg_entry = Entry {
        term: t(1),
        index: idx(1),
        payload: Payload::Membership(with_4.clone()),
    };
    f.recv(
        1,
        msg(
            1,
            2,
            Message::AppendEntries {
                term: t(1),
                prev_log_index: idx(0),
                prev_log_term: t(0),
                entries: vec![cfg_entry],
                leader_commit: idx(0),
            },
        ),
    );
    assert_eq!(f.raft.membership(), &with_4);
    // A new leader overwrites index 1: the configuration goes back to the initial one.
    f.recv(
        2,
        msg(
            3,
            2,
            Message::AppendEntries {
                term: t(2),
                prev_log_index: idx(0),
                prev_log_term: t(0),
                entries: vec![entry(1, 2)],
                leader_commit: idx(0),
            },
        ),
    );
    assert_eq!(f.raft.membership(), &voters(&[1, 2, 3]));
}

#[test]
fn removed_leader_steps_down_once_its_removal_commits() {
    let mut c = Cluster::new(&[1, 2, 3]);
    let leader = c.elect();
    c.run_for(50);
    let (i, _) = change(&mut c, leader, MembershipChange::RemoveNode(leader)).unwrap();
    // Until the removal commits it still leads (without counting itself).
    assert_eq!(c.nodes[&leader].raft.role(), Role::Leader);
    c.run_for(50);
    let old = &c.nodes[&leader];
    assert_ne!(old.raft.role(), Role::Leader);
    assert!(old.raft.commit_index() >= i);
    assert_eq!(old.raft.next_timeout(), None);
    c.isolated.insert(leader); // it is no longer part of the group
    let new_leader = c.elect();
    assert_ne!(new_leader, leader);
    c.propose(new_leader, b"two-node group");
    c.run_for(50);
    c.check_applied_agree();
}

#[test]
fn membership_change_waits_for_leader_to_commit_in_its_term() {
    let (mut leader, now) = super::replication::make_leader(MemStore::new(), &[1, 2, 3]);
    let term = leader.raft.term();
    assert_eq!(
        leader
            .raft
            .propose_membership(now, MembershipChange::AddLearner(n(7))),
        Err(ProposeError::MembershipChangePending),
        "the Noop of this term is not committed yet"
    );
    leader.recv(
        now,
        msg(
            2,
            1,
            Message::AppendEntriesResponse {
                term,
                success: true,
                match_index: idx(1),
                conflict_term: None,
                conflict_index: idx(0),
                last_log_index: idx(1),
            },
        ),
    );
    assert_eq!(leader.raft.commit_index(), idx(1));
    assert!(
        leader
            .raft
            .propose_membership(now, MembershipChange::AddLearner(n(7)))
            .is_ok()
    );
}

#[test]
fn leadership_transfer_hands_over_via_timeout_now() {
    let mut c = Cluster::new(&[1, 2, 3]);
    let leader = c.elect();
    c.propose(leader, b"before");
    c.run_for(50);
    let target = c.nodes.keys().copied().find(|i| *i != leader).unwrap();
    let now = c.now;
    let node = c.nodes.get_mut(&leader).unwrap();
    node.raft.transfer_leadership(now, target).unwrap();
    node.drain(now);
    assert_eq!(
        node.raft.propose(now, b"refused".to_vec()),
        Err(ProposeError::TransferInProgress)
    );
    assert!(
        node.sent
            .iter()
            .any(|e| e.to == target && matches!(e.message, Message::TimeoutNow { .. }))
    );
    c.deliver_all();
    assert_eq!(c.leader(), Some(target));
    assert_eq!(c.nodes[&leader].raft.leader(), Some(target));
    c.propose(target, b"after");
    c.run_for(50);
    c.check_applied_agree();
    assert_eq!(
        c.nodes[&leader].applied.last().unwrap().payload,
        Payload::Normal(b"after".to_vec())
    );
}

#[test]
fn leadership_transfer_aborts_after_an_election_timeout() {
    let mut c = Cluster::new(&[1, 2, 3]);
    let leader = c.elect();
    c.run_for(50);
    let target = c.nodes.keys().copied().find(|i| *i != leader).unwrap();
    c.isolated.insert(target);
    let now = c.now;
    let node = c.nodes.get_mut(&leader).unwrap();
    node.raft.transfer_leadership(now, target).unwrap();
    node.drain(now);
    c.run_for(ELECTION_MIN_MS + HEARTBEAT_MS);
    assert_eq!(c.leader(), Some(leader));
    let now = c.now;
    assert!(
        c.nodes
            .get_mut(&leader)
            .unwrap()
            .raft
            .propose(now, b"ok".to_vec())
            .is_ok()
    );
    assert_eq!(
        c.nodes
            .get_mut(&leader)
            .unwrap()
            .raft
            .transfer_leadership(now, n(42)),
        Err(ProposeError::InvalidTransferTarget(n(42)))
    );
}

#[test]
fn node_removed_by_an_uncommitted_entry_may_still_campaign_until_it_commits() {
    // Node 2 appended a configuration removing itself. Until it knows that entry committed it
    // may be needed to commit it (the leader could crash), so it keeps its election timer.
    let mut f = Node::new(config(2), MemStore::new(), voters(&[1, 2, 3]), 0);
    let without_2 = Membership::with_voters([n(1), n(3)]);
    let cfg = Entry {
        term: t(1),
        index: idx(1),
        payload: Payload::Membership(without_2.clone()),
    };
    f.recv(
        1,
        msg(
            1,
            2,
            Message::AppendEntries {
                term: t(1),
                prev_log_index: idx(0),
                prev_log_term: t(0),
                entries: vec![cfg],
                leader_commit: idx(0),
            },
        ),
    );
    assert_eq!(f.raft.membership(), &without_2);
    assert!(f.raft.next_timeout().is_some());
    // Its campaign asks the voters of the latest configuration.
    let at = f.fire_timeout();
    let asked: Vec<NodeId> = f
        .take_sent()
        .iter()
        .filter(|e| matches!(e.message, Message::PreVote { .. }))
        .map(|e| e.to)
        .collect();
    assert_eq!(asked, vec![n(1), n(3)]);
    // Once it learns the removal committed, it stops.
    f.recv(
        at + 1,
        msg(
            1,
            2,
            Message::AppendEntries {
                term: t(1),
                prev_log_index: idx(1),
                prev_log_term: t(1),
                entries: vec![],
                leader_commit: idx(1),
            },
        ),
    );
    assert_eq!(f.raft.commit_index(), idx(1));
    assert_eq!(f.raft.next_timeout(), None);
}
