//! sipmesh: a peer-to-peer mesh of stateful SIP proxy/registrar supernodes.
//!
//! # Layout
//! The node is four layers, each using only the ones above it in this list:
//! - Foundations: [`error`] (the crate's error type), `metrics` (what the node measures, for
//!   Prometheus), `events` (the node's recent events, for the live page), `tables` (the
//!   name-server keyspace's tables).
//! - [`sip`]: the SIP stack of a proxy — messages (framing, parsing, validation, byte-preserving
//!   edits, builders), flows, the UDP/TCP transport and the transaction layer (RFC 3261 §17).
//! - `call`: what a SIP server does with requests — digest authentication, users, the
//!   location service, the registrar, the stateful proxy, dialogs.
//! - `node`: one node of the mesh — the dispatcher between transactions and the registrar or
//!   proxy, messages between nodes, load and proxy assignment, failover.
//! - `ops`: running and watching nodes — the admin HTTP API and metrics endpoint, the live
//!   mesh page, the configuration file, [`LocalMesh`].
//!
//! The public API is small: [`Node`] and [`NodeConfig`] to run a node, [`LocalMesh`] to run a
//! mesh in one process (for tests), [`sip`] for SIP clients written in tests, and the admin
//! helpers the binary uses.

pub mod error;
pub(crate) mod events;
pub(crate) mod metrics;
pub(crate) mod slack;
pub mod tables;

pub mod sip;

pub(crate) mod call;

pub(crate) mod node;

pub mod ops;

pub use call::dialog::MIN_SE;
pub use call::policy::{PolicyConfig, TrunkConfig};
pub use call::throttle::ThrottleConfig;
pub use error::{Error, Result};
pub use node::{Node, NodeConfig};
pub use ops::local_mesh::{LocalMesh, LocalMeshBuilder, LocalNode};
pub use sipmesh_net::{Consistency, Mesh, PeerId};
