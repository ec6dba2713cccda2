//! sipmesh's SIP message layer: framing, strict validation and byte-preserving edits, in front of
//! rsipstack's `sip` module (used for URI grammar).
//!
//! - [`message`]: lexical parsing of one message (start line, header fields, body by
//!   Content-Length), limits; `framing`: where a message ends on a stream, keepalives.
//! - [`header`]: typed views of the headers sipmesh acts on (Via, name-addr, CSeq, digest).
//! - [`uri`]: SIP URIs (rsipstack underneath), AOR canonicalisation.
//! - [`validate`]: the checks a request must pass, each failure a status code and a reason.
//! - [`address`]: how a node is named (advertised address, every name it answers to).
//! - [`build`]: responses built from requests, and byte-preserving edits of messages.
//! - `digest`: digest algorithms, HA1, stored credentials.
//! - `flow`: flows (UDP peer, TCP connection, mesh node) and where responses go.
//! - `transport`: UDP and TCP on one address, TLS, WebSocket and secure WebSocket on their
//!   own listeners, with limits.
//! - [`tls`]: the node's certificate (PEM files, reloaded when they change; self-signed for dev).
//! - `transaction`: the transaction layer of RFC 3261 §17, built for a proxy.
//! - [`request`]: requests the proxy makes itself (ACK for non-2xx, CANCEL, BYE).

pub mod address;
pub mod build;
pub mod digest;
pub(crate) mod flow;
pub(crate) mod framing;
pub mod header;
pub mod message;
pub mod request;
pub mod tls;
pub(crate) mod transaction;
pub mod transport;
pub mod uri;
pub mod validate;

pub use message::{HeaderName, Message, Method, StartLine};

/// Everything the node does with untrusted bytes before acting on them: framing, parsing,
/// validation, typed header parsing, and building an answer. The fuzz target and the mutation
/// test call this; it must return for any input, without panicking.
pub fn fuzz_one(data: &[u8]) {
    let _ = message::frame_stream(data);
    for stream in [false, true] {
        let Ok(msg) = Message::parse(data, stream) else {
            continue;
        };
        let _ = validate::answerable(&msg);
        let _ = validate::check_response(&msg);
        if let Ok(c) = validate::check_request(&msg) {
            let _ = uri::SipUri::parse(&c.uri).map(|u| u.canonical_user());
            for v in msg.values(&HeaderName::Contact) {
                let _ = header::NameAddr::parse(v, "Contact");
            }
            for v in msg.values(&HeaderName::Authorization) {
                let _ = header::DigestCredentials::parse(v);
            }
        }
        let _ = build::ResponseBuilder::new(&msg, 400, "Bad Request")
            .to_tag("t")
            .build();
        let _ = build::Edit::new(&msg)
            .remove_first_value(&HeaderName::Via, "Via")
            .build();
    }
}

/// Methods the node handles (for Allow).
pub const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, INFO, UPDATE, PRACK, MESSAGE, REFER, NOTIFY, SUBSCRIBE";

/// A random token for tags.
pub fn random_tag() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// A digest of what names one request and its retransmissions (top Via, Call-ID, From, CSeq):
/// what a stateless answer derives its To-tag and nonce from, so a retransmission gets the same
/// answer (RFC 3261 §8.2.7).
pub fn request_digest(req: &message::Message) -> u64 {
    use message::HeaderName;
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for name in [
        HeaderName::Via,
        HeaderName::CallId,
        HeaderName::From,
        HeaderName::CSeq,
    ] {
        if let Some(v) = req.first_value(&name) {
            h.update(v.as_bytes());
        }
        h.update(&[0]);
    }
    h.digest()
}

/// Why the node answers a request with a final non-2xx response it makes itself: a malformed
/// message, a challenge, a refusal, a redirect. The status code, a reason phrase naming the
/// fault, and headers the answer must carry (a challenge, Contacts of a 302, Unsupported…).
/// [`build::reject`] turns it into the response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// The status code (302, 400, 401, 403, 416, 420, 483, 505, …).
    pub code: u16,
    /// The reason phrase, naming the fault.
    pub reason: String,
    /// Headers of the answer.
    pub headers: Vec<(&'static str, String)>,
    /// Answered statelessly (RFC 3261 §8.2.7): a non-INVITE server transaction is dropped as
    /// soon as the answer is sent, instead of lingering 32 s to absorb retransmissions (a
    /// retransmission is answered afresh). For challenges to requests without credentials.
    pub stateless: bool,
}

impl Fault {
    /// A fault with a status code and a reason phrase.
    pub fn new(code: u16, reason: impl Into<String>) -> Self {
        let mut reason: String = reason.into();
        // A reason phrase must stay on one line and be reasonably short.
        reason.retain(|c| c != '\r' && c != '\n');
        reason.truncate(120);
        Fault {
            code,
            reason,
            headers: Vec::new(),
            stateless: false,
        }
    }

    /// The same fault, answered statelessly (see [`Fault::stateless`]).
    pub fn stateless(mut self) -> Self {
        self.stateless = true;
        self
    }

    /// 400 Bad Request with a reason naming the fault.
    pub fn bad(reason: impl Into<String>) -> Self {
        Fault::new(400, reason)
    }

    /// The same fault, with one more header in its answer.
    pub fn with(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code, self.reason)
    }
}
