//! One QUIC connection to a node and its request stream: a writer task that coalesces queued
//! frames into one write, a reader task that routes replies (which may come back out of order)
//! to the waiting callers by request id, and an expiry task that answers requests still
//! unanswered at their deadline.
//!
//! A reply is delivered by calling the waiter's [`OnAnswer`] on the reader task: a caller
//! awaiting a [`PendingReply`] gets it through a oneshot channel, a [`crate::Producer`] PUT
//! settles in the callback itself (no task per PUT). Deadlines are kept in one ordered set per
//! session rather than a timer per request.

use crate::ClientError;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{Notify, OwnedSemaphorePermit, mpsc, oneshot};
use tokio::time::Instant;
use weir_proto::limits::FRAME_BYTES_MAX;
use weir_proto::{
    ClientFrame, FrameDecoder, PROTOCOL_VERSION, Reply, Request, RequestId, ServerFrame,
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
pub(crate) type Answer = (ReplyResult, Option<Request>);

/// A node's limits on one PUT, from its `Hello`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PutLimits {
    pub value_bytes: usize,
    pub key_bytes: usize,
}

/// Takes the answer to one request and the address of the node it was sent to. Called exactly
/// once, on the session's reader, writer or expiry task (or whoever fails the session), never
/// under a lock: it must not block.
pub(crate) type OnAnswer = Box<dyn FnOnce(Answer, SocketAddr) + Send>;

/// What is kept for a request waiting for its reply; the permits are released when the reply
/// is routed (or the request fails or expires), whether or not anybody still waits for it.
struct Waiter {
    on_answer: OnAnswer,
    _permits: Vec<OwnedSemaphorePermit>,
    /// The request, handed back by the writer once encoded (only if the caller keeps it).
    request: Option<Request>,
    /// When the request fails with [`ClientError::Timeout`] of `timeout` if still unanswered.
    deadline: Instant,
    timeout: Duration,
}

/// Hashes a [`RequestId`]: ids are this client's own per-session counter, so SipHash's
/// resistance to chosen keys buys nothing, and one multiply spreads consecutive ids over the
/// high bits hashbrown looks at.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.write_u64(self.0.rotate_left(8) ^ u64::from(*byte));
        }
    }

    fn write_u64(&mut self, n: u64) {
        // 2^64 / golden ratio (Fibonacci hashing).
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

#[derive(Default)]
struct WaitersState {
    /// Set once the request stream failed; no request is accepted after that.
    failed: Option<ClientError>,
    waiters: HashMap<RequestId, Waiter, BuildHasherDefault<IdHasher>>,
    /// The PUTs among the waiters, oldest first (ids increase with time), with when each was
    /// sent. What [`PutWatch`] looks at.
    puts: BTreeMap<RequestId, Instant>,
    /// Every waiter's deadline, soonest first: what the expiry task looks at.
    deadlines: BTreeSet<(Instant, RequestId)>,
}

impl WaitersState {
    fn take(&mut self, id: RequestId) -> Option<Waiter> {
        let waiter = self.waiters.remove(&id)?;
        self.puts.remove(&id);
        self.deadlines.remove(&(waiter.deadline, id));
        Some(waiter)
    }
}

/// The waiters of one request stream, shared by the callers and the reader, writer and expiry
/// tasks.
struct Waiters {
    /// The node the requests go to (passed to [`OnAnswer`]).
    remote: SocketAddr,
    state: Mutex<WaitersState>,
    /// Wakes the [`PutWatch`]: a PUT was registered while none was outstanding, or the stream
    /// failed.
    changed: Notify,
    /// Wakes the expiry task: a deadline sooner than every other was registered, or the stream
    /// failed.
    expiry: Notify,
}

impl Waiters {
    fn new(remote: SocketAddr) -> Self {
        Self {
            remote,
            state: Mutex::default(),
            changed: Notify::new(),
            expiry: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, WaitersState> {
        // A panic while holding this lock leaves the map consistent (single inserts/removes).
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers the waiter of request `id` (a PUT if `is_put`). A failed stream gives the
    /// waiter's callback back, uncalled, with its error.
    fn register(
        &self,
        id: RequestId,
        waiter: Waiter,
        is_put: bool,
    ) -> Result<(), (ClientError, OnAnswer)> {
        let mut state = self.lock();
        if let Some(err) = &state.failed {
            return Err((err.clone(), waiter.on_answer));
        }
        let deadline = (waiter.deadline, id);
        let soonest = state
            .deadlines
            .first()
            .is_none_or(|first| deadline < *first);
        state.deadlines.insert(deadline);
        state.waiters.insert(id, waiter);
        let first_put = is_put && state.puts.is_empty();
        if is_put {
            state.puts.insert(id, Instant::now());
        }
        drop(state);
        if first_put {
            self.changed.notify_one();
        }
        if soonest {
            self.expiry.notify_one();
        }
        Ok(())
    }

    /// Removes the waiter of `id` (and its PUT and deadline entries).
    fn take(&self, id: RequestId) -> Option<Waiter> {
        self.lock().take(id)
    }

    /// Routes the replies of one read, taking the lock once for all of them (the reader, the
    /// writer and the callers all take it: once per reply made them queue on each other).
    fn complete_all(&self, frames: &mut Vec<ServerFrame>) {
        let mut answered = Vec::with_capacity(frames.len());
        {
            let mut state = self.lock();
            for frame in frames.drain(..) {
                match state.take(frame.id) {
                    Some(waiter) => answered.push((waiter, frame.reply)),
                    None => tracing::debug!(
                        id = %frame.id,
                        "reply for a request nobody waits for (timed out?)"
                    ),
                }
            }
        }
        for (waiter, reply) in answered {
            self.deliver(waiter, Ok(reply));
        }
    }

    /// Routes a reply; `false` if nobody waits for that id (timed out, or a stray reply).
    fn complete(&self, id: RequestId, result: ReplyResult) -> bool {
        match self.take(id) {
            Some(waiter) => {
                self.deliver(waiter, result);
                true
            }
            None => false,
        }
    }

    /// Hands `result` (and the kept request) to the waiter's [`OnAnswer`]. Never called under
    /// the lock.
    fn deliver(&self, mut waiter: Waiter, result: ReplyResult) {
        let request = waiter.request.take();
        (waiter.on_answer)((result, request), self.remote);
    }

    /// Fails every waiter whose deadline is at or before `now` with [`ClientError::Timeout`];
    /// returns the next deadline, `None` if nothing waits (or the stream failed).
    fn expire(&self, now: Instant) -> Option<Instant> {
        let mut expired = Vec::new();
        let next = {
            let mut state = self.lock();
            while let Some(&(deadline, id)) = state.deadlines.first() {
                if deadline > now {
                    break;
                }
                state.deadlines.pop_first();
                state.puts.remove(&id);
                if let Some(waiter) = state.waiters.remove(&id) {
                    expired.push(waiter);
                }
            }
            state.deadlines.first().map(|(deadline, _)| *deadline)
        };
        for waiter in expired {
            let timeout = waiter.timeout;
            self.deliver(waiter, Err(ClientError::Timeout(timeout)));
        }
        next
    }

    /// Stores the encoded request with its waiter, for a caller that may resend it. Called by
    /// the writer before the bytes are written, so before any reply can arrive.
    #[cfg(test)]
    fn keep(&self, id: RequestId, request: Request) {
        self.keep_all(&mut vec![(id, request)]);
    }

    /// [`Waiters::keep`] for every request of one write, under one lock.
    fn keep_all(&self, kept: &mut Vec<(RequestId, Request)>) {
        if kept.is_empty() {
            return;
        }
        let mut state = self.lock();
        for (id, request) in kept.drain(..) {
            if let Some(waiter) = state.waiters.get_mut(&id) {
                waiter.request = Some(request);
            }
        }
    }

    /// Fails every outstanding request and refuses new ones.
    fn fail(&self, err: ClientError) {
        let drained: Vec<Waiter> = {
            let mut state = self.lock();
            if state.failed.is_none() {
                state.failed = Some(err.clone());
            }
            state.puts.clear();
            state.deadlines.clear();
            state.waiters.drain().map(|(_, w)| w).collect()
        };
        self.changed.notify_one();
        self.expiry.notify_one();
        if !drained.is_empty() {
            tracing::debug!(requests = drained.len(), error = %err, "failing outstanding requests");
        }
        for waiter in drained {
            self.deliver(waiter, Err(err.clone()));
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
        Some(state.puts.values().next().copied())
    }

    /// The topics of the PUTs outstanding since `cutoff` or earlier, each once. A PUT's topic
    /// is read from its kept request (every routed PUT is kept once encoded).
    fn put_topics_since(&self, cutoff: Instant) -> Vec<String> {
        let state = self.lock();
        let mut topics: Vec<String> = Vec::new();
        for (id, sent) in &state.puts {
            if *sent > cutoff {
                break;
            }
            let topic = match state.waiters.get(id).and_then(|w| w.request.as_ref()) {
                Some(Request::Put(put)) => &put.topic,
                Some(Request::PutBatch(batch)) => &batch.topic,
                _ => continue,
            };
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
        client_name: &str,
        request_timeout: Duration,
        on_lost: OnLost,
    ) -> Result<(Arc<Self>, PutLimits), ClientError> {
        let (send, recv) = conn
            .open_bi()
            .await
            .map_err(|e| ClientError::ConnectionLost(format!("cannot open a stream: {e}")))?;
        let waiters = Arc::new(Waiters::new(conn.remote_address()));
        let failer = Arc::new(Failer {
            waiters: waiters.clone(),
            conn: conn.clone(),
            on_lost,
        });
        let (queue, rx) = mpsc::channel(WRITE_QUEUE);
        tokio::spawn(write_loop(send, rx, waiters.clone(), failer.clone()));
        tokio::spawn(read_loop(recv, waiters.clone(), failer));
        tokio::spawn(expire_loop(waiters.clone()));
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
                max_message_bytes,
                max_key_bytes,
            } => {
                tracing::debug!(
                    remote = %session.conn.remote_address(),
                    protocol_version,
                    %server_version,
                    max_message_bytes,
                    max_key_bytes,
                    "connected"
                );
                let limits = PutLimits {
                    value_bytes: usize::try_from(max_message_bytes).unwrap_or(usize::MAX),
                    key_bytes: usize::try_from(max_key_bytes).unwrap_or(usize::MAX),
                };
                Ok((session, limits))
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
        let (tx, rx) = oneshot::channel();
        let on_answer: OnAnswer = Box::new(move |answer, _| {
            // The caller may have stopped waiting (dropped its handle): fine.
            let _ = tx.send(answer);
        });
        match self
            .send_then(request, permits, deadline, keep, on_answer)
            .await
        {
            Ok(()) => Ok(PendingReply {
                rx,
                session: self.clone(),
            }),
            Err((not_sent, _)) => Err(not_sent),
        }
    }

    /// Queues `request`; `on_answer` gets its reply, or why there is none: the stream failed,
    /// or no reply came by `deadline` ([`ClientError::Timeout`]). Otherwise as
    /// [`Session::send`]; a request refused here gets its `on_answer` back, uncalled. `Ok`
    /// means `on_answer` is called (or was already, with an error).
    pub(crate) async fn send_then(
        self: &Arc<Self>,
        request: Request,
        permits: Vec<OwnedSemaphorePermit>,
        deadline: Instant,
        keep: bool,
        on_answer: OnAnswer,
    ) -> Result<(), (NotSent, OnAnswer)> {
        let id = RequestId(self.next_id.fetch_add(1, Ordering::Relaxed));
        let timeout = deadline.saturating_duration_since(Instant::now());
        let waiter = Waiter {
            on_answer,
            _permits: permits,
            request: None,
            deadline,
            timeout,
        };
        let is_put = matches!(request, Request::Put(_) | Request::PutBatch(_));
        if let Err((err, on_answer)) = self.waiters.register(id, waiter, is_put) {
            return Err((NotSent { err, request }, on_answer));
        }
        // Reserve a slot first, so that a timeout or a stopped writer leaves the request here.
        let err = match tokio::time::timeout_at(deadline, self.queue.reserve()).await {
            Ok(Ok(slot)) => {
                slot.send(Outgoing { id, request, keep });
                return Ok(());
            }
            Ok(Err(_)) => ClientError::ConnectionLost("the request stream stopped".into()),
            Err(_) => ClientError::Timeout(timeout),
        };
        match self.waiters.take(id) {
            Some(waiter) => Err((NotSent { err, request }, waiter.on_answer)),
            // It expired, or the stream failed, while waiting for room: `on_answer` has had
            // its answer (an error), so there is nothing left to give back. The request never
            // left, and is dropped.
            None => Ok(()),
        }
    }
}

/// A request on its way; [`PendingReply::wait`] returns its reply.
pub(crate) struct PendingReply {
    rx: oneshot::Receiver<Answer>,
    /// Keeps the connection open while someone may still wait for this reply.
    session: Arc<Session>,
}

impl std::fmt::Debug for PendingReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingReply")
            .field("remote", &self.session.remote())
            .finish()
    }
}

impl PendingReply {
    /// Waits for the reply until the deadline given to [`Session::send`].
    pub(crate) async fn wait(self) -> Result<Reply, ClientError> {
        self.wait_keeping().await.0
    }

    /// Like [`PendingReply::wait`], also returning the request if it was sent with `keep` and
    /// the writer got to encode it. The session's expiry task answers at the deadline.
    pub(crate) async fn wait_keeping(self) -> Answer {
        match self.rx.await {
            Ok(answer) => answer,
            Err(_) => (
                Err(ClientError::ConnectionLost(
                    "the request was dropped with its connection".into(),
                )),
                None,
            ),
        }
    }

    /// The node the request went to.
    pub(crate) fn remote(&self) -> SocketAddr {
        self.session.remote()
    }
}

/// Answers the requests of one session that are still unanswered at their deadline, until the
/// session fails (which answers all of them).
async fn expire_loop(waiters: Arc<Waiters>) {
    loop {
        let notified = waiters.expiry.notified();
        tokio::pin!(notified);
        // Registered before looking, so a wake-up between the look and the wait is not lost.
        notified.as_mut().enable();
        if waiters.is_failed() {
            return;
        }
        match waiters.expire(Instant::now()) {
            Some(next) => {
                tokio::select! {
                    () = tokio::time::sleep_until(next) => {}
                    () = &mut notified => {}
                }
            }
            None => notified.await,
        }
    }
}

/// Drains the queue: every frame that is queued when the writer wakes up goes into one buffer
/// and one `write_all` (up to [`COALESCE_BYTES`]).
async fn write_loop(
    mut send: quinn::SendStream,
    mut rx: mpsc::Receiver<Outgoing>,
    waiters: Arc<Waiters>,
    failer: Arc<Failer>,
) {
    let mut buf = Vec::new();
    let mut kept = Vec::new();
    let mut frames = 0usize;
    while let Some(first) = rx.recv().await {
        buf.clear();
        let mut next = Some(first);
        while let Some(Outgoing { id, request, keep }) = next.take() {
            let frame = ClientFrame { id, request };
            if let Err(e) = encode_frame(&frame, &mut buf) {
                waiters.complete(id, Err(ClientError::Protocol(format!("cannot send: {e}"))));
            } else {
                frames += 1;
                if keep {
                    kept.push((id, frame.request));
                }
            }
            if buf.len() < COALESCE_BYTES {
                next = rx.try_recv().ok();
            }
        }
        // Before the bytes go out, so before any of their replies can come back.
        waiters.keep_all(&mut kept);
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

/// Routes every whole reply `decoder` holds (those decoded before a bad frame included).
fn route_frames(decoder: &mut FrameDecoder, waiters: &Waiters) -> Result<(), ClientError> {
    let bad = |e: weir_proto::FrameError| ClientError::Protocol(format!("from the node: {e}"));
    decoder.check_header().map_err(bad)?;
    let mut frames = Vec::new();
    let result = loop {
        match decoder.next::<ServerFrame>() {
            Ok(Some(frame)) => frames.push(frame),
            Ok(None) => break decoder.check_header().map_err(bad),
            Err(e) => break Err(bad(e)),
        }
    };
    waiters.complete_all(&mut frames);
    result
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
        Reply::CommittedBatch(_) => "CommittedBatch",
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

    fn remote() -> SocketAddr {
        "127.0.0.1:7000".parse().unwrap()
    }

    fn waiters() -> Waiters {
        Waiters::new(remote())
    }

    /// A waiter whose deadline is `in_ms` from now.
    fn waiter_due(in_ms: u64) -> (Waiter, oneshot::Receiver<Answer>) {
        let (tx, rx) = oneshot::channel();
        (
            Waiter {
                on_answer: Box::new(move |answer, from| {
                    assert_eq!(from, remote());
                    let _ = tx.send(answer);
                }),
                _permits: Vec::new(),
                request: None,
                deadline: Instant::now() + Duration::from_millis(in_ms),
                timeout: Duration::from_millis(in_ms),
            },
            rx,
        )
    }

    fn waiter() -> (Waiter, oneshot::Receiver<Answer>) {
        waiter_due(60_000)
    }

    /// Registers `waiter`, which must be accepted.
    fn register(waiters: &Waiters, id: RequestId, waiter: Waiter, is_put: bool) {
        if let Err((e, _)) = waiters.register(id, waiter, is_put) {
            panic!("{id} refused: {e}");
        }
    }

    fn put(topic: &str) -> Request {
        Request::Put(weir_proto::Put {
            topic: topic.to_owned(),
            key: None,
            value: Vec::new(),
            producer_id: weir_proto::ProducerId(1),
            seq: weir_proto::Seq(0),
        })
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
        let waiters = waiters();
        let (w1, mut rx1) = waiter();
        let (w2, mut rx2) = waiter();
        register(&waiters, RequestId(1), w1, false);
        register(&waiters, RequestId(2), w2, false);

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
        let waiters = waiters();
        let (w1, mut rx1) = waiter();
        register(&waiters, RequestId(1), w1, false);
        waiters.fail(ClientError::ConnectionLost("gone".into()));
        assert_eq!(
            rx1.try_recv().unwrap().0,
            Err(ClientError::ConnectionLost("gone".into()))
        );
        let (w2, _rx2) = waiter();
        assert_eq!(
            waiters
                .register(RequestId(2), w2, false)
                .map_err(|(e, _)| e),
            Err(ClientError::ConnectionLost("gone".into()))
        );
        assert!(waiters.is_failed());
    }

    #[test]
    fn a_kept_request_comes_back_with_its_reply_or_its_failure() {
        let waiters = waiters();
        let (w1, mut rx1) = waiter();
        let (w2, mut rx2) = waiter();
        register(&waiters, RequestId(1), w1, false);
        register(&waiters, RequestId(2), w2, false);
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
        let waiters = Arc::new(waiters());
        let watch = PutWatch {
            waiters: waiters.clone(),
        };
        let mut receivers = Vec::new();
        for (id, topic) in [(1, None), (2, Some("a")), (3, Some("b")), (4, Some("a"))] {
            let (w, rx) = waiter();
            receivers.push(rx);
            register(&waiters, RequestId(id), w, topic.is_some());
            if let Some(topic) = topic {
                waiters.keep(RequestId(id), put(topic));
            }
        }
        // Only PUTs count, each topic once, oldest first.
        let slow = watch.slow_puts(Duration::from_millis(5)).await;
        assert_eq!(slow, Some(vec!["a".to_owned(), "b".to_owned()]));
        // Answered or cancelled PUTs no longer count.
        assert!(waiters.complete(RequestId(2), Ok(committed(1))));
        waiters.take(RequestId(4));
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

    #[tokio::test]
    async fn a_request_unanswered_at_its_deadline_times_out_even_behind_a_later_deadline() {
        let waiters = Arc::new(waiters());
        let expiry = tokio::spawn(expire_loop(waiters.clone()));
        // The expiry task goes to sleep with nothing to wait for.
        tokio::task::yield_now().await;
        let (late, mut rx_late) = waiter_due(60_000);
        register(&waiters, RequestId(1), late, true);
        tokio::task::yield_now().await;
        // Now it sleeps until the late deadline: a sooner one must wake it.
        let (soon, rx_soon) = waiter_due(20);
        register(&waiters, RequestId(2), soon, true);
        let (result, _) = tokio::time::timeout(Duration::from_secs(10), rx_soon)
            .await
            .expect("the sooner deadline was not honoured")
            .unwrap();
        assert_eq!(result, Err(ClientError::Timeout(Duration::from_millis(20))));
        assert!(rx_late.try_recv().is_err(), "the later request still waits");
        assert!(waiters.oldest_put().flatten().is_some());
        assert!(
            !waiters.complete(RequestId(2), Ok(committed(1))),
            "answered once"
        );

        // A failure ends the expiry task and answers what is left.
        waiters.fail(ClientError::ConnectionLost("gone".into()));
        tokio::time::timeout(Duration::from_secs(10), expiry)
            .await
            .expect("the expiry task did not end")
            .unwrap();
        assert_eq!(
            rx_late.try_recv().unwrap().0,
            Err(ClientError::ConnectionLost("gone".into()))
        );
    }

    #[test]
    fn a_reply_for_an_unknown_id_is_ignored() {
        let waiters = waiters();
        assert!(!waiters.complete(RequestId(9), Ok(committed(0))));
    }

    #[test]
    fn an_oversized_frame_header_from_the_node_is_a_protocol_error() {
        let waiters = waiters();
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
