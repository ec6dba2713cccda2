//! The registrar (RFC 3261 §10.3, RFC 3327 Path, RFC 5626 Outbound): digest-authenticated
//! REGISTERs maintain bindings in the replicated `registrations` table, at QUORUM.
//!
//! Steps for one REGISTER:
//! 1. The To URI must be a SIP/SIPS URI with a user part: that user is the AOR.
//! 2. Require options must be supported (`path`, `outbound`), else 420.
//! 3. Digest authentication against the user's stored HA1 (401, or 403 after repeated failures).
//! 4. Read the AOR's bindings (from this node's replica when it is one, else at QUORUM); apply
//!    each Contact (Call-ID/CSeq ordering, expiry bounds: 423 below the minimum, clamped to the
//!    maximum), or `*` with Expires 0.
//! 5. Write the changed bindings in one mutation at QUORUM, each row with a lease of twice its
//!    interval; a refresh the lease already covers writes nothing (see [`owned`]).
//! 6. Answer 200 listing every current binding with its expiry.

mod owned;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use sipmesh_net::Consistency;
use sipmesh_storage::Mutation;
use tracing::{debug, warn};

use crate::call::auth::{authenticate, Challenger};
use crate::call::location::Binding;
use crate::call::signed;
use crate::call::Context;
use crate::metrics::inc;
use crate::sip::build::ResponseBuilder;
use crate::sip::flow::Flow;
use crate::sip::header::{param, parse_u32, NameAddr};
use crate::sip::message::{HeaderName, Message};
use crate::sip::uri::SipUri;
use crate::sip::validate::Checked;
use crate::sip::{random_tag, Fault};
use crate::tables::REGISTRATIONS;

use owned::{Owned, Refresh, LEASE_FACTOR};

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

/// The refusal of a REGISTER that would leave an AOR with more than `max` bindings (a policy
/// refusal, not an overload: retrying does not help, so not 503).
fn too_many_contacts(max: usize) -> Fault {
    Fault::new(403, format!("Too many registered contacts (at most {max})"))
}

/// Extensions the registrar supports (for Require).
pub const SUPPORTED: &[&str] = &["path", "outbound", "gruu"];

/// The registrar of a node.
pub struct Registrar {
    ctx: Arc<Context>,
    config: RegistrarConfig,
    /// The bindings this node owns (it is their authority).
    owned: Owned,
    /// Bindings this node takes; at or above it, new clients get 302.
    capacity: u64,
    /// Set while leaving gracefully: REGISTER gets 503 + Retry-After.
    draining: AtomicBool,
}

/// Keepalive interval suggested to Outbound clients (RFC 5626 Flow-Timer), in seconds.
pub const FLOW_TIMER_SECS: u32 = 120;

/// What a REGISTER asks for: remove every binding (`Contact: *`), or apply these contacts.
enum Request {
    /// `Contact: *` with `Expires: 0`.
    RemoveAll,
    /// Each contact with the expiry it asked for (clamped to the maximum; 0 removes).
    Contacts(Vec<(NameAddr, u32)>),
}

/// How long a binding write waits, past QUORUM, for the other live replicas.
const SETTLE: std::time::Duration = std::time::Duration::from_millis(200);

/// What a REGISTER changes.
struct Change {
    /// The rows to write and delete (empty for a refresh the leases cover).
    mutation: Mutation,
    /// The AOR's bindings after it.
    current: Vec<Binding>,
    /// This node's bindings written, as stored, with the phone's own expiry.
    written: Vec<(Binding, u64)>,
    /// Row keys deleted.
    deleted: Vec<Vec<u8>>,
    /// Whether a binding uses Outbound.
    outbound_used: bool,
    /// The Path stored with the bindings and echoed in the 200 (RFC 3327).
    path: Vec<String>,
}

/// A 500 telling the client to retry.
fn unavailable() -> Fault {
    Fault::new(500, "Location service unavailable").with("Retry-After", "5")
}

impl Registrar {
    /// A registrar over the node's parts.
    pub fn new(ctx: Arc<Context>, config: RegistrarConfig, capacity: u64) -> Self {
        Registrar {
            ctx,
            config,
            owned: Owned::default(),
            capacity,
            draining: AtomicBool::new(false),
        }
    }

    /// Bindings this node owns.
    pub fn load(&self) -> u64 {
        self.owned.count()
    }

    /// Forget the bindings whose phones' registrations ran out, and delete the rows whose
    /// lease outlives them. Returns how many were forgotten.
    pub async fn sweep(&self) -> usize {
        let now = self.ctx.mesh.keyspace().wall_ms();
        let gone = self.owned.expired(now);
        for (aor, key, outlived) in &gone {
            if *outlived {
                self.delete(aor, key).await;
            }
        }
        gone.len()
    }

    /// Delete one of this node's binding rows at QUORUM (hinted where a replica misses it) —
    /// unless the row now belongs to another node (the phone moved): that one is left alone.
    async fn delete(&self, aor: &str, key: &[u8]) -> bool {
        let mesh = &self.ctx.mesh;
        match crate::call::location::lookup(mesh, aor, Consistency::Quorum).await {
            Ok(rows) => {
                if !rows
                    .iter()
                    .any(|b| b.key() == key && b.owner == mesh.peer_id())
                {
                    return false;
                }
            }
            Err(e) => {
                debug!(error = %e, aor, "cannot read a binding before deleting it");
                return false;
            }
        }
        let m = Mutation::new(REGISTRATIONS, aor.as_bytes().to_vec())
            .delete_row(key, self.ctx.mesh.keyspace().now());
        match self.ctx.mesh.write(m, Consistency::Quorum).await {
            Ok(()) => true,
            Err(e) => {
                debug!(error = %e, aor, "could not delete a binding");
                false
            }
        }
    }

    /// Stop accepting registrations (stop or leave).
    pub fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// A flow died: drop the Outbound bindings registered on it (their phones must re-register
    /// through another flow). Returns how many were removed.
    pub async fn flow_closed(&self, flow: &Flow) -> usize {
        let mut n = 0;
        for (aor, key) in self.owned.take_flow(flow) {
            n += usize::from(self.delete(&aor, &key).await);
        }
        n
    }

    /// Handle a REGISTER: the 200 OK's bytes, or the fault to answer.
    pub async fn handle(
        &self,
        req: &Message,
        c: &Checked,
        flow: &Flow,
        top_via: &str,
    ) -> Result<Vec<u8>, Fault> {
        inc(&self.ctx.metrics.registrar_requests);
        let aor = aor_of(c)?;
        check_require(req)?;
        let request = self.parse_contacts(req)?;
        check_first_hop(req, &request)?;
        authenticate(
            &self.ctx,
            req,
            c,
            &aor,
            Challenger::Registrar,
            flow.peer().ip(),
        )
        .await?;
        if self.draining.load(Ordering::SeqCst) {
            return Err(Fault::new(503, "Service Unavailable").with("Retry-After", "5"));
        }
        let existing = crate::call::location::lookup_near(&self.ctx.mesh, &aor)
            .await
            .map_err(|e| {
                inc(&self.ctx.metrics.registrar_errors);
                warn!(error = %e, "bindings lookup failed");
                unavailable()
            })?;
        let owner = self.ctx.mesh.peer_id();
        // Assignment: at capacity, a new client is sent to less loaded nodes; a client that
        // already has a binding here is never redirected.
        if matches!(request, Request::Contacts(_))
            && self.load() >= self.capacity
            && !existing.iter().any(|b| b.owner == owner)
        {
            if let Some(redirect) = self.redirect(flow) {
                return Err(redirect);
            }
        }
        let mut change = self.apply(req, c, flow, &aor, request, &existing)?;
        let max = self.ctx.policy.config().max_contacts;
        if change.current.len() > max && change.current.len() > existing.len() {
            inc(&self.ctx.metrics.registrar_too_many_contacts);
            return Err(too_many_contacts(max));
        }
        if !change.mutation.is_empty() {
            let mesh = &self.ctx.mesh;
            let mutation = std::mem::replace(
                &mut change.mutation,
                Mutation::new(REGISTRATIONS, Vec::new()),
            );
            // Acknowledged at QUORUM; settled on every live replica when they are quick, so
            // a call routed from any of them right after finds the binding.
            if let Err(e) = mesh
                .write_settled(mutation, Consistency::Quorum, SETTLE)
                .await
            {
                inc(&self.ctx.metrics.registrar_errors);
                warn!(error = %e, aor, "binding write failed");
                return Err(unavailable());
            }
            for (b, expires_at_ms) in std::mem::take(&mut change.written) {
                self.owned.written(&aor, b, expires_at_ms);
            }
            for key in &change.deleted {
                self.owned.removed(&aor, key);
            }
        } else {
            inc(&self.ctx.metrics.registrar_refreshes_unwritten);
        }
        inc(&self.ctx.metrics.registrar_ok);
        Ok(self.answer(req, top_via, &aor, &c.to.uri, &change))
    }

    /// The Contacts of the request, checked (before the keyspace is touched).
    fn parse_contacts(&self, req: &Message) -> Result<Request, Fault> {
        let contacts = req.values(&HeaderName::Contact);
        let header_expires = req
            .header(&HeaderName::Expires)
            .and_then(|e| parse_u32(e, "Expires"));
        if contacts.contains(&"*") {
            if contacts.len() != 1 || header_expires != Some(0) {
                return Err(Fault::bad("Contact * needs Expires 0 and no other contact"));
            }
            return Ok(Request::RemoveAll);
        }
        if contacts.len() > self.ctx.policy.config().max_contacts {
            inc(&self.ctx.metrics.registrar_too_many_contacts);
            return Err(too_many_contacts(self.ctx.policy.config().max_contacts));
        }
        let mut parsed = Vec::new();
        for v in &contacts {
            let na = NameAddr::parse(v, "Contact")?;
            if SipUri::parse(&na.uri).is_err() && crate::sip::uri::scheme_of(&na.uri).is_none() {
                return Err(Fault::bad("Malformed Contact URI"));
            }
            let expires = match param(&na.params, "expires") {
                Some(Some(e)) => parse_u32(e, "expires")
                    .ok_or_else(|| Fault::bad("Contact expires out of range"))?,
                _ => header_expires.unwrap_or(self.config.default_expires),
            };
            if expires != 0 && expires < self.config.min_expires {
                return Err(Fault::new(423, "Interval Too Brief")
                    .with("Min-Expires", self.config.min_expires.to_string()));
            }
            parsed.push((na, expires.min(self.config.max_expires)));
        }
        Ok(Request::Contacts(parsed))
    }

    /// 302 to the least-loaded other nodes, if there are any. A TLS or WebSocket client is
    /// not redirected (its TLS name and its page's WebSocket URL are configured, not taken from
    /// a Contact); at capacity it is served here.
    fn redirect(&self, flow: &Flow) -> Option<Fault> {
        if flow.stream_kind().is_some() {
            return None;
        }
        let others = crate::call::redirect::least_loaded_others(&self.ctx.mesh, 3);
        if others.is_empty() {
            return None;
        }
        let mut f = Fault::new(302, "Moved Temporarily");
        for c in &others {
            let uri = &c.sip[if flow.is_reliable() { 1 } else { 0 }];
            f = f.with("Contact", format!("<{uri}>;q={:.1}", c.q));
        }
        Some(f)
    }

    /// What a REGISTER changes in the AOR's bindings (RFC 3261 §10.3 steps 6–8, RFC 5626 §6):
    /// the mutation, the bindings after it, and what this node's memory of its own must learn.
    /// A contact whose binding has the same Call-ID and a CSeq at least as high fails the whole
    /// request (step 7: the update is aborted), with nothing written.
    fn apply(
        &self,
        req: &Message,
        c: &Checked,
        flow: &Flow,
        aor: &str,
        request: Request,
        existing: &[Binding],
    ) -> Result<Change, Fault> {
        let ks = self.ctx.mesh.keyspace();
        let now = ks.wall_ms();
        let ts = ks.now();
        let mut change = Change {
            mutation: Mutation::new(REGISTRATIONS, aor.as_bytes().to_vec()),
            current: existing.to_vec(),
            written: Vec::new(),
            deleted: Vec::new(),
            outbound_used: false,
            path: Vec::new(),
        };
        let parsed = match request {
            Request::RemoveAll => {
                // Bindings of a newer REGISTER of the same Call-ID stay.
                let keep = |b: &Binding| b.call_id == c.call_id && b.cseq >= c.cseq.seq;
                for b in existing.iter().filter(|b| !keep(b)) {
                    change.mutation = change.mutation.delete_row(&b.key(), ts);
                    change.deleted.push(b.key());
                }
                change.current.retain(keep);
                return Ok(change);
            }
            Request::Contacts(parsed) => parsed,
        };
        let user_agent = req.header(&HeaderName::UserAgent).map(str::to_string);
        // Path is an edge proxy's to add (RFC 3327). From anyone else — a phone itself — it
        // would let the sender choose where the mesh sends this user's calls: ignored.
        let path: Vec<String> = if self.ctx.throttle.trusted(&flow.peer().ip()) {
            req.values(&HeaderName::Path)
                .iter()
                .map(|s| s.to_string())
                .collect()
        } else {
            if req.header(&HeaderName::Path).is_some() {
                debug!(aor, "Path from an untrusted source ignored");
            }
            Vec::new()
        };
        change.path = path.clone();
        let outbound_supported = req
            .iter_values(&HeaderName::Supported)
            .any(|s| s.eq_ignore_ascii_case("outbound"));
        for (na, expires) in parsed {
            let instance = param(&na.params, "+sip.instance")
                .flatten()
                .map(|s| s.trim_matches('"').to_string());
            let reg_id = param(&na.params, "reg-id")
                .flatten()
                .and_then(|r| parse_u32(r, "reg-id"))
                .filter(|_| outbound_supported);
            change.outbound_used |= reg_id.is_some();
            let expires_at_ms = now + expires as u64 * 1000;
            let mut b = Binding {
                contact: na.uri.clone(),
                params: na
                    .params
                    .iter()
                    .filter(|(n, _)| !n.eq_ignore_ascii_case("expires"))
                    .cloned()
                    .collect(),
                expires_at_ms,
                q: param(&na.params, "q").flatten().map(str::to_string),
                call_id: c.call_id.clone(),
                cseq: c.cseq.seq,
                user_agent: user_agent.clone(),
                owner: self.ctx.mesh.peer_id(),
                flow: flow.clone(),
                instance,
                reg_id,
                path: path.clone(),
                updated_ms: now,
            };
            let key = b.key();
            let stored = existing.iter().find(|o| o.key() == key);
            let stale =
                stored.is_some_and(|old| old.call_id == c.call_id && old.cseq >= c.cseq.seq);
            let mut refresh = self.owned.refresh(aor, &b);
            if refresh == Refresh::Covered && stored.is_none_or(|row| row.owner != b.owner) {
                // The row moved to another node (or is gone): this node's memory of it is
                // stale; write it again.
                refresh = Refresh::Changed;
            }
            if stale || refresh == Refresh::OutOfOrder {
                debug!(aor, "out-of-order REGISTER refused");
                inc(&self.ctx.metrics.registrar_errors);
                return Err(Fault::new(500, "Out of order request"));
            }
            if expires == 0 {
                change.current.retain(|o| o.key() != key);
                change.mutation = change.mutation.delete_row(&key, ts);
                change.deleted.push(key);
            } else if refresh == Refresh::Covered {
                // Only the expiry moved, within the row's lease: nothing to replicate.
                self.owned.refreshed(aor, &b);
            } else {
                b.expires_at_ms = now + LEASE_FACTOR * expires as u64 * 1000;
                let mut cols = vec![("binding", b.encode())];
                // Under enrollment, signed by this node, the binding's owner (call::signed).
                let sig = signed::sign(
                    &self.ctx.mesh,
                    "registrations",
                    aor.as_bytes(),
                    &key,
                    ts,
                    &cols,
                );
                cols.extend(sig);
                change.mutation = change
                    .mutation
                    .upsert(&key, cols, ts, Some(b.expires_at_ms));
                change.current.retain(|o| o.key() != key);
                change.current.push(b.clone());
                change.written.push((b, expires_at_ms));
            }
        }
        Ok(change)
    }

    /// The 200 OK listing every current binding with its expiry (RFC 3261 §10.3 step 8).
    /// This node's bindings show the phone's own expiry; others' their lease.
    fn answer(
        &self,
        req: &Message,
        top_via: &str,
        aor: &str,
        to_uri: &str,
        change: &Change,
    ) -> Vec<u8> {
        let now = self.ctx.mesh.keyspace().wall_ms();
        let mut r = ResponseBuilder::new(req, 200, "OK")
            .to_tag(&random_tag())
            .top_via(top_via.to_string());
        // RFC 5627 §5: a phone that supports GRUU gets a public and a temporary GRUU for each
        // binding with an instance id, in the domain of its To.
        let gruu_domain = req
            .iter_values(&HeaderName::Supported)
            .any(|s| s.eq_ignore_ascii_case("gruu"))
            .then(|| {
                let uri = SipUri::parse(to_uri).ok()?;
                Some(match uri.port {
                    Some(p) => crate::sip::address::HostPort {
                        host: uri.host.clone(),
                        port: p,
                    }
                    .to_string(),
                    None => uri.host.clone(),
                })
            })
            .flatten();
        for b in &change.current {
            use std::fmt::Write as _;
            let mut v = String::with_capacity(b.contact.len() + 64);
            v.push('<');
            v.push_str(&b.contact);
            v.push('>');
            crate::sip::header::write_params(&mut v, &b.params);
            if let (Some(domain), Some(instance)) = (&gruu_domain, &b.instance) {
                let (public, temp) =
                    crate::call::gruu::assign(&self.ctx.secret, aor, domain, instance);
                let _ = write!(v, ";pub-gruu=\"{public}\";temp-gruu=\"{temp}\"");
            }
            let expires_at = self.owned.expiry(aor, &b.key()).unwrap_or(b.expires_at_ms);
            let _ = write!(
                v,
                ";expires={}",
                expires_at.saturating_sub(now).div_ceil(1000)
            );
            r = r.header("Contact", v);
        }
        for p in &change.path {
            r = r.header("Path", p.as_str());
        }
        if change.outbound_used {
            r = r
                .header("Require", "outbound")
                .header("Flow-Timer", FLOW_TIMER_SECS.to_string());
        }
        r.build()
    }
}

/// RFC 5626 §6: an Outbound registration (reg-id) that came through a proxy (more than one
/// Via) needs that first hop to support Outbound, as an `ob` parameter on the first Path says;
/// otherwise its flow could not be reached, and the phone is told 439.
fn check_first_hop(req: &Message, request: &Request) -> Result<(), Fault> {
    let Request::Contacts(contacts) = request else {
        return Ok(());
    };
    let outbound = contacts
        .iter()
        .any(|(na, _)| param(&na.params, "reg-id").is_some())
        && req
            .iter_values(&HeaderName::Supported)
            .any(|s| s.eq_ignore_ascii_case("outbound"));
    if !outbound || req.values(&HeaderName::Via).len() < 2 {
        return Ok(());
    }
    let first_hop_ob = req
        .values(&HeaderName::Path)
        .first()
        .and_then(|p| NameAddr::parse(p, "Path").ok())
        .and_then(|na| SipUri::parse(&na.uri).ok())
        .is_some_and(|u| u.param("ob").is_some());
    if first_hop_ob {
        Ok(())
    } else {
        Err(Fault::new(439, "First Hop Lacks Outbound Support"))
    }
}

/// Step 1: the To URI must be a SIP or SIPS URI with a user part; that user is the AOR.
fn aor_of(c: &Checked) -> Result<String, Fault> {
    let to = SipUri::parse(&c.to.uri).map_err(|_| Fault::bad("To must be a SIP or SIPS URI"))?;
    to.canonical_user()
        .ok_or_else(|| Fault::bad("To has no user part"))
}

/// Step 2: every option in Require must be supported, else 420.
fn check_require(req: &Message) -> Result<(), Fault> {
    let unsupported: Vec<&str> = req
        .iter_values(&HeaderName::Require)
        .filter(|o| !SUPPORTED.iter().any(|s| s.eq_ignore_ascii_case(o)))
        .collect();
    if unsupported.is_empty() {
        Ok(())
    } else {
        Err(Fault::new(420, "Bad Extension").with("Unsupported", unsupported.join(", ")))
    }
}
