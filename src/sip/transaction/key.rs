//! Transaction keys: how a message finds its transaction (RFC 3261 §17.1.3, §17.2.3).

use crate::sip::header::{NameAddr, Via};
use crate::sip::message::{HeaderName, Message, Method};

/// The key of a server transaction.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ServerKey {
    /// RFC 3261 (§17.2.3): the top Via's branch and sent-by, and the method (an ACK matches
    /// its INVITE). The Call-ID is added: a genuine retransmission always carries the same one,
    /// and it keeps apart two different requests from a client that reuses branch values (RFC
    /// 4475's corpus does).
    Branch {
        /// The branch parameter.
        branch: String,
        /// The sent-by host (lowercased) and port.
        sent_by: (String, u16),
        /// The method, INVITE for ACK.
        method: Method,
        /// The Call-ID.
        call_id: String,
    },
    /// A pre-3261 request (no magic cookie): Call-ID, CSeq number, From tag, the whole top Via
    /// and the method (RFC 3261 §17.2.3's backwards-compatible rule).
    Legacy {
        /// The Call-ID.
        call_id: String,
        /// The CSeq number as written.
        cseq: String,
        /// The From tag.
        from_tag: String,
        /// The top Via as written.
        top_via: String,
        /// The method, INVITE for ACK.
        method: Method,
    },
}

impl ServerKey {
    /// The key of a request whose top Via is `via`, as if its method were `method` (a CANCEL's
    /// INVITE is found by asking for `Method::Invite`).
    pub fn of(msg: &Message, via: &Via, method: &Method) -> ServerKey {
        let method = match method {
            Method::Ack => Method::Invite,
            m => m.clone(),
        };
        let call_id = msg
            .header(&HeaderName::CallId)
            .unwrap_or_default()
            .to_string();
        if via.is_rfc3261() {
            ServerKey::Branch {
                branch: via.branch().unwrap_or_default().to_string(),
                sent_by: (via.host.to_ascii_lowercase(), via.port.unwrap_or(5060)),
                method,
                call_id,
            }
        } else {
            ServerKey::Legacy {
                call_id,
                cseq: msg
                    .header(&HeaderName::CSeq)
                    .and_then(|c| c.split_ascii_whitespace().next())
                    .unwrap_or_default()
                    .to_string(),
                from_tag: msg
                    .header(&HeaderName::From)
                    .and_then(|f| NameAddr::parse(f, "From").ok())
                    .and_then(|f| f.tag().map(str::to_string))
                    .unwrap_or_default(),
                top_via: msg
                    .values(&HeaderName::Via)
                    .first()
                    .copied()
                    .unwrap_or_default()
                    .to_string(),
                method,
            }
        }
    }
}

/// The key of a client transaction: the branch this proxy put in its Via, and the CSeq method
/// (a CANCEL shares its INVITE's branch).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientKey {
    /// The branch.
    pub branch: String,
    /// The CSeq method.
    pub method: Method,
}

impl ClientKey {
    /// The key of branch `branch` for `method`.
    pub fn new(branch: &str, method: Method) -> ClientKey {
        ClientKey {
            branch: branch.to_string(),
            method,
        }
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
    fn legacy_requests_match_on_call_id_cseq_and_tag() {
        let (a, va) = req("OPTIONS sip:b@h SIP/2.0\r\nVia: SIP/2.0/UDP a;branch=old1\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>\r\nCall-ID: c\r\nCSeq: 4 OPTIONS\r\n\r\n");
        let (b, vb) = req("OPTIONS sip:b@h SIP/2.0\r\nVia: SIP/2.0/UDP a;branch=old1\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>\r\nCall-ID: c\r\nCSeq: 5 OPTIONS\r\n\r\n");
        assert!(matches!(
            ServerKey::of(&a, &va, &Method::Options),
            ServerKey::Legacy { .. }
        ));
        assert_ne!(
            ServerKey::of(&a, &va, &Method::Options),
            ServerKey::of(&b, &vb, &Method::Options)
        );
    }
}
