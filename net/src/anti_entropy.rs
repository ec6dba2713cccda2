//! Anti-entropy and handoff.
//!
//! Anti-entropy: periodically, for each up peer, this node lists the Merkle leaves both are
//! replicas of, asks for the peer's hashes of those leaves, and for the leaves that differ pulls
//! the peer's data and pushes its own (each side keeps only partitions it is a replica of). This
//! is also how a joining node receives its data, and how a node that was down catches up.
//!
//! Handoff: a node holding a partition it is no longer a replica of (the ring changed) pushes it
//! to every current replica and drops its copy once all of them have acknowledged it.

use std::sync::Arc;
use std::time::Duration;

use libp2p::PeerId;
use sipmesh_storage::merkle::{leaf_tokens, MERKLE_LEAVES};
use sipmesh_storage::{Keyspace, Mutation};
use tracing::{debug, info, warn};

use crate::error::{Error, Result};
use crate::link::Link;
use crate::membership::Membership;
use crate::protocol::{Request, Response, CHUNK_BYTES};
use crate::replication::Replication;

/// Pages fetched from one peer per round (bounds one round's work: 64 × 1 MiB).
const MAX_PAGES_PER_ROUND: usize = 64;
/// Partitions handed off per round.
const HANDOFF_PER_ROUND: usize = 2_000;
/// Differences found by anti-entropy are confirmed after this long (writes in flight settle).
const CONFIRM_AFTER: Duration = Duration::from_millis(1500);

/// What one anti-entropy exchange did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Exchange {
    /// Leaves compared.
    pub compared: usize,
    /// Leaves that differed.
    pub differing: usize,
    /// Mutations pulled from the peer.
    pub pulled: usize,
    /// Mutations pushed to the peer.
    pub pushed: usize,
}

/// Anti-entropy and handoff of one node.
#[derive(Clone)]
pub struct AntiEntropy {
    local: PeerId,
    keyspace: Keyspace,
    membership: Arc<Membership>,
    link: Arc<dyn Link>,
    replication: Replication,
    timeout: Duration,
}

fn approx_size(m: &Mutation) -> usize {
    m.partition_key.len()
        + m.entries
            .iter()
            .map(|(_, c)| {
                48 + match &c.value {
                    sipmesh_storage::CellValue::Live { value, .. } => value.len(),
                    sipmesh_storage::CellValue::Tombstone { .. } => 0,
                }
            })
            .sum::<usize>()
}

/// The data of `leaves[from..]`, cut after about [`CHUNK_BYTES`]; with where to resume.
pub fn chunk(
    keyspace: &Keyspace,
    leaves: &[u32],
    from: usize,
) -> Result<(Vec<Mutation>, Option<u32>)> {
    let mut out = Vec::new();
    let mut size = 0;
    for (i, &leaf) in leaves.iter().enumerate().skip(from) {
        if leaf as usize >= MERKLE_LEAVES {
            return Err(Error::Protocol(format!("leaf {leaf} out of range")));
        }
        let (first, last) = leaf_tokens(leaf as usize);
        for m in keyspace.mutations_in(first, last)? {
            size += approx_size(&m);
            out.push(m);
        }
        if size >= CHUNK_BYTES && i + 1 < leaves.len() {
            return Ok((out, Some(i as u32 + 1)));
        }
    }
    Ok((out, None))
}

impl AntiEntropy {
    /// Anti-entropy of node `local`.
    pub fn new(
        local: PeerId,
        keyspace: Keyspace,
        membership: Arc<Membership>,
        link: Arc<dyn Link>,
        replication: Replication,
        timeout: Duration,
    ) -> Self {
        AntiEntropy {
            local,
            keyspace,
            membership,
            link,
            replication,
            timeout,
        }
    }

    /// Leaves this node and `peer` are both replicas of (and leaves whose replicas vary inside
    /// the leaf, which are always compared).
    fn shared_leaves(&self, peer: &PeerId) -> Vec<u32> {
        let snap = self.membership.snapshot();
        (0..MERKLE_LEAVES)
            .filter(|&leaf| match snap.leaf_replicas(leaf) {
                Some(reps) => reps.contains(&self.local) && reps.contains(peer),
                None => true,
            })
            .map(|l| l as u32)
            .collect()
    }

    /// One exchange with every up peer (only when this node sees a majority).
    pub async fn round(&self) -> Exchange {
        let snap = self.membership.snapshot();
        let mut total = Exchange::default();
        if !snap.has_majority() {
            return total;
        }
        for m in snap.ring.iter().filter(|m| m.up && m.peer != self.local) {
            match self.exchange(m.peer).await {
                Ok(x) => {
                    total.compared += x.compared;
                    total.differing += x.differing;
                    total.pulled += x.pulled;
                    total.pushed += x.pushed;
                }
                Err(e) => debug!(peer = %m.peer, error = %e, "anti-entropy exchange failed"),
            }
        }
        if total.pulled + total.pushed > 0 {
            info!(
                differing = total.differing,
                pulled = total.pulled,
                pushed = total.pushed,
                "anti-entropy repaired differences"
            );
        }
        total
    }

    /// A peer's hashes of these leaves.
    async fn peer_leaves(&self, peer: PeerId, leaves: &[u32]) -> Result<Vec<u64>> {
        match self
            .link
            .request(peer, Request::Leaves(leaves.to_vec()), self.timeout)
            .await?
        {
            Response::Leaves(h) if h.len() == leaves.len() => Ok(h),
            other => Err(Error::Protocol(format!(
                "unexpected answer to leaves: {other:?}"
            ))),
        }
    }

    /// Compare and repair the leaves shared with `peer`.
    pub async fn exchange(&self, peer: PeerId) -> Result<Exchange> {
        let span = tracing::debug_span!("anti_entropy", %peer);
        let _enter = span.enter();
        let shared = self.shared_leaves(&peer);
        let mut x = Exchange {
            compared: shared.len(),
            ..Exchange::default()
        };
        if shared.is_empty() {
            return Ok(x);
        }
        let theirs = self.peer_leaves(peer, &shared).await?;
        let merkle = self.keyspace.merkle();
        let differing: Vec<u32> = shared
            .iter()
            .zip(&theirs)
            .filter(|(leaf, h)| merkle.leaf(**leaf as usize) != **h)
            .map(|(leaf, _)| *leaf)
            .collect();
        if differing.is_empty() {
            return Ok(x);
        }
        // Under load many leaves differ only because writes are in flight. Look again after
        // a moment and repair only the leaves that still differ.
        tokio::time::sleep(CONFIRM_AFTER).await;
        let again = self.peer_leaves(peer, &differing).await?;
        let differing: Vec<u32> = differing
            .iter()
            .zip(&again)
            .filter(|(leaf, h)| merkle.leaf(**leaf as usize) != **h)
            .map(|(leaf, _)| *leaf)
            .collect();
        x.differing = differing.len();
        if differing.is_empty() {
            return Ok(x);
        }
        // Pull.
        let mut from = 0u32;
        for _ in 0..MAX_PAGES_PER_ROUND {
            let request = Request::Fetch {
                leaves: differing.clone(),
                from,
            };
            match self.link.request(peer, request, self.timeout * 4).await? {
                Response::Chunk { mutations, next } => {
                    x.pulled += mutations.len();
                    if let Response::Error(e) = self.replication.handle_push(&mutations, true) {
                        return Err(Error::Protocol(e));
                    }
                    match next {
                        Some(n) if n > from => from = n,
                        _ => break,
                    }
                }
                other => {
                    return Err(Error::Protocol(format!(
                        "unexpected answer to fetch: {other:?}"
                    )))
                }
            }
        }
        // Push.
        let mut from = 0usize;
        for _ in 0..MAX_PAGES_PER_ROUND {
            let (mutations, next) = chunk(&self.keyspace, &differing, from)?;
            x.pushed += mutations.len();
            if !mutations.is_empty() {
                let request = Request::Push {
                    mutations,
                    owned_only: true,
                };
                self.link.request(peer, request, self.timeout * 4).await?;
            }
            match next {
                Some(n) => from = n as usize,
                None => break,
            }
        }
        Ok(x)
    }

    /// The version of the ring this node sees.
    pub fn ring_version(&self) -> u64 {
        self.membership.snapshot().version
    }

    /// Graceful leave: push every partition this node holds to the replicas it will have once
    /// this node is gone, and wait for their acknowledgements. Returns (partitions, failures).
    pub async fn handover(&self) -> (usize, usize) {
        use futures::stream::{self, StreamExt};
        let mut snap = (*self.membership.snapshot()).clone();
        snap.ring.retain(|m| m.peer != self.local);
        let partitions = match self.keyspace.partitions() {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %e, "cannot list partitions for handover");
                return (0, 0);
            }
        };
        let total = partitions.len();
        let snap = &snap;
        let failures: usize = stream::iter(partitions)
            .map(|(_, table, pk)| async move {
                let entries = match self.keyspace.partition_entries(table, &pk) {
                    Ok(e) => e,
                    Err(_) => return 1,
                };
                let m = Mutation {
                    table,
                    partition_key: pk.clone(),
                    entries,
                };
                let mut failed = 0;
                for r in snap.replicas(&pk).iter().filter(|r| r.up) {
                    if self
                        .link
                        .request(r.peer, Request::Write(m.clone()), self.timeout)
                        .await
                        .is_err()
                    {
                        failed = 1;
                    }
                }
                failed
            })
            .buffer_unordered(64)
            .fold(0, |a, b| async move { a + b })
            .await;
        info!(
            partitions = total,
            failures, "handed over replicas before leaving"
        );
        (total, failures)
    }

    /// Hand off partitions this node is no longer a replica of. Only while every ring member is
    /// up and this node sees a majority: a partition is dropped only after every current replica
    /// acknowledged it. Returns how many partitions were handed off.
    pub async fn handoff(&self) -> usize {
        let snap = self.membership.snapshot();
        if !snap.has_majority() || snap.ring.iter().any(|m| !m.up) {
            return 0;
        }
        // A full scan of the keyspace, off the async workers.
        let ks = self.keyspace.clone();
        let listed = tokio::task::spawn_blocking(move || ks.partitions()).await;
        let partitions = match listed
            .map_err(|e| sipmesh_storage::Error::Engine(e.to_string()))
            .and_then(|r| r)
        {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %e, "cannot list partitions for handoff");
                return 0;
            }
        };
        let mut handed = 0;
        for (_, table, pk) in partitions {
            if handed >= HANDOFF_PER_ROUND {
                break;
            }
            let replicas: Vec<PeerId> = snap.replicas(&pk).iter().map(|m| m.peer).collect();
            if replicas.contains(&self.local) {
                continue;
            }
            let entries = match self.keyspace.partition_entries(table, &pk) {
                Ok(e) => e,
                Err(e) => {
                    warn!(error = %e, "cannot read a partition for handoff");
                    continue;
                }
            };
            let m = Mutation {
                table,
                partition_key: pk.clone(),
                entries,
            };
            let mut all = true;
            for peer in &replicas {
                if self
                    .link
                    .request(*peer, Request::Write(m.clone()), self.timeout)
                    .await
                    .is_err()
                {
                    all = false;
                    break;
                }
            }
            if all {
                if let Err(e) = self.keyspace.drop_partition_locally(table, &pk) {
                    warn!(error = %e, "cannot drop a handed-off partition");
                } else {
                    handed += 1;
                }
            }
        }
        if handed > 0 {
            info!(
                partitions = handed,
                "handed off partitions this node no longer replicates"
            );
        }
        handed
    }
}
