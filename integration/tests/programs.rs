//! Programmable topics end to end, on real `weir node` processes: the example programs built
//! from `wasm-examples/` by this test run, three replicas each.

use anyhow::{Context, Result, bail, ensure};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use weir_client::{
    Client, ClientError, ListenFrom, Offset, ProgramInfo, ProgramOutcome, ProgramSpec, TopicConfig,
};
use weir_integration::cluster::{LocalCluster, SETTLE_TIMEOUT};

/// One cluster at a time: each test runs three nodes that compile and run Wasm, and on a
/// 2-core machine four such clusters at once starve each other into timeouts.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn program(name: &str, config: &[(&str, &str)]) -> Result<ProgramSpec> {
    Ok(ProgramSpec {
        module: weir_wasm_examples::module(name)?,
        config: config
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    })
}

fn programmable(spec: ProgramSpec) -> TopicConfig {
    TopicConfig {
        program: Some(spec),
        ..TopicConfig::default()
    }
}

/// Waits until every running replica's program has processed the same inputs as the leader's
/// (and the leader's has processed everything committed), then returns each replica's view.
async fn settled_programs(
    cluster: &LocalCluster,
    ids: &[u64],
    topic: &str,
) -> Result<Vec<ProgramInfo>> {
    let deadline = tokio::time::Instant::now() + SETTLE_TIMEOUT;
    loop {
        let mut infos = Vec::new();
        for &id in ids {
            // A node that does not answer yet (just restarted, busy) is not settled yet.
            let Ok(client) = cluster.client_of(id).await else {
                continue;
            };
            let info = client.program_at(cluster.addr(id), topic).await;
            client.close().await;
            infos.push(info);
        }
        let infos: Vec<ProgramInfo> = infos.into_iter().filter_map(Result::ok).collect();
        if infos.len() == ids.len()
            && infos.windows(2).all(|w| {
                w[0].applied_offset == w[1].applied_offset
                    && w[0].next_event_offset == w[1].next_event_offset
            })
        {
            return Ok(infos);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("replicas' programs did not converge: {infos:#?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every event of `topic` from the start up to (excluding) `end`.
async fn read_events(client: &Client, topic: &str, end: Offset) -> Result<Vec<weir_client::Event>> {
    let mut events = Vec::new();
    if end == Offset(0) {
        return Ok(events);
    }
    let mut listener = client.listen(topic, ListenFrom::Start).await?;
    while events
        .last()
        .is_none_or(|e: &weir_client::Event| e.offset.0 + 1 < end.0)
    {
        let event = tokio::time::timeout(SETTLE_TIMEOUT, listener.next())
            .await
            .context("listener stalled")?
            .context("listener ended")??;
        events.push(event);
    }
    Ok(events)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counter_counts_every_put_once_through_a_leader_kill() -> Result<()> {
    let _serial = SERIAL.lock().await;
    const TOPIC: &str = "counts";
    const KEYS: u64 = 7;
    const PUTS: u64 = 1_200;
    let mut cluster = LocalCluster::start(3, &[]).await?;
    let admin = cluster.client().await?;
    admin
        .create_topic(TOPIC, programmable(program("counter", &[])?))
        .await?;
    cluster.wait_for_leader(TOPIC, None).await?;

    let (acked_tx, mut acked_rx) = tokio::sync::watch::channel(0u64);
    let producer_client = cluster.client().await?;
    let producing = tokio::spawn(async move {
        let mut producer = producer_client.producer(TOPIC, 32)?;
        let mut handles = Vec::new();
        for i in 0..PUTS {
            let key = format!("k{}", i % KEYS);
            let handle = producer.send(Some(key.as_bytes()), format!("v{i}")).await?;
            handles.push((key, handle));
            tokio::time::sleep(Duration::from_millis(2)).await;
            if handles.len() % 50 == 0 {
                acked_tx.send_replace(handles.len() as u64);
            }
        }
        let mut results = Vec::new();
        for (key, handle) in handles {
            results.push((key, handle.await));
        }
        producer_client.close().await;
        anyhow::Ok(results)
    });

    // Kill the leader mid-stream, restart it once another leads.
    acked_rx.wait_for(|n| *n >= PUTS / 3).await?;
    let leader = cluster.wait_for_leader(TOPIC, None).await?;
    cluster.kill9(leader).await?;
    cluster.wait_for_leader(TOPIC, Some(leader)).await?;
    cluster.start_node(leader).await?;
    let results = producing.await??;

    // The producer resends across the failover and the topic de-duplicates: every PUT is
    // acknowledged, once, with its program outcome.
    let mut acked: BTreeMap<String, u64> = BTreeMap::new();
    let mut acked_events: BTreeMap<Offset, String> = BTreeMap::new();
    for (key, result) in &results {
        match result {
            Ok(committed) => {
                *acked.entry(key.clone()).or_default() += 1;
                match &committed.program {
                    Some(ProgramOutcome::Accepted {
                        first_event,
                        events: 1,
                    }) => {
                        ensure!(
                            acked_events.insert(*first_event, key.clone()).is_none(),
                            "two PUTs acknowledged with event {first_event}"
                        );
                    }
                    other => bail!("counter accepted a PUT with {other:?}"),
                }
            }
            Err(e) => bail!("a PUT failed through the failover: {e}"),
        }
    }

    let infos = settled_programs(&cluster, &[1, 2, 3], TOPIC).await?;
    let hashes: BTreeSet<&str> = infos.iter().map(|i| i.state_hash.as_str()).collect();
    ensure!(
        hashes.len() == 1,
        "replicas' program states differ: {infos:#?}"
    );
    let end = infos[0].next_event_offset;
    let events = read_events(&admin, TOPIC, end).await?;

    // Each key's events count 1, 2, 3, ... with no gap or repeat: the program saw every
    // committed input once, in order, across the failover.
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for (i, event) in events.iter().enumerate() {
        ensure!(
            event.offset == Offset(i as u64),
            "event offsets are dense: {i} -> {}",
            event.offset
        );
        let key = String::from_utf8(event.key.clone().unwrap_or_default())?;
        let count: u64 = std::str::from_utf8(&event.value)?.parse()?;
        let seen = counts.entry(key.clone()).or_default();
        *seen += 1;
        ensure!(
            count == *seen,
            "key {key}: event {} says {count}, expected {seen}",
            event.offset
        );
        if let Some(acked_key) = acked_events.get(&event.offset) {
            ensure!(
                *acked_key == key,
                "event {} belongs to {key}, acknowledged for {acked_key}",
                event.offset
            );
        }
    }
    ensure!(
        acked_events.keys().all(|o| o.0 < end.0),
        "an acknowledged event is missing from the event log"
    );
    // Each key counted exactly the PUTs sent with it: none lost, none twice.
    for k in 0..KEYS {
        let key = format!("k{k}");
        let sent = (0..PUTS).filter(|i| i % KEYS == k).count() as u64;
        let a = acked.get(&key).copied().unwrap_or(0);
        let c = counts.get(&key).copied().unwrap_or(0);
        ensure!(
            a == sent && c == sent,
            "key {key}: sent {sent}, acknowledged {a}, counted {c}"
        );
    }
    println!(
        "counter through a leader kill: {} acknowledged, {} events, state {}",
        acked.values().sum::<u64>(),
        events.len(),
        infos[0].state_hash
    );
    admin.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_inputs_are_rejected_on_every_replica_and_other_topics_keep_serving() -> Result<()>
{
    let _serial = SERIAL.lock().await;
    let cluster = LocalCluster::start(3, &[]).await?;
    let client = cluster.client().await?;
    client
        .create_topic("hostile", programmable(program("hostile", &[])?))
        .await?;
    client.create_topic("plain", TopicConfig::default()).await?;
    cluster.wait_for_leader("hostile", None).await?;
    cluster.wait_for_leader("plain", None).await?;

    let count_of = |c: &weir_client::Committed| match &c.program {
        Some(ProgramOutcome::Accepted { events: 1, .. }) => Ok(()),
        other => Err(anyhow::anyhow!("expected one event, got {other:?}")),
    };
    count_of(&client.put("hostile", None, "ok").await?)?;
    for (value, reason) in [
        ("loop", "fuel"),
        ("grow", "unreachable"),
        ("panic", "unreachable"),
    ] {
        match client.put("hostile", None, value).await {
            Err(ClientError::Rejected { message, .. }) => {
                ensure!(message.contains(reason), "{value}: {message}");
            }
            other => bail!("{value}: expected a rejection, got {other:?}"),
        }
        // The node and its other topics are fine.
        client.put("plain", None, "still here").await?;
    }
    count_of(&client.put("hostile", None, "ok").await?)?;

    let infos = settled_programs(&cluster, &[1, 2, 3], "hostile").await?;
    for info in &infos {
        ensure!(
            info.inputs_rejected == 3 && info.inputs_accepted == 2,
            "{info:#?}"
        );
        ensure!(info.failure.is_none(), "{info:#?}");
    }
    let hashes: BTreeSet<&str> = infos.iter().map(|i| i.state_hash.as_str()).collect();
    ensure!(hashes.len() == 1, "{infos:#?}");
    // The count resumed from before each rejected input: the second "ok" is count 2.
    let events = read_events(&client, "hostile", infos[0].next_event_offset).await?;
    let values: Vec<&[u8]> = events.iter().map(|e| e.value.as_slice()).collect();
    ensure!(values == [b"1".as_slice(), b"2"], "{values:?}");

    // A module importing WASI is refused at creation, with the import named.
    let wasi = wat::parse_str(
        r#"(module (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32))))"#,
    )?;
    let refused = client
        .create_topic(
            "wasi",
            programmable(ProgramSpec {
                module: wasi,
                config: vec![],
            }),
        )
        .await;
    match refused {
        Err(ClientError::InvalidArgument(message)) => {
            ensure!(
                message.contains("wasi_snapshot_preview1.fd_write"),
                "{message}"
            );
        }
        other => bail!("expected the WASI module to be refused, got {other:?}"),
    }
    client.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_switches_every_replica_at_one_offset_and_survives_a_restart() -> Result<()> {
    let _serial = SERIAL.lock().await;
    const TOPIC: &str = "upgraded";
    let mut cluster = LocalCluster::start(3, &[]).await?;
    let client = cluster.client().await?;
    client
        .create_topic(TOPIC, programmable(program("counter", &[])?))
        .await?;
    cluster.wait_for_leader(TOPIC, None).await?;
    for _ in 0..3 {
        client.put(TOPIC, Some(b"a"), "x").await?;
    }
    let at = client
        .deploy_program(TOPIC, program("counter-v2", &[])?, false)
        .await?;
    for _ in 0..2 {
        client.put(TOPIC, Some(b"a"), "x").await?;
    }
    // Deploying to a plain topic, or a module that is not a program, is refused.
    client.create_topic("plain", TopicConfig::default()).await?;
    let not_programmable = client
        .deploy_program("plain", program("counter", &[])?, false)
        .await;
    ensure!(
        matches!(not_programmable, Err(ClientError::InvalidArgument(_))),
        "{not_programmable:?}"
    );
    let garbage = ProgramSpec {
        module: b"not wasm".to_vec(),
        config: vec![],
    };
    let refused = client.deploy_program(TOPIC, garbage, false).await;
    ensure!(
        matches!(refused, Err(ClientError::InvalidArgument(_))),
        "{refused:?}"
    );

    // A follower killed and restarted replays to the same state.
    let leader = cluster.wait_for_preferred_leader(TOPIC).await?;
    let follower = [1, 2, 3]
        .into_iter()
        .find(|&id| id != leader)
        .expect("a follower");
    cluster.kill9(follower).await?;
    client.put(TOPIC, Some(b"a"), "x").await?;
    cluster.start_node(follower).await?;

    let infos = settled_programs(&cluster, &[1, 2, 3], TOPIC).await?;
    for info in &infos {
        ensure!(
            info.version == 2 && info.deployed_at_offset == Some(at),
            "{info:#?}"
        );
    }
    let hashes: BTreeSet<&str> = infos.iter().map(|i| i.state_hash.as_str()).collect();
    ensure!(hashes.len() == 1, "{infos:#?}");
    let events = read_events(&client, TOPIC, infos[0].next_event_offset).await?;
    let values: Vec<String> = events
        .iter()
        .map(|e| String::from_utf8_lossy(&e.value).into_owned())
        .collect();
    ensure!(
        values
            == [
                "1",
                "2",
                "3",
                r#"{"key":"a","count":4}"#,
                r#"{"key":"a","count":5}"#,
                r#"{"key":"a","count":6}"#,
            ],
        "{values:?}"
    );
    client.close().await;
    Ok(())
}

/// This node's view of `topic` (input log and Raft state).
async fn topic_status_at(
    cluster: &LocalCluster,
    id: u64,
    topic: &str,
) -> Result<weir_client::TopicStatus> {
    let client = cluster.client_of(id).await?;
    let status = client.status_of(cluster.addr(id)).await;
    client.close().await;
    status?
        .topics
        .into_iter()
        .find(|t| t.name == topic)
        .with_context(|| format!("node {id} has no topic {topic}"))
}

/// Every key's count in the event log equals its acknowledged PUTs (all were acknowledged).
fn check_counts(events: &[weir_client::Event], acked: &BTreeMap<String, u64>) -> Result<()> {
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for (i, event) in events.iter().enumerate() {
        ensure!(event.offset == Offset(i as u64), "event offsets are dense");
        let key = String::from_utf8(event.key.clone().unwrap_or_default())?;
        let count: u64 = std::str::from_utf8(&event.value)?.parse()?;
        let seen = counts.entry(key.clone()).or_default();
        *seen += 1;
        ensure!(
            count == *seen,
            "key {key}: event says {count}, expected {seen}"
        );
    }
    ensure!(
        counts == *acked,
        "counts {counts:?} differ from the acknowledged PUTs {acked:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_behind_the_compacted_input_log_catches_up_from_the_program_snapshot()
-> Result<()> {
    let _serial = SERIAL.lock().await;
    const TOPIC: &str = "compacted";
    const KEYS: u64 = 5;
    const PUTS: u64 = 3_000;
    const ROUND: u64 = 200;
    let config_dir = tempfile::tempdir()?;
    let config_path = config_dir.path().join("weir.toml");
    std::fs::write(&config_path, "retention_check_interval_ms = 100\n")?;
    let config_arg = config_path.to_string_lossy().into_owned();
    let mut cluster = LocalCluster::start(3, &["--config", &config_arg]).await?;
    let admin = cluster.client().await?;
    admin
        .create_topic(
            TOPIC,
            TopicConfig {
                // Small segments and frequent checkpoints: many compactions in a short run.
                segment_bytes: Some(4096),
                ..programmable(program("counter", &[("weir.checkpoint.inputs", "50")])?)
            },
        )
        .await?;
    let leader = cluster.wait_for_preferred_leader(TOPIC).await?;
    let behind = (1..=3).find(|id| *id != leader).context("a follower")?;
    cluster.kill9(behind).await?;

    let mut acked: BTreeMap<String, u64> = BTreeMap::new();
    let put_all = |client: Client, from: u64, to: u64| async move {
        let mut producer = client.producer(TOPIC, 64)?;
        let mut handles = Vec::new();
        for i in from..to {
            let key = format!("k{}", i % KEYS);
            handles.push((
                key.clone(),
                producer.send(Some(key.as_bytes()), format!("v{i}")).await?,
            ));
        }
        let mut keys = Vec::new();
        for (key, handle) in handles {
            handle.await?;
            keys.push(key);
        }
        client.close().await;
        anyhow::Ok(keys)
    };
    // Rounds of PUTs, each followed by a durable program snapshot on every live replica: the
    // live replicas compact their input logs below them (whole segments go).
    let live: Vec<u64> = (1..=3).filter(|id| *id != behind).collect();
    let mut sent = 0;
    let mut compacted = false;
    while !compacted {
        ensure!(sent < PUTS, "input logs not compacted after {sent} PUTs");
        let round = put_all(cluster.client().await?, sent, sent + ROUND).await;
        for key in round.with_context(|| format!("PUTs from {sent}"))? {
            *acked.entry(key).or_default() += 1;
        }
        sent += ROUND;
        let deadline = tokio::time::Instant::now() + SETTLE_TIMEOUT;
        loop {
            let mut snapshots = Vec::new();
            for &id in &live {
                let client = cluster.client_of(id).await?;
                let info = client.program_at(cluster.addr(id), TOPIC).await;
                client.close().await;
                snapshots.push(info?.snapshot_offset);
            }
            // Checkpoints fall every 50 inputs: one is within the round's last 50.
            if snapshots
                .iter()
                .all(|s| s.is_some_and(|o| o.0 + 50 >= sent))
            {
                break;
            }
            ensure!(
                tokio::time::Instant::now() < deadline,
                "no durable snapshot after {sent} PUTs: {snapshots:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut starts = Vec::new();
        for &id in &live {
            starts.push(topic_status_at(&cluster, id, TOPIC).await?.start_offset);
        }
        compacted = starts.iter().all(|s| s.0 > 0);
    }

    // The replica that missed everything cannot replay the inputs: it installs the program's
    // snapshot from the leader and continues, identically.
    cluster.start_node(behind).await?;
    let after_catch_up = put_all(cluster.client().await?, sent, sent + 100).await;
    for key in after_catch_up.context("PUTs after the catch-up")? {
        *acked.entry(key).or_default() += 1;
    }
    let infos = settled_programs(&cluster, &[1, 2, 3], TOPIC).await?;
    let hashes: BTreeSet<&str> = infos.iter().map(|i| i.state_hash.as_str()).collect();
    ensure!(hashes.len() == 1, "replicas' states differ: {infos:#?}");
    let caught_up = &infos[(behind - 1) as usize];
    ensure!(
        caught_up.first_event_offset.0 > 0 && caught_up.snapshot_offset.is_some(),
        "node {behind} should hold events from the installed snapshot on: {caught_up:#?}"
    );
    let events = read_events(&admin, TOPIC, infos[0].next_event_offset).await?;
    check_counts(&events, &acked)?;

    // A replica whose own program snapshots are all unreadable recovers from the snapshot
    // of its compacted input log, never from the (missing) inputs below it.
    let now_leading = cluster.wait_for_leader(TOPIC, None).await?;
    let damaged = *live
        .iter()
        .find(|id| **id != now_leading)
        .context("a live follower")?;
    cluster.kill9(damaged).await?;
    let status_group = topic_status_at(&cluster, now_leading, TOPIC)
        .await?
        .raft
        .context("raft status")?
        .group;
    let snapshots_dir = cluster
        .data_dir(damaged)
        .join("groups")
        .join(status_group.to_string())
        .join("program")
        .join("snapshots");
    let mut damaged_files = 0;
    for entry in std::fs::read_dir(&snapshots_dir)? {
        std::fs::write(entry?.path(), b"not a snapshot")?;
        damaged_files += 1;
    }
    ensure!(
        damaged_files > 0,
        "no program snapshot in {}",
        snapshots_dir.display()
    );
    cluster.start_node(damaged).await?;
    let after_recovery = put_all(cluster.client().await?, sent + 100, sent + 200).await;
    for key in after_recovery.context("PUTs after the recovery")? {
        *acked.entry(key).or_default() += 1;
    }
    let infos = settled_programs(&cluster, &[1, 2, 3], TOPIC).await?;
    let hashes: BTreeSet<&str> = infos.iter().map(|i| i.state_hash.as_str()).collect();
    ensure!(
        hashes.len() == 1,
        "replicas' states differ after the recovery: {infos:#?}"
    );
    let events = read_events(&admin, TOPIC, infos[0].next_event_offset).await?;
    check_counts(&events, &acked)?;
    println!(
        "compaction: input logs compacted, node {behind} caught up from a snapshot (events from {}), node {damaged} recovered from its log's snapshot; state {}",
        caught_up.first_event_offset, infos[0].state_hash
    );
    admin.close().await;
    Ok(())
}
