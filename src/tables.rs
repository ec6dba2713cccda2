//! The tables of the name-server keyspace (denormalised, as Cassandra users do).
//!
//! Table ids are part of every stored key and replicated mutation: never renumber them.

use sipmesh_storage::{ClusteringOrder, TableId, TableSchema};

/// `users (user)`: digest credentials as HA1 hashes, realm, display name, disabled flag; under
/// enrollment, `sig`: the writer's signature over the row (`call::users`).
pub const USERS: TableId = 1;
/// `proxies (node_id)`: each node's SIP URIs, addresses, capacity, load, heartbeat (TTL).
pub const PROXIES: TableId = 2;
/// `registrations (aor, instance/contact)`: one row per binding; TTL = Expires; under
/// enrollment, `sig`: the owner node's signature over the row (`call::signed`).
pub const REGISTRATIONS: TableId = 3;
// Ids 4 (`clients_by_proxy`), 5 (`dialogs`) and 6 (`dialogs_by_proxy`) belonged to tables that
// grew with a node's clients and calls; they are retired and never reused.
/// `mesh (name)`: mesh-wide settings, such as the nonce secret.
pub const MESH: TableId = 7;
/// `dialogs_of_node (node_id ‖ bucket, dialog id)`: long calls, stored by the node that faces
/// the caller, spread over a fixed number of buckets per node.
pub const DIALOGS_OF_NODE: TableId = 8;

/// `bans (scope, source)`: sources the throttle of any node banned, one row each, TTL = the
/// ban's end; every node applies them (`node::bans`). One partition (`scope` = "all"): bans
/// are few and short-lived.
pub const BANS: TableId = 9;

/// `revocations (scope, peer_id)`: members shut out of the mesh, each row a revocation signed
/// by the enrollment key (checked by every reader; `node::revocations`). One partition.
pub const REVOCATIONS: TableId = 10;

/// Every table of the keyspace.
pub fn all() -> Vec<TableSchema> {
    vec![
        TableSchema::new(
            USERS,
            "users",
            "user",
            &[
                "ha1_md5",
                "ha1_sha256",
                "realm",
                "display_name",
                "disabled",
                "sig",
            ],
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
        TableSchema::new(REGISTRATIONS, "registrations", "aor", &["binding", "sig"])
            .clustered("instance", ClusteringOrder::Asc),
        TableSchema::new(MESH, "mesh", "name", &["value"]),
        TableSchema::new(
            DIALOGS_OF_NODE,
            "dialogs_of_node",
            "node_bucket",
            &["dialog"],
        )
        .clustered("dialog_id", ClusteringOrder::Asc),
        TableSchema::new(BANS, "bans", "scope", &["reason", "by"])
            .clustered("source", ClusteringOrder::Asc),
        TableSchema::new(REVOCATIONS, "revocations", "scope", &["revocation"])
            .clustered("peer_id", ClusteringOrder::Asc),
    ]
}
