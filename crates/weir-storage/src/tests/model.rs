//! The log against an in-memory model, over random operations with tiny segments.
//!
//! Defined behaviour the model encodes: `commit` makes everything appended visible; dropping
//! the log flushes (without fsync) what was appended, so a reopen makes every appended record
//! committed; retention only ever removes a prefix of committed records; truncation removes a
//! suffix (of any records, committed or not) and cuts the committed offset to it.

use super::*;
use crate::{LogError, ReadError};
use proptest::prelude::*;
use tempfile::tempdir;

const RETENTION_BYTES: u64 = 600;
const RETENTION_MS: u64 = 300;

#[derive(Clone, Debug)]
enum Op {
    Append(Vec<u8>),
    Commit,
    Sync,
    /// `from` picked relative to the model's range (some picks fall outside it).
    Read {
        pick: u64,
        max_bytes: usize,
        max_records: usize,
    },
    Reopen,
    /// Retention at `newest timestamp + ahead_ms`.
    Retention {
        ahead_ms: u64,
    },
    /// `from` picked relative to the model's range (some picks fall below the start or at or
    /// after the end).
    Truncate {
        pick: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => prop_oneof![
            6 => proptest::collection::vec(any::<u8>(), 0..60),
            1 => proptest::collection::vec(any::<u8>(), 150..260),
        ]
        .prop_map(Op::Append),
        3 => Just(Op::Commit),
        1 => Just(Op::Sync),
        3 => (any::<u64>(), 0usize..300, 0usize..12).prop_map(|(pick, max_bytes, max_records)| {
            Op::Read { pick, max_bytes, max_records }
        }),
        1 => Just(Op::Reopen),
        1 => (0u64..800).prop_map(|ahead_ms| Op::Retention { ahead_ms }),
        2 => any::<u64>().prop_map(|pick| Op::Truncate { pick }),
    ]
}

#[derive(Debug, Default)]
struct Model {
    /// Payloads of every record ever appended; offset = index. Timestamp = 10 * offset.
    records: Vec<Vec<u8>>,
    committed: u64,
    start: u64,
}

impl Model {
    fn expected_read(&self, from: u64, max_bytes: usize, max_records: usize) -> Vec<Record> {
        let mut out = Vec::new();
        let mut bytes = 0;
        for offset in from..self.committed {
            let payload = &self.records[offset as usize];
            if out.len() == max_records || (!out.is_empty() && bytes + payload.len() > max_bytes) {
                break;
            }
            bytes += payload.len();
            out.push(Record {
                offset: Offset(offset),
                timestamp_ms: TimestampMs(10 * offset),
                payload: payload.clone(),
            });
        }
        out
    }
}

fn config() -> LogConfig {
    LogConfig {
        segment_bytes_max: 200,
        index_interval_bytes: 50,
        record_bytes_max: 1024,
        retention_bytes: Some(RETENTION_BYTES),
        retention_ms: Some(RETENTION_MS),
        fsync: FsyncPolicy::Never,
    }
}

/// After retention, the oldest remaining segment must be one retention had to keep.
fn assert_retention_stopped_where_it_had_to(log: &Log, now_ms: u64) {
    let segments = log.segments();
    let [oldest, successor, ..] = segments else {
        return; // only the active segment is left
    };
    let meta = oldest
        .sealed()
        .expect("a segment with a successor is sealed");
    let holds_uncommitted = successor.base_offset > log.committed_offset();
    let over_size = log.stats().bytes > RETENTION_BYTES;
    let expired = meta.max_timestamp_ms.get() < now_ms.saturating_sub(RETENTION_MS);
    assert!(
        holds_uncommitted || !(over_size || expired),
        "retention kept segment {} (over size {over_size}, expired {expired})",
        oldest.base_offset
    );
}

fn run(ops: Vec<Op>) {
    let dir = tempdir().unwrap();
    let config = config();
    let mut log = Some(open(dir.path(), &config));
    let mut model = Model::default();
    for op in ops {
        let l = log.as_mut().unwrap();
        match op {
            Op::Append(payload) => {
                let offset = model.records.len() as u64;
                assert_eq!(
                    l.append(TimestampMs(10 * offset), &payload).unwrap(),
                    Offset(offset)
                );
                model.records.push(payload);
            }
            Op::Commit => {
                model.committed = model.records.len() as u64;
                assert_eq!(l.commit().unwrap(), Offset(model.committed));
            }
            Op::Sync => l.sync().unwrap(),
            Op::Read {
                pick,
                max_bytes,
                max_records,
            } => {
                // From two below the start to two past the committed end.
                let span = model.committed - model.start + 5;
                let from = (model.start + pick % span).saturating_sub(2);
                let result = l.reader().read(Offset(from), max_bytes, max_records);
                if from < model.start || from > model.committed {
                    assert!(
                        matches!(result, Err(ReadError::OutOfRange { .. })),
                        "read from {from}: {result:?}"
                    );
                } else {
                    assert_eq!(
                        result.unwrap(),
                        model.expected_read(from, max_bytes, max_records),
                        "read from {from}"
                    );
                }
            }
            Op::Reopen => {
                let bytes = l.stats().bytes;
                drop(log.take());
                let l = log.insert(open(dir.path(), &config));
                model.committed = model.records.len() as u64;
                let report = l.recovery();
                assert_eq!(report.truncation, None);
                assert_eq!(report.resumed_truncation, None);
                assert!(report.indexes_rebuilt.is_empty(), "{report:?}");
                assert_eq!(l.stats().bytes, bytes);
            }
            Op::Truncate { pick } => {
                // From two below the start to two past the end.
                let next = model.records.len() as u64;
                let from = (model.start + pick % (next - model.start + 5)).saturating_sub(2);
                let result = l.truncate_from(Offset(from));
                if from < model.start {
                    assert!(
                        matches!(result, Err(LogError::TruncateBelowStart { .. })),
                        "truncate from {from}: {result:?}"
                    );
                } else {
                    result.unwrap();
                    model.records.truncate(from as usize);
                    model.committed = model.committed.min(from);
                    if from < next {
                        assert_eq!(l.synced_offset(), Offset(from));
                    }
                }
            }
            Op::Retention { ahead_ms } => {
                let newest_ms = 10 * (model.records.len() as u64).saturating_sub(1);
                let now_ms = newest_ms + ahead_ms;
                let report = l.apply_retention(TimestampMs(now_ms)).unwrap();
                let start = l.start_offset().get();
                assert!(start >= model.start && start <= model.committed);
                assert_eq!(report.start_offset, Offset(start));
                assert_eq!(report.deleted_segments == 0, start == model.start);
                model.start = start;
                assert_retention_stopped_where_it_had_to(l, now_ms);
            }
        }
        let l = log.as_ref().unwrap();
        assert_eq!(l.next_offset(), Offset(model.records.len() as u64));
        assert_eq!(l.committed_offset(), Offset(model.committed));
        assert_eq!(l.start_offset(), Offset(model.start));
        let reader = l.reader();
        assert_eq!(reader.committed_offset(), Offset(model.committed));
        assert_eq!(reader.start_offset(), Offset(model.start));
        let files = segment_files(dir.path(), ".log");
        assert_eq!(l.stats().segments, files.len() as u64);
        assert_eq!(segment_files(dir.path(), ".idx").len(), files.len());
        assert!(l.synced_offset() <= l.next_offset());
    }
    // Finally everything retained reads back whole.
    let l = log.as_ref().unwrap();
    let all = l
        .reader()
        .read(Offset(model.start), usize::MAX, usize::MAX)
        .unwrap();
    assert_eq!(
        all,
        model.expected_read(model.start, usize::MAX, usize::MAX)
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn log_matches_in_memory_model_across_rolls_reopens_retention_and_truncation(
        ops in proptest::collection::vec(op(), 1..80)
    ) {
        run(ops);
    }
}
