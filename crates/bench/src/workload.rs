//! The workload: signed transactions injected at a steady rate at random nodes, and blocks at
//! fixed intervals at the node of the slot's validator.
//!
//! Transactions are signed before the run (signing is not what is measured) from a seeded RNG,
//! so a seed names the same transactions, times and injecting nodes for both systems. Blocks are
//! built live by our system's producer from its mempool; gossipsub then replays the very same
//! block bytes at the same offsets from the same nodes ([`Injection`] records both).

use std::time::Duration;

use playergold_primitives::{
    Address, Amount, Block, Keypair, Nonce, TimestampMs, Transaction, UnsignedTransaction,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Distinct sender keys: each signs a share of the transactions with increasing nonces.
pub const SENDERS: usize = 64;

/// What was injected where and when (offset from the start of the workload).
#[derive(Debug, Clone)]
pub struct Injection {
    /// Offset from the workload's start.
    pub at: Duration,
    /// The node it was injected at.
    pub node: usize,
    /// The item.
    pub item: Item,
}

/// An injected item.
#[derive(Debug, Clone)]
pub enum Item {
    /// A transaction.
    Tx(Transaction),
    /// A block.
    Block(Block),
}

/// A deterministic key from the bench seed, a purpose tag and an index.
pub fn derived_key(seed: u64, tag: &str, index: usize) -> Keypair {
    let mut h = blake3::Hasher::new();
    h.update(b"playergold-bench");
    h.update(&seed.to_le_bytes());
    h.update(tag.as_bytes());
    h.update(&(index as u64).to_le_bytes());
    Keypair::from_secret(h.finalize().as_bytes())
}

/// Transactions at `rate` per second over `duration`, each at a random node of `nodes`. The
/// `k`-th is due at `k / rate` seconds.
pub fn plan_transactions(nodes: usize, rate: f64, duration: Duration, seed: u64) -> Vec<Injection> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x7478_7321);
    let senders: Vec<Keypair> = (0..SENDERS)
        .map(|i| derived_key(seed, "sender", i))
        .collect();
    let mut nonces = vec![0u64; SENDERS];
    let count = if rate > 0.0 {
        (duration.as_secs_f64() * rate).floor() as usize
    } else {
        0
    };
    let now = TimestampMs::now();
    (0..count)
        .map(|k| {
            let s = k % SENDERS;
            let mut to = [0u8; 20];
            rng.fill(&mut to);
            let tx = UnsignedTransaction {
                from: senders[s].public(),
                to: Address(to),
                amount: Amount(rng.gen_range(1..1_000_000)),
                fee: Amount(rng.gen_range(1..1_000)),
                nonce: Nonce(nonces[s]),
                timestamp_ms: now,
            }
            .sign(&senders[s]);
            nonces[s] += 1;
            Injection {
                at: Duration::from_secs_f64(k as f64 / rate),
                node: rng.gen_range(0..nodes.max(1)),
                item: Item::Tx(tx),
            }
        })
        .collect()
}

/// Fees of backlog transactions: all above the fresh ones' (`1..1_000`), so blocks take the
/// backlog first and fresh transactions are measured as transactions, not as block contents.
const BACKLOG_FEES: std::ops::Range<u64> = 1_000..2_000;

/// `count` signed transactions for the mempool backlog every node holds before the workload
/// starts (a network in steady state has mempools in sync; blocks are then full-size and are
/// rebuilt from mempools). Their senders differ from the workload's.
pub fn plan_backlog(count: usize, seed: u64) -> Vec<Transaction> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x6261_636b);
    let senders: Vec<Keypair> = (0..SENDERS)
        .map(|i| derived_key(seed, "backlog-sender", i))
        .collect();
    let now = TimestampMs::now();
    (0..count)
        .map(|k| {
            let s = k % SENDERS;
            let mut to = [0u8; 20];
            rng.fill(&mut to);
            UnsignedTransaction {
                from: senders[s].public(),
                to: Address(to),
                amount: Amount(rng.gen_range(1..1_000_000)),
                fee: Amount(rng.gen_range(BACKLOG_FEES)),
                nonce: Nonce((k / SENDERS) as u64),
                timestamp_ms: now,
            }
            .sign(&senders[s])
        })
        .collect()
}

/// Offsets of the block ticks: every `interval` from `interval` on, strictly before `duration`.
pub fn block_ticks(interval: Duration, duration: Duration) -> Vec<Duration> {
    if interval.is_zero() {
        return Vec::new();
    }
    (1..)
        .map(|k| interval * k)
        .take_while(|t| *t < duration)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_are_seeded_steady_and_valid() {
        let a = plan_transactions(10, 50.0, Duration::from_secs(2), 1);
        let b = plan_transactions(10, 50.0, Duration::from_secs(2), 1);
        assert_eq!(a.len(), 100);
        let ids = |p: &[Injection]| -> Vec<_> {
            p.iter()
                .map(|i| match &i.item {
                    Item::Tx(tx) => (tx.unsigned().from, tx.nonce, i.node),
                    Item::Block(_) => unreachable!("only transactions"),
                })
                .collect()
        };
        assert_eq!(ids(&a), ids(&b));
        assert_eq!(a[50].at, Duration::from_secs(1));
        assert!(a.iter().all(|i| i.node < 10));
        for i in &a {
            let Item::Tx(tx) = &i.item else {
                unreachable!("only transactions")
            };
            tx.verify().expect("signed");
            assert!(tx.encoded_len() <= playergold_primitives::MAX_TX_BYTES);
        }
    }

    #[test]
    fn backlog_is_signed_distinct_and_outbids_the_workload() {
        let backlog = plan_backlog(130, 3);
        let mut ids: Vec<_> = backlog.iter().map(|t| t.id()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 130);
        assert!(backlog.iter().all(|t| t.verify().is_ok()));
        let fresh = plan_transactions(4, 100.0, Duration::from_secs(1), 3);
        let max_fresh = fresh
            .iter()
            .filter_map(|i| match &i.item {
                Item::Tx(tx) => Some(tx.fee),
                Item::Block(_) => None,
            })
            .max()
            .expect("some");
        assert!(backlog.iter().all(|t| t.fee > max_fresh));
    }

    #[test]
    fn block_ticks_stay_inside_the_run() {
        let s = Duration::from_secs;
        assert_eq!(block_ticks(s(2), s(7)), vec![s(2), s(4), s(6)]);
        assert_eq!(block_ticks(s(2), s(6)), vec![s(2), s(4)]);
        assert!(block_ticks(Duration::ZERO, s(6)).is_empty());
    }
}
