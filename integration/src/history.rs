//! A history checker for PUT/listen runs, linear in the size of the log (offsets order it).
//!
//! Producers record what they sent and what was acknowledged; a listener reads the topic back
//! from one replica; [`History::check`] compares them and counts every anomaly.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use weir_client::Offset;

/// What the producers did. Values identify messages: each value is sent at most once.
#[derive(Debug, Default, Clone)]
pub struct History {
    /// value → (producer, its sequence number within the producer).
    sent: HashMap<Vec<u8>, (u32, u64)>,
    /// value → offset, for acknowledged PUTs.
    acked: HashMap<Vec<u8>, Offset>,
}

/// Anomalies found by [`History::check`]; every counter must be 0 in a correct run of
/// exactly-once producers ([`Verdict::is_exactly_once`]). With anonymous PUTs,
/// `unacked_present` and `unacked_absent` are the two allowed outcomes of a PUT whose
/// acknowledgement was lost (a connection broke, a leader died).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub entries: u64,
    /// An acknowledged PUT missing from the log.
    pub lost: u64,
    /// An acknowledged PUT found at another offset than acknowledged.
    pub moved: u64,
    /// A message found more than once.
    pub duplicated: u64,
    /// A message in the log that was never sent.
    pub phantom: u64,
    /// Offsets not strictly increasing along the log.
    pub out_of_order_offsets: u64,
    /// A producer's messages in the log not in the order it sent them.
    pub reordered: u64,
    pub unacked_present: u64,
    pub unacked_absent: u64,
}

impl Verdict {
    /// No loss, no duplicate, no phantom, no misplaced or disordered offset: what any client's
    /// PUTs get, a lone anonymous `put` included.
    pub fn is_safe(&self) -> bool {
        self.lost == 0
            && self.moved == 0
            && self.duplicated == 0
            && self.phantom == 0
            && self.out_of_order_offsets == 0
    }

    /// [`Verdict::is_safe`], and what exactly-once producers add: every PUT sent was
    /// acknowledged (none failed, so none has an unknown outcome), and each producer's PUTs are
    /// in the log in the order it sent them.
    pub fn is_exactly_once(&self) -> bool {
        self.is_safe()
            && self.reordered == 0
            && self.unacked_present == 0
            && self.unacked_absent == 0
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "entries={} lost={} moved={} duplicated={} phantom={} out_of_order_offsets={} \
             reordered={} unacked_present={} unacked_absent={}",
            self.entries,
            self.lost,
            self.moved,
            self.duplicated,
            self.phantom,
            self.out_of_order_offsets,
            self.reordered,
            self.unacked_present,
            self.unacked_absent
        )
    }
}

impl History {
    pub fn sent(&mut self, producer: u32, seq: u64, value: Vec<u8>) {
        self.sent.insert(value, (producer, seq));
    }

    pub fn acked(&mut self, value: Vec<u8>, offset: Offset) {
        self.acked.insert(value, offset);
    }

    pub fn acked_count(&self) -> usize {
        self.acked.len()
    }

    pub fn sent_count(&self) -> usize {
        self.sent.len()
    }

    /// The highest acknowledged offset, if any.
    pub fn max_acked_offset(&self) -> Option<Offset> {
        self.acked.values().max().copied()
    }

    pub fn merge(&mut self, other: History) {
        self.sent.extend(other.sent);
        self.acked.extend(other.acked);
    }

    /// Checks a log read back from one replica: (offset, value) in the order read.
    pub fn check(&self, log: &[(Offset, Vec<u8>)]) -> Verdict {
        let mut v = Verdict {
            entries: log.len() as u64,
            ..Verdict::default()
        };
        let mut seen: HashMap<&[u8], Offset> = HashMap::with_capacity(log.len());
        let mut last_offset: Option<Offset> = None;
        let mut last_seq: BTreeMap<u32, u64> = BTreeMap::new();
        for (offset, value) in log {
            if last_offset.is_some_and(|l| *offset <= l) {
                v.out_of_order_offsets += 1;
            }
            last_offset = Some(*offset);
            if seen.insert(value.as_slice(), *offset).is_some() {
                v.duplicated += 1;
                continue;
            }
            match self.sent.get(value) {
                None => v.phantom += 1,
                Some(&(producer, seq)) => {
                    if last_seq.get(&producer).is_some_and(|&s| seq < s) {
                        v.reordered += 1;
                    }
                    let s = last_seq.entry(producer).or_insert(seq);
                    *s = (*s).max(seq);
                }
            }
        }
        for (value, acked_at) in &self.acked {
            match seen.get(value.as_slice()) {
                None => v.lost += 1,
                Some(at) if at != acked_at => v.moved += 1,
                Some(_) => {}
            }
        }
        for value in self.sent.keys().filter(|k| !self.acked.contains_key(*k)) {
            if seen.contains_key(value.as_slice()) {
                v.unacked_present += 1;
            } else {
                v.unacked_absent += 1;
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn val(p: u32, s: u64) -> Vec<u8> {
        format!("p{p}-{s}").into_bytes()
    }

    #[test]
    fn a_clean_run_has_no_anomalies() {
        let mut h = History::default();
        let mut log = Vec::new();
        for s in 0..5 {
            h.sent(0, s, val(0, s));
            h.acked(val(0, s), Offset(s + 1));
            log.push((Offset(s + 1), val(0, s)));
        }
        let v = h.check(&log);
        assert!(v.is_exactly_once(), "{v}");
        assert_eq!(v.entries, 5);
        // One PUT not acknowledged: still safe, no longer exactly-once.
        h.sent(0, 5, val(0, 5));
        let v = h.check(&log);
        assert!(v.is_safe() && !v.is_exactly_once(), "{v}");
    }

    #[test]
    fn every_kind_of_anomaly_is_counted() {
        let mut h = History::default();
        for s in 0..4 {
            h.sent(0, s, val(0, s));
        }
        h.acked(val(0, 0), Offset(1)); // lost below
        h.acked(val(0, 1), Offset(2)); // found at 5: moved
        h.sent(1, 0, val(1, 0)); // unacked, absent
        let log = vec![
            (Offset(3), val(0, 3)),
            (Offset(4), val(0, 2)),         // seq 2 after 3: reordered
            (Offset(5), val(0, 1)),         // seq 1 after 3: reordered, moved
            (Offset(5), b"ghost".to_vec()), // phantom, offset not increasing
            (Offset(6), val(0, 3)),         // duplicate
        ];
        let v = h.check(&log);
        assert_eq!(v.lost, 1);
        assert_eq!(v.moved, 1);
        assert_eq!(v.phantom, 1);
        assert_eq!(v.duplicated, 1);
        assert_eq!(v.out_of_order_offsets, 1);
        assert_eq!(v.reordered, 2);
        assert_eq!(
            v.unacked_present, 2,
            "seq 2 and 3 were never acked but are there"
        );
        assert_eq!(v.unacked_absent, 1);
        assert!(!v.is_safe());
        assert!(!v.is_exactly_once());
    }
}
