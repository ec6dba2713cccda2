//! A request enters the proxy (RFC 3261 §16.3–16.4): loop detection, Route processing, and the
//! choice between following the route set (in-dialog, preloaded routes) and the location
//! service (initial requests, authenticated first when they are INVITEs).

use std::sync::Arc;

use super::targets::{Dest, Target};
use super::{name_addr_uri, Hop, Inbound, Plan, Proxy, BRANCH_TAG};
use crate::call::auth::{authenticate, Challenger};
use crate::call::dialog;
use crate::call::flow_token::FlowRef;
use crate::sip::flow::Flow;
use crate::sip::header::Via;
use crate::sip::message::{HeaderName, Method};
use crate::sip::uri::SipUri;
use crate::sip::Fault;
use sipmesh_net::PeerId;

/// Where Route processing leaves a request.
pub(super) struct Routed {
    /// Route values to remove: ours, dead nodes', and a relaying node's.
    pub pop: usize,
    /// The next hop the route set names, if any.
    pub next: Option<Target>,
    /// Members down or gone whose entries were removed.
    pub dead: Vec<PeerId>,
}

impl Proxy {
    /// Route a request that is not for this node's registrar: answer it or forward it.
    pub async fn route(self: Arc<Self>, req: Inbound) {
        // Loop detection (§16.3 step 4).
        if self.looped(&req) {
            return self.reject(&req, Fault::new(482, "Loop Detected"));
        }
        let routed = self.process_routes(&req.msg.values(&HeaderName::Route));
        let in_dialog = req.c.to.tag().is_some();
        let single = |u: String| vec![Target::to(Dest::Uri(u))];
        let targets = if let Some(next) = routed.next {
            vec![next]
        } else if in_dialog {
            if self.is_own_uri(&req.c.uri) {
                return self.reject(&req, Fault::new(404, "Not Found"));
            }
            single(req.c.uri.clone())
        } else if req.flow.mesh_node().is_some() {
            // An initial request another node passed on: the Request-URI is the contact.
            single(req.c.uri.clone())
        } else {
            match self.initial_targets(&req).await {
                Ok(t) => t,
                Err(fault) => return self.reject(&req, fault),
            }
        };
        if in_dialog {
            self.dialogs.touch(&dialog::id_of(&req.c));
        }
        let plan = Plan {
            record_route: !in_dialog && Self::records_route(&req.c.method),
            pop: routed.pop,
            dead_on_path: routed.dead,
        };
        self.forward(req, targets, plan).await;
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

    /// Route processing (§16.4, RFC 5658): remove this node's entries and those of members
    /// that are down or gone (a dead node's hop is skipped: the request goes on to the next hop
    /// or to the Request-URI, the remote party's target — that is how a call outlives a node).
    /// The next hop is then another member's entry (that member relays the request down the
    /// entry's flow, so its entry is removed too), a foreign URI, or — when the route set ends
    /// with an entry of ours — the flow that entry names, if it is still open.
    pub(super) fn process_routes(&self, routes: &[&str]) -> Routed {
        let mut pop = 0;
        let mut last_ours: Option<FlowRef> = None;
        let mut dead = Vec::new();
        for r in routes {
            let Some(uri) = name_addr_uri(r) else { break };
            let hop = self.hop(&uri);
            match hop {
                Hop::Ours(flow) => last_ours = Some(flow),
                Hop::Node {
                    peer, up: false, ..
                } => {
                    dead.push(peer);
                    last_ours = None;
                }
                Hop::Gone => last_ours = None,
                Hop::Node {
                    peer,
                    up: true,
                    flow,
                } => {
                    let next = match flow.flow() {
                        Some(f) => Target::to(Dest::Flow(Flow::Mesh {
                            node: peer,
                            target: Some(Box::new(f)),
                        })),
                        // An entry without a flow: the member routes the request itself.
                        None => Target::to(Dest::Flow(Flow::to_node(peer))),
                    };
                    let relayed = matches!(
                        next.dest,
                        Dest::Flow(Flow::Mesh {
                            target: Some(_),
                            ..
                        })
                    );
                    return Routed {
                        pop: pop + usize::from(relayed),
                        next: Some(next),
                        dead,
                    };
                }
                Hop::Foreign(uri) => {
                    return Routed {
                        pop,
                        next: Some(Target::to(Dest::Uri(uri))),
                        dead,
                    }
                }
            }
            pop += 1;
        }
        let next = last_ours
            .and_then(|f| f.flow())
            .filter(|f| self.ctx.transport.is_alive(f))
            .map(|f| Target::to(Dest::Flow(f)));
        Routed { pop, next, dead }
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
