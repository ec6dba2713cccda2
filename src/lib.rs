//! sipmesh: a peer-to-peer mesh of stateful SIP proxy/registrar supernodes.
//!
//! # Layout
//! - [`tables`]: the name-server keyspace's tables (users, proxies, registrations, …).
//! - [`node`]: one node — its keyspace on sled and its mesh peer.
//! - [`local_mesh`]: [`LocalMesh`], a public in-process mesh on loopback for tests.
//! - [`error`]: the crate's error type.

pub mod admin;
pub mod assignment;
pub mod auth;
pub mod config;
pub mod dialog;
pub mod error;
pub mod failover;
pub mod local_mesh;
pub mod location;
pub mod metrics;
pub mod node;
pub mod proxy;
pub mod registrar;
pub mod server;
pub mod sip;
pub mod tables;
pub mod transaction;
pub mod transport;
pub mod users;
pub mod wire;

pub use error::{Error, Result};
pub use local_mesh::{LocalMesh, LocalMeshBuilder, LocalNode};
pub use node::{Node, NodeConfig};
pub use sipmesh_net::{Consistency, Mesh, PeerId};
