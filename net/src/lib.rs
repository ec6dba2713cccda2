//! `sipmesh-net`: the libp2p peer of a sipmesh node — transport, discovery, membership, replica
//! placement and the replication protocol that makes every node's keyspace one keyspace.
//!
//! # Layout
//! - [`admission`]: signed enrollment: membership credentials, roles, revocations.
//! - [`config`]: every knob of the mesh, with defaults.
//! - [`protocol`]: the frames that travel between nodes (versioned, bincode, size-bounded).
//! - [`link`]: long-lived libp2p streams per peer pair, many requests in flight on each.
//! - [`peer`]: the task that owns the libp2p `Swarm` (TCP + Noise + Yamux, optional private-network
//!   key, Kademlia, identify, ping, connection limits) and the commands it takes.
//! - `kad_gate`: Kademlia answers only admitted members (under signed enrollment).
//! - [`membership`]: who is in the mesh, heartbeats, failure detection, generations, leave.
//! - [`placement`]: which members hold a partition (XOR-closest, as Kademlia).
//! - `quorum`: asking several replicas at once, deciding on the first quorum.
//! - `claim`: a value decided once per key by a majority of its replicas (Paxos, as
//!   Cassandra's lightweight transactions): compare-and-set between nodes.
//! - `gc`: tombstones purged only once every replica holds them (two-phase, as Garage).
//! - `group_commit`: acknowledged writes are on disk; concurrent writes share one flush.
//! - [`replication`]: the coordinator (consistency levels, read repair, hints) and the replica side.
//! - [`anti_entropy`]: Merkle comparison between replicas, streaming of differences, handoff.
//! - `bootstrap`: a new member streams the ranges it will own before it answers reads.
//! - [`mesh`]: [`Mesh`], the handle the node uses.
//! - [`shutdown`]: background loops that stop on one signal.
//! - [`stats`]: what the mesh layer measures, for the node's Prometheus registry.
//!
//! This crate knows nothing of SIP: the node's own traffic rides [`Mesh::send_app`] as opaque bytes.

pub mod admission;
pub(crate) mod anti_entropy;
pub(crate) mod bootstrap;
pub(crate) mod claim;
pub mod config;
mod error;
#[cfg(test)]
mod fake_link;
pub(crate) mod gc;
pub(crate) mod group_commit;
pub(crate) mod kad_gate;
pub(crate) mod link;
pub(crate) mod membership;
pub mod mesh;
pub(crate) mod peer;
pub mod placement;
pub(crate) mod protocol;
pub(crate) mod quorum;
pub(crate) mod relay;
pub(crate) mod replication;
pub mod shutdown;
pub mod stats;

pub use admission::{Credential, EnrollmentKey, Revocation, Roles};
pub use config::{Enrollment, MeshConfig};
pub use error::{Error, Result};
pub use libp2p::{multiaddr, Multiaddr, PeerId};
pub use membership::swim::Notice;
pub use membership::{swim, Member, MemberEvent, MemberState};
pub use mesh::{AppHandler, AppMessage, DatagramSender, Mesh};
pub use peer::load_or_create_key;
pub use placement::{Snapshot, Standing};
pub use replication::Consistency;
pub use stats::MeshMetrics;
