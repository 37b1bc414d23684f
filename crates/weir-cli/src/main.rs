//! `weir`: run a node, manage certificates and topics, put and listen, and a self-contained demo.

mod commands;
mod demo;
mod output;

use clap::{Args, Parser, Subcommand};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;
use weir_client::{ListenFrom, Offset};
use weir_node::FsyncPolicy;

/// weir: a replicated message log. Run `weir demo` for a tour.
#[derive(Debug, Parser)]
#[command(name = "weir", version, max_term_width = 100)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

/// Where the node is and how to trust it (for the client commands), and the data directory.
#[derive(Debug, Args)]
struct GlobalArgs {
    /// Node addresses, host:port[,host:port...], tried in order.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "WEIR_CLUSTER",
        default_value = "127.0.0.1:7070"
    )]
    cluster: String,
    /// The cluster CA certificate (PEM) to verify the node with
    /// [default: <data-dir>/certs/ca.crt].
    #[arg(long, global = true, help_heading = "Global options", env = "WEIR_CA")]
    ca: Option<PathBuf>,
    /// The name the node's certificate must be valid for.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "WEIR_SERVER_NAME",
        default_value = "localhost"
    )]
    server_name: String,
    /// The node's data directory [default: ./weir-data].
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "WEIR_DATA_DIR"
    )]
    data_dir: Option<PathBuf>,
}

impl GlobalArgs {
    fn data_dir_or_default(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("weir-data"))
    }

    fn ca_path(&self) -> PathBuf {
        self.ca
            .clone()
            .unwrap_or_else(|| self.data_dir_or_default().join("certs").join("ca.crt"))
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a node until SIGINT or SIGTERM.
    Node(NodeArgs),
    /// Manage the cluster's certificates.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Create, delete and list topics.
    #[command(subcommand)]
    Topic(TopicCommand),
    /// Upgrade or inspect the WebAssembly program of a programmable topic.
    #[command(subcommand)]
    Program(ProgramCommand),
    /// Put one message (VALUE), or one message per line of stdin (pipelined).
    Put(PutArgs),
    /// Print a topic's messages: offset, timestamp_ms, key, value (tab-separated; tabs and
    /// newlines inside keys and values are shown as \t and \n).
    Listen(ListenArgs),
    /// Show the node's version, uptime, fsync mode, peers, the catalog's Raft group, and per
    /// topic: leader, term, commit index, counters and, on the leader, each follower's match
    /// index and lag.
    Status,
    /// Show or change the cluster's membership.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Start a 3-node cluster in one process (in a temporary directory), write and listen to a
    /// replicated topic through a leader failover and the old leader's catch-up, and clean up.
    Demo,
}

#[derive(Debug, Args)]
struct NodeArgs {
    /// This node's id in the cluster [default: 1, or the config file's].
    #[arg(long)]
    id: Option<u64>,
    /// Every member of the cluster as ID=ADDRESS, this node included, e.g.
    /// 1=10.0.0.1:7070,2=10.0.0.2:7070,3=10.0.0.3:7070. All nodes need certificates from one
    /// CA (copy the certs directory of one `weir certs init` to every node).
    #[arg(long, value_parser = parse_peers)]
    peers: Option<std::collections::BTreeMap<weir_node::NodeId, std::net::SocketAddr>>,
    /// A cluster name every node checks when peers connect.
    #[arg(long)]
    cluster_id: Option<String>,
    /// Address to serve on [default: 127.0.0.1:7070, or the config file's].
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// A weir.toml with node settings; flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// When to fsync: always, interval:<ms> or never [default: always, or the config file's].
    #[arg(long, value_parser = parse_fsync)]
    fsync: Option<FsyncPolicy>,
    /// Join an existing cluster instead of founding one: the node waits until a member runs
    /// `weir cluster add-node ID ADDRESS` for it. --peers must name this node and at least one
    /// member.
    #[arg(long)]
    join: bool,
}

#[derive(Debug, Subcommand)]
enum CertsCommand {
    /// Create a cluster CA with a node and a client certificate.
    Init {
        /// Directory for the files [default: <data-dir>/certs].
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Another name or IP the node certificate is valid for (besides localhost, 127.0.0.1
        /// and ::1); repeatable.
        #[arg(long = "host", value_name = "NAME")]
        hosts: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// List the members, the catalog leader and every topic's replicas and leader.
    Show,
    /// Add a node (started with `weir node --join --id ID ...`) to the cluster.
    AddNode {
        /// The new node's id (unused in this cluster).
        id: u64,
        /// The new node's address (ip:port), as other nodes and clients reach it.
        address: std::net::SocketAddr,
    },
    /// Remove a node from the cluster (it must hold no topic replicas).
    RemoveNode {
        /// The node to remove.
        id: u64,
    },
}

#[derive(Debug, Subcommand)]
enum TopicCommand {
    /// Create a topic.
    Create {
        /// 1 to 249 characters of [A-Za-z0-9._-].
        name: String,
        /// Delete the oldest segments while the topic holds more than this many bytes.
        #[arg(long)]
        retention_bytes: Option<u64>,
        /// Delete segments whose newest message is older than this many milliseconds.
        #[arg(long)]
        retention_ms: Option<u64>,
        /// Start a new segment file at this size.
        #[arg(long)]
        segment_bytes: Option<u64>,
        /// How many nodes keep a copy [default: 3, or the cluster size if smaller].
        #[arg(long)]
        replicas: Option<u32>,
        /// Make the topic programmable: every message goes through this WebAssembly program
        /// (a .wasm built with weir-topic-sdk, see docs/PROGRAMS.md), whose events listeners read.
        #[arg(long, value_name = "FILE.wasm")]
        program: Option<std::path::PathBuf>,
        /// A K=V setting for the program (repeatable).
        #[arg(long = "config", value_name = "K=V", value_parser = parse_key_value, requires = "program")]
        program_config: Vec<(String, String)>,
    },
    /// Delete a topic and its messages.
    Delete {
        /// The topic to delete.
        name: String,
    },
    /// List the topics.
    List,
}

#[derive(Debug, Subcommand)]
enum ProgramCommand {
    /// Upgrade a programmable topic's program. Every replica switches at the same offset of
    /// the topic's log; the new program receives the previous one's state.
    Deploy {
        /// The programmable topic.
        name: String,
        /// The new program (.wasm).
        file: std::path::PathBuf,
        /// A K=V setting for the program (repeatable).
        #[arg(long = "config", value_name = "K=V", value_parser = parse_key_value)]
        config: Vec<(String, String)>,
        /// Start the new program with an empty state.
        #[arg(long)]
        reset_state: bool,
    },
    /// Show the program: hash, version, offsets, last snapshot, state hash.
    Show {
        /// The programmable topic.
        name: String,
    },
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected K=V, got {s:?}")),
    }
}

#[derive(Debug, Args)]
struct PutArgs {
    /// The topic to write to.
    topic: String,
    /// The message's key (for every line when reading stdin).
    #[arg(long)]
    key: Option<String>,
    /// The message; without it, every line of stdin is one message.
    value: Option<String>,
    /// PUTs in flight at once when reading stdin.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=8192))]
    window: u32,
}

#[derive(Debug, Args)]
struct ListenArgs {
    /// The topic to read.
    topic: String,
    /// Where to start: start, end or an offset.
    #[arg(long, default_value = "end", value_parser = parse_from)]
    from: ListenFrom,
    /// Exit after this many messages (otherwise follow the topic until interrupted).
    #[arg(long)]
    count: Option<u64>,
}

fn parse_peers(
    s: &str,
) -> Result<std::collections::BTreeMap<weir_node::NodeId, std::net::SocketAddr>, String> {
    weir_node::config::parse_peers(s)
}

fn parse_fsync(s: &str) -> Result<FsyncPolicy, String> {
    s.parse()
        .map_err(|e: weir_storage::ParseFsyncPolicyError| e.to_string())
}

fn parse_from(s: &str) -> Result<ListenFrom, String> {
    match s {
        "start" => Ok(ListenFrom::Start),
        "end" => Ok(ListenFrom::End),
        n => n
            .parse::<u64>()
            .map(|n| ListenFrom::Offset(Offset(n)))
            .map_err(|_| format!("expected start, end or an offset, got {n:?}")),
    }
}

fn init_tracing(default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(match cli.command {
        // The demo's own output tells the story; node logs would interleave with it.
        Command::Demo => "warn",
        _ => "warn,weir=info,weir_cli=info,weir_node=info,weir_client=info,weir_storage=info",
    });
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if output::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let g = &cli.global;
    match cli.command {
        Command::Node(args) => commands::node(g, args).await,
        Command::Certs(CertsCommand::Init { dir, hosts }) => {
            let dir = dir.unwrap_or_else(|| g.data_dir_or_default().join("certs"));
            commands::certs_init(&dir, &hosts)
        }
        Command::Topic(cmd) => commands::topic(g, cmd).await,
        Command::Program(cmd) => commands::program(g, cmd).await,
        Command::Put(args) => commands::put(g, args).await,
        Command::Listen(args) => commands::listen(g, args).await,
        Command::Status => commands::status(g).await,
        Command::Cluster(cmd) => commands::cluster(g, cmd).await,
        Command::Demo => demo::run().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn listen_from_parses_start_end_and_offsets() {
        assert_eq!(parse_from("start"), Ok(ListenFrom::Start));
        assert_eq!(parse_from("end"), Ok(ListenFrom::End));
        assert_eq!(parse_from("42"), Ok(ListenFrom::Offset(Offset(42))));
        assert!(parse_from("-1").is_err());
        assert!(parse_from("beginning").is_err());
    }

    #[test]
    fn ca_defaults_to_the_data_dir_certs() {
        let cli = Cli::try_parse_from(["weir", "--data-dir", "/d", "status"]).unwrap();
        assert_eq!(cli.global.ca_path(), PathBuf::from("/d/certs/ca.crt"));
        let cli = Cli::try_parse_from(["weir", "status", "--ca", "/x/ca.crt"]).unwrap();
        assert_eq!(cli.global.ca_path(), PathBuf::from("/x/ca.crt"));
    }

    #[test]
    fn fsync_flag_accepts_the_three_policies() {
        for ok in ["always", "never", "interval:100"] {
            assert!(parse_fsync(ok).is_ok(), "{ok}");
        }
        assert!(parse_fsync("sometimes").is_err());
    }
}
