//! Real `weir node` processes started from one static peer list find each other, and find a
//! restarted one again at once.

use anyhow::{Context, Result, bail};
use std::time::Duration;
use weir_integration::NodeProcess;
use weir_integration::cluster::{LocalCluster, SETTLE_TIMEOUT};
use weir_proto::PeerStatus;

/// Polls node `id`'s status (bounded) until `done` holds for its peer list; returns that list.
/// Peer connections come up in the background and status is the only window on them.
async fn wait_for_peers(
    cluster: &LocalCluster,
    id: u64,
    mut done: impl FnMut(&[PeerStatus]) -> bool,
) -> Result<Vec<PeerStatus>> {
    let client = cluster.client_of(id).await?;
    let mut ticker = tokio::time::interval(Duration::from_millis(50));
    let deadline = tokio::time::Instant::now() + SETTLE_TIMEOUT;
    loop {
        ticker.tick().await;
        let status = client.status().await?;
        assert_eq!(status.node_id, id);
        if done(&status.peers) {
            client.close().await;
            return Ok(status.peers);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("node {id}: peers never got there: {:?}", status.peers);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_from_a_static_peer_list_connect_to_each_other() -> Result<()> {
    let cluster = LocalCluster::start(3, &[]).await?;
    for id in 1..=3 {
        let peers = wait_for_peers(&cluster, id, |peers| peers.iter().all(|p| p.connected)).await?;
        assert_eq!(peers.len(), 2, "each node lists the two others");
    }

    // A node that names itself outside the list refuses to start, with a clear reason.
    let peers = weir_integration::cluster::peer_spec(
        &cluster
            .addrs
            .iter()
            .copied()
            .enumerate()
            .collect::<Vec<_>>(),
    );
    let bad = NodeProcess::start(
        &cluster.base().join("stray"),
        "127.0.0.1:0",
        &["--id", "9", "--peers", &peers],
    )
    .await;
    let err = format!(
        "{:#}",
        bad.err().context("a node outside its peer list started")?
    );
    assert!(err.contains("exited before it was ready"), "{err}");
    Ok(())
}

/// Node 1 dials node 3 (lower ids dial). After `kill -9` and a restart, node 3 has forgotten
/// the connection; because its stateless-reset key is derived from its node key, it answers
/// node 1's next packet (a keep-alive at most a second later) with a reset node 1 recognizes.
/// Node 1 then redials at once, instead of waiting out the 10 s idle timeout: the old
/// connection's end reads "reset", never "timed out".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_restarted_after_kill_9_resets_the_old_connection_and_is_redialed() -> Result<()> {
    let mut cluster = LocalCluster::start(3, &[]).await?;
    let peer3 = |peers: &[PeerStatus]| peers.iter().find(|p| p.node_id == 3).cloned();
    let before = wait_for_peers(&cluster, 1, |peers| {
        peer3(peers).is_some_and(|p| p.connected)
    })
    .await?;
    let connections_before = peer3(&before).map_or(0, |p| p.connections);

    cluster.kill9(3).await?;
    cluster.start_node(3).await?;
    let peers = wait_for_peers(&cluster, 1, |peers| {
        peer3(peers).is_some_and(|p| p.connected && p.connections > connections_before)
    })
    .await?;
    let p3 = peer3(&peers).context("node 1 lists node 3")?;
    let ended = p3
        .last_error
        .context("the first connection's end is recorded")?;
    assert!(
        ended.contains("reset"),
        "the old connection should end by a stateless reset, not {ended:?}"
    );
    Ok(())
}
