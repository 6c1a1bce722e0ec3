//! The serving side of sync: answer within the limits, and only at a bounded rate per peer. A
//! request over the rate gets an explicit `Busy` with a retry hint, never silence, so the client
//! can tell rate limiting from a stall.

use std::time::Instant;

use playergold_primitives::{Block, BlockHash, BlockHeader};

use super::messages::{
    MAX_BLOCKS_PER_REQUEST, MAX_BLOCKS_REPLY_BYTES, MAX_HEADERS_PER_REQUEST, Status, SyncRequest,
    SyncResponse,
};
use crate::rate::RateLimiter;
use crate::relay::PeerKey;

/// What serving needs from the chain.
pub trait SyncServeHost {
    /// Our status.
    fn status(&self) -> Status;
    /// Best-chain headers after the first locator hash we know, at most `max`.
    fn headers_after(&self, locator: &[BlockHash], max: usize) -> Vec<BlockHeader>;
    /// A stored block.
    fn block(&self, hash: &BlockHash) -> Option<Block>;
}

/// Requests a peer may make per second, and its burst. Sync needs a few requests per second per
/// peer (two in flight, each for up to 2,000 headers or 16 blocks); 20/s with a burst of 40
/// leaves honest peers unthrottled while bounding what one peer can make us read.
pub const SERVE_RATE_PER_SEC: f64 = 20.0;
/// Burst of requests allowed.
pub const SERVE_BURST: f64 = 40.0;

/// What the server has done, for the node's metrics (counters, never rates).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncServerMetrics {
    /// Requests answered with data.
    pub served: u64,
    /// Requests answered with `Busy` (over the rate limit).
    pub busy: u64,
    /// Headers sent.
    pub headers_sent: u64,
    /// Blocks sent.
    pub blocks_sent: u64,
}

/// Answers sync requests, rate-limited per peer.
#[derive(Debug)]
pub struct SyncServer<P: PeerKey> {
    limiter: RateLimiter<P>,
    /// Milliseconds until a drained bucket holds one request's token again.
    retry_after_ms: u32,
    metrics: SyncServerMetrics,
}

impl<P: PeerKey> Default for SyncServer<P> {
    fn default() -> Self {
        Self::with_rate(SERVE_RATE_PER_SEC, SERVE_BURST)
    }
}

impl<P: PeerKey> SyncServer<P> {
    /// A server allowing `rate` requests per second per peer, in bursts of `burst`.
    pub fn with_rate(rate: f64, burst: f64) -> Self {
        // A request costs one token; an empty bucket refills one in 1/rate seconds.
        let retry_after_ms = (1_000.0 / rate.max(1e-3))
            .ceil()
            .clamp(1.0, u32::MAX as f64) as u32;
        SyncServer {
            limiter: RateLimiter::new(rate, burst),
            retry_after_ms,
            metrics: SyncServerMetrics::default(),
        }
    }

    /// Answers `request` from `peer`, never beyond the protocol limits: at most
    /// `MAX_HEADERS_PER_REQUEST` headers, at most `MAX_BLOCKS_PER_REQUEST` blocks and (past the
    /// first block) at most `MAX_BLOCKS_REPLY_BYTES` of them. Over the rate limit the answer is
    /// `SyncResponse::Busy`, which the adapter sends like any other reply.
    pub fn serve(
        &mut self,
        now: Instant,
        peer: P,
        request: SyncRequest,
        host: &impl SyncServeHost,
    ) -> SyncResponse {
        if !self.limiter.allow(peer, 1.0, now) {
            self.metrics.busy += 1;
            return SyncResponse::Busy {
                retry_after_ms: self.retry_after_ms,
            };
        }
        self.metrics.served += 1;
        match request {
            SyncRequest::Status(_) => SyncResponse::Status(host.status()),
            SyncRequest::GetHeaders { locator, max } => {
                let max = max.min(MAX_HEADERS_PER_REQUEST) as usize;
                let mut headers = host.headers_after(&locator, max);
                // The host is asked for `max`; never trust it to have obeyed.
                headers.truncate(max);
                self.metrics.headers_sent += headers.len() as u64;
                SyncResponse::Headers(headers)
            }
            SyncRequest::GetBlocks(hashes) => {
                let mut blocks = Vec::new();
                let mut bytes = 0;
                for h in hashes.iter().take(MAX_BLOCKS_PER_REQUEST) {
                    let Some(b) = host.block(h) else { continue };
                    let size = playergold_primitives::codec::encoded_len(&b);
                    if !blocks.is_empty() && bytes + size > MAX_BLOCKS_REPLY_BYTES {
                        break;
                    }
                    bytes += size;
                    blocks.push(b);
                }
                self.metrics.blocks_sent += blocks.len() as u64;
                SyncResponse::Blocks(blocks)
            }
        }
    }

    /// What the server has done so far.
    pub fn metrics(&self) -> SyncServerMetrics {
        self.metrics
    }

    /// Forgets a disconnected peer.
    pub fn remove_peer(&mut self, peer: &P) {
        self.limiter.remove(peer);
    }
}
