//! The node-to-node application protocol carried by `Mesh::send_app`/`request_app`: one enum,
//! encoded by `sipmesh_storage::codec` (format-version byte + bincode).

use serde::{Deserialize, Serialize};
use sipmesh_storage::codec;

/// A message from one node to another.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum AppMessage {
    /// List the users whose partitions you hold (for a mesh-wide listing).
    ListUsers,
    /// The answer to `ListUsers`.
    Users(Vec<String>),
}

impl AppMessage {
    /// Encode.
    pub fn encode(&self) -> Vec<u8> {
        codec::encode(self).unwrap_or_default()
    }
    /// Decode; `None` for bytes that are not a message of this version.
    pub fn decode(bytes: &[u8]) -> Option<AppMessage> {
        codec::decode(bytes, "app message", b"").ok()
    }
}
