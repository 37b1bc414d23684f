//! One QUIC connection to a node and its request stream: a writer task that coalesces queued
//! frames into one write, a reader task that routes replies (which may come back out of order)
//! to the waiting callers by request id.

use crate::ClientError;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{Notify, OwnedSemaphorePermit, mpsc, oneshot};
use tokio::time::Instant;
use weir_proto::limits::FRAME_BYTES_MAX;
use weir_proto::{
    ClientFrame, FrameDecoder, PROTOCOL_VERSION, Reply, Request, RequestId, Seq, ServerFrame,
    encode_frame,
};

/// Frames queued for the writer beyond this make callers wait.
const WRITE_QUEUE: usize = 1024;
/// The writer stops adding queued frames to one write at this many bytes.
const COALESCE_BYTES: usize = 1024 * 1024;
/// Largest chunk taken from the receive stream at once.
const READ_CHUNK: usize = 256 * 1024;

type ReplyResult = Result<Reply, ClientError>;

/// What reaches a waiting caller: the reply (or why there is none) and, if the caller asked to
/// keep it, the request as it was sent, so that it can be resent elsewhere without a copy.
type Answer = (ReplyResult, Option<Request>);

/// What a caller waiting for a reply holds on to; the permits are released when the reply is
/// routed (or the request fails), whether or not the caller is still waiting.
struct Waiter {
    tx: oneshot::Sender<Answer>,
    _permits: Vec<OwnedSemaphorePermit>,
    /// The request, handed back by the writer once encoded (only if the caller keeps it).
    request: Option<Request>,
}

#[derive(Default)]
struct WaitersState {
    /// Set once the request stream failed; no request is accepted after that.
    failed: Option<ClientError>,
    waiters: HashMap<RequestId, Waiter>,
    /// The PUTs among the waiters, oldest first (ids increase with time): when each was sent
    /// and its topic. What [`PutWatch`] looks at.
    puts: BTreeMap<RequestId, (Instant, String)>,
}

/// The waiters of one request stream, shared by the callers and the reader and writer tasks.
#[derive(Default)]
struct Waiters {
    state: Mutex<WaitersState>,
    /// Wakes the [`PutWatch`]: a PUT was registered while none was outstanding, or the stream
    /// failed.
    changed: Notify,
}

impl Waiters {
    fn lock(&self) -> MutexGuard<'_, WaitersState> {
        // A panic while holding this lock leaves the map consistent (single inserts/removes).
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers the waiter of request `id`; `put_topic` is the topic of a PUT.
    fn register(
        &self,
        id: RequestId,
        waiter: Waiter,
        put_topic: Option<&str>,
    ) -> Result<(), ClientError> {
        let mut state = self.lock();
        if let Some(err) = &state.failed {
            return Err(err.clone());
        }
        state.waiters.insert(id, waiter);
        if let Some(topic) = put_topic {
            let first = state.puts.is_empty();
            state.puts.insert(id, (Instant::now(), topic.to_owned()));
            drop(state);
            if first {
                self.changed.notify_one();
            }
        }
        Ok(())
    }

    /// Removes the waiter of `id` (and its PUT entry).
    fn take(&self, id: RequestId) -> Option<Waiter> {
        let mut state = self.lock();
        state.puts.remove(&id);
        state.waiters.remove(&id)
    }

    /// Routes a reply; `false` if nobody waits for that id (timed out, or a stray reply).
    fn complete(&self, id: RequestId, result: ReplyResult) -> bool {
        let waiter = self.take(id);
        match waiter {
            Some(mut waiter) => {
                // The caller may have stopped waiting (dropped its handle): fine.
                let request = waiter.request.take();
                let _ = waiter.tx.send((result, request));
                true
            }
            None => false,
        }
    }

    /// Stores the encoded request with its waiter, for a caller that may resend it. Called by
    /// the writer before the bytes are written, so before any reply can arrive.
    fn keep(&self, id: RequestId, request: Request) {
        if let Some(waiter) = self.lock().waiters.get_mut(&id) {
            waiter.request = Some(request);
        }
    }

    fn cancel(&self, id: RequestId) {
        self.take(id);
    }

    /// Fails every outstanding request and refuses new ones.
    fn fail(&self, err: ClientError) {
        let drained: Vec<Waiter> = {
            let mut state = self.lock();
            if state.failed.is_none() {
                state.failed = Some(err.clone());
            }
            state.puts.clear();
            state.waiters.drain().map(|(_, w)| w).collect()
        };
        self.changed.notify_one();
        if !drained.is_empty() {
            tracing::debug!(requests = drained.len(), error = %err, "failing outstanding requests");
        }
        for mut waiter in drained {
            let request = waiter.request.take();
            let _ = waiter.tx.send((Err(err.clone()), request));
        }
    }

    fn is_failed(&self) -> bool {
        self.lock().failed.is_some()
    }

    /// `None` once failed; else when the oldest outstanding PUT was sent, if any.
    fn oldest_put(&self) -> Option<Option<Instant>> {
        let state = self.lock();
        if state.failed.is_some() {
            return None;
        }
        Some(state.puts.values().next().map(|(sent, _)| *sent))
    }

    /// The topics of the PUTs outstanding since `cutoff` or earlier, each once.
    fn put_topics_since(&self, cutoff: Instant) -> Vec<String> {
        let state = self.lock();
        let mut topics: Vec<String> = Vec::new();
        for (sent, topic) in state.puts.values() {
            if *sent > cutoff {
                break;
            }
            if !topics.contains(topic) {
                topics.push(topic.clone());
            }
        }
        topics
    }
}

/// Watches the PUTs outstanding on one session, for the leader check
/// ([`crate::ClientConfig::leader_check_after`]). Holds no reference to the session itself.
pub(crate) struct PutWatch {
    waiters: Arc<Waiters>,
}

impl PutWatch {
    /// Waits until the oldest PUT outstanding has waited `after`, and returns the topics of the
    /// PUTs that have; `None` once the session failed. Sleeps while no PUT is outstanding and
    /// wakes at most once per `after` while PUTs come and go.
    pub(crate) async fn slow_puts(&self, after: Duration) -> Option<Vec<String>> {
        loop {
            match self.waiters.oldest_put()? {
                None => self.waiters.changed.notified().await,
                Some(sent) => {
                    let due = sent + after;
                    let now = Instant::now();
                    if now >= due {
                        return Some(self.waiters.put_topics_since(now - after));
                    }
                    tokio::select! {
                        () = tokio::time::sleep_until(due) => {}
                        () = self.waiters.changed.notified() => {}
                    }
                }
            }
        }
    }

    /// Waits until the session failed.
    pub(crate) async fn failed(&self) {
        while !self.waiters.is_failed() {
            self.waiters.changed.notified().await;
        }
    }
}

struct Outgoing {
    id: RequestId,
    request: Request,
    /// Hand the request back with its reply (see [`PendingReply::wait_keeping`]).
    keep: bool,
}

/// A request that never left the client (the connection had failed, or the write queue stayed
/// full until the deadline): it can be sent elsewhere without risk of being applied twice.
#[derive(Debug)]
pub(crate) struct NotSent {
    pub(crate) err: ClientError,
    pub(crate) request: Request,
}

impl From<NotSent> for ClientError {
    fn from(not_sent: NotSent) -> Self {
        not_sent.err
    }
}

/// A connection with its request stream.
pub(crate) struct Session {
    pub(crate) conn: quinn::Connection,
    queue: mpsc::Sender<Outgoing>,
    waiters: Arc<Waiters>,
    next_id: AtomicU64,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("remote", &self.conn.remote_address())
            .field("failed", &self.waiters.is_failed())
            .finish()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // Nobody uses this connection any more (listeners hold the session while attached).
        self.conn.close(0u32.into(), b"client done");
    }
}

/// What to do when the node or the network ended a session (not this client): called before
/// the requests outstanding on it fail, so that whoever sees their failure also sees its effect.
pub(crate) type OnLost = Box<dyn Fn() + Send + Sync>;

/// Fails a session's waiters, first calling [`OnLost`] if the connection was closed other than
/// by this client.
struct Failer {
    waiters: Arc<Waiters>,
    conn: quinn::Connection,
    on_lost: OnLost,
}

impl Failer {
    fn fail(&self, err: ClientError) {
        let lost = self
            .conn
            .close_reason()
            .is_some_and(|reason| !matches!(reason, quinn::ConnectionError::LocallyClosed));
        if lost && !self.waiters.is_failed() {
            (self.on_lost)();
        }
        self.waiters.fail(err);
    }
}

impl Session {
    /// Opens the request stream on `conn`, starts its tasks and says hello. `on_lost` is
    /// called if the node or the network ends the session.
    pub(crate) async fn start(
        conn: quinn::Connection,
        seq: Arc<AtomicU64>,
        client_name: &str,
        request_timeout: Duration,
        on_lost: OnLost,
    ) -> Result<Arc<Self>, ClientError> {
        let (send, recv) = conn
            .open_bi()
            .await
            .map_err(|e| ClientError::ConnectionLost(format!("cannot open a stream: {e}")))?;
        let waiters = Arc::new(Waiters::default());
        let failer = Arc::new(Failer {
            waiters: waiters.clone(),
            conn: conn.clone(),
            on_lost,
        });
        let (queue, rx) = mpsc::channel(WRITE_QUEUE);
        tokio::spawn(write_loop(send, rx, waiters.clone(), failer.clone(), seq));
        tokio::spawn(read_loop(recv, waiters.clone(), failer));
        let session = Arc::new(Self {
            conn,
            queue,
            waiters,
            next_id: AtomicU64::new(1),
        });
        let hello = Request::Hello {
            protocol_version: PROTOCOL_VERSION,
            client_name: client_name.to_owned(),
        };
        let deadline = Instant::now() + request_timeout;
        match session
            .send(hello, Vec::new(), deadline, false)
            .await?
            .wait()
            .await?
        {
            Reply::Hello {
                protocol_version,
                server_version,
            } => {
                tracing::debug!(
                    remote = %session.conn.remote_address(),
                    protocol_version,
                    %server_version,
                    "connected"
                );
                Ok(session)
            }
            Reply::Error(e) => Err(e.into()),
            other => Err(unexpected("Hello", &other)),
        }
    }

    /// False once the connection or the request stream failed: the next call reconnects.
    pub(crate) fn is_alive(&self) -> bool {
        !self.waiters.is_failed() && self.conn.close_reason().is_none()
    }

    /// The node's address.
    pub(crate) fn remote(&self) -> SocketAddr {
        self.conn.remote_address()
    }

    /// A watch on this session's outstanding PUTs.
    pub(crate) fn put_watch(&self) -> PutWatch {
        PutWatch {
            waiters: self.waiters.clone(),
        }
    }

    /// Gives up on this session: fails every outstanding request with `err` (their outcome is
    /// unknown; they are not resent) and closes the connection.
    pub(crate) fn abandon(&self, err: ClientError) {
        self.waiters.fail(err);
        self.conn.close(0u32.into(), b"client gave up on this node");
    }

    /// Queues `request`; the returned handle waits for its reply until `deadline`. `permits`
    /// are released when the reply arrives or the request fails. With `keep`, the request is
    /// handed back with the reply ([`PendingReply::wait_keeping`]).
    ///
    /// A request refused here never reached the wire: [`NotSent`] gives it back.
    pub(crate) async fn send(
        self: &Arc<Self>,
        request: Request,
        permits: Vec<OwnedSemaphorePermit>,
        deadline: Instant,
        keep: bool,
    ) -> Result<PendingReply, NotSent> {
        let id = RequestId(self.next_id.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = oneshot::channel();
        let waiter = Waiter {
            tx,
            _permits: permits,
            request: None,
        };
        let put_topic = match &request {
            Request::Put(put) => Some(put.topic.as_str()),
            _ => None,
        };
        if let Err(err) = self.waiters.register(id, waiter, put_topic) {
            return Err(NotSent { err, request });
        }
        let timeout = deadline.saturating_duration_since(Instant::now());
        // Reserve a slot first, so that a timeout or a stopped writer leaves the request here.
        match tokio::time::timeout_at(deadline, self.queue.reserve()).await {
            Ok(Ok(slot)) => {
                slot.send(Outgoing { id, request, keep });
                Ok(PendingReply {
                    id,
                    rx,
                    session: self.clone(),
                    deadline,
                    timeout,
                })
            }
            Ok(Err(_)) => {
                self.waiters.cancel(id);
                Err(NotSent {
                    err: ClientError::ConnectionLost("the request stream stopped".into()),
                    request,
                })
            }
            Err(_) => {
                self.waiters.cancel(id);
                Err(NotSent {
                    err: ClientError::Timeout(timeout),
                    request,
                })
            }
        }
    }
}

/// A request on its way; [`PendingReply::wait`] returns its reply.
pub(crate) struct PendingReply {
    id: RequestId,
    rx: oneshot::Receiver<Answer>,
    /// Keeps the connection open while someone may still wait for this reply.
    session: Arc<Session>,
    deadline: Instant,
    timeout: Duration,
}

impl std::fmt::Debug for PendingReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingReply")
            .field("id", &self.id)
            .finish()
    }
}

impl PendingReply {
    /// Waits for the reply until the deadline given to [`Session::send`].
    pub(crate) async fn wait(self) -> Result<Reply, ClientError> {
        self.wait_keeping().await.0
    }

    /// Like [`PendingReply::wait`], also returning the request if it was sent with `keep` and
    /// the writer got to encode it.
    pub(crate) async fn wait_keeping(mut self) -> Answer {
        match tokio::time::timeout_at(self.deadline, &mut self.rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => (
                Err(ClientError::ConnectionLost(
                    "the request was dropped with its connection".into(),
                )),
                None,
            ),
            Err(_) => {
                self.session.waiters.cancel(self.id);
                (Err(ClientError::Timeout(self.timeout)), None)
            }
        }
    }

    /// The node the request went to.
    pub(crate) fn remote(&self) -> SocketAddr {
        self.session.remote()
    }
}

/// Drains the queue: every frame that is queued when the writer wakes up goes into one buffer
/// and one `write_all` (up to [`COALESCE_BYTES`]). PUTs get their `seq` here, so sequence
/// numbers follow the order on the wire.
async fn write_loop(
    mut send: quinn::SendStream,
    mut rx: mpsc::Receiver<Outgoing>,
    waiters: Arc<Waiters>,
    failer: Arc<Failer>,
    seq: Arc<AtomicU64>,
) {
    let mut buf = Vec::new();
    let mut frames = 0usize;
    while let Some(first) = rx.recv().await {
        buf.clear();
        let mut next = Some(first);
        while let Some(Outgoing {
            id,
            mut request,
            keep,
        }) = next.take()
        {
            if let Request::Put(put) = &mut request {
                put.seq = Seq(seq.fetch_add(1, Ordering::Relaxed));
            }
            let frame = ClientFrame { id, request };
            if let Err(e) = encode_frame(&frame, &mut buf) {
                waiters.complete(id, Err(ClientError::Protocol(format!("cannot send: {e}"))));
            } else {
                frames += 1;
                if keep {
                    waiters.keep(id, frame.request);
                }
            }
            if buf.len() < COALESCE_BYTES {
                next = rx.try_recv().ok();
            }
        }
        if buf.is_empty() {
            continue;
        }
        if let Err(e) = send.write_all(&buf).await {
            failer.fail(ClientError::ConnectionLost(format!("sending: {e}")));
            return;
        }
        if buf.capacity() > 4 * COALESCE_BYTES {
            buf = Vec::new();
        }
    }
    tracing::trace!(frames, "request stream writer done");
    let _ = send.finish();
}

async fn read_loop(mut recv: quinn::RecvStream, waiters: Arc<Waiters>, failer: Arc<Failer>) {
    let mut decoder = FrameDecoder::new(FRAME_BYTES_MAX);
    let err = loop {
        match recv.read_chunk(READ_CHUNK, true).await {
            Ok(Some(chunk)) => {
                decoder.extend(&chunk.bytes);
                if let Err(e) = route_frames(&mut decoder, &waiters) {
                    let _ = recv.stop(0u32.into());
                    break e;
                }
            }
            Ok(None) => {
                break ClientError::ConnectionLost("the node closed the request stream".into());
            }
            Err(e) => break ClientError::ConnectionLost(e.to_string()),
        }
    };
    tracing::debug!(error = %err, "request stream ended");
    failer.fail(err);
}

fn route_frames(decoder: &mut FrameDecoder, waiters: &Waiters) -> Result<(), ClientError> {
    let bad = |e: weir_proto::FrameError| ClientError::Protocol(format!("from the node: {e}"));
    decoder.check_header().map_err(bad)?;
    while let Some(frame) = decoder.next::<ServerFrame>().map_err(bad)? {
        if !waiters.complete(frame.id, Ok(frame.reply)) {
            tracing::debug!(id = %frame.id, "reply for a request nobody waits for (timed out?)");
        }
    }
    decoder.check_header().map_err(bad)
}

/// The variant name of a reply, for "expected X, got Y" messages.
pub(crate) fn reply_kind(reply: &Reply) -> &'static str {
    match reply {
        Reply::Hello { .. } => "Hello",
        Reply::TopicCreated => "TopicCreated",
        Reply::TopicDeleted => "TopicDeleted",
        Reply::Topics(_) => "Topics",
        Reply::Committed(_) => "Committed",
        Reply::Events(_) => "Events",
        Reply::Status(_) => "Status",
        Reply::Error(_) => "Error",
        Reply::Cluster(_) => "Cluster",
        Reply::ClusterChanged => "ClusterChanged",
        Reply::ProgramDeployed { .. } => "ProgramDeployed",
        Reply::Program(_) => "Program",
    }
}

/// The error for a reply of the wrong kind (an `Error` reply becomes its typed error).
pub(crate) fn unexpected(expected: &str, reply: &Reply) -> ClientError {
    match reply {
        Reply::Error(e) => e.clone().into(),
        other => ClientError::Protocol(format!(
            "expected a {expected} reply, got {}",
            reply_kind(other)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_proto::{Committed, ErrorCode, ErrorReply, Offset, TimestampMs};

    fn waiter() -> (Waiter, oneshot::Receiver<Answer>) {
        let (tx, rx) = oneshot::channel();
        (
            Waiter {
                tx,
                _permits: Vec::new(),
                request: None,
            },
            rx,
        )
    }

    fn committed(offset: u64) -> Reply {
        Reply::Committed(Committed {
            offset: Offset(offset),
            timestamp_ms: TimestampMs(1),
            program: None,
        })
    }

    #[test]
    fn out_of_order_replies_reach_the_request_with_their_id() {
        let waiters = Waiters::default();
        let (w1, mut rx1) = waiter();
        let (w2, mut rx2) = waiter();
        waiters.register(RequestId(1), w1, None).unwrap();
        waiters.register(RequestId(2), w2, None).unwrap();

        let mut bytes = Vec::new();
        for (id, off) in [(2, 20), (1, 10)] {
            encode_frame(
                &ServerFrame {
                    id: RequestId(id),
                    reply: committed(off),
                },
                &mut bytes,
            )
            .unwrap();
        }
        // Fed in two uneven pieces, as a stream may deliver them.
        let mut decoder = FrameDecoder::new(FRAME_BYTES_MAX);
        let (a, b) = bytes.split_at(7);
        decoder.extend(a);
        route_frames(&mut decoder, &waiters).unwrap();
        decoder.extend(b);
        route_frames(&mut decoder, &waiters).unwrap();

        assert_eq!(rx1.try_recv().unwrap().0.unwrap(), committed(10));
        assert_eq!(rx2.try_recv().unwrap().0.unwrap(), committed(20));
    }

    #[test]
    fn a_failed_stream_fails_outstanding_and_later_requests() {
        let waiters = Waiters::default();
        let (w1, mut rx1) = waiter();
        waiters.register(RequestId(1), w1, None).unwrap();
        waiters.fail(ClientError::ConnectionLost("gone".into()));
        assert_eq!(
            rx1.try_recv().unwrap().0,
            Err(ClientError::ConnectionLost("gone".into()))
        );
        let (w2, _rx2) = waiter();
        assert_eq!(
            waiters.register(RequestId(2), w2, None),
            Err(ClientError::ConnectionLost("gone".into()))
        );
        assert!(waiters.is_failed());
    }

    #[test]
    fn a_kept_request_comes_back_with_its_reply_or_its_failure() {
        let waiters = Waiters::default();
        let (w1, mut rx1) = waiter();
        let (w2, mut rx2) = waiter();
        waiters.register(RequestId(1), w1, None).unwrap();
        waiters.register(RequestId(2), w2, None).unwrap();
        waiters.keep(RequestId(1), Request::Status);
        waiters.keep(RequestId(2), Request::ListTopics);
        // Keeping for a request nobody waits for any more just drops it.
        waiters.keep(RequestId(3), Request::Cluster);

        assert!(waiters.complete(RequestId(1), Ok(committed(1))));
        assert_eq!(
            rx1.try_recv().unwrap(),
            (Ok(committed(1)), Some(Request::Status))
        );
        waiters.fail(ClientError::ConnectionLost("gone".into()));
        assert_eq!(
            rx2.try_recv().unwrap(),
            (
                Err(ClientError::ConnectionLost("gone".into())),
                Some(Request::ListTopics)
            )
        );
    }

    #[tokio::test]
    async fn the_put_watch_reports_the_topics_of_puts_waiting_too_long_and_ends_on_failure() {
        let waiters = Arc::new(Waiters::default());
        let watch = PutWatch {
            waiters: waiters.clone(),
        };
        let mut receivers = Vec::new();
        for (id, topic) in [(1, None), (2, Some("a")), (3, Some("b")), (4, Some("a"))] {
            let (w, rx) = waiter();
            receivers.push(rx);
            waiters.register(RequestId(id), w, topic).unwrap();
        }
        // Only PUTs count, each topic once, oldest first.
        let slow = watch.slow_puts(Duration::from_millis(5)).await;
        assert_eq!(slow, Some(vec!["a".to_owned(), "b".to_owned()]));
        // Answered or cancelled PUTs no longer count.
        assert!(waiters.complete(RequestId(2), Ok(committed(1))));
        waiters.cancel(RequestId(4));
        let slow = watch.slow_puts(Duration::from_millis(5)).await;
        assert_eq!(slow, Some(vec!["b".to_owned()]));
        assert!(waiters.complete(RequestId(3), Ok(committed(2))));
        assert_eq!(waiters.oldest_put(), Some(None), "no PUT outstanding");

        // A failure wakes a watch that waits for PUTs, and fails what is outstanding.
        let waiting = tokio::spawn(async move {
            let slow = watch.slow_puts(Duration::from_millis(5)).await;
            watch.failed().await;
            slow
        });
        waiters.fail(ClientError::ConnectionLost("gone".into()));
        assert_eq!(waiting.await.unwrap(), None);
        assert_eq!(waiters.oldest_put(), None);
        assert_eq!(
            receivers[0].try_recv().unwrap().0,
            Err(ClientError::ConnectionLost("gone".into()))
        );
    }

    #[test]
    fn a_reply_for_an_unknown_id_is_ignored() {
        let waiters = Waiters::default();
        assert!(!waiters.complete(RequestId(9), Ok(committed(0))));
    }

    #[test]
    fn an_oversized_frame_header_from_the_node_is_a_protocol_error() {
        let waiters = Waiters::default();
        let mut decoder = FrameDecoder::new(FRAME_BYTES_MAX);
        decoder.extend(&u32::MAX.to_be_bytes());
        assert!(matches!(
            route_frames(&mut decoder, &waiters),
            Err(ClientError::Protocol(_))
        ));
    }

    #[test]
    fn an_error_reply_of_the_wrong_kind_becomes_its_typed_error() {
        let err = unexpected(
            "Committed",
            &Reply::Error(ErrorReply::new(ErrorCode::TooLarge, "value of 2 MiB")),
        );
        assert_eq!(err, ClientError::TooLarge("value of 2 MiB".into()));
        let err = unexpected("Committed", &Reply::TopicCreated);
        assert_eq!(
            err,
            ClientError::Protocol("expected a Committed reply, got TopicCreated".into())
        );
    }
}
