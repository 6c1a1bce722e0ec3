//! Property tests: over random block trees fed in random orders, the best chain is always the
//! fork-choice maximum, fork choice is a total order, and every node agrees on the tip.

use std::collections::HashMap;

use playergold_chain::{Blockchain, ChainBackend, ForkKey, ImportOutcome, REPUTATION_WINDOW};
use playergold_primitives::{Block, BlockHash, Height, PublicKey, Work};
use proptest::prelude::*;

use crate::support::{Devnet, now, tx};

/// A random tree: step i attaches a block to the `parent_pick`-th known block, `slots` slots
/// later, carrying up to two txs from a small pool (so duplicates on a branch happen).
#[derive(Debug, Clone)]
struct Step {
    parent_pick: prop::sample::Index,
    slots: u64,
    txs: Vec<u8>,
}

fn arb_steps() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(
        (
            any::<prop::sample::Index>(),
            1u64..4,
            prop::collection::vec(0u8..6, 0..3),
        )
            .prop_map(|(parent_pick, slots, txs)| Step {
                parent_pick,
                slots,
                txs,
            }),
        1..24,
    )
}

/// The reference model: fork-choice keys computed naively from the valid blocks.
struct Model {
    blocks: HashMap<BlockHash, Block>,
}

impl Model {
    fn chain_of(&self, hash: BlockHash) -> Vec<&Block> {
        let mut out = Vec::new();
        let mut h = hash;
        while let Some(b) = self.blocks.get(&h) {
            out.push(b);
            h = b.header.parent;
        }
        out
    }

    fn key(&self, hash: BlockHash) -> ForkKey {
        let b = &self.blocks[&hash];
        let ancestors = self.chain_of(b.header.parent);
        let producer: PublicKey = b.header.producer;
        let reputation = ancestors
            .iter()
            .take(REPUTATION_WINDOW)
            .filter(|a| a.header.height.0 > 0 && a.header.producer == producer)
            .count() as u64;
        ForkKey {
            work: Work(b.header.height.0 as u128),
            timestamp_ms: b.header.timestamp_ms,
            producer_reputation: reputation,
            hash,
        }
    }

    /// Whether `block` is valid in the model: no tx repeats on its branch.
    fn valid(&self, block: &Block) -> bool {
        let mut seen = std::collections::HashSet::new();
        for t in &block.txs {
            if !seen.insert(t.id()) {
                return false;
            }
        }
        self.chain_of(block.header.parent)
            .iter()
            .all(|a| a.txs.iter().all(|t| !seen.contains(&t.id())))
    }
}

fn build_tree(net: &Devnet, steps: &[Step]) -> (Vec<Block>, Model) {
    let genesis = net.genesis.block();
    let mut model = Model {
        blocks: HashMap::from([(genesis.hash(), genesis.clone())]),
    };
    let mut known = vec![genesis];
    let mut out = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        let parent = known[step.parent_pick.index(known.len())].header.clone();
        let txs = step.txs.iter().map(|&s| tx(s, 0, 1)).collect();
        // Vary the slot with the step so siblings differ.
        let block = net.child(&parent, step.slots + (i as u64 % 2), txs);
        if model.valid(&block) {
            model.blocks.insert(block.hash(), block.clone());
            known.push(block.clone());
        }
        out.push(block);
    }
    (out, model)
}

fn import_all(chain: &Blockchain, blocks: &[Block]) {
    for b in blocks {
        // Invalid blocks (duplicate txs) are refused; orphans wait. Neither may panic.
        let _ = chain.import_block(b.clone(), now());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn best_chain_is_the_fork_choice_maximum(steps in arb_steps(), seed in any::<u64>()) {
        let net = Devnet::new(3);
        let (blocks, model) = build_tree(&net, &steps);

        let in_order = net.open("ordered.redb");
        import_all(&in_order, &blocks);

        // A second node sees the same blocks in a shuffled order (orphans, late forks).
        let mut shuffled = blocks.clone();
        let mut s = seed;
        for i in (1..shuffled.len()).rev() {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            shuffled.swap(i, (s >> 33) as usize % (i + 1));
        }
        let other = net.open("shuffled.redb");
        import_all(&other, &shuffled);

        let expected = model
            .blocks
            .keys()
            .map(|h| model.key(*h))
            .max()
            .expect("genesis at least");
        prop_assert_eq!(in_order.tip().hash, expected.hash);
        prop_assert_eq!(other.tip().hash, expected.hash, "order of arrival must not matter");

        // The chain's own keys agree with the model and order all valid tips totally.
        let keys: Vec<ForkKey> = model
            .blocks
            .keys()
            .map(|h| in_order.fork_key(h).expect("valid block stored"))
            .collect();
        for k in &keys {
            prop_assert_eq!(*k, model.key(k.hash));
        }
        for a in &keys {
            for b in &keys {
                prop_assert_eq!(a.cmp(b), b.cmp(a).reverse(), "antisymmetric");
                if a.hash != b.hash {
                    prop_assert_ne!(a.cmp(b), std::cmp::Ordering::Equal, "total");
                }
                for c in &keys {
                    if a < b && b < c {
                        prop_assert!(a < c, "transitive");
                    }
                }
            }
        }

        // The stored best chain is exactly the tip's ancestry, and the store is consistent.
        let height = in_order.store().verify_consistency().expect("consistent");
        let ancestry = model.chain_of(expected.hash);
        prop_assert_eq!(height, ancestry[0].header.height);
        for b in &ancestry {
            prop_assert_eq!(in_order.hash_at(b.header.height), Some(b.hash()));
        }
    }
}

#[test]
fn equal_work_forks_resolve_by_timestamp_then_hash() {
    // Two blocks at height 1 (equal work); the earlier one wins wherever it arrives first.
    let net = Devnet::new(2);
    let g = net.genesis.block().header;
    let early = net.child(&g, 1, vec![]);
    let late = net.child(&g, 2, vec![]);
    for order in [[&early, &late], [&late, &early]] {
        let chain = net.open(&format!("{}.redb", order[0].hash()));
        for b in order {
            let out = chain.import_block((*b).clone(), now()).expect("valid");
            assert!(matches!(out, ImportOutcome::Imported { .. }));
        }
        assert_eq!(chain.tip().hash, early.hash());
        assert_eq!(chain.tip().height, Height(1));
    }
}
