//! The frames between nodes, on the stream protocol [`PROTOCOL`].
//!
//! A frame on the wire is a 4-byte big-endian length, then the frame encoded by
//! `sipmesh_storage::codec` (format-version byte + bincode). Frames above [`MAX_FRAME`] are a
//! protocol error and end the stream. Each frame carries a request id, so many requests are in
//! flight on one stream and responses may come back in any order.

use std::collections::BTreeMap;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use serde::{Deserialize, Serialize};
use sipmesh_storage::{
    codec, Ballot, Cell, EntryKey, Mutation, PartitionDigest, Promise, TableId, Timestamp,
};

use crate::error::{Error, Result};

/// The versioned protocol id of sipmesh's node-to-node streams.
pub const PROTOCOL: libp2p::StreamProtocol = libp2p::StreamProtocol::new("/sipmesh/mesh/5");
/// Largest frame accepted (anti-entropy chunks are cut well below it).
pub const MAX_FRAME: usize = 16 * 1024 * 1024;
/// Target size of one page of a partition (anti-entropy, handoff): a partition of any width
/// travels in pages, so no frame grows with it.
pub const PAGE_BYTES: usize = 256 * 1024;
/// Partition digests per page.
pub const DIGESTS_PER_PAGE: usize = 2_000;

/// A frame: a request, its response, or a one-way message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Frame {
    /// A request expecting a [`Response`] with the same id.
    Request(u64, Request),
    /// The response to request `id`.
    Response(u64, Response),
    /// A message without response (the node's SIP traffic).
    OneWay(Request),
}

/// A member's self-description, sent in heartbeats.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// PeerId bytes.
    #[serde(with = "serde_bytes")]
    pub peer_id: Vec<u8>,
    /// Its listen addresses (multiaddr strings).
    pub addrs: Vec<String>,
    /// Increases on every start of the node.
    pub generation: u64,
    /// Application tags.
    pub tags: BTreeMap<String, String>,
    /// The sender's wall clock when it sent this (ms since the Unix epoch; 0: unknown).
    /// Members compare it with their own to find a node whose clock is off.
    pub wall_ms: u64,
    /// Its signed membership credential (`admission`); empty in a mesh without enrollment.
    #[serde(with = "serde_bytes")]
    pub credential: Vec<u8>,
    /// It is bootstrapping: it takes writes for the ranges it will own, and answers no reads
    /// for them until it has streamed them (`placement::Standing`).
    pub joining: bool,
    /// It is handing its ranges over before it leaves: writes also reach the replicas they
    /// will have without it.
    pub leaving: bool,
}

/// What a heartbeat says about another member (for discovery and to spread state).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gossip {
    /// PeerId bytes.
    #[serde(with = "serde_bytes")]
    pub peer_id: Vec<u8>,
    /// Its addresses.
    pub addrs: Vec<String>,
    /// Its generation as known to the sender.
    pub generation: u64,
    /// Whether it left gracefully.
    pub left: bool,
}

/// A request between nodes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    /// Liveness and membership: the sender's info and what it knows of others.
    Heartbeat {
        /// The sender.
        info: MemberInfo,
        /// Other members the sender knows.
        gossip: Vec<Gossip>,
    },
    /// The sender leaves the mesh gracefully.
    Leave {
        /// The generation that leaves.
        generation: u64,
    },
    /// Apply a mutation (a replica write, a read repair, a hint).
    Write(Mutation),
    /// Return every cell of a partition.
    Read {
        /// The table.
        table: TableId,
        /// The partition key.
        #[serde(with = "serde_bytes")]
        partition_key: Vec<u8>,
    },
    /// Return the hashes of these Merkle leaves and when each last changed.
    Leaves(Vec<u32>),
    /// Return the digests of the partitions in a leaf, after partition `after`, a page of at
    /// most [`DIGESTS_PER_PAGE`].
    Digests {
        /// The leaf.
        leaf: u32,
        /// Resume after this partition.
        after: Option<(TableId, Vec<u8>)>,
    },
    /// Return a page of a partition's entries (about [`PAGE_BYTES`]), after raw key `after`.
    Page {
        /// The table.
        table: TableId,
        /// The partition key.
        #[serde(with = "serde_bytes")]
        partition_key: Vec<u8>,
        /// Resume after this raw key.
        after: Option<Vec<u8>>,
    },
    /// Apply these mutations, keeping only partitions this node is a replica of when `owned_only`.
    Push {
        /// The mutations.
        mutations: Vec<Mutation>,
        /// Filter by ownership (anti-entropy) or apply all (handoff to a chosen replica).
        owned_only: bool,
    },
    /// Opaque application bytes (the node's SIP traffic).
    App(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The sender stops in place (a restart, an upgrade): mark it down now, keep its ring place.
    Stopping {
        /// The generation that stops.
        generation: u64,
    },
    /// Tombstone collection, phase 1: which of these tombstones the replica holds (or something
    /// newer). Answered with [`Response::Held`].
    Held {
        /// The table.
        table: TableId,
        /// The partition key.
        #[serde(with = "serde_bytes")]
        partition_key: Vec<u8>,
        /// The tombstones.
        entries: Vec<(EntryKey, Timestamp)>,
    },
    /// Tombstone collection, phase 2: every replica holds these; purge them where they are
    /// exactly as given.
    Purge {
        /// The table.
        table: TableId,
        /// The partition key.
        #[serde(with = "serde_bytes")]
        partition_key: Vec<u8>,
        /// The tombstones.
        entries: Vec<(EntryKey, Timestamp)>,
    },
    /// A SWIM message (probe, ack, indirect probe, gossip, announce; `membership::swim`),
    /// one-way.
    Swim(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Pass `request` on to member `to` and answer with its answer: a route around a missing
    /// direct connection (the sender could not reach `to`; `relay`). Only reads and writes
    /// are relayed, one hop.
    Relay {
        /// The member to pass it to (PeerId bytes).
        #[serde(with = "serde_bytes")]
        to: Vec<u8>,
        /// The request.
        request: Box<Request>,
    },
    // New variants go last: the encoding numbers variants in order (mixed-version meshes).
    /// Claims, phase 1 (Paxos prepare, `claim`): promise `ballot` for `key`. Answered with
    /// [`Response::Promise`].
    Prepare {
        /// The claim's key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// The proposer's ballot.
        ballot: Ballot,
    },
    /// Claims, phase 2 (Paxos accept): accept `value` for `key` under `ballot`. Answered with
    /// [`Response::Accepted`].
    Propose {
        /// The claim's key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// The ballot the replica promised.
        ballot: Ballot,
        /// The value proposed.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// An operator removes the dead member `removing` (`mesh remove`, Cassandra's removenode):
    /// mark it leaving (writes also reach the replicas its ranges will have), then stream with
    /// every fellow replica; answered once done, so the removal completes only when the
    /// members that take its ranges over hold them.
    Resync {
        /// The member being removed (PeerId bytes).
        #[serde(with = "serde_bytes")]
        removing: Vec<u8>,
    },
}

impl Request {
    /// Whether a request may be relayed ([`Request::Relay`]): replica reads and writes.
    pub fn relayable(&self) -> bool {
        matches!(
            self,
            Request::Read { .. }
                | Request::Write(_)
                | Request::Prepare { .. }
                | Request::Propose { .. }
                | Request::Push {
                    owned_only: false,
                    ..
                }
        )
    }
}

/// A response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Response {
    /// Done.
    Ack,
    /// The responder's own info (answer to a heartbeat).
    Member(MemberInfo),
    /// Cells of a partition.
    Entries(Vec<(EntryKey, Cell)>),
    /// Leaf hashes and last-change times (ms), in the order asked.
    Leaves(Vec<(u64, u64)>),
    /// A page of partition digests; `next` says where to resume, if anything is left.
    Digests {
        /// The digests.
        digests: Vec<PartitionDigest>,
        /// Resume after this partition.
        next: Option<(TableId, Vec<u8>)>,
    },
    /// A page of a partition's entries; `next` says where to resume.
    Page {
        /// The entries.
        entries: Vec<(EntryKey, Cell)>,
        /// Resume after this raw key.
        next: Option<Vec<u8>>,
    },
    /// Opaque application bytes.
    App(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Whether the responder holds each tombstone asked about, in order.
    Held(Vec<bool>),
    /// The request failed at the responder.
    Error(String),
    /// A replica's promise (or refusal) for a claim's ballot.
    Promise(Promise),
    /// Whether a replica accepted a claim's proposal, and the highest ballot it promised.
    Accepted {
        /// Accepted.
        accepted: bool,
        /// The highest ballot promised.
        promised: Ballot,
    },
}

impl Request {
    /// A short name for logs and spans.
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Heartbeat { .. } => "heartbeat",
            Request::Leave { .. } => "leave",
            Request::Write(_) => "write",
            Request::Read { .. } => "read",
            Request::Leaves(_) => "leaves",
            Request::Digests { .. } => "digests",
            Request::Page { .. } => "page",
            Request::Push { .. } => "push",
            Request::App(_) => "app",
            Request::Stopping { .. } => "stopping",
            Request::Held { .. } => "held",
            Request::Purge { .. } => "purge",
            Request::Swim(_) => "swim",
            Request::Relay { .. } => "relay",
            Request::Prepare { .. } => "prepare",
            Request::Propose { .. } => "propose",
            Request::Resync { .. } => "resync",
        }
    }
}

/// Encode a frame with its length prefix.
pub fn encode_frame(frame: &Frame) -> Result<Vec<u8>> {
    let mut out = vec![0u8; 4];
    codec::encode_into(frame, &mut out)?;
    let len = out.len() - 4;
    if len > MAX_FRAME {
        return Err(Error::Protocol(format!(
            "frame of {len} bytes exceeds {MAX_FRAME}"
        )));
    }
    out[..4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(out)
}

/// Read one frame; `Ok(None)` at a clean end of stream.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
) -> Result<Option<Frame>> {
    let mut len = [0u8; 4];
    match reader.read_exact(&mut len).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(Error::Protocol(format!("read: {e}"))),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(Error::Protocol(format!(
            "frame of {len} bytes exceeds {MAX_FRAME}"
        )));
    }
    buf.resize(len, 0);
    reader
        .read_exact(buf)
        .await
        .map_err(|e| Error::Protocol(format!("read: {e}")))?;
    Ok(Some(codec::decode(buf, "frame", b"")?))
}

/// Write already-encoded frames and flush.
pub async fn write_all<W: AsyncWrite + Unpin>(writer: &mut W, bytes: &[u8]) -> Result<()> {
    writer
        .write_all(bytes)
        .await
        .map_err(|e| Error::Protocol(format!("write: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_are_bounded() {
        let f = Frame::Request(
            7,
            Request::App(b"INVITE sip:bob@x SIP/2.0\r\n\r\n".to_vec()),
        );
        let bytes = encode_frame(&f).unwrap();
        let mut reader = futures::io::Cursor::new(bytes.clone());
        let mut buf = Vec::new();
        let back = futures::executor::block_on(read_frame(&mut reader, &mut buf))
            .unwrap()
            .unwrap();
        assert!(matches!(back, Frame::Request(7, Request::App(b)) if b.starts_with(b"INVITE")));
        // a huge length prefix is refused before allocating
        let mut huge = (u32::MAX).to_be_bytes().to_vec();
        huge.extend_from_slice(&[0; 16]);
        let mut reader = futures::io::Cursor::new(huge);
        assert!(futures::executor::block_on(read_frame(&mut reader, &mut buf)).is_err());
        // garbage after a valid length is a protocol error, not a panic
        let mut garbage = 5u32.to_be_bytes().to_vec();
        garbage.extend_from_slice(&[1, 0xFF, 0xFF, 0xFF, 0xFF]);
        let mut reader = futures::io::Cursor::new(garbage);
        assert!(futures::executor::block_on(read_frame(&mut reader, &mut buf)).is_err());
    }
}
