//! The stateful proxy (RFC 3261 §16): routing by Route headers, by the location service for
//! initial requests, and across the mesh to the node that owns each callee binding; parallel
//! forking with best-response selection, CANCEL, loop detection, Record-Route, and stateless
//! forwarding of ACKs for 2xx and of 2xx retransmissions.
//!
//! A request for a callee registered at another node travels over libp2p to that node
//! ([`Flow::Mesh`] with the binding's flow as `target`), which forwards it down the callee's
//! flow as a second proxy hop; responses come back the same way, hop by hop.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sipmesh_net::{Consistency, Mesh};
use tokio::sync::mpsc;
use tracing::debug;

use crate::dialog::{dialog_id, Dialog, Dialogs};
use crate::location::{self, Binding};
use crate::metrics::{inc, Metrics};
use crate::registrar::{random_tag, Registrar};
use crate::sip::build::{Edit, ResponseBuilder};
use crate::sip::header::{NameAddr, Via};
use crate::sip::message::{HeaderName, Message, Method};
use crate::sip::uri::SipUri;
use crate::sip::validate::Checked;
use crate::transaction::{ClientEvent, Transactions};
use crate::transport::{Flow, Transport};
use crate::users::Users;

/// The URI parameter that names the mesh node in a Record-Route.
pub const NODE_PARAM: &str = "sm";
/// Branch prefix of this proxy's Vias (after the magic cookie): `sm<loop hash>.<n>`.
const BRANCH_TAG: &str = "z9hG4bKsm";

/// Proxy settings.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Whether initial INVITEs are challenged (407).
    pub auth_invites: bool,
}

/// Where a forwarded request goes: a known flow, or a URI resolved when forwarding.
#[derive(Debug, Clone)]
enum Dest {
    Flow(Flow),
    Uri(String),
}

/// A place to send a forwarded request.
#[derive(Debug, Clone)]
struct Target {
    /// Other flows of the same phone instance, tried in order if this one fails.
    alternates: Vec<Target>,
    dest: Dest,
    /// The new Request-URI, if it changes.
    uri: Option<String>,
    /// Route headers to add in front (a binding's Path).
    routes: Vec<String>,
}

/// The stateful proxy of a node.
pub struct Proxy {
    transport: Arc<Transport>,
    transactions: Arc<Transactions>,
    mesh: Mesh,
    registrar: Arc<Registrar>,
    users: Arc<Users>,
    dialogs: Arc<Dialogs>,
    metrics: Arc<Metrics>,
    config: ProxyConfig,
    /// This node's PeerId (base58), as written in its Record-Route.
    node: String,
    /// The SIP address of this node.
    addr: SocketAddr,
    /// CANCEL hooks of INVITEs being forwarded, by the INVITE's server transaction key.
    cancels: Mutex<HashMap<String, mpsc::Sender<()>>>,
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

fn name_addr_uri(value: &str) -> Option<String> {
    NameAddr::parse(value, "Route").ok().map(|n| n.uri)
}

impl Proxy {
    /// A proxy over the node's parts.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        transport: Arc<Transport>,
        transactions: Arc<Transactions>,
        mesh: Mesh,
        registrar: Arc<Registrar>,
        users: Arc<Users>,
        dialogs: Arc<Dialogs>,
        metrics: Arc<Metrics>,
        config: ProxyConfig,
    ) -> Arc<Self> {
        let addr = transport.local_addr();
        Arc::new(Proxy {
            node: mesh.peer_id().to_string(),
            transport,
            transactions,
            mesh,
            registrar,
            users,
            dialogs,
            metrics,
            config,
            addr,
            cancels: Mutex::new(HashMap::new()),
            branches: AtomicU64::new(1),
        })
    }

    /// The dialogs this node tracks.
    pub fn dialogs(&self) -> &Arc<Dialogs> {
        &self.dialogs
    }

    fn respond(
        &self,
        key: &str,
        req: &Message,
        top_via: &str,
        code: u16,
        reason: &str,
        extra: &[(&str, String)],
    ) {
        let mut r = ResponseBuilder::new(req, code, reason)
            .to_tag(&random_tag())
            .top_via(top_via.to_string());
        for (n, v) in extra {
            r = r.header(n, v.clone());
        }
        self.transactions.respond(key, code, Arc::from(r.build()));
    }

    /// Whether a URI (Route or Request-URI) designates this node.
    fn is_own_uri(&self, uri: &str) -> bool {
        match SipUri::parse(uri) {
            Ok(u) => match u.param(NODE_PARAM) {
                Some(Some(node)) => node == self.node,
                _ => {
                    u.user.is_none()
                        && u.port.unwrap_or(5060) == self.addr.port()
                        && u.host == self.addr.ip().to_string()
                }
            },
            Err(_) => false,
        }
    }

    fn record_route(&self, flow: &Flow) -> String {
        let transport = if matches!(flow, Flow::Tcp { .. }) {
            ";transport=tcp"
        } else {
            ""
        };
        format!(
            "<sip:{};lr;{NODE_PARAM}={}{transport}>",
            self.addr, self.node
        )
    }

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

    /// Where a URI leads: another mesh node (its Record-Route), or an address.
    async fn resolve(&self, uri: &str) -> Result<Flow, (u16, &'static str)> {
        let u = SipUri::parse(uri).map_err(|_| (416u16, "Unsupported URI Scheme"))?;
        if let Some(Some(node)) = u.param(NODE_PARAM) {
            if node != self.node {
                return Ok(Flow::Mesh {
                    node: node.to_string(),
                    target: None,
                });
            }
        }
        let port = u.port.unwrap_or(if u.secure { 5061 } else { 5060 });
        let ip = match u.host.parse::<std::net::IpAddr>() {
            Ok(ip) => ip,
            Err(_) => {
                let lookup = tokio::time::timeout(
                    Duration::from_secs(2),
                    tokio::net::lookup_host((u.host.as_str(), port)),
                )
                .await;
                match lookup {
                    Ok(Ok(mut addrs)) => match addrs.next() {
                        Some(a) => a.ip(),
                        None => return Err((478, "Unresolvable Destination")),
                    },
                    _ => return Err((478, "Unresolvable Destination")),
                }
            }
        };
        let dest = SocketAddr::new(ip, port);
        let tcp = u
            .param("transport")
            .flatten()
            .is_some_and(|t| t.eq_ignore_ascii_case("tcp"));
        if tcp {
            self.transport
                .tcp_flow(dest)
                .await
                .map_err(|_| (503u16, "Service Unavailable"))
        } else {
            Ok(Flow::Udp(dest))
        }
    }

    /// The targets of an initial request: the callee's bindings, each through its owner node.
    async fn locate(&self, user: &str) -> Result<Vec<Target>, (u16, &'static str)> {
        let bindings = location::lookup(&self.mesh, user, Consistency::Quorum)
            .await
            .map_err(|_| (500u16, "Location service unavailable"))?;
        if bindings.is_empty() {
            return match self.users.get_cached(user).await {
                Ok(Some(_)) => Err((480, "Temporarily Unavailable")),
                Ok(None) => Err((404, "Not Found")),
                Err(_) => Err((500, "User lookup failed")),
            };
        }
        // Bindings of one Outbound instance (same +sip.instance, different reg-id) are one
        // target with standby flows, lowest reg-id first; others are forked in parallel.
        let mut sorted: Vec<&Binding> = bindings.iter().collect();
        sorted.sort_by_key(|b| (b.instance.clone(), b.reg_id));
        let mut targets: Vec<Target> = Vec::new();
        let mut instances: Vec<Option<String>> = Vec::new();
        for b in sorted {
            let Some(t) = self.binding_target(b) else {
                continue;
            };
            let group = b.instance.clone().filter(|_| b.reg_id.is_some());
            match group
                .as_ref()
                .and_then(|g| instances.iter().position(|x| x.as_ref() == Some(g)))
            {
                Some(at) => targets[at].alternates.push(t),
                None => {
                    instances.push(group);
                    targets.push(t);
                }
            }
        }
        if targets.is_empty() {
            return Err((480, "Temporarily Unavailable"));
        }
        Ok(targets)
    }

    /// How to reach one binding. An Outbound binding (RFC 5626, with reg-id) is reached only
    /// down its flow; another binding at its contact URI (RFC 3261), or down its TCP connection
    /// while that is open. A binding owned by another node goes through that node.
    fn binding_target(&self, b: &Binding) -> Option<Target> {
        let outbound = b.reg_id.is_some();
        let use_flow = outbound || matches!(b.flow, Flow::Tcp { .. });
        let dest = if b.owner == self.node {
            if use_flow && self.transport.is_alive(&b.flow) {
                Dest::Flow(b.flow.clone())
            } else if outbound {
                return None; // the flow is dead
            } else {
                Dest::Uri(b.contact.clone())
            }
        } else {
            let peer = b.owner.parse().ok()?;
            if !self.mesh.is_up(&peer) {
                return None; // its owner is down: its flows died with it
            }
            Dest::Flow(Flow::Mesh {
                node: b.owner.clone(),
                target: use_flow.then(|| Box::new(b.flow.clone())),
            })
        };
        Some(Target {
            dest,
            uri: Some(b.contact.clone()),
            routes: b.path.clone(),
            alternates: Vec::new(),
        })
    }

    /// How many leading Route values to pop: ours, and those naming mesh nodes that are down
    /// (a dead node's hop is skipped: the request goes on to the next hop of the route set or
    /// to the Request-URI, the remote party's target — that is how a call outlives a node).
    fn routes_to_pop(&self, routes: &[&str]) -> usize {
        let mut n = 0;
        for r in routes {
            let Some(uri) = name_addr_uri(r) else { break };
            if self.is_own_uri(&uri) || self.names_dead_node(&uri) {
                n += 1;
            } else {
                break;
            }
        }
        n
    }

    /// Whether a URI is the Record-Route of a mesh node that is not up.
    fn names_dead_node(&self, uri: &str) -> bool {
        let Ok(u) = SipUri::parse(uri) else {
            return false;
        };
        let Some(Some(node)) = u.param(NODE_PARAM) else {
            return false;
        };
        match node.parse::<sipmesh_net::PeerId>() {
            Ok(peer) => node != self.node && !self.mesh.is_up(&peer),
            Err(_) => false,
        }
    }

    /// Route a request that is not for this node's registrar: answer it or forward it.
    /// `target` is set when another node asks this one to deliver down one of its flows.
    pub async fn route(
        self: Arc<Self>,
        msg: Message,
        c: Checked,
        flow: Flow,
        top_via: String,
        key: String,
        target: Option<Flow>,
    ) {
        if let Some(t) = target {
            // The previous node found the binding; this node owns its flow. If that flow is
            // gone, an Outbound binding (`;ob` contact) fails with 430 (RFC 5626), another is
            // reached at its contact URI.
            let dest = if self.transport.is_alive(&t) {
                Dest::Flow(t)
            } else if SipUri::parse(&c.uri).is_ok_and(|u| u.param("ob").is_some()) {
                return self.respond(&key, &msg, &top_via, 430, "Flow Failed", &[]);
            } else {
                Dest::Uri(c.uri.clone())
            };
            let t = Target {
                dest,
                uri: None,
                routes: Vec::new(),
                alternates: Vec::new(),
            };
            let rr = matches!(c.method, Method::Invite | Method::Subscribe | Method::Refer);
            return self.forward(msg, c, flow, key, vec![t], rr, 0).await;
        }
        // Loop detection (RFC 3261 §16.3 step 4).
        let hash = Self::loop_hash(&msg, &c);
        let own_sent_by = self.addr.to_string();
        for v in msg.values(&HeaderName::Via).iter() {
            if let Ok(via) = Via::parse(v) {
                let sent_by = format!("{}:{}", via.host, via.port.unwrap_or(5060));
                if sent_by == own_sent_by
                    && via
                        .branch()
                        .is_some_and(|b| b.starts_with(&format!("{BRANCH_TAG}{hash}")))
                {
                    return self.respond(&key, &msg, &top_via, 482, "Loop Detected", &[]);
                }
            }
        }
        // Route processing (§16.4): remove our own Route (and dead nodes' ones).
        let routes = msg.values(&HeaderName::Route);
        let pop = self.routes_to_pop(&routes);
        let next_route = routes.get(pop).and_then(|r| name_addr_uri(r));
        let in_dialog = c.to.tag().is_some();
        let single = |u: String| {
            vec![Target {
                dest: Dest::Uri(u),
                uri: None,
                routes: Vec::new(),
                alternates: Vec::new(),
            }]
        };
        let targets = if let Some(next) = next_route {
            single(next)
        } else if in_dialog {
            if self.is_own_uri(&c.uri) {
                return self.respond(&key, &msg, &top_via, 404, "Not Found", &[]);
            }
            single(c.uri.clone())
        } else if flow.mesh_node().is_some() {
            // An initial request from another node, which already found the binding (this
            // node owns it): the Request-URI is the contact.
            single(c.uri.clone())
        } else {
            // An initial request: authenticate INVITEs from phones, then find the callee.
            if c.method == Method::Invite && self.config.auth_invites {
                let caller = SipUri::parse(&c.from.uri)
                    .ok()
                    .and_then(|u| u.canonical_user())
                    .unwrap_or_default();
                if let Err((code, bytes)) = self
                    .registrar
                    .authenticate(&msg, &c, &top_via, &caller, true)
                    .await
                {
                    self.transactions.respond(&key, code, Arc::from(bytes));
                    return;
                }
            }
            let user = match SipUri::parse(&c.uri).ok().and_then(|u| u.canonical_user()) {
                Some(u) => u,
                None => {
                    let (code, reason) = if matches!(c.method, Method::Other(_)) {
                        (501, "Not Implemented")
                    } else {
                        (404, "Not Found")
                    };
                    let allow = if code == 501 {
                        vec![("Allow", crate::server::ALLOW.to_string())]
                    } else {
                        vec![]
                    };
                    return self.respond(&key, &msg, &top_via, code, reason, &allow);
                }
            };
            match self.locate(&user).await {
                Ok(t) => t,
                Err((code, reason)) => {
                    return self.respond(&key, &msg, &top_via, code, reason, &[])
                }
            }
        };
        if in_dialog {
            let id = dialog_id(
                &c.call_id,
                c.from.tag().unwrap_or_default(),
                c.to.tag().unwrap_or_default(),
            );
            self.dialogs.touch(&id).await;
        }
        let rr =
            !in_dialog && matches!(c.method, Method::Invite | Method::Subscribe | Method::Refer);
        self.forward(msg, c, flow, key, targets, rr, pop).await;
    }

    fn new_branch(&self, hash: &str) -> String {
        format!(
            "{BRANCH_TAG}{hash}.{:x}",
            self.branches.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Build the forwarded copy of a request for one target.
    #[allow(clippy::too_many_arguments)]
    fn forwarded(
        &self,
        msg: &Message,
        c: &Checked,
        t: &Target,
        flow: &Flow,
        branch: &str,
        rr: bool,
        pop: usize,
        upstream: &Flow,
    ) -> Option<Message> {
        let mut e = Edit::new(msg);
        if let Some(uri) = &t.uri {
            e = e.start_line(format!("{} {uri} SIP/2.0", c.method));
        }
        let mut top = vec![format!(
            "Via: SIP/2.0/{} {};branch={branch}",
            flow.transport(),
            self.addr
        )];
        if rr {
            top.push(format!("Record-Route: {}", self.record_route(upstream)));
        }
        for r in &t.routes {
            top.push(format!("Route: {r}"));
        }
        for line in top {
            e = e.prepend(line);
        }
        if pop > 0 {
            e = e.drop_first_values(&HeaderName::Route, "Route", pop);
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

    /// Start one branch: resolve the target, build the request, start its client transaction,
    /// and feed its events into `merged` under index `i`.
    #[allow(clippy::too_many_arguments)]
    async fn start_branch(
        &self,
        i: usize,
        t: &Target,
        msg: &Message,
        c: &Checked,
        hash: &str,
        rr: bool,
        pop: usize,
        upstream: &Flow,
        merged: &mpsc::Sender<(usize, ClientEvent)>,
    ) -> Result<(String, Message, Flow), (u16, &'static str)> {
        let flow = match &t.dest {
            Dest::Flow(f) => f.clone(),
            Dest::Uri(u) => self
                .resolve(u)
                .await
                .inspect_err(|e| debug!(uri = %u, code = e.0, "next hop unreachable"))?,
        };
        let branch = self.new_branch(hash);
        let req = self
            .forwarded(msg, c, t, &flow, &branch, rr, pop, upstream)
            .ok_or((500u16, "Forwarding failed"))?;
        debug!(?flow, method = %c.method, "forwarding");
        let mut rx = self
            .transactions
            .start_client(&branch, req.clone(), flow.clone());
        let tx = merged.clone();
        tokio::spawn(async move {
            while let Some(ev) = rx.recv().await {
                if tx.send((i, ev)).await.is_err() {
                    break;
                }
            }
        });
        Ok((branch, req, flow))
    }

    #[allow(clippy::too_many_arguments)]
    async fn forward(
        self: Arc<Self>,
        msg: Message,
        c: Checked,
        upstream: Flow,
        key: String,
        targets: Vec<Target>,
        rr: bool,
        pop: usize,
    ) {
        let invite = c.method == Method::Invite;
        let top_via = crate::server::stamp_via(&c.via, upstream.peer());
        if invite {
            let trying = ResponseBuilder::new(&msg, 100, "Trying")
                .top_via(top_via.clone())
                .build();
            self.transactions.respond(&key, 100, Arc::from(trying));
        }
        let hash = Self::loop_hash(&msg, &c);
        let (merged_tx, mut merged) = mpsc::channel::<(usize, ClientEvent)>(64);
        // Branch i: its request, and the standby targets to try if it fails (RFC 5626 flows
        // of one instance are tried one at a time: the phone must not ring twice).
        let mut requests: Vec<(String, Message, Flow)> = Vec::new();
        let mut standby: Vec<Vec<Target>> = Vec::new();
        let mut unreachable = None;
        for t in targets {
            let mut chain: Vec<Target> = std::iter::once(t.clone())
                .chain(t.alternates.iter().cloned())
                .collect();
            chain.reverse();
            while let Some(next) = chain.pop() {
                match self
                    .start_branch(
                        requests.len(),
                        &next,
                        &msg,
                        &c,
                        &hash,
                        rr,
                        pop,
                        &upstream,
                        &merged_tx,
                    )
                    .await
                {
                    Ok(r) => {
                        requests.push(r);
                        standby.push(std::mem::take(&mut chain).into_iter().rev().collect());
                        break;
                    }
                    Err(e) => unreachable = Some(e),
                }
            }
        }
        if requests.is_empty() {
            let (code, reason) = unreachable.unwrap_or((500, "Forwarding failed"));
            return self.respond(&key, &msg, &top_via, code, reason, &[]);
        }
        let (cancel_tx, mut cancel_rx) = mpsc::channel(1);
        if invite {
            self.cancels
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key.clone(), cancel_tx);
        }
        let n = requests.len();
        let mut finals = vec![false; n];
        let mut proceeding = vec![false; n];
        let mut cancel_wanted = vec![false; n];
        let mut best: Option<Message> = None;
        let mut answered = false;
        let mut cancelled = false;
        // A branch through a node that dies gets no answer from it: fail it at once (a standby
        // flow is then tried, or the caller hears the failure within the detection time).
        let mut members = self.mesh.events();
        loop {
            let (i, ev) = tokio::select! {
                ev = members.recv() => {
                    if let Ok(sipmesh_net::MemberEvent::Down(p) | sipmesh_net::MemberEvent::Left(p)) = ev {
                        let node = p.to_string();
                        for (j, r) in requests.iter().enumerate() {
                            if !finals[j] && r.2.mesh_node() == Some(node.as_str()) {
                                let _ = merged_tx.try_send((j, ClientEvent::Timeout));
                            }
                        }
                    }
                    continue;
                }
                ev = merged.recv() => match ev {
                    Some(x) => x,
                    None => break,
                },
                Some(()) = cancel_rx.recv(), if !cancelled => {
                    cancelled = true;
                    for j in 0..n {
                        if !finals[j] {
                            cancel_wanted[j] = true;
                            standby[j].clear();
                            if proceeding[j] {
                                self.cancel_branch(&requests[j].0, &requests[j].1, &requests[j].2);
                            }
                        }
                    }
                    continue;
                }
            };
            let response = match ev {
                ClientEvent::Response(m) => m,
                ClientEvent::Timeout => {
                    if finals[i] {
                        continue;
                    }
                    synthesized(&requests[i].1, 408, "Request Timeout")
                }
            };
            // Responses of a branch replaced by its standby carry the old branch: ignore them.
            if response
                .values(&HeaderName::Via)
                .first()
                .and_then(|v| Via::parse(v).ok())
                .is_some_and(|v| v.branch() != Some(requests[i].0.as_str()))
            {
                continue;
            }
            let Some(code) = response.status() else {
                continue;
            };
            if code < 200 {
                if !proceeding[i] {
                    proceeding[i] = true;
                    if cancel_wanted[i] {
                        self.cancel_branch(&requests[i].0, &requests[i].1, &requests[i].2);
                    }
                }
                if code > 100 && !answered {
                    self.relay(&key, code, &response);
                }
                continue;
            }
            if finals[i] {
                // A 2xx retransmission or another 2xx (Accepted state): pass it on.
                if (200..300).contains(&code) {
                    self.relay(&key, code, &response);
                }
                continue;
            }
            // The flow failed (RFC 5626 §5.3: 430, 408, or a transport error): try the next
            // flow of the same instance, if there is one, before giving up on this branch.
            if matches!(code, 408 | 430 | 503)
                && !answered
                && !cancel_wanted[i]
                && !standby[i].is_empty()
            {
                let mut started = false;
                while let Some(next) = standby[i].pop() {
                    if let Ok(r) = self
                        .start_branch(i, &next, &msg, &c, &hash, rr, pop, &upstream, &merged_tx)
                        .await
                    {
                        requests[i] = r;
                        proceeding[i] = false;
                        started = true;
                        break;
                    }
                }
                if started {
                    continue;
                }
            }
            finals[i] = true;
            if (200..300).contains(&code) {
                self.relay(&key, code, &response);
                answered = true;
                if invite {
                    self.on_answered(&requests[i].1, &response, &upstream).await;
                }
                for j in 0..n {
                    if !finals[j] {
                        cancel_wanted[j] = true;
                        standby[j].clear();
                        if proceeding[j] {
                            self.cancel_branch(&requests[j].0, &requests[j].1, &requests[j].2);
                        }
                    }
                }
                if c.method == Method::Bye {
                    let id = dialog_id(
                        &c.call_id,
                        c.from.tag().unwrap_or_default(),
                        c.to.tag().unwrap_or_default(),
                    );
                    self.dialogs.ended(&id).await;
                }
            } else {
                if code >= 600 {
                    for j in 0..n {
                        if !finals[j] {
                            cancel_wanted[j] = true;
                            standby[j].clear();
                            if proceeding[j] {
                                self.cancel_branch(&requests[j].0, &requests[j].1, &requests[j].2);
                            }
                        }
                    }
                }
                best = Some(match best {
                    Some(b) if better(b.status().unwrap_or(999), code) => b,
                    _ => response,
                });
            }
            if finals.iter().all(|f| *f) {
                if !answered {
                    if let Some(b) = &best {
                        let code = b.status().unwrap_or(500);
                        if code == 503 {
                            self.respond(&key, &msg, &top_via, 500, "Server Internal Error", &[]);
                        } else {
                            self.relay(&key, code, b);
                        }
                    }
                }
                break;
            }
        }
        drop(merged_tx);
        if invite {
            self.cancels
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key);
        }
    }

    /// Pass a response upstream: remove our Via, answer through the server transaction.
    fn relay(&self, key: &str, code: u16, response: &Message) {
        let bytes = Edit::new(response)
            .remove_first_value(&HeaderName::Via, "Via")
            .build();
        self.transactions.respond(key, code, Arc::from(bytes));
    }

    fn cancel_branch(&self, branch: &str, req: &Message, flow: &Flow) {
        let mut out = format!(
            "CANCEL {} SIP/2.0\r\n",
            req.request_uri().unwrap_or_default()
        );
        if let Some(v) = req.values(&HeaderName::Via).first() {
            out.push_str(&format!("Via: {v}\r\n"));
        }
        for r in req.values(&HeaderName::Route) {
            out.push_str(&format!("Route: {r}\r\n"));
        }
        for (name, label) in [
            (HeaderName::From, "From"),
            (HeaderName::To, "To"),
            (HeaderName::CallId, "Call-ID"),
        ] {
            if let Some(v) = req.header(&name) {
                out.push_str(&format!("{label}: {v}\r\n"));
            }
        }
        let seq = req
            .header(&HeaderName::CSeq)
            .and_then(|c| c.split_ascii_whitespace().next())
            .unwrap_or("1");
        out.push_str(&format!(
            "CSeq: {seq} CANCEL\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        ));
        if let Ok(cancel) = Message::parse(out.as_bytes(), true) {
            let mut rx = self.transactions.start_client(branch, cancel, flow.clone());
            tokio::spawn(async move { while rx.recv().await.is_some() {} });
        }
    }

    /// A CANCEL arrived: answer it, and cancel the matching INVITE's branches.
    pub fn cancel(
        &self,
        msg: &Message,
        c: &Checked,
        cancel_key: &str,
        invite_key: &str,
        top_via: &str,
    ) {
        let hook = self
            .cancels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(invite_key)
            .cloned();
        match hook {
            Some(tx) => {
                let _ = tx.try_send(());
                let ok = ResponseBuilder::new(msg, 200, "OK")
                    .to_tag(c.to.tag().unwrap_or(&random_tag()))
                    .top_via(top_via.to_string())
                    .build();
                self.transactions.respond(cancel_key, 200, Arc::from(ok));
            }
            None => {
                let r = ResponseBuilder::new(msg, 481, "Call/Transaction Does Not Exist")
                    .to_tag(&random_tag())
                    .top_via(top_via.to_string())
                    .build();
                self.transactions.respond(cancel_key, 481, Arc::from(r));
            }
        }
    }

    /// A 2xx to an INVITE passed: the dialog is established.
    async fn on_answered(&self, request: &Message, response: &Message, upstream: &Flow) {
        let to = response
            .header(&HeaderName::To)
            .and_then(|t| NameAddr::parse(t, "To").ok());
        let from = request
            .header(&HeaderName::From)
            .and_then(|f| NameAddr::parse(f, "From").ok());
        let (Some(to), Some(from)) = (to, from) else {
            return;
        };
        let call_id = request
            .header(&HeaderName::CallId)
            .unwrap_or_default()
            .to_string();
        let (caller_tag, callee_tag) = (
            from.tag().unwrap_or_default().to_string(),
            to.tag().unwrap_or_default().to_string(),
        );
        let rr: Vec<String> = response
            .values(&HeaderName::RecordRoute)
            .iter()
            .map(|s| s.to_string())
            .collect();
        let nodes: Vec<String> = rr
            .iter()
            .rev()
            .filter_map(|r| name_addr_uri(r))
            .filter_map(|u| SipUri::parse(&u).ok())
            .filter_map(|u| u.param(NODE_PARAM).flatten().map(str::to_string))
            .collect();
        let contact = |m: &Message| {
            m.values(&HeaderName::Contact)
                .first()
                .and_then(|c| name_addr_uri(c))
                .unwrap_or_default()
        };
        let d = Dialog {
            id: dialog_id(&call_id, &caller_tag, &callee_tag),
            call_id,
            caller_tag,
            callee_tag,
            caller_uri: from.uri,
            callee_uri: to.uri,
            caller_contact: contact(request),
            callee_contact: contact(response),
            // RFC 3261 §12.1: the UAC uses the Record-Route reversed, the UAS as it is.
            caller_route_set: rr.iter().rev().cloned().collect(),
            callee_route_set: rr.clone(),
            caller_cseq: request
                .header(&HeaderName::CSeq)
                .and_then(|c| c.split_ascii_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0),
            nodes,
            caller_flow: upstream.clone(),
            started_ms: self.mesh.keyspace().wall_ms(),
        };
        // The node facing the caller writes the dialog; the others only remember it.
        let writer = upstream.mesh_node().is_none();
        let dialogs = self.dialogs.clone();
        tokio::spawn(async move { dialogs.established(d, writer).await });
    }

    /// Close a dialog that lost a node: BYE to both parties at their contacts (client
    /// transactions; answers are not needed), then remove it from the keyspace.
    pub async fn force_close(&self, d: &Dialog) {
        let legs = [
            (
                &d.caller_contact,
                &d.callee_uri,
                &d.callee_tag,
                &d.caller_uri,
                &d.caller_tag,
                0x7FFF_0000u32,
            ),
            (
                &d.callee_contact,
                &d.caller_uri,
                &d.caller_tag,
                &d.callee_uri,
                &d.callee_tag,
                d.caller_cseq.saturating_add(1000),
            ),
        ];
        for (target, from, from_tag, to, to_tag, cseq) in legs {
            let Ok(flow) = self.resolve(target).await else {
                debug!(target = %target, "party unreachable for a force-close BYE");
                continue;
            };
            let branch = self.new_branch("fc");
            let bye = format!(
                "BYE {target} SIP/2.0\r\nVia: SIP/2.0/{} {};branch={branch}\r\nMax-Forwards: 70\r\nFrom: <{from}>;tag={from_tag}\r\nTo: <{to}>;tag={to_tag}\r\nCall-ID: {}\r\nCSeq: {cseq} BYE\r\nReason: SIP;cause=503;text=\"a proxy on the path failed\"\r\nContent-Length: 0\r\n\r\n",
                flow.transport(),
                self.addr,
                d.call_id
            );
            if let Ok(m) = Message::parse(bye.as_bytes(), true) {
                let mut rx = self.transactions.start_client(&branch, m, flow);
                tokio::spawn(async move { while rx.recv().await.is_some() {} });
            }
        }
        self.dialogs.remove(d).await;
    }

    /// Forward a request without a transaction (an ACK for a 2xx): route it and send it.
    pub async fn forward_stateless(&self, msg: Message, c: Checked) {
        if c.max_forwards == Some(0) {
            return;
        }
        let routes = msg.values(&HeaderName::Route);
        let pop = self.routes_to_pop(&routes);
        let next = routes
            .get(pop)
            .and_then(|r| name_addr_uri(r))
            .unwrap_or_else(|| c.uri.clone());
        if self.is_own_uri(&next) {
            return;
        }
        let Ok(flow) = self.resolve(&next).await else {
            inc(&self.metrics.sip_dropped);
            return;
        };
        if flow.peer() == self.addr {
            // An ACK whose transaction is gone (or never matched) addressed to this node:
            // forwarding it to ourselves would only loop.
            inc(&self.metrics.sip_dropped);
            return;
        }
        let branch = format!(
            "z9hG4bKsa{:08x}",
            fnv(&[c.via.branch().unwrap_or_default(), &c.call_id])
        );
        let t = Target {
            dest: Dest::Flow(flow.clone()),
            uri: None,
            routes: Vec::new(),
            alternates: Vec::new(),
        };
        if let Some(out) = self.forwarded(&msg, &c, &t, &flow, &branch, false, pop, &flow) {
            let _ = self.transport.send(&flow, out.raw.clone());
        }
    }

    /// Forward a response that matches no transaction (a 2xx retransmission after the
    /// transaction ended) by its Via: ours on top, the next one says where it goes.
    pub fn forward_response_stateless(&self, msg: &Message) {
        let vias = msg.values(&HeaderName::Via);
        let Some(top) = vias.first().and_then(|v| Via::parse(v).ok()) else {
            return;
        };
        if format!("{}:{}", top.host, top.port.unwrap_or(5060)) != self.addr.to_string() {
            inc(&self.metrics.sip_dropped);
            return;
        }
        let Some(next) = vias.get(1).and_then(|v| Via::parse(v).ok()) else {
            return;
        };
        let flow = self.upstream_flow(&next);
        let bytes = Edit::new(msg)
            .remove_first_value(&HeaderName::Via, "Via")
            .build();
        let _ = self.transport.send(&flow, Arc::from(bytes));
    }

    /// Where a response goes given the Via it will be sent to: another node of the mesh (by
    /// its SIP address), or the address in the Via (`received`/`rport`).
    fn upstream_flow(&self, via: &Via) -> Flow {
        let sent_by = format!("{}:{}", via.host, via.port.unwrap_or(5060));
        for m in self.mesh.members() {
            if !m.local
                && m.tags.get("sip").map(|s| s.trim_start_matches("sip:")) == Some(sent_by.as_str())
            {
                return Flow::Mesh {
                    node: m.peer_id.to_string(),
                    target: None,
                };
            }
        }
        let host = via.received().unwrap_or(&via.host);
        let port = via
            .rport()
            .flatten()
            .and_then(|p| p.parse().ok())
            .or(via.port)
            .unwrap_or(5060);
        match host.parse() {
            Ok(ip) => Flow::Udp(SocketAddr::new(ip, port)),
            Err(_) => Flow::Udp(SocketAddr::from(([127, 0, 0, 1], port))),
        }
    }
}

/// A locally made final response for a branch (timeout, transport failure).
fn synthesized(req: &Message, code: u16, reason: &str) -> Message {
    let bytes = ResponseBuilder::new(req, code, reason)
        .to_tag(&random_tag())
        .build();
    Message::parse(&bytes, true).expect("our own response parses")
}

/// Whether final response `a` beats `b` (RFC 3261 §16.7 step 6): 6xx first, then the lowest
/// class, 3xx before 4xx before 5xx.
fn better(a: u16, b: u16) -> bool {
    let rank = |c: u16| if c >= 600 { 0 } else { c / 100 };
    rank(a) <= rank(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_response_order() {
        assert!(better(603, 404));
        assert!(better(404, 503));
        assert!(better(302, 486));
        assert!(!better(500, 486));
        assert_eq!(fnv(&["a", "b"]), fnv(&["a", "b"]));
        assert_ne!(fnv(&["ab", ""]), fnv(&["a", "b"]));
    }
}
