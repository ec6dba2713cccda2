//! Counters of the node, rendered for Prometheus at `/metrics`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($name:ident: $help:literal),* $(,)?) => {
        /// The node's counters (monotonic, since start).
        #[derive(Debug, Default)]
        pub struct Metrics {
            $(#[doc = $help] pub $name: AtomicU64,)*
        }

        impl Metrics {
            /// A counter by name (without the `sipmesh_` prefix).
            pub fn get(&self, name: &str) -> Option<u64> {
                match name {
                    $(stringify!($name) => Some(self.$name.load(Ordering::Relaxed)),)*
                    _ => None,
                }
            }

            /// Prometheus text exposition of every counter, plus the given gauges.
            pub fn render(&self, gauges: &[(&str, &str, u64)]) -> String {
                let mut out = String::new();
                $(
                    let _ = writeln!(out, "# HELP sipmesh_{} {}", stringify!($name), $help);
                    let _ = writeln!(out, "# TYPE sipmesh_{} counter", stringify!($name));
                    let _ = writeln!(out, "sipmesh_{} {}", stringify!($name), self.$name.load(Ordering::Relaxed));
                )*
                for (name, help, value) in gauges {
                    let _ = writeln!(out, "# HELP sipmesh_{name} {help}");
                    let _ = writeln!(out, "# TYPE sipmesh_{name} gauge");
                    let _ = writeln!(out, "sipmesh_{name} {value}");
                }
                out
            }
        }
    };
}

counters! {
    sip_messages_received: "SIP messages received (UDP and TCP)",
    sip_requests_received: "SIP requests received",
    sip_responses_received: "SIP responses received",
    sip_dropped: "SIP messages dropped (unparseable, unanswerable, or not for us)",
    sip_bad_requests: "Requests answered with a 4xx for a malformed message",
    sip_parser_panics: "Panics caught in the parse path (a dependency bug)",
    sip_retransmissions_absorbed: "Retransmitted requests absorbed by server transactions",
    sip_tcp_connections: "TCP connections accepted or opened",
    sip_tcp_refused: "TCP connections refused at the connection limit",
    sip_tcp_closed_framing: "TCP connections closed for a framing error or timeout",
    sip_keepalives: "Double-CRLF keepalives answered",
    sip_relay_refused: "Responses with a relay Via this mesh did not sign (dropped)",
    sip_datagrams_refused: "Datagrams with the mesh's magic byte that no member sealed (dropped)",
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
}

/// Increment a counter by one.
pub fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}
