//! Chain synchronisation (`/playergold/<network>/sync/1`): messages, the client scheduler and the
//! serving side's limits.
//!
//! Driving it from an adapter (one `SyncScheduler` and one `SyncServer` per node):
//! - connection up: `add_peer`, send `SyncRequest::Status(SyncScheduler::status_request(..))`;
//!   its reply, or the peer's own status request, goes to `on_status`. Connection down:
//!   `remove_peer` on both.
//! - relay `MissingParent` event: `on_orphan`; a header or status push with work: `on_announced`.
//! - after every call, drain `poll_action`: `Request { peer, id, request }` is sent and its reply
//!   comes back as `on_response(now, peer, id, ..)` (or `on_request_failed`); `Penalize` goes to
//!   reputation; `Disconnect` closes the connection. Then `take_ready` and import the blocks in
//!   one batch, reporting a refused one with `on_invalid_block`.
//! - a timer at `poll_timeout` calls `handle_timeout` (stalls, busy peers, the periodic status
//!   poll, the next chain after one finished).
//! - inbound request: `SyncServer::serve` always returns the reply to send (`Busy` when over the
//!   rate). Set the transport's request timeout above `MAX_STALL_TIMEOUT` so stall detection
//!   stays here.
//! - `progress(now, ..)` feeds the handle, the API and the progress bar.

mod messages;
mod scheduler;
mod server;

pub use messages::{
    MAX_BLOCKS_PER_REQUEST, MAX_BLOCKS_REPLY_BYTES, MAX_HEADERS_PER_REQUEST, MAX_LOCATOR_LEN,
    MAX_SYNC_FRAME_BYTES, Status, SyncRequest, SyncResponse,
};
pub use scheduler::{
    DEFAULT_WINDOW_BYTES, INITIAL_STALL_TIMEOUT, MAX_BUSY_BACKOFF, MAX_BUSY_STREAK,
    MAX_PENDING_HEADERS, MAX_STALL_TIMEOUT, RATE_WINDOW, RequestId, STATUS_POLL_INTERVAL,
    SyncAction, SyncConfig, SyncHost, SyncMetrics, SyncProgress, SyncScheduler, SyncState,
};
pub use server::{SERVE_BURST, SERVE_RATE_PER_SEC, SyncServeHost, SyncServer, SyncServerMetrics};
