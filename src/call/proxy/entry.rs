//! A request enters the proxy (RFC 3261 §16.3–16.4): loop detection, Route processing, and the
//! choice between following the route set (in-dialog, preloaded routes) and the location
//! service (initial requests, authenticated first when they are INVITEs).

use std::sync::Arc;

use super::targets::{Dest, Target};
use super::{name_addr_uri, Hop, Inbound, Plan, Proxy, BRANCH_TAG, NODE_PARAM};
use crate::call::auth::{authenticate, Challenger};
use crate::call::dialog;
use crate::call::flow_token::FlowRef;
use crate::call::policy::not_relaying;
use crate::metrics::inc;
use crate::sip::build::Edit;
use crate::sip::flow::{Flow, StreamKind};
use crate::sip::header::Via;
use crate::sip::message::{HeaderName, Message, Method};
use crate::sip::uri::SipUri;
use crate::sip::Fault;
use sipmesh_net::PeerId;
use tracing::debug;

/// Where Route processing leaves a request.
pub(super) struct Routed {
    /// Route values to remove: ours, dead nodes', and a relaying node's.
    pub pop: usize,
    /// The next hop the route set names, if any.
    pub next: Option<Target>,
    /// Members down or gone whose entries were removed.
    pub dead: Vec<PeerId>,
    /// Whether a Route entry this mesh signed was among them (the request follows a route
    /// set the mesh recorded).
    pub signed: bool,
}

impl Proxy {
    /// Route a request that is not for this node's registrar: answer it or forward it.
    pub async fn route(self: Arc<Self>, req: Inbound) {
        let req = self.unstrict(req);
        // Loop detection (§16.3 step 4).
        if self.looped(&req) {
            return self.reject(&req, Fault::new(482, "Loop Detected"));
        }
        // RFC 4028 §8.1: a session refreshed less often than Min-SE would load every node on
        // its path for nothing.
        if matches!(&req.c.method, Method::Invite)
            || req.c.method.as_str().eq_ignore_ascii_case("UPDATE")
        {
            if let Some(interval) = dialog::session_interval(&req.msg) {
                if interval < self.config.min_se {
                    return self.reject(
                        &req,
                        Fault::new(422, "Session Interval Too Small")
                            .with("Min-SE", self.config.min_se.to_string()),
                    );
                }
            }
        }
        let routed = self.process_routes(&req.msg.values(&HeaderName::Route));
        let in_dialog = req.c.to.tag().is_some();
        if let Err(fault) = self.check_route(&req, &routed, in_dialog) {
            return self.reject(&req, fault);
        }
        let single = |u: String| vec![Target::to(Dest::Uri(u))];
        // An initial request from a phone follows a signed route entry only to another node;
        // the flows those entries name are reached through the location service (a token
        // names a flow, not a dialog: it must not open new dialogs toward that flow).
        let from_phone = req.flow.mesh_node().is_none();
        let next = routed.next.filter(|t| {
            in_dialog
                || !from_phone
                || matches!(t.dest, Dest::Flow(Flow::Mesh { target: None, .. }))
        });
        let targets = if let Some(next) = next {
            vec![next]
        } else if in_dialog {
            if self.is_own_uri(&req.c.uri) {
                return self.reject(&req, Fault::new(404, "Not Found"));
            }
            // A remote target that is a GRUU of the mesh reaches its phone wherever it is
            // registered now (the node that carried the call may be gone).
            match self.gruu_targets(&req.c.uri).await {
                Some(Ok(t)) => t,
                Some(Err(fault)) => return self.reject(&req, fault),
                None => single(req.c.uri.clone()),
            }
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

    /// The routing policy for what a phone sends (a request another node passes on was checked
    /// there): a route-set entry naming a host outside the mesh is refused, and so is an
    /// in-dialog request that does not follow a Record-Route this mesh signed.
    pub(super) fn check_route(
        &self,
        req: &Inbound,
        routed: &Routed,
        in_dialog: bool,
    ) -> Result<(), Fault> {
        if req.flow.mesh_node().is_some() {
            return Ok(());
        }
        // A Route outside the mesh is refused, but for the operator's trunk after this mesh's
        // own signed entries in a dialog (an SBC trunk that record-routes: the phone's BYE
        // must reach it).
        let foreign = match &routed.next {
            Some(Target {
                dest: Dest::Uri(uri),
                ..
            }) => !(in_dialog && routed.signed && self.ctx.policy.is_trunk_uri(uri)),
            _ => false,
        };
        if foreign || (in_dialog && !routed.signed) {
            inc(&self.ctx.metrics.sip_not_relayed);
            debug!(
                method = %req.c.method,
                uri = %req.c.uri,
                source = %req.flow.peer(),
                "not relaying: {}",
                if foreign { "a Route outside the mesh" } else { "an in-dialog request without a signed Route" }
            );
            return Err(not_relaying());
        }
        Ok(())
    }

    /// §16.4: a strict router before this node put this node's Record-Route entry in the
    /// Request-URI and the real target in the last Route. Restore the request a loose router
    /// would have sent: the entry back on top of the Route set, the last Route as the
    /// Request-URI. Any other request is returned as it is.
    fn unstrict(&self, req: Inbound) -> Inbound {
        // Cheap first: nearly every request fails this, and the hot path pays nothing more.
        if !req.c.uri.contains(";sm=") {
            return req;
        }
        let routes = req.msg.values(&HeaderName::Route);
        let Some(target) = routes.last().and_then(|r| name_addr_uri(r)) else {
            return req;
        };
        let ours = SipUri::parse(&req.c.uri).is_ok_and(|u| u.param(NODE_PARAM).is_some())
            && matches!(self.hop(&req.c.uri), Hop::Ours(_));
        if !ours {
            return req;
        }
        let mut set = vec![format!("<{}>", req.c.uri)];
        set.extend(routes[..routes.len() - 1].iter().map(|r| r.to_string()));
        let mut edit = Edit::new(&req.msg)
            .start_line(format!("{} {target} SIP/2.0", req.c.method.as_str()))
            .prepend(format!("Route: {}", set.join(", ")));
        for (i, h) in req.msg.headers.iter().enumerate() {
            if h.name == HeaderName::Route {
                edit = edit.replace(i, None);
            }
        }
        let bytes = edit.build();
        let Ok(msg) = Message::parse(&bytes, true) else {
            return req;
        };
        let Ok(c) = crate::sip::validate::check_request(&msg) else {
            return req;
        };
        debug!(target, "strict-routed request restored");
        Inbound { msg, c, ..req }
    }

    /// Whether a Via of ours with this request's loop hash is already on it (§16.3 step 4).
    fn looped(&self, req: &Inbound) -> bool {
        let hash = Self::loop_hash(&req.msg, &req.c);
        let ours = format!("{BRANCH_TAG}{hash}");
        req.msg.values(&HeaderName::Via).iter().any(|v| {
            Via::parse(v).is_ok_and(|via| {
                self.ctx.names.is_own(&via.host, via.port)
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
        let mut signed = false;
        for r in routes {
            let Some(uri) = name_addr_uri(r) else { break };
            let hop = self.hop(&uri);
            match hop {
                Hop::Ours(flow) => {
                    signed = true;
                    last_ours = Some(flow);
                }
                Hop::Address => last_ours = Some(FlowRef::None),
                Hop::Node {
                    peer, up: false, ..
                } => {
                    signed = true;
                    dead.push(peer);
                    last_ours = None;
                }
                Hop::Gone => {
                    signed = true;
                    last_ours = None;
                }
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
                        signed: true,
                    };
                }
                Hop::Foreign(uri) => {
                    return Routed {
                        pop,
                        next: Some(Target::to(Dest::Uri(uri))),
                        dead,
                        signed,
                    }
                }
            }
            pop += 1;
        }
        let next = last_ours
            .and_then(|f| f.flow())
            .filter(|f| self.ctx.transport.is_alive(f))
            .map(|f| Target::to(Dest::Flow(f)));
        Routed {
            pop,
            next,
            dead,
            signed,
        }
    }

    /// The targets of an initial request from a phone. Toward a user of the mesh's domains:
    /// that user's bindings, with the caller challenged first (407) when its From claims a
    /// user of the mesh and the method is one the policy authenticates. Toward anything else:
    /// the operator's trunk for an authenticated local caller dialling an allowed prefix, or
    /// 403 Not relaying.
    async fn initial_targets(&self, req: &Inbound) -> Result<Vec<Target>, Fault> {
        let c = &req.c;
        let Ok(ruri) = SipUri::parse(&c.uri) else {
            return Err(Fault::new(416, "Unsupported URI Scheme"));
        };
        if ruri.secure {
            // RFC 3261 §26.2: every hop to a sips: target is TLS (the mesh's own hops are
            // encrypted and authenticated by Noise).
            if self.ctx.transport.tls().is_none() {
                return Err(no_tls());
            }
            if !secure(&req.flow) {
                return Err(Fault::new(416, "sips: must arrive over TLS"));
            }
        }
        let from = SipUri::parse(&c.from.uri).ok();
        let caller = from
            .as_ref()
            .filter(|u| self.ctx.is_mesh_domain(u))
            .and_then(|u| u.canonical_user());
        if !self.ctx.is_mesh_domain(&ruri) {
            return self.trunk_targets(req, &ruri, caller).await;
        }
        if let Some(caller) = &caller {
            if self
                .ctx
                .policy
                .challenges(&c.method, self.config.auth_invites)
            {
                self.authenticate_caller(req, caller).await?;
            }
        }
        let mut targets = match crate::call::gruu::target(&self.ctx.secret, &ruri) {
            // RFC 5627 §6: a GRUU reaches the bindings of its instance only.
            Some(gruu) => {
                let (aor, instance) = gruu?;
                self.locate(&aor, Some(&instance)).await?
            }
            None => {
                let Some(user) = ruri.canonical_user() else {
                    return Err(if matches!(c.method, Method::Other(_)) {
                        Fault::new(501, "Not Implemented")
                    } else {
                        Fault::new(404, "Not Found")
                    });
                };
                self.locate(&user, None).await?
            }
        };
        if ruri.secure {
            targets.retain(|t| match &t.dest {
                Dest::Flow(Flow::Mesh {
                    target: Some(f), ..
                }) => secure(f),
                Dest::Flow(Flow::Mesh { target: None, .. }) => false,
                Dest::Flow(f) => secure(f),
                Dest::Uri(u) => SipUri::parse(u).is_ok_and(|u| u.secure),
            });
            if targets.is_empty() {
                return Err(Fault::new(480, "No TLS binding for a sips: request"));
            }
        }
        let max = self.ctx.policy.config().max_branches.max(1);
        if targets.len() > max {
            debug!(uri = %c.uri, found = targets.len(), max, "branches capped");
            targets.truncate(max);
        }
        Ok(targets)
    }

    /// The targets of a Request-URI that is a GRUU of the mesh (`None`: it is not one).
    async fn gruu_targets(&self, uri: &str) -> Option<Result<Vec<Target>, Fault>> {
        let u = SipUri::parse(uri).ok()?;
        if !self.ctx.is_mesh_domain(&u) {
            return None;
        }
        Some(match crate::call::gruu::target(&self.ctx.secret, &u)? {
            Ok((aor, instance)) => self.locate(&aor, Some(&instance)).await,
            Err(fault) => Err(fault),
        })
    }

    /// Challenge (407) or verify the caller of a request.
    async fn authenticate_caller(&self, req: &Inbound, caller: &str) -> Result<String, Fault> {
        authenticate(
            &self.ctx,
            &req.msg,
            &req.c,
            caller,
            Challenger::Proxy,
            req.flow.peer().ip(),
        )
        .await
    }

    /// A request toward a host outside the mesh: through the trunk, or refused.
    async fn trunk_targets(
        &self,
        req: &Inbound,
        ruri: &SipUri,
        caller: Option<String>,
    ) -> Result<Vec<Target>, Fault> {
        let dialled = ruri.user.clone().unwrap_or_default();
        let Some(trunk) = self.ctx.policy.trunk_for(&req.c.method, &dialled) else {
            inc(&self.ctx.metrics.sip_not_relayed);
            debug!(uri = %req.c.uri, source = %req.flow.peer(), "not relaying: no user of the mesh");
            return Err(not_relaying());
        };
        // Only an authenticated user of the mesh reaches the trunk, whatever --auth-invites.
        let Some(caller) = caller else {
            inc(&self.ctx.metrics.sip_not_relayed);
            return Err(not_relaying());
        };
        let who = self.authenticate_caller(req, &caller).await?;
        self.ctx
            .policy
            .trunk_call(&who, std::time::Instant::now())?;
        let flow = self.resolve(&trunk.uri).await?;
        Ok(vec![Target::to(Dest::Flow(flow))])
    }
}

/// The answer for a `sips:` target: it is never reached over a clear transport.
/// Whether a flow is secure end to end for sips: (TLS, WSS, or another node of the mesh).
fn secure(flow: &Flow) -> bool {
    matches!(
        flow,
        Flow::Stream {
            kind: StreamKind::Tls | StreamKind::Wss,
            ..
        } | Flow::Mesh { .. }
    )
}

pub(super) fn no_tls() -> Fault {
    Fault::new(416, "sips: needs TLS, which this node does not offer")
}
