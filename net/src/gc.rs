//! Tombstone collection between replicas (Garage's two-phase GC): a tombstone past its grace
//! period is purged only when every replica of its partition holds it (phase 1, `Held`), and
//! then on all of them (phase 2, `Purge`), so no copy is left to bring it, or what it deleted,
//! back. Runs only while every ring member is up and nothing is left to hand off: a down
//! member may still hold an old value, and an old owner may not have the tombstone yet. A replica that misses phase 2 keeps its tombstone and runs the protocol
//! itself later (its tombstone comes back to the others by anti-entropy meanwhile, which is
//! harmless).

use std::sync::Arc;
use std::time::Duration;

use libp2p::PeerId;
use sipmesh_storage::{GcCandidate, Keyspace};
use tracing::{debug, info};

use crate::link::Link;
use crate::membership::Membership;
use crate::protocol::{Request, Response};
use crate::stats::MeshMetrics;

/// Partitions whose tombstones one pass tries to collect.
pub(crate) const MAX_PARTITIONS_PER_PASS: usize = 2_000;

/// Answer a peer's `Held` or `Purge` (on the blocking pool: it reads and rewrites the store).
pub(crate) fn serve(keyspace: &Keyspace, request: Request, metrics: &MeshMetrics) -> Response {
    let answer = match request {
        Request::Held {
            table,
            partition_key,
            entries,
        } => keyspace
            .holds(table, &partition_key, &entries)
            .map(Response::Held),
        Request::Purge {
            table,
            partition_key,
            entries,
        } => keyspace
            .purge_tombstones(table, &partition_key, &entries)
            .map(|n| {
                metrics.tombstones_purged(n);
                Response::Ack
            }),
        other => return Response::Error(format!("{} is not a GC request", other.kind())),
    };
    answer.unwrap_or_else(|e| Response::Error(e.to_string()))
}

/// Run the protocol for `candidates` (this node's compaction found them). Returns how many
/// tombstones this node purged itself (the other replicas count theirs).
pub(crate) async fn collect(
    local: PeerId,
    keyspace: &Keyspace,
    membership: &Arc<Membership>,
    link: &Arc<dyn Link>,
    candidates: Vec<GcCandidate>,
    timeout: Duration,
) -> usize {
    let snap = membership.snapshot();
    if !snap.has_majority() || snap.ring.iter().any(|m| !m.up) {
        return 0;
    }
    let mut purged = 0;
    for c in candidates.into_iter().take(MAX_PARTITIONS_PER_PASS) {
        let replicas: Vec<PeerId> = snap
            .write_replicas(&c.partition_key)
            .iter()
            .map(|m| m.peer)
            .collect();
        // Partitions this node no longer replicates are handoff's.
        if !replicas.contains(&local) {
            continue;
        }
        let others: Vec<PeerId> = replicas.into_iter().filter(|p| *p != local).collect();
        let mut held = vec![true; c.entries.len()];
        let mut answered = true;
        for peer in &others {
            let request = Request::Held {
                table: c.table,
                partition_key: c.partition_key.clone(),
                entries: c.entries.clone(),
            };
            match link.request(*peer, request, timeout).await {
                Ok(Response::Held(theirs)) if theirs.len() == held.len() => {
                    for (mine, theirs) in held.iter_mut().zip(theirs) {
                        *mine &= theirs;
                    }
                }
                other => {
                    debug!(%peer, ?other, "no answer on held tombstones; kept");
                    answered = false;
                    break;
                }
            }
        }
        if !answered {
            continue;
        }
        let confirmed: Vec<_> = c
            .entries
            .into_iter()
            .zip(held)
            .filter_map(|(e, h)| h.then_some(e))
            .collect();
        if confirmed.is_empty() {
            continue;
        }
        for peer in &others {
            let request = Request::Purge {
                table: c.table,
                partition_key: c.partition_key.clone(),
                entries: confirmed.clone(),
            };
            if let Err(e) = link.request(*peer, request, timeout).await {
                debug!(%peer, error = %e, "a replica missed a purge; it will collect on its own");
            }
        }
        let ks = keyspace.clone();
        let (table, pk) = (c.table, c.partition_key);
        match tokio::task::spawn_blocking(move || ks.purge_tombstones(table, &pk, &confirmed)).await
        {
            Ok(Ok(n)) => purged += n,
            Ok(Err(e)) => debug!(error = %e, "purge failed"),
            Err(e) => debug!(error = %e, "purge task failed"),
        }
    }
    if purged > 0 {
        info!(tombstones = purged, "tombstones collected on every replica");
    }
    purged
}
