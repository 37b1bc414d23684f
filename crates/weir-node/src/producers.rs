//! Exactly-once PUTs: what a topic remembers of its producers, and how a leader checks a PUT
//! against it before proposing.
//!
//! Every PUT carries its producer's id and sequence number (0, 1, 2, ... per producer). The
//! [`ProducerTable`] is part of the topic's replicated state: every replica builds it from the
//! committed log, in the apply path, and it goes into the topic's snapshots, so it survives
//! restarts, compaction and leader changes. Per producer it keeps the last sequence number
//! applied and the offsets and timestamps of its most recent PUTs (in runs:
//! [`PRODUCER_RUNS_MAX`]).
//!
//! Before a leader proposes a producer's PUT it asks the table plus its own proposals of the
//! term that are not applied yet ([`ProducerAdmission`]):
//! - the next sequence number: accepted;
//! - one already applied: a duplicate, answered with the original offset and timestamp and not
//!   appended again ([`Verdict::Duplicate`]), or `DuplicateSequence` if it is too old to be
//!   remembered;
//! - one proposed in this term and not applied yet: `Busy` (the original is still being
//!   committed; a retry gets its offset);
//! - any other: `OutOfOrderSequence` (an earlier PUT is missing: a gap is refused, never
//!   reordered). A producer the table does not know must start at 0.
//!
//! The check is complete only once everything older than the leader's term is applied: the
//! group does not ask it until the leader's own term-start entry is applied (it holds the PUTs
//! that arrive meanwhile), so a PUT that a previous leader appended is always in the table by
//! then.
//!
//! Bounds, all in log time (leader timestamps, so every replica expires the same producers at
//! the same entry): a producer not heard of for [`PRODUCER_IDLE_EXPIRY_MS`] is forgotten, and
//! beyond [`PRODUCERS_PER_TOPIC_MAX`] the least recently active one is. Anonymous PUTs
//! (producer 0) are not de-duplicated.

use std::collections::{BTreeSet, HashMap, VecDeque};
use weir_proto::{Offset, ProducerId, Seq, TimestampMs};

/// Producers a topic remembers; beyond it the least recently active is forgotten (as if
/// expired). With [`PRODUCER_RUNS_MAX`] it bounds the table (and its part of a snapshot) to
/// about 2 MiB.
pub const PRODUCERS_PER_TOPIC_MAX: usize = 4096;
/// Runs of consecutive PUTs (consecutive sequence numbers at consecutive offsets, one
/// timestamp) remembered per producer. A producer's batch is proposed together, so one run
/// usually covers a whole batch: 16 runs cover the 4 batches a client keeps in flight many
/// times over.
pub const PRODUCER_RUNS_MAX: usize = 16;
/// A producer with no PUT for this long (log time) is forgotten: a day, as Kafka's
/// `producer.id.expiration.ms`. Its next PUT must start at sequence 0 again.
pub const PRODUCER_IDLE_EXPIRY_MS: u64 = 24 * 60 * 60 * 1000;

/// Version of the table's snapshot encoding.
const TABLE_MAGIC: &[u8; 4] = b"WPT1";
/// Version of the topic snapshot envelope: the table, then the state machine's own data.
const SNAPSHOT_MAGIC: &[u8; 4] = b"WTS1";

/// PUTs `first_seq..first_seq + len` of one producer, at offsets `first_offset..`, all
/// stamped `timestamp_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Run {
    first_seq: u64,
    first_offset: u64,
    len: u64,
    timestamp_ms: TimestampMs,
}

impl Run {
    fn last_seq(&self) -> u64 {
        self.first_seq + self.len - 1
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct ProducerState {
    /// Timestamp of its last applied PUT: its place in the expiry order.
    last_timestamp_ms: TimestampMs,
    /// Ascending, contiguous in sequence numbers; the last one ends at the last applied.
    runs: VecDeque<Run>,
}

impl ProducerState {
    fn last_seq(&self) -> u64 {
        self.runs.back().map_or(0, Run::last_seq)
    }
}

/// Where a producer's PUT was committed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Original {
    pub offset: Offset,
    pub timestamp_ms: TimestampMs,
}

/// What the applied table says of one PUT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Its sequence number is the next one: `expected`, or the producer is unknown.
    Next,
    /// Applied before, at this offset.
    Applied(Original),
    /// Applied before, too long ago to remember where.
    Forgotten { last_seq: Seq },
    /// Beyond the next one (`expected`), or not 0 for a producer the table does not know.
    Gap { expected: Seq, known: bool },
}

/// The topic's producers, as of `applied_through`. See the module docs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProducerTable {
    producers: HashMap<ProducerId, ProducerState>,
    /// (last timestamp, producer): the expiry order, oldest first.
    by_age: BTreeSet<(TimestampMs, ProducerId)>,
    /// The last offset applied to the table; re-applying up to it changes nothing (a replica
    /// restarted from a snapshot taken ahead of its compaction point replays entries the table
    /// holds already).
    applied_through: Option<Offset>,
    /// PUTs found in the log with a sequence number that is not the next one: a duplicate or a
    /// gap the leader check should have refused (entries from a weir without it). Counted, not
    /// remembered in runs.
    out_of_order: u64,
}

impl ProducerTable {
    pub fn len(&self) -> usize {
        self.producers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    /// Entries applied through this offset.
    pub fn applied_through(&self) -> Option<Offset> {
        self.applied_through
    }

    /// PUTs found in the log out of sequence (see the field).
    pub fn out_of_order(&self) -> u64 {
        self.out_of_order
    }

    /// The last sequence number applied for `producer`.
    pub fn last_seq(&self, producer: ProducerId) -> Option<Seq> {
        self.producers.get(&producer).map(|s| Seq(s.last_seq()))
    }

    /// Whether the entry at `offset` is new to the table (above `applied_through`); marks it
    /// applied. Every committed entry goes through here, messages or not.
    fn take_offset(&mut self, offset: Offset) -> bool {
        if self.applied_through.is_some_and(|done| offset <= done) {
            return false;
        }
        self.applied_through = Some(offset);
        true
    }

    /// Applies the committed entry at `offset` that is not a producer's message.
    pub fn apply_other(&mut self, offset: Offset) {
        self.take_offset(offset);
    }

    /// Applies the committed message at `offset` of `producer` with `seq`. Deterministic: the
    /// same committed entries give every replica the same table.
    pub fn apply(
        &mut self,
        offset: Offset,
        timestamp_ms: TimestampMs,
        producer: ProducerId,
        seq: Seq,
    ) {
        if !self.take_offset(offset) || producer == ProducerId(0) {
            return;
        }
        self.expire(timestamp_ms);
        let state = match self.producers.get_mut(&producer) {
            Some(state) => {
                if seq.0 != state.last_seq().wrapping_add(1) {
                    self.out_of_order += 1;
                    tracing::warn!(%producer, %seq, last_seq = state.last_seq(), %offset, "a PUT out of sequence is in the log");
                    return;
                }
                state
            }
            None => {
                if seq.0 != 0 {
                    // A producer that expired, or from a weir without the leader check:
                    // remembered from here on.
                    tracing::debug!(%producer, %seq, %offset, "an unknown producer's PUT does not start at 0");
                }
                if self.producers.len() >= PRODUCERS_PER_TOPIC_MAX
                    && let Some((_, oldest)) = self.by_age.pop_first()
                {
                    self.producers.remove(&oldest);
                }
                self.producers.entry(producer).or_insert(ProducerState {
                    last_timestamp_ms: timestamp_ms,
                    runs: VecDeque::new(),
                })
            }
        };
        if state.last_timestamp_ms != timestamp_ms || state.runs.is_empty() {
            self.by_age.remove(&(state.last_timestamp_ms, producer));
            self.by_age.insert((timestamp_ms, producer));
            state.last_timestamp_ms = timestamp_ms;
        }
        match state.runs.back_mut() {
            Some(run)
                if run.first_offset + run.len == offset.0 && run.timestamp_ms == timestamp_ms =>
            {
                run.len += 1;
            }
            _ => {
                if state.runs.len() >= PRODUCER_RUNS_MAX {
                    state.runs.pop_front();
                }
                state.runs.push_back(Run {
                    first_seq: seq.0,
                    first_offset: offset.0,
                    len: 1,
                    timestamp_ms,
                });
            }
        }
    }

    /// Forgets producers idle for longer than [`PRODUCER_IDLE_EXPIRY_MS`] at log time `now`.
    fn expire(&mut self, now: TimestampMs) {
        while let Some(&(last, producer)) = self.by_age.first() {
            if last.0.saturating_add(PRODUCER_IDLE_EXPIRY_MS) >= now.0 {
                break;
            }
            self.by_age.pop_first();
            self.producers.remove(&producer);
        }
    }

    /// What the table says of `producer`'s PUT `seq` (not anonymous).
    pub fn lookup(&self, producer: ProducerId, seq: Seq) -> Lookup {
        let Some(state) = self.producers.get(&producer) else {
            return if seq.0 == 0 {
                Lookup::Next
            } else {
                Lookup::Gap {
                    expected: Seq(0),
                    known: false,
                }
            };
        };
        let last = state.last_seq();
        if seq.0 == last.wrapping_add(1) {
            return Lookup::Next;
        }
        if seq.0 > last {
            return Lookup::Gap {
                expected: Seq(last + 1),
                known: true,
            };
        }
        for run in state.runs.iter().rev() {
            if run.first_seq <= seq.0 && seq.0 <= run.last_seq() {
                return Lookup::Applied(Original {
                    offset: Offset(run.first_offset + (seq.0 - run.first_seq)),
                    timestamp_ms: run.timestamp_ms,
                });
            }
        }
        Lookup::Forgotten {
            last_seq: Seq(last),
        }
    }

    /// The table's snapshot encoding: sorted by producer, so equal tables encode equally.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(TABLE_MAGIC);
        let through = self.applied_through.map_or(0, |o| o.0.saturating_add(1));
        out.extend_from_slice(&through.to_le_bytes());
        out.extend_from_slice(&self.out_of_order.to_le_bytes());
        out.extend_from_slice(&(self.producers.len() as u64).to_le_bytes());
        let mut ids: Vec<&ProducerId> = self.producers.keys().collect();
        ids.sort_unstable();
        for id in ids {
            let state = &self.producers[id];
            out.extend_from_slice(&id.0.to_le_bytes());
            out.extend_from_slice(&state.last_timestamp_ms.0.to_le_bytes());
            out.extend_from_slice(&(state.runs.len() as u64).to_le_bytes());
            for run in &state.runs {
                for field in [run.first_seq, run.first_offset, run.len, run.timestamp_ms.0] {
                    out.extend_from_slice(&field.to_le_bytes());
                }
            }
        }
    }

    /// Reads [`ProducerTable::encode`]'s output, checking every bound (it came from disk or
    /// from the leader).
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let mut r = Reader(bytes);
        if r.take(4)? != TABLE_MAGIC {
            return Err("not a producer table (bad magic)".into());
        }
        let through = r.u64()?;
        let out_of_order = r.u64()?;
        let count = r.u64()?;
        if count > PRODUCERS_PER_TOPIC_MAX as u64 {
            return Err(format!(
                "producer table holds {count} producers, more than {PRODUCERS_PER_TOPIC_MAX}"
            ));
        }
        let mut table = ProducerTable {
            applied_through: through.checked_sub(1).map(Offset),
            out_of_order,
            ..ProducerTable::default()
        };
        for _ in 0..count {
            let id = ProducerId(r.u64()?);
            let last_timestamp_ms = TimestampMs(r.u64()?);
            let runs_count = r.u64()?;
            if runs_count == 0 || runs_count > PRODUCER_RUNS_MAX as u64 {
                return Err(format!("producer {id} has {runs_count} runs"));
            }
            let mut runs = VecDeque::with_capacity(runs_count as usize);
            for _ in 0..runs_count {
                let run = Run {
                    first_seq: r.u64()?,
                    first_offset: r.u64()?,
                    len: r.u64()?,
                    timestamp_ms: TimestampMs(r.u64()?),
                };
                let contiguous = runs
                    .back()
                    .is_none_or(|prev: &Run| run.first_seq == prev.last_seq().wrapping_add(1));
                if run.len == 0
                    || run.first_seq.checked_add(run.len).is_none()
                    || run.first_offset.checked_add(run.len).is_none()
                    || !contiguous
                {
                    return Err(format!("producer {id} has an inconsistent run"));
                }
                runs.push_back(run);
            }
            if id == ProducerId(0)
                || table
                    .producers
                    .insert(
                        id,
                        ProducerState {
                            last_timestamp_ms,
                            runs,
                        },
                    )
                    .is_some()
            {
                return Err(format!("producer {id} is anonymous or listed twice"));
            }
            table.by_age.insert((last_timestamp_ms, id));
        }
        if !r.0.is_empty() {
            return Err(format!(
                "{} trailing bytes after the producer table",
                r.0.len()
            ));
        }
        Ok(table)
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("producer table is truncated".into());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u64(&mut self) -> Result<u64, String> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }
}

/// A topic snapshot's data: the producer table, then the state machine's own data (a
/// program's snapshot; empty for a plain topic).
pub fn encode_snapshot(table: &ProducerTable, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 64);
    out.extend_from_slice(SNAPSHOT_MAGIC);
    let at = out.len();
    out.extend_from_slice(&0u64.to_le_bytes());
    table.encode(&mut out);
    let table_bytes = (out.len() - at - 8) as u64;
    out[at..at + 8].copy_from_slice(&table_bytes.to_le_bytes());
    out.extend_from_slice(data);
    out
}

/// Splits a topic snapshot's data into the producer table and the state machine's data.
/// Snapshots taken before producers were tracked hold only the latter: an empty table.
pub fn decode_snapshot(bytes: &[u8]) -> Result<(ProducerTable, &[u8]), String> {
    let Some(rest) = bytes.strip_prefix(SNAPSHOT_MAGIC) else {
        return Ok((ProducerTable::default(), bytes));
    };
    let mut r = Reader(rest);
    let table_bytes = usize::try_from(r.u64()?).map_err(|_| "producer table too large")?;
    let table = ProducerTable::decode(r.take(table_bytes)?)?;
    Ok((table, r.0))
}

/// Why a leader does not propose a PUT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Propose it.
    Accept,
    /// It was committed before, here: answer that.
    Duplicate(Original),
    /// Committed before, too long ago to remember where.
    Forgotten { last_seq: Seq },
    /// Proposed in this term and not applied yet: retry.
    InFlight,
    /// Not the next sequence number.
    Gap { expected: Seq, known: bool },
}

/// The leader's check: the applied table plus its own proposals of the term not applied yet.
/// Lives on the group thread; the table is shared with the apply path.
#[derive(Clone, Debug)]
pub struct ProducerAdmission {
    table: std::sync::Arc<std::sync::Mutex<ProducerTable>>,
    /// Per producer, the last sequence number proposed in `term` and its offset.
    proposed: HashMap<ProducerId, (Seq, Offset)>,
    term: u64,
}

/// Proposals remembered past their apply before the map is swept.
const PROPOSED_SWEEP_LEN: usize = 2 * PRODUCERS_PER_TOPIC_MAX;

impl ProducerAdmission {
    pub fn new(table: std::sync::Arc<std::sync::Mutex<ProducerTable>>) -> Self {
        Self {
            table,
            proposed: HashMap::new(),
            term: 0,
        }
    }

    /// Starts a check of PUTs about to be proposed by a leader of `term` whose applied index
    /// covers everything before its term: the returned check sees the applied table.
    pub fn check(&mut self, term: u64) -> AdmissionCheck<'_> {
        if term != self.term {
            // Another term's proposals are either applied (in the table) or lost.
            self.proposed.clear();
            self.term = term;
        }
        let table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let applied = table.applied_through;
        if self.proposed.len() > PROPOSED_SWEEP_LEN {
            self.proposed
                .retain(|_, (_, offset)| applied.is_none_or(|done| *offset > done));
        }
        AdmissionCheck {
            table,
            proposed: &mut self.proposed,
            tentative: HashMap::new(),
        }
    }
}

/// One batch's check (see [`ProducerAdmission::check`]): [`AdmissionCheck::verdict`] for each
/// PUT in order, then [`AdmissionCheck::proposed`] for each the core took.
#[derive(Debug)]
pub struct AdmissionCheck<'a> {
    table: std::sync::MutexGuard<'a, ProducerTable>,
    proposed: &'a mut HashMap<ProducerId, (Seq, Offset)>,
    /// Accepted earlier in this batch: the producer's next sequence number after them.
    tentative: HashMap<ProducerId, Seq>,
}

impl AdmissionCheck<'_> {
    /// The verdict on `producer`'s PUT `seq`, counting the PUTs accepted before it in this
    /// batch.
    pub fn verdict(&mut self, producer: ProducerId, seq: Seq) -> Verdict {
        if producer == ProducerId(0) {
            return Verdict::Accept;
        }
        let applied = self.table.applied_through;
        let in_flight = self
            .proposed
            .get(&producer)
            .copied()
            .filter(|(_, offset)| applied.is_none_or(|done| *offset > done));
        let next = self
            .tentative
            .get(&producer)
            .copied()
            .or(in_flight.map(|(last, _)| Seq(last.0.wrapping_add(1))));
        let verdict = match next {
            Some(next) if seq == next => Verdict::Accept,
            Some(next) if seq > next => Verdict::Gap {
                expected: next,
                known: true,
            },
            // Below the next one: applied, or proposed and not applied yet.
            Some(_) => match self.table.lookup(producer, seq) {
                Lookup::Applied(original) => Verdict::Duplicate(original),
                Lookup::Forgotten { last_seq } => Verdict::Forgotten { last_seq },
                Lookup::Next | Lookup::Gap { .. } => Verdict::InFlight,
            },
            None => match self.table.lookup(producer, seq) {
                Lookup::Next => Verdict::Accept,
                Lookup::Applied(original) => Verdict::Duplicate(original),
                Lookup::Forgotten { last_seq } => Verdict::Forgotten { last_seq },
                Lookup::Gap { expected, known } => Verdict::Gap { expected, known },
            },
        };
        if verdict == Verdict::Accept {
            self.tentative.insert(producer, Seq(seq.0.wrapping_add(1)));
        }
        verdict
    }

    /// The core took `producer`'s PUT `seq` (accepted by [`AdmissionCheck::verdict`]) at
    /// `offset`.
    pub fn proposed(&mut self, producer: ProducerId, seq: Seq, offset: Offset) {
        if producer != ProducerId(0) {
            self.proposed.insert(producer, (seq, offset));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    const P: ProducerId = ProducerId(7);
    const Q: ProducerId = ProducerId(8);

    fn ts(ms: u64) -> TimestampMs {
        TimestampMs(ms)
    }

    fn original(offset: u64, ms: u64) -> Original {
        Original {
            offset: Offset(offset),
            timestamp_ms: ts(ms),
        }
    }

    #[test]
    fn an_applied_put_is_found_with_its_offset_and_only_the_next_sequence_is_new() {
        let mut t = ProducerTable::default();
        t.apply_other(Offset(0)); // a leader no-op
        for seq in 0..5 {
            t.apply(Offset(1 + seq), ts(100), P, Seq(seq));
        }
        t.apply(Offset(6), ts(100), Q, Seq(0));
        t.apply(Offset(7), ts(100), P, Seq(5));
        assert_eq!(t.lookup(P, Seq(3)), Lookup::Applied(original(4, 100)));
        assert_eq!(t.lookup(P, Seq(5)), Lookup::Applied(original(7, 100)));
        assert_eq!(t.lookup(P, Seq(6)), Lookup::Next);
        assert_eq!(
            t.lookup(P, Seq(8)),
            Lookup::Gap {
                expected: Seq(6),
                known: true
            }
        );
        assert_eq!(t.lookup(ProducerId(9), Seq(0)), Lookup::Next);
        assert_eq!(
            t.lookup(ProducerId(9), Seq(1)),
            Lookup::Gap {
                expected: Seq(0),
                known: false
            }
        );
        assert_eq!(t.last_seq(P), Some(Seq(5)));
        assert_eq!(t.out_of_order(), 0);
    }

    #[test]
    fn replaying_entries_the_table_holds_changes_nothing() {
        let mut t = ProducerTable::default();
        for seq in 0..4 {
            t.apply(Offset(seq), ts(5), P, Seq(seq));
        }
        let before = t.clone();
        for seq in 0..4 {
            t.apply(Offset(seq), ts(5), P, Seq(seq));
        }
        assert_eq!(t, before, "re-applied entries are skipped by offset");
        // A duplicate at a new offset (a log written without the leader check) is counted.
        t.apply(Offset(4), ts(5), P, Seq(2));
        assert_eq!(t.out_of_order(), 1);
        assert_eq!(t.lookup(P, Seq(4)), Lookup::Next);
    }

    #[test]
    fn only_the_most_recent_runs_are_remembered() {
        let mut t = ProducerTable::default();
        // Every PUT of P is interleaved with one of Q: each is a run of its own.
        let runs = PRODUCER_RUNS_MAX as u64 + 3;
        for seq in 0..runs {
            t.apply(Offset(2 * seq), ts(1), P, Seq(seq));
            t.apply(Offset(2 * seq + 1), ts(1), Q, Seq(seq));
        }
        assert_eq!(
            t.lookup(P, Seq(0)),
            Lookup::Forgotten {
                last_seq: Seq(runs - 1)
            }
        );
        let oldest_kept = runs - PRODUCER_RUNS_MAX as u64;
        assert_eq!(
            t.lookup(P, Seq(oldest_kept)),
            Lookup::Applied(original(2 * oldest_kept, 1))
        );
        assert_eq!(
            t.lookup(P, Seq(oldest_kept - 1)),
            Lookup::Forgotten {
                last_seq: Seq(runs - 1)
            }
        );
    }

    #[test]
    fn idle_producers_expire_in_log_time_and_the_table_is_capped() {
        let mut t = ProducerTable::default();
        t.apply(Offset(0), ts(1_000), P, Seq(0));
        t.apply(Offset(1), ts(2_000), Q, Seq(0));
        // Just within P's expiry: both stay.
        t.apply(Offset(2), ts(1_000 + PRODUCER_IDLE_EXPIRY_MS), Q, Seq(1));
        assert_eq!(t.len(), 2);
        // Past it: P is forgotten, and must start at 0 again.
        t.apply(Offset(3), ts(1_001 + PRODUCER_IDLE_EXPIRY_MS), Q, Seq(2));
        assert_eq!(t.len(), 1);
        assert_eq!(
            t.lookup(P, Seq(1)),
            Lookup::Gap {
                expected: Seq(0),
                known: false
            }
        );

        let mut t = ProducerTable::default();
        for i in 0..PRODUCERS_PER_TOPIC_MAX as u64 + 10 {
            t.apply(Offset(i), ts(i), ProducerId(100 + i), Seq(0));
        }
        assert_eq!(t.len(), PRODUCERS_PER_TOPIC_MAX);
        assert_eq!(t.last_seq(ProducerId(100)), None, "the oldest went first");
        assert_eq!(t.last_seq(ProducerId(110)), Some(Seq(0)));
    }

    #[test]
    fn the_snapshot_encoding_round_trips_and_refuses_damage() {
        let mut t = ProducerTable::default();
        for seq in 0..40 {
            t.apply(Offset(seq * 2), ts(seq), P, Seq(seq));
            t.apply(Offset(seq * 2 + 1), ts(seq), ProducerId(1000 + seq), Seq(0));
        }
        let data = encode_snapshot(&t, b"program bytes");
        let (back, rest) = decode_snapshot(&data).expect("decodes");
        assert_eq!(back, t);
        assert_eq!(rest, b"program bytes");
        let mut bytes = Vec::new();
        t.encode(&mut bytes);
        let mut again = Vec::new();
        back.encode(&mut again);
        assert_eq!(bytes, again, "equal tables encode equally");
        // Old snapshots (no envelope) are the state machine's data alone.
        let (empty, rest) = decode_snapshot(b"legacy").expect("legacy");
        assert!(empty.is_empty());
        assert_eq!(rest, b"legacy");
        // Every truncation is refused, never a panic.
        for cut in 4..data.len() - b"program bytes".len() {
            assert!(decode_snapshot(&data[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = bytes.clone();
        bad[20..28].copy_from_slice(&u64::MAX.to_le_bytes()); // producer count
        assert!(ProducerTable::decode(&bad).is_err());
    }

    #[test]
    fn a_leader_accepts_the_next_sequence_answers_duplicates_and_refuses_gaps() {
        let table = Arc::new(Mutex::new(ProducerTable::default()));
        {
            let mut t = table.lock().unwrap();
            for seq in 0..3 {
                t.apply(Offset(seq), ts(9), P, Seq(seq));
            }
        }
        let mut admission = ProducerAdmission::new(table.clone());
        let mut check = admission.check(2);
        assert_eq!(check.verdict(P, Seq(1)), Verdict::Duplicate(original(1, 9)));
        assert_eq!(
            check.verdict(P, Seq(4)),
            Verdict::Gap {
                expected: Seq(3),
                known: true
            }
        );
        assert_eq!(check.verdict(P, Seq(3)), Verdict::Accept);
        assert_eq!(
            check.verdict(P, Seq(4)),
            Verdict::Accept,
            "within the batch"
        );
        assert_eq!(
            check.verdict(P, Seq(6)),
            Verdict::Gap {
                expected: Seq(5),
                known: true
            }
        );
        assert_eq!(check.verdict(ProducerId(0), Seq(77)), Verdict::Accept);
        check.proposed(P, Seq(3), Offset(3));
        check.proposed(P, Seq(4), Offset(4));
        drop(check);

        // The next batch sees the proposals: a resend of one in flight waits for it.
        let mut check = admission.check(2);
        assert_eq!(check.verdict(P, Seq(4)), Verdict::InFlight);
        assert_eq!(check.verdict(P, Seq(5)), Verdict::Accept);
        drop(check);

        // Applied: the resend gets its offset.
        {
            let mut t = table.lock().unwrap();
            t.apply(Offset(3), ts(10), P, Seq(3));
            t.apply(Offset(4), ts(10), P, Seq(4));
        }
        let mut check = admission.check(2);
        assert_eq!(
            check.verdict(P, Seq(4)),
            Verdict::Duplicate(original(4, 10))
        );
        drop(check);

        // A new term forgets the old term's proposals: only the table counts.
        let mut check = admission.check(3);
        assert_eq!(check.verdict(P, Seq(5)), Verdict::Accept);
    }
}
