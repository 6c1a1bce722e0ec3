//! The chain database: one redb file holding headers, bodies, the best-chain height and tx
//! indexes, per-block metadata and the best tip.
//!
//! Every change is one redb write transaction committed with immediate durability: a process
//! killed at any instant reopens with either all or none of an import, and nothing that was
//! reported committed is lost.
//!
//! Tables (keys are raw 32-byte hashes, values canonical postcard encodings):
//!
//! ```text
//!  headers : BlockHash -> BlockHeader          bodies : BlockHash -> Vec<Transaction>
//!  entries : BlockHash -> BlockEntry           heights: u64 -> BlockHash   (best chain only)
//!  txs     : TxId -> BlockHash (best chain)    meta   : "genesis" | "best" | "schema" -> bytes
//!  aux     : &str -> bytes (address book, bans: owned by the network layer)
//! ```

use std::path::Path;

use playergold_primitives::codec::{self, DecodeError};
use playergold_primitives::{
    Block, BlockHash, BlockHeader, Height, PublicKey, TimestampMs, Transaction, TxId, Work,
};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

const HEADERS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("headers");
const BODIES: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("bodies");
const ENTRIES: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("entries");
const HEIGHTS: TableDefinition<u64, &[u8; 32]> = TableDefinition::new("heights");
const TXS: TableDefinition<&[u8; 32], &[u8; 32]> = TableDefinition::new("txs");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const AUX: TableDefinition<&str, &[u8]> = TableDefinition::new("aux");

/// Bumped whenever the table layout changes; a database of another version is refused.
const SCHEMA_VERSION: u32 = 1;

/// A failure of the chain database. These are local faults: never a peer's.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// redb reported an error (disk full, I/O error, corruption).
    #[error(
        "chain database error: {0} (check free disk space and the data directory's permissions)"
    )]
    Db(String),
    /// The database was created for another network.
    #[error(
        "the chain database belongs to a different genesis ({stored}) than this node's ({expected}): \
         use another --data-dir or delete the old one"
    )]
    GenesisMismatch {
        /// Genesis hash found on disk.
        stored: BlockHash,
        /// Genesis hash of the configured network.
        expected: BlockHash,
    },
    /// The database has a layout this build does not know.
    #[error(
        "chain database schema version {found} is not supported (this build uses {SCHEMA_VERSION})"
    )]
    Schema {
        /// Version found on disk.
        found: u32,
    },
    /// A stored record does not decode: the file is damaged.
    #[error("chain database record is corrupt: {0}")]
    Corrupt(String),
    /// Another process holds the database open.
    #[error("chain database {0} is in use by another process: stop the other node first")]
    InUse(String),
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(e.to_string())
            }
        }
    )*};
}
from_redb!(
    redb::Error,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

impl From<DecodeError> for StoreError {
    fn from(e: DecodeError) -> Self {
        StoreError::Corrupt(e.to_string())
    }
}

/// What the in-memory index keeps of every stored block (also persisted, to load it at start).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockEntry {
    /// Parent hash.
    pub parent: BlockHash,
    /// Height.
    pub height: Height,
    /// Header timestamp.
    pub timestamp_ms: TimestampMs,
    /// Producer key.
    pub producer: PublicKey,
    /// Cumulative work from genesis up to and including this block.
    pub cumulative_work: Work,
}

/// Changes to the best chain that go into the same transaction as a new block.
#[derive(Debug, Default)]
pub(crate) struct BestChainUpdate<'a> {
    /// Blocks leaving the best chain, highest first, with their txs.
    pub removed: Vec<(Height, &'a [TxId])>,
    /// Blocks joining the best chain, lowest first, with their txs.
    pub added: Vec<(BlockHash, Height, &'a [TxId])>,
    /// The new tip.
    pub new_best: Option<BlockHash>,
}

/// The redb-backed chain database.
pub struct ChainStore {
    db: Database,
}

impl std::fmt::Debug for ChainStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChainStore")
    }
}

fn key(h: &BlockHash) -> &[u8; 32] {
    &h.0
}

impl ChainStore {
    /// Opens or creates the database at `path`. A new database is seeded with `genesis`; an
    /// existing one must hold the same genesis.
    pub fn open(path: &Path, genesis: &Block) -> Result<ChainStore, StoreError> {
        let db = match Database::create(path) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(StoreError::InUse(path.display().to_string()));
            }
            Err(e) => return Err(StoreError::Db(format!("{}: {e}", path.display()))),
        };
        let store = ChainStore { db };
        store.init(genesis)?;
        Ok(store)
    }

    fn init(&self, genesis: &Block) -> Result<(), StoreError> {
        let hash = genesis.hash();
        let tx = self.db.begin_write()?;
        {
            let mut meta = tx.open_table(META)?;
            let stored_genesis = meta.get("genesis")?.map(|v| v.value().to_vec());
            match stored_genesis {
                Some(stored) => {
                    let stored: [u8; 32] = stored
                        .as_slice()
                        .try_into()
                        .map_err(|_| StoreError::Corrupt("genesis hash length".into()))?;
                    if stored != hash.0 {
                        return Err(StoreError::GenesisMismatch {
                            stored: BlockHash(stored),
                            expected: hash,
                        });
                    }
                    let version = meta
                        .get("schema")?
                        .and_then(|v| v.value().try_into().ok().map(u32::from_le_bytes))
                        .unwrap_or(0);
                    if version != SCHEMA_VERSION {
                        return Err(StoreError::Schema { found: version });
                    }
                    return Ok(());
                }
                None => {
                    meta.insert("genesis", hash.0.as_slice())?;
                    meta.insert("schema", SCHEMA_VERSION.to_le_bytes().as_slice())?;
                    meta.insert("best", hash.0.as_slice())?;
                }
            }
            tx.open_table(HEADERS)?
                .insert(key(&hash), codec::encode(&genesis.header).as_slice())?;
            tx.open_table(BODIES)?
                .insert(key(&hash), codec::encode(&genesis.txs).as_slice())?;
            let entry = BlockEntry {
                parent: genesis.header.parent,
                height: Height(0),
                timestamp_ms: genesis.header.timestamp_ms,
                producer: genesis.header.producer,
                cumulative_work: Work(0),
            };
            tx.open_table(ENTRIES)?
                .insert(key(&hash), codec::encode(&entry).as_slice())?;
            tx.open_table(HEIGHTS)?.insert(0, key(&hash))?;
            tx.open_table(TXS)?;
            tx.open_table(AUX)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Every block entry, to build the in-memory index at start-up.
    pub fn load_entries(&self) -> Result<Vec<(BlockHash, BlockEntry)>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(ENTRIES)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (k, v) = row?;
            let entry: BlockEntry = postcard::from_bytes(v.value())
                .map_err(|e| StoreError::Corrupt(format!("block entry: {e}")))?;
            out.push((BlockHash(*k.value()), entry));
        }
        Ok(out)
    }

    /// The best chain as stored: hash at every height from 0 to the tip.
    pub fn load_best_chain(&self) -> Result<Vec<BlockHash>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(HEIGHTS)?;
        let mut out = Vec::new();
        for (i, row) in table.iter()?.enumerate() {
            let (k, v) = row?;
            if k.value() != i as u64 {
                return Err(StoreError::Corrupt(format!(
                    "height index has a gap at height {i}"
                )));
            }
            out.push(BlockHash(*v.value()));
        }
        Ok(out)
    }

    /// The stored best tip.
    pub fn best(&self) -> Result<BlockHash, StoreError> {
        let tx = self.db.begin_read()?;
        let meta = tx.open_table(META)?;
        let v = meta
            .get("best")?
            .ok_or_else(|| StoreError::Corrupt("no best tip".into()))?;
        let bytes: [u8; 32] = v
            .value()
            .try_into()
            .map_err(|_| StoreError::Corrupt("best tip length".into()))?;
        Ok(BlockHash(bytes))
    }

    /// A stored header.
    pub fn header(&self, hash: &BlockHash) -> Result<Option<BlockHeader>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(HEADERS)?;
        Ok(match table.get(key(hash))? {
            Some(v) => Some(codec::decode(v.value())?),
            None => None,
        })
    }

    /// A stored block body.
    pub fn body(&self, hash: &BlockHash) -> Result<Option<Vec<Transaction>>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(BODIES)?;
        Ok(match table.get(key(hash))? {
            Some(v) => Some(
                postcard::from_bytes(v.value())
                    .map_err(|e| StoreError::Corrupt(format!("block body: {e}")))?,
            ),
            None => None,
        })
    }

    /// A stored block.
    pub fn block(&self, hash: &BlockHash) -> Result<Option<Block>, StoreError> {
        let Some(header) = self.header(hash)? else {
            return Ok(None);
        };
        let txs = self
            .body(hash)?
            .ok_or_else(|| StoreError::Corrupt(format!("header {hash} without body")))?;
        Ok(Some(Block { header, txs }))
    }

    /// The best-chain block containing `id`, if any.
    pub fn tx_block(&self, id: &TxId) -> Result<Option<BlockHash>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(TXS)?;
        Ok(table.get(&id.0)?.map(|v| BlockHash(*v.value())))
    }

    /// Of `ids`, those already in a best-chain block, with that block.
    pub fn txs_in_best_chain(&self, ids: &[TxId]) -> Result<Vec<(TxId, BlockHash)>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(TXS)?;
        let mut out = Vec::new();
        for id in ids {
            if let Some(v) = table.get(&id.0)? {
                out.push((*id, BlockHash(*v.value())));
            }
        }
        Ok(out)
    }

    /// Starts a write transaction: any number of blocks, committed together (one fsync).
    pub(crate) fn writer(&self) -> Result<StoreWriter, StoreError> {
        Ok(StoreWriter {
            tx: self.db.begin_write()?,
        })
    }

    /// Reads a value the network layer stored (address book, bans).
    pub fn get_aux(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(AUX)?;
        Ok(table.get(name)?.map(|v| v.value().to_vec()))
    }

    /// Stores a value for the network layer, durably, in its own transaction.
    pub fn put_aux(&self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        tx.open_table(AUX)?.insert(name, value)?;
        tx.commit()?;
        Ok(())
    }

    /// Full consistency check of the stored best chain: every height links to the one below,
    /// every best-chain transaction is indexed to its block, and the tip is the top height.
    /// Used by the crash test and by `playergold` on request; O(chain size).
    pub fn verify_consistency(&self) -> Result<Height, StoreError> {
        let chain = self.load_best_chain()?;
        let best = self.best()?;
        let tip = *chain
            .last()
            .ok_or_else(|| StoreError::Corrupt("empty height index".into()))?;
        if tip != best {
            return Err(StoreError::Corrupt(format!(
                "best tip {best} is not the top of the height index ({tip})"
            )));
        }
        let mut previous: Option<BlockHash> = None;
        for (height, hash) in chain.iter().enumerate() {
            let block = self.block(hash)?.ok_or_else(|| {
                StoreError::Corrupt(format!("height {height}: block {hash} missing"))
            })?;
            if block.header.height.0 != height as u64 {
                return Err(StoreError::Corrupt(format!(
                    "block {hash} stored at wrong height"
                )));
            }
            if let Some(p) = previous
                && block.header.parent != p
            {
                return Err(StoreError::Corrupt(format!(
                    "height {height}: parent link broken"
                )));
            }
            for t in &block.txs {
                if self.tx_block(&t.id())? != Some(*hash) {
                    return Err(StoreError::Corrupt(format!(
                        "tx {} of block {hash} missing from the tx index",
                        t.id()
                    )));
                }
            }
            previous = Some(*hash);
        }
        Ok(Height(chain.len() as u64 - 1))
    }
}

/// One open write transaction. Reads through it see its own uncommitted writes, so a batch of
/// blocks can validate each block against the ones before it. Dropped without [`commit`], it
/// writes nothing.
///
/// [`commit`]: StoreWriter::commit
pub(crate) struct StoreWriter {
    tx: redb::WriteTransaction,
}

impl StoreWriter {
    /// A header, including ones written in this transaction.
    pub(crate) fn header(&self, hash: &BlockHash) -> Result<Option<BlockHeader>, StoreError> {
        let table = self.tx.open_table(HEADERS)?;
        let value = table.get(key(hash))?;
        Ok(match value {
            Some(v) => Some(codec::decode(v.value())?),
            None => None,
        })
    }

    /// A body, including ones written in this transaction.
    pub(crate) fn body(&self, hash: &BlockHash) -> Result<Vec<Transaction>, StoreError> {
        let table = self.tx.open_table(BODIES)?;
        let value = table
            .get(key(hash))?
            .ok_or_else(|| StoreError::Corrupt(format!("block {hash} has no body")))?;
        postcard::from_bytes(value.value())
            .map_err(|e| StoreError::Corrupt(format!("block body: {e}")))
    }

    /// Of `ids`, those in a best-chain block (as of this transaction), with that block.
    pub(crate) fn txs_in_best_chain(
        &self,
        ids: &[TxId],
    ) -> Result<Vec<(TxId, BlockHash)>, StoreError> {
        let table = self.tx.open_table(TXS)?;
        let mut out = Vec::new();
        for id in ids {
            if let Some(v) = table.get(&id.0)? {
                out.push((*id, BlockHash(*v.value())));
            }
        }
        Ok(out)
    }

    /// Writes a validated block and, when it changes the best chain, the best-chain changes.
    pub(crate) fn put_block(
        &mut self,
        block: &Block,
        hash: &BlockHash,
        entry: &BlockEntry,
        update: &BestChainUpdate<'_>,
    ) -> Result<(), StoreError> {
        let tx = &self.tx;
        tx.open_table(HEADERS)?
            .insert(key(hash), codec::encode(&block.header).as_slice())?;
        tx.open_table(BODIES)?
            .insert(key(hash), codec::encode(&block.txs).as_slice())?;
        tx.open_table(ENTRIES)?
            .insert(key(hash), codec::encode(entry).as_slice())?;
        if let Some(best) = update.new_best {
            let mut heights = tx.open_table(HEIGHTS)?;
            let mut txs = tx.open_table(TXS)?;
            for (height, ids) in &update.removed {
                heights.remove(height.0)?;
                for id in *ids {
                    txs.remove(&id.0)?;
                }
            }
            for (block_hash, height, ids) in &update.added {
                heights.insert(height.0, key(block_hash))?;
                for id in *ids {
                    txs.insert(&id.0, key(block_hash))?;
                }
            }
            tx.open_table(META)?.insert("best", best.0.as_slice())?;
        }
        Ok(())
    }

    /// Commits durably: when this returns `Ok`, the writes survive a crash.
    pub(crate) fn commit(self) -> Result<(), StoreError> {
        self.tx.commit()?;
        Ok(())
    }
}
