//! SIP URIs: rsipstack's URI grammar underneath, with sipmesh's strict checks in front and the
//! original text kept (a URI is never re-serialised: rsipstack would escape `%` twice).

use std::borrow::Cow;

use rsipstack::sip::uri::Host;

use super::Fault;

/// A parsed SIP or SIPS URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipUri {
    /// The URI as written.
    pub text: String,
    /// `sips:` rather than `sip:`.
    pub secure: bool,
    /// The user part, as written (escapes kept).
    pub user: Option<String>,
    /// The host (IPv6 without brackets).
    pub host: String,
    /// The port.
    pub port: Option<u16>,
    /// URI parameters, names lowercased.
    pub params: Vec<(String, Option<String>)>,
    /// Whether the URI has a `?headers` part.
    pub has_headers: bool,
}

/// The scheme of a URI string (letters before the first ':'), lowercased (borrowed when it
/// already is).
pub fn scheme_of(uri: &str) -> Option<Cow<'_, str>> {
    let (scheme, _) = uri.split_once(':')?;
    let ok = !scheme.is_empty()
        && scheme.as_bytes()[0].is_ascii_alphabetic()
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
    ok.then(|| {
        if scheme.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(scheme.to_ascii_lowercase())
        } else {
            Cow::Borrowed(scheme)
        }
    })
}

impl SipUri {
    /// Parse a `sip:` or `sips:` URI. Another scheme is 416; a malformed URI is 400.
    ///
    /// The split into userinfo, host, parameters and headers is done here: rsipstack's splitter
    /// cuts at the first `;` or `?`, which may legally appear in a user part (RFC 4475
    /// `semiuri`, `intmeth`). rsipstack parses the host.
    pub fn parse(text: &str) -> Result<SipUri, Fault> {
        let scheme = scheme_of(text).ok_or_else(|| Fault::bad("URI without a scheme"))?;
        if scheme != "sip" && scheme != "sips" {
            return Err(Fault::new(416, "Unsupported URI Scheme"));
        }
        if text.bytes().any(|b| {
            b.is_ascii_whitespace() || b.is_ascii_control() || matches!(b, b'<' | b'>' | b'"')
        }) {
            return Err(Fault::bad("Malformed URI"));
        }
        let rest = &text[scheme.len() + 1..];
        let (userinfo, hostpart) = match rest.rfind('@') {
            Some(i) => (Some(&rest[..i]), &rest[i + 1..]),
            None => (None, rest),
        };
        let (hostpart, headers) = match hostpart.split_once('?') {
            Some((h, q)) => (h, Some(q)),
            None => (hostpart, None),
        };
        let (hostport, params) = match hostpart.split_once(';') {
            Some((h, p)) => (h, p),
            None => (hostpart, ""),
        };
        let (host, port) = super::header::parse_host_port(hostport)
            .ok_or_else(|| Fault::bad("Malformed URI host"))?;
        let host = match host.parse::<Host>() {
            // Rust reads IPv4 only in the form it writes (four decimal octets, no leading
            // zeros), so the text is already canonical.
            Ok(Host::IpAddr(std::net::IpAddr::V4(_))) => host,
            Ok(Host::IpAddr(ip)) => ip.to_string(),
            Ok(Host::Domain(d)) => {
                let mut d = d.0;
                d.make_ascii_lowercase();
                d
            }
            Err(_) => return Err(Fault::bad("Malformed URI host")),
        };
        let user = match userinfo {
            Some("") => return Err(Fault::bad("Empty URI user part")),
            Some(u) => Some(u.split(':').next().unwrap_or(u).to_string()),
            None => None,
        };
        let mut out_params = Vec::new();
        for p in params.split(';') {
            if p.is_empty() {
                continue;
            }
            out_params.push(match p.split_once('=') {
                Some((n, v)) => (n.to_ascii_lowercase(), Some(v.to_string())),
                None => (p.to_ascii_lowercase(), None),
            });
        }
        Ok(SipUri {
            text: text.to_string(),
            secure: scheme == "sips",
            user,
            host,
            port,
            params: out_params,
            has_headers: headers.is_some(),
        })
    }

    /// A URI parameter.
    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_deref())
    }

    /// The user part, canonicalised for comparison (see [`canonical_user`]).
    pub fn canonical_user(&self) -> Option<String> {
        self.user.as_deref().map(canonical_user)
    }
}

/// Canonicalise a URI user part: `%XX` escapes of unreserved characters are decoded, other escapes
/// are kept with uppercase hex (so `%61lice` is `alice`, and `%00` stays distinct from `%00%00`).
pub fn canonical_user(user: &str) -> String {
    let b = user.as_bytes();
    let mut out = String::with_capacity(user.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 3 <= b.len() && user.is_char_boundary(i + 3) {
            let hex = &user[i + 1..i + 3];
            if let Ok(v) = u8::from_str_radix(hex, 16) {
                let c = v as char;
                if v.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&v) {
                    out.push(c);
                } else {
                    out.push('%');
                    out.push_str(&hex.to_ascii_uppercase());
                }
                i += 3;
                continue;
            }
        }
        out.push(b[i] as char);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sip_uris() {
        let u = SipUri::parse("sip:alice@Example.COM:5070;transport=tcp;lr").unwrap();
        assert_eq!(u.user.as_deref(), Some("alice"));
        assert_eq!(u.host, "example.com");
        assert_eq!(u.port, Some(5070));
        assert_eq!(u.param("lr"), Some(None));
        let v6 = SipUri::parse("sip:[2001:db8::10]:5070").unwrap();
        assert_eq!(v6.host, "2001:db8::10");
        assert_eq!(
            SipUri::parse("nobodyKnowsThisScheme:totallyopaquecontent")
                .unwrap_err()
                .code,
            416
        );
        assert_eq!(
            SipUri::parse("soap.beep://192.0.2.103:3002")
                .unwrap_err()
                .code,
            416
        );
        assert_eq!(SipUri::parse("sip:a b@c").unwrap_err().code, 400);
        assert!(
            SipUri::parse("sip:user@example.com?Route=%3Csip:x%3E")
                .unwrap()
                .has_headers
        );
    }

    #[test]
    fn canonical_users() {
        assert_eq!(canonical_user("%61lice"), "alice");
        assert_eq!(canonical_user("null-%00-null"), "null-%00-null");
        assert_ne!(canonical_user("%00"), canonical_user("%00%00"));
        assert_eq!(canonical_user("a%2fb"), "a%2Fb");
    }
}
