//! Binary merkle root over transaction ids.
//!
//! Leaves and inner nodes are hashed with different prefixes, and an odd node is carried up
//! unchanged rather than paired with itself, so two different id lists never share a root
//! (the duplicate-last-leaf flaw of Bitcoin's tree, CVE-2012-2459, cannot occur).

use crate::hash::{Hash32, TxId};

const LEAF: u8 = 0;
const NODE: u8 = 1;

/// The merkle root of `ids`, in order. The root of no ids is blake3 of the empty string.
pub fn merkle_root(ids: &[TxId]) -> Hash32 {
    if ids.is_empty() {
        return Hash32::digest(&[]);
    }
    let mut level: Vec<[u8; 32]> = ids
        .iter()
        .map(|id| {
            let mut h = blake3::Hasher::new();
            h.update(&[LEAF]);
            h.update(&id.0);
            *h.finalize().as_bytes()
        })
        .collect();
    while level.len() > 1 {
        let mut next = Vec::with_capacity(level.len().div_ceil(2));
        for pair in level.chunks(2) {
            match pair {
                [a, b] => {
                    let mut h = blake3::Hasher::new();
                    h.update(&[NODE]);
                    h.update(a);
                    h.update(b);
                    next.push(*h.finalize().as_bytes());
                }
                [a] => next.push(*a),
                _ => unreachable!("chunks(2) yields one or two items"),
            }
        }
        level = next;
    }
    Hash32(level[0])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_and_duplication_change_the_root() {
        let a = TxId([1; 32]);
        let b = TxId([2; 32]);
        let c = TxId([3; 32]);
        assert_ne!(merkle_root(&[a, b]), merkle_root(&[b, a]));
        assert_ne!(merkle_root(&[a, b, c]), merkle_root(&[a, b, c, c]));
        assert_ne!(merkle_root(&[a]), merkle_root(&[]));
        assert_eq!(merkle_root(&[a, b, c]), merkle_root(&[a, b, c]));
    }
}
