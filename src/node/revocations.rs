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
use sipmesh_net::{Consistency, PeerId, Revocation};
use sipmesh_storage::Mutation;
use tracing::{info, warn};

use super::Node;
use crate::error::{Error, Result};
use crate::tables::REVOCATIONS;

/// How often a node applies the table.
pub const SYNC_EVERY: Duration = Duration::from_secs(2);
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

/// Apply the table until shutdown (only under enrollment).
pub(crate) async fn sync(node: Node, mut shutdown: Shutdown) {
    if node.mesh.enrollment_issuer().is_none() {
        return;
    }
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tokio::time::sleep(SYNC_EVERY) => {}
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
