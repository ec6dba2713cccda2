//! Compaction: expired values become tombstones, and tombstones older than the grace period
//! are purged with the cells they shadow.

use std::ops::Bound;

use serde::Deserialize;

use super::gc::GcCandidate;
use super::{CompactionStats, Keyspace};
use crate::cell::{Cell, CellValue};
use crate::codec;
use crate::error::Error;
use crate::error::Result;
use crate::hlc::Timestamp;
use crate::key::{decode_key, partition_prefix_len, partition_tombstone_key, EntryKey};
use crate::merkle::entry_hash;

/// Tombstones of one partition reported by one compaction pass (about 100 bytes each on the
/// wire, well under a frame).
const MAX_TOMBSTONES_PER_CANDIDATE: usize = 10_000;

impl Keyspace {
    /// Turn expired values into tombstones, and purge tombstones (and the cells they shadow)
    /// older than the grace period. Returns what changed, counted in cells. For a keyspace of
    /// its own; a replica of a mesh uses [`Keyspace::compact_page_for_gc`].
    pub fn compact(&self) -> Result<CompactionStats> {
        Ok(self.compact_inner(None, Bound::Unbounded, usize::MAX)?.0)
    }

    /// As [`Keyspace::compact`], but tombstones past their grace period are kept and reported
    /// (for the partitions of at most `max_partitions`), to be purged only once every replica
    /// holds them (`gc`).
    pub fn compact_for_gc(
        &self,
        max_partitions: usize,
    ) -> Result<(CompactionStats, Vec<GcCandidate>)> {
        let page = self.compact_page_for_gc(None, usize::MAX, max_partitions)?;
        Ok((page.stats, page.candidates))
    }

    /// One page of [`Keyspace::compact_for_gc`]: at most `max_rows` stored rows, from just
    /// after `after` (the start of the keyspace if `None`). The page says where the next one
    /// starts (`None` once the pass reached the end), so a pass over a large keyspace is done
    /// in bounded steps.
    pub fn compact_page_for_gc(
        &self,
        after: Option<&[u8]>,
        max_rows: usize,
        max_partitions: usize,
    ) -> Result<CompactionPage> {
        let mut candidates = Vec::new();
        let from = after.map_or(Bound::Unbounded, |k| Bound::Excluded(k.to_vec()));
        let (stats, next) = self.compact_inner(
            Some((&mut candidates, max_partitions)),
            from,
            max_rows.max(1),
        )?;
        Ok(CompactionPage {
            stats,
            candidates,
            next,
        })
    }

    #[allow(clippy::type_complexity)]
    fn compact_inner(
        &self,
        mut gc: Option<(&mut Vec<GcCandidate>, usize)>,
        from: Bound<Vec<u8>>,
        max_rows: usize,
    ) -> Result<(CompactionStats, Option<Vec<u8>>)> {
        let now = self.wall_ms();
        let grace = self.inner.config.tombstone_grace_ms;
        let mut stats = CompactionStats::default();
        // The partition being scanned (its key prefix) and its partition tombstone's timestamp.
        let mut partition: Vec<u8> = Vec::new();
        let mut pdel = Timestamp(0);
        let mut first = true;
        let mut scanned = 0usize;
        let mut next = None;
        // (key, bytes as scanned, replacement or None to remove)
        let mut pending: Vec<(Vec<u8>, Vec<u8>, Option<Vec<u8>>)> = Vec::new();
        for kv in self.inner.cells.range(from, Bound::Unbounded) {
            let (k, v) = kv?;
            scanned += 1;
            if scanned >= max_rows {
                next = Some(k.clone());
            }
            let plen = partition_prefix_len(&k).ok_or_else(|| Error::Corrupt {
                table: "cells".into(),
                key: crate::error::hex(&k),
                reason: "bad partition key encoding".into(),
            })?;
            let is_row = k.get(plen) == Some(&0x01);
            if partition != k[..plen] {
                partition.clear();
                partition.extend_from_slice(&k[..plen]);
                pdel = Timestamp(0);
                // A page that starts inside a partition has not seen its partition tombstone
                // (which sorts first): read it.
                if first && is_row {
                    let tkey = partition_tombstone_key(&partition);
                    if let Some(bytes) = self.inner.cells.get(&tkey)? {
                        pdel = self.decode_cell(&tkey, &bytes)?.ts;
                    }
                }
            }
            first = false;
            let past_grace = |c: &Cell| match c.value {
                CellValue::Tombstone { deleted_at } => deleted_at.saturating_add(grace) <= now,
                _ => false,
            };
            // Under two-phase GC a tombstone past its grace is reported, not purged.
            let purge_locally = gc.is_none();
            let expired_tomb = |c: &Cell| purge_locally && past_grace(c);
            if is_row {
                // Most rows have nothing to expire, purge or report: tell from a borrowed
                // read, without copying the row.
                let peek: RowPeek<'_> = codec::decode_borrowed(&v, "cells", &k)?;
                if !peek.needs_compaction(now, grace, pdel) {
                    if next.is_some() {
                        break;
                    }
                    continue;
                }
            }
            let d = decode_key(&k)?;
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
            if d.clustering.is_none() {
                let cell = self.decode_cell(&k, &v)?;
                pdel = cell.ts;
                if expired_tomb(&cell) {
                    stats.purged += 1;
                    pending.push((k, v, None));
                } else if past_grace(&cell) {
                    report(EntryKey::PartitionTombstone, cell.ts);
                }
                if next.is_some() {
                    break;
                }
                continue;
            }
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
            if next.is_some() {
                break;
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
        Ok((stats, next))
    }
}

/// What one page of a compaction pass did, and where the next page starts.
#[derive(Debug, Default)]
pub struct CompactionPage {
    /// Cells expired and purged.
    pub stats: CompactionStats,
    /// Tombstones past their grace period, for two-phase collection.
    pub candidates: Vec<GcCandidate>,
    /// The last key this page scanned, if the pass has more to scan after it.
    pub next: Option<Vec<u8>>,
}

/// A stored row read in place (the layout of `StoredRow`, borrowing its bytes): enough to tell
/// whether compaction has anything to do with it.
#[derive(Deserialize)]
struct RowPeek<'a> {
    #[serde(borrow)]
    tombstone: Option<CellPeek<'a>>,
    #[serde(borrow)]
    marker: Option<CellPeek<'a>>,
    #[serde(borrow)]
    columns: Vec<(&'a str, CellPeek<'a>)>,
}

/// The layout of `Cell`, borrowing the value's bytes.
#[derive(Deserialize)]
struct CellPeek<'a> {
    ts: Timestamp,
    #[serde(borrow)]
    value: ValuePeek<'a>,
}

/// The layout of `CellValue`.
#[derive(Deserialize)]
enum ValuePeek<'a> {
    Live {
        #[serde(borrow)]
        #[allow(dead_code)]
        value: &'a [u8],
        expires_at: Option<u64>,
    },
    Tombstone {
        deleted_at: u64,
    },
}

impl RowPeek<'_> {
    /// Whether compaction would change or report anything in this row, given the partition
    /// tombstone's timestamp `pdel`: an expired value, a tombstone past its grace, or a value
    /// shadowed by a row or partition tombstone.
    fn needs_compaction(&self, now: u64, grace: u64, pdel: Timestamp) -> bool {
        let rdel = self
            .tombstone
            .as_ref()
            .map_or(Timestamp(0), |t| t.ts)
            .max(pdel);
        let cells = self.tombstone.iter().chain(&self.marker);
        cells
            .chain(self.columns.iter().map(|(_, c)| c))
            .any(|c| match c.value {
                ValuePeek::Live { expires_at, .. } => {
                    c.ts <= rdel || expires_at.is_some_and(|e| e <= now)
                }
                ValuePeek::Tombstone { deleted_at } => deleted_at.saturating_add(grace) <= now,
            })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Arc;

    use super::*;
    use crate::engine::MemEngine;
    use crate::hlc::SystemClock;
    use crate::keyspace::KeyspaceConfig;
    use crate::mutation::Mutation;
    use crate::schema::{ClusteringOrder, TableSchema};

    /// A bit of everything compaction looks at, written at fixed times relative to `now`: a
    /// wide partition whose partition tombstone shadows its older half; small partitions that
    /// are live, expired, expiring later, row-deleted past the grace period (60 s) and
    /// column-deleted within it.
    fn filled(now: u64) -> Keyspace {
        let ks = Keyspace::open(
            Arc::new(MemEngine::default()),
            vec![TableSchema::new(1, "t", "pk", &["v", "w"]).clustered("ck", ClusteringOrder::Asc)],
            KeyspaceConfig {
                tombstone_grace_ms: 60_000,
                ..Default::default()
            },
            Arc::new(SystemClock),
        )
        .unwrap();
        let at = |ago: u64| Timestamp::from_millis(now - ago);
        let v = |i: u32| [("v", i.to_be_bytes().to_vec())];
        for i in 0..40u32 {
            let m = Mutation::new(1, b"wide".to_vec()).upsert(
                &i.to_be_bytes(),
                v(i),
                at(300_000 - u64::from(i) * 1_000),
                None,
            );
            ks.apply(&m).unwrap();
        }
        ks.apply(&Mutation::new(1, b"wide".to_vec()).delete_partition(at(280_500)))
            .unwrap();
        for p in 0..30u32 {
            let pk = format!("p{p:02}").into_bytes();
            let m = match p % 5 {
                0 => Mutation::new(1, pk).upsert(b"a", v(p), at(10_000), None),
                1 => Mutation::new(1, pk).upsert(b"a", v(p), at(10_000), Some(now - 1_000)),
                2 => Mutation::new(1, pk).upsert(b"a", v(p), at(10_000), Some(now + 3_600_000)),
                3 => Mutation::new(1, pk).delete_row(b"a", at(120_000)),
                _ => Mutation::new(1, pk).delete_column(b"a", "w", at(1_000)),
            };
            ks.apply(&m).unwrap();
        }
        ks
    }

    /// Every partition of `filled` with its entries.
    type Contents = Vec<(Vec<u8>, Vec<(EntryKey, Cell)>)>;

    fn contents(ks: &Keyspace) -> Contents {
        let mut pks = vec![b"wide".to_vec()];
        pks.extend((0..30u32).map(|p| format!("p{p:02}").into_bytes()));
        pks.into_iter()
            .map(|pk| {
                let entries = ks.partition_entries(1, &pk).unwrap();
                (pk, entries)
            })
            .collect()
    }

    /// Paging a pass, with page boundaries anywhere (inside the wide partition, right after
    /// its partition tombstone), changes and reports exactly what one pass does.
    #[test]
    fn a_pass_in_pages_of_any_size_does_what_one_pass_does() {
        let now = crate::hlc::WallClock::now_ms(&SystemClock);
        let whole = filled(now);
        let (stats, candidates) = whole.compact_for_gc(usize::MAX).unwrap();
        assert_eq!(
            stats.expired, 12,
            "p01, p06, ...: their expired values and row markers"
        );
        assert_eq!(
            stats.purged, 40,
            "the 20 rows (marker and value) the partition tombstone shadows"
        );
        let reported = |c: &[GcCandidate]| -> BTreeSet<(Vec<u8>, EntryKey, Timestamp)> {
            c.iter()
                .flat_map(|c| {
                    c.entries
                        .iter()
                        .map(|(e, ts)| (c.partition_key.clone(), e.clone(), *ts))
                })
                .collect()
        };
        let want = reported(&candidates);
        assert_eq!(
            want.len(),
            7,
            "the tombstones past their grace: 6 rows', the wide partition's"
        );
        for page in [1, 2, 3, 7, 40] {
            let paged = filled(now);
            let (mut expired, mut purged, mut got, mut pages) = (0, 0, BTreeSet::new(), 0);
            let mut after: Option<Vec<u8>> = None;
            loop {
                let p = paged
                    .compact_page_for_gc(after.as_deref(), page, usize::MAX)
                    .unwrap();
                expired += p.stats.expired;
                purged += p.stats.purged;
                got.extend(reported(&p.candidates));
                pages += 1;
                match p.next {
                    Some(k) => after = Some(k),
                    None => break,
                }
            }
            assert!(pages > 70 / page, "pages of {page}: {pages} pages");
            assert_eq!(
                (expired, purged),
                (stats.expired, stats.purged),
                "pages of {page}"
            );
            assert_eq!(got, want, "pages of {page}");
            assert_eq!(contents(&paged), contents(&whole), "pages of {page}");
            assert_eq!(
                paged.merkle().root(),
                whole.merkle().root(),
                "pages of {page}"
            );
        }
    }

    /// The in-place read of a row agrees with the full decode on what needs compaction.
    #[test]
    fn rows_with_nothing_to_do_are_left_as_they_are() {
        let now = crate::hlc::WallClock::now_ms(&SystemClock);
        let ks = filled(now);
        let before = contents(&ks);
        ks.compact_for_gc(usize::MAX).unwrap();
        let (stats, candidates) = ks.compact_for_gc(usize::MAX).unwrap();
        assert_eq!(
            (stats.expired, stats.purged),
            (0, 0),
            "a second pass changes nothing"
        );
        assert_eq!(candidates.len(), 7, "and reports the same tombstones again");
        let after = contents(&ks);
        for (b, a) in before.iter().zip(&after) {
            let p = b.0[1..]
                .iter()
                .map(|c| c - b'0')
                .fold(0u32, |n, d| n * 10 + u32::from(d));
            if b.0 != b"wide" && p % 5 != 1 {
                assert_eq!(a, b, "partition {:?} had nothing to compact", b.0);
            }
        }
    }
}
