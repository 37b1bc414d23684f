//! Majority commit with real `weir node` processes: acknowledged PUTs survive leader kills,
//! every replica ends with the same log, and listeners on any replica see it.

use anyhow::{Context, Result, bail};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use weir_client::{Client, ListenFrom, Offset, TopicConfig};
use weir_integration::cluster::LocalCluster;
use weir_integration::history::History;

const WAIT: Duration = Duration::from_secs(90);
const TOPIC: &str = "t";
/// Bound on the PUTs one producer sends in a leader-kill test (it stops earlier when told).
const PER_PRODUCER_MAX: u64 = 1_000_000;

/// Each producer sends PUTs pipelined (window 64) until `stop` is set (at most
/// `PER_PRODUCER_MAX`), recording sends and acks; a PUT whose outcome is unknown (connection
/// lost, timeout) is recorded as sent only, and the producer goes on with the next message.
/// Producing until told to stop, rather than a fixed count, keeps PUTs in flight at every
/// leader kill however fast or slow the machine is.
async fn produce(
    client: Client,
    producer_no: u32,
    stop: Arc<AtomicBool>,
    acks: Arc<AtomicU64>,
    acked_once: Arc<Notify>,
) -> Result<(History, u64)> {
    let mut history = History::default();
    let mut producer = client.producer(TOPIC, 64)?;
    let mut handles = std::collections::VecDeque::new();
    let mut failures = 0u64;
    let mut settle = |value: Vec<u8>,
                      r: Result<weir_client::Committed, weir_client::ClientError>,
                      history: &mut History| {
        match r {
            Ok(c) => {
                history.acked(value, c.offset);
                acks.fetch_add(1, Ordering::Relaxed);
                acked_once.notify_waiters();
            }
            Err(e) => {
                failures += 1;
                tracing::info!(error = %e, "PUT outcome unknown");
            }
        }
    };
    for seq in 0..PER_PRODUCER_MAX {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let value = format!("p{producer_no}-{seq}").into_bytes();
        history.sent(producer_no, seq, value.clone());
        match producer.send(None, value.clone()).await {
            Ok(handle) => handles.push_back((value, handle)),
            Err(e) => settle(value, Err(e), &mut history),
        }
        while handles.len() >= 64 {
            let (value, handle) = handles.pop_front().expect("non-empty");
            let r = handle.await;
            settle(value, r, &mut history);
        }
    }
    for (value, handle) in handles {
        let r = handle.await;
        settle(value, r, &mut history);
    }
    Ok((history, failures))
}

/// Waits (bounded by [`WAIT`]) until at least `target` PUTs have been acknowledged.
async fn wait_for_acks(acks: &AtomicU64, acked_once: &Notify, target: u64) -> Result<()> {
    tokio::time::timeout(WAIT, async {
        loop {
            let notified = acked_once.notified();
            tokio::pin!(notified);
            // Registered before the check, so an ack in between is not missed.
            notified.as_mut().enable();
            if acks.load(Ordering::Relaxed) >= target {
                return;
            }
            notified.await;
        }
    })
    .await?;
    Ok(())
}

/// Reads `TOPIC` from node `id` until an entry at or beyond `until` arrives.
async fn read_back(
    cluster: &LocalCluster,
    id: u64,
    until: Offset,
) -> Result<Vec<(Offset, Vec<u8>)>> {
    let client = cluster.client_of(id).await?;
    let mut listener = client.listen(TOPIC, ListenFrom::Start).await?;
    let mut log = Vec::new();
    tokio::time::timeout(WAIT, async {
        while log
            .last()
            .is_none_or(|(o, _): &(Offset, Vec<u8>)| *o < until)
        {
            let event = listener.next().await.context("listener ended")??;
            log.push((event.offset, event.value));
        }
        anyhow::Ok(())
    })
    .await
    .with_context(|| format!("node {id} did not deliver up to offset {until} in time"))??;
    drop(listener);
    client.close().await;
    Ok(log)
}

/// Kills the topic's leader `rounds` times while 3 producers write, each time once a further
/// `acks_per_round` PUTs have been acknowledged, restarting each killed node before the next
/// kill; then stops the producers and checks every replica's log against their history.
async fn leader_kills_lose_nothing(rounds: usize, acks_per_round: u64) -> Result<()> {
    let mut cluster = LocalCluster::start(3, &[]).await?;
    let admin = cluster.client().await?;
    admin
        .create_topic(TOPIC, TopicConfig::default())
        .await
        .context("create topic")?;
    cluster.wait_for_leader(TOPIC, None).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(AtomicU64::new(0));
    let acked_once = Arc::new(Notify::new());
    let mut producers = Vec::new();
    for p in 0..3u32 {
        let client = cluster.client().await?;
        producers.push(tokio::spawn(produce(
            client,
            p,
            stop.clone(),
            acks.clone(),
            acked_once.clone(),
        )));
    }
    let mut failovers = Vec::new();
    let mut target = 0;
    for _ in 0..rounds {
        // Kill once a further share of the PUTs has been acknowledged.
        target = target.max(acks.load(Ordering::Relaxed)) + acks_per_round;
        wait_for_acks(&acks, &acked_once, target)
            .await
            .context("producers stalled")?;
        // Asked now: leadership may have moved since (back to the preferred replica).
        let leader = cluster.wait_for_leader(TOPIC, None).await?;
        cluster.kill9(leader).await?;
        let killed_at = Instant::now();
        // The time until the next acknowledgement is the failover time a producer sees.
        wait_for_acks(&acks, &acked_once, acks.load(Ordering::Relaxed) + 1)
            .await
            .context("no PUT was acknowledged after the leader was killed")?;
        failovers.push(killed_at.elapsed());
        cluster.wait_for_leader(TOPIC, Some(leader)).await?;
        cluster.start_node(leader).await?;
    }
    stop.store(true, Ordering::Relaxed);
    let mut history = History::default();
    let mut unknown = 0;
    for p in producers {
        let (h, failures) = p.await??;
        history.merge(h);
        unknown += failures;
    }
    let until = history
        .max_acked_offset()
        .context("nothing was acknowledged")?;
    let mut logs = Vec::new();
    for id in 1..=3 {
        logs.push(read_back(&cluster, id, until).await?);
    }
    let verdict = history.check(&logs[0]);
    println!(
        "leader kills: {rounds}, acked {} of {} (outcome unknown: {unknown}); kill -> next ack: {:?}; {verdict}",
        history.acked_count(),
        history.sent_count(),
        failovers
    );
    if !verdict.is_safe() {
        bail!("history check failed: {verdict}");
    }
    for (i, log) in logs.iter().enumerate().skip(1) {
        let common = log.len().min(logs[0].len());
        if log[..common] != logs[0][..common] {
            bail!("replica {} differs from replica 1", i + 1);
        }
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
    let old = cluster.wait_for_leader(TOPIC, None).await?;
    let mut history = History::default();
    for seq in 0..100u64 {
        let value = format!("p0-{seq}").into_bytes();
        history.sent(0, seq, value.clone());
        let c = client.put(TOPIC, None, value.clone()).await?;
        history.acked(value, c.offset);
    }

    isolate(&proxies, &addrs, (old - 1) as usize, true);
    let new = cluster.wait_for_leader(TOPIC, Some(old)).await?;
    assert_ne!(new, old);
    // The majority side takes writes; the client finds the new leader by itself.
    for seq in 100..300u64 {
        let value = format!("p0-{seq}").into_bytes();
        history.sent(0, seq, value.clone());
        let c = client.put(TOPIC, None, value.clone()).await?;
        history.acked(value, c.offset);
    }
    isolate(&proxies, &addrs, (old - 1) as usize, false);

    let until = history.max_acked_offset().context("acked")?;
    let mut logs = Vec::new();
    for id in 1..=3 {
        logs.push(read_back(&cluster, id, until).await?);
    }
    for (i, log) in logs.iter().enumerate() {
        let verdict = history.check(log);
        println!("replica {}: {verdict}", i + 1);
        if !verdict.is_safe() || verdict.reordered != 0 {
            bail!("replica {} history check failed: {verdict}", i + 1);
        }
    }
    assert_eq!(logs[0], logs[1]);
    assert_eq!(
        logs[0], logs[2],
        "the old leader caught up with the same log"
    );
    client.close().await;
    Ok(())
}
