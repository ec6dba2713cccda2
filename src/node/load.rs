//! Load publishing: each node publishes its load and capacity in its membership tags (spread
//! by heartbeats) and in the `proxies` table with a TTL. `call::redirect` picks from them.

use std::collections::BTreeMap;

use sipmesh_net::Mesh;
use sipmesh_storage::Mutation;

use crate::tables::PROXIES;

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
