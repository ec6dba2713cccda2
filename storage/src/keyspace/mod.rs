//! The keyspace: tables of partitions of rows of cells, stored in one ordered tree.
//!
//! Write path (`apply`):
//! 1. Check the mutation against its table's schema.
//! 2. Lock the partition's stripe (writes to one partition are serialised; others run in parallel).
//! 3. For each row touched (and the partition tombstone), read the stored row and merge each
//!    cell into it (last-write-wins); rows that did not change are not written. The mutation's
//!    entries are grouped by row in one pass, so the cost is linear in its size.
//! 4. Write every changed row in one atomic batch.
//! 5. Toggle the Merkle leaves: out with the old entry's hash, in with the new one.
//! 6. Under [`SyncPolicy::SyncBeforeAck`], flush before returning.

use std::collections::HashMap;
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::cell::Cell;
use crate::codec;
use crate::engine::{Engine, SledEngine, SyncPolicy, Tree};
use crate::error::{hex, Error, Result};
use crate::hints::Hints;
use crate::hlc::{Hlc, SystemClock, Timestamp, WallClock};
use crate::key::{
    self, decode_key, partition_prefix, partition_tombstone_key, row_key, EntryKey, Token,
};
use crate::merkle::{entry_hash, MerkleTree};
use crate::mutation::Mutation;
use crate::partition::resolve_sorted;
pub use crate::partition::{CellView, Partition, Row};
use crate::paxos::Acceptor;
use crate::row::StoredRow;
use crate::schema::{ClusteringOrder, TableId, TableSchema};
pub use gc::GcCandidate;

mod compaction;
mod gc;
mod ranges;

pub use compaction::CompactionPage;
pub use ranges::PartitionDigest;

/// Stripes of the per-partition write lock.
const LOCK_STRIPES: usize = 256;
/// Name of the tree holding every cell.
const CELLS_TREE: &str = "cells";
/// Name of the tree holding the clock ceiling and other node-local metadata.
const META_TREE: &str = "meta";
const HLC_CEILING_KEY: &[u8] = b"hlc_ceiling";

/// Settings of a keyspace.
#[derive(Debug, Clone)]
pub struct KeyspaceConfig {
    /// How long tombstones (and expired cells) are kept before compaction purges them, in ms.
    /// It must exceed the time replicas need to exchange deletes (hints, anti-entropy).
    pub tombstone_grace_ms: u64,
    /// The most hints kept; beyond that the oldest are dropped (and counted).
    pub max_hints: usize,
    /// The most bytes of hints kept (encoded mutations); beyond that the oldest are dropped.
    pub max_hint_bytes: u64,
    /// The sync policy for the sled engine.
    pub sync: SyncPolicy,
    /// sled's page cache, in bytes.
    pub cache_bytes: u64,
}

impl Default for KeyspaceConfig {
    fn default() -> Self {
        KeyspaceConfig {
            tombstone_grace_ms: 60 * 60 * 1_000,
            max_hints: 100_000,
            max_hint_bytes: 64 * 1024 * 1024,
            sync: SyncPolicy::default(),
            cache_bytes: crate::engine::DEFAULT_CACHE_BYTES,
        }
    }
}

/// One raw stored entry, as anti-entropy streams it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RawEntry {
    /// The table.
    pub table: TableId,
    /// The partition key.
    pub partition_key: Vec<u8>,
    /// The entry in the partition.
    pub entry: EntryKey,
    /// The cell.
    pub cell: Cell,
}

/// What a compaction pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CompactionStats {
    /// Expired values turned into tombstones.
    pub expired: u64,
    /// Tombstones (and shadowed cells) removed.
    pub purged: u64,
}

/// The keyspace. Cloning is cheap and shares the same storage.
#[derive(Clone)]
pub struct Keyspace {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Arc<dyn Engine>,
    cells: Arc<dyn Tree>,
    schemas: HashMap<TableId, TableSchema>,
    hlc: Hlc,
    merkle: MerkleTree,
    locks: Vec<Mutex<()>>,
    hints: Hints,
    acceptor: Acceptor,
    config: KeyspaceConfig,
    /// A one-hash Bloom filter of partitions that have a partition tombstone, so a point read
    /// skips the tombstone lookup for the (vast) majority that never had one. Bits are only set
    /// (on write and at open); a false positive costs one extra engine read.
    partition_tombstones: Vec<AtomicU64>,
    /// Mutations refused for a timestamp beyond the clock bound.
    clock_refusals: AtomicU64,
}

/// Bits in the partition-tombstone filter (128 KiB).
const PTOMB_FILTER_BITS: usize = 1 << 20;

fn ptomb_bit(prefix: &[u8]) -> usize {
    (xxhash_rust::xxh3::xxh3_64(prefix) as usize) % PTOMB_FILTER_BITS
}

impl std::fmt::Debug for Keyspace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyspace")
            .field("tables", &self.inner.schemas.len())
            .field("merkle", &self.inner.merkle)
            .finish()
    }
}

impl Keyspace {
    /// Open a keyspace on sled at `dir`, with the system clock.
    pub fn open_sled(dir: &Path, tables: Vec<TableSchema>, config: KeyspaceConfig) -> Result<Self> {
        let engine = Arc::new(SledEngine::open(dir, config.sync, config.cache_bytes)?);
        Self::open(engine, tables, config, Arc::new(SystemClock))
    }

    /// An in-memory keyspace (for tests).
    pub fn in_memory(tables: Vec<TableSchema>) -> Self {
        Self::open(
            Arc::new(crate::engine::MemEngine::new()),
            tables,
            KeyspaceConfig::default(),
            Arc::new(SystemClock),
        )
        .expect("the in-memory engine cannot fail")
    }

    /// Open a keyspace on any engine with any wall clock.
    pub fn open(
        engine: Arc<dyn Engine>,
        tables: Vec<TableSchema>,
        config: KeyspaceConfig,
        clock: Arc<dyn WallClock>,
    ) -> Result<Self> {
        let mut schemas = HashMap::new();
        for t in tables {
            if let Some(prev) = schemas.insert(t.id, t.clone()) {
                return Err(Error::Invalid {
                    table: t.name,
                    reason: format!("table id {} already used by {}", t.id, prev.name),
                });
            }
        }
        let cells = engine.tree(CELLS_TREE)?;
        let meta = engine.tree(META_TREE)?;
        let ceiling = match meta.get(HLC_CEILING_KEY)? {
            Some(v) => u64::from_be_bytes(v.as_slice().try_into().map_err(|_| Error::Corrupt {
                table: META_TREE.into(),
                key: "hlc_ceiling".into(),
                reason: format!("expected 8 bytes, found {}", v.len()),
            })?),
            None => 0,
        };
        let store_engine = engine.clone();
        let store_meta = meta.clone();
        let hlc = Hlc::new(
            clock,
            ceiling,
            Some(Box::new(move |c: u64| {
                store_meta.apply(vec![(
                    HLC_CEILING_KEY.to_vec(),
                    Some(c.to_be_bytes().to_vec()),
                )])?;
                store_engine.flush()
            })),
        );
        let hints = Hints::open(engine.as_ref(), config.max_hints, config.max_hint_bytes)?;
        let acceptor = Acceptor::open(engine.clone())?;
        let ks = Keyspace {
            inner: Arc::new(Inner {
                engine,
                cells,
                schemas,
                hlc,
                merkle: MerkleTree::default(),
                locks: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
                hints,
                acceptor,
                config,
                partition_tombstones: (0..PTOMB_FILTER_BITS / 64)
                    .map(|_| AtomicU64::new(0))
                    .collect(),
                clock_refusals: AtomicU64::new(0),
            }),
        };
        ks.rebuild_merkle()?;
        Ok(ks)
    }

    /// A new timestamp from the clock.
    pub fn now(&self) -> Timestamp {
        self.inner.hlc.now()
    }

    /// Observe a timestamp another node holds (in a read answer), so later local timestamps
    /// are greater; one beyond the clock bound is not followed.
    pub fn observe(&self, ts: Timestamp) -> bool {
        self.inner.hlc.observe(ts)
    }

    /// Wall-clock milliseconds (for TTLs).
    pub fn wall_ms(&self) -> u64 {
        self.inner.hlc.wall_ms()
    }

    /// The hints log.
    pub fn hints(&self) -> &Hints {
        &self.inner.hints
    }

    /// This node's Paxos acceptor state (claims decided by a majority of a key's replicas).
    pub fn acceptor(&self) -> &Acceptor {
        &self.inner.acceptor
    }

    /// The Merkle leaves of this keyspace.
    pub fn merkle(&self) -> &MerkleTree {
        &self.inner.merkle
    }

    /// A table's schema.
    pub fn schema(&self, table: TableId) -> Result<&TableSchema> {
        self.inner
            .schemas
            .get(&table)
            .ok_or_else(|| Error::UnknownTable(table.to_string()))
    }

    /// Mutations refused since start for a timestamp beyond the clock bound.
    pub fn clock_refusals(&self) -> u64 {
        self.inner.clock_refusals.load(Ordering::Relaxed)
    }

    /// When writes reach the disk.
    pub fn sync_policy(&self) -> SyncPolicy {
        self.inner.engine.sync_policy()
    }

    /// Make every applied write durable now.
    pub fn flush(&self) -> Result<()> {
        self.inner.engine.flush()
    }

    fn validate(&self, m: &Mutation) -> Result<&TableSchema> {
        let schema = self.schema(m.table)?;
        let invalid = |reason: String| Error::Invalid {
            table: schema.name.clone(),
            reason,
        };
        for (k, _) in &m.entries {
            if let Some(ck) = k.clustering() {
                if schema.clustering.is_none() && !ck.is_empty() {
                    return Err(invalid("table has no clustering key".into()));
                }
            }
            if let EntryKey::Column(_, name) = k {
                if !schema.has_column(name) {
                    return Err(invalid(format!("unknown column {name:?}")));
                }
            }
        }
        Ok(schema)
    }

    fn stripe(&self, token: Token) -> &Mutex<()> {
        &self.inner.locks[(token as usize) % LOCK_STRIPES]
    }

    fn decode_cell(&self, key: &[u8], value: &[u8]) -> Result<Cell> {
        codec::decode(value, self.table_name_of_key(key).as_str(), key)
    }

    fn decode_row(&self, key: &[u8], value: &[u8]) -> Result<StoredRow> {
        codec::decode(value, self.table_name_of_key(key).as_str(), key)
    }

    fn table_name_of_key(&self, key: &[u8]) -> String {
        key.get(8..10)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .and_then(|id| self.inner.schemas.get(&id))
            .map(|s| s.name.clone())
            .unwrap_or_else(|| CELLS_TREE.to_string())
    }

    /// Decode one stored key-value pair into its entries, appending them to `out`.
    fn expand(&self, key: &[u8], value: &[u8], out: &mut Vec<(EntryKey, Cell)>) -> Result<()> {
        match decode_key(key)?.clustering {
            None => out.push((EntryKey::PartitionTombstone, self.decode_cell(key, value)?)),
            Some(ck) => out.extend(self.decode_row(key, value)?.into_entries(&ck)),
        }
        Ok(())
    }

    /// Merge a mutation into the keyspace, atomically. Returns how many rows (or partition
    /// tombstones) changed.
    pub fn apply(&self, m: &Mutation) -> Result<usize> {
        self.validate(m)?;
        if let Some(ts) = m.max_timestamp() {
            if !self.inner.hlc.observe(ts) {
                self.inner.clock_refusals.fetch_add(1, Ordering::Relaxed);
                let now_ms = self.wall_ms();
                return Err(Error::ClockSkew {
                    remote_ms: ts.millis(),
                    now_ms,
                    bound_ms: crate::hlc::MAX_FORWARD_DRIFT_MS,
                });
            }
        }
        let prefix = partition_prefix(m.table, &m.partition_key);
        let token = key::token_of(&m.partition_key);
        let changed = {
            let _guard = self.stripe(token).lock().unwrap_or_else(|p| p.into_inner());
            let mut batch = Vec::with_capacity(2);
            let mut toggles = Vec::with_capacity(4);
            // Partition tombstones first.
            let ptombs = m
                .entries
                .iter()
                .filter(|(k, _)| *k == EntryKey::PartitionTombstone);
            if let Some(newest) = ptombs.map(|(_, c)| c.clone()).reduce(Cell::merge) {
                let key = partition_tombstone_key(&prefix);
                let old = self.inner.cells.get(&key)?;
                let changed = match &old {
                    Some(b) => self.decode_cell(&key, b)?.is_superseded_by(&newest),
                    None => true,
                };
                if changed {
                    self.mark_partition_tombstone(&prefix);
                    if let Some(b) = &old {
                        toggles.push(entry_hash(&key, b));
                    }
                    let bytes = codec::encode(&newest)?;
                    toggles.push(entry_hash(&key, &bytes));
                    batch.push((key, Some(bytes)));
                }
            }
            // Then rows, one read and at most one write each: the entries grouped by row in
            // one pass (linear in the mutation's size), rows in first-seen order.
            let mut rows: HashMap<&[u8], Vec<usize>> = HashMap::new();
            let mut order: Vec<&[u8]> = Vec::new();
            for (i, (k, _)) in m.entries.iter().enumerate() {
                let Some(ck) = k.clustering() else { continue };
                rows.entry(ck)
                    .or_insert_with(|| {
                        order.push(ck);
                        Vec::new()
                    })
                    .push(i);
            }
            for ck in order {
                let key = row_key(&prefix, ck);
                let old = self.inner.cells.get(&key)?;
                let mut row = match &old {
                    Some(b) => self.decode_row(&key, b)?,
                    None => StoredRow::default(),
                };
                let mut changed = false;
                for &i in &rows[ck] {
                    let (k2, c) = &m.entries[i];
                    changed |= row.merge(k2, c);
                }
                if changed {
                    if let Some(b) = &old {
                        toggles.push(entry_hash(&key, b));
                    }
                    let bytes = codec::encode(&row)?;
                    toggles.push(entry_hash(&key, &bytes));
                    batch.push((key, Some(bytes)));
                }
            }
            let n = batch.len();
            if n > 0 {
                self.inner.cells.apply(batch)?;
                let now = self.wall_ms();
                for h in toggles {
                    self.inner.merkle.toggle_at(token, h, now);
                }
            }
            n
        };
        // Even when nothing changed: what made it a no-op may be another writer's bytes, not
        // yet flushed, and this write is acknowledged on the strength of them.
        if self.inner.engine.sync_policy() == SyncPolicy::SyncBeforeAck {
            self.inner.engine.flush()?;
        }
        Ok(changed)
    }

    /// Every raw entry of a partition, in order (for replication and read repair).
    pub fn partition_entries(
        &self,
        table: TableId,
        partition_key: &[u8],
    ) -> Result<Vec<(EntryKey, Cell)>> {
        let schema = self.schema(table)?;
        let prefix = partition_prefix(table, partition_key);
        if schema.clustering.is_none() {
            // One row at most: point reads, which are much cheaper than a range scan in sled
            // (its iterator clones a leaf node per step).
            let mut out = Vec::new();
            if self.may_have_partition_tombstone(&prefix) {
                let pkey = partition_tombstone_key(&prefix);
                if let Some(p) = self.inner.cells.get(&pkey)? {
                    out.push((EntryKey::PartitionTombstone, self.decode_cell(&pkey, &p)?));
                }
            }
            let key = row_key(&prefix, b"");
            if let Some(v) = self.inner.cells.get(&key)? {
                out.extend(self.decode_row(&key, &v)?.into_entries(b""));
            }
            return Ok(out);
        }
        let end = prefix_end(&prefix);
        let mut out = Vec::new();
        for kv in self.inner.cells.range(Bound::Included(prefix), end) {
            let (k, v) = kv?;
            self.expand(&k, &v, &mut out)?;
        }
        Ok(out)
    }

    /// Read a whole partition: its live rows in clustering order.
    pub fn read_partition(&self, table: TableId, partition_key: &[u8]) -> Result<Partition> {
        let order = self.schema(table)?.order();
        let entries = self.partition_entries(table, partition_key)?;
        let mut rows = resolve_sorted(entries.into_iter(), self.wall_ms());
        if order == ClusteringOrder::Desc {
            rows.reverse();
        }
        Ok(Partition { rows })
    }

    /// Read one row (two point reads: the row and the partition tombstone).
    pub fn read_row(
        &self,
        table: TableId,
        partition_key: &[u8],
        clustering: &[u8],
    ) -> Result<Option<Row>> {
        self.schema(table)?;
        let prefix = partition_prefix(table, partition_key);
        let key = row_key(&prefix, clustering);
        let Some(v) = self.inner.cells.get(&key)? else {
            return Ok(None);
        };
        let mut entries = Vec::with_capacity(8);
        if self.may_have_partition_tombstone(&prefix) {
            let pkey = partition_tombstone_key(&prefix);
            if let Some(p) = self.inner.cells.get(&pkey)? {
                entries.push((EntryKey::PartitionTombstone, self.decode_cell(&pkey, &p)?));
            }
        }
        entries.extend(self.decode_row(&key, &v)?.into_entries(clustering));
        Ok(resolve_sorted(entries.into_iter(), self.wall_ms()).pop())
    }

    /// Rows of a partition whose clustering key lies in `(start, end)`, in the table's order, at
    /// most `limit` of them.
    pub fn slice(
        &self,
        table: TableId,
        partition_key: &[u8],
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Row>> {
        let order = self.schema(table)?.order();
        let prefix = partition_prefix(table, partition_key);
        let now = self.wall_ms();
        let mut lead = Vec::new();
        let pkey = partition_tombstone_key(&prefix);
        if let Some(v) = self.inner.cells.get(&pkey)? {
            lead.push((EntryKey::PartitionTombstone, self.decode_cell(&pkey, &v)?));
        }
        let mut rows_start = prefix.clone();
        rows_start.push(0x01);
        let lo = match start {
            Bound::Included(ck) => Bound::Included(row_key(&prefix, ck)),
            Bound::Excluded(ck) => Bound::Excluded(row_key(&prefix, ck)),
            Bound::Unbounded => Bound::Included(rows_start),
        };
        let hi = match end {
            Bound::Included(ck) => Bound::Included(row_key(&prefix, ck)),
            Bound::Excluded(ck) => Bound::Excluded(row_key(&prefix, ck)),
            Bound::Unbounded => prefix_end(&prefix),
        };
        if let (Bound::Included(l) | Bound::Excluded(l), Bound::Included(h) | Bound::Excluded(h)) =
            (&lo, &hi)
        {
            if l > h {
                return Ok(Vec::new());
            }
        }
        let iter = match order {
            ClusteringOrder::Asc => self.inner.cells.range(lo, hi),
            ClusteringOrder::Desc => self.inner.cells.range_rev(lo, hi),
        };
        let mut out = Vec::new();
        for kv in iter {
            if out.len() >= limit {
                break;
            }
            let (k, v) = kv?;
            let Some(ck) = decode_key(&k)?.clustering else {
                continue;
            };
            let row = self.decode_row(&k, &v)?;
            let all = lead.iter().cloned().chain(row.into_entries(&ck));
            out.extend(resolve_sorted(all, now));
        }
        Ok(out)
    }

    /// Delete a row now.
    pub fn delete_row(
        &self,
        table: TableId,
        partition_key: &[u8],
        clustering: &[u8],
    ) -> Result<()> {
        let m = Mutation::new(table, partition_key).delete_row(clustering, self.now());
        self.apply(&m).map(|_| ())
    }

    /// Delete a whole partition now.
    pub fn delete_partition(&self, table: TableId, partition_key: &[u8]) -> Result<()> {
        let m = Mutation::new(table, partition_key).delete_partition(self.now());
        self.apply(&m).map(|_| ())
    }

    fn mark_partition_tombstone(&self, prefix: &[u8]) {
        let bit = ptomb_bit(prefix);
        self.inner.partition_tombstones[bit / 64].fetch_or(1 << (bit % 64), Ordering::Relaxed);
    }

    fn may_have_partition_tombstone(&self, prefix: &[u8]) -> bool {
        let bit = ptomb_bit(prefix);
        self.inner.partition_tombstones[bit / 64].load(Ordering::Relaxed) & (1 << (bit % 64)) != 0
    }

    /// Recompute the Merkle leaves (and the partition-tombstone filter) from disk, on open;
    /// after that they are maintained by every write.
    fn rebuild_merkle(&self) -> Result<()> {
        self.inner.merkle.clear();
        for kv in self.inner.cells.range(Bound::Unbounded, Bound::Unbounded) {
            let (k, v) = kv?;
            if k.last() == Some(&0x00) {
                if let Ok(d) = decode_key(&k) {
                    if d.clustering.is_none() {
                        self.mark_partition_tombstone(&partition_prefix(d.table, &d.partition_key));
                    }
                }
            }
            if k.len() < 8 {
                return Err(Error::Corrupt {
                    table: CELLS_TREE.into(),
                    key: hex(&k),
                    reason: "key shorter than a token".into(),
                });
            }
            let token = u64::from_be_bytes(k[..8].try_into().expect("checked"));
            self.inner.merkle.toggle(token, entry_hash(&k, &v));
        }
        Ok(())
    }

    /// How many keys (rows and partition tombstones) are stored (a full scan: for tests and
    /// status, not the hot path).
    pub fn entry_count(&self) -> Result<usize> {
        let mut n = 0;
        for kv in self.inner.cells.range(Bound::Unbounded, Bound::Unbounded) {
            kv?;
            n += 1;
        }
        Ok(n)
    }
}

/// The exclusive end of the key range of everything starting with `prefix`.
pub(crate) fn prefix_end(prefix: &[u8]) -> Bound<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Bound::Excluded(end);
        }
    }
    Bound::Unbounded
}
