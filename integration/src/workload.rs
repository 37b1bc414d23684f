//! Producers, an acknowledgement counter and read-back helpers shared by the fault tests.
//!
//! A producer writes values `p<no>-<seq>` pipelined and records what it sent and what was
//! acknowledged in a [`History`]; the fault tests kill and partition nodes meanwhile, then read
//! every replica back and check the logs against the merged history.

use crate::cluster::{LocalCluster, SETTLE_TIMEOUT};
use crate::history::History;
use anyhow::{Context, Result, bail};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use weir_client::{Client, ClientError, Committed, Event, ListenFrom, Offset};

/// PUTs one producer keeps in flight.
pub const WINDOW: usize = 64;

/// Counts acknowledged PUTs across producers and wakes whoever waits for a count; keeps when
/// each acknowledged PUT was sent and acknowledged, for failover times.
#[derive(Debug, Default)]
pub struct Acks {
    count: AtomicU64,
    changed: Notify,
    /// (sent, acknowledged) per acknowledged PUT.
    times: Mutex<Vec<(Instant, Instant)>>,
}

impl Acks {
    pub fn get(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn record(&self, sent_at: Instant) {
        let now = Instant::now();
        self.times
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((sent_at, now));
        self.count.fetch_add(1, Ordering::Relaxed);
        self.changed.notify_waiters();
    }

    /// When the first PUT sent after `t` was acknowledged. From a leader kill, that is the
    /// failover time a producer sees: replies already on their way when the leader died, or
    /// retries of older PUTs, do not count.
    pub fn first_ack_of_a_put_sent_after(&self, t: Instant) -> Option<Instant> {
        self.times
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(sent, _)| *sent > t)
            .map(|(_, acked)| *acked)
            .min()
    }

    /// Waits (bounded by [`SETTLE_TIMEOUT`]) until at least `target` PUTs are acknowledged.
    pub async fn wait_for(&self, target: u64) -> Result<()> {
        tokio::time::timeout(SETTLE_TIMEOUT, async {
            loop {
                let notified = self.changed.notified();
                tokio::pin!(notified);
                // Registered before the check, so an ack in between is not missed.
                notified.as_mut().enable();
                if self.get() >= target {
                    return;
                }
                notified.await;
            }
        })
        .await
        .with_context(|| format!("fewer than {target} PUTs acknowledged in time"))
    }
}

/// How much one producer sends.
#[derive(Debug, Clone)]
pub struct Plan {
    /// PUTs to send at most.
    pub count: u64,
    /// Sending stops early once this is set.
    pub stop: Arc<AtomicBool>,
    /// At most one PUT per this interval (a steady load), or as fast as acks come (`None`).
    pub pace: Option<Duration>,
}

impl Plan {
    /// `count` PUTs, one per `pace`, not stopped early.
    pub fn steady(count: u64, pace: Duration) -> Self {
        Self {
            count,
            stop: Arc::new(AtomicBool::new(false)),
            pace: Some(pace),
        }
    }
}

/// What a producer did: its history and how many PUTs ended with an unknown outcome.
#[derive(Debug)]
pub struct Produced {
    pub history: History,
    pub unknown: u64,
}

/// Sends PUTs pipelined ([`WINDOW`] in flight) to `topic` following `plan`, recording sends and
/// acks. A PUT whose outcome is unknown (connection lost, leader gone) is recorded as sent
/// only, and the producer goes on with the next message.
pub async fn produce(
    client: Client,
    topic: &str,
    producer_no: u32,
    plan: Plan,
    acks: Arc<Acks>,
) -> Result<Produced> {
    let mut history = History::default();
    let mut producer = client.producer(topic, WINDOW)?;
    let mut in_flight = VecDeque::new();
    let mut unknown = 0u64;
    let mut settle = |(value, sent_at): (Vec<u8>, Instant),
                      r: Result<Committed, ClientError>,
                      history: &mut History| match r {
        Ok(c) => {
            history.acked(value, c.offset);
            acks.record(sent_at);
        }
        Err(e) => {
            unknown += 1;
            tracing::info!(error = %e, "PUT outcome unknown");
        }
    };
    let mut ticker = plan.pace.map(|pace| {
        let mut t = tokio::time::interval(pace);
        // After a stall (a failover) the producer catches up, as queued application writes do.
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        t
    });
    for seq in 0..plan.count {
        if plan.stop.load(Ordering::Relaxed) {
            break;
        }
        if let Some(t) = ticker.as_mut() {
            t.tick().await;
        }
        let value = format!("p{producer_no}-{seq}").into_bytes();
        history.sent(producer_no, seq, value.clone());
        let sent_at = Instant::now();
        match producer.send(None, value.clone()).await {
            Ok(handle) => in_flight.push_back(((value, sent_at), handle)),
            Err(e) => settle((value, sent_at), Err(e), &mut history),
        }
        while in_flight.len() >= WINDOW {
            let Some((put, handle)) = in_flight.pop_front() else {
                break;
            };
            let r = handle.await;
            settle(put, r, &mut history);
        }
    }
    for (put, handle) in in_flight {
        let r = handle.await;
        settle(put, r, &mut history);
    }
    client.close().await;
    Ok(Produced { history, unknown })
}

/// Spawns [`produce`] on each of `clients` (producer numbers 0, 1, ... in that order), each
/// following a copy of `plan` (a shared `stop` stops them all): what [`join_producers`] joins.
pub fn spawn_producers(
    clients: Vec<Client>,
    topic: &str,
    plan: &Plan,
    acks: &Arc<Acks>,
) -> Vec<tokio::task::JoinHandle<Result<Produced>>> {
    clients
        .into_iter()
        .zip(0u32..)
        .map(|(client, p)| {
            let (topic, plan, acks) = (topic.to_owned(), plan.clone(), acks.clone());
            tokio::spawn(async move { produce(client, &topic, p, plan, acks).await })
        })
        .collect()
}

/// Merges the producers' histories once they are done; also returns the unknown outcomes.
pub async fn join_producers(
    producers: Vec<tokio::task::JoinHandle<Result<Produced>>>,
) -> Result<(History, u64)> {
    let mut history = History::default();
    let mut unknown = 0;
    for p in producers {
        let produced = p.await.context("producer task")??;
        history.merge(produced.history);
        unknown += produced.unknown;
    }
    Ok((history, unknown))
}

/// Reads `topic` from node `id` from the start until an entry at or beyond `until` arrives:
/// (offset, value) in the order read.
pub async fn read_back(
    cluster: &LocalCluster,
    id: u64,
    topic: &str,
    until: Offset,
) -> Result<Vec<(Offset, Vec<u8>)>> {
    let events = read_events(cluster, id, topic, until).await?;
    Ok(events.into_iter().map(|e| (e.offset, e.value)).collect())
}

/// Reads `topic` from node `id` from the start until an entry at or beyond `until` arrives:
/// every event, in the order read.
pub async fn read_events(
    cluster: &LocalCluster,
    id: u64,
    topic: &str,
    until: Offset,
) -> Result<Vec<Event>> {
    let client = cluster.client_of(id).await?;
    let mut listener = client.listen(topic, ListenFrom::Start).await?;
    let mut log: Vec<Event> = Vec::new();
    tokio::time::timeout(SETTLE_TIMEOUT, async {
        while log.last().is_none_or(|e| e.offset < until) {
            let event = listener.next().await.context("listener ended")??;
            log.push(event);
        }
        anyhow::Ok(())
    })
    .await
    .with_context(|| format!("node {id} did not deliver up to offset {until} in time"))??;
    drop(listener);
    client.close().await;
    Ok(log)
}

/// Producer number of the closing PUT written by [`close_history`].
pub const LAST_PRODUCER: u32 = u32::MAX;

/// Attempts at the closing PUT: one fails with an unknown outcome only if it meets a leader
/// change, and the producers are done, so nothing moves leadership any more.
const CLOSE_ATTEMPTS_MAX: u64 = 5;

/// Once the producers are done, writes one last message with a fresh client and records it in
/// `history`; returns its offset. Read up to it, every replica's log is complete: nothing is
/// written after it, and listeners skip offsets without a message (Raft no-ops), so reading
/// "to the committed offset" could wait for an offset that never shows. An attempt whose
/// outcome is unknown (it met a leader change) is recorded as sent, and another message is
/// tried.
pub async fn close_history(
    cluster: &LocalCluster,
    topic: &str,
    history: &mut History,
) -> Result<Offset> {
    let client = cluster.client().await?;
    let mut last_error = None;
    for attempt in 0..CLOSE_ATTEMPTS_MAX {
        let value = format!("last-{attempt}").into_bytes();
        history.sent(LAST_PRODUCER, attempt, value.clone());
        match client.put(topic, None, value.clone()).await {
            Ok(committed) => {
                history.acked(value, committed.offset);
                client.close().await;
                return Ok(committed.offset);
            }
            Err(e) => {
                tracing::info!(error = %e, attempt, "closing PUT: outcome unknown, trying again");
                last_error = Some(e);
            }
        }
    }
    client.close().await;
    Err(last_error.map_or_else(|| anyhow::anyhow!("no attempt"), anyhow::Error::from))
        .with_context(|| format!("the closing PUT failed {CLOSE_ATTEMPTS_MAX} times"))
}

/// Every replica's whole log, read up to `until` (from [`close_history`]): they must be equal,
/// entry for entry. Returns the log.
pub async fn identical_replicas(
    cluster: &LocalCluster,
    topic: &str,
    until: Offset,
) -> Result<Vec<(Offset, Vec<u8>)>> {
    let first = read_back(cluster, 1, topic, until).await?;
    for id in 2..=cluster.addrs.len() as u64 {
        let log = read_back(cluster, id, topic, until).await?;
        if log != first {
            let at = log.iter().zip(&first).position(|(a, b)| a != b);
            bail!(
                "replica {id} differs from replica 1 ({} vs {} entries, first difference at entry {at:?})",
                log.len(),
                first.len()
            );
        }
    }
    Ok(first)
}

/// What a [`Follower`] saw: (offset, value) per message, in order.
type Seen = Vec<(Offset, Vec<u8>)>;

/// A listener following a topic from the start on its own task, through failovers and
/// reconnects, until it is told where the log ends ([`Follower::check`]).
#[derive(Debug)]
pub struct Follower {
    end_tx: tokio::sync::watch::Sender<Option<Offset>>,
    task: tokio::task::JoinHandle<Result<Seen>>,
}

/// Starts a [`Follower`] of `topic` on `client` (closed when it is done).
pub async fn follow(client: Client, topic: &str) -> Result<Follower> {
    let (end_tx, mut end_rx) = tokio::sync::watch::channel(None::<Offset>);
    let mut listener = client.listen(topic, ListenFrom::Start).await?;
    let task = tokio::spawn(async move {
        let mut seen: Seen = Vec::new();
        loop {
            let end = *end_rx.borrow_and_update();
            if let (Some(end), Some((last, _))) = (end, seen.last())
                && *last >= end
            {
                drop(listener);
                client.close().await;
                return anyhow::Ok(seen);
            }
            tokio::select! {
                event = listener.next() => {
                    let event = event.context("the listener ended")??;
                    seen.push((event.offset, event.value));
                }
                changed = end_rx.changed() => changed?,
            }
        }
    });
    Ok(Follower { end_tx, task })
}

impl Follower {
    /// Tells the follower the log ends at `until` and checks what it saw against the
    /// replicas' `log`: every committed message once, in offset order (no gap across its
    /// reconnects, no repeat).
    pub async fn check(self, until: Offset, log: &[(Offset, Vec<u8>)]) -> Result<()> {
        self.end_tx.send_replace(Some(until));
        let followed = tokio::time::timeout(SETTLE_TIMEOUT, self.task)
            .await
            .context("the listener did not reach the end of the log")???;
        if followed.len() != log.len() {
            bail!(
                "the listener saw {} messages, the replicas hold {}",
                followed.len(),
                log.len()
            );
        }
        if followed != log {
            let at = followed.iter().zip(log).position(|(a, b)| a != b);
            bail!("the listener's view differs from the log at entry {at:?}");
        }
        Ok(())
    }
}
