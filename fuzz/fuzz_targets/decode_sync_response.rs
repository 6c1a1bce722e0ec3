//! Sync responses, `Status` included: decode, round trip, limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use playergold_protocol::sync::{
    MAX_BLOCKS_PER_REQUEST, MAX_HEADERS_PER_REQUEST, MAX_SYNC_FRAME_BYTES, SyncResponse,
};

fuzz_target!(|data: &[u8]| {
    let Some(resp) = playergold_fuzz::round_trip::<SyncResponse>(data) else {
        return;
    };
    assert!(playergold_primitives::codec::encoded_len(&resp) <= MAX_SYNC_FRAME_BYTES);
    match resp {
        SyncResponse::Headers(h) => assert!(h.len() <= MAX_HEADERS_PER_REQUEST as usize),
        SyncResponse::Blocks(b) => assert!(b.len() <= MAX_BLOCKS_PER_REQUEST),
        SyncResponse::Status(s) => {
            let _ = s.capabilities.names();
        }
        _ => {}
    }
});
