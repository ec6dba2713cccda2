//! Proxy assignment at login: where a node at capacity sends new clients (302), and what
//! `GET /v1/bootstrap` lists — the live nodes with the most spare capacity, from the load every
//! node publishes in its membership tags.

use serde::Serialize;
use sipmesh_net::{MemberState, Mesh};

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

/// Live nodes by spare capacity, most spare first, at most `n`, this node included (for
/// `GET /v1/bootstrap`).
pub fn least_loaded(mesh: &Mesh, n: usize) -> Vec<Candidate> {
    ranked(mesh, n, |_| true)
}

/// Other live nodes by spare capacity, most spare first, at most `n` (for a 302).
pub fn least_loaded_others(mesh: &Mesh, n: usize) -> Vec<Candidate> {
    ranked(mesh, n, |m| !m.local)
}

fn ranked(mesh: &Mesh, n: usize, keep: impl Fn(&sipmesh_net::Member) -> bool) -> Vec<Candidate> {
    let mut c: Vec<(u64, Candidate)> = mesh
        .members()
        .into_iter()
        .filter(|m| m.state == MemberState::Up && keep(m))
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
