//! The dispatcher: every message from the transports comes here. A request is validated,
//! matched to a transaction, and handed to the registrar or the proxy; a response goes to its
//! client transaction. Malformed requests are answered statelessly with the fault's status and
//! reason when an answer can be formed, else dropped.

use std::sync::Arc;

use tracing::{debug, Instrument};

use crate::call::flow_token::NodeId;
use crate::call::proxy::{Inbound, Proxy, Relayed};
use crate::call::registrar::Registrar;
use crate::call::throttle::Verdict;
use crate::events::Kind;
use crate::metrics::{inc, method_index, Metrics, METHODS};
use crate::node::internode::{self, ForwardVerdict, Internode};
use crate::sip::build::{reject, ResponseBuilder};
use crate::sip::flow::Flow;
use crate::sip::header::Via;
use crate::sip::message::{HeaderName, Message, Method};
use crate::sip::transaction::{ServerKey, ServerMatch, Transactions};
use crate::sip::transport::{parse_guarded, Handler, Transport};
use crate::sip::uri::SipUri;
use crate::sip::validate::{self, Checked};
use crate::sip::{random_tag, Fault, ALLOW};

/// The node's dispatcher.
pub struct Dispatcher {
    /// This dispatcher, for spawning tasks from `&self` (the transport holds `Arc<dyn Handler>`).
    me: std::sync::Weak<Dispatcher>,
    transport: Arc<Transport>,
    transactions: Arc<Transactions>,
    registrar: Arc<Registrar>,
    proxy: Arc<Proxy>,
    metrics: Arc<Metrics>,
    /// The mesh (for datagrams from other nodes: their senders, the secret's clock).
    mesh: sipmesh_net::Mesh,
    /// The mesh secret that seals datagrams between nodes.
    pub(crate) secret: Arc<crate::call::secret::MeshSecret>,
    /// This node's id in datagrams.
    node_id: NodeId,
    /// Rate limits and bans.
    throttle: Arc<crate::call::throttle::Throttle>,
    /// Answer to the source port even without `rport` (NAT-friendly, like Kamailio's
    /// `force_rport()`).
    force_rport: bool,
}

impl Dispatcher {
    /// A dispatcher over these parts; call [`Transport::start`] with it to receive.
    pub fn new(
        proxy: Arc<Proxy>,
        registrar: Arc<Registrar>,
        ctx: &crate::call::Context,
        force_rport: bool,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| Dispatcher {
            me: me.clone(),
            transport: ctx.transport.clone(),
            transactions: ctx.transactions.clone(),
            registrar,
            proxy,
            metrics: ctx.metrics.clone(),
            mesh: ctx.mesh.clone(),
            secret: ctx.secret.clone(),
            node_id: NodeId::of(&ctx.mesh.peer_id()),
            throttle: ctx.throttle.clone(),
            force_rport,
        })
    }

    /// The registrar.
    pub fn registrar(&self) -> &Arc<Registrar> {
        &self.registrar
    }

    /// The transaction layer.
    pub fn transactions(&self) -> &Arc<Transactions> {
        &self.transactions
    }

    /// Answer a malformed or refused request without a transaction.
    fn stateless(&self, req: &Message, flow: &Flow, fault: &Fault) {
        inc(&self.metrics.sip_bad_requests);
        if req.count(&HeaderName::Via) == 0 {
            inc(&self.metrics.sip_dropped); // nowhere to send an answer
            return;
        }
        // With a parseable top Via the answer follows it (RFC 3261 §18.2.2); with a broken one
        // the raw Via is copied and the answer goes back to the source address.
        let (top_via, dest) = match req
            .first_value(&HeaderName::Via)
            .and_then(|v| Via::parse(v).ok())
        {
            Some(via) => (
                Some(via.stamped(flow.peer())),
                flow.response_flow(&via, self.force_rport),
            ),
            None => (None, flow.clone()),
        };
        let bytes = reject(req, top_via.as_deref(), fault);
        if self.transport.send(&dest, Arc::from(bytes)).is_ok() {
            let method = req.method().map_or(METHODS.len() - 1, method_index);
            self.metrics.sip.response(method, fault.code);
        }
    }

    fn on_request(self: &Arc<Self>, msg: Message, flow: Flow) {
        self.metrics.sip.request(msg.method(), &flow);
        if flow.mesh_node().is_none() {
            match self
                .throttle
                .request(flow.peer().ip(), std::time::Instant::now())
            {
                Verdict::Pass => {}
                Verdict::Banned => {
                    inc(&self.metrics.sip_banned_dropped);
                    return;
                }
                Verdict::NewBan => {
                    inc(&self.metrics.sip_sources_banned);
                    self.metrics.events.push(
                        Kind::Ban,
                        format!("banned {} (request rate)", flow.peer().ip()),
                    );
                    inc(&self.metrics.sip_banned_dropped);
                    return;
                }
            }
        }
        let checked = match validate::check_request(&msg) {
            Ok(c) => c,
            Err(fault) => {
                debug!(%fault, ?flow, "bad request");
                if msg.method() == Some(&Method::Ack) {
                    inc(&self.metrics.sip_dropped); // never answer an ACK
                } else {
                    self.stateless(&msg, &flow, &fault);
                }
                return;
            }
        };
        let key = ServerKey::of(&msg, &checked.via, &checked.method);
        let rflow = flow.response_flow(&checked.via, self.force_rport);
        let top_via = checked.via.stamped(flow.peer());
        let req = Inbound {
            msg,
            c: checked,
            flow,
            key,
            top_via,
        };
        match self
            .transactions
            .on_request(&req.key, &req.c.method, &rflow)
        {
            ServerMatch::New => {}
            ServerMatch::Retransmission => {
                inc(&self.metrics.sip_retransmissions_absorbed);
                return;
            }
            ServerMatch::AckAbsorbed => return,
            ServerMatch::StrayAck => {
                // An ACK for a 2xx: end to end, forwarded statelessly along its route.
                let proxy = self.proxy.clone();
                tokio::spawn(async move { proxy.forward_stateless(req).await });
                return;
            }
            ServerMatch::Overloaded => {
                self.stateless(&req.msg, &req.flow, &Fault::new(503, "Service Unavailable"));
                return;
            }
        }
        let this = self.clone();
        let span = tracing::debug_span!("sip_transaction", method = %req.c.method, call_id = %req.c.call_id);
        let fut = async move {
            // A panic is a bug; it must not leak the server transaction (enough leaked
            // transactions would turn every later request into 503): answer 500.
            let (raw, key, flow) = (req.msg.raw.clone(), req.key, req.flow.clone());
            let run = std::panic::AssertUnwindSafe(this.dispatch(req));
            if futures::FutureExt::catch_unwind(run).await.is_err() {
                inc(&this.metrics.sip_panics);
                tracing::error!("panic while handling a request; answered 500");
                this.answer_after_panic(&raw, &key, &flow);
            }
        };
        // Boxed: the future is some 8 KB (every path a request can take), which tokio would
        // otherwise copy on each move into its task and again when storing the output.
        tokio::spawn(Box::pin(fut).instrument(span));
    }

    /// Answer 500 to the request whose handling panicked (re-parsed from its bytes).
    fn answer_after_panic(&self, raw: &[u8], key: &ServerKey, flow: &Flow) {
        let Ok(msg) = Message::parse(raw, flow.is_stream()) else {
            return;
        };
        let Ok(c) = validate::check_request(&msg) else {
            return;
        };
        let top_via = c.via.stamped(flow.peer());
        self.transactions.reject(
            key,
            &msg,
            &top_via,
            &Fault::new(500, "Server Internal Error"),
        );
    }

    /// Answer a request, or hand it to the registrar or the proxy.
    async fn dispatch(&self, req: Inbound) {
        let to_node = || {
            req.msg.count(&HeaderName::Route) == 0
                && SipUri::parse(&req.c.uri).is_ok_and(|u| u.user.is_none())
        };
        match &req.c.method {
            Method::Register => {
                match self
                    .registrar
                    .handle(&req.msg, &req.c, &req.flow, &req.top_via)
                    .await
                {
                    Ok(ok) => self.transactions.respond(&req.key, 200, Arc::from(ok)),
                    Err(fault) => self.reject(&req, fault),
                }
                return;
            }
            Method::Options if to_node() => {
                let r = ResponseBuilder::new(&req.msg, 200, "OK")
                    .to_tag(&random_tag())
                    .top_via(req.top_via.clone())
                    .header("Allow", ALLOW)
                    .header("Accept", "application/sdp")
                    .header("Supported", "path, outbound");
                self.transactions
                    .respond(&req.key, 200, Arc::from(r.build()));
                return;
            }
            Method::Cancel => {
                let invite_key = ServerKey::of(&req.msg, &req.c.via, &Method::Invite);
                self.proxy.cancel(req, &invite_key).await;
                return;
            }
            _ => {}
        }
        // Requests to be forwarded.
        if let Err(fault) = check_forwardable(&req.msg, &req.c) {
            return self.reject(&req, fault);
        }
        self.proxy.clone().route(req).await;
    }

    fn reject(&self, req: &Inbound, fault: Fault) {
        self.transactions
            .reject(&req.key, &req.msg, &req.top_via, &fault);
    }

    fn on_response(&self, msg: Message, _flow: Flow) {
        inc(&self.metrics.sip_responses_received);
        let Some((_code, via)) = validate::response_head(&msg) else {
            inc(&self.metrics.sip_dropped);
            return;
        };
        // Another node's response (its token checked) goes up as it is: that node validates it.
        if self.proxy.relay_up(&msg, &via) != Relayed::NotOurs {
            return;
        }
        let Some(cseq) = validate::check_response_rest(&msg) else {
            inc(&self.metrics.sip_dropped);
            return;
        };
        let branch = via.branch().unwrap_or_default().to_string();
        let code = msg.status().unwrap_or(0);
        if !self
            .transactions
            .on_response(&branch, &cseq.method, msg.clone())
        {
            if (200..300).contains(&code) && cseq.method == "INVITE" {
                // A 2xx retransmission after the transaction ended: forward it statelessly.
                self.proxy.forward_response_stateless(&msg);
            } else {
                inc(&self.metrics.sip_dropped);
            }
        }
    }
}

/// What a request must satisfy before a proxy forwards it (RFC 3261 §16.3 steps 3 and 6).
fn check_forwardable(msg: &Message, c: &Checked) -> Result<(), Fault> {
    if c.max_forwards == Some(0) {
        return Err(Fault::new(483, "Too Many Hops"));
    }
    let unsupported: Vec<&str> = msg.values(&HeaderName::ProxyRequire);
    if !unsupported.is_empty() {
        return Err(Fault::new(420, "Bad Extension").with("Unsupported", unsupported.join(", ")));
    }
    Ok(())
}

impl Dispatcher {
    /// SIP from another node (a datagram, or a frame from the streams): bytes to relay down
    /// one of this node's flows, or a message to handle.
    pub fn on_internode(&self, from: sipmesh_net::PeerId, frame: Internode<'_>) {
        match frame {
            Internode::Deliver { flow, bytes } => self.proxy.relay_down(from, flow, bytes),
            Internode::Mesh { bytes } => self.mesh.on_datagram(from, bytes),
            // Forwards come only as datagrams (`Handler::on_datagram`).
            Internode::Forward { .. } => inc(&self.metrics.sip_dropped),
            Internode::Ping => self.pong(from),
            // Heard: `Handler::on_datagram` noted it.
            Internode::Pong => {}
            Internode::Sip { bytes } => {
                if let Some(msg) = parse_guarded(bytes, true, &self.metrics) {
                    inc(&self.metrics.sip_messages_received);
                    self.on_message(msg, Flow::to_node(from));
                }
            }
        }
    }
}

impl Dispatcher {
    /// Answer a member's ping straight to its SIP port (never around a cut: the ping asks
    /// whether the direct way is open).
    fn pong(&self, to: sipmesh_net::PeerId) {
        let Some(addr) = internode::datagram_addr(&|name| self.mesh.tag(&to, name)) else {
            return;
        };
        let now = self.mesh.keyspace().wall_ms();
        let pong = internode::seal(&Internode::Pong, self.node_id, now, &self.secret);
        let _ = self.transport.send(&Flow::Udp(addr), Arc::from(pong));
    }

    /// A datagram member `from` sent through this node for member `to`, which it cannot reach
    /// directly ([`Internode::Forward`]). For this node: opened as if it had come from its
    /// origin. For another: passed on once — only what `from` sealed itself, only to an up
    /// member this node reaches directly. Anything else is dropped.
    fn on_forward(&self, from: NodeId, to: NodeId, datagram: &[u8], now: u64) {
        let refused = || {
            debug!(?from, ?to, "forwarded datagram refused");
            inc(&self.metrics.sip_datagrams_refused)
        };
        let Some((origin, inner)) = internode::open(datagram, now, &self.secret) else {
            return refused();
        };
        let snapshot = self.mesh.snapshot();
        match internode::forward_verdict(self.node_id, from, to, origin, &inner) {
            ForwardVerdict::Refuse => return refused(),
            ForwardVerdict::Open => {
                let Some((origin, _)) = snapshot.member_by_prefix(&origin.0) else {
                    return refused();
                };
                return self.on_internode(origin, inner);
            }
            ForwardVerdict::PassOn => {}
        }
        let Some((target, true)) = snapshot.member_by_prefix(&to.0) else {
            return refused();
        };
        if !self.mesh.reached_directly(&target) {
            return refused();
        }
        let Some(addr) = internode::datagram_addr(&|name| self.mesh.tag(&target, name)) else {
            return refused();
        };
        let passed = internode::seal(
            &Internode::Forward { to, datagram },
            self.node_id,
            now,
            &self.secret,
        );
        if self
            .transport
            .send(&Flow::Udp(addr), Arc::from(passed))
            .is_ok()
        {
            inc(&self.metrics.sip_passed_on);
        }
    }
}

impl Handler for Dispatcher {
    fn on_datagram(&self, data: &[u8], _peer: std::net::SocketAddr) {
        let now = self.mesh.keyspace().wall_ms();
        let opened = internode::open(data, now, &self.secret).and_then(|(node, frame)| {
            let (peer, _) = self.mesh.snapshot().member_by_prefix(&node.0)?;
            Some((node, peer, frame))
        });
        match opened {
            // A test's cut (`Mesh::block`): dropped, as the network would.
            Some((_, peer, _)) if self.mesh.is_blocked(&peer) => {}
            Some((node, peer, Internode::Forward { to, datagram })) => {
                self.mesh.heard_directly(&peer);
                self.on_forward(node, to, datagram, now);
            }
            Some((_, peer, frame)) => {
                self.mesh.heard_directly(&peer);
                self.on_internode(peer, frame);
            }
            None => inc(&self.metrics.sip_datagrams_refused),
        }
    }

    fn admit(&self, peer: std::net::SocketAddr) -> bool {
        if self
            .throttle
            .is_banned(&peer.ip(), std::time::Instant::now())
        {
            inc(&self.metrics.sip_banned_dropped);
            return false;
        }
        true
    }

    fn on_closed(&self, flow: Flow) {
        let registrar = self.registrar.clone();
        tokio::spawn(async move {
            registrar.flow_closed(&flow).await;
        });
    }

    fn on_message(&self, msg: Message, flow: Flow) {
        // A status line, even a malformed one, is a response: never answered.
        if msg.raw.starts_with(b"SIP/") {
            self.on_response(msg, flow);
        } else if let Some(this) = self.me.upgrade() {
            this.on_request(msg, flow);
        }
    }
}
