//! A UDP fault-injection proxy for chaos tests against real `weir node` processes.
//!
//! Nodes talk QUIC over UDP, so a link between two nodes can be degraded by putting a
//! [`UdpProxy`] on the path: the proxy listens on its own loopback port and forwards every
//! datagram to an upstream address (a node's real `--listen` address), and the replies back.
//! Faults set through [`Faults`] apply to each datagram, in both directions, while the cluster
//! runs: random loss, duplication, delay (with optional jitter), a full partition, a one-way
//! block, or a block of one client (source address).
//!
//! # Cutting a node off in a 3-node cluster
//!
//! Start one proxy in front of each node, upstream = the node's real `--listen` address, and
//! give every node the *same* `--peers` list naming the *proxies*: `1=<proxy 1>,2=<proxy 2>,
//! 3=<proxy 3>`. (The same list everywhere: the cluster catalog is founded from it and peer
//! addresses follow the catalog. A node ignores its own entry.)
//!
//! `weir-node` keeps one QUIC connection per node pair, dialed by the lower id, so the links
//! run: 1→2 through proxy 2, 1→3 and 2→3 both through proxy 3. A QUIC endpoint dials from its
//! listening socket, so the source address a proxy sees for a node's connection is that node's
//! real `--listen` address. Cutting node 2 off therefore takes two faults:
//!
//! - `proxies[1].faults().partition(true)`: everything dialed *to* node 2 (from node 1);
//! - `block_client(<node 2's listen address>, true)` on the other proxies: what node 2 dials
//!   itself (to node 3, through proxy 3), while node 1's connection to node 3 carries on.
//!
//! Each is healed by [`Faults::reset`] (or the same call with `false`). Clients that should
//! keep talking to node 2 use its real address and are unaffected.
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use std::net::SocketAddr;
//! use weir_integration::proxy::UdpProxy;
//!
//! // The nodes' real listen addresses, e.g. reserved free ports.
//! let node_addrs: Vec<SocketAddr> = vec![
//!     "127.0.0.1:7001".parse()?,
//!     "127.0.0.1:7002".parse()?,
//!     "127.0.0.1:7003".parse()?,
//! ];
//! let mut proxies = Vec::new();
//! for addr in &node_addrs {
//!     proxies.push(UdpProxy::start("127.0.0.1:0".parse()?, *addr).await?);
//! }
//! let peers = proxies
//!     .iter()
//!     .enumerate()
//!     .map(|(i, p)| format!("{}={}", i + 1, p.local_addr()))
//!     .collect::<Vec<_>>()
//!     .join(",");
//! # let _ = peers;
//! // ... start node i with `--id i --listen <node_addrs[i - 1]> --peers <peers>` ...
//!
//! // Cut node 2 off from its peers.
//! proxies[1].faults().partition(true);
//! for other in [&proxies[0], &proxies[2]] {
//!     other.faults().block_client(node_addrs[1], true);
//! }
//! // ... assert nodes 1 and 3 still make progress ...
//! for proxy in &proxies {
//!     proxy.faults().reset(); // heal
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Each distinct client source address gets its own upstream-facing socket (at most
//! [`ProxyConfig::max_clients`], idle ones evicted), so the upstream sees one address per client
//! and its replies go back to the right client.

use std::cmp::Ordering as CmpOrdering;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::{AbortHandle, JoinHandle, JoinSet};
use tokio::time::Instant;

/// Default bound on the number of client mappings (distinct client source addresses) a proxy
/// keeps; past it the least recently active mapping is evicted.
pub const CLIENT_MAPPINGS_MAX: usize = 1024;
/// Default idle time after which a client mapping (and its upstream-facing socket) is evicted.
pub const CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Most datagrams held in the delay queue at once; further delayed datagrams are dropped (and
/// counted as dropped), so a huge delay cannot grow memory without bound.
pub const DELAY_QUEUE_MAX: usize = 65_536;
/// Receive buffer size: the largest possible UDP payload.
const DATAGRAM_MAX: usize = 65_535;

/// Construction-time settings of a [`UdpProxy`].
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Seed of the random choices (drop, duplicate, jitter). Each direction draws from its own
    /// generator derived from this seed, and only for datagrams not blocked and when a
    /// probability is strictly between 0 and 1 (or jitter is non-zero), so the same seed, faults
    /// and datagram sequence in one direction give the same decisions.
    pub seed: u64,
    /// Bound on the number of client mappings; at least 1.
    pub max_clients: usize,
    /// A client mapping idle (no datagram either way) for longer than this is evicted.
    pub idle_timeout: Duration,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            max_clients: CLIENT_MAPPINGS_MAX,
            idle_timeout: CLIENT_IDLE_TIMEOUT,
        }
    }
}

/// Counters of one direction of a proxy.
///
/// Every datagram the proxy reads is `received`, then exactly one of `forwarded` or `dropped`
/// (a datagram dropped by a partition or block counts as dropped too), so
/// `received == forwarded + dropped`. A forwarded datagram that was sent twice also counts in
/// `duplicated`; one that went through the delay queue also counts in `delayed`. Forwarded means
/// accepted for sending: a delayed datagram still queued when the proxy stops is never sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirectionStats {
    pub received: u64,
    pub forwarded: u64,
    pub dropped: u64,
    pub duplicated: u64,
    pub delayed: u64,
}

/// A snapshot of a proxy's counters, see [`UdpProxy::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Datagrams from clients (peers) towards the upstream.
    pub client_to_upstream: DirectionStats,
    /// Datagrams from the upstream back to clients.
    pub upstream_to_client: DirectionStats,
    /// Client mappings currently open.
    pub clients: usize,
    /// Client mappings evicted so far (idle, or to make room past the bound).
    pub evicted: u64,
    /// Datagrams currently held in the delay queue (both directions).
    pub delay_queued: usize,
}

impl ProxyStats {
    fn direction_mut(&mut self, dir: Direction) -> &mut DirectionStats {
        match dir {
            Direction::ClientToUpstream => &mut self.client_to_upstream,
            Direction::UpstreamToClient => &mut self.upstream_to_client,
        }
    }
}

/// The faults currently in force, see [`Faults::settings`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FaultSettings {
    pub drop_probability: f64,
    pub duplicate_probability: f64,
    pub delay: Duration,
    pub jitter: Duration,
    pub block_client_to_upstream: bool,
    pub block_upstream_to_client: bool,
    /// Client source addresses cut off in both directions, see [`Faults::block_client`].
    pub blocked_clients: BTreeSet<SocketAddr>,
    /// If set, only these source addresses pass (both directions), see
    /// [`Faults::only_clients`].
    pub only_clients: Option<BTreeSet<SocketAddr>>,
}

/// Run-time control of a proxy's faults; cheap to clone, every clone controls the same proxy.
///
/// Changes take effect for the next datagram read (datagrams already in the delay queue keep
/// their due time). All faults apply to both directions, except the one-way blocks.
#[derive(Debug, Clone)]
pub struct Faults {
    state: Arc<Mutex<FaultState>>,
}

impl Faults {
    fn lock(&self) -> MutexGuard<'_, FaultState> {
        // The state is plain data, valid even if a holder panicked.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drops each datagram with probability `p` (0.0 = none, 1.0 = all).
    ///
    /// # Panics
    /// If `p` is not within `0.0..=1.0`.
    pub fn set_drop_probability(&self, p: f64) {
        check_probability(p);
        self.lock().settings.drop_probability = p;
    }

    /// Sends each forwarded datagram twice with probability `p`.
    ///
    /// # Panics
    /// If `p` is not within `0.0..=1.0`.
    pub fn set_duplicate_probability(&self, p: f64) {
        check_probability(p);
        self.lock().settings.duplicate_probability = p;
    }

    /// Holds each forwarded datagram back for `delay` (plus jitter) without holding up the
    /// others. With no jitter, datagrams of one direction keep their order.
    pub fn set_delay(&self, delay: Duration) {
        self.lock().settings.delay = delay;
    }

    /// Adds a uniformly random extra delay in `0..=jitter` to each forwarded datagram, which can
    /// reorder them. Applies even when [`set_delay`](Self::set_delay) is zero.
    pub fn set_jitter(&self, jitter: Duration) {
        self.lock().settings.jitter = jitter;
    }

    /// `true` cuts the link: every datagram, both ways, is dropped. `false` lifts both
    /// one-way blocks.
    pub fn partition(&self, cut: bool) {
        let mut state = self.lock();
        state.settings.block_client_to_upstream = cut;
        state.settings.block_upstream_to_client = cut;
    }

    /// Drops every datagram from clients towards the upstream (the upstream still talks).
    pub fn block_client_to_upstream(&self, block: bool) {
        self.lock().settings.block_client_to_upstream = block;
    }

    /// Drops every datagram from the upstream towards clients (clients still talk).
    pub fn block_upstream_to_client(&self, block: bool) {
        self.lock().settings.block_upstream_to_client = block;
    }

    /// Drops every datagram from `client` (a source address, e.g. a node's `--listen` address)
    /// and every reply to it, while other clients pass: cuts one peer off from the upstream.
    pub fn block_client(&self, client: SocketAddr, block: bool) {
        let mut state = self.lock();
        if block {
            state.settings.blocked_clients.insert(client);
        } else {
            state.settings.blocked_clients.remove(&client);
        }
    }

    /// `Some(sources)` cuts off every client but `sources` (e.g. the nodes' `--listen`
    /// addresses, so peers keep talking while client applications are cut off); `None` lifts it.
    pub fn only_clients(&self, sources: Option<&[SocketAddr]>) {
        self.lock().settings.only_clients = sources.map(|s| s.iter().copied().collect());
    }

    /// Heals every fault: no loss, duplication, delay, jitter or block. The random generators
    /// continue their sequences.
    pub fn reset(&self) {
        self.lock().settings = FaultSettings::default();
    }

    /// The faults currently in force.
    pub fn settings(&self) -> FaultSettings {
        self.lock().settings.clone()
    }
}

fn check_probability(p: f64) {
    assert!(
        (0.0..=1.0).contains(&p),
        "probability must be within 0.0..=1.0, got {p}"
    );
}

/// A UDP proxy with fault injection, for chaos tests; see the [module docs](crate::proxy).
///
/// Stopped (its tasks end and its sockets close) by [`stop`](Self::stop) or, asynchronously,
/// when dropped.
#[derive(Debug)]
pub struct UdpProxy {
    local_addr: SocketAddr,
    upstream: SocketAddr,
    faults: Faults,
    shared: Arc<Shared>,
    /// Dropping it tells the main task to shut down.
    shutdown: Option<watch::Sender<()>>,
    main: Option<JoinHandle<()>>,
}

impl UdpProxy {
    /// Binds `listen` (usually `127.0.0.1:0`) and forwards to `upstream`, with the default
    /// [`ProxyConfig`] (seed 0). Must be called within a tokio runtime.
    pub async fn start(listen: SocketAddr, upstream: SocketAddr) -> io::Result<Self> {
        Self::start_with(listen, upstream, ProxyConfig::default()).await
    }

    /// [`start`](Self::start) with explicit settings (seed, mapping bound, idle timeout).
    pub async fn start_with(
        listen: SocketAddr,
        upstream: SocketAddr,
        config: ProxyConfig,
    ) -> io::Result<Self> {
        if config.max_clients == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "max_clients must be at least 1",
            ));
        }
        let socket = Arc::new(UdpSocket::bind(listen).await?);
        let local_addr = socket.local_addr()?;
        let mut seeds = SplitMix64::new(config.seed);
        let faults = Faults {
            state: Arc::new(Mutex::new(FaultState {
                settings: FaultSettings::default(),
                rng: [
                    SplitMix64::new(seeds.next_u64()),
                    SplitMix64::new(seeds.next_u64()),
                ],
            })),
        };
        let (delay_tx, delay_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            faults: faults.clone(),
            stats: Mutex::new(ProxyStats::default()),
            changed: Notify::new(),
            epoch: Instant::now(),
            delay_tx,
        });
        let (shutdown_tx, shutdown_rx) = watch::channel(());
        let main = tokio::spawn(run_main(MainTask {
            socket,
            upstream,
            config,
            shared: shared.clone(),
            shutdown: shutdown_rx,
            delay_rx,
        }));
        tracing::debug!(%local_addr, %upstream, "udp proxy started");
        Ok(Self {
            local_addr,
            upstream,
            faults,
            shared,
            shutdown: Some(shutdown_tx),
            main: Some(main),
        })
    }

    /// The address clients (peers) send to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address datagrams are forwarded to.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// The handle that changes this proxy's faults at run time.
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> ProxyStats {
        self.shared.snapshot()
    }

    /// Waits until `pred` holds for the counters and returns the snapshot it held for; checked
    /// now and again after every counter change. Waits forever if it never holds: wrap it in a
    /// timeout.
    pub async fn wait_stats(&self, mut pred: impl FnMut(&ProxyStats) -> bool) -> ProxyStats {
        loop {
            let notified = self.shared.changed.notified();
            tokio::pin!(notified);
            // Register before checking, so a change between the check and the await is not lost.
            notified.as_mut().enable();
            let stats = self.stats();
            if pred(&stats) {
                return stats;
            }
            notified.await;
        }
    }

    /// Stops the proxy and waits until its tasks have ended and its sockets are closed.
    /// Datagrams still in the delay queue are discarded.
    pub async fn stop(mut self) {
        self.shutdown.take();
        if let Some(main) = self.main.take()
            && let Err(e) = main.await
            && e.is_panic()
        {
            tracing::error!(local_addr = %self.local_addr, "udp proxy task panicked: {e}");
        }
    }
}

impl Drop for UdpProxy {
    fn drop(&mut self) {
        // Dropping the sender ends the main task, which aborts the others.
        self.shutdown.take();
    }
}

/// Index into per-direction arrays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    ClientToUpstream = 0,
    UpstreamToClient = 1,
}

#[derive(Debug)]
struct FaultState {
    settings: FaultSettings,
    /// One generator per direction, indexed by `Direction`.
    rng: [SplitMix64; 2],
}

/// What happens to one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    Drop,
    Forward { copies: u8, delay: Duration },
}

impl FaultState {
    /// The fate of a datagram in `dir` from or to `client`.
    fn decide(&mut self, dir: Direction, client: SocketAddr) -> Decision {
        let s = &self.settings;
        let blocked = match dir {
            Direction::ClientToUpstream => s.block_client_to_upstream,
            Direction::UpstreamToClient => s.block_upstream_to_client,
        } || s.blocked_clients.contains(&client)
            || s.only_clients
                .as_ref()
                .is_some_and(|only| !only.contains(&client));
        let rng = &mut self.rng[dir as usize];
        if blocked || rng.chance(s.drop_probability) {
            return Decision::Drop;
        }
        let copies = if rng.chance(s.duplicate_probability) {
            2
        } else {
            1
        };
        let mut delay = s.delay;
        if !s.jitter.is_zero() {
            let jitter_nanos = u64::try_from(s.jitter.as_nanos()).unwrap_or(u64::MAX);
            delay = delay.saturating_add(Duration::from_nanos(rng.below_inclusive(jitter_nanos)));
        }
        Decision::Forward { copies, delay }
    }
}

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, seedable, good enough for fault decisions.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// True with probability `p`; draws only when `0 < p < 1`.
    fn chance(&mut self, p: f64) -> bool {
        if p <= 0.0 {
            false
        } else if p >= 1.0 {
            true
        } else {
            self.next_f64() < p
        }
    }

    /// Uniform in `0..=max` (modulo bias is irrelevant here).
    fn below_inclusive(&mut self, max: u64) -> u64 {
        match max.checked_add(1) {
            Some(n) => self.next_u64() % n,
            None => self.next_u64(),
        }
    }
}

/// State shared by the proxy handle and its tasks.
#[derive(Debug)]
struct Shared {
    faults: Faults,
    /// One lock for all counters, so a snapshot is consistent.
    stats: Mutex<ProxyStats>,
    /// Notified (all waiters) after every counter change.
    changed: Notify,
    /// Origin of the `last_active` timestamps.
    epoch: Instant,
    delay_tx: mpsc::UnboundedSender<Delayed>,
}

impl Shared {
    fn snapshot(&self) -> ProxyStats {
        *self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes the counters under one lock and wakes [`UdpProxy::wait_stats`] callers.
    fn update<T>(&self, f: impl FnOnce(&mut ProxyStats) -> T) -> T {
        let result = f(&mut self.stats.lock().unwrap_or_else(|e| e.into_inner()));
        self.changed.notify_waiters();
        result
    }

    /// Activity timestamp for the mappings' LRU and idle eviction.
    fn now_micros(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// Applies the faults to one datagram read in `dir` (from or to `client`) and sends it (now
    /// or later) to `target`.
    async fn handle(&self, dir: Direction, client: SocketAddr, target: Target, data: &[u8]) {
        let decision = self.faults.lock().decide(dir, client);
        let (copies, delay) = match decision {
            Decision::Drop => (0, Duration::ZERO),
            Decision::Forward { copies, delay } => (copies, delay),
        };
        // Counted before sending, so whoever sees the datagram arrive sees it counted.
        let forward = self.update(|stats| {
            let queue_full =
                !delay.is_zero() && stats.delay_queued + usize::from(copies) > DELAY_QUEUE_MAX;
            let d = stats.direction_mut(dir);
            d.received += 1;
            if copies == 0 || queue_full {
                d.dropped += 1;
                return false;
            }
            d.forwarded += 1;
            d.duplicated += u64::from(copies > 1);
            if !delay.is_zero() {
                d.delayed += 1;
                stats.delay_queued += usize::from(copies);
            }
            true
        });
        if !forward {
            if copies > 0 {
                tracing::warn!(?dir, "udp proxy delay queue full, dropping a datagram");
            }
            return;
        }
        if delay.is_zero() {
            for _ in 0..copies {
                target.send(data).await;
            }
            return;
        }
        let due = Instant::now() + delay;
        for _ in 0..copies {
            let item = Delayed {
                due,
                seq: 0,
                target: target.clone(),
                data: data.to_vec(),
            };
            if self.delay_tx.send(item).is_err() {
                // Shutting down.
                self.update(|stats| stats.delay_queued -= 1);
            }
        }
    }
}

/// Where a datagram goes: the upstream (through a client's mapping socket, connected to the
/// upstream) or a client (through the listening socket).
#[derive(Debug, Clone)]
enum Target {
    Upstream(Arc<UdpSocket>),
    Client {
        socket: Arc<UdpSocket>,
        addr: SocketAddr,
    },
}

impl Target {
    async fn send(&self, data: &[u8]) {
        let result = match self {
            Target::Upstream(socket) => socket.send(data).await,
            Target::Client { socket, addr } => socket.send_to(data, addr).await,
        };
        if let Err(e) = result {
            // UDP: a lost datagram is what the other side has to cope with anyway.
            tracing::debug!(target = ?self, "udp proxy send failed: {e}");
        }
    }
}

/// A datagram waiting in the delay queue; ordered by due time, then arrival.
#[derive(Debug)]
struct Delayed {
    due: Instant,
    seq: u64,
    target: Target,
    data: Vec<u8>,
}

impl PartialEq for Delayed {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == CmpOrdering::Equal
    }
}

impl Eq for Delayed {}

impl PartialOrd for Delayed {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}

impl Ord for Delayed {
    /// Reversed, so that `BinaryHeap` (a max-heap) pops the earliest first.
    fn cmp(&self, other: &Self) -> CmpOrdering {
        (other.due, other.seq).cmp(&(self.due, self.seq))
    }
}

/// Sends delayed datagrams when they are due, without holding up the forwarding tasks.
async fn run_delay_queue(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Delayed>) {
    let mut heap = BinaryHeap::new();
    let mut seq = 0u64;
    loop {
        let next_due = heap.peek().map(|d: &Delayed| d.due);
        tokio::select! {
            item = rx.recv() => match item {
                Some(mut item) => {
                    // The channel keeps each sender's order, so equal due times stay FIFO.
                    item.seq = seq;
                    seq += 1;
                    heap.push(item);
                }
                None => return,
            },
            () = tokio::time::sleep_until(next_due.unwrap_or_else(Instant::now)),
                if next_due.is_some() =>
            {
                let now = Instant::now();
                while heap.peek().is_some_and(|d| d.due <= now) {
                    if let Some(item) = heap.pop() {
                        item.target.send(&item.data).await;
                        shared.update(|stats| stats.delay_queued -= 1);
                    }
                }
            }
        }
    }
}

/// One client's mapping: its own upstream-facing socket and the task reading the replies.
#[derive(Debug)]
struct Mapping {
    upstream_socket: Arc<UdpSocket>,
    last_active: Arc<AtomicU64>,
    reader: AbortHandle,
}

impl Drop for Mapping {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

struct MainTask {
    socket: Arc<UdpSocket>,
    upstream: SocketAddr,
    config: ProxyConfig,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<()>,
    delay_rx: mpsc::UnboundedReceiver<Delayed>,
}

/// Reads from clients, keeps the client mappings and owns every other task.
async fn run_main(task: MainTask) {
    let MainTask {
        socket,
        upstream,
        config,
        shared,
        mut shutdown,
        delay_rx,
    } = task;
    let delay_queue = tokio::spawn(run_delay_queue(shared.clone(), delay_rx));
    let mut readers = JoinSet::new();
    let mut mappings: HashMap<SocketAddr, Mapping> = HashMap::new();
    let sweep_every = (config.idle_timeout / 4).max(Duration::from_millis(10));
    let mut sweep = tokio::time::interval(sweep_every);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut buf = vec![0u8; DATAGRAM_MAX];
    loop {
        tokio::select! {
            // Ok: a value was sent (never happens); Err: the handle is gone. Either way, stop.
            _ = shutdown.changed() => break,
            received = socket.recv_from(&mut buf) => match received {
                Ok((len, client)) => {
                    let Some(target) = mapping_for(
                        &mut mappings, &mut readers, &socket, upstream, &config, &shared, client,
                    ).await else {
                        shared.update(|stats| {
                            stats.client_to_upstream.received += 1;
                            stats.client_to_upstream.dropped += 1;
                        });
                        continue;
                    };
                    shared
                        .handle(Direction::ClientToUpstream, client, target, &buf[..len])
                        .await;
                }
                Err(e) => recv_error("client side", &e).await,
            },
            _ = sweep.tick() => {
                let now = shared.now_micros();
                let idle = u64::try_from(config.idle_timeout.as_micros()).unwrap_or(u64::MAX);
                let before = mappings.len();
                mappings.retain(|client, m| {
                    let keep = now.saturating_sub(m.last_active.load(Ordering::Relaxed)) <= idle;
                    if !keep {
                        tracing::debug!(%client, "udp proxy evicting idle client mapping");
                    }
                    keep
                });
                let evicted = before - mappings.len();
                if evicted > 0 {
                    shared.update(|stats| {
                        stats.evicted += evicted as u64;
                        stats.clients = mappings.len();
                    });
                }
            }
            Some(joined) = readers.join_next() => {
                if let Err(e) = joined
                    && e.is_panic()
                {
                    tracing::error!("udp proxy reader task panicked: {e}");
                }
            }
        }
    }
    mappings.clear();
    readers.shutdown().await;
    delay_queue.abort();
    let _ = delay_queue.await;
    shared.update(|stats| {
        stats.clients = 0;
        stats.delay_queued = 0;
    });
    tracing::debug!(local_addr = ?socket.local_addr(), "udp proxy stopped");
}

/// The upstream target for `client`, opening a mapping (and evicting the least recently active
/// one past the bound) if needed. `None` if no upstream-facing socket could be opened.
async fn mapping_for(
    mappings: &mut HashMap<SocketAddr, Mapping>,
    readers: &mut JoinSet<()>,
    socket: &Arc<UdpSocket>,
    upstream: SocketAddr,
    config: &ProxyConfig,
    shared: &Arc<Shared>,
    client: SocketAddr,
) -> Option<Target> {
    let now = shared.now_micros();
    if let Some(m) = mappings.get(&client) {
        m.last_active.store(now, Ordering::Relaxed);
        return Some(Target::Upstream(m.upstream_socket.clone()));
    }
    if mappings.len() >= config.max_clients {
        let oldest = mappings
            .iter()
            .min_by_key(|(_, m)| m.last_active.load(Ordering::Relaxed))
            .map(|(addr, _)| *addr);
        if let Some(oldest) = oldest {
            tracing::debug!(client = %oldest, "udp proxy evicting client mapping to make room");
            mappings.remove(&oldest);
            shared.update(|stats| stats.evicted += 1);
        }
    }
    let upstream_socket = match open_upstream_socket(upstream).await {
        Ok(s) => Arc::new(s),
        Err(e) => {
            tracing::warn!(%client, %upstream, "udp proxy cannot open an upstream socket: {e}");
            let clients = mappings.len();
            shared.update(|stats| stats.clients = clients);
            return None;
        }
    };
    let last_active = Arc::new(AtomicU64::new(now));
    let reader = readers.spawn(run_reader(
        shared.clone(),
        upstream_socket.clone(),
        socket.clone(),
        client,
        last_active.clone(),
    ));
    tracing::debug!(%client, upstream_side = ?upstream_socket.local_addr(), "udp proxy new client mapping");
    mappings.insert(
        client,
        Mapping {
            upstream_socket: upstream_socket.clone(),
            last_active,
            reader,
        },
    );
    let clients = mappings.len();
    shared.update(|stats| stats.clients = clients);
    Some(Target::Upstream(upstream_socket))
}

/// A socket connected to `upstream` (so it only accepts the upstream's datagrams), bound to an
/// ephemeral port on loopback if the upstream is on loopback.
async fn open_upstream_socket(upstream: SocketAddr) -> io::Result<UdpSocket> {
    let ip: IpAddr = match (upstream.is_ipv4(), upstream.ip().is_loopback()) {
        (true, true) => Ipv4Addr::LOCALHOST.into(),
        (true, false) => Ipv4Addr::UNSPECIFIED.into(),
        (false, true) => Ipv6Addr::LOCALHOST.into(),
        (false, false) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let socket = UdpSocket::bind(SocketAddr::new(ip, 0)).await?;
    socket.connect(upstream).await?;
    Ok(socket)
}

/// Reads the upstream's datagrams for one client and sends them back to it.
async fn run_reader(
    shared: Arc<Shared>,
    upstream_socket: Arc<UdpSocket>,
    listen_socket: Arc<UdpSocket>,
    client: SocketAddr,
    last_active: Arc<AtomicU64>,
) {
    let target = Target::Client {
        socket: listen_socket,
        addr: client,
    };
    let mut buf = vec![0u8; DATAGRAM_MAX];
    loop {
        match upstream_socket.recv(&mut buf).await {
            Ok(len) => {
                last_active.store(shared.now_micros(), Ordering::Relaxed);
                shared
                    .handle(
                        Direction::UpstreamToClient,
                        client,
                        target.clone(),
                        &buf[..len],
                    )
                    .await;
            }
            Err(e) => recv_error("upstream side", &e).await,
        }
    }
}

/// Receive errors are not fatal: a connected UDP socket reports an ICMP "port unreachable"
/// (the upstream node is down, e.g. killed by the test) as a one-off `ConnectionRefused`.
async fn recv_error(side: &str, e: &io::Error) {
    match e.kind() {
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset => {
            tracing::trace!("udp proxy {side}: {e}");
        }
        _ => {
            tracing::warn!("udp proxy {side} receive failed: {e}");
            // Do not spin on a persistent error.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Upper bound on any single wait; tests normally finish in milliseconds.
    const WAIT: Duration = Duration::from_secs(20);

    fn loopback() -> SocketAddr {
        "127.0.0.1:0".parse().unwrap()
    }

    async fn socket() -> UdpSocket {
        UdpSocket::bind(loopback()).await.unwrap()
    }

    async fn recv(socket: &UdpSocket) -> (Vec<u8>, SocketAddr) {
        let mut buf = vec![0u8; DATAGRAM_MAX];
        let (len, from) = tokio::time::timeout(WAIT, socket.recv_from(&mut buf))
            .await
            .expect("timed out waiting for a datagram")
            .unwrap();
        buf.truncate(len);
        (buf, from)
    }

    async fn wait(proxy: &UdpProxy, pred: impl FnMut(&ProxyStats) -> bool) -> ProxyStats {
        tokio::time::timeout(WAIT, proxy.wait_stats(pred))
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for stats; now {:?}", proxy.stats()))
    }

    /// A UDP echo server; stops when dropped.
    struct Echo {
        addr: SocketAddr,
        task: JoinHandle<()>,
    }

    impl Drop for Echo {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    async fn echo() -> Echo {
        let socket = socket().await;
        let addr = socket.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; DATAGRAM_MAX];
            loop {
                let (len, from) = socket.recv_from(&mut buf).await.unwrap();
                socket.send_to(&buf[..len], from).await.unwrap();
            }
        });
        Echo { addr, task }
    }

    async fn proxy_to(upstream: SocketAddr, seed: u64) -> UdpProxy {
        let config = ProxyConfig {
            seed,
            ..ProxyConfig::default()
        };
        UdpProxy::start_with(loopback(), upstream, config)
            .await
            .unwrap()
    }

    /// A client and a hand-driven upstream behind a proxy. `upstream_side` is the proxy's
    /// address as the upstream sees it (the client's mapping), learnt from a first datagram.
    struct Link {
        proxy: UdpProxy,
        client: UdpSocket,
        upstream: UdpSocket,
        upstream_side: SocketAddr,
    }

    async fn link() -> Link {
        let upstream = socket().await;
        let proxy = proxy_to(upstream.local_addr().unwrap(), 1).await;
        let client = socket().await;
        client.send_to(b"hello", proxy.local_addr()).await.unwrap();
        let (data, upstream_side) = recv(&upstream).await;
        assert_eq!(data, b"hello");
        assert_ne!(upstream_side, client.local_addr().unwrap());
        Link {
            proxy,
            client,
            upstream,
            upstream_side,
        }
    }

    impl Link {
        /// Once a fault is lifted: a datagram each way arrives, and first (had anything sent
        /// during the fault leaked through, it would arrive before these).
        async fn passes_both_ways_with_nothing_leaked(&self) {
            self.client_sends(b"after c2u").await;
            self.upstream_sends(b"after u2c").await;
            assert_eq!(self.upstream_receives().await, b"after c2u");
            assert_eq!(self.client_receives().await, b"after u2c");
        }

        async fn client_sends(&self, data: &[u8]) {
            self.client
                .send_to(data, self.proxy.local_addr())
                .await
                .unwrap();
        }

        async fn upstream_sends(&self, data: &[u8]) {
            self.upstream
                .send_to(data, self.upstream_side)
                .await
                .unwrap();
        }

        async fn upstream_receives(&self) -> Vec<u8> {
            let (data, from) = recv(&self.upstream).await;
            assert_eq!(from, self.upstream_side);
            data
        }

        async fn client_receives(&self) -> Vec<u8> {
            let (data, from) = recv(&self.client).await;
            assert_eq!(from, self.proxy.local_addr());
            data
        }
    }

    #[tokio::test]
    async fn datagrams_round_trip_through_the_proxy() {
        let echo = echo().await;
        let proxy = proxy_to(echo.addr, 1).await;
        let client = socket().await;
        for i in 0..50u32 {
            let msg = format!("ping {i}");
            client
                .send_to(msg.as_bytes(), proxy.local_addr())
                .await
                .unwrap();
            let (reply, from) = recv(&client).await;
            assert_eq!(reply, msg.as_bytes());
            assert_eq!(from, proxy.local_addr());
        }
        let stats = proxy.stats();
        let expected = DirectionStats {
            received: 50,
            forwarded: 50,
            ..DirectionStats::default()
        };
        assert_eq!(stats.client_to_upstream, expected);
        assert_eq!(stats.upstream_to_client, expected);
        assert_eq!(stats.clients, 1);
        assert_eq!(proxy.upstream(), echo.addr);
    }

    #[tokio::test]
    async fn partition_stops_both_directions_and_heal_restores_them() {
        let link = link().await;
        link.upstream_sends(b"reply").await;
        assert_eq!(link.client_receives().await, b"reply");

        link.proxy.faults().partition(true);
        link.client_sends(b"lost c2u").await;
        link.upstream_sends(b"lost u2c").await;
        let stats = wait(&link.proxy, |s| {
            s.client_to_upstream.dropped == 1 && s.upstream_to_client.dropped == 1
        })
        .await;
        assert_eq!(stats.client_to_upstream.forwarded, 1, "only the hello");
        assert_eq!(stats.upstream_to_client.forwarded, 1, "only the reply");

        link.proxy.faults().partition(false);
        assert_eq!(link.proxy.faults().settings(), FaultSettings::default());
        link.passes_both_ways_with_nothing_leaked().await;
    }

    #[tokio::test]
    async fn one_way_blocks_block_one_direction_only() {
        let link = link().await;

        link.proxy.faults().block_client_to_upstream(true);
        link.client_sends(b"blocked").await;
        wait(&link.proxy, |s| s.client_to_upstream.dropped == 1).await;
        link.upstream_sends(b"passes").await;
        assert_eq!(link.client_receives().await, b"passes");

        link.proxy.faults().block_client_to_upstream(false);
        link.proxy.faults().block_upstream_to_client(true);
        link.upstream_sends(b"blocked").await;
        wait(&link.proxy, |s| s.upstream_to_client.dropped == 1).await;
        link.client_sends(b"passes").await;
        assert_eq!(link.upstream_receives().await, b"passes");

        link.proxy.faults().reset();
        link.upstream_sends(b"healed").await;
        assert_eq!(link.client_receives().await, b"healed");
        let stats = link.proxy.stats();
        assert_eq!(stats.client_to_upstream.dropped, 1);
        assert_eq!(stats.upstream_to_client.dropped, 1);
    }

    #[tokio::test]
    async fn a_blocked_client_is_cut_off_both_ways_and_others_pass() {
        let link = link().await;
        let other = socket().await;
        other.send_to(b"b0", link.proxy.local_addr()).await.unwrap();
        let (data, other_side) = recv(&link.upstream).await;
        assert_eq!(data, b"b0");

        let blocked = link.client.local_addr().unwrap();
        link.proxy.faults().block_client(blocked, true);
        link.client_sends(b"lost c2u").await;
        link.upstream_sends(b"lost u2c").await;
        wait(&link.proxy, |s| {
            s.client_to_upstream.dropped == 1 && s.upstream_to_client.dropped == 1
        })
        .await;

        other.send_to(b"b1", link.proxy.local_addr()).await.unwrap();
        assert_eq!(recv(&link.upstream).await.0, b"b1", "other clients pass");
        link.upstream.send_to(b"to b", other_side).await.unwrap();
        assert_eq!(recv(&other).await.0, b"to b", "replies to them too");

        link.proxy.faults().block_client(blocked, false);
        assert_eq!(link.proxy.faults().settings(), FaultSettings::default());
        link.passes_both_ways_with_nothing_leaked().await;
    }

    #[tokio::test]
    async fn only_the_listed_clients_pass_and_lifting_it_lets_everyone_back() {
        let link = link().await;
        let other = socket().await;
        other.send_to(b"b0", link.proxy.local_addr()).await.unwrap();
        let (data, other_side) = recv(&link.upstream).await;
        assert_eq!(data, b"b0");

        let kept = [other.local_addr().unwrap()];
        link.proxy.faults().only_clients(Some(&kept));
        link.client_sends(b"lost c2u").await;
        link.upstream_sends(b"lost u2c").await;
        wait(&link.proxy, |s| {
            s.client_to_upstream.dropped == 1 && s.upstream_to_client.dropped == 1
        })
        .await;
        other.send_to(b"b1", link.proxy.local_addr()).await.unwrap();
        assert_eq!(
            recv(&link.upstream).await.0,
            b"b1",
            "the listed client passes"
        );
        link.upstream.send_to(b"to b", other_side).await.unwrap();
        assert_eq!(recv(&other).await.0, b"to b", "replies to it too");

        link.proxy.faults().only_clients(None);
        assert_eq!(link.proxy.faults().settings(), FaultSettings::default());
        link.passes_both_ways_with_nothing_leaked().await;
    }

    #[tokio::test]
    async fn drop_probability_one_drops_all_and_zero_drops_none() {
        let echo = echo().await;
        let proxy = proxy_to(echo.addr, 7).await;
        let client = socket().await;

        proxy.faults().set_drop_probability(1.0);
        for i in 0..20u32 {
            client
                .send_to(&i.to_be_bytes(), proxy.local_addr())
                .await
                .unwrap();
        }
        let stats = wait(&proxy, |s| s.client_to_upstream.received == 20).await;
        assert_eq!(stats.client_to_upstream.dropped, 20);
        assert_eq!(stats.client_to_upstream.forwarded, 0);

        proxy.faults().set_drop_probability(0.0);
        for i in 100..200u32 {
            client
                .send_to(&i.to_be_bytes(), proxy.local_addr())
                .await
                .unwrap();
            // None of the dropped ones arrives; every one sent now comes back.
            let (reply, _) = recv(&client).await;
            assert_eq!(reply, i.to_be_bytes());
        }
        let stats = proxy.stats();
        assert_eq!(stats.client_to_upstream.dropped, 20);
        assert_eq!(stats.client_to_upstream.forwarded, 100);
        assert_eq!(stats.upstream_to_client.forwarded, 100);
        assert_eq!(stats.upstream_to_client.dropped, 0);
    }

    /// Sends 1,000 numbered datagrams one at a time through a proxy dropping half of them and
    /// returns the numbers that arrived.
    async fn half_loss_run(seed: u64) -> Vec<u32> {
        let sink = socket().await;
        let proxy = proxy_to(sink.local_addr().unwrap(), seed).await;
        proxy.faults().set_drop_probability(0.5);
        let client = socket().await;
        let mut arrived = Vec::new();
        for i in 0..1000u32 {
            client
                .send_to(&i.to_be_bytes(), proxy.local_addr())
                .await
                .unwrap();
            // One at a time, so no socket buffer overflows and the proxy sees them in order.
            let stats = wait(&proxy, |s| {
                s.client_to_upstream.received == u64::from(i) + 1
            })
            .await;
            if stats.client_to_upstream.forwarded > arrived.len() as u64 {
                let (data, _) = recv(&sink).await;
                arrived.push(u32::from_be_bytes(data.try_into().unwrap()));
            }
        }
        let stats = proxy.stats().client_to_upstream;
        assert_eq!(stats.received, 1000);
        assert_eq!(stats.forwarded + stats.dropped, 1000);
        assert_eq!(stats.forwarded, arrived.len() as u64);
        arrived
    }

    #[tokio::test]
    async fn half_drop_with_a_fixed_seed_is_deterministic_and_plausible() {
        let first = half_loss_run(42).await;
        let dropped = 1000 - first.len();
        assert!(
            (350..650).contains(&dropped),
            "dropped {dropped} of 1000 at p = 0.5"
        );
        // Each forwarded datagram arrived, in order, exactly once.
        assert!(first.windows(2).all(|w| w[0] < w[1]), "{first:?}");
        assert_eq!(half_loss_run(42).await, first, "same seed, same drops");
        assert_ne!(half_loss_run(43).await, first, "another seed, other drops");
    }

    #[tokio::test]
    async fn duplication_doubles_each_datagram() {
        let link = link().await;
        link.proxy.faults().set_duplicate_probability(1.0);
        for i in 0..10u32 {
            link.client_sends(&i.to_be_bytes()).await;
        }
        let mut counts = BTreeMap::new();
        for _ in 0..20 {
            *counts.entry(link.upstream_receives().await).or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 10);
        assert!(counts.values().all(|&n| n == 2), "{counts:?}");

        link.upstream_sends(b"back").await;
        assert_eq!(link.client_receives().await, b"back");
        assert_eq!(link.client_receives().await, b"back");

        link.proxy.faults().set_duplicate_probability(0.0);
        link.client_sends(b"once").await;
        link.client_sends(b"sentinel").await;
        assert_eq!(link.upstream_receives().await, b"once");
        // A third copy of anything would show up before the sentinel.
        assert_eq!(link.upstream_receives().await, b"sentinel");
        let stats = link.proxy.stats();
        assert_eq!(stats.client_to_upstream.duplicated, 10);
        assert_eq!(stats.client_to_upstream.forwarded, 13, "hello + 10 + 2");
        assert_eq!(stats.upstream_to_client.duplicated, 1);
    }

    #[tokio::test]
    async fn delayed_datagrams_arrive_in_order() {
        let link = link().await;
        link.proxy.faults().set_delay(Duration::from_millis(30));
        // Each direction on its own: a round trip could hide a reversal by reversing twice.
        for i in 0..20u32 {
            link.client_sends(&i.to_be_bytes()).await;
        }
        for i in 0..20u32 {
            let data = link.upstream_receives().await;
            assert_eq!(data, i.to_be_bytes(), "a constant delay keeps the order");
        }
        for i in 0..20u32 {
            link.upstream_sends(&i.to_be_bytes()).await;
        }
        for i in 0..20u32 {
            let data = link.client_receives().await;
            assert_eq!(data, i.to_be_bytes(), "a constant delay keeps the order");
        }
        let stats = link.proxy.stats();
        assert_eq!(stats.client_to_upstream.delayed, 20);
        assert_eq!(stats.upstream_to_client.delayed, 20);
        assert_eq!(stats.delay_queued, 0);
    }

    #[tokio::test]
    async fn a_delayed_datagram_is_overtaken_by_an_undelayed_one() {
        let link = link().await;
        // Long enough never to expire during the test: no timing assumption.
        link.proxy.faults().set_delay(Duration::from_secs(3600));
        link.client_sends(b"held").await;
        wait(&link.proxy, |s| s.delay_queued == 1).await;
        link.proxy.faults().set_delay(Duration::ZERO);
        link.client_sends(b"prompt").await;
        assert_eq!(link.upstream_receives().await, b"prompt");
        let stats = link.proxy.stats();
        assert_eq!(stats.client_to_upstream.delayed, 1);
        assert_eq!(stats.delay_queued, 1);
    }

    #[tokio::test]
    async fn jitter_delivers_every_datagram() {
        let link = link().await;
        link.proxy.faults().set_jitter(Duration::from_millis(20));
        let sent: Vec<u32> = (0..30).collect();
        for i in &sent {
            link.client_sends(&i.to_be_bytes()).await;
        }
        let mut got = Vec::new();
        for _ in &sent {
            let data = link.upstream_receives().await;
            got.push(u32::from_be_bytes(data.try_into().unwrap()));
        }
        got.sort_unstable();
        assert_eq!(got, sent);
        assert_eq!(link.proxy.stats().client_to_upstream.delayed, 30);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn distinct_clients_get_their_own_replies() {
        let echo = echo().await;
        let proxy = proxy_to(echo.addr, 1).await;
        let a = socket().await;
        let b = socket().await;
        for i in 0..20u32 {
            a.send_to(format!("a{i}").as_bytes(), proxy.local_addr())
                .await
                .unwrap();
            b.send_to(format!("b{i}").as_bytes(), proxy.local_addr())
                .await
                .unwrap();
            assert_eq!(recv(&a).await.0, format!("a{i}").as_bytes());
            assert_eq!(recv(&b).await.0, format!("b{i}").as_bytes());
        }
        assert_eq!(proxy.stats().clients, 2);
    }

    #[tokio::test]
    async fn client_mappings_are_bounded() {
        let echo = echo().await;
        let config = ProxyConfig {
            max_clients: 2,
            ..ProxyConfig::default()
        };
        let proxy = UdpProxy::start_with(loopback(), echo.addr, config)
            .await
            .unwrap();
        let mut clients = Vec::new();
        for i in 0..3u8 {
            let c = socket().await;
            c.send_to(&[i], proxy.local_addr()).await.unwrap();
            assert_eq!(recv(&c).await.0, [i]);
            clients.push(c);
        }
        let stats = proxy.stats();
        assert_eq!(stats.clients, 2);
        assert_eq!(stats.evicted, 1);
        // An evicted client is simply mapped again (evicting another).
        for c in &clients {
            c.send_to(b"again", proxy.local_addr()).await.unwrap();
            assert_eq!(recv(c).await.0, b"again");
        }
        assert_eq!(proxy.stats().clients, 2);
    }

    #[tokio::test]
    async fn idle_client_mappings_are_evicted() {
        let echo = echo().await;
        let config = ProxyConfig {
            idle_timeout: Duration::from_millis(100),
            ..ProxyConfig::default()
        };
        let proxy = UdpProxy::start_with(loopback(), echo.addr, config)
            .await
            .unwrap();
        let client = socket().await;
        client.send_to(b"x", proxy.local_addr()).await.unwrap();
        assert_eq!(recv(&client).await.0, b"x");
        let stats = wait(&proxy, |s| s.evicted >= 1).await;
        assert_eq!(stats.clients, 0);
        // Talking again opens a new mapping.
        client.send_to(b"y", proxy.local_addr()).await.unwrap();
        assert_eq!(recv(&client).await.0, b"y");
    }

    #[tokio::test]
    async fn stop_closes_the_listening_socket() {
        let echo = echo().await;
        let proxy = proxy_to(echo.addr, 1).await;
        let addr = proxy.local_addr();
        let client = socket().await;
        client.send_to(b"up", addr).await.unwrap();
        assert_eq!(recv(&client).await.0, b"up");
        proxy.stop().await;
        // The port is free again once stop returns.
        let rebound = UdpSocket::bind(addr).await;
        assert!(rebound.is_ok(), "{rebound:?}");
    }

    #[test]
    fn splitmix_is_seeded_and_uniform_enough() {
        let mut a = SplitMix64::new(5);
        let mut b = SplitMix64::new(5);
        let xs: Vec<u64> = (0..8).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..8).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        assert_ne!(
            xs,
            (0..8)
                .map(|_| SplitMix64::new(6).next_u64())
                .collect::<Vec<_>>()
        );
        let mut r = SplitMix64::new(9);
        let mut sum = 0.0;
        for _ in 0..10_000 {
            let x = r.next_f64();
            assert!((0.0..1.0).contains(&x));
            sum += x;
        }
        assert!((4_500.0..5_500.0).contains(&sum), "{sum}");
        assert!((0..1000).all(|_| r.below_inclusive(3) <= 3));
    }

    #[test]
    #[should_panic(expected = "probability")]
    fn probabilities_outside_zero_to_one_are_refused() {
        let faults = Faults {
            state: Arc::new(Mutex::new(FaultState {
                settings: FaultSettings::default(),
                rng: [SplitMix64::new(0), SplitMix64::new(0)],
            })),
        };
        faults.set_drop_probability(1.5);
    }
}
