//! What nodes send each other over the mesh (`Mesh::send_app`/`request_app`).
//!
//! SIP, the hot path, has its own compact framing: a format-version byte, a kind byte, for a
//! [`Internode::Deliver`] the flow, then the message's bytes as they are — no serialiser, one
//! copy. The listings an admin asks for go through `sipmesh_storage::codec`.

use serde::{Deserialize, Serialize};
use sipmesh_storage::codec;

use crate::call::flow_token::FlowRef;
use crate::sip::flow::Flow;

/// The format version of SIP frames.
const SIP_FORMAT: u8 = 1;
/// Kind byte: send these bytes down one of your flows, verbatim.
const KIND_DELIVER: u8 = b'D';
/// Kind byte: a SIP message for you to handle.
const KIND_SIP: u8 = b'S';

/// A SIP message between nodes.
#[derive(Debug, PartialEq, Eq)]
pub enum Internode<'a> {
    /// The sender (a stateful proxy) built the message as the receiver's phone must see it:
    /// send it down the receiver's `flow` as it is (the receiver is a relay for its flows).
    Deliver {
        /// The receiver's flow.
        flow: Flow,
        /// The message.
        bytes: &'a [u8],
    },
    /// A message for the receiver to handle as if it had arrived from the sender.
    Sip {
        /// The message.
        bytes: &'a [u8],
    },
}

impl Internode<'_> {
    /// The frame's bytes.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Internode::Deliver { flow, bytes } => {
                let mut out = Vec::with_capacity(bytes.len() + 32);
                out.push(SIP_FORMAT);
                out.push(KIND_DELIVER);
                crate::call::flow_token::put_flow(&mut out, &FlowRef::of(flow));
                out.extend_from_slice(bytes);
                out
            }
            Internode::Sip { bytes } => {
                let mut out = Vec::with_capacity(bytes.len() + 2);
                out.push(SIP_FORMAT);
                out.push(KIND_SIP);
                out.extend_from_slice(bytes);
                out
            }
        }
    }

    /// Read a frame; `None` if it is not a SIP frame of this version.
    pub fn decode(frame: &[u8]) -> Option<Internode<'_>> {
        match frame {
            [SIP_FORMAT, KIND_SIP, bytes @ ..] => Some(Internode::Sip { bytes }),
            [SIP_FORMAT, KIND_DELIVER, rest @ ..] => {
                let (flow, used) = crate::call::flow_token::read_flow(rest)?;
                Some(Internode::Deliver {
                    flow: flow.flow()?,
                    bytes: &rest[used..],
                })
            }
            _ => None,
        }
    }
}

/// A request between nodes that has an answer (admin listings).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum AppMessage {
    /// List the users whose partitions you hold (for a mesh-wide listing).
    ListUsers,
    /// The answer to `ListUsers`.
    Users(Vec<String>),
    /// List the dialogs you hold.
    ListDialogs,
    /// The answer to `ListDialogs`.
    Dialogs(Vec<crate::call::dialog::Listed>),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sip_frames_round_trip_and_junk_is_refused() {
        let flow = Flow::Tcp {
            conn: 42,
            peer: "192.0.2.7:5060".parse().unwrap(),
        };
        let d = Internode::Deliver {
            flow: flow.clone(),
            bytes: b"INVITE sip:x SIP/2.0\r\n\r\n",
        };
        assert_eq!(Internode::decode(&d.encode()), Some(d));
        let s = Internode::Sip {
            bytes: b"SIP/2.0 200 OK\r\n\r\n",
        };
        assert_eq!(Internode::decode(&s.encode()), Some(s));
        assert_eq!(Internode::decode(b""), None);
        assert_eq!(Internode::decode(&[SIP_FORMAT, KIND_DELIVER, 9]), None);
        assert_eq!(Internode::decode(&[2, KIND_SIP]), None);
        assert!(Internode::decode(&AppMessage::ListUsers.encode()).is_none());
    }
}
