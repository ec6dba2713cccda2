//! Digest authentication (RFC 3261 §22, RFC 7616 / RFC 8760): challenges offering SHA-256 and
//! MD5 with qop=auth, stateless HMAC nonces with an expiry, nonce-count replay checks, and a
//! bound on failed attempts.
//!
//! A nonce is `hex(issued_ms) || hex(salt) || hex(HMAC-SHA256(secret, issued_ms || salt || realm)[..12])`
//! with a random 32-bit salt (two challenges in the same millisecond differ, so their nonce counts
//! do not collide): any node of the mesh holding the mesh-wide secret can check it without state. The nonce-count seen per
//! nonce is kept per node (bounded), so a replayed request is refused where it was first seen.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::call::secret::{constant_time_eq, MeshSecret};
use crate::call::Context;
use crate::metrics::inc;
use crate::sip::digest::{hex, Algorithm, Credentials};
use crate::sip::header::DigestCredentials;
use crate::sip::message::{HeaderName, Message};
use crate::sip::validate::Checked;
use crate::sip::Fault;

/// How long a nonce is good for.
pub const NONCE_TTL: Duration = Duration::from_secs(300);
/// Nonce counts remembered at most (older nonces are forgotten first).
const MAX_TRACKED_NONCES: usize = 200_000;
/// Failed attempts (per user and Call-ID) before 403.
pub const MAX_FAILURES: u32 = 3;
/// Failure counters kept at most.
const MAX_TRACKED_FAILURES: usize = 100_000;

/// Why authentication failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// No usable credentials: challenge.
    Missing,
    /// The nonce is genuine but expired: challenge with `stale=true`.
    Stale,
    /// The nonce count was seen before: challenge again.
    Replay,
    /// Wrong credentials, forged nonce, wrong user.
    Invalid(String),
}

/// A verified request: who, and the nonce count to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The authenticated username.
    pub username: String,
}

/// A nonce's key in the nonce-count table: 8 bytes instead of its 48 characters. The nonce's
/// own MAC already makes it unforgeable; this is only its name.
fn nonce_id(nonce: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(nonce.as_bytes())
}

/// What a nonce's MAC covers first, so no other MAC of the mesh secret can pass for one.
const NONCE_DOMAIN: &[u8] = b"sipmesh nonce v1";

/// Bytes from lowercase or uppercase hex.
fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The digest authenticator of a node.
pub struct Authenticator {
    realm: String,
    /// The mesh-wide secret (nonces of the current and the previous key are accepted, so a
    /// change does not fail clients mid-authentication).
    secret: Arc<MeshSecret>,
    /// The highest nonce count seen per nonce (keyed by a digest of the nonce) and when the
    /// nonce was issued.
    nonce_counts: Mutex<HashMap<u64, (u32, u64)>>,
    failures: Mutex<HashMap<String, u32>>,
}

impl Authenticator {
    /// An authenticator for `realm` with the mesh's secret.
    pub fn new(realm: &str, secret: Arc<MeshSecret>) -> Self {
        Authenticator {
            realm: realm.to_string(),
            secret,
            nonce_counts: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// The realm.
    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// A fresh nonce issued at `now_ms`.
    pub fn nonce(&self, now_ms: u64) -> String {
        let salt: u32 = rand::random();
        let mac = self.secret.mac(&[
            NONCE_DOMAIN,
            &now_ms.to_be_bytes(),
            &salt.to_be_bytes(),
            self.realm.as_bytes(),
        ]);
        format!("{now_ms:016x}{salt:08x}{}", hex(&mac[..12]))
    }

    /// The challenge header values (SHA-256 and MD5, same nonce). MD5 is listed first because
    /// widely deployed clients (SIPp 3.6 among them) take the first challenge and know only MD5;
    /// RFC 8760 clients pick the strongest algorithm they support from the list.
    pub fn challenges(&self, now_ms: u64, stale: bool) -> Vec<String> {
        let nonce = self.nonce(now_ms);
        let stale = if stale { ", stale=true" } else { "" };
        [Algorithm::Md5, Algorithm::Sha256]
            .iter()
            .map(|alg| {
                let name = match alg {
                    Algorithm::Md5 => "MD5",
                    Algorithm::Sha256 => "SHA-256",
                };
                format!(
                    "Digest realm=\"{}\", nonce=\"{nonce}\", algorithm={name}, qop=\"auth\"{stale}",
                    self.realm
                )
            })
            .collect()
    }

    fn check_nonce(&self, nonce: &str, now_ms: u64) -> Result<u64, AuthError> {
        if nonce.len() != 48 || !nonce.is_ascii() {
            return Err(AuthError::Invalid("malformed nonce".into()));
        }
        let malformed = |_| AuthError::Invalid("malformed nonce".into());
        let issued = u64::from_str_radix(&nonce[..16], 16).map_err(malformed)?;
        let salt = u32::from_str_radix(&nonce[16..24], 16).map_err(malformed)?;
        let Some(tag) = unhex(&nonce[24..]) else {
            return Err(AuthError::Invalid("malformed nonce".into()));
        };
        let parts: [&[u8]; 4] = [
            NONCE_DOMAIN,
            &issued.to_be_bytes(),
            &salt.to_be_bytes(),
            self.realm.as_bytes(),
        ];
        if !self.secret.verify(&parts, &tag) {
            return Err(AuthError::Invalid("nonce not issued by this mesh".into()));
        }
        if now_ms.saturating_sub(issued) > NONCE_TTL.as_millis() as u64 || issued > now_ms + 60_000
        {
            return Err(AuthError::Stale);
        }
        Ok(issued)
    }

    /// Verify credentials for `method` against a user's stored HA1s. `lookup` is called only
    /// once the nonce checks out.
    pub fn verify(
        &self,
        creds: &DigestCredentials,
        method: &str,
        credentials: Option<&Credentials>,
        now_ms: u64,
    ) -> Result<Verified, AuthError> {
        if !creds.scheme.eq_ignore_ascii_case("Digest") {
            return Err(AuthError::Missing);
        }
        if creds.get("realm") != Some(self.realm.as_str()) {
            return Err(AuthError::Missing);
        }
        let get = |n: &str| {
            creds
                .get(n)
                .ok_or_else(|| AuthError::Invalid(format!("missing {n}")))
        };
        let username = get("username")?;
        let nonce = get("nonce")?;
        let uri = get("uri")?;
        let response = get("response")?;
        let alg = Algorithm::parse(creds.get("algorithm"))
            .ok_or_else(|| AuthError::Invalid("unsupported algorithm".into()))?;
        let issued = self.check_nonce(nonce, now_ms)?;
        if creds.get("qop") != Some("auth") {
            return Err(AuthError::Invalid("qop=auth is required".into()));
        }
        let nc_text = get("nc")?;
        let cnonce = get("cnonce")?;
        let nc = u32::from_str_radix(nc_text, 16)
            .map_err(|_| AuthError::Invalid("malformed nc".into()))?;
        if nc_text.len() != 8 || nc == 0 {
            return Err(AuthError::Invalid("malformed nc".into()));
        }
        {
            let seen = self.nonce_counts.lock().unwrap_or_else(|p| p.into_inner());
            if seen
                .get(&nonce_id(nonce))
                .is_some_and(|(max, _)| nc <= *max)
            {
                return Err(AuthError::Replay);
            }
        }
        let Some(stored) = credentials else {
            return Err(AuthError::Invalid("unknown user".into()));
        };
        let ha1 = match alg {
            Algorithm::Md5 => &stored.ha1_md5,
            Algorithm::Sha256 => &stored.ha1_sha256,
        };
        let ha2 = alg.hash(&format!("{method}:{uri}"));
        let expected = alg.hash(&format!("{ha1}:{nonce}:{nc_text}:{cnonce}:auth:{ha2}"));
        if !constant_time_eq(
            expected.as_bytes(),
            response.to_ascii_lowercase().as_bytes(),
        ) {
            return Err(AuthError::Invalid("wrong credentials".into()));
        }
        // Record the count only now: a forged request must not burn a genuine client's count.
        let mut seen = self.nonce_counts.lock().unwrap_or_else(|p| p.into_inner());
        if seen
            .get(&nonce_id(nonce))
            .is_some_and(|(max, _)| nc <= *max)
        {
            return Err(AuthError::Replay);
        }
        if seen.len() >= MAX_TRACKED_NONCES {
            let horizon = now_ms.saturating_sub(NONCE_TTL.as_millis() as u64);
            seen.retain(|_, (_, issued)| *issued >= horizon);
            if seen.len() >= MAX_TRACKED_NONCES {
                tracing::warn!("nonce-count table full of live nonces; forgetting them");
                seen.clear();
            }
        }
        seen.insert(nonce_id(nonce), (nc, issued));
        Ok(Verified {
            username: username.to_string(),
        })
    }

    /// Count a failure for `key` (user and Call-ID); returns true once the limit is reached.
    pub fn fail(&self, key: &str) -> bool {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if f.len() >= MAX_TRACKED_FAILURES && !f.contains_key(key) {
            f.clear();
        }
        let n = f.entry(key.to_string()).or_insert(0);
        *n += 1;
        *n >= MAX_FAILURES
    }

    /// Forget failures for `key` (after a success).
    pub fn succeed(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}

/// Who challenges: the registrar (401, RFC 3261 §22.2) or the proxy (407, §22.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Challenger {
    /// 401 with `WWW-Authenticate`; credentials in `Authorization`.
    Registrar,
    /// 407 with `Proxy-Authenticate`; credentials in `Proxy-Authorization`.
    Proxy,
}

impl Challenger {
    fn credentials_header(self) -> HeaderName {
        match self {
            Challenger::Registrar => HeaderName::Authorization,
            Challenger::Proxy => HeaderName::ProxyAuthorization,
        }
    }

    fn challenge(self) -> Fault {
        match self {
            Challenger::Registrar => Fault::new(401, "Unauthorized"),
            Challenger::Proxy => Fault::new(407, "Proxy Authentication Required"),
        }
    }

    fn challenge_header(self) -> &'static str {
        match self {
            Challenger::Registrar => "WWW-Authenticate",
            Challenger::Proxy => "Proxy-Authenticate",
        }
    }
}

/// Authenticate a request as `expected_user` (the AOR of a REGISTER, the caller of an
/// INVITE): `Ok(user)`, or the fault to answer — a challenge, or 403 when the credentials are
/// for another user or keep failing.
pub(crate) async fn authenticate(
    ctx: &Context,
    req: &Message,
    c: &Checked,
    expected_user: &str,
    who: Challenger,
) -> Result<String, Fault> {
    let now = ctx.mesh.keyspace().wall_ms();
    let challenge = |stale: bool| {
        inc(&ctx.metrics.registrar_challenges);
        let mut f = who.challenge();
        for ch in ctx.auth.challenges(now, stale) {
            f = f.with(who.challenge_header(), ch);
        }
        f
    };
    // Our realm's Digest credentials, if any.
    let creds = req
        .values(&who.credentials_header())
        .into_iter()
        .filter_map(|v| DigestCredentials::parse(v).ok())
        .find(|d| {
            d.scheme.eq_ignore_ascii_case("Digest") && d.get("realm") == Some(ctx.auth.realm())
        });
    let Some(creds) = creds else {
        return Err(challenge(false));
    };
    let username = creds.get("username").unwrap_or_default().to_string();
    let fail_key = format!("{username}|{}", c.call_id);
    if username != expected_user {
        inc(&ctx.metrics.registrar_auth_failures);
        return Err(Fault::new(403, "Username does not match the AOR"));
    }
    let stored = match ctx.users.get_cached(&username).await {
        Ok(Some(u)) if !u.disabled => Some(u.credentials),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(error = %e, "user lookup failed");
            return Err(Fault::new(500, "User lookup failed").with("Retry-After", "5"));
        }
    };
    match ctx
        .auth
        .verify(&creds, c.method.as_str(), stored.as_ref(), now)
    {
        Ok(v) => {
            ctx.auth.succeed(&fail_key);
            Ok(v.username)
        }
        Err(AuthError::Missing) => Err(challenge(false)),
        Err(AuthError::Stale) => Err(challenge(true)),
        Err(AuthError::Replay) => {
            inc(&ctx.metrics.registrar_replays);
            Err(challenge(false))
        }
        Err(AuthError::Invalid(why)) => {
            inc(&ctx.metrics.registrar_auth_failures);
            tracing::debug!(user = %username, why, "authentication failed");
            // A phone with a wrong password gets one more chance to register; a call with
            // wrong credentials is refused at once.
            if who == Challenger::Proxy || ctx.auth.fail(&fail_key) {
                Err(Fault::new(403, "Forbidden"))
            } else {
                Err(challenge(false))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::digest::ha1;

    fn creds_for(
        a: &Authenticator,
        alg: Algorithm,
        nonce: &str,
        nc: &str,
        password: &str,
    ) -> DigestCredentials {
        let ha1 = ha1(alg, "alice", "r", password);
        let ha2 = alg.hash("REGISTER:sip:r");
        let resp = alg.hash(&format!("{ha1}:{nonce}:{nc}:cn:auth:{ha2}"));
        let alg_name = if alg == Algorithm::Md5 {
            "MD5"
        } else {
            "SHA-256"
        };
        DigestCredentials::parse(&format!(
            r#"Digest username="alice", realm="{}", nonce="{nonce}", uri="sip:r", response="{resp}", algorithm={alg_name}, qop=auth, nc={nc}, cnonce="cn""#,
            a.realm()
        ))
        .unwrap()
    }

    fn stored() -> Credentials {
        Credentials {
            ha1_md5: ha1(Algorithm::Md5, "alice", "r", "pw"),
            ha1_sha256: ha1(Algorithm::Sha256, "alice", "r", "pw"),
        }
    }

    #[test]
    fn good_credentials_both_algorithms() {
        let a = Authenticator::new("r", Arc::new(MeshSecret::new(b"secret".to_vec())));
        for alg in [Algorithm::Md5, Algorithm::Sha256] {
            let nonce = a.nonce(1_000_000);
            let c = creds_for(&a, alg, &nonce, "00000001", "pw");
            assert_eq!(
                a.verify(&c, "REGISTER", Some(&stored()), 1_000_500)
                    .unwrap()
                    .username,
                "alice"
            );
        }
    }

    #[test]
    fn wrong_password_replay_stale_forged() {
        let a = Authenticator::new("r", Arc::new(MeshSecret::new(b"secret".to_vec())));
        let nonce = a.nonce(1_000_000);
        let bad = creds_for(&a, Algorithm::Md5, &nonce, "00000001", "nope");
        assert!(matches!(
            a.verify(&bad, "REGISTER", Some(&stored()), 1_000_100),
            Err(AuthError::Invalid(_))
        ));
        let good = creds_for(&a, Algorithm::Md5, &nonce, "00000001", "pw");
        assert!(a
            .verify(&good, "REGISTER", Some(&stored()), 1_000_100)
            .is_ok());
        assert_eq!(
            a.verify(&good, "REGISTER", Some(&stored()), 1_000_200),
            Err(AuthError::Replay)
        );
        let next = creds_for(&a, Algorithm::Md5, &nonce, "00000002", "pw");
        assert!(a
            .verify(&next, "REGISTER", Some(&stored()), 1_000_300)
            .is_ok());
        let late = creds_for(&a, Algorithm::Md5, &nonce, "00000003", "pw");
        assert_eq!(
            a.verify(&late, "REGISTER", Some(&stored()), 1_000_000 + 301_000),
            Err(AuthError::Stale)
        );
        let other = Authenticator::new("r", Arc::new(MeshSecret::new(b"other".to_vec())));
        let forged = creds_for(
            &other,
            Algorithm::Md5,
            &other.nonce(1_000_000),
            "00000001",
            "pw",
        );
        assert!(matches!(
            a.verify(&forged, "REGISTER", Some(&stored()), 1_000_100),
            Err(AuthError::Invalid(_))
        ));
        // a secret change keeps the previous secret's nonces valid
        a.secret.set(b"rotated".to_vec());
        let still = creds_for(&a, Algorithm::Md5, &nonce, "00000009", "pw");
        assert!(a
            .verify(&still, "REGISTER", Some(&stored()), 1_000_400)
            .is_ok());
    }

    #[test]
    fn nonces_of_one_millisecond_differ() {
        let a = Authenticator::new("r", Arc::new(MeshSecret::new(vec![1])));
        assert_ne!(a.nonce(5), a.nonce(5));
    }

    #[test]
    fn failures_are_bounded() {
        let a = Authenticator::new("r", Arc::new(MeshSecret::new(vec![1])));
        assert!(!a.fail("alice|c1"));
        assert!(!a.fail("alice|c1"));
        assert!(a.fail("alice|c1"));
        a.succeed("alice|c1");
        assert!(!a.fail("alice|c1"));
    }

    #[test]
    fn unknown_scheme_is_missing() {
        let a = Authenticator::new("r", Arc::new(MeshSecret::new(vec![1])));
        let c = DigestCredentials::parse("NoOneKnowsThisScheme opaque-data=here").unwrap();
        assert_eq!(a.verify(&c, "REGISTER", None, 0), Err(AuthError::Missing));
    }
}
