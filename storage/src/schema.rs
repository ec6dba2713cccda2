//! Table schemas: a partition key, an optional clustering key with a sort order, named columns.
//!
//! Keys are byte strings (the node encodes its own key types); rows of a partition are ordered by
//! the bytes of their clustering key, ascending or descending as the schema says. Column values
//! are bytes too, each in its own [`crate::Cell`].

use serde::{Deserialize, Serialize};

/// A table's stable numeric id. It is part of every on-disk key and every replicated mutation,
/// so it must never change for a table once data exists.
pub type TableId = u16;

/// The order in which rows of a partition come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClusteringOrder {
    /// Ascending bytes of the clustering key.
    Asc,
    /// Descending bytes of the clustering key.
    Desc,
}

/// The definition of one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSchema {
    /// Stable id (see [`TableId`]).
    pub id: TableId,
    /// Name, for errors, logs and the admin API.
    pub name: String,
    /// Name of the partition key (documentation; the key itself is bytes).
    pub partition_key: String,
    /// Name and order of the clustering key, if rows are clustered within a partition.
    pub clustering: Option<(String, ClusteringOrder)>,
    /// The columns a row may have; a mutation naming another column is rejected.
    pub columns: Vec<String>,
}

impl TableSchema {
    /// A table keyed by `partition_key` alone (one row per partition).
    pub fn new(id: TableId, name: &str, partition_key: &str, columns: &[&str]) -> Self {
        TableSchema {
            id,
            name: name.to_string(),
            partition_key: partition_key.to_string(),
            clustering: None,
            columns: columns.iter().map(|c| c.to_string()).collect(),
        }
    }

    /// Add a clustering key with its order.
    pub fn clustered(mut self, name: &str, order: ClusteringOrder) -> Self {
        self.clustering = Some((name.to_string(), order));
        self
    }

    /// Whether the table has a column of that name.
    pub fn has_column(&self, name: &str) -> bool {
        self.columns.iter().any(|c| c == name)
    }

    /// The clustering order (ascending for unclustered tables).
    pub fn order(&self) -> ClusteringOrder {
        self.clustering
            .as_ref()
            .map(|(_, o)| *o)
            .unwrap_or(ClusteringOrder::Asc)
    }
}
