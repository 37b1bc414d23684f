//! The node-to-node transport over real QUIC on loopback: mutual TLS from the cluster CA, the
//! hello, one connection per node pair, redialing, coalesced writes, bounded queues, and peers
//! added, moved and removed at run time.

use anyhow::{Context, Result, bail};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use weir_node::certs::{self, CertPaths};
use weir_node::peer::{
    CLOSE_NORMAL, GroupId, GroupMessages, PEER_ALPN, PEER_QUEUE_MESSAGES_MAX,
    PEER_REDIAL_BACKOFF_MIN_MS, PEERS_MAX, PeerConfig, PeerFrame, PeerHello, PeerNet, PeerTls,
};
use weir_node::{Node, NodeConfig};
use weir_proto::{FrameDecoder, encode_frame};
use weir_raft::{Envelope, LogIndex, Message, NodeId, Term};

/// Bound on every wait in these tests: generous, since CI machines are shared.
const WAIT: Duration = Duration::from_secs(30);

async fn timeout<F: IntoFuture>(f: F) -> Result<F::Output> {
    tokio::time::timeout(WAIT, f)
        .await
        .context("timed out waiting")
}

/// An empty AppendEntries (a heartbeat) whose `leader_commit` carries `seq`, to check order.
fn heartbeat(from: u64, to: u64, seq: u64) -> Envelope {
    Envelope {
        from: NodeId(from),
        to: NodeId(to),
        message: Message::AppendEntries {
            term: Term(1),
            prev_log_index: LogIndex(0),
            prev_log_term: Term(0),
            entries: Vec::new(),
            leader_commit: LogIndex(seq),
        },
    }
}

fn seq_of(envelope: &Envelope) -> u64 {
    match &envelope.message {
        Message::AppendEntries { leader_commit, .. } => leader_commit.0,
        _ => u64::MAX,
    }
}

fn init_certs(dir: &Path) -> Result<CertPaths> {
    Ok(certs::init(dir, &[])?)
}

/// An endpoint with exactly the node's server configuration.
fn bind(paths: &CertPaths, addr: SocketAddr) -> Result<quinn::Endpoint> {
    Ok(quinn::Endpoint::server(
        weir_node::server_config(paths)?,
        addr,
    )?)
}

/// A PeerNet on its own endpoint, with an accept loop handing every connection to it.
struct TestNode {
    id: u64,
    endpoint: quinn::Endpoint,
    net: PeerNet,
    rx: mpsc::Receiver<(GroupId, Envelope)>,
    accept: tokio::task::JoinHandle<()>,
}

impl TestNode {
    fn start(
        paths: &CertPaths,
        id: u64,
        endpoint: quinn::Endpoint,
        peers: BTreeMap<NodeId, SocketAddr>,
    ) -> Result<Self> {
        let config = PeerConfig::new(NodeId(id), peers);
        let (net, rx) = PeerNet::start(endpoint.clone(), config, PeerTls::from_cert_paths(paths)?)?;
        let accept = tokio::spawn(accept_loop(endpoint.clone(), net.clone()));
        Ok(Self {
            id,
            endpoint,
            net,
            rx,
            accept,
        })
    }

    fn addr(&self) -> Result<SocketAddr> {
        Ok(self.endpoint.local_addr()?)
    }

    fn send(&self, to: u64, group: u64, seq: u64) -> bool {
        self.net.send(GroupId(group), heartbeat(self.id, to, seq))
    }

    async fn recv(&mut self) -> Result<(GroupId, Envelope)> {
        timeout(self.rx.recv())
            .await?
            .context("the receiver closed")
    }

    fn peer_stats(&self, peer: u64) -> Result<weir_node::peer::PeerStats> {
        self.net
            .stats()
            .remove(&NodeId(peer))
            .context("no stats for that peer")
    }

    /// Shuts the transport down and closes the endpoint (its socket goes once the connections
    /// have drained: await `wait_idle` on a clone of the endpoint to know when).
    fn stop(self) {
        self.net.shutdown();
        self.accept.abort();
        self.endpoint.close(0u32.into(), b"test node stopping");
    }
}

async fn accept_loop(endpoint: quinn::Endpoint, net: PeerNet) {
    while let Some(incoming) = endpoint.accept().await {
        let net = net.clone();
        tokio::spawn(async move {
            if let Ok(conn) = incoming.await {
                net.handle_incoming(conn).await;
            }
        });
    }
}

/// `n` nodes with ids 1..=n, each listing all the others as peers.
fn cluster(paths: &CertPaths, n: u64) -> Result<Vec<TestNode>> {
    let endpoints = (1..=n)
        .map(|_| bind(paths, "127.0.0.1:0".parse()?))
        .collect::<Result<Vec<_>>>()?;
    let addrs = endpoints
        .iter()
        .map(|e| Ok(e.local_addr()?))
        .collect::<Result<Vec<_>>>()?;
    endpoints
        .into_iter()
        .zip(1..=n)
        .map(|(endpoint, id)| {
            let peers = (1..=n)
                .zip(&addrs)
                .filter(|(other, _)| *other != id)
                .map(|(other, addr)| (NodeId(other), *addr))
                .collect();
            TestNode::start(paths, id, endpoint, peers)
        })
        .collect()
}

/// A bare QUIC connection on `weir-peer/1`, trusting `ca` and presenting `identity` if given.
async fn dial_raw(
    addr: SocketAddr,
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<quinn::Connection> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs::load_certs(ca)? {
        roots.add(cert)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots);
    let mut tls = match identity {
        Some((cert, key)) => {
            builder.with_client_auth_cert(certs::load_certs(cert)?, certs::load_key(key)?)?
        }
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![PEER_ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    Ok(timeout(endpoint.connect(addr, "localhost")?).await??)
}

/// Why a connection ended: the dial error, or the reason it was closed with.
async fn refusal(dialed: Result<quinn::Connection>) -> Result<String> {
    match dialed {
        Err(e) => Ok(format!("{e:#}")),
        Ok(conn) => Ok(timeout(conn.closed()).await?.to_string()),
    }
}

/// Opens the peer stream on `conn` and sends `frame` first.
async fn send_first_frame(
    conn: &quinn::Connection,
    frame: &PeerFrame,
) -> Result<(quinn::SendStream, quinn::RecvStream)> {
    let (mut send, recv) = timeout(conn.open_bi()).await??;
    let mut buf = Vec::new();
    encode_frame(frame, &mut buf)?;
    send.write_all(&buf).await?;
    Ok((send, recv))
}

fn hello(node_id: u64, cluster_id: Option<&str>) -> PeerFrame {
    PeerFrame::Hello(PeerHello {
        cluster_id: cluster_id.map(str::to_owned),
        node_id: NodeId(node_id),
    })
}

/// Reads the next frame of a peer stream.
async fn read_peer_frame(
    recv: &mut quinn::RecvStream,
    decoder: &mut FrameDecoder,
) -> Result<PeerFrame> {
    let mut buf = vec![0u8; 4096];
    loop {
        if let Some(frame) = decoder.next::<PeerFrame>()? {
            return Ok(frame);
        }
        let n = timeout(recv.read(&mut buf))
            .await??
            .context("stream ended before a whole frame")?;
        decoder.extend(&buf[..n]);
    }
}

fn frame_decoder() -> FrameDecoder {
    FrameDecoder::new(weir_proto::limits::FRAME_BYTES_MAX)
}

/// Dials `node` as node `as_id` with the node certificate and completes the hello exchange.
async fn dial_as_node(
    paths: &CertPaths,
    node: &TestNode,
    as_id: u64,
) -> Result<(quinn::Connection, quinn::SendStream)> {
    let conn = dial_raw(
        node.addr()?,
        &paths.ca_cert,
        Some((&paths.node_cert, &paths.node_key)),
    )
    .await?;
    let (send, mut recv) = send_first_frame(&conn, &hello(as_id, None)).await?;
    let answer = read_peer_frame(&mut recv, &mut frame_decoder()).await?;
    if answer != hello(node.id, None) {
        bail!("unexpected hello answer {answer:?}");
    }
    Ok((conn, send))
}

/// One end of a peer connection played by the test: the connection and both halves of its
/// stream (kept open: dropping the send half would finish it).
struct RawPeer {
    conn: quinn::Connection,
    _send: quinn::SendStream,
    recv: quinn::RecvStream,
    decoder: FrameDecoder,
}

/// Plays node `as_id` on `endpoint`: accepts the next connection, expects the hello of node
/// `from` and answers it.
async fn accept_as_node(endpoint: &quinn::Endpoint, as_id: u64, from: u64) -> Result<RawPeer> {
    let incoming = timeout(endpoint.accept())
        .await?
        .context("endpoint closed")?;
    let conn = timeout(incoming).await??;
    let (mut send, mut recv) = timeout(conn.accept_bi()).await??;
    let mut decoder = frame_decoder();
    let first = read_peer_frame(&mut recv, &mut decoder).await?;
    if first != hello(from, None) {
        bail!("expected the hello of n{from}, got {first:?}");
    }
    let mut buf = Vec::new();
    encode_frame(&hello(as_id, None), &mut buf)?;
    send.write_all(&buf).await?;
    Ok(RawPeer {
        conn,
        _send: send,
        recv,
        decoder,
    })
}

/// The reason `conn` was closed with, which must be by the other side with [`CLOSE_NORMAL`].
async fn closed_normally(conn: &quinn::Connection) -> Result<String> {
    match timeout(conn.closed()).await? {
        quinn::ConnectionError::ApplicationClosed(close)
            if close.error_code == quinn::VarInt::from_u32(CLOSE_NORMAL) =>
        {
            Ok(String::from_utf8_lossy(&close.reason).into_owned())
        }
        other => bail!("not closed with CLOSE_NORMAL: {other}"),
    }
}

/// Two nodes that start knowing no peer and add each other at run time (the existing node
/// first, as `weir cluster add-node` would), then exchange a message each way.
async fn nodes_added_at_run_time_exchange_messages(existing_id: u64, new_id: u64) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let paths = init_certs(dir.path())?;
    let any = "127.0.0.1:0".parse()?;
    let mut existing = TestNode::start(&paths, existing_id, bind(&paths, any)?, BTreeMap::new())?;
    let mut new = TestNode::start(&paths, new_id, bind(&paths, any)?, BTreeMap::new())?;
    assert!(!existing.send(new_id, 1, 1), "not a peer yet");

    existing.net.add_peer(NodeId(new_id), new.addr()?)?;
    new.net.add_peer(NodeId(existing_id), existing.addr()?)?;
    assert_eq!(
        existing.net.peers(),
        BTreeMap::from([(NodeId(new_id), new.addr()?)])
    );
    assert_eq!(
        new.net.peers(),
        BTreeMap::from([(NodeId(existing_id), existing.addr()?)])
    );
    assert!(existing.send(new_id, 1, 2));
    assert!(new.send(existing_id, 1, 3));
    let (group, envelope) = new.recv().await?;
    assert_eq!(
        (group, envelope.from, seq_of(&envelope)),
        (GroupId(1), NodeId(existing_id), 2)
    );
    let (group, envelope) = existing.recv().await?;
    assert_eq!(
        (group, envelope.from, seq_of(&envelope)),
        (GroupId(1), NodeId(new_id), 3)
    );
    for (node, peer) in [(&existing, new_id), (&new, existing_id)] {
        let stats = node.peer_stats(peer)?;
        assert!(stats.connected, "n{} to n{peer}: {stats:?}", node.id);
        assert_eq!(
            (stats.sent, stats.received),
            (1, 1),
            "n{}: {stats:?}",
            node.id
        );
    }
    existing.stop();
    new.stop();
    Ok(())
}

#[tokio::test]
async fn three_nodes_exchange_messages_in_every_direction_over_one_connection_per_pair()
-> Result<()> {
    let dir = tempfile::tempdir()?;
    let paths = init_certs(dir.path())?;
    let mut nodes = cluster(&paths, 3)?;
    for from in 1..=3 {
        for to in (1..=3).filter(|to| *to != from) {
            for group in [7, 8] {
                assert!(nodes[from as usize - 1].send(to, group, from * 100 + group));
            }
        }
    }
    for node in &mut nodes {
        let mut got = BTreeSet::new();
        for _ in 0..4 {
            let (group, envelope) = node.recv().await?;
            assert_eq!(envelope.to, NodeId(node.id));
            assert_eq!(seq_of(&envelope), envelope.from.0 * 100 + group.0);
            got.insert((envelope.from.0, group.0));
        }
        let expected: BTreeSet<_> = (1..=3)
            .filter(|from| *from != node.id)
            .flat_map(|from| [(from, 7), (from, 8)])
            .collect();
        assert_eq!(got, expected, "node {}", node.id);
    }
    for node in &nodes {
        assert_eq!(
            node.endpoint.open_connections(),
            2,
            "node {} has one connection per peer",
            node.id
        );
        for (peer, stats) in node.net.stats() {
            assert!(stats.connected, "n{} to {peer}: {stats:?}", node.id);
            assert_eq!(stats.connections, 1, "n{} to {peer}: {stats:?}", node.id);
            assert_eq!((stats.sent, stats.received, stats.dropped), (2, 2, 0));
        }
    }
    for node in nodes {
        node.stop();
    }
    Ok(())
}

#[tokio::test]
async fn restarted_peer_is_redialed_and_traffic_resumes() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let paths = init_certs(dir.path())?;
    let mut nodes = cluster(&paths, 3)?;
    let mut n3 = nodes.pop().context("three nodes")?;
    assert!(nodes[0].send(3, 1, 1));
    assert_eq!(seq_of(&n3.recv().await?.1), 1);
    let addr3 = n3.addr()?;
    let peers3 = BTreeMap::from([(NodeId(1), nodes[0].addr()?), (NodeId(2), nodes[1].addr()?)]);
    let old_endpoint = n3.endpoint.clone();
    n3.stop();
    timeout(old_endpoint.wait_idle()).await?;
    drop(old_endpoint);

    // Same port: the lower-id nodes redial the address they know.
    let endpoint = timeout(async {
        loop {
            match bind(&paths, addr3) {
                Ok(endpoint) => return endpoint,
                // The old socket goes away once its endpoint driver has seen the last handle drop.
                Err(_) => tokio::task::yield_now().await,
            }
        }
    })
    .await?;
    let mut n3 = TestNode::start(&paths, 3, endpoint, peers3)?;
    assert!(nodes[0].send(3, 1, 2));
    assert!(nodes[1].send(3, 1, 3));
    assert!(n3.send(1, 1, 4));
    assert!(n3.send(2, 1, 5));
    let mut got = BTreeSet::new();
    for _ in 0..2 {
        let (_, envelope) = n3.recv().await?;
        got.insert((envelope.from.0, seq_of(&envelope)));
    }
    assert_eq!(got, BTreeSet::from([(1, 2), (2, 3)]));
    assert_eq!(seq_of(&nodes[0].recv().await?.1), 4);
    assert_eq!(seq_of(&nodes[1].recv().await?.1), 5);
    let stats = nodes[0].peer_stats(3)?;
    assert!(stats.connected);
    assert_eq!(stats.connections, 2, "{stats:?}");
    n3.stop();
    for node in nodes {
        node.stop();
    }
    Ok(())
}

#[tokio::test]
async fn client_certificate_or_no_certificate_cannot_open_a_peer_connection() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let paths = init_certs(dir.path())?;
    let node = TestNode::start(
        &paths,
        2,
        bind(&paths, "127.0.0.1:0".parse()?)?,
        BTreeMap::from([(NodeId(1), "127.0.0.1:9".parse()?)]),
    )?;
    let client_cert = Some((paths.client_cert.as_path(), paths.client_key.as_path()));
    let reason = refusal(dial_raw(node.addr()?, &paths.ca_cert, client_cert).await).await?;
    assert!(
        reason.contains("not a node certificate of the cluster CA"),
        "{reason}"
    );
    let reason = refusal(dial_raw(node.addr()?, &paths.ca_cert, None).await).await?;
    assert!(reason.contains("no certificate presented"), "{reason}");
    assert_eq!(node.peer_stats(1)?.connections, 0);
    node.stop();
    Ok(())
}

#[tokio::test]
async fn node_certificate_from_another_ca_is_refused_by_tls() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let paths = init_certs(&dir.path().join("cluster"))?;
    let other = init_certs(&dir.path().join("other"))?;
    let node = TestNode::start(
        &paths,
        2,
        bind(&paths, "127.0.0.1:0".parse()?)?,
        BTreeMap::from([(NodeId(1), "127.0.0.1:9".parse()?)]),
    )?;
    // Trusts the right CA, presents a node certificate of another one.
    let foreign = Some((other.node_cert.as_path(), other.node_key.as_path()));
    let dialed = dial_raw(node.addr()?, &paths.ca_cert, foreign).await;
    let reason = refusal(dialed).await?;
    assert!(
        reason.contains("invalid peer certificate"),
        "refused by the TLS layer, not by the hello: {reason}"
    );
    assert_eq!(node.peer_stats(1)?.connections, 0);
    node.stop();
    Ok(())
}

#[tokio::test]
async fn hello_from_an_unlisted_node_another_cluster_or_a_higher_id_is_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let paths = init_certs(dir.path())?;
    // Node 2 knows node 1 (which dials it) and node 3 (which it dials).
    let node = TestNode::start(
        &paths,
        2,
        bind(&paths, "127.0.0.1:0".parse()?)?,
        BTreeMap::from([
            (NodeId(1), "127.0.0.1:9".parse()?),
            (NodeId(3), "127.0.0.1:9".parse()?),
        ]),
    )?;
    let node_cert = Some((paths.node_cert.as_path(), paths.node_key.as_path()));
    for (frame, expected) in [
        (hello(42, None), "n42 is not in the peer list of n2"),
        (
            hello(1, Some("elsewhere")),
            "cluster id Some(\"elsewhere\") does not match",
        ),
        (hello(3, None), "n2 dials n3, not the other way round"),
    ] {
        let conn = dial_raw(node.addr()?, &paths.ca_cert, node_cert).await?;
        let _stream = send_first_frame(&conn, &frame).await?;
        let reason = timeout(conn.closed()).await?.to_string();
        assert!(reason.contains(expected), "{frame:?}: {reason}");
    }
    assert_eq!(node.peer_stats(1)?.connections, 0);
    node.stop();
    Ok(())
}

#[tokio::test]
async fn forged_sender_or_oversized_frame_closes_the_peer_connection() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let paths = init_certs(dir.path())?;
    let node = TestNode::start(
        &paths,
        2,
        bind(&paths, "127.0.0.1:0".parse()?)?,
        BTreeMap::from([(NodeId(1), "127.0.0.1:9".parse()?)]),
    )?;

    let (conn, mut send) = dial_as_node(&paths, &node, 1).await?;
    let forged = PeerFrame::Messages(vec![GroupMessages {
        group: GroupId(1),
        envelopes: vec![heartbeat(3, 2, 1)],
    }]);
    let mut buf = Vec::new();
    encode_frame(&forged, &mut buf)?;
    send.write_all(&buf).await?;
    let reason = timeout(conn.closed()).await?.to_string();
    assert!(
        reason.contains("envelope from n3 to n2 on the connection between n1 and n2"),
        "{reason}"
    );

    let (conn, mut send) = dial_as_node(&paths, &node, 1).await?;
    send.write_all(&u32::MAX.to_be_bytes()).await?;
    let reason = timeout(conn.closed()).await?.to_string();
    assert!(reason.contains("exceeds the limit"), "{reason}");

    let stats = node.peer_stats(1)?;
    assert_eq!((stats.connections, stats.received), (2, 0), "{stats:?}");
    node.stop();
    Ok(())
}

// current_thread (the default): nothing runs between the sends, so they all queue before the
// writer wakes, as when a Raft driver emits a tick's messages for many groups at once.
#[tokio::test]
async fn many_small_messages_queued_at_once_go_out_in_few_frames() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let paths = init_certs(dir.path())?;
    let mut nodes = cluster(&paths, 2)?;
    assert!(nodes[0].send(2, 0, 0));
    nodes[1].recv().await?;
    let frames_before = nodes[0].peer_stats(2)?.frames_sent;

    const GROUPS: u64 = 100;
    const PER_GROUP: u64 = 10;
    for seq in 1..=PER_GROUP {
        for group in 1..=GROUPS {
            assert!(nodes[0].send(2, group, seq));
        }
    }
    let mut last_seq = BTreeMap::new();
    for _ in 0..GROUPS * PER_GROUP {
        let (group, envelope) = nodes[1].recv().await?;
        let seq = seq_of(&envelope);
        let previous = last_seq.insert(group, seq).unwrap_or(0);
        assert_eq!(seq, previous + 1, "{group}: in order");
    }
    let sender = nodes[0].peer_stats(2)?;
    let frames = sender.frames_sent - frames_before;
    assert!(
        frames <= 4,
        "{} messages took {frames} frames",
        GROUPS * PER_GROUP
    );
    assert_eq!(sender.sent, GROUPS * PER_GROUP + 1);
    let receiver = nodes[1].peer_stats(1)?;
    assert_eq!(receiver.received, GROUPS * PER_GROUP + 1);
    assert_eq!(receiver.frames_received, frames + 1);
    for node in nodes {
        node.stop();
    }
    Ok(())
}

#[tokio::test]
async fn full_queue_drops_the_newest_message_without_blocking_and_counts_it() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let paths = init_certs(dir.path())?;
    // Node 2 is a socket that never answers: everything for it stays queued.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let node = TestNode::start(
        &paths,
        1,
        bind(&paths, "127.0.0.1:0".parse()?)?,
        BTreeMap::from([(NodeId(2), silent.local_addr()?)]),
    )?;
    let extra = 5;
    let outcomes: Vec<bool> = (0..PEER_QUEUE_MESSAGES_MAX as u64 + extra)
        .map(|seq| node.send(2, 1, seq))
        .collect();
    assert!(
        outcomes[..PEER_QUEUE_MESSAGES_MAX]
            .iter()
            .all(|queued| *queued)
    );
    assert!(
        outcomes[PEER_QUEUE_MESSAGES_MAX..]
            .iter()
            .all(|queued| !queued)
    );
    let stats = node.peer_stats(2)?;
    assert_eq!(stats.dropped, extra);
    assert_eq!(stats.queued, PEER_QUEUE_MESSAGES_MAX);
    assert!(!stats.connected);
    node.stop();
    Ok(())
}

#[tokio::test]
async fn node_without_peers_refuses_peer_connections_and_still_serves_clients() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config = NodeConfig::new(dir.path());
    config.listen = "127.0.0.1:0".parse()?;
    let node = Node::start(config).await?;
    let paths = node.certs().clone();
    let node_cert = Some((paths.node_cert.as_path(), paths.node_key.as_path()));
    let reason = refusal(dial_raw(node.local_addr(), &paths.ca_cert, node_cert).await).await?;
    assert!(reason.contains("no peers configured"), "{reason}");

    // Clients on weir/1 may still present a client certificate (or none).
    let mut client_config = weir_client::ClientConfig::new(node.local_addr(), &paths.ca_cert);
    client_config.client_auth = Some(weir_client::ClientAuth {
        cert: paths.client_cert.clone(),
        key: paths.client_key.clone(),
    });
    let client = timeout(weir_client::Client::connect(client_config)).await??;
    assert!(client.list_topics().await?.is_empty());
    client.close().await;
    node.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn node_added_at_run_time_with_a_higher_id_exchanges_messages_both_ways() -> Result<()> {
    nodes_added_at_run_time_exchange_messages(2, 3).await
}

#[tokio::test]
async fn node_added_at_run_time_with_a_lower_id_exchanges_messages_both_ways() -> Result<()> {
    nodes_added_at_run_time_exchange_messages(2, 1).await
}

#[tokio::test]
async fn peer_removed_by_its_dialer_is_closed_and_no_longer_dialed_or_sent_to() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let paths = init_certs(dir.path())?;
    // Node 2 is played by the test.
    let raw = bind(&paths, "127.0.0.1:0".parse()?)?;
    let node = TestNode::start(
        &paths,
        1,
        bind(&paths, "127.0.0.1:0".parse()?)?,
        BTreeMap::from([(NodeId(2), raw.local_addr()?)]),
    )?;
    let mut peer = accept_as_node(&raw, 2, 1).await?;
    assert!(node.send(2, 1, 1));
    let frame = read_peer_frame(&mut peer.recv, &mut peer.decoder).await?;
    assert!(matches!(frame, PeerFrame::Messages(_)), "{frame:?}");

    node.net.remove_peer(NodeId(2));
    let reason = closed_normally(&peer.conn).await?;
    assert!(reason.contains("n1 removed n2 from its peers"), "{reason}");
    assert!(!node.send(2, 1, 2));
    assert!(node.net.peers().is_empty());
    assert!(node.net.stats().is_empty());
    node.net.remove_peer(NodeId(2));
    // A dialer that kept going would redial after PEER_REDIAL_BACKOFF_MIN_MS; there is no
    // event for "never", so give it several times that.
    let redial = Duration::from_millis(5 * PEER_REDIAL_BACKOFF_MIN_MS);
    assert!(
        tokio::time::timeout(redial, raw.accept()).await.is_err(),
        "the removed peer was dialed again"
    );
    node.stop();
    Ok(())
}

#[tokio::test]
async fn peer_removed_by_its_acceptor_is_closed_and_its_hello_refused_afterwards() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let paths = init_certs(dir.path())?;
    let node = TestNode::start(
        &paths,
        2,
        bind(&paths, "127.0.0.1:0".parse()?)?,
        BTreeMap::from([(NodeId(1), "127.0.0.1:9".parse()?)]),
    )?;
    let (conn, _send) = dial_as_node(&paths, &node, 1).await?;
    // Queued (the connection writes it), then dropped with the queue or closed with the link.
    assert!(node.send(1, 1, 1));

    node.net.remove_peer(NodeId(1));
    let reason = closed_normally(&conn).await?;
    assert!(reason.contains("n2 removed n1 from its peers"), "{reason}");
    assert!(!node.send(1, 1, 2));
    assert!(node.net.peers().is_empty());

    let node_cert = Some((paths.node_cert.as_path(), paths.node_key.as_path()));
    let conn = dial_raw(node.addr()?, &paths.ca_cert, node_cert).await?;
    let _stream = send_first_frame(&conn, &hello(1, None)).await?;
    let reason = timeout(conn.closed()).await?.to_string();
    assert!(
        reason.contains("n1 is not in the peer list of n2"),
        "{reason}"
    );
    node.stop();
    Ok(())
}

#[tokio::test]
async fn removed_peer_added_again_exchanges_messages_again() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let paths = init_certs(dir.path())?;
    let mut nodes = cluster(&paths, 2)?;
    assert!(nodes[0].send(2, 1, 1));
    assert_eq!(seq_of(&nodes[1].recv().await?.1), 1);
    let addrs = [nodes[0].addr()?, nodes[1].addr()?];

    nodes[0].net.remove_peer(NodeId(2));
    nodes[1].net.remove_peer(NodeId(1));
    assert!(!nodes[0].send(2, 1, 2));
    assert!(!nodes[1].send(1, 1, 3));

    nodes[1].net.add_peer(NodeId(1), addrs[0])?;
    nodes[0].net.add_peer(NodeId(2), addrs[1])?;
    assert!(nodes[0].send(2, 1, 4));
    assert!(nodes[1].send(1, 1, 5));
    assert_eq!(seq_of(&nodes[1].recv().await?.1), 4);
    assert_eq!(seq_of(&nodes[0].recv().await?.1), 5);
    for node in nodes {
        node.stop();
    }
    Ok(())
}

#[tokio::test]
async fn new_address_of_a_peer_is_dialed_and_the_old_connection_closed() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let paths = init_certs(dir.path())?;
    // Node 2 is played by the test, first at `old`, then at `new`.
    let old = bind(&paths, "127.0.0.1:0".parse()?)?;
    let new = bind(&paths, "127.0.0.1:0".parse()?)?;
    let node = TestNode::start(
        &paths,
        1,
        bind(&paths, "127.0.0.1:0".parse()?)?,
        BTreeMap::from([(NodeId(2), old.local_addr()?)]),
    )?;
    let mut at_old = accept_as_node(&old, 2, 1).await?;
    // A message through it: the node is past the hello and using the connection.
    assert!(node.send(2, 1, 0));
    let frame = read_peer_frame(&mut at_old.recv, &mut at_old.decoder).await?;
    assert!(matches!(frame, PeerFrame::Messages(_)), "{frame:?}");
    node.net.add_peer(NodeId(2), new.local_addr()?)?;
    let reason = closed_normally(&at_old.conn).await?;
    assert!(reason.contains("n1 now dials n2 at"), "{reason}");
    let mut at_new = accept_as_node(&new, 2, 1).await?;
    assert!(node.send(2, 1, 1));

    // The same address again changes nothing: the next message takes the same connection.
    node.net.add_peer(NodeId(2), new.local_addr()?)?;
    assert!(node.send(2, 1, 2));
    let mut seqs = Vec::new();
    while seqs.len() < 2 {
        match read_peer_frame(&mut at_new.recv, &mut at_new.decoder).await? {
            PeerFrame::Messages(groups) => {
                seqs.extend(groups.iter().flat_map(|g| &g.envelopes).map(seq_of));
            }
            other => bail!("unexpected {other:?}"),
        }
    }
    assert_eq!(seqs, [1, 2]);
    assert_eq!(
        node.net.peers(),
        BTreeMap::from([(NodeId(2), new.local_addr()?)])
    );
    let stats = node.peer_stats(2)?;
    assert_eq!((stats.connections, stats.sent), (2, 3), "{stats:?}");
    node.stop();
    Ok(())
}

#[tokio::test]
async fn add_peer_refuses_this_nodes_own_id_and_more_than_peers_max() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let paths = init_certs(dir.path())?;
    // The highest id: it dials nobody, so a thousand peers cost nothing.
    let me = u64::MAX;
    let node = TestNode::start(
        &paths,
        me,
        bind(&paths, "127.0.0.1:0".parse()?)?,
        BTreeMap::new(),
    )?;
    let addr: SocketAddr = "127.0.0.1:9".parse()?;
    let err = node.net.add_peer(NodeId(me), addr).unwrap_err();
    assert!(err.to_string().contains("cannot be its own peer"), "{err}");
    assert!(node.net.peers().is_empty());

    for id in 0..PEERS_MAX as u64 {
        node.net.add_peer(NodeId(id), addr)?;
    }
    let err = node
        .net
        .add_peer(NodeId(PEERS_MAX as u64), addr)
        .unwrap_err();
    assert!(err.to_string().contains("PEERS_MAX"), "{err}");
    // A known peer is still accepted: nothing is added.
    node.net.add_peer(NodeId(0), addr)?;
    assert_eq!(node.net.peers().len(), PEERS_MAX);
    node.stop();
    Ok(())
}
