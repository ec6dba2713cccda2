//! The transaction layer (RFC 3261 §17), built for a proxy: server and client transactions for
//! INVITE and non-INVITE, timers in [`timers`], pure state machines in [`server`] and [`client`],
//! and [`Transactions`], which matches messages to them, sends what they say, and fires their
//! timers from one task.

pub mod client;
pub mod server;
pub mod timers;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{mpsc, Notify};
use tracing::debug;

use crate::sip::header::Via;
use crate::sip::message::{HeaderName, Message, Method};
use crate::transport::{Flow, Transport};

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

/// Most transactions held at once; beyond this new requests get 503.
pub const MAX_TRANSACTIONS: usize = 200_000;

/// The key of a server transaction (§17.2.3): branch, sent-by, method (ACK matching INVITE) and
/// Call-ID;
/// for pre-3261 requests (no magic cookie) Call-ID, CSeq, From tag and the top Via.
pub fn server_key(msg: &Message, via: &Via, method: &Method) -> String {
    let method = match method {
        Method::Ack => "INVITE",
        m => m.as_str(),
    };
    if via.is_rfc3261() {
        // RFC 3261 matches on branch, sent-by and method. The Call-ID is added: a genuine
        // retransmission always carries the same one, and it keeps two different requests
        // from a client that reuses branch values (RFC 4475's corpus does) apart.
        format!(
            "{}|{}:{}|{method}|{}",
            via.branch().unwrap_or_default(),
            via.host.to_ascii_lowercase(),
            via.port.unwrap_or(5060),
            msg.header(&HeaderName::CallId).unwrap_or_default()
        )
    } else {
        let cseq = msg
            .header(&HeaderName::CSeq)
            .and_then(|c| c.split_ascii_whitespace().next())
            .unwrap_or_default();
        let from_tag = msg
            .header(&HeaderName::From)
            .and_then(|f| crate::sip::header::NameAddr::parse(f, "From").ok())
            .and_then(|f| f.tag().map(str::to_string))
            .unwrap_or_default();
        format!(
            "2543|{}|{cseq}|{from_tag}|{}|{method}",
            msg.header(&HeaderName::CallId).unwrap_or_default(),
            msg.values(&HeaderName::Via)
                .first()
                .copied()
                .unwrap_or_default()
        )
    }
}

/// The key of a client transaction: the branch we put in our Via and the CSeq method.
pub fn client_key(branch: &str, cseq_method: &str) -> String {
    format!("{branch}|{cseq_method}")
}

#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKey {
    Server(String),
    Client(String),
}

struct ServerEntry {
    txn: server::ServerTransaction,
    flow: Flow,
}

struct ClientEntry {
    txn: client::ClientTransaction,
    flow: Flow,
    events: mpsc::Sender<ClientEvent>,
}

#[derive(Default)]
struct Inner {
    server: HashMap<String, ServerEntry>,
    client: HashMap<String, ClientEntry>,
    timers: BinaryHeap<Reverse<(Instant, TimerKey)>>,
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
}

impl Transactions {
    /// The transaction layer over `transport`; spawns its timer task.
    pub fn new(transport: Arc<Transport>) -> Arc<Self> {
        let t = Arc::new(Transactions {
            inner: Mutex::new(Inner::default()),
            wake: Notify::new(),
            transport,
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
    fn run(
        &self,
        flow: &Flow,
        actions: Vec<Action>,
        events: Option<&mpsc::Sender<ClientEvent>>,
    ) -> bool {
        let mut delivered = true;
        for a in actions {
            match a {
                Action::Send(bytes) => {
                    if let Err(e) = self.transport.send(flow, bytes) {
                        debug!(error = %e, "transaction send failed");
                    }
                }
                Action::Deliver(m) => {
                    if let Some(ev) = events {
                        if let Err(mpsc::error::TrySendError::Closed(_)) =
                            ev.try_send(ClientEvent::Response(m))
                        {
                            delivered = false;
                        }
                    }
                }
                Action::Timeout => {
                    if let Some(ev) = events {
                        let _ = ev.try_send(ClientEvent::Timeout);
                    }
                }
            }
        }
        delivered
    }

    /// Match an incoming request against the server transactions.
    pub fn on_request(&self, key: &str, method: &Method, flow: &Flow) -> ServerMatch {
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
            self.schedule(&mut inner, TimerKey::Server(key.to_string()), deadline);
            drop(inner);
            self.run(&flow, actions, None);
            return m;
        }
        if *method == Method::Ack {
            return ServerMatch::StrayAck;
        }
        if inner.server.len() + inner.client.len() >= MAX_TRANSACTIONS {
            return ServerMatch::Overloaded;
        }
        let txn = server::ServerTransaction::new(*method == Method::Invite, flow.is_reliable());
        inner.server.insert(
            key.to_string(),
            ServerEntry {
                txn,
                flow: flow.clone(),
            },
        );
        ServerMatch::New
    }

    /// The transaction user answers server transaction `key` with a response of status `code`.
    pub fn respond(&self, key: &str, code: u16, bytes: Arc<[u8]>) {
        let now = Instant::now();
        let mut inner = self.lock();
        let Some(entry) = inner.server.get_mut(key) else {
            debug!(key, code, "response for an unknown server transaction");
            return;
        };
        let actions = entry.txn.on_response(code, bytes, now);
        let flow = entry.flow.clone();
        let deadline = entry.txn.deadline();
        if entry.txn.is_terminated() {
            inner.server.remove(key);
        } else {
            self.schedule(&mut inner, TimerKey::Server(key.to_string()), deadline);
        }
        drop(inner);
        self.run(&flow, actions, None);
    }

    /// Start a client transaction sending `request` (whose top Via carries `branch`) to `flow`.
    /// Responses and timeouts arrive on the returned channel.
    pub fn start_client(
        &self,
        branch: &str,
        request: Message,
        flow: Flow,
    ) -> mpsc::Receiver<ClientEvent> {
        let (tx, rx) = mpsc::channel(16);
        let method = request
            .method()
            .map(|m| m.as_str().to_string())
            .unwrap_or_default();
        let key = client_key(branch, &method);
        let (txn, actions) =
            client::ClientTransaction::new(request, flow.is_reliable(), Instant::now());
        let deadline = txn.deadline();
        {
            let mut inner = self.lock();
            inner.client.insert(
                key.clone(),
                ClientEntry {
                    txn,
                    flow: flow.clone(),
                    events: tx.clone(),
                },
            );
            self.schedule(&mut inner, TimerKey::Client(key.clone()), deadline);
        }
        for a in actions {
            if let Action::Send(bytes) = a {
                if self.transport.send(&flow, bytes).is_err() {
                    let mut inner = self.lock();
                    if let Some(e) = inner.client.get_mut(&key) {
                        let actions = e.txn.on_transport_error();
                        drop(inner);
                        self.run(&flow, actions, Some(&tx));
                    }
                    break;
                }
            }
        }
        rx
    }

    /// Match a response to a client transaction; returns false if none matched, or if its user
    /// is gone (a 2xx retransmission after the proxy finished: forward it statelessly).
    pub fn on_response(&self, branch: &str, cseq_method: &str, response: Message) -> bool {
        let key = client_key(branch, cseq_method);
        let mut inner = self.lock();
        let Some(entry) = inner.client.get_mut(&key) else {
            return false;
        };
        let actions = entry.txn.on_response(response, Instant::now());
        let flow = entry.flow.clone();
        let events = entry.events.clone();
        let deadline = entry.txn.deadline();
        self.schedule(&mut inner, TimerKey::Client(key), deadline);
        drop(inner);
        self.run(&flow, actions, Some(&events))
    }

    /// The state of a client transaction (for CANCEL: only a proceeding INVITE can be cancelled).
    pub fn client_state(&self, branch: &str, method: &str) -> Option<client::State> {
        self.lock()
            .client
            .get(&client_key(branch, method))
            .map(|e| e.txn.state())
    }

    /// How many transactions are alive.
    pub fn len(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.server.len(), inner.client.len())
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
                        self.schedule(&mut inner, key.clone(), next);
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
                    let events = entry.events.clone();
                    let next = entry.txn.deadline();
                    if entry.txn.is_terminated() {
                        inner.client.remove(k);
                    } else {
                        self.schedule(&mut inner, key.clone(), next);
                    }
                    drop(inner);
                    self.run(&flow, actions, Some(&events));
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
