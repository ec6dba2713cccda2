//! The hints log: mutations waiting for a named peer that missed them (hinted handoff).
//!
//! Durable (in the engine), replayed per peer in the order they were written, and bounded by
//! count and by bytes (a peer's writes vary in size: a count alone would let large mutations
//! grow the log without limit): when [`Hints::len`] or [`Hints::bytes`] would pass its limit
//! the oldest hints (of any peer) are dropped and counted in [`Hints::dropped`] — a dropped
//! hint is later repaired by anti-entropy, never silently lost.

use std::ops::Bound;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::codec;
use crate::engine::{Engine, Tree};
use crate::error::Result;
use crate::mutation::Mutation;

const HINTS_TREE: &str = "hints";
const ORDER_TREE: &str = "hints_order";

/// A stored hint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hint {
    /// Position in the global order (for removal after delivery).
    pub seq: u64,
    /// The mutation to deliver.
    pub mutation: Mutation,
}

/// The durable hints log.
pub struct Hints {
    /// (peer length, peer, seq) → mutation.
    by_peer: Arc<dyn Tree>,
    /// seq → peer; the global age order, for dropping the oldest.
    order: Arc<dyn Tree>,
    next_seq: AtomicU64,
    len: AtomicUsize,
    /// Encoded bytes of the stored mutations.
    bytes: AtomicU64,
    dropped: AtomicU64,
    max: usize,
    max_bytes: u64,
    append_lock: Mutex<()>,
}

fn peer_prefix(peer: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + peer.len());
    k.extend_from_slice(&(peer.len() as u16).to_be_bytes());
    k.extend_from_slice(peer);
    k
}

fn hint_key(peer: &[u8], seq: u64) -> Vec<u8> {
    let mut k = peer_prefix(peer);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

impl Hints {
    pub(crate) fn open(engine: &dyn Engine, max: usize, max_bytes: u64) -> Result<Self> {
        let by_peer = engine.tree(HINTS_TREE)?;
        let order = engine.tree(ORDER_TREE)?;
        let mut len = 0;
        let mut last = 0u64;
        for kv in order.range(Bound::Unbounded, Bound::Unbounded) {
            let (k, _) = kv?;
            len += 1;
            if let Ok(b) = <[u8; 8]>::try_from(k.as_slice()) {
                last = u64::from_be_bytes(b);
            }
        }
        let mut bytes = 0u64;
        for kv in by_peer.range(Bound::Unbounded, Bound::Unbounded) {
            bytes += kv?.1.len() as u64;
        }
        Ok(Hints {
            by_peer,
            order,
            next_seq: AtomicU64::new(last + 1),
            len: AtomicUsize::new(len),
            bytes: AtomicU64::new(bytes),
            dropped: AtomicU64::new(0),
            max: max.max(1),
            max_bytes: max_bytes.max(1),
            append_lock: Mutex::new(()),
        })
    }

    /// Store a mutation for `peer`; drops the oldest hints first if the log would pass its
    /// count or byte limit. A mutation larger than the byte limit by itself is not stored
    /// (counted as dropped).
    pub fn append(&self, peer: &[u8], mutation: &Mutation) -> Result<()> {
        let bytes = codec::encode(mutation)?;
        let size = bytes.len() as u64;
        if size > self.max_bytes {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                size,
                "a hint larger than the hints log's byte limit: not stored"
            );
            return Ok(());
        }
        let _g = self.append_lock.lock().unwrap_or_else(|p| p.into_inner());
        while self.len.load(Ordering::SeqCst) >= self.max
            || self.bytes.load(Ordering::SeqCst) + size > self.max_bytes
        {
            let oldest = self.order.range(Bound::Unbounded, Bound::Unbounded).next();
            let Some(kv) = oldest else { break };
            let (seq_key, peer_key) = kv?;
            let seq = <[u8; 8]>::try_from(seq_key.as_slice())
                .map(u64::from_be_bytes)
                .unwrap_or(0);
            let key = hint_key(&peer_key, seq);
            let gone = self.by_peer.get(&key)?.map_or(0, |v| v.len() as u64);
            self.by_peer.apply(vec![(key, None)])?;
            self.order.apply(vec![(seq_key, None)])?;
            self.len.fetch_sub(1, Ordering::SeqCst);
            self.bytes.fetch_sub(gone, Ordering::SeqCst);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(seq, "hints log full: dropped the oldest hint");
        }
        let seq = self.next_seq.fetch_add(1, Ordering::SeqCst);
        self.by_peer
            .apply(vec![(hint_key(peer, seq), Some(bytes))])?;
        self.order
            .apply(vec![(seq.to_be_bytes().to_vec(), Some(peer.to_vec()))])?;
        self.len.fetch_add(1, Ordering::SeqCst);
        self.bytes.fetch_add(size, Ordering::SeqCst);
        Ok(())
    }

    /// Up to `limit` hints for `peer`, oldest first.
    pub fn pending(&self, peer: &[u8], limit: usize) -> Result<Vec<Hint>> {
        let prefix = peer_prefix(peer);
        let mut end = prefix.clone();
        end.extend_from_slice(&[0xFF; 8]);
        let mut out = Vec::new();
        for kv in self
            .by_peer
            .range(Bound::Included(prefix.clone()), Bound::Included(end))
            .take(limit)
        {
            let (k, v) = kv?;
            let seq = u64::from_be_bytes(k[prefix.len()..].try_into().map_err(|_| {
                crate::Error::Corrupt {
                    table: HINTS_TREE.into(),
                    key: crate::error::hex(&k),
                    reason: "bad hint key".into(),
                }
            })?);
            out.push(Hint {
                seq,
                mutation: codec::decode(&v, HINTS_TREE, &k)?,
            });
        }
        Ok(out)
    }

    /// Remove a delivered hint.
    pub fn remove(&self, peer: &[u8], seq: u64) -> Result<()> {
        let _g = self.append_lock.lock().unwrap_or_else(|p| p.into_inner());
        let key = hint_key(peer, seq);
        if let Some(v) = self.by_peer.get(&key)? {
            self.by_peer.apply(vec![(key, None)])?;
            self.order.apply(vec![(seq.to_be_bytes().to_vec(), None)])?;
            self.len.fetch_sub(1, Ordering::SeqCst);
            self.bytes.fetch_sub(v.len() as u64, Ordering::SeqCst);
        }
        Ok(())
    }

    /// The peers that have hints waiting.
    pub fn peers(&self) -> Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        let mut start = Bound::Unbounded;
        loop {
            let Some(kv) = self.by_peer.range(start, Bound::Unbounded).next() else {
                break;
            };
            let (k, _) = kv?;
            let n = u16::from_be_bytes([k[0], k[1]]) as usize;
            let peer = k[2..2 + n].to_vec();
            let mut next = peer_prefix(&peer);
            next.extend_from_slice(&[0xFF; 9]);
            start = Bound::Excluded(next);
            out.push(peer);
        }
        Ok(out)
    }

    /// How many hints are stored.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::SeqCst)
    }

    /// Encoded bytes of the stored hints.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::SeqCst)
    }

    /// Whether no hint is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many hints were dropped because the log was full (since this process started).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cell::Cell;
    use crate::engine::MemEngine;
    use crate::hlc::Timestamp;

    fn m(i: u64) -> Mutation {
        let mut m = Mutation::new(1, i.to_be_bytes().to_vec());
        m.entries.push((
            crate::EntryKey::RowMarker(vec![]),
            Cell::live(Timestamp(i), vec![]),
        ));
        m
    }

    fn big(i: u64, len: usize) -> Mutation {
        let mut m = Mutation::new(1, i.to_be_bytes().to_vec());
        m.entries.push((
            crate::EntryKey::RowMarker(vec![]),
            Cell::live(Timestamp(i), vec![7u8; len]),
        ));
        m
    }

    #[test]
    fn bounded_by_bytes_as_well_as_count() {
        let engine = MemEngine::new();
        let one = codec::encode(&big(0, 1_000)).unwrap().len() as u64;
        // Room for three 1 KB hints, whatever the count limit.
        let hints = Hints::open(&engine, 1_000, 3 * one + one / 2).unwrap();
        for i in 0..3 {
            hints.append(b"peerA", &big(i, 1_000)).unwrap();
        }
        assert_eq!((hints.len(), hints.dropped()), (3, 0));
        assert_eq!(hints.bytes(), 3 * one);
        hints.append(b"peerB", &big(3, 1_000)).unwrap();
        assert_eq!(
            (hints.len(), hints.dropped()),
            (3, 1),
            "the oldest made room"
        );
        assert!(hints.bytes() <= 3 * one + one / 2);
        let a = hints.pending(b"peerA", 10).unwrap();
        assert_eq!(a.first().map(|h| h.mutation.clone()), Some(big(1, 1_000)));
        // One hint bigger than the whole log is refused, not stored, and counted.
        hints.append(b"peerB", &big(4, 10_000)).unwrap();
        assert_eq!((hints.len(), hints.dropped()), (3, 2));
        // Delivered hints give their bytes back; the count survives a reopen.
        hints.remove(b"peerA", a[0].seq).unwrap();
        assert_eq!(hints.bytes(), 2 * one);
        drop(hints);
        let hints = Hints::open(&engine, 1_000, 3 * one + one / 2).unwrap();
        assert_eq!(hints.bytes(), 2 * one);
    }

    #[test]
    fn ordered_per_peer_bounded_and_durable() {
        let engine = MemEngine::new();
        let hints = Hints::open(&engine, 5, u64::MAX).unwrap();
        for i in 0..4 {
            hints.append(b"peerA", &m(i)).unwrap();
        }
        hints.append(b"peerB", &m(100)).unwrap();
        hints.append(b"peerB", &m(101)).unwrap(); // full: drops peerA's oldest
        assert_eq!(hints.len(), 5);
        assert_eq!(hints.dropped(), 1);
        let a = hints.pending(b"peerA", 10).unwrap();
        assert_eq!(
            a.iter().map(|h| h.mutation.clone()).collect::<Vec<_>>(),
            vec![m(1), m(2), m(3)]
        );
        assert_eq!(
            hints.peers().unwrap(),
            vec![b"peerA".to_vec(), b"peerB".to_vec()]
        );
        hints.remove(b"peerA", a[0].seq).unwrap();
        drop(hints);
        // reopen: still there, in order, and new seqs continue after the old ones
        let hints = Hints::open(&engine, 5, u64::MAX).unwrap();
        assert_eq!(hints.len(), 4);
        hints.append(b"peerA", &m(9)).unwrap();
        let a = hints.pending(b"peerA", 10).unwrap();
        assert_eq!(
            a.iter().map(|h| h.mutation.clone()).collect::<Vec<_>>(),
            vec![m(2), m(3), m(9)]
        );
    }
}
