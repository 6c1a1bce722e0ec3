//! Small bounded collections the engine keys by peer-chosen ids.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;

/// A set that forgets its oldest entries beyond `capacity` (insertion order).
#[derive(Debug, Clone)]
pub(crate) struct BoundedSet<T> {
    items: HashSet<T>,
    order: VecDeque<T>,
    capacity: usize,
}

impl<T: Copy + Eq + Hash> BoundedSet<T> {
    pub(crate) fn new(capacity: usize) -> Self {
        BoundedSet {
            items: HashSet::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// Inserts; returns whether it was new.
    pub(crate) fn insert(&mut self, item: T) -> bool {
        if !self.items.insert(item) {
            return false;
        }
        self.order.push_back(item);
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.items.remove(&old);
            }
        }
        true
    }

    pub(crate) fn contains(&self, item: &T) -> bool {
        self.items.contains(item)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }
}

/// A map that forgets its oldest entries beyond `capacity` (insertion order).
#[derive(Debug, Clone)]
pub(crate) struct BoundedMap<K, V> {
    items: HashMap<K, V>,
    order: VecDeque<K>,
    capacity: usize,
}

impl<K: Copy + Eq + Hash, V> BoundedMap<K, V> {
    pub(crate) fn new(capacity: usize) -> Self {
        BoundedMap {
            items: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    pub(crate) fn insert(&mut self, key: K, value: V) {
        if self.items.insert(key, value).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.items.remove(&old);
            }
        }
    }

    pub(crate) fn get(&self, key: &K) -> Option<&V> {
        self.items.get(key)
    }

    pub(crate) fn remove(&mut self, key: &K) -> Option<V> {
        let value = self.items.remove(key)?;
        self.order.retain(|k| k != key);
        Some(value)
    }

    pub(crate) fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.items.get_mut(key)
    }

    pub(crate) fn contains_key(&self, key: &K) -> bool {
        self.items.contains_key(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oldest_entries_go_first() {
        let mut s = BoundedSet::new(3);
        for i in 0..5 {
            assert!(s.insert(i));
        }
        assert!(!s.insert(4));
        assert_eq!(s.len(), 3);
        assert!(!s.contains(&1) && s.contains(&2));
        let mut m = BoundedMap::new(2);
        m.insert(1, "a");
        m.insert(2, "b");
        m.insert(3, "c");
        assert!(!m.contains_key(&1) && m.get(&3) == Some(&"c"));
    }
}
