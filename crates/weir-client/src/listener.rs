//! [`Listener`]: a resumable stream of a topic's committed entries.

use crate::ClientError;
use crate::client::Inner;
use crate::session::reply_kind;
use futures_core::Stream;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use weir_proto::limits::FRAME_BYTES_MAX;
use weir_proto::{
    ClientFrame, Event, FrameDecoder, ListenFrom, Offset, Reply, Request, RequestId, ServerFrame,
    encode_frame,
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
/// A background task reads the listen stream. If the connection is lost it reconnects with
/// exponential backoff ([`crate::ClientConfig::reconnect`]) and resumes right after the last
/// event it received: events are never skipped nor repeated, and offsets are checked to be
/// dense. A listener started at [`ListenFrom::Start`] that has seen no event yet re-attaches at
/// `Start`. An error the node reports (topic deleted, offset no longer retained, ...) or giving
/// up on reconnecting ends the stream with that error. Dropping the listener stops it.
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
    pub(crate) fn spawn(inner: Arc<Inner>, topic: String, from: ListenFrom) -> Self {
        let (tx, rx) = mpsc::channel(BATCHES_BUFFERED);
        let task = tokio::spawn(run(inner, topic.clone(), from, tx));
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

/// Which offset comes next; drops repeats and refuses gaps.
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

    /// Keeps the events that come next, in order; events below the expected offset (already
    /// delivered) are dropped. An event beyond it would be a gap: a protocol error.
    pub(crate) fn accept(&mut self, events: Vec<Event>) -> Result<Vec<Event>, ClientError> {
        let mut fresh = Vec::with_capacity(events.len());
        for event in events {
            match self.next {
                Some(next) if event.offset < next => {
                    tracing::debug!(offset = %event.offset, %next, "dropping a repeated event");
                    continue;
                }
                Some(next) if event.offset > next => {
                    return Err(ClientError::Protocol(format!(
                        "the node skipped from offset {next} to {}",
                        event.offset
                    )));
                }
                _ => {}
            }
            self.next = Some(event.offset.next());
            fresh.push(event);
        }
        Ok(fresh)
    }
}

/// How one attachment ended.
enum Detached {
    /// The consumer dropped the listener.
    Gone,
    /// Not worth retrying: hand the error to the consumer and stop.
    Fatal(ClientError),
    /// Reconnect; `progressed` if the attachment worked for a while: a frame arrived, or the
    /// stream stayed open longer than the longest backoff (a quiet topic).
    Retry { err: ClientError, progressed: bool },
}

type Batches = mpsc::Sender<Result<Vec<Event>, ClientError>>;

async fn run(inner: Arc<Inner>, topic: String, from: ListenFrom, tx: Batches) {
    let policy = inner.config.reconnect.clone();
    let mut tracker = OffsetTracker::new(from);
    // Consecutive failed attachments: count and when the first of them happened.
    let mut streak: Option<(u32, Instant)> = None;
    loop {
        let resume = tracker.resume_from(from);
        let (err, progressed) = match attach(&inner, &topic, resume, &mut tracker, &tx).await {
            Detached::Gone => return,
            Detached::Fatal(err) => {
                tracing::debug!(%topic, error = %err, "listener stopped");
                let _ = tx.send(Err(err)).await;
                return;
            }
            Detached::Retry { err, progressed } => (err, progressed),
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
        let delay = policy.backoff(*attempts);
        tracing::info!(
            %topic,
            attempt = *attempts,
            ?delay,
            resume = ?tracker.resume_from(from),
            error = %err,
            "listener lost its stream; reconnecting"
        );
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = tx.closed() => return,
        }
    }
}

/// One attachment: opens a listen stream on the client's connection (connecting if needed) and
/// forwards events until the stream ends.
async fn attach(
    inner: &Inner,
    topic: &str,
    from: ListenFrom,
    tracker: &mut OffsetTracker,
    tx: &Batches,
) -> Detached {
    let retry = |err| Detached::Retry {
        err,
        progressed: false,
    };
    let session = match inner.session().await {
        Ok(session) => session,
        Err(e @ ClientError::Config(_)) => return Detached::Fatal(e),
        Err(e) => return retry(e),
    };
    let (mut send, mut recv) = match session.conn.open_bi().await {
        Ok(streams) => streams,
        Err(e) => return retry(ClientError::ConnectionLost(e.to_string())),
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
        return retry(ClientError::ConnectionLost(e.to_string()));
    }
    tracing::debug!(%topic, ?from, "listener attached");
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
                match forward(&mut decoder, tracker, tx).await {
                    Ok(true) => progressed = true,
                    Ok(false) => {}
                    Err(Detached::Retry { err, progressed: p }) => {
                        return Detached::Retry {
                            err,
                            progressed: p || progressed || attached_at.elapsed() > stable_after,
                        };
                    }
                    Err(detached) => return detached,
                }
            }
            Ok(None) => {
                return Detached::Retry {
                    err: ClientError::ConnectionLost("the node ended the listen stream".into()),
                    progressed: progressed || attached_at.elapsed() > stable_after,
                };
            }
            Err(e) => {
                return Detached::Retry {
                    err: ClientError::ConnectionLost(e.to_string()),
                    progressed: progressed || attached_at.elapsed() > stable_after,
                };
            }
        }
    }
}

/// Forwards the complete frames in `decoder`; `Ok(true)` if any frame was complete.
async fn forward(
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
                let fresh = tracker.accept(events).map_err(Detached::Fatal)?;
                if !fresh.is_empty() && tx.send(Ok(fresh)).await.is_err() {
                    return Err(Detached::Gone);
                }
            }
            Reply::Error(e) if e.code.is_retryable() => {
                return Err(Detached::Retry {
                    err: e.into(),
                    progressed: false,
                });
            }
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
        }
    }

    fn offsets(events: &[Event]) -> Vec<u64> {
        events.iter().map(|e| e.offset.get()).collect()
    }

    #[test]
    fn from_start_accepts_the_first_offset_seen_then_requires_density() {
        let mut t = OffsetTracker::new(ListenFrom::Start);
        assert_eq!(t.resume_from(ListenFrom::Start), ListenFrom::Start);
        let got = t.accept(vec![ev(5), ev(6)]).unwrap();
        assert_eq!(offsets(&got), [5, 6]);
        assert_eq!(
            t.resume_from(ListenFrom::Start),
            ListenFrom::Offset(Offset(7))
        );
    }

    #[test]
    fn repeated_events_after_a_resume_are_dropped() {
        let mut t = OffsetTracker::new(ListenFrom::Offset(Offset(3)));
        let got = t.accept(vec![ev(1), ev(2), ev(3), ev(4)]).unwrap();
        assert_eq!(offsets(&got), [3, 4]);
        let got = t.accept(vec![ev(4), ev(5)]).unwrap();
        assert_eq!(offsets(&got), [5]);
    }

    #[test]
    fn a_gap_in_offsets_is_a_protocol_error() {
        let mut t = OffsetTracker::new(ListenFrom::Offset(Offset(0)));
        t.accept(vec![ev(0)]).unwrap();
        let err = t.accept(vec![ev(2)]).unwrap_err();
        assert!(matches!(&err, ClientError::Protocol(m) if m.contains("from offset 1 to 2")));
    }
}
