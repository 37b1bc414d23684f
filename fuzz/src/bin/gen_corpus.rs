//! Writes the seed corpora under `fuzz/corpus/<target>/`: valid encodings made by the project's
//! own encoders (`encode_frame`; weir-storage's `Log` writing real segment and index files),
//! plus a few edge cases (oversized and empty frame headers, torn and corrupted records, offsets
//! next to `u64::MAX`). Deterministic: running it again rewrites the same files.
//!
//! `cargo run --bin gen_corpus` (from `fuzz/`; run.sh does it when a corpus is missing).

use std::fs;
use std::path::{Path, PathBuf};
use weir_fuzz::frame::{client_frame, server_frame};
use weir_fuzz::input::Input;
use weir_fuzz::storage::{RECORD_HEADER_BYTES, encode_record};
use weir_proto::limits::FRAME_BYTES_MAX;
use weir_proto::{ClientFrame, PROTOCOL_VERSION, ServerFrame, encode_frame};
use weir_storage::{FsyncPolicy, Log, LogConfig, Offset, TimestampMs};

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let frames = frame_seeds();
    let records = record_seeds();
    let recovery = recovery_seeds();
    for (target, seeds) in [
        ("frame_decoder", frames),
        ("storage_record", records),
        ("storage_recovery", recovery),
    ] {
        let dir = root.join(target);
        fs::create_dir_all(&dir).expect("create the corpus directory");
        for (name, bytes) in &seeds {
            fs::write(dir.join(name), bytes).expect("write a seed");
        }
        println!("{}: {} seeds", dir.display(), seeds.len());
    }
}

/// Deterministic filler bytes.
fn filler(seed: u64, n: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// Messages of every variant, made by the target's own generator from fixed bytes.
fn sample_messages() -> (Vec<ClientFrame>, Vec<ServerFrame>) {
    let mut clients = Vec::new();
    let mut servers = Vec::new();
    for variant in 0..13u8 {
        for seed in 0..2u64 {
            let mut bytes = filler(seed + 1, 8);
            bytes.push(variant);
            bytes.extend(filler(seed * 31 + u64::from(variant), 120));
            clients.push(client_frame(&mut Input::new(&bytes)));
            servers.push(server_frame(&mut Input::new(&bytes)));
        }
    }
    (clients, servers)
}

fn frame_seeds() -> Vec<(String, Vec<u8>)> {
    let (clients, servers) = sample_messages();
    let mut seeds = Vec::new();
    let mut push = |name: String, mode: u8, stream: &[u8]| {
        let mut seed = vec![mode];
        seed.extend_from_slice(stream);
        seeds.push((name, seed));
    };
    for (i, m) in clients.iter().enumerate() {
        let mut stream = Vec::new();
        encode_frame(m, &mut stream).unwrap();
        push(format!("client-{i:02}"), 0, &stream);
    }
    for (i, m) in servers.iter().enumerate() {
        let mut stream = Vec::new();
        encode_frame(m, &mut stream).unwrap();
        push(format!("server-{i:02}"), 0, &stream);
    }
    let mut all_clients = Vec::new();
    for m in &clients {
        encode_frame(m, &mut all_clients).unwrap();
    }
    let mut all_servers = Vec::new();
    for m in &servers {
        encode_frame(m, &mut all_servers).unwrap();
    }
    for mode in [1u8, 2, 3, 0x46, 0xfb] {
        push(format!("clients-mode-{mode:02x}"), mode, &all_clients);
        push(format!("servers-mode-{mode:02x}"), mode, &all_servers);
    }
    // Edge cases: a header claiming 4 GiB, one just above the limit, an empty frame, a wrong
    // version, a frame cut short, a valid frame followed by trailing garbage inside its length.
    let one = {
        let mut stream = Vec::new();
        encode_frame(&clients[0], &mut stream).unwrap();
        stream
    };
    push("header-4gib".into(), 1, &u32::MAX.to_be_bytes());
    let above = u32::try_from(FRAME_BYTES_MAX + 1).unwrap().to_be_bytes();
    push(
        "header-above-limit".into(),
        2,
        &[&one[..], &above[..]].concat(),
    );
    push(
        "empty-frame".into(),
        0,
        &[&one[..], &[0, 0, 0, 0][..]].concat(),
    );
    let mut wrong_version = one.clone();
    wrong_version[4] = PROTOCOL_VERSION.wrapping_add(1);
    push("wrong-version".into(), 0, &wrong_version);
    push("cut-short".into(), 3, &one[..one.len() - 1]);
    let mut trailing = one.clone();
    trailing.push(0);
    let len = u32::try_from(trailing.len() - 4).unwrap();
    trailing[..4].copy_from_slice(&len.to_be_bytes());
    push("trailing-byte".into(), 0, &trailing);
    // A 13-byte frame whose Hello.client_name claims 8 MiB: bincode reserves that much before it
    // finds the bytes missing (within the decode limit; fails under WEIR_FUZZ_STRICT_ALLOC=1).
    push(
        "string-claims-8mib".into(),
        0,
        &[0, 0, 0, 9, PROTOCOL_VERSION, 0, 0, 1, 0xfc, 0, 0, 0x80, 0],
    );
    seeds
}

/// A log written by weir-storage itself: `(segment base, .log bytes, .idx bytes)` per segment.
fn written_log(
    base: Offset,
    records: usize,
    segment_bytes_max: u64,
) -> Vec<(Offset, Vec<u8>, Vec<u8>)> {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let config = LogConfig {
        segment_bytes_max,
        index_interval_bytes: 64,
        fsync: FsyncPolicy::Never,
        ..LogConfig::default()
    };
    let mut log = Log::open(dir.path(), config).expect("open a new log");
    if base != Offset::ZERO {
        log.reset_to(base)
            .expect("restart the log at the base offset");
    }
    for i in 0..records {
        let payload = filler(i as u64, i * 7 % 50);
        log.append(TimestampMs(1_700_000_000_000 + i as u64 * 3), &payload)
            .expect("append");
    }
    log.commit().expect("commit");
    drop(log);
    let mut segments = Vec::new();
    let mut names: Vec<PathBuf> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    names.sort();
    for log_path in names {
        let stem = log_path.file_stem().unwrap().to_str().unwrap();
        let base = Offset(stem.parse().unwrap());
        let idx = fs::read(log_path.with_extension("idx")).unwrap_or_default();
        segments.push((base, fs::read(&log_path).unwrap(), idx));
    }
    segments
}

fn record_seed(flags: u8, base: Offset, segment: &[u8]) -> Vec<u8> {
    let mut seed = vec![flags];
    seed.extend_from_slice(&base.get().to_le_bytes());
    seed.extend_from_slice(segment);
    seed
}

fn record_seeds() -> Vec<(String, Vec<u8>)> {
    let mut seeds = Vec::new();
    for (name, base, records) in [
        ("base-0", Offset(0), 12),
        ("base-1000", Offset(1000), 5),
        ("one-record", Offset(42), 1),
    ] {
        let segments = written_log(base, records, 1 << 20);
        let (base, log, _) = &segments[0];
        seeds.push((name.to_string(), record_seed(0, *base, log)));
        seeds.push((format!("{name}-limit-64"), record_seed(4, *base, log)));
        // A torn tail: the last record cut short.
        seeds.push((
            format!("{name}-torn"),
            record_seed(0, *base, &log[..log.len() - 3]),
        ));
        // A flipped payload bit: a CRC mismatch (and, with bit 0 of flags, a CRC fixed again).
        let mut flipped = log.clone();
        let at = RECORD_HEADER_BYTES.min(flipped.len() - 1);
        flipped[at] ^= 0x10;
        seeds.push((format!("{name}-flipped"), record_seed(0, *base, &flipped)));
        seeds.push((
            format!("{name}-flipped-fixed"),
            record_seed(1, *base, &flipped),
        ));
    }
    // Offsets next to u64::MAX, encoded with the writer's encode_header.
    let mut edge = Vec::new();
    for (i, offset) in [u64::MAX - 1, u64::MAX].into_iter().enumerate() {
        encode_record(Offset(offset), TimestampMs(i as u64), b"edge", &mut edge);
    }
    seeds.push((
        "offset-max".into(),
        record_seed(0, Offset(u64::MAX - 1), &edge),
    ));
    // A length field claiming 4 GiB, and one just above the default limit.
    let mut huge = Vec::new();
    encode_record(Offset(0), TimestampMs(0), b"huge", &mut huge);
    huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
    seeds.push(("len-4gib".into(), record_seed(0, Offset(0), &huge)));
    let above = u32::try_from(LogConfig::default().record_bytes_max + 17).unwrap();
    huge[..4].copy_from_slice(&above.to_le_bytes());
    seeds.push(("len-above-limit".into(), record_seed(0, Offset(0), &huge)));
    seeds
}

fn chunk(bytes: &[u8]) -> Vec<u8> {
    let len = u16::try_from(bytes.len()).expect("a seed chunk fits in u16");
    [&len.to_le_bytes()[..], bytes].concat()
}

#[allow(clippy::too_many_arguments)]
fn recovery_seed(
    flags: u8,
    interval: u8,
    segment_bytes_max: u16,
    segments: &[(Offset, Vec<u8>, Vec<u8>)],
    markers: &[u8],
) -> Vec<u8> {
    let base = segments[0].0;
    let delta = segments.get(1).map_or(0, |s| s.0.get() - base.get());
    let mut seed = vec![flags, interval];
    seed.extend_from_slice(&segment_bytes_max.to_le_bytes());
    seed.extend_from_slice(&base.get().to_le_bytes());
    seed.extend_from_slice(&u32::try_from(delta).unwrap().to_le_bytes());
    for (_, log, idx) in segments.iter().take(2) {
        seed.extend(chunk(log));
        seed.extend(chunk(idx));
    }
    seed.extend_from_slice(markers);
    seed
}

fn truncation_marker(from: u64, base: u64, position: u64) -> Vec<u8> {
    let mut m = b"weirtrnc".to_vec();
    for v in [from, base, position] {
        m.extend_from_slice(&v.to_le_bytes());
    }
    let crc = crc32fast::hash(&m);
    m.extend_from_slice(&crc.to_le_bytes());
    m
}

fn reset_marker(offset: u64) -> Vec<u8> {
    let mut m = b"weirrset".to_vec();
    m.extend_from_slice(&offset.to_le_bytes());
    let crc = crc32fast::hash(&m);
    m.extend_from_slice(&crc.to_le_bytes());
    m
}

fn recovery_seeds() -> Vec<(String, Vec<u8>)> {
    let mut seeds = Vec::new();
    // Index interval 64 - 1, segments of at most 300 bytes (as written).
    let two = written_log(Offset(0), 20, 300);
    let two = &two[..2];
    seeds.push((
        "two-segments".into(),
        recovery_seed(0b110, 63, 299, two, &[]),
    ));
    seeds.push((
        "two-segments-no-idx".into(),
        recovery_seed(0b010, 63, 299, two, &[]),
    ));
    let one = written_log(Offset(500), 6, 1 << 20);
    seeds.push((
        "one-segment".into(),
        recovery_seed(0b100, 63, 4095, &one, &[]),
    ));
    let mut torn = one.clone();
    let len = torn[0].1.len();
    torn[0].1.truncate(len - 5);
    seeds.push((
        "torn-tail".into(),
        recovery_seed(0b100, 63, 4095, &torn, &[]),
    ));
    let mut corrupt = one.clone();
    corrupt[0].1[30] ^= 1;
    seeds.push((
        "corrupt-first".into(),
        recovery_seed(0b100, 63, 4095, &corrupt, &[]),
    ));
    // Markers: a truncation in progress (cut the second segment's records), a reset.
    let first = &two[1].1;
    let position = 8 + u64::from(u32::from_le_bytes(first[..4].try_into().unwrap()));
    let marker = truncation_marker(two[1].0.get() + 1, two[1].0.get(), position);
    seeds.push((
        "truncation-marker".into(),
        recovery_seed(0b1110, 63, 299, two, &marker),
    ));
    seeds.push((
        "reset-marker".into(),
        recovery_seed(0b10110, 63, 299, two, &reset_marker(77)),
    ));
    // A segment named near u64::MAX, written with the writer's encode_header.
    let mut edge = Vec::new();
    encode_record(Offset(u64::MAX - 1), TimestampMs(1), b"edge", &mut edge);
    let segments = vec![(Offset(u64::MAX - 1), edge, Vec::new())];
    seeds.push((
        "base-near-max".into(),
        recovery_seed(0, 63, 4095, &segments, &[]),
    ));
    // The inputs of two overflows the target found (fixed in weir-storage, see README.md):
    // garbage in a segment based next to u64::MAX (find_record_after), and a sealed segment
    // there whose well-formed index runs past u64::MAX (check_index).
    let garbage = vec![(Offset(u64::MAX - 1), vec![0x24; 73], Vec::new())];
    seeds.push((
        "regression-garbage-near-max".into(),
        recovery_seed(0, 63, 4095, &garbage, &[]),
    ));
    let mut index = Vec::new();
    for (relative, position) in [(0u32, 0u32), (2, 48)] {
        index.extend_from_slice(&relative.to_le_bytes());
        index.extend_from_slice(&position.to_le_bytes());
        index.extend_from_slice(&0u64.to_le_bytes());
    }
    let sealed = vec![
        (Offset(u64::MAX - 1), vec![0; 49], index),
        (Offset(u64::MAX), Vec::new(), Vec::new()),
    ];
    seeds.push((
        "regression-index-near-max".into(),
        recovery_seed(0b110, 63, 4095, &sealed, &[]),
    ));
    seeds
}
