//! The one error type of the storage crate.

/// `Result` with this crate's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the keyspace.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The engine (sled) failed: I/O error, or its own corruption report.
    #[error("storage engine error: {0}")]
    Engine(String),
    /// Bytes read from disk (or received) could not be decoded.
    #[error("corrupt data in table {table} at key {key}: {reason}")]
    Corrupt {
        /// Table name, or the internal tree name for non-table data.
        table: String,
        /// The key, hex-encoded.
        key: String,
        /// What was wrong.
        reason: String,
    },
    /// A stored value carries a format version this build does not read.
    #[error("unsupported format version {found} (this build reads {expected})")]
    FormatVersion {
        /// The version byte found.
        found: u8,
        /// The version this build writes and reads.
        expected: u8,
    },
    /// A table id or name that the keyspace does not know.
    #[error("timestamp {remote_ms} ms is beyond the clock bound ({now_ms} ms now + {bound_ms} ms): refused, not stored")]
    /// A mutation carries a timestamp too far ahead of this node's clock (a skewed or hostile
    /// writer): it is refused whole, so no cell can be made unoverwritable.
    ClockSkew {
        /// The newest timestamp of the mutation (wall milliseconds).
        remote_ms: u64,
        /// This node's wall clock.
        now_ms: u64,
        /// The bound.
        bound_ms: u64,
    },
    #[error("unknown table {0}")]
    UnknownTable(String),
    /// A mutation or read that does not fit the table's schema.
    #[error("invalid request on table {table}: {reason}")]
    Invalid {
        /// Table name.
        table: String,
        /// What was wrong.
        reason: String,
    },
    /// Encoding a value failed (should not happen with well-formed types).
    #[error("encoding failed: {0}")]
    Encode(String),
}

impl From<sled::Error> for Error {
    fn from(e: sled::Error) -> Self {
        Error::Engine(e.to_string())
    }
}

/// Hex-encode bytes for error messages (bounded, so a huge key does not flood logs).
pub(crate) fn hex(bytes: &[u8]) -> String {
    const MAX: usize = 64;
    let mut s = String::with_capacity(bytes.len().min(MAX) * 2 + 3);
    for b in bytes.iter().take(MAX) {
        s.push_str(&format!("{b:02x}"));
    }
    if bytes.len() > MAX {
        s.push_str("...");
    }
    s
}
