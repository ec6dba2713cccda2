//! Building messages: responses from requests (RFC 3261 §8.2.6), and byte-preserving edits of
//! existing messages (only what changes is rewritten; every other byte is copied).

use std::borrow::Cow;
use std::collections::HashMap;

use super::message::{HeaderName, Message};
use super::{random_tag, Fault, ALLOW};

/// The server's product token.
pub const SERVER: &str = "sipmesh/0.1";

fn push_line(out: &mut Vec<u8>, raw: &[u8]) {
    let mut end = raw.len();
    while end > 0 && (raw[end - 1] == b'\n' || raw[end - 1] == b'\r') {
        end -= 1;
    }
    out.extend_from_slice(&raw[..end]);
    out.extend_from_slice(b"\r\n");
}

/// `msg` without the first value of its first Via field, as [`Edit::remove_first_value`] makes
/// it. When the message states its Content-Length (what a relay hands up, nearly always), the
/// bytes around that field are copied as they are, and the field goes, or keeps the values
/// after the first (SIPp's UAS, for one, answers with all the Vias in one field).
pub fn without_top_via(msg: &Message) -> Vec<u8> {
    let first = msg.headers.iter().find(|h| h.name == HeaderName::Via);
    if let Some(h) = first.filter(|_| msg.count(&HeaderName::ContentLength) > 0) {
        let value = msg.value(h);
        let mut out = Vec::with_capacity(msg.raw.len());
        out.extend_from_slice(&msg.raw[..h.line.start]);
        if let Some(second) = super::message::list_items(value).nth(1) {
            // `second` lies inside `value`: the rest of the field starts there.
            let at = second.as_ptr() as usize - value.as_ptr() as usize;
            out.extend_from_slice(b"Via: ");
            out.extend_from_slice(&value.as_bytes()[at..]);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(&msg.raw[h.line.end..]);
        return out;
    }
    Edit::new(msg)
        .remove_first_value(&HeaderName::Via, "Via")
        .build()
}

/// A response under construction.
pub struct ResponseBuilder<'a> {
    req: &'a Message,
    code: u16,
    reason: &'a str,
    to_tag: Option<String>,
    top_via: Option<String>,
    headers: Vec<(&'a str, Cow<'a, str>)>,
    body: Option<(&'a str, Vec<u8>)>,
}

impl<'a> ResponseBuilder<'a> {
    /// A response with this status to `req`.
    pub fn new(req: &'a Message, code: u16, reason: &'a str) -> Self {
        ResponseBuilder {
            req,
            code,
            reason,
            to_tag: None,
            top_via: None,
            headers: Vec::new(),
            body: None,
        }
    }

    /// Add a To tag (if the request's To has none; RFC 3261 §8.2.6.2).
    pub fn to_tag(mut self, tag: &str) -> Self {
        self.to_tag = Some(tag.to_string());
        self
    }

    /// Replace the top Via value (to add `received`/`rport`).
    pub fn top_via(mut self, value: String) -> Self {
        self.top_via = Some(value);
        self
    }

    /// Add a header.
    pub fn header(mut self, name: &'a str, value: impl Into<Cow<'a, str>>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// Set a body.
    pub fn body(mut self, content_type: &'a str, body: Vec<u8>) -> Self {
        self.body = Some((content_type, body));
        self
    }

    /// The bytes of the response.
    pub fn build(self) -> Vec<u8> {
        let mut out = Vec::with_capacity(512);
        out.extend_from_slice(b"SIP/2.0 ");
        out.extend_from_slice(self.code.to_string().as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.reason.as_bytes());
        out.extend_from_slice(b"\r\n");
        let req = self.req;
        let mut first_via = true;
        for h in &req.headers {
            match &h.name {
                HeaderName::Via if first_via && self.top_via.is_some() => {
                    first_via = false;
                    let values = super::message::split_list(req.value(h));
                    out.extend_from_slice(b"Via: ");
                    out.extend_from_slice(self.top_via.as_deref().unwrap_or_default().as_bytes());
                    out.extend_from_slice(b"\r\n");
                    if values.len() > 1 {
                        out.extend_from_slice(b"Via: ");
                        out.extend_from_slice(values[1..].join(", ").as_bytes());
                        out.extend_from_slice(b"\r\n");
                    }
                }
                HeaderName::Via | HeaderName::From | HeaderName::CallId | HeaderName::CSeq => {
                    first_via &= h.name != HeaderName::Via;
                    push_line(&mut out, req.raw_field(h));
                }
                HeaderName::To => {
                    let has_tag = super::header::NameAddr::parse(req.value(h), "To")
                        .map(|t| t.tag().is_some())
                        .unwrap_or(true);
                    match &self.to_tag {
                        Some(tag) if !has_tag && self.code > 100 => {
                            out.extend_from_slice(b"To: ");
                            out.extend_from_slice(req.value(h).as_bytes());
                            out.extend_from_slice(b";tag=");
                            out.extend_from_slice(tag.as_bytes());
                            out.extend_from_slice(b"\r\n");
                        }
                        _ => push_line(&mut out, req.raw_field(h)),
                    }
                }
                _ => {}
            }
        }
        out.extend_from_slice(b"Server: ");
        out.extend_from_slice(SERVER.as_bytes());
        out.extend_from_slice(b"\r\n");
        for (n, v) in &self.headers {
            out.extend_from_slice(n.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        match &self.body {
            Some((ct, body)) => {
                out.extend_from_slice(b"Content-Type: ");
                out.extend_from_slice(ct.as_bytes());
                out.extend_from_slice(b"\r\nContent-Length: ");
                out.extend_from_slice(body.len().to_string().as_bytes());
                out.extend_from_slice(b"\r\n\r\n");
                out.extend_from_slice(body);
            }
            None => out.extend_from_slice(b"Content-Length: 0\r\n\r\n"),
        }
        out
    }
}

/// The response a [`Fault`] stands for: its status, reason and headers, a fresh To tag, `Allow`
/// for 405 and 501, and `top_via` (the stamped top Via) when the request's Via parsed.
pub fn reject(req: &Message, top_via: Option<&str>, fault: &Fault) -> Vec<u8> {
    // A stateless answer's To-tag is the same for a retransmission (RFC 3261 §8.2.7).
    let tag = if fault.stateless {
        format!("{:016x}", super::request_digest(req))
    } else {
        random_tag()
    };
    let mut r = ResponseBuilder::new(req, fault.code, &fault.reason).to_tag(&tag);
    if let Some(v) = top_via {
        r = r.top_via(v.to_string());
    }
    for (n, v) in &fault.headers {
        r = r.header(n, v.as_str());
    }
    if matches!(fault.code, 405 | 501) && !fault.headers.iter().any(|(n, _)| *n == "Allow") {
        r = r.header("Allow", ALLOW);
    }
    r.build()
}

/// A byte-preserving edit of a message: a new start line, header fields removed or replaced,
/// header lines added at the top or bottom. Everything else is copied byte for byte.
pub struct Edit<'a> {
    msg: &'a Message,
    start_line: Option<String>,
    top: Vec<String>,
    replace: HashMap<usize, Option<String>>,
    bottom: Vec<String>,
}

impl<'a> Edit<'a> {
    /// Start editing `msg`.
    pub fn new(msg: &'a Message) -> Self {
        Edit {
            msg,
            start_line: None,
            top: Vec::new(),
            replace: HashMap::new(),
            bottom: Vec::new(),
        }
    }

    /// Replace the start line.
    pub fn start_line(mut self, line: String) -> Self {
        self.start_line = Some(line);
        self
    }

    /// Add a header line before all others (e.g. `Via: ...`, `Record-Route: ...`).
    pub fn prepend(mut self, line: String) -> Self {
        self.top.push(line);
        self
    }

    /// Add a header line after all others.
    pub fn append(mut self, line: String) -> Self {
        self.bottom.push(line);
        self
    }

    /// Replace header field `index` with `line` (a whole `Name: value`), or remove it (`None`).
    pub fn replace(mut self, index: usize, line: Option<String>) -> Self {
        self.replace.insert(index, line);
        self
    }

    /// Remove the first value of the first field named `name` (a list header such as Via or
    /// Route); the field goes away if it had one value.
    pub fn remove_first_value(self, name: &HeaderName, label: &str) -> Self {
        let Some(index) = self.msg.headers.iter().position(|h| h.name == *name) else {
            return self;
        };
        let values = super::message::split_list(self.msg.value(&self.msg.headers[index]));
        let line = (values.len() > 1).then(|| format!("{label}: {}", values[1..].join(", ")));
        self.replace(index, line)
    }

    /// Remove the first `k` values of a list header (across its fields, in order).
    pub fn drop_first_values(mut self, name: &HeaderName, label: &str, k: usize) -> Self {
        let fields: Vec<usize> = self
            .msg
            .headers
            .iter()
            .enumerate()
            .filter(|(_, h)| h.name == *name)
            .map(|(i, _)| i)
            .collect();
        let mut left = k;
        for i in fields {
            if left == 0 {
                break;
            }
            let values = super::message::split_list(self.msg.value(&self.msg.headers[i]));
            if values.len() <= left {
                left -= values.len();
                self.replace.insert(i, None);
            } else {
                let rest = values[left..].join(", ");
                self.replace.insert(i, Some(format!("{label}: {rest}")));
                left = 0;
            }
        }
        self
    }

    /// The edited message's bytes.
    pub fn build(self) -> Vec<u8> {
        let msg = self.msg;
        let mut out = Vec::with_capacity(msg.raw.len() + 256);
        match &self.start_line {
            Some(l) => {
                out.extend_from_slice(l.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            None => {
                let end = msg
                    .raw
                    .iter()
                    .position(|b| *b == b'\n')
                    .map(|i| i + 1)
                    .unwrap_or(0);
                push_line(&mut out, &msg.raw[..end]);
            }
        }
        for l in &self.top {
            out.extend_from_slice(l.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        for (i, h) in msg.headers.iter().enumerate() {
            match self.replace.get(&i) {
                Some(Some(line)) => {
                    out.extend_from_slice(line.as_bytes());
                    out.extend_from_slice(b"\r\n");
                }
                Some(None) => {}
                None => push_line(&mut out, msg.raw_field(h)),
            }
        }
        for l in &self.bottom {
            out.extend_from_slice(l.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        // A datagram may omit Content-Length (RFC 3261 §18.3), but what is forwarded may go
        // over a stream, where the length is the framing: it is always stated.
        let has_length = msg.headers.iter().enumerate().any(|(i, h)| {
            h.name == HeaderName::ContentLength && !matches!(self.replace.get(&i), Some(None))
        });
        if !has_length {
            out.extend_from_slice(format!("Content-Length: {}\r\n", msg.body().len()).as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(msg.body());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQ: &[u8] = b"OPTIONS sip:n SIP/2.0\r\nVia: SIP/2.0/UDP a:1;branch=z9hG4bK1, SIP/2.0/UDP b;branch=z9hG4bK2\r\nMax-Forwards: 70\r\nFrom: <sip:a@a>;tag=x\r\nTo: <sip:n>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\nX-Odd:   keep   spacing\r\nContent-Length: 3\r\n\r\nabc";

    /// The relay's copy around the top Via field makes what the general edit makes, for a
    /// field of one value or of several; a datagram without Content-Length takes the general
    /// edit.
    #[test]
    fn removing_the_top_via_copies_around_it_or_edits() {
        let general = |m: &Message| {
            Edit::new(m)
                .remove_first_value(&HeaderName::Via, "Via")
                .build()
        };
        let one = b"SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP relay;branch=z9hG4bK-r\r\nVia: SIP/2.0/UDP a:1;branch=z9hG4bK1\r\nFrom: <sip:a@a>;tag=x\r\nTo: <sip:n>;tag=y\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
        let m = Message::parse(one, false).unwrap();
        let fast = without_top_via(&m);
        assert_eq!(fast, general(&m));
        assert!(
            !fast.windows(5).any(|w| w == b"relay"),
            "the relay's Via is gone"
        );
        let two = Message::parse(REQ, false).unwrap();
        let out = without_top_via(&two);
        assert_eq!(out, general(&two));
        let again = Message::parse(&out, false).unwrap();
        assert_eq!(
            again.values(&HeaderName::Via),
            ["SIP/2.0/UDP b;branch=z9hG4bK2"]
        );
        let three = String::from_utf8(REQ.to_vec()).unwrap().replace(
            "z9hG4bK2\r\n",
            "z9hG4bK2 ,  SIP/2.0/UDP c:5060;branch=z9hG4bK3\r\n",
        );
        let m = Message::parse(three.as_bytes(), false).unwrap();
        let out = Message::parse(&without_top_via(&m), false).unwrap();
        assert_eq!(
            out.values(&HeaderName::Via),
            [
                "SIP/2.0/UDP b;branch=z9hG4bK2",
                "SIP/2.0/UDP c:5060;branch=z9hG4bK3"
            ]
        );
        let unstated = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP relay;branch=z9hG4bK-r\r\nVia: SIP/2.0/UDP a:1;branch=z9hG4bK1\r\nFrom: <sip:a@a>;tag=x\r\nTo: <sip:n>;tag=y\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n\r\n";
        let m = Message::parse(unstated, false).unwrap();
        let out = without_top_via(&m);
        assert_eq!(out, general(&m));
        assert!(out.windows(17).any(|w| w == b"Content-Length: 0"), "stated");
    }

    #[test]
    fn response_copies_and_tags() {
        let m = Message::parse(REQ, false).unwrap();
        let r = ResponseBuilder::new(&m, 200, "OK")
            .to_tag("t1")
            .top_via("SIP/2.0/UDP a:1;branch=z9hG4bK1;received=1.2.3.4".into())
            .build();
        let p = Message::parse(&r, true).unwrap();
        assert_eq!(p.status(), Some(200));
        assert_eq!(p.values(&HeaderName::Via).len(), 2);
        assert!(p.values(&HeaderName::Via)[0].contains("received=1.2.3.4"));
        assert!(p.header(&HeaderName::To).unwrap().ends_with(";tag=t1"));
        assert_eq!(p.body(), b"");
    }

    #[test]
    fn edits_preserve_other_bytes() {
        let m = Message::parse(REQ, false).unwrap();
        let e = Edit::new(&m)
            .prepend("Via: SIP/2.0/UDP me;branch=z9hG4bKme".into())
            .replace(1, Some("Max-Forwards: 69".into()))
            .build();
        let s = String::from_utf8(e).unwrap();
        assert!(s.contains("X-Odd:   keep   spacing\r\n"));
        assert!(s.starts_with(
            "OPTIONS sip:n SIP/2.0\r\nVia: SIP/2.0/UDP me;branch=z9hG4bKme\r\nVia: SIP/2.0/UDP a:1"
        ));
        assert!(s.ends_with("\r\n\r\nabc"));
        let p = Message::parse(s.as_bytes(), true).unwrap();
        let removed = Edit::new(&p)
            .remove_first_value(&HeaderName::Via, "Via")
            .build();
        let q = Message::parse(&removed, true).unwrap();
        assert_eq!(q.values(&HeaderName::Via).len(), 2);
    }

    #[test]
    fn a_datagram_without_content_length_is_forwarded_with_one() {
        let dgram = b"MESSAGE sip:n SIP/2.0\r\nVia: SIP/2.0/UDP a:1;branch=z9hG4bK1\r\nMax-Forwards: 70\r\nFrom: <sip:a@a>;tag=x\r\nTo: <sip:n>\r\nCall-ID: c\r\nCSeq: 1 MESSAGE\r\nContent-Type: text/plain\r\n\r\nhello";
        let m = Message::parse(dgram, false).unwrap();
        assert_eq!(m.body(), b"hello");
        let out = Edit::new(&m)
            .prepend("Via: SIP/2.0/TCP me;branch=z9hG4bKme".into())
            .build();
        // Framed as a stream would frame it: the body survives.
        let p = Message::parse(&out, true).unwrap();
        assert_eq!(p.header(&HeaderName::ContentLength), Some("5"));
        assert_eq!(p.body(), b"hello");
    }
}
