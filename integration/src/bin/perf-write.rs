//! `perf-write`: Laminar's write performance test against real `weir node` processes.
//!
//! `cargo run --release -p weir-integration --bin perf-write` runs Laminar's matrix and writes
//! a table (stdout and `<out>/perf-write.md`), every figure as JSON (`<out>/perf-write.json`)
//! and a chart (`<out>/perf-write.svg`). See docs/BENCHMARKS.md.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use weir_integration::perf::{self, Mode, Options, Variant};

/// Laminar's write test on weir: clients PUT to one topic replicated on every node of a local
/// cluster of real `weir node` processes (fsync always); the figure is wall time per message.
/// Every cell is verified (each acknowledged PUT read back exactly once, in order) and fails
/// loudly otherwise.
#[derive(Debug, Parser)]
#[command(name = "perf-write", version)]
struct Args {
    /// Cluster sizes (every node is a replica of the topic).
    #[arg(long, value_delimiter = ',', default_value = "1,3,5,7")]
    nodes: Vec<usize>,
    /// Client counts (each client is its own connection).
    #[arg(long, value_delimiter = ',', default_value = "1,3,5")]
    clients: Vec<usize>,
    /// Messages per client.
    #[arg(long, value_delimiter = ',', default_value = "100,1000,10000")]
    messages: Vec<usize>,
    /// Topic variants: plain, nothing (do-nothing program), counter.
    #[arg(long, value_delimiter = ',', default_value = "plain,nothing,counter")]
    variants: Vec<Variant>,
    /// Client modes: pipelined (send all, then wait; Laminar's), sync (wait for each commit).
    #[arg(long, value_delimiter = ',', default_value = "pipelined,sync")]
    modes: Vec<Mode>,
    /// PUTs a pipelined client keeps in flight (default: all of them, as Laminar).
    #[arg(long)]
    window: Option<usize>,
    /// Key size in bytes (the client's index, big-endian).
    #[arg(long, default_value_t = 4)]
    key_bytes: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 1)]
    value_bytes: usize,
    /// A correctness check: 1 and 3 nodes, 1 and 3 clients, 100 messages, every variant and
    /// both modes (overrides the matrix flags). Timings of a quick run mean nothing.
    #[arg(long)]
    quick: bool,
    /// Directory for perf-write.{md,json,svg}.
    #[arg(long, default_value = "target/perf-write")]
    out: PathBuf,
}

impl Args {
    fn options(&self) -> Options {
        if self.quick {
            return Options {
                key_bytes: self.key_bytes,
                value_bytes: self.value_bytes,
                window: self.window,
                ..Options::quick()
            };
        }
        Options {
            nodes: self.nodes.clone(),
            clients: self.clients.clone(),
            messages: self.messages.clone(),
            variants: self.variants.clone(),
            modes: self.modes.clone(),
            window: self.window,
            key_bytes: self.key_bytes,
            value_bytes: self.value_bytes,
        }
    }
}

/// Under `cargo run`, builds the `weir` binary of the same profile first (the nodes run it),
/// so one command measures the current source.
fn build_weir() -> Result<()> {
    if std::env::var_os("WEIR_BIN").is_some() {
        return Ok(());
    }
    let Some(cargo) = std::env::var_os("CARGO") else {
        return Ok(());
    };
    let mut command = std::process::Command::new(cargo);
    command.args(["build", "-p", "weir-cli"]);
    if !cfg!(debug_assertions) {
        command.arg("--release");
    }
    let status = command
        .status()
        .context("running cargo build -p weir-cli")?;
    anyhow::ensure!(status.success(), "cargo build -p weir-cli failed");
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let options = args.options();
    options.validate()?;
    build_weir()?;
    if cfg!(debug_assertions) && !args.quick {
        eprintln!("note: a debug build; measure with `cargo run --release ...`");
    }

    let cells = options.cells();
    let bar = indicatif::ProgressBar::new(cells.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} cells  {msg}",
        )
        .context("progress template")?
        .progress_chars("=> "),
    );
    let started = Instant::now();
    let total = cells.len();
    let report = perf::run(&options, |done, cell| {
        // Not a terminal (CI, a log file): one line per cell instead of the bar.
        if bar.is_hidden() {
            if let Some(cell) = cell {
                eprintln!("[{}/{total}] {:.0?} {cell}", done + 1, started.elapsed());
            }
            return;
        }
        bar.set_position(done as u64);
        match cell {
            Some(cell) => bar.set_message(cell.to_string()),
            None => bar.finish_with_message("done"),
        }
    })
    .await;
    let (report, failure) = match report {
        Ok(report) => (report, None),
        Err(failed) => {
            bar.abandon_with_message("FAILED");
            (failed.report, Some(failed.error))
        }
    };

    let table = perf::table(&report);
    let mut markdown = table.clone();
    markdown.push_str("\n| Laminar cell (10,000 msgs/client) | Laminar µs/msg | weir µs/msg (pipelined) | Laminar / weir |\n|---|---:|---:|---:|\n");
    for (label, laminar, weir) in perf::laminar_comparison(&report) {
        match weir {
            Some(weir) => markdown.push_str(&format!(
                "| {label} | {laminar:.0} | {weir:.1} | {:.0}x |\n",
                laminar / weir
            )),
            None => markdown.push_str(&format!("| {label} | {laminar:.0} | not run | |\n")),
        }
    }
    println!("{markdown}");
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let md = args.out.join("perf-write.md");
    let json = args.out.join("perf-write.json");
    let svg = args.out.join("perf-write.svg");
    std::fs::write(&md, &markdown).with_context(|| format!("writing {}", md.display()))?;
    std::fs::write(&json, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", json.display()))?;
    if report.cells.is_empty() {
        return Err(failure.unwrap_or_else(|| anyhow::anyhow!("no cells ran")));
    }
    perf::write_chart(&report, &svg)?;
    if let Some(error) = failure {
        eprintln!(
            "wrote the {} cells done before the failure to {}",
            report.cells.len(),
            args.out.display()
        );
        return Err(error);
    }
    eprintln!(
        "{} cells verified in {:.0?}; wrote {}, {} and {}",
        report.cells.len(),
        started.elapsed(),
        md.display(),
        json.display(),
        svg.display()
    );
    Ok(())
}
