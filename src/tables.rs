//! The tables of the name-server keyspace (denormalised, as Cassandra users do).
//!
//! Table ids are part of every stored key and replicated mutation: never renumber them.

use sipmesh_storage::{ClusteringOrder, TableId, TableSchema};

/// `users (user)`: digest credentials as HA1 hashes, realm, display name, disabled flag.
pub const USERS: TableId = 1;
/// `proxies (node_id)`: each node's SIP URIs, addresses, capacity, load, heartbeat (TTL).
pub const PROXIES: TableId = 2;
/// `registrations (aor, instance/contact)`: one row per binding; TTL = Expires.
pub const REGISTRATIONS: TableId = 3;
/// `clients_by_proxy (node_id, aor)`: the clients each proxy serves.
pub const CLIENTS_BY_PROXY: TableId = 4;
/// `dialogs (dialog id)`: active call state.
pub const DIALOGS: TableId = 5;
/// `dialogs_by_proxy (node_id, dialog id)`: the dialogs each proxy is on the path of.
pub const DIALOGS_BY_PROXY: TableId = 6;
/// `mesh (name)`: mesh-wide settings, such as the nonce secret.
pub const MESH: TableId = 7;

/// Every table of the keyspace.
pub fn all() -> Vec<TableSchema> {
    vec![
        TableSchema::new(
            USERS,
            "users",
            "user",
            &["ha1_md5", "ha1_sha256", "realm", "display_name", "disabled"],
        ),
        TableSchema::new(
            PROXIES,
            "proxies",
            "node_id",
            &[
                "sip_uris",
                "p2p_addrs",
                "http",
                "capacity",
                "load",
                "heartbeat",
            ],
        ),
        TableSchema::new(REGISTRATIONS, "registrations", "aor", &["binding"])
            .clustered("instance", ClusteringOrder::Asc),
        TableSchema::new(
            CLIENTS_BY_PROXY,
            "clients_by_proxy",
            "node_id",
            &["expires", "bindings"],
        )
        .clustered("aor", ClusteringOrder::Asc),
        TableSchema::new(DIALOGS, "dialogs", "dialog_id", &["dialog"]),
        TableSchema::new(DIALOGS_BY_PROXY, "dialogs_by_proxy", "node_id", &["state"])
            .clustered("dialog_id", ClusteringOrder::Asc),
        TableSchema::new(MESH, "mesh", "name", &["value"]),
    ]
}
