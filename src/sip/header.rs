//! Typed views of the headers sipmesh acts on. Each parser is strict: a malformed value is a
//! [`Fault`] naming the header.

use std::borrow::Cow;

use super::message::{is_token, split_outside};
use super::Fault;

/// `;name[=value]` parameters, in order, names as written.
pub type Params = Vec<(String, Option<String>)>;

/// Look a parameter up by name (case-insensitive).
pub fn param<'a>(params: &'a Params, name: &str) -> Option<Option<&'a str>> {
    params
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_deref())
}

/// Write `params` as `;a=b;c`. A value goes back in quotes when it was a quoted string: when
/// it holds anything but token and host characters (`"<urn:uuid:…>"`, `"INVITE,BYE"`), and
/// always for a feature tag (`+sip.instance`, RFC 3840 §9), so a phone finds its own
/// parameters exactly as it sent them.
pub fn write_params(out: &mut String, params: &Params) {
    for (n, v) in params {
        write_param(out, n, v.as_deref());
    }
}

/// Write one parameter as [`write_params`] does.
fn write_param(out: &mut String, n: &str, v: Option<&str>) {
    out.push(';');
    out.push_str(n);
    match v {
        Some(v) if n.starts_with('+') || !v.bytes().all(is_param_char) => {
            out.push_str("=\"");
            for c in v.chars() {
                if c == '"' || c == '\\' {
                    out.push('\\');
                }
                out.push(c);
            }
            out.push('"');
        }
        Some(v) => {
            out.push('=');
            out.push_str(v);
        }
        None => {}
    }
}

/// An IP address as text (IPv6 without brackets), IPv4 without going through `fmt`.
pub fn ip_text(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let mut out = String::with_capacity(15);
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                if octet >= 100 {
                    out.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    out.push(char::from(b'0' + octet / 10 % 10));
                }
                out.push(char::from(b'0' + octet % 10));
            }
            out
        }
        std::net::IpAddr::V6(v6) => v6.to_string(),
    }
}

fn is_param_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"-.!%*_+`'~:[]".contains(&c)
}

/// Parse `;a=b;c` parameters (the leading `;` included). Values may be tokens, hosts or quoted
/// strings; empty names are a fault.
pub fn parse_params(s: &str, what: &str) -> Result<Params, Fault> {
    let mut out = Vec::new();
    let s = s.trim();
    if s.is_empty() {
        return Ok(out);
    }
    let Some(rest) = s.strip_prefix(';') else {
        return Err(Fault::bad(format!("Malformed {what} parameters")));
    };
    for part in split_outside(rest, ';', false) {
        let part = part.trim();
        let (name, value) = match part.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim())),
            None => (part, None),
        };
        if !is_token(name) {
            return Err(Fault::bad(format!("Malformed {what} parameter")));
        }
        let value = match value {
            Some(v) if v.starts_with('"') => Some(
                unquote(v)
                    .ok_or_else(|| Fault::bad(format!("Unterminated quote in {what}")))?
                    .into_owned(),
            ),
            Some("") => return Err(Fault::bad(format!("Empty {what} parameter value"))),
            Some(v) => {
                if v.bytes().any(|b| b.is_ascii_whitespace() || b == b'"') {
                    return Err(Fault::bad(format!("Malformed {what} parameter value")));
                }
                Some(v.to_string())
            }
            None => None,
        };
        out.push((name.to_string(), value));
    }
    Ok(out)
}

/// The content of a quoted string (`"..."`, escapes resolved; borrowed when it holds no
/// escape); `None` if unterminated or if anything follows the closing quote.
pub fn unquote(s: &str) -> Option<Cow<'_, str>> {
    let inner = s.strip_prefix('"')?;
    if let Some(end) = inner.find(['"', '\\']) {
        if inner.as_bytes()[end] == b'"' {
            return inner[end + 1..]
                .trim()
                .is_empty()
                .then_some(Cow::Borrowed(&inner[..end]));
        }
    }
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next()?),
            '"' => return chars.as_str().trim().is_empty().then_some(Cow::Owned(out)),
            c => out.push(c),
        }
    }
    None
}

/// A Via value: `SIP/2.0/UDP host:port;params`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via {
    /// The transport token (UDP, TCP, TLS, WS, …), uppercased.
    pub transport: String,
    /// The sent-by host (IPv6 without brackets).
    pub host: String,
    /// The sent-by port.
    pub port: Option<u16>,
    /// Parameters.
    pub params: Params,
}

/// The RFC 3261 branch magic cookie.
pub const MAGIC_COOKIE: &str = "z9hG4bK";

impl Via {
    /// Parse one Via value.
    pub fn parse(value: &str) -> Result<Via, Fault> {
        let bad = |r: &str| Fault::bad(format!("Malformed Via: {r}"));
        // sent-protocol with LWS allowed around the slashes
        let mut rest = value.trim();
        let mut proto = [""; 3];
        for (i, part) in proto.iter_mut().enumerate() {
            let end = rest
                .find(|c: char| c == '/' || c.is_ascii_whitespace())
                .unwrap_or(rest.len());
            let tok = &rest[..end];
            if !is_token(tok) {
                return Err(bad("sent-protocol"));
            }
            *part = tok;
            rest = rest[end..].trim_start();
            if i < 2 {
                rest = rest
                    .strip_prefix('/')
                    .ok_or_else(|| bad("sent-protocol"))?
                    .trim_start();
            }
        }
        if !proto[0].eq_ignore_ascii_case("SIP") || proto[1] != "2.0" {
            return Err(bad("protocol is not SIP/2.0"));
        }
        let (sent_by, params) = match rest.find(';') {
            Some(i) => (rest[..i].trim(), &rest[i..]),
            None => (rest.trim(), ""),
        };
        let (host, port) = parse_host_port(sent_by).ok_or_else(|| bad("sent-by"))?;
        let params = parse_params(params, "Via")?;
        let via = Via {
            transport: proto[2].to_ascii_uppercase(),
            host,
            port,
            params,
        };
        if let Some(branch) = via.branch() {
            if branch.is_empty() || branch == MAGIC_COOKIE {
                return Err(bad("empty branch"));
            }
        }
        if matches!(param(&via.params, "branch"), Some(None)) {
            return Err(bad("branch without a value"));
        }
        Ok(via)
    }

    /// The branch parameter.
    pub fn branch(&self) -> Option<&str> {
        param(&self.params, "branch").flatten()
    }

    /// Whether the branch carries the RFC 3261 magic cookie.
    pub fn is_rfc3261(&self) -> bool {
        self.branch()
            .is_some_and(|b| b.starts_with(MAGIC_COOKIE) && b.len() > MAGIC_COOKIE.len())
    }

    /// The `rport` parameter: `None` absent, `Some(None)` present without value.
    pub fn rport(&self) -> Option<Option<&str>> {
        param(&self.params, "rport")
    }

    /// The `received` parameter.
    pub fn received(&self) -> Option<&str> {
        param(&self.params, "received").flatten()
    }

    /// This Via as a value with `received` and `rport` filled in from the address the request
    /// came from (RFC 3261 §18.2.1, RFC 3581): the top Via of a response.
    pub fn stamped(&self, source: std::net::SocketAddr) -> String {
        use std::fmt::Write as _;
        let src_ip = ip_text(source.ip());
        let mut out = String::with_capacity(96);
        out.push_str("SIP/2.0/");
        out.push_str(&self.transport);
        out.push(' ');
        if self.host.contains(':') {
            out.push('[');
            out.push_str(&self.host);
            out.push(']');
        } else {
            out.push_str(&self.host);
        }
        if let Some(p) = self.port {
            let _ = write!(out, ":{p}");
        }
        let mut received = false;
        for (n, v) in &self.params {
            received |= n.eq_ignore_ascii_case("received");
            if v.is_none() && n.eq_ignore_ascii_case("rport") {
                let _ = write!(out, ";{n}={}", source.port());
            } else {
                write_param(&mut out, n, v.as_deref());
            }
        }
        if self.host != src_ip && !received {
            write_param(&mut out, "received", Some(&src_ip));
        }
        out
    }
}

/// Parse `host[:port]`, with IPv6 in brackets. The host must be a hostname or an IP address.
pub fn parse_host_port(s: &str) -> Option<(String, Option<u16>)> {
    if s.is_empty() || s.bytes().any(|b| b.is_ascii_whitespace()) {
        return None;
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let close = rest.find(']')?;
        let host = &rest[..close];
        host.parse::<std::net::Ipv6Addr>().ok()?;
        let after = &rest[close + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return None,
        };
        (host.to_string(), port)
    } else {
        let (h, p) = match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        };
        if h.is_empty()
            || !h
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        {
            return None;
        }
        (h.to_string(), p)
    };
    let port = match port {
        Some(p) if !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => {
            Some(p.parse::<u16>().ok()?)
        }
        Some(_) => return None,
        None => None,
    };
    Some((host, port))
}

/// A name-addr or addr-spec with header parameters: From, To, Contact, Route, Record-Route, Path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameAddr {
    /// The display name, unquoted.
    pub display: Option<String>,
    /// The URI as written (without angle brackets).
    pub uri: String,
    /// Whether the URI was in angle brackets.
    pub bracketed: bool,
    /// Header parameters (after the URI, or after `>`).
    pub params: Params,
}

impl NameAddr {
    /// Parse one value; `what` names the header for the fault.
    pub fn parse(value: &str, what: &str) -> Result<NameAddr, Fault> {
        let bad = |r: &str| Fault::bad(format!("Malformed {what}: {r}"));
        let s = value.trim();
        let (display, rest) = if s.starts_with('"') {
            // quoted display name
            let mut end = None;
            let mut escape = false;
            for (i, c) in s.char_indices().skip(1) {
                if escape {
                    escape = false;
                    continue;
                }
                match c {
                    '\\' => escape = true,
                    '"' => {
                        end = Some(i);
                        break;
                    }
                    _ => {}
                }
            }
            let end = end.ok_or_else(|| bad("unterminated quoted display name"))?;
            let display = unquote(&s[..=end])
                .ok_or_else(|| bad("bad quoted display name"))?
                .into_owned();
            (Some(display), s[end + 1..].trim_start())
        } else if let Some(lt) = s.find('<') {
            let name = s[..lt].trim();
            if !name.is_empty() && !name.split_ascii_whitespace().all(is_token) {
                return Err(bad("display name must be tokens or quoted"));
            }
            (
                if name.is_empty() {
                    None
                } else {
                    Some(name.to_string())
                },
                &s[lt..],
            )
        } else {
            (None, s)
        };
        if let Some(inner) = rest.strip_prefix('<') {
            let gt = inner.find('>').ok_or_else(|| bad("missing '>'"))?;
            let uri = &inner[..gt];
            if uri.is_empty() || uri.bytes().any(|b| b.is_ascii_whitespace() || b == b'<') {
                return Err(bad("bad URI in angle brackets"));
            }
            let params = parse_params(&inner[gt + 1..], what)?;
            return Ok(NameAddr {
                display,
                uri: uri.to_string(),
                bracketed: true,
                params,
            });
        }
        if display.is_some() {
            return Err(bad("display name without '<'"));
        }
        // addr-spec: the URI ends at the first ';' — what follows are header parameters.
        let (uri, params) = match rest.find(';') {
            Some(i) => (rest[..i].trim_end(), &rest[i..]),
            None => (rest, ""),
        };
        if uri.is_empty()
            || uri
                .bytes()
                .any(|b| b.is_ascii_whitespace() || matches!(b, b'?' | b',' | b'<' | b'>' | b'"'))
        {
            return Err(bad("URI must be in angle brackets"));
        }
        Ok(NameAddr {
            display: None,
            uri: uri.to_string(),
            bracketed: false,
            params: parse_params(params, what)?,
        })
    }

    /// The `tag` parameter.
    pub fn tag(&self) -> Option<&str> {
        param(&self.params, "tag").flatten()
    }
}

/// A CSeq value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CSeq {
    /// The sequence number (< 2^31, RFC 3261 §8.1.1.5).
    pub seq: u32,
    /// The method.
    pub method: String,
}

impl CSeq {
    /// Parse `number method`.
    pub fn parse(value: &str) -> Result<CSeq, Fault> {
        let mut parts = value.split_ascii_whitespace();
        let (Some(n), Some(m), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(Fault::bad("Malformed CSeq"));
        };
        let seq = parse_u32(n, "CSeq")
            .filter(|s| *s < (1 << 31))
            .ok_or_else(|| Fault::bad("CSeq number out of range"))?;
        if !is_token(m) {
            return Err(Fault::bad("Malformed CSeq method"));
        }
        Ok(CSeq {
            seq,
            method: m.to_string(),
        })
    }
}

/// Parse an unsigned decimal that fits in u32 (leading zeros allowed); `None` otherwise.
pub fn parse_u32(s: &str, _what: &str) -> Option<u32> {
    let s = s.trim();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let trimmed = s.trim_start_matches('0');
    if trimmed.len() > 10 {
        return None;
    }
    if trimmed.is_empty() {
        return Some(0);
    }
    trimmed.parse().ok()
}

/// The parameters of a Digest `Authorization`/`Proxy-Authorization` value, borrowed from it
/// where they need no rewriting (a name already lowercase, a value without escapes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestCredentials<'a> {
    /// The auth scheme (must be Digest to be checked).
    pub scheme: &'a str,
    /// `name=value` pairs, names lowercased, values unquoted.
    pub params: Vec<(Cow<'a, str>, Cow<'a, str>)>,
}

impl<'a> DigestCredentials<'a> {
    /// Parse `Scheme a=b, c="d"`.
    pub fn parse(value: &'a str) -> Result<DigestCredentials<'a>, Fault> {
        let value = value.trim();
        let (scheme, rest) = value.split_once([' ', '\t']).unwrap_or((value, ""));
        if !is_token(scheme) {
            return Err(Fault::bad("Malformed Authorization scheme"));
        }
        let mut params = Vec::with_capacity(10);
        for part in split_outside(rest, ',', false) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let (n, v) = part
                .split_once('=')
                .ok_or_else(|| Fault::bad("Malformed Authorization parameter"))?;
            let (n, v) = (n.trim(), v.trim());
            if !is_token(n) {
                return Err(Fault::bad("Malformed Authorization parameter name"));
            }
            let v = if v.starts_with('"') {
                unquote(v).ok_or_else(|| Fault::bad("Unterminated quote in Authorization"))?
            } else {
                Cow::Borrowed(v)
            };
            let n = if n.bytes().any(|b| b.is_ascii_uppercase()) {
                Cow::Owned(n.to_ascii_lowercase())
            } else {
                Cow::Borrowed(n)
            };
            params.push((n, v));
        }
        Ok(DigestCredentials { scheme, params })
    }

    /// A parameter's value.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn via_forms() {
        let v =
            Via::parse("SIP / 2.0 / UDP 192.0.2.1:5060;branch=z9hG4bK776;rport;received=1.2.3.4")
                .unwrap();
        assert_eq!(
            (v.transport.as_str(), v.host.as_str(), v.port),
            ("UDP", "192.0.2.1", Some(5060))
        );
        assert_eq!(v.branch(), Some("z9hG4bK776"));
        assert_eq!(v.rport(), Some(None));
        let v6 = Via::parse("SIP/2.0/TCP [2001:db8::9]:5061;branch=z9hG4bKx").unwrap();
        assert_eq!(v6.host, "2001:db8::9");
        assert!(Via::parse("SIP/2.0/UDP h;;branch=z9hG4bKx").is_err());
        assert!(Via::parse("SIP/2.0/UDP h;branch=z9hG4bK").is_err());
        assert!(Via::parse("SIP/3.0/UDP h").is_err());
        assert!(Via::parse("SIP/2.0/UDP h:99999").is_err());
        assert!(Via::parse("SIP/2.0/UDP 255.255.255.255;branch=z9hG4bKx").is_ok());
    }

    #[test]
    fn name_addr_forms() {
        let a = NameAddr::parse(r#""Bob \"B\"" <sip:bob@b;transport=tcp>;tag=9"#, "To").unwrap();
        assert_eq!(a.display.as_deref(), Some(r#"Bob "B""#));
        assert_eq!(a.uri, "sip:bob@b;transport=tcp");
        assert_eq!(a.tag(), Some("9"));
        let b = NameAddr::parse("sip:+1972@gw1.example.net;unknownparam", "Contact").unwrap();
        assert_eq!(b.uri, "sip:+1972@gw1.example.net");
        assert_eq!(b.params, vec![("unknownparam".to_string(), None)]);
        let c = NameAddr::parse("Bob <sip:bob@b>", "To").unwrap();
        assert_eq!(c.display.as_deref(), Some("Bob"));
        assert!(NameAddr::parse(r#""Unterminated <sip:x@y>"#, "To").is_err());
        assert!(NameAddr::parse("< sip:t.watson@example.org >", "To").is_err());
        assert!(NameAddr::parse("Bell, Alexander <sip:a.g.bell@bell-tel.com>", "To").is_err());
        assert!(NameAddr::parse(
            "sip:user@example.com?Route=%3Csip:sip.example.com%3E",
            "Contact"
        )
        .is_err());
        assert!(NameAddr::parse(
            "<sip:user@example.com?Route=%3Csip:sip.example.com%3E>",
            "Contact"
        )
        .is_ok());
    }

    #[test]
    fn cseq_and_numbers() {
        assert_eq!(CSeq::parse("0009 INVITE").unwrap().seq, 9);
        assert!(CSeq::parse("36893488147419103232 INVITE").is_err());
        assert!(CSeq::parse("1").is_err());
        assert_eq!(parse_u32("0068", "x"), Some(68));
        assert_eq!(parse_u32("4294967296", "x"), None);
    }

    #[test]
    fn digest_credentials() {
        let d = DigestCredentials::parse(r#"Digest username="alice", realm="r", nonce="n,1", uri="sip:r", response="abc", qop=auth, nc=00000001, cnonce="c""#).unwrap();
        assert_eq!(d.scheme, "Digest");
        assert_eq!(d.get("nonce"), Some("n,1"));
        assert_eq!(d.get("qop"), Some("auth"));
        // Names are matched lowercase; escapes inside quotes are undone; a value with text
        // after its closing quote, or without one, is refused.
        let d = DigestCredentials::parse(r#"Digest UserName="a\"b\\c", Realm=r"#).unwrap();
        assert_eq!(d.get("username"), Some(r#"a"b\c"#));
        assert_eq!(d.get("realm"), Some("r"));
        assert!(DigestCredentials::parse(r#"Digest username="a" x"#).is_err());
        assert!(DigestCredentials::parse(r#"Digest username="a"#).is_err());
        assert!(DigestCredentials::parse(r#"Digest username="a\"#).is_err());
    }

    #[test]
    fn stamped_vias_fill_received_and_rport() {
        let from: std::net::SocketAddr = "192.0.2.7:5062".parse().unwrap();
        let v = Via::parse("SIP/2.0/UDP phone.example;rport;branch=z9hG4bK1").unwrap();
        assert_eq!(
            v.stamped(from),
            "SIP/2.0/UDP phone.example;rport=5062;branch=z9hG4bK1;received=192.0.2.7"
        );
        // A sent-by that is the source address gets no received; one already there stays.
        let v = Via::parse("SIP/2.0/TCP 192.0.2.7:5062;branch=z9hG4bK2").unwrap();
        assert_eq!(
            v.stamped(from),
            "SIP/2.0/TCP 192.0.2.7:5062;branch=z9hG4bK2"
        );
        let v = Via::parse("SIP/2.0/UDP [2001:db8::1];received=10.0.0.1;x=\"a b\"").unwrap();
        assert_eq!(
            v.stamped(from),
            "SIP/2.0/UDP [2001:db8::1];received=10.0.0.1;x=\"a b\""
        );
    }

    #[test]
    fn ip_text_is_display() {
        for ip in [
            "0.0.0.0",
            "9.10.99.100",
            "255.255.255.255",
            "127.0.0.1",
            "::1",
            "2001:db8::7",
        ] {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            assert_eq!(ip_text(ip), ip.to_string());
        }
    }

    #[test]
    fn quoted_values_come_back_quoted() {
        let text = r#";+sip.instance="<urn:uuid:00000000-0000-1000-8000-000A95A0E128>";reg-id=1;expires=60;+sip.methods="INVITE,BYE";lr;x="a \"b\"""#;
        let params = parse_params(text, "Contact").unwrap();
        assert_eq!(
            param(&params, "+sip.instance"),
            Some(Some("<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"))
        );
        let mut out = String::new();
        write_params(&mut out, &params);
        assert_eq!(out, text);
        assert_eq!(parse_params(&out, "Contact").unwrap(), params);
        // Host values (an IPv6 received) and tokens stay bare.
        let via = parse_params(";received=::1;branch=z9hG4bK.x", "Via").unwrap();
        let mut out = String::new();
        write_params(&mut out, &via);
        assert_eq!(out, ";received=::1;branch=z9hG4bK.x");
    }
}
