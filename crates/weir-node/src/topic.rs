//! One topic: its log, the writer thread that does group commit, and the committed-offset watch
//! that listeners follow.
//!
//! Seams for later issues:
//! - [`Topic::append`] is the one path by which entries enter the log. Replication replaces the
//!   writer thread behind it with a Raft group: the leader appends, followers fsync, and the
//!   commit index (not the local fsync) advances `committed`.
//! - [`Committed::publish`] (in the writer) is the one path by which entries become visible.
//!   Programmable topics hook in there: committed input → program → events.

use crate::clock;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, mpsc, watch};
use weir_proto::{
    Committed, ErrorCode, ErrorReply, Offset, Reply, RequestId, ServerFrame, TimestampMs,
    TopicConfig, TopicStatus,
};
use weir_storage::{FsyncPolicy, Log, LogReader, LogStats};

/// Most appends gathered into one group commit (one fsync). Bounds the latency a batch adds
/// and the memory it holds.
pub(crate) const GROUP_COMMIT_COUNT_MAX: usize = 16 * 1024;
/// Most payload bytes gathered into one group commit.
pub(crate) const GROUP_COMMIT_BYTES_MAX: usize = 32 * 1024 * 1024;

/// Where the reply to one PUT goes: the stream that sent it. Holding the permit bounds the PUTs
/// in flight per stream; it is released when the reply is handed over.
#[derive(Debug)]
pub(crate) struct ReplyTo {
    pub id: RequestId,
    pub tx: mpsc::UnboundedSender<ServerFrame>,
    pub permit: Option<OwnedSemaphorePermit>,
}

impl ReplyTo {
    pub fn send(self, reply: Reply) {
        // The stream may be gone (client left): then nobody waits for this reply.
        let _ = self.tx.send(ServerFrame { id: self.id, reply });
        drop(self.permit);
    }
}

#[derive(Debug)]
pub(crate) struct AppendOp {
    /// The stored-entry encoding (weir_proto::entry) of the PUT.
    pub entry: Vec<u8>,
    pub reply: ReplyTo,
}

/// What listeners and status read while the writer thread owns the log.
#[derive(Debug, Default)]
struct Shared {
    stats: LogStats,
    start_offset: Offset,
    next_offset: Offset,
    synced_offset: Offset,
    failure: Option<String>,
}

#[derive(Debug)]
pub(crate) struct Topic {
    pub name: String,
    pub config: TopicConfig,
    state: TopicState,
}

#[derive(Debug)]
enum TopicState {
    Open(OpenTopic),
    /// The log could not be opened (e.g. corruption); the reason names file and position.
    Failed(String),
}

#[derive(Debug)]
struct OpenTopic {
    ops: Mutex<Option<std_mpsc::Sender<AppendOp>>>,
    reader: LogReader,
    committed: watch::Receiver<Offset>,
    shared: Arc<Mutex<Shared>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Topic {
    pub fn failed(name: String, config: TopicConfig, reason: String) -> Self {
        Self {
            name,
            config,
            state: TopicState::Failed(reason),
        }
    }

    /// Starts the writer thread over an opened log.
    pub fn start(
        name: String,
        config: TopicConfig,
        log: Log,
        retention_check_interval_ms: u64,
    ) -> std::io::Result<Self> {
        let reader = log.reader();
        let committed_offset = log.committed_offset();
        let (committed_tx, committed_rx) = watch::channel(committed_offset);
        let shared = Arc::new(Mutex::new(Shared {
            stats: log.stats(),
            start_offset: log.start_offset(),
            next_offset: log.next_offset(),
            synced_offset: log.synced_offset(),
            failure: None,
        }));
        let last_timestamp_ms = last_timestamp(&reader, committed_offset);
        let (ops_tx, ops_rx) = std_mpsc::channel();
        let writer = Writer {
            name: name.clone(),
            log,
            ops: ops_rx,
            committed: committed_tx,
            shared: shared.clone(),
            last_timestamp_ms,
            retention_check_interval: Duration::from_millis(retention_check_interval_ms),
            unsynced: false,
        };
        let thread = std::thread::Builder::new()
            .name(format!("weir-topic-{name}"))
            .spawn(move || writer.run())?;
        Ok(Self {
            name,
            config,
            state: TopicState::Open(OpenTopic {
                ops: Mutex::new(Some(ops_tx)),
                reader,
                committed: committed_rx,
                shared,
                thread: Mutex::new(Some(thread)),
            }),
        })
    }

    fn open(&self) -> Result<&OpenTopic, ErrorReply> {
        match &self.state {
            TopicState::Open(o) => Ok(o),
            TopicState::Failed(reason) => Err(unavailable(&self.name, reason)),
        }
    }

    /// Queues one entry for the next group commit; the reply goes to `op.reply` once durable.
    pub fn append(&self, op: AppendOp) {
        let open = match self.open() {
            Ok(o) => o,
            Err(e) => return op.reply.send(Reply::Error(e)),
        };
        let sent = match &*lock(&open.ops) {
            Some(tx) => tx.send(op).map_err(|e| e.0),
            None => Err(op),
        };
        if let Err(op) = sent {
            op.reply.send(Reply::Error(ErrorReply::new(
                ErrorCode::NotFound,
                format!("topic {:?} was deleted", self.name),
            )));
        }
    }

    pub fn reader(&self) -> Result<(LogReader, watch::Receiver<Offset>), ErrorReply> {
        let o = self.open()?;
        Ok((o.reader.clone(), o.committed.clone()))
    }

    pub fn start_and_next_offsets(&self) -> (Offset, Offset) {
        match &self.state {
            TopicState::Open(o) => {
                let s = lock(&o.shared);
                (s.start_offset, s.next_offset)
            }
            TopicState::Failed(_) => (Offset::ZERO, Offset::ZERO),
        }
    }

    pub fn status(&self) -> TopicStatus {
        match &self.state {
            TopicState::Open(o) => {
                let s = lock(&o.shared);
                TopicStatus {
                    name: self.name.clone(),
                    start_offset: s.start_offset,
                    next_offset: s.next_offset,
                    committed_offset: *o.committed.borrow(),
                    durable_offset: s.synced_offset,
                    segments: s.stats.segments,
                    bytes: s.stats.bytes,
                    fsyncs: s.stats.fsyncs,
                    appends: s.stats.appends,
                    failure: s.failure.clone(),
                }
            }
            TopicState::Failed(reason) => TopicStatus {
                name: self.name.clone(),
                start_offset: Offset::ZERO,
                next_offset: Offset::ZERO,
                committed_offset: Offset::ZERO,
                durable_offset: Offset::ZERO,
                segments: 0,
                bytes: 0,
                fsyncs: 0,
                appends: 0,
                failure: Some(reason.clone()),
            },
        }
    }

    /// Stops the writer after it has committed everything queued, and waits for it. Listeners
    /// see the committed watch close.
    pub fn close(&self) {
        let TopicState::Open(o) = &self.state else {
            return;
        };
        drop(lock(&o.ops).take());
        if let Some(t) = lock(&o.thread).take()
            && t.join().is_err()
        {
            tracing::error!(topic = %self.name, "topic writer thread panicked");
        }
    }
}

impl Drop for Topic {
    fn drop(&mut self) {
        self.close();
    }
}

fn unavailable(topic: &str, reason: &str) -> ErrorReply {
    ErrorReply::new(
        ErrorCode::Unavailable,
        format!("topic {topic:?} cannot serve: {reason}"),
    )
}

/// Locks a mutex, ignoring poisoning: the data behind these mutexes stays consistent even if a
/// holder panicked (each critical section is a plain field update).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The newest timestamp in the log, so timestamps never go backwards across restarts.
fn last_timestamp(reader: &LogReader, committed: Offset) -> TimestampMs {
    if committed == Offset::ZERO || committed <= reader.start_offset() {
        return TimestampMs::ZERO;
    }
    match reader.read(Offset(committed.0 - 1), usize::MAX, 1) {
        Ok(records) => records
            .last()
            .map(|r| r.timestamp_ms)
            .unwrap_or(TimestampMs::ZERO),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the last record's timestamp");
            TimestampMs::ZERO
        }
    }
}

struct Writer {
    name: String,
    log: Log,
    ops: std_mpsc::Receiver<AppendOp>,
    committed: watch::Sender<Offset>,
    shared: Arc<Mutex<Shared>>,
    last_timestamp_ms: TimestampMs,
    retention_check_interval: Duration,
    /// Under `interval:<ms>`, records were committed (acknowledged) but maybe not yet fsynced.
    unsynced: bool,
}

impl Writer {
    fn run(mut self) {
        let span = tracing::info_span!("topic", topic = %self.name);
        let _enter = span.enter();
        let mut batch: Vec<AppendOp> = Vec::new();
        let mut last_retention = std::time::Instant::now();
        // Under `interval:<ms>` the log only syncs when a commit finds the interval elapsed, so
        // the writer also wakes up every interval to sync what an idle period left behind.
        let tick = match self.log.config().fsync {
            FsyncPolicy::Interval { interval_ms } => self
                .retention_check_interval
                .min(Duration::from_millis(interval_ms.max(1))),
            FsyncPolicy::Always | FsyncPolicy::Never => self.retention_check_interval,
        };
        loop {
            match self.ops.recv_timeout(tick) {
                Ok(op) => batch.push(op),
                Err(std_mpsc::RecvTimeoutError::Timeout) => {}
                Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
            }
            // Group commit: everything that arrived while the last fsync ran goes in this one.
            let mut bytes = batch.first().map_or(0, |op| op.entry.len());
            while batch.len() < GROUP_COMMIT_COUNT_MAX && bytes < GROUP_COMMIT_BYTES_MAX {
                match self.ops.try_recv() {
                    Ok(op) => {
                        bytes += op.entry.len();
                        batch.push(op);
                    }
                    Err(_) => break,
                }
            }
            if !batch.is_empty() {
                self.commit_batch(&mut batch);
            } else if self.unsynced {
                self.sync_idle();
            }
            if last_retention.elapsed() >= self.retention_check_interval {
                last_retention = std::time::Instant::now();
                self.apply_retention();
            }
        }
        if lock(&self.shared).failure.is_none()
            && let Err(e) = self.log.sync()
        {
            tracing::error!(error = %e, "final sync failed");
        }
        tracing::debug!("topic writer stopped");
    }

    fn commit_batch(&mut self, batch: &mut Vec<AppendOp>) {
        if let Some(reason) = lock(&self.shared).failure.clone() {
            for op in batch.drain(..) {
                op.reply
                    .send(Reply::Error(unavailable(&self.name, &reason)));
            }
            return;
        }
        // The node sequences: one timestamp per batch, never going backwards.
        let timestamp_ms = TimestampMs(clock::now_ms().max(self.last_timestamp_ms.0));
        self.last_timestamp_ms = timestamp_ms;
        let mut offsets = Vec::with_capacity(batch.len());
        let mut result = Ok(());
        for op in batch.iter() {
            match self.log.append(timestamp_ms, &op.entry) {
                Ok(offset) => offsets.push(offset),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        let result = result.and_then(|()| self.log.commit());
        match result {
            Ok(committed) => {
                debug_assert_eq!(offsets.len(), batch.len());
                debug_assert!(offsets.last().is_none_or(|o| o.next() == committed));
                self.unsynced = matches!(self.log.config().fsync, FsyncPolicy::Interval { .. });
                self.publish(committed);
                for (op, offset) in batch.drain(..).zip(offsets) {
                    op.reply.send(Reply::Committed(Committed {
                        offset,
                        timestamp_ms,
                    }));
                }
            }
            Err(e) => {
                // A failed write or fsync poisons the log: the state on disk is unknown, so
                // nothing more is acknowledged (see docs/STORAGE.md).
                let reason = e.to_string();
                tracing::error!(error = %reason, "topic log failed; no more writes are acknowledged");
                lock(&self.shared).failure = Some(reason.clone());
                for op in batch.drain(..) {
                    op.reply
                        .send(Reply::Error(unavailable(&self.name, &reason)));
                }
                self.refresh_shared();
            }
        }
    }

    /// Interval policy, nothing arrived for a whole interval: fsync what is acknowledged.
    fn sync_idle(&mut self) {
        if lock(&self.shared).failure.is_some() {
            return;
        }
        match self.log.sync() {
            Ok(()) => {
                self.unsynced = false;
                self.refresh_shared();
            }
            Err(e) => {
                let reason = e.to_string();
                tracing::error!(error = %reason, "interval sync failed; no more writes are acknowledged");
                lock(&self.shared).failure = Some(reason);
            }
        }
    }

    /// The one path by which entries become visible (see the module doc).
    fn publish(&mut self, committed: Offset) {
        self.refresh_shared();
        self.committed.send_replace(committed);
    }

    fn refresh_shared(&mut self) {
        let mut s = lock(&self.shared);
        s.stats = self.log.stats();
        s.start_offset = self.log.start_offset();
        s.next_offset = self.log.next_offset();
        s.synced_offset = self.log.synced_offset();
    }

    fn apply_retention(&mut self) {
        if lock(&self.shared).failure.is_some() {
            return;
        }
        match self.log.apply_retention(TimestampMs(clock::now_ms())) {
            Ok(report) => {
                tracing::debug!(?report, "retention checked");
                self.refresh_shared();
            }
            Err(e) => tracing::warn!(error = %e, "retention failed"),
        }
    }
}
