//! Claims: a value decided once per key by a majority of the key's replicas — single-decree
//! Paxos, as Cassandra's lightweight transactions do it. A compare-and-set ("set `key` to
//! `value` unless something was decided already; tell me what was decided") that two nodes
//! cannot both win, whatever their views, clocks and timing.
//!
//! The cells of the keyspace cannot give this: they merge by last-write-wins, so replicas
//! converge on the newest claim, not on the one a majority granted first, and a claimant that
//! writes and reads back can lose to a later writer after it read. Here each replica keeps a
//! durable promise and accepted proposal per key ([`sipmesh_storage::paxos`]), never merged.
//!
//! The proposer: a ballot from its clock and its id; phase 1 asks every up replica of the key to
//! promise it and collects a majority of the replication factor (so the replicas that answer
//! overlap any other majority); if any promise carries an accepted proposal, the one with the
//! highest ballot is proposed again instead of our value (it may have been decided); phase 2
//! asks the replicas to accept. A majority accepting decides the value. A refusal (a higher
//! ballot seen) moves the clock past that ballot and retries after a random pause, at most
//! [`MAX_ROUNDS`] times.
//!
//! What is decided is as stable as the replica set of the key: the ring changes only by
//! explicit decisions (join, leave, `mesh remove`), and a claim made across such a change could
//! meet a different majority. Claims are for rare events (a member's death), so this is noted,
//! not solved.

use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use libp2p::PeerId;
use rand::Rng;
use sipmesh_storage::{Ballot, Keyspace, Promise};
use tracing::{debug, Instrument};

use crate::error::{Error, Result};
use crate::link::Link;
use crate::protocol::{Request, Response};

/// Rounds a proposer tries before giving up (each after a random pause).
pub const MAX_ROUNDS: usize = 8;
/// The longest random pause between rounds.
const MAX_PAUSE_MS: u64 = 200;

/// Answer a peer's `Prepare` or `Propose` from this node's acceptor (blocking: it flushes).
pub(crate) fn serve(keyspace: &Keyspace, request: Request) -> Response {
    let answer = match request {
        Request::Prepare { key, ballot } => keyspace
            .acceptor()
            .prepare(&key, &ballot)
            .map(Response::Promise),
        Request::Propose { key, ballot, value } => keyspace
            .acceptor()
            .accept(&key, &ballot, &value)
            .map(|(accepted, promised)| Response::Accepted { accepted, promised }),
        other => return Response::Error(format!("{} is not a claim request", other.kind())),
    };
    answer.unwrap_or_else(|e| Response::Error(e.to_string()))
}

/// What a proposer needs.
pub(crate) struct Proposer<'a> {
    pub local: PeerId,
    pub keyspace: &'a Keyspace,
    pub link: &'a Arc<dyn Link>,
    pub timeout: Duration,
}

/// One replica's answer to either phase: granted, and the highest ballot it has promised
/// (and for phase 1 what it accepted).
#[derive(Clone)]
struct Vote {
    granted: bool,
    promised: Ballot,
    accepted: Option<(Ballot, Vec<u8>)>,
}

impl Proposer<'_> {
    async fn ask(&self, peer: PeerId, request: Request) -> Result<Vote> {
        let response = if peer == self.local {
            let ks = self.keyspace.clone();
            tokio::task::spawn_blocking(move || serve(&ks, request))
                .await
                .map_err(|e| Error::Protocol(e.to_string()))?
        } else {
            self.link.request(peer, request, self.timeout).await?
        };
        match response {
            Response::Promise(Promise {
                granted,
                promised,
                accepted,
            }) => Ok(Vote {
                granted,
                promised,
                accepted,
            }),
            Response::Accepted { accepted, promised } => Ok(Vote {
                granted: accepted,
                promised,
                accepted: None,
            }),
            Response::Error(reason) => Err(Error::Remote {
                peer: peer.to_string(),
                reason,
            }),
            other => Err(Error::Protocol(format!(
                "unexpected answer to a claim: {other:?}"
            ))),
        }
    }

    /// Ask every replica at once; stop once `needed` granted or once they no longer can.
    /// Returns the granting votes, and the highest ballot any refusal named.
    async fn round(
        &self,
        replicas: &[PeerId],
        needed: usize,
        request: &Request,
    ) -> (Vec<Vote>, Option<Ballot>) {
        let mut pending: FuturesUnordered<_> = replicas
            .iter()
            .map(|&peer| {
                let request = request.clone();
                async move { (peer, self.ask(peer, request).await) }
            })
            .collect();
        let (mut granted, mut higher, mut left) = (Vec::new(), None::<Ballot>, replicas.len());
        while let Some((peer, answer)) = pending.next().await {
            left -= 1;
            match answer {
                Ok(v) if v.granted => granted.push(v),
                Ok(v) => {
                    if higher.as_ref().is_none_or(|h| v.promised > *h) {
                        higher = Some(v.promised);
                    }
                }
                Err(e) => debug!(%peer, error = %e, "no vote from a replica"),
            }
            if granted.len() >= needed || granted.len() + left < needed {
                break;
            }
        }
        (granted, higher)
    }

    /// Decide `key`: `value` unless another value was (or may have been) decided already.
    /// `replicas` are the key's up replicas; `needed` a majority of the replication factor.
    pub(crate) async fn decide(
        &self,
        key: &[u8],
        value: Vec<u8>,
        replicas: &[PeerId],
        needed: usize,
    ) -> Result<Vec<u8>> {
        let span = tracing::debug_span!("claim", key = %String::from_utf8_lossy(key));
        async move {
            let mut last = Error::Timeout {
                acked: 0,
                needed,
                after: self.timeout,
            };
            for round in 0..MAX_ROUNDS {
                if round > 0 {
                    let pause = rand::thread_rng().gen_range(1..=MAX_PAUSE_MS);
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
                let ballot = Ballot {
                    time: self.keyspace.now(),
                    proposer: self.local.to_bytes(),
                };
                let prepare = Request::Prepare {
                    key: key.to_vec(),
                    ballot: ballot.clone(),
                };
                let (promises, higher) = self.round(replicas, needed, &prepare).await;
                if promises.len() < needed {
                    last = self.refused(promises.len(), needed, higher);
                    continue;
                }
                // The highest accepted proposal among the promises may have been decided: it
                // is the only value this ballot may propose.
                let chosen = promises
                    .into_iter()
                    .filter_map(|v| v.accepted)
                    .max_by(|a, b| a.0.cmp(&b.0))
                    .map_or_else(|| value.clone(), |(_, v)| v);
                let propose = Request::Propose {
                    key: key.to_vec(),
                    ballot,
                    value: chosen.clone(),
                };
                let (accepts, higher) = self.round(replicas, needed, &propose).await;
                if accepts.len() >= needed {
                    debug!(round, "claim decided");
                    return Ok(chosen);
                }
                last = self.refused(accepts.len(), needed, higher);
            }
            Err(last)
        }
        .instrument(span)
        .await
    }

    /// A round that fell short: follow a higher ballot's clock, and say why.
    fn refused(&self, got: usize, needed: usize, higher: Option<Ballot>) -> Error {
        if let Some(b) = higher {
            self.keyspace.observe(b.time);
        }
        Error::Timeout {
            acked: got,
            needed,
            after: self.timeout,
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::error::Error;
    use crate::replication::tests::cluster;

    #[tokio::test]
    async fn concurrent_claims_decide_one_value_that_every_claimant_sees() {
        let (_net, nodes) = cluster(3);
        for k in 0..20 {
            let key = format!("custody/k{k}").into_bytes();
            let claims = nodes.iter().map(|(p, r)| {
                let (key, mine) = (key.clone(), p.to_bytes());
                async move { r.claim(&key, mine).await }
            });
            let decided: Vec<Vec<u8>> = futures::future::join_all(claims)
                .await
                .into_iter()
                .map(|r| r.expect("a claim with every replica up decides"))
                .collect();
            assert!(
                decided.windows(2).all(|w| w[0] == w[1]),
                "claimants saw different values for key {k}"
            );
            assert!(
                nodes.iter().any(|(p, _)| p.to_bytes() == decided[0]),
                "the value decided is one that was proposed"
            );
        }
    }

    #[tokio::test]
    async fn a_decided_claim_stays_decided_for_later_claimants() {
        let (net, nodes) = cluster(3);
        let first = nodes[0].1.claim(b"custody/x", b"first".to_vec()).await;
        assert_eq!(first.unwrap(), b"first");
        // A later claimant gets the first value, also with a different replica cut off
        // (any majority overlaps the one that decided).
        for (i, (cut, _)) in nodes.iter().enumerate() {
            net.cut(*cut);
            let claimant = &nodes[(i + 1) % 3].1;
            let r = claimant.claim(b"custody/x", b"later".to_vec()).await;
            assert_eq!(r.unwrap(), b"first", "with {cut} cut off");
            net.heal(*cut);
        }
    }

    #[tokio::test]
    async fn without_a_majority_nothing_is_decided() {
        let (net, nodes) = cluster(3);
        net.cut(nodes[1].0);
        net.cut(nodes[2].0);
        let err = nodes[0]
            .1
            .claim(b"custody/y", b"alone".to_vec())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Timeout { needed: 2, .. }), "{err}");
        net.heal(nodes[1].0);
        net.heal(nodes[2].0);
        // The lone node's own acceptance did not decide anything: another value can win.
        let r = nodes[1].1.claim(b"custody/y", b"healed".to_vec()).await;
        // (the lone node got no majority of promises, so it never proposed).
        let v = r.unwrap();
        assert_eq!(v, b"healed");
        // And from now on it is fixed.
        assert_eq!(
            nodes[2]
                .1
                .claim(b"custody/y", b"third".to_vec())
                .await
                .unwrap(),
            v
        );
    }
}
