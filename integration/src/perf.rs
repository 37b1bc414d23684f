//! perf-write: Laminar's write test against real `weir node` processes (the `perf-write`
//! binary runs it; `docs/BENCHMARKS.md` has a run and how to read it).
//!
//! One *cell* = (variant, mode, nodes, clients, messages per client). Per cell: start `nodes`
//! node processes on loopback, create one topic replicated on all of them (plain, or running the
//! `nothing` or `counter` program), connect `clients` clients (one connection each), start them
//! together, and time from the first send to the last commit. `pipelined` clients send every
//! PUT before waiting for any (Laminar's shape; the window bounds PUTs in flight), `sync`
//! clients wait for each commit before the next PUT. Then a listener reads the topic back and
//! [`verify`] checks that every acknowledged PUT is there exactly once, at its offset, with
//! what was sent, and nothing else: a cell that loses or duplicates anything fails. Finally
//! the cluster is torn down.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde::Serialize;
use weir_client::{
    Client, ClientError, Committed, Offset, ProgramOutcome, ProgramSpec, TopicConfig,
};

use crate::cluster::LocalCluster;

/// The topic every cell writes to.
pub const TOPIC: &str = "perf";
/// Largest cluster a cell may ask for (every node is a replica of the topic).
pub const NODES_MAX: usize = 7;
/// Most clients and messages per client a cell may ask for (each PUT's outcome is kept).
pub const CLIENTS_MAX: usize = 64;
pub const MESSAGES_MAX: usize = 1_000_000;
/// Key and value sizes accepted (well under the protocol's limits).
pub const KEY_BYTES_MAX: usize = 1024;
pub const VALUE_BYTES_MAX: usize = 64 * 1024;
/// Laminar's published figures (µs per message at 10,000 messages per client): plain best
/// (5 clients, 1 node) and worst (1 client, 7 nodes), programmable best and worst.
pub const LAMINAR_PLAIN_US: (f64, f64) = (25.0, 269.0);
pub const LAMINAR_PROGRAMMABLE_US: (f64, f64) = (1124.0, 4487.0);

/// What the topic runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    /// A plain topic.
    Plain,
    /// The `nothing` example: each message becomes its own event (Laminar's `DoNothing`).
    Nothing,
    /// The `counter` example: a running count per key.
    Counter,
}

impl Variant {
    pub fn name(self) -> &'static str {
        match self {
            Variant::Plain => "plain",
            Variant::Nothing => "nothing",
            Variant::Counter => "counter",
        }
    }

    /// The value the entry of PUT `seq` of `client` holds when read back: what was sent, or
    /// for `counter` the client's running count (its key's), `seq + 1` in decimal.
    pub fn expected_value(self, client: usize, seq: usize, value_bytes: usize) -> Vec<u8> {
        match self {
            Variant::Plain | Variant::Nothing => value_of(client, seq, value_bytes),
            Variant::Counter => (seq + 1).to_string().into_bytes(),
        }
    }

    fn program(self) -> Option<&'static str> {
        match self {
            Variant::Plain => None,
            Variant::Nothing => Some("nothing"),
            Variant::Counter => Some("counter"),
        }
    }
}

impl std::str::FromStr for Variant {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "plain" => Ok(Variant::Plain),
            "nothing" => Ok(Variant::Nothing),
            "counter" => Ok(Variant::Counter),
            other => Err(format!(
                "unknown variant {other:?} (plain, nothing, counter)"
            )),
        }
    }
}

/// How a client sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Every PUT sent before waiting for any (bounded by the window).
    Pipelined,
    /// Each PUT waits for its commit before the next is sent.
    Sync,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Pipelined => "pipelined",
            Mode::Sync => "sync",
        }
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "pipelined" => Ok(Mode::Pipelined),
            "sync" => Ok(Mode::Sync),
            other => Err(format!("unknown mode {other:?} (pipelined, sync)")),
        }
    }
}

/// The matrix and the message shape.
#[derive(Clone, Debug)]
pub struct Options {
    pub nodes: Vec<usize>,
    pub clients: Vec<usize>,
    pub messages: Vec<usize>,
    pub variants: Vec<Variant>,
    pub modes: Vec<Mode>,
    /// PUTs a pipelined client keeps in flight; `None`: all of them (as Laminar).
    pub window: Option<usize>,
    pub key_bytes: usize,
    pub value_bytes: usize,
}

impl Default for Options {
    /// Laminar's matrix: nodes {1, 3, 5, 7} × clients {1, 3, 5} × messages {100, 1,000,
    /// 10,000}, key 4 bytes, value 1 byte; every variant, both modes, unbounded window.
    fn default() -> Self {
        Options {
            nodes: vec![1, 3, 5, 7],
            clients: vec![1, 3, 5],
            messages: vec![100, 1_000, 10_000],
            variants: vec![Variant::Plain, Variant::Nothing, Variant::Counter],
            modes: vec![Mode::Pipelined, Mode::Sync],
            window: None,
            key_bytes: 4,
            value_bytes: 1,
        }
    }
}

impl Options {
    /// A correctness check that runs in the test suite: 1 and 3 nodes, 1 and 3 clients, 100
    /// messages, every variant and mode.
    pub fn quick() -> Self {
        Options {
            nodes: vec![1, 3],
            clients: vec![1, 3],
            messages: vec![100],
            ..Options::default()
        }
    }

    /// Every cell, in run order.
    pub fn cells(&self) -> Vec<Cell> {
        let mut cells = Vec::new();
        for &variant in &self.variants {
            for &mode in &self.modes {
                for &nodes in &self.nodes {
                    for &clients in &self.clients {
                        for &messages in &self.messages {
                            cells.push(Cell {
                                variant,
                                mode,
                                nodes,
                                clients,
                                messages,
                            });
                        }
                    }
                }
            }
        }
        cells
    }

    /// Refuses sizes outside the limits before any process starts.
    pub fn validate(&self) -> Result<()> {
        ensure!(
            !self.nodes.is_empty()
                && !self.clients.is_empty()
                && !self.messages.is_empty()
                && !self.variants.is_empty()
                && !self.modes.is_empty(),
            "every dimension of the matrix needs at least one value"
        );
        for &n in &self.nodes {
            ensure!(
                (1..=NODES_MAX).contains(&n),
                "nodes must be 1..={NODES_MAX}, not {n}"
            );
        }
        for &c in &self.clients {
            ensure!(
                (1..=CLIENTS_MAX).contains(&c),
                "clients must be 1..={CLIENTS_MAX}, not {c}"
            );
        }
        for &m in &self.messages {
            ensure!(
                (1..=MESSAGES_MAX).contains(&m),
                "messages per client must be 1..={MESSAGES_MAX}, not {m}"
            );
        }
        ensure!(
            self.window != Some(0),
            "the window must be at least 1 (or unbounded)"
        );
        ensure!(
            self.key_bytes <= KEY_BYTES_MAX,
            "key bytes must be at most {KEY_BYTES_MAX}"
        );
        ensure!(
            (1..=VALUE_BYTES_MAX).contains(&self.value_bytes),
            "value bytes must be 1..={VALUE_BYTES_MAX}"
        );
        Ok(())
    }
}

/// One point of the matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Cell {
    pub variant: Variant,
    pub mode: Mode,
    pub nodes: usize,
    pub clients: usize,
    /// Per client.
    pub messages: usize,
}

impl std::fmt::Display for Cell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} nodes={} clients={} messages={}",
            self.variant.name(),
            self.mode.name(),
            self.nodes,
            self.clients,
            self.messages
        )
    }
}

/// Commit latency of the cell's PUTs (send to acknowledgement), in µs.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Latency {
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

/// What one cell measured.
#[derive(Clone, Debug, Serialize)]
pub struct CellResult {
    #[serde(flatten)]
    pub cell: Cell,
    pub total_messages: usize,
    /// First send to last commit.
    pub wall_s: f64,
    /// Laminar's figure: wall time / total messages.
    pub us_per_message: f64,
    pub messages_per_s: f64,
    pub latency: Latency,
    /// `fsync` calls of the topic's log on its leader during the cell, and messages per call.
    pub leader_fsyncs: u64,
    pub messages_per_fsync: f64,
    /// CPU time (user + system) each node process spent during the cell, by node id.
    pub cpu_s_by_node: Vec<(u64, f64)>,
    /// CPU time of this process (the clients) during the cell.
    pub client_cpu_s: f64,
    pub verification: Verification,
}

/// The result of [`verify`]: every counter but `entries` must be 0.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Verification {
    /// Message entries read back.
    pub entries: u64,
    /// An acknowledged PUT not in the log.
    pub lost: u64,
    /// An offset read twice, or acknowledged for two PUTs.
    pub duplicated: u64,
    /// An entry at an offset no PUT was acknowledged at.
    pub phantom: u64,
    /// An entry whose key or value is not what the PUT acknowledged at its offset sent.
    pub mismatched: u64,
    /// Offsets not strictly increasing in the order read.
    pub out_of_order: u64,
    /// A client's messages in the log in another order than it sent them.
    pub reordered: u64,
}

impl Verification {
    pub fn is_ok(&self) -> bool {
        self.lost == 0
            && self.duplicated == 0
            && self.phantom == 0
            && self.mismatched == 0
            && self.out_of_order == 0
            && self.reordered == 0
    }
}

impl std::fmt::Display for Verification {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "entries={} lost={} duplicated={} phantom={} mismatched={} out_of_order={} reordered={}",
            self.entries,
            self.lost,
            self.duplicated,
            self.phantom,
            self.mismatched,
            self.out_of_order,
            self.reordered
        )
    }
}

/// The key client `client` sends: its index, big-endian, in `key_bytes` bytes (zero-padded,
/// or its low bytes if shorter).
pub fn key_of(client: usize, key_bytes: usize) -> Vec<u8> {
    let index = (client as u64).to_be_bytes();
    let mut key = vec![0u8; key_bytes];
    let n = key_bytes.min(index.len());
    key[key_bytes - n..].copy_from_slice(&index[index.len() - n..]);
    key
}

/// The value of message `seq` of client `client`: its bytes cycle through (client, seq).
pub fn value_of(client: usize, seq: usize, value_bytes: usize) -> Vec<u8> {
    let pattern = ((client as u64) << 40 | seq as u64).to_le_bytes();
    (0..value_bytes)
        .map(|i| pattern[i % pattern.len()])
        .collect()
}

/// An entry read back: offset, key, value.
pub type ReadEntry = (Offset, Option<Vec<u8>>, Vec<u8>);

/// Checks the log read back (`log`, in the order read) against what was acknowledged:
/// `acks[client][seq]` is the offset PUT `seq` of `client` was acknowledged at, with the key of
/// [`key_of`]; its entry must hold `expected_value(client, seq)`. Linear in the sizes.
pub fn verify(
    acks: &[Vec<Offset>],
    log: &[ReadEntry],
    key_bytes: usize,
    expected_value: impl Fn(usize, usize) -> Vec<u8>,
) -> Verification {
    let mut v = Verification {
        entries: log.len() as u64,
        ..Verification::default()
    };
    let total: usize = acks.iter().map(Vec::len).sum();
    let mut by_offset: HashMap<Offset, (usize, usize)> = HashMap::with_capacity(total);
    for (client, offsets) in acks.iter().enumerate() {
        for (seq, &offset) in offsets.iter().enumerate() {
            if by_offset.insert(offset, (client, seq)).is_some() {
                v.duplicated += 1;
            }
        }
    }
    let mut seen: HashMap<Offset, ()> = HashMap::with_capacity(log.len());
    let mut last_offset: Option<Offset> = None;
    let mut last_seq: Vec<Option<usize>> = vec![None; acks.len()];
    for (offset, key, value) in log {
        if last_offset.is_some_and(|l| *offset <= l) {
            v.out_of_order += 1;
        }
        last_offset = Some(*offset);
        if seen.insert(*offset, ()).is_some() {
            v.duplicated += 1;
            continue;
        }
        let Some(&(client, seq)) = by_offset.get(offset) else {
            v.phantom += 1;
            continue;
        };
        let key_ok = match key {
            Some(k) => *k == key_of(client, key_bytes),
            None => key_bytes == 0,
        };
        if !key_ok || *value != expected_value(client, seq) {
            v.mismatched += 1;
        }
        if last_seq[client].is_some_and(|s| seq < s) {
            v.reordered += 1;
        }
        last_seq[client] = Some(last_seq[client].map_or(seq, |s| s.max(seq)));
    }
    v.lost = by_offset.keys().filter(|o| !seen.contains_key(o)).count() as u64;
    v
}

/// Facts about the machine and the run, for the JSON report.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub cpu_model: Option<String>,
    pub kernel: Option<String>,
    pub fsync: &'static str,
    pub weir_version: &'static str,
    pub build_profile: &'static str,
    pub key_bytes: usize,
    pub value_bytes: usize,
    pub window: Option<usize>,
}

impl Machine {
    pub fn probe(options: &Options) -> Self {
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        });
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .ok()
            .map(|s| s.trim().to_owned());
        Machine {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            kernel,
            fsync: "always (every acknowledged PUT fsynced on a majority)",
            weir_version: env!("CARGO_PKG_VERSION"),
            build_profile: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            },
            key_bytes: options.key_bytes,
            value_bytes: options.value_bytes,
            window: options.window,
        }
    }
}

/// Everything a run produced.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub machine: Machine,
    pub cells: Vec<CellResult>,
}

/// A run that stopped at a failing cell: the cells done before it, and why.
#[derive(Debug)]
pub struct Failed {
    pub report: Report,
    pub error: anyhow::Error,
}

/// Runs every cell in order, calling `progress` before each one (index, cell) and once at the
/// end. Stops at the first cell that fails (its error names it), keeping what ran before.
pub async fn run(
    options: &Options,
    mut progress: impl FnMut(usize, Option<&Cell>),
) -> Result<Report, Box<Failed>> {
    let mut report = Report {
        machine: Machine::probe(options),
        cells: Vec::new(),
    };
    if let Err(error) = options.validate() {
        return Err(Box::new(Failed { report, error }));
    }
    for (i, cell) in options.cells().into_iter().enumerate() {
        progress(i, Some(&cell));
        let result = match run_cell(options, cell).await {
            Ok(result) if result.verification.is_ok() => result,
            Ok(result) => {
                let error =
                    anyhow::anyhow!("cell {cell}: verification failed: {}", result.verification);
                return Err(Box::new(Failed { report, error }));
            }
            Err(e) => {
                let error = e.context(format!("cell {cell}"));
                return Err(Box::new(Failed { report, error }));
            }
        };
        report.cells.push(result);
    }
    progress(report.cells.len(), None);
    Ok(report)
}

/// Runs one cell on a fresh cluster.
pub async fn run_cell(options: &Options, cell: Cell) -> Result<CellResult> {
    let cluster = LocalCluster::start(cell.nodes, &[]).await?;
    let admin = cluster.client().await?;
    let program = match cell.variant.program() {
        Some(name) => Some(ProgramSpec {
            module: weir_wasm_examples::module(name)?,
            config: vec![],
        }),
        None => None,
    };
    admin
        .create_topic(
            TOPIC,
            TopicConfig {
                replicas: Some(cell.nodes as u32),
                program,
                ..TopicConfig::default()
            },
        )
        .await?;
    let leader = cluster.wait_for_leader(TOPIC, None).await?;
    let fsyncs_before = leader_fsyncs(&cluster, leader).await?;

    let mut clients = Vec::with_capacity(cell.clients);
    for _ in 0..cell.clients {
        clients.push(cluster.client().await?);
    }
    let cpu_before = node_cpu_s(&cluster);
    let own_cpu_before = process_cpu_s(std::process::id());
    let barrier = Arc::new(tokio::sync::Barrier::new(cell.clients + 1));
    let mut tasks = Vec::with_capacity(cell.clients);
    for (index, client) in clients.iter().enumerate() {
        let run = ClientRun {
            client: client.clone(),
            index,
            messages: cell.messages,
            mode: cell.mode,
            window: options.window,
            key_bytes: options.key_bytes,
            value_bytes: options.value_bytes,
        };
        tasks.push(tokio::spawn(run.run(barrier.clone())));
    }
    barrier.wait().await;
    let started = Instant::now();
    let mut acks = Vec::with_capacity(cell.clients);
    let mut latencies = hdrhistogram::Histogram::<u64>::new(3).context("histogram")?;
    let mut finished = started;
    for (index, task) in tasks.into_iter().enumerate() {
        let done = task
            .await
            .context("client task")?
            .with_context(|| format!("client {index}"))?;
        for us in &done.latencies_us {
            latencies.record(*us).context("latency out of range")?;
        }
        finished = finished.max(done.finished);
        acks.push(done.offsets);
    }
    let wall = finished.duration_since(started);
    let cpu_after = node_cpu_s(&cluster);
    let own_cpu_s = process_cpu_s(std::process::id()) - own_cpu_before;
    let fsyncs = leader_fsyncs(&cluster, leader)
        .await?
        .saturating_sub(fsyncs_before);

    let until = acks
        .iter()
        .flatten()
        .max()
        .copied()
        .context("no PUT acknowledged")?;
    let log: Vec<ReadEntry> = crate::workload::read_events(&cluster, leader, TOPIC, until)
        .await?
        .into_iter()
        .map(|e| (e.offset, e.key, e.value))
        .collect();
    let verification = verify(&acks, &log, options.key_bytes, |client, seq| {
        cell.variant
            .expected_value(client, seq, options.value_bytes)
    });
    for client in clients {
        client.close().await;
    }
    admin.close().await;
    drop(cluster);

    let total = cell.clients * cell.messages;
    let wall_s = wall.as_secs_f64();
    Ok(CellResult {
        cell,
        total_messages: total,
        wall_s,
        us_per_message: wall_s * 1e6 / total as f64,
        messages_per_s: total as f64 / wall_s.max(f64::MIN_POSITIVE),
        latency: Latency {
            p50_us: latencies.value_at_quantile(0.50),
            p99_us: latencies.value_at_quantile(0.99),
            max_us: latencies.max(),
        },
        leader_fsyncs: fsyncs,
        messages_per_fsync: total as f64 / fsyncs.max(1) as f64,
        cpu_s_by_node: cpu_after
            .iter()
            .map(|(id, after)| {
                let before = cpu_before
                    .iter()
                    .find(|(b, _)| b == id)
                    .map_or(0.0, |b| b.1);
                (*id, after - before)
            })
            .collect(),
        client_cpu_s: own_cpu_s,
        verification,
    })
}

/// One client's part of a cell.
struct ClientRun {
    client: Client,
    index: usize,
    messages: usize,
    mode: Mode,
    window: Option<usize>,
    key_bytes: usize,
    value_bytes: usize,
}

struct ClientDone {
    /// Offset each PUT was acknowledged at, by sequence number.
    offsets: Vec<Offset>,
    latencies_us: Vec<u64>,
    finished: Instant,
}

impl ClientRun {
    async fn run(self, start: Arc<tokio::sync::Barrier>) -> Result<ClientDone> {
        let key = key_of(self.index, self.key_bytes);
        let key = (!key.is_empty()).then_some(key);
        // Values are built before the clock starts.
        let values: Vec<Vec<u8>> = (0..self.messages)
            .map(|seq| value_of(self.index, seq, self.value_bytes))
            .collect();
        let mut offsets = Vec::with_capacity(self.messages);
        let mut latencies_us = Vec::with_capacity(self.messages);
        start.wait().await;
        match self.mode {
            Mode::Sync => {
                for value in values {
                    let sent = Instant::now();
                    let committed = self.client.put(TOPIC, key.as_deref(), value).await?;
                    latencies_us.push(micros(sent.elapsed()));
                    offsets.push(message_offset(&committed)?);
                }
            }
            Mode::Pipelined => {
                let window = self.window.unwrap_or(self.messages);
                let mut producer = self.client.producer(TOPIC, window)?;
                // Answers are awaited, in send order, by a task of their own while the PUTs go
                // out, so a latency ends when its answer arrives (or the one before it, if
                // that came later), not when the sender is done.
                let (tx, mut rx) =
                    tokio::sync::mpsc::unbounded_channel::<(Instant, weir_client::PutHandle)>();
                let collector = tokio::spawn(async move {
                    let mut out = Vec::new();
                    while let Some((sent, handle)) = rx.recv().await {
                        let result: Result<Committed, ClientError> = handle.await;
                        out.push((micros(sent.elapsed()), result));
                    }
                    out
                });
                for value in values {
                    let sent = Instant::now();
                    let handle = producer.send(key.as_deref(), value).await?;
                    if tx.send((sent, handle)).is_err() {
                        bail!("the answer collector stopped");
                    }
                }
                drop(tx);
                for (us, result) in collector.await.context("answer collector")? {
                    latencies_us.push(us);
                    offsets.push(message_offset(&result?)?);
                }
            }
        }
        Ok(ClientDone {
            offsets,
            latencies_us,
            finished: Instant::now(),
        })
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// Where a PUT's message is read: its offset on a plain topic, its (one) event on a
/// programmable one. A rejection is an error: the cell's programs accept everything.
fn message_offset(committed: &Committed) -> Result<Offset> {
    match &committed.program {
        None => Ok(committed.offset),
        Some(ProgramOutcome::Accepted {
            first_event,
            events: 1,
        }) => Ok(*first_event),
        Some(ProgramOutcome::Accepted { events, .. }) => {
            bail!("the program made {events} events of one PUT, expected 1")
        }
        Some(ProgramOutcome::Rejected { message }) => {
            bail!("the program rejected a PUT: {message}")
        }
    }
}

async fn leader_fsyncs(cluster: &LocalCluster, leader: u64) -> Result<u64> {
    let client = cluster.client_of(leader).await?;
    let status = client.status().await;
    client.close().await;
    let status = status?;
    Ok(status
        .topics
        .iter()
        .find(|t| t.name == TOPIC)
        .map_or(0, |t| t.fsyncs))
}

/// Clock ticks per second of /proc's CPU times (USER_HZ: 100 on Linux, fixed by its ABI).
const USER_HZ: f64 = 100.0;

/// CPU seconds (user + system) process `pid` has used, 0 if /proc cannot tell.
fn process_cpu_s(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime) are the 12th and 13th after the name.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / USER_HZ
}

fn node_cpu_s(cluster: &LocalCluster) -> Vec<(u64, f64)> {
    cluster
        .pids()
        .into_iter()
        .map(|(id, pid)| (id, process_cpu_s(pid)))
        .collect()
}

/// The results as a Markdown table, with the ratio to Laminar's figure where it published one.
pub fn table(report: &Report) -> String {
    let mut out = String::new();
    out.push_str(
        "| variant | mode | nodes | clients | msgs/client | µs/msg | msgs/s | p50 µs | p99 µs | max µs | msgs/fsync | node CPU s (max) | client CPU s |\n",
    );
    out.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in &report.cells {
        let cpu_max = r
            .cpu_s_by_node
            .iter()
            .map(|(_, s)| *s)
            .fold(0.0f64, f64::max);
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {:.1} | {:.0} | {} | {} | {} | {:.1} | {:.2} | {:.2} |",
            r.cell.variant.name(),
            r.cell.mode.name(),
            r.cell.nodes,
            r.cell.clients,
            r.cell.messages,
            r.us_per_message,
            r.messages_per_s,
            r.latency.p50_us,
            r.latency.p99_us,
            r.latency.max_us,
            r.messages_per_fsync,
            cpu_max,
            r.client_cpu_s,
        );
    }
    out
}

/// Laminar's four published cells (10,000 messages per client), each next to this run's
/// pipelined figure for the same cell if it ran: (label, Laminar µs, weir µs, Laminar / weir).
pub fn laminar_comparison(report: &Report) -> Vec<(String, f64, Option<f64>)> {
    let find = |variant: Variant, nodes: usize, clients: usize| {
        report
            .cells
            .iter()
            .find(|r| {
                r.cell.variant == variant
                    && r.cell.mode == Mode::Pipelined
                    && r.cell.nodes == nodes
                    && r.cell.clients == clients
                    && r.cell.messages == 10_000
            })
            .map(|r| r.us_per_message)
    };
    vec![
        (
            "plain, best (5 clients, 1 node)".to_owned(),
            LAMINAR_PLAIN_US.0,
            find(Variant::Plain, 1, 5),
        ),
        (
            "plain, worst (1 client, 7 nodes)".to_owned(),
            LAMINAR_PLAIN_US.1,
            find(Variant::Plain, 7, 1),
        ),
        (
            "programmable (nothing), best (1 client, 1 node)".to_owned(),
            LAMINAR_PROGRAMMABLE_US.0,
            find(Variant::Nothing, 1, 1),
        ),
        (
            "programmable (nothing), worst (1 client, 7 nodes)".to_owned(),
            LAMINAR_PROGRAMMABLE_US.1,
            find(Variant::Nothing, 7, 1),
        ),
    ]
}

/// The chart: µs/message by node count, one line per (client count) in a panel per
/// (mode, variant), for the largest message count of the run. Log scale.
pub fn write_chart(report: &Report, path: &Path) -> Result<()> {
    use plotters::prelude::*;

    let Some(messages) = report.cells.iter().map(|r| r.cell.messages).max() else {
        bail!("no cells to chart");
    };
    let mut panels: Vec<(Mode, Variant)> = Vec::new();
    for r in &report.cells {
        if !panels.contains(&(r.cell.mode, r.cell.variant)) {
            panels.push((r.cell.mode, r.cell.variant));
        }
    }
    let max_nodes = report.cells.iter().map(|r| r.cell.nodes).max().unwrap_or(1) as u32;
    let ys: Vec<f64> = report
        .cells
        .iter()
        .filter(|r| r.cell.messages == messages)
        .map(|r| r.us_per_message)
        .collect();
    let y_min = ys.iter().copied().fold(f64::MAX, f64::min).max(0.01) / 2.0;
    let y_max = ys.iter().copied().fold(0.0, f64::max).max(y_min * 4.0) * 2.0;

    let columns = panels
        .iter()
        .map(|p| p.1)
        .collect::<std::collections::BTreeSet<_>>()
        .len()
        .max(1);
    let rows = panels.len().div_ceil(columns);
    let width = 420 * columns as u32;
    let height = 320 * rows as u32 + 40;
    let root = SVGBackend::new(path, (width, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let (title, body) = root.split_vertically(40);
    title.titled(
        &format!("weir perf-write: µs per message ({messages} messages per client, fsync always)"),
        ("sans-serif", 18),
    )?;
    let areas = body.split_evenly((rows, columns));
    let colors = [RED, BLUE, GREEN, MAGENTA, CYAN, BLACK];
    for ((mode, variant), area) in panels.iter().zip(areas.iter()) {
        let mut chart = ChartBuilder::on(area)
            .caption(
                format!("{} topic, {}", variant.name(), mode.name()),
                ("sans-serif", 14),
            )
            .margin(8)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d(0u32..max_nodes + 1, (y_min..y_max).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("nodes")
            .y_desc("µs/message")
            .draw()?;
        let mut client_counts: Vec<usize> = report.cells.iter().map(|r| r.cell.clients).collect();
        client_counts.sort_unstable();
        client_counts.dedup();
        for (i, clients) in client_counts.iter().enumerate() {
            let mut points: Vec<(u32, f64)> = report
                .cells
                .iter()
                .filter(|r| {
                    r.cell.mode == *mode
                        && r.cell.variant == *variant
                        && r.cell.clients == *clients
                        && r.cell.messages == messages
                })
                .map(|r| (r.cell.nodes as u32, r.us_per_message))
                .collect();
            points.sort_by_key(|p| p.0);
            let color = colors[i % colors.len()];
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
                .label(format!("{clients} client(s)"))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
            chart.draw_series(points.iter().map(|p| Circle::new(*p, 3, color.filled())))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}
