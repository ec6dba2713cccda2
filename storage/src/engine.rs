//! The ordered key-value engine under the keyspace: sled on disk, or a `BTreeMap` in memory for
//! tests. The keyspace only needs named trees with point reads, atomic batches and range scans.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use crate::error::Result;

/// A key-value pair as owned bytes.
pub type Kv = (Vec<u8>, Vec<u8>);
/// An iterator over a key range.
pub type KvIter = Box<dyn Iterator<Item = Result<Kv>> + Send>;

/// When writes reach the disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SyncPolicy {
    /// Flush in the background every this many milliseconds (a crash loses at most that window).
    Periodic {
        /// The flush interval in milliseconds.
        every_ms: u64,
    },
    /// Flush before a write is acknowledged (a crash loses nothing acknowledged), each write
    /// on its own.
    SyncBeforeAck,
    /// Flush before a write is acknowledged, batching the flushes of concurrent writes: the
    /// keyspace does not flush in `apply`; the replication layer waits for one shared flush
    /// before it acknowledges (`sipmesh-net`'s group commit). Sled also flushes every 500 ms.
    #[default]
    GroupCommit,
}

/// One ordered tree of the engine.
pub trait Tree: Send + Sync {
    /// Point read.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// Apply puts (`Some`) and removes (`None`) atomically.
    fn apply(&self, batch: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> Result<()>;
    /// Ascending scan of a key range.
    fn range(&self, start: Bound<Vec<u8>>, end: Bound<Vec<u8>>) -> KvIter;
    /// Descending scan of a key range.
    fn range_rev(&self, start: Bound<Vec<u8>>, end: Bound<Vec<u8>>) -> KvIter;
}

/// An engine: a set of named trees and a way to make them durable.
pub trait Engine: Send + Sync {
    /// Open (or create) a named tree.
    fn tree(&self, name: &str) -> Result<Arc<dyn Tree>>;
    /// Make every applied write durable.
    fn flush(&self) -> Result<()>;
    /// The configured sync policy.
    fn sync_policy(&self) -> SyncPolicy;
}

/// sled 0.34 on disk.
pub struct SledEngine {
    db: sled::Db,
    policy: SyncPolicy,
}

/// sled's page cache unless configured otherwise: with 120,000 registrations a REGISTER costs
/// ~20 % less CPU than with 32 MiB (which pages leaves in and out of the log on every read) and
/// about what it costs with 128 MiB, for ~0.6 KB of RAM per registration held at 100,000
/// (docs/BENCHMARKS.md, fourteenth session). sled's own default is 1 GiB.
pub const DEFAULT_CACHE_BYTES: u64 = 64 * 1024 * 1024;

impl SledEngine {
    /// Open (or create) a sled database at `path`, with a page cache of `cache_bytes`.
    pub fn open(path: &Path, policy: SyncPolicy, cache_bytes: u64) -> Result<Self> {
        let flush_every = match policy {
            SyncPolicy::Periodic { every_ms } => Some(every_ms.max(1)),
            SyncPolicy::GroupCommit => Some(500),
            SyncPolicy::SyncBeforeAck => None,
        };
        let db = sled::Config::new()
            .path(path)
            .flush_every_ms(flush_every)
            .cache_capacity(cache_bytes)
            .open()?;
        Ok(SledEngine { db, policy })
    }
}

struct SledTree(sled::Tree);

fn sled_iter(
    iter: impl Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>> + Send + 'static,
) -> KvIter {
    Box::new(iter.map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(Into::into)))
}

impl Tree for SledTree {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.0.get(key)?.map(|v| v.to_vec()))
    }
    fn apply(&self, batch: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> Result<()> {
        if batch.len() == 1 {
            let (k, v) = batch.into_iter().next().expect("one");
            match v {
                Some(v) => self.0.insert(k, v)?,
                None => self.0.remove(k)?,
            };
            return Ok(());
        }
        let mut b = sled::Batch::default();
        for (k, v) in batch {
            match v {
                Some(v) => b.insert(k, v),
                None => b.remove(k),
            }
        }
        Ok(self.0.apply_batch(b)?)
    }
    fn range(&self, start: Bound<Vec<u8>>, end: Bound<Vec<u8>>) -> KvIter {
        sled_iter(self.0.range((start, end)))
    }
    fn range_rev(&self, start: Bound<Vec<u8>>, end: Bound<Vec<u8>>) -> KvIter {
        sled_iter(self.0.range((start, end)).rev())
    }
}

impl Engine for SledEngine {
    fn tree(&self, name: &str) -> Result<Arc<dyn Tree>> {
        Ok(Arc::new(SledTree(self.db.open_tree(name)?)))
    }
    fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }
    fn sync_policy(&self) -> SyncPolicy {
        self.policy
    }
}

type MemMap = Arc<RwLock<BTreeMap<Vec<u8>, Vec<u8>>>>;

/// An in-memory engine for tests. Clones share the same data, so dropping a keyspace and
/// opening another on a clone of the engine simulates a restart (without losing anything).
#[derive(Clone, Default)]
pub struct MemEngine {
    trees: Arc<Mutex<HashMap<String, MemMap>>>,
}

impl MemEngine {
    /// An empty in-memory engine.
    pub fn new() -> Self {
        Self::default()
    }
}

struct MemTree(MemMap);

impl MemTree {
    fn collect(&self, start: Bound<Vec<u8>>, end: Bound<Vec<u8>>, rev: bool) -> KvIter {
        let map = self.0.read().unwrap_or_else(|p| p.into_inner());
        let mut items: Vec<Result<Kv>> = map
            .range((start, end))
            .map(|(k, v)| Ok((k.clone(), v.clone())))
            .collect();
        if rev {
            items.reverse();
        }
        Box::new(items.into_iter())
    }
}

impl Tree for MemTree {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self
            .0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned())
    }
    fn apply(&self, batch: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> Result<()> {
        let mut map = self.0.write().unwrap_or_else(|p| p.into_inner());
        for (k, v) in batch {
            match v {
                Some(v) => map.insert(k, v),
                None => map.remove(&k),
            };
        }
        Ok(())
    }
    fn range(&self, start: Bound<Vec<u8>>, end: Bound<Vec<u8>>) -> KvIter {
        self.collect(start, end, false)
    }
    fn range_rev(&self, start: Bound<Vec<u8>>, end: Bound<Vec<u8>>) -> KvIter {
        self.collect(start, end, true)
    }
}

impl Engine for MemEngine {
    fn tree(&self, name: &str) -> Result<Arc<dyn Tree>> {
        let mut trees = self.trees.lock().unwrap_or_else(|p| p.into_inner());
        let map = trees.entry(name.to_string()).or_default().clone();
        Ok(Arc::new(MemTree(map)))
    }
    fn flush(&self) -> Result<()> {
        Ok(())
    }
    fn sync_policy(&self) -> SyncPolicy {
        SyncPolicy::SyncBeforeAck
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn key(i: u32) -> Vec<u8> {
        format!("k{i:05}").into_bytes()
    }

    /// sled's scans (with the vendored shortcut for a range that ends inside one leaf) against
    /// a BTreeMap, forward, reversed and from both ends at once: ranges that are empty inside a
    /// leaf, lie inside one, span leaves, end at leaf boundaries, or run past the last key.
    /// Leaves hold at most 16 keys, so 1,500 keys make ~100 of them.
    #[test]
    fn sled_scans_match_a_btreemap_across_leaves_and_gaps() {
        let dir = tempfile::tempdir().unwrap();
        let engine =
            SledEngine::open(dir.path(), SyncPolicy::SyncBeforeAck, DEFAULT_CACHE_BYTES).unwrap();
        let tree = engine.tree("t").unwrap();
        let raw = engine.db.open_tree("t").unwrap();
        let mut model = BTreeMap::new();
        // Every third key, so there are gaps to ask for; a few removed to leave holes.
        let mut batch = Vec::new();
        for i in (0..4_500).step_by(3) {
            batch.push((key(i), Some(i.to_le_bytes().to_vec())));
            model.insert(key(i), i.to_le_bytes().to_vec());
        }
        tree.apply(batch).unwrap();
        let holes: Vec<_> = (600..900).step_by(3).map(|i| (key(i), None)).collect();
        for (k, _) in &holes {
            model.remove(k);
        }
        tree.apply(holes).unwrap();
        let bound = |b: u8, k: Vec<u8>| match b % 3 {
            0 => Bound::Included(k),
            1 => Bound::Excluded(k),
            _ => Bound::Unbounded,
        };
        let mut checked = 0;
        for lo in (0..4_600).step_by(13) {
            for len in [0u32, 1, 2, 3, 5, 40, 400] {
                for b in 0..9u8 {
                    let (start, end) = (bound(b, key(lo)), bound(b / 3, key(lo + len)));
                    let both_excluded_at_one_key = len == 0 && b % 3 == 1 && (b / 3) % 3 == 1;
                    let want: Vec<_> = if both_excluded_at_one_key {
                        Vec::new() // (BTreeMap refuses this range)
                    } else {
                        model
                            .range((start.clone(), end.clone()))
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect()
                    };
                    let got: Vec<_> = tree
                        .range(start.clone(), end.clone())
                        .map(|kv| kv.unwrap())
                        .collect();
                    assert_eq!(got, want, "range from {lo} over {len}, bounds {b}");
                    let back: Vec<_> = tree
                        .range_rev(start.clone(), end.clone())
                        .map(|kv| kv.unwrap())
                        .collect();
                    assert!(
                        back.iter().eq(want.iter().rev()),
                        "reversed, {lo} {len} {b}"
                    );
                    // Taken from both ends at once: front, back, front…
                    let mut both = raw.range((start, end));
                    let (mut front, mut tail) = (Vec::new(), Vec::new());
                    for i in 0.. {
                        let next = if i % 2 == 0 {
                            both.next()
                        } else {
                            both.next_back()
                        };
                        let Some(kv) = next else { break };
                        let (k, v) = kv.unwrap();
                        let side = if i % 2 == 0 { &mut front } else { &mut tail };
                        side.push((k.to_vec(), v.to_vec()));
                    }
                    front.extend(tail.into_iter().rev());
                    assert_eq!(front, want, "from both ends, {lo} {len} {b}");
                    checked += 1;
                }
            }
        }
        assert!(checked > 20_000);
    }
}
