//! Two-phase tombstone collection (Garage's model): a tombstone past its grace period is purged
//! only once every replica of its partition confirmed it holds it (or something newer), and
//! then on every replica together, so a purged tombstone has no copy left to come back from and
//! no replica keeps a value it shadowed.
//!
//! The keyspace gives the three steps: compaction reports the candidates
//! ([`Keyspace::compact_for_gc`]), a replica says which it holds ([`Keyspace::holds`]), and
//! each replica purges exactly those tombstones ([`Keyspace::purge_tombstones`]). The mesh runs
//! the protocol between replicas.

use std::ops::Bound;

use serde::{Deserialize, Serialize};

use super::{prefix_end, Keyspace};
use crate::cell::{Cell, CellValue};
use crate::codec;
use crate::error::Result;
use crate::hlc::Timestamp;
use crate::key::{decode_key, partition_prefix, partition_tombstone_key, row_key, EntryKey};
use crate::merkle::entry_hash;
use crate::row::StoredRow;
use crate::schema::TableId;

/// Tombstones of one partition past their grace period, waiting for every replica's word.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcCandidate {
    /// The table.
    pub table: TableId,
    /// The partition key.
    #[serde(with = "serde_bytes")]
    pub partition_key: Vec<u8>,
    /// Each tombstone: where it is and its timestamp.
    pub entries: Vec<(EntryKey, Timestamp)>,
}

fn slot<'a>(row: &'a StoredRow, entry: &EntryKey) -> Option<&'a Cell> {
    match entry {
        EntryKey::RowTombstone(_) => row.tombstone.as_ref(),
        EntryKey::RowMarker(_) => row.marker.as_ref(),
        EntryKey::Column(_, name) => row.columns.iter().find(|(n, _)| n == name).map(|(_, c)| c),
        EntryKey::PartitionTombstone => None,
    }
}

/// Queue a changed row's new bytes (or its removal, when nothing is left) and the Merkle
/// toggles of its old and new bytes.
fn rewrite(
    key: Vec<u8>,
    old: &[u8],
    row: &StoredRow,
    batch: &mut Vec<(Vec<u8>, Option<Vec<u8>>)>,
    toggles: &mut Vec<u64>,
) -> Result<()> {
    toggles.push(entry_hash(&key, old));
    if row.is_empty() {
        batch.push((key, None));
    } else {
        let bytes = codec::encode(row)?;
        toggles.push(entry_hash(&key, &bytes));
        batch.push((key, Some(bytes)));
    }
    Ok(())
}

fn is_tombstone(c: &Cell) -> bool {
    matches!(c.value, CellValue::Tombstone { .. })
}

impl Keyspace {
    fn stored_row(&self, prefix: &[u8], clustering: &[u8]) -> Result<Option<StoredRow>> {
        let key = row_key(prefix, clustering);
        match self.inner.cells.get(&key)? {
            Some(b) => Ok(Some(self.decode_row(&key, &b)?)),
            None => Ok(None),
        }
    }

    fn partition_tombstone(&self, prefix: &[u8]) -> Result<Option<Cell>> {
        let key = partition_tombstone_key(prefix);
        match self.inner.cells.get(&key)? {
            Some(b) => Ok(Some(self.decode_cell(&key, &b)?)),
            None => Ok(None),
        }
    }

    /// For each entry, whether this replica holds a cell at least as new: the tombstone itself,
    /// a newer write to the same place, or a row or partition tombstone that covers it.
    pub fn holds(
        &self,
        table: TableId,
        partition_key: &[u8],
        entries: &[(EntryKey, Timestamp)],
    ) -> Result<Vec<bool>> {
        self.schema(table)?;
        let prefix = partition_prefix(table, partition_key);
        let ptomb = self.partition_tombstone(&prefix)?.map(|c| c.ts);
        let covered = |ts: Option<Timestamp>, t: Timestamp| ts.is_some_and(|ts| ts >= t);
        let mut out = Vec::with_capacity(entries.len());
        for (entry, t) in entries {
            let held = covered(ptomb, *t)
                || match entry.clustering() {
                    None => false,
                    Some(ck) => match self.stored_row(&prefix, ck)? {
                        None => false,
                        Some(row) => {
                            covered(row.tombstone.as_ref().map(|c| c.ts), *t)
                                || covered(slot(&row, entry).map(|c| c.ts), *t)
                        }
                    },
                };
            out.push(held);
        }
        Ok(out)
    }

    /// Purge these tombstones where they are still exactly as given (a newer write to the same
    /// place stays), with the cells a purged row or partition tombstone shadowed. Returns how
    /// many tombstones went.
    pub fn purge_tombstones(
        &self,
        table: TableId,
        partition_key: &[u8],
        entries: &[(EntryKey, Timestamp)],
    ) -> Result<usize> {
        self.schema(table)?;
        let prefix = partition_prefix(table, partition_key);
        let token = crate::key::token_of(partition_key);
        let _guard = self.stripe(token).lock().unwrap_or_else(|p| p.into_inner());
        let mut batch: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
        let mut toggles = Vec::new();
        let mut purged = 0;
        // Partition tombstones: the tombstone, and every cell it shadows.
        if let Some((_, t)) = entries
            .iter()
            .find(|(e, _)| *e == EntryKey::PartitionTombstone)
        {
            let key = partition_tombstone_key(&prefix);
            if let Some(b) = self.inner.cells.get(&key)? {
                let cell = self.decode_cell(&key, &b)?;
                if cell.ts == *t && is_tombstone(&cell) {
                    toggles.push(entry_hash(&key, &b));
                    batch.push((key.clone(), None));
                    purged += 1;
                    for kv in self
                        .inner
                        .cells
                        .range(Bound::Included(prefix.clone()), prefix_end(&prefix))
                    {
                        let (k, v) = kv?;
                        if k == key || decode_key(&k)?.clustering.is_none() {
                            continue;
                        }
                        let mut row = self.decode_row(&k, &v)?;
                        let before = row.clone();
                        row.retain_cells(|c| c.ts > *t);
                        if row != before {
                            rewrite(k, &v, &row, &mut batch, &mut toggles)?;
                        }
                    }
                }
            }
        }
        // Row entries, grouped by row.
        let mut rows: Vec<&[u8]> = entries.iter().filter_map(|(e, _)| e.clustering()).collect();
        rows.sort_unstable();
        rows.dedup();
        for ck in rows {
            let key = row_key(&prefix, ck);
            let Some(old) = self.inner.cells.get(&key)? else {
                continue;
            };
            let mut row = self.decode_row(&key, &old)?;
            let before = row.clone();
            for (entry, t) in entries.iter().filter(|(e, _)| e.clustering() == Some(ck)) {
                let exact = slot(&row, entry).is_some_and(|c| c.ts == *t && is_tombstone(c));
                if !exact {
                    continue;
                }
                purged += 1;
                match entry {
                    EntryKey::RowTombstone(_) => {
                        row.tombstone = None;
                        row.retain_cells(|c| c.ts > *t);
                    }
                    EntryKey::RowMarker(_) => row.marker = None,
                    EntryKey::Column(_, name) => row.columns.retain(|(n, _)| n != name),
                    EntryKey::PartitionTombstone => {}
                }
            }
            if row != before {
                rewrite(key, &old, &row, &mut batch, &mut toggles)?;
            }
        }
        if !batch.is_empty() {
            self.inner.cells.apply(batch)?;
            for h in toggles {
                self.inner.merkle.toggle(token, h);
            }
        }
        Ok(purged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mutation::Mutation;
    use crate::schema::{ClusteringOrder, TableSchema};

    fn ks() -> Keyspace {
        Keyspace::in_memory(vec![
            TableSchema::new(1, "t", "pk", &["v", "w"]).clustered("ck", ClusteringOrder::Asc)
        ])
    }

    #[test]
    fn compaction_reports_tombstones_past_grace_and_keeps_them() {
        let config = crate::keyspace::KeyspaceConfig {
            tombstone_grace_ms: 0,
            ..Default::default()
        };
        let ks = Keyspace::open(
            std::sync::Arc::new(crate::engine::MemEngine::default()),
            vec![TableSchema::new(1, "t", "pk", &["v", "w"]).clustered("ck", ClusteringOrder::Asc)],
            config,
            std::sync::Arc::new(crate::hlc::SystemClock),
        )
        .unwrap();
        let t1 = ks.now();
        ks.apply(&Mutation::new(1, b"p".to_vec()).upsert(b"a", [("v", b"1".to_vec())], t1, None))
            .unwrap();
        let t2 = ks.now();
        ks.apply(&Mutation::new(1, b"p".to_vec()).delete_row(b"a", t2))
            .unwrap();
        ks.apply(&Mutation::new(1, b"p".to_vec()).delete_column(b"b", "w", t2))
            .unwrap();
        let (_, candidates) = ks.compact_for_gc(10).unwrap();
        assert_eq!(candidates.len(), 1, "one partition");
        let c = &candidates[0];
        assert!(c
            .entries
            .contains(&(EntryKey::RowTombstone(b"a".to_vec()), t2)));
        assert!(c
            .entries
            .contains(&(EntryKey::Column(b"b".to_vec(), "w".into()), t2)));
        assert!(
            ks.partition_entries(1, b"p")
                .unwrap()
                .iter()
                .any(|(k, _)| *k == EntryKey::RowTombstone(b"a".to_vec())),
            "kept until the replicas agree"
        );
        // The shadowed value is gone already; the tombstones go when purged.
        assert_eq!(ks.purge_tombstones(1, b"p", &c.entries).unwrap(), 2);
        assert!(ks.partition_entries(1, b"p").unwrap().is_empty());
        // A keyspace of its own purges at once.
        ks.apply(&Mutation::new(1, b"q".to_vec()).delete_row(b"a", ks.now()))
            .unwrap();
        assert!(ks.compact().unwrap().purged > 0);
    }

    #[test]
    fn a_tombstone_goes_only_as_it_was_with_what_it_shadowed() {
        let ks = ks();
        let t1 = Timestamp::from_millis(1_000);
        let t2 = Timestamp::from_millis(2_000);
        let t3 = Timestamp::from_millis(3_000);
        ks.apply(&Mutation::new(1, b"p".to_vec()).upsert(b"a", [("v", b"1".to_vec())], t1, None))
            .unwrap();
        ks.apply(&Mutation::new(1, b"p".to_vec()).delete_row(b"a", t2))
            .unwrap();
        let tomb = (EntryKey::RowTombstone(b"a".to_vec()), t2);
        assert_eq!(
            ks.holds(1, b"p", std::slice::from_ref(&tomb)).unwrap(),
            vec![true]
        );
        // Another replica holding only the old value does not hold the tombstone.
        let other = self::tests::ks();
        other
            .apply(&Mutation::new(1, b"p".to_vec()).upsert(b"a", [("v", b"1".to_vec())], t1, None))
            .unwrap();
        assert_eq!(
            other.holds(1, b"p", std::slice::from_ref(&tomb)).unwrap(),
            vec![false]
        );
        // A newer tombstone or write covers an older one.
        let older = (EntryKey::Column(b"a".to_vec(), "v".into()), t1);
        assert_eq!(ks.holds(1, b"p", &[older]).unwrap(), vec![true]);
        // A tombstone that is not exactly the one stored stays.
        assert_eq!(
            ks.purge_tombstones(1, b"p", &[(tomb.0.clone(), t3)])
                .unwrap(),
            0
        );
        assert!(!ks.partition_entries(1, b"p").unwrap().is_empty());
        assert_eq!(ks.purge_tombstones(1, b"p", &[tomb]).unwrap(), 1);
        assert!(
            ks.partition_entries(1, b"p").unwrap().is_empty(),
            "the tombstone went with the value it shadowed"
        );
        // A partition tombstone goes with the rows it shadowed, not newer ones.
        ks.apply(&Mutation::new(1, b"q".to_vec()).upsert(b"a", [("v", b"1".to_vec())], t1, None))
            .unwrap();
        ks.apply(&Mutation::new(1, b"q".to_vec()).delete_partition(t2))
            .unwrap();
        ks.apply(&Mutation::new(1, b"q".to_vec()).upsert(b"b", [("v", b"2".to_vec())], t3, None))
            .unwrap();
        let ptomb = (EntryKey::PartitionTombstone, t2);
        assert_eq!(
            ks.holds(1, b"q", std::slice::from_ref(&ptomb)).unwrap(),
            vec![true]
        );
        assert_eq!(ks.purge_tombstones(1, b"q", &[ptomb]).unwrap(), 1);
        let left = ks.read_partition(1, b"q").unwrap();
        assert_eq!(left.rows.len(), 1);
        assert_eq!(left.rows[0].clustering, b"b".to_vec());
        assert_eq!(
            ks.partition_entries(1, b"q").unwrap().len(),
            2,
            "b's marker and v"
        );
    }
}
