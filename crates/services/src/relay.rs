//! The relay service: the propagation engine ([`playergold_protocol::relay::RelayEngine`]) on real
//! streams (`/playergold/<network>/relay/1`).
//!
//! [`RelayService::start`] accepts the relay protocol once and spawns one owning task holding the
//! engine and a [`RelayHost`](playergold_protocol::relay::RelayHost) over the chain. For every
//! connected peer it opens one outbound stream (we write only on the stream we opened and read
//! only on the stream the peer opened). Each stream starts with a [`RelayHello`] frame, then
//! carries one postcard-encoded [`RelayMessage`] per length-delimited frame of at most
//! [`MAX_RELAY_FRAME_BYTES`].
//!
//! Where bytes wait, and why each buffer is bounded:
//! - inbound: one frame per reader task, then [`INBOUND_CHANNEL_CAPACITY`] messages and
//!   [`INBOUND_BUFFER_BYTES`] bytes in the channel to the owner; a full channel stops the readers,
//!   and the transport's flow control stops the peers;
//! - outbound: the engine's per-peer priority queue (`max_peer_queue_bytes`), then
//!   [`WRITER_QUEUE_FRAMES`] encoded frames per writer. Frames leave the engine only while the
//!   writer has room, so priorities apply until the last moment; a peer whose engine queue
//!   overflows, or that takes longer than [`FRAME_WRITE_TIMEOUT`] to take one frame, is dropped.
//!   When nothing waits for a peer's writer, the owner writes the frame into the stream itself
//!   if the multiplexer takes it at once (its window has room), and hands the writer only what
//!   it did not take: a relayed block then costs no hop through the writer task.
//!
//! The owning task calls the chain synchronously (signature checks, redb commits), so it runs on a
//! blocking-pool thread of the runtime and never stalls the runtime's workers. Each turn writes
//! the frames first, then rebuilds compact blocks from the mempool (reported as
//! [`RelayServiceEvent::BlockReceived`]), then imports: a block relayed on its valid header (the
//! engine's BIP152-style relay) leaves before its body is rebuilt or checked, so each hop adds a
//! link delay, not a rebuild and an import. The imports themselves run on the relay's import
//! thread, at a lower CPU priority ([`IMPORT_NICENESS`]), while the owner waits: on a contended
//! CPU, other relays and programs go before our import (this owner's next items wait for it).

mod host;
mod import;
mod io;
mod metrics;
mod task;

use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p::StreamProtocol;
use libp2p_stream::AlreadyRegistered;
use playergold_chain::{Blockchain, ChainBackend};
use playergold_net::framing::MaxFrameSize;
use playergold_net::protocol::ProtocolError;
use playergold_net::{NetworkHandle, NetworkName, PeerId, protocol_name};
use playergold_primitives::codec::WireDecode;
use playergold_primitives::{Block, BlockHash, Hash32, Transaction, TxId};
use playergold_protocol::Capabilities;
use playergold_protocol::ai::{Challenge, ChallengeId, Solution, SolutionId, Verdict};
use playergold_protocol::relay::{
    BlockVerdict, MAX_RELAY_FRAME_BYTES, PropagationConfig, RelayMessage, RelayMetrics, Settlement,
    TxSalt, TxVerdict,
};
use playergold_protocol::reputation::Reason;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::Instrument;

pub use import::{IMPORT_NICENESS, lower_current_thread_priority};
pub use metrics::{MessageCounter, MessageKind, WireCounters};

/// Protocol name part: `/playergold/<network>/relay/<version>`.
pub const RELAY_PROTOCOL: &str = "relay";
/// Protocol version part.
pub const RELAY_PROTOCOL_VERSION: &str = "1";

/// Largest frame on a relay stream: the largest relay message (a maximum-size block plus slack).
/// A longer frame is refused from its header, before anything is allocated.
pub const MAX_FRAME_SIZE: MaxFrameSize = MaxFrameSize::new(MAX_RELAY_FRAME_BYTES as u32);

/// Commands waiting for the owning task. Callers await each reply, so 256 in flight covers many
/// concurrent local submitters (API, producer, AI worker); a full channel makes callers wait.
pub const COMMAND_CHANNEL_CAPACITY: usize = 256;

/// Events buffered per subscriber. Up to two events per accepted transaction, so 4,096 covers a
/// burst of a couple of thousand transactions; a subscriber that falls further behind loses the
/// oldest events and is told how many (it never makes the service buffer).
pub const EVENT_CHANNEL_CAPACITY: usize = 4_096;

/// Decoded messages waiting for the owning task, all peers together. 256 keeps the owner busy
/// across a scheduling hiccup; beyond it readers wait and transport flow control slows peers.
pub const INBOUND_CHANNEL_CAPACITY: usize = 256;

/// Bytes of decoded frames waiting for the owning task, all peers together. Eight maximum-size
/// blocks: the message count alone would allow 256 MiB of blocks.
pub const INBOUND_BUFFER_BYTES: usize = 8 * playergold_primitives::MAX_BLOCK_BYTES;

/// Encoded frames handed to one peer's writer and not yet written. Small on purpose: the engine's
/// priority queue is the buffer (blocks overtake transactions there, not here); two frames keep
/// the stream busy while the owner refills.
pub const WRITER_QUEUE_FRAMES: usize = 2;

/// Longest wait for an outbound relay stream to open (multistream-select over a live connection
/// is one round trip; ten seconds is far above any real link).
pub const STREAM_OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest time one frame may take to leave. A maximum-size frame (1 MiB) that cannot be written
/// in 20 s means the peer reads at under 50 KiB/s or not at all: it is dropped as slow.
pub const FRAME_WRITE_TIMEOUT: Duration = Duration::from_secs(20);

/// Outbound streams opened per peer connection. A stream can die with a duplicate connection the
/// connection manager closes; a peer that loses more than this many is disconnected instead of
/// being retried without end.
pub const MAX_STREAM_OPENS: u8 = 4;

/// Wait before the first re-open of a failed outbound stream, doubled for each further one: the
/// network first settles which of two duplicate connections stays (an immediate re-open can pick
/// the closing one again and spend the [`MAX_STREAM_OPENS`] budget in a few milliseconds).
pub const STREAM_REOPEN_DELAY: Duration = Duration::from_millis(50);

/// Inbound messages the owner handles before it flushes outgoing frames and fires due timers.
/// Eight full transaction batches are about 800 signature checks (tens of milliseconds): enough
/// to amortise the per-turn bookkeeping, short enough that relay batches and request timeouts
/// stay prompt under load.
pub const INBOUND_BATCH: usize = 8;

/// The stream protocol of the relay on `network`: `/playergold/<network>/relay/1`.
pub fn relay_protocol(network: &NetworkName) -> Result<StreamProtocol, ProtocolError> {
    protocol_name(network, RELAY_PROTOCOL, RELAY_PROTOCOL_VERSION)
}

/// The first frame on every relay stream: who we are to the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayHello {
    /// Hash of the sender's genesis block. A peer on another genesis under the same network name
    /// would fail every header check; it is disconnected at once instead (without a penalty:
    /// it is another network, not a misbehaving peer).
    pub genesis: BlockHash,
    /// What the sender offers (directed challenges go to `ai-compute` peers).
    pub capabilities: Capabilities,
    /// The salt for the short ids of transactions announced to the sender; without one it is
    /// sent full-id announcements.
    pub tx_salt: Option<TxSalt>,
}

impl WireDecode for RelayHello {
    /// A hash and a byte, with room for fields a later version may add.
    const MAX_BYTES: usize = 128;
    const WHAT: &'static str = "relay hello";
}

/// Errors of the relay service and of its handle's calls.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// The genesis network name cannot form a protocol id.
    #[error("cannot name the relay protocol: {0}")]
    Protocol(#[from] ProtocolError),
    /// Another relay service already accepts the relay protocol on this network handle.
    #[error("a relay service is already running on this network: start one per node")]
    AlreadyRunning,
    /// The chain refused a local transaction.
    #[error("transaction refused ({verdict:?}): {reason}")]
    TxRejected {
        /// What the relay made of it: `Known`, `Invalid` or `Refused`.
        verdict: TxVerdict,
        /// The chain's reason.
        reason: String,
    },
    /// The chain refused a local block.
    #[error("block refused ({verdict:?}): {reason}")]
    BlockRejected {
        /// What the relay made of it: `Orphan`, `Invalid` or `Refused`.
        verdict: BlockVerdict,
        /// The chain's reason.
        reason: String,
    },
    /// A local challenge, solution or verdict does not verify (bad signature or oversized).
    #[error("the {0} does not verify: sign it with the key it names")]
    InvalidAiMessage(&'static str),
    /// The service task has stopped.
    #[error("the relay service has stopped")]
    Stopped,
}

impl From<AlreadyRegistered> for RelayError {
    fn from(_: AlreadyRegistered) -> Self {
        RelayError::AlreadyRunning
    }
}

/// Something the relay saw, for the node (reputation, API, AI worker, sync).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RelayServiceEvent {
    /// Relay streams are up both ways with a peer, and we know its capabilities.
    PeerReady {
        /// The peer.
        peer: PeerId,
        /// What it offers.
        capabilities: Capabilities,
    },
    /// A peer left the relay (disconnected, dropped, or its streams failed).
    PeerGone {
        /// The peer.
        peer: PeerId,
    },
    /// The reputation hook: a peer misbehaved (`Reason::Relay(..)` from the engine,
    /// `Reason::MalformedFrame` from the adapter, which also disconnects it).
    Offence {
        /// The peer.
        peer: PeerId,
        /// What it did.
        reason: Reason,
    },
    /// A peer did not take its data in time (queue overflow or stalled write) and was dropped.
    SlowPeer {
        /// The peer.
        peer: PeerId,
    },
    /// A peer delivered a new valid item first (reputation rewards this: `Reason::Delivered`).
    Delivered {
        /// The peer.
        peer: PeerId,
    },
    /// A new valid transaction entered the mempool.
    NewTransaction {
        /// Its id.
        id: TxId,
        /// Who sent it (`None`: local).
        from: Option<PeerId>,
        /// When the relay accepted it (subscribers may read the event later).
        at: Instant,
    },
    /// A peer's block is here whole under a valid header (rebuilt from its compact form, or
    /// received in full); its import follows (`NewBlock`).
    BlockReceived {
        /// Its hash.
        hash: BlockHash,
        /// Who sent it.
        from: PeerId,
        /// When its body was complete (subscribers may read the event later).
        at: Instant,
    },
    /// A new block was imported.
    NewBlock {
        /// Its hash.
        hash: BlockHash,
        /// Who sent it (`None`: local).
        from: Option<PeerId>,
        /// When its import completed (subscribers may read the event later).
        at: Instant,
    },
    /// A block's parent is unknown: sync should fetch it from `peer`.
    MissingParent {
        /// The block.
        hash: BlockHash,
        /// Its missing parent.
        parent: BlockHash,
        /// Who has it.
        peer: PeerId,
    },
    /// A challenge arrived (solve it if this node is `ai-compute`, then `submit_solution`).
    ChallengeReceived {
        /// The challenge.
        challenge: Arc<Challenge>,
        /// Who sent it.
        from: PeerId,
    },
    /// We were asked to validate a solution: check it and `submit_verdict`.
    SolutionToVerify {
        /// The challenge.
        challenge: Arc<Challenge>,
        /// The solution.
        solution: Arc<Solution>,
    },
    /// A solution reached a quorum of agreeing verdicts.
    SolutionSettled(Arc<Settlement>),
}

/// A snapshot of the relay's counters (monotonic unless noted; Prometheus derives rates).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayServiceMetrics {
    /// The engine's counters: items received, duplicates and sent per kind, compact blocks
    /// rebuilt from the mempool vs partially fetched vs fallen back to a full block, retries,
    /// slow peers.
    pub engine: RelayMetrics,
    /// Frames handed to writers, per message kind (messages, bytes with framing).
    pub sent: WireCounters,
    /// Frames received and decoded, per message kind.
    pub received: WireCounters,
    /// Frames that failed to decode or exceeded the limit (each cost the peer its connection).
    pub malformed_frames: u64,
    /// Peers in the relay now (gauge).
    pub peers: usize,
    /// Bytes queued in the engine toward all peers now (gauge).
    pub queued_bytes: usize,
    /// Largest engine queue toward one peer seen so far, in bytes (never above
    /// `max_peer_queue_bytes`).
    pub peak_peer_queue_bytes: usize,
}

/// A peer as the relay sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayPeer {
    /// The peer.
    pub peer: PeerId,
    /// Its capabilities: from identify until its relay hello arrives, then from the hello;
    /// [`RelayHandle::set_peer_capabilities`] overrides both.
    pub capabilities: Capabilities,
    /// Whether our outbound stream to it is open.
    pub outbound_open: bool,
    /// Whether its stream to us is open (its hello arrived).
    pub inbound_open: bool,
    /// Bytes queued toward it in the engine.
    pub queued_bytes: usize,
}

type Reply<T> = oneshot::Sender<T>;

#[derive(Debug)]
enum Command {
    SubmitTransaction(Box<Transaction>, Reply<Result<TxId, RelayError>>),
    PropagateBlock(Box<Block>, Reply<Result<BlockHash, RelayError>>),
    BroadcastChallenge(Box<Challenge>, Reply<ChallengeId>),
    SubmitSolution(Box<Solution>, Reply<SolutionId>),
    SubmitVerdict(Box<Verdict>, Reply<Hash32>),
    SendDirected(Vec<PeerId>, Box<RelayMessage>),
    SetCapabilities(PeerId, Capabilities),
    Metrics(Reply<RelayServiceMetrics>),
    Peers(Reply<Vec<RelayPeer>>),
    Shutdown(Reply<()>),
}

/// The relay service's constructor.
#[derive(Debug)]
pub struct RelayService;

impl RelayService {
    /// Starts the relay on `network` over `chain`: accepts `/playergold/<genesis network>/relay/1`
    /// (the genesis names the network), and spawns the owning task. `capabilities` are ours, sent
    /// to every peer in the hello. Must be called inside a Tokio runtime. Returns the handle and
    /// the task, which ends on [`RelayHandle::shutdown`], when every handle is dropped, or when
    /// the network stops.
    pub fn start(
        network: NetworkHandle,
        chain: Arc<Blockchain>,
        config: PropagationConfig,
        capabilities: Capabilities,
    ) -> Result<(RelayHandle, JoinHandle<()>), RelayError> {
        let name =
            NetworkName::new(chain.genesis().network.clone()).map_err(RelayError::Protocol)?;
        let protocol = relay_protocol(&name)?;
        let incoming = network.streams().accept(protocol.clone())?;
        // The salt is the engine's: the owner fills it in.
        let hello = RelayHello {
            genesis: chain.genesis_hash(),
            capabilities,
            tx_salt: None,
        };
        let local = network.local_peer_id();
        let (commands_tx, commands_rx) = mpsc::channel(COMMAND_CHANNEL_CAPACITY);
        let (events, _) = broadcast::channel(EVENT_CHANNEL_CAPACITY);
        let owner = task::Owner::new(task::OwnerParts {
            network,
            chain,
            config,
            protocol,
            hello,
            incoming,
            commands: commands_rx,
            events: events.clone(),
        });
        let span = tracing::debug_span!("relay", local = %local);
        let runtime = tokio::runtime::Handle::current();
        let task =
            tokio::task::spawn_blocking(move || runtime.block_on(owner.run().instrument(span)));
        Ok((
            RelayHandle {
                commands: commands_tx,
                events,
            },
            task,
        ))
    }
}

/// A cloneable handle to the relay's owning task.
#[derive(Debug, Clone)]
pub struct RelayHandle {
    commands: mpsc::Sender<Command>,
    events: broadcast::Sender<RelayServiceEvent>,
}

impl RelayHandle {
    async fn send(&self, command: Command) -> Result<(), RelayError> {
        self.commands
            .send(command)
            .await
            .map_err(|_| RelayError::Stopped)
    }

    async fn request<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, RelayError> {
        let (tx, rx) = oneshot::channel();
        self.send(make(tx)).await?;
        rx.await.map_err(|_| RelayError::Stopped)
    }

    /// Validates a local transaction through the chain and propagates it. `Ok(id)` means it
    /// entered the mempool and is on its way; [`RelayError::TxRejected`] carries the verdict
    /// (`Known`, `Invalid` or `Refused`) and the chain's reason.
    pub async fn submit_transaction(&self, tx: Transaction) -> Result<TxId, RelayError> {
        self.request(|reply| Command::SubmitTransaction(Box::new(tx), reply))
            .await?
    }

    /// A block this node produced: pushes it compact to every peer once its header checks out,
    /// then imports it (a block the producer already imported is fine). An import failure is
    /// returned as [`RelayError::BlockRejected`]; peers that got the push by then find the same
    /// fault and are never served the body.
    pub async fn propagate_block(&self, block: Block) -> Result<BlockHash, RelayError> {
        self.request(|reply| Command::PropagateBlock(Box::new(block), reply))
            .await?
    }

    /// Issues a challenge (signed by us, `hops_left` set to the budget, usually
    /// `PropagationConfig::max_hops`): sends it directed to `ai-compute` peers.
    pub async fn broadcast_challenge(
        &self,
        challenge: Challenge,
    ) -> Result<ChallengeId, RelayError> {
        if challenge.verify().is_err() {
            return Err(RelayError::InvalidAiMessage("challenge"));
        }
        self.request(|reply| Command::BroadcastChallenge(Box::new(challenge), reply))
            .await
    }

    /// A solution we computed for a challenge we received: sent back toward the issuer and to
    /// validators (`ai-compute` peers) for checking. A solution to a challenge this node never
    /// saw goes nowhere.
    pub async fn submit_solution(&self, solution: Solution) -> Result<SolutionId, RelayError> {
        if solution.verify().is_err() {
            return Err(RelayError::InvalidAiMessage("solution"));
        }
        self.request(|reply| Command::SubmitSolution(Box::new(solution), reply))
            .await
    }

    /// A verdict we signed on a solution we were asked to verify: counted and flooded.
    pub async fn submit_verdict(&self, verdict: Verdict) -> Result<Hash32, RelayError> {
        if verdict.verify().is_err() {
            return Err(RelayError::InvalidAiMessage("verdict"));
        }
        self.request(|reply| Command::SubmitVerdict(Box::new(verdict), reply))
            .await
    }

    /// Sends `message` to the given relay peers as is (`directed` with explicit targets); peers
    /// not in the relay are skipped.
    pub async fn send_directed(
        &self,
        peers: Vec<PeerId>,
        message: RelayMessage,
    ) -> Result<(), RelayError> {
        self.send(Command::SendDirected(peers, Box::new(message)))
            .await
    }

    /// Overrides a peer's capabilities (its relay hello, or identify before the hello, set them
    /// otherwise).
    pub async fn set_peer_capabilities(
        &self,
        peer: PeerId,
        capabilities: Capabilities,
    ) -> Result<(), RelayError> {
        self.send(Command::SetCapabilities(peer, capabilities))
            .await
    }

    /// A snapshot of the counters.
    pub async fn metrics(&self) -> Result<RelayServiceMetrics, RelayError> {
        self.request(Command::Metrics).await
    }

    /// The peers in the relay.
    pub async fn peers(&self) -> Result<Vec<RelayPeer>, RelayError> {
        self.request(Command::Peers).await
    }

    /// Subscribes to relay events (bounded: a subscriber that falls behind by more than
    /// [`EVENT_CHANNEL_CAPACITY`] events loses the oldest and is told how many).
    pub fn subscribe(&self) -> broadcast::Receiver<RelayServiceEvent> {
        self.events.subscribe()
    }

    /// Stops the service: closes its streams and ends its task (the network keeps running).
    pub async fn shutdown(&self) -> Result<(), RelayError> {
        self.request(Command::Shutdown).await
    }
}
