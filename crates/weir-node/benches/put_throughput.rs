//! PUT throughput of one node with `fsync = "always"`: 1 and 8 clients (one connection each),
//! pipelined and one-at-a-time, showing group commit at work (messages per fsync).
//!
//! `cargo bench -p weir-node --bench put_throughput [-- --messages N --window W --fsync POLICY]`
//!
//! `--fsync never` shows what the path costs without the disk (for comparison only: weir's
//! default and the figures that count are `always`).
//!
//! Prints a table and a bar chart. Timings come from this machine as it is (shared, noisy):
//! compare cells of one run with each other, not runs on different days.

use std::time::{Duration, Instant};
use weir_client::{Client, ClientConfig};
use weir_node::{FsyncPolicy, Node, NodeConfig};
use weir_proto::TopicConfig;

struct Cell {
    clients: usize,
    window: usize,
    messages: usize,
    elapsed: Duration,
    fsyncs: u64,
}

impl Cell {
    fn msgs_per_s(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64()
    }
    fn us_per_msg(&self) -> f64 {
        self.elapsed.as_secs_f64() * 1e6 / self.messages as f64
    }
    fn msgs_per_fsync(&self) -> f64 {
        self.messages as f64 / self.fsyncs.max(1) as f64
    }
}

fn arg<T: std::str::FromStr>(name: &str, default: T) -> T {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn run_cell(
    clients: usize,
    window: usize,
    per_client: usize,
    fsync: FsyncPolicy,
) -> anyhow::Result<Cell> {
    let dir = tempfile::tempdir()?;
    let mut config = NodeConfig::new(dir.path());
    config.listen = "127.0.0.1:0".parse()?;
    config.fsync = fsync;
    let node = Node::start(config).await?;
    let client_config = ClientConfig::new(node.local_addr(), node.certs().ca_cert.clone());
    let admin = Client::connect(client_config.clone()).await?;
    admin.create_topic("bench", TopicConfig::default()).await?;
    let mut connected = Vec::new();
    for _ in 0..clients {
        connected.push(Client::connect(client_config.clone()).await?);
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for client in connected {
        tasks.push(tokio::spawn(async move {
            let mut producer = client.producer("bench", window)?;
            let mut handles = Vec::with_capacity(per_client);
            for i in 0..per_client {
                // Laminar's shape: 4-byte key, 1-byte value.
                let key = (i as u32).to_le_bytes();
                handles.push(producer.send(Some(&key), vec![b'x']).await?);
            }
            for h in handles {
                h.await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let elapsed = started.elapsed();
    let status = admin.status().await?;
    let fsyncs = status.topics.iter().map(|t| t.fsyncs).sum();
    node.shutdown().await;
    Ok(Cell {
        clients,
        window,
        messages: clients * per_client,
        elapsed,
        fsyncs,
    })
}

fn main() -> anyhow::Result<()> {
    let messages = arg("--messages", 40_000usize);
    let window = arg("--window", 1024usize);
    let fsync = arg("--fsync", FsyncPolicy::Always);
    let runtime = tokio::runtime::Runtime::new()?;
    let plan = [(1, 1), (8, 1), (1, window), (8, window)];
    let mut cells = Vec::new();
    for (clients, w) in plan {
        // One-at-a-time cells pay a full fsync round trip per message: fewer messages.
        let total = if w == 1 { messages / 20 } else { messages };
        eprintln!("running {clients} client(s), window {w}, {total} messages ...");
        cells.push(runtime.block_on(run_cell(clients, w, total / clients, fsync))?);
    }

    println!();
    println!("PUT throughput, one node, fsync = {fsync}, key 4 B, value 1 B");
    println!("| clients | window | messages | seconds | msgs/s | µs/msg | fsyncs | msgs/fsync |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for c in &cells {
        println!(
            "| {} | {} | {} | {:.3} | {:.0} | {:.1} | {} | {:.1} |",
            c.clients,
            c.window,
            c.messages,
            c.elapsed.as_secs_f64(),
            c.msgs_per_s(),
            c.us_per_msg(),
            c.fsyncs,
            c.msgs_per_fsync()
        );
    }
    println!();
    println!("msgs/s");
    let max = cells.iter().map(Cell::msgs_per_s).fold(1.0, f64::max);
    for c in &cells {
        let bar = ((c.msgs_per_s() / max) * 50.0).round() as usize;
        println!(
            "{:>2} client(s) window {:>5} | {:<50} {:.0}",
            c.clients,
            c.window,
            "#".repeat(bar.max(1)),
            c.msgs_per_s()
        );
    }
    Ok(())
}
