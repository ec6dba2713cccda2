//! The SIP server of a node: every message from the transports comes here, is validated, matched
//! to a transaction, and handed to the registrar or the proxy. Malformed requests are answered
//! statelessly with the fault's status and reason when an answer can be formed, else dropped.

use std::net::SocketAddr;
use std::sync::Arc;

use tracing::{debug, Instrument};

use crate::metrics::{inc, Metrics};
use crate::proxy::Proxy;
use crate::registrar::{random_tag, Registrar};
use crate::sip::build::ResponseBuilder;
use crate::sip::header::Via;
use crate::sip::message::{HeaderName, Message, Method};
use crate::sip::uri::SipUri;
use crate::sip::validate::{self, Checked};
use crate::sip::Fault;
use crate::transaction::{server_key, ServerMatch, Transactions};
use crate::transport::{Flow, Handler, Transport};

/// Methods the node handles (for Allow).
pub const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, INFO, UPDATE, PRACK, MESSAGE, REFER, NOTIFY, SUBSCRIBE";

/// The node's SIP server.
pub struct SipServer {
    /// This server, for spawning tasks from `&self` (the transport holds `Arc<dyn Handler>`).
    me: std::sync::Weak<SipServer>,
    transport: Arc<Transport>,
    transactions: Arc<Transactions>,
    registrar: Arc<Registrar>,
    proxy: Arc<Proxy>,
    metrics: Arc<Metrics>,
    /// Answer to the source port even without `rport` (NAT-friendly, like Kamailio's
    /// `force_rport()`).
    force_rport: bool,
}

/// The top Via with `received` and `rport` filled in from the source address (RFC 3581).
pub fn stamp_via(via: &Via, source: SocketAddr) -> String {
    let mut params = via.params.clone();
    let src_ip = source.ip().to_string();
    if via.host != src_ip
        && !params
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("received"))
    {
        params.push(("received".into(), Some(src_ip)));
    }
    for (n, v) in params.iter_mut() {
        if n.eq_ignore_ascii_case("rport") && v.is_none() {
            *v = Some(source.port().to_string());
        }
    }
    let host = if via.host.contains(':') {
        format!("[{}]", via.host)
    } else {
        via.host.clone()
    };
    let mut out = format!("SIP/2.0/{} {host}", via.transport);
    if let Some(p) = via.port {
        out.push_str(&format!(":{p}"));
    }
    for (n, v) in params {
        match v {
            Some(v) => out.push_str(&format!(";{n}={v}")),
            None => out.push_str(&format!(";{n}")),
        }
    }
    out
}

/// Where responses to a request go (RFC 3261 §18.2.2, RFC 3581): the same connection on TCP; on
/// UDP the source address when `rport` was asked for, else the source IP and the Via port.
pub fn response_flow(via: &Via, flow: &Flow, force_rport: bool) -> Flow {
    match flow {
        Flow::Udp(src) if via.rport().is_none() && !force_rport => {
            Flow::Udp(SocketAddr::new(src.ip(), via.port.unwrap_or(5060)))
        }
        other => other.clone(),
    }
}

impl SipServer {
    /// A server over these parts; call [`Transport::start`] with it to receive.
    pub fn new(
        transport: Arc<Transport>,
        transactions: Arc<Transactions>,
        registrar: Arc<Registrar>,
        proxy: Arc<Proxy>,
        metrics: Arc<Metrics>,
        force_rport: bool,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| SipServer {
            me: me.clone(),
            transport,
            transactions,
            registrar,
            proxy,
            metrics,
            force_rport,
        })
    }

    fn stateless(&self, req: &Message, flow: &Flow, fault: &Fault) {
        inc(&self.metrics.sip_bad_requests);
        if req.count(&HeaderName::Via) == 0 {
            inc(&self.metrics.sip_dropped); // nowhere to send an answer
            return;
        }
        let mut r = ResponseBuilder::new(req, fault.code, &fault.reason).to_tag(&random_tag());
        // With a parseable top Via the answer follows it (RFC 3261 §18.2.2); with a broken one
        // the raw Via is copied and the answer goes back to the source address.
        let dest = match req
            .values(&HeaderName::Via)
            .first()
            .and_then(|v| Via::parse(v).ok())
        {
            Some(via) => {
                r = r.top_via(stamp_via(&via, flow.peer()));
                response_flow(&via, flow, self.force_rport)
            }
            None => flow.clone(),
        };
        if fault.code == 405 || fault.code == 501 {
            r = r.header("Allow", ALLOW);
        }
        let _ = self.transport.send(&dest, Arc::from(r.build()));
    }

    fn on_request(self: &Arc<Self>, msg: Message, flow: Flow) {
        inc(&self.metrics.sip_requests_received);
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
        // A request another node hands over for delivery down one of this node's flows.
        let (flow, target) = match flow {
            Flow::Mesh { node, target } => (Flow::Mesh { node, target: None }, target.map(|t| *t)),
            other => (other, None),
        };
        let key = server_key(&msg, &checked.via, &checked.method);
        let rflow = response_flow(&checked.via, &flow, self.force_rport);
        match self.transactions.on_request(&key, &checked.method, &rflow) {
            ServerMatch::New => {}
            ServerMatch::Retransmission => {
                inc(&self.metrics.sip_retransmissions_absorbed);
                return;
            }
            ServerMatch::AckAbsorbed => return,
            ServerMatch::StrayAck => {
                // An ACK for a 2xx: end to end, forwarded statelessly along its route.
                let proxy = self.proxy.clone();
                tokio::spawn(async move { proxy.forward_stateless(msg, checked).await });
                return;
            }
            ServerMatch::Overloaded => {
                self.stateless(&msg, &flow, &Fault::new(503, "Service Unavailable"));
                return;
            }
        }
        let this = self.clone();
        let span = tracing::debug_span!("sip_transaction", method = %checked.method, call_id = %checked.call_id);
        tokio::spawn(
            async move {
                let top_via = stamp_via(&checked.via, flow.peer());
                if let Some((code, bytes)) = this
                    .dispatch(msg, checked, flow, &top_via, &key, target)
                    .await
                {
                    this.transactions.respond(&key, code, Arc::from(bytes));
                }
            }
            .instrument(span),
        );
    }

    /// Answer a request (`Some`), or hand it to the proxy, which answers through the
    /// transaction itself (`None`).
    async fn dispatch(
        &self,
        msg: Message,
        c: Checked,
        flow: Flow,
        top_via: &str,
        key: &str,
        target: Option<Flow>,
    ) -> Option<(u16, Vec<u8>)> {
        let respond = |code: u16, reason: &str| {
            let r = ResponseBuilder::new(&msg, code, reason)
                .to_tag(&random_tag())
                .top_via(top_via.to_string());
            let r = if code == 405 || code == 501 {
                r.header("Allow", ALLOW)
            } else {
                r
            };
            Some((code, r.build()))
        };
        let to_node = SipUri::parse(&c.uri)
            .map(|u| u.user.is_none())
            .unwrap_or(false)
            && msg.count(&HeaderName::Route) == 0;
        match &c.method {
            Method::Register if target.is_none() => {
                return Some(self.registrar.handle(&msg, &c, &flow, top_via).await)
            }
            Method::Options if to_node && target.is_none() => {
                let r = ResponseBuilder::new(&msg, 200, "OK")
                    .to_tag(&random_tag())
                    .top_via(top_via.to_string())
                    .header("Allow", ALLOW)
                    .header("Accept", "application/sdp")
                    .header("Supported", "path, outbound");
                return Some((200, r.build()));
            }
            Method::Cancel => {
                let invite_key = server_key(&msg, &c.via, &Method::Invite);
                self.proxy.cancel(&msg, &c, key, &invite_key, top_via);
                return None;
            }
            _ => {}
        }
        // Requests to be forwarded.
        if c.max_forwards == Some(0) {
            return respond(483, "Too Many Hops");
        }
        let unsupported: Vec<&str> = msg.values(&HeaderName::ProxyRequire);
        if !unsupported.is_empty() {
            let r = ResponseBuilder::new(&msg, 420, "Bad Extension")
                .to_tag(&random_tag())
                .top_via(top_via.to_string())
                .header("Unsupported", unsupported.join(", "));
            return Some((420, r.build()));
        }
        self.proxy
            .clone()
            .route(msg, c, flow, top_via.to_string(), key.to_string(), target)
            .await;
        None
    }

    fn on_response(&self, msg: Message, _flow: Flow) {
        inc(&self.metrics.sip_responses_received);
        let Some((_code, via, cseq)) = validate::check_response(&msg) else {
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

impl SipServer {
    /// The registrar.
    pub fn registrar(&self) -> &Arc<Registrar> {
        &self.registrar
    }
}

impl Handler for SipServer {
    fn on_closed(&self, flow: Flow) {
        let registrar = self.registrar.clone();
        tokio::spawn(async move {
            registrar.flow_closed(&flow).await;
        });
    }

    fn on_message(&self, msg: Message, flow: Flow) {
        // A status line, even a malformed one, is a response: never answered.
        match &msg.start {
            _ if msg.raw.starts_with(b"SIP/") => self.on_response(msg, flow),
            _ => {
                if let Some(this) = self.me.upgrade() {
                    this.on_request(msg, flow);
                }
            }
        }
    }
}
