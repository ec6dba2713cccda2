//! Lexical parsing of SIP messages (RFC 3261 §7, §18.3): the start line, header fields (compact
//! forms, folding), and the body framed by Content-Length — and nothing more: typed views live in
//! [`super::header`]. Every limit is a named constant; every failure is a [`Fault`].

use std::ops::Range;
use std::sync::Arc;

use super::Fault;

/// Largest message accepted (UDP datagram or TCP message).
pub const MAX_MESSAGE: usize = 64 * 1024;
/// Most header fields in one message (after unfolding).
pub const MAX_HEADERS: usize = 128;
/// Longest header field (after unfolding), in bytes.
pub const MAX_HEADER_LEN: usize = 8 * 1024;

/// A SIP method. Unknown methods are kept as their token (RFC 3261 allows extension methods).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Method {
    /// INVITE
    Invite,
    /// ACK
    Ack,
    /// BYE
    Bye,
    /// CANCEL
    Cancel,
    /// REGISTER
    Register,
    /// OPTIONS
    Options,
    /// INFO
    Info,
    /// UPDATE
    Update,
    /// PRACK
    Prack,
    /// SUBSCRIBE
    Subscribe,
    /// NOTIFY
    Notify,
    /// REFER
    Refer,
    /// MESSAGE
    Message,
    /// PUBLISH
    Publish,
    /// Any other token.
    Other(String),
}

impl Method {
    /// Parse a method token (case-sensitive, as RFC 3261 says).
    pub fn parse(token: &str) -> Method {
        match token {
            "INVITE" => Method::Invite,
            "ACK" => Method::Ack,
            "BYE" => Method::Bye,
            "CANCEL" => Method::Cancel,
            "REGISTER" => Method::Register,
            "OPTIONS" => Method::Options,
            "INFO" => Method::Info,
            "UPDATE" => Method::Update,
            "PRACK" => Method::Prack,
            "SUBSCRIBE" => Method::Subscribe,
            "NOTIFY" => Method::Notify,
            "REFER" => Method::Refer,
            "MESSAGE" => Method::Message,
            "PUBLISH" => Method::Publish,
            other => Method::Other(other.to_string()),
        }
    }

    /// The method's token.
    pub fn as_str(&self) -> &str {
        match self {
            Method::Invite => "INVITE",
            Method::Ack => "ACK",
            Method::Bye => "BYE",
            Method::Cancel => "CANCEL",
            Method::Register => "REGISTER",
            Method::Options => "OPTIONS",
            Method::Info => "INFO",
            Method::Update => "UPDATE",
            Method::Prack => "PRACK",
            Method::Subscribe => "SUBSCRIBE",
            Method::Notify => "NOTIFY",
            Method::Refer => "REFER",
            Method::Message => "MESSAGE",
            Method::Publish => "PUBLISH",
            Method::Other(s) => s,
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Header names sipmesh acts on, with compact forms folded in; others are kept lowercased.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HeaderName {
    /// Via / v
    Via,
    /// From / f
    From,
    /// To / t
    To,
    /// Call-ID / i
    CallId,
    /// CSeq
    CSeq,
    /// Max-Forwards
    MaxForwards,
    /// Contact / m
    Contact,
    /// Content-Length / l
    ContentLength,
    /// Content-Type / c
    ContentType,
    /// Route
    Route,
    /// Record-Route
    RecordRoute,
    /// Expires
    Expires,
    /// Authorization
    Authorization,
    /// Proxy-Authorization
    ProxyAuthorization,
    /// Require
    Require,
    /// Proxy-Require
    ProxyRequire,
    /// Supported / k
    Supported,
    /// Path
    Path,
    /// User-Agent
    UserAgent,
    /// Any other header, lowercased.
    Other(String),
}

impl HeaderName {
    /// Canonicalise a header name (case-insensitive, compact forms). Allocates only for a name
    /// sipmesh does not act on (this runs for every header of every message).
    pub fn parse(name: &str) -> HeaderName {
        if let [c] = name.as_bytes() {
            let compact = match c.to_ascii_lowercase() {
                b'v' => Some(HeaderName::Via),
                b'f' => Some(HeaderName::From),
                b't' => Some(HeaderName::To),
                b'i' => Some(HeaderName::CallId),
                b'm' => Some(HeaderName::Contact),
                b'l' => Some(HeaderName::ContentLength),
                b'c' => Some(HeaderName::ContentType),
                b'k' => Some(HeaderName::Supported),
                _ => None,
            };
            if let Some(h) = compact {
                return h;
            }
        }
        static KNOWN: [(&str, HeaderName); 19] = [
            ("via", HeaderName::Via),
            ("from", HeaderName::From),
            ("to", HeaderName::To),
            ("call-id", HeaderName::CallId),
            ("cseq", HeaderName::CSeq),
            ("max-forwards", HeaderName::MaxForwards),
            ("contact", HeaderName::Contact),
            ("content-length", HeaderName::ContentLength),
            ("content-type", HeaderName::ContentType),
            ("route", HeaderName::Route),
            ("record-route", HeaderName::RecordRoute),
            ("expires", HeaderName::Expires),
            ("authorization", HeaderName::Authorization),
            ("proxy-authorization", HeaderName::ProxyAuthorization),
            ("require", HeaderName::Require),
            ("proxy-require", HeaderName::ProxyRequire),
            ("supported", HeaderName::Supported),
            ("path", HeaderName::Path),
            ("user-agent", HeaderName::UserAgent),
        ];
        KNOWN
            .iter()
            .find(|(known, _)| known.eq_ignore_ascii_case(name))
            .map(|(_, h)| h.clone())
            .unwrap_or_else(|| HeaderName::Other(name.to_ascii_lowercase()))
    }

    /// Whether the header's value is a comma-separated list (RFC 3261 §7.3.1).
    pub fn is_list(&self) -> bool {
        match self {
            HeaderName::Via
            | HeaderName::Contact
            | HeaderName::Route
            | HeaderName::RecordRoute
            | HeaderName::Require
            | HeaderName::ProxyRequire
            | HeaderName::Supported
            | HeaderName::Path => true,
            HeaderName::Other(n) => matches!(
                n.as_str(),
                "allow" | "unsupported" | "accept" | "accept-encoding" | "accept-language"
            ),
            _ => false,
        }
    }
}

/// One header field.
#[derive(Debug, Clone)]
pub struct Header {
    /// Canonical name.
    pub name: HeaderName,
    /// The bytes of the field in the message, continuation lines and line end included.
    pub line: Range<usize>,
    /// Where the value, unfolded and trimmed, is in the message's `values_text`
    /// (read it with [`Message::value`]).
    value: Range<usize>,
}

/// A request line or a status line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartLine {
    /// `Method SP Request-URI SP SIP/2.0`
    Request {
        /// The method.
        method: Method,
        /// The Request-URI as written.
        uri: String,
    },
    /// `SIP/2.0 SP code SP reason`
    Response {
        /// The status code.
        code: u16,
        /// The reason phrase.
        reason: String,
    },
}

/// A parsed message. Cheap to clone (the bytes are shared).
#[derive(Debug, Clone)]
pub struct Message {
    /// The message's bytes (exactly this message: trailing bytes of a datagram are cut off).
    pub raw: Arc<[u8]>,
    /// The start line, or why it is malformed (the headers are still available to answer).
    pub start: Result<StartLine, Fault>,
    /// Header fields in order.
    pub headers: Vec<Header>,
    /// Where the body is in `raw`.
    pub body: Range<usize>,
    /// Where the header section ends (the empty line's end) in `raw`.
    pub head_end: usize,
    /// Every header value, unfolded and trimmed, one after another: one allocation for all of
    /// them rather than one each.
    values_text: String,
}

use super::framing::{find_head_end, parse_content_length};
pub use super::framing::{frame_stream, Framed};

fn is_token_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&c)
}

/// Whether `s` is a non-empty RFC 3261 token.
pub fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_token_char)
}

/// Parse a start line.
pub fn parse_start_line(line: &str) -> Result<StartLine, Fault> {
    if let Some(rest) = line.strip_prefix("SIP/") {
        // Status-Line = SIP-Version SP Status-Code SP Reason-Phrase
        let (version, rest) = rest
            .split_once(' ')
            .ok_or_else(|| Fault::bad("Malformed status line"))?;
        if version != "2.0" {
            return Err(Fault::new(505, "Version Not Supported"));
        }
        let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
        if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Fault::bad("Malformed status code"));
        }
        let code: u16 = code
            .parse()
            .map_err(|_| Fault::bad("Malformed status code"))?;
        if !(100..=699).contains(&code) {
            return Err(Fault::bad("Status code out of range"));
        }
        return Ok(StartLine::Response {
            code,
            reason: reason.to_string(),
        });
    }
    // Request-Line = Method SP Request-URI SP SIP-Version, single spaces, nothing more.
    let mut parts = line.split(' ');
    let (Some(method), Some(uri), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Fault::bad("Malformed request line"));
    };
    if !is_token(method) {
        return Err(Fault::bad("Malformed method"));
    }
    if uri.is_empty() {
        return Err(Fault::bad("Empty Request-URI"));
    }
    if uri.starts_with('<') || uri.ends_with('>') {
        return Err(Fault::bad("Request-URI in angle brackets"));
    }
    if uri
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err(Fault::bad("Whitespace in Request-URI"));
    }
    match version {
        "SIP/2.0" => {}
        v if v.starts_with("SIP/") => return Err(Fault::new(505, "Version Not Supported")),
        _ => return Err(Fault::bad("Malformed SIP version")),
    }
    Ok(StartLine::Request {
        method: Method::parse(method),
        uri: uri.to_string(),
    })
}

impl Message {
    /// Parse one message from a datagram (`stream = false`: a missing Content-Length means the
    /// body is the rest of the datagram; bytes after Content-Length are ignored) or from a framed
    /// stream message (`stream = true`).
    pub fn parse(bytes: &[u8], stream: bool) -> Result<Message, Fault> {
        if bytes.len() > MAX_MESSAGE {
            return Err(Fault::new(513, "Message Too Large"));
        }
        // A datagram whose header section is not terminated ends at the datagram's end.
        let head_end = match find_head_end(bytes) {
            Some(e) => e,
            None if !stream && bytes.ends_with(b"\n") => bytes.len(),
            None => return Err(Fault::bad("Header section not terminated")),
        };
        let head = &bytes[..head_end];
        // Lines with their byte ranges.
        let mut lines = memchr::memchr_iter(b'\n', head).scan(0, |start, i| {
            let line = *start..i + 1;
            *start = i + 1;
            Some(line)
        });
        let text = |r: &Range<usize>| -> &[u8] {
            let mut end = r.end;
            while end > r.start && (bytes[end - 1] == b'\n' || bytes[end - 1] == b'\r') {
                end -= 1;
            }
            &bytes[r.start..end]
        };
        let first = lines.next().ok_or_else(|| Fault::bad("Empty message"))?;
        let start_line = match std::str::from_utf8(text(&first)) {
            Ok(s) => parse_start_line(s),
            Err(_) => Err(Fault::bad("Start line is not UTF-8")),
        };
        let line_count = memchr::memchr_iter(b'\n', head).count();
        let mut headers: Vec<Header> = Vec::with_capacity(line_count.min(MAX_HEADERS));
        let mut values_text = String::with_capacity(head_end);
        let mut fault: Option<Fault> = None;
        for r in lines {
            let t = text(&r);
            if t.is_empty() {
                break; // the empty line ending the header section
            }
            if t[0] == b' ' || t[0] == b'\t' {
                // Folded continuation of the previous header (RFC 3261 §7.3.1).
                let Some(h) = headers.last_mut() else {
                    fault.get_or_insert(Fault::bad("Continuation line before any header"));
                    continue;
                };
                match std::str::from_utf8(t) {
                    Ok(s) => {
                        // The last header's value is the end of `values_text`.
                        values_text.push(' ');
                        values_text.push_str(s.trim());
                        h.value.end = values_text.len();
                        h.line.end = r.end;
                    }
                    Err(_) => {
                        fault.get_or_insert(Fault::bad("Header value is not UTF-8"));
                    }
                }
                continue;
            }
            let Some(colon) = memchr::memchr(b':', t) else {
                fault.get_or_insert(Fault::bad("Header line without a colon"));
                continue;
            };
            let name = std::str::from_utf8(&t[..colon])
                .unwrap_or("")
                .trim_end_matches([' ', '\t']);
            if !is_token(name) {
                fault.get_or_insert(Fault::bad("Malformed header name"));
                continue;
            }
            let value = match std::str::from_utf8(&t[colon + 1..]) {
                Ok(v) => {
                    let start = values_text.len();
                    values_text.push_str(v.trim_matches([' ', '\t']));
                    start..values_text.len()
                }
                Err(_) => {
                    fault.get_or_insert(Fault::bad(format!("Header {name} is not UTF-8")));
                    continue;
                }
            };
            if headers.len() >= MAX_HEADERS {
                return Err(Fault::bad("Too many header fields"));
            }
            headers.push(Header {
                name: HeaderName::parse(name),
                line: r,
                value,
            });
        }
        if let Some(h) = headers.iter().find(|h| h.value.len() > MAX_HEADER_LEN) {
            return Err(Fault::bad(format!("Header {:?} too long", h.name)));
        }
        // Body framing by Content-Length. A framing fault keeps the headers (so a 400 can be
        // formed) with an empty body.
        let mut cl = None;
        for h in headers
            .iter()
            .filter(|h| h.name == HeaderName::ContentLength)
        {
            match parse_content_length(&values_text[h.value.clone()]) {
                Ok(n) if cl.is_some_and(|c| c != n) => {
                    fault.get_or_insert(Fault::bad("Conflicting Content-Length headers"));
                }
                Ok(n) => cl = Some(n),
                Err(f) => {
                    fault.get_or_insert(f);
                }
            }
        }
        let body_end = match cl {
            Some(n) if head_end + n > bytes.len() => {
                fault.get_or_insert(Fault::bad("Content-Length larger than the message"));
                head_end
            }
            Some(n) => head_end + n,
            None if stream => {
                fault.get_or_insert(Fault::bad("Missing Content-Length on a stream transport"));
                head_end
            }
            None => bytes.len(),
        };
        let body_end = if fault.is_some() { head_end } else { body_end };
        let msg = Message {
            raw: Arc::from(&bytes[..body_end]),
            start: start_line,
            headers,
            body: head_end..body_end,
            head_end,
            values_text,
        };
        match fault {
            // A header-level fault: keep the message so an answer can be formed, but mark it.
            Some(f) if msg.start.is_ok() => Ok(Message {
                start: Err(f),
                ..msg
            }),
            _ => Ok(msg),
        }
    }

    /// Whether this is a request.
    pub fn is_request(&self) -> bool {
        matches!(self.start, Ok(StartLine::Request { .. }))
    }

    /// The request method.
    pub fn method(&self) -> Option<&Method> {
        match &self.start {
            Ok(StartLine::Request { method, .. }) => Some(method),
            _ => None,
        }
    }

    /// The Request-URI.
    pub fn request_uri(&self) -> Option<&str> {
        match &self.start {
            Ok(StartLine::Request { uri, .. }) => Some(uri),
            _ => None,
        }
    }

    /// The status code of a response.
    pub fn status(&self) -> Option<u16> {
        match &self.start {
            Ok(StartLine::Response { code, .. }) => Some(*code),
            _ => None,
        }
    }

    /// The first value of a header (the whole field value; list headers are not split).
    pub fn header(&self, name: &HeaderName) -> Option<&str> {
        self.headers
            .iter()
            .find(|h| h.name == *name)
            .map(|h| self.value(h))
    }

    /// A header field's value, unfolded and trimmed.
    pub fn value<'a>(&'a self, h: &Header) -> &'a str {
        self.values_text.get(h.value.clone()).unwrap_or_default()
    }

    /// Every field of a header, in order.
    pub fn fields<'a, 'n>(
        &'a self,
        name: &'n HeaderName,
    ) -> impl Iterator<Item = &'a Header> + use<'a, 'n> {
        self.headers.iter().filter(move |h| h.name == *name)
    }

    /// Every value of a header: list headers split at top-level commas, in order.
    pub fn values(&self, name: &HeaderName) -> Vec<&str> {
        self.iter_values(name).collect()
    }

    /// [`Message::values`] without collecting them.
    pub fn iter_values<'a, 'n>(
        &'a self,
        name: &'n HeaderName,
    ) -> impl Iterator<Item = &'a str> + use<'a, 'n> {
        let list = name.is_list();
        self.fields(name).flat_map(move |h| {
            let v = self.value(h);
            let (items, whole) = if list {
                (Some(list_items(v)), None)
            } else {
                (None, Some(v))
            };
            items.into_iter().flatten().chain(whole)
        })
    }

    /// The first value of a header ([`Message::values`]' first).
    pub fn first_value(&self, name: &HeaderName) -> Option<&str> {
        self.iter_values(name).next()
    }

    /// How many fields of a header there are.
    pub fn count(&self, name: &HeaderName) -> usize {
        self.headers.iter().filter(|h| h.name == *name).count()
    }

    /// The body.
    pub fn body(&self) -> &[u8] {
        &self.raw[self.body.clone()]
    }

    /// The raw bytes of a header field.
    pub fn raw_field(&self, h: &Header) -> &[u8] {
        &self.raw[h.line.clone()]
    }
}

/// Split a list header value at commas outside quotes and angle brackets; trims each value.
pub fn split_list(value: &str) -> Vec<&str> {
    list_items(value).collect()
}

/// The values of a list header's field, as [`split_list`] splits them.
pub(crate) fn list_items(value: &str) -> impl Iterator<Item = &str> {
    split_outside(value, ',', true).map(str::trim)
}

/// The pieces of `value` between `sep`s outside quoted strings (and, with `angles`, outside
/// `<…>`), untrimmed.
pub(crate) fn split_outside(value: &str, sep: char, angles: bool) -> SplitOutside<'_> {
    SplitOutside {
        value,
        start: Some(0),
        sep,
        angles,
    }
}

/// See [`split_outside`].
pub(crate) struct SplitOutside<'a> {
    value: &'a str,
    /// Where the next piece starts; `None` once the last one was given.
    start: Option<usize>,
    sep: char,
    angles: bool,
}

impl<'a> Iterator for SplitOutside<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let start = self.start?;
        let rest = &self.value[start..];
        let (mut in_quote, mut in_angle, mut escape) = (false, false, false);
        for (i, c) in rest.char_indices() {
            if escape {
                escape = false;
                continue;
            }
            match c {
                '\\' if in_quote => escape = true,
                '"' => in_quote = !in_quote,
                '<' if self.angles && !in_quote => in_angle = true,
                '>' if self.angles && !in_quote => in_angle = false,
                c if c == self.sep && !in_quote && !in_angle => {
                    self.start = Some(start + i + 1);
                    return Some(&rest[..i]);
                }
                _ => {}
            }
        }
        self.start = None;
        Some(rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_compact_folded_and_frames_by_length() {
        let raw = b"INVITE sip:bob@b.example SIP/2.0\r\nv: SIP/2.0/UDP a;branch=z9hG4bK1,\r\n SIP/2.0/TCP b;branch=z9hG4bK2\r\nf: <sip:a@a>;tag=1\r\nt: sip:bob@b\r\ni: x\r\nCSeq: 1 INVITE\r\nl: 4\r\n\r\nbodyTRAILING";
        let m = Message::parse(raw, false).unwrap();
        assert_eq!(m.method(), Some(&Method::Invite));
        assert_eq!(m.values(&HeaderName::Via).len(), 2);
        assert_eq!(m.body(), b"body");
        assert_eq!(m.header(&HeaderName::CallId), Some("x"));
        assert!(Message::parse(raw, true).is_ok());
    }

    #[test]
    fn each_value_is_its_own_after_folding_and_skipped_fields() {
        // A folded field, a field with a bad name skipped, a continuation of the field before
        // it, and values around them: each value reads back whole and alone.
        let raw = b"OPTIONS sip:b SIP/2.0\r\nSubject:  one\r\n\t two \r\n  three\r\nBad Name: x\r\n four\r\nCall-ID: c1\r\nX-Empty:\r\nTo: <sip:b>\r\n\r\n";
        let m = Message::parse(raw, false).unwrap();
        let subject = HeaderName::Other("subject".into());
        assert_eq!(m.header(&subject), Some("one two three four"));
        assert_eq!(m.header(&HeaderName::CallId), Some("c1"));
        assert_eq!(m.header(&HeaderName::Other("x-empty".into())), Some(""));
        assert_eq!(m.header(&HeaderName::To), Some("<sip:b>"));
        let values: Vec<&str> = m.headers.iter().map(|h| m.value(h)).collect();
        assert_eq!(values, ["one two three four", "c1", "", "<sip:b>"]);
        // A clone reads the same.
        let c = m.clone();
        assert_eq!(c.header(&HeaderName::To), Some("<sip:b>"));
    }

    #[test]
    fn header_names_fold_case_and_compact_forms() {
        assert_eq!(HeaderName::parse("CALL-ID"), HeaderName::CallId);
        assert_eq!(HeaderName::parse("i"), HeaderName::CallId);
        assert_eq!(HeaderName::parse("I"), HeaderName::CallId);
        assert_eq!(
            HeaderName::parse("Proxy-Authorization"),
            HeaderName::ProxyAuthorization
        );
        assert_eq!(HeaderName::parse("k"), HeaderName::Supported);
        assert_eq!(
            HeaderName::parse("X-Custom"),
            HeaderName::Other("x-custom".into())
        );
        assert_eq!(HeaderName::parse("x"), HeaderName::Other("x".into()));
        assert_eq!(HeaderName::parse("Vias"), HeaderName::Other("vias".into()));
    }

    #[test]
    fn stream_framing() {
        assert_eq!(frame_stream(b"\r\n\r\n"), Framed::Ping(4));
        assert_eq!(frame_stream(b"\r\n"), Framed::Pong(2));
        assert_eq!(
            frame_stream(b"OPTIONS sip:x SIP/2.0\r\nl: 3\r\n"),
            Framed::Incomplete
        );
        assert_eq!(
            frame_stream(b"OPTIONS sip:x SIP/2.0\r\nl: 3\r\n\r\nabc"),
            Framed::Message { skip: 0, len: 34 }
        );
        assert!(matches!(
            frame_stream(b"OPTIONS sip:x SIP/2.0\r\nl: -3\r\n\r\n"),
            Framed::Error(_)
        ));
        assert!(matches!(
            frame_stream(b"OPTIONS sip:x SIP/2.0\r\nl: 3\r\nContent-Length: 5\r\n\r\n"),
            Framed::Error(_)
        ));
        assert!(matches!(
            frame_stream(b"OPTIONS sip:x SIP/2.0\r\n\r\n"),
            Framed::Error(_)
        ));
        let huge = vec![b'a'; MAX_MESSAGE + 10];
        assert!(matches!(frame_stream(&huge), Framed::Error(_)));
    }

    #[test]
    fn start_lines() {
        assert!(parse_start_line("INVITE sip:a@b SIP/2.0").is_ok());
        assert_eq!(
            parse_start_line("INVITE sip:a@b SIP/7.0").unwrap_err().code,
            505
        );
        assert!(parse_start_line("INVITE  sip:a@b SIP/2.0").is_err());
        assert!(parse_start_line("INVITE sip:a@b SIP/2.0 ").is_err());
        assert!(parse_start_line("INVITE <sip:a@b> SIP/2.0").is_err());
        assert!(parse_start_line("SIP/2.0 100 ").is_ok());
        assert!(parse_start_line("SIP/2.0 4294967301 Big").is_err());
    }

    #[test]
    fn lists_split_outside_quotes_and_brackets() {
        assert_eq!(
            split_list(r#""a,b" <sip:x;p=1,2>;q=1, <sip:y>"#),
            vec![r#""a,b" <sip:x;p=1,2>;q=1"#, "<sip:y>"]
        );
        assert_eq!(split_list(""), vec![""]);
        assert_eq!(split_list("a,"), vec!["a", ""]);
        assert_eq!(split_list(r#""x\",y", z"#), vec![r#""x\",y""#, "z"]);
    }

    #[test]
    fn values_of_lists_and_single_fields_across_fields() {
        // List headers split within and across fields; a non-list header is one value per
        // field, commas and all.
        let raw = b"OPTIONS sip:b SIP/2.0\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1 , SIP/2.0/UDP b\r\nSubject: x, y\r\nVia: SIP/2.0/UDP c\r\nSupported: path,outbound\r\nSubject: z\r\n\r\n";
        let m = Message::parse(raw, false).unwrap();
        let vias = [
            "SIP/2.0/UDP a;branch=z9hG4bK1",
            "SIP/2.0/UDP b",
            "SIP/2.0/UDP c",
        ];
        assert_eq!(m.values(&HeaderName::Via), vias);
        assert_eq!(m.iter_values(&HeaderName::Via).collect::<Vec<_>>(), vias);
        assert_eq!(m.first_value(&HeaderName::Via), Some(vias[0]));
        let subject = HeaderName::Other("subject".into());
        assert_eq!(m.values(&subject), ["x, y", "z"]);
        assert_eq!(m.values(&HeaderName::Supported), ["path", "outbound"]);
        assert_eq!(m.first_value(&HeaderName::Route), None);
        assert!(m.values(&HeaderName::Route).is_empty());
    }
}
