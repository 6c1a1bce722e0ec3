//! The sync protocol's messages (`/playergold/<network>/sync/1`, request/response).

use playergold_primitives::codec::{DecodeError, WireDecode};
use playergold_primitives::{Block, BlockHash, BlockHeader, Height, Work};
use serde::{Deserialize, Serialize};

use crate::Capabilities;

/// Most headers in one `Headers` reply (and the most a `GetHeaders` may ask for).
pub const MAX_HEADERS_PER_REQUEST: u32 = 2_000;
/// Most hashes in one `GetBlocks`. With the serving rate limit (`SERVE_RATE_PER_SEC` requests
/// per second per peer) this caps what one holder serves one client: 64 × 20 = 1,280 blocks/s
/// (16 capped four holders together at about half a local import). A reply stays within
/// `MAX_BLOCKS_REPLY_BYTES` whatever the count.
pub const MAX_BLOCKS_PER_REQUEST: usize = 64;
/// Most bytes of blocks in one `Blocks` reply: the server stops adding blocks past this (at least
/// one block is always sent, and one block is at most `MAX_BLOCK_BYTES`).
pub const MAX_BLOCKS_REPLY_BYTES: usize = 8 * 1024 * 1024;
/// Most locator hashes (a locator of a chain of 2^32 blocks has about 42).
pub const MAX_LOCATOR_LEN: usize = 64;
/// Largest sync frame: a full `Blocks` reply plus slack.
pub const MAX_SYNC_FRAME_BYTES: usize =
    MAX_BLOCKS_REPLY_BYTES + playergold_primitives::MAX_BLOCK_BYTES + 4 * 1024;

/// A node's chain summary, exchanged on every new connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Genesis hash: a different one means another network (disconnect, no penalty).
    pub genesis: BlockHash,
    /// Best block hash.
    pub best_hash: BlockHash,
    /// Best block height.
    pub best_height: Height,
    /// Cumulative work of the best block.
    pub cumulative_work: Work,
    /// What the node offers.
    pub capabilities: Capabilities,
}

/// A sync request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncRequest {
    /// Our status; the reply is the peer's.
    Status(Status),
    /// Best-chain headers after the first locator hash the peer knows.
    GetHeaders {
        /// Hashes from our tip back to genesis, dense then sparse.
        locator: Vec<BlockHash>,
        /// Most headers wanted.
        max: u32,
    },
    /// Full blocks by hash.
    GetBlocks(Vec<BlockHash>),
}

/// A sync reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncResponse {
    /// The peer's status.
    Status(Status),
    /// Headers, ascending.
    Headers(Vec<BlockHeader>),
    /// Blocks, in the requested order, possibly fewer (byte limit, unknown hashes).
    Blocks(Vec<Block>),
    /// The request was not served because the peer asks faster than the serving rate limit
    /// allows. Not an error: ask again after `retry_after_ms`, or ask someone else.
    Busy {
        /// When the server expects to have capacity again, in milliseconds.
        retry_after_ms: u32,
    },
}

impl WireDecode for SyncRequest {
    const MAX_BYTES: usize = 64 * 1024;
    const WHAT: &'static str = "sync request";

    fn check(&self) -> Result<(), DecodeError> {
        let (count, max) = match self {
            SyncRequest::Status(_) => (0, 0),
            SyncRequest::GetHeaders { locator, .. } => (locator.len(), MAX_LOCATOR_LEN),
            SyncRequest::GetBlocks(h) => (h.len(), MAX_BLOCKS_PER_REQUEST),
        };
        playergold_primitives::codec::check_count(Self::WHAT, count, max)
    }
}

impl WireDecode for SyncResponse {
    const MAX_BYTES: usize = MAX_SYNC_FRAME_BYTES;
    const WHAT: &'static str = "sync response";

    fn check(&self) -> Result<(), DecodeError> {
        let (count, max) = match self {
            SyncResponse::Status(_) | SyncResponse::Busy { .. } => (0, 0),
            SyncResponse::Headers(h) => (h.len(), MAX_HEADERS_PER_REQUEST as usize),
            SyncResponse::Blocks(b) => (b.len(), MAX_BLOCKS_PER_REQUEST),
        };
        playergold_primitives::codec::check_count(Self::WHAT, count, max)
    }
}
