//! Node addresses and emulated link delays shared by both systems.
//!
//! Node `i` listens on its own loopback address (all of 127.0.0.0/8 is loopback on Linux), so a
//! dialled address names its node by IP alone, whatever port either system picked. The dialler's
//! [`LinkDelay`] maps that address to the overlay link's one-way delay; the transport applies it
//! to both directions below TLS, for our network and for gossipsub alike.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;
use playergold_net::latency::LinkDelay;

use crate::overlay::Overlay;

/// Most nodes the addressing scheme (and the bench) supports: 254 × 254 loopback /24s would do,
/// but a thousand in-process nodes is already far beyond what one machine runs meaningfully.
pub const MAX_NODES: usize = 1_000;

/// The loopback address of node `i` (`i < MAX_NODES`): `127.<1 + i mod 254>.<i / 254>.1`, so the
/// first 254 nodes sit in distinct /16 groups as they would on the internet.
pub fn node_ip(i: usize) -> Ipv4Addr {
    let a = 1 + (i % 254) as u8;
    let b = (i / 254).min(255) as u8;
    Ipv4Addr::new(127, a, b, 1)
}

/// The node whose address `addr` is, if it is one of [`node_ip`]'s.
pub fn node_of_addr(addr: &Multiaddr) -> Option<usize> {
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => {
            let [x, a, b, d] = ip.octets();
            (x == 127 && d == 1 && (1..=254).contains(&a))
                .then(|| usize::from(b) * 254 + usize::from(a) - 1)
        }
        _ => None,
    })
}

/// A TCP listen address on node `i`'s IP with an OS-chosen port.
pub fn tcp_listen_addr(i: usize) -> Multiaddr {
    Multiaddr::empty()
        .with(Protocol::Ip4(node_ip(i)))
        .with(Protocol::Tcp(0))
}

/// The delay function of node `me`: the overlay link's one-way delay toward the dialled node,
/// zero for anything else.
pub fn link_delay(overlay: Arc<Overlay>, me: usize) -> LinkDelay {
    LinkDelay::new(move |addr| {
        node_of_addr(addr).map_or(Duration::ZERO, |to| overlay.dial_delay(me, to))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip() {
        for i in [0, 1, 253, 254, 255, 507, 999] {
            let addr = tcp_listen_addr(i).with(Protocol::Tcp(4000));
            assert_eq!(node_of_addr(&addr), Some(i), "node {i}");
        }
        assert_eq!(node_ip(0), Ipv4Addr::new(127, 1, 0, 1));
        let other: Multiaddr = "/ip4/10.0.0.1/tcp/1".parse().expect("addr");
        assert_eq!(node_of_addr(&other), None);
    }
}
