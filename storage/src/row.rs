//! The stored form of a row: its tombstone, its marker and its column cells in one value, so a
//! row costs one engine read and one engine write.

use serde::{Deserialize, Serialize};

use crate::cell::Cell;
use crate::key::EntryKey;

/// A row as stored: every cell of one clustering key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StoredRow {
    /// The row tombstone, if the row was deleted.
    pub tombstone: Option<Cell>,
    /// The row marker, if the row was inserted.
    pub marker: Option<Cell>,
    /// Column cells, sorted by name (so equal rows encode to equal bytes on every replica).
    pub columns: Vec<(String, Cell)>,
}

impl StoredRow {
    /// Merge one cell of this row; returns whether the stored row changed.
    pub fn merge(&mut self, entry: &EntryKey, cell: &Cell) -> bool {
        let slot = match entry {
            EntryKey::RowTombstone(_) => &mut self.tombstone,
            EntryKey::RowMarker(_) => &mut self.marker,
            EntryKey::Column(_, name) => {
                return match self.columns.binary_search_by(|(n, _)| n.as_str().cmp(name)) {
                    Ok(i) => {
                        if self.columns[i].1.is_superseded_by(cell) {
                            self.columns[i].1 = cell.clone();
                            true
                        } else {
                            false
                        }
                    }
                    Err(i) => {
                        self.columns.insert(i, (name.clone(), cell.clone()));
                        true
                    }
                };
            }
            EntryKey::PartitionTombstone => return false,
        };
        match slot {
            Some(old) if !old.is_superseded_by(cell) => false,
            _ => {
                *slot = Some(cell.clone());
                true
            }
        }
    }

    /// Every cell of the row as entries, in [`EntryKey`] order.
    pub fn into_entries(self, clustering: &[u8]) -> impl Iterator<Item = (EntryKey, Cell)> + '_ {
        let t = self
            .tombstone
            .map(|c| (EntryKey::RowTombstone(clustering.to_vec()), c));
        let m = self
            .marker
            .map(|c| (EntryKey::RowMarker(clustering.to_vec()), c));
        t.into_iter().chain(m).chain(
            self.columns
                .into_iter()
                .map(move |(n, c)| (EntryKey::Column(clustering.to_vec(), n), c)),
        )
    }

    /// Mutable access to every cell, for compaction.
    pub fn retain_cells(&mut self, mut keep: impl FnMut(&mut Cell) -> bool) {
        if let Some(c) = self.tombstone.as_mut() {
            if !keep(c) {
                self.tombstone = None;
            }
        }
        if let Some(c) = self.marker.as_mut() {
            if !keep(c) {
                self.marker = None;
            }
        }
        self.columns.retain_mut(|(_, c)| keep(c));
    }

    /// Whether no cell is left.
    pub fn is_empty(&self) -> bool {
        self.tombstone.is_none() && self.marker.is_none() && self.columns.is_empty()
    }
}
