//! A node with every service the binary runs on one network handle: relay, sync, reputation, and
//! the report forwarding between them (`playergold_services::forward_reports`, as the node), so a
//! test sees the bans and disconnects reputation decides. Plus process-level helpers: the
//! resident set size, and running one test alone in its own process so that a process-wide
//! measurement sees that test and no other.

use std::future::Future;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use libp2p::PeerId;
use playergold_protocol::Capabilities;
use playergold_protocol::relay::PropagationConfig;
use playergold_protocol::reputation::{Reason, ReputationConfig};
use playergold_services::{
    ReputationHandle, ReputationService, SyncEvent, SyncHandle, SyncService, SyncServiceConfig,
    forward_reports,
};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::support::{Devnet, RelayNode};

/// How often [`FullNode::wait_for`] re-checks a condition no event announces (a ban decided
/// after the peer's connection was already gone).
const RECHECK: Duration = Duration::from_millis(50);

/// Relay, sync and reputation on one network and one chain.
pub(crate) struct FullNode {
    /// The network, the chain and the relay (with its event log).
    pub(crate) node: RelayNode,
    pub(crate) sync: SyncHandle,
    sync_events: broadcast::Receiver<SyncEvent>,
    sync_task: JoinHandle<()>,
    pub(crate) reputation: ReputationHandle,
    reputation_task: JoinHandle<()>,
    forwarder: JoinHandle<()>,
    /// Reports the forwarder fell too far behind to read: a test relying on them would be void.
    missed_reports: Arc<AtomicU64>,
}

impl FullNode {
    /// Starts node `index` (address `127.<index+1>.0.1`) on the devnet chain `node<index>`: a
    /// node started again with the same index opens the same store. Only the test dials.
    pub(crate) async fn spawn(
        devnet: &Devnet,
        index: u8,
        relay: PropagationConfig,
        sync: SyncServiceConfig,
    ) -> FullNode {
        let node = RelayNode::spawn(devnet, index, relay, Capabilities::NONE).await;
        let network = node.net.handle.clone();
        let (reputation, reputation_task) = ReputationService::start(
            network.clone(),
            node.chain.clone(),
            ReputationConfig::default(),
            Vec::new(),
        )
        .await;
        let (sync, sync_task) = SyncService::start(
            network,
            node.chain.clone(),
            sync,
            Some(node.relay.subscribe()),
        )
        .expect("sync starts");
        let missed_reports = Arc::new(AtomicU64::new(0));
        let forwarder = tokio::spawn(forward_reports(
            node.relay.subscribe(),
            sync.subscribe(),
            reputation.clone(),
            missed_reports.clone(),
        ));
        FullNode {
            sync_events: sync.subscribe(),
            node,
            sync,
            sync_task,
            reputation,
            reputation_task,
            forwarder,
            missed_reports,
        }
    }

    pub(crate) fn peer_id(&self) -> PeerId {
        self.node.peer_id()
    }

    /// The peers the network is connected to now.
    pub(crate) async fn connected(&self) -> Vec<PeerId> {
        let peers = self.node.net.handle.peers().await.expect("network runs");
        peers.into_iter().map(|p| p.peer).collect()
    }

    /// Whether reputation holds `peer` banned now.
    pub(crate) async fn is_banned(&self, peer: PeerId) -> bool {
        self.reputation
            .standing(peer)
            .await
            .expect("reputation runs")
            .banned
    }

    /// Waits until `check` holds, re-checking on every network event and every [`RECHECK`].
    pub(crate) async fn wait_for<F, Fut>(&self, timeout: Duration, what: &str, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let mut events = self.node.net.handle.subscribe();
        let deadline = Instant::now() + timeout;
        while !check().await {
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}"
            );
            let wake = deadline.min(Instant::now() + RECHECK);
            if let Ok(Err(broadcast::error::RecvError::Closed)) =
                tokio::time::timeout_at(wake, events.recv()).await
            {
                panic!("network stopped while waiting for {what}")
            }
        }
    }

    /// Waits until reputation has banned `peer` and the network has no connection to it.
    pub(crate) async fn wait_banned(&self, peer: PeerId, timeout: Duration) {
        self.wait_for(timeout, &format!("{peer} banned and gone"), || async move {
            self.is_banned(peer).await && !self.connected().await.contains(&peer)
        })
        .await
    }

    /// Sync penalties received so far.
    pub(crate) fn sync_penalties(&mut self) -> Vec<(PeerId, Reason)> {
        let mut out = Vec::new();
        loop {
            match self.sync_events.try_recv() {
                Ok(SyncEvent::Penalty { peer, reason }) => out.push((peer, reason)),
                Ok(_) | Err(broadcast::error::TryRecvError::Lagged(_)) => {}
                Err(_) => return out,
            }
        }
    }

    /// Stops every service (reputation saves its bans), then the network. Every handle to the
    /// chain is gone when this returns, so the store can be opened again.
    pub(crate) async fn stop(self) {
        self.sync.shutdown().await.expect("sync stops");
        self.sync_task.await.expect("sync task ends");
        self.forwarder.abort();
        let _ = self.forwarder.await;
        assert_eq!(
            self.missed_reports.load(Ordering::Relaxed),
            0,
            "the report forwarder lost reports: reputation would miss them"
        );
        self.reputation.shutdown().await.expect("reputation stops");
        self.reputation_task.await.expect("reputation task ends");
        self.node.stop().await;
    }
}

/// This process's resident set size in bytes (Linux: `VmRSS` in `/proc/self/status`).
pub(crate) fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .expect("a VmRSS line in kB");
    kib * 1024
}

/// Samples [`rss_bytes`] every few milliseconds until stopped, keeping the largest value: a
/// transient peak counts, not only where the process ends up.
pub(crate) struct RssPeak {
    stop: tokio::sync::oneshot::Sender<()>,
    task: JoinHandle<u64>,
}

impl RssPeak {
    /// How often the sampler reads `/proc/self/status`.
    const PERIOD: Duration = Duration::from_millis(5);

    pub(crate) fn start() -> RssPeak {
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut peak = rss_bytes();
            let mut tick = tokio::time::interval(Self::PERIOD);
            loop {
                tokio::select! {
                    _ = &mut stopped => return peak.max(rss_bytes()),
                    _ = tick.tick() => peak = peak.max(rss_bytes()),
                }
            }
        });
        RssPeak { stop, task }
    }

    /// The largest resident set size seen, in bytes.
    pub(crate) async fn finish(self) -> u64 {
        let _ = self.stop.send(());
        self.task.await.expect("sampler runs")
    }
}

/// Marks the child process of [`alone`], which runs the test's body.
const ALONE_ENV: &str = "PLAYERGOLD_SERVICES_TEST_ALONE";

/// Runs the test `name` (`module::function`, as libtest names it) alone in a fresh process of
/// this test binary and asserts that it passed. Returns `true` in that child process, where the
/// caller then runs the test's body; `false` in the parent, which has nothing more to do.
///
/// libtest runs the tests of a binary as threads of one process, so a process-wide measurement
/// such as the resident set size would count every test running beside this one.
pub(crate) fn alone(name: &str) -> bool {
    if std::env::var_os(ALONE_ENV).is_some() {
        return true;
    }
    let exe = std::env::current_exe().expect("test binary path");
    // The child ends by itself: every wait in a test body has a deadline.
    let out = Command::new(exe)
        .args([name, "--exact", "--nocapture", "--test-threads", "1"])
        .env(ALONE_ENV, "1")
        .output()
        .expect("the test's own process starts");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{name} in its own process: {}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    false
}

/// A runtime like `#[tokio::test(flavor = "multi_thread", worker_threads = 2)]`, for tests that
/// run their body through [`alone`].
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}
