//! PlayerGold network services: the adapters that run the sans-IO protocol engines of
//! `playergold-protocol` over real `playergold-net` streams and the chain.
//!
//! Each service is one owning task behind a cloneable handle with bounded channels. The task owns
//! the engine and the chain-facing host; small per-peer tasks only move bytes. This crate holds
//! no protocol logic (that lives in the engines) and no transport logic (that lives in
//! `playergold-net`): it decides which task does what, and bounds every buffer in between.
//!
//! [`relay`]: propagation of transactions, blocks and AI messages (`/playergold/<net>/relay/1`).
//!
//! ```text
//!  peer stream (the one the peer opened)
//!     └─► reader task: read_frame (≤ MAX_RELAY_FRAME_BYTES) ─► decode RelayMessage
//!            │ malformed / oversized ─► Offence(MalformedFrame) + disconnect
//!            ▼ bounded mpsc (count and bytes)
//!  owning task ── RelayEngine<PeerId>::handle_message ──► RelayHost = ChainHost ─► Blockchain
//!     │  ▲  ▲                                           (mempool, header checks, import)
//!     │  │  │                      block imports: import thread, niceness 10, owner waits
//!     │  │  └── RelayHandle commands (local work first): submit tx, propagate block, AI ...
//!     │  └───── NetworkEvent: peer connected / disconnected / identified; poll_timeout timers
//!     ├─► events: bounded broadcast of RelayServiceEvent (offences, new items, settlements)
//!     └─► poll_transmit(peer), only while the peer's writer has room
//!            ▼ bounded mpsc (a few frames)
//!         writer task: write_frame on the stream we opened ─► peer
//! ```
//!
//! The engine's per-peer priority queue is the only real outbound buffer (bounded by
//! `max_peer_queue_bytes`); a peer that lets it fill is dropped through the network handle.
//!
//! [`sync`]: headers-first catch-up and partition recovery (`/playergold/<net>/sync/1`): one
//! request per stream, the scheduler deciding what to ask whom, imports on the blocking pool.
//!
//! ```text
//!  PeerConnected ─► status handshake    relay MissingParent ─► on_orphan
//!  owning task ── SyncScheduler ─► request task: open stream, 1 frame out, 1 frame in ─► owner
//!     │        ── take_ready ─► import task: Blockchain::import_blocks (one commit per batch)
//!     │        ── SyncServer ◄─ reader task: 1 request frame per inbound stream (bounded)
//!     │        ── PartitionDetector ─► redial bootstrap, DHT walk; state changes logged
//!     └─► watch: SyncStatus (progress, network state); broadcast: SyncEvent (penalties, ...)
//! ```
//!
//! [`reputation`]: one score per peer from every service's reports; disconnects and bans
//! through the network handle, bans kept in the chain database across restarts.
//!
//! ```text
//!  relay Offence/Delivered, sync Penalty (forward_reports), API ban/unban ─► ReputationHandle
//!     ─► owning task
//!     Reputation<PeerId> ─► NetworkHandle::{set_score, disconnect, ban, ban_ip}
//!                       └─► chain.redb aux "reputation/bans"
//! ```

pub mod relay;
pub mod reputation;
pub mod sync;

pub use relay::{RelayError, RelayHandle, RelayService, RelayServiceEvent, RelayServiceMetrics};
pub use reputation::{
    BanEntry, PeerStanding, ReputationError, ReputationHandle, ReputationService, forward_reports,
};
pub use sync::{
    SyncError, SyncEvent, SyncHandle, SyncService, SyncServiceConfig, SyncServiceMetrics,
    SyncStatus,
};
