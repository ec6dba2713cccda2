//! A mutation: any number of cells of one partition, applied atomically. It is also the unit of
//! replication and of hinted handoff.

use serde::{Deserialize, Serialize};

use crate::cell::Cell;
use crate::hlc::Timestamp;
use crate::key::EntryKey;
use crate::schema::TableId;

/// Cells of one partition of one table, to be merged into the keyspace together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mutation {
    /// The table.
    pub table: TableId,
    /// The partition key.
    #[serde(with = "serde_bytes")]
    pub partition_key: Vec<u8>,
    /// The cells, each with its place in the partition.
    pub entries: Vec<(EntryKey, Cell)>,
}

impl Mutation {
    /// An empty mutation of one partition.
    pub fn new(table: TableId, partition_key: impl Into<Vec<u8>>) -> Self {
        Mutation {
            table,
            partition_key: partition_key.into(),
            entries: Vec::new(),
        }
    }

    /// Insert or update a row: writes its row marker and the given columns, all at `ts`, expiring
    /// at `expires_at` (wall-clock ms) if set.
    pub fn upsert<'a>(
        mut self,
        clustering: &[u8],
        columns: impl IntoIterator<Item = (&'a str, Vec<u8>)>,
        ts: Timestamp,
        expires_at: Option<u64>,
    ) -> Self {
        let cell = |v: Vec<u8>| match expires_at {
            Some(e) => Cell::expiring(ts, v, e),
            None => Cell::live(ts, v),
        };
        self.entries
            .push((EntryKey::RowMarker(clustering.to_vec()), cell(Vec::new())));
        for (name, value) in columns {
            self.entries.push((
                EntryKey::Column(clustering.to_vec(), name.to_string()),
                cell(value),
            ));
        }
        self
    }

    /// Delete one column of a row.
    pub fn delete_column(mut self, clustering: &[u8], column: &str, ts: Timestamp) -> Self {
        self.entries.push((
            EntryKey::Column(clustering.to_vec(), column.to_string()),
            Cell::tombstone(ts),
        ));
        self
    }

    /// Delete a whole row (every cell of it written before `ts`).
    pub fn delete_row(mut self, clustering: &[u8], ts: Timestamp) -> Self {
        self.entries.push((
            EntryKey::RowTombstone(clustering.to_vec()),
            Cell::tombstone(ts),
        ));
        self
    }

    /// Delete the whole partition (every cell of it written before `ts`).
    pub fn delete_partition(mut self, ts: Timestamp) -> Self {
        self.entries
            .push((EntryKey::PartitionTombstone, Cell::tombstone(ts)));
        self
    }

    /// Whether the mutation carries no cells.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The greatest timestamp among the cells (for the receiver's clock).
    pub fn max_timestamp(&self) -> Option<Timestamp> {
        self.entries.iter().map(|(_, c)| c.ts).max()
    }
}
