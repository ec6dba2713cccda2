//! Flow tokens (RFC 5626 §5.2): what a node of this mesh writes into the route set (Record-Route,
//! Path) and into the Vias it adds as a relay, so that any node can later route a message
//! without state — to the node that owns a flow, and out on that flow — and can tell a token of
//! this mesh from a forged one.
//!
//! A token is `base64url(kind ‖ fields ‖ MAC)`, the MAC being the first 8 bytes of
//! HMAC-SHA256 under the mesh secret over a domain string, the kind and fields, and whatever the
//! token is bound to (a Via's branch suffix). Nodes are named by [`NodeId`], the first 8 bytes
//! of their ring position, and flows by [`FlowRef`].
//!
//! In a route set a node writes one entry per flow it touches (RFC 5658 double
//! Record-Route): for a call between two of its own flows, two entries; for a call to another
//! node's flow, its own entry (the caller's flow) and, on the owner's behalf, the owner's entry
//! (the callee's flow). A request leaves on the flow of the last entry a node pops, unless
//! another node's entry follows.

use std::net::{IpAddr, SocketAddr};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use sipmesh_net::PeerId;

use crate::call::secret::MeshSecret;
use crate::sip::flow::{Flow, StreamKind};

/// Domain separation: no other MAC of the mesh secret can pass for a token.
const DOMAIN: &[u8] = b"sipmesh flow token v1";
/// Bytes of MAC a token carries.
const MAC_LEN: usize = 8;
/// The longest token we decode (a route entry with a TCP flow on IPv6 is 41 bytes of payload).
const MAX_TOKEN_CHARS: usize = 96;

/// A node, as tokens name it: the first 8 bytes of SHA-256 of its PeerId (its ring position).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NodeId(pub [u8; 8]);

impl NodeId {
    /// The id of a peer.
    pub fn of(peer: &PeerId) -> NodeId {
        let pos = sipmesh_net::placement::peer_position(peer);
        let mut id = [0u8; 8];
        id.copy_from_slice(&pos[..8]);
        NodeId(id)
    }
}

/// A flow at some node, as a token carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlowRef {
    /// No particular flow (the request goes by its Request-URI).
    None,
    /// A UDP peer.
    Udp(SocketAddr),
    /// A TCP connection and its peer.
    Tcp {
        /// The connection id at that node.
        conn: u64,
        /// The peer's address.
        peer: SocketAddr,
    },
    /// A TLS or WebSocket connection and its peer.
    Stream {
        /// Its transport.
        kind: StreamKind,
        /// The connection id at that node.
        conn: u64,
        /// The peer's address.
        peer: SocketAddr,
    },
}

/// A stream kind's tag byte in a token.
fn kind_byte(kind: StreamKind) -> u8 {
    match kind {
        StreamKind::Tls => 3,
        StreamKind::Ws => 4,
        StreamKind::Wss => 5,
    }
}

impl FlowRef {
    /// The reference to a flow of this node (a mesh flow is not referenced).
    pub fn of(flow: &Flow) -> FlowRef {
        match flow {
            Flow::Udp(a) => FlowRef::Udp(*a),
            Flow::Tcp { conn, peer } => FlowRef::Tcp {
                conn: *conn,
                peer: *peer,
            },
            Flow::Stream { kind, conn, peer } => FlowRef::Stream {
                kind: *kind,
                conn: *conn,
                peer: *peer,
            },
            Flow::Mesh { .. } => FlowRef::None,
        }
    }

    /// The flow it refers to, at the node that owns it.
    pub fn flow(&self) -> Option<Flow> {
        match self {
            FlowRef::None => None,
            FlowRef::Udp(a) => Some(Flow::Udp(*a)),
            FlowRef::Tcp { conn, peer } => Some(Flow::Tcp {
                conn: *conn,
                peer: *peer,
            }),
            FlowRef::Stream { kind, conn, peer } => Some(Flow::Stream {
                kind: *kind,
                conn: *conn,
                peer: *peer,
            }),
        }
    }
}

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Token {
    /// A route-set entry: the node that wrote it, and the flow it leads out on.
    Route {
        /// The node.
        node: NodeId,
        /// Its flow on the far side.
        flow: FlowRef,
    },
    /// A relay's Via, written by the node upstream: responses go back up to `node`.
    Up {
        /// The node the responses go to.
        node: NodeId,
    },
}

fn put_addr(out: &mut Vec<u8>, a: &SocketAddr) {
    match a.ip() {
        IpAddr::V4(ip) => {
            out.push(4);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(6);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&a.port().to_be_bytes());
}

/// Append a flow reference's bytes.
pub(crate) fn put_flow(out: &mut Vec<u8>, f: &FlowRef) {
    match f {
        FlowRef::None => out.push(0),
        FlowRef::Udp(a) => {
            out.push(1);
            put_addr(out, a);
        }
        FlowRef::Tcp { conn, peer } => {
            out.push(2);
            out.extend_from_slice(&conn.to_be_bytes());
            put_addr(out, peer);
        }
        FlowRef::Stream { kind, conn, peer } => {
            out.push(kind_byte(*kind));
            out.extend_from_slice(&conn.to_be_bytes());
            put_addr(out, peer);
        }
    }
}

/// A cursor over token bytes.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn byte(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn node(&mut self) -> Option<NodeId> {
        Some(NodeId(self.take(8)?.try_into().ok()?))
    }
    fn addr(&mut self) -> Option<SocketAddr> {
        let ip: IpAddr = match self.byte()? {
            4 => <[u8; 4]>::try_from(self.take(4)?).ok()?.into(),
            6 => <[u8; 16]>::try_from(self.take(16)?).ok()?.into(),
            _ => return None,
        };
        let port = u16::from_be_bytes(self.take(2)?.try_into().ok()?);
        Some(SocketAddr::new(ip, port))
    }
    fn flow(&mut self) -> Option<FlowRef> {
        Some(match self.byte()? {
            0 => FlowRef::None,
            1 => FlowRef::Udp(self.addr()?),
            2 => {
                let conn = u64::from_be_bytes(self.take(8)?.try_into().ok()?);
                FlowRef::Tcp {
                    conn,
                    peer: self.addr()?,
                }
            }
            b @ 3..=5 => {
                let kind = [StreamKind::Tls, StreamKind::Ws, StreamKind::Wss][usize::from(b - 3)];
                let conn = u64::from_be_bytes(self.take(8)?.try_into().ok()?);
                FlowRef::Stream {
                    kind,
                    conn,
                    peer: self.addr()?,
                }
            }
            _ => return None,
        })
    }
}

/// Read a flow reference at the start of `bytes`: the flow and how many bytes it took.
pub(crate) fn read_flow(bytes: &[u8]) -> Option<(FlowRef, usize)> {
    let mut r = Reader(bytes);
    let flow = r.flow()?;
    Some((flow, bytes.len() - r.0.len()))
}

impl Token {
    fn payload(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(48);
        match self {
            Token::Route { node, flow } => {
                out.push(b'R');
                out.extend_from_slice(&node.0);
                put_flow(&mut out, flow);
            }
            Token::Up { node } => {
                out.push(b'U');
                out.extend_from_slice(&node.0);
            }
        }
        out
    }

    /// The token's text, its MAC also covering `bound` (which is not carried).
    pub fn encode(&self, secret: &MeshSecret, bound: &[u8]) -> String {
        let mut bytes = self.payload();
        let mac = secret.mac(&[DOMAIN, &bytes, bound]);
        bytes.extend_from_slice(&mac[..MAC_LEN]);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// A token this mesh issued, bound to `bound`; `None` for anything else.
    pub fn decode(text: &str, secret: &MeshSecret, bound: &[u8]) -> Option<Token> {
        if text.len() > MAX_TOKEN_CHARS {
            return None;
        }
        let bytes = URL_SAFE_NO_PAD.decode(text).ok()?;
        if bytes.len() <= MAC_LEN {
            return None;
        }
        let (payload, mac) = bytes.split_at(bytes.len() - MAC_LEN);
        if !secret.verify(&[DOMAIN, payload, bound], mac) {
            return None;
        }
        let mut r = Reader(payload);
        let token = match r.byte()? {
            b'R' => Token::Route {
                node: r.node()?,
                flow: r.flow()?,
            },
            b'U' => Token::Up { node: r.node()? },
            _ => return None,
        };
        r.0.is_empty().then_some(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> MeshSecret {
        MeshSecret::new(b"k".to_vec())
    }

    #[test]
    fn tokens_round_trip() {
        let s = secret();
        let node = NodeId::of(&PeerId::random());
        let cases = [
            Token::Route {
                node,
                flow: FlowRef::Udp("192.0.2.1:5060".parse().unwrap()),
            },
            Token::Route {
                node,
                flow: FlowRef::Tcp {
                    conn: u64::MAX,
                    peer: "[2001:db8::1]:5061".parse().unwrap(),
                },
            },
            Token::Route {
                node,
                flow: FlowRef::None,
            },
            Token::Up { node },
            Token::Route {
                node,
                flow: FlowRef::Stream {
                    kind: StreamKind::Wss,
                    conn: 42,
                    peer: "[2001:db8::1]:443".parse().unwrap(),
                },
            },
            Token::Route {
                node,
                flow: FlowRef::Stream {
                    kind: StreamKind::Tls,
                    conn: 1,
                    peer: "192.0.2.1:5061".parse().unwrap(),
                },
            },
        ];
        for t in cases {
            let text = t.encode(&s, b"x");
            assert!(text.len() <= MAX_TOKEN_CHARS, "{text}");
            assert!(text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            assert_eq!(Token::decode(&text, &s, b"x"), Some(t));
        }
    }

    #[test]
    fn forged_tampered_or_rebound_tokens_are_refused() {
        let s = secret();
        let t = Token::Up {
            node: NodeId([1; 8]),
        };
        let text = t.encode(&s, b"branch-1");
        assert_eq!(Token::decode(&text, &s, b"branch-2"), None);
        assert_eq!(
            Token::decode(&text, &MeshSecret::new(b"other".to_vec()), b"branch-1"),
            None
        );
        let mut bytes = URL_SAFE_NO_PAD.decode(&text).unwrap();
        bytes[3] ^= 1;
        assert_eq!(
            Token::decode(&URL_SAFE_NO_PAD.encode(bytes), &s, b"branch-1"),
            None
        );
        for junk in ["", "x", "!!!!", &"A".repeat(500)] {
            assert_eq!(Token::decode(junk, &s, b""), None);
        }
    }
}
