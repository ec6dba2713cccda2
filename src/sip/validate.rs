//! The checks a message must pass before sipmesh acts on it. Each failure is a [`Fault`]: the
//! status code to answer with and a reason phrase naming what is wrong.

use super::header::{parse_u32, CSeq, NameAddr, Via};
use super::message::{HeaderName, Message, Method};
use super::uri::{scheme_of, SipUri};
use super::Fault;

/// The headers every request carries, checked and parsed.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The method.
    pub method: Method,
    /// The Request-URI as written.
    pub uri: String,
    /// The top Via.
    pub via: Via,
    /// From.
    pub from: NameAddr,
    /// To.
    pub to: NameAddr,
    /// Call-ID.
    pub call_id: String,
    /// CSeq.
    pub cseq: CSeq,
    /// Max-Forwards, if present.
    pub max_forwards: Option<u32>,
}

fn exactly_one<'a>(msg: &'a Message, name: &HeaderName, label: &str) -> Result<&'a str, Fault> {
    match msg.count(name) {
        0 => Err(Fault::bad(format!("Missing {label}"))),
        1 => Ok(msg.header(name).unwrap_or_default()),
        _ => Err(Fault::bad(format!("Multiple {label} headers"))),
    }
}

/// Whether a response can be formed for this message at all (it needs a parseable top Via).
pub fn answerable(msg: &Message) -> bool {
    msg.first_value(&HeaderName::Via)
        .is_some_and(|v| Via::parse(v).is_ok())
}

/// Check a request.
pub fn check_request(msg: &Message) -> Result<Checked, Fault> {
    let (method, uri) = match &msg.start {
        Ok(super::StartLine::Request { method, uri }) => (method.clone(), uri.clone()),
        Ok(_) => return Err(Fault::bad("Not a request")),
        Err(f) => return Err(f.clone()),
    };
    let mut top = None;
    for v in msg.iter_values(&HeaderName::Via) {
        let via = Via::parse(v)?;
        top.get_or_insert(via);
    }
    let via = top.ok_or_else(|| Fault::bad("Missing Via"))?;
    let from = NameAddr::parse(exactly_one(msg, &HeaderName::From, "From")?, "From")?;
    let to = NameAddr::parse(exactly_one(msg, &HeaderName::To, "To")?, "To")?;
    let call_id = exactly_one(msg, &HeaderName::CallId, "Call-ID")?.to_string();
    if call_id.is_empty() || call_id.bytes().any(|b| b.is_ascii_whitespace()) {
        return Err(Fault::bad("Malformed Call-ID"));
    }
    let cseq = CSeq::parse(exactly_one(msg, &HeaderName::CSeq, "CSeq")?)?;
    if cseq.method != method.as_str() {
        return Err(Fault::bad("CSeq method does not match the request method"));
    }
    let max_forwards = match msg.count(&HeaderName::MaxForwards) {
        0 => None,
        1 => Some(
            parse_u32(
                msg.header(&HeaderName::MaxForwards).unwrap_or_default(),
                "Max-Forwards",
            )
            .filter(|n| *n <= 255)
            .ok_or_else(|| Fault::bad("Max-Forwards out of range"))?,
        ),
        _ => return Err(Fault::bad("Multiple Max-Forwards headers")),
    };
    if let Some(e) = msg.header(&HeaderName::Expires) {
        parse_u32(e, "Expires").ok_or_else(|| Fault::bad("Expires out of range"))?;
    }
    for c in msg.iter_values(&HeaderName::Contact) {
        if c != "*" {
            let c = NameAddr::parse(c, "Contact")?;
            if let Some(Some(e)) = super::header::param(&c.params, "expires") {
                parse_u32(e, "expires")
                    .ok_or_else(|| Fault::bad("Contact expires out of range"))?;
            }
        }
    }
    // The Request-URI: sip/sips only, no escaped headers.
    match scheme_of(&uri).as_deref() {
        Some("sip") | Some("sips") => {
            let u = SipUri::parse(&uri)?;
            if u.has_headers {
                return Err(Fault::bad("Escaped headers in the Request-URI"));
            }
        }
        Some(_) => return Err(Fault::new(416, "Unsupported URI Scheme")),
        None => return Err(Fault::bad("Malformed Request-URI")),
    }
    Ok(Checked {
        method,
        uri,
        via,
        from,
        to,
        call_id,
        cseq,
        max_forwards,
    })
}

/// Check a response enough to match and forward it; `None` means drop it.
pub fn check_response(msg: &Message) -> Option<(u16, Via, CSeq)> {
    let (code, via) = response_head(msg)?;
    let cseq = check_response_rest(msg)?;
    Some((code, via, cseq))
}

/// The status and top Via of a response: all a relay needs to hand it up (the node it goes
/// up to checks the rest, [`check_response_rest`]).
pub fn response_head(msg: &Message) -> Option<(u16, Via)> {
    let code = msg.status()?;
    let via = Via::parse(msg.first_value(&HeaderName::Via)?).ok()?;
    Some((code, via))
}

/// The rest of [`check_response`]: one CSeq and one Call-ID, From and To that parse.
pub fn check_response_rest(msg: &Message) -> Option<CSeq> {
    if msg.count(&HeaderName::CSeq) != 1 || msg.count(&HeaderName::CallId) != 1 {
        return None;
    }
    let cseq = CSeq::parse(msg.header(&HeaderName::CSeq)?).ok()?;
    NameAddr::parse(msg.header(&HeaderName::From)?, "From").ok()?;
    NameAddr::parse(msg.header(&HeaderName::To)?, "To").ok()?;
    Some(cseq)
}
