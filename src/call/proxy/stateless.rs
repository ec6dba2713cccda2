//! What the proxy forwards without a transaction: the ACK for a 2xx (a request of its own
//! transaction, end to end, RFC 3261 §13.2.2.4) and 2xx retransmissions that arrive after the
//! INVITE's client transaction ended (§16.7 step 5).

use std::net::SocketAddr;
use std::sync::Arc;

use super::targets::{Dest, Target};
use super::{fnv, Inbound, Plan, Proxy};
use crate::metrics::inc;
use crate::sip::build::Edit;
use crate::sip::flow::Flow;
use crate::sip::header::Via;
use crate::sip::message::{HeaderName, Message};

impl Proxy {
    /// Forward a request without a transaction (an ACK for a 2xx): route it and send it.
    pub async fn forward_stateless(&self, req: Inbound) {
        let c = &req.c;
        if c.max_forwards == Some(0) {
            return;
        }
        let routed = self.process_routes(&req.msg.values(&HeaderName::Route));
        if self.check_route(&req, &routed, true).is_err() {
            return; // an ACK is never answered
        }
        let flow = match routed.next.map(|t| t.dest) {
            Some(Dest::Flow(f)) => f,
            Some(Dest::Uri(u)) => match self.resolve(&u).await {
                Ok(f) => f,
                Err(_) => {
                    inc(&self.ctx.metrics.sip_dropped);
                    return;
                }
            },
            None if self.is_own_uri(&c.uri) => return,
            None => match self.resolve(&c.uri).await {
                Ok(f) => f,
                Err(_) => {
                    inc(&self.ctx.metrics.sip_dropped);
                    return;
                }
            },
        };
        if flow.peer() == self.ctx.transport.local_addr()
            || self
                .ctx
                .names
                .is_own(&flow.peer().ip().to_string(), Some(flow.peer().port()))
        {
            // An ACK whose transaction is gone (or never matched) addressed to this node:
            // forwarding it to ourselves would only loop.
            inc(&self.ctx.metrics.sip_dropped);
            return;
        }
        // The same branch for every retransmission of this ACK.
        let branch = format!(
            "z9hG4bKsa{:08x}",
            fnv(&[c.via.branch().unwrap_or_default(), &c.call_id])
        );
        let t = Target::to(Dest::Flow(flow.clone()));
        let plan = Plan {
            pop: routed.pop,
            ..Plan::default()
        };
        if let Some(out) = self.forwarded(&req, &t, &flow, &branch, &plan) {
            let _ = self.ctx.transport.send(&flow, out.raw.clone());
        }
    }

    /// Forward a response that matches no transaction (a 2xx retransmission after the
    /// transaction ended) by its Via: ours on top, the next one says where it goes.
    pub fn forward_response_stateless(&self, msg: &Message) {
        let vias = msg.values(&HeaderName::Via);
        let Some(top) = vias.first().and_then(|v| Via::parse(v).ok()) else {
            return;
        };
        if !self.ctx.names.is_own(&top.host, top.port) {
            inc(&self.ctx.metrics.sip_dropped);
            return;
        }
        if !top.branch().is_some_and(|b| self.is_signed_branch(b)) {
            inc(&self.ctx.metrics.sip_forged_branch);
            return;
        }
        let Some(next) = vias.get(1).and_then(|v| Via::parse(v).ok()) else {
            return;
        };
        let flow = self.upstream_flow(&next);
        let bytes = Edit::new(msg)
            .remove_first_value(&HeaderName::Via, "Via")
            .build();
        let _ = self.ctx.transport.send(&flow, Arc::from(bytes));
    }

    /// Where a response goes given the Via it will be sent to: another node of the mesh (by
    /// its SIP address), or the address in the Via (`received`/`rport`).
    fn upstream_flow(&self, via: &Via) -> Flow {
        let sent_by = format!("{}:{}", via.host, via.port.unwrap_or(5060));
        for m in self.ctx.mesh.members() {
            if !m.local
                && m.tags.get("sip").map(|s| s.trim_start_matches("sip:")) == Some(sent_by.as_str())
            {
                return Flow::to_node(m.peer_id);
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
