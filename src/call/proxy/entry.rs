//! A request enters the proxy (RFC 3261 §16.3–16.4): loop detection, Route processing, and the
//! choice between following the route set (in-dialog, preloaded routes) and the location
//! service (initial requests, authenticated first when they are INVITEs).

use std::sync::Arc;

use super::targets::{Dest, Target};
use super::{name_addr_uri, Inbound, Plan, Proxy, BRANCH_TAG};
use crate::call::auth::{authenticate, Challenger};
use crate::call::dialog;
use crate::sip::flow::Flow;
use crate::sip::header::Via;
use crate::sip::message::{HeaderName, Method};
use crate::sip::uri::SipUri;
use crate::sip::Fault;

impl Proxy {
    /// Route a request that is not for this node's registrar: answer it or forward it.
    /// `target` is set when another node asks this one to deliver down one of its flows.
    pub async fn route(self: Arc<Self>, req: Inbound, target: Option<Flow>) {
        if let Some(t) = target {
            return self.deliver(req, t).await;
        }
        // Loop detection (§16.3 step 4).
        if self.looped(&req) {
            return self.reject(&req, Fault::new(482, "Loop Detected"));
        }
        // Route processing (§16.4): remove our own Route (and dead nodes' ones).
        let routes = req.msg.values(&HeaderName::Route);
        let pop = self.routes_to_pop(&routes);
        let next_route = routes.get(pop).and_then(|r| name_addr_uri(r));
        let in_dialog = req.c.to.tag().is_some();
        let single = |u: String| vec![Target::to(Dest::Uri(u))];
        let targets = if let Some(next) = next_route {
            single(next)
        } else if in_dialog {
            if self.is_own_uri(&req.c.uri) {
                return self.reject(&req, Fault::new(404, "Not Found"));
            }
            single(req.c.uri.clone())
        } else if req.flow.mesh_node().is_some() {
            // An initial request from another node, which already found the binding (this
            // node owns it): the Request-URI is the contact.
            single(req.c.uri.clone())
        } else {
            match self.initial_targets(&req).await {
                Ok(t) => t,
                Err(fault) => return self.reject(&req, fault),
            }
        };
        if in_dialog {
            self.dialogs.touch(&dialog::id_of(&req.c)).await;
        }
        let plan = Plan {
            record_route: !in_dialog && Self::records_route(&req.c.method),
            pop,
        };
        self.forward(req, targets, plan).await;
    }

    /// The previous node found the binding; this node owns its flow. If that flow is gone, an
    /// Outbound binding (`;ob` contact) fails with 430 (RFC 5626 §5.3), another is reached at
    /// its contact URI.
    async fn deliver(self: Arc<Self>, req: Inbound, flow: Flow) {
        let dest = if self.ctx.transport.is_alive(&flow) {
            Dest::Flow(flow)
        } else if SipUri::parse(&req.c.uri).is_ok_and(|u| u.param("ob").is_some()) {
            return self.reject(&req, Fault::new(430, "Flow Failed"));
        } else {
            Dest::Uri(req.c.uri.clone())
        };
        let plan = Plan {
            record_route: Self::records_route(&req.c.method),
            pop: 0,
        };
        self.forward(req, vec![Target::to(dest)], plan).await;
    }

    /// Whether a Via of ours with this request's loop hash is already on it (§16.3 step 4).
    fn looped(&self, req: &Inbound) -> bool {
        let hash = Self::loop_hash(&req.msg, &req.c);
        let ours = format!("{BRANCH_TAG}{hash}");
        let own_sent_by = self.addr.to_string();
        req.msg.values(&HeaderName::Via).iter().any(|v| {
            Via::parse(v).is_ok_and(|via| {
                format!("{}:{}", via.host, via.port.unwrap_or(5060)) == own_sent_by
                    && via.branch().is_some_and(|b| b.starts_with(&ours))
            })
        })
    }

    /// How many leading Route values to pop: ours, and those naming mesh nodes that are down
    /// (a dead node's hop is skipped: the request goes on to the next hop of the route set or
    /// to the Request-URI, the remote party's target — that is how a call outlives a node).
    pub(super) fn routes_to_pop(&self, routes: &[&str]) -> usize {
        routes
            .iter()
            .take_while(|r| {
                name_addr_uri(r)
                    .is_some_and(|uri| self.is_own_uri(&uri) || self.names_dead_node(&uri))
            })
            .count()
    }

    /// The targets of an initial request from a phone: INVITEs are authenticated first (407),
    /// then the callee is found by the location service.
    async fn initial_targets(&self, req: &Inbound) -> Result<Vec<Target>, Fault> {
        let c = &req.c;
        if c.method == Method::Invite && self.config.auth_invites {
            let caller = SipUri::parse(&c.from.uri)
                .ok()
                .and_then(|u| u.canonical_user())
                .unwrap_or_default();
            authenticate(&self.ctx, &req.msg, c, &caller, Challenger::Proxy).await?;
        }
        let Some(user) = SipUri::parse(&c.uri).ok().and_then(|u| u.canonical_user()) else {
            return Err(if matches!(c.method, Method::Other(_)) {
                Fault::new(501, "Not Implemented")
            } else {
                Fault::new(404, "Not Found")
            });
        };
        self.locate(&user).await
    }
}
