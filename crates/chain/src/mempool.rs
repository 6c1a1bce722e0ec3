//! Transactions waiting to be included, bounded by count and bytes.
//!
//! Entries are unique by [`TxId`] and have valid signatures (checked on entry). When full, the
//! lowest-fee transaction is evicted to make room for a higher-fee one; a transaction that does not
//! beat the lowest fee is refused. Among equal fees the newest goes first, so a flood of
//! same-fee transactions cannot push out older ones.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};

use playergold_primitives::{Amount, TimestampMs, Transaction, TxId};

/// How far in the future a transaction's timestamp may be (clock skew allowance, same as blocks).
pub const MAX_TX_FUTURE_MS: u64 = 15_000;

/// Mempool bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MempoolConfig {
    /// Most transactions held.
    pub max_txs: usize,
    /// Most encoded bytes held.
    pub max_bytes: usize,
}

impl Default for MempoolConfig {
    fn default() -> Self {
        // 50,000 txs ≈ 10 full blocks of backlog; 32 MiB is their encoded size with slack.
        MempoolConfig {
            max_txs: 50_000,
            max_bytes: 32 * 1024 * 1024,
        }
    }
}

/// Why a transaction was not accepted.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum MempoolError {
    /// Already in the pool.
    #[error("transaction {0} is already in the mempool")]
    AlreadyKnown(TxId),
    /// Already in a best-chain block.
    #[error("transaction {0} is already included in the chain")]
    AlreadyIncluded(TxId),
    /// The signature does not verify.
    #[error("transaction {0} has an invalid signature")]
    BadSignature(TxId),
    /// Encoded size above the limit.
    #[error("transaction of {0} bytes exceeds the maximum transaction size")]
    TooLarge(usize),
    /// Timestamp too far ahead of our clock.
    #[error("transaction timestamp {ts} is more than {MAX_TX_FUTURE_MS} ms ahead of now ({now})")]
    FromTheFuture {
        /// The transaction's timestamp.
        ts: TimestampMs,
        /// Our clock.
        now: TimestampMs,
    },
    /// The pool is full of transactions paying at least as much.
    #[error("mempool is full: a fee above {min_fee} is needed")]
    FeeTooLow {
        /// The lowest fee in the full pool.
        min_fee: Amount,
    },
}

#[derive(Debug)]
struct Entry {
    tx: Transaction,
    bytes: usize,
    seq: u64,
    /// When it entered the pool (0 for transactions a reorg put back).
    arrived: TimestampMs,
}

type FeeKey = (Amount, Reverse<u64>, TxId);

/// The pool.
#[derive(Debug)]
pub struct Mempool {
    config: MempoolConfig,
    txs: HashMap<TxId, Entry>,
    by_fee: BTreeSet<FeeKey>,
    bytes: usize,
    next_seq: u64,
}

impl Mempool {
    /// An empty pool with `config` bounds.
    pub fn new(config: MempoolConfig) -> Mempool {
        Mempool {
            config,
            txs: HashMap::new(),
            by_fee: BTreeSet::new(),
            bytes: 0,
            next_seq: 0,
        }
    }

    /// Number of transactions.
    pub fn len(&self) -> usize {
        self.txs.len()
    }

    /// Whether empty.
    pub fn is_empty(&self) -> bool {
        self.txs.is_empty()
    }

    /// Encoded bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether `id` is held.
    pub fn contains(&self, id: &TxId) -> bool {
        self.txs.contains_key(id)
    }

    /// A held transaction.
    pub fn get(&self, id: &TxId) -> Option<&Transaction> {
        self.txs.get(id).map(|e| &e.tx)
    }

    /// Checks form and signature, then inserts, evicting lower fees if full. Returns the evicted
    /// ids. Chain inclusion is the caller's check (the pool has no chain).
    pub fn insert(&mut self, tx: Transaction, now: TimestampMs) -> Result<Vec<TxId>, MempoolError> {
        let id = tx.id();
        if self.txs.contains_key(&id) {
            return Err(MempoolError::AlreadyKnown(id));
        }
        let bytes = check_form(&tx, now)?;
        if tx.verify().is_err() {
            return Err(MempoolError::BadSignature(id));
        }
        self.insert_verified(id, tx, bytes, now)
    }

    /// Inserts a transaction that passed [`check_form`] and whose signature was verified by
    /// `Transaction::verify` (the batched path of `Blockchain::submit_transactions`, which checks
    /// outside the chain lock). Refuses a duplicate as [`Mempool::insert`] does.
    pub(crate) fn insert_checked(
        &mut self,
        id: TxId,
        tx: Transaction,
        bytes: usize,
        now: TimestampMs,
    ) -> Result<Vec<TxId>, MempoolError> {
        if self.txs.contains_key(&id) {
            return Err(MempoolError::AlreadyKnown(id));
        }
        self.insert_verified(id, tx, bytes, now)
    }

    /// Inserts a transaction whose signature was already checked (returned from a block).
    fn insert_verified(
        &mut self,
        id: TxId,
        tx: Transaction,
        bytes: usize,
        arrived: TimestampMs,
    ) -> Result<Vec<TxId>, MempoolError> {
        // Find what must go to make room; refuse if that would evict an equal or higher fee.
        let mut evict = Vec::new();
        let (mut count, mut total) = (self.txs.len(), self.bytes);
        let mut lowest = self.by_fee.iter();
        while count + 1 > self.config.max_txs || total + bytes > self.config.max_bytes {
            match lowest.next() {
                Some(&(fee, _, victim)) if fee < tx.fee => {
                    count -= 1;
                    total -= self.txs[&victim].bytes;
                    evict.push(victim);
                }
                Some(&(fee, _, _)) => return Err(MempoolError::FeeTooLow { min_fee: fee }),
                // Empty pool and still no room: a single tx larger than max_bytes.
                None => return Err(MempoolError::TooLarge(bytes)),
            }
        }
        for victim in &evict {
            self.remove(victim);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.by_fee.insert((tx.fee, Reverse(seq), id));
        self.bytes += bytes;
        self.txs.insert(
            id,
            Entry {
                tx,
                bytes,
                seq,
                arrived,
            },
        );
        Ok(evict)
    }

    /// Removes a transaction (included in a block, or evicted).
    pub fn remove(&mut self, id: &TxId) -> Option<Transaction> {
        let entry = self.txs.remove(id)?;
        self.by_fee.remove(&(entry.tx.fee, Reverse(entry.seq), *id));
        self.bytes -= entry.bytes;
        Some(entry.tx)
    }

    /// Puts back transactions of blocks a reorg removed. Their signatures were verified when
    /// their block was imported; bounds and fee order still apply.
    pub fn reinsert(&mut self, txs: Vec<Transaction>) {
        for tx in txs {
            let id = tx.id();
            if self.txs.contains_key(&id) {
                continue;
            }
            let bytes = tx.encoded_len();
            // A full pool keeps its higher-fee txs; the rest are dropped like any eviction.
            // Arrived long ago, as far as block templates care: they were in a block already.
            let _ = self.insert_verified(id, tx, bytes, TimestampMs(0));
        }
    }

    /// The highest-fee transactions, up to `max_txs` and `max_bytes`, for a block template.
    pub fn select(&self, max_txs: usize, max_bytes: usize) -> Vec<Transaction> {
        self.select_arrived_by(max_txs, max_bytes, TimestampMs(u64::MAX))
    }

    /// As [`Mempool::select`], among the transactions that entered the pool at or before `by`.
    pub fn select_arrived_by(
        &self,
        max_txs: usize,
        max_bytes: usize,
        by: TimestampMs,
    ) -> Vec<Transaction> {
        let mut out = Vec::new();
        let mut bytes = 0;
        for (_, _, id) in self.by_fee.iter().rev() {
            if out.len() >= max_txs {
                break;
            }
            let e = &self.txs[id];
            if bytes + e.bytes > max_bytes || e.arrived > by {
                continue;
            }
            bytes += e.bytes;
            out.push(e.tx.clone());
        }
        out
    }

    /// Ids of every held transaction (for announcements and compact-block reconstruction).
    pub fn ids(&self) -> impl Iterator<Item = &TxId> {
        self.txs.keys()
    }
}

/// The checks of [`Mempool::insert`] that need neither the pool nor the signature: size and
/// timestamp. Returns the encoded size.
pub(crate) fn check_form(tx: &Transaction, now: TimestampMs) -> Result<usize, MempoolError> {
    let bytes = tx.encoded_len();
    if bytes > playergold_primitives::MAX_TX_BYTES {
        return Err(MempoolError::TooLarge(bytes));
    }
    if tx.timestamp_ms.0 > now.0.saturating_add(MAX_TX_FUTURE_MS) {
        return Err(MempoolError::FromTheFuture {
            ts: tx.timestamp_ms,
            now,
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use playergold_primitives::{Address, Keypair, Nonce, UnsignedTransaction};

    fn tx(key: &Keypair, nonce: u64, fee: u64) -> Transaction {
        UnsignedTransaction {
            from: key.public(),
            to: Address([1; 20]),
            amount: Amount(5),
            fee: Amount(fee),
            nonce: Nonce(nonce),
            timestamp_ms: TimestampMs(1),
        }
        .sign(key)
    }

    #[test]
    fn bounded_by_count_evicting_lowest_fee() {
        let key = Keypair::from_secret(&[4; 32]);
        let mut pool = Mempool::new(MempoolConfig {
            max_txs: 10,
            max_bytes: 1 << 20,
        });
        for n in 0..10 {
            pool.insert(tx(&key, n, 10 + n), TimestampMs(0))
                .expect("room");
        }
        // Lower than the lowest fee (10): refused.
        assert_eq!(
            pool.insert(tx(&key, 100, 5), TimestampMs(0)),
            Err(MempoolError::FeeTooLow {
                min_fee: Amount(10)
            })
        );
        // Higher: evicts the fee-10 tx.
        let evicted = pool
            .insert(tx(&key, 101, 50), TimestampMs(0))
            .expect("evicts");
        assert_eq!(evicted, vec![tx(&key, 0, 10).id()]);
        assert_eq!(pool.len(), 10);
        let best = pool.select(3, usize::MAX);
        assert_eq!(
            best.iter().map(|t| t.fee.0).collect::<Vec<_>>(),
            vec![50, 19, 18]
        );
    }

    /// A block template takes only what arrived by the cut-off; what a reorg put back counts as
    /// old.
    #[test]
    fn a_template_takes_only_transactions_that_arrived_by_the_cut_off() {
        let key = Keypair::from_secret(&[4; 32]);
        let mut pool = Mempool::new(MempoolConfig {
            max_txs: 100,
            max_bytes: 1 << 20,
        });
        pool.insert(tx(&key, 0, 30), TimestampMs(1_000))
            .expect("room");
        pool.insert(tx(&key, 1, 20), TimestampMs(2_000))
            .expect("room");
        pool.reinsert(vec![tx(&key, 2, 10)]);
        let fees = |txs: Vec<Transaction>| txs.iter().map(|t| t.fee.0).collect::<Vec<_>>();
        assert_eq!(
            fees(pool.select_arrived_by(10, usize::MAX, TimestampMs(1_500))),
            vec![30, 10]
        );
        assert_eq!(
            fees(pool.select_arrived_by(10, usize::MAX, TimestampMs(2_000))),
            vec![30, 20, 10]
        );
        assert_eq!(fees(pool.select(10, usize::MAX)), vec![30, 20, 10]);
    }

    #[test]
    fn bounded_by_bytes_and_rejects_bad_input() {
        let key = Keypair::from_secret(&[4; 32]);
        let size = tx(&key, 0, 1).encoded_len();
        let mut pool = Mempool::new(MempoolConfig {
            max_txs: 1000,
            max_bytes: size * 3,
        });
        for n in 0..5 {
            let _ = pool.insert(tx(&key, n, 1 + n), TimestampMs(0));
        }
        assert_eq!(pool.len(), 3);
        assert!(pool.bytes() <= size * 3);
        let t = tx(&key, 0, 100);
        assert!(pool.insert(t.clone(), TimestampMs(0)).is_ok());
        assert_eq!(
            pool.insert(t.clone(), TimestampMs(0)),
            Err(MempoolError::AlreadyKnown(t.id()))
        );
        let mut forged = tx(&key, 77, 100);
        forged.amount = Amount(1_000_000);
        assert_eq!(
            pool.insert(forged.clone(), TimestampMs(0)),
            Err(MempoolError::BadSignature(forged.id()))
        );
        let mut future = tx(&key, 78, 100).unsigned();
        future.timestamp_ms = TimestampMs(1_000_000);
        assert!(matches!(
            pool.insert(future.sign(&key), TimestampMs(0)),
            Err(MempoolError::FromTheFuture { .. })
        ));
    }
}
