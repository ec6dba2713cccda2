//! Routing around a missing connection. When a replica read or write cannot reach a member
//! directly (a dial refused or failing: a firewall, a NAT, a link cut between two sites), it
//! goes through another member that can: the sender picks up to [`MAX_RELAYS`] up members
//! nearest the target in the key space — as Kademlia routes toward a key, and because a node's
//! fellow replicas are its nearest members and keep their links to it open, they are the ones
//! most likely connected to it — and asks each in turn to pass the request on
//! ([`Request::Relay`], one hop). SWIM already tolerates such a cut (its indirect probes go
//! through others), so the target stays up and reads and writes keep their replicas. A failed
//! dial marks the member as reached only through others ([`crate::membership::reach`], as
//! SWIM's failed probes and the node's unanswered pings do), and a marked member is not dialled
//! first: across a cut that drops packets a dial would fail only at its timeout. The mark goes
//! when anything arrives from the member directly.
//!
//! A relay checks the sender's write rights before passing a write on, and the target checks
//! the relay's: a write needs both to hold them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use libp2p::PeerId;
use tracing::debug;

use crate::error::{Error, Result};
use crate::link::{Link, Links};
use crate::membership::Membership;
use crate::placement::{distance, peer_position};
use crate::protocol::{Request, Response};
use crate::stats::MeshMetrics;

/// Members asked to relay one request, at most.
pub const MAX_RELAYS: usize = 2;

/// The link replication sends through: direct, else relayed.
pub struct RelayLink {
    pub(crate) links: Arc<Links>,
    pub(crate) membership: Arc<Membership>,
    pub(crate) metrics: MeshMetrics,
}

/// Up members other than `local` and `target` that `local` reaches directly, nearest `target`
/// first, at most [`MAX_RELAYS`].
pub(crate) fn relays_for(membership: &Membership, local: PeerId, target: PeerId) -> Vec<PeerId> {
    let at = peer_position(&target);
    let snapshot = membership.snapshot();
    let reach = membership.reach();
    let mut up: Vec<([u8; 32], PeerId)> = snapshot
        .ring
        .iter()
        .filter(|m| m.up && m.peer != local && m.peer != target && !reach.only_indirect(&m.peer))
        .map(|m| (distance(&m.position, &at), m.peer))
        .collect();
    up.sort_unstable_by_key(|(d, _)| *d);
    up.into_iter().take(MAX_RELAYS).map(|(_, p)| p).collect()
}

impl Link for RelayLink {
    fn request(
        &self,
        peer: PeerId,
        request: Request,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Response>> {
        // Keep a copy only where the direct way may fail to connect: no link open yet, or a
        // member reached only through others (a cut that drops packets leaves a link open
        // until it times out).
        let around = self.membership.reach().only_indirect(&peer);
        if !request.relayable() || (self.links.is_open(&peer) && !around) {
            return self.links.request(peer, request, timeout);
        }
        let (links, membership, metrics) = (
            self.links.clone(),
            self.membership.clone(),
            self.metrics.clone(),
        );
        let copy = request.clone();
        Box::pin(async move {
            let started = Instant::now();
            let direct = if around {
                Err(Error::Unreachable {
                    peer: peer.to_string(),
                    reason: "reached only through others".into(),
                })
            } else {
                links.request(peer, request, timeout).await
            };
            let Err(Error::Unreachable { reason, .. }) = &direct else {
                return direct;
            };
            if !around {
                membership.reach().unreachable(peer);
            }
            let local = membership.local();
            for relay in relays_for(&membership, local, peer) {
                let left = timeout.saturating_sub(started.elapsed());
                if left.is_zero() {
                    break;
                }
                debug!(%peer, %relay, why = %reason, "relaying a request");
                let relayed = Request::Relay {
                    to: peer.to_bytes(),
                    request: Box::new(copy.clone()),
                };
                match links.request(relay, relayed, left).await {
                    Ok(r) => {
                        metrics.relayed(true);
                        return Ok(r);
                    }
                    Err(Error::Remote { reason, .. }) if !reason.starts_with(RELAY_FAILED) => {
                        // The target's own answer (a refusal): final.
                        metrics.relayed(true);
                        return Err(Error::Remote {
                            peer: peer.to_string(),
                            reason,
                        });
                    }
                    Err(e) => debug!(%peer, %relay, error = %e, "relay failed"),
                }
            }
            metrics.relayed(false);
            direct
        })
    }

    fn send(&self, peer: PeerId, request: Request) -> BoxFuture<'static, Result<()>> {
        self.links.send(peer, request)
    }
}

/// How a relay's own failure (not the target's answer) starts.
pub(crate) const RELAY_FAILED: &str = "relay: ";
