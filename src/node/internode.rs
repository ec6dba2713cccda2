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
    /// A SIP message between nodes; `target` asks the receiver to send it down one of its own
    /// flows (the flow a callee registered on).
    Sip {
        /// The message bytes.
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
        /// The receiver's flow to deliver it on.
        target: Option<crate::sip::flow::Flow>,
    },
    /// List the dialogs whose partitions you hold.
    ListDialogs,
    /// The answer to `ListDialogs`: encoded dialog records.
    Dialogs(Vec<Vec<u8>>),
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
