//! Throttling of attackers, after Kamailio's `pike` and `htable` ban (its sample config: 16
//! requests per 2 s per source, then a 300 s ban): a per-source request rate, failed
//! authentications per source and per user, and a ban list the admin API shows and lifts.
//!
//! A banned source's requests are dropped before they are parsed further (no answer: an answer
//! tells a scanner it found a SIP server). Requests from other mesh nodes and from configured
//! trusted sources are never throttled. Every table is bounded; under a flood of spoofed
//! sources the oldest windows are forgotten first.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Sources (or users) tracked per shard at most.
const MAX_TRACKED: usize = 25_000;
/// Shards of the per-source tables (a lock each).
const SHARDS: usize = 16;
/// Bans held at most.
const MAX_BANS: usize = 100_000;

/// Throttling settings (all configurable; see docs/SECURITY.md).
#[derive(Debug, Clone)]
pub struct ThrottleConfig {
    /// Requests a source may send per `window` (0: no request-rate limit).
    pub requests_per_window: u32,
    /// The request-rate window.
    pub window: Duration,
    /// How long a source is banned.
    pub ban: Duration,
    /// Failed authentications a source may have per `auth_window` before it is banned.
    pub auth_failures_per_source: u32,
    /// Failed authentications of one user (from all sources) per `auth_window` after which
    /// every source that fails for that user is banned at once.
    pub auth_failures_per_user: u32,
    /// The failed-authentication window.
    pub auth_window: Duration,
    /// Sources never throttled (exact addresses).
    pub trusted: Vec<IpAddr>,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig {
            requests_per_window: 16,
            window: Duration::from_secs(2),
            ban: Duration::from_secs(300),
            auth_failures_per_source: 5,
            auth_failures_per_user: 20,
            auth_window: Duration::from_secs(60),
            trusted: Vec::new(),
        }
    }
}

/// A count in a fixed window.
#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    count: u32,
}

impl Window {
    /// Count one at `now` in windows of `len`; returns the count in the current window.
    fn hit(&mut self, now: Instant, len: Duration) -> u32 {
        if now.duration_since(self.start) >= len {
            self.start = now;
            self.count = 0;
        }
        self.count = self.count.saturating_add(1);
        self.count
    }
}

/// A table of windows keyed by `K`, bounded: when full, expired windows go first.
pub(crate) struct Windows<K> {
    map: HashMap<K, Window>,
}

impl<K: std::hash::Hash + Eq + Clone> Windows<K> {
    pub(crate) fn new() -> Self {
        Windows {
            map: HashMap::new(),
        }
    }

    pub(crate) fn hit(&mut self, key: &K, now: Instant, len: Duration) -> u32 {
        if let Some(w) = self.map.get_mut(key) {
            return w.hit(now, len);
        }
        if self.map.len() >= MAX_TRACKED {
            self.map.retain(|_, w| now.duration_since(w.start) < len);
            if self.map.len() >= MAX_TRACKED {
                // Every window is live (a flood of distinct sources): forget an eighth of
                // them, so the next inserts are O(1) again.
                let drop: Vec<K> = self.map.keys().take(MAX_TRACKED / 8).cloned().collect();
                for k in drop {
                    self.map.remove(&k);
                }
            }
        }
        self.map
            .entry(key.clone())
            .or_insert(Window {
                start: now,
                count: 0,
            })
            .hit(now, len)
    }
}

/// Why a source was banned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BanReason {
    /// Too many requests per window.
    RequestRate,
    /// Too many failed authentications from the source.
    AuthFailures,
    /// It failed for a user under attack from many sources.
    UserUnderAttack,
}

impl BanReason {
    /// The name the admin API and the `bans` table use.
    pub fn as_str(self) -> &'static str {
        match self {
            BanReason::RequestRate => "request_rate",
            BanReason::AuthFailures => "auth_failures",
            BanReason::UserUnderAttack => "user_under_attack",
        }
    }

    /// The reason named `s`.
    pub fn parse(s: &str) -> Option<BanReason> {
        [
            BanReason::RequestRate,
            BanReason::AuthFailures,
            BanReason::UserUnderAttack,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}

/// Bans of this node not yet published to the mesh (bounded: a storm past this publishes the
/// first ones; the rest stay local).
const MAX_UNPUBLISHED: usize = 4_096;

/// A ban, as the admin API shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Ban {
    /// The source address.
    pub source: IpAddr,
    /// Why.
    pub reason: BanReason,
    /// Seconds left.
    pub expires_in: u64,
}

/// What the throttle says of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Handle it.
    Pass,
    /// The source is banned: drop it.
    Banned,
    /// This request got the source banned: drop it.
    NewBan,
}

/// The throttle of a node.
pub struct Throttle {
    config: ThrottleConfig,
    rates: Vec<Mutex<Windows<IpAddr>>>,
    source_failures: Vec<Mutex<Windows<IpAddr>>>,
    user_failures: Mutex<Windows<String>>,
    bans: std::sync::RwLock<HashMap<IpAddr, (Instant, BanReason)>>,
    /// Bans made here, waiting to be published to the mesh (`node::bans`).
    unpublished: Mutex<Vec<(IpAddr, BanReason, Duration)>>,
}

fn shard(ip: &IpAddr) -> usize {
    let h = match ip {
        IpAddr::V4(a) => u32::from(*a) as u64,
        IpAddr::V6(a) => xxhash_rust::xxh3::xxh3_64(&a.octets()),
    };
    (h.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 60) as usize % SHARDS
}

impl Throttle {
    /// A throttle with these settings.
    pub fn new(config: ThrottleConfig) -> Self {
        Throttle {
            config,
            rates: (0..SHARDS).map(|_| Mutex::new(Windows::new())).collect(),
            source_failures: (0..SHARDS).map(|_| Mutex::new(Windows::new())).collect(),
            user_failures: Mutex::new(Windows::new()),
            bans: std::sync::RwLock::new(HashMap::new()),
            unpublished: Mutex::new(Vec::new()),
        }
    }

    /// Whether `ip` is a trusted source (a gateway or edge proxy the operator runs).
    pub fn trusted(&self, ip: &IpAddr) -> bool {
        self.config.trusted.contains(ip)
    }

    /// Whether `ip` is banned at `now` (a read lock: this runs for every datagram, before it
    /// is parsed; expired bans are cleaned up when the list is full or listed).
    pub fn is_banned(&self, ip: &IpAddr, now: Instant) -> bool {
        let bans = self.bans.read().unwrap_or_else(|p| p.into_inner());
        !bans.is_empty() && bans.get(ip).is_some_and(|(until, _)| *until > now)
    }

    fn ban(&self, ip: IpAddr, reason: BanReason, now: Instant) {
        if self.ban_until(ip, reason, now + self.config.ban, now) {
            tracing::info!(source = %ip, ?reason, secs = self.config.ban.as_secs(), "source banned");
            let mut unpublished = self.unpublished.lock().unwrap_or_else(|p| p.into_inner());
            if unpublished.len() < MAX_UNPUBLISHED {
                unpublished.push((ip, reason, self.config.ban));
            }
        }
    }

    /// Ban `ip` until `until` (a ban another member published); returns whether it is new.
    /// Trusted sources are never banned.
    pub fn ban_until(&self, ip: IpAddr, reason: BanReason, until: Instant, now: Instant) -> bool {
        if self.trusted(&ip) || until <= now {
            return false;
        }
        let mut bans = self.bans.write().unwrap_or_else(|p| p.into_inner());
        if bans.get(&ip).is_some_and(|(u, _)| *u > now) {
            return false;
        }
        if bans.len() >= MAX_BANS && !bans.contains_key(&ip) {
            bans.retain(|_, (until, _)| *until > now);
            if bans.len() >= MAX_BANS {
                tracing::warn!("ban list full; not banning {ip}");
                return false;
            }
        }
        bans.insert(ip, (until, reason));
        true
    }

    /// Bans this node made since the last call, to publish mesh-wide: (source, reason, length).
    pub fn take_unpublished(&self) -> Vec<(IpAddr, BanReason, Duration)> {
        std::mem::take(&mut *self.unpublished.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// A request arrived from `ip` at `now`.
    pub fn request(&self, ip: IpAddr, now: Instant) -> Verdict {
        if self.trusted(&ip) {
            return Verdict::Pass;
        }
        if self.is_banned(&ip, now) {
            return Verdict::Banned;
        }
        let limit = self.config.requests_per_window;
        if limit == 0 {
            return Verdict::Pass;
        }
        let n = self.rates[shard(&ip)]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .hit(&ip, now, self.config.window);
        if n > limit {
            self.ban(ip, BanReason::RequestRate, now);
            return Verdict::NewBan;
        }
        Verdict::Pass
    }

    /// An authentication from `ip` for `user` failed at `now`; returns true if `ip` is now banned.
    pub fn auth_failed(&self, ip: IpAddr, user: &str, now: Instant) -> bool {
        if self.trusted(&ip) {
            return false;
        }
        let len = self.config.auth_window;
        let per_user = self
            .user_failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .hit(&user.to_string(), now, len);
        let per_source = self.source_failures[shard(&ip)]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .hit(&ip, now, len);
        if self.config.auth_failures_per_source > 0
            && per_source >= self.config.auth_failures_per_source
        {
            self.ban(ip, BanReason::AuthFailures, now);
            return true;
        }
        if self.config.auth_failures_per_user > 0 && per_user > self.config.auth_failures_per_user {
            self.ban(ip, BanReason::UserUnderAttack, now);
            return true;
        }
        false
    }

    /// The bans in force at `now`.
    pub fn bans(&self, now: Instant) -> Vec<Ban> {
        let mut bans = self.bans.write().unwrap_or_else(|p| p.into_inner());
        bans.retain(|_, (until, _)| *until > now);
        let mut out: Vec<Ban> = bans
            .iter()
            .filter(|(_, (until, _))| *until > now)
            .map(|(ip, (until, reason))| Ban {
                source: *ip,
                reason: *reason,
                expires_in: until.duration_since(now).as_secs(),
            })
            .collect();
        out.sort_by_key(|b| b.source);
        out
    }

    /// Lift a ban (and forget the source's counts); returns whether there was one.
    pub fn lift(&self, ip: &IpAddr) -> bool {
        self.rates[shard(ip)]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map
            .remove(ip);
        self.source_failures[shard(ip)]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map
            .remove(ip);
        self.bans
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(ip)
            .is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn request_rate_bans_after_the_limit_and_the_ban_expires() {
        let t = Throttle::new(ThrottleConfig::default());
        let now = Instant::now();
        for _ in 0..16 {
            assert_eq!(t.request(ip("192.0.2.1"), now), Verdict::Pass);
        }
        assert_eq!(t.request(ip("192.0.2.1"), now), Verdict::NewBan);
        assert_eq!(t.request(ip("192.0.2.1"), now), Verdict::Banned);
        // another source is unaffected
        assert_eq!(t.request(ip("192.0.2.2"), now), Verdict::Pass);
        // a new window does not lift the ban; its expiry does
        let later = now + Duration::from_secs(3);
        assert_eq!(t.request(ip("192.0.2.1"), later), Verdict::Banned);
        let after = now + Duration::from_secs(301);
        assert_eq!(t.request(ip("192.0.2.1"), after), Verdict::Pass);
    }

    #[test]
    fn a_steady_source_under_the_rate_is_never_banned() {
        let t = Throttle::new(ThrottleConfig::default());
        let start = Instant::now();
        for i in 0..1000u64 {
            // 15 requests per 2 s window
            let now = start + Duration::from_millis(i * 2000 / 15);
            assert_eq!(
                t.request(ip("192.0.2.9"), now),
                Verdict::Pass,
                "request {i}"
            );
        }
    }

    #[test]
    fn auth_failures_ban_the_source_not_the_user() {
        let t = Throttle::new(ThrottleConfig::default());
        let now = Instant::now();
        for _ in 0..4 {
            assert!(!t.auth_failed(ip("192.0.2.1"), "alice", now));
        }
        assert!(t.auth_failed(ip("192.0.2.1"), "alice", now));
        assert!(t.is_banned(&ip("192.0.2.1"), now));
        assert!(!t.is_banned(&ip("192.0.2.2"), now));
        assert_eq!(t.bans(now).len(), 1);
        assert_eq!(t.bans(now)[0].reason, BanReason::AuthFailures);
        assert!(t.lift(&ip("192.0.2.1")));
        assert!(!t.is_banned(&ip("192.0.2.1"), now));
        assert_eq!(t.request(ip("192.0.2.1"), now), Verdict::Pass);
    }

    #[test]
    fn a_user_under_attack_from_many_sources() {
        let t = Throttle::new(ThrottleConfig::default());
        let now = Instant::now();
        for i in 0..20 {
            assert!(!t.auth_failed(ip(&format!("198.51.100.{i}")), "bob", now));
        }
        // the 21st failure for bob bans its source at once; a source that never failed is not
        assert!(t.auth_failed(ip("198.51.100.200"), "bob", now));
        assert!(!t.is_banned(&ip("198.51.100.201"), now));
    }

    #[test]
    fn trusted_sources_are_never_throttled() {
        let t = Throttle::new(ThrottleConfig {
            trusted: vec![ip("127.0.0.1")],
            ..ThrottleConfig::default()
        });
        let now = Instant::now();
        for _ in 0..1000 {
            assert_eq!(t.request(ip("127.0.0.1"), now), Verdict::Pass);
            assert!(!t.auth_failed(ip("127.0.0.1"), "alice", now));
        }
    }

    #[test]
    fn tables_stay_bounded_under_spoofed_sources() {
        let t = Throttle::new(ThrottleConfig::default());
        let now = Instant::now();
        for i in 0..(MAX_TRACKED as u32 * SHARDS as u32 + 5000) {
            t.request(IpAddr::from(i.to_be_bytes()), now);
        }
        for s in &t.rates {
            assert!(s.lock().unwrap().map.len() <= MAX_TRACKED);
        }
    }
}
