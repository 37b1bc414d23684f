//! Cluster routing against scripted fake nodes: leader hints, elections, bounded retries,
//! no resend after a broken connection, producer resends, listeners over offset gaps and
//! redirections, admin calls to the catalog leader, and per-node status.
//!
//! A fake node is a QUIC server with the cluster's node certificate that answers each request
//! by a script (a closure of the request) and records every request but `Hello`.

use anyhow::{Context, Result, bail};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use weir_client::{
    Client, ClientConfig, ClientError, ClusterInfo, Event, LeaderRetryPolicy, ListenFrom, Listener,
    NodeStatus, Offset, ReconnectPolicy, TimestampMs, TopicConfig, TopicPlacement, TopicStatus,
};
use weir_node::certs::CertPaths;
use weir_proto::limits::FRAME_BYTES_MAX;
use weir_proto::{
    ClientFrame, Committed, ErrorCode, ErrorReply, FrameDecoder, LeaderHint, NodeInfo,
    PROTOCOL_VERSION, Reply, Request, ServerFrame, encode_frame,
};

/// Bound on every wait: generous, since CI machines are shared.
const WAIT: Duration = Duration::from_secs(30);

async fn timeout<F: std::future::IntoFuture>(f: F) -> Result<F::Output> {
    tokio::time::timeout(WAIT, f)
        .await
        .context("timed out waiting")
}

/// What a fake node does with one request.
enum Answer {
    /// Sends these replies; the stream stays open.
    Replies(Vec<Reply>),
    /// Sends these replies, then finishes the stream (a node ending a listen stream).
    RepliesThenFinish(Vec<Reply>),
    /// Closes the connection without answering (a node crashing after receiving a PUT).
    CloseConnection,
}

fn reply(reply: Reply) -> Answer {
    Answer::Replies(vec![reply])
}

type Script = Arc<dyn Fn(&Request) -> Answer + Send + Sync>;
type Log = Arc<Mutex<Vec<Request>>>;

/// A bound, not yet answering fake node: its address can be given to other nodes' scripts.
struct Bound {
    endpoint: quinn::Endpoint,
    addr: SocketAddr,
}

struct FakeNode {
    addr: SocketAddr,
    log: Log,
    endpoint: quinn::Endpoint,
}

impl Drop for FakeNode {
    fn drop(&mut self) {
        self.endpoint.close(0u32.into(), b"fake node done");
    }
}

fn server_config(certs: &CertPaths) -> Result<quinn::ServerConfig> {
    let chain = CertificateDer::pem_file_iter(&certs.node_cert)?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(&certs.node_key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    tls.alpn_protocols = vec![weir_proto::ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    Ok(quinn::ServerConfig::with_crypto(Arc::new(quic)))
}

fn bind(certs: &CertPaths) -> Result<Bound> {
    let endpoint = quinn::Endpoint::server(server_config(certs)?, "127.0.0.1:0".parse()?)?;
    let addr = endpoint.local_addr()?;
    Ok(Bound { endpoint, addr })
}

impl Bound {
    fn serve(self, script: impl Fn(&Request) -> Answer + Send + Sync + 'static) -> FakeNode {
        let log: Log = Arc::default();
        tokio::spawn(accept_loop(
            self.endpoint.clone(),
            Arc::new(script),
            log.clone(),
        ));
        FakeNode {
            addr: self.addr,
            log,
            endpoint: self.endpoint,
        }
    }
}

impl FakeNode {
    fn requests(&self) -> Vec<Request> {
        self.log
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn count(&self, pred: impl Fn(&Request) -> bool) -> usize {
        self.requests().iter().filter(|r| pred(r)).count()
    }

    fn puts(&self) -> usize {
        self.count(|r| matches!(r, Request::Put(_)))
    }

    fn listens(&self) -> Vec<ListenFrom> {
        self.requests()
            .into_iter()
            .filter_map(|r| match r {
                Request::Listen { from, .. } => Some(from),
                _ => None,
            })
            .collect()
    }
}

async fn accept_loop(endpoint: quinn::Endpoint, script: Script, log: Log) {
    while let Some(incoming) = endpoint.accept().await {
        let (script, log) = (script.clone(), log.clone());
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            while let Ok((send, recv)) = conn.accept_bi().await {
                tokio::spawn(serve_stream(
                    conn.clone(),
                    send,
                    recv,
                    script.clone(),
                    log.clone(),
                ));
            }
        });
    }
}

async fn serve_stream(
    conn: quinn::Connection,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    script: Script,
    log: Log,
) {
    let mut decoder = FrameDecoder::new(FRAME_BYTES_MAX);
    while let Ok(Some(chunk)) = recv.read_chunk(64 * 1024, true).await {
        decoder.extend(&chunk.bytes);
        while let Ok(Some(ClientFrame { id, request })) = decoder.next::<ClientFrame>() {
            let answer = match &request {
                Request::Hello { .. } => reply(Reply::Hello {
                    protocol_version: PROTOCOL_VERSION,
                    server_version: "fake".into(),
                }),
                other => {
                    log.lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .push(other.clone());
                    script(other)
                }
            };
            let (replies, finish) = match answer {
                Answer::Replies(replies) => (replies, false),
                Answer::RepliesThenFinish(replies) => (replies, true),
                Answer::CloseConnection => {
                    conn.close(0u32.into(), b"fake node crashed");
                    return;
                }
            };
            let mut buf = Vec::new();
            for reply in replies {
                if encode_frame(&ServerFrame { id, reply }, &mut buf).is_err() {
                    return;
                }
            }
            if send.write_all(&buf).await.is_err() {
                return;
            }
            if finish {
                let _ = send.finish();
                return;
            }
        }
    }
}

fn certs(dir: &tempfile::TempDir) -> Result<CertPaths> {
    Ok(weir_node::certs::init(&dir.path().join("certs"), &[])?)
}

/// A client with short retry policies, so that giving up is quick.
fn client_config(certs: &CertPaths, seeds: &[SocketAddr]) -> ClientConfig {
    let mut config = ClientConfig::with_addrs(seeds.to_vec(), certs.ca_cert.clone());
    config.connect_timeout = Duration::from_millis(500);
    config.request_timeout = Duration::from_secs(20);
    config.leader_retry = LeaderRetryPolicy {
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(50),
        max_elapsed: Duration::from_millis(500),
    };
    config.reconnect = ReconnectPolicy {
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(50),
        max_attempts: Some(20),
        max_elapsed: None,
    };
    config
}

async fn connect(certs: &CertPaths, seeds: &[SocketAddr]) -> Result<Client> {
    Ok(timeout(Client::connect(client_config(certs, seeds))).await??)
}

fn committed(offset: u64) -> Reply {
    Reply::Committed(Committed {
        offset: Offset(offset),
        timestamp_ms: TimestampMs(1),
    })
}

fn not_leader(leader: Option<(u64, SocketAddr)>) -> Reply {
    let hint = leader.map(|(node_id, addr)| LeaderHint {
        node_id,
        addr: addr.to_string(),
    });
    Reply::Error(ErrorReply::not_leader("not the leader here", hint))
}

fn error(code: ErrorCode) -> Reply {
    Reply::Error(ErrorReply::new(code, format!("scripted {code}")))
}

fn placement(name: &str, replicas: &[u64], leader: Option<u64>) -> TopicPlacement {
    TopicPlacement {
        name: name.into(),
        group: 100,
        replicas: replicas.to_vec(),
        leader,
    }
}

fn cluster(
    nodes: &[(u64, SocketAddr)],
    metadata_leader: Option<u64>,
    topics: Vec<TopicPlacement>,
) -> Reply {
    Reply::Cluster(ClusterInfo {
        node_id: nodes.first().map_or(0, |n| n.0),
        nodes: nodes
            .iter()
            .map(|&(node_id, addr)| NodeInfo {
                node_id,
                addr: addr.to_string(),
            })
            .collect(),
        metadata_leader,
        topics,
    })
}

fn topic_status(name: &str, committed_offset: u64) -> TopicStatus {
    TopicStatus {
        name: name.into(),
        start_offset: Offset(0),
        next_offset: Offset(committed_offset),
        committed_offset: Offset(committed_offset),
        durable_offset: Offset(committed_offset),
        segments: 1,
        bytes: 0,
        fsyncs: 0,
        appends: 0,
        failure: None,
        raft: None,
    }
}

fn node_status(node_id: u64, topics: Vec<TopicStatus>) -> Reply {
    Reply::Status(NodeStatus {
        server_version: "fake".into(),
        uptime_ms: 1,
        fsync: "always".into(),
        topics,
        node_id,
        peers: Vec::new(),
        metadata: None,
    })
}

fn events(offsets: &[u64]) -> Reply {
    Reply::Events(
        offsets
            .iter()
            .map(|&o| Event {
                offset: Offset(o),
                timestamp_ms: TimestampMs(1),
                key: None,
                value: format!("v{o}").into_bytes(),
            })
            .collect(),
    )
}

async fn next_offsets(listener: &mut Listener, n: usize) -> Result<Vec<u64>> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        match timeout(listener.next()).await? {
            Some(event) => out.push(event?.offset.get()),
            None => bail!("listener ended after {out:?}"),
        }
    }
    Ok(out)
}

/// A port nobody serves on: bind a UDP socket to get a free port, then close it.
fn dead_addr() -> Result<SocketAddr> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?)
}

/// Commits with offsets 0, 1, 2, ... in arrival order.
fn committer() -> impl Fn() -> Reply + Send + Sync {
    let next = AtomicU64::new(0);
    move || committed(next.fetch_add(1, Ordering::Relaxed))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_follows_a_leader_hint_and_then_goes_straight_to_the_leader() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = certs(&dir)?;
    let (a, b) = (bind(&certs)?, bind(&certs)?);
    let b_addr = b.addr;
    let a = a.serve(move |r| match r {
        Request::Put(_) => reply(not_leader(Some((2, b_addr)))),
        _ => reply(error(ErrorCode::BadRequest)),
    });
    let commit = committer();
    let b = b.serve(move |r| match r {
        Request::Put(_) => reply(commit()),
        _ => reply(error(ErrorCode::BadRequest)),
    });

    let client = connect(&certs, &[a.addr]).await?;
    let first = timeout(client.put("t", None, "one")).await??;
    assert_eq!(first.offset, Offset(0));
    assert_eq!((a.puts(), b.puts()), (1, 1), "resent to the named leader");

    let second = timeout(client.put("t", None, "two")).await??;
    assert_eq!(second.offset, Offset(1));
    assert_eq!((a.puts(), b.puts()), (1, 2), "the leader was cached");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_without_a_hint_refreshes_the_cluster_and_reaches_the_elected_leader() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = certs(&dir)?;
    let (a, b) = (bind(&certs)?, bind(&certs)?);
    let nodes = [(1, a.addr), (2, b.addr)];
    let a = a.serve(move |r| match r {
        Request::Put(_) => reply(not_leader(None)),
        Request::Cluster => reply(cluster(
            &nodes,
            Some(1),
            vec![placement("t", &[1, 2], Some(2))],
        )),
        _ => reply(error(ErrorCode::BadRequest)),
    });
    let commit = committer();
    let b = b.serve(move |r| match r {
        Request::Put(_) => reply(commit()),
        _ => reply(error(ErrorCode::BadRequest)),
    });

    let client = connect(&certs, &[a.addr]).await?;
    let c = timeout(client.put("t", None, "v")).await??;
    assert_eq!(c.offset, Offset(0));
    assert_eq!((a.puts(), b.puts()), (1, 1));
    assert!(
        a.count(|r| matches!(r, Request::Cluster)) >= 1,
        "asked for the cluster"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_gives_up_with_not_leader_naming_the_topic_when_no_leader_answers() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = certs(&dir)?;
    let (a, b) = (bind(&certs)?, bind(&certs)?);
    let (a_addr, b_addr) = (a.addr, b.addr);
    let nodes = [(1, a_addr), (2, b_addr)];
    // "electing": an election that never ends. "pingpong": each node names the other.
    let a = a.serve(move |r| match r {
        Request::Put(p) if p.topic == "electing" => reply(not_leader(None)),
        Request::Put(_) => reply(not_leader(Some((2, b_addr)))),
        Request::Cluster => reply(cluster(
            &nodes,
            Some(1),
            vec![placement("electing", &[1, 2], None)],
        )),
        _ => reply(error(ErrorCode::BadRequest)),
    });
    let b = b.serve(move |r| match r {
        Request::Put(_) => reply(not_leader(Some((1, a_addr)))),
        _ => reply(error(ErrorCode::BadRequest)),
    });

    let client = connect(&certs, &[a.addr]).await?;
    for topic in ["electing", "pingpong"] {
        let started = Instant::now();
        let err = timeout(client.put(topic, None, "v")).await?.unwrap_err();
        let ClientError::NotLeader(msg) = &err else {
            bail!("{topic}: expected NotLeader, got {err:?}");
        };
        assert!(msg.contains(&format!("topic {topic:?}")), "{msg}");
        assert!(msg.contains("no leader"), "{msg}");
        assert!(err.is_retryable());
        // max_elapsed is 500 ms; the request timeout (20 s) is far away.
        assert!(started.elapsed() < Duration::from_secs(10), "bounded");
    }
    assert!(a.puts() >= 3, "retried: {} PUTs to A", a.puts());
    assert!(b.puts() >= 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_not_found_is_final_only_when_the_cluster_lacks_the_topic() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = certs(&dir)?;
    let a = bind(&certs)?;
    let nodes = [(1, a.addr)];
    let fresh_puts = AtomicU64::new(0);
    let a = a.serve(move |r| match r {
        // The first PUT reaches the node before it applied the topic's creation.
        Request::Put(p) if p.topic == "fresh" => {
            if fresh_puts.fetch_add(1, Ordering::Relaxed) == 0 {
                reply(error(ErrorCode::NotFound))
            } else {
                reply(committed(0))
            }
        }
        Request::Put(_) => reply(error(ErrorCode::NotFound)),
        Request::Cluster => reply(cluster(
            &nodes,
            Some(1),
            vec![placement("fresh", &[1], Some(1))],
        )),
        _ => reply(error(ErrorCode::BadRequest)),
    });

    let client = connect(&certs, &[a.addr]).await?;
    let c = timeout(client.put("fresh", None, "v")).await??;
    assert_eq!(c.offset, Offset(0));
    assert_eq!(a.puts(), 2, "resent once the cluster listed the topic");

    let err = timeout(client.put("missing", None, "v"))
        .await?
        .unwrap_err();
    assert!(matches!(err, ClientError::NotFound(_)), "{err:?}");
    assert_eq!(a.puts(), 3, "not resent: the cluster lacks the topic");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_whose_connection_breaks_after_sending_is_not_resent() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = certs(&dir)?;
    let (a, b) = (bind(&certs)?, bind(&certs)?);
    let a = a.serve(|r| match r {
        Request::Put(_) => Answer::CloseConnection,
        _ => reply(error(ErrorCode::BadRequest)),
    });
    let b = b.serve(|r| match r {
        Request::Put(_) => reply(committed(0)),
        _ => reply(error(ErrorCode::BadRequest)),
    });

    let client = connect(&certs, &[a.addr, b.addr]).await?;
    let err = timeout(client.put("t", None, "v")).await?.unwrap_err();
    assert!(matches!(err, ClientError::ConnectionLost(_)), "{err:?}");
    assert_eq!(
        (a.puts(), b.puts()),
        (1, 0),
        "the outcome is unknown: no resend"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_leader_is_skipped_for_another_node_before_anything_is_sent() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = certs(&dir)?;
    let dead = dead_addr()?;
    let a = bind(&certs)?;
    let puts = AtomicU64::new(0);
    // Names a leader that is down, then (the election over) leads itself.
    let a = a.serve(move |r| match r {
        Request::Put(_) if puts.fetch_add(1, Ordering::Relaxed) == 0 => {
            reply(not_leader(Some((2, dead))))
        }
        Request::Put(_) => reply(committed(0)),
        _ => reply(error(ErrorCode::BadRequest)),
    });

    let client = connect(&certs, &[a.addr]).await?;
    let c = timeout(client.put("t", None, "v")).await??;
    assert_eq!(c.offset, Offset(0));
    assert_eq!(a.puts(), 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_pipelines_100_puts_through_a_leader_change_and_all_commit() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = certs(&dir)?;
    let (a, b) = (bind(&certs)?, bind(&certs)?);
    let b_addr = b.addr;
    let a = a.serve(move |r| match r {
        Request::Put(_) => reply(not_leader(Some((2, b_addr)))),
        _ => reply(error(ErrorCode::BadRequest)),
    });
    let commit = committer();
    let b = b.serve(move |r| match r {
        Request::Put(_) => reply(commit()),
        _ => reply(error(ErrorCode::BadRequest)),
    });

    let client = connect(&certs, &[a.addr]).await?;
    let mut producer = client.producer("t", 16)?;
    let mut handles = Vec::with_capacity(100);
    for i in 0..100 {
        handles.push(timeout(producer.send(None, format!("m{i}"))).await??);
        assert!(producer.in_flight() <= 16, "window respected");
    }
    timeout(producer.flush()).await??;
    assert_eq!(
        producer.in_flight(),
        0,
        "resends stay in the window until answered"
    );
    let mut offsets = BTreeSet::new();
    for handle in handles {
        offsets.insert(timeout(handle).await??.offset.get());
    }
    assert_eq!(offsets, (0..100).collect(), "every PUT committed once");

    let values: BTreeSet<Vec<u8>> = b
        .requests()
        .into_iter()
        .filter_map(|r| match r {
            Request::Put(p) => Some(p.value),
            _ => None,
        })
        .collect();
    assert_eq!(b.puts(), 100, "each PUT reached the leader exactly once");
    assert_eq!(values.len(), 100);
    assert!(a.puts() >= 1, "the first PUTs went to the old node");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_accepts_offset_gaps_and_resumes_after_the_last_offset_without_repeat()
-> Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = certs(&dir)?;
    let (a, b) = (bind(&certs)?, bind(&certs)?);
    let nodes = [(1, a.addr), (2, b.addr)];
    // A does not host "t"; B leads it.
    let a = a.serve(move |r| match r {
        Request::Cluster => reply(cluster(
            &nodes,
            Some(1),
            vec![placement("t", &[2], Some(2))],
        )),
        Request::Status => reply(node_status(1, Vec::new())),
        Request::Listen { .. } => reply(not_leader(Some((2, nodes[1].1)))),
        _ => reply(error(ErrorCode::BadRequest)),
    });
    let listens = AtomicU64::new(0);
    let b = b.serve(move |r| match r {
        Request::Status => reply(node_status(2, vec![topic_status("t", 6)])),
        Request::Cluster => reply(cluster(
            &nodes,
            Some(1),
            vec![placement("t", &[2], Some(2))],
        )),
        // The first stream ends after offset 5; the second repeats 5 before 7.
        Request::Listen { .. } if listens.fetch_add(1, Ordering::Relaxed) == 0 => {
            Answer::RepliesThenFinish(vec![events(&[0, 2]), events(&[5])])
        }
        Request::Listen { .. } => reply(events(&[5, 7])),
        _ => reply(error(ErrorCode::BadRequest)),
    });

    let client = connect(&certs, &[a.addr]).await?;
    let mut listener = timeout(client.listen("t", ListenFrom::Start)).await??;
    assert_eq!(next_offsets(&mut listener, 4).await?, [0, 2, 5, 7]);
    assert_eq!(listener.last_offset(), Some(Offset(7)));
    assert_eq!(
        b.listens(),
        [ListenFrom::Start, ListenFrom::Offset(Offset(6))],
        "resumed at last + 1"
    );
    assert!(a.listens().is_empty(), "attached to the replica directly");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_from_end_resolves_on_a_replica_and_follows_a_not_leader_hint() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = certs(&dir)?;
    let (a, b) = (bind(&certs)?, bind(&certs)?);
    let nodes = [(1, a.addr), (2, b.addr)];
    // A (the node the client is connected to) hosts neither topic. Its layout places "t" on
    // B; "u" is missing from it (A lags), but A's status still lists "u", so the listener on
    // "u" starts on A, which names B.
    let a = a.serve(move |r| match r {
        Request::Cluster => reply(cluster(
            &nodes,
            Some(1),
            vec![placement("t", &[2], Some(2))],
        )),
        Request::Status => reply(node_status(1, vec![topic_status("u", 3)])),
        Request::Listen { .. } => reply(not_leader(Some((2, nodes[1].1)))),
        _ => reply(error(ErrorCode::BadRequest)),
    });
    let b = b.serve(move |r| match r {
        Request::Status => reply(node_status(2, vec![topic_status("t", 7)])),
        Request::Listen { topic, .. } if topic == "t" => reply(events(&[7])),
        Request::Listen { .. } => reply(events(&[3])),
        _ => reply(error(ErrorCode::BadRequest)),
    });

    let client = connect(&certs, &[a.addr]).await?;
    // "t": End is B's committed offset (A's status does not list "t").
    let mut listener = timeout(client.listen("t", ListenFrom::End)).await??;
    assert_eq!(next_offsets(&mut listener, 1).await?, [7]);
    assert_eq!(b.listens(), [ListenFrom::Offset(Offset(7))]);

    // "u": attached to A (the layout does not place it), redirected to B.
    let mut listener = timeout(client.listen("u", ListenFrom::End)).await??;
    assert_eq!(next_offsets(&mut listener, 1).await?, [3]);
    assert_eq!(a.listens(), [ListenFrom::Offset(Offset(3))]);
    assert_eq!(
        b.listens(),
        [ListenFrom::Offset(Offset(7)), ListenFrom::Offset(Offset(3))]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_calls_are_redirected_to_the_catalog_leader_and_it_is_cached() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = certs(&dir)?;
    let (a, b) = (bind(&certs)?, bind(&certs)?);
    let b_addr = b.addr;
    let is_admin = |r: &Request| {
        matches!(
            r,
            Request::CreateTopic { .. }
                | Request::DeleteTopic { .. }
                | Request::AddNode { .. }
                | Request::RemoveNode { .. }
        )
    };
    let a = a.serve(move |r| {
        if is_admin(r) {
            reply(not_leader(Some((2, b_addr))))
        } else {
            reply(error(ErrorCode::BadRequest))
        }
    });
    let b = b.serve(|r| match r {
        Request::CreateTopic { .. } => reply(Reply::TopicCreated),
        Request::DeleteTopic { .. } => reply(Reply::TopicDeleted),
        Request::AddNode { .. } | Request::RemoveNode { .. } => reply(Reply::ClusterChanged),
        _ => reply(error(ErrorCode::BadRequest)),
    });

    let client = connect(&certs, &[a.addr]).await?;
    timeout(client.create_topic("t", TopicConfig::default())).await??;
    assert_eq!((a.count(is_admin), b.count(is_admin)), (1, 1));
    timeout(client.add_node(4, "127.0.0.1:7004")).await??;
    timeout(client.remove_node(4)).await??;
    timeout(client.delete_topic("t")).await??;
    assert_eq!(
        (a.count(is_admin), b.count(is_admin)),
        (1, 4),
        "straight to the cached catalog leader"
    );
    let requests = b.requests();
    assert!(requests.contains(&Request::AddNode {
        node_id: 4,
        addr: "127.0.0.1:7004".into()
    }));
    assert!(requests.contains(&Request::RemoveNode { node_id: 4 }));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_and_statuses_report_every_member() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = certs(&dir)?;
    let (a, b) = (bind(&certs)?, bind(&certs)?);
    let nodes = [(1, a.addr), (2, b.addr), (3, dead_addr()?)];
    let a = a.serve(move |r| match r {
        Request::Cluster => reply(cluster(&nodes, Some(2), Vec::new())),
        Request::Status => reply(node_status(1, Vec::new())),
        _ => reply(error(ErrorCode::BadRequest)),
    });
    let b = b.serve(move |r| match r {
        Request::Cluster => reply(cluster(&nodes, Some(2), Vec::new())),
        Request::Status => reply(node_status(2, vec![topic_status("t", 1)])),
        _ => reply(error(ErrorCode::BadRequest)),
    });

    let client = connect(&certs, &[a.addr]).await?;
    let info = timeout(client.cluster()).await??;
    assert_eq!(info.nodes.len(), 3);
    assert_eq!(info.metadata_leader, Some(2));
    assert_eq!(
        timeout(client.status()).await??.node_id,
        1,
        "the connected node"
    );
    assert_eq!(timeout(client.status_of(b.addr)).await??.node_id, 2);

    let statuses = timeout(client.statuses()).await??;
    let ids: Vec<u64> = statuses.iter().map(|(n, _)| n.node_id).collect();
    assert_eq!(ids, [1, 2, 3], "in the cluster's order");
    assert_eq!(statuses[0].1.as_ref().map(|s| s.node_id), Ok(1));
    assert_eq!(statuses[1].1.as_ref().map(|s| s.topics.len()), Ok(1));
    let Err(err) = &statuses[2].1 else {
        bail!("node 3 is down, got {:?}", statuses[2].1);
    };
    assert!(matches!(err, ClientError::Connect(_)), "{err:?}");
    // The catalog leader (B) answered the second Cluster request.
    assert!(b.count(|r| matches!(r, Request::Cluster)) >= 1);
    assert_eq!(a.count(|r| matches!(r, Request::Cluster)), 1);
    Ok(())
}
