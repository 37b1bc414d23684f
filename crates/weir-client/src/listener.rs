//! [`Listener`]: a resumable stream of a topic's committed entries.

use crate::client::Inner;
use crate::routing::resolve_node_addr;
use crate::session::reply_kind;
use crate::{ClientError, LeaderRetryPolicy};
use futures_core::Stream;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use weir_proto::limits::FRAME_BYTES_MAX;
use weir_proto::{
    ClientFrame, ErrorCode, Event, FrameDecoder, ListenFrom, Offset, Reply, Request, RequestId,
    ServerFrame, encode_frame,
};

/// Batches of events buffered between the background task and the consumer. When full, the
/// task stops reading and QUIC flow control slows the node down.
const BATCHES_BUFFERED: usize = 16;
const READ_CHUNK: usize = 256 * 1024;
/// The request id of the `Listen` frame (a listen stream carries one request).
const LISTEN_ID: RequestId = RequestId(1);

/// The committed entries of a topic, in offset order, following the tail. Made by
/// [`crate::Client::listen`]; a [`Stream`] of `Result<Event, ClientError>`, with an inherent
/// [`Listener::next`] for use without `StreamExt`.
///
/// A background task reads the listen stream from a node that hosts the topic (its leader if
/// known, else another replica; any replica can serve a listener). If the stream or the
/// connection is lost it reconnects with exponential backoff
/// ([`crate::ClientConfig::reconnect`]) — asking the cluster again which nodes host the topic,
/// trying the next replica after a failure, and following a node's "not leader" answer to the
/// replica it names — and resumes right after the last event it received: committed messages
/// are never skipped nor repeated. Offsets increase strictly but may have gaps (offsets that
/// hold no message, such as Raft's leader no-op entries, are skipped by the node); an event at
/// or below an offset already delivered is dropped. A listener started at
/// [`ListenFrom::Start`] that has seen no event yet re-attaches at `Start`. An error the node
/// reports (topic deleted, offset no longer retained, ...) or giving up on reconnecting ends
/// the stream with that error. Dropping the listener stops it.
///
/// ```no_run
/// use weir_client::ListenFrom;
///
/// # async fn f(client: weir_client::Client) -> Result<(), weir_client::ClientError> {
/// let mut listener = client.listen("orders", ListenFrom::End).await?;
/// while let Some(event) = listener.next().await {
///     let event = event?;
///     println!("offset {}: {} bytes", event.offset, event.value.len());
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Listener {
    topic: String,
    rx: mpsc::Receiver<Result<Vec<Event>, ClientError>>,
    buffered: VecDeque<Event>,
    last_offset: Option<Offset>,
    task: JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        // Dropping the task drops its stream, which tells the node to stop.
        self.task.abort();
    }
}

impl Listener {
    /// Starts following `topic`, first attaching to `node` (any node if `None`).
    pub(crate) fn spawn(
        inner: Arc<Inner>,
        topic: String,
        from: ListenFrom,
        node: Option<SocketAddr>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(BATCHES_BUFFERED);
        let task = tokio::spawn(run(inner, topic.clone(), from, node, tx));
        Self {
            topic,
            rx,
            buffered: VecDeque::new(),
            last_offset: None,
            task,
        }
    }

    /// The topic followed.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The offset of the last event returned, if any.
    pub fn last_offset(&self) -> Option<Offset> {
        self.last_offset
    }

    /// Events received from the node and not yet returned by [`Listener::next`]: when 0, the
    /// next call may wait for the node.
    pub fn buffered(&self) -> usize {
        self.buffered.len()
    }

    /// The next event; `None` after the stream ended with an error.
    pub async fn next(&mut self) -> Option<Result<Event, ClientError>> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }
}

impl Stream for Listener {
    type Item = Result<Event, ClientError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(event) = this.buffered.pop_front() {
                this.last_offset = Some(event.offset);
                return Poll::Ready(Some(Ok(event)));
            }
            match ready!(this.rx.poll_recv(cx)) {
                Some(Ok(batch)) => this.buffered.extend(batch),
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => return Poll::Ready(None),
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.buffered.len(), None)
    }
}

/// The lowest offset that may come next; drops repeats. Offsets increase strictly along a
/// topic but may have gaps (offsets without a message), so any offset at or above it is fine.
#[derive(Debug)]
pub(crate) struct OffsetTracker {
    next: Option<Offset>,
}

impl OffsetTracker {
    pub(crate) fn new(from: ListenFrom) -> Self {
        let next = match from {
            ListenFrom::Offset(n) => Some(n),
            ListenFrom::Start | ListenFrom::End => None,
        };
        Self { next }
    }

    /// Where to (re-)attach: right after the last event seen, or `original` if none was seen.
    pub(crate) fn resume_from(&self, original: ListenFrom) -> ListenFrom {
        self.next.map_or(original, ListenFrom::Offset)
    }

    /// Keeps the events that come next, in order: each must be above the last one accepted (a
    /// gap is fine). An event at or below it (a repeat after a resume, or an offset going
    /// back) is dropped.
    pub(crate) fn accept(&mut self, events: Vec<Event>) -> Vec<Event> {
        let mut fresh = Vec::with_capacity(events.len());
        for event in events {
            if let Some(next) = self.next
                && event.offset < next
            {
                tracing::debug!(offset = %event.offset, %next, "dropping a repeated event");
                continue;
            }
            self.next = Some(event.offset.next());
            fresh.push(event);
        }
        fresh
    }
}

/// How one attachment ended.
enum Detached {
    /// The consumer dropped the listener.
    Gone,
    /// Not worth retrying: hand the error to the consumer and stop.
    Fatal(ClientError),
    /// Reconnect; `progressed` if the attachment worked for a while: a frame arrived, or the
    /// stream stayed open longer than the longest backoff (a quiet topic). `redirect`: the
    /// replica a node named when it refused to serve the topic.
    Retry {
        err: ClientError,
        progressed: bool,
        redirect: Option<SocketAddr>,
    },
}

impl Detached {
    fn retry(err: ClientError) -> Self {
        Self::Retry {
            err,
            progressed: false,
            redirect: None,
        }
    }
}

type Batches = mpsc::Sender<Result<Vec<Event>, ClientError>>;

async fn run(
    inner: Arc<Inner>,
    topic: String,
    from: ListenFrom,
    first_node: Option<SocketAddr>,
    tx: Batches,
) {
    let policy = inner.config.reconnect.clone();
    let mut tracker = OffsetTracker::new(from);
    // Consecutive failed attachments: count and when the first of them happened.
    let mut streak: Option<(u32, Instant)> = None;
    // Where the next attachment goes, when already known (first attach, or a node's hint).
    let mut next_node = first_node;
    // Hints followed without waiting since the last wait.
    let mut hops = 0u32;
    loop {
        let resume = tracker.resume_from(from);
        let node = match next_node.take() {
            Some(node) => Some(node),
            None => pick_node(&inner, &topic, streak.map_or(0, |(n, _)| n)).await,
        };
        let detached = attach(&inner, &topic, resume, node, &mut tracker, &tx).await;
        let (err, progressed, redirect) = match detached {
            Detached::Gone => return,
            Detached::Fatal(err) => {
                tracing::debug!(%topic, error = %err, "listener stopped");
                let _ = tx.send(Err(err)).await;
                return;
            }
            Detached::Retry {
                err,
                progressed,
                redirect,
            } => (err, progressed, redirect),
        };
        if progressed {
            streak = None;
        }
        let (attempts, since) = streak.get_or_insert((0, Instant::now()));
        *attempts += 1;
        if policy.exhausted(*attempts, since.elapsed()) {
            let gave_up = ClientError::ConnectionLost(format!(
                "listener on {topic:?} gave up after {} attempts in {:.1?}: {err}",
                attempts,
                since.elapsed()
            ));
            let _ = tx.send(Err(gave_up)).await;
            return;
        }
        next_node = redirect;
        let delay = if redirect.is_some() && hops < LeaderRetryPolicy::IMMEDIATE_HOPS {
            hops += 1;
            Duration::ZERO
        } else {
            hops = 0;
            policy.backoff(*attempts)
        };
        tracing::info!(
            %topic,
            attempt = *attempts,
            ?delay,
            resume = ?tracker.resume_from(from),
            ?redirect,
            error = %err,
            "listener lost its stream; reconnecting"
        );
        if !delay.is_zero() {
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = tx.closed() => return,
            }
        }
    }
}

/// The node to attach to: from a fresh cluster layout, the topic's leader, or after `failures`
/// failed attachments in a row the next of its replicas in turn (replicas whose node was lost
/// recently come last); `None` (any node) if the layout is unavailable or does not place the
/// topic.
async fn pick_node(inner: &Arc<Inner>, topic: &str, failures: u32) -> Option<SocketAddr> {
    let deadline = Instant::now() + inner.config.request_timeout;
    match inner.refresh_cluster(deadline).await {
        Ok(view) => {
            let mut hosts = view.hosts_of(topic);
            // Stable: the leader stays first among the nodes not passed over.
            hosts.sort_by_key(|addr| inner.is_down(*addr));
            let pick = usize::try_from(failures).unwrap_or(0) % hosts.len().max(1);
            hosts.get(pick).copied()
        }
        Err(e) => {
            tracing::debug!(%topic, error = %e, "cluster refresh failed; attaching to any node");
            None
        }
    }
}

/// One attachment: opens a listen stream to `node` (any node if `None`; connecting if needed)
/// and forwards events until the stream ends.
async fn attach(
    inner: &Arc<Inner>,
    topic: &str,
    from: ListenFrom,
    node: Option<SocketAddr>,
    tracker: &mut OffsetTracker,
    tx: &Batches,
) -> Detached {
    let session = match node {
        Some(addr) => inner.session_for(addr).await,
        None => inner.session().await,
    };
    let session = match session {
        Ok(session) => session,
        Err(e @ ClientError::Config(_)) => return Detached::Fatal(e),
        Err(e) => return Detached::retry(e),
    };
    let answered_by = session.remote();
    let (mut send, mut recv) = match session.conn.open_bi().await {
        Ok(streams) => streams,
        Err(e) => return Detached::retry(ClientError::ConnectionLost(e.to_string())),
    };
    let mut buf = Vec::new();
    let frame = ClientFrame {
        id: LISTEN_ID,
        request: Request::Listen {
            topic: topic.to_owned(),
            from,
        },
    };
    if let Err(e) = encode_frame(&frame, &mut buf) {
        return Detached::Fatal(ClientError::Protocol(format!("cannot send: {e}")));
    }
    if let Err(e) = send.write_all(&buf).await {
        return Detached::retry(ClientError::ConnectionLost(e.to_string()));
    }
    tracing::debug!(%topic, ?from, node = %answered_by, "listener attached");
    let attached_at = Instant::now();
    let stable_after = inner.config.reconnect.max_backoff;
    // `send` stays open: finishing it would end the listen.
    let mut decoder = FrameDecoder::new(FRAME_BYTES_MAX);
    let mut progressed = false;
    loop {
        let chunk = tokio::select! {
            read = recv.read_chunk(READ_CHUNK, true) => read,
            () = tx.closed() => return Detached::Gone,
        };
        match chunk {
            Ok(Some(chunk)) => {
                decoder.extend(&chunk.bytes);
                match forward(inner, answered_by, &mut decoder, tracker, tx).await {
                    Ok(true) => progressed = true,
                    Ok(false) => {}
                    Err(Detached::Retry {
                        err,
                        progressed: p,
                        redirect,
                    }) => {
                        return Detached::Retry {
                            err,
                            progressed: p || progressed || attached_at.elapsed() > stable_after,
                            redirect,
                        };
                    }
                    Err(detached) => return detached,
                }
            }
            Ok(None) => {
                return Detached::Retry {
                    err: ClientError::ConnectionLost("the node ended the listen stream".into()),
                    progressed: progressed || attached_at.elapsed() > stable_after,
                    redirect: None,
                };
            }
            Err(e) => {
                return Detached::Retry {
                    err: ClientError::ConnectionLost(e.to_string()),
                    progressed: progressed || attached_at.elapsed() > stable_after,
                    redirect: None,
                };
            }
        }
    }
}

/// Forwards the complete frames in `decoder` (read from `answered_by`); `Ok(true)` if any frame
/// was complete.
async fn forward(
    inner: &Inner,
    answered_by: SocketAddr,
    decoder: &mut FrameDecoder,
    tracker: &mut OffsetTracker,
    tx: &Batches,
) -> Result<bool, Detached> {
    let bad = |e: weir_proto::FrameError| {
        Detached::Fatal(ClientError::Protocol(format!("from the node: {e}")))
    };
    decoder.check_header().map_err(bad)?;
    let mut any = false;
    while let Some(ServerFrame { id, reply }) = decoder.next::<ServerFrame>().map_err(bad)? {
        any = true;
        if id != LISTEN_ID {
            return Err(Detached::Fatal(ClientError::Protocol(format!(
                "listen stream got a reply for request {id}"
            ))));
        }
        match reply {
            Reply::Events(events) => {
                let fresh = tracker.accept(events);
                if !fresh.is_empty() && tx.send(Ok(fresh)).await.is_err() {
                    return Err(Detached::Gone);
                }
            }
            Reply::Error(e) if e.code == ErrorCode::NotLeader => {
                // This node does not host the topic; it may name one that does.
                let redirect = match &e.leader {
                    Some(hint) => {
                        resolve_node_addr(&hint.addr, answered_by, inner.config.connect_timeout)
                            .await
                            .filter(|addr| *addr != answered_by)
                    }
                    None => None,
                };
                return Err(Detached::Retry {
                    err: e.into(),
                    progressed: false,
                    redirect,
                });
            }
            Reply::Error(e) if e.code.is_retryable() => return Err(Detached::retry(e.into())),
            Reply::Error(e) => return Err(Detached::Fatal(e.into())),
            other => {
                return Err(Detached::Fatal(ClientError::Protocol(format!(
                    "listen stream got a {} reply",
                    reply_kind(&other)
                ))));
            }
        }
    }
    decoder.check_header().map_err(bad)?;
    Ok(any)
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_proto::TimestampMs;

    fn ev(offset: u64) -> Event {
        Event {
            offset: Offset(offset),
            timestamp_ms: TimestampMs(0),
            key: None,
            value: offset.to_string().into_bytes(),
            tombstone: false,
        }
    }

    fn offsets(events: &[Event]) -> Vec<u64> {
        events.iter().map(|e| e.offset.get()).collect()
    }

    #[test]
    fn from_start_accepts_the_first_offset_seen_and_resumes_after_the_last() {
        let mut t = OffsetTracker::new(ListenFrom::Start);
        assert_eq!(t.resume_from(ListenFrom::Start), ListenFrom::Start);
        let got = t.accept(vec![ev(5), ev(6)]);
        assert_eq!(offsets(&got), [5, 6]);
        assert_eq!(
            t.resume_from(ListenFrom::Start),
            ListenFrom::Offset(Offset(7))
        );
    }

    #[test]
    fn repeated_events_after_a_resume_are_dropped() {
        let mut t = OffsetTracker::new(ListenFrom::Offset(Offset(3)));
        let got = t.accept(vec![ev(1), ev(2), ev(3), ev(4)]);
        assert_eq!(offsets(&got), [3, 4]);
        let got = t.accept(vec![ev(4), ev(5)]);
        assert_eq!(offsets(&got), [5]);
    }

    #[test]
    fn gaps_in_offsets_are_accepted_and_resume_after_the_last_event() {
        let mut t = OffsetTracker::new(ListenFrom::Offset(Offset(0)));
        let got = t.accept(vec![ev(0), ev(2)]);
        assert_eq!(offsets(&got), [0, 2]);
        let got = t.accept(vec![ev(5)]);
        assert_eq!(offsets(&got), [5]);
        assert_eq!(
            t.resume_from(ListenFrom::Start),
            ListenFrom::Offset(Offset(6))
        );
        // A listener started at an offset with no message gets the next one that has one.
        let mut t = OffsetTracker::new(ListenFrom::Offset(Offset(10)));
        assert_eq!(offsets(&t.accept(vec![ev(12)])), [12]);
    }

    #[test]
    fn offsets_going_back_within_a_batch_are_dropped() {
        let mut t = OffsetTracker::new(ListenFrom::Start);
        let got = t.accept(vec![ev(4), ev(7), ev(6), ev(7), ev(9)]);
        assert_eq!(offsets(&got), [4, 7, 9]);
        assert_eq!(
            t.resume_from(ListenFrom::Start),
            ListenFrom::Offset(Offset(10))
        );
    }
}
