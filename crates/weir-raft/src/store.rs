//! The driver's durable log, as the core sees it.

use crate::types::{Entry, HardState, LogIndex, Snapshot, Term};

/// Read-only view of the durable log and latest snapshot, implemented by the driver.
///
/// The core reads persisted entries through it (to send AppendEntries to lagging followers, to
/// check terms) and keeps only not-yet-persisted entries in memory ("unstable", as raft-rs). The
/// driver mutates its store only while executing `PersistEntries` / `PersistSnapshot` outputs or
/// when compacting (then it calls `handle_compacted`), never behind the core's back otherwise.
///
/// The store may hold entries the core has already truncated in memory (a `PersistEntries` that
/// replaces them is queued but not executed yet): the core never reads at or beyond its own
/// unstable offset, so such leftovers are harmless.
pub trait LogStore {
    /// Durable term and vote (default for a brand-new node).
    fn hard_state(&self) -> HardState;
    /// Latest snapshot; entries up to `meta.last_index` are compacted away.
    fn snapshot(&self) -> Option<Snapshot>;
    /// First stored entry's index: snapshot.last_index + 1, or 1.
    fn first_index(&self) -> LogIndex;
    /// Last stored (persisted-or-written) entry, or snapshot.last_index, or 0.
    fn last_index(&self) -> LogIndex;
    /// Term of a stored entry or of the snapshot's last index; None if compacted or absent.
    fn term(&self, index: LogIndex) -> Option<Term>;
    /// Entries in `[lo, hi_exclusive)`, stopping once `max_bytes` is reached but always at least
    /// one entry if `lo < hi_exclusive` and `lo` is stored.
    fn entries(&self, lo: LogIndex, hi_exclusive: LogIndex, max_bytes: usize) -> Vec<Entry>;
}
