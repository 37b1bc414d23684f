//! The node over raw QUIC streams: hostile frames, limits, pipelining and group commit.
//! (The client library's own tests live in weir-client; these talk bytes.)

use anyhow::{Context, Result, bail};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use weir_node::{Node, NodeConfig, RunningNode};
use weir_proto::limits::FRAME_BYTES_MAX;
use weir_proto::*;

/// Bound on every wait in these tests: generous, since CI machines are shared.
const WAIT: Duration = Duration::from_secs(30);

async fn start_node(dir: &std::path::Path) -> Result<RunningNode> {
    let mut config = NodeConfig::new(dir);
    config.listen = "127.0.0.1:0".parse()?;
    Ok(Node::start(config).await?)
}

async fn connect(node: &RunningNode) -> Result<quinn::Connection> {
    connect_to(node.local_addr(), &node.certs().ca_cert).await
}

async fn connect_to(addr: SocketAddr, ca: &std::path::Path) -> Result<quinn::Connection> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in weir_node::certs::load_certs(ca)? {
        roots.add(cert)?;
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
    Ok(endpoint.connect(addr, "localhost")?.await?)
}

/// One request stream with a decoder for its replies.
struct Stream {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    decoder: FrameDecoder,
}

impl Stream {
    async fn open(conn: &quinn::Connection) -> Result<Self> {
        let (send, recv) = conn.open_bi().await?;
        Ok(Self {
            send,
            recv,
            decoder: FrameDecoder::new(FRAME_BYTES_MAX),
        })
    }

    async fn send(&mut self, id: u64, request: Request) -> Result<()> {
        self.send_all([(id, request)]).await
    }

    /// Every request in one write: what a pipelining client does.
    async fn send_all(&mut self, requests: impl IntoIterator<Item = (u64, Request)>) -> Result<()> {
        let mut buf = Vec::new();
        for (id, request) in requests {
            encode_frame(
                &ClientFrame {
                    id: RequestId(id),
                    request,
                },
                &mut buf,
            )?;
        }
        self.send.write_all(&buf).await?;
        Ok(())
    }

    /// The next reply, or None at the end of the stream.
    async fn next(&mut self) -> Result<Option<ServerFrame>> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if let Some(f) = self.decoder.next::<ServerFrame>()? {
                return Ok(Some(f));
            }
            match tokio::time::timeout(WAIT, self.recv.read(&mut buf))
                .await
                .context("no reply in time")??
            {
                Some(n) => self.decoder.extend(&buf[..n]),
                None => return Ok(None),
            }
        }
    }

    async fn call(&mut self, id: u64, request: Request) -> Result<Reply> {
        self.send(id, request).await?;
        let f = self.next().await?.context("stream ended")?;
        assert_eq!(f.id, RequestId(id));
        Ok(f.reply)
    }
}

fn put(topic: &str, value: &[u8]) -> Request {
    Request::Put(Put {
        topic: topic.into(),
        key: None,
        value: value.to_vec(),
        producer_id: ProducerId(0),
        seq: Seq(0),
    })
}

fn error_code(reply: &Reply) -> Option<ErrorCode> {
    match reply {
        Reply::Error(e) => Some(e.code),
        _ => None,
    }
}

async fn create_topic(conn: &quinn::Connection, name: &str) -> Result<()> {
    let mut s = Stream::open(conn).await?;
    let r = s
        .call(
            1,
            Request::CreateTopic {
                name: name.into(),
                config: TopicConfig::default(),
            },
        )
        .await?;
    if r != Reply::TopicCreated {
        bail!("create failed: {r:?}");
    }
    Ok(())
}

/// A node in `dir` with a topic "t", and a connection to it.
async fn node_with_topic_t(dir: &std::path::Path) -> Result<(RunningNode, quinn::Connection)> {
    let node = start_node(dir).await?;
    let conn = connect(&node).await?;
    create_topic(&conn, "t").await?;
    Ok((node, conn))
}

#[tokio::test]
async fn frame_claiming_4_gib_gets_an_error_and_only_its_stream_closes() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (node, conn) = node_with_topic_t(dir.path()).await?;

    let mut bad = Stream::open(&conn).await?;
    bad.send.write_all(&u32::MAX.to_be_bytes()).await?;
    let reply = bad.next().await?.context("expected an error reply")?;
    assert_eq!(reply.id, RequestId(0));
    assert_eq!(error_code(&reply.reply), Some(ErrorCode::TooLarge));
    assert!(bad.next().await?.is_none(), "the bad stream must be closed");

    // The same connection and a new one both keep working.
    let mut good = Stream::open(&conn).await?;
    assert!(matches!(
        good.call(1, put("t", b"x")).await?,
        Reply::Committed(_)
    ));
    let other = connect(&node).await?;
    let mut s = Stream::open(&other).await?;
    assert!(matches!(
        s.call(1, put("t", b"y")).await?,
        Reply::Committed(_)
    ));
    node.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn garbage_and_truncated_frames_are_bad_requests_and_the_node_keeps_serving() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (node, conn) = node_with_topic_t(dir.path()).await?;

    // Garbage body with a plausible length.
    let mut s = Stream::open(&conn).await?;
    let mut frame = 8u32.to_be_bytes().to_vec();
    frame.extend_from_slice(&[1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
    s.send.write_all(&frame).await?;
    let reply = s.next().await?.context("expected an error")?;
    assert_eq!(error_code(&reply.reply), Some(ErrorCode::BadRequest));

    // A frame cut short by the end of the stream.
    let mut s = Stream::open(&conn).await?;
    s.send.write_all(&100u32.to_be_bytes()).await?;
    s.send.write_all(&[1, 2, 3]).await?;
    s.send.finish()?;
    let reply = s.next().await?.context("expected an error")?;
    assert_eq!(error_code(&reply.reply), Some(ErrorCode::BadRequest));

    // An unknown version byte.
    let mut s = Stream::open(&conn).await?;
    s.send.write_all(&[0, 0, 0, 2, 9, 0]).await?;
    let reply = s.next().await?.context("expected an error")?;
    assert_eq!(
        error_code(&reply.reply),
        Some(ErrorCode::UnsupportedVersion)
    );

    let mut good = Stream::open(&conn).await?;
    assert!(matches!(
        good.call(7, put("t", b"ok")).await?,
        Reply::Committed(_)
    ));
    node.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn limits_unknown_topics_and_misplaced_listen_get_typed_errors() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (node, conn) = node_with_topic_t(dir.path()).await?;
    let mut s = Stream::open(&conn).await?;

    let big = vec![0u8; weir_proto::limits::VALUE_BYTES_DEFAULT + 1];
    assert_eq!(
        error_code(&s.call(1, put("t", &big)).await?),
        Some(ErrorCode::TooLarge)
    );
    let mut key_put = put("t", b"v");
    if let Request::Put(p) = &mut key_put {
        p.key = Some(vec![0; weir_proto::limits::KEY_BYTES_DEFAULT + 1]);
    }
    assert_eq!(
        error_code(&s.call(2, key_put).await?),
        Some(ErrorCode::TooLarge)
    );
    assert_eq!(
        error_code(&s.call(3, put("nope", b"v")).await?),
        Some(ErrorCode::NotFound)
    );
    let bad_name = Request::CreateTopic {
        name: "a/b".into(),
        config: TopicConfig::default(),
    };
    assert_eq!(
        error_code(&s.call(4, bad_name).await?),
        Some(ErrorCode::InvalidArgument)
    );
    let dup = Request::CreateTopic {
        name: "t".into(),
        config: TopicConfig::default(),
    };
    assert_eq!(
        error_code(&s.call(5, dup).await?),
        Some(ErrorCode::AlreadyExists)
    );
    // After all those errors the stream still works: they were requests, not bad frames.
    // (Offset 0 holds the leader's no-op entry, so the first message is at offset 1.)
    assert!(
        matches!(s.call(6, put("t", b"v")).await?, Reply::Committed(c) if c.offset == Offset(1))
    );

    let listen = Request::Listen {
        topic: "t".into(),
        from: ListenFrom::Start,
    };
    assert_eq!(
        error_code(&s.call(8, listen).await?),
        Some(ErrorCode::BadRequest)
    );

    let mut l = Stream::open(&conn).await?;
    let unknown = Request::Listen {
        topic: "nope".into(),
        from: ListenFrom::Start,
    };
    assert_eq!(
        error_code(&l.call(9, unknown).await?),
        Some(ErrorCode::NotFound)
    );
    node.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn pipelined_puts_on_eight_streams_share_fsyncs_and_get_distinct_increasing_offsets()
-> Result<()> {
    const STREAMS: usize = 8;
    const PUTS: u64 = 500;
    let dir = tempfile::tempdir()?;
    let (node, conn) = node_with_topic_t(dir.path()).await?;

    let mut tasks = Vec::new();
    for s in 0..STREAMS {
        let conn = conn.clone();
        tasks.push(tokio::spawn(async move {
            let mut stream = Stream::open(&conn).await?;
            // Send every PUT before reading any reply: pipelining.
            stream
                .send_all((1..=PUTS).map(|i| (i, put("t", format!("{s}-{i}").as_bytes()))))
                .await?;
            stream.send.finish()?;
            let mut offsets = Vec::new();
            while let Some(f) = stream.next().await? {
                match f.reply {
                    Reply::Committed(c) => offsets.push(c.offset),
                    other => bail!("unexpected reply {other:?}"),
                }
            }
            anyhow::Ok(offsets)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    all.sort();
    // Offset 0 is the leader's no-op; one term, so the messages fill every offset after it.
    let expected: Vec<Offset> = (1..=STREAMS as u64 * PUTS).map(Offset).collect();
    assert_eq!(
        all, expected,
        "every PUT acknowledged once, at its own offset"
    );

    let mut s = Stream::open(&conn).await?;
    let Reply::Status(status) = s.call(1, Request::Status).await? else {
        bail!("no status");
    };
    let t = &status.topics[0];
    assert_eq!(
        t.appends,
        STREAMS as u64 * PUTS + 1,
        "the messages and the no-op"
    );
    assert_eq!(t.committed_offset, Offset(STREAMS as u64 * PUTS + 1));
    // Group commit: one fsync covers everything that queued up while the previous one ran.
    assert!(
        t.fsyncs * 2 < t.appends,
        "expected group commit: {} fsyncs for {} appends",
        t.fsyncs,
        t.appends
    );
    node.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn puts_sent_in_one_write_with_bad_ones_among_them_are_each_answered_in_order() -> Result<()>
{
    let dir = tempfile::tempdir()?;
    let (node, conn) = node_with_topic_t(dir.path()).await?;
    let mut s = Stream::open(&conn).await?;
    let big = vec![0u8; weir_proto::limits::VALUE_BYTES_DEFAULT + 1];
    let mut big_key = put("t", b"k");
    if let Request::Put(p) = &mut big_key {
        p.key = Some(vec![0; weir_proto::limits::KEY_BYTES_DEFAULT + 1]);
    }
    // One write: good PUTs with refused ones and a Status among them, and more PUTs than one
    // batch takes, so the node proposes them in several batches.
    let mut requests: Vec<(u64, Request)> = vec![
        (1, put("t", b"good-1")),
        (2, put("t", &big)),
        (3, put("nope", b"unknown topic")),
        (4, put("t", b"good-4")),
        (5, big_key),
        (6, Request::Status),
    ];
    let many = weir_node::server::PUT_BATCH_MAX as u64 + 50;
    for id in 7..7 + many {
        requests.push((id, put("t", format!("good-{id}").as_bytes())));
    }
    s.send_all(requests).await?;
    s.send.finish()?;
    let mut committed = Vec::new();
    let mut refused = Vec::new();
    let mut status = false;
    while let Some(f) = s.next().await? {
        match f.reply {
            Reply::Committed(c) => committed.push((f.id.0, c.offset)),
            Reply::Status(_) => status = f.id == RequestId(6),
            Reply::Error(e) => refused.push((f.id.0, e.code)),
            other => bail!("unexpected reply {other:?}"),
        }
    }
    assert!(status, "the Status in the middle was answered");
    refused.sort_by_key(|(id, _)| *id);
    assert_eq!(
        refused,
        vec![
            (2, ErrorCode::TooLarge),
            (3, ErrorCode::NotFound),
            (5, ErrorCode::TooLarge)
        ]
    );
    committed.sort();
    let ids: Vec<u64> = committed.iter().map(|(id, _)| *id).collect();
    let mut expected_ids = vec![1, 4];
    expected_ids.extend(7..7 + many);
    assert_eq!(ids, expected_ids, "every good PUT committed once");
    // One stream's PUTs are proposed in the order they came: offsets follow the ids, and
    // (one term, the no-op at 0) fill 1.. without a gap.
    let offsets: Vec<Offset> = committed.iter().map(|(_, o)| *o).collect();
    let expected: Vec<Offset> = (1..=offsets.len() as u64).map(Offset).collect();
    assert_eq!(offsets, expected);
    node.shutdown().await;
    Ok(())
}

fn batch(topic: &str, values: &[&[u8]]) -> Request {
    Request::PutBatch(PutBatch {
        topic: topic.into(),
        producer_id: ProducerId(0),
        first_seq: Seq(0),
        messages: values
            .iter()
            .map(|v| PutMessage {
                key: None,
                value: v.to_vec(),
            })
            .collect(),
    })
}

#[tokio::test]
async fn a_put_batch_gets_one_answer_with_a_result_per_message_in_order() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (node, conn) = node_with_topic_t(dir.path()).await?;
    let mut s = Stream::open(&conn).await?;
    let big = vec![0u8; weir_proto::limits::VALUE_BYTES_DEFAULT + 1];
    let reply = s.call(1, batch("t", &[b"a", b"b", &big, b"c"])).await?;
    let Reply::CommittedBatch(results) = reply else {
        bail!("expected CommittedBatch, got {reply:?}");
    };
    assert_eq!(results.len(), 4);
    let offsets: Vec<Option<Offset>> = results
        .iter()
        .map(|r| match r {
            PutResult::Committed(c) => Some(c.offset),
            PutResult::Error(_) => None,
        })
        .collect();
    // The no-op holds offset 0; the refused message takes none.
    assert_eq!(
        offsets,
        vec![Some(Offset(1)), Some(Offset(2)), None, Some(Offset(3))]
    );
    assert!(matches!(&results[2], PutResult::Error(e) if e.code == ErrorCode::TooLarge));
    // Refused whole: one Error, not a result per message.
    assert_eq!(
        error_code(&s.call(2, batch("nope", &[b"x"])).await?),
        Some(ErrorCode::NotFound)
    );
    assert_eq!(
        error_code(&s.call(3, batch("t", &[])).await?),
        Some(ErrorCode::BadRequest)
    );
    let too_many = vec![b"m".as_slice(); weir_proto::limits::PUT_BATCH_MESSAGES_MAX + 1];
    assert_eq!(
        error_code(&s.call(4, batch("t", &too_many)).await?),
        Some(ErrorCode::BadRequest)
    );
    // The stream still works, and the batch's messages are readable at their offsets.
    let reply = s.call(5, put("t", b"after")).await?;
    assert!(
        matches!(&reply, Reply::Committed(c) if c.offset == Offset(4)),
        "{reply:?}"
    );
    node.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn listener_follows_the_tail_and_sees_deletion() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (node, conn) = node_with_topic_t(dir.path()).await?;
    let mut s = Stream::open(&conn).await?;
    assert!(matches!(
        s.call(1, put("t", b"a")).await?,
        Reply::Committed(_)
    ));

    let mut l = Stream::open(&conn).await?;
    l.send(
        1,
        Request::Listen {
            topic: "t".into(),
            from: ListenFrom::Start,
        },
    )
    .await?;
    let mut seen = Vec::new();
    for i in 2..=3 {
        while seen.len() < (i - 1) as usize {
            match l.next().await?.context("listen ended")?.reply {
                Reply::Events(evs) => seen.extend(evs.into_iter().map(|e| e.value)),
                other => bail!("unexpected {other:?}"),
            }
        }
        assert!(matches!(
            s.call(i, put("t", &[b'a' + i as u8 - 1])).await?,
            Reply::Committed(_)
        ));
    }
    while seen.len() < 3 {
        match l.next().await?.context("listen ended")?.reply {
            Reply::Events(evs) => seen.extend(evs.into_iter().map(|e| e.value)),
            other => bail!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen, vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);

    assert_eq!(
        s.call(9, Request::DeleteTopic { name: "t".into() }).await?,
        Reply::TopicDeleted
    );
    let end = l.next().await?.context("expected an error")?;
    assert_eq!(error_code(&end.reply), Some(ErrorCode::NotFound));
    assert_eq!(
        s.call(10, Request::ListTopics).await?,
        Reply::Topics(vec![])
    );
    node.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn acknowledged_puts_survive_a_restart_with_their_timestamps() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (node, conn) = node_with_topic_t(dir.path()).await?;
    let mut s = Stream::open(&conn).await?;
    let mut acks = Vec::new();
    for i in 0..20u64 {
        match s.call(i + 1, put("t", &i.to_le_bytes())).await? {
            Reply::Committed(c) => acks.push(c),
            other => bail!("unexpected {other:?}"),
        }
    }
    drop(s);
    conn.close(0u32.into(), b"");
    node.shutdown().await;

    let node = start_node(dir.path()).await?;
    let conn = connect(&node).await?;
    let mut l = Stream::open(&conn).await?;
    l.send(
        1,
        Request::Listen {
            topic: "t".into(),
            from: ListenFrom::Start,
        },
    )
    .await?;
    let mut events = Vec::new();
    while events.len() < acks.len() {
        match l.next().await?.context("listen ended")?.reply {
            Reply::Events(evs) => events.extend(evs),
            other => bail!("unexpected {other:?}"),
        }
    }
    for (i, (e, a)) in events.iter().zip(&acks).enumerate() {
        assert_eq!(e.offset, a.offset);
        assert_eq!(e.timestamp_ms, a.timestamp_ms);
        assert_eq!(e.value, (i as u64).to_le_bytes());
    }
    // Timestamps never go backwards, also across the restart.
    let mut s = Stream::open(&conn).await?;
    let Reply::Committed(c) = s.call(1, put("t", b"after")).await? else {
        bail!("put after restart failed");
    };
    // The restarted leader's no-op takes the offset after the last message.
    assert_eq!(c.offset.get(), acks.last().unwrap().offset.get() + 2);
    assert!(c.timestamp_ms >= acks.last().unwrap().timestamp_ms);
    node.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn interval_fsync_syncs_an_idle_topic_on_its_own() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config = NodeConfig::new(dir.path());
    config.listen = "127.0.0.1:0".parse()?;
    // Long enough that the PUT below, made right after the topic is created, is acknowledged
    // before the interval has elapsed, so its commit does not fsync: only the writer's idle
    // tick can.
    config.fsync = weir_node::FsyncPolicy::Interval { interval_ms: 1000 };
    let node = Node::start(config).await?;
    let conn = connect(&node).await?;
    create_topic(&conn, "t").await?;
    let mut s = Stream::open(&conn).await?;
    let offsets = |reply: Reply| match reply {
        Reply::Status(st) => (st.topics[0].committed_offset, st.topics[0].durable_offset),
        other => panic!("unexpected {other:?}"),
    };
    assert!(matches!(
        s.call(1, put("t", b"a")).await?,
        Reply::Committed(_)
    ));
    // Acknowledged (committed) at once, fsynced by the idle tick within the interval. The tick
    // is internal, so there is no event to await: poll status, bounded.
    let mut ticker = tokio::time::interval(Duration::from_millis(20));
    let deadline = tokio::time::Instant::now() + WAIT;
    for id in 2.. {
        ticker.tick().await;
        let (committed, durable) = offsets(s.call(id, Request::Status).await?);
        assert_eq!(committed, Offset(2), "the no-op and the message");
        if durable == committed {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no interval fsync happened"
        );
    }
    node.shutdown().await;
    Ok(())
}

/// A batch of `values` from producer `producer`, numbered from `first_seq`.
fn producer_batch(topic: &str, producer: u64, first_seq: u64, values: &[&[u8]]) -> Request {
    let Request::PutBatch(mut b) = batch(topic, values) else {
        unreachable!("batch builds a PutBatch")
    };
    b.producer_id = ProducerId(producer);
    b.first_seq = Seq(first_seq);
    Request::PutBatch(b)
}

/// Each result's (offset, timestamp), or its error code.
fn batch_results(reply: Reply) -> Result<Vec<Result<(Offset, TimestampMs), ErrorCode>>> {
    let Reply::CommittedBatch(results) = reply else {
        bail!("expected CommittedBatch, got {reply:?}");
    };
    Ok(results
        .into_iter()
        .map(|r| match r {
            PutResult::Committed(c) => Ok((c.offset, c.timestamp_ms)),
            PutResult::Error(e) => Err(e.code),
        })
        .collect())
}

/// The offset an anonymous PUT gets: shows how many entries the topic holds.
async fn next_put_offset(s: &mut Stream, id: u64, topic: &str) -> Result<Offset> {
    match s.call(id, put(topic, b"probe")).await? {
        Reply::Committed(c) => Ok(c.offset),
        other => bail!("probe PUT failed: {other:?}"),
    }
}

#[tokio::test]
async fn a_resent_batch_gets_its_original_offsets_and_is_not_appended_again() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (node, conn) = node_with_topic_t(dir.path()).await?;
    let mut s = Stream::open(&conn).await?;
    let first = batch_results(
        s.call(1, producer_batch("t", 7, 0, &[b"a", b"b", b"c"]))
            .await?,
    )?;
    let offsets: Vec<_> = first.iter().map(|r| r.map(|(o, _)| o)).collect();
    // The no-op holds offset 0.
    assert_eq!(offsets, vec![Ok(Offset(1)), Ok(Offset(2)), Ok(Offset(3))]);
    // The same batch again (a client that lost the answer): the same answer, nothing new.
    let again = batch_results(
        s.call(2, producer_batch("t", 7, 0, &[b"a", b"b", b"c"]))
            .await?,
    )?;
    assert_eq!(again, first, "a resend is answered as the original was");
    assert_eq!(next_put_offset(&mut s, 3, "t").await?, Offset(4));
    // A resend overlapping new PUTs: the old ones answered, the new ones appended once.
    let overlap = batch_results(
        s.call(4, producer_batch("t", 7, 2, &[b"c", b"d", b"e"]))
            .await?,
    )?;
    let offsets: Vec<_> = overlap.iter().map(|r| r.map(|(o, _)| o)).collect();
    assert_eq!(offsets, vec![Ok(Offset(3)), Ok(Offset(5)), Ok(Offset(6))]);
    // A lone PUT of the producer, resent: one entry.
    let lone = |seq: u64| {
        Request::Put(Put {
            topic: "t".into(),
            key: None,
            value: b"f".to_vec(),
            producer_id: ProducerId(7),
            seq: Seq(seq),
        })
    };
    let Reply::Committed(f) = s.call(5, lone(5)).await? else {
        bail!("lone PUT failed");
    };
    assert_eq!(f.offset, Offset(7));
    assert_eq!(s.call(6, lone(5)).await?, Reply::Committed(f));
    assert_eq!(next_put_offset(&mut s, 7, "t").await?, Offset(8));
    node.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_sequence_gap_is_refused_as_out_of_order_and_writes_nothing() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (node, conn) = node_with_topic_t(dir.path()).await?;
    let mut s = Stream::open(&conn).await?;
    // A producer the topic does not know must start at 0.
    let unknown = batch_results(s.call(1, producer_batch("t", 9, 3, &[b"x", b"y"])).await?)?;
    assert_eq!(
        unknown,
        vec![
            Err(ErrorCode::OutOfOrderSequence),
            Err(ErrorCode::OutOfOrderSequence)
        ]
    );
    assert_eq!(next_put_offset(&mut s, 2, "t").await?, Offset(1));
    let started = batch_results(s.call(3, producer_batch("t", 9, 0, &[b"a", b"b"])).await?)?;
    assert!(started.iter().all(Result::is_ok), "{started:?}");
    // Skipping sequence number 2: refused, not reordered.
    let gap = batch_results(s.call(4, producer_batch("t", 9, 3, &[b"d"])).await?)?;
    assert_eq!(gap, vec![Err(ErrorCode::OutOfOrderSequence)]);
    assert_eq!(next_put_offset(&mut s, 5, "t").await?, Offset(4));
    // The missing one, then the refused one: both land, in order.
    let filled = batch_results(s.call(6, producer_batch("t", 9, 2, &[b"c", b"d"])).await?)?;
    let offsets: Vec<_> = filled.iter().map(|r| r.map(|(o, _)| o)).collect();
    assert_eq!(offsets, vec![Ok(Offset(5)), Ok(Offset(6))]);
    // A retryable refusal: nothing of it was written.
    assert!(ErrorCode::OutOfOrderSequence.is_retryable());
    node.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn producer_state_survives_compaction_and_a_restart() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let start = || {
        let mut config = NodeConfig::new(dir.path());
        config.listen = "127.0.0.1:0".parse().expect("an address");
        config.retention_check_interval_ms = 20;
        Node::start(config)
    };
    let node = start().await?;
    let conn = connect(&node).await?;
    let mut s = Stream::open(&conn).await?;
    let created = s
        .call(
            1,
            Request::CreateTopic {
                name: "r".into(),
                config: TopicConfig {
                    retention_bytes: Some(4096),
                    segment_bytes: Some(4096),
                    ..TopicConfig::default()
                },
            },
        )
        .await?;
    assert_eq!(created, Reply::TopicCreated);
    let value = vec![7u8; 1000];
    let values: Vec<&[u8]> = vec![&value; 4];
    let mut answers = Vec::new();
    for b in 0..5u64 {
        let reply = s
            .call(10 + b, producer_batch("r", 5, b * 4, &values))
            .await?;
        answers.push(batch_results(reply)?);
    }
    // Retention compacts the first batches away (polled: the check is internal, bounded).
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut ticker = tokio::time::interval(Duration::from_millis(20));
    for id in 100.. {
        ticker.tick().await;
        let Reply::Status(st) = s.call(id, Request::Status).await? else {
            bail!("status failed");
        };
        if st.topics[0].start_offset > Offset(4) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "retention never ran"
        );
    }
    drop(s);
    conn.close(0u32.into(), b"");
    node.shutdown().await;

    // Restarted from the snapshot retention wrote plus the log after it.
    let node = start().await?;
    let conn = connect(&node).await?;
    let mut s = Stream::open(&conn).await?;
    for (b, answer) in answers.iter().enumerate() {
        let b = b as u64;
        let again = batch_results(
            s.call(b + 1, producer_batch("r", 5, b * 4, &values))
                .await?,
        )?;
        assert_eq!(
            &again, answer,
            "batch {b} resent after compaction and restart"
        );
    }
    // The producer goes on where it was; nothing was appended for the resends.
    let next = batch_results(s.call(50, producer_batch("r", 5, 20, &[b"next"])).await?)?;
    let last = answers[4][3].map_err(|e| anyhow::anyhow!("{e:?}"))?.0;
    // The restarted leader's no-op comes first.
    assert_eq!(next[0].map(|(o, _)| o), Ok(Offset(last.0 + 2)));
    node.shutdown().await;
    Ok(())
}
