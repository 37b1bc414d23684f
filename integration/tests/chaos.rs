//! Chaos runs: 3 real `weir node` processes, each behind a UDP fault proxy that carries both
//! its peers' and its clients' traffic, and 5 producers × 2,000 PUTs at a steady rate while one
//! fault plays out:
//! - lossy links: 10% of the datagrams dropped on every link, the whole run;
//! - the clients cut off from the leader (its peers still reach it) while PUTs are in flight;
//! - a paused leader: SIGSTOP for 5 s, then SIGCONT.
//!
//! Every PUT must be acknowledged once, at one offset, in its producer's order (exactly-once:
//! nothing lost, duplicated or reordered), every replica must end with the same log, and a
//! listener that followed the tail through the fault must have seen each message once, in
//! order. The history checker's counters are printed; every one must be 0.
//!
//! The runs take turns (they share 2 cores): each is bounded by its producers' pace, about
//! 20 s of PUTs, plus the fault's recovery.

use anyhow::{Context, Result, bail};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir_client::{Client, ClientConfig, TopicConfig};
use weir_integration::UdpProxy;
use weir_integration::cluster::{LocalCluster, free_ports, peer_spec};
use weir_integration::workload::{
    Acks, Plan, close_history, follow, identical_replicas, join_producers, spawn_producers,
};

const TOPIC: &str = "chaos";
const PRODUCERS: u32 = 5;
const PUTS_PER_PRODUCER: u64 = 2_000;
/// 5 producers × one PUT per 10 ms = 500 PUTs/s offered: 2,000 PUTs each take about 20 s when
/// the cluster keeps up, so the fault always meets PUTs in flight.
const PUT_PACE: Duration = Duration::from_millis(10);
/// Acknowledged PUTs (of 10,000) before the fault: it strikes mid-run.
const FAULT_AFTER_ACKS: u64 = 2_500;
/// How long the clients are cut off from the leader, and a leader stays paused.
const FAULT_FOR: Duration = Duration::from_secs(5);

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[derive(Clone, Copy, Debug)]
enum Fault {
    /// 10% of the datagrams dropped, both ways, on every proxy.
    Lossy,
    /// The leader's proxy passes only its peers' datagrams for [`FAULT_FOR`].
    ClientsCutOffFromLeader,
    /// SIGSTOP of the leader for [`FAULT_FOR`], then SIGCONT.
    PausedLeader,
}

/// Nodes whose every datagram, from peers and clients alike, goes through its proxy.
struct ProxiedCluster {
    cluster: LocalCluster,
    proxies: Vec<UdpProxy>,
    /// The nodes' own addresses: where peers dial from.
    node_addrs: Vec<SocketAddr>,
}

impl ProxiedCluster {
    async fn start() -> Result<Self> {
        let node_addrs: Vec<SocketAddr> = free_ports(3)?
            .into_iter()
            .map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
            .collect();
        let mut proxies = Vec::new();
        for addr in &node_addrs {
            proxies.push(UdpProxy::start("127.0.0.1:0".parse()?, *addr).await?);
        }
        // Every node knows the others (and so tells clients of them) by their proxies.
        let spec = peer_spec(
            &proxies
                .iter()
                .map(UdpProxy::local_addr)
                .enumerate()
                .collect::<Vec<_>>(),
        );
        let cluster = LocalCluster::start_with(node_addrs.clone(), vec![spec; 3], &[]).await?;
        Ok(Self {
            cluster,
            proxies,
            node_addrs,
        })
    }

    /// A client that reaches the nodes only through their proxies.
    async fn client(&self) -> Result<Client> {
        let addrs = self.proxies.iter().map(UdpProxy::local_addr).collect();
        let config = ClientConfig::with_addrs(addrs, self.cluster.ca_cert());
        Ok(Client::connect(config).await?)
    }

    fn proxy_of(&self, node: u64) -> &UdpProxy {
        &self.proxies[(node - 1) as usize]
    }

    fn pid_of(&self, node: u64) -> Result<u32> {
        self.cluster
            .pids()
            .into_iter()
            .find(|(id, _)| *id == node)
            .map(|(_, pid)| pid)
            .with_context(|| format!("node {node} is not running"))
    }
}

fn signal(pid: u32, signal: &str) -> Result<()> {
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .context("run kill")?;
    if !status.success() {
        bail!("kill -{signal} {pid} failed");
    }
    Ok(())
}

/// Runs 5 producers × 2,000 PUTs through `fault`, then checks the history against every
/// replica's log and the follower's view.
async fn chaos_run(fault: Fault) -> Result<()> {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let cluster = ProxiedCluster::start().await?;
    let admin = cluster.client().await?;
    admin
        .create_topic(TOPIC, TopicConfig::default())
        .await
        .context("create topic")?;
    cluster.cluster.wait_for_leader(TOPIC, None).await?;
    if let Fault::Lossy = fault {
        for proxy in &cluster.proxies {
            proxy.faults().set_drop_probability(0.10);
        }
    }
    let follower = follow(cluster.client().await?, TOPIC).await?;
    let acks = Arc::new(Acks::default());
    let mut clients = Vec::new();
    for _ in 0..PRODUCERS {
        clients.push(cluster.client().await?);
    }
    let plan = Plan::steady(PUTS_PER_PRODUCER, PUT_PACE);
    let producers = spawn_producers(clients, TOPIC, &plan, &acks);

    acks.wait_for(FAULT_AFTER_ACKS)
        .await
        .context("producers stalled before the fault")?;
    // When the fault began: PUTs sent since then are acknowledged once it is overcome.
    let struck;
    match fault {
        Fault::Lossy => struck = Instant::now(),
        Fault::ClientsCutOffFromLeader => {
            let leader = cluster.cluster.wait_for_leader(TOPIC, None).await?;
            let proxy = cluster.proxy_of(leader);
            let before = proxy.stats().client_to_upstream.dropped;
            proxy.faults().only_clients(Some(&cluster.node_addrs));
            struck = Instant::now();
            // The fault's length: there is nothing to wait for but time.
            tokio::time::sleep(FAULT_FOR).await;
            proxy.faults().only_clients(None);
            // The cut met traffic: the clients were sending to the leader.
            let dropped = proxy.stats().client_to_upstream.dropped - before;
            println!("cut off from leader {leader}: {dropped} client datagrams dropped");
            assert!(
                dropped > 0,
                "the clients sent nothing to the leader while cut off"
            );
        }
        Fault::PausedLeader => {
            let leader = cluster.cluster.wait_for_leader(TOPIC, None).await?;
            let pid = cluster.pid_of(leader)?;
            signal(pid, "STOP")?;
            struck = Instant::now();
            // The others elect a leader while it sleeps.
            let next = cluster.cluster.wait_for_leader(TOPIC, Some(leader)).await;
            tokio::time::sleep_until((struck + FAULT_FOR).into()).await;
            signal(pid, "CONT")?;
            println!("leader {leader} paused; {next:?} took over");
            next.context("no other node took over from the paused leader")?;
        }
    }
    let (mut history, unknown) = join_producers(producers).await?;
    if let Fault::Lossy = fault {
        let dropped: u64 = cluster
            .proxies
            .iter()
            .map(|p| {
                let stats = p.stats();
                stats.client_to_upstream.dropped + stats.upstream_to_client.dropped
            })
            .sum();
        println!("lossy links: {dropped} datagrams dropped");
        assert!(dropped > 0, "the lossy links dropped nothing");
    }
    for proxy in &cluster.proxies {
        proxy.faults().reset();
    }
    let until = close_history(&cluster.cluster, TOPIC, &mut history).await?;
    let log = identical_replicas(&cluster.cluster, TOPIC, until).await?;
    let verdict = history.check(&log);
    println!(
        "chaos {fault:?}: acked {} of {} (outcome unknown: {unknown}), first ack of a PUT sent \
         after the fault: {:?}, run {:.1} s; {verdict}",
        history.acked_count(),
        history.sent_count(),
        acks.first_ack_of_a_put_sent_after(struck)
            .map(|t| t - struck),
        started.elapsed().as_secs_f64(),
    );
    if !verdict.is_exactly_once() {
        bail!("history check failed after {fault:?}: {verdict}");
    }
    follower.check(until, &log).await?;
    admin.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lossy_links_lose_duplicate_and_reorder_no_put() -> Result<()> {
    chaos_run(Fault::Lossy).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_cut_off_from_the_leader_mid_put_resend_every_put_exactly_once() -> Result<()> {
    chaos_run(Fault::ClientsCutOffFromLeader).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_loses_duplicates_and_reorders_no_put() -> Result<()> {
    chaos_run(Fault::PausedLeader).await
}
