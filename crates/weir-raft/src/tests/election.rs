//! Elections: votes, PreVote, CheckQuorum, leases, stepping down.

use super::harness::*;
use crate::testing::MemStore;
use crate::*;

fn vote_request(from: u64, to: u64, term: u64, lli: u64, llt: u64) -> Envelope {
    msg(
        from,
        to,
        Message::RequestVote {
            term: t(term),
            last_log_index: idx(lli),
            last_log_term: t(llt),
            leadership_transfer: false,
        },
    )
}

fn granted_votes(sent: &[Envelope]) -> Vec<(NodeId, Term, bool)> {
    sent.iter()
        .filter_map(|e| match e.message {
            Message::RequestVoteResponse { term, granted } => Some((e.to, term, granted)),
            _ => None,
        })
        .collect()
}

#[test]
fn single_node_becomes_leader_and_commits_without_peers() {
    let mut node = Node::new(config(1), MemStore::new(), voters(&[1]), 0);
    assert_eq!(node.raft.role(), Role::Follower);
    let at = node.fire_timeout();
    assert!((ELECTION_MIN_MS..ELECTION_MAX_MS).contains(&at));
    assert_eq!(node.raft.role(), Role::Leader);
    assert_eq!(node.raft.term(), t(1));
    // The Noop of term 1 is committed once it is durable; no peer was needed.
    assert_eq!(node.raft.commit_index(), idx(1));
    let (i, tm) = node.raft.propose(at, b"hello".to_vec()).unwrap();
    node.drain(at);
    assert_eq!((i, tm), (idx(2), t(1)));
    assert_eq!(node.raft.commit_index(), idx(2));
    assert_eq!(node.applied.len(), 2);
    assert_eq!(node.applied[1].payload, Payload::Normal(b"hello".to_vec()));
    assert!(node.sent.is_empty(), "no peers, no messages");
}

#[test]
fn vote_is_granted_once_per_term_and_persisted_before_the_response() {
    let mut node = Node::new(config(1), MemStore::new(), voters(&[1, 2, 3]), 0);
    node.recv(1, vote_request(2, 1, 5, 0, 0));
    node.recv(1, vote_request(3, 1, 5, 0, 0));
    node.recv(1, vote_request(2, 1, 5, 0, 0)); // retransmission: same answer
    let votes = granted_votes(&node.take_sent());
    assert_eq!(
        votes,
        vec![(n(2), t(5), true), (n(3), t(5), false), (n(2), t(5), true)]
    );
    // The vote was queued as PersistHardState strictly before its response (the harness also
    // checks the store at each Send).
    let persist_pos = node
        .log
        .iter()
        .position(|o| {
            matches!(o, Output::PersistHardState(HardState { term, voted_for: Some(v) }) if *term == t(5) && *v == n(2))
        })
        .expect("vote persisted");
    let send_pos = node
        .log
        .iter()
        .position(|o| matches!(o, Output::Send(e) if matches!(e.message, Message::RequestVoteResponse { granted: true, .. })))
        .expect("vote sent");
    assert!(persist_pos < send_pos);
    // A restart remembers the vote.
    node.crash_restart(2);
    node.recv(3, vote_request(3, 1, 5, 0, 0));
    assert_eq!(granted_votes(&node.take_sent()), vec![(n(3), t(5), false)]);
}

#[test]
fn candidate_with_stale_log_is_denied() {
    let store = store_with_terms(&[1, 1, 2], 2);
    let mut node = Node::new(config(1), store, voters(&[1, 2, 3]), 0);
    // Older last term.
    node.recv(1, vote_request(2, 1, 3, 10, 1));
    // Same last term, shorter log.
    node.recv(1, vote_request(3, 1, 3, 2, 2));
    assert_eq!(
        granted_votes(&node.take_sent()),
        vec![(n(2), t(3), false), (n(3), t(3), false)]
    );
    // Up-to-date candidate in a new term gets the vote.
    node.recv(1, vote_request(3, 1, 4, 3, 2));
    assert_eq!(granted_votes(&node.take_sent()), vec![(n(3), t(4), true)]);
}

#[test]
fn pre_vote_does_not_bump_terms_of_candidate_or_receivers() {
    let mut c = Cluster::new(&[1, 2, 3]);
    let leader = c.elect();
    let term = c.nodes[&leader].raft.term();
    let other = c.nodes.keys().copied().find(|i| *i != leader).unwrap();
    // Partition one follower for many election timeouts: it pre-campaigns but never bumps its term.
    c.isolated.insert(other);
    c.run_for(20 * ELECTION_MAX_MS);
    assert_eq!(
        c.nodes[&other].raft.term(),
        term,
        "isolated node's term unchanged"
    );
    assert_eq!(c.nodes[&other].raft.role(), Role::PreCandidate);
    // Rejoin: it neither disrupts the leader nor changes anyone's term.
    c.isolated.clear();
    c.run_for(5 * ELECTION_MAX_MS);
    assert_eq!(c.leader(), Some(leader));
    for node in c.nodes.values() {
        assert_eq!(node.raft.term(), term);
    }
    assert_eq!(c.nodes[&other].raft.role(), Role::Follower);
}

#[test]
fn pre_vote_receiver_keeps_its_term_and_vote() {
    let mut node = Node::new(config(1), MemStore::new(), voters(&[1, 2, 3]), 0);
    node.recv(
        1,
        msg(
            2,
            1,
            Message::PreVote {
                term: t(7),
                last_log_index: idx(0),
                last_log_term: t(0),
            },
        ),
    );
    let sent = node.take_sent();
    assert_eq!(
        sent[0].message,
        Message::PreVoteResponse {
            term: t(7),
            granted: true
        }
    );
    assert_eq!(node.raft.term(), t(0));
    assert_eq!(node.raft.status().voted_for, None);
    assert!(
        !node
            .log
            .iter()
            .any(|o| matches!(o, Output::PersistHardState(_)))
    );
}

#[test]
fn leader_steps_down_on_higher_term() {
    let mut c = Cluster::new(&[1, 2, 3]);
    let leader = c.elect();
    let term = c.nodes[&leader].raft.term();
    let now = c.now;
    let node = c.nodes.get_mut(&leader).unwrap();
    node.recv(
        now,
        msg(
            9,
            leader.0,
            Message::AppendEntriesResponse {
                term: Term(term.0 + 3),
                success: false,
                match_index: idx(0),
                conflict_term: None,
                conflict_index: idx(0),
                last_log_index: idx(0),
            },
        ),
    );
    assert_eq!(node.raft.role(), Role::Follower);
    assert_eq!(node.raft.term(), Term(term.0 + 3));
    assert_eq!(node.raft.leader(), None);
    assert_eq!(node.raft.store().hard_state().term, Term(term.0 + 3));
}

#[test]
fn check_quorum_leader_steps_down_without_majority() {
    let mut c = Cluster::new(&[1, 2, 3]);
    let leader = c.elect();
    c.isolated.insert(leader);
    // Within one CheckQuorum period plus an election timeout it must notice.
    c.run_for(2 * ELECTION_MIN_MS + HEARTBEAT_MS);
    assert_ne!(c.nodes[&leader].raft.role(), Role::Leader);
    // The rest elect a new leader meanwhile.
    let new_leader = c.elect();
    assert_ne!(new_leader, leader);
}

#[test]
fn leader_lease_rejects_votes_while_leader_is_live_except_for_transfer() {
    let mut c = Cluster::new(&[1, 2, 3]);
    let leader = c.elect();
    let follower = c.nodes.keys().copied().find(|i| *i != leader).unwrap();
    let term = c.nodes[&leader].raft.term();
    let now = c.now;
    let node = c.nodes.get_mut(&follower).unwrap();
    assert!(node.raft.leader().is_some());
    // A disruptive candidate with a higher term and a good log: rejected, and no term bump.
    let last = node.raft.status().last_index;
    node.recv(
        now,
        vote_request(9, follower.0, term.0 + 1, last.0 + 5, term.0),
    );
    assert_eq!(node.raft.term(), term);
    assert_eq!(granted_votes(&node.take_sent()), vec![(n(9), term, false)]);
    // A leadership-transfer vote bypasses the lease.
    node.recv(
        now,
        msg(
            9,
            follower.0,
            Message::RequestVote {
                term: Term(term.0 + 1),
                last_log_index: idx(last.0 + 5),
                last_log_term: term,
                leadership_transfer: true,
            },
        ),
    );
    assert_eq!(node.raft.term(), Term(term.0 + 1));
    assert_eq!(
        granted_votes(&node.take_sent()),
        vec![(n(9), Term(term.0 + 1), true)]
    );
}

#[test]
fn lease_expires_after_election_timeout_min() {
    let mut node = Node::new(config(1), MemStore::new(), voters(&[1, 2, 3]), 0);
    node.recv(
        10,
        msg(
            2,
            1,
            Message::AppendEntries {
                term: t(1),
                prev_log_index: idx(0),
                prev_log_term: t(0),
                entries: vec![],
                leader_commit: idx(0),
            },
        ),
    );
    node.take_sent();
    node.recv(10 + ELECTION_MIN_MS - 1, vote_request(3, 1, 2, 0, 0));
    assert_eq!(granted_votes(&node.take_sent()), vec![(n(3), t(1), false)]);
    node.recv(10 + ELECTION_MIN_MS, vote_request(3, 1, 2, 0, 0));
    assert_eq!(granted_votes(&node.take_sent()), vec![(n(3), t(2), true)]);
}

#[test]
fn cluster_elects_exactly_one_leader_and_replicates() {
    let mut c = Cluster::new(&[1, 2, 3, 4, 5]);
    let leader = c.elect();
    for i in 0..20u8 {
        c.propose(leader, &[i]);
    }
    c.run_for(100);
    for node in c.nodes.values() {
        assert_eq!(node.applied.len(), 21, "noop + 20 entries on {}", node.id());
    }
    c.check_applied_agree();
}

#[test]
fn election_without_pre_vote_or_check_quorum_still_works() {
    let ids = [1u64, 2, 3];
    let nodes = ids
        .iter()
        .map(|i| {
            let cfg = Config {
                pre_vote: false,
                check_quorum: false,
                ..config(*i)
            };
            (n(*i), Node::new(cfg, MemStore::new(), voters(&ids), 0))
        })
        .collect();
    let mut c = Cluster::from_nodes(nodes);
    let leader = c.elect();
    c.propose(leader, b"x");
    c.run_for(50);
    c.isolated.insert(leader);
    let second = c.elect();
    assert_ne!(second, leader);
    c.isolated.clear();
    c.run_for(500);
    assert_eq!(c.nodes[&leader].raft.role(), Role::Follower);
    c.check_applied_agree();
}

#[test]
fn pre_vote_is_refused_while_the_leader_lease_holds() {
    let mut node = Node::new(config(1), MemStore::new(), voters(&[1, 2, 3]), 0);
    node.recv(
        10,
        msg(
            2,
            1,
            Message::AppendEntries {
                term: t(1),
                prev_log_index: idx(0),
                prev_log_term: t(0),
                entries: vec![],
                leader_commit: idx(0),
            },
        ),
    );
    node.take_sent();
    let pre_vote = msg(
        3,
        1,
        Message::PreVote {
            term: t(2),
            last_log_index: idx(9),
            last_log_term: t(1),
        },
    );
    node.recv(20, pre_vote.clone());
    assert_eq!(
        node.take_sent()[0].message,
        Message::PreVoteResponse {
            term: t(1),
            granted: false
        }
    );
    node.recv(10 + ELECTION_MIN_MS, pre_vote);
    assert_eq!(
        node.take_sent()[0].message,
        Message::PreVoteResponse {
            term: t(2),
            granted: true
        }
    );
    assert_eq!(node.raft.term(), t(1));
}
