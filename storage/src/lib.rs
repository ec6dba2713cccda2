//! `sipmesh-storage`: the name-server keyspace of sipmesh, with Cassandra's data model, on sled.
//!
//! # Layout
//! - [`hlc`]: the hybrid logical clock that stamps every write; never goes backwards, also
//!   across restarts.
//! - [`cell`]: a value or a tombstone with its timestamp and TTL, and the last-write-wins merge.
//! - [`schema`]: tables with a partition key, an optional clustering key and named columns.
//! - [`key`]: the order-preserving on-disk key layout `(token, table, partition, clustering, column)`.
//! - [`mutation`]: what a write is — any number of cells of one partition, applied atomically.
//! - [`engine`]: the ordered key-value engine under the keyspace (sled, and one in memory).
//! - [`keyspace`]: apply, read, slice, delete, compact; token-range scans for anti-entropy.
//! - [`merkle`]: fixed-depth Merkle digests over token ranges, maintained incrementally.
//! - [`hints`]: the durable, bounded log of mutations waiting for a peer (hinted handoff).
//! - [`paxos`]: each replica's acceptor state for claims (single-decree Paxos per key).
//! - [`codec`]: the one place where bytes are encoded, with a format-version byte.
//!
//! This crate knows nothing of networks or SIP.

pub mod cell;
pub mod codec;
pub mod engine;
mod error;
pub mod hints;
pub mod hlc;
pub mod key;
pub mod keyspace;
pub mod merkle;
#[cfg(test)]
mod model_tests;
pub mod mutation;
mod partition;
pub mod paxos;
mod row;
pub mod schema;

pub use cell::{Cell, CellValue};
pub use engine::{Engine, MemEngine, SledEngine, SyncPolicy, DEFAULT_CACHE_BYTES};
pub use error::{Error, Result};
pub use hints::{Hint, Hints};
pub use hlc::{Hlc, SystemClock, Timestamp, WallClock};
pub use key::{token_of, EntryKey, Token};
pub use keyspace::{
    CellView, CompactionPage, CompactionStats, GcCandidate, Keyspace, KeyspaceConfig, Partition,
    PartitionDigest, RawEntry, Row,
};
pub use merkle::{MerkleTree, MERKLE_DEPTH, MERKLE_LEAVES};
pub use mutation::Mutation;
pub use paxos::{Acceptor, Ballot, Promise};
pub use schema::{ClusteringOrder, TableId, TableSchema};
