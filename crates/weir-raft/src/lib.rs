//! weir's sans-IO Raft core: one consensus group as a deterministic state machine.
//!
//! No sockets, no clock, no threads, no ambient randomness. Time comes in as `now` (milliseconds,
//! monotonic, chosen by the driver); randomness comes from [`Config::random_seed`]. The same
//! inputs always produce the same outputs, which is what lets `weir-sim` replay a whole cluster
//! from a seed.
//!
//! # Driver contract
//!
//! The driver owns the network, the disk (a [`LogStore`]) and the clock. It feeds inputs and
//! executes outputs, like quinn-proto's `Connection`:
//!
//! 1. **Inputs.** Call one of
//!    - [`Raft::handle_message`] for every message received from a peer,
//!    - [`Raft::handle_timeout`] at (or after) [`Raft::next_timeout`],
//!    - [`Raft::propose`] / [`Raft::propose_batch`] (many payloads as one step: one
//!      `PersistEntries`, one round of appends) / [`Raft::propose_membership`] /
//!      [`Raft::transfer_leadership`],
//!    - [`Raft::handle_persisted`] when a `PersistEntries` is durable (with its last index and
//!      term), [`Raft::handle_snapshot_persisted`] when a `PersistSnapshot` is,
//!    - [`Raft::handle_applied`] after applying an `Apply` batch,
//!    - [`Raft::handle_compacted`] after taking a snapshot and compacting the store.
//! 2. **Drain.** After every input, call [`Raft::poll_output`] until it returns `None`, and
//!    execute the outputs **in queue order**:
//!    - `PersistHardState` must be durable before executing any later output (this is what makes a
//!      vote or a term durable before the message that reveals it is sent);
//!    - `PersistEntries` is written to the store (through [`Raft::store_mut`]) before executing
//!      later outputs, but may become durable later: report it with `handle_persisted`;
//!    - `PersistSnapshot` replaces the store's log and the state machine; report it with
//!      `handle_snapshot_persisted`;
//!    - `Send` is best effort (loss, duplication, reordering, delay are all tolerated);
//!    - `Apply` entries go to the state machine in order; report with `handle_applied`. At most
//!      [`APPLY_INFLIGHT_MAX`] entries are handed out ahead of the last `handle_applied`;
//!    - `StateChanged` is informational (client routing).
//! 3. **Timers.** Re-read [`Raft::next_timeout`] after each input.
//!
//! [`Raft::new`] queues outputs too (the initial `StateChanged`): drain after it as well.
//!
//! A minimal driver for a single-node group on [`testing::MemStore`] (fsync is instant):
//!
//! ```
//! use weir_raft::testing::MemStore;
//! use weir_raft::{Config, Membership, NodeId, Output, Raft};
//!
//! let id = NodeId(1);
//! let mut raft = Raft::new(Config::new(id), MemStore::new(), Membership::with_voters([id]), 0);
//! let mut applied = Vec::new();
//! let mut drain = |raft: &mut Raft<MemStore>, now| {
//!     while let Some(out) = raft.poll_output() {
//!         match out {
//!             Output::PersistHardState(hs) => raft.store_mut().set_hard_state(hs),
//!             Output::PersistEntries(entries) => {
//!                 raft.store_mut().append(&entries);
//!                 let last = entries.last().expect("non-empty");
//!                 raft.store_mut().mark_durable(last.index); // fsync
//!                 raft.handle_persisted(now, last.index, last.term);
//!             }
//!             Output::Apply(entries) => {
//!                 let last = entries.last().expect("non-empty").index;
//!                 applied.extend(entries);
//!                 raft.handle_applied(now, last);
//!             }
//!             Output::Send(_) | Output::PersistSnapshot(_) | Output::StateChanged { .. } => {}
//!         }
//!     }
//! };
//! drain(&mut raft, 0);
//! let now = raft.next_timeout().expect("a voter has an election timer");
//! raft.handle_timeout(now); // sole voter: elected at once
//! drain(&mut raft, now);
//! let (index, term) = raft.propose(now, b"hello".to_vec()).expect("leader");
//! drain(&mut raft, now);
//! assert!(applied.iter().any(|e| e.index == index && e.term == term));
//! ```
//!
//! On restart (crash), build a new [`Raft`] from the store: commit and applied restart at the
//! store's snapshot, so the state machine must restart from `store.snapshot()`.
//!
//! # Guarantees (asserted after every step)
//!
//! Term never decreases; at most one vote per term; a vote or term change is queued as
//! `PersistHardState` before any `Send` that depends on it; commit never exceeds the last index
//! nor decreases, and a committed entry never changes; applied <= commit; the unstable
//! (not-yet-durable) entries are contiguous with the store. A leader commits only by majority
//! match of an entry of its own term, counting itself only for what `handle_persisted` covered;
//! a follower acknowledges entries only once `handle_persisted` covered them. Messages from peers
//! are validated: malformed, stale or hostile ones are ignored (debug log), never a panic.
//!
//! See `docs/REPLICATION.md` for the design notes.

mod config;
mod raft;
mod rng;
mod store;
pub mod testing;
mod types;

#[cfg(test)]
mod tests;

#[cfg(feature = "fault-injection")]
pub use config::Bugs;
pub use config::{Config, ConfigError};
pub use raft::Raft;
pub use store::LogStore;
pub use types::*;

/// Most entries in one AppendEntries (also the cap for `Config::max_entries_per_append`, and the
/// most a follower accepts from a peer).
pub const ENTRIES_PER_APPEND_MAX: usize = 1024;
/// Byte budget of one AppendEntries' entries (always at least one entry).
pub const APPEND_BYTES_MAX: usize = 1024 * 1024;
/// Most AppendEntries in flight to one follower (pipelining window).
pub const INFLIGHT_APPENDS_MAX: usize = 64;
/// Largest snapshot data sent or accepted in one InstallSnapshot.
pub const SNAPSHOT_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Largest application payload of one entry (above weir-proto's largest frame).
pub const ENTRY_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Most entries waiting for `handle_persisted`; `propose` returns `Busy` beyond it and followers
/// accept only what fits (the leader resends).
pub const UNSTABLE_ENTRIES_MAX: usize = 8192;
/// Most entries in one Apply output.
pub const APPLY_BATCH_MAX: usize = 256;
/// Byte budget of one Apply output (always at least one entry).
pub const APPLY_BATCH_BYTES_MAX: usize = 1024 * 1024;
/// Most entries handed out in Apply outputs beyond the last `handle_applied`.
pub const APPLY_INFLIGHT_MAX: usize = 4 * APPLY_BATCH_MAX;
/// Largest log index accepted from a peer: beyond any real log, and it leaves headroom so index
/// arithmetic on peer-supplied values can never overflow.
pub const LOG_INDEX_MAX: u64 = 1 << 62;
/// Largest term accepted from a peer (same reasoning as LOG_INDEX_MAX).
pub const TERM_MAX: u64 = 1 << 62;
/// Most voters in a group.
pub const VOTERS_MAX: usize = 9;
/// Most learners in a group.
pub const LEARNERS_MAX: usize = 16;
