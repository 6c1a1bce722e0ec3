//! End-to-end tests through the real `playergold` binary, on 127.0.0.1, and (`partition`) inside
//! network namespaces the test creates.

mod api;
mod cli;
mod config;
mod devnet;
mod load;
mod partition;
mod single_node;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a test waits for something that normally takes well under a second.
const DEADLINE: Duration = Duration::from_secs(20);

/// Tests that run many `playergold` processes (devnet, load, partition) take this in turn: on a
/// 2-core machine two of them at once would each see the other's load, not the node's.
static MANY_PROCESSES: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Waits for the other many-process tests to finish; held until the guard drops.
fn many_processes() -> std::sync::MutexGuard<'static, ()> {
    // A test that panicked while holding it left no state behind: the lock is only a turn.
    MANY_PROCESSES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The binary, with no `PLAYERGOLD_*` variable leaking in from the developer's shell.
fn playergold() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_playergold"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("PLAYERGOLD_") {
            cmd.env_remove(name);
        }
    }
    cmd
}

/// Runs `playergold ARGS` to completion, expecting success; returns stdout.
fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run playergold");
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `playergold init` with 200 ms slots; returns the node's PeerId.
fn init(data: &Path) -> String {
    let out = run_ok(
        playergold()
            .args([
                "init",
                "--network",
                "testnet",
                "--slot-ms",
                "200",
                "--data-dir",
            ])
            .arg(data),
    );
    out.lines()
        .find_map(|l| l.strip_prefix("peer id "))
        .expect("peer id line")
        .trim()
        .to_string()
}

/// Polls `f` until it returns `Some`, failing the test after [`DEADLINE`].
fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `playergold node` process with its API on a free port; killed if the test fails.
struct RunningNode {
    child: Child,
    api: String,
    stdout: mpsc::Receiver<String>,
    stderr: Option<JoinHandle<String>>,
}

impl RunningNode {
    /// A lone node: p2p on a free loopback port, no discovery, no bootstrap.
    fn start(data: &Path) -> RunningNode {
        RunningNode::start_with(data, &["--no-bootstrap"])
    }

    /// A node with p2p on a free loopback port and mDNS off (tests never multicast outside a
    /// namespace they own), plus `extra` flags.
    fn start_with(data: &Path, extra: &[&str]) -> RunningNode {
        let mut cmd = playergold();
        cmd.args([
            "node",
            "--api",
            "127.0.0.1:0",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
        ])
        .args(["--no-mdns", "--no-dht"])
        .args(extra)
        .arg("--data-dir")
        .arg(data);
        let mut node = RunningNode::spawn(&mut cmd);
        node.api = node
            .next_line_starting("api listening on ")
            .trim()
            .to_string();
        node
    }

    /// Spawns `cmd` (a `playergold` command that runs until SIGTERM) with its output captured.
    fn spawn(cmd: &mut Command) -> RunningNode {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn playergold");
        let (tx, stdout) = mpsc::channel();
        let out = child.stdout.take().expect("piped stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut err = child.stderr.take().expect("piped stderr");
        let stderr = Some(std::thread::spawn(move || {
            let mut s = String::new();
            // Whatever was read before an error is still worth showing.
            let _ = err.read_to_string(&mut s);
            s
        }));
        RunningNode {
            child,
            api: String::new(),
            stdout,
            stderr,
        }
    }

    /// The rest of the first stdout line that starts with `prefix`.
    fn next_line_starting(&self, prefix: &str) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return rest.to_string();
                    }
                }
                Err(e) => panic!("no stdout line starting with {prefix:?}: {e}"),
            }
        }
    }

    /// Sends SIGTERM and waits for the exit; returns the status, the `node stopped` line and
    /// stderr.
    fn terminate(self) -> (ExitStatus, String, String) {
        self.terminate_with("node stopped: ")
    }

    /// Sends SIGTERM and waits for the exit; returns the status, the rest of the last line
    /// starting with `last_line`, and stderr.
    fn terminate_with(mut self, last_line: &str) -> (ExitStatus, String, String) {
        let kill = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(kill.success());
        let stopped = self.next_line_starting(last_line);
        let status = wait_for("the node to exit", || {
            self.child.try_wait().expect("wait for node")
        });
        let stderr = self
            .stderr
            .take()
            .map(|h| h.join().expect("stderr reader"))
            .unwrap_or_default();
        (status, stopped, stderr)
    }
}

impl Drop for RunningNode {
    fn drop(&mut self) {
        // Already exited after terminate(); otherwise the test failed: do not leak the node.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.0 request (the server closes the connection after answering, so the response
/// is everything until EOF); returns the status code and body.
fn http(addr: &str, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect to the API");
    stream
        .set_read_timeout(Some(DEADLINE))
        .expect("set read timeout");
    let mut request = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\n");
    if let Some(body) = body {
        request.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    request.push_str("\r\n");
    request.push_str(body.unwrap_or_default());
    stream.write_all(request.as_bytes()).expect("send request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    let (head, body) = response.split_once("\r\n\r\n").expect("HTTP response");
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    (code, body.to_string())
}

/// `http` for a JSON answer.
fn http_json(addr: &str, method: &str, path: &str, body: Option<&str>) -> (u16, serde_json::Value) {
    let (code, body) = http(addr, method, path, body);
    let json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
    (code, json)
}
