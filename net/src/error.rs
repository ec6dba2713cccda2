//! The one error type of the net crate.

use std::time::Duration;

/// `Result` with this crate's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the mesh.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Too few live replicas (or this node is cut off from a majority of the mesh): the request
    /// was not attempted.
    #[error("unavailable: {needed} replicas needed, {alive} alive{}", if *.majority { "" } else { " (this node does not see a majority of the mesh)" })]
    Unavailable {
        /// Acknowledgements the consistency level needs.
        needed: usize,
        /// Live replicas of the partition.
        alive: usize,
        /// Whether this node sees a majority of the mesh's members.
        majority: bool,
    },
    /// Replicas did not answer in time.
    #[error("timed out after {after:?}: {acked} of {needed} replicas acknowledged")]
    Timeout {
        /// Acknowledgements received.
        acked: usize,
        /// Acknowledgements needed.
        needed: usize,
        /// The request timeout.
        after: Duration,
    },
    /// This node's wall clock disagrees with a majority of the members it hears: it
    /// coordinates no read or write (their timestamps and expiry times would be wrong).
    #[error("this node's clock is {offset_ms} ms off the mesh's (a majority of the members it hears disagree by over {bound_ms} ms): it coordinates no reads or writes until the clock is fixed (check NTP)")]
    ClockSkew {
        /// The median of the members' clocks minus this node's (positive: they are ahead).
        offset_ms: i64,
        /// The largest disagreement tolerated.
        bound_ms: u64,
    },
    /// This node's credential does not allow the write (per-table rights, signed enrollment).
    #[error("not allowed: {0}")]
    NotAllowed(String),
    /// This node could not make a write durable (its flush failed).
    #[error("write not durable: {0}")]
    Durability(String),
    /// A peer could not be reached or its stream failed.
    #[error("peer {peer} unreachable: {reason}")]
    Unreachable {
        /// The peer.
        peer: String,
        /// Why.
        reason: String,
    },
    /// A peer answered with an error.
    #[error("peer {peer} failed the request: {reason}")]
    Remote {
        /// The peer.
        peer: String,
        /// The error it reported.
        reason: String,
    },
    /// A frame that does not decode, or is larger than allowed.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The local keyspace failed.
    #[error(transparent)]
    Storage(#[from] sipmesh_storage::Error),
    /// Configuration or identity problem (key file, mesh key, listen address).
    #[error("configuration: {0}")]
    Config(String),
    /// The mesh is shutting down.
    #[error("the mesh is shut down")]
    Shutdown,
}
