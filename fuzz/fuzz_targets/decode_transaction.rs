//! Transactions from peers (relay pushes, block bodies): decode, round trip, verify.
#![no_main]

use libfuzzer_sys::fuzz_target;
use playergold_primitives::Transaction;
fuzz_target!(|data: &[u8]| {
    if let Some(tx) = playergold_fuzz::round_trip::<Transaction>(data) {
        assert!(tx.encoded_len() <= playergold_primitives::MAX_TX_BYTES);
        let _ = tx.verify();
    }
});
