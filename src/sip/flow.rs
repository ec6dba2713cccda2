//! Flows (RFC 5626 §3.1): where a message came from, or goes to — a UDP peer, a TCP, TLS or
//! WebSocket connection, or another node of the mesh — and where the responses to a request go (RFC 3261 §18.2.2,
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
    /// A TLS, WebSocket or secure WebSocket connection (by id) and its peer address. Plain TCP
    /// keeps its own variant: flows are stored in bindings, and new variants go last so that
    /// stored ones still decode.
    Stream {
        /// Which transport the connection carries.
        kind: StreamKind,
        /// The connection id (unique in this process, shared with TCP's ids).
        conn: u64,
        /// The peer's address.
        peer: SocketAddr,
    },
}

/// The connection-oriented transports beside plain TCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StreamKind {
    /// SIP over TLS (RFC 3261 §26, `sips:`).
    Tls,
    /// SIP over WebSocket (RFC 7118).
    Ws,
    /// SIP over secure WebSocket (RFC 7118).
    Wss,
}

impl StreamKind {
    /// The Via transport token.
    pub fn via(self) -> &'static str {
        match self {
            StreamKind::Tls => "TLS",
            StreamKind::Ws => "WS",
            StreamKind::Wss => "WSS",
        }
    }

    /// The URI `transport` parameter value.
    pub fn param(self) -> &'static str {
        match self {
            StreamKind::Tls => "tls",
            StreamKind::Ws => "ws",
            StreamKind::Wss => "wss",
        }
    }

    /// Whether messages on it are framed by WebSocket (not by Content-Length).
    pub fn is_websocket(self) -> bool {
        matches!(self, StreamKind::Ws | StreamKind::Wss)
    }
}

impl Flow {
    /// Whether the transport is reliable (no retransmissions needed).
    ///
    /// A mesh flow counts as unreliable: a one-way frame can be lost when a node-to-node stream
    /// is re-opened, so transactions over the mesh retransmit like UDP (duplicates are absorbed
    /// by the receiving node's transactions).
    pub fn is_reliable(&self) -> bool {
        matches!(self, Flow::Tcp { .. } | Flow::Stream { .. })
    }

    /// Whether messages on it are framed by Content-Length (TCP and TLS), so a message parsed
    /// from it must carry one. A WebSocket message or a datagram is whole by itself.
    pub fn is_stream(&self) -> bool {
        match self {
            Flow::Tcp { .. } => true,
            Flow::Stream { kind, .. } => !kind.is_websocket(),
            Flow::Udp(_) | Flow::Mesh { .. } => false,
        }
    }

    /// A connection's id and peer (TCP, TLS, WS, WSS).
    pub fn conn(&self) -> Option<(u64, SocketAddr)> {
        match self {
            Flow::Tcp { conn, peer } | Flow::Stream { conn, peer, .. } => Some((*conn, *peer)),
            Flow::Udp(_) | Flow::Mesh { .. } => None,
        }
    }

    /// The kind of a TLS or WebSocket flow.
    pub fn stream_kind(&self) -> Option<StreamKind> {
        match self {
            Flow::Stream { kind, .. } => Some(*kind),
            _ => None,
        }
    }

    /// The URI `transport` parameter that leads to this flow's transport (`None`: UDP).
    pub fn uri_transport(&self) -> Option<&'static str> {
        match self {
            Flow::Udp(_) | Flow::Mesh { .. } => None,
            Flow::Tcp { .. } => Some("tcp"),
            Flow::Stream { kind, .. } => Some(kind.param()),
        }
    }

    /// The peer's address (unspecified for a mesh flow).
    pub fn peer(&self) -> SocketAddr {
        match self {
            Flow::Udp(a) => *a,
            Flow::Tcp { peer, .. } | Flow::Stream { peer, .. } => *peer,
            Flow::Mesh { .. } => SocketAddr::from(([0, 0, 0, 0], 0)),
        }
    }

    /// The Via transport token.
    pub fn transport(&self) -> &'static str {
        match self {
            Flow::Udp(_) => "UDP",
            Flow::Tcp { .. } | Flow::Mesh { .. } => "TCP",
            Flow::Stream { kind, .. } => kind.via(),
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
        let ws = Flow::Mesh {
            node,
            target: Some(Box::new(Flow::Stream {
                kind: StreamKind::Wss,
                conn: 9,
                peer: "[::1]:443".parse().unwrap(),
            })),
        };
        let bytes = sipmesh_storage::codec::encode(&ws).unwrap();
        let back: Flow = sipmesh_storage::codec::decode(&bytes, "flow", b"").unwrap();
        assert_eq!(back, ws);
    }

    #[test]
    fn a_flow_stored_before_tls_and_websocket_still_decodes() {
        // The encoding of Flow::Tcp { conn: 7, peer: 127.0.0.1:5060 } as bindings stored it.
        let tcp = Flow::Tcp {
            conn: 7,
            peer: "127.0.0.1:5060".parse().unwrap(),
        };
        let bytes = sipmesh_storage::codec::encode(&tcp).unwrap();
        assert_eq!(bytes[0], 1, "Tcp keeps variant index 1");
        let back: Flow = sipmesh_storage::codec::decode(&bytes, "flow", b"").unwrap();
        assert_eq!(back, tcp);
        let ws = Flow::Stream {
            kind: StreamKind::Ws,
            conn: 1,
            peer: "127.0.0.1:1".parse().unwrap(),
        };
        assert!(ws.is_reliable() && !ws.is_stream());
        assert_eq!(ws.transport(), "WS");
        assert_eq!(ws.uri_transport(), Some("ws"));
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
