//! The sync service: [`SyncScheduler`], [`SyncServer`] and [`PartitionDetector`] on real
//! streams (`/playergold/<network>/sync/1`).
//!
//! [`SyncService::start`] accepts the sync protocol once and spawns one owning task that holds
//! the scheduler, the server, the partition detector and a [`ChainView`] (the chain as the
//! engines see it). Small tasks only move bytes:
//!
//! ```text
//!  PeerConnected ─► add_peer + Status request (handshake) ─► reply ─► on_status / on_peer_tip
//!  relay MissingParent ─► on_orphan          relay NewBlock ─► on_peer_tip (detector)
//!  owner ── poll_action: Request ─► request task: open stream, write 1 frame, read 1 frame
//!     ▲                               (≤ MAX_RESPONSE_FRAME, REQUEST_TIMEOUT) ─► bounded mpsc
//!     │                  Penalize ─► SyncEvent::Penalty (reputation hook)
//!     │                  Disconnect ─► NetworkHandle::disconnect
//!     ├── take_ready ─► import task (blocking pool): Blockchain::import_blocks, one commit
//!     │      refused by the peer's fault ─► on_invalid_block; our store ─► on_import_failed
//!     ├── inbound: acceptor (≤ MAX_INBOUND_PER_PEER, ≤ MAX_INBOUND_TOTAL streams) ─► reader:
//!     │      1 frame (≤ MAX_REQUEST_FRAME) ─► owner: SyncServer::serve ─► reply frame ─► close
//!     ├── PartitionDetector: peers, tips, local tip, syncing ─► RecoveryAction ─► redial
//!     │      bootstrap (connect), redial the address book (redial_address_book), DHT random
//!     │      walk (closest_peers), extra outbound slot (set_extra_outbound); state changes logged
//!     └─► watch: SyncStatus (progress, network state)   broadcast: SyncEvent
//! ```
//!
//! The scheduler expects each batch from `take_ready` to be imported before its next call. So
//! while an import runs on the blocking pool, the owner leaves the scheduler alone: replies,
//! network and relay events wait in their bounded channels (request tasks keep downloading),
//! and only inbound requests, commands, the detector's clock and the import's completion are
//! handled (a `GetBlocks` is served from the store at once; a status or `GetHeaders` waits for
//! the chain's lock, which the import holds).
//!
//! The owning task calls the chain synchronously (header signature checks, block reads), so like
//! the relay it runs on a blocking-pool thread and never stalls the runtime's workers.
//!
//! Every recovery action is published as [`SyncEvent::Recovery`]; `carried_out` is `false` only
//! for `RedialBootstrap` on a node without bootstrap nodes.

mod host;
mod io;
mod task;

use std::sync::Arc;
use std::time::Duration;

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, StreamProtocol};
use libp2p_stream::AlreadyRegistered;
use playergold_chain::{Blockchain, ChainBackend};
use playergold_net::framing::MaxFrameSize;
use playergold_net::protocol::ProtocolError;
use playergold_net::{NetworkHandle, NetworkName, PeerId, protocol_name};
use playergold_primitives::codec::WireDecode;
use playergold_primitives::{BlockHash, Height};
use playergold_protocol::partition::{
    NetworkReport, NetworkState, PartitionConfig, RecoveryAction,
};
use playergold_protocol::reputation::Reason;
use playergold_protocol::sync::{
    MAX_STALL_TIMEOUT, MAX_SYNC_FRAME_BYTES, SERVE_BURST, SERVE_RATE_PER_SEC, SyncConfig,
    SyncMetrics, SyncProgress, SyncRequest, SyncServerMetrics, SyncState,
};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::relay::RelayServiceEvent;

pub use host::ChainView;

/// Protocol name part: `/playergold/<network>/sync/<version>`.
pub const SYNC_PROTOCOL: &str = "sync";
/// Protocol version part.
pub const SYNC_PROTOCOL_VERSION: &str = "1";

/// Largest request frame: the largest `SyncRequest` (a full locator). Refused from its
/// header, before anything is allocated.
pub const MAX_REQUEST_FRAME: MaxFrameSize = MaxFrameSize::new(SyncRequest::MAX_BYTES as u32);
/// Largest response frame: a full `Blocks` reply plus slack.
pub const MAX_RESPONSE_FRAME: MaxFrameSize = MaxFrameSize::new(MAX_SYNC_FRAME_BYTES as u32);

/// Longest one outbound request may take, from opening the stream to the last byte of the
/// reply. Above the scheduler's largest stall timeout (`MAX_STALL_TIMEOUT`), so that stall
/// detection (and its penalties) stays in the scheduler, which knows the request's deadline.
pub const REQUEST_TIMEOUT: Duration = MAX_STALL_TIMEOUT.saturating_add(Duration::from_secs(8));
/// Longest wait for an outbound stream to open (multistream-select on a live connection is one
/// round trip).
pub const STREAM_OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a peer that opened a sync stream may take to send its request (at most 64 KiB).
pub const INBOUND_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest our reply may take to leave: 8 MiB in 30 s is about 280 KiB/s; a peer that reads
/// slower is not worth the memory the reply holds.
pub const INBOUND_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Inbound requests served at once for one peer. An honest client has at most
/// `max_in_flight_per_peer` (2) body or header requests, one cross-check and one status poll
/// open to us: 8 leaves room for a client configured a little wider.
pub const MAX_INBOUND_PER_PEER: usize = 8;
/// Inbound requests served at once, all peers together. Each holds at most one reply of up to
/// `MAX_RESPONSE_FRAME` (≈ 9 MiB) while it is written, so 32 bound replies in the air to about
/// 290 MiB in the worst case (every peer asking for maximum-size blocks), and to a few MiB with
/// ordinary blocks.
pub const MAX_INBOUND_TOTAL: usize = 32;
/// Streams over the limits are answered `Busy` (so the client backs off instead of counting a
/// stall) by at most this many small tasks at once; beyond it they are reset.
pub const MAX_BUSY_REPLIES: usize = 16;
/// The retry hint in those `Busy` replies, in milliseconds.
pub const BUSY_RETRY_AFTER_MS: u32 = 250;

/// Commands waiting for the owning task (progress reads go through the watch channel and do not
/// queue here); a full channel makes callers wait.
pub const COMMAND_CHANNEL_CAPACITY: usize = 64;
/// Events buffered per subscriber. A subscriber that falls further behind loses the oldest and
/// is told how many (the service never buffers for it).
pub const EVENT_CHANNEL_CAPACITY: usize = 1_024;
/// Replies (or failures) of outbound requests waiting for the owner. The scheduler bounds the
/// requests in flight (peers × `max_in_flight_per_peer`, plus status polls), and each produces
/// one outcome, so the channel never holds more than that; 256 keeps request tasks from waiting
/// on it in practice.
pub const OUTCOME_CHANNEL_CAPACITY: usize = 256;
/// Decoded inbound requests waiting for the owner (each at most 64 KiB); beyond it readers wait.
pub const INBOUND_CHANNEL_CAPACITY: usize = MAX_INBOUND_TOTAL;

/// Errors of the sync service and of its handle's calls.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    /// The genesis network name cannot form a protocol id.
    #[error("cannot name the sync protocol: {0}")]
    Protocol(#[from] ProtocolError),
    /// Another sync service already accepts the sync protocol on this network handle.
    #[error("a sync service is already running on this network: start one per node")]
    AlreadyRunning,
    /// The service task has stopped.
    #[error("the sync service has stopped")]
    Stopped,
}

impl From<AlreadyRegistered> for SyncError {
    fn from(_: AlreadyRegistered) -> Self {
        SyncError::AlreadyRunning
    }
}

/// Settings of the sync service.
#[derive(Debug, Clone)]
pub struct SyncServiceConfig {
    /// The scheduler's settings (window, in-flight requests, stall timeouts, our capabilities).
    pub sync: SyncConfig,
    /// The partition detector's settings.
    pub partition: PartitionConfig,
    /// Requests per second each peer may make of our server.
    pub serve_rate_per_sec: f64,
    /// Burst of requests each peer may make.
    pub serve_burst: f64,
    /// Bootstrap node addresses (ending in `/p2p/<id>`): redialled when the network is not
    /// healthy, and their reachability feeds the partition detector. Empty: no bootstrap signal.
    pub bootstrap: Vec<Multiaddr>,
}

impl Default for SyncServiceConfig {
    fn default() -> Self {
        SyncServiceConfig {
            sync: SyncConfig::default(),
            partition: PartitionConfig::default(),
            serve_rate_per_sec: SERVE_RATE_PER_SEC,
            serve_burst: SERVE_BURST,
            bootstrap: Vec::new(),
        }
    }
}

/// What the handle shows without asking the task: sync progress and the network state.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SyncStatus {
    /// Sync state, target height, our height, blocks per second, ETA.
    pub progress: SyncProgress,
    /// Healthy, degraded or partitioned.
    pub network: NetworkState,
    /// Peers connected (gauge).
    pub peers: usize,
}

/// Something the sync service saw or did, for the node (reputation, API, logs) and tests.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum SyncEvent {
    /// The reputation hook: a peer misbehaved toward sync (bad headers or blocks, stalls,
    /// malformed frames).
    Penalty {
        /// The peer.
        peer: PeerId,
        /// What it did.
        reason: Reason,
    },
    /// Sync closed a connection: another genesis (`penalized: false`), or a peer rotated out
    /// after repeated stalls.
    Disconnected {
        /// The peer.
        peer: PeerId,
        /// Whether it was its fault.
        penalized: bool,
    },
    /// A batch of downloaded blocks went into the chain.
    Imported {
        /// Blocks stored.
        blocks: usize,
        /// Our best block afterwards.
        hash: BlockHash,
        /// Its height.
        height: Height,
        /// Whether our best chain switched branches.
        reorg: bool,
    },
    /// The sync state changed (idle, headers, blocks, synced).
    StateChanged {
        /// Before.
        from: SyncState,
        /// After.
        to: SyncState,
    },
    /// The network state changed.
    NetworkStateChanged {
        /// Before.
        from: NetworkState,
        /// After.
        to: NetworkState,
        /// The signals at the change.
        report: NetworkReport,
    },
    /// The partition detector asked for a recovery action.
    Recovery {
        /// What.
        action: RecoveryAction,
        /// Whether this service could start it (not `RedialBootstrap` without bootstrap nodes).
        carried_out: bool,
    },
}

/// A snapshot of the sync service's counters (monotonic unless noted; Prometheus derives rates).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SyncServiceMetrics {
    /// The scheduler's counters (requests, headers validated, blocks received, stalls, ...).
    pub scheduler: SyncMetrics,
    /// The server's counters (served, busy, headers and blocks sent).
    pub server: SyncServerMetrics,
    /// Blocks stored by sync imports.
    pub blocks_imported: u64,
    /// Import batches (one durable commit each).
    pub import_batches: u64,
    /// Blocks the chain refused through the sender's fault.
    pub blocks_refused: u64,
    /// Imports that failed through no peer's fault (our store, a block from the near future).
    pub import_failures: u64,
    /// Outbound requests sent (scheduler requests and handshakes).
    pub requests_sent: u64,
    /// Outbound requests that got no usable reply.
    pub request_failures: u64,
    /// Inbound requests handed to the server.
    pub inbound_requests: u64,
    /// Inbound streams over the concurrency limits (answered `Busy` or reset).
    pub inbound_refused: u64,
    /// Frames from peers that were oversized or did not decode.
    pub malformed_frames: u64,
    /// Bytes of frames received (replies and requests, with framing).
    pub bytes_in: u64,
    /// Bytes of frames sent (requests and replies, with framing).
    pub bytes_out: u64,
    /// Peers connected now (gauge).
    pub peers: usize,
    /// Validated headers waiting for their bodies now (gauge).
    pub pending_headers: usize,
    /// Requests in flight now (gauge).
    pub in_flight: usize,
    /// The network state now (gauge).
    pub network_state: NetworkState,
}

type Reply<T> = oneshot::Sender<T>;

#[derive(Debug)]
enum Command {
    Metrics(Reply<SyncServiceMetrics>),
    Report(Reply<NetworkReport>),
    Shutdown(Reply<()>),
}

/// The stream protocol of sync on `network`: `/playergold/<network>/sync/1`.
pub fn sync_protocol(network: &NetworkName) -> Result<StreamProtocol, ProtocolError> {
    protocol_name(network, SYNC_PROTOCOL, SYNC_PROTOCOL_VERSION)
}

/// The peer id at the end of an address (`/p2p/<id>`), if any.
fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    addr.iter().find_map(|p| match p {
        Protocol::P2p(peer) => Some(peer),
        _ => None,
    })
}

/// The sync service's constructor.
#[derive(Debug)]
pub struct SyncService;

impl SyncService {
    /// Starts sync on `network` over `chain`: accepts `/playergold/<genesis network>/sync/1` and
    /// spawns the owning task. `relay_events` (from [`crate::RelayHandle::subscribe`]) brings
    /// blocks whose parent is missing (an orphan trigger) and blocks peers delivered. Must be
    /// called inside a multi-threaded Tokio runtime. Returns the handle and the task, which ends
    /// on [`SyncHandle::shutdown`], when every handle is dropped, or when the network stops.
    pub fn start(
        network: NetworkHandle,
        chain: Arc<Blockchain>,
        config: SyncServiceConfig,
        relay_events: Option<broadcast::Receiver<RelayServiceEvent>>,
    ) -> Result<(SyncHandle, JoinHandle<()>), SyncError> {
        let name = NetworkName::new(chain.genesis().network.clone())?;
        let protocol = sync_protocol(&name)?;
        let incoming = network.streams().accept(protocol.clone())?;
        let (commands_tx, commands_rx) = mpsc::channel(COMMAND_CHANNEL_CAPACITY);
        let (events, _) = broadcast::channel(EVENT_CHANNEL_CAPACITY);
        let owner = task::Owner::new(task::OwnerParts {
            network,
            chain,
            config,
            protocol,
            incoming,
            relay_events,
            commands: commands_rx,
            events: events.clone(),
        });
        let (status_tx, status_rx) = watch::channel(owner.initial_status());
        let owner = owner.with_status(status_tx);
        let runtime = tokio::runtime::Handle::current();
        let task = tokio::task::spawn_blocking(move || runtime.block_on(owner.run()));
        Ok((
            SyncHandle {
                commands: commands_tx,
                events,
                status: status_rx,
            },
            task,
        ))
    }
}

/// A cloneable handle to the sync service's owning task.
#[derive(Debug, Clone)]
pub struct SyncHandle {
    commands: mpsc::Sender<Command>,
    events: broadcast::Sender<SyncEvent>,
    status: watch::Receiver<SyncStatus>,
}

impl SyncHandle {
    async fn request<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, SyncError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| SyncError::Stopped)?;
        rx.await.map_err(|_| SyncError::Stopped)
    }

    /// Sync progress: state, target height, our height, blocks per second and ETA.
    pub fn progress(&self) -> SyncProgress {
        self.status.borrow().progress
    }

    /// The network state (healthy, degraded, partitioned).
    pub fn network_state(&self) -> NetworkState {
        self.status.borrow().network
    }

    /// Progress and network state together.
    pub fn status(&self) -> SyncStatus {
        *self.status.borrow()
    }

    /// A receiver that is told whenever the status changes (for the API, a progress bar, tests).
    pub fn watch(&self) -> watch::Receiver<SyncStatus> {
        self.status.clone()
    }

    /// The partition detector's signals now.
    pub async fn network_report(&self) -> Result<NetworkReport, SyncError> {
        self.request(Command::Report).await
    }

    /// A snapshot of the counters.
    pub async fn metrics(&self) -> Result<SyncServiceMetrics, SyncError> {
        self.request(Command::Metrics).await
    }

    /// Subscribes to sync events (bounded: a subscriber that falls behind by more than
    /// [`EVENT_CHANNEL_CAPACITY`] events loses the oldest and is told how many).
    pub fn subscribe(&self) -> broadcast::Receiver<SyncEvent> {
        self.events.subscribe()
    }

    /// Stops the service: waits for a running import to finish (so the chain is left
    /// consistent and released), stops its tasks and ends the owning task.
    pub async fn shutdown(&self) -> Result<(), SyncError> {
        self.request(Command::Shutdown).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_protocol_id_names_the_network() {
        let name = NetworkName::new("devnet").expect("valid");
        assert_eq!(
            sync_protocol(&name).expect("valid").as_ref(),
            "/playergold/devnet/sync/1"
        );
    }

    #[test]
    fn the_request_timeout_leaves_stall_detection_to_the_scheduler() {
        assert!(REQUEST_TIMEOUT > MAX_STALL_TIMEOUT);
        assert!(STREAM_OPEN_TIMEOUT < REQUEST_TIMEOUT);
    }

    #[test]
    fn bootstrap_peer_ids_come_from_the_address() {
        let peer = PeerId::random();
        let addr: Multiaddr = format!("/ip4/127.0.0.1/udp/1/quic-v1/p2p/{peer}")
            .parse()
            .expect("address");
        assert_eq!(peer_of(&addr), Some(peer));
        let bare: Multiaddr = "/ip4/127.0.0.1/udp/1/quic-v1".parse().expect("address");
        assert_eq!(peer_of(&bare), None);
    }
}
