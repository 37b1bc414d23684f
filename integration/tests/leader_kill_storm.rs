//! The leader kill storm: 3 real `weir node` processes, 5 clients × 2,000 PUTs at a steady
//! rate, `kill -9` of the topic's current leader every 2 s for 20 s, each killed node restarted
//! once a new leader is up. Every PUT is acknowledged, and is in the log once, in its
//! producer's order (exactly-once: nothing lost, duplicated or reordered); every replica ends
//! with the same log, and a listener that followed the tail through the storm saw every committed message once, in
//! order. Prints the time from each kill to the next acknowledged PUT (a measurement, not an
//! assertion: these machines are shared).
//!
//! Its own test binary, so no other test competes with it for the CPU.

use anyhow::{Context, Result, bail};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir_client::TopicConfig;
use weir_integration::cluster::LocalCluster;
use weir_integration::workload::{
    Acks, Plan, close_history, follow, identical_replicas, join_producers, spawn_producers,
};

const TOPIC: &str = "storm";
const PRODUCERS: u32 = 5;
const PUTS_PER_PRODUCER: u64 = 2_000;
/// 5 producers × one PUT per 12 ms ≈ 420 PUTs/s offered: 2,000 PUTs each take about 24 s when
/// the cluster keeps up, so writes are in flight at every kill of the 20 s storm.
const PUT_PACE: Duration = Duration::from_millis(12);
const KILL_EVERY: Duration = Duration::from_secs(2);
const STORM: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_kill_storm_commits_every_put_once_in_order_and_replicas_agree() -> Result<()> {
    let mut cluster = LocalCluster::start(3, &[]).await?;
    let admin = cluster.client().await?;
    admin
        .create_topic(TOPIC, TopicConfig::default())
        .await
        .context("create topic")?;
    cluster.wait_for_leader(TOPIC, None).await?;

    // Follows the tail from the start, through every failover, until it is told where the
    // log ends.
    let follower = follow(cluster.client().await?, TOPIC).await?;

    let acks = Arc::new(Acks::default());
    let mut clients = Vec::new();
    for _ in 0..PRODUCERS {
        clients.push(cluster.client().await?);
    }
    let plan = Plan::steady(PUTS_PER_PRODUCER, PUT_PACE);
    let producers = spawn_producers(clients, TOPIC, &plan, &acks);

    let mut kills_at = Vec::new();
    let storm_start = tokio::time::Instant::now();
    let kills = (STORM.as_millis() / KILL_EVERY.as_millis()) as u32;
    for kill in 1..=kills {
        // On the beat; late if the last restart took longer (then at once).
        tokio::time::sleep_until(storm_start + KILL_EVERY * kill).await;
        let leader = cluster.wait_for_leader(TOPIC, None).await?;
        cluster.kill9(leader).await?;
        kills_at.push((leader, Instant::now()));
        cluster.wait_for_leader(TOPIC, Some(leader)).await?;
        cluster.start_node(leader).await?;
    }
    let (mut history, unknown) = join_producers(producers).await?;
    let until = close_history(&cluster, TOPIC, &mut history).await?;
    let log = identical_replicas(&cluster, TOPIC, until).await?;
    let verdict = history.check(&log);
    // Kill -> the first acknowledgement of a PUT sent after the kill; `None` if the producers
    // were done before sending another.
    let times: Vec<(u64, Option<Duration>)> = kills_at
        .iter()
        .map(|(leader, at)| {
            let acked = acks.first_ack_of_a_put_sent_after(*at);
            (*leader, acked.map(|acked| acked - *at))
        })
        .collect();
    println!(
        "leader kill storm: {kills} kills in {:.1} s, acked {} of {} (outcome unknown: {unknown}); {verdict}",
        storm_start.elapsed().as_secs_f64(),
        history.acked_count(),
        history.sent_count(),
    );
    println!("kill -> first acknowledged PUT sent after the kill:");
    for (leader, t) in &times {
        match t {
            Some(t) => println!("  leader {leader} killed: {} ms", t.as_millis()),
            None => println!("  leader {leader} killed: no PUT left to acknowledge"),
        }
    }
    let mut sorted: Vec<Duration> = times.iter().filter_map(|(_, t)| *t).collect();
    sorted.sort_unstable();
    if let (Some(median), Some(max)) = (sorted.get(sorted.len() / 2), sorted.last()) {
        println!(
            "  median {} ms, max {} ms (target < 2000 ms)",
            median.as_millis(),
            max.as_millis()
        );
    }

    // Exactly-once through the storm: every PUT acknowledged once, at one offset, in its
    // producer's order (the producers resend, the topic de-duplicates).
    if !verdict.is_exactly_once() {
        bail!("history check failed: {verdict}");
    }
    follower.check(until, &log).await?;
    admin.close().await;
    Ok(())
}
