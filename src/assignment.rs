//! Proxy assignment: each node publishes its load and capacity (in its membership tags, spread
//! by heartbeats, and in the `proxies` table with a TTL); a node at capacity redirects new
//! clients (302) to the least-loaded live nodes, and `GET /v1/bootstrap` lists them.

use std::collections::BTreeMap;

use serde::Serialize;
use sipmesh_net::{MemberState, Mesh};
use sipmesh_storage::Mutation;

use crate::tables::PROXIES;

/// A node a client may register with.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Candidate {
    /// The node's PeerId.
    pub peer_id: String,
    /// Its SIP URIs, one per transport.
    pub sip: Vec<String>,
    /// Its current load (bindings it owns plus dialogs it is on).
    pub load: u64,
    /// Its capacity.
    pub capacity: u64,
    /// Preference by spare capacity, 0.1–1.0.
    pub q: f32,
}

/// The tags a node publishes.
pub fn tags(sip: &str, http: Option<&str>, capacity: u64, load: u64) -> BTreeMap<String, String> {
    let mut t = BTreeMap::new();
    t.insert("sip".into(), sip.to_string());
    if let Some(h) = http {
        t.insert("http".into(), h.to_string());
    }
    t.insert("capacity".into(), capacity.to_string());
    t.insert("load".into(), load.to_string());
    t
}

/// Live nodes by spare capacity, most spare first, at most `n`, this node included or not.
pub fn least_loaded(mesh: &Mesh, n: usize, include_self: bool) -> Vec<Candidate> {
    let mut c: Vec<(u64, Candidate)> = mesh
        .members()
        .into_iter()
        .filter(|m| m.state == MemberState::Up && (include_self || !m.local))
        .filter_map(|m| {
            let sip = m.tags.get("sip")?.trim_start_matches("sip:").to_string();
            let capacity: u64 = m.tags.get("capacity")?.parse().ok()?;
            let load: u64 = m.tags.get("load").and_then(|l| l.parse().ok()).unwrap_or(0);
            let spare = capacity.saturating_sub(load);
            Some((
                spare,
                Candidate {
                    peer_id: m.peer_id.to_string(),
                    sip: vec![
                        format!("sip:{sip};transport=udp"),
                        format!("sip:{sip};transport=tcp"),
                    ],
                    load,
                    capacity,
                    q: 0.0,
                },
            ))
        })
        .filter(|(spare, _)| *spare > 0)
        .collect();
    c.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.peer_id.cmp(&b.1.peer_id)));
    c.truncate(n);
    let max = c.first().map(|x| x.0).unwrap_or(1).max(1) as f32;
    c.into_iter()
        .map(|(spare, mut cand)| {
            cand.q = ((spare as f32 / max) * 10.0).round().clamp(1.0, 10.0) / 10.0;
            cand
        })
        .collect()
}

/// The `proxies` row of this node (heartbeat, with a TTL).
pub fn proxies_row(
    mesh: &Mesh,
    sip: &str,
    http: Option<&str>,
    capacity: u64,
    load: u64,
    ttl_ms: u64,
) -> Mutation {
    let ks = mesh.keyspace();
    let addrs: Vec<String> = mesh.listen_addrs().iter().map(|a| a.to_string()).collect();
    let now = ks.wall_ms();
    Mutation::new(PROXIES, mesh.peer_id().to_string().into_bytes()).upsert(
        b"",
        [
            ("sip_uris", sip.as_bytes().to_vec()),
            ("p2p_addrs", addrs.join(",").into_bytes()),
            ("http", http.unwrap_or_default().as_bytes().to_vec()),
            ("capacity", capacity.to_string().into_bytes()),
            ("load", load.to_string().into_bytes()),
            ("heartbeat", now.to_string().into_bytes()),
        ],
        ks.now(),
        Some(now + ttl_ms),
    )
}
