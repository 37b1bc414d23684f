//! An in-memory [`LogStore`] with crash semantics, for tests and the simulator.
//!
//! [`MemStore`] models a disk with a write cache: [`MemStore::append`] *writes* entries (visible
//! to reads at once, like a page cache) but they only survive [`MemStore::crash`] once
//! [`MemStore::mark_durable`] covers them (like `fsync`). Hard state, snapshots and compaction are
//! durable immediately (a real driver writes them synchronously).
//!
//! A driver executes the core's outputs on it like this:
//!
//! | output | MemStore call | then tell the core |
//! |---|---|---|
//! | `PersistHardState(hs)` | `set_hard_state(hs)` | (nothing; durable before the next output) |
//! | `PersistEntries(es)` | `append(es)`; later `mark_durable(last.index)` | `handle_persisted(last.index, last.term)` after `mark_durable` |
//! | `PersistSnapshot(s)` | `apply_snapshot(s)` | `handle_snapshot_persisted(s.meta.last_index)` |
//! | (driver compacts) | `compact(index, snapshot)` | `handle_compacted()` |
//!
//! After `crash()`, build a fresh `Raft` from the store: that is what a restart is.

use crate::store::LogStore;
use crate::types::{Entry, HardState, LogIndex, Snapshot, Term};

/// In-memory log store; see the module docs.
///
/// Model: the durable log is `entries[..durable_len] ++ shadow`. `shadow` holds durable entries
/// that a not-yet-durable truncating append has overwritten in the written view, so a crash
/// brings them back (the truncation was never fsynced).
#[derive(Clone, Debug, Default)]
pub struct MemStore {
    hard_state: HardState,
    snapshot: Option<Snapshot>,
    /// Written view, starting at `first_index()`.
    entries: Vec<Entry>,
    /// How many of `entries` (a prefix) are durable.
    durable_len: usize,
    /// Durable entries following `entries[..durable_len]` that the written view has replaced.
    shadow: Vec<Entry>,
}

impl MemStore {
    /// An empty store (a brand-new node).
    pub fn new() -> Self {
        MemStore::default()
    }

    /// A store starting from `snapshot` (durable), with an empty log after it.
    pub fn with_snapshot(snapshot: Snapshot) -> Self {
        let mut store = MemStore::new();
        store.apply_snapshot(snapshot);
        store
    }

    /// Durable immediately.
    pub fn set_hard_state(&mut self, hard_state: HardState) {
        self.hard_state = hard_state;
    }

    /// Writes `entries` (contiguous, non-empty), first truncating every entry at or after
    /// `entries[0].index`. Written, not durable: [`MemStore::crash`] forgets them unless
    /// [`MemStore::mark_durable`] covers them.
    ///
    /// Panics if the entries would leave a gap or overwrite the snapshot (a driver bug).
    pub fn append(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first() else {
            return;
        };
        for pair in entries.windows(2) {
            assert_eq!(
                pair[1].index,
                pair[0].index.next(),
                "append: entries not contiguous"
            );
        }
        let start = self.first_index();
        assert!(
            first.index >= start && first.index <= self.last_index().next(),
            "append at {} outside {}..={}",
            first.index,
            start,
            self.last_index().next()
        );
        let pos = usize::try_from(first.index.0 - start.0).expect("index fits usize");
        if pos < self.durable_len {
            // Overwriting durable entries: until this write is durable, a crash must bring them back.
            let mut overwritten: Vec<Entry> = self.entries[pos..self.durable_len].to_vec();
            overwritten.append(&mut self.shadow);
            self.shadow = overwritten;
            self.durable_len = pos;
        }
        self.entries.truncate(pos);
        self.entries.extend_from_slice(entries);
    }

    /// Every write up to `index` (in the written view) is now durable, including the truncations
    /// those writes did. An index at or below what is already durable is a no-op; an index past
    /// the written log makes the whole written log durable.
    pub fn mark_durable(&mut self, index: LogIndex) {
        let start = self.first_index();
        if index < start {
            return;
        }
        let len = usize::try_from(index.0 - start.0 + 1)
            .unwrap_or(usize::MAX)
            .min(self.entries.len());
        if len > self.durable_len || (len == self.entries.len() && !self.shadow.is_empty()) {
            self.durable_len = len;
            self.shadow.clear();
        }
    }

    /// Last durable index (what survives a crash).
    pub fn durable_index(&self) -> LogIndex {
        let base = self.first_index().0 - 1;
        LogIndex(base + (self.durable_len + self.shadow.len()) as u64)
    }

    /// Power loss: every written-but-not-durable entry is lost and durably-overwritten entries
    /// come back. Hard state and snapshot are kept (they are durable when set).
    pub fn crash(&mut self) {
        self.entries.truncate(self.durable_len);
        self.entries.append(&mut self.shadow);
        self.durable_len = self.entries.len();
    }

    /// Replaces the whole log with `snapshot` (durable at once): the log now starts after
    /// `snapshot.meta.last_index`.
    pub fn apply_snapshot(&mut self, snapshot: Snapshot) {
        self.entries.clear();
        self.shadow.clear();
        self.durable_len = 0;
        self.snapshot = Some(snapshot);
    }

    /// The driver took `snapshot` of its state machine at `index` (== `snapshot.meta.last_index`):
    /// store it and drop the entries up to `index`. Durable at once.
    ///
    /// Panics if `index` does not match the snapshot or is beyond the written log.
    pub fn compact(&mut self, index: LogIndex, snapshot: Snapshot) {
        assert_eq!(
            index, snapshot.meta.last_index,
            "compact: index != snapshot.meta.last_index"
        );
        let start = self.first_index();
        if index < start {
            return; // older than what we have: nothing to drop, keep the newer snapshot
        }
        assert!(index <= self.last_index(), "compact beyond the written log");
        let drop = usize::try_from(index.0 - start.0 + 1).expect("index fits usize");
        self.entries.drain(..drop);
        if drop >= self.durable_len {
            // The snapshot now covers the durable prefix; durably-overwritten entries beyond it
            // belong to the branch the snapshot did not take.
            self.durable_len = 0;
            self.shadow.clear();
        } else {
            self.durable_len -= drop;
        }
        self.snapshot = Some(snapshot);
    }

    /// The written log (after the snapshot), for assertions.
    pub fn all_entries(&self) -> &[Entry] {
        &self.entries
    }

    fn position(&self, index: LogIndex) -> Option<usize> {
        let start = self.first_index();
        if index < start {
            return None;
        }
        let pos = usize::try_from(index.0 - start.0).ok()?;
        (pos < self.entries.len()).then_some(pos)
    }
}

impl LogStore for MemStore {
    fn hard_state(&self) -> HardState {
        self.hard_state.clone()
    }

    fn snapshot(&self) -> Option<Snapshot> {
        self.snapshot.clone()
    }

    fn first_index(&self) -> LogIndex {
        self.snapshot
            .as_ref()
            .map_or(LogIndex(1), |s| s.meta.last_index.next())
    }

    fn last_index(&self) -> LogIndex {
        LogIndex(self.first_index().0 - 1 + self.entries.len() as u64)
    }

    fn term(&self, index: LogIndex) -> Option<Term> {
        match &self.snapshot {
            Some(s) if s.meta.last_index == index => return Some(s.meta.last_term),
            None if index == LogIndex(0) => return Some(Term(0)),
            _ => {}
        }
        self.position(index).map(|pos| self.entries[pos].term)
    }

    fn entries(&self, lo: LogIndex, hi_exclusive: LogIndex, max_bytes: usize) -> Vec<Entry> {
        let Some(start) = self.position(lo) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for entry in &self.entries[start..] {
            if entry.index >= hi_exclusive {
                break;
            }
            bytes = bytes.saturating_add(entry.size_bytes());
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            out.push(entry.clone());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Membership, Payload, SnapshotMeta};

    fn e(index: u64, term: u64) -> Entry {
        Entry {
            term: Term(term),
            index: LogIndex(index),
            payload: Payload::Normal(vec![index as u8]),
        }
    }

    fn terms(store: &MemStore) -> Vec<(u64, u64)> {
        store
            .all_entries()
            .iter()
            .map(|e| (e.index.0, e.term.0))
            .collect()
    }

    #[test]
    fn crash_drops_entries_not_marked_durable() {
        let mut s = MemStore::new();
        s.append(&[e(1, 1), e(2, 1)]);
        s.mark_durable(LogIndex(1));
        s.append(&[e(3, 1)]);
        s.crash();
        assert_eq!(terms(&s), vec![(1, 1)]);
        assert_eq!(s.last_index(), LogIndex(1));
    }

    #[test]
    fn crash_restores_durable_entries_overwritten_by_undurable_truncation() {
        let mut s = MemStore::new();
        s.append(&[e(1, 1), e(2, 1), e(3, 1)]);
        s.mark_durable(LogIndex(3));
        s.append(&[e(2, 2)]);
        assert_eq!(terms(&s), vec![(1, 1), (2, 2)]);
        s.crash();
        assert_eq!(terms(&s), vec![(1, 1), (2, 1), (3, 1)]);
        s.append(&[e(2, 2)]);
        s.mark_durable(LogIndex(2));
        s.crash();
        assert_eq!(terms(&s), vec![(1, 1), (2, 2)]);
    }

    #[test]
    fn compact_and_snapshot_move_first_index() {
        let mut s = MemStore::new();
        s.append(&[e(1, 1), e(2, 1), e(3, 2)]);
        s.mark_durable(LogIndex(3));
        let snap = |i: u64, t: u64| Snapshot {
            meta: SnapshotMeta {
                last_index: LogIndex(i),
                last_term: Term(t),
                membership: Membership::with_voters([crate::NodeId(1)]),
            },
            data: vec![],
        };
        s.compact(LogIndex(2), snap(2, 1));
        assert_eq!(s.first_index(), LogIndex(3));
        assert_eq!(s.term(LogIndex(2)), Some(Term(1)));
        assert_eq!(s.term(LogIndex(1)), None);
        assert_eq!(s.entries(LogIndex(3), LogIndex(4), 0).len(), 1);
        s.apply_snapshot(snap(10, 3));
        assert_eq!(s.first_index(), LogIndex(11));
        assert_eq!(s.last_index(), LogIndex(10));
        s.crash();
        assert_eq!(s.last_index(), LogIndex(10));
    }
}
