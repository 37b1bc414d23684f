//! perf-write's correctness: the quick matrix runs end to end on real nodes and every cell is
//! verified; the verifier itself catches each kind of anomaly. No timing is asserted.

use weir_client::Offset;

/// The tests that start clusters run one at a time: two at once on 2 cores slow each other's
/// nodes for nothing.
static CLUSTERS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
use weir_integration::perf::{self, Options, ReadEntry, Verification, key_of, value_of, verify};

/// The log a correct run reads back for `acks` (in offset order).
fn log_for(acks: &[Vec<Offset>]) -> Vec<ReadEntry> {
    let mut log: Vec<ReadEntry> = acks
        .iter()
        .enumerate()
        .flat_map(|(client, offsets)| {
            offsets.iter().enumerate().map(move |(seq, &offset)| {
                (offset, Some(key_of(client, 4)), value_of(client, seq, 1))
            })
        })
        .collect();
    log.sort_by_key(|e| e.0);
    log
}

fn plain(client: usize, seq: usize) -> Vec<u8> {
    value_of(client, seq, 1)
}

#[test]
fn the_verifier_counts_lost_duplicated_phantom_mismatched_and_reordered_entries() {
    // Two clients interleaved: client 0 at even offsets, client 1 at odd ones.
    let acks: Vec<Vec<Offset>> = vec![
        (0..50).map(|i| Offset(2 * i)).collect(),
        (0..50).map(|i| Offset(2 * i + 1)).collect(),
    ];
    let good = log_for(&acks);
    let clean = verify(&acks, &good, 4, plain);
    assert!(clean.is_ok(), "{clean}");
    assert_eq!(clean.entries, 100);

    let mut lost = good.clone();
    lost.remove(10);
    assert_eq!(verify(&acks, &lost, 4, plain).lost, 1);

    let mut duplicated = good.clone();
    duplicated.insert(11, duplicated[10].clone());
    let v = verify(&acks, &duplicated, 4, plain);
    assert_eq!((v.duplicated, v.out_of_order), (1, 1), "{v}");

    let mut phantom = good.clone();
    phantom.push((Offset(500), Some(key_of(0, 4)), value_of(0, 0, 1)));
    assert_eq!(verify(&acks, &phantom, 4, plain).phantom, 1);

    let mut mismatched = good.clone();
    mismatched[20].2 = vec![0xEE];
    assert_eq!(verify(&acks, &mismatched, 4, plain).mismatched, 1);
    let mut wrong_key = good.clone();
    wrong_key[21].1 = Some(key_of(7, 4));
    assert_eq!(verify(&acks, &wrong_key, 4, plain).mismatched, 1);

    // Client 0's PUTs 3 and 4 acknowledged at each other's offsets: the log holds them out of
    // the client's order (and each offset's content belongs to the other PUT).
    let mut swapped = acks.clone();
    swapped[0].swap(3, 4);
    let v = verify(&swapped, &good, 4, plain);
    assert!(v.reordered >= 1 && !v.is_ok(), "{v}");

    // Two PUTs acknowledged at one offset.
    let mut twice = acks.clone();
    twice[1][0] = Offset(0);
    assert!(verify(&twice, &good, 4, plain).duplicated >= 1);

    assert_eq!(
        verify(&acks, &[], 4, plain),
        Verification {
            lost: 100,
            ..Verification::default()
        }
    );
}

#[test]
fn a_counter_cell_expects_each_clients_running_count() {
    let acks: Vec<Vec<Offset>> = vec![(0..3).map(Offset).collect()];
    let counts = |client: usize, seq: usize| perf::Variant::Counter.expected_value(client, seq, 1);
    let log: Vec<ReadEntry> = ["1", "2", "3"]
        .iter()
        .enumerate()
        .map(|(i, v)| (Offset(i as u64), Some(key_of(0, 4)), v.as_bytes().to_vec()))
        .collect();
    assert!(verify(&acks, &log, 4, counts).is_ok());
    // What was sent is not what a counter topic holds.
    assert_eq!(verify(&acks, &log, 4, plain).mismatched, 3);
}

#[test]
fn keys_and_values_identify_their_client_and_message() {
    assert_eq!(key_of(3, 4), vec![0, 0, 0, 3]);
    assert_eq!(key_of(258, 2), vec![1, 2]);
    assert_eq!(key_of(5, 0), Vec::<u8>::new());
    assert_eq!(value_of(1, 2, 1).len(), 1);
    assert_ne!(value_of(0, 1, 8), value_of(1, 1, 8));
    assert_ne!(value_of(0, 1, 8), value_of(0, 2, 8));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quick_matrix_runs_on_real_nodes_and_every_cell_is_verified() -> anyhow::Result<()> {
    let _one_at_a_time = CLUSTERS.lock().await;
    let options = Options::quick();
    let expected = options.cells();
    let mut seen = Vec::new();
    let report = perf::run(&options, |i, cell| seen.push((i, cell.copied())))
        .await
        .map_err(|failed| failed.error)?;
    assert_eq!(report.cells.len(), expected.len());
    // Progress: once per cell, then once at the end.
    assert_eq!(seen.len(), expected.len() + 1);
    assert_eq!(seen.last(), Some(&(expected.len(), None)));
    for (result, cell) in report.cells.iter().zip(&expected) {
        assert_eq!(result.cell, *cell);
        assert!(
            result.verification.is_ok(),
            "{cell}: {}",
            result.verification
        );
        assert_eq!(
            result.verification.entries as usize,
            cell.clients * cell.messages,
            "{cell}"
        );
        assert_eq!(result.total_messages, cell.clients * cell.messages);
        assert!(
            result.us_per_message > 0.0 && result.leader_fsyncs > 0,
            "{cell}"
        );
        assert_eq!(result.cpu_s_by_node.len(), cell.nodes, "{cell}");
    }

    let table = perf::table(&report);
    assert_eq!(table.lines().count(), 2 + expected.len());
    let json = serde_json::to_value(&report)?;
    assert_eq!(json["cells"].as_array().map(Vec::len), Some(expected.len()));
    assert!(json["machine"]["cores"].as_u64().is_some_and(|c| c >= 1));
    let dir = tempfile::tempdir()?;
    let svg = dir.path().join("chart.svg");
    perf::write_chart(&report, &svg)?;
    let chart = std::fs::read_to_string(&svg)?;
    assert!(chart.starts_with("<svg") && chart.contains("client(s)"));
    Ok(())
}

#[test]
fn options_outside_the_limits_are_refused() {
    let mut o = Options::quick();
    o.nodes = vec![9];
    assert!(o.validate().is_err());
    let mut o = Options::quick();
    o.window = Some(0);
    assert!(o.validate().is_err());
    let mut o = Options::quick();
    o.value_bytes = 0;
    assert!(o.validate().is_err());
    assert!(Options::default().validate().is_ok());
    assert_eq!(Options::default().cells().len(), 4 * 3 * 3 * 3 * 2);
}

/// Five clients with every PUT in flight at once, past the per-topic pending limit of the node
/// (4,096) and the Raft group's (8,192): the excess waits for room (backpressure) instead of
/// being refused `Busy`, and everything commits exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_clients_past_the_pending_limits_are_paced_not_refused() -> anyhow::Result<()> {
    let _one_at_a_time = CLUSTERS.lock().await;
    let options = Options::default();
    let cell = perf::Cell {
        variant: perf::Variant::Plain,
        mode: perf::Mode::Pipelined,
        nodes: 3,
        clients: 5,
        messages: 4_000,
    };
    let result = perf::run_cell(&options, cell).await?;
    assert!(result.verification.is_ok(), "{}", result.verification);
    assert_eq!(result.verification.entries, 20_000);
    Ok(())
}
