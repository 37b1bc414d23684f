//! Real `weir node` processes started from one static peer list find each other.

use anyhow::{Context, Result, bail};
use std::path::Path;
use std::time::Duration;
use weir_integration::{NodeProcess, weir_bin};

const WAIT: Duration = Duration::from_secs(60);

/// Free loopback UDP ports, reserved together so they differ, released before the nodes bind.
fn free_ports(n: usize) -> Result<Vec<u16>> {
    let sockets: Vec<std::net::UdpSocket> = (0..n)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0"))
        .collect::<std::io::Result<_>>()?;
    sockets.iter().map(|s| Ok(s.local_addr()?.port())).collect()
}

/// One CA for the whole cluster: `weir certs init` once, copied into every node's data dir.
fn shared_certs(base: &Path, nodes: usize) -> Result<Vec<std::path::PathBuf>> {
    let certs = base.join("certs");
    let status = std::process::Command::new(weir_bin()?)
        .args(["certs", "init", "--dir"])
        .arg(&certs)
        .status()?;
    if !status.success() {
        bail!("weir certs init failed");
    }
    let mut dirs = Vec::new();
    for i in 1..=nodes {
        let dir = base.join(format!("node{i}"));
        std::fs::create_dir_all(dir.join("certs"))?;
        for f in std::fs::read_dir(&certs)? {
            let f = f?;
            std::fs::copy(f.path(), dir.join("certs").join(f.file_name()))?;
        }
        dirs.push(dir);
    }
    Ok(dirs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_from_a_static_peer_list_connect_to_each_other() -> Result<()> {
    let base = tempfile::tempdir()?;
    let dirs = shared_certs(base.path(), 3)?;
    let ports = free_ports(3)?;
    let peers = ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let mut nodes = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let id = (i + 1).to_string();
        let listen = format!("127.0.0.1:{}", ports[i]);
        nodes.push(NodeProcess::start(dir, &listen, &["--id", &id, "--peers", &peers]).await?);
    }

    // Peer connections come up in the background; status is the only window on them, so poll
    // it (bounded) until every node sees both others connected.
    for (i, node) in nodes.iter().enumerate() {
        let client = node.client().await?;
        let mut ticker = tokio::time::interval(Duration::from_millis(50));
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            ticker.tick().await;
            let status = client.status().await?;
            assert_eq!(status.node_id, i as u64 + 1);
            assert_eq!(status.peers.len(), 2, "each node lists the two others");
            if status.peers.iter().all(|p| p.connected) {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "node {} never saw all peers connected: {:?}",
                    i + 1,
                    status.peers
                );
            }
        }
    }

    // A node that names itself outside the list refuses to start, with a clear reason.
    let bad = NodeProcess::start(
        &base.path().join("stray"),
        "127.0.0.1:0",
        &["--id", "9", "--peers", &peers],
    )
    .await;
    let err = format!(
        "{:#}",
        bad.err().context("a node outside its peer list started")?
    );
    assert!(err.contains("exited before it was ready"), "{err}");

    for node in nodes {
        node.stop().await?;
    }
    Ok(())
}
