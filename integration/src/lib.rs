//! Harness for end-to-end tests against real `weir node` processes.
//!
//! The `weir` binary is found next to the test executable (`target/<profile>/weir`). `cargo test
//! --workspace` builds it first because `weir-cli` has integration tests of its own; when running
//! only this package, build it with `cargo build -p weir-cli` or point `WEIR_BIN` at one.

pub mod cluster;
pub mod history;
pub mod perf;
pub mod proxy;
pub mod workload;

pub use proxy::{Faults, UdpProxy};

use anyhow::{Context, Result, bail};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The line `weir node` prints on stdout once it serves: `weir node listening on <addr>`.
pub const READY_PREFIX: &str = "weir node listening on ";
/// How long a node may take to start (recovery included) before a test gives up.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Path of the `weir` binary under test.
pub fn weir_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("WEIR_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    // A test: target/<profile>/deps/<test> → target/<profile>/weir. A binary of this package
    // (perf-write): target/<profile>/perf-write → target/<profile>/weir.
    let beside = exe.parent().context("unexpected executable location")?;
    if beside.join("weir").is_file() {
        return Ok(beside.join("weir"));
    }
    let profile_dir = beside
        .parent()
        .context("unexpected test executable location")?;
    let bin = profile_dir.join("weir");
    if !bin.is_file() {
        bail!(
            "{} not found: run `cargo build -p weir-cli` first, or set WEIR_BIN",
            bin.display()
        );
    }
    Ok(bin)
}

/// A `weir node` child process. Killed when dropped, so a failing test leaves no process behind.
#[derive(Debug)]
pub struct NodeProcess {
    child: Child,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
}

impl NodeProcess {
    /// Starts `weir node --data-dir DIR --listen LISTEN` and waits for its ready line.
    pub async fn start(data_dir: &Path, listen: &str, extra_args: &[&str]) -> Result<Self> {
        let mut child = Command::new(weir_bin()?)
            .arg("node")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--listen")
            .arg(listen)
            .args(extra_args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("spawning weir node")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let addr = tokio::time::timeout(START_TIMEOUT, async {
            while let Some(line) = lines.next_line().await? {
                if let Some(rest) = line.strip_prefix(READY_PREFIX) {
                    let addr = rest.split_whitespace().next().unwrap_or_default();
                    return addr
                        .parse::<SocketAddr>()
                        .with_context(|| format!("bad ready line {line:?}"));
                }
            }
            bail!("weir node exited before it was ready")
        })
        .await
        .context("weir node did not become ready in time")??;
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self {
            child,
            addr,
            data_dir: data_dir.to_path_buf(),
        })
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The cluster CA the node created in its data directory.
    pub fn ca_cert(&self) -> PathBuf {
        self.data_dir.join("certs").join("ca.crt")
    }

    /// A client connected to this node.
    pub async fn client(&self) -> Result<weir_client::Client> {
        let config = weir_client::ClientConfig::new(self.addr, self.ca_cert());
        Ok(weir_client::Client::connect(config).await?)
    }

    /// SIGKILL: no shutdown, no final sync. Waits until the process is gone.
    pub async fn kill9(mut self) -> Result<()> {
        self.child.kill().await?;
        Ok(())
    }

    /// SIGTERM and wait for a clean exit.
    pub async fn stop(mut self) -> Result<()> {
        let pid = self.child.id().context("already exited")?;
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .await?;
        if !status.success() {
            bail!("kill -TERM {pid} failed");
        }
        let exit = tokio::time::timeout(START_TIMEOUT, self.child.wait())
            .await
            .context("weir node did not stop after SIGTERM")??;
        if !exit.success() {
            bail!("weir node exited with {exit}");
        }
        Ok(())
    }
}
