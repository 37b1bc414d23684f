//! The subcommands other than `demo`.

use crate::output::{self, print_line, table, thousands};
use crate::{
    ClusterCommand, GlobalArgs, ListenArgs, NodeArgs, ProgramCommand, PutArgs, TopicCommand,
};
use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;
use weir_client::{
    Client, ClientConfig, ClientError, Committed, Offset, ProgramOutcome, ProgramSpec, PutHandle,
    TopicConfig,
};
use weir_node::{Node, NodeConfig};

/// Prefix of the line `weir node` prints on stdout once it serves (tests wait for it).
pub const READY_PREFIX: &str = "weir node listening on ";

pub async fn node(g: &GlobalArgs, args: NodeArgs) -> Result<()> {
    let mut config = match &args.config {
        Some(path) => NodeConfig::from_toml_file(path)?,
        None => NodeConfig::new(g.data_dir_or_default()),
    };
    if let Some(dir) = &g.data_dir {
        config.data_dir = dir.clone();
    }
    if let Some(id) = args.id {
        config.node_id = weir_node::NodeId(id);
    }
    if let Some(peers) = args.peers {
        config.peers = peers;
    }
    if let Some(cluster_id) = args.cluster_id {
        config.cluster_id = Some(cluster_id);
    }
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(fsync) = args.fsync {
        config.fsync = fsync;
    }
    if args.join {
        config.join = true;
    }
    let data_dir = config.data_dir.clone();
    let node = Node::start(config)
        .await
        .with_context(|| format!("cannot start a node on {}", data_dir.display()))?;
    print_line(&format!("{READY_PREFIX}{}", node.local_addr()))?;
    print_line(&format!(
        "CA certificate: {}",
        node.certs().ca_cert.display()
    ))?;
    wait_for_shutdown_signal().await?;
    tracing::info!("shutting down");
    node.shutdown().await;
    Ok(())
}

#[cfg(unix)]
async fn wait_for_shutdown_signal() -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    Ok(())
}

#[cfg(not(unix))]
async fn wait_for_shutdown_signal() -> Result<()> {
    tokio::signal::ctrl_c()
        .await
        .context("cannot watch Ctrl-C")?;
    Ok(())
}

pub fn certs_init(dir: &Path, hosts: &[String]) -> Result<()> {
    let paths = weir_node::certs::init(dir, hosts)?;
    println!("created certificates in {}", paths.dir.display());
    for (what, path) in [
        ("CA certificate", &paths.ca_cert),
        ("CA key", &paths.ca_key),
        ("node certificate", &paths.node_cert),
        ("node key", &paths.node_key),
        ("client certificate", &paths.client_cert),
        ("client key", &paths.client_key),
    ] {
        println!("  {what:<19} {}", path.display());
    }
    println!("clients verify nodes with the CA certificate (--ca or WEIR_CA); keep ca.key private");
    Ok(())
}

pub async fn connect(g: &GlobalArgs) -> Result<Client> {
    let ca = g.ca_path();
    let mut config = ClientConfig::from_cluster(&g.cluster, &ca).await?;
    config.server_name = g.server_name.clone();
    match Client::connect(config).await {
        Ok(client) => Ok(client),
        Err(e @ ClientError::Config(_)) => Err(e).context(format!(
            "cannot set up TLS with CA {} (use --ca or WEIR_CA)",
            ca.display()
        )),
        Err(e) => Err(e).context(format!(
            "cannot reach a weir node at {} (is `weir node` running? see --cluster / WEIR_CLUSTER)",
            g.cluster
        )),
    }
}

pub async fn topic(g: &GlobalArgs, cmd: TopicCommand) -> Result<()> {
    let client = connect(g).await?;
    match cmd {
        TopicCommand::Create {
            name,
            retention_bytes,
            retention_ms,
            segment_bytes,
            replicas,
            program,
            program_config,
        } => {
            let program = match program {
                Some(path) => Some(read_program(&path, program_config)?),
                None => None,
            };
            let programmable = program.is_some();
            let config = TopicConfig {
                retention_bytes,
                retention_ms,
                segment_bytes,
                replicas,
                program,
            };
            client.create_topic(&name, config).await?;
            if programmable {
                println!("created programmable topic {name}");
            } else {
                println!("created topic {name}");
            }
        }
        TopicCommand::Delete { name } => {
            client.delete_topic(&name).await?;
            println!("deleted topic {name}");
        }
        TopicCommand::List => {
            let mut topics = client.list_topics().await?;
            topics.sort_by(|a, b| a.name.cmp(&b.name));
            if topics.is_empty() {
                println!("no topics (create one with `weir topic create NAME`)");
            } else {
                print!("{}", topics_table(&topics));
            }
        }
    }
    client.close().await;
    Ok(())
}

pub fn topics_table(topics: &[weir_client::TopicInfo]) -> String {
    let rows: Vec<Vec<String>> = topics
        .iter()
        .map(|t| {
            vec![
                t.name.clone(),
                t.start_offset.to_string(),
                t.next_offset.to_string(),
                output::or_dash(t.config.retention_bytes),
                output::or_dash(t.config.retention_ms),
                output::or_dash(t.config.segment_bytes),
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "START",
            "NEXT",
            "RETENTION_BYTES",
            "RETENTION_MS",
            "SEGMENT_BYTES",
        ],
        &rows,
    )
}

/// Reads a .wasm file into a program spec (the node validates it).
fn read_program(path: &std::path::Path, config: Vec<(String, String)>) -> Result<ProgramSpec> {
    let module =
        std::fs::read(path).with_context(|| format!("reading the program {}", path.display()))?;
    Ok(ProgramSpec { module, config })
}

pub async fn program(g: &GlobalArgs, cmd: ProgramCommand) -> Result<()> {
    let client = connect(g).await?;
    match cmd {
        ProgramCommand::Deploy {
            name,
            file,
            config,
            reset_state,
        } => {
            let spec = read_program(&file, config)?;
            let at = client.deploy_program(&name, spec, reset_state).await?;
            println!(
                "deployed {} to {name}: in effect from input offset {at}",
                file.display()
            );
        }
        ProgramCommand::Show { name } => {
            let p = client.program(&name).await?;
            let or_dash = |o: Option<Offset>| o.map_or("-".to_owned(), |o| o.to_string());
            println!("topic            {}", p.topic);
            println!("version          {}", p.version);
            println!("module sha256    {}", p.module_hash);
            let config: Vec<String> = p.config.iter().map(|(k, v)| format!("{k}={v}")).collect();
            println!(
                "config           {}",
                if config.is_empty() {
                    "-".into()
                } else {
                    config.join(" ")
                }
            );
            println!("deployed at      {}", or_dash(p.deployed_at_offset));
            println!("applied through  {}", or_dash(p.applied_offset));
            println!(
                "events           {}..{}",
                p.first_event_offset, p.next_event_offset
            );
            println!("last snapshot    {}", or_dash(p.snapshot_offset));
            println!("state sha256     {}", p.state_hash);
            println!(
                "inputs           {} accepted, {} rejected",
                thousands(p.inputs_accepted),
                thousands(p.inputs_rejected)
            );
            if let Some(failure) = p.failure {
                println!("FAILED           {failure}");
            }
        }
    }
    client.close().await;
    Ok(())
}

pub async fn put(g: &GlobalArgs, args: PutArgs) -> Result<()> {
    let client = connect(g).await?;
    let key = args.key.as_deref().map(str::as_bytes);
    match args.value {
        Some(value) => {
            let c = client.put(&args.topic, key, value).await?;
            match c.program {
                Some(ProgramOutcome::Accepted {
                    first_event,
                    events,
                }) => println!(
                    "offset={} timestamp_ms={} events={events} first_event={first_event}",
                    c.offset, c.timestamp_ms
                ),
                _ => println!("offset={} timestamp_ms={}", c.offset, c.timestamp_ms),
            }
        }
        None => {
            if std::io::stdin().is_terminal() {
                eprintln!("reading messages from stdin, one per line (end with Ctrl-D)");
            }
            let progress = spinner("put");
            let started = Instant::now();
            let lines = tokio::io::BufReader::new(tokio::io::stdin()).split(b'\n');
            let result = put_stream(&client, &args.topic, key, args.window, lines, &progress).await;
            progress.finish_and_clear();
            let summary = result?;
            match (summary.first, summary.last) {
                (Some(first), Some(last)) => println!(
                    "put {} messages to {} in {:.2?} ({} msg/s): offsets {}..={}",
                    thousands(summary.count),
                    args.topic,
                    started.elapsed(),
                    output::rate(summary.count, started.elapsed()),
                    first.offset,
                    last.offset
                ),
                _ => println!("no input lines; nothing put"),
            }
        }
    }
    client.close().await;
    Ok(())
}

/// A spinner with a counter on stderr, only when stderr is a terminal.
pub fn spinner(what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template("{spinner} {msg} {human_pos} committed ({per_sec})")
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    bar.set_style(style);
    bar.set_message(what.to_owned());
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

#[derive(Debug, Default)]
pub struct PutSummary {
    pub count: u64,
    pub first: Option<Committed>,
    pub last: Option<Committed>,
}

/// Pipelines one PUT per line through a producer with `window` in flight; a separate task
/// awaits the acknowledgements in order. Stops at the first failed PUT.
async fn put_stream<R>(
    client: &Client,
    topic: &str,
    key: Option<&[u8]>,
    window: u32,
    mut lines: tokio::io::Split<R>,
    progress: &ProgressBar,
) -> Result<PutSummary>
where
    R: tokio::io::AsyncBufRead + Unpin,
{
    let window = window as usize;
    let mut producer = client.producer(topic, window)?;
    let (tx, mut rx) = mpsc::channel::<PutHandle>(window);
    let bar = progress.clone();
    let collector = tokio::spawn(async move {
        let mut summary = PutSummary::default();
        while let Some(handle) = rx.recv().await {
            let c = handle.await?;
            summary.first.get_or_insert_with(|| c.clone());
            summary.last = Some(c);
            summary.count += 1;
            bar.inc(1);
        }
        Ok::<_, ClientError>(summary)
    });
    let mut sent = 0u64;
    let send_result: Result<()> = async {
        while let Some(mut line) = lines.next_segment().await.context("reading stdin")? {
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let handle = producer
                .send(key, line)
                .await
                .with_context(|| format!("message {} (line {})", sent, sent + 1))?;
            sent += 1;
            if tx.send(handle).await.is_err() {
                break; // the collector stopped at a failed PUT: it reports why
            }
        }
        Ok(())
    }
    .await;
    drop(tx);
    let collected = collector.await.context("acknowledgement task failed")?;
    let summary = collected.context("a PUT failed")?;
    send_result?;
    Ok(summary)
}

pub async fn listen(g: &GlobalArgs, args: ListenArgs) -> Result<()> {
    if args.count == Some(0) {
        return Ok(());
    }
    let client = connect(g).await?;
    let mut listener = client.listen(&args.topic, args.from).await?;
    let mut out = std::io::BufWriter::new(std::io::stdout());
    let mut seen = 0u64;
    while let Some(event) = listener.next().await {
        writeln!(out, "{}", output::event_line(&event?))?;
        seen += 1;
        if args.count.is_some_and(|n| seen >= n) {
            break;
        }
        // Show what arrived before waiting for more.
        if listener.buffered() == 0 {
            out.flush()?;
        }
    }
    out.flush()?;
    if args.count.is_some_and(|n| seen < n) {
        bail!("the listener ended after {seen} messages");
    }
    drop(listener);
    client.close().await;
    Ok(())
}

pub async fn status(g: &GlobalArgs) -> Result<()> {
    let client = connect(g).await?;
    let status = client.status().await?;
    println!(
        "weir node {} (id {}) at {}: up {}, fsync {}",
        status.server_version,
        status.node_id,
        g.cluster,
        output::uptime(status.uptime_ms),
        status.fsync
    );
    if !status.peers.is_empty() {
        let rows: Vec<Vec<String>> = status
            .peers
            .iter()
            .map(|p| {
                vec![
                    p.node_id.to_string(),
                    p.addr.clone(),
                    if p.connected { "yes" } else { "no" }.to_string(),
                    p.connections.to_string(),
                    p.messages_sent.to_string(),
                    p.messages_received.to_string(),
                    p.messages_dropped.to_string(),
                    p.last_error.clone().unwrap_or_else(|| "-".into()),
                ]
            })
            .collect();
        print!(
            "{}",
            table(
                &[
                    "PEER",
                    "ADDRESS",
                    "CONNECTED",
                    "CONNECTIONS",
                    "SENT",
                    "RECEIVED",
                    "DROPPED",
                    "LAST_ERROR",
                ],
                &rows,
            )
        );
    }
    if let Some(m) = &status.metadata {
        println!(
            "catalog: {} in term {}, leader {}, commit {}, voters {:?}",
            m.role,
            m.term,
            output::or_dash(m.leader),
            m.commit_index,
            m.replicas
        );
    }
    let mut topics = status.topics;
    topics.sort_by(|a, b| a.name.cmp(&b.name));
    if topics.is_empty() {
        println!("no topics on this node");
    } else {
        print!("{}", topic_status_table(&topics));
        let followers = follower_table(&topics);
        if !followers.is_empty() {
            print!("{followers}");
        }
    }
    client.close().await;
    Ok(())
}

/// One row per topic replica on the node: Raft state and log counters.
pub fn topic_status_table(topics: &[weir_client::TopicStatus]) -> String {
    let rows: Vec<Vec<String>> = topics
        .iter()
        .map(|t| {
            let r = t.raft.as_ref();
            vec![
                t.name.clone(),
                r.map_or("-".into(), |r| r.role.clone()),
                output::or_dash(r.and_then(|r| r.leader)),
                output::or_dash(r.map(|r| r.term)),
                output::or_dash(r.map(|r| r.commit_index)),
                t.start_offset.to_string(),
                t.committed_offset.to_string(),
                t.segments.to_string(),
                t.bytes.to_string(),
                t.fsyncs.to_string(),
                t.appends.to_string(),
                t.failure.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    table(
        &[
            "TOPIC",
            "ROLE",
            "LEADER",
            "TERM",
            "COMMIT_INDEX",
            "START",
            "COMMITTED",
            "SEGMENTS",
            "BYTES",
            "FSYNCS",
            "APPENDS",
            "FAILURE",
        ],
        &rows,
    )
}

/// One topic as each node that hosts it sees it (`(node id, status)` pairs): one row per
/// replica with its Raft state and log counters.
pub fn replica_status_table(replicas: &[(u64, weir_client::TopicStatus)]) -> String {
    let rows: Vec<Vec<String>> = replicas
        .iter()
        .map(|(node, t)| {
            let r = t.raft.as_ref();
            vec![
                node.to_string(),
                r.map_or("-".into(), |r| r.role.clone()),
                output::or_dash(r.and_then(|r| r.leader)),
                output::or_dash(r.map(|r| r.term)),
                output::or_dash(r.map(|r| r.commit_index)),
                t.committed_offset.to_string(),
                t.segments.to_string(),
                t.bytes.to_string(),
                t.fsyncs.to_string(),
                t.appends.to_string(),
            ]
        })
        .collect();
    table(
        &[
            "NODE",
            "ROLE",
            "LEADER",
            "TERM",
            "COMMIT_INDEX",
            "COMMITTED",
            "SEGMENTS",
            "BYTES",
            "FSYNCS",
            "APPENDS",
        ],
        &rows,
    )
}

/// On a leader: each follower's match index and lag (entries it is missing), per topic.
pub fn follower_table(topics: &[weir_client::TopicStatus]) -> String {
    let rows: Vec<Vec<String>> = topics
        .iter()
        .filter_map(|t| t.raft.as_ref().map(|r| (t, r)))
        .flat_map(|(t, r)| {
            r.followers.iter().map(move |f| {
                vec![
                    t.name.clone(),
                    f.node_id.to_string(),
                    f.match_index.to_string(),
                    f.lag.to_string(),
                ]
            })
        })
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    table(&["TOPIC", "FOLLOWER", "MATCH_INDEX", "LAG"], &rows)
}

pub async fn cluster(g: &GlobalArgs, cmd: ClusterCommand) -> Result<()> {
    let client = connect(g).await?;
    match cmd {
        ClusterCommand::Show => {
            let info = client.cluster().await?;
            println!(
                "cluster of {} node(s), catalog leader {} (answered by node {})",
                info.nodes.len(),
                output::or_dash(info.metadata_leader),
                info.node_id
            );
            let rows: Vec<Vec<String>> = info
                .nodes
                .iter()
                .map(|n| vec![n.node_id.to_string(), n.addr.clone()])
                .collect();
            print!("{}", table(&["NODE", "ADDRESS"], &rows));
            let rows: Vec<Vec<String>> = info
                .topics
                .iter()
                .map(|t| {
                    vec![
                        t.name.clone(),
                        t.group.to_string(),
                        t.replicas
                            .iter()
                            .map(u64::to_string)
                            .collect::<Vec<_>>()
                            .join(","),
                        output::or_dash(t.leader),
                    ]
                })
                .collect();
            if !rows.is_empty() {
                print!(
                    "{}",
                    table(&["TOPIC", "GROUP", "REPLICAS", "LEADER"], &rows)
                );
            }
        }
        ClusterCommand::AddNode { id, address } => {
            client.add_node(id, &address.to_string()).await?;
            println!("added node {id} at {address}");
        }
        ClusterCommand::RemoveNode { id } => {
            client.remove_node(id).await?;
            println!("removed node {id}");
        }
    }
    client.close().await;
    Ok(())
}
