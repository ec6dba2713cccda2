//! Compaction: expired values become tombstones, and tombstones older than the grace period
//! are purged with the cells they shadow.

use std::ops::Bound;

use super::gc::GcCandidate;
use super::{CompactionStats, Keyspace};
use crate::cell::{Cell, CellValue};
use crate::codec;
use crate::error::Result;
use crate::hlc::Timestamp;
use crate::key::EntryKey;
use crate::key::{decode_key, partition_prefix};
use crate::merkle::entry_hash;

/// Tombstones of one partition reported by one compaction pass (about 100 bytes each on the
/// wire, well under a frame).
const MAX_TOMBSTONES_PER_CANDIDATE: usize = 10_000;

impl Keyspace {
    /// Turn expired values into tombstones, and purge tombstones (and the cells they shadow)
    /// older than the grace period. Returns what changed, counted in cells. For a keyspace of
    /// its own; a replica of a mesh uses [`Keyspace::compact_for_gc`].
    pub fn compact(&self) -> Result<CompactionStats> {
        self.compact_inner(None)
    }

    /// As [`Keyspace::compact`], but tombstones past their grace period are kept and reported
    /// (for the partitions of at most `max_partitions`), to be purged only once every replica
    /// holds them (`gc`).
    pub fn compact_for_gc(
        &self,
        max_partitions: usize,
    ) -> Result<(CompactionStats, Vec<GcCandidate>)> {
        let mut candidates = Vec::new();
        let stats = self.compact_inner(Some((&mut candidates, max_partitions)))?;
        Ok((stats, candidates))
    }

    #[allow(clippy::type_complexity)]
    fn compact_inner(
        &self,
        mut gc: Option<(&mut Vec<GcCandidate>, usize)>,
    ) -> Result<CompactionStats> {
        let now = self.wall_ms();
        let grace = self.inner.config.tombstone_grace_ms;
        let mut stats = CompactionStats::default();
        let mut partition_deleted: Option<(Vec<u8>, Timestamp)> = None;
        // (key, bytes as scanned, replacement or None to remove)
        let mut pending: Vec<(Vec<u8>, Vec<u8>, Option<Vec<u8>>)> = Vec::new();
        for kv in self.inner.cells.range(Bound::Unbounded, Bound::Unbounded) {
            let (k, v) = kv?;
            let d = decode_key(&k)?;
            let pprefix = partition_prefix(d.table, &d.partition_key);
            if partition_deleted
                .as_ref()
                .map(|p| p.0 != pprefix)
                .unwrap_or(true)
            {
                partition_deleted = Some((pprefix, Timestamp(0)));
            }
            let past_grace = |c: &Cell| match c.value {
                CellValue::Tombstone { deleted_at } => deleted_at.saturating_add(grace) <= now,
                _ => false,
            };
            // Under two-phase GC a tombstone past its grace is reported, not purged.
            let purge_locally = gc.is_none();
            let mut report = |entry: EntryKey, ts: Timestamp| {
                if let Some((candidates, max)) = gc.as_mut() {
                    let same = candidates
                        .last()
                        .is_some_and(|c| c.table == d.table && c.partition_key == d.partition_key);
                    if same {
                        // Bounded, so one request carries them: the rest wait for next time.
                        if let Some(c) = candidates
                            .last_mut()
                            .filter(|c| c.entries.len() < MAX_TOMBSTONES_PER_CANDIDATE)
                        {
                            c.entries.push((entry, ts));
                        }
                    } else if candidates.len() < *max {
                        candidates.push(GcCandidate {
                            table: d.table,
                            partition_key: d.partition_key.clone(),
                            entries: vec![(entry, ts)],
                        });
                    }
                }
            };
            let expired_tomb = |c: &Cell| purge_locally && past_grace(c);
            if d.clustering.is_none() {
                let cell = self.decode_cell(&k, &v)?;
                if let Some(p) = partition_deleted.as_mut() {
                    p.1 = cell.ts;
                }
                if expired_tomb(&cell) {
                    stats.purged += 1;
                    pending.push((k, v, None));
                } else if past_grace(&cell) {
                    report(EntryKey::PartitionTombstone, cell.ts);
                }
                continue;
            }
            let pdel = partition_deleted.as_ref().map(|p| p.1).unwrap_or_default();
            let mut row = self.decode_row(&k, &v)?;
            if !purge_locally {
                let ck = d.clustering.clone().unwrap_or_default();
                if let Some(c) = row.tombstone.as_ref().filter(|c| past_grace(c)) {
                    report(EntryKey::RowTombstone(ck.clone()), c.ts);
                }
                if let Some(c) = row.marker.as_ref().filter(|c| past_grace(c)) {
                    report(EntryKey::RowMarker(ck.clone()), c.ts);
                }
                for (name, c) in row.columns.iter().filter(|(_, c)| past_grace(c)) {
                    report(EntryKey::Column(ck.clone(), name.clone()), c.ts);
                }
            }
            let rdel = row
                .tombstone
                .as_ref()
                .map(|t| t.ts)
                .unwrap_or_default()
                .max(pdel);
            let mut changed = false;
            row.retain_cells(|c| {
                let is_tomb = matches!(c.value, CellValue::Tombstone { .. });
                if expired_tomb(c) || (!is_tomb && c.ts <= rdel) {
                    stats.purged += 1;
                    changed = true;
                    return false;
                }
                if let CellValue::Live {
                    expires_at: Some(e),
                    ..
                } = c.value
                {
                    if e <= now {
                        c.value = CellValue::Tombstone { deleted_at: e };
                        stats.expired += 1;
                        changed = true;
                    }
                }
                true
            });
            if changed {
                let replacement = if row.is_empty() {
                    None
                } else {
                    Some(codec::encode(&row)?)
                };
                pending.push((k, v, replacement));
            }
        }
        for (k, old_bytes, replacement) in pending {
            let token = u64::from_be_bytes(k[..8].try_into().expect("decoded above"));
            let _guard = self.stripe(token).lock().unwrap_or_else(|p| p.into_inner());
            // Skip entries that changed since the scan; the next pass will see them.
            if self.inner.cells.get(&k)?.as_deref() != Some(old_bytes.as_slice()) {
                continue;
            }
            self.inner.merkle.toggle(token, entry_hash(&k, &old_bytes));
            if let Some(bytes) = &replacement {
                self.inner.merkle.toggle(token, entry_hash(&k, bytes));
            }
            self.inner.cells.apply(vec![(k, replacement)])?;
        }
        Ok(stats)
    }
}
