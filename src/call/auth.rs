//! Digest authentication (RFC 3261 §22, RFC 7616 / RFC 8760): challenges offering SHA-256 and
//! MD5 with qop=auth, stateless HMAC nonces with an expiry, nonce-count replay checks, and a
//! bound on failed attempts.
//!
//! A nonce is `hex(issued_ms) || hex(salt) || hex(node) || hex(HMAC-SHA256(secret, issued_ms ||
//! salt || node || realm)[..12])` with a random 32-bit salt (two challenges in the same
//! millisecond differ, so their nonce counts do not collide). It is bound to the node that
//! issued it: the nonce-count seen per nonce is kept by that node only, so another node answers a
//! nonce it did not issue with a fresh challenge (`stale=true`, the phone retries without asking
//! its user) rather than accepting a request that may replay one seen elsewhere. A failed
//! attempt consumes its nonce count too, and a nonce that failed [`MAX_NONCE_FAILURES`] times is
//! dead. The `uri` directive must name the Request-URI.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::call::flow_token::NodeId;
use crate::call::secret::{constant_time_eq, MeshSecret};
use crate::call::Context;
use crate::metrics::inc;
use crate::sip::digest::{hex, unhex, Algorithm, Credentials};
use crate::sip::header::DigestCredentials;
use crate::sip::message::{HeaderName, Message};
use crate::sip::validate::Checked;
use crate::sip::Fault;
use crate::slack::Slack;

/// How long a nonce is good for.
pub const NONCE_TTL: Duration = Duration::from_secs(300);
/// Nonce counts remembered at most (older nonces are forgotten first).
const MAX_TRACKED_NONCES: usize = 200_000;
/// Failed attempts with one nonce before it is refused outright.
pub const MAX_NONCE_FAILURES: u8 = 3;
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

/// The digest authenticator of a node.
pub struct Authenticator {
    realm: String,
    /// The mesh-wide secret (nonces of the current and the previous key are accepted, so a
    /// change does not fail clients mid-authentication).
    secret: Arc<MeshSecret>,
    /// This node (nonces name their issuer).
    node: NodeId,
    /// The algorithms offered, one challenge each, in this order (MD5 alone by default).
    algorithms: Vec<Algorithm>,
    /// Per nonce (keyed by a digest of it): the highest nonce count seen, when the nonce was
    /// issued, and how many attempts with it failed.
    nonce_counts: Mutex<HashMap<u64, NonceState>>,
    failures: Mutex<HashMap<String, u32>>,
    /// Stateless challenges of the last [`RETRANSMISSION_WINDOW`]: request digest → when its
    /// nonce was issued.
    recent: Mutex<Recent>,
}

/// Stateless challenges recently sent, oldest first.
#[derive(Default)]
struct Recent {
    issued: HashMap<u64, u64>,
    order: std::collections::VecDeque<(u64, u64)>,
}

impl Recent {
    /// Forget the challenges issued before `horizon_ms`.
    fn forget_before(&mut self, horizon_ms: u64) {
        while self.order.front().is_some_and(|(at, _)| *at < horizon_ms) {
            self.forget_oldest();
        }
    }

    fn forget_oldest(&mut self) {
        if let Some((at, d)) = self.order.pop_front() {
            if self.issued.get(&d) == Some(&at) {
                self.issued.remove(&d);
            }
        }
    }
}

/// How long a retransmission of a challenged request gets the same challenge (Timer F).
pub const RETRANSMISSION_WINDOW: Duration = Duration::from_secs(32);
/// Requests remembered at most for [`Authenticator::stateless_nonce`].
const MAX_RECENT_CHALLENGES: usize = 200_000;

/// Forget the counts of nonces past [`NONCE_TTL`] at `now_ms` (they are refused as stale).
fn forget_expired(seen: &mut HashMap<u64, NonceState>, now_ms: u64) {
    let horizon = now_ms.saturating_sub(NONCE_TTL.as_millis() as u64);
    seen.retain(|_, st| st.issued >= horizon);
}

/// What this node remembers of a nonce it issued.
#[derive(Debug, Clone, Copy)]
struct NonceState {
    max_nc: u32,
    issued: u64,
    failures: u8,
}

impl Authenticator {
    /// An authenticator for `realm` with the mesh's secret.
    pub fn new(realm: &str, secret: Arc<MeshSecret>) -> Self {
        Authenticator {
            realm: realm.to_string(),
            secret,
            node: NodeId([0; 8]),
            algorithms: vec![Algorithm::Md5],
            nonce_counts: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            recent: Mutex::new(Recent::default()),
        }
    }

    /// Bind this authenticator's nonces to `node`.
    pub fn for_node(mut self, node: NodeId) -> Self {
        self.node = node;
        self
    }

    /// Offer these algorithms, in this order (an empty list keeps the default, MD5).
    pub fn algorithms(mut self, algorithms: &[Algorithm]) -> Self {
        if !algorithms.is_empty() {
            self.algorithms = algorithms.to_vec();
        }
        self
    }

    /// The realm.
    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// A fresh nonce issued at `now_ms`.
    pub fn nonce(&self, now_ms: u64) -> String {
        self.nonce_with(now_ms, rand::random())
    }

    /// Forget what no request can use any more — nonces past [`NONCE_TTL`], challenges past
    /// [`RETRANSMISSION_WINDOW`] — and give back the capacity a burst left
    /// ([`crate::slack`]).
    pub fn release_slack(&self, now_ms: u64) {
        {
            let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            recent.forget_before(now_ms.saturating_sub(RETRANSMISSION_WINDOW.as_millis() as u64));
            recent.issued.release();
            recent.order.release();
        }
        {
            let mut seen = self.nonce_counts.lock().unwrap_or_else(|p| p.into_inner());
            forget_expired(&mut seen, now_ms);
            seen.release();
        }
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .release();
    }

    /// The nonce of a stateless challenge to request `digest` (see
    /// [`crate::sip::request_digest`]): a retransmission within [`RETRANSMISSION_WINDOW`]
    /// gets the same nonce (and so the same 401/407, as a transaction would have resent),
    /// from ~24 bytes remembered per request instead of a transaction holding the response.
    pub fn stateless_nonce(&self, digest: u64, now_ms: u64) -> String {
        let window = RETRANSMISSION_WINDOW.as_millis() as u64;
        let issued = {
            let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            recent.forget_before(now_ms.saturating_sub(window));
            match recent.issued.get(&digest) {
                Some(&at) => at,
                None => {
                    if recent.issued.len() >= MAX_RECENT_CHALLENGES {
                        // A flood beyond the bound: forget the oldest (their retransmissions
                        // get a fresh nonce, which is still valid).
                        recent.forget_oldest();
                    }
                    recent.issued.insert(digest, now_ms);
                    recent.order.push_back((now_ms, digest));
                    now_ms
                }
            }
        };
        self.nonce_with(issued, digest as u32)
    }

    fn nonce_with(&self, now_ms: u64, salt: u32) -> String {
        let mac = self.secret.mac(&[
            NONCE_DOMAIN,
            &now_ms.to_be_bytes(),
            &salt.to_be_bytes(),
            &self.node.0,
            self.realm.as_bytes(),
        ]);
        format!(
            "{now_ms:016x}{salt:08x}{}{}",
            hex(&self.node.0),
            hex(&mac[..12])
        )
    }

    /// The challenge header values: one per configured algorithm, same nonce. MD5 alone by
    /// default, as Kamailio and OpenSIPS send: many deployed phones and SIP stacks give up on
    /// the whole response when one challenge names an algorithm they do not know, while RFC
    /// 8760 clients pick the strongest one they support from the list.
    pub fn challenges(&self, nonce: &str, stale: bool) -> Vec<String> {
        let stale = if stale { ", stale=true" } else { "" };
        self.algorithms
            .iter()
            .map(|alg| {
                let name = alg.name();
                format!(
                    "Digest realm=\"{}\", nonce=\"{nonce}\", algorithm={name}, qop=\"auth\"{stale}",
                    self.realm
                )
            })
            .collect()
    }

    fn check_nonce(&self, nonce: &str, now_ms: u64) -> Result<u64, AuthError> {
        let malformed = || AuthError::Invalid("malformed nonce".into());
        if nonce.len() != 64 || !nonce.is_ascii() {
            return Err(malformed());
        }
        let issued = u64::from_str_radix(&nonce[..16], 16).map_err(|_| malformed())?;
        let salt = u32::from_str_radix(&nonce[16..24], 16).map_err(|_| malformed())?;
        let node = unhex(&nonce[24..40]).ok_or_else(malformed)?;
        let tag = unhex(&nonce[40..]).ok_or_else(malformed)?;
        let parts: [&[u8]; 5] = [
            NONCE_DOMAIN,
            &issued.to_be_bytes(),
            &salt.to_be_bytes(),
            &node,
            self.realm.as_bytes(),
        ];
        if !self.secret.verify(&parts, &tag) {
            return Err(AuthError::Invalid("nonce not issued by this mesh".into()));
        }
        if node != self.node.0 {
            // Another node's nonce: only that node knows which counts were used.
            return Err(AuthError::Stale);
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
        request_uri: &str,
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
        let alg = Algorithm::parse(creds.get("algorithm"))
            .filter(|a| self.algorithms.contains(a))
            .ok_or_else(|| AuthError::Invalid("algorithm not offered".into()))?;
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
        let id = nonce_id(nonce);
        {
            let seen = self.nonce_counts.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(st) = seen.get(&id) {
                if st.failures >= MAX_NONCE_FAILURES {
                    return Err(AuthError::Invalid(
                        "nonce used up by failed attempts".into(),
                    ));
                }
                if nc <= st.max_nc {
                    return Err(AuthError::Replay);
                }
            }
        }
        let counted = (nonce, nc_text, cnonce);
        let outcome = self.check_response(creds, counted, method, request_uri, credentials, alg);
        // The count is consumed whatever the outcome; a failure also counts against the nonce.
        let mut seen = self.nonce_counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(st) = seen.get(&id) {
            if nc <= st.max_nc {
                return Err(AuthError::Replay);
            }
        }
        if seen.len() >= MAX_TRACKED_NONCES && !seen.contains_key(&id) {
            forget_expired(&mut seen, now_ms);
            if seen.len() >= MAX_TRACKED_NONCES {
                tracing::warn!("nonce-count table full of live nonces; forgetting them");
                seen.clear();
            }
        }
        let st = seen.entry(id).or_insert(NonceState {
            max_nc: 0,
            issued,
            failures: 0,
        });
        st.max_nc = nc;
        if outcome.is_err() {
            st.failures = st.failures.saturating_add(1);
        }
        outcome.map(|()| Verified {
            username: username.to_string(),
        })
    }

    /// Whether the response directive is right for the stored HA1 (and names the Request-URI),
    /// given the nonce, nonce count and cnonce `verify` already read.
    fn check_response(
        &self,
        creds: &DigestCredentials,
        (nonce, nc_text, cnonce): (&str, &str, &str),
        method: &str,
        request_uri: &str,
        credentials: Option<&Credentials>,
        alg: Algorithm,
    ) -> Result<(), AuthError> {
        let get = |n: &str| {
            creds
                .get(n)
                .ok_or_else(|| AuthError::Invalid(format!("missing {n}")))
        };
        let (uri, response) = (get("uri")?, get("response")?);
        if !same_uri(uri, request_uri) {
            return Err(AuthError::Invalid(
                "digest uri does not match the Request-URI".into(),
            ));
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
        Ok(())
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

/// What the digest `uri` directive must name: the Request-URI, or — as SIPp and some phones
/// send — this mesh itself (a URI of one of its domains without a user part).
fn digest_target<'a>(ctx: &Context, creds: &'a DigestCredentials, request_uri: &'a str) -> &'a str {
    if let Some(uri) = creds.get("uri").filter(|uri| *uri != request_uri) {
        if let Ok(u) = crate::sip::uri::SipUri::parse(uri) {
            if u.user.is_none() && ctx.is_mesh_domain(&u) {
                return uri;
            }
        }
    }
    request_uri
}

/// Whether the digest `uri` directive names the Request-URI: the same text, or the same
/// scheme, user, host and port (RFC 3261 §22.4 leaves room for a proxy's rewriting of
/// parameters; a different target is a replay toward something else).
fn same_uri(directive: &str, request_uri: &str) -> bool {
    if directive == request_uri {
        return true;
    }
    match (
        crate::sip::uri::SipUri::parse(directive),
        crate::sip::uri::SipUri::parse(request_uri),
    ) {
        (Ok(a), Ok(b)) => {
            a.secure == b.secure
                && a.user == b.user
                && a.host.eq_ignore_ascii_case(&b.host)
                && a.port.unwrap_or(5060) == b.port.unwrap_or(5060)
        }
        _ => false,
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
    source: std::net::IpAddr,
) -> Result<String, Fault> {
    let now = ctx.mesh.keyspace().wall_ms();
    let challenge_with = |nonce: &str, stale: bool| {
        inc(&ctx.metrics.registrar_challenges);
        let mut f = who.challenge();
        for ch in ctx.auth.challenges(nonce, stale) {
            f = f.with(who.challenge_header(), ch);
        }
        f
    };
    let challenge = |stale: bool| challenge_with(&ctx.auth.nonce(now), stale);
    // Our realm's Digest credentials, if any.
    let creds = req
        .values(&who.credentials_header())
        .into_iter()
        .filter_map(|v| DigestCredentials::parse(v).ok())
        .find(|d| {
            d.scheme.eq_ignore_ascii_case("Digest") && d.get("realm") == Some(ctx.auth.realm())
        });
    let Some(creds) = creds else {
        // A challenge to a request without credentials is sent statelessly (RFC 3261 §8.2.7):
        // no transaction lingers for it, and a retransmission gets the same challenge (same
        // nonce, same To-tag). (The transaction layer keeps INVITE's, whose ACK it absorbs.)
        let nonce = ctx
            .auth
            .stateless_nonce(crate::sip::request_digest(req), now);
        return Err(challenge_with(&nonce, false).stateless());
    };
    let username = creds.get("username").unwrap_or_default().to_string();
    let fail_key = format!("{username}|{}", c.call_id);
    let failed = || {
        inc(&ctx.metrics.registrar_auth_failures);
        if ctx
            .throttle
            .auth_failed(source, &username, std::time::Instant::now())
        {
            inc(&ctx.metrics.sip_sources_banned);
            ctx.metrics.events.push(
                crate::events::Kind::Ban,
                format!("banned {} (failed authentications as {username:?})", source),
            );
        }
    };
    if username != expected_user {
        failed();
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
    match ctx.auth.verify(
        &creds,
        c.method.as_str(),
        digest_target(ctx, &creds, &c.uri),
        stored.as_ref(),
        now,
    ) {
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
            failed();
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
    ) -> DigestCredentials<'static> {
        let ha1 = ha1(alg, "alice", "r", password);
        let ha2 = alg.hash("REGISTER:sip:r");
        let resp = alg.hash(&format!("{ha1}:{nonce}:{nc}:cn:auth:{ha2}"));
        let alg_name = alg.name();
        // Leaked: a test's few credentials borrow from their text for the test's length.
        let text = format!(
            r#"Digest username="alice", realm="{}", nonce="{nonce}", uri="sip:r", response="{resp}", algorithm={alg_name}, qop=auth, nc={nc}, cnonce="cn""#,
            a.realm()
        );
        DigestCredentials::parse(Box::leak(text.into_boxed_str())).unwrap()
    }

    fn stored() -> Credentials {
        Credentials {
            ha1_md5: ha1(Algorithm::Md5, "alice", "r", "pw"),
            ha1_sha256: ha1(Algorithm::Sha256, "alice", "r", "pw"),
        }
    }

    #[test]
    fn good_credentials_both_algorithms() {
        let a = Authenticator::new("r", Arc::new(MeshSecret::new(b"secret".to_vec())))
            .algorithms(&[Algorithm::Md5, Algorithm::Sha256]);
        for alg in [Algorithm::Md5, Algorithm::Sha256] {
            let nonce = a.nonce(1_000_000);
            let c = creds_for(&a, alg, &nonce, "00000001", "pw");
            assert_eq!(
                a.verify(&c, "REGISTER", "sip:r", Some(&stored()), 1_000_500)
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
            a.verify(&bad, "REGISTER", "sip:r", Some(&stored()), 1_000_100),
            Err(AuthError::Invalid(_))
        ));
        // the failed attempt consumed its count
        let again = creds_for(&a, Algorithm::Md5, &nonce, "00000001", "pw");
        assert_eq!(
            a.verify(&again, "REGISTER", "sip:r", Some(&stored()), 1_000_100),
            Err(AuthError::Replay)
        );
        let good = creds_for(&a, Algorithm::Md5, &nonce, "00000002", "pw");
        assert!(a
            .verify(&good, "REGISTER", "sip:r", Some(&stored()), 1_000_100)
            .is_ok());
        assert_eq!(
            a.verify(&good, "REGISTER", "sip:r", Some(&stored()), 1_000_200),
            Err(AuthError::Replay)
        );
        let next = creds_for(&a, Algorithm::Md5, &nonce, "00000003", "pw");
        assert!(a
            .verify(&next, "REGISTER", "sip:r", Some(&stored()), 1_000_300)
            .is_ok());
        let late = creds_for(&a, Algorithm::Md5, &nonce, "00000004", "pw");
        assert_eq!(
            a.verify(
                &late,
                "REGISTER",
                "sip:r",
                Some(&stored()),
                1_000_000 + 301_000
            ),
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
            a.verify(&forged, "REGISTER", "sip:r", Some(&stored()), 1_000_100),
            Err(AuthError::Invalid(_))
        ));
        // a secret change keeps the previous secret's nonces valid
        a.secret.set(b"rotated".to_vec());
        let still = creds_for(&a, Algorithm::Md5, &nonce, "00000009", "pw");
        assert!(a
            .verify(&still, "REGISTER", "sip:r", Some(&stored()), 1_000_400)
            .is_ok());
    }

    #[test]
    fn uri_must_name_the_request_uri() {
        let a = Authenticator::new("r", Arc::new(MeshSecret::new(b"secret".to_vec())));
        let nonce = a.nonce(1_000_000);
        let c = creds_for(&a, Algorithm::Md5, &nonce, "00000001", "pw");
        assert!(matches!(
            a.verify(
                &c,
                "REGISTER",
                "sip:other.example",
                Some(&stored()),
                1_000_100
            ),
            Err(AuthError::Invalid(_))
        ));
        let c = creds_for(&a, Algorithm::Md5, &nonce, "00000002", "pw");
        assert!(a
            .verify(
                &c,
                "REGISTER",
                "sip:r;transport=udp",
                Some(&stored()),
                1_000_100
            )
            .is_ok());
    }

    #[test]
    fn a_nonce_is_bound_to_its_node_and_dies_after_failures() {
        let secret = Arc::new(MeshSecret::new(b"secret".to_vec()));
        let a = Authenticator::new("r", secret.clone()).for_node(NodeId([1; 8]));
        let b = Authenticator::new("r", secret).for_node(NodeId([2; 8]));
        let nonce = a.nonce(1_000_000);
        let c = creds_for(&a, Algorithm::Md5, &nonce, "00000001", "pw");
        // the other node re-challenges (stale), it does not accept or count a failure
        assert_eq!(
            b.verify(&c, "REGISTER", "sip:r", Some(&stored()), 1_000_100),
            Err(AuthError::Stale)
        );
        for nc in 1..=MAX_NONCE_FAILURES as u32 {
            let bad = creds_for(&a, Algorithm::Md5, &nonce, &format!("{nc:08x}"), "guess");
            assert!(matches!(
                a.verify(&bad, "REGISTER", "sip:r", Some(&stored()), 1_000_100),
                Err(AuthError::Invalid(_))
            ));
        }
        let right = creds_for(&a, Algorithm::Md5, &nonce, "00000010", "pw");
        assert!(matches!(
            a.verify(&right, "REGISTER", "sip:r", Some(&stored()), 1_000_100),
            Err(AuthError::Invalid(_))
        ));
    }

    #[test]
    fn a_stateless_challenge_repeats_its_nonce_for_retransmissions_only() {
        let a = Authenticator::new("r", Arc::new(MeshSecret::new(b"s".to_vec())));
        let t = 1_000_000;
        let n = a.stateless_nonce(7, t);
        assert_eq!(a.stateless_nonce(7, t + 4_000), n, "a retransmission");
        assert_ne!(a.stateless_nonce(8, t + 4_000), n, "another request");
        // The nonce is a valid one, issued at the first challenge.
        let c = creds_for(&a, Algorithm::Md5, &n, "00000001", "pw");
        assert!(a
            .verify(&c, "REGISTER", "sip:r", Some(&stored()), t + 5_000)
            .is_ok());
        // Past the window the request is forgotten: a fresh nonce.
        let later = t + RETRANSMISSION_WINDOW.as_millis() as u64 + 1_000;
        assert_ne!(a.stateless_nonce(7, later), n);
        // Bounded: a flood forgets the oldest.
        for d in 0..(MAX_RECENT_CHALLENGES as u64 + 10) {
            a.stateless_nonce(1_000 + d, later);
        }
        assert!(a.recent.lock().unwrap().issued.len() <= MAX_RECENT_CHALLENGES);
    }

    #[test]
    fn a_sweep_forgets_only_what_no_request_can_use() {
        let a = Authenticator::new("r", Arc::new(MeshSecret::new(b"s".to_vec())));
        let t = 1_000_000;
        let nonce = a.nonce(t);
        let c = creds_for(&a, Algorithm::Md5, &nonce, "00000001", "pw");
        assert!(a
            .verify(&c, "REGISTER", "sip:r", Some(&stored()), t + 100)
            .is_ok());
        for d in 0..5_000 {
            a.stateless_nonce(d, t);
        }
        // Within the nonce's life and the retransmission window: all kept, a replay refused.
        a.release_slack(t + 1_000);
        assert_eq!(a.recent.lock().unwrap().issued.len(), 5_000);
        assert_eq!(
            a.verify(&c, "REGISTER", "sip:r", Some(&stored()), t + 2_000),
            Err(AuthError::Replay)
        );
        // Past the window the challenges go (and their capacity); the nonce's count stays.
        a.release_slack(t + RETRANSMISSION_WINDOW.as_millis() as u64 + 1);
        let recent = a.recent.lock().unwrap();
        assert!(recent.issued.is_empty() && recent.order.is_empty());
        assert!(recent.issued.capacity() < 5_000 && recent.order.capacity() < 5_000);
        drop(recent);
        assert_eq!(a.nonce_counts.lock().unwrap().len(), 1);
        // Past the nonce's life its count goes too: the nonce itself is refused as stale.
        let dead = t + NONCE_TTL.as_millis() as u64 + 1;
        a.release_slack(dead);
        assert!(a.nonce_counts.lock().unwrap().is_empty());
        assert_eq!(
            a.verify(&c, "REGISTER", "sip:r", Some(&stored()), dead),
            Err(AuthError::Stale)
        );
    }

    #[test]
    fn md5_alone_by_default_and_the_configured_list_otherwise() {
        let b = Authenticator::new("r", Arc::new(MeshSecret::new(vec![1])));
        let ch = b.challenges(&b.nonce(5), false);
        assert_eq!(ch.len(), 1, "{ch:?}");
        assert!(ch[0].contains("algorithm=MD5"));
        let a = Authenticator::new("r", Arc::new(MeshSecret::new(vec![1])))
            .algorithms(&[Algorithm::Sha256, Algorithm::Md5]);
        let ch = a.challenges(&a.nonce(5), false);
        assert_eq!(ch.len(), 2, "one challenge per algorithm");
        assert!(ch[0].contains("algorithm=SHA-256"));
        assert!(ch[1].contains("algorithm=MD5"));
    }

    #[test]
    fn an_algorithm_not_offered_is_refused() {
        // SHA-256 only: an MD5 answer (a downgrade) fails even with the right password.
        let a = Authenticator::new("r", Arc::new(MeshSecret::new(vec![1])))
            .algorithms(&[Algorithm::Sha256]);
        let nonce = a.nonce(1_000_000);
        let md5 = creds_for(&a, Algorithm::Md5, &nonce, "00000001", "pw");
        assert!(matches!(
            a.verify(&md5, "REGISTER", "sip:r", Some(&stored()), 1_000_100),
            Err(AuthError::Invalid(_))
        ));
        let sha = creds_for(&a, Algorithm::Sha256, &nonce, "00000002", "pw");
        assert!(a
            .verify(&sha, "REGISTER", "sip:r", Some(&stored()), 1_000_100)
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
        assert_eq!(
            a.verify(&c, "REGISTER", "sip:r", None, 0),
            Err(AuthError::Missing)
        );
    }
}
