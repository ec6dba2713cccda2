//! What a SIP server does with the requests its transactions hand it.
//!
//! - [`auth`]: digest authentication (RFC 7616/8760) with stateless mesh-wide nonces.
//! - [`secret`]: the mesh-wide key behind nonces and flow tokens.
//! - [`users`]: the users of the mesh and their HA1 credentials, in the `users` table.
//! - [`flow_token`]: signed route-set and Via tokens naming a node and a flow (RFC 5626).
//! - [`location`]: bindings of AORs to contacts and flows, in the `registrations` table.
//! - [`registrar`]: REGISTER (RFC 3261 §10.3, Path, Outbound, GRUU).
//! - [`gruu`]: public and temporary GRUUs (RFC 5627), resolved to an instance's bindings.
//! - [`proxy`]: the stateful proxy (RFC 3261 §16), across the mesh.
//! - [`dialog`]: the state of established calls.
//! - [`redirect`]: proxy assignment — the least-loaded nodes for 302 and bootstrap.
//! - [`policy`]: what is forwarded and for whom (no open relay, trunk, caps).
//! - [`throttle`]: per-source rate limits and bans after failed authentication.

use std::sync::Arc;

use sipmesh_net::Mesh;

use crate::metrics::Metrics;
use crate::sip::transaction::Transactions;
use crate::sip::transport::Transport;
use crate::sip::uri::SipUri;

pub(crate) mod auth;
pub(crate) mod dialog;
pub(crate) mod flow_token;
pub(crate) mod gruu;
pub(crate) mod location;
pub mod policy;
pub(crate) mod proxy;
pub(crate) mod redirect;
pub(crate) mod registrar;
pub(crate) mod secret;
pub(crate) mod signed;
pub mod throttle;
pub(crate) mod users;

/// What the registrar and the proxy share: the SIP stack below them, the mesh beside them, and
/// the users and authenticator of the mesh.
pub(crate) struct Context {
    /// The SIP transports.
    pub transport: Arc<Transport>,
    /// The transaction layer.
    pub transactions: Arc<Transactions>,
    /// The mesh (keyspace, membership, other nodes).
    pub mesh: Mesh,
    /// The user store.
    pub users: Arc<users::Users>,
    /// Digest nonces and verification.
    pub auth: Arc<auth::Authenticator>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// The mesh-wide key of nonces and flow tokens.
    pub secret: Arc<secret::MeshSecret>,
    /// The routing policy.
    pub policy: Arc<policy::Policy>,
    /// Rate limits and bans.
    pub throttle: Arc<throttle::Throttle>,
    /// This node's SIP names: the advertised address and every name it answers to.
    pub names: crate::sip::address::OwnNames,
}

impl Context {
    /// Whether a URI's host is one of the mesh's domains: the realm, a configured domain, or
    /// the SIP address of this node or another member.
    pub fn is_mesh_domain(&self, u: &SipUri) -> bool {
        if self.policy.is_named_domain(&u.host) {
            return true;
        }
        let port = u.port.unwrap_or(if u.secure { 5061 } else { 5060 });
        if self.names.is_own(&u.host, Some(port)) {
            return true;
        }
        self.mesh.members().iter().any(|m| {
            m.tags
                .get("sip")
                .and_then(|s| {
                    crate::sip::address::HostPort::parse(s.trim_start_matches("sip:"), 5060)
                })
                .is_some_and(|hp| hp.matches(&u.host, Some(port)))
        })
    }
}
