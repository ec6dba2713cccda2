//! The registrar (RFC 3261 §10.3, RFC 3327 Path, RFC 5626 Outbound): digest-authenticated
//! REGISTERs maintain bindings in the replicated `registrations` table, at QUORUM.
//!
//! Steps for one REGISTER:
//! 1. The To URI must be a SIP/SIPS URI with a user part: that user is the AOR.
//! 2. Require options must be supported (`path`, `outbound`), else 420.
//! 3. Digest authentication against the user's stored HA1 (401, or 403 after repeated failures).
//! 4. Read the AOR's bindings at QUORUM; apply each Contact (Call-ID/CSeq ordering, expiry
//!    bounds: 423 below the minimum, clamped to the maximum), or `*` with Expires 0.
//! 5. Write the changed bindings in one mutation at QUORUM (TTL = expiry), then index the AOR
//!    under this node in `clients_by_proxy`.
//! 6. Answer 200 listing every current binding with its expiry.

use std::sync::Arc;

use sipmesh_net::{Consistency, Mesh};
use sipmesh_storage::Mutation;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use tracing::{debug, warn};

use crate::auth::{AuthError, Authenticator};
use crate::location::Binding;
use crate::metrics::{inc, Metrics};
use crate::sip::build::ResponseBuilder;
use crate::sip::header::{param, parse_u32, DigestCredentials, NameAddr};
use crate::sip::message::{HeaderName, Message};
use crate::sip::uri::SipUri;
use crate::sip::validate::Checked;
use crate::tables::{CLIENTS_BY_PROXY, REGISTRATIONS};
use crate::transport::Flow;
use crate::users::Users;

/// Registration intervals, in seconds.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
pub struct RegistrarConfig {
    /// Below this (and above 0) a REGISTER gets 423 Interval Too Brief.
    pub min_expires: u32,
    /// When the client does not say.
    pub default_expires: u32,
    /// Longer requests are shortened to this.
    pub max_expires: u32,
}

impl Default for RegistrarConfig {
    fn default() -> Self {
        RegistrarConfig {
            min_expires: 60,
            default_expires: 3600,
            max_expires: 7200,
        }
    }
}

/// Extensions the registrar supports (for Require).
pub const SUPPORTED: &[&str] = &["path", "outbound"];

/// The registrar of a node.
pub struct Registrar {
    mesh: Mesh,
    users: Arc<Users>,
    auth: Arc<Authenticator>,
    config: RegistrarConfig,
    metrics: Arc<Metrics>,
    /// Bindings this node owns, by AOR: (how many, latest expiry ms). Its sum is the load.
    owned: Mutex<HashMap<String, (u32, u64)>>,
    /// Outbound flows of owned bindings: flow → (AOR, binding key), to drop them when it dies.
    flows: Mutex<HashMap<Flow, Vec<FlowBinding>>>,
    /// Bindings this node takes; at or above it, new clients get 302.
    capacity: u64,
    /// Set while leaving gracefully: REGISTER gets 503 + Retry-After.
    draining: AtomicBool,
}

/// An Outbound binding on a flow: (AOR, binding row key).
type FlowBinding = (String, Vec<u8>);

/// Keepalive interval suggested to Outbound clients (RFC 5626 Flow-Timer), in seconds.
pub const FLOW_TIMER_SECS: u32 = 120;

/// A response: status code and bytes.
pub type Answer = (u16, Vec<u8>);

/// A random token for tags.
pub fn random_tag() -> String {
    format!("{:016x}", rand::random::<u64>())
}

impl Registrar {
    /// A registrar over the mesh.
    pub fn new(
        mesh: Mesh,
        users: Arc<Users>,
        auth: Arc<Authenticator>,
        config: RegistrarConfig,
        metrics: Arc<Metrics>,
        capacity: u64,
    ) -> Self {
        Registrar {
            mesh,
            users,
            auth,
            config,
            metrics,
            owned: Mutex::new(HashMap::new()),
            flows: Mutex::new(HashMap::new()),
            capacity,
            draining: AtomicBool::new(false),
        }
    }

    /// Bindings this node owns (unexpired).
    pub fn load(&self) -> u64 {
        let now = self.mesh.keyspace().wall_ms();
        let mut owned = self.owned.lock().unwrap_or_else(|p| p.into_inner());
        owned.retain(|_, (_, exp)| *exp > now);
        owned.values().map(|(n, _)| *n as u64).sum()
    }

    /// Stop accepting registrations (graceful leave).
    pub fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// A flow died: drop the Outbound bindings registered on it (their phones must re-register
    /// through another flow). Returns how many were removed.
    pub async fn flow_closed(&self, flow: &Flow) -> usize {
        let gone = self
            .flows
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(flow)
            .unwrap_or_default();
        let mut n = 0;
        for (aor, key) in gone {
            let m = Mutation::new(REGISTRATIONS, aor.as_bytes().to_vec())
                .delete_row(&key, self.mesh.keyspace().now());
            match self.mesh.write(m, Consistency::Quorum).await {
                Ok(()) => n += 1,
                Err(e) => debug!(error = %e, aor, "could not drop a dead flow's binding"),
            }
        }
        n
    }

    fn respond<'a>(
        req: &'a Message,
        top_via: &str,
        code: u16,
        reason: &str,
    ) -> ResponseBuilder<'a> {
        ResponseBuilder::new(req, code, reason)
            .to_tag(&random_tag())
            .top_via(top_via.to_string())
    }

    /// Authenticate a request (REGISTER here; INVITE in the proxy, with `proxy` for 407).
    /// `Ok(user)` or the challenge/refusal to send.
    pub async fn authenticate(
        &self,
        req: &Message,
        c: &Checked,
        top_via: &str,
        expected_user: &str,
        proxy: bool,
    ) -> Result<String, Answer> {
        let (header, challenge_name, challenge_code, challenge_reason) = if proxy {
            (
                HeaderName::ProxyAuthorization,
                "Proxy-Authenticate",
                407,
                "Proxy Authentication Required",
            )
        } else {
            (
                HeaderName::Authorization,
                "WWW-Authenticate",
                401,
                "Unauthorized",
            )
        };
        let now = self.mesh.keyspace().wall_ms();
        let challenge = |stale: bool| {
            inc(&self.metrics.registrar_challenges);
            let mut r = Self::respond(req, top_via, challenge_code, challenge_reason);
            for ch in self.auth.challenges(now, stale) {
                r = r.header(challenge_name, ch);
            }
            (challenge_code, r.build())
        };
        // Our realm's Digest credentials, if any.
        let creds = req
            .values(&header)
            .into_iter()
            .filter_map(|v| DigestCredentials::parse(v).ok())
            .find(|d| {
                d.scheme.eq_ignore_ascii_case("Digest") && d.get("realm") == Some(self.auth.realm())
            });
        let Some(creds) = creds else {
            return Err(challenge(false));
        };
        let username = creds.get("username").unwrap_or_default().to_string();
        let fail_key = format!("{username}|{}", c.call_id);
        if username != expected_user {
            inc(&self.metrics.registrar_auth_failures);
            return Err((
                403,
                Self::respond(req, top_via, 403, "Username does not match the AOR").build(),
            ));
        }
        let stored = match self.users.get_cached(&username).await {
            Ok(Some(u)) if !u.disabled => Some(u.credentials),
            Ok(_) => None,
            Err(e) => {
                warn!(error = %e, "user lookup failed");
                return Err((
                    500,
                    Self::respond(req, top_via, 500, "User lookup failed")
                        .header("Retry-After", "5")
                        .build(),
                ));
            }
        };
        match self
            .auth
            .verify(&creds, c.method.as_str(), stored.as_ref(), now)
        {
            Ok(v) => {
                self.auth.succeed(&fail_key);
                Ok(v.username)
            }
            Err(AuthError::Missing) => Err(challenge(false)),
            Err(AuthError::Stale) => Err(challenge(true)),
            Err(AuthError::Replay) => {
                inc(&self.metrics.registrar_replays);
                Err(challenge(false))
            }
            Err(AuthError::Invalid(why)) => {
                inc(&self.metrics.registrar_auth_failures);
                debug!(user = %username, why, "authentication failed");
                // A phone with a wrong password gets one more chance to register; a call with
                // wrong credentials is refused at once.
                if proxy || self.auth.fail(&fail_key) {
                    Err((403, Self::respond(req, top_via, 403, "Forbidden").build()))
                } else {
                    Err(challenge(false))
                }
            }
        }
    }

    /// Handle a REGISTER.
    pub async fn handle(&self, req: &Message, c: &Checked, flow: &Flow, top_via: &str) -> Answer {
        inc(&self.metrics.registrar_requests);
        let bad =
            |code: u16, reason: &str| (code, Self::respond(req, top_via, code, reason).build());
        // 1. The AOR.
        let to = match SipUri::parse(&c.to.uri) {
            Ok(u) => u,
            Err(_) => return bad(400, "To must be a SIP or SIPS URI"),
        };
        let Some(aor) = to.canonical_user() else {
            return bad(400, "To has no user part");
        };
        // 2. Require.
        let unsupported: Vec<&str> = req
            .values(&HeaderName::Require)
            .into_iter()
            .filter(|o| !SUPPORTED.iter().any(|s| s.eq_ignore_ascii_case(o)))
            .collect();
        if !unsupported.is_empty() {
            return (
                420,
                Self::respond(req, top_via, 420, "Bad Extension")
                    .header("Unsupported", unsupported.join(", "))
                    .build(),
            );
        }
        // Parse contacts before touching the keyspace.
        let contacts = req.values(&HeaderName::Contact);
        let header_expires = req
            .header(&HeaderName::Expires)
            .and_then(|e| parse_u32(e, "Expires"));
        let star = contacts.contains(&"*");
        if star && (contacts.len() != 1 || header_expires != Some(0)) {
            return bad(400, "Contact * needs Expires 0 and no other contact");
        }
        let mut parsed = Vec::new();
        if !star {
            for v in &contacts {
                let na = match NameAddr::parse(v, "Contact") {
                    Ok(na) => na,
                    Err(f) => return bad(f.code, &f.reason),
                };
                if SipUri::parse(&na.uri).is_err() && crate::sip::uri::scheme_of(&na.uri).is_none()
                {
                    return bad(400, "Malformed Contact URI");
                }
                let expires = match param(&na.params, "expires") {
                    Some(Some(e)) => match parse_u32(e, "expires") {
                        Some(e) => e,
                        None => return bad(400, "Contact expires out of range"),
                    },
                    _ => header_expires.unwrap_or(self.config.default_expires),
                };
                if expires != 0 && expires < self.config.min_expires {
                    return (
                        423,
                        Self::respond(req, top_via, 423, "Interval Too Brief")
                            .header("Min-Expires", self.config.min_expires.to_string())
                            .build(),
                    );
                }
                parsed.push((na, expires.min(self.config.max_expires)));
            }
        }
        // 3. Authenticate.
        if let Err(answer) = self.authenticate(req, c, top_via, &aor, false).await {
            return answer;
        }
        if self.draining.load(Ordering::SeqCst) {
            return (
                503,
                Self::respond(req, top_via, 503, "Service Unavailable")
                    .header("Retry-After", "5")
                    .build(),
            );
        }
        // 4. Current bindings.
        let existing = match crate::location::lookup(&self.mesh, &aor, Consistency::Quorum).await {
            Ok(b) => b,
            Err(e) => {
                inc(&self.metrics.registrar_errors);
                warn!(error = %e, "bindings lookup failed");
                return (
                    500,
                    Self::respond(req, top_via, 500, "Location service unavailable")
                        .header("Retry-After", "5")
                        .build(),
                );
            }
        };
        let ks = self.mesh.keyspace();
        let now = ks.wall_ms();
        let ts = ks.now();
        let owner = self.mesh.peer_id().to_string();
        // Assignment: at capacity, a new client is sent to less loaded nodes; a client that
        // already has a binding here is never redirected.
        if !star && self.load() >= self.capacity && !existing.iter().any(|b| b.owner == owner) {
            let others = crate::assignment::least_loaded(&self.mesh, 3, false);
            if !others.is_empty() {
                let mut r = Self::respond(req, top_via, 302, "Moved Temporarily");
                for c in &others {
                    let uri = &c.sip[if flow.is_reliable() { 1 } else { 0 }];
                    r = r.header("Contact", format!("<{uri}>;q={:.1}", c.q));
                }
                return (302, r.build());
            }
        }
        let user_agent = req.header(&HeaderName::UserAgent).map(str::to_string);
        let path: Vec<String> = req
            .values(&HeaderName::Path)
            .iter()
            .map(|s| s.to_string())
            .collect();
        let outbound_supported = req
            .values(&HeaderName::Supported)
            .iter()
            .any(|s| s.eq_ignore_ascii_case("outbound"));
        let mut m = Mutation::new(REGISTRATIONS, aor.as_bytes().to_vec());
        let mut current: Vec<Binding> = existing.clone();
        let mut outbound_used = false;
        if star {
            for b in &existing {
                if b.call_id == c.call_id && b.cseq >= c.cseq.seq {
                    continue;
                }
                m = m.delete_row(&b.key(), ts);
            }
            current.retain(|b| b.call_id == c.call_id && b.cseq >= c.cseq.seq);
        }
        for (na, expires) in parsed {
            let instance = param(&na.params, "+sip.instance")
                .flatten()
                .map(|s| s.trim_matches('"').to_string());
            let reg_id = param(&na.params, "reg-id")
                .flatten()
                .and_then(|r| parse_u32(r, "reg-id"));
            let reg_id = if outbound_supported { reg_id } else { None };
            outbound_used |= reg_id.is_some();
            let b = Binding {
                contact: na.uri.clone(),
                params: na
                    .params
                    .iter()
                    .filter(|(n, _)| !n.eq_ignore_ascii_case("expires"))
                    .cloned()
                    .collect(),
                expires_at_ms: now + expires as u64 * 1000,
                q: param(&na.params, "q").flatten().map(str::to_string),
                call_id: c.call_id.clone(),
                cseq: c.cseq.seq,
                user_agent: user_agent.clone(),
                owner: owner.clone(),
                flow: flow.clone(),
                instance,
                reg_id,
                path: path.clone(),
                updated_ms: now,
            };
            let key = b.key();
            if let Some(old) = existing.iter().find(|o| o.key() == key) {
                if old.call_id == c.call_id && old.cseq >= c.cseq.seq {
                    debug!(aor, "out-of-order REGISTER for a binding ignored");
                    continue;
                }
            }
            current.retain(|o| o.key() != key);
            if expires == 0 {
                m = m.delete_row(&key, ts);
            } else {
                m = m.upsert(&key, [("binding", b.encode())], ts, Some(b.expires_at_ms));
                current.push(b);
            }
        }
        // 5. Write.
        if !m.is_empty() {
            if let Err(e) = self.mesh.write(m, Consistency::Quorum).await {
                inc(&self.metrics.registrar_errors);
                warn!(error = %e, aor, "binding write failed");
                return (
                    500,
                    Self::respond(req, top_via, 500, "Location service unavailable")
                        .header("Retry-After", "5")
                        .build(),
                );
            }
            let owned: Vec<&Binding> = current.iter().filter(|b| b.owner == owner).collect();
            {
                let mut map = self.owned.lock().unwrap_or_else(|p| p.into_inner());
                match owned.iter().map(|b| b.expires_at_ms).max() {
                    Some(exp) => map.insert(aor.clone(), (owned.len() as u32, exp)),
                    None => map.remove(&aor),
                };
                let mut flows = self.flows.lock().unwrap_or_else(|p| p.into_inner());
                for b in owned.iter().filter(|b| b.reg_id.is_some()) {
                    let list = flows.entry(b.flow.clone()).or_default();
                    if !list.iter().any(|(a, k)| *a == aor && *k == b.key()) {
                        list.push((aor.clone(), b.key()));
                    }
                }
            }
            let latest = owned.iter().map(|b| b.expires_at_ms).max();
            let index = match latest {
                Some(exp) => Mutation::new(CLIENTS_BY_PROXY, owner.clone().into_bytes()).upsert(
                    aor.as_bytes(),
                    [
                        ("expires", exp.to_be_bytes().to_vec()),
                        ("bindings", (owned.len() as u32).to_be_bytes().to_vec()),
                    ],
                    ts,
                    Some(exp),
                ),
                None => Mutation::new(CLIENTS_BY_PROXY, owner.clone().into_bytes())
                    .delete_row(aor.as_bytes(), ts),
            };
            let mesh = self.mesh.clone();
            tokio::spawn(async move {
                if let Err(e) = mesh.write(index, Consistency::Quorum).await {
                    debug!(error = %e, "clients_by_proxy index write failed (hinted)");
                }
            });
        }
        // 6. Answer.
        inc(&self.metrics.registrar_ok);
        let mut r = Self::respond(req, top_via, 200, "OK");
        for b in &current {
            let mut v = format!("<{}>", b.contact);
            for (n, val) in &b.params {
                match val {
                    Some(val) => v.push_str(&format!(";{n}={val}")),
                    None => v.push_str(&format!(";{n}")),
                }
            }
            v.push_str(&format!(";expires={}", b.expires_in(now)));
            r = r.header("Contact", v);
        }
        for p in &path {
            r = r.header("Path", p.clone());
        }
        if outbound_used {
            r = r
                .header("Require", "outbound")
                .header("Flow-Timer", FLOW_TIMER_SECS.to_string());
        }
        (200, r.build())
    }
}
