//! The reputation service: one owning task around the deterministic
//! [`playergold_protocol::reputation::Reputation`] table, fed by every other service's reports,
//! acting through the network handle, and keeping bans in the chain database across restarts.
//!
//! ```text
//!  relay / sync / API ── ReputationHandle::report(peer, reason) ─┐ bounded mpsc
//!  NetworkEvent::PeerConnected (IP, enforce bans) ───────────────┤
//!                                                                ▼
//!   owning task: Reputation<PeerId>::report(now) ──► Action
//!        │  None        : push the new score to the connection manager (eviction, dialling)
//!        │  Disconnect  : NetworkHandle::disconnect
//!        │  Ban{,WithIp}: NetworkHandle::ban (refused at the handshake) + disconnect; one log line
//!        └─► bans ──► chain.redb aux "reputation/bans" (postcard), restored at start
//!   lag probe (every 100 ms, on the runtime) ──► OverloadDetector ──► local-overload guard
//! ```
//!
//! The lag probe is the local-fault guard's input: a timer of this task that fires late means
//! the runtime (or the whole machine) is too busy to read answers in time, and then the
//! slowness reports of that period are ours, not our peers'. It does not see the relay owner's
//! own thread: an owner stalled alone (a long import) is not detected yet.
//!
//! Time is wall-clock milliseconds ([`TimestampMs`]) because bans outlive the process.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use playergold_chain::Blockchain;
use playergold_net::addrbook::ip_of;
use playergold_net::{Multiaddr, NetworkEvent, NetworkHandle, PeerId, Score};
use playergold_primitives::TimestampMs;
use playergold_protocol::overload::{OverloadConfig, OverloadDetector};
use playergold_protocol::reputation::{
    Action, Ban, LogEntry, Reason, Reputation, ReputationConfig,
};
use serde::{Deserialize, Serialize};

use crate::relay::RelayServiceEvent;
use crate::sync::SyncEvent;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;

/// Where the bans live in the chain database's aux table.
pub const BANS_AUX_KEY: &str = "reputation/bans";

/// Reports and commands waiting for the task. Reports come from the relay and sync tasks at
/// most a few per received message; 4,096 absorbs a burst of junk from many peers at once, and
/// a full channel makes the reporters wait (backpressure), never drops a ban.
pub const COMMAND_CHANNEL_CAPACITY: usize = 4_096;

/// How often decayed scores are pushed to the connection manager and expired bans pruned from
/// the database. Scores decay with a half-life of minutes, so 10 s is fresh enough.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(10);

/// How often the lag probe fires. Lag is measured against this schedule; 100 ms resolves the
/// detector's 200 ms threshold and costs nothing measurable.
pub const LAG_PROBE_INTERVAL: Duration = Duration::from_millis(100);

/// Most bans the persisted list holds (the table itself keeps at most
/// [`playergold_protocol::reputation::MAX_BANS`]).
pub const MAX_PERSISTED_BANS: usize = playergold_protocol::reputation::MAX_BANS;

/// Errors of the reputation service.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReputationError {
    /// The service task has stopped.
    #[error("the reputation service has stopped")]
    Stopped,
}

/// One ban, as the API shows it and the database keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BanEntry {
    /// The banned peer.
    pub peer: PeerId,
    /// When it ends.
    pub until: TimestampMs,
    /// How many times this peer was banned.
    pub count: u32,
}

/// A peer's standing.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerStanding {
    /// The decayed score, in `-100..=100`.
    pub score: f64,
    /// The last events, oldest first.
    pub log: Vec<LogEntry>,
    /// Whether it is banned now.
    pub banned: bool,
}

#[derive(Debug)]
enum Command {
    Report(PeerId, Reason),
    Ban(PeerId, Duration, oneshot::Sender<TimestampMs>),
    Unban(PeerId, oneshot::Sender<bool>),
    Bans(oneshot::Sender<Vec<BanEntry>>),
    Standing(PeerId, oneshot::Sender<PeerStanding>),
    Scores(oneshot::Sender<HashMap<PeerId, f64>>),
    Distribution(oneshot::Sender<[usize; 5]>),
    SetExempt(PeerId, bool),
    SetOverloaded(bool),
    Shutdown(oneshot::Sender<()>),
}

/// The local-overload guard's state, readable without asking the task (metrics, status).
#[derive(Debug, Default)]
struct OverloadState {
    /// Whether slowness reports are ignored now (detected or set by hand).
    on: AtomicBool,
    /// Times the detector turned the guard on.
    episodes: AtomicU64,
}

/// A cloneable handle to the reputation task.
#[derive(Debug, Clone)]
pub struct ReputationHandle {
    commands: mpsc::Sender<Command>,
    overload: Arc<OverloadState>,
}

impl ReputationHandle {
    async fn request<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, ReputationError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| ReputationError::Stopped)?;
        rx.await.map_err(|_| ReputationError::Stopped)
    }

    /// Records an event about `peer`; the service acts on the outcome (disconnect, ban).
    pub async fn report(&self, peer: PeerId, reason: Reason) -> Result<(), ReputationError> {
        self.commands
            .send(Command::Report(peer, reason))
            .await
            .map_err(|_| ReputationError::Stopped)
    }

    /// An operator's ban; returns when it ends. The peer is disconnected and refused until then,
    /// also after a restart.
    pub async fn ban(
        &self,
        peer: PeerId,
        duration: Duration,
    ) -> Result<TimestampMs, ReputationError> {
        self.request(|reply| Command::Ban(peer, duration, reply))
            .await
    }

    /// Lifts a ban; `false` if the peer was not banned.
    pub async fn unban(&self, peer: PeerId) -> Result<bool, ReputationError> {
        self.request(|reply| Command::Unban(peer, reply)).await
    }

    /// The bans in force.
    pub async fn bans(&self) -> Result<Vec<BanEntry>, ReputationError> {
        self.request(Command::Bans).await
    }

    /// A peer's score, reason log and ban state.
    pub async fn standing(&self, peer: PeerId) -> Result<PeerStanding, ReputationError> {
        self.request(|reply| Command::Standing(peer, reply)).await
    }

    /// The current score of every peer the table knows.
    pub async fn scores(&self) -> Result<HashMap<PeerId, f64>, ReputationError> {
        self.request(Command::Scores).await
    }

    /// Peers per score bucket: (-inf,-50], (-50,-10], (-10,10), [10,50), [50,inf).
    pub async fn distribution(&self) -> Result<[usize; 5], ReputationError> {
        self.request(Command::Distribution).await
    }

    /// Trusted and persistent peers are scored but never disconnected or banned automatically.
    pub async fn set_exempt(&self, peer: PeerId, exempt: bool) -> Result<(), ReputationError> {
        self.commands
            .send(Command::SetExempt(peer, exempt))
            .await
            .map_err(|_| ReputationError::Stopped)
    }

    /// Whether the local-overload guard is on now (slowness reports ignored), and how many
    /// times the lag probe turned it on.
    pub fn overload(&self) -> (bool, u64) {
        (
            self.overload.on.load(Ordering::Relaxed),
            self.overload.episodes.load(Ordering::Relaxed),
        )
    }

    /// Forces the local-fault guard on (besides the lag probe): while `true`, slowness is our
    /// fault and costs nobody anything.
    pub async fn set_overloaded(&self, overloaded: bool) -> Result<(), ReputationError> {
        self.commands
            .send(Command::SetOverloaded(overloaded))
            .await
            .map_err(|_| ReputationError::Stopped)
    }

    /// Saves the bans and stops the task.
    pub async fn shutdown(&self) -> Result<(), ReputationError> {
        self.request(Command::Shutdown).await
    }
}

/// The reputation service's constructor.
#[derive(Debug)]
pub struct ReputationService;

impl ReputationService {
    /// Starts the service: restores the bans kept in `chain`'s database, tells the network about
    /// them, and spawns the owning task. `exempt` are trusted/persistent peers. Must be called
    /// inside a Tokio runtime.
    pub async fn start(
        network: NetworkHandle,
        chain: Arc<Blockchain>,
        config: ReputationConfig,
        exempt: Vec<PeerId>,
    ) -> (ReputationHandle, JoinHandle<()>) {
        let mut table = Reputation::new(config);
        for peer in exempt {
            table.set_exempt(peer, true);
        }
        let now = TimestampMs::now();
        let restored = load_bans(&chain);
        let mut owner = Owner {
            network,
            chain,
            table,
            saved: Vec::new(),
            enforced: HashSet::new(),
            enforced_ips: HashSet::new(),
            detector: OverloadDetector::new(OverloadConfig::default()),
            forced_overload: false,
            overload: Arc::default(),
        };
        owner
            .table
            .restore_bans(restored.iter().filter(|b| b.until > now).map(|b| {
                (
                    b.peer,
                    Ban {
                        until: b.until,
                        count: b.count,
                    },
                )
            }));
        for (peer, _) in owner.table.bans(now) {
            owner.enforce_ban(peer).await;
        }
        owner.saved = owner.current_bans(now);
        if !owner.saved.is_empty() {
            tracing::info!(bans = owner.saved.len(), "restored peer bans");
        }
        let (tx, rx) = mpsc::channel(COMMAND_CHANNEL_CAPACITY);
        let events = owner.network.subscribe();
        let overload = owner.overload.clone();
        let task = tokio::spawn(owner.run(rx, events));
        (
            ReputationHandle {
                commands: tx,
                overload,
            },
            task,
        )
    }
}

/// The persisted form: a postcard list of bans.
#[derive(Serialize, Deserialize)]
struct StoredBan {
    peer: Vec<u8>,
    until: TimestampMs,
    count: u32,
}

fn load_bans(chain: &Blockchain) -> Vec<BanEntry> {
    let bytes = match chain.store().get_aux(BANS_AUX_KEY) {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return Vec::new(),
        Err(err) => {
            tracing::warn!(%err, "cannot read the stored bans; starting without them");
            return Vec::new();
        }
    };
    match postcard::from_bytes::<Vec<StoredBan>>(&bytes) {
        Ok(list) => list
            .into_iter()
            .take(MAX_PERSISTED_BANS)
            .filter_map(|b| {
                Some(BanEntry {
                    peer: PeerId::from_bytes(&b.peer).ok()?,
                    until: b.until,
                    count: b.count,
                })
            })
            .collect(),
        Err(err) => {
            tracing::warn!(%err, "the stored bans are corrupt; starting without them");
            Vec::new()
        }
    }
}

struct Owner {
    network: NetworkHandle,
    chain: Arc<Blockchain>,
    table: Reputation<PeerId>,
    /// The bans as last written to the database.
    saved: Vec<BanEntry>,
    /// Peers the network was told to refuse (lifted when their ban expires).
    enforced: HashSet<PeerId>,
    /// IP addresses the network was told to refuse.
    enforced_ips: HashSet<IpAddr>,
    /// Turns the local-overload guard on from the lag probe.
    detector: OverloadDetector,
    /// The guard as set through the handle.
    forced_overload: bool,
    /// The guard's state as the handle reads it.
    overload: Arc<OverloadState>,
}

impl Owner {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut events: broadcast::Receiver<NetworkEvent>,
    ) {
        let mut refresh = tokio::time::interval(REFRESH_INTERVAL);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut probe = tokio::time::interval(LAG_PROBE_INTERVAL);
        probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                // First: behind a steady stream of reports the probe would never run, and the
                // guard would come on only after the backlog had been blamed on peers.
                due = probe.tick() => {
                    let now = tokio::time::Instant::now();
                    self.on_lag(now.into_std(), now.saturating_duration_since(due));
                }
                command = commands.recv() => match command {
                    Some(Command::Shutdown(reply)) => {
                        self.persist(TimestampMs::now());
                        let _ = reply.send(());
                        return;
                    }
                    Some(command) => self.on_command(command).await,
                    None => {
                        self.persist(TimestampMs::now());
                        return;
                    }
                },
                event = events.recv() => match event {
                    Ok(NetworkEvent::PeerConnected { peer, addr, .. }) => {
                        self.on_connected(peer, &addr).await;
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => {
                        self.persist(TimestampMs::now());
                        return;
                    }
                },
                _ = refresh.tick() => self.refresh().await,
            }
        }
    }

    async fn on_connected(&mut self, peer: PeerId, addr: &Multiaddr) {
        let now = TimestampMs::now();
        if let Some(ip) = ip_of(addr) {
            self.table.note_ip(peer, ip, now);
            if self.table.is_ip_banned(&ip, now) {
                tracing::info!(%peer, %ip, "peer connected from a banned IP: disconnecting");
                let _ = self.network.disconnect(peer).await;
                return;
            }
        }
        if self.table.is_banned(&peer, now) {
            // The network refuses banned peers at the handshake; this covers the race with a
            // ban decided while the connection was being set up.
            let _ = self.network.disconnect(peer).await;
        }
    }

    async fn on_command(&mut self, command: Command) {
        let now = TimestampMs::now();
        match command {
            Command::Report(peer, reason) => {
                let action = self.table.report(peer, reason, now);
                self.push_score(peer, now).await;
                self.act(peer, reason, action, now).await;
            }
            Command::Ban(peer, duration, reply) => {
                let ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
                let until = self.table.ban_manually(peer, ms, now);
                tracing::info!(%peer, until = until.0, "peer banned by the operator");
                self.enforce_ban(peer).await;
                self.persist(now);
                let _ = reply.send(until);
            }
            Command::Unban(peer, reply) => {
                let lifted = self.table.unban(&peer);
                if lifted {
                    tracing::info!(%peer, "ban lifted by the operator");
                    self.enforced.remove(&peer);
                    let _ = self.network.unban(peer).await;
                    self.persist(now);
                }
                let _ = reply.send(lifted);
            }
            Command::Bans(reply) => {
                let _ = reply.send(self.current_bans(now));
            }
            Command::Standing(peer, reply) => {
                let _ = reply.send(PeerStanding {
                    score: self.table.score(&peer, now),
                    log: self.table.log(&peer),
                    banned: self.table.is_banned(&peer, now),
                });
            }
            Command::Scores(reply) => {
                let _ = reply.send(self.table.scores(now).into_iter().collect());
            }
            Command::Distribution(reply) => {
                let _ = reply.send(self.table.distribution(now));
            }
            Command::SetExempt(peer, exempt) => self.table.set_exempt(peer, exempt),
            Command::SetOverloaded(overloaded) => {
                self.forced_overload = overloaded;
                self.apply_overload();
            }
            Command::Shutdown(_) => {}
        }
    }

    /// One lag sample of the probe: the guard follows the detector (or the forced setting).
    fn on_lag(&mut self, now: std::time::Instant, lag: Duration) {
        match self.detector.observe(now, lag) {
            Some(true) => tracing::info!(
                lag_ms = lag.as_millis() as u64,
                "this node is overloaded (its event loop runs late): peers are not blamed for \
                 slowness until it catches up"
            ),
            Some(false) => tracing::info!("this node caught up: slowness counts again"),
            None => return,
        }
        self.apply_overload();
    }

    fn apply_overload(&mut self) {
        let on = self.forced_overload || self.detector.is_overloaded();
        self.table.set_local_overload(on);
        self.overload.on.store(on, Ordering::Relaxed);
        self.overload
            .episodes
            .store(self.detector.episodes(), Ordering::Relaxed);
    }

    async fn act(&mut self, peer: PeerId, reason: Reason, action: Action, now: TimestampMs) {
        match action {
            Action::None => {}
            Action::Disconnect => {
                tracing::info!(%peer, ?reason, "disconnecting peer with a low reputation");
                let _ = self.network.disconnect(peer).await;
            }
            Action::Ban { until } => {
                tracing::warn!(%peer, ?reason, until = until.0, "banning peer");
                self.enforce_ban(peer).await;
                self.persist(now);
            }
            Action::BanWithIp { until, ip } => {
                tracing::warn!(%peer, %ip, ?reason, until = until.0, "banning peer and its IP");
                self.enforce_ban(peer).await;
                if self.network.ban_ip(ip, true).await.unwrap_or(false) {
                    self.enforced_ips.insert(ip);
                }
                self.persist(now);
            }
        }
    }

    /// Makes the network refuse `peer` (and drop its connections) until the ban is lifted.
    async fn enforce_ban(&mut self, peer: PeerId) {
        if self.network.ban(peer).await.unwrap_or(false) {
            self.enforced.insert(peer);
        }
        let _ = self.network.disconnect(peer).await;
    }

    /// Lifts the network's refusal of peers and IPs whose bans expired.
    async fn lift_expired(&mut self, now: TimestampMs) {
        let active: HashSet<PeerId> = self.table.bans(now).into_iter().map(|(p, _)| p).collect();
        let expired: Vec<PeerId> = self.enforced.difference(&active).copied().collect();
        for peer in expired {
            self.enforced.remove(&peer);
            tracing::info!(%peer, "ban expired");
            let _ = self.network.unban(peer).await;
        }
        let active_ips: HashSet<IpAddr> = self
            .table
            .ip_bans(now)
            .into_iter()
            .map(|(ip, _)| ip)
            .collect();
        let expired: Vec<IpAddr> = self.enforced_ips.difference(&active_ips).copied().collect();
        for ip in expired {
            self.enforced_ips.remove(&ip);
            let _ = self.network.ban_ip(ip, false).await;
        }
    }

    async fn push_score(&self, peer: PeerId, now: TimestampMs) {
        let score = self.table.score(&peer, now);
        // Scores are within -100..=100: the cast cannot overflow.
        let _ = self
            .network
            .set_score(peer, Score(score.round() as i32))
            .await;
    }

    async fn refresh(&mut self) {
        let now = TimestampMs::now();
        self.lift_expired(now).await;
        if let Ok(peers) = self.network.peers().await {
            for info in peers {
                self.push_score(info.peer, now).await;
            }
        }
        self.persist(now);
    }

    fn current_bans(&self, now: TimestampMs) -> Vec<BanEntry> {
        self.table
            .bans(now)
            .into_iter()
            .map(|(peer, ban)| BanEntry {
                peer,
                until: ban.until,
                count: ban.count,
            })
            .collect()
    }

    /// Writes the bans when they changed (expired ones drop out).
    fn persist(&mut self, now: TimestampMs) {
        let bans = self.current_bans(now);
        if bans == self.saved {
            return;
        }
        let stored: Vec<StoredBan> = bans
            .iter()
            .map(|b| StoredBan {
                peer: b.peer.to_bytes(),
                until: b.until,
                count: b.count,
            })
            .collect();
        let result = postcard::to_allocvec(&stored)
            .map_err(|e| e.to_string())
            .and_then(|bytes| {
                self.chain
                    .store()
                    .put_aux(BANS_AUX_KEY, &bytes)
                    .map_err(|e| e.to_string())
            });
        match result {
            Ok(()) => self.saved = bans,
            Err(err) => tracing::warn!(%err, "cannot save the bans; will retry"),
        }
    }
}

/// Feeds what the relay and sync saw peers do into reputation: relay offences and useful
/// deliveries, sync penalties. Runs until either stream closes or reputation stops; the node and
/// every test that wires the services together run this one loop. The services never wait for
/// it: reports it fell too far behind to read are counted in `missed` and logged.
pub async fn forward_reports(
    mut relay: broadcast::Receiver<RelayServiceEvent>,
    mut sync: broadcast::Receiver<SyncEvent>,
    reputation: ReputationHandle,
    missed: Arc<AtomicU64>,
) {
    use broadcast::error::RecvError;
    loop {
        let report = tokio::select! {
            event = relay.recv() => match event {
                Ok(RelayServiceEvent::Offence { peer, reason }) => Some((peer, reason)),
                Ok(RelayServiceEvent::Delivered { peer }) => Some((peer, Reason::Delivered)),
                Ok(_) => None,
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "reputation fell behind the relay's reports");
                    missed.fetch_add(n, Ordering::Relaxed);
                    None
                }
                Err(RecvError::Closed) => return,
            },
            event = sync.recv() => match event {
                Ok(SyncEvent::Penalty { peer, reason }) => Some((peer, reason)),
                Ok(_) => None,
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "reputation fell behind sync's reports");
                    missed.fetch_add(n, Ordering::Relaxed);
                    None
                }
                Err(RecvError::Closed) => return,
            },
        };
        if let Some((peer, reason)) = report
            && reputation.report(peer, reason).await.is_err()
        {
            return;
        }
    }
}
