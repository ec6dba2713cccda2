//! The routing policy: what a node forwards, and for whom. Safe by default, stricter than
//! Kamailio's default configuration:
//!
//! - A request toward a user of the mesh's domains (the realm, configured domains, every
//!   member's SIP address) may come from anyone; it reaches only that user's registered
//!   bindings. A request whose From claims a user of those domains is challenged (407) for the
//!   configured methods.
//! - A request toward anything else is refused (403 "Not relaying"), except an INVITE from an
//!   authenticated local user through the operator's trunk, with its allowed prefixes and a
//!   per-user call rate.
//! - Preloaded Routes are honoured only toward mesh nodes; in-dialog requests and ACKs only
//!   along a Record-Route entry this mesh signed.
//! - Caps: contacts per AOR and branches per request.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::call::throttle::Windows;
use crate::sip::message::Method;
use crate::sip::uri::SipUri;
use crate::sip::Fault;

/// An outbound trunk configured by the operator: where calls to numbers outside the mesh go.
#[derive(Debug, Clone)]
pub struct TrunkConfig {
    /// The trunk's SIP URI (`sip:host:port`); requests are sent there, Request-URI unchanged.
    pub uri: String,
    /// Dialled user parts allowed through the trunk (prefix match; empty: none).
    pub prefixes: Vec<String>,
    /// Calls per user per minute through the trunk.
    pub calls_per_minute: u32,
}

/// The routing policy's settings.
#[derive(Debug, Clone)]
pub struct PolicyConfig {
    /// Domains of the mesh besides the realm and the members' SIP addresses.
    pub domains: Vec<String>,
    /// Methods of initial requests challenged when their From claims a user of the mesh's
    /// domains (INVITE only when `--auth-invites` is on).
    pub auth_methods: Vec<String>,
    /// The outbound trunk, if any.
    pub trunk: Option<TrunkConfig>,
    /// Bindings an AOR may hold.
    pub max_contacts: usize,
    /// Branches a forwarded request may fork to.
    pub max_branches: usize,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            domains: Vec::new(),
            auth_methods: [
                "INVITE",
                "MESSAGE",
                "SUBSCRIBE",
                "REFER",
                "NOTIFY",
                "PUBLISH",
                "OPTIONS",
                "INFO",
                "UPDATE",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            trunk: None,
            max_contacts: 10,
            max_branches: 10,
        }
    }
}

/// The refusal of a request toward a host outside the mesh.
pub fn not_relaying() -> Fault {
    Fault::new(403, "Not relaying")
}

/// The policy of a node.
pub struct Policy {
    config: PolicyConfig,
    realm: String,
    trunk_calls: Mutex<Windows<String>>,
}

impl Policy {
    /// The policy for a mesh with this realm.
    pub fn new(config: PolicyConfig, realm: &str) -> Self {
        Policy {
            config,
            realm: realm.to_ascii_lowercase(),
            trunk_calls: Mutex::new(Windows::new()),
        }
    }

    /// Its settings.
    pub fn config(&self) -> &PolicyConfig {
        &self.config
    }

    /// Whether `host` is the realm or a configured domain (members' addresses are checked by
    /// the proxy, which knows them).
    pub fn is_named_domain(&self, host: &str) -> bool {
        host.eq_ignore_ascii_case(&self.realm)
            || self
                .config
                .domains
                .iter()
                .any(|d| d.eq_ignore_ascii_case(host))
    }

    /// Whether an initial request of `method` whose From claims a local user is challenged.
    pub fn challenges(&self, method: &Method, auth_invites: bool) -> bool {
        if *method == Method::Invite && !auth_invites {
            return false;
        }
        self.config
            .auth_methods
            .iter()
            .any(|m| m.eq_ignore_ascii_case(method.as_str()))
    }

    /// The trunk for a request of `method` dialling `user`, if the trunk takes it.
    pub fn trunk_for(&self, method: &Method, user: &str) -> Option<&TrunkConfig> {
        let t = self.config.trunk.as_ref()?;
        (*method == Method::Invite && t.prefixes.iter().any(|p| user.starts_with(p.as_str())))
            .then_some(t)
    }

    /// Whether `uri` names the trunk's host and port (a Record-Route entry the trunk added).
    pub fn is_trunk_uri(&self, uri: &str) -> bool {
        let Some(t) = &self.config.trunk else {
            return false;
        };
        let (Ok(trunk), Ok(u)) = (SipUri::parse(&t.uri), SipUri::parse(uri)) else {
            return false;
        };
        let port = |u: &SipUri| u.port.unwrap_or(if u.secure { 5061 } else { 5060 });
        u.user.is_none()
            && port(&u) == port(&trunk)
            && u.host
                .trim_matches(|c| c == '[' || c == ']')
                .eq_ignore_ascii_case(trunk.host.trim_matches(|c| c == '[' || c == ']'))
    }

    /// Count a trunk call of `user` at `now`: Err(429-ish fault) above the per-user rate.
    pub fn trunk_call(&self, user: &str, now: Instant) -> Result<(), Fault> {
        let Some(t) = &self.config.trunk else {
            return Err(not_relaying());
        };
        let n = self
            .trunk_calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .hit(&user.to_string(), now, Duration::from_secs(60));
        if n > t.calls_per_minute {
            return Err(Fault::new(403, "Trunk call rate exceeded"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trunked() -> Policy {
        Policy::new(
            PolicyConfig {
                trunk: Some(TrunkConfig {
                    uri: "sip:192.0.2.10:5060".into(),
                    prefixes: vec!["0049".into(), "+49".into()],
                    calls_per_minute: 2,
                }),
                domains: vec!["voip.example.org".into()],
                ..PolicyConfig::default()
            },
            "Mesh",
        )
    }

    #[test]
    fn domains_and_trunk_prefixes() {
        let p = trunked();
        assert!(p.is_named_domain("mesh"));
        assert!(p.is_named_domain("VOIP.example.org"));
        assert!(!p.is_named_domain("trunk.example.com"));
        assert!(p.trunk_for(&Method::Invite, "004930123").is_some());
        assert!(p.trunk_for(&Method::Invite, "+4930123").is_some());
        for toll in ["0044207", "011441", "900123", "9011441"] {
            assert!(p.trunk_for(&Method::Invite, toll).is_none(), "{toll}");
        }
        assert!(p.trunk_for(&Method::Message, "004930123").is_none());
        assert!(Policy::new(PolicyConfig::default(), "m")
            .trunk_for(&Method::Invite, "0049")
            .is_none());
    }

    #[test]
    fn trunk_call_rate_per_user() {
        let p = trunked();
        let now = Instant::now();
        assert!(p.trunk_call("alice", now).is_ok());
        assert!(p.trunk_call("alice", now).is_ok());
        assert_eq!(p.trunk_call("alice", now).unwrap_err().code, 403);
        assert!(p.trunk_call("bob", now).is_ok());
        assert!(p.trunk_call("alice", now + Duration::from_secs(61)).is_ok());
    }

    #[test]
    fn challenged_methods() {
        let p = Policy::new(PolicyConfig::default(), "m");
        assert!(p.challenges(&Method::Invite, true));
        assert!(!p.challenges(&Method::Invite, false));
        assert!(p.challenges(&Method::Message, false));
        assert!(!p.challenges(&Method::Bye, true));
    }
}
