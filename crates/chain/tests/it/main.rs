//! Integration tests of the chain: validation, orphans, fork choice, reorgs, mempool.

mod import;
mod reorg;
mod support;
