//! Full blocks from peers (relay `Block`, sync `Blocks`): decode, round trip, check.
#![no_main]

use libfuzzer_sys::fuzz_target;
use playergold_primitives::{Block, merkle_root};
fuzz_target!(|data: &[u8]| {
    if let Some(b) = playergold_fuzz::round_trip::<Block>(data) {
        assert!(b.txs.len() <= playergold_primitives::MAX_BLOCK_TXS);
        let ids = b.tx_ids();
        if merkle_root(&ids) == b.header.tx_root {
            let _ = b.verify_signatures(&ids);
        }
    }
});
