//! `weir demo`: a node in a temporary directory, a topic, a listener, keyed PUTs, 10,000
//! pipelined PUTs, the node's group-commit counters, and clean-up.

use crate::commands::{spinner, topics_table};
use crate::output::{field, rate, thousands};
use anyhow::{Context, Result, bail, ensure};
use std::time::{Duration, Instant};
use weir_client::{Client, ClientConfig, Event, ListenFrom, Listener, Offset, TopicConfig};
use weir_node::{Node, NodeConfig};

const TOPIC: &str = "demo";
const KEYED: u64 = 10;
const PIPELINED: u64 = 10_000;
const WINDOW: usize = 256;
/// Bound on every wait, so a broken demo fails instead of hanging.
const WAIT: Duration = Duration::from_secs(120);

pub async fn run() -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("weir-demo-")
        .tempdir()
        .context("cannot create a temporary directory")?;
    let dir_path = dir.path().to_path_buf();
    println!("weir demo: a single node in {}", dir_path.display());

    let certs_dir = dir_path.join("certs");
    let certs = weir_node::certs::init(&certs_dir, &[])?;
    println!(
        "  generated a cluster CA and a node certificate in {}",
        certs_dir.display()
    );
    let mut config = NodeConfig::new(dir_path.join("data"));
    config.listen = "127.0.0.1:0".parse()?;
    config.certs_dir = Some(certs_dir);
    let fsync = config.fsync;
    let node = Node::start(config).await.context("cannot start the node")?;
    println!(
        "  started a node on {} (QUIC + TLS 1.3, fsync {fsync})",
        node.local_addr()
    );

    let result = tour(&node, &certs.ca_cert).await;
    println!("\nshutting down:");
    node.shutdown().await;
    println!("  node stopped");
    dir.close()
        .with_context(|| format!("cannot remove {}", dir_path.display()))?;
    println!("  removed {}", dir_path.display());
    result?;
    println!("demo complete");
    Ok(())
}

async fn tour(node: &weir_node::RunningNode, ca: &std::path::Path) -> Result<()> {
    let client = Client::connect(ClientConfig::new(node.local_addr(), ca)).await?;
    client.create_topic(TOPIC, TopicConfig::default()).await?;
    println!("\ncreated topic {TOPIC:?}");

    let mut listener = client.listen(TOPIC, ListenFrom::Start).await?;
    println!("listening to {TOPIC:?} from the start");

    println!("\nput {KEYED} keyed messages (each waits for its commit):");
    for i in 0..KEYED {
        let key = format!("user-{}", i % 3);
        let value = format!("hello #{i}");
        let c = client
            .put(TOPIC, Some(key.as_bytes()), value.clone())
            .await?;
        println!(
            "  key={key:<7} value={value:<9} -> offset {} (timestamp_ms {})",
            c.offset, c.timestamp_ms
        );
    }

    println!("\nthe listener received:");
    for event in receive(&mut listener, Offset(0), KEYED, None).await? {
        println!(
            "  offset {:<2} key={:<7} value={}",
            event.offset,
            event.key.as_deref().map(field).unwrap_or_default(),
            field(&event.value)
        );
    }

    let before = topic_counters(&client).await?;
    println!(
        "\npipelining {} PUTs, {WINDOW} in flight:",
        thousands(PIPELINED)
    );
    let progress = spinner("demo");
    let started = Instant::now();
    let mut producer = client.producer(TOPIC, WINDOW)?;
    let mut handles = Vec::with_capacity(PIPELINED as usize);
    for i in 0..PIPELINED {
        handles.push(producer.send(None, format!("bulk #{i}")).await?);
    }
    let mut offsets = Vec::with_capacity(handles.len());
    for handle in handles {
        let c = tokio::time::timeout(WAIT, handle)
            .await
            .context("a PUT took too long")??;
        offsets.push(c.offset);
        progress.inc(1);
    }
    let elapsed = started.elapsed();
    progress.finish_and_clear();
    let increasing = offsets.windows(2).all(|w| w[0] < w[1]);
    ensure!(increasing, "pipelined PUTs got offsets out of order");
    println!(
        "  {} committed in {:.2?}: {} msg/s, offsets {}..={}",
        thousands(PIPELINED),
        elapsed,
        rate(PIPELINED, elapsed),
        offsets.first().map_or(0, |o| o.get()),
        offsets.last().map_or(0, |o| o.get())
    );
    let after = topic_counters(&client).await?;
    let (appends, fsyncs) = (after.0 - before.0, after.1 - before.1);
    println!(
        "  the node appended {} messages with {} fsyncs: {:.1} messages per fsync (group commit)",
        thousands(appends),
        thousands(fsyncs),
        appends as f64 / fsyncs.max(1) as f64
    );

    let events = receive(&mut listener, Offset(KEYED), PIPELINED, Some("bulk #")).await?;
    println!(
        "  the listener received all {} in order, no gap, no repeat (last offset {})",
        thousands(events.len() as u64),
        events.last().map(|e| e.offset.get()).unwrap_or_default()
    );

    println!("\ntopics:");
    for line in topics_table(&client.list_topics().await?).lines() {
        println!("  {line}");
    }
    drop(listener);
    client.close().await;
    Ok(())
}

/// Takes `count` events from the listener, checking they start at or after `first` with
/// increasing offsets (and, with `prefix`, that their values start with it).
async fn receive(
    listener: &mut Listener,
    first: Offset,
    count: u64,
    prefix: Option<&str>,
) -> Result<Vec<Event>> {
    let mut events: Vec<Event> = Vec::new();
    let mut expected = first;
    tokio::time::timeout(WAIT, async {
        while (events.len() as u64) < count {
            let event = listener.next().await.context("the listener stopped")??;
            if event.offset < expected {
                bail!(
                    "listener expected offset {expected} or later, got {}",
                    event.offset
                );
            }
            if let Some(prefix) = prefix
                && !event.value.starts_with(prefix.as_bytes())
            {
                bail!("unexpected value at offset {}", event.offset);
            }
            expected = event.offset.next();
            events.push(event);
        }
        Ok(())
    })
    .await
    .context("the listener did not deliver in time")??;
    Ok(events)
}

/// (appends, fsyncs) of the demo topic.
async fn topic_counters(client: &Client) -> Result<(u64, u64)> {
    let status = client.status().await?;
    let t = status
        .topics
        .iter()
        .find(|t| t.name == TOPIC)
        .context("the demo topic is missing from the status")?;
    Ok((t.appends, t.fsyncs))
}
