//! Integration tests of `playergold-services`: relay nodes on 127.0.0.0/8 with real TLS, each with
//! its own chain on one shared devnet genesis. Every wait is on events with a deadline.
//!
//! Each test uses its own range of node indexes (so its own loopback addresses). Relay: 0-39
//! propagation, 40-45 forged transaction, 50-52 retry, 60-64 hop budget, 70-72 slow peer, 80-84
//! AI quorum, 90-94 malformed frames and another genesis. Attacks on whole nodes (relay, sync
//! and reputation, `fullnode`): 200-219 the flooded network, 221-223 junk, 224-228 oversized
//! frames, 229-231 a ban across a restart.

mod ai;
mod attack;
mod fullnode;
mod hostile;
mod propagation;
mod support;
mod sync;
