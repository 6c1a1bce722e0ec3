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
//! ```
//!
//! It must not do I/O, read the clock, or spawn tasks.

pub mod ai;
mod capabilities;
pub mod rate;
pub mod relay;
pub mod reputation;
pub mod sync;

pub use capabilities::Capabilities;
