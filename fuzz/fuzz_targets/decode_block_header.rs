//! Block headers from peers (sync `Headers`, compact blocks): decode, round trip, verify.
#![no_main]

use libfuzzer_sys::fuzz_target;
use playergold_primitives::BlockHeader;
fuzz_target!(|data: &[u8]| {
    if let Some(h) = playergold_fuzz::round_trip::<BlockHeader>(data) {
        let _ = h.verify_signature();
    }
});
