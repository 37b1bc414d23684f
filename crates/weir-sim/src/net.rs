//! The simulated network: per directed link, messages are dropped, delayed, duplicated and
//! reordered (random latency reorders; a fraction of messages can take a "long delay"), and links
//! can be cut to form partitions.

use std::collections::{BTreeMap, BTreeSet};

use weir_raft::{Millis, NodeId};

use crate::rng::SplitMix64;

/// Behaviour of a link (the default for all links, or an override for one directed link).
#[derive(Clone, Debug, PartialEq)]
pub struct NetConfig {
    /// One-way latency drawn uniformly in `[latency_min_ms, latency_max_ms]`.
    pub latency_min_ms: u64,
    pub latency_max_ms: u64,
    /// Probability a message is lost.
    pub drop_prob: f64,
    /// Probability a (not dropped) message is delivered twice (the copy with its own latency).
    pub dup_prob: f64,
    /// Probability a message takes a long detour: latency drawn in `[latency_max_ms, long_delay_max_ms]`
    /// (MIT 6.5840's "long reordering": old messages arrive long after newer ones).
    pub long_delay_prob: f64,
    pub long_delay_max_ms: u64,
}

impl NetConfig {
    /// No loss, no duplication, small latency.
    pub fn reliable() -> Self {
        Self {
            latency_min_ms: 1,
            latency_max_ms: 10,
            drop_prob: 0.0,
            dup_prob: 0.0,
            long_delay_prob: 0.0,
            long_delay_max_ms: 0,
        }
    }

    /// MIT-style unreliable network: 10% loss, some duplication, latency up to 27 ms and rare
    /// long reorderings.
    pub fn unreliable() -> Self {
        Self {
            latency_min_ms: 1,
            latency_max_ms: 27,
            drop_prob: 0.1,
            dup_prob: 0.05,
            long_delay_prob: 0.02,
            long_delay_max_ms: 2_000,
        }
    }

    /// A hostile network for the Figure 8 (unreliable) test: long delays are common.
    pub fn hostile() -> Self {
        Self {
            latency_min_ms: 1,
            latency_max_ms: 30,
            drop_prob: 0.15,
            dup_prob: 0.1,
            long_delay_prob: 0.1,
            long_delay_max_ms: 3_000,
        }
    }
}

/// Verdict for one message handed to the network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Link cut or message lost.
    Dropped,
    /// Deliver after each of these delays (more than one = duplicated).
    Deliver(Vec<Millis>),
}

/// Links, partitions and their randomness.
#[derive(Clone, Debug)]
pub struct Network {
    default: NetConfig,
    overrides: BTreeMap<(NodeId, NodeId), NetConfig>,
    cut: BTreeSet<(NodeId, NodeId)>,
    rng: SplitMix64,
}

impl Network {
    pub fn new(default: NetConfig, rng: SplitMix64) -> Self {
        Self {
            default,
            overrides: BTreeMap::new(),
            cut: BTreeSet::new(),
            rng,
        }
    }

    /// The default link behaviour.
    pub fn config(&self) -> &NetConfig {
        &self.default
    }

    /// Change every link's behaviour (per-link overrides are dropped).
    pub fn set_config(&mut self, cfg: NetConfig) {
        self.default = cfg;
        self.overrides.clear();
    }

    /// Override one directed link.
    pub fn set_link(&mut self, from: NodeId, to: NodeId, cfg: NetConfig) {
        self.overrides.insert((from, to), cfg);
    }

    /// Can `from` currently reach `to`?
    pub fn connected(&self, from: NodeId, to: NodeId) -> bool {
        !self.cut.contains(&(from, to))
    }

    /// Cut one direction.
    pub fn cut_link(&mut self, from: NodeId, to: NodeId) {
        if from != to {
            self.cut.insert((from, to));
        }
    }

    /// Cut both directions.
    pub fn cut_pair(&mut self, a: NodeId, b: NodeId) {
        self.cut_link(a, b);
        self.cut_link(b, a);
    }

    /// Isolate `n` from every node in `all`.
    pub fn isolate(&mut self, n: NodeId, all: &[NodeId]) {
        for &m in all {
            self.cut_pair(n, m);
        }
    }

    /// Restore every link touching `n`.
    pub fn reconnect(&mut self, n: NodeId) {
        self.cut.retain(|&(a, b)| a != n && b != n);
    }

    /// Only nodes in the same group can talk (nodes in no group are isolated).
    pub fn partition(&mut self, groups: &[Vec<NodeId>], all: &[NodeId]) {
        self.cut.clear();
        let group_of = |n: NodeId| groups.iter().position(|g| g.contains(&n));
        for &a in all {
            for &b in all {
                if a != b {
                    match (group_of(a), group_of(b)) {
                        (Some(x), Some(y)) if x == y => {}
                        _ => self.cut_link(a, b),
                    }
                }
            }
        }
    }

    /// Everyone reaches everyone.
    pub fn heal(&mut self) {
        self.cut.clear();
    }

    /// Number of cut directed links.
    pub fn cut_links(&self) -> usize {
        self.cut.len()
    }

    /// Decide the fate of one message.
    pub fn route(&mut self, from: NodeId, to: NodeId) -> Fate {
        if !self.connected(from, to) {
            return Fate::Dropped;
        }
        let cfg = self.overrides.get(&(from, to)).unwrap_or(&self.default);
        let cfg = cfg.clone();
        if self.rng.chance(cfg.drop_prob) {
            return Fate::Dropped;
        }
        let mut delays = vec![self.latency(&cfg)];
        if self.rng.chance(cfg.dup_prob) {
            delays.push(self.latency(&cfg));
        }
        Fate::Deliver(delays)
    }

    fn latency(&mut self, cfg: &NetConfig) -> Millis {
        if cfg.long_delay_prob > 0.0 && self.rng.chance(cfg.long_delay_prob) {
            self.rng.range_inclusive(
                cfg.latency_max_ms,
                cfg.long_delay_max_ms.max(cfg.latency_max_ms),
            )
        } else {
            self.rng.range_inclusive(
                cfg.latency_min_ms,
                cfg.latency_max_ms.max(cfg.latency_min_ms),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: u64) -> Vec<NodeId> {
        (1..=n).map(NodeId).collect()
    }

    #[test]
    fn partition_cuts_across_groups_only() {
        let all = ids(5);
        let mut net = Network::new(NetConfig::reliable(), SplitMix64::new(1));
        net.partition(
            &[
                vec![NodeId(1), NodeId(2)],
                vec![NodeId(3), NodeId(4), NodeId(5)],
            ],
            &all,
        );
        assert!(net.connected(NodeId(1), NodeId(2)));
        assert!(!net.connected(NodeId(1), NodeId(3)));
        assert!(net.connected(NodeId(4), NodeId(5)));
        assert_eq!(net.route(NodeId(3), NodeId(1)), Fate::Dropped);
        net.heal();
        assert!(matches!(net.route(NodeId(3), NodeId(1)), Fate::Deliver(_)));
    }

    #[test]
    fn isolate_and_reconnect() {
        let all = ids(3);
        let mut net = Network::new(NetConfig::reliable(), SplitMix64::new(1));
        net.isolate(NodeId(2), &all);
        assert!(!net.connected(NodeId(1), NodeId(2)));
        assert!(!net.connected(NodeId(2), NodeId(3)));
        assert!(net.connected(NodeId(1), NodeId(3)));
        net.reconnect(NodeId(2));
        assert_eq!(net.cut_links(), 0);
    }

    #[test]
    fn lossy_link_drops_some() {
        let mut cfg = NetConfig::reliable();
        cfg.drop_prob = 0.5;
        let mut net = Network::new(cfg, SplitMix64::new(3));
        let dropped = (0..1000)
            .filter(|_| net.route(NodeId(1), NodeId(2)) == Fate::Dropped)
            .count();
        assert!((350..650).contains(&dropped), "{dropped}");
    }
}
