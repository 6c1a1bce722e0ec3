//! Sync requests (`/playergold/<network>/sync/1`), `Status` included: decode, round trip, limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use playergold_protocol::sync::{MAX_BLOCKS_PER_REQUEST, MAX_LOCATOR_LEN, SyncRequest};

fuzz_target!(|data: &[u8]| {
    match playergold_fuzz::round_trip::<SyncRequest>(data) {
        Some(SyncRequest::GetHeaders { locator, .. }) => assert!(locator.len() <= MAX_LOCATOR_LEN),
        Some(SyncRequest::GetBlocks(h)) => assert!(h.len() <= MAX_BLOCKS_PER_REQUEST),
        Some(SyncRequest::Status(s)) => {
            let _ = s.capabilities.names();
        }
        None => {}
    }
});
