//! PlayerGold benchmarks. `propagation`: how fast and at what bandwidth transactions and blocks
//! reach every node of a WAN-like overlay through our relay, next to rust-libp2p gossipsub on the
//! very same overlay, links and workload. `devnet_load`: a devnet of real `playergold`
//! processes under a transaction load, measured through their HTTP APIs and `/proc`.
//!
//! The bench owns nothing of the node: `propagation` drives the real crates (`playergold-net` for
//! TLS over TCP with emulated link delays, `playergold-chain` for validation and storage,
//! `playergold-services` for the relay) in one process, on one clock; `devnet_load` runs the
//! `playergold` binary and only talks to it as an operator's tools would.
//!
//! ```text
//!  rtt ──► overlay (regions, links, delays, Dijkstra bound)
//!             │           links: node IP ─► LinkDelay of the dialler
//!  workload ──┼──► ours       (net + chain + relay service per node) ──┐
//!             └──► gossipsub  (same transport stack and delays)        ├─► recorder ─► stats ─► report
//!                                                                      ┘
//!  playergold devnet (N processes) ◄── devnet_load: HTTP load, /status, /metrics, /proc ─► report
//! ```

pub mod chains;
pub mod devnet_load;
pub mod gossip;
pub mod hops;
pub mod links;
pub mod ours;
pub mod overlay;
mod procfs;
pub mod prom;
pub mod propagation;
pub mod recorder;
pub mod report;
pub mod rtt;
pub mod stats;
pub mod workload;
