//! [`SimStore`]: the in-memory `weir_raft::LogStore` each simulated node runs on.
//!
//! It keeps two images of the log: `written` (what the core has asked to be written: visible to the
//! core at once through [`LogStore`]) and `durable` (what would survive a crash). `PersistEntries`
//! and `PersistSnapshot` outputs are applied to `written` immediately and queued; when the
//! simulated fsync completes, the oldest queued operation is applied to `durable` too (fsyncs
//! complete in order, like a write-ahead log). A crash throws the queue away and resets `written`
//! to `durable`. The hard state is written durably at once (`PersistHardState` is synchronous).
//!
//! The store is a cheap handle (`Rc<RefCell<..>>`): the core owns one clone, the simulation keeps
//! another so it can inspect the logs and take the store back after a crash.

use std::cell::{Ref, RefCell, RefMut};
use std::collections::VecDeque;
use std::rc::Rc;

use weir_raft::{Entry, HardState, LogIndex, LogStore, Snapshot, Term};

/// Size of an entry for `LogStore::entries`' byte budget (the core's own accounting).
pub fn entry_size(e: &Entry) -> usize {
    e.size_bytes()
}

/// One version of a node's log: an optional snapshot followed by contiguous entries.
#[derive(Clone, Debug, Default)]
pub struct LogImage {
    /// Latest snapshot; entries up to its `last_index` are compacted away.
    pub snapshot: Option<Snapshot>,
    /// Entries `first_index()..=last_index()`, contiguous.
    pub entries: Vec<Entry>,
}

impl LogImage {
    /// Index covered by the snapshot (0 without one).
    pub fn snapshot_index(&self) -> u64 {
        self.snapshot.as_ref().map_or(0, |s| s.meta.last_index.0)
    }

    /// First stored entry's index (snapshot index + 1).
    pub fn first_index(&self) -> u64 {
        self.snapshot_index() + 1
    }

    /// Last entry's index, or the snapshot's, or 0.
    pub fn last_index(&self) -> u64 {
        self.entries
            .last()
            .map_or(self.snapshot_index(), |e| e.index.0)
    }

    /// The stored entry at `index`, if any (not for the snapshot's index).
    pub fn entry(&self, index: u64) -> Option<&Entry> {
        let first = self.first_index();
        if index < first {
            return None;
        }
        self.entries.get((index - first) as usize)
    }

    /// Term of the entry at `index`, or of the snapshot's last index; `Some(0)` for index 0 of an
    /// uncompacted log.
    pub fn term(&self, index: u64) -> Option<Term> {
        if let Some(s) = &self.snapshot {
            if index == s.meta.last_index.0 {
                return Some(s.meta.last_term);
            }
            if index < s.meta.last_index.0 {
                return None;
            }
        } else if index == 0 {
            return Some(Term(0));
        }
        self.entry(index).map(|e| e.term)
    }

    /// Truncate every entry with index >= `entries[0].index`, then append `entries`. Entries must
    /// start after the snapshot and leave no gap.
    pub fn append(&mut self, entries: &[Entry]) -> Result<(), String> {
        let Some(first_new) = entries.first() else {
            return Err("PersistEntries with no entries".into());
        };
        for w in entries.windows(2) {
            if w[1].index.0 != w[0].index.0 + 1 {
                return Err(format!(
                    "PersistEntries not contiguous: index {} followed by {}",
                    w[0].index, w[1].index
                ));
            }
            if w[1].term < w[0].term {
                return Err(format!(
                    "PersistEntries terms decrease: {}@{} then {}@{}",
                    w[0].term, w[0].index, w[1].term, w[1].index
                ));
            }
        }
        let start = first_new.index.0;
        if start == 0 {
            return Err("PersistEntries with an entry at index 0".into());
        }
        if start > self.last_index() + 1 {
            return Err(format!(
                "PersistEntries leaves a gap: log ends at {}, entries start at {}",
                self.last_index(),
                start
            ));
        }
        let snap = self.snapshot_index();
        if start <= snap {
            return Err(format!(
                "PersistEntries starts at {start}, inside the snapshot (log starts at {})",
                snap + 1
            ));
        }
        let keep = (start - self.first_index()) as usize;
        self.entries.truncate(keep);
        self.entries.extend(entries.iter().cloned());
        Ok(())
    }

    /// Replace the whole log with `snapshot` (InstallSnapshot on a follower).
    pub fn install_snapshot(&mut self, snapshot: Snapshot) {
        self.entries.clear();
        self.snapshot = Some(snapshot);
    }

    /// Take `snapshot` (covering a prefix of this log) and drop the entries it covers.
    pub fn compact(&mut self, snapshot: Snapshot) {
        let last = snapshot.meta.last_index.0;
        if last <= self.snapshot_index() {
            return;
        }
        let first = self.first_index();
        let drop = ((last + 1).saturating_sub(first) as usize).min(self.entries.len());
        self.entries.drain(..drop);
        self.snapshot = Some(snapshot);
    }
}

/// A write that is visible but not yet durable.
#[derive(Clone, Debug)]
pub enum PendingWrite {
    /// From `Output::PersistEntries`.
    Entries(Vec<Entry>),
    /// From `Output::PersistSnapshot`.
    Snapshot(Snapshot),
}

/// The state behind a [`SimStore`] handle.
#[derive(Clone, Debug, Default)]
pub struct StoreState {
    /// Durable as soon as written.
    pub hard_state: HardState,
    /// What the core sees.
    pub written: LogImage,
    /// What survives a crash.
    pub durable: LogImage,
    /// Writes applied to `written` but not yet to `durable`, oldest first.
    pub pending: VecDeque<PendingWrite>,
}

/// Shared handle to one node's storage.
#[derive(Clone, Debug, Default)]
pub struct SimStore {
    inner: Rc<RefCell<StoreState>>,
}

impl SimStore {
    /// An empty store (a brand-new node).
    pub fn new() -> Self {
        Self::default()
    }

    /// Read access for the simulation and its checkers.
    pub fn state(&self) -> Ref<'_, StoreState> {
        self.inner.borrow()
    }

    fn state_mut(&self) -> RefMut<'_, StoreState> {
        self.inner.borrow_mut()
    }

    /// `PersistHardState`: durable at once.
    pub fn set_hard_state(&self, hs: HardState) {
        self.state_mut().hard_state = hs;
    }

    /// `PersistEntries`: visible now, durable after [`SimStore::complete_oldest`].
    pub fn write_entries(&self, entries: Vec<Entry>) -> Result<(), String> {
        let mut st = self.state_mut();
        st.written.append(&entries)?;
        st.pending.push_back(PendingWrite::Entries(entries));
        Ok(())
    }

    /// `PersistSnapshot`: visible now, durable after [`SimStore::complete_oldest`].
    pub fn write_snapshot(&self, snapshot: Snapshot) {
        let mut st = self.state_mut();
        st.written.install_snapshot(snapshot.clone());
        st.pending.push_back(PendingWrite::Snapshot(snapshot));
    }

    /// The oldest pending write's fsync completed: apply it to the durable image and return it.
    pub fn complete_oldest(&self) -> Option<PendingWrite> {
        let mut st = self.state_mut();
        let op = st.pending.pop_front()?;
        match &op {
            PendingWrite::Entries(es) => {
                // Already validated against `written`, whose history `durable` follows.
                if let Err(e) = st.durable.append(es) {
                    panic!("durable image diverged from written image: {e}");
                }
            }
            PendingWrite::Snapshot(s) => st.durable.install_snapshot(s.clone()),
        }
        Some(op)
    }

    /// Number of writes waiting for their fsync.
    pub fn pending_writes(&self) -> usize {
        self.state().pending.len()
    }

    /// Driver-initiated snapshot + compaction (durable at once). Refused (false) while writes
    /// are pending, so both images compact the same log.
    pub fn compact(&self, snapshot: Snapshot) -> bool {
        let mut st = self.state_mut();
        if !st.pending.is_empty() {
            return false;
        }
        st.written.compact(snapshot.clone());
        st.durable.compact(snapshot);
        true
    }

    /// Crash: everything not durable is gone.
    pub fn crash(&self) {
        let mut st = self.state_mut();
        st.pending.clear();
        st.written = st.durable.clone();
    }
}

impl LogStore for SimStore {
    fn hard_state(&self) -> HardState {
        self.state().hard_state.clone()
    }

    fn snapshot(&self) -> Option<Snapshot> {
        self.state().written.snapshot.clone()
    }

    fn first_index(&self) -> LogIndex {
        LogIndex(self.state().written.first_index())
    }

    fn last_index(&self) -> LogIndex {
        LogIndex(self.state().written.last_index())
    }

    fn term(&self, index: LogIndex) -> Option<Term> {
        self.state().written.term(index.0)
    }

    fn entries(&self, lo: LogIndex, hi_exclusive: LogIndex, max_bytes: usize) -> Vec<Entry> {
        let st = self.state();
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for i in lo.0..hi_exclusive.0 {
            let Some(e) = st.written.entry(i) else { break };
            let size = entry_size(e);
            if !out.is_empty() && bytes + size > max_bytes {
                break;
            }
            bytes += size;
            out.push(e.clone());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_raft::{Membership, Payload, SnapshotMeta};

    fn e(index: u64, term: u64) -> Entry {
        Entry {
            term: Term(term),
            index: LogIndex(index),
            payload: Payload::Normal(vec![index as u8, term as u8]),
        }
    }

    #[test]
    fn written_is_visible_durable_after_completion_and_crash_reverts() {
        let s = SimStore::new();
        s.write_entries(vec![e(1, 1), e(2, 1)]).unwrap();
        assert_eq!(s.last_index(), LogIndex(2));
        s.complete_oldest();
        s.write_entries(vec![e(2, 2), e(3, 2)]).unwrap();
        assert_eq!(s.term(LogIndex(2)), Some(Term(2)));
        s.crash();
        assert_eq!(s.last_index(), LogIndex(2));
        assert_eq!(s.term(LogIndex(2)), Some(Term(1)));
    }

    #[test]
    fn compaction_and_gap_detection() {
        let s = SimStore::new();
        s.write_entries(vec![e(1, 1), e(2, 1), e(3, 1)]).unwrap();
        s.complete_oldest();
        let snap = Snapshot {
            meta: SnapshotMeta {
                last_index: LogIndex(2),
                last_term: Term(1),
                membership: Membership::default(),
            },
            data: vec![],
        };
        assert!(s.compact(snap));
        assert_eq!(s.first_index(), LogIndex(3));
        assert_eq!(s.term(LogIndex(2)), Some(Term(1)));
        assert_eq!(s.term(LogIndex(1)), None);
        assert_eq!(s.entries(LogIndex(3), LogIndex(4), 0).len(), 1);
        assert!(s.write_entries(vec![e(5, 1)]).is_err());
    }
}
