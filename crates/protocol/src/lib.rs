//! PlayerGold protocol logic without I/O.
//!
//! This crate holds the state machines of our own protocols, in the shape of quinn-proto: plain
//! structs with no sockets and no clock. Callers pass time in, feed events, and poll out what to
//! send and what happened. The libp2p adapters in `playergold-net` are thin shells around them,
//! and the tests here run whole networks of them on a simulated clock.
//!
//! ```text
//!  adapter: frame from peer ──decode──► RelayEngine::handle_message(now, peer, msg, host)
//!                                              │            │
//!                          RelayHost (chain,   │            └─► events: penalties, new items,
//!                          mempool) ◄──────────┘                 challenges to solve, verdicts
//!  adapter: writable peer ◄──────────── RelayEngine::poll_transmit(peer) (priority classes)
//!  adapter: timer ─────────────────────► RelayEngine::handle_timeout(now) at poll_timeout()
//!
//!  sync: status / announce / orphan ──► SyncScheduler ──► poll_action(): Request{id} · Penalize
//!        reply or failure (by id) ─────►   (SyncHost:     · Disconnect; take_ready() ──► import
//!        peer's request ──► SyncServer     chain view)    (Busy reply when over the rate)
//!  partition: peers, tips, bootstrap ──► PartitionDetector ──► poll_action(now): redial, DHT
//!                                          walk, extra outbound peer; poll_event(): state change
//!  reputation: reports ──► Reputation ──► Disconnect · Ban;  lag samples ──► OverloadDetector
//!                                          (on: slowness reports ignored)
//! ```
//!
//! It must not do I/O, read the clock, or spawn tasks.

pub mod ai;
mod capabilities;
pub mod overload;
pub mod partition;
pub mod rate;
pub mod relay;
pub mod reputation;
pub mod sync;

pub use capabilities::Capabilities;
