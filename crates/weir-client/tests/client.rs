//! The client against an in-process node: offsets, pipelining, listeners, reconnects, errors.

use anyhow::{Context, Result, bail};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use weir_client::{
    Client, ClientAuth, ClientConfig, ClientError, Event, ListenFrom, Listener, Offset,
    ReconnectPolicy, TopicConfig,
};
use weir_node::{Node, NodeConfig, RunningNode};

/// Bound on every wait: generous, since CI machines are shared.
const WAIT: Duration = Duration::from_secs(60);

async fn start_node_at(dir: &Path, listen: SocketAddr) -> Result<RunningNode> {
    let mut config = NodeConfig::new(dir);
    config.listen = listen;
    Ok(Node::start(config).await?)
}

/// Restarts a node on the address it had. The stopped node's UDP socket closes once the last of
/// its connection tasks ends (a listen stream's task may still be finishing when `shutdown`
/// returns, and nothing signals when it is done), so a bind that finds the address still in use
/// is retried, bounded by [`WAIT`].
async fn restart_node_at(dir: &Path, listen: SocketAddr) -> Result<RunningNode> {
    let started = tokio::time::Instant::now();
    loop {
        match start_node_at(dir, listen).await {
            Err(e) if is_addr_in_use(&e) && started.elapsed() < WAIT => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => return other,
        }
    }
}

fn is_addr_in_use(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<weir_node::StartError>(),
        Some(weir_node::StartError::Bind { source, .. })
            if source.kind() == std::io::ErrorKind::AddrInUse
    )
}

async fn start_node(dir: &Path) -> Result<RunningNode> {
    start_node_at(dir, "127.0.0.1:0".parse()?).await
}

fn client_config(node: &RunningNode) -> ClientConfig {
    ClientConfig::new(node.local_addr(), node.certs().ca_cert.clone())
}

async fn connect(node: &RunningNode) -> Result<Client> {
    Ok(timeout(Client::connect(client_config(node))).await??)
}

async fn timeout<F: std::future::IntoFuture>(f: F) -> Result<F::Output> {
    tokio::time::timeout(WAIT, f)
        .await
        .context("timed out waiting")
}

async fn next_event(listener: &mut Listener) -> Result<Event> {
    match timeout(listener.next()).await? {
        Some(event) => Ok(event?),
        None => bail!("listener ended"),
    }
}

async fn next_events(listener: &mut Listener, n: usize) -> Result<Vec<Event>> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        out.push(next_event(listener).await?);
    }
    Ok(out)
}

fn offsets(events: &[Event]) -> Vec<u64> {
    events.iter().map(|e| e.offset.get()).collect()
}

fn values(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .map(|e| String::from_utf8_lossy(&e.value).into_owned())
        .collect()
}

/// `prefix0`, `prefix1`, ... for `range`.
fn named(prefix: &str, range: std::ops::Range<u64>) -> Vec<String> {
    range.map(|i| format!("{prefix}{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_puts_fill_offsets_1_to_n_after_the_leader_noop_visible_in_list_topics()
-> Result<()> {
    let dir = tempfile::tempdir()?;
    let node = start_node(dir.path()).await?;
    let client = connect(&node).await?;
    client.create_topic("t", TopicConfig::default()).await?;

    let mut previous_ts = 0;
    for i in 0..20u64 {
        let key = format!("k{i}");
        let c = client
            .put("t", Some(key.as_bytes()), format!("v{i}"))
            .await?;
        // One term on one node: offset 0 holds the leader's no-op, then message i at i + 1.
        assert_eq!(c.offset, Offset(i + 1));
        assert!(
            c.timestamp_ms.get() >= previous_ts,
            "timestamps never go back"
        );
        previous_ts = c.timestamp_ms.get();
    }
    let topics = client.list_topics().await?;
    let t = topics
        .iter()
        .find(|t| t.name == "t")
        .context("topic listed")?;
    assert_eq!((t.start_offset, t.next_offset), (Offset(0), Offset(21)));

    let status = client.status().await?;
    let ts = status
        .topics
        .iter()
        .find(|t| t.name == "t")
        .context("in status")?;
    assert_eq!(ts.committed_offset, Offset(21));
    // 20 messages and the no-op: one append per offset, none repeated.
    assert_eq!(ts.appends, 21);
    assert!(status.server_version.starts_with(char::is_numeric));
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_with_window_64_commits_2000_puts_filling_offsets_1_to_n_in_send_order()
-> Result<()> {
    let dir = tempfile::tempdir()?;
    let node = start_node(dir.path()).await?;
    let client = connect(&node).await?;
    client.create_topic("bulk", TopicConfig::default()).await?;

    let mut producer = client.producer("bulk", 64)?;
    assert_eq!(producer.window(), 64);
    let mut handles = Vec::with_capacity(2000);
    for i in 0..2000 {
        handles.push(producer.send(None, format!("m{i}")).await?);
        assert!(producer.in_flight() <= 64, "window respected");
    }
    timeout(producer.flush()).await??;
    assert_eq!(producer.in_flight(), 0);
    let mut got = Vec::with_capacity(2000);
    for h in handles {
        got.push(timeout(h).await??.offset.get());
    }
    // One term on one node: after the leader's no-op at 0, offsets 1..=2000 in send order.
    assert_eq!(
        got,
        (1..=2000).collect::<Vec<u64>>(),
        "every PUT once, in send order"
    );

    // Group commit: far fewer fsyncs than appends when PUTs are pipelined.
    let status = client.status().await?;
    let ts = status
        .topics
        .iter()
        .find(|t| t.name == "bulk")
        .context("in status")?;
    assert_eq!(ts.appends, 2001, "2000 messages and the leader's no-op");
    assert!(ts.fsyncs < 2000, "fsyncs {} for 2000 appends", ts.fsyncs);
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_above_the_nodes_limit_fails_before_it_is_sent_and_numbered() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config = NodeConfig::new(dir.path());
    config.listen = "127.0.0.1:0".parse()?;
    // Below the protocol's hard limit: only the node's Hello tells the client.
    config.max_message_bytes = 1000;
    let node = Node::start(config).await?;
    let client = connect(&node).await?;
    client.create_topic("t", TopicConfig::default()).await?;

    let mut producer = client.producer("t", 8)?;
    let a = timeout(producer.send(None, "a").await?).await??;
    match producer.send(None, vec![0u8; 1001]).await {
        Err(ClientError::TooLarge(why)) => assert!(why.contains("1000"), "{why}"),
        other => bail!("expected TooLarge before sending, got {other:?}"),
    }
    match client.put("t", None, vec![0u8; 1001]).await {
        Err(ClientError::TooLarge(_)) => {}
        other => bail!("expected TooLarge before sending, got {other:?}"),
    }
    // Not numbered: the next PUT is the producer's next one, and nothing was written.
    let c = timeout(producer.send(None, vec![0u8; 1000]).await?).await??;
    assert_eq!(c.offset.get(), a.offset.get() + 1);
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_that_fails_for_good_does_not_block_the_producers_later_puts() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let node = start_node(dir.path()).await?;
    let client = connect(&node).await?;
    client.create_topic("t", TopicConfig::default()).await?;

    let mut producer = client.producer("t", 8)?;
    let first_id = producer.producer_id();
    timeout(producer.send(None, "a").await?).await??;
    client.delete_topic("t").await?;
    match timeout(producer.send(None, "b").await?).await? {
        Err(ClientError::NotFound(_)) => {}
        other => bail!("expected NotFound, got {other:?}"),
    }
    // "b" never committed, so its number is a hole: the producer goes on under a new id,
    // numbering from 0, which the recreated topic (knowing no producer) takes.
    assert_ne!(producer.producer_id(), first_id);
    client.create_topic("t", TopicConfig::default()).await?;
    let c = timeout(producer.send(None, "c").await?).await??;
    assert_eq!(c.offset.get(), 1, "the recreated topic's first message");
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_tasks_on_one_cloned_client_get_distinct_offsets_filling_1_to_n() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let node = start_node(dir.path()).await?;
    let client = connect(&node).await?;
    client
        .create_topic("shared", TopicConfig::default())
        .await?;

    let mut tasks = Vec::new();
    for t in 0..8 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut offsets = Vec::new();
            for i in 0..100 {
                offsets.push(
                    client
                        .put("shared", None, format!("{t}-{i}"))
                        .await?
                        .offset
                        .get(),
                );
            }
            anyhow::Ok(offsets)
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        let offsets = timeout(task).await???;
        assert!(
            offsets.windows(2).all(|w| w[0] < w[1]),
            "per-task order kept"
        );
        all.extend(offsets);
    }
    all.sort_unstable();
    // One term on one node: offset 0 is the leader's no-op, the 800 PUTs fill 1..=800.
    assert_eq!(all, (1..=800).collect::<Vec<u64>>());
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_from_start_sees_every_entry_in_order_then_follows_the_tail() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let node = start_node(dir.path()).await?;
    let client = connect(&node).await?;
    client.create_topic("t", TopicConfig::default()).await?;
    for i in 0..50 {
        client
            .put("t", Some(b"key".as_slice()), format!("v{i}"))
            .await?;
    }
    let mut listener = client.listen("t", ListenFrom::Start).await?;
    let events = next_events(&mut listener, 50).await?;
    // One term on one node: the no-op at offset 0 is skipped, the messages fill 1..=50.
    assert_eq!(offsets(&events), (1..=50).collect::<Vec<u64>>());
    assert_eq!(values(&events), named("v", 0..50));
    assert_eq!(events[7].key.as_deref(), Some(b"key".as_slice()));

    // The tail: entries committed after the listener caught up.
    for i in 50..60 {
        client.put("t", None, format!("v{i}")).await?;
    }
    let events = next_events(&mut listener, 10).await?;
    assert_eq!(offsets(&events), (51..=60).collect::<Vec<u64>>());
    assert_eq!(values(&events), named("v", 50..60));
    assert_eq!(events[0].key, None);
    assert_eq!(listener.last_offset(), Some(Offset(60)));
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_from_end_sees_only_entries_committed_after_listen() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let node = start_node(dir.path()).await?;
    let client = connect(&node).await?;
    client.create_topic("t", TopicConfig::default()).await?;
    for i in 0..5 {
        client.put("t", None, format!("old{i}")).await?;
    }
    let mut listener = client.listen("t", ListenFrom::End).await?;
    for i in 0..3 {
        client.put("t", None, format!("new{i}")).await?;
    }
    let events = next_events(&mut listener, 3).await?;
    // The old messages are at 1..=5 (after the no-op at 0); the new ones follow them.
    assert_eq!(offsets(&events), [6, 7, 8]);
    assert_eq!(values(&events), named("new", 0..3));
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_from_an_offset_starts_exactly_there() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let node = start_node(dir.path()).await?;
    let client = connect(&node).await?;
    client.create_topic("t", TopicConfig::default()).await?;
    for i in 0..10 {
        client.put("t", None, format!("v{i}")).await?;
    }
    let mut listener = client.listen("t", ListenFrom::Offset(Offset(4))).await?;
    // Messages v0..v9 are at 1..=10 (the no-op at 0): offset 4 holds v3.
    let events = next_events(&mut listener, 7).await?;
    assert_eq!(offsets(&events), (4..=10).collect::<Vec<u64>>());
    assert_eq!(values(&events), named("v", 3..10));
    node.shutdown().await;
    Ok(())
}

/// Retries a PUT that raced with the reconnect (the first attempt may still use the old
/// connection if its close has not been noticed yet).
async fn put_retrying(client: &Client, topic: &str, value: String) -> Result<u64> {
    let mut last = None;
    for _ in 0..3 {
        match timeout(client.put(topic, None, value.clone())).await? {
            Ok(c) => return Ok(c.offset.get()),
            Err(e) if e.is_retryable() => last = Some(e),
            Err(e) => return Err(e.into()),
        }
    }
    Err(last.context("no attempt")?.into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_survives_node_restart_on_the_same_port_without_gap_or_repeat() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let node = start_node(dir.path()).await?;
    let addr = node.local_addr();
    let client = connect(&node).await?;
    client.create_topic("t", TopicConfig::default()).await?;
    for i in 0..10 {
        client.put("t", None, format!("before{i}")).await?;
    }
    let mut listener = client.listen("t", ListenFrom::Start).await?;
    let events = next_events(&mut listener, 10).await?;
    // The first term: the no-op at 0, the messages at 1..=10.
    assert_eq!(offsets(&events), (1..=10).collect::<Vec<u64>>());
    assert_eq!(values(&events), named("before", 0..10));

    node.shutdown().await;
    let node = restart_node_at(dir.path(), addr).await?;

    // The client reconnects lazily for requests; the listener on its own.
    let mut after = Vec::new();
    for i in 0..10 {
        after.push(put_retrying(&client, "t", format!("after{i}")).await?);
    }
    // The restarted node leads a new term whose no-op takes the next offset; the PUTs of that
    // one term follow in one run, each once.
    assert!(after[0] > 10, "after the restart: {after:?}");
    assert_eq!(
        after,
        (after[0]..after[0] + 10).collect::<Vec<u64>>(),
        "one term on one node: consecutive offsets"
    );
    let events = next_events(&mut listener, 10).await?;
    assert_eq!(offsets(&events), after, "no gap, no repeat");
    assert_eq!(values(&events), named("after", 0..10));

    // Nothing was repeated in between: the very next event is the next PUT.
    let last = put_retrying(&client, "t", "last".into()).await?;
    assert_eq!(last, after[9] + 1);
    let event = next_event(&mut listener).await?;
    assert_eq!(event.offset, Offset(last));
    assert_eq!(event.value, b"last");
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_fail_while_the_node_is_down_and_the_next_call_reconnects() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let node = start_node(dir.path()).await?;
    let addr = node.local_addr();
    let ca = node.certs().ca_cert.clone();
    let mut config = ClientConfig::new(addr, ca);
    config.connect_timeout = Duration::from_secs(1);
    let client = timeout(Client::connect(config)).await??;
    client.create_topic("t", TopicConfig::default()).await?;
    // Offset 0 is the leader's no-op.
    assert_eq!(client.put("t", None, "a").await?.offset, Offset(1));

    node.shutdown().await;
    let err = timeout(client.put("t", None, "b")).await?.unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::ConnectionLost(_) | ClientError::Connect(_)
        ),
        "{err:?}"
    );
    assert!(err.is_retryable());

    let node = restart_node_at(dir.path(), addr).await?;
    let offset = put_retrying(&client, "t", "c".into()).await?;
    // A new term (its no-op first), so "c" lands somewhere after "a"...
    assert!(offset > 1, "{offset}");
    // ...and the log holds "a" then "c": "b" was not stored, nothing was stored twice.
    let mut listener = client.listen("t", ListenFrom::Start).await?;
    let events = next_events(&mut listener, 2).await?;
    assert_eq!(offsets(&events), [1, offset]);
    assert_eq!(values(&events), ["a", "c"]);
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_errors_map_to_typed_client_errors() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let node = start_node(dir.path()).await?;
    let client = connect(&node).await?;
    client.create_topic("t", TopicConfig::default()).await?;

    let err = client.put("missing", None, "v").await.unwrap_err();
    assert!(matches!(err, ClientError::NotFound(_)), "{err:?}");

    let err = client
        .create_topic("t", TopicConfig::default())
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::AlreadyExists(_)), "{err:?}");

    let err = client.delete_topic("missing").await.unwrap_err();
    assert!(matches!(err, ClientError::NotFound(_)), "{err:?}");

    // Above the node's configured limit (1 MiB by default) but below the protocol's hard cap:
    // the node refuses it.
    let err = client.put("t", None, vec![0u8; 2 << 20]).await.unwrap_err();
    let ClientError::TooLarge(msg) = &err else {
        bail!("expected TooLarge, got {err:?}");
    };
    assert!(
        msg.contains("max_message_bytes"),
        "node's message kept: {msg}"
    );
    // Above the hard cap: refused before sending.
    let err = client
        .put("t", None, vec![0u8; (8 << 20) + 1])
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::TooLarge(_)), "{err:?}");

    let err = client
        .create_topic("bad/name", TopicConfig::default())
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::InvalidArgument(_)), "{err:?}");

    // Offset 0 is the leader's no-op; "v" is the first message.
    assert_eq!(client.put("t", None, "v").await?.offset, Offset(1));
    let err = client
        .listen("t", ListenFrom::Offset(Offset(5)))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::OffsetOutOfRange(_)), "{err:?}");
    let err = client
        .listen("missing", ListenFrom::Start)
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::NotFound(_)), "{err:?}");

    // The connection is still fine after all these errors, and none of them appended anything.
    assert_eq!(client.put("t", None, "w").await?.offset, Offset(2));
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_topic_ends_its_listener_with_not_found() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let node = start_node(dir.path()).await?;
    let client = connect(&node).await?;
    client.create_topic("t", TopicConfig::default()).await?;
    client.put("t", None, "v").await?;
    let mut listener = client.listen("t", ListenFrom::Start).await?;
    next_event(&mut listener).await?;
    client.delete_topic("t").await?;
    match timeout(listener.next()).await? {
        Some(Err(ClientError::NotFound(_))) => {}
        other => bail!("expected NotFound, got {other:?}"),
    }
    assert!(timeout(listener.next()).await?.is_none(), "the stream ends");
    node.shutdown().await;
    Ok(())
}

fn other_ca(dir: &Path) -> Result<PathBuf> {
    Ok(weir_node::certs::init(dir, &[])?.ca_cert)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_refuses_a_node_whose_certificate_another_ca_signed() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let node = start_node(&dir.path().join("node")).await?;
    let wrong_ca = other_ca(&dir.path().join("other"))?;
    let err = timeout(Client::connect(ClientConfig::new(
        node.local_addr(),
        wrong_ca,
    )))
    .await?
    .unwrap_err();
    let ClientError::Connect(msg) = &err else {
        bail!("expected Connect, got {err:?}");
    };
    assert!(msg.contains("certificate"), "{msg}");

    // The wrong server name is refused as well.
    let mut config = client_config(&node);
    config.server_name = "not-the-node.example".into();
    let err = timeout(Client::connect(config)).await?.unwrap_err();
    assert!(matches!(err, ClientError::Connect(_)), "{err:?}");
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_tries_addresses_in_order_until_one_accepts() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let node = start_node(dir.path()).await?;
    // A port nobody serves on: bind a UDP socket to get a free port, then close it.
    let dead = std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?;
    let mut config =
        ClientConfig::with_addrs(vec![dead, node.local_addr()], node.certs().ca_cert.clone());
    config.connect_timeout = Duration::from_millis(500);
    let client = timeout(Client::connect(config)).await??;
    client.create_topic("t", TopicConfig::default()).await?;
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_gives_up_with_an_error_after_the_reconnect_attempt_limit() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let node = start_node(dir.path()).await?;
    let mut config = client_config(&node);
    config.connect_timeout = Duration::from_millis(300);
    config.reconnect = ReconnectPolicy {
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
        max_attempts: Some(2),
        max_elapsed: None,
    };
    let client = timeout(Client::connect(config)).await??;
    client.create_topic("t", TopicConfig::default()).await?;
    client.put("t", None, "v").await?;
    let mut listener = client.listen("t", ListenFrom::Start).await?;
    next_event(&mut listener).await?;

    node.shutdown().await; // and never restarted
    match timeout(listener.next()).await? {
        Some(Err(ClientError::ConnectionLost(msg))) => {
            assert!(msg.contains("gave up after 3 attempts"), "{msg}");
        }
        other => bail!("expected the listener to give up, got {other:?}"),
    }
    assert!(timeout(listener.next()).await?.is_none(), "the stream ends");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_configured_with_a_client_certificate_connects() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let node = start_node(dir.path()).await?;
    let mut config = client_config(&node);
    config.client_auth = Some(ClientAuth {
        cert: node.certs().client_cert.clone(),
        key: node.certs().client_key.clone(),
    });
    let client = timeout(Client::connect(config)).await??;
    client.create_topic("t", TopicConfig::default()).await?;
    node.shutdown().await;
    Ok(())
}
