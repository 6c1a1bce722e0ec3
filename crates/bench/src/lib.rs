//! PlayerGold benchmarks. `propagation`: how fast and at what bandwidth transactions and blocks
//! reach every node of a WAN-like overlay through our relay, next to rust-libp2p gossipsub on the
//! very same overlay, links and workload.
//!
//! The bench owns nothing of the node: it drives the real crates (`playergold-net` for TLS over
//! TCP with emulated link delays, `playergold-chain` for validation and storage,
//! `playergold-services` for the relay) in one process, on one clock.
//!
//! ```text
//!  rtt ──► overlay (regions, links, delays, Dijkstra bound)
//!             │           links: node IP ─► LinkDelay of the dialler
//!  workload ──┼──► ours       (net + chain + relay service per node) ──┐
//!             └──► gossipsub  (same transport stack and delays)        ├─► recorder ─► stats ─► report
//!                                                                      ┘
//! ```

pub mod chains;
pub mod gossip;
pub mod hops;
pub mod links;
pub mod ours;
pub mod overlay;
pub mod prom;
pub mod propagation;
pub mod recorder;
pub mod report;
pub mod rtt;
pub mod stats;
pub mod workload;
