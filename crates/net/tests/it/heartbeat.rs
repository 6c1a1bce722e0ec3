//! Heartbeats: a peer that accepts pings but never answers them is disconnected.

use std::time::{Duration, Instant};

use futures::{AsyncReadExt, StreamExt};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{StreamProtocol, SwarmBuilder};
use playergold_net::NetworkEvent;
use playergold_net::testnet::{TestNode, node_ip, tcp_addr, test_config};

/// Reads ping payloads and never answers them: a peer that is connected but unresponsive.
#[derive(Clone, Copy, Debug, Default)]
struct SilentPing;

impl request_response::Codec for SilentPing {
    type Protocol = StreamProtocol;
    type Request = [u8; 32];
    type Response = ();

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> std::io::Result<[u8; 32]>
    where
        T: futures::AsyncRead + Unpin + Send,
    {
        let mut payload = [0u8; 32];
        io.read_exact(&mut payload).await?;
        Ok(payload)
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, _: &mut T) -> std::io::Result<()>
    where
        T: futures::AsyncRead + Unpin + Send,
    {
        Ok(())
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        _: &mut T,
        _: [u8; 32],
    ) -> std::io::Result<()>
    where
        T: futures::AsyncWrite + Unpin + Send,
    {
        Ok(())
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        _: &mut T,
        _: (),
    ) -> std::io::Result<()>
    where
        T: futures::AsyncWrite + Unpin + Send,
    {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_that_misses_heartbeats_is_disconnected() {
    crate::init_tracing();
    let mut cfg = test_config(node_ip(220));
    cfg.listen_addrs = vec![tcp_addr(node_ip(220))];
    let node = TestNode::spawn_fresh(cfg.clone())
        .await
        .expect("node starts");
    let mut events = node.handle.subscribe();

    let hour = Duration::from_secs(3600);
    let mut silent = SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            libp2p::tcp::Config::default(),
            libp2p::tls::Config::new,
            libp2p::yamux::Config::default,
        )
        .expect("tcp transport")
        .with_behaviour(|_| {
            request_response::Behaviour::with_codec(
                SilentPing,
                [(
                    StreamProtocol::new("/ipfs/ping/1.0.0"),
                    ProtocolSupport::Inbound,
                )],
                request_response::Config::default().with_request_timeout(hour),
            )
        })
        .expect("behaviour")
        .with_swarm_config(|c| c.with_idle_connection_timeout(hour))
        .build();
    let silent_id = *silent.local_peer_id();
    silent.dial(node.dial_addr()).expect("dial");
    let driver = tokio::spawn(async move {
        // Hold every ping stream open without answering.
        let mut held = Vec::new();
        loop {
            if let SwarmEvent::Behaviour(request_response::Event::Message {
                message: request_response::Message::Request { channel, .. },
                ..
            }) = silent.select_next_some().await
            {
                held.push(channel);
            }
        }
    });

    let limit = cfg.heartbeat_interval + cfg.heartbeat_timeout + Duration::from_secs(10);
    let outcome = tokio::time::timeout(limit, async {
        let mut connected_at = None;
        loop {
            match events.recv().await.expect("event stream") {
                NetworkEvent::PeerConnected { peer, .. } if peer == silent_id => {
                    connected_at = Some(Instant::now())
                }
                NetworkEvent::PeerDisconnected { peer } if peer == silent_id => {
                    return connected_at;
                }
                _ => {}
            }
        }
    })
    .await
    .expect("the unresponsive peer is disconnected in bounded time");
    let connected_at = outcome.expect("it was connected first");
    let lived = connected_at.elapsed();
    eprintln!("unresponsive peer dropped after {lived:?}");
    assert!(
        lived >= cfg.heartbeat_timeout / 2,
        "dropped by the heartbeat timeout, not at once: {lived:?}"
    );
    driver.abort();
    node.stop().await;
}
