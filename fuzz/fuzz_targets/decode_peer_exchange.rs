//! Peer exchange (`/playergold/<network>/addr/1`): the response decoder with its limits, and the
//! request-response codec reading a request and a response frame off an arbitrary byte stream.
#![no_main]

use futures::executor::block_on;
use futures::io::Cursor;
use libfuzzer_sys::fuzz_target;
use libp2p::StreamProtocol;
use libp2p::request_response::Codec;
use playergold_net::addrbook::MAX_ADDRS_PER_PEER;
use playergold_net::peer_exchange::{
    AddrCodec, AddrResponse, MAX_ADDRS_PER_RESPONSE, MAX_PEERS_PER_RESPONSE,
};

/// Checks the limits of a decoded response, and that it survives its own encoding unchanged.
fn check(res: &AddrResponse) {
    assert!(res.0.len() <= MAX_PEERS_PER_RESPONSE);
    assert!(res.0.iter().all(|(_, a)| a.len() <= MAX_ADDRS_PER_PEER));
    let addrs: usize = res.0.iter().map(|(_, a)| a.len()).sum();
    assert!(addrs <= MAX_ADDRS_PER_RESPONSE);
    let again = AddrResponse::decode(&res.encode()).expect("an encoded response decodes");
    assert_eq!(&again, res);
}

fuzz_target!(|data: &[u8]| {
    if let Ok(res) = AddrResponse::decode(data) {
        check(&res);
    }
    let protocol = StreamProtocol::new("/playergold/fuzz/addr/1");
    let mut codec = AddrCodec;
    let _ = block_on(codec.read_request(&protocol, &mut Cursor::new(data)));
    if let Ok(res) = block_on(codec.read_response(&protocol, &mut Cursor::new(data))) {
        check(&res);
    }
});
