//! When each item reached each node, on one shared in-process clock.
//!
//! The driver registers an item (its key, kind, injecting node, size) just before injecting it;
//! node tasks report arrivals by key. An item is complete once every node has it; the injecting
//! node has it from the start. Arrivals of unknown keys (a block's transactions reported twice,
//! items of an earlier phase) are ignored, so the bound on memory is the number of registered
//! items times the node count.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::Notify;

/// An item's identity: a transaction id, a block hash, or a hash of a gossipsub payload.
pub type ItemKey = [u8; 32];

/// Item kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A transaction.
    Tx,
    /// A block.
    Block,
    /// A block counted when imported (body checked, committed to the store) rather than when
    /// received; ours only, under [`imported_key`].
    BlockImported,
}

/// The recorder key of a block's import, distinct from its hash (its reception).
pub fn imported_key(hash: &ItemKey) -> ItemKey {
    *blake3::Hasher::new()
        .update(b"playergold-bench imported block")
        .update(hash)
        .finalize()
        .as_bytes()
}

#[derive(Debug)]
struct Item {
    kind: Kind,
    origin: usize,
    size: usize,
    injected: Instant,
    arrived: Vec<Option<Instant>>,
    missing: usize,
}

#[derive(Debug, Default)]
struct State {
    nodes: usize,
    index: HashMap<ItemKey, usize>,
    items: Vec<Item>,
    incomplete: usize,
}

/// One completed (or not) item, as the report needs it.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Its kind.
    pub kind: Kind,
    /// The node it was injected at.
    pub origin: usize,
    /// Its encoded size in bytes.
    pub size: usize,
    /// Time from injection until the last node had it; `None` if some node never did.
    pub to_all: Option<Duration>,
    /// Per node, time from injection until it had the item (zero at the origin).
    pub arrivals: Vec<Option<Duration>>,
}

/// Shared arrival log. Clones share the same log.
#[derive(Debug, Clone)]
pub struct Recorder {
    state: Arc<Mutex<State>>,
    all_done: Arc<Notify>,
}

impl Recorder {
    /// A log for `nodes` nodes.
    pub fn new(nodes: usize) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                nodes,
                ..State::default()
            })),
            all_done: Arc::new(Notify::new()),
        }
    }

    /// Registers an item injected now at `origin`. A key registered twice keeps its first entry.
    pub fn register(&self, key: ItemKey, kind: Kind, origin: usize, size: usize) {
        let mut st = self.state.lock();
        if st.index.contains_key(&key) {
            return;
        }
        let now = Instant::now();
        let mut arrived = vec![None; st.nodes];
        if let Some(slot) = arrived.get_mut(origin) {
            *slot = Some(now);
        }
        let missing = arrived.iter().filter(|a| a.is_none()).count();
        let index = st.items.len();
        st.items.push(Item {
            kind,
            origin,
            size,
            injected: now,
            arrived,
            missing,
        });
        st.index.insert(key, index);
        if missing > 0 {
            st.incomplete += 1;
        }
    }

    /// Node `node` has the item `key` now (repeat reports keep the first time). Returns whether
    /// this was the item's first arrival at the node.
    pub fn arrived(&self, node: usize, key: &ItemKey) -> bool {
        self.arrived_at(node, key, Instant::now())
    }

    /// Node `node` had the item `key` at `at`. Returns whether this was the item's first
    /// arrival at the node.
    pub fn arrived_at(&self, node: usize, key: &ItemKey, at: Instant) -> bool {
        let mut st = self.state.lock();
        let Some(&i) = st.index.get(key) else {
            return false;
        };
        let Some(item) = st.items.get_mut(i) else {
            return false;
        };
        let Some(slot) = item.arrived.get_mut(node) else {
            return false;
        };
        if slot.is_some() {
            return false;
        }
        *slot = Some(at.max(item.injected));
        item.missing -= 1;
        if item.missing == 0 {
            st.incomplete -= 1;
            if st.incomplete == 0 {
                self.all_done.notify_waiters();
            }
        }
        true
    }

    /// Items not yet at every node.
    pub fn incomplete(&self) -> usize {
        self.state.lock().incomplete
    }

    /// Waits until every registered item is everywhere, or until `deadline`. Returns whether
    /// everything arrived.
    pub async fn wait_all(&self, deadline: tokio::time::Instant) -> bool {
        loop {
            let notified = self.all_done.notified();
            if self.incomplete() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.incomplete() == 0;
            }
        }
    }

    /// Every item's outcome, in registration order.
    pub fn outcomes(&self) -> Vec<Outcome> {
        let st = self.state.lock();
        st.items
            .iter()
            .map(|item| Outcome {
                kind: item.kind,
                origin: item.origin,
                size: item.size,
                to_all: if item.missing == 0 {
                    item.arrived
                        .iter()
                        .flatten()
                        .max()
                        .map(|t| t.saturating_duration_since(item.injected))
                } else {
                    None
                },
                arrivals: item
                    .arrived
                    .iter()
                    .map(|a| a.map(|t| t.saturating_duration_since(item.injected)))
                    .collect(),
            })
            .collect()
    }

    /// Per node, how many registered items it never received (diagnostics).
    pub fn missing_per_node(&self) -> Vec<usize> {
        let st = self.state.lock();
        let mut out = vec![0; st.nodes];
        for item in &st.items {
            for (n, a) in item.arrived.iter().enumerate() {
                if a.is_none()
                    && let Some(c) = out.get_mut(n)
                {
                    *c += 1;
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_item_completes_when_every_node_has_it() {
        let r = Recorder::new(3);
        r.register([1; 32], Kind::Tx, 0, 100);
        r.register([2; 32], Kind::Block, 2, 500);
        assert!(r.arrived(1, &[1; 32]));
        assert!(!r.arrived(1, &[1; 32]));
        assert!(!r.arrived(1, &[9; 32]));
        assert_eq!(r.incomplete(), 2);
        r.arrived(2, &[1; 32]);
        assert_eq!(r.incomplete(), 1);
        let deadline = tokio::time::Instant::now() + Duration::from_millis(20);
        assert!(!r.wait_all(deadline).await);
        assert_eq!(r.missing_per_node(), vec![1, 1, 0]);
        r.arrived(0, &[2; 32]);
        r.arrived(1, &[2; 32]);
        assert!(r.wait_all(tokio::time::Instant::now()).await);
        let out = r.outcomes();
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|o| o.to_all.is_some()));
        assert_eq!(
            (out[1].kind, out[1].origin, out[1].size),
            (Kind::Block, 2, 500)
        );
    }
}
