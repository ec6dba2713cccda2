//! Failover: when a member dies, the live member XOR-closest to its PeerId becomes the custodian
//! of its dialogs (claimed with a QUORUM write others can see, so two nodes never both act).
//! Calls through the dead node keep working by themselves — every node skips a dead node's
//! Record-Route (see `proxy::Proxy::route`) — and after a grace period the custodian sends BYE
//! to both parties of every dialog still on record and removes it (force-close).
//! Bindings owned by the dead node stop being used at once (its flows died with it).

use std::sync::Arc;
use std::time::Duration;

use sipmesh_net::placement::peer_position;
use sipmesh_net::{Consistency, MemberEvent, Mesh, PeerId};
use sipmesh_storage::Mutation;
use tracing::{debug, info, warn};

use crate::proxy::Proxy;
use crate::tables::MESH;

/// The live member (this node included) XOR-closest to `dead`.
pub fn custodian_of(mesh: &Mesh, dead: &PeerId) -> Option<PeerId> {
    let target = peer_position(dead);
    let snap = mesh.snapshot();
    snap.ring
        .iter()
        .filter(|m| m.up && m.peer != *dead)
        .min_by_key(|m| {
            let mut d = [0u8; 32];
            for (i, x) in d.iter_mut().enumerate() {
                *x = m.position[i] ^ target[i];
            }
            d
        })
        .map(|m| m.peer)
}

/// Claim custody of `dead`'s dialogs: write our claim, read it back at QUORUM.
async fn claim(mesh: &Mesh, dead: &PeerId) -> bool {
    let key = format!("custody/{dead}").into_bytes();
    let me = mesh.peer_id().to_string();
    let m = Mutation::new(MESH, key.clone()).upsert(
        b"",
        [("value", me.clone().into_bytes())],
        mesh.keyspace().now(),
        None,
    );
    if mesh.write(m, Consistency::Quorum).await.is_err() {
        return false;
    }
    match mesh.read(MESH, &key, Consistency::Quorum).await {
        Ok(p) => p.rows.first().and_then(|r| r.get("value")) == Some(me.as_bytes()),
        Err(_) => false,
    }
}

/// Watch membership and act as custodian when it falls to this node.
pub fn spawn(mesh: Mesh, proxy: Arc<Proxy>, grace: Duration) {
    let mut events = mesh.events();
    tokio::spawn(async move {
        loop {
            let dead = match events.recv().await {
                Ok(MemberEvent::Down(p)) | Ok(MemberEvent::Left(p)) => p,
                Ok(_) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => return,
            };
            // Dialogs this node wrote whose path went through the dead node: closed after
            // the grace period, unless a party hung up first.
            {
                let (mesh, proxy) = (mesh.clone(), proxy.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(grace).await;
                    if mesh.is_up(&dead) {
                        return;
                    }
                    for d in proxy.dialogs().written_through(&dead.to_string()) {
                        proxy.force_close(&d).await;
                    }
                });
            }
            if custodian_of(&mesh, &dead) != Some(mesh.peer_id()) {
                continue;
            }
            let (mesh, proxy) = (mesh.clone(), proxy.clone());
            tokio::spawn(async move {
                if !claim(&mesh, &dead).await {
                    return;
                }
                info!(%dead, grace_ms = grace.as_millis() as u64, "custodian of a dead node's dialogs");
                tokio::time::sleep(grace).await;
                if mesh.is_up(&dead) {
                    return; // it came back
                }
                match proxy.dialogs().of_node(&dead.to_string()).await {
                    Ok(dialogs) => {
                        debug!(%dead, dialogs = dialogs.len(), "dialogs in custody");
                        for d in &dialogs {
                            proxy.force_close(d).await;
                        }
                        if !dialogs.is_empty() {
                            info!(%dead, dialogs = dialogs.len(), "force-closed the dialogs of a dead node");
                        }
                    }
                    Err(e) => warn!(%dead, error = %e, "cannot read a dead node's dialogs"),
                }
            });
        }
    });
}
