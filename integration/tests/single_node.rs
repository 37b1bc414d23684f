//! End to end against real `weir node` processes: pipelined clients, listeners, kill -9.

use anyhow::{Context, Result, bail};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use weir_client::{Client, PutHandle};
use weir_integration::NodeProcess;
use weir_proto::{Committed, ListenFrom, Offset, TopicConfig};

const WAIT: Duration = Duration::from_secs(120);

/// Reads `count` events from `from` and returns (offset, value) in the order received.
async fn read_events(
    client: &Client,
    topic: &str,
    from: ListenFrom,
    count: usize,
) -> Result<Vec<(Offset, Vec<u8>)>> {
    let mut listener = client.listen(topic, from).await?;
    let mut out = Vec::with_capacity(count);
    tokio::time::timeout(WAIT, async {
        while out.len() < count {
            let e = listener.next().await.context("listener ended")??;
            out.push((e.offset, e.value));
        }
        anyhow::Ok(())
    })
    .await
    .context("listener did not deliver in time")??;
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_pipelined_clients_then_a_listener_from_zero_see_every_ack_once_in_order() -> Result<()>
{
    const CLIENTS: usize = 4;
    const PUTS: usize = 5_000;
    let dir = tempfile::tempdir()?;
    let node = NodeProcess::start(dir.path(), "127.0.0.1:0", &[]).await?;
    node.client()
        .await?
        .create_topic("load", TopicConfig::default())
        .await?;

    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        // One connection per client, as separate producers would have.
        let client = node.client().await?;
        tasks.push(tokio::spawn(async move {
            let mut producer = client.producer("load", 512)?;
            let mut handles = Vec::with_capacity(PUTS);
            for i in 0..PUTS {
                let value = format!("c{c}-{i}").into_bytes();
                handles.push((value.clone(), producer.send(None, value).await?));
            }
            let mut acks = Vec::with_capacity(PUTS);
            for (value, h) in handles {
                acks.push((h.await?.offset, value));
            }
            anyhow::Ok(acks)
        }));
    }
    let mut acked: HashMap<Offset, Vec<u8>> = HashMap::new();
    for t in tasks {
        for (offset, value) in t.await?? {
            if acked.insert(offset, value).is_some() {
                bail!("offset {offset} acknowledged twice");
            }
        }
    }
    assert_eq!(acked.len(), CLIENTS * PUTS);

    let reader = node.client().await?;
    let events = read_events(
        &reader,
        "load",
        ListenFrom::Offset(Offset(0)),
        CLIENTS * PUTS,
    )
    .await?;
    // Offsets strictly increase; offset 0 holds the leader's no-op, not a message.
    for pair in events.windows(2) {
        assert!(pair[0].0 < pair[1].0, "offsets in order");
    }
    for (offset, value) in &events {
        assert_eq!(
            acked.get(offset),
            Some(value),
            "event at {offset} is the acked one"
        );
    }
    // Per-client order is kept: each client's values appear in the order it sent them.
    let mut last_seq: HashMap<String, usize> = HashMap::new();
    for (_, value) in &events {
        let s = String::from_utf8(value.clone())?;
        let (c, i) = s.split_once('-').context("value format")?;
        let i: usize = i.parse()?;
        if let Some(prev) = last_seq.insert(c.to_string(), i) {
            assert!(i > prev, "client {c} reordered: {i} after {prev}");
        }
    }
    node.stop().await
}

/// Every acknowledgement a writer got, with the value it acknowledged.
type Acks = Arc<Mutex<Vec<(Committed, Vec<u8>)>>>;

/// Keeps PUTting until the node dies; records every acknowledgement.
async fn write_until_failure(
    client: Client,
    writer: usize,
    acks: Acks,
    count: watch::Sender<usize>,
) -> Result<()> {
    let mut producer = client.producer("crash", 64)?;
    let (tx, mut rx) = mpsc::channel::<(Vec<u8>, PutHandle)>(128);
    let collector = tokio::spawn(async move {
        while let Some((value, handle)) = rx.recv().await {
            match handle.await {
                Ok(c) => {
                    acks.lock().unwrap().push((c, value));
                    count.send_modify(|n| *n += 1);
                }
                // The node was killed: unacknowledged PUTs may or may not be in the log.
                Err(_) => break,
            }
        }
    });
    for i in 0..1_000_000u64 {
        let value = format!("w{writer}-{i}").into_bytes();
        match producer.send(None, value.clone()).await {
            Ok(h) => {
                if tx.send((value, h)).await.is_err() {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    drop(tx);
    collector.await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_in_the_middle_of_writes_loses_no_acknowledged_put() -> Result<()> {
    const ACKS_BEFORE_KILL: usize = 3_000;
    let dir = tempfile::tempdir()?;
    let node = NodeProcess::start(dir.path(), "127.0.0.1:0", &[]).await?;
    let addr = node.addr;
    node.client()
        .await?
        .create_topic("crash", TopicConfig::default())
        .await?;

    let acks = Arc::new(Mutex::new(Vec::new()));
    let (count_tx, mut count_rx) = watch::channel(0usize);
    let mut writers = Vec::new();
    for w in 0..2 {
        let client = node.client().await?;
        writers.push(tokio::spawn(write_until_failure(
            client,
            w,
            acks.clone(),
            count_tx.clone(),
        )));
    }
    drop(count_tx);
    tokio::time::timeout(WAIT, count_rx.wait_for(|n| *n >= ACKS_BEFORE_KILL))
        .await
        .context("writers too slow")??;
    node.kill9().await?;
    for w in writers {
        tokio::time::timeout(WAIT, w)
            .await
            .context("writer hung")???;
    }
    let acks = std::mem::take(&mut *acks.lock().unwrap());
    assert!(acks.len() >= ACKS_BEFORE_KILL);

    // Restart on the same address and data: recovery truncates only an unacknowledged tail.
    let node = NodeProcess::start(dir.path(), &addr.to_string(), &[]).await?;
    let client = node.client().await?;
    let topics = client.list_topics().await?;
    let next = topics
        .iter()
        .find(|t| t.name == "crash")
        .context("topic gone")?
        .next_offset;
    let max_acked = acks
        .iter()
        .map(|(c, _)| c.offset)
        .max()
        .context("no acks")?;
    assert!(
        next > max_acked,
        "log ends at {next}, but {max_acked} was acknowledged"
    );
    // Every entry up to the last acknowledged one (no-ops hold offsets but no message).
    let mut events: HashMap<Offset, Vec<u8>> = HashMap::new();
    let mut listener = client.listen("crash", ListenFrom::Start).await?;
    tokio::time::timeout(WAIT, async {
        while !events.contains_key(&max_acked) {
            let e = listener.next().await.context("listener ended")??;
            events.insert(e.offset, e.value);
        }
        anyhow::Ok(())
    })
    .await
    .context("listener too slow")??;
    drop(listener);
    for (c, value) in &acks {
        assert_eq!(
            events.get(&c.offset),
            Some(value),
            "acknowledged PUT at {} changed",
            c.offset
        );
    }
    // The node keeps appending after the recovered tail.
    let after = client.put("crash", None, "after restart").await?;
    assert!(after.offset >= next);
    node.stop().await
}
