//! GroupStore: the LogStore contract on disk, durability of hard state and snapshots, crash
//! semantics, snapshot installation and compaction, and end to end under the real Raft core.

use std::collections::VecDeque;
use std::fs;
use std::path::{Path, PathBuf};

use weir_node::group_store::{
    GroupStore, GroupStoreError, HARD_STATE_FILE_NAME, LOG_DIR_NAME, SNAPSHOT_FILE_NAME,
    TAIL_CACHE_ENTRIES_MAX, decode_record,
};
use weir_proto::TimestampMs;
use weir_raft::testing::MemStore;
use weir_raft::{
    Config, Entry, Envelope, HardState, LogIndex, LogStore, Membership, NodeId, Output, Payload,
    Raft, Role, Snapshot, SnapshotMeta, Term,
};
use weir_storage::{Log, LogConfig};

// ---------------------------------------------------------------------- helpers

/// Normal payloads carry their timestamp in their first 8 bytes (little endian).
fn timestamp_of(payload: &Payload) -> Option<TimestampMs> {
    match payload {
        Payload::Normal(data) if data.len() >= 8 => {
            let mut raw = [0u8; 8];
            raw.copy_from_slice(&data[..8]);
            Some(TimestampMs(u64::from_le_bytes(raw)))
        }
        _ => None,
    }
}

fn payload_at(timestamp_ms: u64, text: &str) -> Vec<u8> {
    let mut data = timestamp_ms.to_le_bytes().to_vec();
    data.extend_from_slice(text.as_bytes());
    data
}

/// Small segments and a dense index: a few dozen entries span several segments.
fn small_segments() -> LogConfig {
    LogConfig {
        segment_bytes_max: 256,
        index_interval_bytes: 64,
        ..LogConfig::default()
    }
}

fn open(dir: &Path) -> GroupStore {
    GroupStore::open(dir, small_segments(), timestamp_of).expect("open group store")
}

fn entry(index: u64, term: u64) -> Entry {
    Entry {
        term: Term(term),
        index: LogIndex(index),
        payload: Payload::Normal(payload_at(
            index * 10,
            &format!("entry {index} of term {term}"),
        )),
    }
}

fn run(from: u64, to_inclusive: u64, term: u64) -> Vec<Entry> {
    (from..=to_inclusive).map(|i| entry(i, term)).collect()
}

fn all_entries(store: &impl LogStore) -> Vec<Entry> {
    store.entries(store.first_index(), store.last_index().next(), usize::MAX)
}

fn snapshot(last_index: u64, last_term: u64, data: &[u8]) -> Snapshot {
    Snapshot {
        meta: SnapshotMeta {
            last_index: LogIndex(last_index),
            last_term: Term(last_term),
            membership: Membership::with_voters([NodeId(1)]),
        },
        data: data.to_vec(),
    }
}

/// The log's `.log` files, sorted by name (= by base offset).
fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir.join(LOG_DIR_NAME))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    files.sort();
    files
}

fn base_of(file: &Path) -> u64 {
    file.file_stem().unwrap().to_str().unwrap().parse().unwrap()
}

/// Compares the reads of the LogStore trait between the store and the in-memory model: every
/// term, and entries from every start near the ends of the log (and every 11th in between), with
/// several ends and byte budgets.
fn assert_same_view(store: &GroupStore, model: &MemStore, context: &str) {
    assert_eq!(store.first_index(), model.first_index(), "{context}: first");
    assert_eq!(store.last_index(), model.last_index(), "{context}: last");
    assert_eq!(store.snapshot(), model.snapshot(), "{context}: snapshot");
    let last = model.last_index().0;
    for i in 0..=last + 2 {
        assert_eq!(
            store.term(LogIndex(i)),
            model.term(LogIndex(i)),
            "{context}: term({i})"
        );
    }
    let first = model.first_index().0;
    let starts = (first.saturating_sub(1)..=last + 1)
        .filter(|&lo| lo < first + 3 || lo + 6 > last || lo % 11 == 0);
    for lo in starts {
        for hi in [lo, lo + 1, lo + 3, last + 5] {
            for max_bytes in [0, 60, 200, usize::MAX] {
                assert_eq!(
                    store.entries(LogIndex(lo), LogIndex(hi), max_bytes),
                    model.entries(LogIndex(lo), LogIndex(hi), max_bytes),
                    "{context}: entries({lo}, {hi}, {max_bytes})"
                );
            }
        }
    }
    assert_eq!(store.failure(), None, "{context}");
}

/// Deterministic pseudo-random numbers (splitmix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

// ---------------------------------------------------------------------- LogStore contract

#[test]
fn log_store_contract_matches_the_model_across_segment_rolls_truncations_and_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    let mut model = MemStore::new();
    assert_same_view(&store, &model, "empty");
    let mut rng = Rng(7);
    let mut term = 1;
    for step in 0..100 {
        let (first, last) = (model.first_index().0, model.last_index().0);
        let context = format!("step {step}");
        match rng.below(20) {
            // Compact at an index of the log (the driver snapshots what it applied).
            0 | 1 if last >= first => {
                let index = first + rng.below(last - first + 1);
                let t = model.term(LogIndex(index)).unwrap().0;
                let snap = snapshot(index, t, format!("state {index}").as_bytes());
                store.compact(snap.clone()).unwrap();
                model.compact(LogIndex(index), snap);
            }
            // A follower installs a leader's snapshot beyond its log.
            2 => {
                term += 1;
                let snap = snapshot(last + 1 + rng.below(30), term, b"installed");
                store.install_snapshot(snap.clone()).unwrap();
                model.apply_snapshot(snap);
            }
            // Restart (a clean one: the Log writes out what was appended).
            3 => {
                drop(store);
                store = open(dir.path());
            }
            _ => {
                // Mostly extend the log; sometimes overwrite a suffix with a newer term.
                let start = if last >= first && rng.below(4) == 0 {
                    term += 1;
                    last + 1 - rng.below((last - first + 1).min(12) + 1)
                } else {
                    last + 1
                };
                let count = 1 + rng.below(6);
                let batch = run(start, start + count - 1, term);
                store.append(&batch).unwrap();
                model.append(&batch);
                if rng.below(3) == 0 {
                    assert_eq!(store.sync().unwrap(), model.last_index(), "{context}");
                }
            }
        }
        assert_same_view(&store, &model, &context);
    }
    store.sync().unwrap();
    drop(store);
    let store = open(dir.path());
    assert_same_view(&store, &model, "reopened");
}

#[test]
fn conflicting_append_truncates_the_suffix_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    store.append(&run(1, 60, 1)).unwrap();
    store.sync().unwrap();
    let segments = segment_files(dir.path()).len();
    assert!(segments > 5);
    store.append(&run(10, 12, 2)).unwrap();
    assert_eq!(store.last_index(), LogIndex(12));
    assert_eq!(store.term(LogIndex(9)), Some(Term(1)));
    assert_eq!(store.term(LogIndex(10)), Some(Term(2)));
    assert_eq!(store.term(LogIndex(13)), None);
    let mut expected = run(1, 9, 1);
    expected.extend(run(10, 12, 2));
    assert_eq!(all_entries(&store), expected);
    assert!(segment_files(dir.path()).len() < segments);
    // The truncation is durable even though the new entries were not synced.
    drop(store);
    let store = open(dir.path());
    assert!(store.last_index() >= LogIndex(9) && store.last_index() <= LogIndex(12));
    assert_eq!(
        all_entries(&store),
        expected[..store.last_index().0 as usize]
    );
}

#[test]
fn entries_never_return_truncated_records() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    store.append(&run(1, 40, 1)).unwrap();
    // Read the old version, so any cache of it would be warm.
    assert_eq!(all_entries(&store).len(), 40);
    store.append(&run(5, 5, 2)).unwrap();
    assert_eq!(store.last_index(), LogIndex(5));
    // Nothing past the new end, even when asked for the old range.
    assert_eq!(store.entries(LogIndex(6), LogIndex(41), usize::MAX), vec![]);
    assert_eq!(
        store.entries(LogIndex(1), LogIndex(41), usize::MAX).len(),
        5
    );
    store.append(&run(6, 40, 3)).unwrap();
    let got = store.entries(LogIndex(1), LogIndex(41), usize::MAX);
    let mut expected = run(1, 4, 1);
    expected.push(entry(5, 2));
    expected.extend(run(6, 40, 3));
    assert_eq!(got, expected);
    for e in &got {
        assert_eq!(store.term(e.index), Some(e.term));
    }
}

#[test]
fn entries_past_the_in_memory_tail_are_read_from_the_log_and_both_agree() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = GroupStore::open(dir.path(), LogConfig::default(), timestamp_of).unwrap();
    let last = TAIL_CACHE_ENTRIES_MAX as u64 + 500;
    for from in (1..=last).step_by(250) {
        store.append(&run(from, (from + 249).min(last), 1)).unwrap();
    }
    // The oldest entries fell out of memory: a range starting there comes from the log, one
    // starting near the end from memory; both must equal what was appended.
    let expected = run(1, last, 1);
    assert_eq!(all_entries(&store), expected);
    let near_end = store.entries(LogIndex(last - 10), LogIndex(last + 1), usize::MAX);
    assert_eq!(near_end, expected[(last - 11) as usize..]);
    // The byte budget cuts a range from memory as it cuts one from the log.
    let budget = expected[(last - 11) as usize].size_bytes() * 3;
    let cut = store.entries(LogIndex(last - 10), LogIndex(last + 1), budget);
    assert_eq!(cut, expected[(last - 11) as usize..(last - 8) as usize]);
    // A conflicting append replaces the cached suffix too.
    store.append(&run(last - 5, last - 5, 2)).unwrap();
    let tail = store.entries(LogIndex(last - 7), LogIndex(last + 1), usize::MAX);
    let mut want = run(last - 7, last - 6, 1);
    want.push(entry(last - 5, 2));
    assert_eq!(tail, want);
    store.sync().unwrap();
    drop(store);
    let store = GroupStore::open(dir.path(), LogConfig::default(), timestamp_of).unwrap();
    assert_eq!(
        store.entries(LogIndex(last - 7), LogIndex(last + 1), usize::MAX),
        want,
        "what the log holds on disk"
    );
}

#[test]
fn entries_honour_max_bytes_but_return_at_least_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    let batch: Vec<Entry> = (1..=10)
        .map(|i| Entry {
            term: Term(1),
            index: LogIndex(i),
            payload: Payload::Normal(vec![i as u8; 100]),
        })
        .collect();
    store.append(&batch).unwrap();
    let size = batch[0].size_bytes(); // 124: payload + overhead
    let count = |max_bytes| store.entries(LogIndex(1), LogIndex(11), max_bytes).len();
    assert_eq!(count(0), 1);
    assert_eq!(count(size - 1), 1);
    assert_eq!(count(size), 1);
    assert_eq!(count(2 * size), 2);
    assert_eq!(count(2 * size + 1), 2);
    assert_eq!(count(10 * size), 10);
    assert_eq!(count(usize::MAX), 10);
    assert_eq!(store.entries(LogIndex(3), LogIndex(5), usize::MAX).len(), 2);
    assert_eq!(store.entries(LogIndex(0), LogIndex(5), usize::MAX), vec![]);
    assert_eq!(
        store.entries(LogIndex(11), LogIndex(20), usize::MAX),
        vec![]
    );
    assert_eq!(store.entries(LogIndex(5), LogIndex(5), usize::MAX), vec![]);
}

#[test]
fn invalid_appends_are_refused_without_changing_anything() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    store.append(&run(1, 5, 2)).unwrap();
    let before = all_entries(&store);
    let gap = store.append(&run(7, 8, 2));
    assert!(
        matches!(gap, Err(GroupStoreError::InvalidAppend(_))),
        "{gap:?}"
    );
    let older_term = store.append(&run(6, 6, 1));
    assert!(matches!(older_term, Err(GroupStoreError::InvalidAppend(_))));
    let mut holes = run(6, 7, 2);
    holes[1].index = LogIndex(9);
    assert!(matches!(
        store.append(&holes),
        Err(GroupStoreError::InvalidAppend(_))
    ));
    let huge = Entry {
        term: Term(2),
        index: LogIndex(6),
        payload: Payload::Normal(vec![0; weir_proto::limits::FRAME_BYTES_MAX + 1]),
    };
    assert!(matches!(
        store.append(&[huge]),
        Err(GroupStoreError::EntryTooLarge { .. })
    ));
    assert_eq!(all_entries(&store), before);
    assert_eq!(store.failure(), None);
    store.append(&run(6, 6, 2)).unwrap();
}

#[test]
fn sync_is_one_fsync_for_everything_appended_since_the_last_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = GroupStore::open(dir.path(), LogConfig::default(), timestamp_of).unwrap();
    let before = store.log_stats().fsyncs;
    for i in 1..=200 {
        store.append(&[entry(i, 1)]).unwrap();
    }
    assert_eq!(store.log_stats().fsyncs, before, "appends do not fsync");
    assert_eq!(store.synced_index(), LogIndex(0));
    assert_eq!(store.sync().unwrap(), LogIndex(200));
    assert_eq!(store.log_stats().fsyncs, before + 1);
    assert_eq!(store.synced_index(), LogIndex(200));
    assert_eq!(store.sync().unwrap(), LogIndex(200));
    assert_eq!(
        store.log_stats().fsyncs,
        before + 1,
        "nothing new: no fsync"
    );
}

#[test]
fn record_timestamps_come_from_payloads_and_never_decrease() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    let e = |index, payload| Entry {
        term: Term(1),
        index: LogIndex(index),
        payload,
    };
    store
        .append(&[
            e(1, Payload::Noop),
            e(2, Payload::Normal(payload_at(500, "a"))),
            e(3, Payload::Noop),
            e(4, Payload::Normal(payload_at(400, "older clock"))),
            e(5, Payload::Normal(payload_at(900, "b"))),
            e(6, Payload::Membership(Membership::with_voters([NodeId(1)]))),
        ])
        .unwrap();
    store.sync().unwrap();
    // A truncation: the next entry without a timestamp takes the kept predecessor's.
    store.append(&[e(6, Payload::Noop)]).unwrap();
    store.sync().unwrap();
    drop(store);
    let log = Log::open(&dir.path().join(LOG_DIR_NAME), LogConfig::default()).unwrap();
    let records = log
        .reader()
        .read(weir_proto::Offset(0), usize::MAX, 100)
        .unwrap();
    let stamps: Vec<u64> = records.iter().map(|r| r.timestamp_ms.get()).collect();
    assert_eq!(stamps, vec![0, 500, 500, 500, 900, 900]);
    let (term, payload) = decode_record(&records[5].payload).unwrap();
    assert_eq!((term, payload), (Term(1), Payload::Noop));
}

// ---------------------------------------------------------------------- durability

#[test]
fn hard_state_and_snapshot_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    assert_eq!(store.hard_state(), HardState::default());
    assert_eq!(store.snapshot(), None);
    let hs = HardState {
        term: Term(4),
        voted_for: Some(NodeId(2)),
    };
    store.set_hard_state(hs.clone()).unwrap();
    store.append(&run(1, 30, 4)).unwrap();
    let snap = snapshot(20, 4, b"state at 20");
    store.compact(snap.clone()).unwrap();
    drop(store);
    let store = open(dir.path());
    assert_eq!(store.hard_state(), hs);
    assert_eq!(store.snapshot(), Some(snap));
    assert_eq!(store.first_index(), LogIndex(21));
    assert_eq!(store.term(LogIndex(20)), Some(Term(4)));
}

#[test]
fn torn_replacement_files_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    let hs = HardState {
        term: Term(3),
        voted_for: None,
    };
    store.set_hard_state(hs.clone()).unwrap();
    store.append(&run(1, 5, 3)).unwrap();
    let snap = snapshot(2, 3, b"two");
    store.compact(snap.clone()).unwrap();
    drop(store);
    // A crash while writing the next replacements left partial temporary files.
    let tmp_hs = dir.path().join(format!("{HARD_STATE_FILE_NAME}.tmp"));
    let tmp_snap = dir.path().join(format!("{SNAPSHOT_FILE_NAME}.tmp"));
    fs::write(&tmp_hs, b"weirhst1\x05\x00").unwrap();
    fs::write(&tmp_snap, b"weirsn").unwrap();
    let store = open(dir.path());
    assert_eq!(store.hard_state(), hs);
    assert_eq!(store.snapshot(), Some(snap));
    assert!(!tmp_hs.exists() && !tmp_snap.exists());
}

#[test]
fn corrupted_raft_state_is_refused_with_the_file_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    store
        .set_hard_state(HardState {
            term: Term(9),
            voted_for: Some(NodeId(1)),
        })
        .unwrap();
    drop(store);
    let path = dir.path().join(HARD_STATE_FILE_NAME);
    let good = fs::read(&path).unwrap();
    for bad in [
        {
            let mut b = good.clone();
            let last = b.len() - 1;
            b[last] ^= 0x10;
            b
        },
        good[..good.len() - 1].to_vec(),
        Vec::new(),
    ] {
        fs::write(&path, &bad).unwrap();
        let err = GroupStore::open(dir.path(), small_segments(), timestamp_of).unwrap_err();
        assert!(matches!(err, GroupStoreError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("raft-state"), "{err}");
    }
}

#[test]
fn corrupted_snapshot_is_refused_with_the_file_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    store.append(&run(1, 10, 1)).unwrap();
    store.compact(snapshot(5, 1, b"some state")).unwrap();
    drop(store);
    let path = dir.path().join(SNAPSHOT_FILE_NAME);
    let mut bytes = fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    fs::write(&path, &bytes).unwrap();
    let err = GroupStore::open(dir.path(), small_segments(), timestamp_of).unwrap_err();
    assert!(err.to_string().contains("snapshot"), "{err}");
    assert!(matches!(err, GroupStoreError::Corrupt { .. }));
}

#[test]
fn group_store_can_move_to_the_group_thread() {
    fn assert_send<T: Send>() {}
    assert_send::<GroupStore>();
    assert_send::<Raft<GroupStore>>();
}

#[test]
fn a_second_open_of_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _store = open(dir.path());
    let err = GroupStore::open(dir.path(), small_segments(), timestamp_of).unwrap_err();
    assert!(matches!(err, GroupStoreError::Locked { .. }), "{err}");
}

// ---------------------------------------------------------------------- crash semantics

/// Size of the active (last) segment file.
fn active_segment(dir: &Path) -> (PathBuf, u64) {
    let file = segment_files(dir).pop().unwrap();
    let len = fs::metadata(&file).unwrap().len();
    (file, len)
}

#[test]
fn unsynced_entries_may_be_lost_but_synced_ones_never() {
    let config = LogConfig::default(); // one segment: only its tail is unsynced
    let write = |dir: &Path| {
        let mut store = GroupStore::open(dir, config.clone(), timestamp_of).unwrap();
        store.append(&run(1, 20, 1)).unwrap();
        assert_eq!(store.sync().unwrap(), LogIndex(20));
        let synced = active_segment(dir);
        store.append(&run(21, 40, 1)).unwrap();
        drop(store); // no sync
        synced
    };

    // A process crash alone loses nothing: the unsynced records are in the page cache.
    let dir = tempfile::tempdir().unwrap();
    write(dir.path());
    let store = GroupStore::open(dir.path(), config.clone(), timestamp_of).unwrap();
    assert_eq!(store.last_index(), LogIndex(40));
    assert_eq!(all_entries(&store), run(1, 40, 1));

    // A power cut loses what was not synced: the file keeps the synced bytes and a torn piece
    // of the next record (as if only some of the unsynced pages had reached the disk).
    let dir = tempfile::tempdir().unwrap();
    let (file, synced_len) = write(dir.path());
    let handle = fs::OpenOptions::new().write(true).open(&file).unwrap();
    handle.set_len(synced_len + 13).unwrap();
    drop(handle);
    let mut store = GroupStore::open(dir.path(), config.clone(), timestamp_of).unwrap();
    assert_eq!(store.last_index(), LogIndex(20));
    assert_eq!(all_entries(&store), run(1, 20, 1));
    assert_eq!(store.term(LogIndex(21)), None);
    // The log goes on from the last synced entry.
    store.append(&run(21, 22, 2)).unwrap();
    assert_eq!(store.term(LogIndex(22)), Some(Term(2)));
}

#[test]
fn compaction_past_unsynced_entries_survives_losing_them() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig::default();
    let mut store = GroupStore::open(dir.path(), config.clone(), timestamp_of).unwrap();
    store.append(&run(1, 20, 1)).unwrap();
    store.sync().unwrap();
    let (file, synced_len) = active_segment(dir.path());
    store.append(&run(21, 30, 1)).unwrap();
    // A leader may apply (and snapshot) entries that a majority, but not itself, made durable.
    store.compact(snapshot(25, 1, b"25")).unwrap();
    drop(store);
    fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(synced_len)
        .unwrap();
    let mut store = GroupStore::open(dir.path(), config, timestamp_of).unwrap();
    assert_eq!(store.snapshot().unwrap().meta.last_index, LogIndex(25));
    assert_eq!(store.first_index(), LogIndex(26));
    assert_eq!(store.last_index(), LogIndex(25));
    assert_eq!(store.term(LogIndex(25)), Some(Term(1)));
    store.append(&run(26, 27, 2)).unwrap();
    assert_eq!(all_entries(&store), run(26, 27, 2));
}

#[test]
fn io_failure_poisons_every_later_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    store.append(&run(1, 3, 1)).unwrap();
    store.inject_fault_next_sync();
    assert!(store.sync().is_err());
    let failure = store.failure().expect("sticky failure").to_owned();
    assert!(failure.contains("injected fault"), "{failure}");
    for result in [
        store.append(&run(4, 4, 1)),
        store.sync().map(drop),
        store.set_hard_state(HardState::default()),
        store.compact(snapshot(2, 1, b"")),
        store.install_snapshot(snapshot(9, 1, b"")),
    ] {
        assert!(
            matches!(result, Err(GroupStoreError::Poisoned(_))),
            "{result:?}"
        );
    }
    drop(store);
    // Reopening recovers from what is on disk.
    let store = open(dir.path());
    assert_eq!(store.failure(), None);
    assert!(store.last_index() <= LogIndex(3));
}

#[test]
fn read_corruption_is_reported_as_a_sticky_failure() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig::default();
    let mut store = GroupStore::open(dir.path(), config.clone(), timestamp_of).unwrap();
    store.append(&run(1, 10, 1)).unwrap();
    store.sync().unwrap();
    // Reopened, so the entries are no longer in memory since their append.
    drop(store);
    let mut store = GroupStore::open(dir.path(), config, timestamp_of).unwrap();
    // The disk rots under the open store.
    let (file, len) = active_segment(dir.path());
    let mut bytes = fs::read(&file).unwrap();
    bytes[(len / 2) as usize] ^= 0xFF;
    fs::write(&file, &bytes).unwrap();
    let got = store.entries(LogIndex(1), LogIndex(11), usize::MAX);
    assert!(got.len() < 10, "corrupt record returned");
    assert_eq!(got, run(1, 10, 1)[..got.len()]);
    let failure = store.failure().expect("sticky failure").to_owned();
    assert!(failure.contains(LOG_DIR_NAME), "{failure}");
    assert!(matches!(
        store.append(&run(11, 11, 1)),
        Err(GroupStoreError::Poisoned(_))
    ));
    // term() is answered from memory and still works.
    assert_eq!(store.term(LogIndex(10)), Some(Term(1)));
}

// ---------------------------------------------------------------------- snapshots

#[test]
fn installed_snapshot_replaces_the_log_and_appends_continue_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    store.append(&run(1, 50, 1)).unwrap();
    store.sync().unwrap();
    let snap = snapshot(100, 3, b"leader state at 100");
    store.install_snapshot(snap.clone()).unwrap();
    assert_eq!(store.snapshot(), Some(snap.clone()));
    assert_eq!(store.first_index(), LogIndex(101));
    assert_eq!(store.last_index(), LogIndex(100));
    assert_eq!(store.term(LogIndex(100)), Some(Term(3)));
    assert_eq!(store.term(LogIndex(50)), None);
    assert_eq!(store.term(LogIndex(101)), None);
    assert_eq!(
        store.entries(LogIndex(1), LogIndex(200), usize::MAX),
        vec![]
    );
    let files = segment_files(dir.path());
    assert_eq!(files.len(), 1);
    assert_eq!(base_of(&files[0]), 100, "offset = index - 1");
    assert!(matches!(
        store.append(&run(100, 100, 3)),
        Err(GroupStoreError::InvalidAppend(_))
    ));
    store.append(&run(101, 130, 3)).unwrap();
    store.sync().unwrap();
    assert_eq!(all_entries(&store), run(101, 130, 3));
    drop(store);
    let mut store = open(dir.path());
    assert_eq!(store.snapshot(), Some(snap));
    assert_eq!(store.first_index(), LogIndex(101));
    assert_eq!(all_entries(&store), run(101, 130, 3));
    // An older snapshot is refused.
    assert!(matches!(
        store.install_snapshot(snapshot(90, 3, b"")),
        Err(GroupStoreError::InvalidSnapshot(_))
    ));
    assert_eq!(store.failure(), None);
}

#[test]
fn compaction_moves_first_index_deletes_covered_segments_and_keeps_the_snapshot_term() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    store.append(&run(1, 100, 1)).unwrap();
    store.append(&run(101, 200, 2)).unwrap();
    store.sync().unwrap();
    let segments_before = segment_files(dir.path()).len();
    assert!(matches!(
        store.compact(snapshot(201, 2, b"")),
        Err(GroupStoreError::InvalidSnapshot(_))
    ));
    assert!(matches!(
        store.compact(snapshot(150, 1, b"")),
        Err(GroupStoreError::InvalidSnapshot(_))
    ));
    let snap = snapshot(150, 2, b"state at 150");
    store.compact(snap.clone()).unwrap();
    assert_eq!(store.first_index(), LogIndex(151));
    assert_eq!(store.last_index(), LogIndex(200));
    assert_eq!(store.term(LogIndex(150)), Some(Term(2)));
    assert_eq!(store.term(LogIndex(149)), None);
    assert_eq!(
        store.entries(LogIndex(150), LogIndex(160), usize::MAX),
        vec![]
    );
    assert_eq!(all_entries(&store), run(151, 200, 2));
    let files = segment_files(dir.path());
    assert!(files.len() < segments_before, "covered segments deleted");
    let start = base_of(&files[0]);
    assert!(
        start <= 150,
        "the log still starts at or before the snapshot: {start}"
    );
    assert!(base_of(&files[1]) > 150, "no whole covered segment is left");
    // An older snapshot does not undo the newer one.
    store.compact(snapshot(120, 2, b"")).unwrap();
    assert_eq!(store.snapshot(), Some(snap.clone()));
    store.append(&run(201, 210, 3)).unwrap();
    store.sync().unwrap();
    drop(store);
    let store = open(dir.path());
    assert_eq!(store.snapshot(), Some(snap));
    assert_eq!(store.first_index(), LogIndex(151));
    assert_eq!(store.term(LogIndex(150)), Some(Term(2)));
    let mut expected = run(151, 200, 2);
    expected.extend(run(201, 210, 3));
    assert_eq!(all_entries(&store), expected);
}

#[test]
fn compaction_and_installation_keep_the_log_open() {
    // `log_stats()` counts since the log was opened: a reopen would reset `appends` to 0.
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    store.append(&run(1, 200, 1)).unwrap();
    store.sync().unwrap();
    let segments_before = segment_files(dir.path()).len();
    assert_eq!(store.log_stats().appends, 200);
    let fsyncs = store.log_stats().fsyncs;
    store.compact(snapshot(150, 1, b"150")).unwrap();
    assert!(segment_files(dir.path()).len() < segments_before);
    assert_eq!(
        store.log_stats().appends,
        200,
        "compaction did not reopen the log"
    );
    assert!(
        store.log_stats().fsyncs > fsyncs,
        "the deletion was made durable"
    );
    assert_eq!(
        store.log_stats().segments,
        segment_files(dir.path()).len() as u64
    );
    assert_eq!(all_entries(&store), run(151, 200, 1));
    store.append(&run(201, 210, 2)).unwrap();
    assert_eq!(store.log_stats().appends, 210);
    let fsyncs = store.log_stats().fsyncs;
    store.install_snapshot(snapshot(300, 3, b"300")).unwrap();
    assert_eq!(
        store.log_stats().appends,
        210,
        "installation did not reopen the log"
    );
    assert!(
        store.log_stats().fsyncs > fsyncs,
        "the reset was made durable"
    );
    assert_eq!(store.log_stats().segments, 1);
    assert_eq!(store.log_stats().bytes, 0);
    store.append(&run(301, 305, 3)).unwrap();
    assert_eq!(store.log_stats().appends, 215);
    assert_eq!(all_entries(&store), run(301, 305, 3));
    assert_eq!(store.failure(), None);
    drop(store);
    let store = open(dir.path());
    assert_eq!(store.first_index(), LogIndex(301));
    assert_eq!(all_entries(&store), run(301, 305, 3));
}

#[test]
fn open_finishes_a_snapshot_installation_interrupted_by_a_crash() {
    // The snapshot is durable first; a crash before the log is reset leaves the old log.
    let make = |snap: Snapshot| {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path());
        store.append(&run(1, 10, 1)).unwrap();
        store.sync().unwrap();
        drop(store);
        let other = tempfile::tempdir().unwrap();
        let mut donor = open(other.path());
        donor.install_snapshot(snap).unwrap();
        drop(donor);
        fs::copy(
            other.path().join(SNAPSHOT_FILE_NAME),
            dir.path().join(SNAPSHOT_FILE_NAME),
        )
        .unwrap();
        dir
    };
    // The log ends before the snapshot: restarted after it.
    let dir = make(snapshot(50, 2, b"50"));
    let store = open(dir.path());
    assert_eq!(
        (store.first_index(), store.last_index()),
        (LogIndex(51), LogIndex(50))
    );
    assert_eq!(base_of(&segment_files(dir.path())[0]), 50);
    // The log holds the snapshot's last entry with another term: restarted after it.
    let dir = make(snapshot(5, 7, b"5"));
    let store = open(dir.path());
    assert_eq!(
        (store.first_index(), store.last_index()),
        (LogIndex(6), LogIndex(5))
    );
    assert_eq!(store.term(LogIndex(5)), Some(Term(7)));
    // The log holds it with the same term: a valid compacted log, kept.
    let dir = make(snapshot(5, 1, b"5"));
    let store = open(dir.path());
    assert_eq!(
        (store.first_index(), store.last_index()),
        (LogIndex(6), LogIndex(10))
    );
    assert_eq!(all_entries(&store), run(6, 10, 1));
}

// ---------------------------------------------------------------------- end to end

/// The application: the Normal payloads applied, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct StateMachine {
    applied: LogIndex,
    values: Vec<Vec<u8>>,
}

impl StateMachine {
    fn apply(&mut self, entries: &[Entry]) {
        for e in entries {
            assert_eq!(e.index, self.applied.next(), "applied in order, once");
            self.applied = e.index;
            if let Payload::Normal(data) = &e.payload {
                self.values.push(data.clone());
            }
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = self.applied.0.to_le_bytes().to_vec();
        for v in &self.values {
            out.extend_from_slice(&(v.len() as u32).to_le_bytes());
            out.extend_from_slice(v);
        }
        out
    }

    fn decode(data: &[u8]) -> StateMachine {
        let applied = LogIndex(u64::from_le_bytes(data[..8].try_into().unwrap()));
        let mut values = Vec::new();
        let mut at = 8;
        while at < data.len() {
            let len = u32::from_le_bytes(data[at..at + 4].try_into().unwrap()) as usize;
            values.push(data[at + 4..at + 4 + len].to_vec());
            at += 4 + len;
        }
        StateMachine { applied, values }
    }
}

/// One member: the core on a GroupStore, its state machine, and its compaction policy.
struct Member {
    raft: Raft<GroupStore>,
    sm: StateMachine,
    /// Snapshot + compact once this many entries were applied since the last snapshot (0: never).
    compact_every: u64,
    /// `GroupStore::sync` calls (one per drain that wrote entries).
    syncs: u64,
}

impl Member {
    fn start(id: u64, dir: &Path, voters: &[u64], now: u64, compact_every: u64) -> Member {
        let config = LogConfig {
            segment_bytes_max: 8 * 1024,
            ..LogConfig::default()
        };
        let store = GroupStore::open(dir, config, timestamp_of).unwrap();
        let sm = store
            .snapshot()
            .map_or_else(StateMachine::default, |s| StateMachine::decode(&s.data));
        let membership = Membership::with_voters(voters.iter().map(|&v| NodeId(v)));
        let raft = Raft::new(Config::new(NodeId(id)), store, membership, now);
        let mut member = Member {
            raft,
            sm,
            compact_every,
            syncs: 0,
        };
        member.drain(now, &mut VecDeque::new());
        member
    }

    /// Executes the outputs in order; entries written during the drain are made durable with one
    /// sync at its end (group commit), reported, and the new outputs drained the same way.
    fn drain(&mut self, now: u64, net: &mut VecDeque<Envelope>) {
        loop {
            let mut wrote = false;
            while let Some(output) = self.raft.poll_output() {
                match output {
                    Output::PersistHardState(hs) => {
                        self.raft.store_mut().set_hard_state(hs).unwrap()
                    }
                    Output::PersistEntries(entries) => {
                        self.raft.store_mut().append(&entries).unwrap();
                        wrote = true;
                    }
                    Output::PersistSnapshot(snapshot) => {
                        let last = snapshot.meta.last_index;
                        self.sm = StateMachine::decode(&snapshot.data);
                        assert_eq!(self.sm.applied, last);
                        self.raft.store_mut().install_snapshot(snapshot).unwrap();
                        self.raft.handle_snapshot_persisted(now, last);
                    }
                    Output::Send(envelope) => net.push_back(envelope),
                    Output::Apply(entries) => {
                        self.sm.apply(&entries);
                        self.raft.handle_applied(now, self.sm.applied);
                        self.maybe_compact(now);
                    }
                    Output::StateChanged { .. } => {}
                }
            }
            if !wrote {
                break;
            }
            let last = self.raft.store_mut().sync().unwrap();
            self.syncs += 1;
            let term = self.raft.store().term(last).unwrap();
            self.raft.handle_persisted(now, last, term);
        }
        assert_eq!(self.raft.store().failure(), None);
    }

    fn maybe_compact(&mut self, now: u64) {
        let store = self.raft.store();
        let snapshot_index = store.snapshot().map_or(0, |s| s.meta.last_index.0);
        if self.compact_every == 0 || self.sm.applied.0 < snapshot_index + self.compact_every {
            return;
        }
        let index = self.sm.applied;
        let snapshot = Snapshot {
            meta: SnapshotMeta {
                last_index: index,
                last_term: store.term(index).unwrap(),
                membership: self.raft.membership_at(index).unwrap(),
            },
            data: self.sm.encode(),
        };
        self.raft.store_mut().compact(snapshot).unwrap();
        self.raft.handle_compacted(now);
    }
}

#[test]
fn single_node_raft_commits_1000_proposals_and_reapplies_them_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut net = VecDeque::new();
    let mut node = Member::start(1, dir.path(), &[1], 0, 0);
    let mut now = node.raft.next_timeout().unwrap();
    node.raft.handle_timeout(now);
    node.drain(now, &mut net);
    assert_eq!(node.raft.role(), Role::Leader);
    let mut proposed = Vec::new();
    for batch in 0..100 {
        now += 1;
        for i in 0..10 {
            let data = payload_at(now, &format!("proposal {}", batch * 10 + i));
            let (index, term) = node.raft.propose(now, data.clone()).unwrap();
            proposed.push((index, term, data));
        }
        node.drain(now, &mut net); // one sync for the ten
    }
    assert!(net.is_empty());
    let values: Vec<Vec<u8>> = proposed.iter().map(|p| p.2.clone()).collect();
    assert_eq!(node.sm.values, values);
    assert!(node.syncs <= 101, "group commit: {} syncs", node.syncs);
    let last = proposed.last().unwrap().0;
    assert_eq!(node.raft.commit_index(), last);
    let store = node.raft.store();
    for (index, term, data) in &proposed {
        let got = store.entries(*index, index.next(), 0);
        assert_eq!(got[0].term, *term);
        assert_eq!(got[0].payload, Payload::Normal(data.clone()));
    }
    let before: Vec<Entry> = all_entries(store);
    drop(node);

    let mut node = Member::start(1, dir.path(), &[1], now, 0);
    assert_eq!(
        all_entries(node.raft.store()),
        before,
        "every entry survived"
    );
    now = node.raft.next_timeout().unwrap();
    node.raft.handle_timeout(now);
    node.drain(now, &mut net);
    assert_eq!(node.raft.role(), Role::Leader);
    assert!(node.raft.commit_index() > last);
    assert_eq!(node.sm.values, values, "applied again, in order");
}

/// Three members in one thread: messages are delivered from a queue, time jumps to the next
/// timer when the queue is empty. No threads, no sleeps.
struct Cluster {
    dirs: Vec<tempfile::TempDir>,
    members: Vec<Option<Member>>,
    net: VecDeque<Envelope>,
    now: u64,
    compact_every: u64,
}

const VOTERS: [u64; 3] = [1, 2, 3];

impl Cluster {
    fn new(compact_every: u64) -> Cluster {
        let dirs: Vec<_> = VOTERS
            .iter()
            .map(|_| tempfile::tempdir().unwrap())
            .collect();
        let members = VOTERS
            .iter()
            .zip(&dirs)
            .map(|(&id, dir)| Some(Member::start(id, dir.path(), &VOTERS, 0, compact_every)))
            .collect();
        Cluster {
            dirs,
            members,
            net: VecDeque::new(),
            now: 0,
            compact_every,
        }
    }

    fn step(&mut self) {
        if let Some(envelope) = self.net.pop_front() {
            let to = (envelope.to.0 - 1) as usize;
            if let Some(member) = self.members[to].as_mut() {
                member.raft.handle_message(self.now, envelope);
                member.drain(self.now, &mut self.net);
            }
            return;
        }
        let next = self
            .members
            .iter()
            .flatten()
            .filter_map(|m| m.raft.next_timeout())
            .min()
            .expect("a timer");
        self.now = self.now.max(next);
        for member in self.members.iter_mut().flatten() {
            if member.raft.next_timeout().is_some_and(|t| t <= self.now) {
                member.raft.handle_timeout(self.now);
                member.drain(self.now, &mut self.net);
            }
        }
    }

    fn run_until(&mut self, what: &str, done: impl Fn(&Cluster) -> bool) {
        for _ in 0..1_000_000 {
            if done(self) {
                return;
            }
            self.step();
        }
        panic!("cluster never reached: {what}");
    }

    fn leader(&self) -> Option<usize> {
        self.members
            .iter()
            .position(|m| m.as_ref().is_some_and(|m| m.raft.role() == Role::Leader))
    }

    /// Proposes `count` entries at the leader (in batches), running until each batch commits.
    fn propose(&mut self, count: usize, proposed: &mut Vec<(LogIndex, Term, Vec<u8>)>) {
        let mut left = count;
        while left > 0 {
            self.run_until("a leader", |c| c.leader().is_some());
            let l = self.leader().unwrap();
            let member = self.members[l].as_mut().unwrap();
            let batch = left.min(25);
            let mut last = LogIndex(0);
            for _ in 0..batch {
                let data = payload_at(self.now, &format!("proposal {}", proposed.len()));
                let (index, term) = member.raft.propose(self.now, data.clone()).unwrap();
                proposed.push((index, term, data));
                last = index;
            }
            member.drain(self.now, &mut self.net);
            left -= batch;
            self.run_until("the batch commits", |c| {
                c.members[l].as_ref().is_some_and(|m| m.sm.applied >= last)
            });
        }
    }

    fn restart(&mut self, i: usize) {
        let id = VOTERS[i];
        self.members[i] = Some(Member::start(
            id,
            self.dirs[i].path(),
            &VOTERS,
            self.now,
            self.compact_every,
        ));
    }

    /// Every member applied exactly the proposals, in order, and its store still holds (or its
    /// snapshot covers) each proposed entry with its term.
    fn check(&mut self, proposed: &[(LogIndex, Term, Vec<u8>)]) {
        let last = proposed.last().unwrap().0;
        self.run_until("everyone applied everything", |c| {
            c.members
                .iter()
                .all(|m| m.as_ref().is_some_and(|m| m.sm.applied >= last))
        });
        let values: Vec<Vec<u8>> = proposed.iter().map(|p| p.2.clone()).collect();
        for member in self.members.iter().flatten() {
            assert_eq!(member.sm.values, values, "node {}", member.raft.id());
            let store = member.raft.store();
            for (index, term, data) in proposed {
                if *index < store.first_index() {
                    continue; // covered by the snapshot
                }
                let got = store.entries(*index, index.next(), 0);
                assert_eq!(
                    (got[0].term, &got[0].payload),
                    (*term, &Payload::Normal(data.clone()))
                );
            }
        }
    }
}

#[test]
fn three_node_cluster_commits_500_entries_and_survives_a_follower_restart() {
    let mut cluster = Cluster::new(0);
    let mut proposed = Vec::new();
    cluster.propose(200, &mut proposed);
    let leader = cluster.leader().unwrap();
    let follower = (leader + 1) % 3;
    // Stop a follower while entries keep committing on the other two, then restart it from
    // its directory: it recovers its log, replays it, and catches up.
    cluster.members[follower] = None;
    cluster.propose(150, &mut proposed);
    cluster.restart(follower);
    assert!(
        cluster.members[follower]
            .as_ref()
            .unwrap()
            .raft
            .store()
            .last_index()
            >= LogIndex(200)
    );
    cluster.propose(150, &mut proposed);
    assert_eq!(proposed.len(), 500);
    cluster.check(&proposed);
}

#[test]
fn follower_behind_the_leaders_compaction_catches_up_through_install_snapshot() {
    let mut cluster = Cluster::new(50);
    let mut proposed = Vec::new();
    cluster.propose(100, &mut proposed);
    let leader = cluster.leader().unwrap();
    let follower = (leader + 1) % 3;
    cluster.members[follower] = None;
    cluster.propose(300, &mut proposed);
    let leader_store = cluster.members[leader].as_ref().unwrap().raft.store();
    assert!(
        leader_store.first_index() > LogIndex(150),
        "the leader compacted"
    );
    cluster.restart(follower);
    cluster.propose(100, &mut proposed);
    cluster.check(&proposed);
    let restarted = cluster.members[follower].as_ref().unwrap().raft.store();
    assert!(restarted.snapshot().is_some());
    drop(cluster.members[follower].take());
    // And once more from its directory: the installed snapshot and the log after it.
    cluster.restart(follower);
    cluster.propose(10, &mut proposed);
    cluster.check(&proposed);
}
