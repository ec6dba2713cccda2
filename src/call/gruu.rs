//! GRUUs (RFC 5627): URIs that reach one instance of a user (one phone), through any node.
//!
//! - A public GRUU is the AOR with the instance id: `sip:alice@example.org;gr=urn:uuid:…`.
//! - A temporary GRUU hides both: `sip:tgruu.TOKEN@example.org;gr`, the token holding the AOR
//!   and the instance id encrypted and authenticated under the mesh secret (a keystream and a
//!   MAC, both HMAC-SHA256), so any node can read it and nobody else can forge or read one. It
//!   stays valid as long as the mesh secret does.
//!
//! Nothing is stored: a GRUU is resolved to the instance's current bindings (RFC 5627 §6),
//! wherever the phone registered them, so a dialog whose remote target is a GRUU survives the
//! death of the node that carried the call once the phone has registered through another.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

use crate::call::secret::MeshSecret;
use crate::sip::uri::SipUri;
use crate::sip::Fault;

/// Domain separation of the token's MAC and keystream.
const MAC_DOMAIN: &[u8] = b"sipmesh temp gruu mac v1";
const KEY_DOMAIN: &[u8] = b"sipmesh temp gruu key v1";
const NONCE_LEN: usize = 8;
const MAC_LEN: usize = 10;
/// The user part of a temporary GRUU starts with this.
const PREFIX: &str = "tgruu.";
/// The longest token decoded (an AOR and an instance id of reasonable length).
const MAX_TOKEN_CHARS: usize = 600;

/// The instance id as a GRUU carries it: the `+sip.instance` value without quotes and angle
/// brackets (`urn:uuid:…`).
pub fn instance_id(instance: &str) -> &str {
    instance
        .trim_matches('"')
        .trim_start_matches('<')
        .trim_end_matches('>')
}

fn keystream_xor(secret: &MeshSecret, nonce: &[u8], data: &mut [u8]) {
    for (i, chunk) in data.chunks_mut(32).enumerate() {
        let block = secret.mac(&[KEY_DOMAIN, nonce, &(i as u32).to_be_bytes()]);
        for (b, k) in chunk.iter_mut().zip(block) {
            *b ^= k;
        }
    }
}

/// The token of a temporary GRUU for `aor`'s instance `instance` (its id).
pub fn seal(secret: &MeshSecret, aor: &str, instance: &str) -> String {
    let nonce: [u8; NONCE_LEN] = rand::random();
    let mut body = Vec::with_capacity(aor.len() + 1 + instance.len());
    body.extend_from_slice(aor.as_bytes());
    body.push(0);
    body.extend_from_slice(instance.as_bytes());
    keystream_xor(secret, &nonce, &mut body);
    let mac = secret.mac(&[MAC_DOMAIN, &nonce, &body]);
    let mut out = Vec::with_capacity(NONCE_LEN + body.len() + MAC_LEN);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&body);
    out.extend_from_slice(&mac[..MAC_LEN]);
    URL_SAFE_NO_PAD.encode(out)
}

/// The AOR and instance id a temporary GRUU's token holds (`None`: not one of this mesh's).
pub fn open(secret: &MeshSecret, token: &str) -> Option<(String, String)> {
    if token.len() > MAX_TOKEN_CHARS {
        return None;
    }
    let raw = URL_SAFE_NO_PAD.decode(token).ok()?;
    if raw.len() < NONCE_LEN + 2 + MAC_LEN {
        return None;
    }
    let (nonce, rest) = raw.split_at(NONCE_LEN);
    let (body, mac) = rest.split_at(rest.len() - MAC_LEN);
    if !secret.verify(&[MAC_DOMAIN, nonce, body], mac) {
        return None;
    }
    let mut plain = body.to_vec();
    keystream_xor(secret, nonce, &mut plain);
    let at = plain.iter().position(|b| *b == 0)?;
    let aor = String::from_utf8(plain[..at].to_vec()).ok()?;
    let instance = String::from_utf8(plain[at + 1..].to_vec()).ok()?;
    Some((aor, instance))
}

/// The public and temporary GRUUs of `aor`'s instance `instance` (a `+sip.instance` value),
/// in the domain `hostport` (the REGISTER's To).
pub fn assign(secret: &MeshSecret, aor: &str, hostport: &str, instance: &str) -> (String, String) {
    let id = instance_id(instance);
    (
        format!("sip:{aor}@{hostport};gr={id}"),
        format!("sip:{PREFIX}{}@{hostport};gr", seal(secret, aor, id)),
    )
}

/// What a Request-URI that is a GRUU names: the AOR and the instance id. `None`: not a GRUU;
/// an error: a GRUU that names nobody (a temporary one this mesh did not make).
pub fn target(secret: &MeshSecret, uri: &SipUri) -> Option<Result<(String, String), Fault>> {
    let gr = uri.param("gr")?;
    let user = uri.user.as_deref()?;
    Some(match gr.filter(|v| !v.is_empty()) {
        Some(id) => uri
            .canonical_user()
            .map(|aor| (aor, id.to_string()))
            .ok_or_else(|| Fault::new(404, "Not Found")),
        None => user
            .strip_prefix(PREFIX)
            .and_then(|token| open(secret, token))
            .ok_or_else(|| Fault::new(404, "Unknown GRUU")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_gruus_hide_and_keep_the_aor_and_instance() {
        let s = MeshSecret::new(b"mesh secret".to_vec());
        let id = "urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6";
        let (public, temp) = assign(&s, "alice", "example.org", &format!("\"<{id}>\""));
        assert_eq!(public, format!("sip:alice@example.org;gr={id}"));
        assert!(
            !temp.contains("alice") && !temp.contains("f81d4fae"),
            "{temp}"
        );
        let pu = SipUri::parse(&public).unwrap();
        assert_eq!(
            target(&s, &pu).unwrap().unwrap(),
            ("alice".into(), id.into())
        );
        let tu = SipUri::parse(&temp).unwrap();
        assert_eq!(
            target(&s, &tu).unwrap().unwrap(),
            ("alice".into(), id.into())
        );
        // Two temporary GRUUs of one instance differ (a fresh nonce each).
        assert_ne!(assign(&s, "alice", "example.org", id).1, temp);
        // Another mesh's, or a tampered one, names nobody.
        let other = MeshSecret::new(b"other".to_vec());
        assert!(target(&other, &tu).unwrap().is_err());
        let mut bad = temp.clone();
        bad.replace_range(12..13, if &temp[12..13] == "A" { "B" } else { "A" });
        assert!(target(&s, &SipUri::parse(&bad).unwrap()).unwrap().is_err());
        // Not a GRUU at all.
        assert!(target(&s, &SipUri::parse("sip:alice@example.org").unwrap()).is_none());
    }
}
