//! The QUIC side: accepts connections and streams, decodes frames, dispatches requests and
//! writes replies. See docs/PROTOCOL.md.
//!
//! A stream whose first frame is `Listen` becomes an event stream; any other stream is a
//! request stream on which PUTs are pipelined: each PUT is queued to its topic's writer at once,
//! and replies go out as group commits finish, coalesced into as few writes as possible.

use crate::cluster::Cluster;
use crate::group_store::decode_record;
use crate::peer::{PEER_ALPN, PeerNet};
use crate::topic::{BatchReply, ReplyTo};
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;
use tokio::sync::{Semaphore, mpsc};
use tracing::Instrument;
use weir_proto::entry::{decode_entry, encode_entry};
use weir_proto::limits::{
    EVENTS_BATCH_BYTES_MAX, EVENTS_BATCH_COUNT_MAX, FRAME_BYTES_MAX, PUT_BATCH_MESSAGES_MAX,
};
use weir_proto::{
    ClientFrame, ErrorCode, ErrorReply, Event, FrameDecoder, FrameError, ListenFrom, NodeStatus,
    Offset, PROTOCOL_VERSION, PeerStatus, Put, PutBatch, Reply, Request, RequestId, Seq,
    ServerFrame, encode_frame,
};
use weir_storage::ReadError;

/// Most client connections at once; more are refused at the QUIC handshake.
pub const CONNECTIONS_MAX: usize = 4096;
/// Most bidirectional streams a client may have open per connection.
pub const STREAMS_PER_CONNECTION_MAX: u32 = 256;
/// Most PUTs in flight (received, not yet answered) per stream. Past it the node stops reading
/// the stream, and QUIC flow control pushes back on the client.
pub const PUTS_IN_FLIGHT_PER_STREAM_MAX: usize = 8192;
/// Most PUTs of one stream proposed together: those already decoded when the first is taken
/// (what one read brought), so batching never waits for more. Below both the stream's and the
/// topic's in-flight limits, so a batch can always get its permits.
pub const PUT_BATCH_MAX: usize = PUT_BATCH_MESSAGES_MAX;
const _: () = assert!(PUT_BATCH_MAX <= PUTS_IN_FLIGHT_PER_STREAM_MAX);
const _: () = assert!(PUT_BATCH_MAX <= crate::topic::PUTS_PENDING_PER_TOPIC_MAX);
/// Most bytes taken from a stream at a time.
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Replies coalesced into one write stop growing at this size.
const WRITE_COALESCE_BYTES_MAX: usize = 256 * 1024;
/// Id used in the error reply to a frame that could not be decoded (its id is unknown).
/// Clients number their requests from 1.
pub const UNDECODABLE_FRAME_ID: RequestId = RequestId(0);

pub(crate) struct Ctx {
    pub cluster: Arc<Cluster>,
    pub started: Instant,
    pub fsync: String,
    pub max_message_bytes: usize,
    pub max_key_bytes: usize,
    pub connections: AtomicUsize,
    pub node_id: weir_raft::NodeId,
    /// The other cluster members and their addresses (empty for a single node).
    pub peer_addrs: std::collections::BTreeMap<weir_raft::NodeId, std::net::SocketAddr>,
    /// Takes `weir-peer/1` connections; `None` (no peers configured) refuses them.
    pub peers: Option<PeerNet>,
}

pub(crate) async fn accept_loop(endpoint: quinn::Endpoint, ctx: Arc<Ctx>) {
    while let Some(incoming) = endpoint.accept().await {
        if ctx.connections.load(Ordering::Relaxed) >= CONNECTIONS_MAX {
            tracing::warn!(remote = %incoming.remote_address(), "refusing connection: CONNECTIONS_MAX reached");
            incoming.refuse();
            continue;
        }
        let ctx = ctx.clone();
        let remote = incoming.remote_address();
        tokio::spawn(
            async move {
                ctx.connections.fetch_add(1, Ordering::Relaxed);
                match incoming.await {
                    Ok(conn) => route(&ctx, conn).await,
                    Err(e) => tracing::debug!(error = %e, "handshake failed"),
                }
                ctx.connections.fetch_sub(1, Ordering::Relaxed);
            }
            .instrument(tracing::info_span!("peer", %remote)),
        );
    }
}

/// Routes a connection by its negotiated ALPN: `weir-peer/1` to the node-to-node transport,
/// anything else (`weir/1`) to client handling.
async fn route(ctx: &Arc<Ctx>, conn: quinn::Connection) {
    if crate::peer::negotiated_alpn(&conn).as_deref() != Some(PEER_ALPN) {
        return handle_connection(ctx.clone(), conn).await;
    }
    match &ctx.peers {
        Some(peers) => peers.handle_incoming(conn).await,
        None => crate::peer::refuse(
            &conn,
            "this node has no peers configured: weir-peer/1 connections are refused",
        ),
    }
}

async fn handle_connection(ctx: Arc<Ctx>, conn: quinn::Connection) {
    tracing::debug!("connection open");
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                let ctx = ctx.clone();
                tokio::spawn(handle_stream(ctx, send, recv).in_current_span());
            }
            Err(e) => {
                tracing::debug!(reason = %e, "connection closed");
                return;
            }
        }
    }
}

/// Reads the next whole frame. `Ok(None)` at a clean end of stream. Takes what QUIC received
/// as it is (no read buffer per stream: an idle stream costs only its decoder, empty).
pub(crate) async fn read_frame<T: DeserializeOwned>(
    recv: &mut quinn::RecvStream,
    decoder: &mut FrameDecoder,
) -> Result<Option<T>, StreamEnd> {
    loop {
        if let Some(frame) = decoder.next::<T>().map_err(StreamEnd::Frame)? {
            return Ok(Some(frame));
        }
        match recv.read_chunk(READ_CHUNK_BYTES, true).await {
            Ok(Some(chunk)) => {
                decoder.extend(&chunk.bytes);
                decoder.check_header().map_err(StreamEnd::Frame)?;
            }
            Ok(None) if decoder.buffered_bytes() == 0 => return Ok(None),
            Ok(None) => {
                return Err(StreamEnd::Frame(FrameError::Malformed(format!(
                    "stream ended inside a frame ({} bytes buffered)",
                    decoder.buffered_bytes()
                ))));
            }
            Err(e) => return Err(StreamEnd::Read(e)),
        }
    }
}

pub(crate) enum StreamEnd {
    Frame(FrameError),
    Read(quinn::ReadError),
}

fn frame_error_reply(e: &FrameError) -> ErrorReply {
    let code = match e {
        FrameError::TooLarge { .. } => ErrorCode::TooLarge,
        FrameError::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
        FrameError::Empty | FrameError::Malformed(_) => ErrorCode::BadRequest,
    };
    ErrorReply::new(code, format!("{e}; closing the stream"))
}

async fn handle_stream(ctx: Arc<Ctx>, mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
    let mut decoder = FrameDecoder::new(FRAME_BYTES_MAX);
    let first = match read_frame::<ClientFrame>(&mut recv, &mut decoder).await {
        Ok(Some(f)) => f,
        Ok(None) => return,
        Err(StreamEnd::Read(e)) => {
            tracing::debug!(error = %e, "stream read failed");
            return;
        }
        Err(StreamEnd::Frame(e)) => {
            tracing::info!(error = %e, "bad frame; closing the stream");
            write_one(
                &mut send,
                UNDECODABLE_FRAME_ID,
                Reply::Error(frame_error_reply(&e)),
            )
            .await;
            let _ = recv.stop(0u32.into());
            return;
        }
    };
    if let Request::Listen { topic, from } = first.request {
        let span = tracing::info_span!("topic", %topic);
        listen(ctx, first.id, topic, from, send, recv)
            .instrument(span)
            .await;
        return;
    }

    let (tx, rx) = mpsc::unbounded_channel();
    let writer = tokio::spawn(write_replies(send, rx).in_current_span());
    let in_flight = Arc::new(Semaphore::new(PUTS_IN_FLIGHT_PER_STREAM_MAX));
    let mut next = Some(first);
    loop {
        let frame = match next.take() {
            Some(f) => f,
            None => match read_frame(&mut recv, &mut decoder).await {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(StreamEnd::Read(e)) => {
                    tracing::debug!(error = %e, "stream read failed");
                    break;
                }
                Err(StreamEnd::Frame(e)) => {
                    refuse_bad_frame(&e, &tx, &mut recv);
                    break;
                }
            },
        };
        let frame = match frame.request {
            Request::Put(put) => {
                // Every PUT already decoded behind this one goes with it: proposed together,
                // one write and one round of replication for all.
                let mut puts = vec![(ReplyTo::frame(frame.id, &tx), put)];
                let mut bad = None;
                while puts.len() < PUT_BATCH_MAX {
                    match decoder.next::<ClientFrame>() {
                        Ok(Some(ClientFrame {
                            id,
                            request: Request::Put(put),
                        })) => puts.push((ReplyTo::frame(id, &tx), put)),
                        Ok(Some(other)) => {
                            next = Some(other);
                            break;
                        }
                        Ok(None) => break,
                        Err(e) => {
                            bad = Some(e);
                            break;
                        }
                    }
                }
                if !put_batch(&ctx, puts, &in_flight).await {
                    let _ = recv.stop(0u32.into());
                    break;
                }
                if let Some(e) = bad {
                    refuse_bad_frame(&e, &tx, &mut recv);
                    break;
                }
                continue;
            }
            request => ClientFrame {
                id: frame.id,
                request,
            },
        };
        if !dispatch(&ctx, frame, &tx, &in_flight).await {
            let _ = recv.stop(0u32.into());
            break;
        }
    }
    // The writer finishes the stream once every queued PUT has been answered.
    drop(tx);
    let _ = writer.await;
}

/// Answers a frame that could not be decoded (with the id reserved for that) and stops reading
/// the stream; what was queued before it is still answered.
fn refuse_bad_frame(
    e: &FrameError,
    tx: &mpsc::UnboundedSender<ServerFrame>,
    recv: &mut quinn::RecvStream,
) {
    tracing::info!(error = %e, "bad frame; closing the stream");
    let _ = tx.send(ServerFrame {
        id: UNDECODABLE_FRAME_ID,
        reply: Reply::Error(frame_error_reply(e)),
    });
    let _ = recv.stop(0u32.into());
}

/// Handles one request of a request stream. Returns false if the stream must close.
async fn dispatch(
    ctx: &Arc<Ctx>,
    frame: ClientFrame,
    tx: &mpsc::UnboundedSender<ServerFrame>,
    in_flight: &Arc<Semaphore>,
) -> bool {
    let id = frame.id;
    let reply = |reply: Reply| {
        let _ = tx.send(ServerFrame { id, reply });
    };
    match frame.request {
        Request::Put(put) => {
            return put_batch(ctx, vec![(ReplyTo::frame(id, tx), put)], in_flight).await;
        }
        Request::PutBatch(batch) => return put_request_batch(ctx, id, batch, tx, in_flight).await,
        Request::Hello {
            protocol_version, ..
        } => {
            if protocol_version != PROTOCOL_VERSION {
                reply(Reply::Error(ErrorReply::new(
                    ErrorCode::UnsupportedVersion,
                    format!(
                        "client speaks protocol {protocol_version}, this node speaks {PROTOCOL_VERSION}"
                    ),
                )));
                return false;
            }
            reply(Reply::Hello {
                protocol_version: PROTOCOL_VERSION,
                server_version: env!("CARGO_PKG_VERSION").to_string(),
                max_message_bytes: ctx.max_message_bytes as u64,
                max_key_bytes: ctx.max_key_bytes as u64,
            });
        }
        // Admin requests run to completion before the next frame of this stream is read, so a
        // PUT pipelined after a CreateTopic finds the topic.
        Request::CreateTopic { name, config } => {
            reply(match ctx.cluster.create_topic(name, config).await {
                Ok(()) => Reply::TopicCreated,
                Err(e) => Reply::Error(e),
            });
        }
        Request::DeleteTopic { name } => {
            reply(match ctx.cluster.delete_topic(name).await {
                Ok(()) => Reply::TopicDeleted,
                Err(e) => Reply::Error(e),
            });
        }
        Request::AddNode { node_id, addr } => {
            reply(match ctx.cluster.add_node(node_id, addr).await {
                Ok(()) => Reply::ClusterChanged,
                Err(e) => Reply::Error(e),
            });
        }
        Request::RemoveNode { node_id } => {
            reply(match ctx.cluster.remove_node(node_id).await {
                Ok(()) => Reply::ClusterChanged,
                Err(e) => Reply::Error(e),
            });
        }
        Request::Cluster => reply(Reply::Cluster(ctx.cluster.cluster_info())),
        Request::ListTopics => reply(Reply::Topics(ctx.cluster.list())),
        Request::Status => reply(Reply::Status(NodeStatus {
            server_version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_ms: u64::try_from(ctx.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            fsync: ctx.fsync.clone(),
            topics: ctx
                .cluster
                .local_topics()
                .iter()
                .map(|t| t.status())
                .collect(),
            node_id: ctx.node_id.0,
            peers: peer_statuses(ctx),
            metadata: ctx.cluster.metadata_status(),
        })),
        Request::DeployProgram {
            topic,
            program,
            reset_state,
        } => {
            let reply_to = ReplyTo::frame(id, tx);
            match ctx.cluster.topic_or_redirect(&topic) {
                Ok(t) => t.deploy(program, reset_state, reply_to),
                Err(e) => reply_to.send(Reply::Error(e)),
            }
        }
        Request::ShowProgram { topic } => {
            // Hashing the state replays the inputs since the last checkpoint: off the runtime.
            let info = match ctx.cluster.topic_or_redirect(&topic) {
                Ok(t) => tokio::task::spawn_blocking(move || t.program_info())
                    .await
                    .unwrap_or_else(|e| Err(ErrorReply::new(ErrorCode::Internal, e.to_string()))),
                Err(e) => Err(e),
            };
            reply(match info {
                Ok(info) => Reply::Program(info),
                Err(e) => Reply::Error(e),
            });
        }
        Request::Listen { .. } => {
            reply(Reply::Error(ErrorReply::new(
                ErrorCode::BadRequest,
                "Listen must be the first request of its own stream; closing the stream",
            )));
            return false;
        }
    }
    true
}

fn peer_statuses(ctx: &Ctx) -> Vec<PeerStatus> {
    let stats = ctx.peers.as_ref().map(|p| p.stats()).unwrap_or_default();
    ctx.peer_addrs
        .iter()
        .map(|(id, addr)| {
            let s = stats.get(id);
            PeerStatus {
                node_id: id.0,
                addr: addr.to_string(),
                connected: s.is_some_and(|s| s.connected),
                connections: s.map_or(0, |s| s.connections),
                messages_sent: s.map_or(0, |s| s.sent),
                messages_received: s.map_or(0, |s| s.received),
                messages_dropped: s.map_or(0, |s| s.dropped),
                last_error: s.and_then(|s| s.last_error.clone()),
            }
        })
        .collect()
}

/// A `PutBatch`: refused as a whole (one `Error`) if malformed or if this node cannot take
/// the topic's PUTs; else its messages go through [`put_batch`] and are answered together.
async fn put_request_batch(
    ctx: &Ctx,
    id: RequestId,
    batch: PutBatch,
    tx: &mpsc::UnboundedSender<ServerFrame>,
    in_flight: &Arc<Semaphore>,
) -> bool {
    let refuse = |e: ErrorReply| {
        let _ = tx.send(ServerFrame {
            id,
            reply: Reply::Error(e),
        });
        true
    };
    let count = batch.messages.len();
    if count == 0 || count > PUT_BATCH_MESSAGES_MAX {
        return refuse(ErrorReply::new(
            ErrorCode::BadRequest,
            format!("a PutBatch holds 1 to {PUT_BATCH_MESSAGES_MAX} messages, not {count}"),
        ));
    }
    if let Err(e) = ctx.cluster.topic_or_redirect(&batch.topic) {
        return refuse(e);
    }
    let answer = Arc::new(BatchReply::new(id, tx, count));
    let PutBatch {
        topic,
        producer_id,
        first_seq,
        messages,
    } = batch;
    let puts = messages
        .into_iter()
        .enumerate()
        .map(|(i, message)| {
            let mut reply_to = ReplyTo::frame(id, tx);
            reply_to.batch = Some((answer.clone(), i));
            let put = Put {
                topic: topic.clone(),
                key: message.key,
                value: message.value,
                producer_id,
                seq: Seq(first_seq.0.wrapping_add(i as u64)),
            };
            (reply_to, put)
        })
        .collect();
    put_batch(ctx, puts, in_flight).await
}

/// Proposes `puts` (in order, as they came on one stream): each checked on its own (a
/// refused one is answered and the rest go on), then the runs of one topic proposed together.
/// Returns false if the stream must close.
async fn put_batch(ctx: &Ctx, puts: Vec<(ReplyTo, Put)>, in_flight: &Arc<Semaphore>) -> bool {
    debug_assert!(puts.len() <= PUT_BATCH_MAX);
    let count = u32::try_from(puts.len()).unwrap_or(u32::MAX);
    // Waiting here is the backpressure: this stream is not read while it is full.
    let Ok(mut permits) = in_flight.clone().acquire_many_owned(count).await else {
        return false;
    };
    let mut puts = puts.into_iter().peekable();
    while let Some((mut reply_to, put)) = puts.next() {
        reply_to.permit = permits.split(1);
        if let Err(e) = check_put(ctx, &put) {
            reply_to.send(Reply::Error(e));
            continue;
        }
        let topic = match ctx.cluster.topic_or_redirect(&put.topic) {
            Ok(t) => t,
            Err(e) => {
                reply_to.send(Reply::Error(e));
                continue;
            }
        };
        // This PUT and the valid ones right behind it for the same topic: one proposal batch.
        let mut run = vec![(put, reply_to)];
        while let Some((_, next)) = puts.peek() {
            if next.topic != run[0].0.topic || check_put(ctx, next).is_err() {
                break;
            }
            let Some((mut reply_to, put)) = puts.next() else {
                break;
            };
            reply_to.permit = permits.split(1);
            run.push((put, reply_to));
        }
        // Waiting for room is the backpressure: this stream is not read meanwhile.
        let mut admitted = match topic.admit(run.len()).await {
            Ok(permit) => permit,
            Err(e) => {
                for (_, reply_to) in run {
                    reply_to.send(Reply::Error(e.clone()));
                }
                continue;
            }
        };
        let mut entries = Vec::with_capacity(run.len());
        for (put, mut reply_to) in run {
            reply_to.admitted = admitted.split(1);
            let key_bytes = put.key.as_ref().map_or(0, Vec::len);
            let mut entry = Vec::with_capacity(put.value.len() + key_bytes + 32);
            match encode_entry(
                put.producer_id,
                put.seq,
                put.key.as_deref(),
                &put.value,
                &mut entry,
            ) {
                Ok(()) => entries.push((entry, reply_to)),
                Err(e) => reply_to.send(Reply::Error(ErrorReply::new(
                    ErrorCode::Internal,
                    e.to_string(),
                ))),
            }
        }
        topic.append_batch(entries);
    }
    true
}

/// This node's limits on one PUT.
fn check_put(ctx: &Ctx, put: &Put) -> Result<(), ErrorReply> {
    let key_bytes = put.key.as_ref().map_or(0, Vec::len);
    if key_bytes > ctx.max_key_bytes {
        return Err(ErrorReply::new(
            ErrorCode::TooLarge,
            format!(
                "key of {key_bytes} bytes exceeds this node's limit of {} bytes",
                ctx.max_key_bytes
            ),
        ));
    }
    if put.value.len() > ctx.max_message_bytes {
        return Err(ErrorReply::new(
            ErrorCode::TooLarge,
            format!(
                "message of {} bytes exceeds this node's limit of {} bytes (max_message_bytes)",
                put.value.len(),
                ctx.max_message_bytes
            ),
        ));
    }
    Ok(())
}

async fn write_replies(mut send: quinn::SendStream, mut rx: mpsc::UnboundedReceiver<ServerFrame>) {
    let mut buf = Vec::with_capacity(64 * 1024);
    while let Some(first) = rx.recv().await {
        buf.clear();
        encode_reply(&first, &mut buf);
        while buf.len() < WRITE_COALESCE_BYTES_MAX {
            match rx.try_recv() {
                Ok(frame) => encode_reply(&frame, &mut buf),
                Err(_) => break,
            }
        }
        if let Err(e) = send.write_all(&buf).await {
            tracing::debug!(error = %e, "reply write failed; client gone");
            return;
        }
    }
    let _ = send.finish();
}

fn encode_reply(frame: &ServerFrame, buf: &mut Vec<u8>) {
    if let Err(e) = encode_frame(frame, buf) {
        // Only an event batch could be too large, and those are bounded: this is a bug.
        tracing::error!(error = %e, id = %frame.id, "cannot encode reply");
        let fallback = ServerFrame {
            id: frame.id,
            reply: Reply::Error(ErrorReply::new(ErrorCode::Internal, e.to_string())),
        };
        let _ = encode_frame(&fallback, buf);
    }
}

async fn write_one(send: &mut quinn::SendStream, id: RequestId, reply: Reply) {
    let mut buf = Vec::new();
    encode_reply(&ServerFrame { id, reply }, &mut buf);
    let _ = send.write_all(&buf).await;
    let _ = send.finish();
}

/// Streams committed entries of `topic` from `from` until the client stops the stream, the
/// topic is deleted, or the node shuts down.
async fn listen(
    ctx: Arc<Ctx>,
    id: RequestId,
    topic_name: String,
    from: ListenFrom,
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
) {
    // The client sends nothing more on a listen stream; dropping `recv` tells it so.
    drop(recv);
    let result = async {
        let topic = ctx.cluster.topic_or_redirect(&topic_name)?;
        let crate::topic::TopicReader {
            reader,
            mut committed,
            events: event_log,
        } = topic.reader()?;
        drop(topic);
        let committed_now = *committed.borrow_and_update();
        let start = reader.start_offset();
        let mut next = match from {
            ListenFrom::Start => start,
            ListenFrom::End => committed_now,
            // Above the committed offset is allowed: a listener resuming on a replica that
            // has not learned the latest commit yet waits for it (the client checks the range
            // when a listener is created).
            ListenFrom::Offset(n) if n < start => {
                return Err(ErrorReply::new(
                    ErrorCode::OffsetOutOfRange,
                    format!(
                        "offset {n} is below topic {topic_name:?}'s oldest retained offset {start}"
                    ),
                ));
            }
            ListenFrom::Offset(n) => n,
        };
        // Offsets without a message (Raft no-ops, membership entries) are skipped, so the
        // next offset to read follows the last one read, not the last event sent.
        tracing::debug!(%next, "listener attached");
        let mut buf = Vec::new();
        loop {
            let committed_now = *committed.borrow_and_update();
            if next < committed_now {
                let (events, read_to) =
                    read_events(&reader, next, committed_now, &topic_name, event_log).await?;
                if read_to <= next {
                    return Err(ErrorReply::new(
                        ErrorCode::Internal,
                        format!("no entry at offset {next} below the committed offset {committed_now}"),
                    ));
                }
                next = read_to;
                if events.is_empty() {
                    continue;
                }
                buf.clear();
                encode_reply(
                    &ServerFrame {
                        id,
                        reply: Reply::Events(events),
                    },
                    &mut buf,
                );
                if send.write_all(&buf).await.is_err() {
                    return Ok(());
                }
                continue;
            }
            tokio::select! {
                changed = committed.changed() => if changed.is_err() {
                    // The writer stopped: either the topic was deleted (it left the registry
                    // first) or the node is shutting down (retryable: resume elsewhere/later).
                    return Err(if !ctx.cluster.is_known_topic(&topic_name) {
                        ErrorReply::new(ErrorCode::NotFound, format!("topic {topic_name:?} was deleted"))
                    } else {
                        ErrorReply::new(ErrorCode::Unavailable, "the node is shutting down")
                    });
                },
                _ = send.stopped() => return Ok(()),
            }
        }
    }
    .await;
    if let Err(e) = result {
        tracing::debug!(error = %e, "listener ends with an error");
        write_one(&mut send, id, Reply::Error(e)).await;
    }
}

/// Reads committed records from `from` (below `committed`) and turns those holding a message
/// into events. Returns the events and the offset after the last record read.
async fn read_events(
    reader: &weir_storage::LogReader,
    from: Offset,
    committed: Offset,
    topic: &str,
    event_log: bool,
) -> Result<(Vec<Event>, Offset), ErrorReply> {
    let reader = reader.clone();
    let count = usize::try_from(committed.0 - from.0)
        .unwrap_or(usize::MAX)
        .min(EVENTS_BATCH_COUNT_MAX);
    let records =
        tokio::task::spawn_blocking(move || reader.read(from, EVENTS_BATCH_BYTES_MAX, count))
            .await
            .map_err(|e| ErrorReply::new(ErrorCode::Internal, e.to_string()))?
            .map_err(|e| match e {
                ReadError::OutOfRange { .. } => ErrorReply::new(
                    ErrorCode::OffsetOutOfRange,
                    format!(
                        "{e} (retention or a snapshot removed it while the listener was behind)"
                    ),
                ),
                other => {
                    ErrorReply::new(ErrorCode::Unavailable, format!("topic {topic:?}: {other}"))
                }
            })?;
    let read_to = records.last().map_or(from, |r| r.offset.next());
    let mut events = Vec::with_capacity(records.len());
    for r in records {
        if r.offset >= committed {
            break; // written but not committed yet
        }
        let bad = |e: String| {
            ErrorReply::new(
                ErrorCode::Unavailable,
                format!("topic {topic:?} offset {}: {e}", r.offset),
            )
        };
        if event_log {
            let event = weir_proto::entry::decode_event_record(&r.payload)
                .map_err(|e| bad(e.to_string()))?;
            events.push(Event {
                offset: r.offset,
                timestamp_ms: r.timestamp_ms,
                key: Some(event.key),
                value: event.value,
                tombstone: event.tombstone,
            });
            continue;
        }
        let (_term, payload) = decode_record(&r.payload).map_err(|e| bad(e.to_string()))?;
        let weir_raft::Payload::Normal(data) = payload else {
            continue;
        };
        let entry = decode_entry(&data).map_err(|e| bad(e.to_string()))?;
        events.push(Event {
            offset: r.offset,
            timestamp_ms: entry.timestamp_ms,
            key: entry.key,
            value: entry.value,
            tombstone: false,
        });
    }
    Ok((events, read_to.min(committed)))
}
