//! The stateful proxy (RFC 3261 §16), across the mesh.
//!
//! A request the registrar does not take goes through the proxy in the order of §16:
//! - [`entry`] — §16.3–16.4: loop detection, Route processing (ours and dead nodes' entries
//!   popped), in-dialog or initial; initial INVITEs are authenticated (407).
//! - [`targets`] — §16.5: the callee's bindings from the location service, each reached
//!   through the node that owns its flow; URIs resolved to flows.
//! - [`fork`] — §16.6–16.7 and §16.10: one [`fork::Fork`] per forwarded request, a branch per
//!   target with Outbound standby flows, best-response selection, CANCEL.
//! - [`stateless`] — ACKs for 2xx and 2xx retransmissions, which have no transaction.
//!
//! A request for a callee registered at another node travels over the mesh to that node
//! ([`Flow::Mesh`] with the binding's flow as `target`), which forwards it down the callee's
//! flow as a second proxy hop; responses come back the same way, hop by hop.

mod entry;
mod fork;
mod stateless;
mod targets;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use sipmesh_net::PeerId;
use tracing::debug;

use crate::call::dialog::Dialogs;
use crate::call::Context;
use crate::sip::build::Edit;
use crate::sip::flow::Flow;
use crate::sip::header::NameAddr;
use crate::sip::message::{HeaderName, Message, Method};
use crate::sip::request::RequestBuilder;
use crate::sip::transaction::{Discard, ServerKey};
use crate::sip::uri::SipUri;
use crate::sip::validate::Checked;
use crate::sip::Fault;

pub(crate) use crate::call::record_route::NODE_PARAM;
/// Branch prefix of this proxy's Vias (after the magic cookie): `sm<loop hash>.<n>`.
const BRANCH_TAG: &str = "z9hG4bKsm";

/// Proxy settings.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Whether initial INVITEs are challenged (407).
    pub auth_invites: bool,
}

/// A request in the proxy's hands: the message, its checked headers, the flow it came on
/// (where responses go), its server transaction, and the top Via its responses carry.
pub(crate) struct Inbound {
    /// The request.
    pub msg: Message,
    /// Its checked headers.
    pub c: Checked,
    /// The flow it arrived on.
    pub flow: Flow,
    /// Its server transaction.
    pub key: ServerKey,
    /// Its top Via with `received`/`rport` (the top Via of its responses).
    pub top_via: String,
}

/// How a request is forwarded: whether this proxy records its route, and how many leading
/// Route values it pops (its own, and dead nodes').
#[derive(Debug, Clone, Copy)]
struct Plan {
    record_route: bool,
    pop: usize,
}

/// The stateful proxy of a node.
pub struct Proxy {
    ctx: Arc<Context>,
    dialogs: Arc<Dialogs>,
    config: ProxyConfig,
    /// This node.
    node: PeerId,
    /// This node's PeerId in base58, as written in its Record-Route (encoded once).
    node_param: String,
    /// The SIP address of this node.
    addr: SocketAddr,
    /// Requests being forwarded, by server transaction (for CANCEL and members going down).
    forks: Mutex<HashMap<ServerKey, Arc<Mutex<fork::Fork>>>>,
    /// Numbers this proxy's branches.
    branches: AtomicU64,
}

/// A 32-bit FNV-1a hash, for loop detection.
fn fnv(parts: &[&str]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for p in parts {
        for b in p.bytes().chain(std::iter::once(0)) {
            h ^= b as u32;
            h = h.wrapping_mul(0x0100_0193);
        }
    }
    h
}

/// The URI of a name-addr header value (Route, Record-Route, Contact).
fn name_addr_uri(value: &str) -> Option<String> {
    NameAddr::parse(value, "Route").ok().map(|n| n.uri)
}

impl Proxy {
    /// A proxy over the node's parts.
    pub fn new(ctx: Arc<Context>, dialogs: Arc<Dialogs>, config: ProxyConfig) -> Arc<Self> {
        let addr = ctx.transport.local_addr();
        let node = ctx.mesh.peer_id();
        Arc::new(Proxy {
            node,
            node_param: node.to_string(),
            ctx,
            dialogs,
            config,
            addr,
            forks: Mutex::new(HashMap::new()),
            branches: AtomicU64::new(1),
        })
    }

    /// The dialogs this node tracks.
    pub fn dialogs(&self) -> &Arc<Dialogs> {
        &self.dialogs
    }

    /// Answer a request with the response `fault` stands for.
    fn reject(&self, req: &Inbound, fault: Fault) {
        self.ctx
            .transactions
            .reject(&req.key, &req.msg, &req.top_via, &fault);
    }

    /// Whether a URI (Route or Request-URI) designates this node.
    fn is_own_uri(&self, uri: &str) -> bool {
        match SipUri::parse(uri) {
            Ok(u) => match u.param(NODE_PARAM) {
                Some(Some(node)) => node == self.node_param,
                _ => {
                    u.user.is_none()
                        && u.port.unwrap_or(5060) == self.addr.port()
                        && u.host == self.addr.ip().to_string()
                }
            },
            Err(_) => false,
        }
    }

    /// Whether a URI is the Record-Route of a mesh node that is not up.
    fn names_dead_node(&self, uri: &str) -> bool {
        let Ok(u) = SipUri::parse(uri) else {
            return false;
        };
        let Some(Some(node)) = u.param(NODE_PARAM) else {
            return false;
        };
        match node.parse::<PeerId>() {
            Ok(peer) => peer != self.node && !self.ctx.mesh.is_up(&peer),
            Err(_) => false,
        }
    }

    /// This node's Record-Route value for a request that came on `upstream`.
    fn record_route(&self, upstream: &Flow) -> String {
        let transport = if matches!(upstream, Flow::Tcp { .. }) {
            ";transport=tcp"
        } else {
            ""
        };
        format!(
            "<sip:{};lr;{NODE_PARAM}={}{transport}>",
            self.addr, self.node_param
        )
    }

    /// The loop-detection hash of a request (RFC 3261 §16.6 step 8): what a looped copy would
    /// carry unchanged.
    fn loop_hash(msg: &Message, c: &Checked) -> String {
        let routes = msg.values(&HeaderName::Route).join(",");
        format!(
            "{:08x}",
            fnv(&[
                &c.uri,
                c.from.tag().unwrap_or_default(),
                c.to.tag().unwrap_or_default(),
                &c.call_id,
                &c.cseq.seq.to_string(),
                &routes
            ])
        )
    }

    /// A new branch for a request with loop hash `hash`.
    fn new_branch(&self, hash: &str) -> String {
        format!(
            "{BRANCH_TAG}{hash}.{:x}",
            self.branches.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// The forwarded copy of a request toward one target (§16.6): new Request-URI if the
    /// target has one, our Via, our Record-Route if asked, the target's Path as Route, the
    /// popped Route values gone, Max-Forwards decremented. Every other byte is the original's.
    fn forwarded(
        &self,
        req: &Inbound,
        t: &targets::Target,
        next_hop: &Flow,
        branch: &str,
        plan: Plan,
    ) -> Option<Message> {
        let (msg, c) = (&req.msg, &req.c);
        let mut e = Edit::new(msg);
        if let Some(uri) = &t.uri {
            e = e.start_line(format!("{} {uri} SIP/2.0", c.method));
        }
        let mut top = vec![format!(
            "Via: SIP/2.0/{} {};branch={branch}",
            next_hop.transport(),
            self.addr
        )];
        if plan.record_route {
            top.push(format!("Record-Route: {}", self.record_route(&req.flow)));
        }
        for r in &t.routes {
            top.push(format!("Route: {r}"));
        }
        for line in top {
            e = e.prepend(line);
        }
        if plan.pop > 0 {
            e = e.drop_first_values(&HeaderName::Route, "Route", plan.pop);
        }
        match msg
            .headers
            .iter()
            .position(|h| h.name == HeaderName::MaxForwards)
        {
            Some(i) => {
                e = e.replace(
                    i,
                    Some(format!(
                        "Max-Forwards: {}",
                        c.max_forwards.unwrap_or(70).saturating_sub(1)
                    )),
                )
            }
            None => e = e.append("Max-Forwards: 70".into()),
        }
        Message::parse(&e.build(), true).ok()
    }

    /// Send a request this node originates (a force-close BYE) to `uri`, in a client
    /// transaction whose answers nobody waits for. Returns false if `uri` cannot be reached.
    pub async fn originate(&self, uri: &str, request: RequestBuilder) -> bool {
        let Ok(flow) = self.resolve(uri).await else {
            debug!(uri, "unreachable target for a request this node originates");
            return false;
        };
        let branch = self.new_branch("o");
        let bytes = request
            .via(format!(
                "SIP/2.0/{} {};branch={branch}",
                flow.transport(),
                self.addr
            ))
            .build();
        match Message::parse(&bytes, true) {
            Ok(m) => self
                .ctx
                .transactions
                .start_client(&branch, m, flow, Arc::new(Discard))
                .is_ok(),
            Err(_) => false,
        }
    }

    /// Whether `method` creates a dialog this proxy records its route in (§16.6 step 4).
    fn records_route(method: &Method) -> bool {
        matches!(method, Method::Invite | Method::Subscribe | Method::Refer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loop_hash_parts_are_separated() {
        assert_eq!(fnv(&["a", "b"]), fnv(&["a", "b"]));
        assert_ne!(fnv(&["ab", ""]), fnv(&["a", "b"]));
    }
}
