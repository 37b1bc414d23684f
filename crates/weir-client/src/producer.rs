//! [`Producer`]: pipelined PUTs with a bounded window, sent in batches.

use crate::client::{committed, new_producer_id};
use crate::routing::{RoutedCall, Target};
use crate::session::{Answer, OnAnswer, unexpected};
use crate::{Client, ClientError};
use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, oneshot};
use weir_proto::limits::PUT_BATCH_MESSAGES_MAX;
use weir_proto::{Committed, ProducerId, PutBatch, PutMessage, PutResult, Reply, Request, Seq};

/// Most PUTs a producer sends in one `PutBatch` request.
pub const PRODUCER_BATCH_MESSAGES_MAX: usize = PUT_BATCH_MESSAGES_MAX;
/// A batch takes no more PUTs once their keys and values reach this many bytes (a bigger
/// message goes in a batch of its own), which keeps every batch within the frame limit.
pub const PRODUCER_BATCH_BYTES_MAX: usize = 1024 * 1024;
/// Batches of one producer waiting for their answer at once. While they wait, new PUTs gather
/// into the next batch: how batches grow with the load and stay small (a PUT goes out at once)
/// when it is light, as Kafka's `max.in.flight.requests.per.connection` does.
pub const PRODUCER_BATCHES_IN_FLIGHT_MAX: usize = 4;
/// Counted per message on top of its key and value, for the batch's byte bound.
const MESSAGE_OVERHEAD_BYTES: usize = 16;

/// Sends PUTs to one topic without waiting for each to commit, keeping at most `window` of them
/// in flight. Made by [`Client::producer`].
///
/// [`Producer::send`] returns as soon as the PUT is queued (it waits only while `window` PUTs
/// are unanswered) and hands back a [`PutHandle`] to await its [`Committed`]. PUTs go to the
/// topic's leader, and the PUTs of one producer go out in the order they were sent.
///
/// Batching: queued PUTs go out together, as one `PutBatch` request (at most
/// [`PRODUCER_BATCH_MESSAGES_MAX`] PUTs or [`PRODUCER_BATCH_BYTES_MAX`] bytes), which the
/// leader appends and replicates as one write. Nothing waits to fill a batch: a PUT goes out
/// at once unless [`PRODUCER_BATCHES_IN_FLIGHT_MAX`] batches are already waiting for their
/// answer, and then it goes with the next batch. A background task of the producer sends
/// them, so a PUT goes out whether or not its handle is awaited, and also after the producer
/// is dropped.
///
/// Exactly-once, in order: the producer has an id, and numbers its PUTs 0, 1, 2, ... as they
/// are queued. The topic remembers, per producer, the last number it committed and where (a
/// window of recent batches, kept for a day of inactivity: see the protocol docs), so a resend
/// of a PUT it committed is answered with the original offset and timestamp, never written
/// twice, and a PUT whose predecessor is missing is refused (`OutOfOrderSequence`), never
/// written out of order. That makes resending always safe, and the producer resends in the
/// background, within the request timeout and [`crate::LeaderRetryPolicy`]: a batch answered
/// "not leader" (to the new leader), "busy" or "out of order" (after a backoff), and a batch
/// whose connection was lost while it was in flight (committed or not: the node tells). So the
/// PUTs of one producer land once each, at offsets in their send order, across leader changes
/// and reconnects, and each handle sees its PUT committed once or a clear error once the
/// request timeout has passed.
///
/// A PUT that fails for good (its deadline passed, or the node refused it) leaves a hole in
/// the producer's numbering that nothing fills: the PUTs still queued then go out under a new
/// producer id, numbered from 0, and order holds again from there. PUTs already sent after the
/// failed one fail the same way (out of order), unless the failed one turns out to have
/// committed after all ([`ClientError::Timeout`] and [`ClientError::ConnectionLost`] leave
/// that unknown).
///
/// ```no_run
/// # async fn f(client: weir_client::Client) -> Result<(), weir_client::ClientError> {
/// let mut producer = client.producer("orders", 64)?;
/// let mut handles = Vec::new();
/// for i in 0..10_000 {
///     handles.push(producer.send(None, format!("message {i}")).await?);
/// }
/// let mut offsets = Vec::new();
/// for handle in handles {
///     offsets.push(handle.await?.offset);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Producer {
    client: Client,
    topic: String,
    window: Arc<Semaphore>,
    window_size: u32,
    shared: Arc<Shared>,
}

/// What the producer and its sender task share; also, alone, the producer behind
/// [`Client::put`] for one topic ([`lone_put`]).
pub(crate) struct Shared {
    topic: String,
    /// The topic as the router wants it (cloned per batch without allocating).
    target: Target,
    buffer: Mutex<Buffer>,
    /// Held while batches are taken from the buffer and handed to a session: they leave in the
    /// order their PUTs were queued.
    sending: tokio::sync::Mutex<()>,
    /// One permit per batch waiting for its answer.
    batches: Arc<Semaphore>,
    /// Wakes the sender task: PUTs were queued, or the producer was dropped.
    queued: Notify,
    closed: AtomicBool,
    /// Lone PUTs: a task is sending the queued ones (see [`Shared::send_scheduled`]).
    scheduled: AtomicBool,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

/// PUTs queued for the next batch.
#[derive(Default)]
struct Buffer {
    messages: Vec<PutMessage>,
    waiting: Vec<Waiting>,
    bytes: usize,
    /// The sequence number of `messages[0]`; the others follow it.
    first_seq: Seq,
    /// The sequence number the next queued PUT gets.
    next_seq: Seq,
    /// The id the queued PUTs go out under: with their sequence numbers, what names each PUT.
    /// A new one replaces it after a PUT failed for good (see [`Shared::rotate_after_failure`]).
    producer_id: ProducerId,
}

impl Buffer {
    /// Queues one PUT, numbered once, as queued: a resend carries the same number.
    fn push(&mut self, put: PutMessage, waiting: Waiting) {
        if self.messages.is_empty() {
            self.first_seq = self.next_seq;
        }
        self.next_seq = Seq(self.next_seq.0 + 1);
        self.bytes += message_bytes(&put);
        self.messages.push(put);
        self.waiting.push(waiting);
    }

    /// Takes the first PUTs queued, as many as one batch holds (at least one): the batch's
    /// messages, handles, producer id and first sequence number.
    fn take_batch(&mut self) -> (Vec<PutMessage>, Vec<Waiting>, ProducerId, Seq) {
        let mut count = 0;
        let mut bytes = 0;
        for put in &self.messages {
            let next = message_bytes(put);
            if count > 0
                && (count >= PRODUCER_BATCH_MESSAGES_MAX || bytes + next > PRODUCER_BATCH_BYTES_MAX)
            {
                break;
            }
            count += 1;
            bytes += next;
        }
        let first_seq = self.first_seq;
        self.first_seq = Seq(first_seq.0 + count as u64);
        self.bytes -= bytes;
        let messages: Vec<PutMessage> = if count == self.messages.len() {
            std::mem::take(&mut self.messages)
        } else {
            self.messages.drain(..count).collect()
        };
        let waiting = self.waiting.drain(..count).collect();
        (messages, waiting, self.producer_id, first_seq)
    }
}

/// What one PUT counts for against [`PRODUCER_BATCH_BYTES_MAX`].
fn message_bytes(put: &PutMessage) -> usize {
    put.key.as_ref().map_or(0, Vec::len) + put.value.len() + MESSAGE_OVERHEAD_BYTES
}

/// A queued or sent PUT's handle and window permit (released with its answer).
struct Waiting {
    tx: oneshot::Sender<Result<Committed, ClientError>>,
    /// A [`Producer`]'s window permit (a lone PUT has none: its caller waits for it).
    _permit: Option<OwnedSemaphorePermit>,
}

impl Producer {
    pub(crate) fn new(client: Client, topic: String, window: usize) -> Result<Self, ClientError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            ClientError::Config("a Producer needs a tokio runtime (it sends from a task)".into())
        })?;
        let window_size = u32::try_from(window.clamp(1, Semaphore::MAX_PERMITS))
            .unwrap_or(u32::MAX)
            .max(1);
        let shared = Shared::new(&topic);
        runtime.spawn(run_sender(shared.clone(), client.clone()));
        Ok(Self {
            client,
            topic,
            window: Arc::new(Semaphore::new(window_size as usize)),
            window_size,
            shared,
        })
    }

    /// The topic this producer writes to.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The id this producer's next PUTs go out under. Its PUTs are numbered 0, 1, 2, ... in
    /// send order, once, as they are queued: a resend carries the same id and numbers, which is
    /// how the node recognizes it. After a PUT failed for good the producer takes a new id
    /// (numbering again from 0): see [`Producer`].
    pub fn producer_id(&self) -> ProducerId {
        self.shared.lock().producer_id
    }

    /// The most PUTs this producer keeps in flight.
    pub fn window(&self) -> usize {
        self.window_size as usize
    }

    /// PUTs sent and not answered yet.
    pub fn in_flight(&self) -> usize {
        self.window_size as usize - self.window.available_permits()
    }

    /// Queues one PUT, first waiting (up to the request timeout) while `window` PUTs are
    /// unanswered. The returned handle may be awaited for the result or dropped; either way
    /// the PUT stays in the window until it is finally answered, including resends after
    /// "not leader" answers (see [`Producer`]).
    ///
    /// Fails right away for a key or value above the protocol's limits.
    pub async fn send(
        &mut self,
        key: Option<&[u8]>,
        value: impl Into<Vec<u8>>,
    ) -> Result<PutHandle, ClientError> {
        let value = value.into();
        self.client.inner.check_put(&self.topic, key, &value)?;
        let timeout = self.client.inner.config.request_timeout;
        let permit = tokio::time::timeout(timeout, self.window.clone().acquire_owned())
            .await
            .map_err(|_| ClientError::Timeout(timeout))?
            .map_err(|_| ClientError::ConnectionLost("producer closed".into()))?;
        let (tx, rx) = oneshot::channel();
        let bytes = key.map_or(0, <[u8]>::len) + value.len() + MESSAGE_OVERHEAD_BYTES;
        let mut message = (
            PutMessage {
                key: key.map(<[u8]>::to_vec),
                value,
            },
            Waiting {
                tx,
                _permit: Some(permit),
            },
        );
        loop {
            let refused = {
                let mut buffer = self.shared.lock();
                let full = !buffer.messages.is_empty()
                    && (buffer.messages.len() >= PRODUCER_BATCH_MESSAGES_MAX
                        || buffer.bytes + bytes > PRODUCER_BATCH_BYTES_MAX);
                if full {
                    Some(message)
                } else {
                    buffer.push(message.0, message.1);
                    None
                }
            };
            let Some(back) = refused else { break };
            // The batch is full: send what is queued first (waiting for a batch to be answered
            // if need be: backpressure), then queue this one.
            message = back;
            self.shared.send_queued(&self.client).await;
        }
        self.shared.queued.notify_one();
        Ok(PutHandle { rx })
    }

    /// Sends what is queued and waits until every PUT sent through this producer has been
    /// answered (committed or failed; the handles tell which). [`ClientError::Timeout`] if
    /// that takes longer than the request timeout.
    pub async fn flush(&mut self) -> Result<(), ClientError> {
        let timeout = self.client.inner.config.request_timeout;
        let all = tokio::time::timeout(timeout, async {
            self.shared.send_queued(&self.client).await;
            self.window.acquire_many(self.window_size).await
        })
        .await
        .map_err(|_| ClientError::Timeout(timeout))?
        .map_err(|_| ClientError::ConnectionLost("producer closed".into()))?;
        drop(all);
        Ok(())
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        // The sender task sends what is still queued, then ends.
        self.shared.closed.store(true, Ordering::Release);
        self.shared.queued.notify_one();
    }
}

/// The producer's sender task: sends queued PUTs whenever some are queued.
async fn run_sender(shared: Arc<Shared>, client: Client) {
    loop {
        shared.queued.notified().await;
        shared.send_queued(&client).await;
        if shared.closed.load(Ordering::Acquire) {
            // Sent after the flag was seen: nothing can be queued any more.
            shared.send_queued(&client).await;
            return;
        }
    }
}

impl Shared {
    pub(crate) fn new(topic: &str) -> Arc<Self> {
        Arc::new(Shared {
            target: Target::Topic(topic.into()),
            topic: topic.to_owned(),
            buffer: Mutex::new(Buffer {
                producer_id: new_producer_id(),
                ..Buffer::default()
            }),
            sending: tokio::sync::Mutex::new(()),
            batches: Arc::new(Semaphore::new(PRODUCER_BATCHES_IN_FLIGHT_MAX)),
            queued: Notify::new(),
            closed: AtomicBool::new(false),
            scheduled: AtomicBool::new(false),
        })
    }

    /// Nothing queued and nothing in flight: forgetting it loses nothing (a later PUT starts
    /// a new producer).
    pub(crate) fn is_idle(&self) -> bool {
        self.lock().messages.is_empty()
            && self.batches.available_permits() == PRODUCER_BATCHES_IN_FLIGHT_MAX
    }

    /// Sends the queued lone PUTs until none is left, then ends; a PUT queued as it ends
    /// schedules it again (`scheduled` is cleared before the last look at the buffer).
    async fn send_scheduled(self: Arc<Self>, client: Client) {
        loop {
            self.send_queued(&client).await;
            self.scheduled.store(false, Ordering::SeqCst);
            if self.lock().messages.is_empty() || self.scheduled.swap(true, Ordering::SeqCst) {
                return;
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Buffer> {
        // Pushes and takes leave the buffer consistent even if a holder panicked.
        self.buffer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends everything queued, as batches, in order (each waits for a batch slot).
    async fn send_queued(self: &Arc<Self>, client: &Client) {
        let _sending = self.sending.lock().await;
        loop {
            if self.lock().messages.is_empty() {
                return;
            }
            // A permit is always available eventually: each batch's answer (or its timeout)
            // releases it.
            let Ok(slot) = self.batches.clone().acquire_owned().await else {
                return;
            };
            // Taken after the slot: PUTs queued while waiting join this batch.
            let (messages, waiting, producer_id, first_seq) = self.lock().take_batch();
            if messages.is_empty() {
                return;
            }
            let batch = PutBatch {
                topic: self.topic.clone(),
                producer_id,
                first_seq,
                messages,
            };
            self.send_batch(client, batch, waiting, slot).await;
        }
    }

    async fn send_batch(
        self: &Arc<Self>,
        client: &Client,
        batch: PutBatch,
        waiting: Vec<Waiting>,
        slot: OwnedSemaphorePermit,
    ) {
        let mut call = RoutedCall::new(client.inner.clone(), self.target.clone());
        let settle = SettleBatch {
            call: call.clone(),
            shared: self.clone(),
            producer_id: batch.producer_id,
            waiting,
            _slot: slot,
        };
        let request = Request::PutBatch(batch);
        if let Err((e, on_answer)) = call.dispatch_then(request, settle.into_on_answer()).await {
            on_answer((Err(e), None), SocketAddr::from(([0, 0, 0, 0], 0)));
        }
    }

    /// A PUT that went out under `failed` failed for good: the producer's sequence has a hole
    /// the node will never fill, so every later PUT under that id would be refused as out of
    /// order. The PUTs still queued go out under a new id, numbered from 0 (batches already
    /// taken keep theirs: they commit if the failed PUT turns out to have committed after all,
    /// or fail the same way).
    fn rotate_after_failure(&self, failed: ProducerId) {
        let mut buffer = self.lock();
        if buffer.producer_id != failed {
            return; // Rotated already.
        }
        let fresh = new_producer_id();
        tracing::debug!(topic = %self.topic, old = ?failed, new = ?fresh, "a PUT failed; new producer id");
        buffer.producer_id = fresh;
        buffer.first_seq = Seq(0);
        buffer.next_seq = Seq(buffer.messages.len() as u64);
    }
}

/// What settles one batch once its first answer arrives; its PUTs' window permits and its
/// batch slot are released with the final answer.
struct SettleBatch {
    call: RoutedCall,
    shared: Arc<Shared>,
    /// The id the batch went out under.
    producer_id: ProducerId,
    waiting: Vec<Waiting>,
    _slot: OwnedSemaphorePermit,
}

impl SettleBatch {
    fn into_on_answer(self) -> OnAnswer {
        Box::new(move |answer, answered_by| self.answered(answer, answered_by))
    }

    /// Runs where the answer arrives (the session's reader task): results (the common case)
    /// are handed over at once; anything else may need a resend (or a cluster refresh), which
    /// a task of its own does.
    fn answered(self, answer: Answer, answered_by: SocketAddr) {
        let answer = match answer {
            (Ok(Reply::CommittedBatch(results)), request) => {
                match crate::routing::to_resend(results) {
                    // Some PUTs were not taken, for a reason that passes: resend it whole, as a
                    // batch refused before proposing would be (the ones that were taken come back
                    // with their original offsets).
                    Ok(why) => (Ok(Reply::Error(why)), request),
                    Err(results) => {
                        self.call.inner().set_route(self.call.target(), answered_by);
                        return self.finish(Ok(Reply::CommittedBatch(results)));
                    }
                }
            }
            answer => answer,
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    let mut this = self;
                    let result = this.call.settle_answer(answer, answered_by).await;
                    this.finish(result);
                });
            }
            // No runtime (it is shutting down): no resend is possible.
            Err(_) => self.finish(answer.0),
        }
    }

    /// Hands each PUT of the batch its result.
    fn finish(self, result: Result<Reply, ClientError>) {
        let count = self.waiting.len();
        let failure = match result {
            Ok(Reply::CommittedBatch(results)) if results.len() == count => {
                let mut failed = false;
                let results: Vec<_> = results
                    .into_iter()
                    .map(|result| match result {
                        PutResult::Committed(done) => committed(Reply::Committed(done)),
                        PutResult::Error(e) => {
                            failed = true;
                            Err(e.into())
                        }
                    })
                    .collect();
                if failed {
                    // Before the handles hear of it: a PUT sent after a failed one is awaited
                    // goes out under the new id.
                    self.shared.rotate_after_failure(self.producer_id);
                }
                for (waiting, result) in self.waiting.into_iter().zip(results) {
                    // The caller may have dropped its handle: fine.
                    let _ = waiting.tx.send(result);
                }
                return;
            }
            Ok(Reply::CommittedBatch(results)) => ClientError::Protocol(format!(
                "{} results for a batch of {count} PUTs",
                results.len()
            )),
            Ok(other) => unexpected("CommittedBatch", &other),
            Err(e) => e,
        };
        self.shared.rotate_after_failure(self.producer_id);
        for waiting in self.waiting {
            let _ = waiting.tx.send(Err(failure.clone()));
        }
    }
}

/// [`Client::put`]: one PUT through the topic's lone producer `shared`. Concurrent calls for
/// one topic share it, so their PUTs are numbered and batched together, exactly-once like a
/// [`Producer`]'s; a task sends them, so a PUT that was queued goes out even if the caller
/// stops waiting.
pub(crate) async fn lone_put(
    shared: Arc<Shared>,
    client: &Client,
    put: PutMessage,
) -> Result<Committed, ClientError> {
    let (tx, rx) = oneshot::channel();
    shared.lock().push(put, Waiting { tx, _permit: None });
    if !shared.scheduled.swap(true, Ordering::SeqCst) {
        tokio::spawn(shared.clone().send_scheduled(client.clone()));
    }
    PutHandle { rx }.wait().await
}

/// The outcome of one PUT sent by a [`Producer`]: `.await` it (or call [`PutHandle::wait`]) for
/// the [`Committed`] offset and timestamp. Waiting is bounded by the request timeout, counted
/// from when the PUT's batch went out (at once, unless [`PRODUCER_BATCHES_IN_FLIGHT_MAX`]
/// batches were waiting), resends to a new leader included.
#[derive(Debug)]
#[must_use = "a PutHandle tells whether the PUT committed; await it or drop it explicitly"]
pub struct PutHandle {
    rx: oneshot::Receiver<Result<Committed, ClientError>>,
}

impl PutHandle {
    /// Waits for the final answer: [`Committed`], or the error that ended the PUT (see
    /// [`Producer`] for which errors leave the outcome unknown).
    pub async fn wait(self) -> Result<Committed, ClientError> {
        self.rx.await.unwrap_or_else(|_| {
            Err(ClientError::ConnectionLost(
                "the PUT was abandoned (the runtime is shutting down?)".into(),
            ))
        })
    }
}

impl IntoFuture for PutHandle {
    type Output = Result<Committed, ClientError>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.wait())
    }
}
