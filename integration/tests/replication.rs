//! Majority commit with real `weir node` processes: acknowledged PUTs survive leader kills,
//! every replica ends with the same log, and listeners on any replica see it.

use anyhow::{Context, Result, bail};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use weir_client::TopicConfig;
use weir_integration::cluster::LocalCluster;
use weir_integration::history::History;
use weir_integration::workload::{
    Acks, Plan, close_history, identical_replicas, join_producers, spawn_producers,
};

const WAIT: Duration = Duration::from_secs(90);
const TOPIC: &str = "t";
/// Bound on the PUTs one producer sends in a leader-kill test (it stops earlier when told).
const PER_PRODUCER_MAX: u64 = 1_000_000;

/// Kills the topic's leader `rounds` times while 3 producers write as fast as acks come, each
/// time once a further `acks_per_round` PUTs have been acknowledged, restarting each killed
/// node before the next kill; then stops the producers and checks every replica's log
/// against their history. Producing until told to stop, rather than a fixed count, keeps PUTs
/// in flight at every kill however fast or slow the machine is.
async fn leader_kills_lose_nothing(rounds: usize, acks_per_round: u64) -> Result<()> {
    let mut cluster = LocalCluster::start(3, &[]).await?;
    let admin = cluster.client().await?;
    admin
        .create_topic(TOPIC, TopicConfig::default())
        .await
        .context("create topic")?;
    cluster.wait_for_leader(TOPIC, None).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(Acks::default());
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(cluster.client().await?);
    }
    let plan = Plan {
        count: PER_PRODUCER_MAX,
        stop: stop.clone(),
        pace: None,
    };
    let producers = spawn_producers(clients, TOPIC, &plan, &acks);
    let mut failovers = Vec::new();
    let mut target = 0;
    for _ in 0..rounds {
        // Kill once a further share of the PUTs has been acknowledged.
        target = target.max(acks.get()) + acks_per_round;
        acks.wait_for(target).await.context("producers stalled")?;
        // Asked now: leadership may have moved since (back to the preferred replica).
        let leader = cluster.wait_for_leader(TOPIC, None).await?;
        cluster.kill9(leader).await?;
        let killed_at = Instant::now();
        // The time until the next acknowledgement is the failover time a producer sees.
        acks.wait_for(acks.get() + 1)
            .await
            .context("no PUT was acknowledged after the leader was killed")?;
        failovers.push(killed_at.elapsed());
        cluster.wait_for_leader(TOPIC, Some(leader)).await?;
        cluster.start_node(leader).await?;
    }
    stop.store(true, Ordering::Relaxed);
    let (mut history, unknown) = join_producers(producers).await?;
    let until = close_history(&cluster, TOPIC, &mut history).await?;
    let log = identical_replicas(&cluster, TOPIC, until).await?;
    let verdict = history.check(&log);
    println!(
        "leader kills: {rounds}, acked {} of {} (outcome unknown: {unknown}); kill -> next ack: {:?}; {verdict}",
        history.acked_count(),
        history.sent_count(),
        failovers
    );
    // Exactly-once: every PUT acknowledged, once, in its producer's order.
    if !verdict.is_exactly_once() {
        bail!("history check failed: {verdict}");
    }
    admin.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_puts_survive_a_leader_kill_and_replicas_agree() -> Result<()> {
    leader_kills_lose_nothing(1, 500).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_leader_kills_lose_nothing() -> Result<()> {
    leader_kills_lose_nothing(4, 300).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_admin_works_from_any_node_and_replicas_spread_leaders() -> Result<()> {
    let cluster = LocalCluster::start(3, &[]).await?;
    // Each client knows one node only: admin requests follow NotLeader to the catalog leader.
    for id in 1..=3u64 {
        let client = cluster.client_of(id).await?;
        let name = format!("t{id}");
        client.create_topic(&name, TopicConfig::default()).await?;
        let c = client.put(&name, None, b"hello".to_vec()).await?;
        assert!(c.offset.get() >= 1, "offset 0 holds the leader's no-op");
        client.close().await;
    }
    let client = cluster.client().await?;
    let one = TopicConfig {
        replicas: Some(1),
        ..TopicConfig::default()
    };
    client.create_topic("single", one).await?;
    let too_many = TopicConfig {
        replicas: Some(4),
        ..TopicConfig::default()
    };
    let err = client.create_topic("big", too_many).await.unwrap_err();
    assert!(err.to_string().contains("3 node"), "{err}");
    let info = client.cluster().await?;
    assert_eq!(info.nodes.len(), 3);
    assert_eq!(info.topics.len(), 4);
    let single = info
        .topics
        .iter()
        .find(|t| t.name == "single")
        .context("single")?;
    assert_eq!(single.replicas.len(), 1);
    // Preferred leaders (first replica) are spread: the three 3-replica topics start at
    // three different nodes.
    let mut firsts: Vec<u64> = info
        .topics
        .iter()
        .filter(|t| t.replicas.len() == 3)
        .map(|t| t.replicas[0])
        .collect();
    firsts.sort_unstable();
    assert_eq!(firsts, vec![1, 2, 3]);
    // Deleting goes through the catalog too; every node drops the topic once it applies the
    // deletion (a PUT racing with that may still land in the doomed topic).
    client.delete_topic("t1").await?;
    assert!(
        client
            .cluster()
            .await?
            .topics
            .iter()
            .all(|t| t.name != "t1")
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut ticker = tokio::time::interval(Duration::from_millis(50));
    loop {
        ticker.tick().await;
        match client.put("t1", None, b"x".to_vec()).await {
            Err(weir_client::ClientError::NotFound(_)) => break,
            other if tokio::time::Instant::now() > deadline => {
                bail!("PUT to a deleted topic: {other:?}")
            }
            _ => {}
        }
    }
    client.close().await;
    Ok(())
}

/// Whether node `id` sees itself as the leader of `TOPIC` (asked directly, not through a proxy).
async fn leads(cluster: &LocalCluster, id: u64) -> Result<bool> {
    let client = cluster.client_of(id).await?;
    let status = client.status().await;
    client.close().await;
    Ok(status?
        .topics
        .iter()
        .find(|t| t.name == TOPIC)
        .and_then(|t| t.raft.as_ref())
        .is_some_and(|r| r.role == "leader"))
}

/// Node `i`'s peers reach it through proxy `i`; cutting node `i` off means partitioning its
/// proxy and blocking its own (dialing) address on every other proxy.
fn isolate(
    proxies: &[weir_integration::UdpProxy],
    addrs: &[std::net::SocketAddr],
    i: usize,
    cut: bool,
) {
    for (j, p) in proxies.iter().enumerate() {
        if j == i {
            p.faults().partition(cut);
        } else {
            p.faults().block_client(addrs[i], cut);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_leader_is_replaced_and_catches_up_after_the_partition_heals() -> Result<()> {
    let ports = weir_integration::cluster::free_ports(3)?;
    let addrs: Vec<std::net::SocketAddr> = ports
        .iter()
        .map(|p| std::net::SocketAddr::from(([127, 0, 0, 1], *p)))
        .collect();
    let mut proxies = Vec::new();
    for addr in &addrs {
        proxies.push(weir_integration::UdpProxy::start("127.0.0.1:0".parse()?, *addr).await?);
    }
    let spec = weir_integration::cluster::peer_spec(
        &proxies
            .iter()
            .map(|p| p.local_addr())
            .enumerate()
            .collect::<Vec<_>>(),
    );
    let cluster = LocalCluster::start_with(addrs.clone(), vec![spec; 3], &[]).await?;
    let client = cluster.client().await?;
    client.create_topic(TOPIC, TopicConfig::default()).await?;
    let old = cluster.wait_for_preferred_leader(TOPIC).await?;
    let mut history = History::default();
    for seq in 0..100u64 {
        let value = format!("p0-{seq}").into_bytes();
        history.sent(0, seq, value.clone());
        let c = client.put(TOPIC, None, value.clone()).await?;
        history.acked(value, c.offset);
    }

    // Cut the leader off. Leader placement may have handed leadership to the topic's preferred
    // leader meanwhile (a new term): the node cut off must still lead when the cut is in place,
    // else heal and cut the current leader instead.
    let mut old = old;
    loop {
        isolate(&proxies, &addrs, (old - 1) as usize, true);
        if leads(&cluster, old).await? {
            break;
        }
        isolate(&proxies, &addrs, (old - 1) as usize, false);
        old = cluster.wait_for_leader(TOPIC, None).await?;
    }
    // A client that knows only the old leader writes to it while it is cut off: it cannot
    // reach a majority, so nothing it is sent may be acknowledged while the partition lasts.
    let pinned = cluster.client_of(old).await?;
    let stranded = b"to-the-isolated-leader".to_vec();
    history.sent(1, 0, stranded.clone());
    let stranded_put = tokio::spawn({
        let value = stranded.clone();
        async move { pinned.put(TOPIC, None, value).await }
    });
    let new = cluster.wait_for_leader(TOPIC, Some(old)).await?;
    assert_ne!(new, old);
    // The majority side takes writes; the client finds the new leader by itself. A PUT it
    // still sent to the old leader fails with an unknown outcome (it cannot know whether the
    // old leader appended it); once one PUT is acknowledged, every later one is.
    let mut acked_from = None;
    for seq in 100..300u64 {
        let value = format!("p0-{seq}").into_bytes();
        history.sent(0, seq, value.clone());
        match client.put(TOPIC, None, value.clone()).await {
            Ok(c) => {
                history.acked(value, c.offset);
                acked_from.get_or_insert(seq);
            }
            Err(e) if acked_from.is_none() && e.outcome_unknown() => {
                println!("PUT {seq} during the failover: {e}");
            }
            Err(e) => bail!("PUT {seq} on the majority side (acked since {acked_from:?}): {e}"),
        }
    }
    let stranded_outcome = if stranded_put.is_finished() {
        Some(stranded_put.await?)
    } else {
        stranded_put.abort();
        None
    };
    if let Some(Ok(c)) = &stranded_outcome {
        bail!(
            "the isolated old leader acknowledged a PUT at offset {}",
            c.offset
        );
    }
    println!("PUT to the isolated leader: {stranded_outcome:?} (None: still waiting)");
    isolate(&proxies, &addrs, (old - 1) as usize, false);

    let until = close_history(&cluster, TOPIC, &mut history).await?;
    let log = identical_replicas(&cluster, TOPIC, until).await?;
    let verdict = history.check(&log);
    println!("after the heal: {verdict}");
    if !verdict.is_safe() || verdict.reordered != 0 {
        bail!("history check failed: {verdict}");
    }
    client.close().await;
    Ok(())
}
