//! PlayerGold networking: TLS 1.3 transports, node identity and connection management.
//!
//! This crate owns every byte between PlayerGold nodes. It authenticates peers (the node key in
//! `<data-dir>/node_key`, carried in a self-signed TLS 1.3 certificate), keeps enough good peers
//! by itself (a deterministic [`policy::ConnectionManager`] fed by a thin libp2p adapter) and
//! remembers them across restarts (the [`addrbook::AddressBook`], persisted through
//! [`addrbook::AddressBookStore`]). It must not touch chain state: the chain store only lends it
//! a blob slot for the address book, and later protocols (sync, propagation) plug in above it.
//!
//! ```text
//!   peer ──TCP──▶ TLS 1.3 (libp2p-tls, cert carries the node key) ──▶ yamux ─┐
//!   peer ──UDP──▶ QUIC v1 (TLS 1.3 built in) ──────────────────────────────┤
//!                                                                           ▼
//!        libp2p Swarm ── connection-limits, memory limits (refuse first)
//!          │           ── ping (heartbeats), identify, peer exchange (/playergold/<net>/addr/1)
//!          │           ── Gatekeeper ◀──▶ ConnectionManager (sans-IO: accept / evict / dial)
//!          │                                   ▲            │
//!          │                                   │       AddressBook ◀──▶ AddressBookStore
//!          ▼                                   │                         (chain db / memory)
//!   network task (owns the swarm) ◀── bounded mpsc ── NetworkHandle (connect, disconnect,
//!          └──────── bounded broadcast ──▶ NetworkEvent subscribers    peers, events, ...)
//! ```
//!
//! Where to look: [`service`] (the task and its [`NetworkHandle`]), [`policy`] (who to accept,
//! evict and dial), [`addrbook`] (known peers and their persistence), [`identity`] (the node
//! key), [`config`], [`protocol`] (protocol ids `/playergold/<network>/<protocol>/<version>`),
//! [`framing`] (length-delimited frames with a per-protocol limit), [`peer_exchange`] (minimal
//! address discovery), [`metrics`], and `testnet` (feature `test-utils`: N real nodes on
//! 127.0.0.0/8 for tests).
//!
//! Only TLS 1.3 is compiled in: rustls is built without its `tls12` feature (only this crate's
//! tests enable it, to check that a TLS 1.2 client is refused), and there is no Noise and no
//! plaintext transport.

pub mod addrbook;
mod behaviour;
pub mod config;
pub mod framing;
pub mod identity;
pub mod latency;
pub mod metrics;
pub mod peer_exchange;
pub mod policy;
pub mod protocol;
pub mod service;
#[cfg(feature = "test-utils")]
pub mod testnet;

pub use addrbook::{ADDRESS_BOOK_AUX_KEY, AddressBook, AddressBookStore, FnStore, MemoryStore};
pub use config::NetworkConfig;
pub use identity::{KeyError, load_or_create_node_key};
pub use libp2p::{Multiaddr, PeerId};
pub use metrics::NetworkMetrics;
pub use policy::{ConnectionManager, Direction, PeerInfo, Score};
pub use protocol::{NetworkName, protocol_name};
pub use service::{NetworkError, NetworkEvent, NetworkHandle, start, start_with_metrics};
