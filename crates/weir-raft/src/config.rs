//! Per-node configuration of the core.

use serde::{Deserialize, Serialize};

use crate::types::NodeId;
use crate::{APPEND_BYTES_MAX, ENTRIES_PER_APPEND_MAX, INFLIGHT_APPENDS_MAX};

/// Configuration of one node's core. Build with [`Config::new`] and override fields.
///
/// [`crate::Raft::new`] panics on an inconsistent config (a driver bug, not a peer's), and clamps
/// the `max_*` knobs into `1..=` their `*_MAX` constant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    pub id: NodeId,
    /// Election timeout drawn uniformly in `[min, max)`. Also the leader-lease length followers
    /// honour and the CheckQuorum period.
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Leader heartbeat period; must be below `election_timeout_min_ms`.
    pub heartbeat_interval_ms: u64,
    /// Run a PreVote round before bumping the term, so a rejoining partitioned node cannot disrupt.
    pub pre_vote: bool,
    /// Leader steps down without a majority heard within an election timeout; followers honour a
    /// leader lease (reject (Pre)Votes while they hear from a live leader).
    pub check_quorum: bool,
    /// The only source of randomness (election timeouts).
    pub random_seed: u64,
    pub max_entries_per_append: usize,
    pub max_bytes_per_append: usize,
    /// Pipelining depth: AppendEntries in flight per follower before waiting for replies.
    pub max_inflight_appends: usize,
    /// Test-only switches that re-introduce classic bugs.
    #[cfg(feature = "fault-injection")]
    pub bugs: Bugs,
}

impl Config {
    /// Defaults for everything but the id.
    pub fn new(id: NodeId) -> Self {
        Config {
            id,
            election_timeout_min_ms: 1000,
            election_timeout_max_ms: 2000,
            heartbeat_interval_ms: 100,
            pre_vote: true,
            check_quorum: true,
            random_seed: id.0,
            max_entries_per_append: ENTRIES_PER_APPEND_MAX,
            max_bytes_per_append: APPEND_BYTES_MAX,
            max_inflight_appends: INFLIGHT_APPENDS_MAX,
            #[cfg(feature = "fault-injection")]
            bugs: Bugs::default(),
        }
    }

    /// Checks the timing relations the algorithm relies on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.election_timeout_min_ms == 0 {
            return Err(ConfigError::ElectionTimeoutZero);
        }
        if self.election_timeout_max_ms <= self.election_timeout_min_ms {
            return Err(ConfigError::ElectionTimeoutRange);
        }
        if self.heartbeat_interval_ms == 0
            || self.heartbeat_interval_ms >= self.election_timeout_min_ms
        {
            return Err(ConfigError::HeartbeatInterval);
        }
        Ok(())
    }
}

impl Default for Config {
    fn default() -> Self {
        Config::new(NodeId(0))
    }
}

/// An inconsistent [`Config`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("election_timeout_min_ms must be > 0")]
    ElectionTimeoutZero,
    #[error("election_timeout_max_ms must be > election_timeout_min_ms")]
    ElectionTimeoutRange,
    #[error("heartbeat_interval_ms must be in 1..election_timeout_min_ms")]
    HeartbeatInterval,
}

/// Test-only fault switches: each one re-introduces a classic Raft bug faithfully, so that the
/// simulator's safety checkers can be shown to catch it. All off by default.
#[cfg(feature = "fault-injection")]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bugs {
    /// The leader commits an entry as soon as it appends it (no majority, no own persistence).
    pub commit_without_majority: bool,
    /// Followers acknowledge AppendEntries before the entries are durable (lost on crash).
    pub ack_before_persist: bool,
    /// Votes are granted without the "candidate's log is at least as up-to-date" check.
    pub vote_for_stale_candidate: bool,
}
