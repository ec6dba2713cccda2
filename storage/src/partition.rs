//! The resolved view of a partition: rows with their live columns, after tombstones and expiry
//! have been applied to the raw cells.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::cell::Cell;
use crate::hlc::Timestamp;
use crate::key::EntryKey;
use crate::schema::ClusteringOrder;

/// A live column value as read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CellView {
    /// The value.
    pub value: Vec<u8>,
    /// When it was written.
    pub ts: Timestamp,
    /// When it expires (wall-clock ms), if it does.
    pub expires_at: Option<u64>,
}

/// A live row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row {
    /// The clustering key (empty for unclustered tables).
    pub clustering: Vec<u8>,
    /// The live columns by name.
    pub columns: BTreeMap<String, CellView>,
}

impl Row {
    /// A column's value, if live.
    pub fn get(&self, column: &str) -> Option<&[u8]> {
        self.columns.get(column).map(|c| c.value.as_slice())
    }

    /// The latest expiry of the row's cells (for a row whose every cell expires).
    pub fn expires_at(&self) -> Option<u64> {
        self.columns.values().map(|c| c.expires_at).max().flatten()
    }
}

/// A partition's live rows, in the table's clustering order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partition {
    /// The live rows.
    pub rows: Vec<Row>,
}

impl Partition {
    /// Resolve raw entries of one partition (in any order, possibly with duplicates, which are
    /// merged) into live rows at wall time `now_ms`.
    pub fn resolve(
        entries: impl IntoIterator<Item = (EntryKey, Cell)>,
        order: ClusteringOrder,
        now_ms: u64,
    ) -> Partition {
        let mut merged: BTreeMap<EntryKey, Cell> = BTreeMap::new();
        for (k, c) in entries {
            match merged.remove(&k) {
                Some(old) => merged.insert(k, old.merge(c)),
                None => merged.insert(k, c),
            };
        }
        let mut rows = resolve_sorted(merged.into_iter(), now_ms);
        if order == ClusteringOrder::Desc {
            rows.reverse();
        }
        Partition { rows }
    }

    /// The row with this clustering key, if live.
    pub fn row(&self, clustering: &[u8]) -> Option<&Row> {
        self.rows.iter().find(|r| r.clustering == clustering)
    }

    /// Whether no row is live.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

/// A row being assembled by [`resolve_sorted`].
struct RowAcc {
    clustering: Vec<u8>,
    /// Cells with a timestamp at or below this are deleted (row or partition tombstone).
    deleted: Timestamp,
    /// Whether a live row marker was seen.
    marker: bool,
    columns: BTreeMap<String, CellView>,
}

impl RowAcc {
    fn finish(self, rows: &mut Vec<Row>) {
        if self.marker || !self.columns.is_empty() {
            rows.push(Row {
                clustering: self.clustering,
                columns: self.columns,
            });
        }
    }
}

/// Resolve entries already sorted by [`EntryKey`] order (partition tombstone first, then rows in
/// ascending clustering order, each row's tombstone first) into live rows, ascending.
pub(crate) fn resolve_sorted(
    entries: impl Iterator<Item = (EntryKey, Cell)>,
    now_ms: u64,
) -> Vec<Row> {
    let is_tombstone = |c: &Cell| matches!(c.value, crate::cell::CellValue::Tombstone { .. });
    let mut rows = Vec::new();
    let mut partition_deleted = Timestamp(0);
    let mut current: Option<RowAcc> = None;
    for (key, cell) in entries {
        let ck = match &key {
            EntryKey::PartitionTombstone => {
                if is_tombstone(&cell) {
                    partition_deleted = partition_deleted.max(cell.ts);
                }
                continue;
            }
            other => other.clustering().unwrap_or_default(),
        };
        if current.as_ref().map(|c| c.clustering != ck).unwrap_or(true) {
            if let Some(done) = current.take() {
                done.finish(&mut rows);
            }
            current = Some(RowAcc {
                clustering: ck.to_vec(),
                deleted: partition_deleted,
                marker: false,
                columns: BTreeMap::new(),
            });
        }
        let Some(row) = current.as_mut() else {
            continue;
        };
        match key {
            EntryKey::RowTombstone(_) => {
                if is_tombstone(&cell) {
                    row.deleted = row.deleted.max(cell.ts);
                }
            }
            EntryKey::RowMarker(_) => {
                if cell.ts > row.deleted && cell.live_value(now_ms).is_some() {
                    row.marker = true;
                }
            }
            EntryKey::Column(_, name) => {
                if cell.ts > row.deleted {
                    if let Some(v) = cell.live_value(now_ms) {
                        row.columns.insert(
                            name,
                            CellView {
                                value: v.to_vec(),
                                ts: cell.ts,
                                expires_at: cell.expires_at(),
                            },
                        );
                    }
                }
            }
            EntryKey::PartitionTombstone => {}
        }
    }
    if let Some(done) = current {
        done.finish(&mut rows);
    }
    rows
}
