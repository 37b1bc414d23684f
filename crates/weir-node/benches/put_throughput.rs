//! PUT throughput of one node with `fsync = "always"`: 1 and 8 clients (one connection each),
//! pipelined and one-at-a-time, showing group commit at work (messages per fsync).
//!
//! `cargo bench -p weir-node --bench put_throughput [-- --messages N --window W --fsync POLICY
//! --nodes N]`
//!
//! `--nodes 3` runs a 3-node cluster in this process (every node a replica of the topic), so a
//! PUT is acknowledged once fsynced on 2 of 3; fsyncs are counted on the leader.
//!
//! `--fsync never` shows what the path costs without the disk (for comparison only: weir's
//! default and the figures that count are `always`).
//!
//! `--program counter` runs every cell twice, on a plain topic and on a programmable topic
//! running that example program (built from `wasm-examples/`), and adds their ratio: what a
//! program costs per PUT, end to end (the PUT is acknowledged after the program ran on the
//! leader).
//!
//! Prints a table and a bar chart. Timings come from this machine as it is (shared, noisy):
//! compare cells of one run with each other, not runs on different days.

use std::time::{Duration, Instant};
use weir_client::{Client, ClientConfig};
use weir_node::{FsyncPolicy, Node, NodeConfig};
use weir_proto::TopicConfig;

struct Cell {
    program: Option<String>,
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

/// Starts `n` nodes (a cluster when `n > 1`) sharing one CA; returns them and the CA path.
async fn start_nodes(
    dir: &std::path::Path,
    n: usize,
    fsync: FsyncPolicy,
) -> anyhow::Result<(Vec<weir_node::RunningNode>, std::path::PathBuf)> {
    let certs = weir_node::certs::init(&dir.join("certs"), &[])?;
    let sockets: Vec<std::net::UdpSocket> = (0..n)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0"))
        .collect::<std::io::Result<_>>()?;
    let addrs: Vec<std::net::SocketAddr> = sockets
        .iter()
        .map(|s| s.local_addr())
        .collect::<std::io::Result<_>>()?;
    drop(sockets);
    let mut nodes = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let mut config = NodeConfig::new(dir.join(format!("node{}", i + 1)));
        config.listen = *addr;
        config.fsync = fsync;
        config.certs_dir = Some(dir.join("certs"));
        if n > 1 {
            config.node_id = weir_node::NodeId(i as u64 + 1);
            config.peers = addrs
                .iter()
                .enumerate()
                .map(|(j, a)| (weir_node::NodeId(j as u64 + 1), *a))
                .collect();
        }
        nodes.push(Node::start(config).await?);
    }
    Ok((nodes, certs.ca_cert))
}

async fn run_cell(
    nodes: usize,
    clients: usize,
    window: usize,
    per_client: usize,
    fsync: FsyncPolicy,
    program: Option<&str>,
) -> anyhow::Result<Cell> {
    let dir = tempfile::tempdir()?;
    let (running, ca) = start_nodes(dir.path(), nodes, fsync).await?;
    let addrs = running.iter().map(|n| n.local_addr()).collect();
    let client_config = ClientConfig::with_addrs(addrs, ca);
    let admin = Client::connect(client_config.clone()).await?;
    let config = match program {
        Some(name) => TopicConfig {
            program: Some(weir_proto::ProgramSpec {
                module: weir_wasm_examples::module(name)?,
                config: Vec::new(),
            }),
            ..TopicConfig::default()
        },
        None => TopicConfig::default(),
    };
    admin.create_topic("bench", config).await?;
    // Warm-up: the first PUT finds the leader (clients learn it from hints).
    for client in [&admin] {
        client.put("bench", None, vec![b'w']).await?;
    }
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
    // fsyncs of the leader's log (the warm-up PUT included: one more at most).
    let mut fsyncs = 0;
    for (_, status) in admin.statuses().await? {
        let Ok(status) = status else { continue };
        for t in &status.topics {
            if t.raft.as_ref().is_some_and(|r| r.role == "leader") {
                fsyncs = t.fsyncs;
            }
        }
    }
    for node in running {
        node.shutdown().await;
    }
    Ok(Cell {
        program: program.map(str::to_owned),
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
    let nodes = arg("--nodes", 1usize).max(1);
    let program: Option<String> = arg("--program", String::new())
        .parse()
        .ok()
        .filter(|p: &String| !p.is_empty());
    let runtime = tokio::runtime::Runtime::new()?;
    let plan = [(1, 1), (8, 1), (1, window), (8, window)];
    let mut cells = Vec::new();
    for (clients, w) in plan {
        // One-at-a-time cells pay a full fsync round trip per message: fewer messages.
        let total = if w == 1 { messages / 20 } else { messages };
        let kinds: Vec<Option<&str>> = match &program {
            Some(p) => vec![None, Some(p.as_str())],
            None => vec![None],
        };
        for kind in kinds {
            let what = kind.map_or("plain".to_owned(), |p| format!("program {p}"));
            eprintln!("running {what}: {clients} client(s), window {w}, {total} messages ...");
            cells.push(runtime.block_on(run_cell(
                nodes,
                clients,
                w,
                total / clients,
                fsync,
                kind,
            ))?);
        }
    }

    println!();
    println!("PUT throughput, {nodes} node(s), fsync = {fsync}, key 4 B, value 1 B");
    println!(
        "| topic | clients | window | messages | seconds | msgs/s | µs/msg | fsyncs | msgs/fsync | plain / this |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let label = |c: &Cell| c.program.clone().unwrap_or_else(|| "plain".into());
    for c in &cells {
        let plain = cells
            .iter()
            .find(|p| p.program.is_none() && p.clients == c.clients && p.window == c.window)
            .map_or(1.0, Cell::msgs_per_s);
        println!(
            "| {} | {} | {} | {} | {:.3} | {:.0} | {:.1} | {} | {:.1} | {:.2}x |",
            label(c),
            c.clients,
            c.window,
            c.messages,
            c.elapsed.as_secs_f64(),
            c.msgs_per_s(),
            c.us_per_msg(),
            c.fsyncs,
            c.msgs_per_fsync(),
            plain / c.msgs_per_s()
        );
    }
    println!();
    println!("msgs/s");
    let max = cells.iter().map(Cell::msgs_per_s).fold(1.0, f64::max);
    for c in &cells {
        let bar = ((c.msgs_per_s() / max) * 50.0).round() as usize;
        println!(
            "{:>8} {:>2} client(s) window {:>5} | {:<50} {:.0}",
            label(c),
            c.clients,
            c.window,
            "#".repeat(bar.max(1)),
            c.msgs_per_s()
        );
    }
    Ok(())
}
