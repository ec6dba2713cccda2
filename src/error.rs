//! The error type of the node crate.

/// `Result` with this crate's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong in a node.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The keyspace failed.
    #[error(transparent)]
    Storage(#[from] sipmesh_storage::Error),
    /// The mesh failed.
    #[error(transparent)]
    Net(#[from] sipmesh_net::Error),
    /// An I/O error, with what was being done.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// Bad configuration, naming the setting.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A node of a local mesh is not running.
    #[error("node {0} is not running")]
    NotRunning(usize),
}
