//! The real `weir` binary: demo, certs, and a `weir node` child process driven by the client
//! subcommands.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const WEIR: &str = env!("CARGO_BIN_EXE_weir");
/// Bound on every wait: generous, since CI machines are shared.
const WAIT: Duration = Duration::from_secs(60);

/// A `weir` command with no environment that could point it elsewhere.
fn weir() -> Command {
    let mut cmd = Command::new(WEIR);
    for var in [
        "WEIR_CLUSTER",
        "WEIR_CA",
        "WEIR_DATA_DIR",
        "WEIR_SERVER_NAME",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("RUST_LOG", "warn");
    cmd
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null());
    let out = cmd.output().expect("run weir");
    eprintln!(
        "$ weir {:?}\n--- stdout\n{}--- stderr\n{}",
        cmd.get_args().collect::<Vec<_>>(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout_of(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(out.status.success(), "weir failed: {}", out.status);
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// Fails with the command's stderr, which is returned.
fn stderr_of_failure(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(!out.status.success(), "weir should have failed");
    String::from_utf8(out.stderr).expect("utf-8 output")
}

#[test]
fn demo_runs_a_three_node_cluster_through_a_leader_failover_without_losing_a_message() {
    let out = stdout_of(weir().arg("demo"));
    for expected in [
        "a 3-node cluster in one process",
        "started node 1 on 127.0.0.1:",
        "started node 2 on 127.0.0.1:",
        "started node 3 on 127.0.0.1:",
        "created topic \"demo\" with 3 replicas (nodes ",
        "key=user-0  value=hello #0  -> offset ",
        "10,000 committed in",
        "fsyncs per message (group commit)",
        "MATCH_INDEX  LAG",
        "the first PUT after the shutdown was acknowledged",
        "999 more committed in",
        "the listener received all 11,010 acknowledged messages exactly once, in offset order",
        "programmable topic \"demo-counts\": the counter example",
        "offset 2  apples = 3",
        "offset 5  plums = 1",
        "every replica computed the same state",
        "stopped nodes 1, 2, 3",
        "demo complete",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    // The leader was stopped, another node took over, and the old leader caught up.
    let after = |prefix: &str| -> &str {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no line starting with {prefix:?} in:\n{out}"))
    };
    let node_id = |rest: &str| -> u64 {
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().expect("a node id")
    };
    let old = node_id(after("failover: stopping node "));
    let new_leader = out
        .lines()
        .find_map(|l| {
            let rest = l.trim().strip_prefix("node ")?;
            rest.contains(" became the leader (term ")
                .then(|| node_id(rest))
        })
        .unwrap_or_else(|| panic!("no 'became the leader' line in:\n{out}"));
    assert_ne!(old, new_leader, "the stopped leader cannot lead:\n{out}");
    let caught_up = format!("node {old} caught up ");
    assert!(
        out.lines()
            .any(|l| l.trim().starts_with(&caught_up) && l.contains("lag 0")),
        "missing {caught_up:?} ... lag 0 in:\n{out}"
    );
    // The temporary directory is gone.
    let removed = after("removed ");
    assert!(!Path::new(removed).exists(), "{removed} still exists");
}

#[test]
fn certs_init_writes_ca_node_and_client_files_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let out = stdout_of(
        weir()
            .args(["certs", "init", "--dir"])
            .arg(&certs)
            .args(["--host", "weir.example"]),
    );
    for file in [
        "ca.crt",
        "ca.key",
        "node.crt",
        "node.key",
        "client.crt",
        "client.key",
    ] {
        let path = certs.join(file);
        assert!(path.is_file(), "{} missing", path.display());
        assert!(out.contains(&path.display().to_string()), "path printed");
    }
    let err = stderr_of_failure(weir().args(["certs", "init", "--dir"]).arg(&certs));
    assert!(err.contains("refusing to overwrite"), "{err}");
}

/// A `weir node` child process, killed when dropped (also when a test panics).
struct NodeGuard {
    child: Option<Child>,
    addr: String,
    ca: PathBuf,
}

impl Drop for NodeGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A free UDP port on 127.0.0.1: bind, read the port, close.
fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("bind a UDP socket")
        .port()
}

impl NodeGuard {
    /// Starts `weir node` and waits for its ready line on stdout.
    fn start(data_dir: &Path) -> Self {
        let listen = format!("127.0.0.1:{}", free_port());
        let mut child = weir()
            .args(["node", "--data-dir"])
            .arg(data_dir)
            .args(["--listen", &listen, "--fsync", "always"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn weir node");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut guard = Self {
            child: Some(child),
            addr: String::new(),
            ca: data_dir.join("certs").join("ca.crt"),
        };
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix("weir node listening on ") {
                    let _ = tx.send(addr.trim().to_owned());
                }
            }
        });
        guard.addr = rx
            .recv_timeout(WAIT)
            .expect("weir node did not print its address in time");
        assert_eq!(guard.addr, listen);
        guard
    }

    /// A client subcommand aimed at this node (through the environment, as a user would).
    fn client(&self) -> Command {
        let mut cmd = weir();
        cmd.env("WEIR_CLUSTER", &self.addr).env("WEIR_CA", &self.ca);
        cmd
    }

    /// SIGTERM, then the exit status (SIGKILL and a panic if it does not exit in time).
    fn terminate(mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let pid = child.id().to_string();
        let signal = |sig: &str| {
            Command::new("kill")
                .args([sig, &pid])
                .status()
                .is_ok_and(|s| s.success())
        };
        assert!(signal("-TERM"), "kill -TERM {pid}");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        match rx.recv_timeout(WAIT) {
            Ok(status) => status.expect("wait for weir node"),
            Err(_) => {
                signal("-KILL");
                panic!("weir node did not exit within {WAIT:?} after SIGTERM");
            }
        }
    }
}

#[test]
fn node_process_serves_topic_put_listen_and_status_commands() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeGuard::start(&dir.path().join("data"));

    // The node's first start created the CA the client commands verify it with.
    assert!(node.ca.is_file());
    let out = stdout_of(node.client().args(["topic", "create", "orders"]));
    assert!(out.contains("created topic orders"), "{out}");
    let err = stderr_of_failure(node.client().args(["topic", "create", "orders"]));
    assert!(err.contains("already exists"), "{err}");

    let out = stdout_of(
        node.client()
            .args(["put", "orders", "--key", "k1", "hello"]),
    );
    // Offset 0 holds the leader's no-op entry: the first message is at offset 1.
    assert!(out.starts_with("offset=1 timestamp_ms="), "{out}");

    // One message per stdin line, pipelined.
    let mut put = node
        .client()
        .args(["put", "orders"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn weir put");
    put.stdin
        .take()
        .expect("piped stdin")
        .write_all(b"a\nb\nc with\ttab\n")
        .expect("write stdin");
    let out = put.wait_with_output().expect("weir put");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("put 3 messages to orders"), "{stdout}");
    assert!(stdout.contains("offsets 2..=4"), "{stdout}");

    // The global flags work as well as the environment.
    let out = stdout_of(
        weir()
            .args(["listen", "orders", "--from", "start", "--count", "4"])
            .args(["--cluster", &node.addr, "--ca"])
            .arg(&node.ca),
    );
    let lines: Vec<Vec<&str>> = out.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert_eq!(
        (lines[0][0], lines[0][2], lines[0][3]),
        ("1", "k1", "hello")
    );
    assert_eq!((lines[1][0], lines[1][2], lines[1][3]), ("2", "", "a"));
    assert_eq!(lines[3][3], "c with\\ttab");
    assert!(lines[0][1].parse::<u64>().is_ok(), "timestamp_ms");

    let out = stdout_of(
        node.client()
            .args(["listen", "orders", "--from", "3", "--count", "1"]),
    );
    assert!(out.starts_with("3\t"), "{out}");

    let out = stdout_of(node.client().args(["topic", "list"]));
    assert!(
        out.lines().any(|l| l.starts_with("orders  0      5")),
        "{out}"
    );

    let out = stdout_of(node.client().arg("status"));
    assert!(out.contains("fsync always"), "{out}");
    assert!(out.contains("APPENDS"), "{out}");
    assert!(out.lines().any(|l| l.starts_with("orders")), "{out}");

    let err = stderr_of_failure(node.client().args(["listen", "orders", "--from", "99"]));
    assert!(err.contains("offset out of range"), "{err}");
    let err = stderr_of_failure(node.client().args(["put", "missing", "x"]));
    assert!(err.contains("not found"), "{err}");

    let out = stdout_of(node.client().args(["topic", "delete", "orders"]));
    assert!(out.contains("deleted topic orders"), "{out}");

    let status = node.terminate();
    assert!(status.success(), "clean exit after SIGTERM: {status}");
}

#[test]
fn client_commands_without_a_node_fail_with_a_helpful_message() {
    let dir = tempfile::tempdir().unwrap();
    // No CA file at the default location.
    let err = stderr_of_failure(weir().current_dir(dir.path()).arg("status"));
    assert!(err.contains("weir-data/certs/ca.crt"), "{err}");
    assert!(err.contains("--ca"), "{err}");
}
