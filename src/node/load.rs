//! Load publishing: each node publishes its load and capacity in its membership tags (spread
//! by heartbeats) and in the `proxies` table with a TTL. `call::redirect` picks from them.

use std::collections::BTreeMap;
use std::time::Duration;

use sipmesh_net::shutdown::Shutdown;
use sipmesh_net::{Consistency, Mesh};
use sipmesh_storage::Mutation;

use super::Node;

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
/// How often the node's load is published in its membership tags.
const PUBLISH_LOAD_EVERY: Duration = Duration::from_secs(2);
/// The `proxies` row is rewritten every this many publications (its TTL is three times that).
/// Once a minute: nothing on the call path reads the table (load travels in the tags), and
/// each write goes to the row's replicas, whose links would otherwise never idle.
const PROXIES_ROW_EVERY: u32 = 30;

/// Publish this node's load in its membership tags, and now and then in the `proxies` table.
pub(crate) async fn publish(node: Node, mut shutdown: Shutdown) {
    let sip = format!("sip:{}", node.sip_advertised());
    let http = node.http_addr().map(|a| format!("http://{a}"));
    let capacity = node.config.capacity as u64;
    let mut n = 0u32;
    loop {
        let (bindings, dialogs) = node.load();
        let load = bindings + dialogs;
        let mut tags = tags(&sip, http.as_deref(), capacity, load);
        tags.insert("sip_ip".into(), node.mesh_sip().to_string());
        tags.insert(
            crate::node::internode::KEY_ID_TAG.into(),
            node.secret_key_id(),
        );
        tags.insert("registrations".into(), bindings.to_string());
        tags.insert("dialogs".into(), dialogs.to_string());
        node.mesh.set_tags(tags);
        if n.is_multiple_of(PROXIES_ROW_EVERY) {
            let ttl = (PUBLISH_LOAD_EVERY * PROXIES_ROW_EVERY * 3).as_millis() as u64;
            let row = proxies_row(&node.mesh, &sip, http.as_deref(), capacity, load, ttl);
            let _ = node.mesh.write(row, Consistency::One).await;
        }
        n = n.wrapping_add(1);
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tokio::time::sleep(PUBLISH_LOAD_EVERY) => {}
        }
    }
}
