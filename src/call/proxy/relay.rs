//! The relay: what a node does for another node's transaction on one of its own flows. The
//! stateful proxy upstream wrote the request as the phone must see it; the relay sends it down
//! the flow, and hands each response back up, stripped of the Via the upstream node wrote in its
//! name. No transaction, no parse on the way down.
//!
//! A response is handed up only if its top Via carries a relay token this mesh signed for that
//! very branch (RFC 5626-style HMAC): anything else is dropped and counted, so the relay cannot
//! be used to reflect traffic.

use std::sync::Arc;

use sipmesh_net::PeerId;
use tracing::debug;

use super::{Proxy, RELAY_TAG};
use crate::call::flow_token::Token;
use crate::metrics::inc;
use crate::sip::build::{without_top_via, ResponseBuilder};
use crate::sip::flow::Flow;
use crate::sip::header::Via;
use crate::sip::message::{HeaderName, Message, Method};
use crate::sip::random_tag;
use crate::sip::uri::SipUri;

/// What became of a response offered to the relay.
#[derive(Debug, PartialEq, Eq)]
pub enum Relayed {
    /// Its top Via is not a relay Via: not the relay's business.
    NotOurs,
    /// Handed up to the node that wrote the Via.
    Up,
    /// A relay Via this mesh did not sign, or naming a node that is gone: dropped.
    Refused,
}

impl Proxy {
    /// Another node's request (or ACK, CANCEL) for one of this node's flows: send it down as it
    /// is. If the flow is gone, an Outbound target (`;ob`) fails with 430 (RFC 5626 §5.3), and
    /// another is sent to its contact address instead.
    pub fn relay_down(self: &Arc<Self>, from: PeerId, flow: Flow, bytes: &[u8]) {
        let bytes: Arc<[u8]> = Arc::from(bytes);
        if self.ctx.transport.is_alive(&flow)
            && self.ctx.transport.send(&flow, bytes.clone()).is_ok()
        {
            return;
        }
        let Ok(req) = Message::parse(&bytes, true) else {
            inc(&self.ctx.metrics.sip_dropped);
            return;
        };
        let Some(method) = req.method().cloned() else {
            return; // a response has no business here
        };
        let uri = req.request_uri().unwrap_or_default().to_string();
        let outbound = SipUri::parse(&uri).is_ok_and(|u| u.param("ob").is_some());
        if outbound {
            if method != Method::Ack {
                let r = ResponseBuilder::new(&req, 430, "Flow Failed")
                    .to_tag(&random_tag())
                    .build();
                if let Ok(r) = Message::parse(&r, true) {
                    self.hand_up(&r, from);
                }
            }
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            match this.resolve(&uri).await {
                Ok(to) => {
                    let _ = this.ctx.transport.send(&to, bytes);
                }
                Err(f) => debug!(uri, code = f.code, "relay target unreachable"),
            }
        });
    }

    /// A response arrived: if its top Via is a relay Via of this mesh, strip it and hand the
    /// response up to the node its token names.
    pub fn relay_up(&self, msg: &Message, via: &Via) -> Relayed {
        let Some(rest) = via.branch().and_then(|b| b.strip_prefix(RELAY_TAG)) else {
            return Relayed::NotOurs;
        };
        let node = rest.split_once('.').and_then(|(token, suffix)| {
            match Token::decode(token, &self.ctx.secret, suffix.as_bytes()) {
                Some(Token::Up { node }) => Some(node),
                _ => None,
            }
        });
        let peer = node.and_then(|n| self.ctx.mesh.snapshot().member_by_prefix(&n.0));
        match peer {
            Some((peer, _)) => {
                // A dialog of this node can end by a BYE the other side's node handled: its
                // 2xx comes up through here.
                if msg.status().is_some_and(|c| (200..300).contains(&c))
                    && msg
                        .header(&HeaderName::CSeq)
                        .is_some_and(|c| c.ends_with("BYE"))
                {
                    self.dialogs.ended_elsewhere(msg);
                }
                self.hand_up(msg, peer);
                Relayed::Up
            }
            None => {
                inc(&self.ctx.metrics.sip_relay_refused);
                Relayed::Refused
            }
        }
    }

    /// Strip the top Via (the relay's) and send the response to `node`.
    fn hand_up(&self, response: &Message, node: PeerId) {
        let bytes = without_top_via(response);
        if let Err(e) = self
            .ctx
            .transport
            .send(&Flow::to_node(node), Arc::from(bytes))
        {
            debug!(%node, error = %e, "response not handed up");
        }
    }
}
