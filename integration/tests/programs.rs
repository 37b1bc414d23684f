//! Programmable topics end to end, on real `weir node` processes: the example programs built
//! from `wasm-examples/` by this test run, three replicas each.

use anyhow::{Context, Result, bail, ensure};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use weir_client::{
    Client, ClientError, ListenFrom, Offset, ProgramInfo, ProgramOutcome, ProgramSpec, TopicConfig,
};
use weir_integration::cluster::{LocalCluster, SETTLE_TIMEOUT};

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
            let client = cluster.client_of(id).await?;
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
async fn counter_counts_match_the_acknowledged_inputs_through_a_leader_kill() -> Result<()> {
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

    let mut acked: BTreeMap<String, u64> = BTreeMap::new();
    let mut unknown: BTreeMap<String, u64> = BTreeMap::new();
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
            Err(e) if e.outcome_unknown() => *unknown.entry(key.clone()).or_default() += 1,
            Err(ClientError::NotLeader(_) | ClientError::Busy(_)) => {}
            Err(e) => bail!("unexpected PUT error: {e}"),
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
    // The counts equal the acknowledged inputs, plus at most those whose outcome is unknown.
    for key in (0..KEYS).map(|k| format!("k{k}")) {
        let a = acked.get(&key).copied().unwrap_or(0);
        let u = unknown.get(&key).copied().unwrap_or(0);
        let c = counts.get(&key).copied().unwrap_or(0);
        ensure!(
            a <= c && c <= a + u,
            "key {key}: counted {c}, acknowledged {a}, unknown {u}"
        );
    }
    println!(
        "counter through a leader kill: {} acknowledged, {} unknown, {} events, state {}",
        acked.values().sum::<u64>(),
        unknown.values().sum::<u64>(),
        events.len(),
        infos[0].state_hash
    );
    admin.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_inputs_are_rejected_on_every_replica_and_other_topics_keep_serving() -> Result<()>
{
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
    let leader = cluster.wait_for_leader(TOPIC, None).await?;
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
