//! Replication: any node coordinates reads and writes of any partition.
//!
//! Writes go to every up replica and are acknowledged once the consistency level's count of
//! replicas applied them; replicas that are down, fail or time out get a hint (delivered when
//! they are up again). Reads ask every up replica, return the merged newest cells once enough
//! answered, and repair the replicas that answered with stale or missing cells (read repair).
//!
//! Fail fast: with fewer up replicas than the level needs — or when this node does not see a
//! majority of the ring, for QUORUM and ALL — the request is refused with `Unavailable` before
//! anything is sent. Replicas that do not answer within the request timeout give `Timeout`,
//! which says how many acknowledged.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use libp2p::PeerId;
use sipmesh_storage::{Cell, EntryKey, Keyspace, Mutation, Partition, TableId};
use tokio::sync::oneshot;
use tracing::{debug, warn, Instrument};

use crate::error::{Error, Result};
use crate::link::Link;
use crate::membership::Membership;
use crate::protocol::{Request, Response};

/// Hints offered to one peer per delivery round, in batches of this size.
const HINT_BATCH: usize = 128;
/// Batches per peer per round (bounds one round's work).
const HINT_BATCHES_PER_ROUND: usize = 16;

/// How many replicas must answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Consistency {
    /// One replica.
    One,
    /// A majority of the replicas.
    Quorum,
    /// Every replica.
    All,
}

impl Consistency {
    /// Acknowledgements needed with `rf` replicas.
    pub fn required(self, rf: usize) -> usize {
        match self {
            Consistency::One => 1,
            Consistency::Quorum => rf / 2 + 1,
            Consistency::All => rf,
        }
    }
}

impl std::str::FromStr for Consistency {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "one" => Ok(Consistency::One),
            "quorum" => Ok(Consistency::Quorum),
            "all" => Ok(Consistency::All),
            other => Err(format!(
                "unknown consistency level {other:?} (one, quorum, all)"
            )),
        }
    }
}

/// The coordinator and replica sides of replication.
#[derive(Clone)]
pub struct Replication {
    local: PeerId,
    keyspace: Keyspace,
    membership: Arc<Membership>,
    link: Arc<dyn Link>,
    timeout: Duration,
}

type Merged = BTreeMap<EntryKey, Cell>;

fn merge_into(merged: &mut Merged, entries: &[(EntryKey, Cell)]) {
    for (k, c) in entries {
        match merged.get_mut(k) {
            Some(old) => {
                if old.is_superseded_by(c) {
                    *old = c.clone();
                }
            }
            None => {
                merged.insert(k.clone(), c.clone());
            }
        }
    }
}

/// The cells of `merged` that `have` lacks or holds an older version of.
fn repair_diff(merged: &Merged, have: &[(EntryKey, Cell)]) -> Vec<(EntryKey, Cell)> {
    let have: BTreeMap<&EntryKey, &Cell> = have.iter().map(|(k, c)| (k, c)).collect();
    merged
        .iter()
        .filter(|(k, c)| have.get(k).is_none_or(|h| h.is_superseded_by(c)))
        .map(|(k, c)| (k.clone(), c.clone()))
        .collect()
}

impl Replication {
    /// The replication logic of node `local`.
    pub fn new(
        local: PeerId,
        keyspace: Keyspace,
        membership: Arc<Membership>,
        link: Arc<dyn Link>,
        timeout: Duration,
    ) -> Self {
        Replication {
            local,
            keyspace,
            membership,
            link,
            timeout,
        }
    }

    /// Up replicas of a partition, the count needed, and the down replicas (for hints).
    fn plan(
        &self,
        partition_key: &[u8],
        cl: Consistency,
    ) -> Result<(Vec<PeerId>, usize, Vec<PeerId>)> {
        let snap = self.membership.snapshot();
        let needed = cl.required(snap.effective_rf());
        let replicas = snap.replicas(partition_key);
        let up: Vec<PeerId> = replicas.iter().filter(|m| m.up).map(|m| m.peer).collect();
        let down: Vec<PeerId> = replicas.iter().filter(|m| !m.up).map(|m| m.peer).collect();
        let majority = snap.has_majority();
        if up.len() < needed || (cl != Consistency::One && !majority) {
            return Err(Error::Unavailable {
                needed,
                alive: up.len(),
                majority,
            });
        }
        Ok((up, needed, down))
    }

    fn hint(&self, peer: &PeerId, m: &Mutation) {
        if let Err(e) = self.keyspace.hints().append(&peer.to_bytes(), m) {
            warn!(%peer, error = %e, "could not store a hint");
        }
    }

    /// Write a mutation at consistency `cl`.
    pub async fn write(&self, m: Mutation, cl: Consistency) -> Result<()> {
        self.write_many(vec![m], cl).await
    }

    /// Write several mutations at consistency `cl`. When they share their replicas (as a
    /// dialog and its index rows do in a small mesh) they travel in one request per replica;
    /// otherwise each is written on its own. Succeeds when every one reached `cl`.
    pub async fn write_many(&self, ms: Vec<Mutation>, cl: Consistency) -> Result<()> {
        if ms.is_empty() {
            return Ok(());
        }
        let plans = ms
            .iter()
            .map(|m| self.plan(&m.partition_key, cl))
            .collect::<Result<Vec<_>>>()?;
        let same =
            |a: &[PeerId], b: &[PeerId]| a.len() == b.len() && a.iter().all(|p| b.contains(p));
        if !plans
            .windows(2)
            .all(|w| same(&w[0].0, &w[1].0) && same(&w[0].2, &w[1].2))
        {
            let writes = ms.into_iter().map(|m| self.write_many(vec![m], cl));
            for r in futures::future::join_all(writes).await {
                r?;
            }
            return Ok(());
        }
        let (up, needed, down) = plans.into_iter().next().expect("not empty");
        let span = tracing::debug_span!("replicate", op = "write", table = ms[0].table, mutations = ms.len(), cl = ?cl);
        for peer in &down {
            for m in &ms {
                self.hint(peer, m);
            }
        }
        let (done_tx, done_rx) = oneshot::channel();
        let this = self.clone();
        let ms = Arc::new(ms);
        tokio::spawn(
            async move {
                let mut pending: FuturesUnordered<_> = up
                    .iter()
                    .map(|&peer| {
                        let this = this.clone();
                        let ms = ms.clone();
                        async move {
                            let result = if peer == this.local {
                                ms.iter()
                                    .try_for_each(|m| this.keyspace.apply(m).map(|_| ()))
                                    .map_err(Error::from)
                            } else {
                                let request = match ms.as_slice() {
                                    [one] => Request::Write(one.clone()),
                                    many => Request::Push {
                                        mutations: many.to_vec(),
                                        owned_only: false,
                                    },
                                };
                                this.link
                                    .request(peer, request, this.timeout)
                                    .await
                                    .map(|_| ())
                            };
                            (peer, result)
                        }
                    })
                    .collect();
                let total = up.len();
                let (mut acked, mut failed) = (0, 0);
                let mut last_error = None;
                let mut done_tx = Some(done_tx);
                while let Some((peer, result)) = pending.next().await {
                    match result {
                        Ok(()) => acked += 1,
                        Err(e) => {
                            debug!(%peer, error = %e, "replica write failed");
                            failed += 1;
                            if peer != this.local {
                                for m in ms.iter() {
                                    this.hint(&peer, m);
                                }
                            }
                            last_error = Some(e);
                        }
                    }
                    if acked == needed {
                        if let Some(tx) = done_tx.take() {
                            let _ = tx.send(Ok(()));
                        }
                    } else if total - failed < needed {
                        if let Some(tx) = done_tx.take() {
                            let _ = tx.send(Err(match last_error.take() {
                                Some(e @ Error::Remote { .. }) | Some(e @ Error::Storage(_)) => e,
                                _ => Error::Timeout {
                                    acked,
                                    needed,
                                    after: this.timeout,
                                },
                            }));
                        }
                    }
                }
            }
            .instrument(span),
        );
        done_rx.await.map_err(|_| Error::Shutdown)?
    }

    /// Read a partition at consistency `cl`: its live rows.
    pub async fn read(
        &self,
        table: TableId,
        partition_key: &[u8],
        cl: Consistency,
    ) -> Result<Partition> {
        let order = self.keyspace.schema(table)?.order();
        let entries = self.read_entries(table, partition_key, cl).await?;
        Ok(Partition::resolve(entries, order, self.keyspace.wall_ms()))
    }

    /// Read every cell of a partition at consistency `cl`, merged across replicas.
    pub async fn read_entries(
        &self,
        table: TableId,
        partition_key: &[u8],
        cl: Consistency,
    ) -> Result<Vec<(EntryKey, Cell)>> {
        self.keyspace.schema(table)?;
        let span = tracing::debug_span!("replicate", op = "read", table, cl = ?cl);
        let (up, needed, _) = self.plan(partition_key, cl)?;
        let (done_tx, done_rx) = oneshot::channel();
        let this = self.clone();
        let pk = partition_key.to_vec();
        tokio::spawn(
            async move {
                let mut pending: FuturesUnordered<_> = up
                    .iter()
                    .map(|&peer| {
                        let this = this.clone();
                        let pk = pk.clone();
                        async move {
                            let result = if peer == this.local {
                                this.keyspace
                                    .partition_entries(table, &pk)
                                    .map_err(Error::from)
                            } else {
                                match this
                                    .link
                                    .request(
                                        peer,
                                        Request::Read {
                                            table,
                                            partition_key: pk,
                                        },
                                        this.timeout,
                                    )
                                    .await
                                {
                                    Ok(Response::Entries(e)) => Ok(e),
                                    Ok(other) => Err(Error::Protocol(format!(
                                        "unexpected answer to a read: {other:?}"
                                    ))),
                                    Err(e) => Err(e),
                                }
                            };
                            (peer, result)
                        }
                    })
                    .collect();
                let total = up.len();
                let mut merged = Merged::new();
                let mut answers: Vec<(PeerId, Vec<(EntryKey, Cell)>)> = Vec::new();
                let mut failed = 0;
                let mut done_tx = Some(done_tx);
                while let Some((peer, result)) = pending.next().await {
                    match result {
                        Ok(entries) => {
                            merge_into(&mut merged, &entries);
                            answers.push((peer, entries));
                        }
                        Err(e) => {
                            debug!(%peer, error = %e, "replica read failed");
                            failed += 1;
                        }
                    }
                    if answers.len() == needed {
                        if let Some(tx) = done_tx.take() {
                            let _ = tx.send(Ok(merged
                                .iter()
                                .map(|(k, c)| (k.clone(), c.clone()))
                                .collect()));
                        }
                    } else if total - failed < needed {
                        if let Some(tx) = done_tx.take() {
                            let _ = tx.send(Err(Error::Timeout {
                                acked: answers.len(),
                                needed,
                                after: this.timeout,
                            }));
                        }
                    }
                }
                // Read repair: bring every replica that answered up to the merged version.
                for (peer, entries) in answers {
                    let diff = repair_diff(&merged, &entries);
                    if diff.is_empty() {
                        continue;
                    }
                    let repair = Mutation {
                        table,
                        partition_key: pk.clone(),
                        entries: diff,
                    };
                    debug!(%peer, cells = repair.entries.len(), "read repair");
                    let result = if peer == this.local {
                        this.keyspace
                            .apply(&repair)
                            .map(|_| ())
                            .map_err(Error::from)
                    } else {
                        this.link
                            .request(peer, Request::Write(repair.clone()), this.timeout)
                            .await
                            .map(|_| ())
                    };
                    if result.is_err() {
                        this.hint(&peer, &repair);
                    }
                }
            }
            .instrument(span),
        );
        done_rx.await.map_err(|_| Error::Shutdown)?
    }

    /// Replica side: apply a mutation.
    pub fn handle_write(&self, m: &Mutation) -> Response {
        match self.keyspace.apply(m) {
            Ok(_) => Response::Ack,
            Err(e) => Response::Error(e.to_string()),
        }
    }

    /// Replica side: every cell of a partition.
    pub fn handle_read(&self, table: TableId, partition_key: &[u8]) -> Response {
        match self.keyspace.partition_entries(table, partition_key) {
            Ok(e) => Response::Entries(e),
            Err(e) => Response::Error(e.to_string()),
        }
    }

    /// Replica side: apply pushed mutations, only owned partitions when `owned_only`.
    pub fn handle_push(&self, mutations: &[Mutation], owned_only: bool) -> Response {
        let snap = self.membership.snapshot();
        for m in mutations {
            if owned_only && !snap.is_local_replica(&m.partition_key) {
                continue;
            }
            if let Err(e) = self.keyspace.apply(m) {
                return Response::Error(e.to_string());
            }
        }
        Response::Ack
    }

    /// Offer stored hints to the peers that are up again. Returns how many were delivered.
    pub async fn deliver_hints(&self) -> usize {
        let hints = self.keyspace.hints();
        if hints.is_empty() {
            return 0;
        }
        let peers = match hints.peers() {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %e, "cannot list hints");
                return 0;
            }
        };
        let mut delivered = 0;
        for peer_bytes in peers {
            let Ok(peer) = PeerId::from_bytes(&peer_bytes) else {
                warn!("hint for an unparseable peer id; dropping those hints");
                if let Ok(all) = hints.pending(&peer_bytes, usize::MAX) {
                    for h in all {
                        let _ = hints.remove(&peer_bytes, h.seq);
                    }
                }
                continue;
            };
            if !self.membership.is_up(&peer) || peer == self.local {
                continue;
            }
            for _ in 0..HINT_BATCHES_PER_ROUND {
                let batch = match hints.pending(&peer_bytes, HINT_BATCH) {
                    Ok(b) if !b.is_empty() => b,
                    _ => break,
                };
                let mutations: Vec<Mutation> = batch.iter().map(|h| h.mutation.clone()).collect();
                let request = Request::Push {
                    mutations,
                    owned_only: false,
                };
                match self.link.request(peer, request, self.timeout).await {
                    Ok(_) => {
                        for h in &batch {
                            let _ = hints.remove(&peer_bytes, h.seq);
                        }
                        delivered += batch.len();
                    }
                    Err(e @ Error::Remote { .. }) => {
                        // The peer refused the mutations themselves (not a transient failure):
                        // retrying forever would block every later hint for it.
                        warn!(%peer, error = %e, hints = batch.len(), "peer refused hinted mutations; dropping them");
                        for h in &batch {
                            let _ = hints.remove(&peer_bytes, h.seq);
                        }
                    }
                    Err(e) => {
                        debug!(%peer, error = %e, "hint delivery failed; will retry");
                        break;
                    }
                }
            }
        }
        if delivered > 0 {
            debug!(delivered, "hints delivered");
        }
        delivered
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sipmesh_storage::Timestamp;

    #[test]
    fn levels() {
        assert_eq!(Consistency::Quorum.required(3), 2);
        assert_eq!(Consistency::Quorum.required(1), 1);
        assert_eq!(Consistency::All.required(3), 3);
        assert_eq!(Consistency::One.required(3), 1);
        assert_eq!("QUORUM".parse::<Consistency>(), Ok(Consistency::Quorum));
        assert!("two".parse::<Consistency>().is_err());
    }

    #[test]
    fn repair_sends_only_what_is_missing_or_older() {
        let k1 = EntryKey::RowMarker(vec![1]);
        let k2 = EntryKey::RowMarker(vec![2]);
        let new = Cell::live(Timestamp(10), vec![]);
        let old = Cell::live(Timestamp(5), vec![]);
        let mut merged = Merged::new();
        merge_into(
            &mut merged,
            &[(k1.clone(), old.clone()), (k2.clone(), new.clone())],
        );
        merge_into(&mut merged, &[(k1.clone(), new.clone())]);
        let diff = repair_diff(&merged, &[(k1.clone(), old), (k2.clone(), new.clone())]);
        assert_eq!(diff, vec![(k1.clone(), new.clone())]);
        assert!(repair_diff(&merged, &[(k1, new.clone()), (k2, new)]).is_empty());
    }
}
