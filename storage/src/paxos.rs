//! The acceptor's side of single-decree Paxos, per key: what a compare-and-set between nodes
//! (a claim, as Cassandra's lightweight transactions) needs each replica to remember.
//!
//! For each key a replica keeps the highest [`Ballot`] it promised and the last proposal it
//! accepted. Both reach the disk (the engine is flushed) before the replica answers: a promise
//! forgotten in a crash would let two proposers both win. This state is the replica's own; it
//! is never merged by anti-entropy or read repair (last-write-wins would undo the majority's
//! decision), and it lives in a tree of its own, outside the cells and their Merkle tree.
//!
//! Bounded: at most [`MAX_KEYS`] keys. Past that, the key whose last ballot is oldest is
//! forgotten (a claim key names one event, e.g. one death of one member, so an old one is done).

use std::ops::Bound;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::codec;
use crate::engine::{Engine, Tree};
use crate::error::{Error, Result};
use crate::hlc::Timestamp;

const PAXOS_TREE: &str = "paxos";
/// Keys kept at most.
pub const MAX_KEYS: usize = 10_000;
/// Longest key accepted.
pub const MAX_KEY_BYTES: usize = 512;
/// Longest value accepted.
pub const MAX_VALUE_BYTES: usize = 4_096;

/// A proposal number: a timestamp from the proposer's clock, then the proposer's id, so two
/// proposers never use the same ballot.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
pub struct Ballot {
    /// When the proposer made it (its hybrid logical clock).
    pub time: Timestamp,
    /// The proposer (its PeerId bytes).
    #[serde(with = "serde_bytes")]
    pub proposer: Vec<u8>,
}

/// A replica's answer to a prepare.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Promise {
    /// Whether the replica promised the ballot (no lower ballot will be accepted).
    pub granted: bool,
    /// The highest ballot the replica has promised (the asked one when granted).
    pub promised: Ballot,
    /// The last proposal it accepted, if any.
    pub accepted: Option<(Ballot, Vec<u8>)>,
}

/// What is stored per key.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct State {
    promised: Ballot,
    accepted: Option<(Ballot, Vec<u8>)>,
}

impl State {
    fn newest(&self) -> Timestamp {
        self.accepted
            .as_ref()
            .map_or(self.promised.time, |(b, _)| b.time.max(self.promised.time))
    }
}

/// The acceptor state of one node.
pub struct Acceptor {
    tree: Arc<dyn Tree>,
    engine: Arc<dyn Engine>,
    keys: AtomicUsize,
    lock: Mutex<()>,
}

impl std::fmt::Debug for Acceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acceptor")
            .field("keys", &self.keys.load(Ordering::Relaxed))
            .finish()
    }
}

fn check(key: &[u8], value: Option<&[u8]>) -> Result<()> {
    let invalid = |reason: String| Error::Invalid {
        table: PAXOS_TREE.into(),
        reason,
    };
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(invalid(format!(
            "a claim key must have 1 to {MAX_KEY_BYTES} bytes, not {}",
            key.len()
        )));
    }
    if let Some(v) = value {
        if v.len() > MAX_VALUE_BYTES {
            return Err(invalid(format!(
                "a claimed value must have at most {MAX_VALUE_BYTES} bytes, not {}",
                v.len()
            )));
        }
    }
    Ok(())
}

impl Acceptor {
    pub(crate) fn open(engine: Arc<dyn Engine>) -> Result<Self> {
        let tree = engine.tree(PAXOS_TREE)?;
        let mut keys = 0;
        for kv in tree.range(Bound::Unbounded, Bound::Unbounded) {
            kv?;
            keys += 1;
        }
        Ok(Acceptor {
            tree,
            engine,
            keys: AtomicUsize::new(keys),
            lock: Mutex::new(()),
        })
    }

    fn load(&self, key: &[u8]) -> Result<Option<State>> {
        self.tree
            .get(key)?
            .map(|v| codec::decode(&v, PAXOS_TREE, key))
            .transpose()
    }

    /// Store `state` under `key` and make it durable.
    fn store(&self, key: &[u8], state: &State, new: bool) -> Result<()> {
        if new && self.keys.load(Ordering::Relaxed) >= MAX_KEYS {
            self.forget_oldest()?;
        }
        self.tree
            .apply(vec![(key.to_vec(), Some(codec::encode(state)?))])?;
        if new {
            self.keys.fetch_add(1, Ordering::Relaxed);
        }
        self.engine.flush()
    }

    /// Drop the key whose newest ballot is oldest (a linear scan; runs once per key beyond the
    /// bound, and keys are few and rarely made).
    fn forget_oldest(&self) -> Result<()> {
        let mut oldest: Option<(Timestamp, Vec<u8>)> = None;
        for kv in self.tree.range(Bound::Unbounded, Bound::Unbounded) {
            let (k, v) = kv?;
            let t = codec::decode::<State>(&v, PAXOS_TREE, &k)
                .map(|s| s.newest())
                .unwrap_or_default();
            if oldest.as_ref().is_none_or(|(o, _)| t < *o) {
                oldest = Some((t, k));
            }
        }
        if let Some((_, k)) = oldest {
            self.tree.apply(vec![(k, None)])?;
            self.keys.fetch_sub(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Phase 1: promise `ballot` unless a higher (or equal) one was promised; answer with what
    /// was accepted so far.
    pub fn prepare(&self, key: &[u8], ballot: &Ballot) -> Result<Promise> {
        check(key, None)?;
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let stored = self.load(key)?;
        let new = stored.is_none();
        let mut state = stored.unwrap_or_default();
        if !new && *ballot <= state.promised {
            return Ok(Promise {
                granted: false,
                promised: state.promised,
                accepted: state.accepted,
            });
        }
        state.promised = ballot.clone();
        self.store(key, &state, new)?;
        Ok(Promise {
            granted: true,
            promised: state.promised,
            accepted: state.accepted,
        })
    }

    /// Phase 2: accept `value` under `ballot` unless a higher ballot was promised. Returns
    /// whether it was accepted, and the highest ballot promised.
    pub fn accept(&self, key: &[u8], ballot: &Ballot, value: &[u8]) -> Result<(bool, Ballot)> {
        check(key, Some(value))?;
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let stored = self.load(key)?;
        let new = stored.is_none();
        let mut state = stored.unwrap_or_default();
        if !new && *ballot < state.promised {
            return Ok((false, state.promised));
        }
        state.promised = ballot.clone();
        state.accepted = Some((ballot.clone(), value.to_vec()));
        self.store(key, &state, new)?;
        Ok((true, state.promised))
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.keys.load(Ordering::Relaxed)
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::MemEngine;

    fn ballot(t: u64, who: &str) -> Ballot {
        Ballot {
            time: Timestamp(t),
            proposer: who.as_bytes().to_vec(),
        }
    }

    #[test]
    fn a_promise_refuses_lower_ballots_and_reports_what_was_accepted() {
        let a = Acceptor::open(Arc::new(MemEngine::new())).unwrap();
        let p = a.prepare(b"k", &ballot(10, "a")).unwrap();
        assert!(p.granted);
        assert_eq!(p.accepted, None);
        // A lower or equal ballot is refused, and told the promised one.
        let p = a.prepare(b"k", &ballot(9, "z")).unwrap();
        assert!(!p.granted);
        assert_eq!(p.promised, ballot(10, "a"));
        assert!(!a.prepare(b"k", &ballot(10, "a")).unwrap().granted);
        assert!(!a.accept(b"k", &ballot(9, "z"), b"v").unwrap().0);
        assert!(a.accept(b"k", &ballot(10, "a"), b"mine").unwrap().0);
        // A higher ballot is promised and learns the accepted value.
        let p = a.prepare(b"k", &ballot(11, "b")).unwrap();
        assert!(p.granted);
        assert_eq!(p.accepted, Some((ballot(10, "a"), b"mine".to_vec())));
        // The old ballot can no longer be accepted.
        assert_eq!(
            a.accept(b"k", &ballot(10, "a"), b"again").unwrap(),
            (false, ballot(11, "b"))
        );
        // Keys are independent.
        assert!(a.prepare(b"other", &ballot(1, "a")).unwrap().granted);
    }

    #[test]
    fn state_survives_a_reopen() {
        let engine: Arc<dyn Engine> = Arc::new(MemEngine::new());
        let a = Acceptor::open(engine.clone()).unwrap();
        a.prepare(b"k", &ballot(5, "a")).unwrap();
        a.accept(b"k", &ballot(5, "a"), b"v").unwrap();
        drop(a);
        let a = Acceptor::open(engine).unwrap();
        assert_eq!(a.len(), 1);
        let p = a.prepare(b"k", &ballot(4, "b")).unwrap();
        assert!(!p.granted);
        assert_eq!(p.accepted, Some((ballot(5, "a"), b"v".to_vec())));
    }

    #[test]
    fn keys_and_values_are_bounded() {
        let a = Acceptor::open(Arc::new(MemEngine::new())).unwrap();
        assert!(a.prepare(&[], &ballot(1, "a")).is_err());
        assert!(a.prepare(&[7; MAX_KEY_BYTES + 1], &ballot(1, "a")).is_err());
        assert!(a
            .accept(b"k", &ballot(1, "a"), &[0; MAX_VALUE_BYTES + 1])
            .is_err());
        for i in 0..(MAX_KEYS + 5) as u64 {
            a.prepare(&i.to_be_bytes(), &ballot(i + 1, "a")).unwrap();
        }
        assert_eq!(a.len(), MAX_KEYS);
        // The oldest went first; the newest are kept.
        let newest = (MAX_KEYS + 4) as u64;
        assert!(
            !a.prepare(&newest.to_be_bytes(), &ballot(1, "b"))
                .unwrap()
                .granted
        );
        assert!(
            a.prepare(&0u64.to_be_bytes(), &ballot(1, "b"))
                .unwrap()
                .granted
        );
    }
}
