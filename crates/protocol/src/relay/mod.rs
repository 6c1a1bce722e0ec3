//! Propagation of transactions, blocks and AI messages (`/playergold/<network>/relay/1`).

mod bounded;
mod config;
mod engine;
mod messages;

pub use config::{BLOCK_REQUEST_COST, Fanout, PropagationConfig, Strategy};
pub use engine::{
    BlockImport, BlockVerdict, HeaderVerdict, KindCounters, MAX_ANNOUNCED_PER_PEER, MAX_ANNOUNCERS,
    MAX_CHALLENGES, MAX_KNOWN_PER_PEER, MAX_PARTIAL_BLOCKS, MAX_PENDING_IMPORTS, MAX_TALLIES,
    MAX_WAITED_BLOCKS, MAX_WAITERS_PER_BLOCK, MAX_WANTED, Offence, PeerKey, RECENT_BLOCKS,
    RelayEngine, RelayEvent, RelayHost, RelayMetrics, Settlement, TxVerdict,
};
pub use messages::{
    AnnounceOrder, CLASSES, Class, CompactBlock, InvItem, MAX_ITEMS_PER_MESSAGE,
    MAX_RELAY_FRAME_BYTES, RelayMessage, SHORT_ID_LEN, ShortId, TX_SHORT_ID_LEN, TxSalt, TxShortId,
    TxShortIds,
};
