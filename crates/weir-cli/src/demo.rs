//! `weir demo`: a 3-node cluster in one process, in a temporary directory. A replicated topic,
//! a listener from the start, keyed and pipelined PUTs, the replicas' status, a leader
//! failover under writes, the old leader's catch-up, a check that the listener saw every
//! acknowledged message exactly once, then a programmable topic running the `counter` example
//! (built from `wasm-examples/` on the spot) on every replica, and clean-up.

use crate::commands::{follower_table, replica_status_table, spinner};
use crate::output::{field, rate, thousands};
use anyhow::{Context, Result, anyhow, bail, ensure};
use indicatif::ProgressBar;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};
use weir_client::{
    Client, ClientConfig, Event, ListenFrom, Listener, Offset, ProgramOutcome, ProgramSpec,
    PutHandle, TopicConfig, TopicStatus,
};
use weir_node::{FsyncPolicy, Node, NodeConfig, NodeId, RunningNode, StartError};

const TOPIC: &str = "demo";
const NODES: u64 = 3;
const KEYED: u64 = 10;
const PIPELINED: u64 = 10_000;
const DURING_FAILOVER: u64 = 1_000;
const WINDOW: usize = 256;
/// Bound on every wait, so a broken demo fails instead of hanging.
const WAIT: Duration = Duration::from_secs(120);
/// Pause between two looks at the nodes' status while waiting for a state.
const POLL: Duration = Duration::from_millis(20);
/// The demo's client gives up on connecting to a node after this long. Nodes are local, so a
/// handshake takes milliseconds; a stopped node only costs this much per attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

pub async fn run() -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("weir-demo-")
        .tempdir()
        .context("cannot create a temporary directory")?;
    let dir_path = dir.path().to_path_buf();
    println!(
        "weir demo: a {NODES}-node cluster in one process, in {}",
        dir_path.display()
    );

    let certs_dir = dir_path.join("certs");
    let certs = weir_node::certs::init(&certs_dir, &[])?;
    println!(
        "  generated one cluster CA with node and client certificates in {}",
        certs_dir.display()
    );
    let mut cluster = DemoCluster::new(&dir_path, certs_dir)?;
    let result = match cluster.start_all().await {
        Ok(()) => tour(&mut cluster, &certs.ca_cert).await,
        Err(e) => Err(e),
    };
    println!("\nshutting down:");
    let stopped = cluster.shutdown_all().await;
    println!("  stopped nodes {}", list(&stopped));
    dir.close()
        .with_context(|| format!("cannot remove {}", dir_path.display()))?;
    println!("  removed {}", dir_path.display());
    result?;
    println!("demo complete");
    Ok(())
}

/// The nodes of the demo: ids 1..=NODES on 127.0.0.1 ports reserved up front, each with a
/// data directory of its own and the one certificate directory.
struct DemoCluster {
    peers: BTreeMap<NodeId, SocketAddr>,
    data_dirs: BTreeMap<u64, PathBuf>,
    certs_dir: PathBuf,
    fsync: FsyncPolicy,
    running: BTreeMap<u64, RunningNode>,
}

impl DemoCluster {
    fn new(dir: &Path, certs_dir: PathBuf) -> Result<Self> {
        let ports = reserve_ports(NODES as usize)?;
        let peers: BTreeMap<NodeId, SocketAddr> = (1..=NODES)
            .zip(ports)
            .map(|(id, port)| (NodeId(id), SocketAddr::from(([127, 0, 0, 1], port))))
            .collect();
        let data_dirs = (1..=NODES)
            .map(|id| (id, dir.join(format!("node{id}"))))
            .collect();
        Ok(Self {
            peers,
            data_dirs,
            certs_dir,
            fsync: NodeConfig::new(dir).fsync,
            running: BTreeMap::new(),
        })
    }

    fn addr(&self, id: u64) -> Result<SocketAddr> {
        self.peers
            .get(&NodeId(id))
            .copied()
            .with_context(|| format!("no node {id} in the demo cluster"))
    }

    fn addrs(&self) -> Vec<SocketAddr> {
        self.peers.values().copied().collect()
    }

    /// The nodes running now, with their addresses.
    fn live(&self) -> Vec<(u64, SocketAddr)> {
        self.peers
            .iter()
            .filter(|(id, _)| self.running.contains_key(&id.0))
            .map(|(id, addr)| (id.0, *addr))
            .collect()
    }

    async fn start_all(&mut self) -> Result<()> {
        for id in 1..=NODES {
            self.start(id).await?;
            println!(
                "  started node {id} on {} (data in {})",
                self.addr(id)?,
                self.data_dirs[&id].display()
            );
        }
        println!(
            "  clients and nodes talk QUIC + TLS 1.3 (nodes with mutual TLS); fsync {}",
            self.fsync
        );
        Ok(())
    }

    /// Starts node `id` on its data directory and address. A port just released by a stopped
    /// node may take a moment to be free again: binding is retried (bounded).
    async fn start(&mut self, id: u64) -> Result<()> {
        let mut config = NodeConfig::new(self.data_dirs[&id].clone());
        config.node_id = NodeId(id);
        config.peers = self.peers.clone();
        config.listen = self.addr(id)?;
        config.certs_dir = Some(self.certs_dir.clone());
        config.fsync = self.fsync;
        let started = poll(
            &format!("node {id} to bind {}", config.listen),
            async || match Node::start(config.clone()).await {
                Ok(node) => Ok(Some(node)),
                Err(StartError::Bind { .. }) => Ok(None),
                Err(e) => Err(anyhow!(e).context(format!("cannot start node {id}"))),
            },
        )
        .await?;
        self.running.insert(id, started);
        Ok(())
    }

    /// Stops node `id` as `weir node` does on SIGTERM.
    async fn stop(&mut self, id: u64) -> Result<()> {
        let node = self
            .running
            .remove(&id)
            .with_context(|| format!("node {id} is not running"))?;
        node.shutdown().await;
        Ok(())
    }

    /// Stops every running node at once; returns their ids.
    async fn shutdown_all(&mut self) -> Vec<u64> {
        let nodes = std::mem::take(&mut self.running);
        let ids: Vec<u64> = nodes.keys().copied().collect();
        let mut stopping = tokio::task::JoinSet::new();
        for node in nodes.into_values() {
            stopping.spawn(node.shutdown());
        }
        while stopping.join_next().await.is_some() {}
        ids
    }
}

/// `count` distinct free UDP ports on 127.0.0.1: bound together (so they differ), then
/// released for the nodes to bind.
fn reserve_ports(count: usize) -> Result<Vec<u16>> {
    let sockets = (0..count)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()
        .context("cannot reserve UDP ports on 127.0.0.1")?;
    sockets
        .iter()
        .map(|s| Ok(s.local_addr()?.port()))
        .collect::<std::io::Result<Vec<_>>>()
        .context("cannot read a reserved port")
}

async fn tour(cluster: &mut DemoCluster, ca: &Path) -> Result<()> {
    let mut config = ClientConfig::with_addrs(cluster.addrs(), ca);
    config.connect_timeout = CONNECT_TIMEOUT;
    let client = Client::connect(config).await?;
    let result = story(cluster, &client).await;
    client.close().await;
    result
}

async fn story(cluster: &mut DemoCluster, client: &Client) -> Result<()> {
    let leader = create_topic(cluster, client).await?;
    let listener = client.listen(TOPIC, ListenFrom::Start).await?;
    let mut listening = Listening::spawn(listener);
    println!("listening to {TOPIC:?} from the start, in the background");
    let mut acked = Acked::default();
    write(cluster, client, leader, &mut acked).await?;
    let received = listening.wait_until(acked.last()).await?;
    println!(
        "  the listener has received {} messages so far (last offset {})",
        thousands(received.count),
        received.last.map_or(0, Offset::get)
    );
    print_replicas(cluster, client).await?;
    failover(cluster, client, &mut acked).await?;
    print_replicas(cluster, client).await?;
    listening.wait_until(acked.last()).await?;
    let events = listening.stop().await?;
    check(&acked, &events)?;
    programmable(cluster, client).await
}

const COUNTS: &str = "demo-counts";

/// Step 6: a programmable topic. The `counter` example counts messages per key on every
/// replica; listeners read its events; every replica ends in the same state.
async fn programmable(cluster: &DemoCluster, client: &Client) -> Result<()> {
    println!(
        "
programmable topic {COUNTS:?}: the counter example (wasm-examples/counter) runs on every replica"
    );
    let progress = spinner("building counter.wasm for wasm32-unknown-unknown");
    let module = tokio::task::spawn_blocking(|| weir_wasm_examples::module("counter"))
        .await
        .context("the build task failed")?;
    progress.finish_and_clear();
    let module = module.context("cannot build the counter example")?;
    println!(
        "  built counter.wasm ({} bytes)",
        thousands(module.len() as u64)
    );
    let config = TopicConfig {
        replicas: Some(NODES as u32),
        program: Some(ProgramSpec {
            module,
            config: Vec::new(),
        }),
        ..TopicConfig::default()
    };
    client.create_topic(COUNTS, config).await?;
    let mut sent = 0u64;
    for (key, times) in [("apples", 3u64), ("pears", 2), ("plums", 1)] {
        for _ in 0..times {
            let put = client.put(COUNTS, Some(key.as_bytes()), "1 piece");
            let c = tokio::time::timeout(WAIT, put)
                .await
                .context("a PUT took too long")??;
            if let Some(ProgramOutcome::Accepted {
                first_event,
                events,
            }) = c.program
            {
                println!(
                    "  put key={key:<6} -> input offset {}, {events} event at offset {first_event}",
                    c.offset
                );
            }
            sent += 1;
        }
    }
    let mut listener = client.listen(COUNTS, ListenFrom::Start).await?;
    println!("  its events, as a listener from the start sees them (key = running count):");
    for _ in 0..sent {
        let event = tokio::time::timeout(WAIT, listener.next())
            .await
            .context("the listener took too long")?
            .context("the listener ended")??;
        println!(
            "    offset {}  {} = {}",
            event.offset,
            event.key.as_deref().map(field).unwrap_or_default(),
            field(&event.value)
        );
    }
    drop(listener);
    let infos = poll("every replica's program to catch up", async || {
        let mut infos = Vec::new();
        for (id, addr) in cluster.live() {
            infos.push((id, client.program_at(addr, COUNTS).await?));
        }
        let done = infos
            .iter()
            .all(|(_, info)| info.inputs_accepted == sent && info.failure.is_none());
        Ok(done.then_some(infos))
    })
    .await?;
    for (id, info) in &infos {
        println!(
            "  node {id}: program v{} applied through input offset {}, state sha256 {}",
            info.version,
            info.applied_offset.map_or(0, Offset::get),
            &info.state_hash[..16]
        );
    }
    let first = &infos[0].1.state_hash;
    ensure!(
        infos.iter().all(|(_, info)| &info.state_hash == first),
        "replicas' program states differ"
    );
    println!("  every replica computed the same state");
    Ok(())
}

/// Step 1: a topic replicated on every node, led by its preferred replica. Returns the leader.
async fn create_topic(cluster: &DemoCluster, client: &Client) -> Result<u64> {
    let config = TopicConfig {
        replicas: Some(NODES as u32),
        ..TopicConfig::default()
    };
    client.create_topic(TOPIC, config).await?;
    let replicas = poll("the topic's placement", async || {
        let info = client.cluster().await?;
        Ok(info
            .topics
            .into_iter()
            .find(|t| t.name == TOPIC)
            .map(|t| t.replicas))
    })
    .await?;
    let preferred = *replicas.first().context("the topic has no replicas")?;
    // A new topic's leadership moves to its preferred (first) replica once that one is caught
    // up: wait for it, so the story below keeps one leader until the failover.
    let (leader, status) = wait_for_leader(cluster, client, |id, _| id == preferred).await?;
    println!(
        "\ncreated topic {TOPIC:?} with {} replicas (nodes {}); its leader is node {leader} (term {})",
        replicas.len(),
        list(&replicas),
        term(&status)
    );
    Ok(leader)
}

/// Step 2: keyed PUTs one at a time, then pipelined PUTs with the leader's fsync counters.
async fn write(
    cluster: &DemoCluster,
    client: &Client,
    leader: u64,
    acked: &mut Acked,
) -> Result<()> {
    println!("\nput {KEYED} keyed messages, each acknowledged once committed (on a majority):");
    for i in 0..KEYED {
        let key = format!("user-{}", i % 3);
        let value = format!("hello #{i}");
        let put = client.put(TOPIC, Some(key.as_bytes()), value.clone());
        let c = tokio::time::timeout(WAIT, put)
            .await
            .context("a PUT took too long")??;
        println!(
            "  key={key:<7} value={value:<9} -> offset {} (timestamp_ms {})",
            c.offset, c.timestamp_ms
        );
        acked.add(c.offset, value.into_bytes())?;
    }

    let leader_addr = cluster.addr(leader)?;
    let before = counters(client, leader_addr).await?;
    println!(
        "\npipelining {} PUTs, {WINDOW} in flight:",
        thousands(PIPELINED)
    );
    let started = Instant::now();
    let batch = pipeline(client, "bulk #", PIPELINED).await?;
    let elapsed = started.elapsed();
    let (first, last) = span(&batch);
    acked.extend(batch)?;
    println!(
        "  {} committed in {:.2?}: {} msg/s, offsets {first}..={last}",
        thousands(PIPELINED),
        elapsed,
        rate(PIPELINED, elapsed),
    );
    let after = counters(client, leader_addr).await?;
    let (appends, fsyncs) = (after.0 - before.0, after.1 - before.1);
    println!(
        "  the leader (node {leader}) appended {} entries with {} fsyncs: {:.3} fsyncs per message (group commit)",
        thousands(appends),
        thousands(fsyncs),
        fsyncs as f64 / appends.max(1) as f64
    );
    Ok(())
}

/// Step 4: stop the leader, keep writing, restart the old leader and wait until it caught up.
async fn failover(cluster: &mut DemoCluster, client: &Client, acked: &mut Acked) -> Result<()> {
    let (old_leader, old_status) = wait_for_leader(cluster, client, |_, _| true).await?;
    let old_term = term(&old_status);
    println!("\nfailover: stopping node {old_leader}, the leader of {TOPIC:?} (term {old_term})");
    let stop_started = Instant::now();
    cluster.stop(old_leader).await?;
    println!(
        "  node {old_leader} stopped ({:.0?}); writing on through the same client",
        stop_started.elapsed()
    );
    // The first PUT goes out at once: the client finds the new leader by itself. Meanwhile,
    // watch the surviving nodes to see when one of them takes over.
    let value = "failover #0".to_owned();
    let first_put = async {
        let c = tokio::time::timeout(WAIT, client.put(TOPIC, None, value.clone()))
            .await
            .context("the first PUT after the shutdown took too long")??;
        Ok::<_, anyhow::Error>((c, stop_started.elapsed()))
    };
    let election = async {
        let leader = wait_for_leader(cluster, client, |_, s| term(s) > old_term).await?;
        Ok::<_, anyhow::Error>((leader, stop_started.elapsed()))
    };
    let ((c, first_ack), ((new_leader, new_status), elected)) =
        tokio::try_join!(first_put, election)?;
    acked.add(c.offset, value.into_bytes())?;
    println!(
        "  node {new_leader} became the leader (term {}) {elected:.2?} after the shutdown began",
        term(&new_status)
    );
    println!(
        "  the first PUT after the shutdown was acknowledged {first_ack:.2?} after it began (offset {})",
        c.offset
    );
    let started = Instant::now();
    let batch = pipeline(client, "failover #", DURING_FAILOVER - 1).await?;
    let elapsed = started.elapsed();
    acked.extend(batch)?;
    println!(
        "  {} more committed in {elapsed:.2?} with node {old_leader} down ({} msg/s): 2 of 3 replicas are a majority",
        thousands(DURING_FAILOVER - 1),
        rate(DURING_FAILOVER - 1, elapsed)
    );

    let restart_began = Instant::now();
    cluster.start(old_leader).await?;
    println!(
        "  restarted node {old_leader} on {} with its data dir",
        cluster.addr(old_leader)?
    );
    let target = acked.last();
    let caught_up = poll(&format!("node {old_leader} to catch up"), async || {
        let replicas = replica_statuses(cluster, client).await?;
        let Some((leader, status)) = leader_of(&replicas) else {
            return Ok(None);
        };
        let Some(raft) = &status.raft else {
            return Ok(None);
        };
        // The restarted node has applied every acknowledged message...
        let applied = replicas
            .iter()
            .any(|(id, s)| *id == old_leader && s.committed_offset > target);
        // ...and the leader sees it missing nothing (or it leads again).
        let lag = if leader == old_leader {
            Some((raft.last_index, 0))
        } else {
            raft.followers
                .iter()
                .find(|f| f.node_id == old_leader)
                .map(|f| (f.match_index, f.lag))
        };
        Ok(match lag {
            Some((match_index, 0)) if applied => Some((leader, match_index)),
            _ => None,
        })
    })
    .await?;
    println!(
        "  node {old_leader} caught up {:.2?} after its restart: match index {}, lag 0 (leader: node {})",
        restart_began.elapsed(),
        caught_up.1,
        caught_up.0
    );
    Ok(())
}

/// Step 5: the listener received every acknowledged message exactly once, in order.
fn check(acked: &Acked, events: &[Event]) -> Result<()> {
    let summary = acked.check(events)?;
    println!(
        "\nthe listener received all {} acknowledged messages exactly once, in offset order:",
        thousands(summary.messages)
    );
    println!(
        "  offsets 0..={} hold them; the {} offsets without a message hold Raft no-ops (one per new leader)",
        summary.last, summary.gaps
    );
    let line = |event: &Event| {
        println!(
            "  offset {:<6} key={:<7} value={}",
            event.offset,
            event.key.as_deref().map_or("-".into(), field),
            field(&event.value)
        );
    };
    events.iter().take(2).for_each(line);
    println!("  ...");
    events.last().into_iter().for_each(line);
    Ok(())
}

/// Polls `check` until it returns a value, every [`POLL`], for at most [`WAIT`].
async fn poll<T>(what: &str, mut check: impl AsyncFnMut() -> Result<Option<T>>) -> Result<T> {
    let waited = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(value) = check().await? {
                return Ok::<_, anyhow::Error>(value);
            }
            tokio::time::sleep(POLL).await;
        }
    })
    .await;
    waited.with_context(|| format!("timed out after {WAIT:?} waiting for {what}"))?
}

/// The demo topic as each running node sees it.
async fn replica_statuses(
    cluster: &DemoCluster,
    client: &Client,
) -> Result<Vec<(u64, TopicStatus)>> {
    let mut out = Vec::new();
    for (id, addr) in cluster.live() {
        let status = client
            .status_of(addr)
            .await
            .with_context(|| format!("status of node {id}"))?;
        if let Some(t) = status.topics.into_iter().find(|t| t.name == TOPIC) {
            out.push((id, t));
        }
    }
    Ok(out)
}

/// The replica that is leader in the highest term.
fn leader_of(replicas: &[(u64, TopicStatus)]) -> Option<(u64, &TopicStatus)> {
    replicas
        .iter()
        .filter(|(_, t)| t.raft.as_ref().is_some_and(|r| r.role == "leader"))
        .max_by_key(|(_, t)| term(t))
        .map(|(id, t)| (*id, t))
}

/// Waits for a leader of the demo topic for which `accept(node, status)` holds.
async fn wait_for_leader(
    cluster: &DemoCluster,
    client: &Client,
    accept: impl Fn(u64, &TopicStatus) -> bool,
) -> Result<(u64, TopicStatus)> {
    poll("a leader of the topic", async || {
        let replicas = replica_statuses(cluster, client).await?;
        Ok(leader_of(&replicas)
            .filter(|(id, s)| accept(*id, s))
            .map(|(id, s)| (id, s.clone())))
    })
    .await
}

fn term(status: &TopicStatus) -> u64 {
    status.raft.as_ref().map_or(0, |r| r.term)
}

async fn print_replicas(cluster: &DemoCluster, client: &Client) -> Result<()> {
    let replicas = replica_statuses(cluster, client).await?;
    println!("\nstatus of {TOPIC:?} on each node (indexes are Raft's: offset + 1):");
    for line in replica_status_table(&replicas).lines() {
        println!("  {line}");
    }
    if let Some((leader, status)) = leader_of(&replicas) {
        let followers = follower_table(std::slice::from_ref(status));
        if !followers.is_empty() {
            println!("  followers, as the leader (node {leader}) sees them:");
            for line in followers.lines() {
                println!("    {line}");
            }
            let trailing = status
                .raft
                .as_ref()
                .is_some_and(|r| r.followers.iter().any(|f| f.lag > 0));
            if trailing {
                println!(
                    "  (a PUT is acknowledged once a majority has it: a follower may trail a little)"
                );
            }
        }
    }
    Ok(())
}

/// (appends, fsyncs) of the demo topic on the node at `addr`.
async fn counters(client: &Client, addr: SocketAddr) -> Result<(u64, u64)> {
    let status = client.status_of(addr).await?;
    let t = status
        .topics
        .iter()
        .find(|t| t.name == TOPIC)
        .context("the demo topic is missing from the leader's status")?;
    Ok((t.appends, t.fsyncs))
}

/// Pipelines `count` PUTs (values `{prefix}{i}`) with [`WINDOW`] in flight behind a progress
/// spinner; a separate task awaits the acknowledgements. Returns (offset, value) per PUT.
async fn pipeline(client: &Client, prefix: &str, count: u64) -> Result<Vec<(Offset, Vec<u8>)>> {
    let progress = spinner("demo");
    let result = tokio::time::timeout(WAIT, pipeline_inner(client, prefix, count, &progress))
        .await
        .context("pipelined PUTs took too long");
    progress.finish_and_clear();
    result?
}

async fn pipeline_inner(
    client: &Client,
    prefix: &str,
    count: u64,
    progress: &ProgressBar,
) -> Result<Vec<(Offset, Vec<u8>)>> {
    let mut producer = client.producer(TOPIC, WINDOW)?;
    let (tx, mut rx) = mpsc::channel::<(Vec<u8>, PutHandle)>(WINDOW);
    let bar = progress.clone();
    let collector = tokio::spawn(async move {
        let mut acked = Vec::new();
        while let Some((value, handle)) = rx.recv().await {
            let c = handle.await?;
            acked.push((c.offset, value));
            bar.inc(1);
        }
        Ok::<_, weir_client::ClientError>(acked)
    });
    let sent: Result<()> = async {
        for i in 0..count {
            let value = format!("{prefix}{}", i + 1).into_bytes();
            let handle = producer.send(None, value.clone()).await?;
            if tx.send((value, handle)).await.is_err() {
                break; // the collector stopped at a failed PUT: it says why
            }
        }
        Ok(())
    }
    .await;
    drop(tx);
    let acked = collector
        .await
        .context("the acknowledgement task failed")?
        .context("a PUT failed")?;
    sent?;
    Ok(acked)
}

fn span(batch: &[(Offset, Vec<u8>)]) -> (u64, u64) {
    let offsets = batch.iter().map(|(o, _)| o.get());
    (
        offsets.clone().min().unwrap_or_default(),
        offsets.max().unwrap_or_default(),
    )
}

/// Every acknowledged message by offset.
#[derive(Default)]
struct Acked {
    by_offset: BTreeMap<Offset, Vec<u8>>,
}

struct CheckSummary {
    messages: u64,
    last: u64,
    /// Offsets up to `last` that hold no message.
    gaps: u64,
}

impl Acked {
    fn add(&mut self, offset: Offset, value: Vec<u8>) -> Result<()> {
        if self.by_offset.insert(offset, value).is_some() {
            bail!("two PUTs were acknowledged at offset {offset}");
        }
        Ok(())
    }

    fn extend(&mut self, batch: Vec<(Offset, Vec<u8>)>) -> Result<()> {
        batch.into_iter().try_for_each(|(o, v)| self.add(o, v))
    }

    fn last(&self) -> Offset {
        self.by_offset
            .keys()
            .next_back()
            .copied()
            .unwrap_or(Offset(0))
    }

    /// The listener's events (in the order received) are exactly the acknowledged messages:
    /// each (offset, value) once, offsets strictly increasing. Offsets need not be dense.
    fn check(&self, events: &[Event]) -> Result<CheckSummary> {
        for pair in events.windows(2) {
            ensure!(
                pair[0].offset < pair[1].offset,
                "the listener got offset {} after {}",
                pair[1].offset,
                pair[0].offset
            );
        }
        for event in events {
            match self.by_offset.get(&event.offset) {
                Some(value) if *value == event.value => {}
                Some(_) => bail!(
                    "the listener got another value at offset {} than was acknowledged",
                    event.offset
                ),
                None => bail!(
                    "the listener got offset {}, which no PUT was acknowledged at",
                    event.offset
                ),
            }
        }
        ensure!(
            events.len() == self.by_offset.len(),
            "the listener got {} messages, {} were acknowledged",
            events.len(),
            self.by_offset.len()
        );
        let last = events.last().map_or(0, |e| e.offset.get());
        let messages = events.len() as u64;
        Ok(CheckSummary {
            messages,
            last,
            gaps: (last + 1).saturating_sub(messages),
        })
    }
}

/// What the background listener has received so far.
#[derive(Clone, Debug, Default)]
struct Received {
    count: u64,
    last: Option<Offset>,
    /// Set when the listener failed or ended.
    failed: Option<String>,
}

/// A listener followed by a task of its own, which keeps every event and checks that offsets
/// strictly increase.
struct Listening {
    progress: watch::Receiver<Received>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<Vec<Event>>>>,
}

impl Drop for Listening {
    /// A demo that failed midway does not leave the listener reconnecting to stopped nodes.
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

impl Listening {
    fn spawn(mut listener: Listener) -> Self {
        let (progress_tx, progress) = watch::channel(Received::default());
        let (stop, mut stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut events: Vec<Event> = Vec::new();
            let fail = |why: String| {
                progress_tx.send_modify(|r| r.failed = Some(why.clone()));
                Err(anyhow!(why))
            };
            loop {
                let next = tokio::select! {
                    _ = &mut stop_rx => return Ok(events),
                    next = listener.next() => next,
                };
                let event = match next {
                    Some(Ok(event)) => event,
                    Some(Err(e)) => return fail(format!("the listener failed: {e}")),
                    None => return fail("the listener stopped".into()),
                };
                if let Some(last) = events.last()
                    && event.offset <= last.offset
                {
                    return fail(format!(
                        "the listener got offset {} after {}",
                        event.offset, last.offset
                    ));
                }
                progress_tx.send_modify(|r| {
                    r.count += 1;
                    r.last = Some(event.offset);
                });
                events.push(event);
            }
        });
        Self {
            progress,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Waits (bounded) until the listener has received offset `target` or beyond.
    async fn wait_until(&mut self, target: Offset) -> Result<Received> {
        let reached = tokio::time::timeout(
            WAIT,
            self.progress
                .wait_for(|r| r.failed.is_some() || r.last.is_some_and(|l| l >= target)),
        )
        .await
        .with_context(|| format!("the listener did not reach offset {target} in {WAIT:?}"))?
        .map(|r| r.clone());
        match reached {
            Ok(Received {
                failed: Some(why), ..
            }) => bail!(why),
            Ok(received) => Ok(received),
            Err(_) => bail!("the listener task ended"),
        }
    }

    /// Stops the task and returns every event it received.
    async fn stop(mut self) -> Result<Vec<Event>> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let task = self
            .task
            .take()
            .context("the listener task was already stopped")?;
        tokio::time::timeout(WAIT, task)
            .await
            .context("the listener task did not stop")?
            .context("the listener task failed")?
    }
}

fn list(ids: &[u64]) -> String {
    ids.iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
