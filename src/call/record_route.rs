//! How a mesh node names itself in a route set: its SIP address with `lr` and the
//! [`NODE_PARAM`] parameter carrying its PeerId, so any node can tell which member an entry
//! belongs to (and skip it when that member is down).

use sipmesh_net::PeerId;

use crate::sip::uri::SipUri;

/// The URI parameter that names the mesh node in a Record-Route.
pub const NODE_PARAM: &str = "sm";

/// The mesh node a route-set URI names, if it is one of ours.
pub fn node_of(uri: &SipUri) -> Option<PeerId> {
    uri.param(NODE_PARAM).flatten().and_then(|n| n.parse().ok())
}
