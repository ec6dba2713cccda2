//! Failover: when a member dies, the live member XOR-closest to its PeerId becomes the custodian
//! of its dialogs (claimed by a compare-and-set a majority of replicas decides, so two nodes never
//! both act).
//! Calls through the dead node keep working by themselves — every node skips a dead node's
//! Record-Route (see the proxy's Route processing) — and after a grace period the custodian
//! sends BYE to both parties of every dialog still on record and removes it (force-close).
//! Bindings owned by the dead node stop being used at once (its flows died with it).

use std::sync::Arc;
use std::time::Duration;

use sipmesh_net::placement::peer_position;
use sipmesh_net::shutdown::Shutdown;
use sipmesh_net::{MemberEvent, Mesh, PeerId};
use tracing::{debug, info, warn};

use crate::call::dialog::Dialog;
use crate::call::proxy::Proxy;
use crate::sip::request::RequestBuilder;

/// The CSeq of the force-close BYE toward the caller: above anything the callee's side used.
const CALLER_BYE_CSEQ: u32 = 0x7FFF_0000;
/// How far above the caller's CSeq the force-close BYE toward the callee goes.
const CALLEE_BYE_CSEQ_STEP: u32 = 1000;

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

/// Claim custody of `dead`'s dialogs for its last generation: a compare-and-set decided by a
/// majority of the claim key's replicas (`Mesh::claim`, Paxos), so when two members both think
/// they are the custodian (their views differ) exactly one acts. `false` also when no majority
/// answers: then nobody acts now, and the dialogs stay on record.
pub async fn claim(mesh: &Mesh, dead: &PeerId) -> bool {
    let generation = mesh
        .members()
        .iter()
        .find(|m| m.peer_id == *dead)
        .map_or(0, |m| m.generation);
    let key = format!("custody/{dead}/{generation}").into_bytes();
    let me = mesh.peer_id().to_bytes();
    match mesh.claim(&key, me.clone()).await {
        Ok(decided) => decided == me,
        Err(e) => {
            warn!(%dead, error = %e, "custody claim undecided");
            false
        }
    }
}

/// Close a dialog that lost a node: BYE to both parties at their contacts (client
/// transactions; answers are not needed), then remove it from the keyspace.
pub async fn force_close(proxy: &Proxy, d: &Dialog) {
    force_close_because(
        proxy,
        d,
        "SIP;cause=503;text=\"a proxy on the path failed\"",
    )
    .await
}

/// [`force_close`] with the `Reason` header value the BYEs carry (RFC 3326).
pub async fn force_close_because(proxy: &Proxy, d: &Dialog, reason: &str) {
    let legs = [
        // To the caller, as if from the callee.
        (
            &d.caller_contact,
            (&d.callee_uri, &d.callee_tag),
            (&d.caller_uri, &d.caller_tag),
            CALLER_BYE_CSEQ,
        ),
        // To the callee, as if from the caller.
        (
            &d.callee_contact,
            (&d.caller_uri, &d.caller_tag),
            (&d.callee_uri, &d.callee_tag),
            d.caller_cseq.saturating_add(CALLEE_BYE_CSEQ_STEP),
        ),
    ];
    for (target, from, to, cseq) in legs {
        let bye = RequestBuilder::new(
            "BYE",
            target,
            &format!("<{}>;tag={}", from.0, from.1),
            &format!("<{}>;tag={}", to.0, to.1),
            &d.call_id,
            cseq,
        )
        .header("Reason", reason);
        if !proxy.originate(target, bye).await {
            debug!(target = %target, "party unreachable for a force-close BYE");
        }
    }
    proxy.dialogs().remove(d).await;
}

/// Watch membership and act when a member dies: close this node's dialogs through it after
/// the grace period, and act as custodian of its dialogs when that falls to this node.
pub async fn watch(mesh: Mesh, proxy: Arc<Proxy>, grace: Duration, mut shutdown: Shutdown) {
    let mut events = mesh.events();
    loop {
        let dead = tokio::select! {
            _ = shutdown.wait() => return,
            ev = events.recv() => match ev {
                Ok(MemberEvent::Down(p)) | Ok(MemberEvent::Left(p)) => p,
                Ok(_) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => return,
            },
        };
        proxy.on_member_down(&dead);
        tokio::spawn(close_written_through(
            mesh.clone(),
            proxy.clone(),
            dead,
            grace,
        ));
        if custodian_of(&mesh, &dead) == Some(mesh.peer_id()) {
            tokio::spawn(take_custody(mesh.clone(), proxy.clone(), dead, grace));
        }
    }
}

/// Dialogs this node wrote whose path went through the dead node: closed after the grace
/// period, unless a party hung up first or the node came back.
async fn close_written_through(mesh: Mesh, proxy: Arc<Proxy>, dead: PeerId, grace: Duration) {
    tokio::time::sleep(grace).await;
    if mesh.is_up(&dead) {
        return;
    }
    for d in proxy.dialogs().written_through(&dead) {
        force_close(&proxy, &d).await;
    }
}

/// The dead node's own dialogs (it was their writer): claim custody, wait the grace period,
/// force-close what is still on record.
async fn take_custody(mesh: Mesh, proxy: Arc<Proxy>, dead: PeerId, grace: Duration) {
    if !claim(&mesh, &dead).await {
        return;
    }
    info!(%dead, grace_ms = grace.as_millis() as u64, "custodian of a dead node's dialogs");
    proxy.metrics().events.push(
        crate::events::Kind::Custody,
        format!("custodian of {dead}'s dialogs (closing them in {grace:?} unless it returns)"),
    );
    tokio::time::sleep(grace).await;
    if mesh.is_up(&dead) {
        return; // it came back
    }
    match proxy.dialogs().of_node(&dead).await {
        Ok(dialogs) => {
            debug!(%dead, dialogs = dialogs.len(), "dialogs in custody");
            for d in &dialogs {
                force_close(&proxy, d).await;
            }
            if !dialogs.is_empty() {
                info!(%dead, dialogs = dialogs.len(), "force-closed the dialogs of a dead node");
                proxy.metrics().events.push(
                    crate::events::Kind::Custody,
                    format!(
                        "custodian of {dead}: force-closed {} dialogs",
                        dialogs.len()
                    ),
                );
            }
        }
        Err(e) => warn!(%dead, error = %e, "cannot read a dead node's dialogs"),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::LocalMesh;

    async fn claims(mesh: &LocalMesh, i: usize, dead: PeerId) -> bool {
        mesh.node(i)
            .run(move |n| async move { claim(&n.mesh, &dead).await })
            .await
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_would_be_custodians_never_both_win() {
        let mesh = LocalMesh::builder().nodes(3).start().await.unwrap();
        mesh.wait_converged(Duration::from_secs(60)).await.unwrap();
        // One after the other (views that disagree on who is the custodian): the first wins,
        // the second learns it lost; the winner asking again still wins.
        let dead = PeerId::random();
        assert!(claims(&mesh, 0, dead).await);
        assert!(!claims(&mesh, 1, dead).await, "a second custodian won");
        assert!(!claims(&mesh, 2, dead).await, "a third custodian won");
        assert!(claims(&mesh, 0, dead).await);
        // All at once, many times: exactly one wins each.
        for _ in 0..10 {
            let dead = PeerId::random();
            let (a, b, c) = tokio::join!(
                claims(&mesh, 0, dead),
                claims(&mesh, 1, dead),
                claims(&mesh, 2, dead)
            );
            assert_eq!(
                [a, b, c].iter().filter(|w| **w).count(),
                1,
                "winners: {a} {b} {c}"
            );
        }
    }
}
