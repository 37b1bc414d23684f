//! [`Producer`]: pipelined PUTs with a bounded window.

use crate::client::committed;
use crate::routing::{RoutedCall, Target};
use crate::session::{Answer, OnAnswer};
use crate::{Client, ClientError};
use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use weir_proto::{Committed, Reply};

/// Sends PUTs to one topic without waiting for each to commit, keeping at most `window` of them
/// in flight. Made by [`Client::producer`].
///
/// [`Producer::send`] returns as soon as the PUT is queued (it waits only while `window` PUTs
/// are unanswered) and hands back a [`PutHandle`] to await its [`Committed`]. PUTs go to the
/// topic's leader, and the PUTs of one producer go out in the order they were sent.
///
/// Leader changes: a PUT answered "not leader" was not appended, and is resent to the new
/// leader in the background (whether or not its handle is awaited), as
/// [`crate::LeaderRetryPolicy`] describes, within the request timeout; it stays in the window
/// until it finally commits or fails. Resent PUTs land after PUTs sent later that did not need
/// a resend, so **the offsets of one producer's PUTs follow the send order only while no
/// resend happens** (order-preserving, exactly-once resends are not built yet). A PUT whose
/// connection broke after it was sent is not resent: its handle fails with
/// [`ClientError::ConnectionLost`] and the PUT may or may not have been committed.
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
    /// The topic as the router wants it (cloned per PUT without allocating).
    target: Target,
    window: Arc<Semaphore>,
    window_size: u32,
}

impl Producer {
    pub(crate) fn new(client: Client, topic: String, window: usize) -> Self {
        let window_size = u32::try_from(window.clamp(1, Semaphore::MAX_PERMITS))
            .unwrap_or(u32::MAX)
            .max(1);
        Self {
            client,
            target: Target::Topic(topic.as_str().into()),
            topic,
            window: Arc::new(Semaphore::new(window_size as usize)),
            window_size,
        }
    }

    /// The topic this producer writes to.
    pub fn topic(&self) -> &str {
        &self.topic
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
    /// Fails right away for a key or value above the protocol's limits, and with
    /// [`ClientError::Connect`] if no node can be reached.
    pub async fn send(
        &mut self,
        key: Option<&[u8]>,
        value: impl Into<Vec<u8>>,
    ) -> Result<PutHandle, ClientError> {
        let inner = &self.client.inner;
        let request = inner.put_request(&self.topic, key, value.into())?;
        let timeout = inner.config.request_timeout;
        let permit = tokio::time::timeout(timeout, self.window.clone().acquire_owned())
            .await
            .map_err(|_| ClientError::Timeout(timeout))?
            .map_err(|_| ClientError::ConnectionLost("producer closed".into()))?;
        let mut call = RoutedCall::new(inner.clone(), self.target.clone());
        let (tx, rx) = oneshot::channel();
        // The answer is handled where it arrives (the session's reader task), so a PUT is
        // resent and leaves the window even if nobody awaits its handle. Sent here, so the PUTs
        // of this producer go out in send order.
        let settle = Settle {
            call: call.clone(),
            tx,
            _permit: permit,
        };
        call.dispatch_then(request, settle.into_on_answer()).await?;
        Ok(PutHandle { rx })
    }

    /// Waits until every PUT sent through this producer has been answered (committed or
    /// failed; the handles tell which). [`ClientError::Timeout`] if that takes longer than the
    /// request timeout.
    pub async fn flush(&mut self) -> Result<(), ClientError> {
        let timeout = self.client.inner.config.request_timeout;
        let all = tokio::time::timeout(timeout, self.window.acquire_many(self.window_size))
            .await
            .map_err(|_| ClientError::Timeout(timeout))?
            .map_err(|_| ClientError::ConnectionLost("producer closed".into()))?;
        drop(all);
        Ok(())
    }
}

/// What settles one PUT of a [`Producer`] once its first answer arrives; its window permit is
/// released with the final answer.
struct Settle {
    call: RoutedCall,
    tx: oneshot::Sender<Result<Committed, ClientError>>,
    _permit: OwnedSemaphorePermit,
}

impl Settle {
    fn into_on_answer(self) -> OnAnswer {
        Box::new(move |answer, answered_by| self.answered(answer, answered_by))
    }

    /// Runs on the session's reader task: a commit (the common case) is handed over at once;
    /// anything else may need a resend (or a cluster refresh), which a task of its own does.
    fn answered(self, answer: Answer, answered_by: SocketAddr) {
        let Settle {
            mut call,
            tx,
            _permit,
        } = self;
        match answer {
            (Ok(Reply::Committed(done)), _) => {
                // Only the leader commits: remember who did.
                call.inner().set_route(call.target(), answered_by);
                drop(_permit);
                let _ = tx.send(Ok(done));
            }
            answer => match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(async move {
                        let result = call
                            .settle_answer(answer, answered_by)
                            .await
                            .and_then(committed);
                        drop(_permit);
                        let _ = tx.send(result);
                    });
                }
                // No runtime (it is shutting down): no resend is possible.
                Err(_) => {
                    let _ = tx.send(answer.0.and_then(committed));
                }
            },
        }
    }
}

/// The outcome of one PUT sent by a [`Producer`]: `.await` it (or call [`PutHandle::wait`]) for
/// the [`Committed`] offset and timestamp. Waiting is bounded by the request timeout, counted
/// from the send, resends to a new leader included.
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
