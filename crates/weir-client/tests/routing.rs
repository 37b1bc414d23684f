//! Cluster routing against scripted fake nodes: leader hints, elections, bounded retries,
//! no resend after a broken connection, producer resends, listeners over offset gaps and
//! redirections, admin calls to the catalog leader, per-node status, and failover: the leader
//! check on slow PUTs, unreachable leaders and lost nodes passed over.
//!
//! A fake node is a QUIC server with the cluster's node certificate that answers each request
//! by a script (a closure of the request) and records every request but `Hello`.

use anyhow::{Context, Result, bail};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, mpsc};
use weir_client::{
    Client, ClientConfig, ClientError, ClusterInfo, Event, LeaderRetryPolicy, ListenFrom, Listener,
    NodeStatus, Offset, ReconnectPolicy, TimestampMs, TopicConfig, TopicPlacement, TopicStatus,
};
use weir_node::certs::CertPaths;
use weir_proto::limits::FRAME_BYTES_MAX;
use weir_proto::{
    ClientFrame, Committed, ErrorCode, ErrorReply, FrameDecoder, LeaderHint, NodeInfo,
    PROTOCOL_VERSION, PutBatch, PutResult, Reply, Request, ServerFrame, encode_frame,
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
    /// Sends the replies this resolves to, once it does (a slow node); the stream's other
    /// requests are answered meanwhile.
    Later(Pin<Box<dyn Future<Output = Vec<Reply>> + Send>>),
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
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    // The client's idle timeout decides (tests set it beyond their own bounds).
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(None);
    config.transport_config(Arc::new(transport));
    Ok(config)
}

fn bind(certs: &CertPaths) -> Result<Bound> {
    let endpoint = quinn::Endpoint::server(server_config(certs)?, "127.0.0.1:0".parse()?)?;
    let addr = endpoint.local_addr()?;
    Ok(Bound { endpoint, addr })
}

impl Bound {
    /// Answers by `script`, which sees a batch of one PUT (what `Client::put` sends) as a
    /// lone `Put`.
    fn serve(self, script: impl Fn(&Request) -> Answer + Send + Sync + 'static) -> FakeNode {
        self.serve_as(true, script)
    }

    /// Answers by `script`, which sees every batch as it came (a producer's tests).
    fn serve_batches(
        self,
        script: impl Fn(&Request) -> Answer + Send + Sync + 'static,
    ) -> FakeNode {
        self.serve_as(false, script)
    }

    fn serve_as(
        self,
        lone_as_put: bool,
        script: impl Fn(&Request) -> Answer + Send + Sync + 'static,
    ) -> FakeNode {
        let log: Log = Arc::default();
        tokio::spawn(accept_loop(
            self.endpoint.clone(),
            Arc::new(script),
            log.clone(),
            lone_as_put,
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

    /// Messages received in `PutBatch` requests (a batch of one is logged as a `Put`).
    fn batched_puts(&self) -> usize {
        self.requests()
            .iter()
            .map(|r| match r {
                Request::PutBatch(b) => b.messages.len(),
                Request::Put(_) => 1,
                _ => 0,
            })
            .sum()
    }

    /// The producer id and sequence number of every lone PUT received, in order.
    fn put_ids(&self) -> Vec<(weir_proto::ProducerId, weir_proto::Seq)> {
        self.requests()
            .iter()
            .filter_map(|r| match r {
                Request::Put(p) => Some((p.producer_id, p.seq)),
                _ => None,
            })
            .collect()
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

async fn accept_loop(endpoint: quinn::Endpoint, script: Script, log: Log, lone_as_put: bool) {
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
                    lone_as_put,
                ));
            }
        });
    }
}

async fn serve_stream(
    conn: quinn::Connection,
    send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    script: Script,
    log: Log,
    lone_as_put: bool,
) {
    let send = Arc::new(tokio::sync::Mutex::new(send));
    let mut decoder = FrameDecoder::new(FRAME_BYTES_MAX);
    while let Ok(Some(chunk)) = recv.read_chunk(64 * 1024, true).await {
        decoder.extend(&chunk.bytes);
        while let Ok(Some(ClientFrame { id, request })) = decoder.next::<ClientFrame>() {
            let answer = match &request {
                Request::Hello { .. } => reply(Reply::Hello {
                    protocol_version: PROTOCOL_VERSION,
                    server_version: "fake".into(),
                    max_message_bytes: weir_proto::limits::VALUE_BYTES_DEFAULT as u64,
                    max_key_bytes: weir_proto::limits::KEY_BYTES_DEFAULT as u64,
                }),
                other => {
                    // A lone PUT goes out as a batch of one: scripts see it as a `Put` (its
                    // answer is turned back into the batch's).
                    let (seen, lone) = match as_lone_put(other).filter(|_| lone_as_put) {
                        Some(put) => (put, true),
                        None => (other.clone(), false),
                    };
                    log.lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .push(seen.clone());
                    let answer = script(&seen);
                    if lone {
                        as_batch_answer(answer)
                    } else {
                        answer
                    }
                }
            };
            let (replies, finish) = match answer {
                Answer::Replies(replies) => (replies, false),
                Answer::RepliesThenFinish(replies) => (replies, true),
                Answer::Later(replies) => {
                    // Answered when ready; the stream goes on meanwhile.
                    let send = send.clone();
                    tokio::spawn(async move {
                        let replies = replies.await;
                        write_replies(&send, id, replies, false).await;
                    });
                    continue;
                }
                Answer::CloseConnection => {
                    conn.close(0u32.into(), b"fake node crashed");
                    return;
                }
            };
            if !write_replies(&send, id, replies, finish).await || finish {
                return;
            }
        }
    }
}

/// A batch of one PUT, as a lone `Put`.
fn as_lone_put(request: &Request) -> Option<Request> {
    let Request::PutBatch(batch) = request else {
        return None;
    };
    let [message] = batch.messages.as_slice() else {
        return None;
    };
    Some(Request::Put(weir_proto::Put {
        topic: batch.topic.clone(),
        key: message.key.clone(),
        value: message.value.clone(),
        producer_id: batch.producer_id,
        seq: batch.first_seq,
    }))
}

/// A script's answer to a lone `Put`, as the answer to its batch of one: a commit becomes the
/// batch's one result; an error refuses the batch whole.
fn as_batch_answer(answer: Answer) -> Answer {
    fn one(reply: Reply) -> Reply {
        match reply {
            Reply::Committed(c) => Reply::CommittedBatch(vec![PutResult::Committed(c)]),
            other => other,
        }
    }
    match answer {
        Answer::Replies(r) => Answer::Replies(r.into_iter().map(one).collect()),
        Answer::RepliesThenFinish(r) => Answer::RepliesThenFinish(r.into_iter().map(one).collect()),
        Answer::Later(later) => Answer::Later(Box::pin(async move {
            later.await.into_iter().map(one).collect()
        })),
        Answer::CloseConnection => Answer::CloseConnection,
    }
}

/// Writes `replies` to request `id` (then finishes the stream if `finish`); false if the stream
/// is gone.
async fn write_replies(
    send: &tokio::sync::Mutex<quinn::SendStream>,
    id: weir_proto::RequestId,
    replies: Vec<Reply>,
    finish: bool,
) -> bool {
    let mut buf = Vec::new();
    for reply in replies {
        if encode_frame(&ServerFrame { id, reply }, &mut buf).is_err() {
            return false;
        }
    }
    let mut send = send.lock().await;
    if send.write_all(&buf).await.is_err() {
        return false;
    }
    if finish {
        let _ = send.finish();
    }
    true
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
        program: None,
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
        read_start_offset: Offset(0),
        read_end_offset: Offset(committed_offset),
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
                tombstone: false,
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

/// A batch's answer: each message committed by `commit`.
fn commit_batch(batch: &PutBatch, commit: &(impl Fn() -> Reply + Send + Sync)) -> Reply {
    Reply::CommittedBatch(
        batch
            .messages
            .iter()
            .map(|_| match commit() {
                Reply::Committed(c) => PutResult::Committed(c),
                Reply::Error(e) => PutResult::Error(e),
                other => panic!("not a PUT answer: {other:?}"),
            })
            .collect(),
    )
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
async fn a_put_whose_connection_breaks_after_sending_is_resent_under_its_own_number() -> Result<()>
{
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
    // A may have appended it: the resend carries the same producer id and number, so a node
    // that committed it answers with the original offset instead of writing it again.
    let c = timeout(client.put("t", None, "v")).await??;
    assert_eq!(c.offset, Offset(0));
    assert_eq!((a.puts(), b.puts()), (1, 1), "resent once, elsewhere");
    assert_eq!(a.put_ids(), b.put_ids(), "the same PUT, not a new one");
    assert_ne!(a.put_ids()[0].0, weir_proto::ProducerId(0), "not anonymous");
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
    let a = a.serve_batches(move |r| match r {
        Request::PutBatch(_) => reply(not_leader(Some((2, b_addr)))),
        _ => reply(error(ErrorCode::BadRequest)),
    });
    let commit = committer();
    let b = b.serve_batches(move |r| match r {
        Request::PutBatch(batch) => reply(commit_batch(batch, &commit)),
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
        .flat_map(|r| match r {
            Request::PutBatch(batch) => batch.messages.into_iter().map(|m| m.value).collect(),
            _ => Vec::new(),
        })
        .collect();
    assert_eq!(
        b.batched_puts(),
        100,
        "each PUT reached the leader exactly once"
    );
    assert_eq!(values.len(), 100);
    assert!(a.batched_puts() >= 1, "the first PUTs went to the old node");
    assert_eq!(a.puts() + b.puts(), 0, "a producer sends batches");
    // Numbered once, in send order, under the producer's own id: "m{i}" is number i, also
    // when it reached B as a resend after A refused it.
    for r in b.requests().into_iter().chain(a.requests()) {
        let Request::PutBatch(batch) = r else {
            continue;
        };
        assert_eq!(batch.producer_id, producer.producer_id());
        for (i, message) in batch.messages.iter().enumerate() {
            let seq = batch.first_seq.0 + i as u64;
            assert_eq!(message.value, format!("m{seq}").into_bytes());
        }
    }
    assert_ne!(
        client.producer("t", 16)?.producer_id(),
        producer.producer_id(),
        "each producer has its own id"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_refused_message_by_message_as_not_leader_is_resent_and_mixed_results_reach_each_put()
-> Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = certs(&dir)?;
    let (a, b) = (bind(&certs)?, bind(&certs)?);
    let b_addr = b.addr;
    // A took the batch as leader, then lost leadership before proposing: every message says
    // "not leader" (nothing appended), naming B.
    let a = a.serve_batches(move |r| match r {
        Request::PutBatch(batch) => reply(Reply::CommittedBatch(
            batch
                .messages
                .iter()
                .map(|_| match not_leader(Some((2, b_addr))) {
                    Reply::Error(e) => PutResult::Error(e),
                    _ => unreachable!(),
                })
                .collect(),
        )),
        _ => reply(error(ErrorCode::BadRequest)),
    });
    // B commits every message except those whose value is "bad".
    let commit = committer();
    let b = b.serve_batches(move |r| match r {
        Request::PutBatch(batch) => reply(Reply::CommittedBatch(
            batch
                .messages
                .iter()
                .map(|m| match (m.value == b"bad", commit()) {
                    (true, _) => PutResult::Error(ErrorReply::new(ErrorCode::TooLarge, "scripted")),
                    (false, Reply::Committed(c)) => PutResult::Committed(c),
                    _ => unreachable!(),
                })
                .collect(),
        )),
        _ => reply(error(ErrorCode::BadRequest)),
    });

    let client = connect(&certs, &[a.addr]).await?;
    let mut producer = client.producer("t", 64)?;
    let values = ["m0", "bad", "m2", "m3"];
    let mut handles = Vec::new();
    for value in values {
        handles.push(timeout(producer.send(None, value)).await??);
    }
    let mut results = Vec::new();
    for handle in handles {
        results.push(timeout(handle).await?);
    }
    assert!(
        results[0].is_ok() && results[2].is_ok() && results[3].is_ok(),
        "{results:?}"
    );
    assert!(
        matches!(results[1], Err(ClientError::TooLarge(_))),
        "{:?}",
        results[1]
    );
    assert!(a.batched_puts() >= 1, "the old leader got the first batch");
    assert_eq!(
        b.batched_puts(),
        4,
        "everything A refused was resent to B, once"
    );
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

/// Longer than every wait of these tests ([`WAIT`]): a test that finishes proves the client did
/// not sit out this timeout.
const NEVER: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_stuck_on_a_deposed_leader_cut_off_from_the_others_is_resent_to_the_new_one()
-> Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = certs(&dir)?;
    let (a, b, c) = (bind(&certs)?, bind(&certs)?, bind(&certs)?);
    let nodes = [(1, a.addr), (2, b.addr), (3, c.addr)];
    // A took the PUT but is cut off from the other replicas: it cannot commit it, and still
    // takes itself for the leader. B and C know C leads now.
    let a = a.serve(move |r| match r {
        Request::Put(_) => Answer::Replies(Vec::new()),
        Request::Cluster => reply(cluster(
            &nodes,
            Some(1),
            vec![placement("t", &[1, 2, 3], Some(1))],
        )),
        _ => reply(error(ErrorCode::BadRequest)),
    });
    let layout = move || cluster(&nodes, Some(2), vec![placement("t", &[1, 2, 3], Some(3))]);
    let b = b.serve(move |r| match r {
        Request::Cluster => reply(layout()),
        _ => reply(error(ErrorCode::BadRequest)),
    });
    let commit = committer();
    let c = c.serve(move |r| match r {
        Request::Put(_) => reply(commit()),
        Request::Cluster => reply(layout()),
        _ => reply(error(ErrorCode::BadRequest)),
    });

    let mut config = client_config(&certs, &[a.addr, b.addr]);
    config.request_timeout = NEVER;
    config.idle_timeout = NEVER;
    config.leader_check_after = Some(Duration::from_millis(100));
    let client = timeout(Client::connect(config)).await??;
    // The client gives up on A (it no longer leads and is cut off) and resends the PUT,
    // under its own producer id and number, to the leader B names.
    let stuck = timeout(client.put("t", None, "stuck")).await??;
    assert_eq!(stuck.offset, Offset(0));
    assert!(
        b.count(|r| matches!(r, Request::Cluster)) >= 1,
        "B was asked"
    );
    assert!(
        a.count(|r| matches!(r, Request::Cluster)) >= 1,
        "A was asked"
    );

    let c_put = timeout(client.put("t", None, "next")).await??;
    assert_eq!(c_put.offset, Offset(1));
    assert_eq!(
        (a.puts(), b.puts(), c.puts()),
        (1, 0, 2),
        "the stuck PUT was resent to the leader B named, and the next one went there too"
    );
    assert_eq!(a.put_ids()[0], c.put_ids()[0], "the resend is the same PUT");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_leader_that_another_node_still_names_is_waited_for() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = certs(&dir)?;
    let (a, b) = (bind(&certs)?, bind(&certs)?);
    let nodes = [(1, a.addr), (2, b.addr)];
    let release = Arc::new(Notify::new());
    let held = release.clone();
    // A answers its PUT only when released; B keeps naming A as the leader.
    let a = a.serve(move |r| match r {
        Request::Put(_) => {
            let held = held.clone();
            Answer::Later(Box::pin(async move {
                held.notified().await;
                vec![committed(7)]
            }))
        }
        _ => reply(error(ErrorCode::BadRequest)),
    });
    let (asked_tx, mut asked) = mpsc::unbounded_channel();
    let b = b.serve(move |r| match r {
        Request::Cluster => {
            let _ = asked_tx.send(());
            reply(cluster(
                &nodes,
                Some(1),
                vec![placement("t", &[1, 2], Some(1))],
            ))
        }
        _ => reply(error(ErrorCode::BadRequest)),
    });

    let mut config = client_config(&certs, &[a.addr, b.addr]);
    config.leader_check_after = Some(Duration::from_millis(20));
    let client = timeout(Client::connect(config)).await??;
    let put = tokio::spawn(async move { client.put("t", None, "slow").await });
    // Checked, and checked again while the PUT still waits: B names A each time.
    for _ in 0..2 {
        timeout(asked.recv()).await?.context("B's script ended")?;
    }
    release.notify_one();
    let c = timeout(put).await???;
    assert_eq!(c.offset, Offset(7), "the PUT was answered by A after all");
    assert_eq!((a.puts(), b.puts()), (1, 0));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_admin_requests_do_not_set_off_the_leader_check() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = certs(&dir)?;
    let (a, b) = (bind(&certs)?, bind(&certs)?);
    let nodes = [(1, a.addr), (2, b.addr)];
    // A leads the catalog and takes its time to create a topic (as a node waiting for the new
    // topic's leader does); B would depose A if it were asked.
    let a = a.serve(|r| match r {
        Request::CreateTopic { .. } => Answer::Later(Box::pin(async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            vec![Reply::TopicCreated]
        })),
        _ => reply(error(ErrorCode::BadRequest)),
    });
    let b = b.serve(move |r| match r {
        Request::Cluster => reply(cluster(&nodes, None, vec![placement("t", &[1, 2], None)])),
        _ => reply(error(ErrorCode::BadRequest)),
    });

    let mut config = client_config(&certs, &[a.addr, b.addr]);
    config.leader_check_after = Some(Duration::from_millis(10));
    let client = timeout(Client::connect(config)).await??;
    timeout(client.create_topic("t", TopicConfig::default())).await??;
    assert_eq!(b.count(|r| matches!(r, Request::Cluster)), 0, "no check");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_leader_costs_the_connect_patience_not_the_connect_timeout() -> Result<()> {
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

    let mut config = client_config(&certs, &[a.addr]);
    config.connect_timeout = NEVER;
    config.request_timeout = NEVER;
    config.connect_patience = Duration::from_millis(100);
    let client = timeout(Client::connect(config)).await??;
    let c = timeout(client.put("t", None, "v")).await??;
    assert_eq!(c.offset, Offset(0));
    assert_eq!(a.puts(), 2, "resent to the node it knows");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_dropped_its_connection_is_passed_over_for_the_next_seed() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = certs(&dir)?;
    let (a, b) = (bind(&certs)?, bind(&certs)?);
    let a = a.serve(|r| match r {
        Request::Put(_) => Answer::CloseConnection,
        _ => reply(error(ErrorCode::BadRequest)),
    });
    let commit = committer();
    let b = b.serve(move |r| match r {
        Request::Put(_) => reply(commit()),
        _ => reply(error(ErrorCode::BadRequest)),
    });

    let client = connect(&certs, &[a.addr, b.addr]).await?;
    // Resent to B after A dropped the connection with it.
    let c = timeout(client.put("t", None, "v")).await??;
    assert_eq!(c.offset, Offset(0));
    // A is the first seed and still accepts connections, but it just dropped one.
    let c = timeout(client.put("t", None, "w")).await??;
    assert_eq!(c.offset, Offset(1));
    assert_eq!((a.puts(), b.puts()), (1, 2));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_turned_away_by_a_node_that_knows_no_leader_tries_another_node() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = certs(&dir)?;
    let (a, b) = (bind(&certs)?, bind(&certs)?);
    let nodes = [(1, a.addr), (2, b.addr)];
    // A is cut off from the other replicas: it knows no leader, and its layout says so too.
    let a = a.serve(move |r| match r {
        Request::Put(_) => reply(not_leader(None)),
        Request::Cluster => reply(cluster(&nodes, None, vec![placement("t", &[1, 2], None)])),
        _ => reply(error(ErrorCode::BadRequest)),
    });
    let commit = committer();
    let b = b.serve(move |r| match r {
        Request::Put(_) => reply(commit()),
        _ => reply(error(ErrorCode::BadRequest)),
    });

    let client = connect(&certs, &[a.addr, b.addr]).await?;
    let c = timeout(client.put("t", None, "v")).await??;
    assert_eq!(c.offset, Offset(0));
    assert_eq!(
        (a.puts(), b.puts()),
        (1, 1),
        "went to B after A knew no leader"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leader_that_follows_the_new_one_is_left_to_decide_its_puts() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = certs(&dir)?;
    let (a, b, c) = (bind(&certs)?, bind(&certs)?, bind(&certs)?);
    let nodes = [(1, a.addr), (2, b.addr), (3, c.addr)];
    let layout = move || cluster(&nodes, Some(3), vec![placement("t", &[1, 2, 3], Some(3))]);
    let release = Arc::new(Notify::new());
    let held = release.clone();
    let (probed_tx, mut probed) = mpsc::unbounded_channel();
    // A handed leadership to C while holding a PUT, which it answers once it catches up
    // (released here); asked itself, A names C.
    let a = a.serve(move |r| match r {
        Request::Put(_) => {
            let held = held.clone();
            Answer::Later(Box::pin(async move {
                held.notified().await;
                vec![committed(3)]
            }))
        }
        Request::Cluster => {
            let _ = probed_tx.send(());
            reply(layout())
        }
        _ => reply(error(ErrorCode::BadRequest)),
    });
    let b = b.serve(move |r| match r {
        Request::Cluster => reply(layout()),
        _ => reply(error(ErrorCode::BadRequest)),
    });
    let c = c.serve(move |r| match r {
        Request::Cluster => reply(layout()),
        _ => reply(error(ErrorCode::BadRequest)),
    });

    let mut config = client_config(&certs, &[a.addr, b.addr, c.addr]);
    config.leader_check_after = Some(Duration::from_millis(20));
    let client = timeout(Client::connect(config)).await??;
    let put = tokio::spawn(async move { client.put("t", None, "held").await });
    // B and C name C; A, asked each time, answers that it follows C: the client keeps waiting.
    for _ in 0..2 {
        timeout(probed.recv()).await?.context("A's script ended")?;
    }
    release.notify_one();
    let committed = timeout(put).await???;
    assert_eq!(committed.offset, Offset(3), "A decided the PUT it held");
    assert_eq!((a.puts(), b.puts(), c.puts()), (1, 0, 0));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_waiting_out_an_election_goes_as_soon_as_another_call_learns_the_leader() -> Result<()>
{
    let dir = tempfile::tempdir()?;
    let certs = certs(&dir)?;
    let (a, b) = (bind(&certs)?, bind(&certs)?);
    let nodes = [(1, a.addr), (2, b.addr)];
    let (put_tx, mut put_seen) = mpsc::unbounded_channel();
    // A does not know the leader when the PUT comes, but its layout names B.
    let a = a.serve(move |r| match r {
        Request::Put(_) => {
            let _ = put_tx.send(());
            reply(not_leader(None))
        }
        Request::Cluster => reply(cluster(
            &nodes,
            None,
            vec![placement("t", &[1, 2], Some(2))],
        )),
        _ => reply(error(ErrorCode::BadRequest)),
    });
    let commit = committer();
    let b = b.serve(move |r| match r {
        Request::Put(_) => reply(commit()),
        _ => reply(error(ErrorCode::BadRequest)),
    });

    let mut config = client_config(&certs, &[a.addr]);
    // Waits far longer than this test may take, unless a leader is learned.
    config.request_timeout = NEVER * 2;
    config.leader_retry = LeaderRetryPolicy {
        initial_backoff: NEVER,
        max_backoff: NEVER,
        max_elapsed: NEVER * 2,
    };
    let client = timeout(Client::connect(config)).await??;
    let putter = client.clone();
    let put = tokio::spawn(async move { putter.put("t", None, "v").await });
    timeout(put_seen.recv())
        .await?
        .context("A's script ended")?;
    let info = timeout(client.cluster()).await??;
    assert_eq!(info.topics[0].leader, Some(2));
    let c = timeout(put).await???;
    assert_eq!(c.offset, Offset(0));
    assert_eq!((a.puts(), b.puts()), (1, 1));
    Ok(())
}

/// A UDP relay to `target` for one client, which `cut` silences both ways (a node that died
/// without closing its connections, or a lost network).
async fn relay(target: SocketAddr) -> Result<(SocketAddr, Arc<std::sync::atomic::AtomicBool>)> {
    let front = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await?);
    let back = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await?);
    back.connect(target).await?;
    let addr = front.local_addr()?;
    let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
    let (f, b, c, peer) = (front.clone(), back.clone(), cut.clone(), client.clone());
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = f.recv_from(&mut buf).await {
            *peer.lock().unwrap_or_else(|p| p.into_inner()) = Some(from);
            if !c.load(Ordering::Relaxed) {
                let _ = b.send(&buf[..n]).await;
            }
        }
    });
    let c = cut.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = back.recv(&mut buf).await {
            let to = *client.lock().unwrap_or_else(|p| p.into_inner());
            if let (false, Some(to)) = (c.load(Ordering::Relaxed), to) {
                let _ = front.send_to(&buf[..n], to).await;
            }
        }
    });
    Ok((addr, cut))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_on_a_leader_that_went_silent_is_resent_without_waiting_for_the_idle_timeout()
-> Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = certs(&dir)?;
    let (a, b, c) = (bind(&certs)?, bind(&certs)?, bind(&certs)?);
    let (a_relayed, cut) = relay(a.addr).await?;
    let nodes = [(1, a_relayed), (2, b.addr), (3, c.addr)];
    // A dies (silently: its connection is not closed) once it has the PUT.
    let dies = cut.clone();
    let a = a.serve(move |r| match r {
        Request::Put(_) => {
            dies.store(true, Ordering::Relaxed);
            Answer::Replies(Vec::new())
        }
        _ => reply(error(ErrorCode::BadRequest)),
    });
    let layout = move || cluster(&nodes, Some(2), vec![placement("t", &[1, 2, 3], Some(3))]);
    let c_addr = c.addr;
    let b = b.serve(move |r| match r {
        Request::Cluster => reply(layout()),
        Request::Put(_) => reply(not_leader(Some((3, c_addr)))),
        _ => reply(error(ErrorCode::BadRequest)),
    });
    let commit = committer();
    let c = c.serve(move |r| match r {
        Request::Put(_) => reply(commit()),
        Request::Cluster => reply(layout()),
        _ => reply(error(ErrorCode::BadRequest)),
    });

    let mut config = client_config(&certs, &[a_relayed, b.addr]);
    config.request_timeout = NEVER;
    config.idle_timeout = NEVER;
    config.leader_check_after = Some(Duration::from_millis(100));
    let client = timeout(Client::connect(config)).await??;
    let lost = timeout(client.put("t", None, "lost")).await??;
    assert_eq!(lost.offset, Offset(0));
    let next = timeout(client.put("t", None, "next")).await??;
    assert_eq!(next.offset, Offset(1));
    assert_eq!(
        (a.puts(), c.puts()),
        (1, 2),
        "the PUT A swallowed was resent to the new leader, and the next one went there too"
    );
    assert_eq!(a.put_ids()[0], c.put_ids()[0], "the resend is the same PUT");
    Ok(())
}
