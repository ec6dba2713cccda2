//! The forking engine (RFC 3261 §16.6–16.7, §16.10): one [`Fork`] per forwarded request, one
//! [`Branch`] per target, responses merged into one answer upstream.
//!
//! A fork is a state machine without a task of its own: its branches' client transactions
//! call it ([`ClientUser`]) on the thread that received a response or fired a timer, a CANCEL
//! finds it in the proxy's table of forks, and a member going down reaches it the same way. So a
//! call costs no task wake-ups beyond the transaction layer's.
//!
//! Invariants:
//! - Exactly one final response goes upstream through the server transaction: the first 2xx,
//!   or else the best final response once every branch has one (§16.7 step 6: 6xx, then the
//!   lowest class; a 503 is sent up as 500).
//! - 2xx responses after the first (retransmissions, or other branches that answered too)
//!   still pass upstream: the caller must see and ACK each of them (§16.7 step 5).
//! - A 2xx or a 6xx cancels every other pending branch, and so does a CANCEL from upstream. A
//!   branch is cancelled only once it is proceeding (§9.1): until then it is marked, and the
//!   CANCEL goes when its first provisional response arrives.
//! - Flows of one Outbound instance (RFC 5626) are tried one at a time: a branch that fails
//!   with 408, 430 or 503 moves on to its next standby flow, never in parallel (the phone
//!   must not ring twice).
//! - A branch through a mesh node that goes down fails at once (408), so a standby flow or
//!   the caller hears about it within the detection time.
//! - Lock order: a fork's lock, then the transaction layer's. The proxy's table of forks is
//!   never held while a fork is locked.

use std::sync::{Arc, Mutex, Weak};

use sipmesh_net::PeerId;
use tracing::debug;

use super::targets::{Dest, Target};
use super::{Hop, Inbound, Plan, Proxy};
use crate::call::dialog::{self, Dialog};
use crate::sip::build::{Edit, ResponseBuilder};
use crate::sip::flow::Flow;
use crate::sip::header::Via;
use crate::sip::message::{HeaderName, Message, Method};
use crate::sip::request::cancel_for;
use crate::sip::transaction::{ClientEvent, ClientUser, Discard, ServerKey};
use crate::sip::{random_tag, Fault};

/// INVITEs cancelled before their fork existed are remembered at most this long (64·T1: the
/// longest an INVITE can take to be routed before its caller gives up)…
const EARLY_CANCEL_TTL: std::time::Duration = crate::sip::transaction::timers::B;
/// …and at most this many.
const MAX_EARLY_CANCELS: usize = 4_096;

/// The proxy's table of running forks, and of INVITEs cancelled while still being routed
/// (authentication, location lookup, DNS, connect): one lock, so a CANCEL and the fork it
/// races with agree on which came first.
#[derive(Default)]
pub(super) struct Forks {
    running: std::collections::HashMap<ServerKey, Arc<Mutex<Fork>>>,
    cancelled_early: std::collections::HashMap<ServerKey, std::time::Instant>,
}

/// Where a branch is (its client transaction's view, as far as the fork cares).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Sent; no response yet (it cannot be cancelled yet, §9.1).
    Trying,
    /// A provisional response arrived.
    Proceeding,
    /// A final response arrived, or the branch failed.
    Completed,
}

/// One branch of a fork: a copy of the request sent to one target.
struct Branch {
    /// The branch parameter of our Via on it (its client transaction).
    id: String,
    /// The request as sent.
    request: Message,
    /// The next hop.
    flow: Flow,
    state: State,
    /// Cancel it as soon as it is proceeding.
    cancel_wanted: bool,
    /// Other flows of the same phone instance, next first, tried if this one fails.
    standby: Vec<Target>,
}

/// A final response of a branch: received, or made here (timeout, transport failure).
enum Final {
    Received(Message),
    Local(u16),
}

impl Final {
    fn code(&self) -> u16 {
        match self {
            Final::Received(m) => m.status().unwrap_or(500),
            Final::Local(c) => *c,
        }
    }
}

/// Whether final response `a` beats `b` (RFC 3261 §16.7 step 6): 6xx first, then the lowest
/// class, 3xx before 4xx before 5xx.
fn better(a: u16, b: u16) -> bool {
    let rank = |c: u16| if c >= 600 { 0 } else { c / 100 };
    rank(a) <= rank(b)
}

/// A request being forwarded to one or more targets.
pub(super) struct Fork {
    /// This fork, for the transaction users of new branches.
    me: Weak<Mutex<Fork>>,
    proxy: Arc<Proxy>,
    req: Inbound,
    plan: Plan,
    /// The request's loop hash, the prefix of every branch id.
    hash: String,
    branches: Vec<Branch>,
    /// The best final response so far (none was a 2xx).
    best: Option<Final>,
    /// A 2xx went upstream.
    answered: bool,
    /// Every branch is final: the fork is out of the proxy's table.
    done: bool,
}

/// The transaction user of one branch: hands its events to the fork. It holds the fork
/// weakly: the proxy's table keeps a fork alive until every branch is final, and client
/// transactions that linger after that (Timers D, K, M) must not keep its requests in memory.
struct BranchUser {
    fork: Weak<Mutex<Fork>>,
    index: usize,
}

impl ClientUser for BranchUser {
    fn on_event(&self, event: ClientEvent) -> bool {
        match self.fork.upgrade() {
            Some(fork) => fork
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .on_event(self.index, event),
            None => false, // the fork is over: a late 2xx is forwarded statelessly
        }
    }
}

impl Proxy {
    /// Forward a request to its targets (§16.6); the fork then relays the answer (§16.7) as
    /// responses arrive.
    pub(super) async fn forward(self: Arc<Self>, req: Inbound, targets: Vec<Target>, plan: Plan) {
        if req.c.method == Method::Invite {
            let trying = ResponseBuilder::new(&req.msg, 100, "Trying")
                .top_via(req.top_via.clone())
                .build();
            self.ctx
                .transactions
                .respond(&req.key, 100, Arc::from(trying));
        }
        // Resolve every target's next hop first: this may wait (DNS, TCP connect).
        let mut chains: Vec<Vec<(Target, Flow)>> = Vec::new();
        let mut unreachable = None;
        for t in targets {
            let mut chain = Vec::new();
            for t in std::iter::once(t.clone()).chain(t.alternates.iter().cloned()) {
                match self.next_hop(&t).await {
                    Ok(flow) => chain.push((t, flow)),
                    Err(f) => unreachable = Some(f),
                }
            }
            if !chain.is_empty() {
                chains.push(chain);
            }
        }
        let key = req.key;
        let hash = Self::loop_hash(&req.msg, &req.c);
        let fork = Arc::new_cyclic(|me| {
            Mutex::new(Fork {
                me: me.clone(),
                hash,
                proxy: self.clone(),
                req,
                plan,
                branches: Vec::new(),
                best: None,
                answered: false,
                done: false,
            })
        });
        // The fork is in the table before any branch can answer, unless a CANCEL came while
        // the INVITE was being routed: then it was answered 487 already, and goes nowhere.
        {
            let mut forks = self.forks.lock().unwrap_or_else(|p| p.into_inner());
            if forks.cancelled_early.remove(&key).is_some() {
                debug!("INVITE cancelled while being routed; not forwarded");
                return;
            }
            forks.running.insert(key, fork.clone());
        }
        let mut f = fork.lock().unwrap_or_else(|p| p.into_inner());
        for chain in chains {
            // A target and its standby flows: the first that starts is the branch.
            let mut chain = chain.into_iter();
            for (t, flow) in chain.by_ref() {
                match f.start_branch(f.branches.len(), &t, flow) {
                    Ok(mut b) => {
                        b.standby = chain.by_ref().map(|(t, _)| t).rev().collect();
                        f.branches.push(b);
                        break;
                    }
                    Err(e) => unreachable = Some(e),
                }
            }
        }
        if f.branches.is_empty() {
            let fault = unreachable.unwrap_or_else(|| Fault::new(500, "Forwarding failed"));
            f.done = true;
            drop(f);
            self.forget(&key);
            let req = &fork.lock().unwrap_or_else(|p| p.into_inner()).req;
            self.reject(req, fault);
        }
    }

    /// Where a target is sent: its flow, or its URI resolved.
    async fn next_hop(&self, t: &Target) -> Result<Flow, Fault> {
        match &t.dest {
            Dest::Flow(f) => Ok(f.clone()),
            Dest::Uri(u) => self.resolve(u).await.inspect_err(|f| {
                debug!(uri = %u, code = f.code, "next hop unreachable");
            }),
        }
    }

    /// A fork is over: out of the table.
    fn forget(&self, key: &ServerKey) {
        self.forks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .running
            .remove(key);
    }

    /// A CANCEL arrived (§16.10): answer it, and cancel the matching INVITE's branches. An
    /// INVITE still being routed (no branch yet) is answered 487 at once and never forwarded.
    /// With no INVITE of ours at all, a CANCEL routed onward (a Route naming another hop) is
    /// forwarded statelessly, as the INVITE may have been; any other gets 481.
    pub async fn cancel(&self, cancel: Inbound, invite_key: &ServerKey) {
        enum Context {
            Fork(Arc<Mutex<Fork>>),
            Routing,
            None,
        }
        let context = {
            let mut forks = self.forks.lock().unwrap_or_else(|p| p.into_inner());
            match forks.running.get(invite_key) {
                Some(fork) => Context::Fork(fork.clone()),
                None if self.ctx.transactions.awaiting_final(invite_key) => {
                    let now = std::time::Instant::now();
                    let early = &mut forks.cancelled_early;
                    if early.len() >= MAX_EARLY_CANCELS {
                        early.retain(|_, at| now.duration_since(*at) < EARLY_CANCEL_TTL);
                    }
                    if early.len() < MAX_EARLY_CANCELS {
                        early.insert(*invite_key, now);
                    }
                    Context::Routing
                }
                None => Context::None,
            }
        };
        match context {
            Context::None => {
                let onward = self
                    .process_routes(&cancel.msg.values(&HeaderName::Route))
                    .next
                    .is_some();
                if onward {
                    self.forward_stateless(cancel).await;
                } else {
                    self.reject(&cancel, Fault::new(481, "Call/Transaction Does Not Exist"));
                }
                return;
            }
            Context::Fork(fork) => fork
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .cancel_pending(),
            Context::Routing => {
                // The INVITE's own answer: 487 (§9.2), built from the CANCEL, which carries
                // the INVITE's Via, From, To, Call-ID and CSeq number.
                let terminated = ResponseBuilder::new(&cancel.msg, 487, "Request Terminated")
                    .to_tag(&random_tag())
                    .top_via(cancel.top_via.clone())
                    .build();
                let terminated = String::from_utf8_lossy(&terminated)
                    .replacen(" CANCEL\r\n", " INVITE\r\n", 1)
                    .into_bytes();
                self.ctx
                    .transactions
                    .respond(invite_key, 487, Arc::from(terminated));
            }
        }
        let ok = ResponseBuilder::new(&cancel.msg, 200, "OK")
            .to_tag(cancel.c.to.tag().unwrap_or(&random_tag()))
            .top_via(cancel.top_via.clone())
            .build();
        self.ctx
            .transactions
            .respond(&cancel.key, 200, Arc::from(ok));
    }

    /// A mesh node went down: every branch through it fails now (no answer will come).
    pub fn on_member_down(&self, node: &PeerId) {
        let forks: Vec<_> = self
            .forks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .running
            .values()
            .cloned()
            .collect();
        for fork in forks {
            let mut f = fork.lock().unwrap_or_else(|p| p.into_inner());
            let through: Vec<usize> = f
                .branches
                .iter()
                .enumerate()
                .filter(|(_, b)| b.state != State::Completed && b.flow.mesh_node() == Some(node))
                .map(|(i, _)| i)
                .collect();
            // As a 408, but no CANCEL: there is no one to send it to, and a standby flow
            // of the phone may still take the call.
            for i in through {
                if !f.done {
                    f.on_final(i, Final::Local(408));
                }
            }
        }
    }

    /// Send a CANCEL for a proceeding branch, in its own client transaction.
    fn cancel_branch(&self, b: &Branch) {
        if let Ok(cancel) = Message::parse(&cancel_for(&b.request), true) {
            let _ = self.ctx.transactions.start_client(
                &b.id,
                cancel,
                b.flow.clone(),
                Arc::new(Discard),
            );
        }
    }
}

impl Fork {
    /// Start one branch toward `t` at `flow`: build the request, start its client
    /// transaction (whose user is this fork, under index `i`).
    fn start_branch(&self, i: usize, t: &Target, flow: Flow) -> Result<Branch, Fault> {
        let proxy = &self.proxy;
        let id = proxy.new_branch(&self.hash);
        let request = proxy
            .forwarded(&self.req, t, &flow, &id, &self.plan)
            .ok_or_else(|| Fault::new(500, "Forwarding failed"))?;
        debug!(?flow, method = %self.req.c.method, "forwarding");
        let user = Arc::new(BranchUser {
            fork: self.me.clone(),
            index: i,
        });
        proxy
            .ctx
            .transactions
            .start_client(&id, request.clone(), flow.clone(), user)
            .map_err(|_| Fault::new(503, "Service Unavailable"))?;
        Ok(Branch {
            id,
            request,
            flow,
            state: State::Trying,
            cancel_wanted: false,
            standby: Vec::new(),
        })
    }

    /// An event of branch `i`'s client transaction. Returns false when the fork no longer
    /// takes responses (it is over; a late 2xx is then forwarded statelessly).
    fn on_event(&mut self, i: usize, event: ClientEvent) -> bool {
        if self.done {
            return false;
        }
        let reply = match event {
            // Responses of a branch replaced by its standby carry the old branch: ignore.
            ClientEvent::Response(m) if !self.is_current(i, &m) => return true,
            ClientEvent::Response(m) => match m.status() {
                Some(code) if code < 200 => {
                    self.on_provisional(i, code, &m);
                    return true;
                }
                Some(_) => Final::Received(m),
                None => return true,
            },
            ClientEvent::Timeout if self.branches[i].state == State::Completed => return true,
            ClientEvent::Timeout => {
                // Timer C (§16.8) on a ringing branch: CANCEL it, or the callee keeps ringing
                // and its later 200 makes a call nobody upstream waits for.
                if self.branches[i].state == State::Proceeding {
                    self.branches[i].cancel_wanted = true;
                    self.branches[i].standby.clear();
                    self.proxy.cancel_branch(&self.branches[i]);
                }
                Final::Local(408)
            }
        };
        self.on_final(i, reply);
        true
    }

    /// Whether a response belongs to branch `i` as it is now (not to a flow it replaced).
    fn is_current(&self, i: usize, m: &Message) -> bool {
        m.values(&HeaderName::Via)
            .first()
            .and_then(|v| Via::parse(v).ok())
            .is_none_or(|v| v.branch() == Some(self.branches[i].id.as_str()))
    }

    /// A provisional response: the branch is proceeding (send a wanted CANCEL now); pass it
    /// upstream unless it is a 100 or the call is already answered.
    fn on_provisional(&mut self, i: usize, code: u16, m: &Message) {
        let b = &mut self.branches[i];
        if b.state == State::Completed {
            return; // a branch given up (Timer C) still rings until its CANCEL lands
        }
        if b.state == State::Trying {
            b.state = State::Proceeding;
            if b.cancel_wanted {
                self.proxy.cancel_branch(b);
            }
        }
        if code > 100 && !self.answered {
            self.relay(code, m);
        }
    }

    /// A final response (or failure) of branch `i`.
    fn on_final(&mut self, i: usize, reply: Final) {
        let code = reply.code();
        if self.branches[i].state == State::Completed {
            // A 2xx retransmission or another 2xx (Accepted state): pass it on.
            if let (Final::Received(m), 200..=299) = (&reply, code) {
                self.relay(code, m);
            }
            return;
        }
        let flow_failed = matches!(code, 408 | 430 | 503);
        if flow_failed && !self.answered && !self.branches[i].cancel_wanted && self.try_standby(i) {
            return;
        }
        self.branches[i].state = State::Completed;
        match reply {
            Final::Received(m) if (200..300).contains(&code) => {
                self.relay(code, &m);
                self.answered = true;
                self.cancel_pending();
                self.on_answered(i, &m);
            }
            reply => {
                if code >= 600 {
                    self.cancel_pending();
                }
                if self.best.as_ref().is_none_or(|b| !better(b.code(), code)) {
                    self.best = Some(reply);
                }
            }
        }
        if self.branches.iter().all(|b| b.state == State::Completed) {
            self.finish();
        }
    }

    /// Try the next standby flow of a failed branch (§16.7 with RFC 5626 §5.3). True if one
    /// started.
    fn try_standby(&mut self, i: usize) -> bool {
        while let Some(next) = self.branches[i].standby.pop() {
            let Dest::Flow(flow) = next.dest.clone() else {
                continue; // standby flows are flows (Outbound bindings)
            };
            if let Ok(mut b) = self.start_branch(i, &next, flow) {
                b.standby = std::mem::take(&mut self.branches[i].standby);
                self.branches[i] = b;
                return true;
            }
        }
        false
    }

    /// Cancel every branch without a final response (§16.7 step 10, §16.10).
    fn cancel_pending(&mut self) {
        for b in self.branches.iter_mut() {
            if b.state == State::Completed {
                continue;
            }
            b.cancel_wanted = true;
            b.standby.clear();
            if b.state == State::Proceeding {
                self.proxy.cancel_branch(b);
            }
        }
    }

    /// A 2xx passed: an INVITE's dialog is established; a BYE's is over.
    fn on_answered(&self, i: usize, response: &Message) {
        let proxy = &self.proxy;
        match self.req.c.method {
            // A re-INVITE's 2xx: the dialog exists; its record (route sets, nodes, which side
            // called) is never rebuilt from a mid-dialog exchange, where the parties may be
            // the other way round.
            Method::Invite if self.req.c.to.tag().is_some() => {
                proxy.dialogs.touch(&dialog::id_of(&self.req.c));
            }
            Method::Invite => {
                let now = proxy.ctx.mesh.keyspace().wall_ms();
                let request = &self.branches[i].request;
                let node_of = |uri: &str| match proxy.hop(uri) {
                    Hop::Ours(_) | Hop::Address => Some(proxy.node),
                    Hop::Node { peer, .. } => Some(peer),
                    _ => None,
                };
                if let Some(d) =
                    Dialog::from_answer(request, response, &self.req.flow, now, node_of)
                {
                    // The node facing the caller writes the dialog; the others remember it.
                    let writer = self.req.flow.mesh_node().is_none();
                    let session = dialog::session_interval(response);
                    proxy.dialogs.established(d, writer, session);
                }
            }
            Method::Bye => {
                let dialogs = proxy.dialogs.clone();
                let id = dialog::id_of(&self.req.c);
                let call_id = self.req.c.call_id.clone();
                let dead = self.plan.dead_on_path.clone();
                tokio::spawn(async move { dialogs.ended(&id, &call_id, &dead).await });
            }
            _ => {}
        }
    }

    /// Every branch is final: leave the table, and unless a 2xx went up, send the best
    /// response up (§16.7 step 6).
    fn finish(&mut self) {
        self.done = true;
        self.proxy.forget(&self.req.key);
        if self.answered {
            return;
        }
        match self.best.take() {
            Some(Final::Received(m)) if m.status() == Some(503) => self
                .proxy
                .reject(&self.req, Fault::new(500, "Server Internal Error")),
            Some(Final::Received(m)) => self.relay(m.status().unwrap_or(500), &m),
            Some(Final::Local(code)) => self
                .proxy
                .reject(&self.req, Fault::new(code, "Request Timeout")),
            None => {}
        }
    }

    /// Pass a response upstream: remove our Via, answer through the server transaction.
    fn relay(&self, code: u16, response: &Message) {
        let bytes = Edit::new(response)
            .remove_first_value(&HeaderName::Via, "Via")
            .build();
        self.proxy
            .ctx
            .transactions
            .respond(&self.req.key, code, Arc::from(bytes));
    }
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
    }
}
