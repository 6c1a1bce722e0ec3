//! The relay hello, the first frame on every relay stream (`/playergold/<network>/relay/1`):
//! decode and round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use playergold_services::relay::RelayHello;

fuzz_target!(|data: &[u8]| {
    if let Some(hello) = playergold_fuzz::round_trip::<RelayHello>(data) {
        let _ = hello.capabilities.names();
    }
});
