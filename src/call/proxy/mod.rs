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
//! - [`relay`] — what a node does for another node's transaction on one of its own flows.
//!
//! The node a request enters the mesh at is its only stateful proxy. When the next hop is a
//! flow owned by another node (a callee registered there, or a route-set entry naming it), this
//! node writes the request as the phone must see it — with a Via of the owner's address on top
//! whose signed token says where responses go back, and the owner's Record-Route entry — and
//! the owner only sends the bytes down its flow ([`Flow::Mesh`] with `target`). Responses come
//! to the owner, which strips its Via and hands them up. So a call across the mesh costs the
//! owner a relay per message, not a second proxy.

mod entry;
mod fork;
mod relay;
mod stateless;
mod targets;

pub(crate) use relay::Relayed;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use sipmesh_net::PeerId;
use tracing::debug;

use crate::call::dialog::Dialogs;
use crate::call::flow_token::{FlowRef, NodeId, Token};
use crate::call::Context;
use crate::sip::address::HostPort;
use crate::sip::build::Edit;
use crate::sip::flow::{Flow, StreamKind};
use crate::sip::header::{DigestCredentials, NameAddr};
use crate::sip::message::{HeaderName, Message, Method};
use crate::sip::request::RequestBuilder;
use crate::sip::transaction::{Discard, ServerKey};
use crate::sip::uri::SipUri;
use crate::sip::validate::Checked;
use crate::sip::Fault;

/// The URI parameter of this mesh's route-set entries: a signed flow token.
pub const NODE_PARAM: &str = "sm";
/// Branch prefix of this proxy's Vias (after the magic cookie): `sm<loop hash>.<n>`.
const BRANCH_TAG: &str = "z9hG4bKsm";
/// What a branch's MAC covers first.
const BRANCH_DOMAIN: &[u8] = b"sipmesh branch v1";
/// Branch prefix of the Via a node adds for another node that relays (`smr<token>.<suffix>`).
pub(crate) const RELAY_TAG: &str = "z9hG4bKsmr";

/// Proxy settings.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Whether initial INVITEs are challenged (407).
    pub auth_invites: bool,
    /// The smallest session interval accepted (RFC 4028 Min-SE, seconds).
    pub min_se: u64,
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
/// Route values it removes (its own, dead nodes', and the entry of a node that relays it).
#[derive(Debug, Clone, Default)]
struct Plan {
    record_route: bool,
    pop: usize,
    /// Members down or gone whose route-set entries were skipped (a BYE that completes
    /// deletes the dialog they stored).
    dead_on_path: Vec<PeerId>,
}

/// What a route-set entry (a Route value's URI) is to this node.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Hop {
    /// One of this node's signed entries, with the flow it leads out on.
    Ours(FlowRef),
    /// This node's address without a token (a preloaded Route, an outbound proxy setting).
    Address,
    /// Another member's entry: the member, whether it is up, and its flow.
    Node {
        /// The member.
        peer: PeerId,
        /// Whether it is up.
        up: bool,
        /// Its flow on the far side.
        flow: FlowRef,
    },
    /// An entry of this mesh naming a node that is no longer a member.
    Gone,
    /// Anything else: a URI to resolve.
    Foreign(String),
}

/// The stateful proxy of a node.
pub struct Proxy {
    ctx: Arc<Context>,
    dialogs: Arc<Dialogs>,
    config: ProxyConfig,
    /// This node.
    node: PeerId,
    /// This node as flow tokens name it.
    node_id: NodeId,
    /// The SIP address this node advertises (Via, Record-Route).
    addr: HostPort,
    /// Other members' SIP addresses (`host:port`), as their tags publish them.
    addrs: Mutex<HashMap<(PeerId, Option<StreamKind>), String>>,
    /// Requests being forwarded, by server transaction (for CANCEL and members going down),
    /// and INVITEs cancelled while still being routed.
    forks: Mutex<fork::Forks>,
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
    /// The node's metrics (and recent events).
    pub(crate) fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.ctx.metrics
    }

    /// A proxy over the node's parts.
    pub fn new(ctx: Arc<Context>, dialogs: Arc<Dialogs>, config: ProxyConfig) -> Arc<Self> {
        let addr = ctx.names.advertised().clone();
        let node = ctx.mesh.peer_id();
        Arc::new(Proxy {
            node,
            node_id: NodeId::of(&node),
            addrs: Mutex::new(HashMap::new()),
            ctx,
            dialogs,
            config,
            addr,
            forks: Mutex::new(fork::Forks::default()),
            branches: AtomicU64::new(1),
        })
    }

    /// The dialogs this node tracks.
    pub fn dialogs(&self) -> &Arc<Dialogs> {
        &self.dialogs
    }

    /// The node's parts the proxy works with.
    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    /// Answer a request with the response `fault` stands for.
    fn reject(&self, req: &Inbound, fault: Fault) {
        self.ctx
            .transactions
            .reject(&req.key, &req.msg, &req.top_via, &fault);
    }

    /// What a route-set URI is to this node (tokens are checked against the mesh secret).
    fn hop(&self, uri: &str) -> Hop {
        let Ok(u) = SipUri::parse(uri) else {
            return Hop::Foreign(uri.to_string());
        };
        if let Some(Some(text)) = u.param(NODE_PARAM) {
            if let Some(Token::Route { node, flow }) = Token::decode(text, &self.ctx.secret, b"") {
                if node == self.node_id {
                    return Hop::Ours(flow);
                }
                return match self.ctx.mesh.snapshot().member_by_prefix(&node.0) {
                    Some((peer, up)) => Hop::Node { peer, up, flow },
                    None => Hop::Gone,
                };
            }
        }
        if self.is_own_address(&u) {
            Hop::Address
        } else {
            Hop::Foreign(uri.to_string())
        }
    }

    /// Whether a URI without a user part names this node's SIP address.
    fn is_own_address(&self, u: &SipUri) -> bool {
        u.user.is_none() && self.ctx.names.is_own(&u.host, u.port)
    }

    /// Whether a URI (Route or Request-URI) designates this node.
    fn is_own_uri(&self, uri: &str) -> bool {
        matches!(self.hop(uri), Hop::Ours(_) | Hop::Address)
    }

    /// The SIP address (`host:port`) a member publishes for a transport (`None`: UDP and
    /// TCP; a member without that listener: its UDP/TCP address).
    fn address_of(&self, peer: &PeerId, kind: Option<StreamKind>) -> Option<String> {
        if let Some(a) = self
            .addrs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(*peer, kind))
        {
            return Some(a.clone());
        }
        let tagged = kind.and_then(|k| self.ctx.mesh.tag(peer, &format!("sip_{}", k.param())));
        let addr = match tagged {
            Some(a) => a,
            None => self
                .ctx
                .mesh
                .tag(peer, "sip")?
                .trim_start_matches("sip:")
                .to_string(),
        };
        self.addrs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((*peer, kind), addr.clone());
        Some(addr)
    }

    /// A route-set entry naming `node` (at `addr`) and its flow on the far side, reached over
    /// the transport `transport` names (`None`: UDP).
    fn route_entry(
        &self,
        node: &PeerId,
        addr: &str,
        flow: &FlowRef,
        transport: Option<&str>,
    ) -> String {
        let token = Token::Route {
            node: NodeId::of(node),
            flow: flow.clone(),
        }
        .encode(&self.ctx.secret, b"");
        let transport = transport
            .map(|t| format!(";transport={t}"))
            .unwrap_or_default();
        format!("<sip:{addr};lr;{NODE_PARAM}={token}{transport}>")
    }

    /// This node's entry for a flow of its own: at the address of the flow's listener, so a
    /// phone on TLS or WebSocket sends in-dialog requests back down the same connection.
    fn own_entry(&self, flow: &Flow) -> String {
        let addr = self
            .ctx
            .names
            .advertised_for(flow.stream_kind())
            .unwrap_or_else(|| self.addr.clone())
            .to_string();
        self.route_entry(&self.node, &addr, &FlowRef::of(flow), flow.uri_transport())
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

    /// A new branch for a request with loop hash `hash`: `sm<hash>.<n>.<mac>`, the MAC over
    /// the rest under the mesh secret, so a response is relayed statelessly only for a branch
    /// this mesh created (never reflected toward whatever a forged second Via names).
    fn new_branch(&self, hash: &str) -> String {
        let body = format!("{hash}.{:x}", self.branches.fetch_add(1, Ordering::Relaxed));
        let mac = self.ctx.secret.mac(&[BRANCH_DOMAIN, body.as_bytes()]);
        format!("{BRANCH_TAG}{body}.{}", crate::sip::digest::hex(&mac[..5]))
    }

    /// Whether a branch is one this mesh's proxies created (see [`Proxy::new_branch`]).
    fn is_signed_branch(&self, branch: &str) -> bool {
        let Some(rest) = branch.strip_prefix(BRANCH_TAG) else {
            return false;
        };
        let Some((body, mac)) = rest.rsplit_once('.') else {
            return false;
        };
        match crate::sip::digest::unhex(mac) {
            Some(tag) if tag.len() == 5 => self
                .ctx
                .secret
                .verify(&[BRANCH_DOMAIN, body.as_bytes()], &tag),
            _ => false,
        }
    }

    /// The forwarded copy of a request toward one target (§16.6): new Request-URI if the
    /// target has one, our Via, our Record-Route entries if asked, the target's Path as Route,
    /// the removed Route values gone, Max-Forwards decremented. When the next hop is a flow of
    /// another node, also that node's Via on top (a relay token saying responses come back
    /// here) and its Record-Route entry. Every other byte is the original's.
    fn forwarded(
        &self,
        req: &Inbound,
        t: &targets::Target,
        next_hop: &Flow,
        branch: &str,
        plan: &Plan,
    ) -> Option<Message> {
        let (msg, c) = (&req.msg, &req.c);
        let mut e = Edit::new(msg);
        if let Some(uri) = &t.uri {
            e = e.start_line(format!("{} {uri} SIP/2.0", c.method));
        }
        let mut top = Vec::with_capacity(5);
        // The flow on the callee's side, and the node that owns it.
        let relay = match next_hop {
            Flow::Mesh {
                node,
                target: Some(flow),
            } => Some((
                *node,
                self.address_of(node, flow.stream_kind())?,
                flow.as_ref(),
            )),
            _ => None,
        };
        if let Some((_, addr, flow)) = &relay {
            let suffix = &branch[BRANCH_TAG.len()..];
            let token =
                Token::Up { node: self.node_id }.encode(&self.ctx.secret, suffix.as_bytes());
            top.push(format!(
                "Via: SIP/2.0/{} {addr};branch={RELAY_TAG}{token}.{suffix}",
                flow.transport()
            ));
        }
        top.push(format!(
            "Via: SIP/2.0/{} {};branch={branch}",
            next_hop.transport(),
            self.addr
        ));
        if plan.record_route {
            // RFC 5658: one entry per flow, the callee's side first (the callee's route set
            // is the Record-Route as it arrives; the caller's is the reverse).
            match (&relay, next_hop) {
                (Some((node, addr, flow)), _) => top.push(format!(
                    "Record-Route: {}",
                    self.route_entry(node, addr, &FlowRef::of(flow), flow.uri_transport())
                )),
                (None, Flow::Udp(_) | Flow::Tcp { .. } | Flow::Stream { .. }) => {
                    top.push(format!("Record-Route: {}", self.own_entry(next_hop)))
                }
                (None, _) => {}
            }
            top.push(format!("Record-Route: {}", self.own_entry(&req.flow)));
        }
        // §16.6 step 7: toward a strict router (a first Route without `lr`), its URI becomes
        // the Request-URI and the Request-URI the last Route.
        let kept = msg.values(&HeaderName::Route);
        let first_route = t
            .routes
            .first()
            .map(String::as_str)
            .or_else(|| kept.get(plan.pop).copied());
        let strict = first_route
            .and_then(name_addr_uri)
            .filter(|u| SipUri::parse(u).is_ok_and(|p| p.param("lr").is_none()));
        let mut drop_routes = plan.pop;
        let mut routes = t.routes.iter();
        if let Some(next) = &strict {
            let old = t.uri.as_deref().unwrap_or(&c.uri);
            e = e
                .start_line(format!("{} {next} SIP/2.0", c.method))
                .append(format!("Route: <{old}>"));
            if t.routes.is_empty() {
                drop_routes += 1;
            } else {
                routes.next();
            }
        }
        for r in routes {
            top.push(format!("Route: {r}"));
        }
        for line in top {
            e = e.prepend(line);
        }
        if drop_routes > 0 {
            e = e.drop_first_values(&HeaderName::Route, "Route", drop_routes);
        }
        // Credentials for our realm were for this mesh (RFC 3261 §22.3): never passed on,
        // where the next hop could replay them.
        let realm = self.ctx.auth.realm();
        for (i, h) in msg.headers.iter().enumerate() {
            if h.name == HeaderName::ProxyAuthorization
                && DigestCredentials::parse(msg.value(h))
                    .map_or(true, |d| d.get("realm") == Some(realm))
            {
                e = e.replace(i, None);
            }
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
