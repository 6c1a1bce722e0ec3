//! Blocks whose parent we do not have yet, kept until the parent arrives.
//!
//! Orphans are unvalidated (their parent is needed to validate them), so the pool is bounded by
//! count and bytes and evicts the oldest first; an orphan also expires after `ORPHAN_TTL_MS`.

use std::collections::{HashMap, VecDeque};

use playergold_primitives::{Block, BlockHash, TimestampMs};

/// Most orphans kept. Sync fetches blocks in order, so honest orphans are few (blocks that
/// overtook their parent on the relay path); 256 covers several minutes of out-of-order arrival.
pub const MAX_ORPHANS: usize = 256;
/// Most bytes of orphans kept: a quarter of the worst case of 256 full blocks, since orphans are
/// unvalidated input and a full pool of maximum-size blocks would be a cheap memory attack.
pub const MAX_ORPHAN_BYTES: usize = 64 * 1024 * 1024;
/// How long an orphan waits for its parent.
pub const ORPHAN_TTL_MS: u64 = 10 * 60 * 1000;

#[derive(Debug)]
struct Orphan {
    block: Block,
    bytes: usize,
    received: TimestampMs,
}

/// A bounded pool of orphan blocks, indexed by their missing parent.
#[derive(Debug, Default)]
pub struct OrphanPool {
    blocks: HashMap<BlockHash, Orphan>,
    by_parent: HashMap<BlockHash, Vec<BlockHash>>,
    order: VecDeque<BlockHash>,
    bytes: usize,
}

impl OrphanPool {
    /// An empty pool.
    pub fn new() -> OrphanPool {
        OrphanPool::default()
    }

    /// Number of orphans held.
    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    /// Whether the pool is empty.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether `hash` is held.
    pub fn contains(&self, hash: &BlockHash) -> bool {
        self.blocks.contains_key(hash)
    }

    /// Adds an orphan of encoded size `bytes`, evicting the oldest (and expired) ones to stay
    /// within bounds. A block larger than the whole byte budget is not kept.
    pub fn insert(&mut self, block: Block, bytes: usize, now: TimestampMs) {
        let hash = block.hash();
        if self.blocks.contains_key(&hash) || bytes > MAX_ORPHAN_BYTES {
            return;
        }
        self.expire(now);
        while self.blocks.len() >= MAX_ORPHANS || self.bytes + bytes > MAX_ORPHAN_BYTES {
            match self.order.front().copied() {
                Some(oldest) => {
                    self.remove(&oldest);
                }
                None => break,
            }
        }
        self.by_parent
            .entry(block.header.parent)
            .or_default()
            .push(hash);
        self.order.push_back(hash);
        self.bytes += bytes;
        self.blocks.insert(
            hash,
            Orphan {
                block,
                bytes,
                received: now,
            },
        );
    }

    /// Takes out every orphan whose parent is `parent`.
    pub fn take_children(&mut self, parent: &BlockHash) -> Vec<Block> {
        let Some(children) = self.by_parent.get(parent).cloned() else {
            return Vec::new();
        };
        children.iter().filter_map(|h| self.remove(h)).collect()
    }

    /// The oldest ancestor we hold of `hash` (following orphan parents), whose parent is what
    /// sync must fetch.
    pub fn root_of(&self, hash: &BlockHash) -> Option<BlockHash> {
        let mut current = self.blocks.get(hash)?;
        let mut steps = 0;
        while let Some(parent) = self.blocks.get(&current.block.header.parent) {
            current = parent;
            steps += 1;
            if steps > MAX_ORPHANS {
                break;
            }
        }
        Some(current.block.header.parent)
    }

    fn remove(&mut self, hash: &BlockHash) -> Option<Block> {
        let orphan = self.blocks.remove(hash)?;
        self.bytes -= orphan.bytes;
        self.order.retain(|h| h != hash);
        let parent = orphan.block.header.parent;
        if let Some(siblings) = self.by_parent.get_mut(&parent) {
            siblings.retain(|h| h != hash);
            if siblings.is_empty() {
                self.by_parent.remove(&parent);
            }
        }
        Some(orphan.block)
    }

    fn expire(&mut self, now: TimestampMs) {
        while let Some(oldest) = self.order.front().copied() {
            let expired = self
                .blocks
                .get(&oldest)
                .is_some_and(|o| now.0.saturating_sub(o.received.0) > ORPHAN_TTL_MS);
            if !expired {
                break;
            }
            self.remove(&oldest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use playergold_primitives::{Height, Keypair};

    #[test]
    fn bounded_and_released_by_parent() {
        let key = Keypair::from_secret(&[3; 32]);
        let mut pool = OrphanPool::new();
        let parent = BlockHash([1; 32]);
        for i in 0..(MAX_ORPHANS + 50) as u64 {
            let b = Block::build(&key, parent, Height(5), TimestampMs(i), vec![]);
            pool.insert(b, 1_000, TimestampMs(0));
        }
        assert_eq!(pool.len(), MAX_ORPHANS);
        assert_eq!(pool.bytes(), MAX_ORPHANS * 1_000);
        let children = pool.take_children(&parent);
        assert_eq!(children.len(), MAX_ORPHANS);
        // The oldest 50 were evicted.
        assert!(children.iter().all(|b| b.header.timestamp_ms.0 >= 50));
        assert!(pool.is_empty());
        assert_eq!(pool.bytes(), 0);
    }

    #[test]
    fn expire_and_root() {
        let key = Keypair::from_secret(&[3; 32]);
        let mut pool = OrphanPool::new();
        let a = Block::build(&key, BlockHash([1; 32]), Height(5), TimestampMs(1), vec![]);
        let b = Block::build(&key, a.hash(), Height(6), TimestampMs(2), vec![]);
        let (ha, hb) = (a.hash(), b.hash());
        pool.insert(a, 10, TimestampMs(0));
        pool.insert(b, 10, TimestampMs(0));
        assert_eq!(pool.root_of(&hb), Some(BlockHash([1; 32])));
        let c = Block::build(&key, BlockHash([2; 32]), Height(5), TimestampMs(3), vec![]);
        pool.insert(c, 10, TimestampMs(ORPHAN_TTL_MS + 1));
        assert!(!pool.contains(&ha) && !pool.contains(&hb));
        assert_eq!(pool.len(), 1);
    }
}
