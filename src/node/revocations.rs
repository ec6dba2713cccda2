//! Mesh-wide revocation of members (signed enrollment, `sipmesh_net::admission`).
//!
//! A revocation is signed by the mesh's enrollment key, so any member may store it and every
//! reader checks it: a member cannot shut another out with a revocation of its own making. The
//! admin API stores one at QUORUM in the `revocations` table and applies it at once; every node
//! reads the table every [`SYNC_EVERY`] (at QUORUM) and applies what it finds. A revoked peer is
//! disconnected for good and marked down by failure detection; its ring place stays until an
//! operator removes it (`sipmesh mesh remove`), as for any dead node.

use std::time::Duration;

use sipmesh_net::shutdown::Shutdown;
use sipmesh_net::{Consistency, Notice, PeerId, Revocation};
use sipmesh_storage::Mutation;
use tracing::{info, warn};

use super::Node;
use crate::error::{Error, Result};
use crate::tables::REVOCATIONS;

/// How often a node reads the whole table (notices bring revocations as they happen; the
/// table is for what they missed, and for a node that was down).
pub const SYNC_EVERY: Duration = Duration::from_secs(600);
/// The notice topic of revocations.
pub const TOPIC: u8 = 2;
/// The one partition of the `revocations` table.
const SCOPE: &[u8] = b"all";
/// Most revocations read per round (each is about 150 bytes).
const MAX_ROWS: usize = sipmesh_net::admission::MAX_REVOKED;

/// Store a revocation mesh-wide and apply it here. It must be signed by this mesh's
/// enrollment key.
pub(crate) async fn publish(node: &Node, revocation: &Revocation) -> Result<PeerId> {
    let issuer = node.mesh.enrollment_issuer().ok_or_else(|| {
        Error::Config(
            "this mesh has no signed enrollment (no --credential): nothing to revoke".into(),
        )
    })?;
    let peer = revocation.verified_peer(&issuer).ok_or_else(|| {
        Error::Config("the revocation is not signed by this mesh's enrollment key".into())
    })?;
    let ks = node.keyspace();
    let m = Mutation::new(REVOCATIONS, SCOPE.to_vec()).upsert(
        peer.to_string().as_bytes(),
        [("revocation", revocation.to_bytes())],
        ks.now(),
        None,
    );
    node.mesh.write(m, Consistency::Quorum).await?;
    node.mesh.announce(Notice {
        topic: TOPIC,
        key: peer.to_bytes(),
        version: ks.wall_ms(),
        payload: revocation.to_bytes(),
    });
    if !node
        .mesh
        .revoke(std::slice::from_ref(revocation))
        .is_empty()
    {
        info!(%peer, "member revoked");
    }
    Ok(peer)
}

/// Every revocation stored (verified or not; [`sipmesh_net::Mesh::revoke`] checks them).
pub(crate) async fn stored(node: &Node) -> Result<Vec<Revocation>> {
    let p = node
        .mesh
        .read(REVOCATIONS, SCOPE, Consistency::Quorum)
        .await?;
    Ok(p.rows
        .iter()
        .take(MAX_ROWS)
        .filter_map(|row| row.get("revocation"))
        .filter_map(|bytes| Revocation::from_bytes(bytes).ok())
        .collect())
}

/// Apply revocation notices as they arrive, and the table at start and every [`SYNC_EVERY`],
/// until shutdown (only under enrollment). Every revocation is checked against the mesh's
/// enrollment key, wherever it came from.
pub(crate) async fn sync(node: Node, mut shutdown: Shutdown) {
    if node.mesh.enrollment_issuer().is_none() {
        return;
    }
    let mut notices = node.mesh.notices();
    let mut ticks = tokio::time::interval(SYNC_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = ticks.tick() => {}
            notice = notices.recv() => {
                match notice {
                    Ok(n) if n.topic == TOPIC => {
                        if let Ok(r) = Revocation::from_bytes(&n.payload) {
                            for peer in node.mesh.revoke(&[r]) {
                                info!(%peer, "member revoked (notice)");
                                node.metrics.events.push(
                                    crate::events::Kind::Admin,
                                    format!("revoked member {peer}"),
                                );
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => ticks.reset_immediately(),
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
                continue;
            }
        }
        match stored(&node).await {
            Ok(all) => {
                for peer in node.mesh.revoke(&all) {
                    info!(%peer, "member revoked (from the revocations table)");
                    node.metrics
                        .events
                        .push(crate::events::Kind::Admin, format!("revoked member {peer}"));
                }
            }
            Err(e) => warn!(error = %e, "cannot read the revocations"),
        }
    }
}
