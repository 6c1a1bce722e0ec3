//! The relay protocol's messages (`/playergold/<network>/relay/1`), one postcard frame each.

use playergold_primitives::codec::{DecodeError, WireDecode};
use playergold_primitives::{Block, BlockHash, BlockHeader, Hash32, Transaction, TxId};
use serde::{Deserialize, Serialize};

use crate::ai::{Challenge, ChallengeId, Solution, SolutionId, Verdict};

/// Most inventory items in one `Announce`, `Request` or `NotFound`, and most transactions in one
/// `Transactions` or `BlockTxns` batch beyond a block's own size. Ten times the default batch size,
/// so honest batching never hits it.
pub const MAX_ITEMS_PER_MESSAGE: usize = 1_000;

/// Largest relay frame: a maximum-size block plus framing slack. A larger frame is refused before
/// it is read.
pub const MAX_RELAY_FRAME_BYTES: usize = playergold_primitives::MAX_BLOCK_BYTES + 4 * 1024;

/// Length of a compact-block short transaction id, in bytes. 40 bits keeps a compact block under
/// 5% of the full block (a transaction encodes to about 120 bytes). Collisions: a 1,000-tx block
/// against a 50,000-tx mempool collides with probability about 1000 × 50000 / 2^40 ≈ 5·10^-5; the
/// ids are keyed by the block hash, so nobody can aim for one, and a collision only costs a
/// fallback to fetching the block.
pub const SHORT_ID_LEN: usize = 5;

/// Something that can be announced and requested.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum InvItem {
    /// A transaction.
    Tx(TxId),
    /// A full block.
    Block(BlockHash),
    /// An AI challenge.
    Challenge(ChallengeId),
    /// A solution (dedup key only; solutions are pushed, never announced).
    Solution(SolutionId),
    /// A verdict on a solution (keyed by its hash).
    Verdict(Hash32),
}

/// A transaction id shortened to [`SHORT_ID_LEN`] bytes, keyed by the block hash so nobody can
/// precompute collisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ShortId(pub [u8; SHORT_ID_LEN]);

impl ShortId {
    /// The short id of `tx` inside the block `block`: SipHash-2-4 of the id keyed by the block
    /// hash's first 16 bytes (as BIP152 keys it by the header's hash), truncated. SipHash rather
    /// than a keyed BLAKE3 because a rebuild hashes every id in the mempool, and on a 32-byte
    /// input SipHash is several times cheaper.
    pub fn new(block: &BlockHash, tx: &TxId) -> ShortId {
        let h = sip24(&block.0, &tx.0).to_le_bytes();
        let mut out = [0u8; SHORT_ID_LEN];
        out.copy_from_slice(&h[..SHORT_ID_LEN]);
        ShortId(out)
    }
}

/// SipHash-2-4 of `data` under the first 16 bytes of `key` (two little-endian words).
fn sip24(key: &[u8; 32], data: &[u8]) -> u64 {
    let word = |i: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&key[i * 8..(i + 1) * 8]);
        u64::from_le_bytes(w)
    };
    siphasher::sip::SipHasher24::new_with_keys(word(0), word(1)).hash(data)
}

/// Length of a transaction announcement's short id, in bytes. Announcements are most of what a
/// relayed transaction costs beyond its one copy per node (every node tells each peer of its
/// relay set that lacks it), so the id is as short as collisions allow: 4 bytes salted by the receiver (see
/// [`TxSalt`]). A receiver that remembers 10,000 ids takes a new id for a known one with
/// probability about 10^4 / 2^32 ≈ 2·10^-6; that transaction then reaches it later (in a block
/// or through another announcement after the id leaves its cache), never a wrong one.
pub const TX_SHORT_ID_LEN: usize = 4;

/// A node's secret-free salt for the short ids of the transactions announced *to* it, sent in
/// its relay hello. Each node picks its own at random, so an attacker cannot grind one
/// transaction whose short id shadows another's on every node at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TxSalt(pub [u8; 16]);

/// A transaction's announcement id under a receiver's [`TxSalt`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TxShortId(pub [u8; TX_SHORT_ID_LEN]);

/// Computes [`TxShortId`]s under one salt (the keyed hash's key is derived once).
#[derive(Debug, Clone)]
pub struct TxShortIds {
    key: [u8; 32],
}

impl TxShortIds {
    /// The short-id function of `salt`.
    pub fn new(salt: TxSalt) -> TxShortIds {
        let mut hasher = blake3::Hasher::new_derive_key("playergold relay tx short id v1");
        hasher.update(&salt.0);
        TxShortIds {
            key: *hasher.finalize().as_bytes(),
        }
    }

    /// The short id of `tx`: SipHash-2-4 under the derived key, truncated (every relayed
    /// transaction is hashed once per peer it is announced to, so the cheap keyed hash).
    pub fn of(&self, tx: &TxId) -> TxShortId {
        let h = sip24(&self.key, &tx.0).to_le_bytes();
        let mut out = [0u8; TX_SHORT_ID_LEN];
        out.copy_from_slice(&h[..TX_SHORT_ID_LEN]);
        TxShortId(out)
    }
}

/// Which side of a link announces a relayed transaction at once and which one holds back
/// ([`PropagationConfig::announce_yield`](crate::relay::PropagationConfig)): decided per
/// transaction by a hash under a key both sides derive from the two salts, so both reach the
/// same answer, and each side yields on about half of the transactions of each link. (A rule
/// comparing per-node values would orient every link the same way for a transaction, from the
/// higher value to the lower, and the fast paths would form a graph a transaction cannot climb.)
#[derive(Debug, Clone)]
pub struct AnnounceOrder {
    key: [u8; 32],
    low: bool,
}

impl AnnounceOrder {
    /// The order on the link between the node of salt `ours` and the peer of salt `theirs`.
    pub fn new(ours: TxSalt, theirs: TxSalt) -> AnnounceOrder {
        let low = ours.0 < theirs.0;
        let (a, b) = if low { (ours, theirs) } else { (theirs, ours) };
        let mut hasher = blake3::Hasher::new_derive_key("playergold relay announce order v1");
        hasher.update(&a.0);
        hasher.update(&b.0);
        AnnounceOrder {
            key: *hasher.finalize().as_bytes(),
            low,
        }
    }

    /// Whether this side holds back its announcement of `tx` (the peer's side does not).
    pub fn we_yield(&self, tx: &TxId) -> bool {
        let bit = blake3::keyed_hash(&self.key, &tx.0).as_bytes()[0] & 1 == 1;
        bit == self.low
    }
}

/// A block as its header and short ids of its transactions (BIP152's idea): receivers rebuild
/// it from their mempools and ask only for what they miss.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactBlock {
    /// The header.
    pub header: BlockHeader,
    /// Short ids of the transactions, in block order.
    pub short_ids: Vec<ShortId>,
}

impl CompactBlock {
    /// The compact form of `block`.
    pub fn of(block: &Block) -> CompactBlock {
        let hash = block.hash();
        CompactBlock {
            short_ids: block
                .txs
                .iter()
                .map(|t| ShortId::new(&hash, &t.id()))
                .collect(),
            header: block.header.clone(),
        }
    }
}

/// One relay protocol message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RelayMessage {
    /// "I have these": the receiver requests what it lacks.
    Announce(Vec<InvItem>),
    /// "Send me these".
    Request(Vec<InvItem>),
    /// Requested items we do not have (any more).
    NotFound(Vec<InvItem>),
    /// Full transactions, pushed or requested.
    Transactions(Vec<Transaction>),
    /// A new block, compact.
    CompactBlock(CompactBlock),
    /// The transactions at these positions of a compact block.
    BlockTxnsRequest {
        /// The block.
        block: BlockHash,
        /// Positions in the block, ascending.
        indexes: Vec<u32>,
    },
    /// Reply to `BlockTxnsRequest`, in the requested order.
    BlockTxns {
        /// The block.
        block: BlockHash,
        /// The transactions.
        txs: Vec<Transaction>,
    },
    /// A full block (requested, or the fallback when a compact block cannot be rebuilt).
    Block(Block),
    /// An AI challenge.
    Challenge(Challenge),
    /// A solution. With its challenge attached it asks the receiver to validate it; without, it
    /// travels back toward the issuer along the challenge's path.
    Solution {
        /// The solution.
        solution: Solution,
        /// The challenge, for validators.
        challenge: Option<Challenge>,
    },
    /// A validator's verdict.
    Verdict(Verdict),
    /// "I have these transactions", as short ids under the receiver's salt (to peers that sent
    /// one in their hello; others get `Announce`).
    AnnounceTxs(Vec<TxShortId>),
    /// "Send me these": short ids the receiver announced to us.
    RequestTxs(Vec<TxShortId>),
    /// Requested short ids we cannot serve (unknown, or the transaction is gone).
    TxsNotFound(Vec<TxShortId>),
    /// `AnnounceTxs` of one id: most announcements go out alone, and this form saves the
    /// list's length byte, a sixth of such a frame.
    AnnounceTx(TxShortId),
    /// `RequestTxs` of one id.
    RequestTx(TxShortId),
}

impl RelayMessage {
    /// An announcement of `ids` by short id, in the shortest form.
    pub fn announce_txs(mut ids: Vec<TxShortId>) -> RelayMessage {
        match ids.len() {
            1 => RelayMessage::AnnounceTx(ids.remove(0)),
            _ => RelayMessage::AnnounceTxs(ids),
        }
    }

    /// A request of `ids` by short id, in the shortest form.
    pub fn request_txs(mut ids: Vec<TxShortId>) -> RelayMessage {
        match ids.len() {
            1 => RelayMessage::RequestTx(ids.remove(0)),
            _ => RelayMessage::RequestTxs(ids),
        }
    }

    /// The queue class this message goes out in (lower drains first).
    pub fn class(&self) -> Class {
        match self {
            RelayMessage::CompactBlock(_) | RelayMessage::Block(_) => Class::Block,
            RelayMessage::Request(_)
            | RelayMessage::NotFound(_)
            | RelayMessage::RequestTxs(_)
            | RelayMessage::RequestTx(_)
            | RelayMessage::TxsNotFound(_)
            | RelayMessage::BlockTxnsRequest { .. }
            | RelayMessage::BlockTxns { .. } => Class::Reply,
            RelayMessage::Challenge(_)
            | RelayMessage::Solution { .. }
            | RelayMessage::Verdict(_) => Class::Ai,
            RelayMessage::Transactions(_) => Class::Tx,
            RelayMessage::Announce(_)
            | RelayMessage::AnnounceTxs(_)
            | RelayMessage::AnnounceTx(_) => Class::Announce,
        }
    }

    /// The encoded size in bytes.
    pub fn encoded_len(&self) -> usize {
        playergold_primitives::codec::encoded_len(self)
    }
}

/// Outbound priority classes, drained in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    /// Blocks and compact blocks.
    Block = 0,
    /// Replies we owe and requests we make.
    Reply = 1,
    /// Challenges, solutions, verdicts.
    Ai = 2,
    /// Transaction pushes.
    Tx = 3,
    /// Announcements.
    Announce = 4,
}

/// Number of classes.
pub const CLASSES: usize = 5;

impl WireDecode for RelayMessage {
    const MAX_BYTES: usize = MAX_RELAY_FRAME_BYTES;
    const WHAT: &'static str = "relay message";

    fn check(&self) -> Result<(), DecodeError> {
        let count = match self {
            RelayMessage::Announce(v) | RelayMessage::Request(v) | RelayMessage::NotFound(v) => {
                v.len()
            }
            RelayMessage::AnnounceTxs(v)
            | RelayMessage::RequestTxs(v)
            | RelayMessage::TxsNotFound(v) => v.len(),
            RelayMessage::Transactions(v) | RelayMessage::BlockTxns { txs: v, .. } => v.len(),
            RelayMessage::BlockTxnsRequest { indexes, .. } => indexes.len(),
            RelayMessage::CompactBlock(c) => c.short_ids.len(),
            RelayMessage::Block(b) => b.txs.len(),
            RelayMessage::AnnounceTx(_) | RelayMessage::RequestTx(_) => 1,
            RelayMessage::Challenge(_)
            | RelayMessage::Solution { .. }
            | RelayMessage::Verdict(_) => 0,
        };
        let max = match self {
            RelayMessage::CompactBlock(_)
            | RelayMessage::Block(_)
            | RelayMessage::BlockTxns { .. }
            | RelayMessage::BlockTxnsRequest { .. } => playergold_primitives::MAX_BLOCK_TXS,
            _ => MAX_ITEMS_PER_MESSAGE,
        };
        playergold_primitives::codec::check_count(Self::WHAT, count, max)
    }
}
