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

use libp2p::PeerId;
use sipmesh_storage::{Cell, EntryKey, Keyspace, Mutation, Partition, TableId};
use tracing::{debug, warn, Instrument};

use crate::admission::Gate;
use crate::error::{Error, Result};
use crate::group_commit::GroupCommit;
use crate::link::Link;
use crate::membership::Membership;
use crate::protocol::{Request, Response};
use crate::quorum::{self, Answers};

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
    /// Acknowledge only what is on disk, flushes batched.
    commit: Arc<GroupCommit>,
    /// What this node may send as a coordinator (per-table rights, under enrollment).
    gate: Gate,
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

/// Whether every replica answered the same entries.
fn agree(answers: &[(PeerId, Vec<(EntryKey, Cell)>)]) -> bool {
    answers.windows(2).all(|w| w[0].1 == w[1].1)
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
        gate: Gate,
    ) -> Self {
        Replication {
            gate,
            local,
            commit: Arc::new(GroupCommit::new(keyspace.clone())),
            keyspace,
            membership,
            link,
            timeout,
        }
    }

    /// Up replicas of a partition, the count needed, and the down replicas (for hints): those
    /// a write goes to when `write`, else those a read asks.
    fn plan(
        &self,
        partition_key: &[u8],
        cl: Consistency,
        write: bool,
    ) -> Result<(Vec<PeerId>, usize, Vec<PeerId>)> {
        if let Some(offset_ms) = self.membership.clock_skew() {
            return Err(Error::ClockSkew {
                offset_ms,
                bound_ms: crate::membership::clock::MAX_SKEW_MS,
            });
        }
        let snap = self.membership.snapshot();
        let mut needed = cl.required(snap.effective_rf());
        let replicas = if write {
            // While members join: the union of the replica sets reads may ask, and a quorum
            // plus one per member beyond the replication factor (a quorum of each of them).
            let all = snap.write_replicas(partition_key);
            needed = (needed + all.len() - snap.effective_rf()).min(all.len());
            all
        } else {
            snap.replicas(partition_key)
        };
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
        self.write_lingering(vec![m], cl, Duration::ZERO).await
    }

    /// Write a mutation at consistency `cl`, then wait up to `linger` for the other live
    /// replicas too (what a reader at ONE on any replica needs to see it at once).
    pub async fn write_settled(
        &self,
        m: Mutation,
        cl: Consistency,
        linger: Duration,
    ) -> Result<()> {
        self.write_lingering(vec![m], cl, linger).await
    }

    /// Write several mutations at consistency `cl`. When they share their replicas (as a
    /// dialog and its index rows do in a small mesh) they travel in one request per replica;
    /// otherwise each is written on its own. Succeeds when every one reached `cl`.
    pub async fn write_many(&self, ms: Vec<Mutation>, cl: Consistency) -> Result<()> {
        self.write_lingering(ms, cl, Duration::ZERO).await
    }

    async fn write_lingering(
        &self,
        ms: Vec<Mutation>,
        cl: Consistency,
        linger: Duration,
    ) -> Result<()> {
        if ms.is_empty() {
            return Ok(());
        }
        for m in &ms {
            self.gate.may_send(m).map_err(Error::NotAllowed)?;
        }
        let plans = ms
            .iter()
            .map(|m| self.plan(&m.partition_key, cl, true))
            .collect::<Result<Vec<_>>>()?;
        let same =
            |a: &[PeerId], b: &[PeerId]| a.len() == b.len() && a.iter().all(|p| b.contains(p));
        if !plans
            .windows(2)
            .all(|w| same(&w[0].0, &w[1].0) && same(&w[0].2, &w[1].2))
        {
            let writes = ms
                .into_iter()
                .map(|m| Box::pin(self.write_lingering(vec![m], cl, linger)));
            for r in futures::future::join_all(writes).await {
                r?;
            }
            return Ok(());
        }
        let Some((up, needed, down)) = plans.into_iter().next() else {
            return Ok(());
        };
        let span = tracing::debug_span!("replicate", op = "write", table = ms[0].table, mutations = ms.len(), cl = ?cl);
        for peer in &down {
            for m in &ms {
                self.hint(peer, m);
            }
        }
        let ms = Arc::new(ms);
        // One request for every replica, encoded by each call (see `Request::Push`).
        let call = |peer: PeerId| {
            let (this, ms) = (self.clone(), ms.clone());
            async move {
                if peer == this.local {
                    for m in ms.iter() {
                        this.keyspace.apply(m)?;
                    }
                    return this.durable().await;
                }
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
            }
        };
        // Replicas that failed or timed out get hints, delivered when they are back.
        let then = {
            let (this, ms) = (self.clone(), ms.clone());
            move |answers: Answers<()>| {
                for (peer, _) in answers.failed {
                    if peer != this.local {
                        for m in ms.iter() {
                            this.hint(&peer, m);
                        }
                    }
                }
            }
        };
        quorum::ask(&up, needed, self.timeout, linger, call, then)
            .instrument(span)
            .await?;
        if !down.is_empty() && !up.contains(&self.local) {
            // Hints for replicas that were down stand for the write: as durable as it is. (When
            // this node is a replica, its own acknowledgement already waited for a flush that
            // began after the hints were written.)
            self.durable().await?;
        }
        Ok(())
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
        let (up, needed, _) = self.plan(partition_key, cl, false)?;
        let pk = Arc::new(partition_key.to_vec());
        let call = |peer: PeerId| {
            let (this, pk) = (self.clone(), pk.clone());
            async move {
                if peer == this.local {
                    return Ok(this.keyspace.partition_entries(table, &pk)?);
                }
                let request = Request::Read {
                    table,
                    partition_key: pk.to_vec(),
                };
                match this.link.request(peer, request, this.timeout).await? {
                    Response::Entries(e) => Ok(e),
                    other => Err(Error::Protocol(format!(
                        "unexpected answer to a read: {other:?}"
                    ))),
                }
            }
        };
        // Read repair: once every replica answered, bring each up to the merged version.
        let then = {
            let (this, pk) = (self.clone(), pk.clone());
            move |answers: Answers<Vec<(EntryKey, Cell)>>| {
                tokio::spawn(async move { this.repair(table, &pk, answers.ok).await });
            }
        };
        let answers = quorum::ask(&up, needed, self.timeout, Duration::ZERO, call, then)
            .instrument(span)
            .await?;
        // Replicas that agree (the common case) need no merge and no repair: each answer is
        // one replica's entries, each key once, in order — already the merged version.
        if agree(&answers) {
            let entries = answers
                .into_iter()
                .next()
                .map(|(_, e)| e)
                .unwrap_or_default();
            if let Some(newest) = entries.iter().map(|(_, c)| c.ts).max() {
                self.keyspace.observe(newest);
            }
            return Ok(entries);
        }
        let mut merged = Merged::new();
        for (_, entries) in &answers {
            merge_into(&mut merged, entries);
        }
        // What this node read, it may write over next (a delete after a lookup): its later
        // timestamps must be greater than any it saw.
        if let Some(newest) = merged.values().map(|c| c.ts).max() {
            self.keyspace.observe(newest);
        }
        // Blocking read repair (as Cassandra's): when the replicas that answered differ, bring
        // the stale ones up to the merged version before answering, so the next QUORUM read —
        // whose quorum overlaps this one — cannot see less than this one returned.
        if answers
            .iter()
            .any(|(_, entries)| !repair_diff(&merged, entries).is_empty())
        {
            self.repair(table, &pk, answers).await;
        }
        Ok(merged.into_iter().collect())
    }

    /// Bring every replica that answered a read up to the merged version of the partition.
    async fn repair(
        &self,
        table: TableId,
        partition_key: &[u8],
        answers: Vec<(PeerId, Vec<(EntryKey, Cell)>)>,
    ) {
        if agree(&answers) {
            return;
        }
        let mut merged = Merged::new();
        for (_, entries) in &answers {
            merge_into(&mut merged, entries);
        }
        for (peer, entries) in answers {
            let diff = repair_diff(&merged, &entries);
            if diff.is_empty() {
                continue;
            }
            let repair = Mutation {
                table,
                partition_key: partition_key.to_vec(),
                entries: diff,
            };
            // Rows this node may not write are left to the replicas' anti-entropy.
            if peer != self.local && self.gate.may_send(&repair).is_err() {
                continue;
            }
            debug!(%peer, cells = repair.entries.len(), "read repair");
            let result = if peer == self.local {
                self.keyspace
                    .apply(&repair)
                    .map(|_| ())
                    .map_err(Error::from)
            } else {
                self.link
                    .request(peer, Request::Write(repair.clone()), self.timeout)
                    .await
                    .map(|_| ())
            };
            if result.is_err() {
                self.hint(&peer, &repair);
            }
        }
    }

    /// Decide `key` once across its replicas (a compare-and-set, `claim`): `value` unless a
    /// value was decided already; returns the decided value. Needs a majority of the key's
    /// replicas (and of the mesh) up, as a QUORUM write does — while members join, of each
    /// replica set the key may have (the write's plan), so views on either side of a join
    /// meet.
    pub async fn claim(&self, key: &[u8], value: Vec<u8>) -> Result<Vec<u8>> {
        let (up, needed, _down) = self.plan(key, Consistency::Quorum, true)?;
        let proposer = crate::claim::Proposer {
            local: self.local,
            keyspace: &self.keyspace,
            link: &self.link,
            timeout: self.timeout,
        };
        proposer.decide(key, value, &up, needed).await
    }

    /// This node's view of the ring (tests build other parts on it).
    #[cfg(test)]
    pub(crate) fn membership(&self) -> &Arc<Membership> {
        &self.membership
    }

    /// This node's keyspace.
    #[cfg(test)]
    pub(crate) fn keyspace(&self) -> &Keyspace {
        &self.keyspace
    }

    /// Wait until what this node applied so far is on disk (group commit).
    pub async fn durable(&self) -> Result<()> {
        self.commit.durable().await.map_err(Error::Durability)
    }

    /// Replica side: apply a mutation (acknowledge once durable: see [`Replication::durable`]).
    ///
    /// A write for a partition this node does not replicate comes from a coordinator whose
    /// view of the ring is older than this node's (a member joined, and this node may already
    /// have handed the partition off): it is passed on to the replicas this node knows, so it
    /// is not left on a node reads no longer ask (hinted for those down or failing).
    pub fn handle_write(&self, m: &Mutation) -> Response {
        if let Err(e) = self.keyspace.apply(m) {
            return Response::Error(e.to_string());
        }
        let snap = self.membership.snapshot();
        if !snap.is_local_owner(&m.partition_key) {
            let replicas: Vec<(PeerId, bool)> = snap
                .write_replicas(&m.partition_key)
                .iter()
                .map(|r| (r.peer, r.up))
                .collect();
            let (this, m) = (self.clone(), m.clone());
            tokio::spawn(async move {
                for (peer, up) in replicas {
                    let request = Request::Push {
                        mutations: vec![m.clone()],
                        owned_only: false,
                    };
                    let sent = up && this.link.request(peer, request, this.timeout).await.is_ok();
                    if !sent {
                        this.hint(&peer, &m);
                    }
                }
            });
        }
        Response::Ack
    }

    /// Replica side: every cell of a partition.
    pub fn handle_read(&self, table: TableId, partition_key: &[u8]) -> Response {
        match self.keyspace.partition_entries(table, partition_key) {
            Ok(e) => Response::Entries(e),
            Err(e) => Response::Error(e.to_string()),
        }
    }

    /// Replica side: apply pushed mutations, only owned partitions when `owned_only`.
    ///
    /// Rows moving between replicas are not checked against the write rights: a replica is
    /// trusted with what it holds (docs/SECURITY.md), and refusing them would leave copies that
    /// could only decrease as the ring changes.
    pub fn handle_push(&self, mutations: &[Mutation], owned_only: bool) -> Response {
        let snap = self.membership.snapshot();
        for m in mutations {
            if owned_only && !snap.is_local_owner(&m.partition_key) {
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
pub(crate) mod tests {
    use super::*;
    use crate::fake_link::{FakeLink, FakeNet};
    use crate::membership::MembershipConfig;
    use crate::protocol::MemberInfo;
    use sipmesh_storage::{TableSchema, Timestamp};

    const T: TableId = 1;

    fn info(peer: PeerId) -> MemberInfo {
        MemberInfo {
            wall_ms: 0,
            credential: Vec::new(),
            joining: false,
            leaving: false,
            peer_id: peer.to_bytes(),
            addrs: Vec::new(),
            generation: 1,
            tags: BTreeMap::new(),
        }
    }

    /// `n` nodes, each with an in-memory keyspace and a view where every node is up, joined
    /// by a fake link.
    pub(crate) fn cluster(n: usize) -> (Arc<FakeNet>, Vec<(PeerId, Replication)>) {
        let net = Arc::new(FakeNet::default());
        let peers: Vec<PeerId> = (0..n).map(|_| PeerId::random()).collect();
        let mut out = Vec::new();
        for &me in &peers {
            let membership = Membership::new(
                info(me),
                me,
                MembershipConfig {
                    replication_factor: 3,
                    joining: false,
                },
            );
            for &other in peers.iter().filter(|p| **p != me) {
                membership.on_info(other, info(other), &[]);
            }
            let ks = Keyspace::in_memory(vec![TableSchema::new(T, "t", "k", &["v"])]);
            let link: Arc<dyn Link> = Arc::new(FakeLink {
                net: net.clone(),
                from: me,
            });
            let r = Replication::new(
                me,
                ks,
                membership,
                link,
                Duration::from_millis(200),
                crate::admission::Gate::open(me),
            );
            net.add(me, r.clone());
            out.push((me, r));
        }
        (net, out)
    }

    fn put(r: &Replication, v: &[u8]) -> Mutation {
        Mutation::new(T, b"key".to_vec()).upsert(b"", [("v", v.to_vec())], r.keyspace.now(), None)
    }

    fn stored(r: &Replication) -> Option<Vec<u8>> {
        r.keyspace
            .read_row(T, b"key", b"")
            .unwrap()
            .and_then(|row| row.get("v").map(|v| v.to_vec()))
    }

    async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
        for _ in 0..200 {
            if cond() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("not within 2 s: {what}");
    }

    #[tokio::test]
    async fn a_write_reaching_a_node_that_no_longer_replicates_the_partition_is_passed_on() {
        let (_net, nodes) = cluster(4);
        let snap = nodes[0].1.membership.snapshot();
        let replicas: Vec<PeerId> = snap.replicas(b"key").iter().map(|m| m.peer).collect();
        let (_, outsider) = nodes
            .iter()
            .find(|(p, _)| !replicas.contains(p))
            .expect("one of four is no replica");
        // As a coordinator with an older view would: straight to the old owner.
        assert!(matches!(
            outsider.handle_write(&put(outsider, b"late")),
            Response::Ack
        ));
        for (p, r) in nodes.iter().filter(|(p, _)| replicas.contains(p)) {
            eventually(&format!("replica {p} got the write"), || {
                stored(r).as_deref() == Some(&b"late"[..])
            })
            .await;
        }
    }

    #[tokio::test]
    async fn quorum_write_with_a_replica_cut_off_hints_it_and_delivers_later() {
        let (net, nodes) = cluster(3);
        let (coordinator, lost) = (&nodes[0].1, nodes[2].0);
        net.cut(lost);
        coordinator
            .write(put(coordinator, b"one"), Consistency::Quorum)
            .await
            .unwrap();
        assert_eq!(stored(&nodes[1].1).as_deref(), Some(&b"one"[..]));
        assert_eq!(stored(&nodes[2].1), None);
        eventually("a hint for the cut-off replica", || {
            coordinator.keyspace.hints().len() == 1
        })
        .await;
        // While it is unreachable the hint stays; once it is back, delivery empties the log.
        assert_eq!(coordinator.deliver_hints().await, 0);
        net.heal(lost);
        assert_eq!(coordinator.deliver_hints().await, 1);
        assert_eq!(stored(&nodes[2].1).as_deref(), Some(&b"one"[..]));
        assert!(coordinator.keyspace.hints().is_empty());
    }

    #[tokio::test]
    async fn quorum_out_of_reach_fails_with_the_count() {
        let (net, nodes) = cluster(3);
        net.cut(nodes[1].0);
        net.cut(nodes[2].0);
        let c = &nodes[0].1;
        let err = c
            .write(put(c, b"x"), Consistency::Quorum)
            .await
            .unwrap_err();
        assert!(
            // The two cut replicas fail at once; the local one may or may not have answered
            // (and flushed) by then: the refusal does not wait for it.
            matches!(
                err,
                Error::Timeout {
                    acked: 0 | 1,
                    needed: 2,
                    ..
                }
            ),
            "{err}"
        );
        // ONE still succeeds through the coordinator's own replica.
        c.write(put(c, b"y"), Consistency::One).await.unwrap();
        let err = c.read(T, b"key", Consistency::All).await.unwrap_err();
        assert!(matches!(err, Error::Timeout { .. }), "{err}");
    }

    #[tokio::test]
    async fn reads_merge_the_newest_and_repair_stale_replicas() {
        let (_net, nodes) = cluster(3);
        let old = put(&nodes[0].1, b"old");
        let new = put(&nodes[0].1, b"new");
        // Replica 0 and 1 hold the old value, replica 2 the new one.
        nodes[0].1.keyspace.apply(&old).unwrap();
        nodes[1].1.keyspace.apply(&old).unwrap();
        nodes[2].1.keyspace.apply(&new).unwrap();
        let p = nodes[0].1.read(T, b"key", Consistency::All).await.unwrap();
        assert_eq!(p.rows[0].get("v"), Some(&b"new"[..]));
        for (_, r) in &nodes {
            eventually("every replica repaired", || {
                stored(r).as_deref() == Some(&b"new"[..])
            })
            .await;
        }
    }

    #[tokio::test]
    async fn a_quorum_read_repairs_the_replicas_it_read_before_answering() {
        let (net, nodes) = cluster(3);
        let old = put(&nodes[0].1, b"old");
        let new = put(&nodes[0].1, b"new");
        nodes[0].1.keyspace.apply(&old).unwrap();
        nodes[1].1.keyspace.apply(&new).unwrap();
        nodes[2].1.keyspace.apply(&old).unwrap();
        // Only replicas 0 and 1 answer: 0 is stale.
        net.cut(nodes[2].0);
        let p = nodes[0]
            .1
            .read(T, b"key", Consistency::Quorum)
            .await
            .unwrap();
        assert_eq!(p.rows[0].get("v"), Some(&b"new"[..]));
        // Checked at once, without yielding: the repair was part of the read.
        assert_eq!(stored(&nodes[0].1).as_deref(), Some(&b"new"[..]));
        // So a QUORUM read through replicas 0 and 2 (1 now cut) still sees "new".
        net.heal(nodes[2].0);
        net.cut(nodes[1].0);
        let p = nodes[2]
            .1
            .read(T, b"key", Consistency::Quorum)
            .await
            .unwrap();
        assert_eq!(p.rows[0].get("v"), Some(&b"new"[..]));
    }

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

    #[test]
    fn replicas_that_agree_answer_what_a_merge_would() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let entries = vec![
            (
                EntryKey::RowMarker(vec![1]),
                Cell::live(Timestamp(5), vec![]),
            ),
            (
                EntryKey::RowMarker(vec![2]),
                Cell::live(Timestamp(9), vec![]),
            ),
        ];
        let same = vec![(a, entries.clone()), (b, entries.clone())];
        assert!(agree(&same));
        let mut merged = Merged::new();
        for (_, e) in &same {
            merge_into(&mut merged, e);
        }
        assert_eq!(merged.into_iter().collect::<Vec<_>>(), entries);
        let mut newer = entries.clone();
        newer[0].1 = Cell::live(Timestamp(6), vec![]);
        assert!(!agree(&[(a, entries), (b, newer)]));
        assert!(agree(&[(a, Vec::new())]));
    }
}
