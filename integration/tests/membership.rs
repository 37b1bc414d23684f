//! Nodes join and leave a running cluster through the replicated catalog.

use anyhow::{Context, Result, bail};
use std::time::Duration;
use weir_client::{Client, ClientError, TopicConfig};
use weir_integration::cluster::{LocalCluster, SETTLE_TIMEOUT, free_ports, peer_spec};

/// Polls `check` (bounded) until it holds; the cluster has no event to await from outside.
async fn eventually<F, Fut>(what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + SETTLE_TIMEOUT;
    let mut ticker = tokio::time::interval(Duration::from_millis(50));
    loop {
        ticker.tick().await;
        if check().await.unwrap_or(false) {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{what}: not within {SETTLE_TIMEOUT:?}");
        }
    }
}

async fn metadata_voters(client: &Client) -> Result<Vec<u64>> {
    let status = client.status().await?;
    Ok(status.metadata.context("no metadata status")?.replicas)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_hosts_a_topic_and_leaves_again() -> Result<()> {
    let mut cluster = LocalCluster::start(3, &[]).await?;
    let admin = cluster.client().await?;
    admin.create_topic("before", TopicConfig::default()).await?;
    admin.put("before", None, b"x".to_vec()).await?;

    let port = free_ports(1)?[0];
    let addr4: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let mut all: Vec<(usize, std::net::SocketAddr)> =
        cluster.addrs.iter().copied().enumerate().collect();
    all.push((3, addr4));
    let id = cluster
        .start_extra(addr4, peer_spec(&all), &["--join"])
        .await?;
    assert_eq!(id, 4);
    admin.add_node(4, &addr4.to_string()).await?;

    // Node 4 becomes a voter of the metadata group and learns the whole catalog.
    let node4 = cluster.client_of(4).await?;
    eventually("node 4 learns the catalog", || async {
        let topics = node4.list_topics().await?;
        Ok(topics.iter().any(|t| t.name == "before"))
    })
    .await?;
    let node1 = cluster.client_of(1).await?;
    eventually("node 4 votes in the metadata group", || async {
        Ok(metadata_voters(&node1).await? == vec![1, 2, 3, 4])
    })
    .await?;
    assert_eq!(admin.cluster().await?.nodes.len(), 4);

    // New topics can be placed on it: four replicas need all four nodes.
    let four = TopicConfig {
        replicas: Some(4),
        ..TopicConfig::default()
    };
    admin.create_topic("after", four).await?;
    let info = admin.cluster().await?;
    let after = info
        .topics
        .iter()
        .find(|t| t.name == "after")
        .context("after")?;
    assert!(after.replicas.contains(&4), "{:?}", after.replicas);
    let c = admin.put("after", None, b"on four nodes".to_vec()).await?;
    // Node 4 holds a replica and serves listeners from it.
    let mut listener = node4
        .listen("after", weir_client::ListenFrom::Start)
        .await?;
    let event = tokio::time::timeout(SETTLE_TIMEOUT, listener.next())
        .await
        .context("node 4 delivered nothing")?
        .context("listener ended")??;
    assert_eq!(
        (event.offset, event.value),
        (c.offset, b"on four nodes".to_vec())
    );
    drop(listener);

    // A node that holds replicas cannot leave; once they are gone, it can.
    let err = admin.remove_node(4).await.unwrap_err();
    assert!(
        matches!(&err, ClientError::InvalidArgument(m) if m.contains("after")),
        "{err}"
    );
    admin.delete_topic("after").await?;
    admin.remove_node(4).await?;
    eventually("node 4 leaves the metadata group", || async {
        Ok(metadata_voters(&node1).await? == vec![1, 2, 3])
    })
    .await?;
    assert_eq!(admin.cluster().await?.nodes.len(), 3);
    // The others carry on.
    admin.put("before", None, b"y".to_vec()).await?;
    let err = admin.add_node(5, "not an address").await.unwrap_err();
    assert!(matches!(err, ClientError::InvalidArgument(_)), "{err}");
    Ok(())
}
