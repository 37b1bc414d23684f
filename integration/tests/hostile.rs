//! Bad input from one client costs the node a bounded amount of memory, and everyone else's PUTs
//! go on: a connection that tries to open 10,000 streams and leaves each in the middle of a
//! frame, and a listener that never reads, on a real `weir node` process.

use anyhow::{Context, Result, bail};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use std::sync::Arc;
use std::time::Duration;
use weir_client::TopicConfig;
use weir_integration::NodeProcess;
use weir_proto::{ALPN, ClientFrame, ListenFrom, Request, RequestId, encode_frame};

/// Streams the hostile connection tries to open.
const IDLE_STREAMS: usize = 10_000;
/// Streams the node grants a connection at once (`weir_node::server::STREAMS_PER_CONNECTION_MAX`).
const STREAMS_PER_CONNECTION: usize = 256;
/// How long one stream may take to open before the node is taken to refuse more.
const STREAM_OPEN_WAIT: Duration = Duration::from_millis(500);
/// What the node may grow by while holding all of that: less than the 16 MiB the topic ends up
/// holding, so neither the idle streams nor the listener may buffer the topic in memory.
const NODE_GROWTH_MIB_MAX: u64 = 16;
/// Bound on every wait: generous, since CI machines are shared.
const WAIT: Duration = Duration::from_secs(60);

/// A QUIC connection to `node` that speaks the client protocol by hand.
async fn raw_connection(node: &NodeProcess) -> Result<quinn::Connection> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(node.ca_cert())? {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    Ok(endpoint.connect(node.addr, "localhost")?.await?)
}

/// Resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS line")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("no VmRSS value")?
        .parse()?)
}

/// 128 PUTs of 64 KiB (8 MiB), each committed.
async fn put_8_mib(client: &weir_client::Client, round: u8) -> Result<()> {
    let mut producer = client.producer("t", 64)?;
    let mut handles = Vec::new();
    for _ in 0..128 {
        handles.push(producer.send(None, vec![round; 64 * 1024]).await?);
    }
    for handle in handles {
        tokio::time::timeout(WAIT, handle)
            .await
            .context("a PUT was not answered")??;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_streams_and_a_listener_that_never_reads_leave_the_node_bounded_and_serving()
-> Result<()> {
    let dir = tempfile::tempdir()?;
    let node = NodeProcess::start(&dir.path().join("node"), "127.0.0.1:0", &[]).await?;
    let pid = node.pid().context("no pid")?;
    let client = node.client().await?;
    client.create_topic("t", TopicConfig::default()).await?;
    put_8_mib(&client, 1).await?;
    let before_kib = rss_kib(pid)?;

    // One connection tries to open 10,000 streams, each left in the middle of a frame (a length
    // prefix and a version byte, then nothing).
    let hostile = raw_connection(&node).await?;
    let mut idle = Vec::new();
    for _ in 0..IDLE_STREAMS {
        match tokio::time::timeout(STREAM_OPEN_WAIT, hostile.open_bi()).await {
            Ok(Ok((mut send, recv))) => {
                send.write_all(&[0, 0, 0, 9, 1]).await?;
                idle.push((send, recv));
            }
            Ok(Err(e)) => bail!("opening a stream: {e}"),
            // No credit for another stream: the node's limit.
            Err(_) => break,
        }
    }
    assert_eq!(
        idle.len(),
        STREAMS_PER_CONNECTION,
        "the node grants a connection {STREAMS_PER_CONNECTION} streams at once, however many \
         it asks for"
    );

    // A listener from the start that never reads: the node may send only what QUIC's flow
    // control lets through, then waits.
    let lazy = raw_connection(&node).await?;
    let (mut listen, _never_read) = lazy.open_bi().await?;
    let mut frame = Vec::new();
    encode_frame(
        &ClientFrame {
            id: RequestId(1),
            request: Request::Listen {
                topic: "t".into(),
                from: ListenFrom::Start,
            },
        },
        &mut frame,
    )?;
    listen.write_all(&frame).await?;

    // Everyone else's PUTs go on meanwhile: 8 MiB more, each committed.
    put_8_mib(&client, 2).await?;
    let status = client.status().await?;
    let topic = status
        .topics
        .iter()
        .find(|t| t.name == "t")
        .context("no topic t")?;
    assert!(topic.committed_offset.get() >= 256, "{topic:?}");

    let after_kib = rss_kib(pid)?;
    let grown_mib = after_kib.saturating_sub(before_kib) / 1024;
    println!(
        "node RSS: {} MiB before, {} MiB with {} idle streams, a listener that never reads and 8 \
         MiB more PUTs (+{grown_mib} MiB)",
        before_kib / 1024,
        after_kib / 1024,
        idle.len()
    );
    assert!(
        grown_mib < NODE_GROWTH_MIB_MAX,
        "the node grew by {grown_mib} MiB (bound {NODE_GROWTH_MIB_MAX} MiB)"
    );
    drop(idle);
    hostile.close(0u32.into(), b"done");
    lazy.close(0u32.into(), b"done");
    node.stop().await?;
    Ok(())
}
