//! Transaction keys: how a message finds its transaction (RFC 3261 §17.1.3, §17.2.3).

use crate::sip::header::{NameAddr, Via};
use crate::sip::message::{HeaderName, Message, Method};

/// The key of a server transaction: a 128-bit digest of what RFC 3261 matches on, so the
/// tables and the timer heap hold 16 bytes per transaction instead of the strings.
///
/// RFC 3261 requests (§17.2.3): the top Via's branch and sent-by, and the method (an ACK
/// matches its INVITE). The Call-ID is added: a genuine retransmission always carries the
/// same one, and it keeps apart two different requests from a client that reuses branch values
/// (RFC 4475's corpus does). Pre-3261 requests (no magic cookie): Call-ID, CSeq number, From
/// tag, the whole top Via and the method. The digest is XXH3-128 seeded with a random number
/// drawn once per process, so nobody outside can aim two requests at one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServerKey(u128);

/// The per-process seed of transaction keys.
fn seed() -> u64 {
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *SEED.get_or_init(rand::random)
}

/// A digest of fields, each length-prefixed (so `("ab", "c")` and `("a", "bc")` differ).
fn digest(parts: &[&[u8]]) -> u128 {
    let mut h = xxhash_rust::xxh3::Xxh3::with_seed(seed());
    for p in parts {
        h.update(&(p.len() as u32).to_le_bytes());
        h.update(p);
    }
    h.digest128()
}

impl ServerKey {
    /// The key of a request whose top Via is `via`, as if its method were `method` (a CANCEL's
    /// INVITE is found by asking for `Method::Invite`).
    pub fn of(msg: &Message, via: &Via, method: &Method) -> ServerKey {
        let method = match method {
            Method::Ack => Method::Invite,
            m => m.clone(),
        };
        let call_id = msg.header(&HeaderName::CallId).unwrap_or_default();
        if via.is_rfc3261() {
            let host = via.host.to_ascii_lowercase();
            ServerKey(digest(&[
                b"3261",
                via.branch().unwrap_or_default().as_bytes(),
                host.as_bytes(),
                &via.port.unwrap_or(5060).to_be_bytes(),
                method.as_str().as_bytes(),
                call_id.as_bytes(),
            ]))
        } else {
            let cseq = msg
                .header(&HeaderName::CSeq)
                .and_then(|c| c.split_ascii_whitespace().next())
                .unwrap_or_default();
            let from_tag = msg
                .header(&HeaderName::From)
                .and_then(|f| NameAddr::parse(f, "From").ok())
                .and_then(|f| f.tag().map(str::to_string))
                .unwrap_or_default();
            let top_via = msg.first_value(&HeaderName::Via).unwrap_or_default();
            ServerKey(digest(&[
                b"2543",
                call_id.as_bytes(),
                cseq.as_bytes(),
                from_tag.as_bytes(),
                top_via.as_bytes(),
                method.as_str().as_bytes(),
            ]))
        }
    }
}

/// The key of a client transaction: the branch this proxy put in its Via, and the CSeq method
/// (a CANCEL shares its INVITE's branch) — as a digest, like [`ServerKey`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientKey(u128);

impl ClientKey {
    /// The key of branch `branch` for `method`.
    pub fn new(branch: &str, method: &Method) -> ClientKey {
        ClientKey(digest(&[branch.as_bytes(), method.as_str().as_bytes()]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(s: &str) -> (Message, Via) {
        let m = Message::parse(s.as_bytes(), false).unwrap();
        let via = Via::parse(m.values(&HeaderName::Via)[0]).unwrap();
        (m, via)
    }

    #[test]
    fn ack_and_cancel_find_their_invite() {
        let (m, via) = req("ACK sip:b@h SIP/2.0\r\nVia: SIP/2.0/UDP A.example:5070;branch=z9hG4bKx\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>\r\nCall-ID: c\r\nCSeq: 1 ACK\r\n\r\n");
        let (i, ivia) = req("INVITE sip:b@h SIP/2.0\r\nVia: SIP/2.0/UDP a.example:5070;branch=z9hG4bKx\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n\r\n");
        assert_eq!(
            ServerKey::of(&m, &via, &Method::Ack),
            ServerKey::of(&i, &ivia, &Method::Invite)
        );
        assert_ne!(
            ServerKey::of(&i, &ivia, &Method::Cancel),
            ServerKey::of(&i, &ivia, &Method::Invite)
        );
    }

    #[test]
    fn client_keys_tell_branch_and_method_apart() {
        assert_eq!(
            ClientKey::new("z9hG4bKa", &Method::Invite),
            ClientKey::new("z9hG4bKa", &Method::Invite)
        );
        assert_ne!(
            ClientKey::new("z9hG4bKa", &Method::Invite),
            ClientKey::new("z9hG4bKa", &Method::Cancel)
        );
        assert_ne!(
            ClientKey::new("z9hG4bKa", &Method::Invite),
            ClientKey::new("z9hG4bKb", &Method::Invite)
        );
    }

    #[test]
    fn legacy_requests_match_on_call_id_cseq_and_tag() {
        let (a, va) = req("OPTIONS sip:b@h SIP/2.0\r\nVia: SIP/2.0/UDP a;branch=old1\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>\r\nCall-ID: c\r\nCSeq: 4 OPTIONS\r\n\r\n");
        let (b, vb) = req("OPTIONS sip:b@h SIP/2.0\r\nVia: SIP/2.0/UDP a;branch=old1\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>\r\nCall-ID: c\r\nCSeq: 5 OPTIONS\r\n\r\n");
        assert_ne!(
            ServerKey::of(&a, &va, &Method::Options),
            ServerKey::of(&b, &vb, &Method::Options)
        );
    }
}
