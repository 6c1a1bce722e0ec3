//! Emulated link latency for benchmarks and tests (this kernel has no `netem`).
//!
//! A [`LinkDelay`] maps the address a node dials to a one-way delay. The TCP transport built by
//! [`tcp_transport`] wraps every connection *it dials* in a pump that holds each chunk of bytes
//! for that delay in both directions, so one wrapped end gives the link a round-trip time of
//! twice the delay, whichever side sends. Inbound connections are never wrapped (the dialler
//! already delays both directions). Because the wrapping sits below TLS and the multiplexer,
//! every protocol on the connection (ours, gossipsub, ping) sees the same delays.
//!
//! ```text
//!   app ◀─▶ duplex pipe ◀─▶ [pump: hold d] ◀─▶ TCP socket ◀─▶ remote
//! ```
//!
//! Each direction of the pump holds at most [`PUMP_CHUNKS`] chunks of at most [`PUMP_CHUNK`]
//! bytes; when full it stops reading, so TCP flow control applies as on a real link.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::future::Either;
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::Boxed;
use libp2p::core::upgrade::Version;
use libp2p::core::{ConnectedPoint, Transport};
use libp2p::identity::Keypair;
use libp2p::{Multiaddr, PeerId};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::compat::{Compat, TokioAsyncReadCompatExt};

/// Largest chunk the pump reads at once.
pub const PUMP_CHUNK: usize = 16 * 1024;

/// Chunks held per direction: 256 × 16 KiB = 4 MiB in flight, more than a TCP window of a real
/// intercontinental link carries, so the pump itself never limits throughput in benchmarks.
pub const PUMP_CHUNKS: usize = 256;

/// Capacity of the in-process pipe between the application and the pump.
const PIPE_BYTES: usize = 256 * 1024;

/// A one-way delay per dialled address.
#[derive(Clone)]
pub struct LinkDelay(Arc<dyn Fn(&Multiaddr) -> Duration + Send + Sync>);

impl LinkDelay {
    /// Delays links to each dialled address by `f(address)` in each direction.
    pub fn new(f: impl Fn(&Multiaddr) -> Duration + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    /// The one-way delay toward `addr`.
    pub fn delay(&self, addr: &Multiaddr) -> Duration {
        (self.0)(addr)
    }
}

impl fmt::Debug for LinkDelay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LinkDelay(..)")
    }
}

type TcpStream = libp2p::tcp::tokio::TcpStream;

/// TCP + TLS 1.3 + yamux, with dialled connections delayed by `delay` when given. The same
/// upgrade stack as libp2p's `SwarmBuilder::with_tcp`.
pub fn tcp_transport(
    keypair: &Keypair,
    tcp: libp2p::tcp::Config,
    delay: Option<LinkDelay>,
) -> Result<Boxed<(PeerId, StreamMuxerBox)>, libp2p::tls::certificate::GenError> {
    let tls = libp2p::tls::Config::new(keypair)?;
    Ok(libp2p::tcp::tokio::Transport::new(tcp)
        .map(
            move |stream: TcpStream, endpoint| match (&delay, endpoint) {
                (Some(delay), ConnectedPoint::Dialer { address, .. }) => {
                    let d = delay.delay(&address);
                    if d.is_zero() {
                        Either::Left(stream)
                    } else {
                        Either::Right(delayed(stream.0, d))
                    }
                }
                _ => Either::Left(stream),
            },
        )
        .upgrade(Version::V1Lazy)
        .authenticate(tls)
        .multiplex(libp2p::yamux::Config::default())
        .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
        .boxed())
}

/// Puts a delaying pump between `socket` and the returned stream.
fn delayed(socket: tokio::net::TcpStream, delay: Duration) -> Compat<tokio::io::DuplexStream> {
    let (ours, theirs) = tokio::io::duplex(PIPE_BYTES);
    let (socket_read, socket_write) = socket.into_split();
    let (pipe_read, pipe_write) = tokio::io::split(theirs);
    tokio::spawn(pump(socket_read, pipe_write, delay));
    tokio::spawn(pump(pipe_read, socket_write, delay));
    ours.compat()
}

/// Copies `from` to `to`, releasing each chunk `delay` after it was read. Ends (and shuts `to`
/// down) when `from` ends or either side fails.
async fn pump(
    mut from: impl AsyncRead + Unpin + Send + 'static,
    mut to: impl AsyncWrite + Unpin + Send + 'static,
    delay: Duration,
) {
    let (tx, mut rx) = mpsc::channel::<(tokio::time::Instant, Vec<u8>)>(PUMP_CHUNKS);
    let reader = async move {
        let mut buf = vec![0u8; PUMP_CHUNK];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let due = tokio::time::Instant::now() + delay;
                    let chunk = buf.get(..n).map(<[u8]>::to_vec).unwrap_or_default();
                    if tx.send((due, chunk)).await.is_err() {
                        break;
                    }
                }
            }
        }
    };
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() || to.flush().await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    futures::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pump_delays_every_chunk_and_keeps_order() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (mut server, _) = listener.accept().await.expect("accept");
        let delay = Duration::from_millis(80);
        let mut wrapped =
            tokio_util::compat::FuturesAsyncReadCompatExt::compat(delayed(client, delay));
        let start = tokio::time::Instant::now();
        wrapped.write_all(b"hello").await.expect("write");
        let mut got = [0u8; 5];
        server.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"hello");
        assert!(start.elapsed() >= delay, "arrived before the delay");
        server.write_all(b"world!").await.expect("reply");
        let mut back = [0u8; 6];
        wrapped.read_exact(&mut back).await.expect("read reply");
        assert_eq!(&back, b"world!");
        assert!(
            start.elapsed() >= delay * 2,
            "round trip shorter than 2 × delay"
        );
    }
}
