//! Which submitted transactions each node has in its best chain, in few requests:
//!
//! ```text
//!  every node: GET /api/v1/chain?limit=100 ──► (height, hash, timestamp, tx_count) newest first
//!     └─ older blocks still inside the run: GET /api/v1/blocks/{height} on that node
//!  each distinct hash with transactions not yet fetched: GET /api/v1/blocks/{hash}, once,
//!     from one node that has it (a hash names its content) ──► the submitted ids it holds
//!  per node: the union over its blocks ∩ submitted
//! ```
//!
//! A block is inside the run when its slot started no earlier than one slot before the load
//! did: no transaction the bench signed can be in an older one.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::StreamExt;
use playergold_primitives::{BlockHash, TxId};

use super::api::{BlockView, MAX_CHAIN_BLOCKS, NodeApi};

/// Block requests in flight at once, all nodes together: enough to hide the loopback round
/// trip, few enough not to load the nodes the check is measuring.
const CONCURRENCY: usize = 8;

/// What the check found.
#[derive(Debug, Default)]
pub(crate) struct Inclusion {
    /// Per node: submitted transactions in its best chain; `None` when it did not answer.
    pub(crate) per_node: Vec<Option<u64>>,
    /// Submitted transactions in the best chain of at least one node.
    pub(crate) on_any_node: u64,
    /// Distinct blocks inside the run, over all nodes.
    pub(crate) blocks: usize,
    /// Requests the check made.
    pub(crate) requests: usize,
}

/// One node's best chain inside the run, newest first.
type NodeBlocks = Vec<(BlockHash, usize)>;

/// Counts, for every node, the `submitted` transactions in its best chain's blocks whose slot
/// started at or after `since_ms`. `max_blocks` bounds the walk down each chain.
pub(crate) async fn check(
    apis: &[Arc<NodeApi>],
    submitted: &[TxId],
    since_ms: u64,
    max_blocks: usize,
) -> Inclusion {
    let wanted: HashSet<TxId> = submitted.iter().copied().collect();
    let mut requests = 0;
    // Blocks fetched whole: the submitted ids each holds.
    let mut contents: HashMap<BlockHash, Vec<TxId>> = HashMap::new();
    let keep = |block: &BlockView| -> Vec<TxId> {
        block
            .txs
            .iter()
            .map(|t| t.id)
            .filter(|id| wanted.contains(id))
            .collect()
    };

    let walks: Vec<(Option<NodeBlocks>, Vec<BlockView>, usize)> =
        futures::stream::iter(apis.iter().map(|api| walk(api, since_ms, max_blocks)))
            .buffered(CONCURRENCY)
            .collect()
            .await;
    let mut chains = Vec::with_capacity(walks.len());
    for (chain, fetched, made) in walks {
        requests += made;
        for block in &fetched {
            contents.insert(block.hash, keep(block));
        }
        chains.push(chain);
    }

    // Each block with transactions not fetched yet, once, from the first node that has it.
    let mut missing: HashMap<BlockHash, usize> = HashMap::new();
    for (node, chain) in chains.iter().enumerate() {
        for (hash, tx_count) in chain.iter().flatten() {
            if *tx_count > 0 && !contents.contains_key(hash) {
                missing.entry(*hash).or_insert(node);
            }
        }
    }
    requests += missing.len();
    let fetched: Vec<(BlockHash, Option<BlockView>)> =
        futures::stream::iter(missing.into_iter().map(|(hash, node)| async move {
            let block = match apis.get(node) {
                Some(api) => api.block(&hash.to_hex()).await.ok(),
                None => None,
            };
            (hash, block)
        }))
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    for (hash, block) in fetched {
        // A block that could not be fetched counts as holding none of ours: the node's count
        // comes out low, which the report shows, rather than the check failing whole.
        contents.insert(hash, block.as_ref().map(&keep).unwrap_or_default());
    }

    let mut any: HashSet<TxId> = HashSet::new();
    let mut blocks: HashSet<BlockHash> = HashSet::new();
    let per_node = chains
        .iter()
        .map(|chain| {
            let chain = chain.as_ref()?;
            let mut ids: HashSet<TxId> = HashSet::new();
            for (hash, _) in chain {
                blocks.insert(*hash);
                ids.extend(contents.get(hash).into_iter().flatten().copied());
            }
            any.extend(ids.iter().copied());
            Some(ids.len() as u64)
        })
        .collect();
    Inclusion {
        per_node,
        on_any_node: any.len() as u64,
        blocks: blocks.len(),
        requests,
    }
}

/// One node's best-chain blocks whose slot started at or after `since_ms` (at most
/// `max_blocks`), the blocks it had to fetch whole on the way, and the requests made. `None`
/// for the chain when the node did not answer.
async fn walk(
    api: &NodeApi,
    since_ms: u64,
    max_blocks: usize,
) -> (Option<NodeBlocks>, Vec<BlockView>, usize) {
    let mut requests = 1;
    let Ok(view) = api.chain(MAX_CHAIN_BLOCKS).await else {
        return (None, Vec::new(), requests);
    };
    let mut chain: NodeBlocks = Vec::new();
    let mut oldest = None;
    for block in &view.blocks {
        if block.timestamp_ms.0 < since_ms || chain.len() >= max_blocks {
            return (Some(chain), Vec::new(), requests);
        }
        chain.push((block.hash, block.tx_count));
        oldest = Some(block.height.0);
    }
    // The listing ended inside the run: go on block by block below it.
    let mut fetched = Vec::new();
    let mut height = oldest.unwrap_or_default();
    while height > 0 && chain.len() < max_blocks {
        height -= 1;
        requests += 1;
        let Ok(block) = api.block(&height.to_string()).await else {
            return (None, fetched, requests);
        };
        if block.timestamp_ms.0 < since_ms {
            break;
        }
        chain.push((block.hash, block.txs.len()));
        fetched.push(block);
    }
    (Some(chain), fetched, requests)
}
