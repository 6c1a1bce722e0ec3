//! The `playergold devnet` process the bench runs: the binary found (or built), the devnet
//! started as an operator starts it, its nodes' PIDs found under it, and everything stopped at
//! the end, also when the bench fails or panics ([`Devnet`]'s `Drop`). The nodes' CPU time and
//! memory are read from `/proc`.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Deserialize;
use tokio::sync::mpsc;

use super::LoadError;

/// How long the devnet may take to print `{"event":"running"}`: longer than its own 60 s
/// start timeout, so that when nodes fail to start the devnet's message (which names the
/// node and its log) comes first.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the devnet may take to exit after SIGTERM before it and its nodes are killed:
/// it gives its nodes 15 s (`STOP_TIMEOUT` in `crates/node/src/devnet.rs`), plus slack.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a stopping process is checked on.
const STOP_POLL: Duration = Duration::from_millis(100);
/// How long the nodes' processes may take to appear under the devnet's in `/proc` once it
/// says they run (they already do; this only covers a slow `/proc`).
const PID_TIMEOUT: Duration = Duration::from_secs(5);
/// Lines of the devnet's stderr kept for error messages (its own log; the nodes log to
/// their `node.log`).
const STDERR_TAIL_LINES: usize = 40;
/// Lines of the devnet's stdout queued for the bench: it prints two (`running`, `stopped`).
const STDOUT_QUEUE: usize = 16;

/// One node of the running devnet.
#[derive(Debug, Clone)]
pub(crate) struct NodeProc {
    /// Its index in the devnet.
    pub(crate) index: usize,
    /// Its HTTP API.
    pub(crate) api: SocketAddr,
    /// Its PeerId.
    pub(crate) peer_id: String,
    /// Its data directory (its log is `node.log` in it).
    pub(crate) data_dir: PathBuf,
    /// Its process.
    pub(crate) pid: u32,
}

/// The `{"event":"running"}` line, the fields the bench reads.
#[derive(Debug, Deserialize)]
struct RunningEvent {
    event: String,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    nodes: Vec<RunningNode>,
}

#[derive(Debug, Deserialize)]
struct RunningNode {
    index: usize,
    api: SocketAddr,
    peer_id: String,
    data_dir: PathBuf,
}

/// The running `playergold devnet` process. Dropping it without [`Devnet::stop`] (an error or
/// a panic in the bench) still stops it and its nodes.
#[derive(Debug)]
pub(crate) struct Devnet {
    child: Child,
    nodes: Vec<NodeProc>,
    stdout: mpsc::Receiver<String>,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
    stopped: bool,
}

/// The `playergold` binary: `explicit`, else the one next to this executable (in the same
/// target profile directory, else in `release`). When there is none and `CARGO` is set (under
/// `cargo run`), builds it first.
pub(crate) fn find_playergold(explicit: Option<&Path>) -> Result<PathBuf, LoadError> {
    if let Some(path) = explicit {
        return if path.is_file() {
            Ok(path.to_path_buf())
        } else {
            Err(LoadError::Binary(format!(
                "--playergold {} does not exist: build it with `cargo build --release -p \
                 playergold-node` and pass target/release/playergold",
                path.display()
            )))
        };
    }
    let exe = std::env::current_exe().map_err(|source| LoadError::Io {
        what: "cannot find the bench's own executable".into(),
        source,
    })?;
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    // A test or bench binary lives in <profile>/deps.
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    let candidates = [
        dir.join("playergold"),
        dir.with_file_name("release").join("playergold"),
    ];
    let found = || candidates.iter().find(|p| p.is_file()).cloned();
    if let Some(path) = found() {
        return Ok(path);
    }
    let Some(cargo) = std::env::var_os("CARGO") else {
        return Err(LoadError::Binary(format!(
            "no playergold binary next to {}: build it with `cargo build --release -p \
             playergold-node`, or pass --playergold PATH",
            exe.display()
        )));
    };
    tracing::info!("building playergold (cargo build --release -p playergold-node)");
    let status = Command::new(cargo)
        .args([
            "build",
            "--release",
            "-p",
            "playergold-node",
            "--bin",
            "playergold",
        ])
        .status()
        .map_err(|source| LoadError::Io {
            what: "cannot run cargo to build playergold".into(),
            source,
        })?;
    match found() {
        Some(path) if status.success() => Ok(path),
        _ => Err(LoadError::Binary(format!(
            "`cargo build --release -p playergold-node` did not produce {} ({status}): build \
             it by hand and pass --playergold PATH",
            candidates[1].display()
        ))),
    }
}

impl Devnet {
    /// Runs `exe --json devnet --nodes N --slot-ms S --seconds T --dir DIR` (no `--tps`: the
    /// bench drives the load), waits until it says every node serves, and finds each node's
    /// process. `seconds` bounds the devnet's life even if the bench itself is killed.
    pub(crate) async fn start(
        exe: &Path,
        nodes: usize,
        slot_ms: u64,
        seconds: u64,
        dir: &Path,
    ) -> Result<Devnet, LoadError> {
        let mut cmd = Command::new(exe);
        cmd.args(["--json", "devnet", "--nodes", &nodes.to_string()])
            .args(["--slot-ms", &slot_ms.to_string()])
            .args(["--seconds", &seconds.to_string()])
            .arg("--dir")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // The nodes read PLAYERGOLD_* as configuration: one left in the developer's shell
        // (PLAYERGOLD_API, say) would apply to every node.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("PLAYERGOLD_") {
                cmd.env_remove(name);
            }
        }
        let mut child = cmd.spawn().map_err(|source| LoadError::Io {
            what: format!("cannot start {}", exe.display()),
            source,
        })?;
        let (lines_tx, stdout) = mpsc::channel(STDOUT_QUEUE);
        let stderr_tail = Arc::new(Mutex::new(VecDeque::new()));
        if let Some(out) = child.stdout.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if lines_tx.blocking_send(line).is_err() {
                        return;
                    }
                }
            });
        }
        if let Some(err) = child.stderr.take() {
            let tail = stderr_tail.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    let mut tail = tail.lock();
                    if tail.len() == STDERR_TAIL_LINES {
                        tail.pop_front();
                    }
                    tail.push_back(line);
                }
            });
        }
        // From here on, Drop stops whatever was started.
        let mut devnet = Devnet {
            child,
            nodes: Vec::new(),
            stdout,
            stderr_tail,
            stopped: false,
        };
        let running = devnet.wait_running().await?;
        devnet.nodes = devnet.find_pids(running).await?;
        Ok(devnet)
    }

    /// The nodes, in index order.
    pub(crate) fn nodes(&self) -> &[NodeProc] {
        &self.nodes
    }

    /// An error if the devnet has exited (it stops when one of its nodes dies).
    pub(crate) fn check_running(&mut self) -> Result<(), LoadError> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(self.died(&format!("the devnet exited early ({status})"))),
            Err(source) => Err(LoadError::Io {
                what: "cannot check on the devnet process".into(),
                source,
            }),
        }
    }

    /// An error saying the devnet is gone, with its `stopped` reason and its stderr's end.
    fn died(&mut self, what: &str) -> LoadError {
        let mut reason = String::new();
        while let Ok(line) = self.stdout.try_recv() {
            if let Ok(event) = serde_json::from_str::<RunningEvent>(&line)
                && let Some(r) = event.reason
            {
                reason = format!(": {r}");
            }
        }
        let tail: Vec<String> = self.stderr_tail.lock().iter().cloned().collect();
        let tail = if tail.is_empty() {
            String::new()
        } else {
            format!("\nthe devnet's last stderr lines:\n{}", tail.join("\n"))
        };
        LoadError::Devnet(format!("{what}{reason}{tail}"))
    }

    /// Waits for the `running` line.
    async fn wait_running(&mut self) -> Result<Vec<RunningNode>, LoadError> {
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            let line = match tokio::time::timeout_at(deadline, self.stdout.recv()).await {
                Ok(Some(line)) => line,
                Ok(None) => {
                    // stdout closed: the devnet exited; give it a moment to be reaped.
                    let _ = tokio::time::timeout(STOP_TIMEOUT, async {
                        while matches!(self.child.try_wait(), Ok(None)) {
                            tokio::time::sleep(STOP_POLL).await;
                        }
                    })
                    .await;
                    return Err(self.died("the devnet exited before its nodes ran"));
                }
                Err(_) => {
                    return Err(self.died(&format!(
                        "the devnet did not report its nodes running within {}s",
                        START_TIMEOUT.as_secs()
                    )));
                }
            };
            let Ok(event) = serde_json::from_str::<RunningEvent>(&line) else {
                continue;
            };
            match event.event.as_str() {
                "running" => return Ok(event.nodes),
                "stopped" => {
                    let reason = event.reason.unwrap_or_default();
                    return Err(self.died(&format!("the devnet stopped while starting: {reason}")));
                }
                _ => {}
            }
        }
    }

    /// Finds each node's process among the devnet's children by its `--data-dir` argument.
    async fn find_pids(&mut self, running: Vec<RunningNode>) -> Result<Vec<NodeProc>, LoadError> {
        let deadline = Instant::now() + PID_TIMEOUT;
        loop {
            let children: Vec<(u32, Option<PathBuf>)> = child_pids(self.child.id())
                .into_iter()
                .map(|pid| (pid, data_dir_arg(pid)))
                .collect();
            let found: Vec<Option<u32>> = running
                .iter()
                .map(|node| {
                    children
                        .iter()
                        .find(|(_, dir)| {
                            dir.as_deref().is_some_and(|d| same_path(d, &node.data_dir))
                        })
                        .map(|(pid, _)| *pid)
                })
                .collect();
            if found.iter().all(Option::is_some) {
                return Ok(running
                    .into_iter()
                    .zip(found.into_iter().flatten())
                    .map(|(node, pid)| NodeProc {
                        index: node.index,
                        api: node.api,
                        peer_id: node.peer_id,
                        data_dir: node.data_dir,
                        pid,
                    })
                    .collect());
            }
            if Instant::now() >= deadline {
                let missing = running
                    .iter()
                    .zip(&found)
                    .find(|(_, pid)| pid.is_none())
                    .map_or(0, |(node, _)| node.index);
                return Err(LoadError::Devnet(format!(
                    "cannot find node {missing}'s process among the devnet's children in /proc \
                     (the bench needs Linux with /proc mounted, and \
                     /proc/<pid>/task/<tid>/children, CONFIG_PROC_CHILDREN)"
                )));
            }
            tokio::time::sleep(STOP_POLL).await;
        }
    }

    /// Stops the devnet with SIGTERM, as Ctrl-C would, and waits for it; kills it and its
    /// nodes after [`STOP_TIMEOUT`].
    pub(crate) async fn stop(mut self) -> Result<(), LoadError> {
        self.stopped = true;
        self.signal_devnet("TERM");
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(_)) => {
                    self.kill_orphans();
                    return Ok(());
                }
                Ok(None) => tokio::time::sleep(STOP_POLL).await,
                Err(_) => break,
            }
        }
        self.kill_all();
        Err(LoadError::Devnet(format!(
            "the devnet did not stop within {}s of SIGTERM: killed it and its nodes",
            STOP_TIMEOUT.as_secs()
        )))
    }

    /// Sends SIG`name` to the devnet unless it has exited. Until `try_wait` has reaped it, its
    /// PID stays ours (an exited child is a zombie), so no other process can receive it.
    fn signal_devnet(&mut self, name: &str) -> bool {
        let running = matches!(self.child.try_wait(), Ok(None));
        if running {
            signal(self.child.id(), name);
        }
        running
    }

    /// SIGKILL to every node still running and to the devnet.
    fn kill_all(&mut self) {
        // Children first, while the devnet still lists the ones not yet known (and only while
        // it is unreaped: see `signal_devnet`).
        if matches!(self.child.try_wait(), Ok(None)) {
            for pid in child_pids(self.child.id()) {
                signal(pid, "KILL");
            }
        }
        self.kill_orphans();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGKILL to every node of ours that outlived the devnet (its process still runs with our
    /// data directory, so it is not another process that took the PID).
    fn kill_orphans(&self) {
        for node in &self.nodes {
            if data_dir_arg(node.pid).is_some_and(|d| same_path(&d, &node.data_dir)) {
                signal(node.pid, "KILL");
            }
        }
    }
}

impl Drop for Devnet {
    fn drop(&mut self) {
        if self.stopped {
            return;
        }
        // The bench failed or panicked: never leave the devnet or its nodes running.
        if !self.signal_devnet("TERM") {
            self.kill_orphans();
            return;
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                self.kill_orphans();
                return;
            }
            std::thread::sleep(STOP_POLL);
        }
        self.kill_all();
    }
}

/// Sends SIG`name` to `pid` with `kill` (the workspace has no unsafe code for libc's); a
/// failure means the process is gone already.
fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Whether two paths name the same directory (as written, or once resolved).
fn same_path(a: &Path, b: &Path) -> bool {
    a == b
        || matches!(
            (a.canonicalize(), b.canonicalize()),
            (Ok(x), Ok(y)) if x == y
        )
}

/// The PIDs of `pid`'s children, from `/proc/<pid>/task/*/children`.
fn child_pids(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|text| {
            text.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// The `--data-dir` argument of process `pid`, from `/proc/<pid>/cmdline`.
fn data_dir_arg(pid: u32) -> Option<PathBuf> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let mut args = cmdline.split(|b| *b == 0);
    args.find(|a| *a == b"--data-dir")?;
    let dir = args.next()?;
    Some(PathBuf::from(String::from_utf8_lossy(dir).into_owned()))
}
