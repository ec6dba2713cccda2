//! Requests a proxy makes itself: the ACK for a non-2xx final response (RFC 3261 §17.1.1.3), the
//! CANCEL of a pending branch (§9.1), and the BYE that force-closes a dialog whose path lost a
//! node. One builder writes all three, so their header order and framing are the same.

use super::message::{HeaderName, Message};

/// A request under construction: start line, then Via, Route, Max-Forwards, From, To, Call-ID,
/// CSeq, extra headers, and an empty body.
#[derive(Debug, Clone)]
pub struct RequestBuilder {
    method: String,
    uri: String,
    vias: Vec<String>,
    routes: Vec<String>,
    from: String,
    to: String,
    call_id: String,
    cseq: u32,
    headers: Vec<(&'static str, String)>,
}

impl RequestBuilder {
    /// A `method` request to `uri` within the call identified by `from`, `to` (full header
    /// values, tags included) and `call_id`, with sequence number `cseq`.
    pub fn new(method: &str, uri: &str, from: &str, to: &str, call_id: &str, cseq: u32) -> Self {
        RequestBuilder {
            method: method.to_string(),
            uri: uri.to_string(),
            vias: Vec::new(),
            routes: Vec::new(),
            from: from.to_string(),
            to: to.to_string(),
            call_id: call_id.to_string(),
            cseq,
            headers: Vec::new(),
        }
    }

    /// Add a Via value (the first added is the top one).
    pub fn via(mut self, value: impl Into<String>) -> Self {
        self.vias.push(value.into());
        self
    }

    /// Add Route values, in order.
    pub fn routes<S: AsRef<str>>(mut self, values: impl IntoIterator<Item = S>) -> Self {
        self.routes
            .extend(values.into_iter().map(|s| s.as_ref().to_string()));
        self
    }

    /// Add another header.
    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// The request's bytes.
    pub fn build(self) -> Vec<u8> {
        use std::fmt::Write as _;
        let mut out = String::with_capacity(512);
        let _ = write!(out, "{} {} SIP/2.0\r\n", self.method, self.uri);
        for v in &self.vias {
            let _ = write!(out, "Via: {v}\r\n");
        }
        for r in &self.routes {
            let _ = write!(out, "Route: {r}\r\n");
        }
        let _ = write!(
            out,
            "Max-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {} {}\r\n",
            self.from, self.to, self.call_id, self.cseq, self.method
        );
        for (n, v) in &self.headers {
            let _ = write!(out, "{n}: {v}\r\n");
        }
        out.push_str("Content-Length: 0\r\n\r\n");
        out.into_bytes()
    }
}

/// The CSeq number of a message (0 if it has none that parses).
fn cseq_number(m: &Message) -> u32 {
    m.header(&HeaderName::CSeq)
        .and_then(|c| c.split_ascii_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// A request of `method` sharing `request`'s Request-URI, top Via, Route set, From, Call-ID
/// and CSeq number; To from `to_from` (the response, for an ACK; the request, for a CANCEL).
fn same_transaction(method: &str, request: &Message, to_from: &Message) -> Vec<u8> {
    let h = |m: &Message, name: HeaderName| m.header(&name).unwrap_or_default().to_string();
    let mut b = RequestBuilder::new(
        method,
        request.request_uri().unwrap_or_default(),
        &h(request, HeaderName::From),
        &h(to_from, HeaderName::To),
        &h(request, HeaderName::CallId),
        cseq_number(request),
    )
    .routes(request.values(&HeaderName::Route));
    if let Some(via) = request.values(&HeaderName::Via).first() {
        b = b.via(*via);
    }
    b.build()
}

/// The ACK for a non-2xx final response to an INVITE (RFC 3261 §17.1.1.3): the INVITE's
/// Request-URI, top Via, Route, From, Call-ID and CSeq number; the response's To (its tag).
pub fn ack_for(request: &Message, response: &Message) -> Vec<u8> {
    same_transaction("ACK", request, response)
}

/// The CANCEL of a pending request (RFC 3261 §9.1): the same Request-URI, top Via (so it
/// matches the same transaction downstream), Route, From, To, Call-ID and CSeq number.
pub fn cancel_for(request: &Message) -> Vec<u8> {
    same_transaction("CANCEL", request, request)
}

#[cfg(test)]
mod tests {
    use super::*;

    const INVITE: &[u8] = b"INVITE sip:bob@b.example SIP/2.0\r\nVia: SIP/2.0/UDP p:5060;branch=z9hG4bKp1\r\nVia: SIP/2.0/UDP a;branch=z9hG4bKa1\r\nRoute: <sip:x;lr>\r\nMax-Forwards: 69\r\nFrom: <sip:alice@a>;tag=at\r\nTo: <sip:bob@b.example>\r\nCall-ID: c1\r\nCSeq: 7 INVITE\r\nContent-Length: 0\r\n\r\n";

    #[test]
    fn cancel_matches_the_invite_transaction() {
        let invite = Message::parse(INVITE, false).unwrap();
        let cancel = Message::parse(&cancel_for(&invite), true).unwrap();
        assert_eq!(cancel.request_uri(), Some("sip:bob@b.example"));
        assert_eq!(
            cancel.values(&HeaderName::Via),
            vec!["SIP/2.0/UDP p:5060;branch=z9hG4bKp1"]
        );
        assert_eq!(cancel.header(&HeaderName::CSeq), Some("7 CANCEL"));
        assert_eq!(cancel.values(&HeaderName::Route), vec!["<sip:x;lr>"]);
        assert_eq!(cancel.header(&HeaderName::To), Some("<sip:bob@b.example>"));
    }

    #[test]
    fn ack_takes_the_responses_to_tag() {
        let invite = Message::parse(INVITE, false).unwrap();
        let resp = Message::parse(b"SIP/2.0 486 Busy Here\r\nVia: SIP/2.0/UDP p:5060;branch=z9hG4bKp1\r\nFrom: <sip:alice@a>;tag=at\r\nTo: <sip:bob@b.example>;tag=bt\r\nCall-ID: c1\r\nCSeq: 7 INVITE\r\nContent-Length: 0\r\n\r\n", false).unwrap();
        let ack = Message::parse(&ack_for(&invite, &resp), true).unwrap();
        assert_eq!(ack.header(&HeaderName::CSeq), Some("7 ACK"));
        assert_eq!(
            ack.header(&HeaderName::To),
            Some("<sip:bob@b.example>;tag=bt")
        );
    }

    #[test]
    fn bye_carries_reason_and_framing() {
        let bye = RequestBuilder::new(
            "BYE",
            "sip:a@h",
            "<sip:b@x>;tag=1",
            "<sip:a@y>;tag=2",
            "c",
            9,
        )
        .via("SIP/2.0/UDP me;branch=z9hG4bKx")
        .header("Reason", "SIP;cause=503")
        .build();
        let m = Message::parse(&bye, false).unwrap();
        assert_eq!(m.header(&HeaderName::CSeq), Some("9 BYE"));
        assert!(m.header(&HeaderName::Other("reason".into())).is_some());
    }
}
