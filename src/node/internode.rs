//! What nodes send each other.
//!
//! SIP, the hot path, has its own compact framing: a format-version byte, a kind byte, for a
//! [`Internode::Deliver`] the flow, then the message's bytes as they are — no serialiser, one
//! copy. A frame of a message small enough for one packet travels as a UDP datagram from SIP
//! port to SIP port, sealed ([`seal`], [`open`]): a magic byte no SIP, STUN or keepalive packet
//! starts with, the sender, a timestamp, the frame, and an HMAC under the mesh secret. Larger
//! ones ride the mesh's libp2p streams (Noise-encrypted, in order). Why datagrams: measured on
//! this box, a frame over a libp2p stream costs both nodes a Yamux and Noise pass and several
//! task hand-offs — about a third of a relaying node's CPU — where a datagram costs one
//! `sendto` and one `recvfrom`, as a phone's does. Only members hold the secret, so only
//! members' datagrams are taken; the timestamp bounds replays.
//!
//! The listings an admin asks for go through `sipmesh_storage::codec` over the streams.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sipmesh_net::{Mesh, PeerId};
use sipmesh_storage::codec;

use crate::call::flow_token::{FlowRef, NodeId};
use crate::call::secret::MeshSecret;
use crate::sip::flow::Flow;

/// The first byte of a datagram between nodes: a SIP message starts with a letter, STUN with
/// 0x00 or 0x01, a keepalive with CR or LF.
pub const DATAGRAM_MAGIC: u8 = 0xF5;
/// The largest SIP message sent as one datagram (what fits a 1,500-byte MTU with the
/// envelope); larger messages ride the streams.
pub const DATAGRAM_MAX_SIP: usize = 1300;
/// Datagrams older or newer than this (by the sender's clock) are refused: it bounds replays
/// and tolerates skewed clocks.
const DATAGRAM_MAX_SKEW_MS: u64 = 300_000;
/// What a datagram's MAC covers first.
const DATAGRAM_DOMAIN: &[u8] = b"sipmesh datagram v1";
/// Bytes of MAC a datagram carries.
const DATAGRAM_MAC: usize = 16;
/// Magic, sender, timestamp.
const DATAGRAM_HEADER: usize = 1 + 8 + 8;

/// Seal a frame into a datagram from node `from`, at `now_ms`.
pub fn seal(frame: &Internode<'_>, from: NodeId, now_ms: u64, secret: &MeshSecret) -> Vec<u8> {
    let mut out = Vec::with_capacity(DATAGRAM_HEADER + 32 + DATAGRAM_MAC + 1500);
    out.push(DATAGRAM_MAGIC);
    out.extend_from_slice(&from.0);
    out.extend_from_slice(&now_ms.to_be_bytes());
    frame.encode_into(&mut out);
    let mac = secret.mac(&[DATAGRAM_DOMAIN, &out]);
    out.extend_from_slice(&mac[..DATAGRAM_MAC]);
    out
}

/// Open a datagram a member sealed: its sender and frame; `None` for anything else (forged,
/// stale, malformed).
pub fn open<'a>(
    datagram: &'a [u8],
    now_ms: u64,
    secret: &MeshSecret,
) -> Option<(NodeId, Internode<'a>)> {
    if datagram.len() < DATAGRAM_HEADER + 2 + DATAGRAM_MAC || datagram[0] != DATAGRAM_MAGIC {
        return None;
    }
    let (body, mac) = datagram.split_at(datagram.len() - DATAGRAM_MAC);
    if !secret.verify(&[DATAGRAM_DOMAIN, body], mac) {
        return None;
    }
    let from = NodeId(body[1..9].try_into().ok()?);
    let sent = u64::from_be_bytes(body[9..17].try_into().ok()?);
    if sent.abs_diff(now_ms) > DATAGRAM_MAX_SKEW_MS {
        return None;
    }
    Some((from, Internode::decode(&body[DATAGRAM_HEADER..])?))
}

/// The format version of SIP frames.
const SIP_FORMAT: u8 = 1;
/// Kind byte: send these bytes down one of your flows, verbatim.
const KIND_DELIVER: u8 = b'D';
/// Kind byte: a SIP message for you to handle.
const KIND_SIP: u8 = b'S';
/// Kind byte: a mesh frame (membership: SWIM, heartbeats) for the mesh layer.
const KIND_MESH: u8 = b'M';
/// Kind byte: a sealed datagram to pass on to a member the sender cannot reach directly.
const KIND_FORWARD: u8 = b'F';
/// Kind byte: answer me directly (is the way between us open?).
const KIND_PING: u8 = b'P';
/// Kind byte: the answer to a ping.
const KIND_PONG: u8 = b'Q';

/// The largest SIP message sent through another node (a forwarded datagram): larger than
/// [`DATAGRAM_MAX_SIP`], as a cut leaves no stream to fall back on; such a datagram is
/// fragmented by IP on a 1,500-byte path.
pub const FORWARD_MAX_SIP: usize = 8_000;

/// The tag naming which mesh secret a node seals datagrams with ([`MeshSecret::key_id`]):
/// membership goes by datagram only to members that publish the same, so nodes still
/// converging on one secret keep to the streams rather than lose each other's probes.
pub const KEY_ID_TAG: &str = "dg";

/// A member's address for datagrams from its tags: `sip_ip` (an IP address and port), else
/// `sip` if that is one.
pub fn datagram_addr(tag: &dyn Fn(&str) -> Option<String>) -> Option<SocketAddr> {
    tag("sip_ip")
        .and_then(|s| s.parse().ok())
        .or_else(|| tag("sip").and_then(|s| s.trim_start_matches("sip:").parse().ok()))
}

/// How long a member's SIP address is reused before its tags are read again.
const ADDR_TTL: Duration = Duration::from_secs(10);

/// The SIP addresses members publish (their `sip` tag), where datagrams go.
pub struct Members {
    mesh: Mesh,
    cache: Mutex<HashMap<PeerId, (SocketAddr, Instant)>>,
}

impl Members {
    /// Addresses from `mesh`'s membership.
    pub fn new(mesh: Mesh) -> Self {
        Members {
            mesh,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// A member's SIP address, if it publishes one as an IP address and port.
    pub fn sip_addr(&self, peer: &PeerId) -> Option<SocketAddr> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((addr, at)) = cache.get(peer) {
            if at.elapsed() < ADDR_TTL {
                return Some(*addr);
            }
        }
        // Not known yet is not remembered: a member's tags arrive with its first heartbeat.
        let addr = datagram_addr(&|name| self.mesh.tag(peer, name))?;
        if cache.len() >= MAX_CACHED_ADDRS {
            cache.clear();
        }
        cache.insert(*peer, (addr, Instant::now()));
        Some(addr)
    }
}

/// Members whose address is cached at most.
const MAX_CACHED_ADDRS: usize = 100_000;

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
    /// A mesh frame for the receiver's mesh layer ([`sipmesh_net::Mesh::on_datagram`]):
    /// membership rides the sealed datagrams, so it needs no connection.
    Mesh {
        /// The frame.
        bytes: &'a [u8],
    },
    /// A datagram ([`seal`]ed by its origin) for member `to`, which the origin cannot reach
    /// directly: a node that is not `to` passes it on (once), and `to` opens it as if it had
    /// come from the origin itself.
    Forward {
        /// The member it is for.
        to: NodeId,
        /// The origin's sealed datagram.
        datagram: &'a [u8],
    },
    /// Answer with a [`Internode::Pong`] datagram straight to the sender: it checks that the
    /// way between the two is open before it sends traffic (`sipmesh_net::Mesh::before_send`).
    Ping,
    /// The answer to a ping.
    Pong,
}

impl Internode<'_> {
    /// The frame's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.bytes().len() + 32);
        self.encode_into(&mut out);
        out
    }

    /// Append the frame's bytes.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.push(SIP_FORMAT);
        match self {
            Internode::Deliver { flow, bytes } => {
                out.push(KIND_DELIVER);
                crate::call::flow_token::put_flow(out, &FlowRef::of(flow));
                out.extend_from_slice(bytes);
            }
            Internode::Sip { bytes } => {
                out.push(KIND_SIP);
                out.extend_from_slice(bytes);
            }
            Internode::Mesh { bytes } => {
                out.push(KIND_MESH);
                out.extend_from_slice(bytes);
            }
            Internode::Forward { to, datagram } => {
                out.push(KIND_FORWARD);
                out.extend_from_slice(&to.0);
                out.extend_from_slice(datagram);
            }
            Internode::Ping => out.push(KIND_PING),
            Internode::Pong => out.push(KIND_PONG),
        }
    }

    /// The SIP message it carries.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Internode::Deliver { bytes, .. }
            | Internode::Sip { bytes }
            | Internode::Mesh { bytes }
            | Internode::Forward {
                datagram: bytes, ..
            } => bytes,
            Internode::Ping | Internode::Pong => &[],
        }
    }

    /// Read a frame; `None` if it is not a SIP frame of this version.
    pub fn decode(frame: &[u8]) -> Option<Internode<'_>> {
        match frame {
            [SIP_FORMAT, KIND_SIP, bytes @ ..] => Some(Internode::Sip { bytes }),
            [SIP_FORMAT, KIND_MESH, bytes @ ..] => Some(Internode::Mesh { bytes }),
            [SIP_FORMAT, KIND_PING] => Some(Internode::Ping),
            [SIP_FORMAT, KIND_PONG] => Some(Internode::Pong),
            [SIP_FORMAT, KIND_FORWARD, rest @ ..] if rest.len() > 8 => {
                let (to, datagram) = rest.split_at(8);
                Some(Internode::Forward {
                    to: NodeId(to.try_into().ok()?),
                    datagram,
                })
            }
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

/// What a node does with a forwarded datagram ([`Internode::Forward`]) that member `sender`
/// sent it for member `to`, whose inner datagram `origin` sealed.
#[derive(Debug, PartialEq, Eq)]
pub enum ForwardVerdict {
    /// It is for this node: handle the inner frame as from `origin`.
    Open,
    /// Pass it on to `to` (once: the next node opens it).
    PassOn,
    /// Drop it.
    Refuse,
}

/// The rules for a forwarded datagram received by node `me`: never a forward inside a forward
/// (one hop only); a node passes on only what the sender sealed itself.
pub fn forward_verdict(
    me: NodeId,
    sender: NodeId,
    to: NodeId,
    origin: NodeId,
    inner: &Internode<'_>,
) -> ForwardVerdict {
    if matches!(inner, Internode::Forward { .. }) {
        ForwardVerdict::Refuse
    } else if to == me {
        ForwardVerdict::Open
    } else if origin == sender && to != sender {
        ForwardVerdict::PassOn
    } else {
        ForwardVerdict::Refuse
    }
}

/// A request between nodes that has an answer (admin listings).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum AppMessage {
    /// List the users whose partitions you hold (from nodes before paged listings; answered
    /// with the first page of at most [`USERS_PAGE_MAX`]).
    ListUsers,
    /// The answer to `ListUsers`.
    Users(Vec<String>),
    /// List the dialogs you hold (from nodes before paged listings; answered with the first
    /// page of at most [`DIALOGS_PAGE_MAX`]).
    ListDialogs,
    /// The answer to `ListDialogs`.
    Dialogs(Vec<crate::call::dialog::Listed>),
    /// End this dialog (an operator's request): you hold it.
    EndDialog(String),
    /// The answer to `EndDialog`: whether it was found and ended.
    Ended(bool),
    /// List a page of the users whose partitions you hold: at most `limit` (capped at
    /// [`USERS_PAGE_MAX`]), in token order after user `after`.
    ListUsersAfter {
        /// Where the page starts (after this user); `None`: from the first.
        after: Option<String>,
        /// How many at most.
        limit: u32,
    },
    /// The answer to `ListUsersAfter`: the names, and whether there may be more.
    UsersPage {
        /// Names in token order (some may be of users deleted since).
        users: Vec<String>,
        /// Whether there may be more after the last.
        more: bool,
    },
    /// List a page of the dialogs you know of: at most `limit` (capped at
    /// [`DIALOGS_PAGE_MAX`]), by id after `after`.
    ListDialogsAfter {
        /// Where the page starts (after this id); `None`: from the first.
        after: Option<String>,
        /// How many at most.
        limit: u32,
    },
    /// The answer to `ListDialogsAfter`.
    DialogsPage {
        /// The dialogs, by id.
        dialogs: Vec<crate::call::dialog::Listed>,
        /// Whether there are more after the last.
        more: bool,
    },
    /// The dialog with this id, if you know of it.
    FindDialog(String),
    /// The answer to `FindDialog`.
    Found(Option<Box<crate::call::dialog::Listed>>),
}

/// Dialogs one page of a listing holds at most (~1 KB each encoded: a few MB a frame, far
/// below the frame limit, however many calls a node carries).
pub const DIALOGS_PAGE_MAX: usize = 2_000;

/// Users one page of a listing holds at most (a frame of ~64 bytes a name: far below any
/// frame limit).
pub const USERS_PAGE_MAX: usize = 10_000;

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
        let m = Internode::Mesh { bytes: &[1, 2, 3] };
        assert_eq!(Internode::decode(&m.encode()), Some(m));
        let f = Internode::Forward {
            to: NodeId([3; 8]),
            datagram: &[DATAGRAM_MAGIC, 1, 2],
        };
        assert_eq!(Internode::decode(&f.encode()), Some(f));
        assert_eq!(Internode::decode(&[SIP_FORMAT, KIND_FORWARD, 1, 2]), None);
        for p in [Internode::Ping, Internode::Pong] {
            assert_eq!(Internode::decode(&p.encode()), Some(p));
        }
        assert_eq!(Internode::decode(&[SIP_FORMAT, KIND_PING, 0]), None);
        assert_eq!(Internode::decode(b""), None);
        assert_eq!(Internode::decode(&[SIP_FORMAT, KIND_DELIVER, 9]), None);
        assert_eq!(Internode::decode(&[2, KIND_SIP]), None);
        assert!(Internode::decode(&AppMessage::ListUsers.encode()).is_none());
    }

    #[test]
    fn a_forward_is_passed_on_once_and_only_for_its_own_sender() {
        let (me, a, b) = (NodeId([1; 8]), NodeId([2; 8]), NodeId([3; 8]));
        let sip = Internode::Sip { bytes: b"x" };
        let nested = Internode::Forward {
            to: b,
            datagram: b"y",
        };
        use ForwardVerdict::*;
        // A sends through me to B what A sealed: passed on; B opens it.
        assert_eq!(forward_verdict(me, a, b, a, &sip), PassOn);
        assert_eq!(forward_verdict(me, a, me, a, &sip), Open);
        // Relayed by another member to me: opened as from its origin.
        assert_eq!(forward_verdict(me, b, me, a, &sip), Open);
        // A datagram someone else sealed (a captured one), or one back to its sender: no.
        assert_eq!(forward_verdict(me, a, b, b, &sip), Refuse);
        assert_eq!(forward_verdict(me, a, a, a, &sip), Refuse);
        // A forward inside a forward: never, wherever it is going.
        assert_eq!(forward_verdict(me, a, b, a, &nested), Refuse);
        assert_eq!(forward_verdict(me, a, me, a, &nested), Refuse);
    }

    #[test]
    fn datagrams_open_only_when_sealed_by_the_mesh_and_fresh() {
        let secret = MeshSecret::new(b"k".to_vec());
        let from = NodeId([7; 8]);
        let frame = Internode::Sip {
            bytes: b"SIP/2.0 180 Ringing\r\n\r\n",
        };
        let d = seal(&frame, from, 1_000_000, &secret);
        assert_eq!(d[0], DATAGRAM_MAGIC);
        assert_eq!(open(&d, 1_000_500, &secret), Some((from, frame)));
        // Another mesh's secret, a flipped bit, a stale or future timestamp: refused.
        assert_eq!(
            open(&d, 1_000_500, &MeshSecret::new(b"other".to_vec())),
            None
        );
        let mut bad = d.clone();
        bad[20] ^= 1;
        assert_eq!(open(&bad, 1_000_500, &secret), None);
        assert_eq!(
            open(&d, 1_000_000 + DATAGRAM_MAX_SKEW_MS + 1, &secret),
            None
        );
        assert_eq!(
            open(&d, 1_000_000 - DATAGRAM_MAX_SKEW_MS - 1, &secret),
            None
        );
        assert_eq!(open(&d[..10], 1_000_500, &secret), None);
    }
}
