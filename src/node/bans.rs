//! Mesh-wide bans: a source banned by any node's throttle is banned by every node. Each node
//! publishes its new bans to the `bans` table (one row per source, TTL = the ban's end) and,
//! every [`SYNC_EVERY`], applies the rows it did not have (read at QUORUM, so a lift written
//! at QUORUM is never missed). A ban lifted through the admin API is deleted from the table,
//! and a node lifts a ban it saw in the table once the row is gone. Every member is trusted to
//! ban (docs/SECURITY.md); trusted sources are never banned.

use std::collections::HashSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use sipmesh_net::shutdown::Shutdown;
use sipmesh_net::Consistency;
use sipmesh_storage::Mutation;
use tracing::{debug, info};

use super::Node;
use crate::call::throttle::BanReason;
use crate::events::Kind;
use crate::tables::BANS;

/// How often a node publishes its new bans and applies the others'.
pub const SYNC_EVERY: Duration = Duration::from_secs(2);
/// The one partition of the `bans` table.
const SCOPE: &[u8] = b"all";

/// The mutation that publishes a ban of `source` for `length`.
fn publish(node: &Node, source: IpAddr, reason: BanReason, length: Duration) -> Mutation {
    let ks = node.keyspace();
    let until = ks.wall_ms() + length.as_millis() as u64;
    Mutation::new(BANS, SCOPE.to_vec()).upsert(
        source.to_string().as_bytes(),
        [
            ("reason", reason.as_str().as_bytes().to_vec()),
            ("by", node.mesh.peer_id().to_string().into_bytes()),
        ],
        ks.now(),
        Some(until),
    )
}

/// Delete `source`'s row: the ban is lifted mesh-wide.
pub(crate) async fn lift(node: &Node, source: IpAddr) -> crate::error::Result<()> {
    let m = Mutation::new(BANS, SCOPE.to_vec())
        .delete_row(source.to_string().as_bytes(), node.keyspace().now());
    node.mesh.write(m, Consistency::Quorum).await?;
    Ok(())
}

/// Publish and apply bans until shutdown.
pub(crate) async fn sync(node: Node, mut shutdown: Shutdown) {
    // Sources seen in the table: one that disappears was lifted somewhere.
    let mut seen: HashSet<IpAddr> = HashSet::new();
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tokio::time::sleep(SYNC_EVERY) => {}
        }
        let throttle = node.throttle().clone();
        let new: Vec<Mutation> = throttle
            .take_unpublished()
            .into_iter()
            .map(|(ip, reason, length)| publish(&node, ip, reason, length))
            .collect();
        if !new.is_empty() {
            if let Err(e) = node.mesh.write_many(new, Consistency::One).await {
                debug!(error = %e, "could not publish bans");
            }
        }
        let rows = match node.mesh.read(BANS, SCOPE, Consistency::Quorum).await {
            Ok(p) => p.rows,
            Err(e) => {
                debug!(error = %e, "could not read the mesh's bans");
                continue;
            }
        };
        let (now, wall) = (Instant::now(), node.keyspace().wall_ms());
        let mut present = HashSet::with_capacity(rows.len());
        for row in &rows {
            let Some(ip) = std::str::from_utf8(&row.clustering)
                .ok()
                .and_then(|s| s.parse::<IpAddr>().ok())
            else {
                continue;
            };
            present.insert(ip);
            let reason = row
                .get("reason")
                .and_then(|r| std::str::from_utf8(r).ok())
                .and_then(BanReason::parse)
                .unwrap_or(BanReason::RequestRate);
            let left = row.expires_at().unwrap_or(wall).saturating_sub(wall);
            let by = row
                .get("by")
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            if throttle.ban_until(ip, reason, now + Duration::from_millis(left), now) {
                info!(source = %ip, ?reason, by, "source banned by another member");
                node.metrics.events.push(
                    Kind::Ban,
                    format!("banned {ip} ({}, by {by})", reason.as_str()),
                );
            }
        }
        for gone in seen.difference(&present) {
            if throttle.is_banned(gone, now) && throttle.lift(gone) {
                info!(source = %gone, "ban lifted elsewhere in the mesh");
                node.metrics
                    .events
                    .push(Kind::Ban, format!("lifted the ban on {gone} (elsewhere)"));
            }
        }
        seen = present;
    }
}
