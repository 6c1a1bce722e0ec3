//! PlayerGold networking: TLS 1.3 transports, node identity, discovery and connection
//! management.
//!
//! This crate owns every byte between PlayerGold nodes. It authenticates peers (the node key in
//! `<data-dir>/node_key`, carried in a self-signed TLS 1.3 certificate), finds peers by itself
//! (mDNS on the local network, a Kademlia DHT seeded by bootstrap nodes, peer exchange; see
//! [`discovery`]), keeps enough good peers (a deterministic [`policy::ConnectionManager`] fed by
//! a thin libp2p adapter) and remembers them across restarts (the [`addrbook::AddressBook`],
//! persisted through [`addrbook::AddressBookStore`]). It must not touch chain state: the chain
//! store only lends it a blob slot for the address book, and later protocols (sync,
//! propagation) plug in above it through raw streams ([`NetworkHandle::streams`]).
//!
//! ```text
//!   peer ──TCP──▶ TLS 1.3 (libp2p-tls, cert carries the node key) ──▶ yamux ─┐
//!   peer ──UDP──▶ QUIC v1 (TLS 1.3 built in) ──────────────────────────────┤
//!                                                                           ▼
//!        libp2p Swarm ── connection-limits, memory limits (refuse first)
//!          │           ── Gatekeeper ◀──▶ ConnectionManager (sans-IO: accept, probation,
//!          │        (keep-alive per conn)      ▲   │   evict, dial, adopt, AI-peer quota)
//!          │                 │                 │   ▼
//!          │           ── ping, identify ──────┼─▶ AddressBook ◀──▶ AddressBookStore
//!          │              (agent carries caps) │     ▲  ▲  ▲         (chain db / memory)
//!          │           ── peer exchange /addr/1┘     │  │  │
//!          │           ── mDNS (LAN) ────────────────┘  │  │
//!          │           ── Kademlia /kad/1.0.0 ◀─ DiversityFilter (sans-IO, /24 limits)
//!          │                walks, capability providers ┘  │
//!          │           ── libp2p-stream (relay, sync) ◀────┼──── NetworkHandle::streams
//!          ▼                                   DiscoveryScheduler (sans-IO: walks, announces)
//!   network task (owns the swarm) ◀── bounded mpsc ── NetworkHandle (connect, peers,
//!          └──────── bounded broadcast ──▶ NetworkEvent    find_peers_with, closest_peers, ...)
//! ```
//!
//! Where to look: [`service`] (the task and its [`NetworkHandle`]), [`policy`] (who to accept,
//! evict, adopt and dial), [`addrbook`] (known peers and their persistence), [`discovery`]
//! (mDNS, DHT, capabilities), [`diversity`] (routing-table IP diversity), [`identity`] (the node
//! key), [`config`], [`protocol`] (protocol ids `/playergold/<network>/<protocol>/<version>`),
//! [`framing`] (length-delimited frames with a per-protocol limit), [`peer_exchange`] (address
//! exchange between peers), [`metrics`], and `testnet` (feature `test-utils`: N real nodes on
//! 127.0.0.0/8 for tests).
//!
//! Only TLS 1.3 is compiled in: rustls is built without its `tls12` feature (only this crate's
//! tests enable it, to check that a TLS 1.2 client is refused), and there is no Noise and no
//! plaintext transport.

pub mod addrbook;
mod behaviour;
pub mod config;
pub mod discovery;
pub mod diversity;
pub mod framing;
pub mod identity;
pub mod latency;
pub mod metrics;
#[cfg(feature = "test-utils")]
pub mod netns;
pub mod peer_exchange;
pub mod policy;
pub mod protocol;
pub mod service;
#[cfg(feature = "test-utils")]
pub mod testnet;

pub use addrbook::{ADDRESS_BOOK_AUX_KEY, AddressBook, AddressBookStore, FnStore, MemoryStore};
pub use config::{DhtMode, NetworkConfig};
pub use discovery::{CapablePeer, DhtStatus};
pub use identity::{KeyError, load_or_create_node_key};
pub use libp2p::{Multiaddr, PeerId};
pub use metrics::NetworkMetrics;
pub use playergold_protocol::Capabilities;
pub use policy::{ConnectionManager, Direction, PeerInfo, Score};
pub use protocol::{NetworkName, protocol_name};
pub use service::{NetworkError, NetworkEvent, NetworkHandle, start, start_with_metrics};
