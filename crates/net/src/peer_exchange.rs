//! Peer exchange: the minimal address discovery protocol `/playergold/<network>/addr/1`.
//!
//! A node asks a peer for addresses (an empty request) and gets back up to
//! [`MAX_PEERS_PER_RESPONSE`] peers with at most [`MAX_ADDRS_PER_RESPONSE`] addresses in all,
//! only known-good ones: verified by a dial of the answering node, or announced by one of its
//! connected peers at the IP that peer is connected from. Requests go to outbound
//! peers right after connecting and, while the node is below its outbound target with nothing to
//! dial, to connected peers at most once per `addr_request_interval`. Answers are rate-limited
//! per peer by a token bucket (`addr_response_interval`, `addr_response_burst`); a peer whose
//! bucket is empty gets an empty answer. What we learn is recorded with source `PeerExchange`
//! and stays unverified until a dial of ours succeeds. The DHT and mDNS feed the same address
//! book (see [`crate::discovery`]).

use libp2p::{Multiaddr, PeerId, StreamProtocol};
use serde::{Deserialize, Serialize};

use crate::addrbook::MAX_ADDRS_PER_PEER;
use crate::framing::{MaxFrameSize, read_frame, write_frame};
use crate::protocol::{NetworkName, ProtocolError, protocol_name};

/// Protocol name part of peer exchange.
pub const PEER_EXCHANGE_PROTOCOL: &str = "addr";
/// Version part of peer exchange.
pub const PEER_EXCHANGE_VERSION: &str = "1";

/// Peers per response: 32 gives a new node four candidates per outbound slot while keeping one
/// response small.
pub const MAX_PEERS_PER_RESPONSE: usize = 32;

/// Addresses per response, over all peers: most nodes have one or two good addresses, so 32
/// covers [`MAX_PEERS_PER_RESPONSE`] peers without letting one peer's list crowd out others.
pub const MAX_ADDRS_PER_RESPONSE: usize = 32;

/// Largest request frame: requests are empty; a few bytes of slack for future flags.
pub const MAX_REQUEST_FRAME: MaxFrameSize = MaxFrameSize::new(16);

/// Largest response frame: 32 peers x 38-byte ids plus 32 addresses of at most ~64 bytes is
/// about 3 KiB; 64 KiB leaves room for encoding overhead and older, larger answers.
pub const MAX_RESPONSE_FRAME: MaxFrameSize = MaxFrameSize::new(64 * 1024);

/// The protocol id of peer exchange on `network`.
pub fn peer_exchange_protocol(network: &NetworkName) -> Result<StreamProtocol, ProtocolError> {
    protocol_name(network, PEER_EXCHANGE_PROTOCOL, PEER_EXCHANGE_VERSION)
}

/// A request for addresses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AddrRequest;

/// A response: peers and their addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AddrResponse(pub Vec<(PeerId, Vec<Multiaddr>)>);

#[derive(Serialize, Deserialize)]
struct WirePeer {
    peer: Vec<u8>,
    addrs: Vec<Vec<u8>>,
}

impl AddrResponse {
    /// Encodes the response (postcard), truncated to the protocol limits.
    pub fn encode(&self) -> Vec<u8> {
        let mut budget = MAX_ADDRS_PER_RESPONSE;
        let wire: Vec<WirePeer> = self
            .0
            .iter()
            .take(MAX_PEERS_PER_RESPONSE)
            .map(|(p, addrs)| {
                let addrs: Vec<Vec<u8>> = addrs
                    .iter()
                    .take(MAX_ADDRS_PER_PEER.min(budget))
                    .map(|a| a.to_vec())
                    .collect();
                budget -= addrs.len();
                WirePeer {
                    peer: p.to_bytes(),
                    addrs,
                }
            })
            .collect();
        // Serializing owned bytes into a Vec cannot fail; an empty response is a safe fallback.
        postcard::to_stdvec(&wire).unwrap_or_default()
    }

    /// Decodes a response; more peers or addresses than the limits is a protocol violation.
    pub fn decode(bytes: &[u8]) -> std::io::Result<Self> {
        let invalid =
            |msg: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, msg.to_owned());
        let wire: Vec<WirePeer> =
            postcard::from_bytes(bytes).map_err(|_| invalid("malformed address response"))?;
        if wire.len() > MAX_PEERS_PER_RESPONSE {
            return Err(invalid("too many peers in address response"));
        }
        if wire.iter().map(|w| w.addrs.len()).sum::<usize>() > MAX_ADDRS_PER_RESPONSE {
            return Err(invalid("too many addresses in address response"));
        }
        let mut out = Vec::with_capacity(wire.len());
        for w in wire {
            if w.addrs.len() > MAX_ADDRS_PER_PEER {
                return Err(invalid("too many addresses for one peer"));
            }
            let peer = PeerId::from_bytes(&w.peer)
                .map_err(|_| invalid("bad peer id in address response"))?;
            let addrs = w
                .addrs
                .into_iter()
                .filter_map(|a| Multiaddr::try_from(a).ok())
                .collect();
            out.push((peer, addrs));
        }
        Ok(Self(out))
    }
}

/// The request-response codec of peer exchange.
#[derive(Clone, Copy, Debug, Default)]
pub struct AddrCodec;

impl libp2p::request_response::Codec for AddrCodec {
    type Protocol = StreamProtocol;
    type Request = AddrRequest;
    type Response = AddrResponse;

    async fn read_request<T>(
        &mut self,
        _: &Self::Protocol,
        io: &mut T,
    ) -> std::io::Result<AddrRequest>
    where
        T: futures::AsyncRead + Unpin + Send,
    {
        read_frame(io, MAX_REQUEST_FRAME).await?;
        Ok(AddrRequest)
    }

    async fn read_response<T>(
        &mut self,
        _: &Self::Protocol,
        io: &mut T,
    ) -> std::io::Result<AddrResponse>
    where
        T: futures::AsyncRead + Unpin + Send,
    {
        let bytes = read_frame(io, MAX_RESPONSE_FRAME).await?;
        AddrResponse::decode(&bytes)
    }

    async fn write_request<T>(
        &mut self,
        _: &Self::Protocol,
        io: &mut T,
        _: AddrRequest,
    ) -> std::io::Result<()>
    where
        T: futures::AsyncWrite + Unpin + Send,
    {
        Ok(write_frame(io, &[], MAX_REQUEST_FRAME).await?)
    }

    async fn write_response<T>(
        &mut self,
        _: &Self::Protocol,
        io: &mut T,
        res: AddrResponse,
    ) -> std::io::Result<()>
    where
        T: futures::AsyncWrite + Unpin + Send,
    {
        Ok(write_frame(io, &res.encode(), MAX_RESPONSE_FRAME).await?)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Whatever a peer sends, decoding returns a value or an error, never panics, and never
        /// yields more than the limits.
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            if let Ok(res) = AddrResponse::decode(&bytes) {
                prop_assert!(res.0.len() <= MAX_PEERS_PER_RESPONSE);
                prop_assert!(res.0.iter().all(|(_, a)| a.len() <= MAX_ADDRS_PER_PEER));
                prop_assert!(res.0.iter().map(|(_, a)| a.len()).sum::<usize>() <= MAX_ADDRS_PER_RESPONSE);
            }
        }

        /// Within the limits (here at most 8 x 4 addresses), encoding loses nothing.
        #[test]
        fn round_trip(ports in proptest::collection::vec(proptest::collection::vec(any::<u16>(), 0..=4), 0..=8)) {
            let res = AddrResponse(
                ports
                    .iter()
                    .map(|ps| {
                        let addrs = ps.iter().map(|p| format!("/ip4/10.0.0.1/tcp/{p}").parse().expect("addr")).collect();
                        (PeerId::random(), addrs)
                    })
                    .collect(),
            );
            prop_assert_eq!(AddrResponse::decode(&res.encode()).expect("decodes"), res);
        }
    }

    #[test]
    fn response_round_trip_and_limits() {
        let p = PeerId::random();
        let a: Multiaddr = "/ip4/10.0.0.1/udp/5/quic-v1".parse().expect("addr");
        let res = AddrResponse(vec![(p, vec![a])]);
        assert_eq!(AddrResponse::decode(&res.encode()).expect("decodes"), res);
        let big = AddrResponse((0..100).map(|_| (PeerId::random(), Vec::new())).collect());
        assert_eq!(
            AddrResponse::decode(&big.encode())
                .expect("truncated on encode")
                .0
                .len(),
            MAX_PEERS_PER_RESPONSE
        );
        assert!(AddrResponse::decode(&[0xff, 0xff]).is_err());
    }

    #[test]
    fn response_fits_its_frame() {
        let addrs: Vec<Multiaddr> = (0..MAX_ADDRS_PER_PEER)
            .map(|i| {
                format!("/ip6/2001:db8::{i}/udp/65535/quic-v1")
                    .parse()
                    .expect("addr")
            })
            .collect();
        let res = AddrResponse(
            (0..MAX_PEERS_PER_RESPONSE)
                .map(|_| (PeerId::random(), addrs.clone()))
                .collect(),
        );
        assert!(res.encode().len() <= MAX_RESPONSE_FRAME.bytes() as usize);
        let decoded = AddrResponse::decode(&res.encode()).expect("within limits");
        let total: usize = decoded.0.iter().map(|(_, a)| a.len()).sum();
        assert_eq!(
            total, MAX_ADDRS_PER_RESPONSE,
            "truncated to the address budget"
        );
    }
}
