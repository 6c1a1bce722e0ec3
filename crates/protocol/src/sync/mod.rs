//! Chain synchronisation (`/playergold/<network>/sync/1`): messages, the client scheduler and the
//! serving side's limits.

mod messages;
mod scheduler;
mod server;

pub use messages::{
    MAX_BLOCKS_PER_REQUEST, MAX_BLOCKS_REPLY_BYTES, MAX_HEADERS_PER_REQUEST, MAX_LOCATOR_LEN,
    MAX_SYNC_FRAME_BYTES, Status, SyncRequest, SyncResponse,
};
pub use scheduler::{SyncAction, SyncConfig, SyncHost, SyncProgress, SyncScheduler, SyncState};
pub use server::{SERVE_BURST, SERVE_RATE_PER_SEC, ServeError, SyncServeHost, SyncServer};
