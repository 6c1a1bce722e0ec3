//! The serving side of sync: answer within the limits, and only at a bounded rate per peer.

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

/// Why a request was not answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The peer asks faster than allowed.
    #[error("peer exceeds {SERVE_RATE_PER_SEC} sync requests per second")]
    RateLimited,
}

/// Answers sync requests, rate-limited per peer.
#[derive(Debug)]
pub struct SyncServer<P: PeerKey> {
    limiter: RateLimiter<P>,
}

impl<P: PeerKey> Default for SyncServer<P> {
    fn default() -> Self {
        SyncServer {
            limiter: RateLimiter::new(SERVE_RATE_PER_SEC, SERVE_BURST),
        }
    }
}

impl<P: PeerKey> SyncServer<P> {
    /// A server allowing `rate` requests per second per peer, in bursts of `burst`.
    pub fn with_rate(rate: f64, burst: f64) -> Self {
        SyncServer {
            limiter: RateLimiter::new(rate, burst),
        }
    }

    /// Answers `request` from `peer`, never beyond the protocol limits.
    pub fn serve(
        &mut self,
        now: Instant,
        peer: P,
        request: SyncRequest,
        host: &impl SyncServeHost,
    ) -> Result<SyncResponse, ServeError> {
        if !self.limiter.allow(peer, 1.0, now) {
            return Err(ServeError::RateLimited);
        }
        Ok(match request {
            SyncRequest::Status(_) => SyncResponse::Status(host.status()),
            SyncRequest::GetHeaders { locator, max } => {
                let max = max.min(MAX_HEADERS_PER_REQUEST) as usize;
                SyncResponse::Headers(host.headers_after(&locator, max))
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
                SyncResponse::Blocks(blocks)
            }
        })
    }

    /// Forgets a disconnected peer.
    pub fn remove_peer(&mut self, peer: &P) {
        self.limiter.remove(peer);
    }
}
