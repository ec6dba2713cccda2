//! Routing around a missing connection. When a replica read or write cannot reach a member
//! directly (a dial refused or failing: a firewall, a NAT, a link cut between two sites), it
//! goes through another member that can: the sender picks up to [`MAX_RELAYS`] up members
//! nearest the target in the key space — as Kademlia routes toward a key, and because a node's
//! fellow replicas are its nearest members and keep their links to it open, they are the ones
//! most likely connected to it — and asks each in turn to pass the request on
//! ([`Request::Relay`], one hop). SWIM already tolerates such a cut (its indirect probes go
//! through others), so the target stays up and reads and writes keep their replicas. A member
//! SWIM reaches only through others ([`crate::membership::reach`]) is not dialled first: across
//! a cut that drops packets a dial would fail only at its timeout.
//!
//! A relay checks the sender's write rights before passing a write on, and the target checks
//! the relay's: a write needs both to hold them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
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
/// After a direct attempt failed to connect, requests to that member go straight to a relay
/// for this long.
const ROUTE_AROUND_FOR: Duration = Duration::from_secs(5);
/// Members remembered as unreachable directly, at most.
const MAX_UNREACHABLE: usize = 1_024;

/// The link replication sends through: direct, else relayed.
pub struct RelayLink {
    pub(crate) links: Arc<Links>,
    pub(crate) membership: Arc<Membership>,
    pub(crate) metrics: MeshMetrics,
    /// Members a direct attempt failed to reach, and when.
    pub(crate) unreachable: Arc<Mutex<HashMap<PeerId, Instant>>>,
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
        // Keep a copy only where the direct way may fail to connect: no link open yet.
        // An open link goes straight, unless SWIM reaches the member only through others (a
        // cut that drops packets leaves the link open until it times out).
        let cut = self.membership.reach().only_indirect(&peer);
        if !request.relayable() || (self.links.is_open(&peer) && !cut) {
            return self.links.request(peer, request, timeout);
        }
        let (links, membership, metrics, unreachable) = (
            self.links.clone(),
            self.membership.clone(),
            self.metrics.clone(),
            self.unreachable.clone(),
        );
        let copy = request.clone();
        Box::pin(async move {
            let started = Instant::now();
            // A dial across a cut that drops packets would only fail at the timeout: skip it
            // when one failed moments ago, or SWIM reaches the member only through others.
            let recently = membership.reach().only_indirect(&peer)
                || unreachable
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&peer)
                    .is_some_and(|at| at.elapsed() < ROUTE_AROUND_FOR);
            let direct = if recently {
                Err(Error::Unreachable {
                    peer: peer.to_string(),
                    reason: "unreachable moments ago, or only through others".into(),
                })
            } else {
                links.request(peer, request, timeout).await
            };
            let Err(Error::Unreachable { reason, .. }) = &direct else {
                return direct;
            };
            if !recently {
                let mut u = unreachable.lock().unwrap_or_else(|p| p.into_inner());
                if u.len() >= MAX_UNREACHABLE {
                    u.retain(|_, at| at.elapsed() < ROUTE_AROUND_FOR);
                }
                if u.len() < MAX_UNREACHABLE {
                    u.insert(peer, Instant::now());
                }
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
