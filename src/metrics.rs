//! What the node measures, exposed for Prometheus at `/metrics` through the `prometheus-client`
//! crate (OpenMetrics text). Counters end in `_total`; labels take values from fixed sets
//! (method, transport, status class, consistency level), never a user or a Call-ID. Every
//! metric is listed in docs/OPERATIONS.md.

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::sip::flow::Flow;
use crate::sip::message::Method;

macro_rules! counters {
    ($($name:ident: $help:literal),* $(,)?) => {
        /// The node's plain counters (monotonic, since start).
        #[derive(Debug, Default)]
        pub struct Counters {
            $(#[doc = $help] pub $name: Counter,)*
        }

        impl Counters {
            /// A counter by name (without the `sipmesh_` prefix and `_total` suffix).
            pub fn get(&self, name: &str) -> Option<u64> {
                match name {
                    $(stringify!($name) => Some(self.$name.get()),)*
                    _ => None,
                }
            }

            fn register(&self, registry: &mut Registry) {
                $(registry.register(stringify!($name), $help, self.$name.clone());)*
            }
        }
    };
}

counters! {
    sip_messages_received: "SIP messages received (UDP, TCP and from other nodes)",
    sip_responses_received: "SIP responses received",
    sip_dropped: "SIP messages dropped (unparseable, unanswerable, or not for us)",
    sip_bad_requests: "Requests answered with a 4xx for a malformed message",
    sip_parser_panics: "Panics caught in the parse path (a dependency bug)",
    sip_retransmissions_absorbed: "Retransmitted requests absorbed by server transactions",
    sip_tcp_connections: "TCP connections accepted or opened",
    sip_tcp_refused: "TCP connections refused at the connection limit",
    sip_tcp_closed_framing: "TCP connections closed for a framing error or timeout",
    sip_tls_connections: "TLS connections accepted or opened (SIP over TLS and WSS)",
    sip_tls_handshake_failures: "TLS handshakes that failed or timed out",
    sip_ws_connections: "WebSocket connections upgraded (WS and WSS)",
    sip_ws_refused: "WebSocket upgrades refused: not a WebSocket request, no sip subprotocol, or too slow",
    sip_ws_closed: "WebSocket connections closed for a frame or message over the limit, a protocol error, or a timeout",
    sip_keepalives: "Double-CRLF keepalives answered",
    sip_relay_refused: "Responses with a relay Via this mesh did not sign (dropped)",
    sip_datagrams_refused: "Datagrams with the mesh's magic byte that no member sealed, or that this node may not pass on (dropped)",
    sip_routed_around: "SIP messages sent to another node through a third, because this node reaches it only through others",
    sip_passed_on: "Datagrams passed on from a member to another it cannot reach directly",
    sip_sources_banned: "Sources banned (request rate or failed authentications)",
    sip_banned_dropped: "Requests dropped because their source is banned",
    sip_not_relayed: "Requests refused (403 Not relaying) or dropped: toward no user of the mesh, or along a route this mesh did not sign",
    sip_forged_branch: "Responses to a branch this node did not sign (dropped, never relayed)",
    sip_panics: "Panics caught while handling a message (answered 500 or dropped)",
    registrar_too_many_contacts: "REGISTERs refused for exceeding the contacts per AOR",
    registrar_requests: "REGISTER requests handled",
    registrar_ok: "REGISTER requests answered 200",
    registrar_refreshes_unwritten: "REGISTER refreshes the bindings' leases covered (nothing replicated)",
    registrar_challenges: "Digest challenges sent",
    registrar_auth_failures: "Digest authentications that failed",
    registrar_replays: "Requests refused for a replayed nonce count",
    registrar_errors: "REGISTER requests that failed in the keyspace",
    keyspace_clock_refusals: "Mutations refused for a timestamp beyond the clock bound (5 min ahead)",
}

/// Method label values, in [`method_index`] order.
pub const METHODS: [&str; 15] = [
    "INVITE",
    "ACK",
    "BYE",
    "CANCEL",
    "REGISTER",
    "OPTIONS",
    "INFO",
    "UPDATE",
    "PRACK",
    "SUBSCRIBE",
    "NOTIFY",
    "REFER",
    "MESSAGE",
    "PUBLISH",
    "other",
];

/// The label index of INVITE.
pub const INVITE: usize = 0;

/// Transport label values, in [`transport_index`] order.
pub const TRANSPORTS: [&str; 6] = ["udp", "tcp", "mesh", "tls", "ws", "wss"];

/// Status class label values (index = code / 100 - 1).
pub const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "6xx"];

/// The label index of a method.
pub fn method_index(m: &Method) -> usize {
    match m {
        Method::Invite => 0,
        Method::Ack => 1,
        Method::Bye => 2,
        Method::Cancel => 3,
        Method::Register => 4,
        Method::Options => 5,
        Method::Info => 6,
        Method::Update => 7,
        Method::Prack => 8,
        Method::Subscribe => 9,
        Method::Notify => 10,
        Method::Refer => 11,
        Method::Message => 12,
        Method::Publish => 13,
        Method::Other(_) => 14,
    }
}

fn transport_index(flow: &Flow) -> usize {
    match flow {
        Flow::Udp(_) => 0,
        Flow::Tcp { .. } => 1,
        Flow::Mesh { .. } => 2,
        Flow::Stream { kind, .. } => match kind {
            crate::sip::flow::StreamKind::Tls => 3,
            crate::sip::flow::StreamKind::Ws => 4,
            crate::sip::flow::StreamKind::Wss => 5,
        },
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodTransport {
    method: &'static str,
    transport: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodClass {
    method: &'static str,
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabel {
    method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

/// SIP traffic by method, transport and status class, and transaction latency. Every child
/// is created up front and held in arrays, so the hot path is an index and an atomic add.
#[derive(Debug)]
pub struct Sip {
    requests: Family<MethodTransport, Counter>,
    responses: Family<MethodClass, Counter>,
    latency: Family<MethodLabel, Histogram>,
    call_setup: Histogram,
    requests_by: Vec<[Counter; TRANSPORTS.len()]>,
    responses_by: Vec<[Counter; CLASSES.len()]>,
    latency_by: Vec<Histogram>,
}

fn transaction_buckets() -> Histogram {
    // 250 µs .. ~65 s (an INVITE's transaction lasts until it is answered).
    Histogram::new(exponential_buckets(0.00025, 2.0, 19))
}

impl Default for Sip {
    fn default() -> Self {
        let requests: Family<MethodTransport, Counter> = Family::default();
        let responses: Family<MethodClass, Counter> = Family::default();
        let latency = Family::<MethodLabel, Histogram>::new_with_constructor(transaction_buckets);
        let requests_by = METHODS
            .iter()
            .map(|&method| {
                TRANSPORTS.map(|transport| {
                    requests.get_or_create_owned(&MethodTransport { method, transport })
                })
            })
            .collect();
        let responses_by = METHODS
            .iter()
            .map(|&method| {
                CLASSES.map(|class| responses.get_or_create_owned(&MethodClass { method, class }))
            })
            .collect();
        let latency_by = METHODS
            .iter()
            .map(|&method| latency.get_or_create_owned(&MethodLabel { method }))
            .collect();
        Sip {
            requests,
            responses,
            latency,
            call_setup: Histogram::new(exponential_buckets(0.00025, 2.0, 19)),
            requests_by,
            responses_by,
            latency_by,
        }
    }
}

impl Sip {
    /// A request arrived on `flow` (`None`: a method that could not be read).
    pub fn request(&self, method: Option<&Method>, flow: &Flow) {
        let m = method.map_or(METHODS.len() - 1, method_index);
        self.requests_by[m][transport_index(flow)].inc();
    }

    /// A response of status `code` was sent for a request of method index `method`.
    pub fn response(&self, method: usize, code: u16) {
        let class = usize::from(code / 100).clamp(1, 6) - 1;
        if let Some(row) = self.responses_by.get(method) {
            row[class].inc();
        }
    }

    /// A server transaction of method index `method` got its final response after `took`.
    pub fn transaction(&self, method: usize, took: Duration) {
        if let Some(h) = self.latency_by.get(method) {
            h.observe(took.as_secs_f64());
        }
    }

    /// An INVITE got its first answer beyond 100 Trying (ringing or final) after `took`.
    pub fn call_setup(&self, took: Duration) {
        self.call_setup.observe(took.as_secs_f64());
    }

    /// Requests received so far, every method and transport.
    pub fn requests_total(&self) -> u64 {
        self.requests_by.iter().flatten().map(Counter::get).sum()
    }

    /// Requests of one method received so far, every transport.
    pub fn requests_of(&self, method: &Method) -> u64 {
        self.requests_by[method_index(method)]
            .iter()
            .map(Counter::get)
            .sum()
    }

    /// Responses sent so far for one method in status class `class` (2 for 2xx).
    pub fn responses(&self, method: &Method, class: usize) -> u64 {
        self.responses_by[method_index(method)]
            .get(class.clamp(1, 6) - 1)
            .map_or(0, Counter::get)
    }

    /// Responses sent so far in classes 5xx and 6xx, every method.
    pub fn server_failures(&self) -> u64 {
        self.responses_by
            .iter()
            .map(|row| row[4].get() + row[5].get())
            .sum()
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(
            "sip_requests",
            "SIP requests received, by method and transport (mesh: from another node)",
            self.requests.clone(),
        );
        registry.register(
            "sip_responses_sent",
            "Responses this node's server transactions sent, by request method and status class",
            self.responses.clone(),
        );
        registry.register_with_unit(
            "sip_transaction",
            "Server transactions from request to final response, by method (INVITE: until answered)",
            Unit::Seconds,
            self.latency.clone(),
        );
        registry.register_with_unit(
            "call_setup",
            "INVITEs from arrival to the first response beyond 100 Trying (ringing, or final)",
            Unit::Seconds,
            self.call_setup.clone(),
        );
    }
}

/// The mesh and node state, sampled when `/metrics` is scraped.
#[derive(Debug, Default)]
pub struct Gauges {
    members: Family<StateLabel, Gauge>,
    /// Members in the persisted ring (up or down).
    pub ring_members: Gauge,
    /// 1 while this node sees a majority of its ring.
    pub mesh_majority: Gauge,
    /// 1 while this node is joining (streaming its ranges, answering no reads for them).
    pub mesh_joining: Gauge,
    /// Hints waiting for a peer.
    pub hints_pending: Gauge,
    /// Transactions held (server and client).
    pub transactions: Gauge,
    /// Dialogs this node is on the path of.
    pub dialogs: Gauge,
    /// Bindings this node owns (phones registered here).
    pub bindings: Gauge,
    /// Open SIP TCP connections.
    pub tcp_connections: Gauge,
    /// Sources banned now.
    pub bans: Gauge,
    /// Registrations this node takes before redirecting.
    pub capacity: Gauge,
    /// The median of the members' clocks minus this node's, seconds.
    pub clock_offset: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// 1 while this node's clock is off the mesh's (it coordinates nothing).
    pub clock_skewed: Gauge,
    /// When this node's membership credential expires, Unix seconds (0: no enrollment).
    pub credential_expires: Gauge,
}

impl Gauges {
    /// Set the member count in `state` (`up`, `down`, `left`).
    pub fn members(&self, state: &'static str, n: usize) {
        self.members
            .get_or_create(&StateLabel { state })
            .set(n as i64);
    }

    fn register(&self, registry: &mut Registry) {
        let g: [(&str, &str, &Gauge); 10] = [
            (
                "ring_members",
                "Members in this node's persisted ring, up or down",
                &self.ring_members,
            ),
            (
                "mesh_majority",
                "1 while this node sees a majority of its ring (QUORUM is served), else 0",
                &self.mesh_majority,
            ),
            (
                "mesh_joining",
                "1 while this node is joining: it streams the ranges it will own and answers no reads for them",
                &self.mesh_joining,
            ),
            (
                "hints_pending",
                "Hinted writes waiting for a replica to come back",
                &self.hints_pending,
            ),
            (
                "transactions",
                "SIP transactions held (server and client)",
                &self.transactions,
            ),
            (
                "dialogs",
                "Dialogs this node is on the path of",
                &self.dialogs,
            ),
            (
                "bindings",
                "Registered bindings this node owns",
                &self.bindings,
            ),
            (
                "tcp_connections",
                "Open SIP TCP connections",
                &self.tcp_connections,
            ),
            ("bans", "Sources banned now by the throttle", &self.bans),
            (
                "capacity",
                "Registrations this node takes before redirecting new phones",
                &self.capacity,
            ),
        ];
        registry.register(
            "members",
            "Members of the mesh as this node sees them, by state (up includes this node)",
            self.members.clone(),
        );
        for (name, help, gauge) in g {
            registry.register(name, help, gauge.clone());
        }
        registry.register_with_unit(
            "clock_offset",
            "Median of the up members' wall clocks minus this node's (positive: they are ahead)",
            Unit::Seconds,
            self.clock_offset.clone(),
        );
        registry.register_with_unit(
            "credential_expires_timestamp",
            "When this node's membership credential expires, Unix time (0: no signed enrollment); renew it by replacing the --credential file",
            Unit::Seconds,
            self.credential_expires.clone(),
        );
        registry.register(
            "clock_skewed",
            "1 while this node's clock disagrees with a majority of the members by over 15 s: it coordinates no reads or writes",
            self.clock_skewed.clone(),
        );
    }
}

/// Everything the node measures.
#[derive(Debug, Default)]
pub struct Metrics {
    counters: Counters,
    /// SIP traffic and latency.
    pub sip: Sip,
    /// Sampled state.
    pub gauges: Gauges,
    /// Recent events (for the live page; not exported to Prometheus).
    pub events: crate::events::Events,
    /// Serialises scrapes (gauges are set, then encoded).
    scrape: Mutex<()>,
}

impl std::ops::Deref for Metrics {
    type Target = Counters;
    fn deref(&self) -> &Counters {
        &self.counters
    }
}

impl Metrics {
    /// Bring a counter kept elsewhere (a total since start) up to `total`.
    pub fn catch_up(counter: &Counter, total: u64) {
        let seen = counter.get();
        if total > seen {
            counter.inc_by(total - seen);
        }
    }

    /// The OpenMetrics text of every metric; `refresh` sets the gauges first (under the scrape
    /// lock, so two scrapes never interleave).
    pub fn encode(
        &self,
        mesh: &sipmesh_net::MeshMetrics,
        refresh: impl FnOnce(&Metrics),
    ) -> String {
        let _one = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        refresh(self);
        let mut registry = Registry::with_prefix("sipmesh");
        registry.register(
            "build_info",
            "1, labelled with this node's version",
            build_info(),
        );
        self.counters.register(&mut registry);
        self.sip.register(&mut registry);
        self.gauges.register(&mut registry);
        mesh.register(&mut registry);
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        out
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Version {
    version: &'static str,
}

fn build_info() -> Family<Version, Gauge> {
    let f: Family<Version, Gauge> = Family::default();
    f.get_or_create(&Version {
        version: env!("CARGO_PKG_VERSION"),
    })
    .set(1);
    f
}

/// Increment a counter by one.
pub fn inc(c: &Counter) {
    c.inc();
}
