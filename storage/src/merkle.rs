//! Merkle digests of token ranges, for anti-entropy.
//!
//! The token space is cut into [`MERKLE_LEAVES`] equal leaves (a fixed-depth tree of depth
//! [`MERKLE_DEPTH`]). A leaf's hash is the XOR of the hashes of every stored `(key, cell)` entry
//! whose token falls in it; XOR makes the leaf *incrementally maintained*: a write toggles out the
//! old entry's hash and toggles in the new one, with no rescan. Inner nodes are computed on
//! demand from the leaves (cheap: 4,096 leaves), so any aligned subtree — a prefix of the
//! Kademlia key space — has a digest, and two replicas compare a range by comparing its leaves.

use std::sync::atomic::{AtomicU64, Ordering};

use xxhash_rust::xxh3::{xxh3_64, Xxh3};

use crate::key::Token;

/// Depth of the tree: leaves are the token prefixes of this many bits.
pub const MERKLE_DEPTH: u32 = 12;
/// Number of leaves.
pub const MERKLE_LEAVES: usize = 1 << MERKLE_DEPTH;

/// The incrementally maintained leaves of one keyspace.
pub struct MerkleTree {
    leaves: Vec<AtomicU64>,
    /// When each leaf last changed (wall-clock ms): anti-entropy leaves fresh writes alone.
    touched: Vec<AtomicU64>,
}

impl std::fmt::Debug for MerkleTree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MerkleTree(root={:016x})", self.root())
    }
}

impl Default for MerkleTree {
    fn default() -> Self {
        MerkleTree {
            leaves: (0..MERKLE_LEAVES).map(|_| AtomicU64::new(0)).collect(),
            touched: (0..MERKLE_LEAVES).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

/// The hash of one stored entry (its full key and its encoded cell).
pub fn entry_hash(key: &[u8], value: &[u8]) -> u64 {
    let mut h = Xxh3::new();
    h.update(&(key.len() as u32).to_le_bytes());
    h.update(key);
    h.update(value);
    // Never 0, so an entry always changes its leaf.
    h.digest() | 1
}

/// The leaf a token belongs to.
pub fn leaf_of(token: Token) -> usize {
    (token >> (64 - MERKLE_DEPTH)) as usize
}

/// The inclusive token range of a leaf.
pub fn leaf_tokens(leaf: usize) -> (Token, Token) {
    let shift = 64 - MERKLE_DEPTH;
    let start = (leaf as u64) << shift;
    (start, start | ((1u64 << shift) - 1))
}

impl MerkleTree {
    /// Toggle an entry's hash in or out of its leaf.
    pub fn toggle(&self, token: Token, hash: u64) {
        self.leaves[leaf_of(token)].fetch_xor(hash, Ordering::Relaxed);
    }

    /// Toggle an entry's hash, noting the leaf changed at `now_ms`.
    pub fn toggle_at(&self, token: Token, hash: u64, now_ms: u64) {
        let leaf = leaf_of(token);
        self.leaves[leaf].fetch_xor(hash, Ordering::Relaxed);
        self.touched[leaf].fetch_max(now_ms, Ordering::Relaxed);
    }

    /// When a leaf last changed (wall-clock ms; 0: not since the node started).
    pub fn touched(&self, index: usize) -> u64 {
        self.touched[index].load(Ordering::Relaxed)
    }

    /// Reset every leaf to empty (before a rebuild).
    pub fn clear(&self) {
        for l in &self.leaves {
            l.store(0, Ordering::Relaxed);
        }
    }

    /// The hash of one leaf.
    pub fn leaf(&self, index: usize) -> u64 {
        self.leaves[index].load(Ordering::Relaxed)
    }

    /// The hashes of leaves `first..=last`.
    pub fn leaves(&self, first: usize, last: usize) -> Vec<u64> {
        (first..=last.min(MERKLE_LEAVES - 1))
            .map(|i| self.leaf(i))
            .collect()
    }

    /// The hash of the node at `level` (0 = root, [`MERKLE_DEPTH`] = leaves) and `index`.
    pub fn node(&self, level: u32, index: usize) -> u64 {
        if level >= MERKLE_DEPTH {
            return self.leaf(index);
        }
        let left = self.node(level + 1, index * 2);
        let right = self.node(level + 1, index * 2 + 1);
        let mut buf = [0u8; 16];
        buf[..8].copy_from_slice(&left.to_le_bytes());
        buf[8..].copy_from_slice(&right.to_le_bytes());
        xxh3_64(&buf)
    }

    /// The root hash: equal roots mean (with overwhelming probability) equal contents.
    pub fn root(&self) -> u64 {
        self.node(0, 0)
    }

    /// A digest of leaves `first..=last` (any range, aligned or not).
    pub fn digest(&self, first: usize, last: usize) -> u64 {
        let mut h = Xxh3::new();
        for l in self.leaves(first, last) {
            h.update(&l.to_le_bytes());
        }
        h.digest()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toggling_is_order_independent_and_reversible() {
        let a = MerkleTree::default();
        let b = MerkleTree::default();
        let entries: Vec<(u64, u64)> = (0..100u64)
            .map(|i| {
                (
                    i.wrapping_mul(0x9E37_79B9_7F4A_7C15),
                    entry_hash(&i.to_le_bytes(), b"v"),
                )
            })
            .collect();
        for (t, h) in &entries {
            a.toggle(*t, *h);
        }
        for (t, h) in entries.iter().rev() {
            b.toggle(*t, *h);
        }
        assert_eq!(a.root(), b.root());
        let empty = MerkleTree::default().root();
        assert_ne!(a.root(), empty);
        for (t, h) in &entries {
            a.toggle(*t, *h);
        }
        assert_eq!(a.root(), empty);
    }

    #[test]
    fn leaf_ranges_cover_the_ring() {
        assert_eq!(leaf_tokens(0).0, 0);
        assert_eq!(leaf_tokens(MERKLE_LEAVES - 1).1, u64::MAX);
        for leaf in [0, 1, 77, MERKLE_LEAVES - 1] {
            let (s, e) = leaf_tokens(leaf);
            assert_eq!(leaf_of(s), leaf);
            assert_eq!(leaf_of(e), leaf);
        }
    }
}
