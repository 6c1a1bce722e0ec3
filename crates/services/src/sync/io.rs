//! The tasks that only move bytes: one per outbound request (open a stream, write the request,
//! read the reply, close), one acceptor for inbound streams, one reader per inbound stream (read
//! the request, hand it to the owner, write the reply it gets back, close). Every decision stays
//! in the owner.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::time::Duration;

use futures::{AsyncWriteExt, StreamExt};
use libp2p::{Stream, StreamProtocol};
use libp2p_stream::{Control, IncomingStreams, OpenStreamError};
use playergold_net::framing::{FrameError, framed_len, read_frame, write_frame};
use playergold_net::{NetworkHandle, PeerId};
use playergold_primitives::codec;
use playergold_protocol::sync::{RequestId, SyncRequest, SyncResponse};
use tokio::sync::{mpsc, oneshot};
use tokio::task::{Id, JoinSet};
use tokio::time::timeout;

use super::{
    BUSY_RETRY_AFTER_MS, INBOUND_READ_TIMEOUT, INBOUND_WRITE_TIMEOUT, MAX_BUSY_REPLIES,
    MAX_INBOUND_PER_PEER, MAX_INBOUND_TOTAL, MAX_REQUEST_FRAME, MAX_RESPONSE_FRAME,
    REQUEST_TIMEOUT, STREAM_OPEN_TIMEOUT,
};

/// Longest a `Busy` reply to a stream over the limits may take to leave.
const BUSY_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// Streams tried per request (see [`request`]): two drops in a row by the remote's acceptor
/// buffer already mean it is swamped; the scheduler then moves the work elsewhere.
const MAX_STREAM_ATTEMPTS: u32 = 3;

/// Pause before another stream, to let the remote's acceptor take the streams queued before.
const RETRY_PAUSE: Duration = Duration::from_millis(20);

/// Who asked for an outbound request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tag {
    /// The scheduler, with its request id.
    Scheduler(RequestId),
    /// The adapter's status handshake on a new connection.
    Handshake,
}

/// Why an outbound request got no usable reply.
#[derive(Debug)]
pub(crate) enum RequestFailure {
    /// The peer does not speak sync.
    Unsupported,
    /// The stream could not be opened, or failed: the connection may be gone.
    Stream(String),
    /// No reply within `REQUEST_TIMEOUT`.
    Timeout,
    /// The reply was oversized or did not decode: the peer's fault.
    Malformed(String),
}

impl std::fmt::Display for RequestFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequestFailure::Unsupported => f.write_str("the peer does not speak sync"),
            RequestFailure::Stream(why) => write!(f, "sync stream failed: {why}"),
            RequestFailure::Timeout => write!(f, "no reply within {REQUEST_TIMEOUT:?}"),
            RequestFailure::Malformed(why) => write!(f, "malformed reply: {why}"),
        }
    }
}

/// The end of one outbound request.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub(crate) peer: PeerId,
    pub(crate) tag: Tag,
    /// The reply and its size on the wire.
    pub(crate) result: Result<(SyncResponse, usize), RequestFailure>,
}

/// Sends one request (already encoded) and reports its reply or failure to the owner.
///
/// A stream the remote drops unread is tried again on a fresh stream, at most
/// `MAX_STREAM_ATTEMPTS` times in all and only while the connection is up: libp2p-stream hands
/// inbound streams to the acceptor through a one-slot channel and drops (stops) those that
/// arrive while the slot is taken, so a burst of requests can lose one through nobody's fault.
/// Requests are reads, so asking twice is harmless.
pub(crate) async fn request(
    network: NetworkHandle,
    protocol: StreamProtocol,
    peer: PeerId,
    tag: Tag,
    payload: Vec<u8>,
    to_owner: mpsc::Sender<Outcome>,
) {
    let attempts = async {
        let mut control = network.streams();
        let mut attempt = 1;
        loop {
            match exchange(&mut control, protocol.clone(), peer, &payload).await {
                Err(Attempt::Dropped(why)) => {
                    let connected = network
                        .peers()
                        .await
                        .is_ok_and(|peers| peers.iter().any(|p| p.peer == peer));
                    if attempt >= MAX_STREAM_ATTEMPTS || !connected {
                        return Err(RequestFailure::Stream(why));
                    }
                    tracing::debug!(%peer, attempt, %why, "sync stream dropped unread; trying a fresh one");
                    attempt += 1;
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Err(Attempt::Failed(failure)) => return Err(failure),
                Ok(reply) => return Ok(reply),
            }
        }
    };
    let result = timeout(REQUEST_TIMEOUT, attempts)
        .await
        .unwrap_or(Err(RequestFailure::Timeout));
    // Fails only when the owner is gone.
    let _ = to_owner.send(Outcome { peer, tag, result }).await;
}

/// How one attempt ended, when it did not deliver.
enum Attempt {
    /// The remote stopped or reset the stream before replying: worth another stream.
    Dropped(String),
    /// Anything else.
    Failed(RequestFailure),
}

impl Attempt {
    fn from_io(e: FrameError) -> Attempt {
        match e {
            FrameError::Io(io) if io.kind() == ErrorKind::ConnectionReset => {
                Attempt::Dropped(io.to_string())
            }
            e if e.is_peer_fault() => Attempt::Failed(RequestFailure::Malformed(e.to_string())),
            e => Attempt::Failed(RequestFailure::Stream(e.to_string())),
        }
    }
}

async fn exchange(
    control: &mut Control,
    protocol: StreamProtocol,
    peer: PeerId,
    payload: &[u8],
) -> Result<(SyncResponse, usize), Attempt> {
    let failed = |f| Err(Attempt::Failed(f));
    let mut stream = match timeout(STREAM_OPEN_TIMEOUT, control.open_stream(peer, protocol)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(OpenStreamError::UnsupportedProtocol(_))) => {
            return failed(RequestFailure::Unsupported);
        }
        Ok(Err(e)) => return failed(RequestFailure::Stream(e.to_string())),
        Err(_) => {
            return failed(RequestFailure::Stream(format!(
                "no stream within {STREAM_OPEN_TIMEOUT:?}"
            )));
        }
    };
    write_frame(&mut stream, payload, MAX_REQUEST_FRAME)
        .await
        .map_err(Attempt::from_io)?;
    let frame = read_frame(&mut stream, MAX_RESPONSE_FRAME)
        .await
        .map_err(Attempt::from_io)?;
    let _ = stream.close().await;
    let bytes = framed_len(frame.len());
    let response = codec::decode::<SyncResponse>(&frame)
        .map_err(|e| Attempt::Failed(RequestFailure::Malformed(e.to_string())))?;
    Ok((response, bytes))
}

/// What readers tell the owner.
#[derive(Debug)]
pub(crate) enum Inbound {
    /// A decoded request; the owner sends the encoded reply back on `reply`.
    Request {
        peer: PeerId,
        request: SyncRequest,
        bytes: usize,
        reply: oneshot::Sender<Vec<u8>>,
    },
    /// The peer sent an oversized or undecodable request; its stream was dropped.
    Malformed { peer: PeerId, error: String },
    /// A stream over the concurrency limits was refused.
    Refused { peer: PeerId },
}

/// Accepts inbound sync streams and runs one reader per stream, at most
/// `MAX_INBOUND_PER_PEER` per peer and `MAX_INBOUND_TOTAL` in all; a stream over the limits is
/// answered `Busy` (by at most `MAX_BUSY_REPLIES` small tasks) or reset.
pub(crate) async fn accept_loop(mut incoming: IncomingStreams, to_owner: mpsc::Sender<Inbound>) {
    let mut readers: JoinSet<()> = JoinSet::new();
    let mut reader_peer: HashMap<Id, PeerId> = HashMap::new();
    let mut per_peer: HashMap<PeerId, usize> = HashMap::new();
    let mut busy: JoinSet<()> = JoinSet::new();
    loop {
        tokio::select! {
            next = incoming.next() => {
                let Some((peer, stream)) = next else { return };
                let active = per_peer.get(&peer).copied().unwrap_or(0);
                if active >= MAX_INBOUND_PER_PEER || readers.len() >= MAX_INBOUND_TOTAL {
                    if busy.len() < MAX_BUSY_REPLIES {
                        busy.spawn(reply_busy(stream));
                    }
                    // Dropping the stream otherwise resets it. Fails only when the owner is gone.
                    if to_owner.try_send(Inbound::Refused { peer }).is_err() && to_owner.is_closed() {
                        return;
                    }
                    continue;
                }
                *per_peer.entry(peer).or_default() += 1;
                let handle = readers.spawn(serve_stream(peer, stream, to_owner.clone()));
                reader_peer.insert(handle.id(), peer);
            }
            Some(done) = readers.join_next_with_id() => {
                let id = match done {
                    Ok((id, ())) => id,
                    Err(e) => e.id(),
                };
                if let Some(peer) = reader_peer.remove(&id)
                    && let Some(n) = per_peer.get_mut(&peer)
                {
                    *n -= 1;
                    if *n == 0 {
                        per_peer.remove(&peer);
                    }
                }
            }
            Some(_) = busy.join_next() => {}
        }
    }
}

async fn reply_busy(mut stream: Stream) {
    let busy = codec::encode(&SyncResponse::Busy {
        retry_after_ms: BUSY_RETRY_AFTER_MS,
    });
    let write = async {
        write_frame(&mut stream, &busy, MAX_RESPONSE_FRAME).await?;
        stream.close().await?;
        Ok::<(), FrameError>(())
    };
    let _ = timeout(BUSY_WRITE_TIMEOUT, write).await;
}

async fn serve_stream(peer: PeerId, mut stream: Stream, to_owner: mpsc::Sender<Inbound>) {
    let frame = match timeout(
        INBOUND_READ_TIMEOUT,
        read_frame(&mut stream, MAX_REQUEST_FRAME),
    )
    .await
    {
        Ok(Ok(frame)) => frame,
        Ok(Err(e)) if e.is_peer_fault() => {
            let error = e.to_string();
            let _ = to_owner.send(Inbound::Malformed { peer, error }).await;
            return;
        }
        // The stream failed or the peer said nothing in time: nothing to answer.
        Ok(Err(_)) | Err(_) => return,
    };
    let bytes = framed_len(frame.len());
    let request = match codec::decode::<SyncRequest>(&frame) {
        Ok(request) => request,
        Err(e) => {
            let error = e.to_string();
            let _ = to_owner.send(Inbound::Malformed { peer, error }).await;
            return;
        }
    };
    let (tx, rx) = oneshot::channel();
    let note = Inbound::Request {
        peer,
        request,
        bytes,
        reply: tx,
    };
    if to_owner.send(note).await.is_err() {
        return;
    }
    let Ok(payload) = rx.await else { return };
    let write = async {
        write_frame(&mut stream, &payload, MAX_RESPONSE_FRAME).await?;
        stream.close().await?;
        Ok::<(), FrameError>(())
    };
    // A reader that does not take our reply in time is left to its own stall handling.
    let _ = timeout(INBOUND_WRITE_TIMEOUT, write).await;
}
