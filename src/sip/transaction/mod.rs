//! The transaction layer (RFC 3261 §17), built for a proxy: server and client transactions for
//! INVITE and non-INVITE, timers in [`timers`], pure state machines in [`server`] and [`client`],
//! and [`Transactions`], which matches messages to them, sends what they say, and fires their
//! timers from one task.

pub mod client;
pub mod key;
pub mod server;
pub mod timers;

pub use key::{ClientKey, ServerKey};

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::Notify;
use tracing::debug;

use crate::metrics;
use crate::sip::flow::Flow;
use crate::sip::message::{Message, Method};
use crate::sip::transport::Transport;
use crate::sip::Fault;
use crate::slack::Slack;

/// What a state machine asks for.
#[derive(Debug)]
pub enum Action {
    /// Send these bytes to the transaction's peer.
    Send(Arc<[u8]>),
    /// Pass this response to the transaction user (client transactions).
    Deliver(Message),
    /// The transaction timed out (Timer B, C, F; H for a server INVITE).
    Timeout,
}

/// What a client transaction tells its user.
#[derive(Debug)]
pub enum ClientEvent {
    /// A response (provisional or final; 2xx retransmissions too).
    Response(Message),
    /// No final response in time, or the transport failed.
    Timeout,
}

/// The transaction user of a client transaction (RFC 3261 §17.1): told of every response and
/// of a timeout, synchronously, on the thread that received the response or fired the timer
/// (never while the transaction layer holds its lock).
pub trait ClientUser: Send + Sync {
    /// An event of the transaction. Returns false if the user no longer takes responses (the
    /// proxy finished with the request): a 2xx is then forwarded statelessly.
    fn on_event(&self, event: ClientEvent) -> bool;
}

/// A transaction user that takes every event and does nothing (a CANCEL's or a force-close
/// BYE's answers are not needed).
pub struct Discard;

impl ClientUser for Discard {
    fn on_event(&self, _: ClientEvent) -> bool {
        true
    }
}

/// The first send of a new client transaction failed: it never started.
#[derive(Debug)]
pub struct NotSent;

/// Most transactions held at once; beyond this new requests get 503.
pub const MAX_TRANSACTIONS: usize = 200_000;
/// Above this many transactions, lingering ones (final response done, kept only to absorb
/// retransmissions: up to 32 s by RFC 3261's timers) older than [`MIN_LINGER`] are dropped,
/// oldest first, to make room — a burst degrades retransmission absorption, not service.
pub const SOFT_TRANSACTIONS: usize = 100_000;
/// A lingering transaction is kept at least this long (T4: what a UDP retransmission needs).
pub const MIN_LINGER: std::time::Duration = timers::T4;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKey {
    Server(ServerKey),
    Client(ClientKey),
}

struct ServerEntry {
    txn: server::ServerTransaction,
    flow: Flow,
    /// Queued in `Inner::lingering`.
    lingering: bool,
    /// When the request arrived, and its method's metrics label ([`metrics::method_index`]).
    started: Instant,
    method: u8,
    /// A response beyond 100 Trying was sent (call setup is measured once).
    answered: bool,
}

struct ClientEntry {
    txn: client::ClientTransaction,
    flow: Flow,
    user: Arc<dyn ClientUser>,
    /// Queued in `Inner::lingering`.
    lingering: bool,
}

#[derive(Default)]
struct Inner {
    server: HashMap<ServerKey, ServerEntry>,
    client: HashMap<ClientKey, ClientEntry>,
    timers: BinaryHeap<Reverse<(Instant, TimerKey)>>,
    /// Transactions that reached a lingering state, oldest first (some may be gone already).
    lingering: VecDeque<(Instant, TimerKey)>,
}

impl Inner {
    fn total(&self) -> usize {
        self.server.len() + self.client.len()
    }

    /// Note a transaction that now only lingers.
    fn note_server(&mut self, key: ServerKey, now: Instant) {
        if let Some(e) = self.server.get_mut(&key) {
            if !e.lingering && e.txn.is_lingering() {
                e.lingering = true;
                self.lingering.push_back((now, TimerKey::Server(key)));
            }
        }
    }

    fn note_client(&mut self, key: ClientKey, now: Instant) {
        if let Some(e) = self.client.get_mut(&key) {
            if !e.lingering && e.txn.is_lingering() {
                e.lingering = true;
                self.lingering.push_back((now, TimerKey::Client(key)));
            }
        }
    }

    /// Above [`SOFT_TRANSACTIONS`], drop lingering transactions older than [`MIN_LINGER`].
    /// Returns how many were dropped.
    fn make_room(&mut self, now: Instant) -> usize {
        let mut dropped = 0;
        while self.total() >= SOFT_TRANSACTIONS {
            let Some((at, key)) = self.lingering.front().copied() else {
                break;
            };
            if now.duration_since(at) < MIN_LINGER {
                break;
            }
            self.lingering.pop_front();
            let gone = match key {
                TimerKey::Server(k) => self.server.remove(&k).is_some(),
                TimerKey::Client(k) => self.client.remove(&k).is_some(),
            };
            dropped += usize::from(gone);
        }
        // Keep the queue from growing with entries whose transactions ended on their own.
        if self.lingering.len() > 2 * MAX_TRANSACTIONS {
            self.forget_ended();
        }
        dropped
    }

    /// Drop the lingering notes of transactions that ended on their own.
    fn forget_ended(&mut self) {
        let (server, client) = (&self.server, &self.client);
        self.lingering.retain(|(_, k)| match k {
            TimerKey::Server(k) => server.contains_key(k),
            TimerKey::Client(k) => client.contains_key(k),
        });
    }

    /// See [`Transactions::release_slack`].
    fn release_slack(&mut self) {
        if self.lingering.len() > 2 * self.total() {
            self.forget_ended();
        }
        self.server.release();
        self.client.release();
        self.timers.release();
        self.lingering.release();
    }
}

/// What happened when a request was matched against server transactions.
#[derive(Debug, PartialEq, Eq)]
pub enum ServerMatch {
    /// A new transaction was created: the transaction user must answer it.
    New,
    /// A retransmission, absorbed (the last response was re-sent if there was one).
    Retransmission,
    /// An ACK that matched an INVITE transaction (non-2xx), absorbed.
    AckAbsorbed,
    /// An ACK matching no transaction (an ACK for a 2xx): the transaction user forwards it.
    StrayAck,
    /// Too many transactions: answer 503 statelessly.
    Overloaded,
}

/// Every transaction of a node.
pub struct Transactions {
    inner: Mutex<Inner>,
    wake: Notify,
    transport: Arc<Transport>,
    /// Timer C of proxied INVITEs.
    timer_c: std::time::Duration,
}

impl Transactions {
    /// The transaction layer over `transport`, with `timer_c` for proxied INVITEs (RFC 3261
    /// §16.6 step 11: above 3 minutes; [`timers::C`] by default); spawns its timer task.
    pub fn new(transport: Arc<Transport>, timer_c: std::time::Duration) -> Arc<Self> {
        let t = Arc::new(Transactions {
            inner: Mutex::new(Inner::default()),
            wake: Notify::new(),
            transport,
            timer_c,
        });
        tokio::spawn(timer_loop(Arc::downgrade(&t)));
        t
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn schedule(&self, inner: &mut Inner, key: TimerKey, at: Option<Instant>) {
        if let Some(at) = at {
            let earliest = inner.timers.peek().map(|Reverse((t, _))| *t);
            inner.timers.push(Reverse((at, key)));
            if earliest.is_none_or(|e| at < e) {
                self.wake.notify_one();
            }
        }
    }

    /// Carry out actions; returns false if a response could not be handed to a transaction user
    /// that went away (the caller may forward it statelessly).
    fn run(&self, flow: &Flow, actions: Vec<Action>, user: Option<&Arc<dyn ClientUser>>) -> bool {
        self.run_client(None, flow, actions, user)
    }

    /// [`Transactions::run`] for a client transaction: a send that fails (RFC 3261 §17.1.4)
    /// ends it, and its user hears a timeout.
    fn run_client(
        &self,
        key: Option<&ClientKey>,
        flow: &Flow,
        actions: Vec<Action>,
        user: Option<&Arc<dyn ClientUser>>,
    ) -> bool {
        let mut delivered = true;
        for a in actions {
            match a {
                Action::Send(bytes) => {
                    if let Err(e) = self.transport.send(flow, bytes) {
                        debug!(error = %e, "transaction send failed");
                        let failed = key.and_then(|k| {
                            let mut inner = self.lock();
                            let actions = inner.client.get_mut(k)?.txn.on_transport_error();
                            inner.client.remove(k);
                            Some(actions)
                        });
                        if let Some(actions) = failed {
                            return self.run(flow, actions, user) && delivered;
                        }
                    }
                }
                Action::Deliver(m) => {
                    if let Some(u) = user {
                        delivered &= u.on_event(ClientEvent::Response(m));
                    }
                }
                Action::Timeout => {
                    if let Some(u) = user {
                        u.on_event(ClientEvent::Timeout);
                    }
                }
            }
        }
        delivered
    }

    /// Match an incoming request against the server transactions.
    pub fn on_request(&self, key: &ServerKey, method: &Method, flow: &Flow) -> ServerMatch {
        let now = Instant::now();
        let mut inner = self.lock();
        if let Some(entry) = inner.server.get_mut(key) {
            if *method == Method::Ack && entry.txn.acks_2xx() {
                return ServerMatch::StrayAck;
            }
            let (actions, m) = if *method == Method::Ack {
                (entry.txn.on_ack(now), ServerMatch::AckAbsorbed)
            } else {
                (entry.txn.on_retransmission(), ServerMatch::Retransmission)
            };
            let flow = entry.flow.clone();
            let deadline = entry.txn.deadline();
            self.schedule(&mut inner, TimerKey::Server(*key), deadline);
            inner.note_server(*key, now);
            drop(inner);
            self.run(&flow, actions, None);
            return m;
        }
        if *method == Method::Ack {
            return ServerMatch::StrayAck;
        }
        inner.make_room(now);
        if inner.total() >= MAX_TRANSACTIONS {
            return ServerMatch::Overloaded;
        }
        let txn = server::ServerTransaction::new(*method == Method::Invite, flow.is_reliable());
        inner.server.insert(
            *key,
            ServerEntry {
                txn,
                flow: flow.clone(),
                lingering: false,
                started: now,
                method: metrics::method_index(method) as u8,
                answered: false,
            },
        );
        ServerMatch::New
    }

    /// Whether server transaction `key` exists and has sent no final response yet.
    pub fn awaiting_final(&self, key: &ServerKey) -> bool {
        self.lock().server.get(key).is_some_and(|e| {
            matches!(
                e.txn.state(),
                server::State::Trying | server::State::Proceeding
            )
        })
    }

    /// The transaction user answers server transaction `key` with a response of status `code`.
    pub fn respond(&self, key: &ServerKey, code: u16, bytes: Arc<[u8]>) {
        self.respond_as(key, code, bytes, false)
    }

    /// [`Transactions::respond`]; with `stateless`, a non-INVITE transaction is dropped once
    /// its final response is sent instead of lingering (RFC 3261 §8.2.7: challenges).
    fn respond_as(&self, key: &ServerKey, code: u16, bytes: Arc<[u8]>, stateless: bool) {
        let now = Instant::now();
        let mut inner = self.lock();
        let Some(entry) = inner.server.get_mut(key) else {
            debug!(?key, code, "response for an unknown server transaction");
            return;
        };
        let was_final = !matches!(
            entry.txn.state(),
            server::State::Trying | server::State::Proceeding
        );
        let first_answer = code > 100 && !entry.answered;
        entry.answered |= code > 100;
        let (method, took) = (usize::from(entry.method), now - entry.started);
        let actions = entry.txn.on_response(code, bytes, now);
        let flow = entry.flow.clone();
        let deadline = entry.txn.deadline();
        let drop_now = stateless && code >= 200 && !entry.txn.is_invite();
        if entry.txn.is_terminated() || drop_now {
            inner.server.remove(key);
        } else {
            self.schedule(&mut inner, TimerKey::Server(*key), deadline);
            inner.note_server(*key, now);
        }
        drop(inner);
        if !was_final {
            let sip = &self.transport.metrics().sip;
            sip.response(method, code);
            if code >= 200 {
                sip.transaction(method, took);
            }
            if first_answer && method == metrics::INVITE {
                sip.call_setup(took);
            }
        }
        self.run(&flow, actions, None);
    }

    /// Answer server transaction `key` with the response `fault` stands for (see
    /// [`crate::sip::build::reject`]).
    pub fn reject(&self, key: &ServerKey, req: &Message, top_via: &str, fault: &Fault) {
        let bytes = crate::sip::build::reject(req, Some(top_via), fault);
        self.respond_as(key, fault.code, Arc::from(bytes), fault.stateless);
    }

    /// Start a client transaction sending `request` (whose top Via carries `branch`) to `flow`;
    /// `user` hears of its responses and timeout. Fails if the request could not be sent at all
    /// (then nothing is kept and `user` hears nothing).
    pub fn start_client(
        &self,
        branch: &str,
        request: Message,
        flow: Flow,
        user: Arc<dyn ClientUser>,
    ) -> Result<(), NotSent> {
        let method = request
            .method()
            .cloned()
            .unwrap_or(Method::Other(String::new()));
        let key = ClientKey::new(branch, &method);
        let (txn, actions) =
            client::ClientTransaction::new(request, flow.is_reliable(), Instant::now());
        let txn = txn.with_timer_c(self.timer_c);
        // In the table before the first send: the answer may come back on another thread
        // before `send` returns.
        let deadline = txn.deadline();
        {
            let mut inner = self.lock();
            inner.make_room(Instant::now());
            inner.client.insert(
                key,
                ClientEntry {
                    txn,
                    flow: flow.clone(),
                    user,
                    lingering: false,
                },
            );
            self.schedule(&mut inner, TimerKey::Client(key), deadline);
        }
        for a in actions {
            if let Action::Send(bytes) = a {
                if let Err(e) = self.transport.send(&flow, bytes) {
                    debug!(error = %e, ?flow, "request not sent");
                    self.lock().client.remove(&key);
                    return Err(NotSent);
                }
            }
        }
        Ok(())
    }

    /// Match a response to a client transaction; returns false if none matched, or if its user
    /// is gone (a 2xx retransmission after the proxy finished: forward it statelessly).
    pub fn on_response(&self, branch: &str, cseq_method: &str, response: Message) -> bool {
        let key = ClientKey::new(branch, &Method::parse(cseq_method));
        let mut inner = self.lock();
        let Some(entry) = inner.client.get_mut(&key) else {
            return false;
        };
        let now = Instant::now();
        let actions = entry.txn.on_response(response, now);
        let flow = entry.flow.clone();
        let user = entry.user.clone();
        let deadline = entry.txn.deadline();
        self.schedule(&mut inner, TimerKey::Client(key), deadline);
        inner.note_client(key, now);
        drop(inner);
        self.run_client(Some(&key), &flow, actions, Some(&user))
    }

    /// Give back what a burst left: queued lingering notes of transactions that ended on their
    /// own, and the capacity the tables no longer use ([`crate::slack`]).
    pub fn release_slack(&self) {
        self.lock().release_slack();
    }

    /// How many (server, client) transactions are alive, and timers are pending.
    pub fn counts(&self) -> (usize, usize, usize) {
        let inner = self.lock();
        (inner.server.len(), inner.client.len(), inner.timers.len())
    }

    fn fire(&self, now: Instant) -> Option<Instant> {
        let mut due = Vec::new();
        {
            let mut inner = self.lock();
            while let Some(Reverse((at, _))) = inner.timers.peek() {
                if *at > now {
                    break;
                }
                let Some(Reverse((_, key))) = inner.timers.pop() else {
                    break;
                };
                due.push(key);
            }
        }
        for key in due {
            let mut inner = self.lock();
            match &key {
                TimerKey::Server(k) => {
                    let Some(entry) = inner.server.get_mut(k) else {
                        continue;
                    };
                    if entry.txn.deadline().is_none_or(|d| d > now) {
                        continue; // stale timer
                    }
                    let actions = entry.txn.on_timer(now);
                    let flow = entry.flow.clone();
                    let next = entry.txn.deadline();
                    if entry.txn.is_terminated() {
                        inner.server.remove(k);
                    } else {
                        self.schedule(&mut inner, key, next);
                    }
                    drop(inner);
                    self.run(&flow, actions, None);
                }
                TimerKey::Client(k) => {
                    let Some(entry) = inner.client.get_mut(k) else {
                        continue;
                    };
                    if entry.txn.deadline().is_none_or(|d| d > now) {
                        continue;
                    }
                    let actions = entry.txn.on_timer(now);
                    let flow = entry.flow.clone();
                    let user = entry.user.clone();
                    let next = entry.txn.deadline();
                    if entry.txn.is_terminated() {
                        inner.client.remove(k);
                    } else {
                        self.schedule(&mut inner, key, next);
                    }
                    drop(inner);
                    self.run_client(Some(k), &flow, actions, Some(&user));
                }
            }
        }
        self.lock().timers.peek().map(|Reverse((t, _))| *t)
    }
}

async fn timer_loop(this: std::sync::Weak<Transactions>) {
    loop {
        let Some(t) = this.upgrade() else { return };
        let next = t.fire(Instant::now());
        let wake = async {
            match next {
                Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
                None => std::future::pending::<()>().await,
            }
        };
        // Wait for the next deadline or for an earlier one to be scheduled; re-check at least
        // every second so a dropped layer lets the task end.
        tokio::select! {
            _ = wake => {}
            _ = t.wake.notified() => {}
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
        }
        drop(t);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message::Message;

    fn lingering_entry(now: Instant) -> ServerEntry {
        let mut txn = server::ServerTransaction::new(false, false);
        txn.on_response(200, Arc::from(&b"SIP/2.0 200 OK\r\n\r\n"[..]), now);
        ServerEntry {
            txn,
            flow: Flow::Udp("127.0.0.1:5060".parse().unwrap()),
            lingering: false,
            started: now,
            method: 5,
            answered: true,
        }
    }

    fn key(i: usize) -> ServerKey {
        let m = Message::parse(
            format!("OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK{i}\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n").as_bytes(),
            false,
        )
        .unwrap();
        let via =
            crate::sip::header::Via::parse(m.values(&crate::sip::message::HeaderName::Via)[0])
                .unwrap();
        ServerKey::of(&m, &via, &Method::Options)
    }

    #[test]
    fn under_pressure_old_lingering_transactions_make_room_young_ones_stay() {
        let t0 = Instant::now();
        let mut inner = Inner::default();
        for i in 0..SOFT_TRANSACTIONS + 10 {
            let k = key(i);
            inner.server.insert(k, lingering_entry(t0));
            inner.note_server(k, t0);
        }
        // Too young to drop.
        assert_eq!(inner.make_room(t0 + MIN_LINGER / 2), 0);
        // Old enough: dropped, oldest first, down to the soft limit.
        let dropped = inner.make_room(t0 + MIN_LINGER);
        assert_eq!(dropped, 11);
        assert_eq!(inner.total(), SOFT_TRANSACTIONS - 1);
        assert!(!inner.server.contains_key(&key(0)));
        assert!(inner.server.contains_key(&key(SOFT_TRANSACTIONS + 9)));
    }

    #[test]
    fn after_a_burst_ended_transactions_give_their_memory_back_and_live_ones_stay() {
        let t0 = Instant::now();
        let mut inner = Inner::default();
        let n = 20_000;
        for i in 0..n {
            let k = key(i);
            inner.server.insert(k, lingering_entry(t0));
            inner.note_server(k, t0);
            inner
                .timers
                .push(Reverse((t0 + timers::T4, TimerKey::Server(k))));
        }
        let peak = (inner.server.capacity(), inner.lingering.capacity());
        inner.release_slack();
        assert_eq!((inner.server.capacity(), inner.lingering.capacity()), peak);
        // Timer J ended all but the last 100 (their timers fired).
        for i in 0..n - 100 {
            inner.server.remove(&key(i));
        }
        while inner.timers.len() > 100 {
            inner.timers.pop();
        }
        inner.release_slack();
        assert!(
            inner.server.capacity() < peak.0 / 8,
            "{}",
            inner.server.capacity()
        );
        assert!(inner.lingering.capacity() < peak.1 / 8);
        assert!(inner.timers.capacity() < n / 8);
        assert_eq!(
            inner.lingering.len(),
            100,
            "only the notes of live transactions stay"
        );
        for i in n - 100..n {
            assert!(inner.server.contains_key(&key(i)));
        }
        // What stays still lingers and still makes room under pressure.
        assert_eq!(
            inner.lingering.front().map(|(_, k)| *k),
            Some(TimerKey::Server(key(n - 100)))
        );
    }
}
