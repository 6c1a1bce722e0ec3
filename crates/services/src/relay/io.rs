//! The per-peer tasks that only move bytes: one acceptor for inbound relay streams, one reader
//! per inbound stream, one writer per outbound stream. All protocol decisions stay in the owner.

use std::collections::HashMap;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures::{AsyncRead, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::{Stream, StreamProtocol};
use libp2p_stream::{Control, IncomingStreams, OpenStreamError};
use playergold_chain::Blockchain;
use playergold_net::PeerId;
use playergold_net::framing::{MaxFrameSize, framed_len, read_frame, write_frame};
use playergold_primitives::codec::{self, WireDecode};
use playergold_protocol::relay::RelayMessage;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::timeout;

use super::{
    FRAME_WRITE_TIMEOUT, MAX_FRAME_SIZE, RelayHello, STREAM_OPEN_TIMEOUT, STREAM_REOPEN_DELAY,
};

/// Largest hello frame.
const HELLO_FRAME_SIZE: MaxFrameSize = MaxFrameSize::new(RelayHello::MAX_BYTES as u32);

/// What readers tell the owner, in stream order.
#[derive(Debug)]
pub(crate) enum Inbound {
    /// A peer opened its relay stream to us and said hello.
    Opened { peer: PeerId, hello: RelayHello },
    /// A decoded message; `permit` holds its bytes against the shared inbound budget until the
    /// owner has handled it.
    Message {
        peer: PeerId,
        msg: Box<RelayMessage>,
        bytes: usize,
        permit: OwnedSemaphorePermit,
    },
    /// The peer sent a frame that is over the limit or does not decode; the reader has stopped.
    Malformed { peer: PeerId, error: String },
}

/// What writers tell the owner.
#[derive(Debug)]
pub(crate) enum WriterNote {
    /// Our stream to the peer is open and our hello is written.
    Opened { peer: PeerId, session: u64 },
    /// The writer stopped.
    Failed {
        peer: PeerId,
        session: u64,
        failure: WriteFailure,
    },
}

/// Why a writer stopped.
#[derive(Debug)]
pub(crate) enum WriteFailure {
    /// The peer does not speak the relay protocol.
    Unsupported,
    /// The stream could not be opened (or not in time).
    Open(String),
    /// A frame took longer than `FRAME_WRITE_TIMEOUT`: the peer does not read.
    Stalled,
    /// The stream failed.
    Io(String),
}

impl std::fmt::Display for WriteFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteFailure::Unsupported => f.write_str("the peer does not speak the relay protocol"),
            WriteFailure::Open(why) => write!(f, "cannot open the relay stream: {why}"),
            WriteFailure::Stalled => {
                write!(f, "a frame did not leave within {FRAME_WRITE_TIMEOUT:?}")
            }
            WriteFailure::Io(why) => write!(f, "relay stream failed: {why}"),
        }
    }
}

/// Accepts inbound relay streams and runs one reader per stream; a peer's newer stream replaces
/// its older one (an honest peer reopens only after its previous stream died), so at most one
/// reader per peer lives. Readers end with their stream, or with this task.
pub(crate) async fn accept_loop(
    mut incoming: IncomingStreams,
    to_owner: mpsc::Sender<Inbound>,
    budget: Arc<Semaphore>,
    chain: Arc<Blockchain>,
) {
    let mut readers = JoinSet::new();
    let mut by_peer: HashMap<PeerId, AbortHandle> = HashMap::new();
    loop {
        tokio::select! {
            next = incoming.next() => {
                let Some((peer, stream)) = next else { return };
                by_peer.retain(|_, h| !h.is_finished());
                let reader = readers.spawn(read_loop(
                    peer,
                    stream,
                    to_owner.clone(),
                    budget.clone(),
                    chain.clone(),
                ));
                if let Some(old) = by_peer.insert(peer, reader) {
                    old.abort();
                }
            }
            Some(_) = readers.join_next() => {}
        }
    }
}

async fn read_loop(
    peer: PeerId,
    mut stream: Stream,
    to_owner: mpsc::Sender<Inbound>,
    budget: Arc<Semaphore>,
    chain: Arc<Blockchain>,
) {
    let malformed = |error: String| Inbound::Malformed { peer, error };
    let hello = match read_frame(&mut stream, HELLO_FRAME_SIZE).await {
        Ok(bytes) => match codec::decode::<RelayHello>(&bytes) {
            Ok(hello) => hello,
            Err(e) => {
                let _ = to_owner.send(malformed(e.to_string())).await;
                return;
            }
        },
        Err(e) if e.is_peer_fault() => {
            let _ = to_owner.send(malformed(e.to_string())).await;
            return;
        }
        // The stream closed or failed: nothing to blame anyone for.
        Err(_) => return,
    };
    if to_owner
        .send(Inbound::Opened { peer, hello })
        .await
        .is_err()
    {
        return;
    }
    loop {
        let frame = match read_frame(&mut stream, MAX_FRAME_SIZE).await {
            Ok(frame) => frame,
            Err(e) if e.is_peer_fault() => {
                let _ = to_owner.send(malformed(e.to_string())).await;
                return;
            }
            Err(_) => return,
        };
        let bytes = framed_len(frame.len());
        let msg = match codec::decode::<RelayMessage>(&frame) {
            Ok(msg) => msg,
            Err(e) => {
                let _ = to_owner.send(malformed(e.to_string())).await;
                return;
            }
        };
        drop(frame);
        let msg = preverify(msg, &chain).await;
        // A frame is at most MAX_FRAME_SIZE (< INBOUND_BUFFER_BYTES), so it always fits once
        // earlier messages are handled. Fails only when the owner is gone.
        let permits = u32::try_from(bytes).unwrap_or(u32::MAX);
        let Ok(permit) = budget.clone().acquire_many_owned(permits).await else {
            return;
        };
        let message = Inbound::Message {
            peer,
            msg: Box::new(msg),
            bytes,
            permit,
        };
        if to_owner.send(message).await.is_err() {
            return;
        }
    }
}

/// Transactions in a frame at most for their signatures to be checked on the reader's own task;
/// a larger batch (a few ms of work) goes to the blocking pool, off the runtime's workers.
const INLINE_PREVERIFY: usize = 8;

/// Checks the signatures of the transactions in `msg` here, on this peer's reader, so that the
/// owner task, which submits every peer's transactions one batch at a time, finds them checked
/// ([`Blockchain::preverify`]): the checks of different peers' frames run in parallel, on every
/// core. Judging stays with the owner: an invalid signature is simply not remembered.
async fn preverify(msg: RelayMessage, chain: &Arc<Blockchain>) -> RelayMessage {
    match msg {
        RelayMessage::Transactions(txs) if txs.len() > INLINE_PREVERIFY => {
            let chain = chain.clone();
            let checked = tokio::task::spawn_blocking(move || {
                chain.preverify(&txs);
                txs
            })
            .await;
            match checked {
                Ok(txs) => RelayMessage::Transactions(txs),
                // The blocking pool is shutting down (the runtime stops): nothing to submit.
                Err(_) => RelayMessage::Transactions(Vec::new()),
            }
        }
        RelayMessage::Transactions(txs) => {
            chain.preverify(&txs);
            RelayMessage::Transactions(txs)
        }
        other => other,
    }
}

/// A peer's relay stream once open, shared by its writer task and the owner. The owner writes a
/// frame itself when nothing waits for the writer and the stream takes the frame at once (the
/// multiplexer's window has room): a block relayed on its header then leaves without waiting
/// for the writer task to be scheduled. Everything else goes through the writer, in order.
#[derive(Debug, Default)]
pub(crate) struct SharedStream {
    /// `None` until the writer has opened the stream and written its hello.
    stream: Mutex<Option<Stream>>,
    /// Frames handed to the writer and not yet written. Only the owner increments it, so when
    /// it reads 0 every frame it queued has left.
    queued: AtomicUsize,
}

impl SharedStream {
    /// Counts a frame handed to the writer (before it is sent to the writer's channel).
    pub(crate) fn queue_one(&self) {
        self.queued.fetch_add(1, Ordering::SeqCst);
    }

    /// Uncounts a frame the writer will never write (its channel closed).
    pub(crate) fn unqueue_one(&self) {
        self.queued.fetch_sub(1, Ordering::SeqCst);
    }

    /// Whether nothing waits for the writer.
    pub(crate) fn idle(&self) -> bool {
        self.queued.load(Ordering::SeqCst) == 0
    }

    /// Writes as much of `frame` as the open stream takes without waiting, if nothing waits for
    /// the writer; returns how many bytes it wrote (the rest must go through the writer). A
    /// failing stream takes nothing here: the writer meets the error and reports it.
    pub(crate) fn try_write(&self, frame: &[u8]) -> usize {
        if !self.idle() {
            return 0;
        }
        // Held by the writer only while it writes a queued frame, which `idle` rules out.
        let Ok(mut guard) = self.stream.try_lock() else {
            return 0;
        };
        let Some(stream) = guard.as_mut() else {
            return 0;
        };
        // Nobody needs waking: a frame not taken now goes to the writer, which waits properly.
        let mut cx = Context::from_waker(Waker::noop());
        let mut written = 0;
        // Pending or failed: the writer writes the rest, or meets the error and reports it.
        let _ = poll_write_from(stream, &mut cx, frame, &mut written);
        if written > 0 {
            // Yamux and QUIC hand written bytes to their connection at once; a flush that
            // cannot finish now is the writer's next flush.
            let _ = Pin::new(&mut *stream).poll_flush(&mut cx);
        }
        written
    }

    /// Ready once the peer ends or resets the open stream. Our relay streams carry nothing
    /// back, so any outcome of a read ends the wait: end of stream or an error (a reset: the
    /// peer dropped the stream, as libp2p-stream does with an inbound stream when its accept
    /// queue is full), or bytes, which the protocol never sends this way.
    fn poll_peer_closed(&self, cx: &mut Context<'_>) -> Poll<String> {
        let mut guard = self.lock();
        let Some(stream) = guard.as_mut() else {
            return Poll::Ready("no open stream".to_owned());
        };
        let mut byte = [0u8; 1];
        Pin::new(stream)
            .poll_read(cx, &mut byte)
            .map(|read| match read {
                Ok(0) => "the peer closed our relay stream".to_owned(),
                Ok(_) => "the peer wrote on our relay stream".to_owned(),
                Err(e) => format!("the peer dropped our relay stream: {e}"),
            })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Stream>> {
        self.stream.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes all of `bytes` (whole frames) and flushes.
    async fn write_all(&self, bytes: &[u8]) -> std::io::Result<()> {
        let mut written = 0;
        poll_fn(|cx| {
            let mut guard = self.lock();
            let Some(stream) = guard.as_mut() else {
                return Poll::Ready(Err(std::io::ErrorKind::NotConnected.into()));
            };
            std::task::ready!(poll_write_from(stream, cx, bytes, &mut written))?;
            Pin::new(&mut *stream).poll_flush(cx)
        })
        .await
    }
}

/// Writes `bytes` from offset `*written` on, advancing it, until all are written (`Ready(Ok)`),
/// the stream would wait (`Pending`) or fails.
fn poll_write_from(
    stream: &mut Stream,
    cx: &mut Context<'_>,
    bytes: &[u8],
    written: &mut usize,
) -> Poll<std::io::Result<()>> {
    while let Some(rest) = bytes.get(*written..).filter(|r| !r.is_empty()) {
        match std::task::ready!(Pin::new(&mut *stream).poll_write(cx, rest)) {
            Ok(0) => return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
            Ok(n) => *written += n,
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
    Poll::Ready(Ok(()))
}

/// Everything a writer needs.
pub(crate) struct Writer {
    pub(crate) peer: PeerId,
    pub(crate) session: u64,
    pub(crate) control: Control,
    pub(crate) protocol: StreamProtocol,
    /// Our encoded hello.
    pub(crate) hello: Arc<Vec<u8>>,
    /// Whole frames (header and payload, or the rest of one the owner began) from the owner.
    pub(crate) frames: mpsc::Receiver<Vec<u8>>,
    /// The stream, once open, shared with the owner.
    pub(crate) shared: Arc<SharedStream>,
    /// Set by the owner when it found `frames` full; the writer then wakes it via `room`.
    pub(crate) wants_room: Arc<AtomicBool>,
    pub(crate) room: Arc<Notify>,
    pub(crate) notes: mpsc::Sender<WriterNote>,
    /// Wait before opening: zero for a new peer, growing for a re-open after a failure.
    pub(crate) delay: Duration,
}

/// How long a writer waits before opening its stream, given the writers this connection has had
/// before it: none for the first, then [`STREAM_REOPEN_DELAY`] doubled for each earlier re-open.
pub(crate) fn reopen_delay(earlier_opens: u8) -> Duration {
    match earlier_opens {
        0 => Duration::ZERO,
        n => STREAM_REOPEN_DELAY.saturating_mul(1 << (n - 1).min(8)),
    }
}

impl Writer {
    /// Opens the stream, says hello, writes frames until the owner drops its sender; tells the
    /// owner how it went.
    pub(crate) async fn run(mut self) {
        let (peer, session, notes) = (self.peer, self.session, self.notes.clone());
        if let Err(failure) = self.write_all().await {
            let _ = notes
                .send(WriterNote::Failed {
                    peer,
                    session,
                    failure,
                })
                .await;
        }
    }

    async fn write_all(&mut self) -> Result<(), WriteFailure> {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let opened = timeout(
            STREAM_OPEN_TIMEOUT,
            self.control.open_stream(self.peer, self.protocol.clone()),
        )
        .await;
        let mut stream = match opened {
            Ok(Ok(stream)) => stream,
            Ok(Err(OpenStreamError::UnsupportedProtocol(_))) => {
                return Err(WriteFailure::Unsupported);
            }
            Ok(Err(e)) => return Err(WriteFailure::Open(e.to_string())),
            Err(_) => {
                return Err(WriteFailure::Open(format!(
                    "no stream within {STREAM_OPEN_TIMEOUT:?}"
                )));
            }
        };
        write(&mut stream, &self.hello, HELLO_FRAME_SIZE).await?;
        *self.shared.lock() = Some(stream);
        let opened = WriterNote::Opened {
            peer: self.peer,
            session: self.session,
        };
        if self.notes.send(opened).await.is_err() {
            return Ok(());
        }
        loop {
            // A stream the peer dropped is found now, not when a frame fails on it: until then
            // the peer would have no stream from us and we would not know it.
            let frame = tokio::select! {
                frame = self.frames.recv() => frame,
                why = poll_fn(|cx| self.shared.poll_peer_closed(cx)) => {
                    return Err(WriteFailure::Io(why));
                }
            };
            let Some(frame) = frame else {
                break;
            };
            match timeout(FRAME_WRITE_TIMEOUT, self.shared.write_all(&frame)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(WriteFailure::Io(e.to_string())),
                Err(_) => return Err(WriteFailure::Stalled),
            }
            self.shared.unqueue_one();
            if self.wants_room.swap(false, Ordering::SeqCst) {
                self.room.notify_one();
            }
        }
        // The owner let go of this peer: close our side cleanly.
        let stream = self.shared.lock().take();
        if let Some(mut stream) = stream {
            let _ = stream.close().await;
        }
        Ok(())
    }
}

async fn write(stream: &mut Stream, payload: &[u8], max: MaxFrameSize) -> Result<(), WriteFailure> {
    match timeout(FRAME_WRITE_TIMEOUT, write_frame(stream, payload, max)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(WriteFailure::Io(e.to_string())),
        Err(_) => Err(WriteFailure::Stalled),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_first_stream_opens_at_once_and_reopens_back_off() {
        assert_eq!(reopen_delay(0), Duration::ZERO);
        assert_eq!(reopen_delay(1), STREAM_REOPEN_DELAY);
        assert_eq!(reopen_delay(2), STREAM_REOPEN_DELAY * 2);
        assert_eq!(reopen_delay(3), STREAM_REOPEN_DELAY * 4);
        // Capped: no overflow whatever the count.
        assert_eq!(reopen_delay(u8::MAX), STREAM_REOPEN_DELAY * 256);
    }
}
