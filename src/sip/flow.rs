//! Flows (RFC 5626 §3.1): where a message came from, or goes to — a UDP peer, a TCP connection,
//! or another node of the mesh — and where the responses to a request go (RFC 3261 §18.2.2,
//! RFC 3581).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use sipmesh_net::PeerId;

use super::header::Via;

/// A flow.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Flow {
    /// A UDP peer address.
    Udp(SocketAddr),
    /// A TCP connection (by id) and its peer address.
    Tcp {
        /// The connection id (unique in this process).
        conn: u64,
        /// The peer's address.
        peer: SocketAddr,
    },
    /// Another mesh node, over the mesh's stream to it. `target` asks that node to send the
    /// message down one of its own flows (the flow a callee registered on).
    Mesh {
        /// The node.
        #[serde(with = "peer_bytes")]
        node: PeerId,
        /// The flow of that node to deliver to, if any.
        target: Option<Box<Flow>>,
    },
}

impl Flow {
    /// Whether the transport is reliable (no retransmissions needed).
    ///
    /// A mesh flow counts as unreliable: a one-way frame can be lost when a node-to-node stream
    /// is re-opened, so transactions over the mesh retransmit like UDP (duplicates are absorbed
    /// by the receiving node's transactions).
    pub fn is_reliable(&self) -> bool {
        matches!(self, Flow::Tcp { .. })
    }

    /// The peer's address (unspecified for a mesh flow).
    pub fn peer(&self) -> SocketAddr {
        match self {
            Flow::Udp(a) => *a,
            Flow::Tcp { peer, .. } => *peer,
            Flow::Mesh { .. } => SocketAddr::from(([0, 0, 0, 0], 0)),
        }
    }

    /// The Via transport token.
    pub fn transport(&self) -> &'static str {
        match self {
            Flow::Udp(_) => "UDP",
            Flow::Tcp { .. } | Flow::Mesh { .. } => "TCP",
        }
    }

    /// The mesh node of a mesh flow.
    pub fn mesh_node(&self) -> Option<&PeerId> {
        match self {
            Flow::Mesh { node, .. } => Some(node),
            _ => None,
        }
    }

    /// A flow to another mesh node, without a target flow.
    pub fn to_node(node: PeerId) -> Flow {
        Flow::Mesh { node, target: None }
    }

    /// Where responses to a request that arrived on this flow with top Via `via` go: the same
    /// connection on TCP and the mesh; on UDP the source address when `rport` was asked for (or
    /// `force_rport`), else the source IP and the Via's port.
    pub fn response_flow(&self, via: &Via, force_rport: bool) -> Flow {
        match self {
            Flow::Udp(src) if via.rport().is_none() && !force_rport => {
                Flow::Udp(SocketAddr::new(src.ip(), via.port.unwrap_or(5060)))
            }
            other => other.clone(),
        }
    }
}

/// Serde for a PeerId as its bytes (validated on decode), for records that name a node.
pub(crate) mod peer_bytes {
    use serde::{Deserialize, Deserializer, Serializer};
    use sipmesh_net::PeerId;

    /// Serialize as bytes.
    pub fn serialize<S: Serializer>(p: &PeerId, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&p.to_bytes())
    }

    /// Deserialize and validate.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PeerId, D::Error> {
        let bytes: serde_bytes::ByteBuf = Deserialize::deserialize(d)?;
        PeerId::from_bytes(&bytes).map_err(serde::de::Error::custom)
    }
}

/// Serde for a list of PeerIds, each as its bytes.
pub(crate) mod peers_bytes {
    use serde::ser::SerializeSeq;
    use serde::{Deserialize, Deserializer, Serializer};
    use sipmesh_net::PeerId;

    /// Serialize as a sequence of byte strings.
    pub fn serialize<S: Serializer>(peers: &[PeerId], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(peers.len()))?;
        for p in peers {
            seq.serialize_element(&serde_bytes::Bytes::new(&p.to_bytes()))?;
        }
        seq.end()
    }

    /// Deserialize and validate each.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<PeerId>, D::Error> {
        let raw: Vec<serde_bytes::ByteBuf> = Deserialize::deserialize(d)?;
        raw.iter()
            .map(|b| PeerId::from_bytes(b).map_err(serde::de::Error::custom))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mesh_flows_round_trip_with_their_peer_id() {
        let node = PeerId::random();
        let f = Flow::Mesh {
            node,
            target: Some(Box::new(Flow::Tcp {
                conn: 7,
                peer: "127.0.0.1:5060".parse().unwrap(),
            })),
        };
        let bytes = sipmesh_storage::codec::encode(&f).unwrap();
        let back: Flow = sipmesh_storage::codec::decode(&bytes, "flow", b"").unwrap();
        assert_eq!(back, f);
        assert_eq!(back.mesh_node(), Some(&node));
    }

    #[test]
    fn udp_responses_follow_rport_or_the_via_port() {
        let src: SocketAddr = "192.0.2.1:40000".parse().unwrap();
        let flow = Flow::Udp(src);
        let plain = Via::parse("SIP/2.0/UDP host:5070;branch=z9hG4bK1").unwrap();
        let rport = Via::parse("SIP/2.0/UDP host:5070;rport;branch=z9hG4bK1").unwrap();
        assert_eq!(
            flow.response_flow(&plain, false),
            Flow::Udp("192.0.2.1:5070".parse().unwrap())
        );
        assert_eq!(flow.response_flow(&rport, false), flow);
        assert_eq!(flow.response_flow(&plain, true), flow);
    }
}
