//! Anti-entropy and handoff, with bounded work per round.
//!
//! Anti-entropy: periodically, for each up peer, this node lists the Merkle leaves both are
//! replicas of and asks for the peer's hashes of them (with when each last changed). A leaf
//! that differs is compared partition by partition ([`Request::Digests`], paged), and only the
//! partitions that differ move, each in pages of about [`PAGE_BYTES`] ([`Request::Page`] to
//! pull, [`Request::Push`] to push; each side keeps only partitions it is a replica of). So a
//! wide partition never makes a frame grow, and a round's work is bounded: at most
//! [`MAX_LEAVES_PER_ROUND`] leaves and [`MAX_BYTES_PER_ROUND`] bytes per peer. Leaves either
//! side changed in the last [`HOT_MS`] are left alone (writes in flight, not divergence),
//! except every [`FORCE_HOT_EVERY`]-th round, so a leaf that is always written still converges.
//! Store scans run on the blocking pool; no stripe lock is held across a page.
//!
//! This is also how a joining node receives its data, and how a node that was down catches up.
//!
//! Handoff: a node holding a partition it is no longer a replica of (the ring changed) pushes it
//! to every current replica, page by page, and drops its copy once all of them acknowledged.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use libp2p::PeerId;
use sipmesh_storage::merkle::{leaf_tokens, MERKLE_LEAVES};
use sipmesh_storage::{Keyspace, Mutation, PartitionDigest, TableId};
use tracing::{debug, info, warn};

use crate::error::{Error, Result};
use crate::link::Link;
use crate::membership::Membership;
use crate::placement::{Snapshot, Standing};
use crate::protocol::{Request, Response, DIGESTS_PER_PAGE, PAGE_BYTES};
use crate::replication::Replication;

/// Differing leaves repaired with one peer per round.
pub const MAX_LEAVES_PER_ROUND: usize = 256;
/// Bytes pulled plus pushed with one peer per round.
pub const MAX_BYTES_PER_ROUND: usize = 32 * 1024 * 1024;
/// A leaf changed this recently (on either side) is left alone this round.
pub const HOT_MS: u64 = 3_000;
/// Every this many rounds, hot leaves are compared too.
pub const FORCE_HOT_EVERY: u64 = 6;
/// Partitions handed off per round.
const HANDOFF_PER_ROUND: usize = 2_000;
/// Partitions pushed together at most (handoff, handover): one request per replica peer.
const PUSH_BATCH: usize = 256;

/// What one anti-entropy exchange did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Exchange {
    /// Leaves compared.
    pub compared: usize,
    /// Leaves that differed (and were not left alone for being hot).
    pub differing: usize,
    /// Partitions pulled from the peer.
    pub pulled: usize,
    /// Partitions pushed to the peer.
    pub pushed: usize,
    /// Bytes moved (both ways).
    pub bytes: usize,
}

impl Exchange {
    fn add(&mut self, x: Exchange) {
        self.compared += x.compared;
        self.differing += x.differing;
        self.pulled += x.pulled;
        self.pushed += x.pushed;
        self.bytes += x.bytes;
    }
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
    /// Rounds done (rotates the first leaf repaired, and paces hot-leaf rounds).
    rounds: Arc<AtomicU64>,
}

/// Answer a store scan (`Digests` or `Page`); run on the blocking pool.
pub fn serve_scan(keyspace: &Keyspace, request: Request) -> Response {
    let result = match request {
        Request::Digests { leaf, after } => {
            if leaf as usize >= MERKLE_LEAVES {
                return Response::Error(format!("leaf {leaf} out of range"));
            }
            let (first, last) = leaf_tokens(leaf as usize);
            keyspace
                .partition_digests(
                    first,
                    last,
                    after.as_ref().map(|(t, pk)| (*t, pk.as_slice())),
                    DIGESTS_PER_PAGE,
                )
                .map(|(digests, next)| Response::Digests { digests, next })
        }
        Request::Page {
            table,
            partition_key,
            after,
        } => keyspace
            .partition_page(table, &partition_key, after.as_deref(), PAGE_BYTES)
            .map(|(entries, next)| Response::Page { entries, next }),
        other => return Response::Error(format!("{} is not a scan", other.kind())),
    };
    result.unwrap_or_else(|e| Response::Error(e.to_string()))
}

/// Where a handoff pass stopped: the leaf it was in, and the last partition it listed there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandoffCursor {
    leaf: usize,
    after: Option<(TableId, Vec<u8>)>,
}

/// The partitions this node holds and is not a write replica of, at most `max` of them, in
/// key order from `from` (the start when `None`), and where to go on from (`None`: the scan
/// reached the end). It reads the keyspace leaf by leaf, `page` partitions at a time, and skips
/// the leaves this node replicates whole ([`Snapshot::replicates_leaf`]): in a settled ring
/// those hold all it stores, and the leaves left are empty, so a pass costs one seek per leaf
/// and memory for at most `max` partitions, however much the node holds. Run on the blocking
/// pool.
pub fn handoff_candidates(
    keyspace: &Keyspace,
    snap: &Snapshot,
    from: Option<&HandoffCursor>,
    max: usize,
    page: usize,
) -> sipmesh_storage::Result<(Vec<PartitionRef>, Option<HandoffCursor>)> {
    let mut out = Vec::new();
    let start = from.map_or(0, |c| c.leaf);
    for leaf in start..MERKLE_LEAVES {
        if snap.replicates_leaf(leaf) {
            continue;
        }
        let (first, last) = leaf_tokens(leaf);
        let mut after: Option<(TableId, Vec<u8>)> = match from {
            Some(c) if c.leaf == leaf => c.after.clone(),
            _ => None,
        };
        loop {
            let (digests, next) = keyspace.partition_digests(
                first,
                last,
                after.as_ref().map(|(t, pk)| (*t, pk.as_slice())),
                page,
            )?;
            for d in digests {
                if snap.is_local_owner(&d.partition_key) {
                    continue;
                }
                out.push((d.table, d.partition_key));
                if out.len() >= max {
                    let after = out.last().cloned();
                    return Ok((out, Some(HandoffCursor { leaf, after })));
                }
            }
            match next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
    }
    Ok((out, None))
}

/// Run a store scan of this node on the blocking pool.
async fn local_scan(keyspace: &Keyspace, request: Request) -> Response {
    let ks = keyspace.clone();
    tokio::task::spawn_blocking(move || serve_scan(&ks, request))
        .await
        .unwrap_or_else(|e| Response::Error(e.to_string()))
}

/// Every page of a scan that answers `Digests`.
async fn all_digests<F, Fut>(leaf: u32, mut ask: F) -> Result<Vec<PartitionDigest>>
where
    F: FnMut(Request) -> Fut,
    Fut: std::future::Future<Output = Result<Response>>,
{
    let mut out = Vec::new();
    let mut after = None;
    loop {
        match ask(Request::Digests { leaf, after }).await? {
            Response::Digests { digests, next } => {
                out.extend(digests);
                match next {
                    Some(n) => after = Some(n),
                    None => return Ok(out),
                }
            }
            Response::Error(e) => return Err(Error::Protocol(e)),
            other => {
                return Err(Error::Protocol(format!(
                    "unexpected answer to digests: {other:?}"
                )))
            }
        }
    }
}

/// A partition: its table and key.
type PartitionRef = (TableId, Vec<u8>);

/// What to do with each partition of a leaf, from both sides' digests.
fn plan_leaf(
    mine: &[PartitionDigest],
    theirs: &[PartitionDigest],
) -> (Vec<PartitionRef>, Vec<PartitionRef>) {
    // Per partition: (my digest, their digest).
    type Sides = (Option<u64>, Option<u64>);
    let mut by_key: BTreeMap<(TableId, &[u8]), Sides> = BTreeMap::new();
    for d in mine {
        by_key.entry((d.table, &d.partition_key)).or_default().0 = Some(d.hash);
    }
    for d in theirs {
        by_key.entry((d.table, &d.partition_key)).or_default().1 = Some(d.hash);
    }
    let (mut pull, mut push) = (Vec::new(), Vec::new());
    for ((table, pk), (m, t)) in by_key {
        if m == t {
            continue;
        }
        if t.is_some() {
            pull.push((table, pk.to_vec()));
        }
        if m.is_some() {
            push.push((table, pk.to_vec()));
        }
    }
    (pull, push)
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
            rounds: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Leaves this node and `peer` are both replicas of (and leaves whose replicas vary inside
    /// the leaf, which are always compared).
    fn shared_leaves(&self, peer: &PeerId) -> Vec<u32> {
        self.membership
            .snapshot()
            .shared_leaves()
            .get(peer)
            .cloned()
            .unwrap_or_default()
    }

    /// One exchange with every up peer this node shares leaves with — its neighbours in the
    /// key space, not the whole ring (only when this node sees a majority: `None` when it does
    /// not).
    pub async fn round(&self) -> Option<Exchange> {
        let snap = self.membership.snapshot();
        let mut total = Exchange::default();
        if !snap.has_majority() {
            return None;
        }
        self.rounds.fetch_add(1, Ordering::Relaxed);
        let shared = snap.shared_leaves();
        for m in snap
            .ring
            .iter()
            .filter(|m| m.up && m.peer != self.local && shared.contains_key(&m.peer))
        {
            match self.exchange(m.peer).await {
                Ok(x) => total.add(x),
                Err(e) => debug!(peer = %m.peer, error = %e, "anti-entropy exchange failed"),
            }
        }
        if total.pulled + total.pushed > 0 {
            info!(
                differing = total.differing,
                pulled = total.pulled,
                pushed = total.pushed,
                bytes = total.bytes,
                "anti-entropy repaired differences"
            );
        }
        Some(total)
    }

    /// A peer's hashes and change times of these leaves.
    async fn peer_leaves(&self, peer: PeerId, leaves: &[u32]) -> Result<Vec<(u64, u64)>> {
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

    /// Compare and repair the leaves shared with `peer`, within this round's bounds.
    pub async fn exchange(&self, peer: PeerId) -> Result<Exchange> {
        self.exchange_with(peer, false).await
    }

    /// Bootstrap: stream from every member this node shares leaves with every leaf that
    /// differs — those being written too, and without a round's bounds — so that afterwards it
    /// holds everything they held when compared (what was written since reached it as a pending
    /// replica). Refused while one of them is down: a write acknowledged by a quorum may be on
    /// that one and on a replica this node displaces only.
    pub async fn bootstrap_pass(&self) -> std::result::Result<Exchange, String> {
        let snap = self.membership.snapshot();
        if !snap.has_majority() {
            return Err("a majority of the ring is not up".into());
        }
        let shared = snap.shared_leaves();
        let mut total = Exchange::default();
        for m in snap
            .ring
            .iter()
            .filter(|m| m.peer != self.local && shared.contains_key(&m.peer))
        {
            if !m.up && m.standing == Standing::Leaving {
                continue; // dead and being removed: what it held, its fellow replicas hold
            }
            if !m.up {
                return Err(format!("{} holds some of these ranges and is down", m.peer));
            }
            let x = self
                .exchange_with(m.peer, true)
                .await
                .map_err(|e| format!("streaming from {} failed: {e}", m.peer))?;
            total.add(x);
        }
        Ok(total)
    }

    async fn exchange_with(&self, peer: PeerId, whole: bool) -> Result<Exchange> {
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
        let now = self.keyspace.wall_ms();
        let round = self.rounds.load(Ordering::Relaxed);
        let hot_too = whole || round.is_multiple_of(FORCE_HOT_EVERY);
        let cold = |touched: u64| now.saturating_sub(touched) >= HOT_MS;
        let mut differing: Vec<u32> = shared
            .iter()
            .zip(&theirs)
            .filter(|(leaf, (hash, touched))| {
                let l = **leaf as usize;
                merkle.leaf(l) != *hash && (hot_too || (cold(merkle.touched(l)) && cold(*touched)))
            })
            .map(|(leaf, _)| *leaf)
            .collect();
        x.differing = differing.len();
        // Start somewhere else each round, so a bounded round still reaches every leaf.
        if !differing.is_empty() {
            let start = (round as usize) % differing.len();
            differing.rotate_left(start);
        }
        let bound = if whole {
            usize::MAX
        } else {
            MAX_LEAVES_PER_ROUND
        };
        for leaf in differing.into_iter().take(bound) {
            if x.bytes >= MAX_BYTES_PER_ROUND && !whole {
                break;
            }
            self.repair_leaf(peer, leaf, &mut x, whole).await?;
        }
        Ok(x)
    }

    /// Compare one leaf with `peer` partition by partition and move what differs (within the
    /// round's byte bound unless `whole`).
    async fn repair_leaf(
        &self,
        peer: PeerId,
        leaf: u32,
        x: &mut Exchange,
        whole: bool,
    ) -> Result<()> {
        let full = |x: &Exchange| x.bytes >= MAX_BYTES_PER_ROUND && !whole;
        let mine = all_digests(leaf, |r| async { Ok(local_scan(&self.keyspace, r).await) }).await?;
        let theirs = all_digests(leaf, |r| self.link.request(peer, r, self.timeout * 4)).await?;
        let (pull, push) = plan_leaf(&mine, &theirs);
        for (table, pk) in pull {
            if full(x) {
                return Ok(());
            }
            x.bytes += self.pull_partition(peer, table, &pk).await?;
            x.pulled += 1;
        }
        for (table, pk) in push {
            if full(x) {
                return Ok(());
            }
            x.bytes += self.push_partition(peer, table, &pk, true).await?;
            x.pushed += 1;
        }
        Ok(())
    }

    /// Pull a partition from `peer`, page by page, applying each page if this node replicates
    /// the partition. Returns the bytes moved.
    async fn pull_partition(&self, peer: PeerId, table: TableId, pk: &[u8]) -> Result<usize> {
        let mut after = None;
        let mut bytes = 0;
        loop {
            let request = Request::Page {
                table,
                partition_key: pk.to_vec(),
                after,
            };
            match self.link.request(peer, request, self.timeout * 4).await? {
                Response::Page { entries, next } => {
                    let m = Mutation {
                        table,
                        partition_key: pk.to_vec(),
                        entries,
                    };
                    bytes += approx_size(&m);
                    if let Response::Error(e) = self.replication.handle_push(&[m], true) {
                        return Err(Error::Protocol(e));
                    }
                    match next {
                        Some(n) => after = Some(n),
                        None => return Ok(bytes),
                    }
                }
                Response::Error(e) => return Err(Error::Protocol(e)),
                other => {
                    return Err(Error::Protocol(format!(
                        "unexpected answer to a page: {other:?}"
                    )))
                }
            }
        }
    }

    /// Push one of this node's partitions to `peer`, page by page (`owned_only`: the peer keeps
    /// it only if it replicates it). Returns the bytes moved.
    async fn push_partition(
        &self,
        peer: PeerId,
        table: TableId,
        pk: &[u8],
        owned_only: bool,
    ) -> Result<usize> {
        let mut after = None;
        let mut bytes = 0;
        loop {
            let request = Request::Page {
                table,
                partition_key: pk.to_vec(),
                after: after.take(),
            };
            let (entries, next) = match local_scan(&self.keyspace, request).await {
                Response::Page { entries, next } => (entries, next),
                Response::Error(e) => return Err(Error::Protocol(e)),
                _ => return Err(Error::Protocol("local page scan".into())),
            };
            if !entries.is_empty() {
                let m = Mutation {
                    table,
                    partition_key: pk.to_vec(),
                    entries,
                };
                bytes += approx_size(&m);
                let request = Request::Push {
                    mutations: vec![m],
                    owned_only,
                };
                self.link.request(peer, request, self.timeout * 4).await?;
            }
            match next {
                Some(n) => after = Some(n),
                None => return Ok(bytes),
            }
        }
    }

    /// Push a batch from the front of `partitions` to their replicas in `snap`: each peer gets
    /// the partitions it replicates in one request (one apply and one flush there, where a
    /// request per partition cost one each), all peers at once; a partition wider than a page
    /// goes on its own, page by page. Returns how many partitions the batch took, and each
    /// one's outcome. A batch that cannot be read takes them all and acknowledges none.
    async fn push_batch(
        &self,
        snap: &Snapshot,
        partitions: &[PartitionRef],
        target: Target,
    ) -> (usize, Vec<Pushed>) {
        let ks = self.keyspace.clone();
        let front = partitions[..partitions.len().min(PUSH_BATCH)].to_vec();
        let fingerprint = target == Target::Handoff;
        let read = tokio::task::spawn_blocking(move || read_batch(&ks, &front, fingerprint))
            .await
            .map_err(|e| sipmesh_storage::Error::Engine(e.to_string()))
            .and_then(|r| r);
        let read = match read {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "cannot read partitions to push");
                let all = partitions.len().min(PUSH_BATCH);
                let failed = partitions[..all].iter().map(|p| Pushed {
                    partition: p.clone(),
                    seen: Vec::new(),
                    acked: false,
                });
                return (all, failed.collect());
            }
        };
        let taken = read.len();
        let mut acked = vec![true; taken];
        let mut per_peer: BTreeMap<PeerId, (Vec<usize>, Vec<Mutation>)> = BTreeMap::new();
        for (i, ((table, pk), _, whole)) in read.iter().enumerate() {
            let replicas: Vec<PeerId> = snap
                .write_replicas(pk)
                .iter()
                .filter(|m| target == Target::Handoff || m.up)
                .map(|m| m.peer)
                .collect();
            // Kept while reads may still ask it: as a replica, or one readers that have not
            // heard of a join yet ask.
            if target == Target::Handoff && replicas.contains(&self.local) {
                acked[i] = false;
                continue;
            }
            match whole {
                Some(m) if m.entries.is_empty() => {} // gone since it was listed
                Some(m) => {
                    for peer in replicas {
                        let (idx, muts) = per_peer.entry(peer).or_default();
                        idx.push(i);
                        muts.push(m.clone());
                    }
                }
                None => {
                    for peer in replicas {
                        if self.push_partition(peer, *table, pk, false).await.is_err() {
                            acked[i] = false;
                            break;
                        }
                    }
                }
            }
        }
        let pushes = per_peer
            .into_iter()
            .map(|(peer, (idx, mutations))| async move {
                let request = Request::Push {
                    mutations,
                    owned_only: false,
                };
                let ok = self
                    .link
                    .request(peer, request, self.timeout * 4)
                    .await
                    .is_ok();
                (idx, ok)
            });
        for (idx, ok) in futures::future::join_all(pushes).await {
            if !ok {
                for i in idx {
                    acked[i] = false;
                }
            }
        }
        let pushed = read
            .into_iter()
            .zip(acked)
            .map(|((partition, seen, _), acked)| Pushed {
                partition,
                seen,
                acked,
            })
            .collect();
        (taken, pushed)
    }

    /// Whether this node is the only member of its ring (nothing to catch up from).
    pub fn alone(&self) -> bool {
        self.membership.snapshot().ring.len() <= 1
    }

    /// The version of the ring this node sees.
    pub fn ring_version(&self) -> u64 {
        self.membership.snapshot().version
    }

    /// Graceful leave: push every partition this node holds to the replicas it will have once
    /// this node is gone, and wait for their acknowledgements. The keyspace is read a page of
    /// partitions at a time, so memory does not grow with what the node holds. Returns
    /// (partitions, failures); a page that cannot be read counts as one failure and ends it.
    pub async fn handover(&self) -> (usize, usize) {
        let mut snap = (*self.membership.snapshot()).clone();
        snap.ring.retain(|m| m.peer != self.local);
        let snap = &snap;
        info!("handover started");
        let (mut total, mut failures) = (0, 0);
        let mut last_report = std::time::Instant::now();
        let mut after: Option<(TableId, Vec<u8>)> = None;
        loop {
            let ks = self.keyspace.clone();
            let from = after.take();
            let listed = tokio::task::spawn_blocking(move || {
                ks.partition_digests(
                    0,
                    u64::MAX,
                    from.as_ref().map(|(t, pk)| (*t, pk.as_slice())),
                    DIGESTS_PER_PAGE,
                )
            })
            .await;
            let (digests, next) = match listed {
                Ok(Ok(x)) => x,
                Ok(Err(e)) => {
                    warn!(error = %e, "cannot list partitions for handover");
                    failures += 1;
                    break;
                }
                Err(e) => {
                    warn!(error = %e, "cannot list partitions for handover");
                    failures += 1;
                    break;
                }
            };
            total += digests.len();
            let page: Vec<PartitionRef> = digests
                .into_iter()
                .map(|d| (d.table, d.partition_key))
                .collect();
            let mut rest = page.as_slice();
            while !rest.is_empty() {
                let (taken, pushed) = self.push_batch(snap, rest, Target::Handover).await;
                rest = &rest[taken..];
                failures += pushed.iter().filter(|p| !p.acked).count();
            }
            if last_report.elapsed() >= Duration::from_secs(2) {
                last_report = std::time::Instant::now();
                info!(done = total, "handover progress");
            }
            match next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        info!(
            partitions = total,
            failures, "handed over replicas before leaving"
        );
        (total, failures)
    }

    /// Hand off partitions this node is no longer a replica of, in rounds of at most
    /// [`HANDOFF_PER_ROUND`] partitions from `from` (the start when `None`), back to back until
    /// the pass reaches the end of the keyspace or `budget` of wall time is spent. Only while
    /// every ring member is up and this node sees a majority: a partition is dropped only after
    /// every current replica acknowledged all of it. A partition that could not be handed off
    /// is passed over, so it does not hold up the rest of the pass.
    pub async fn handoff(&self, from: Option<HandoffCursor>, budget: Duration) -> HandedOff {
        let started = std::time::Instant::now();
        let mut done = HandedOff {
            moved: 0,
            rounds: 0,
            next: from,
            blocked: false,
        };
        loop {
            let snap = self.membership.snapshot();
            if !snap.has_majority() || snap.ring.iter().any(|m| !m.up) {
                done.blocked = true;
                return done;
            }
            // Nothing to hand off, and no scan of the keyspace to find that out.
            if snap.replicates_everything() {
                done.next = None;
                return done;
            }
            let Some((handed, next)) = self.handoff_round(&snap, done.next.take()).await else {
                done.blocked = true;
                return done;
            };
            done.moved += handed;
            done.rounds += 1;
            done.next = next;
            if done.next.is_none() || started.elapsed() >= budget {
                return done;
            }
        }
    }

    /// One round of [`AntiEntropy::handoff`]: the partitions handed off, and where the pass
    /// goes on from. `None` when the keyspace could not be read.
    async fn handoff_round(
        &self,
        snap: &Snapshot,
        from: Option<HandoffCursor>,
    ) -> Option<(usize, Option<HandoffCursor>)> {
        // Off the async workers, and only the leaves this node does not replicate whole.
        let ks = self.keyspace.clone();
        let view = snap.clone();
        let listed = tokio::task::spawn_blocking(move || {
            handoff_candidates(
                &ks,
                &view,
                from.as_ref(),
                HANDOFF_PER_ROUND,
                DIGESTS_PER_PAGE,
            )
        })
        .await;
        let (partitions, next) = match listed
            .map_err(|e| sipmesh_storage::Error::Engine(e.to_string()))
            .and_then(|r| r)
        {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %e, "cannot list partitions for handoff");
                return None;
            }
        };
        let mut handed = 0;
        let mut rest = partitions.as_slice();
        while !rest.is_empty() {
            let (taken, pushed) = self.push_batch(snap, rest, Target::Handoff).await;
            rest = &rest[taken..];
            // What is dropped is only what each fingerprint saw (and the pushes, which read
            // after it, carried): a write acknowledged during the transfer stays.
            let done: Vec<Pushed> = pushed.into_iter().filter(|p| p.acked).collect();
            if done.is_empty() {
                continue;
            }
            let ks = self.keyspace.clone();
            let dropped = tokio::task::spawn_blocking(move || {
                let mut n = 0;
                for p in done {
                    let (table, pk) = &p.partition;
                    match ks.drop_partition_locally_if_unchanged(*table, pk, &p.seen) {
                        Ok(_) => n += 1,
                        Err(e) => warn!(error = %e, "cannot drop a handed-off partition"),
                    }
                }
                n
            })
            .await;
            handed += dropped.unwrap_or(0);
        }
        Some((handed, next))
    }
}

/// What [`AntiEntropy::handoff`] did.
#[derive(Debug)]
pub struct HandedOff {
    /// Partitions handed off (pushed to every replica and dropped here).
    pub moved: usize,
    /// Rounds run.
    pub rounds: usize,
    /// Where the pass goes on from; `None` when it reached the end of the keyspace.
    pub next: Option<HandoffCursor>,
    /// It stopped because the ring was not settled or the keyspace could not be read.
    pub blocked: bool,
}

/// Whom [`AntiEntropy::push_batch`] pushes to, and what it records.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    /// Every write replica (this node is none of them), with a fingerprint of each partition
    /// taken before it is read: handoff drops only what every replica acknowledged.
    Handoff,
    /// The write replicas that are up, of a ring without this node: a graceful leave.
    Handover,
}

/// One partition of a batch, once pushed.
struct Pushed {
    partition: PartitionRef,
    /// Its rows as they were before being read ([`Target::Handoff`] only).
    seen: Vec<(Vec<u8>, u64)>,
    /// Whether every replica it went to acknowledged it.
    acked: bool,
}

/// A partition read for a batch: its fingerprint, and its rows when they fit in one page.
type ReadForPush = (PartitionRef, Vec<(Vec<u8>, u64)>, Option<Mutation>);

/// Read partitions from the front of `partitions` for one batch: at most [`PUSH_BATCH`] of
/// them or about [`PAGE_BYTES`] of data. A partition wider than a page is read by its pushes.
fn read_batch(
    keyspace: &Keyspace,
    partitions: &[PartitionRef],
    fingerprint: bool,
) -> sipmesh_storage::Result<Vec<ReadForPush>> {
    let mut out = Vec::new();
    let mut bytes = 0;
    for (table, pk) in partitions.iter().take(PUSH_BATCH) {
        if bytes >= PAGE_BYTES {
            break;
        }
        let seen = if fingerprint {
            keyspace.partition_fingerprint(*table, pk)?
        } else {
            Vec::new()
        };
        let (entries, next) = keyspace.partition_page(*table, pk, None, PAGE_BYTES)?;
        let whole = next.is_none().then(|| Mutation {
            table: *table,
            partition_key: pk.clone(),
            entries,
        });
        bytes += whole.as_ref().map_or(PAGE_BYTES, approx_size);
        out.push(((*table, pk.clone()), seen, whole));
    }
    Ok(out)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn d(pk: &str, hash: u64) -> PartitionDigest {
        PartitionDigest {
            table: 1,
            partition_key: pk.as_bytes().to_vec(),
            hash,
        }
    }

    /// A settled ring of nine members, this node the first, three replicas of every key.
    fn ring_of_nine() -> Snapshot {
        crate::placement::tests::ring(9)
    }

    /// Handoff lists exactly the partitions this node is not a replica of, in key order, in
    /// pages of any size (a page ending inside a leaf, or inside a partition's rows, resumes
    /// after it), and never more than asked for.
    #[test]
    fn handoff_lists_what_this_node_does_not_replicate_in_pages() {
        use sipmesh_storage::{token_of, ClusteringOrder, TableSchema};
        let ks = Keyspace::in_memory(vec![
            TableSchema::new(1, "t", "k", &["v"]).clustered("c", ClusteringOrder::Asc)
        ]);
        let snap = ring_of_nine();
        let mut want: Vec<(u64, Vec<u8>)> = Vec::new();
        for i in 0..3_000u32 {
            let pk = format!("user{i}").into_bytes();
            let mut m = Mutation::new(1, pk.clone());
            for c in [b"a", b"b"] {
                m = m.upsert(c, [("v", vec![1])], ks.now(), None);
            }
            ks.apply(&m).unwrap();
            if !snap.is_local_owner(&pk) {
                want.push((token_of(&pk), pk));
            }
        }
        want.sort();
        let want: Vec<PartitionRef> = want.into_iter().map(|(_, pk)| (1, pk)).collect();
        assert!(!want.is_empty() && want.len() < 3_000);
        for page in [1, 2, 7, DIGESTS_PER_PAGE] {
            let (got, next) = handoff_candidates(&ks, &snap, None, usize::MAX, page).unwrap();
            assert_eq!(got, want, "pages of {page}");
            assert_eq!(next, None, "pages of {page}");
        }
        // In rounds of at most `max`, each going on from where the last one stopped: every
        // candidate once, in order.
        for (max, page) in [(10, 3), (1, 1), (97, DIGESTS_PER_PAGE)] {
            let (mut all, mut from, mut rounds) = (Vec::new(), None, 0);
            loop {
                let (got, next) = handoff_candidates(&ks, &snap, from.as_ref(), max, page).unwrap();
                assert!(got.len() <= max);
                all.extend(got);
                rounds += 1;
                match next {
                    Some(n) => from = Some(n),
                    None => break,
                }
            }
            assert_eq!(all, want, "rounds of {max}");
            assert!(rounds >= want.len() / max, "{rounds} rounds of {max}");
        }
        // A node that replicates everything it holds finds nothing to hand off.
        let mut alone = snap.clone();
        alone.ring.retain(|m| m.peer == snap.local);
        assert_eq!(
            handoff_candidates(&ks, &alone, None, usize::MAX, 7).unwrap(),
            (Vec::new(), None)
        );
    }

    /// Handoff in batches: each replica gets the partitions it replicates in one request, a
    /// partition wider than a page goes on its own, and node 0 drops a partition only when
    /// every replica acknowledged it. A cut-off replica keeps its partitions on node 0 until
    /// it is back, and does not hold up the rest: one call goes on in rounds through them all.
    #[tokio::test]
    async fn handoff_pushes_batches_to_every_replica_and_drops_only_what_all_acknowledged() {
        use crate::fake_link::FakeLink;
        let (net, nodes) = crate::replication::tests::cluster(5);
        let (me, r0) = &nodes[0];
        let ks = r0.keyspace().clone();
        let link: Arc<dyn Link> = Arc::new(FakeLink {
            net: net.clone(),
            from: *me,
        });
        let membership = r0.membership().clone();
        let ae = AntiEntropy::new(
            *me,
            ks.clone(),
            membership.clone(),
            link,
            r0.clone(),
            Duration::from_millis(200),
        );
        let snap = membership.snapshot();
        let value = |i: u32| vec![(i % 251) as u8; if i == 0 { 300 * 1024 } else { 8 }];
        // Key 0 is wider than a page, one node 0 hands off; the member cut off is the one that
        // is neither node 0 nor one of its replicas, so they are all reachable.
        let wide = (0..)
            .map(|i: u32| format!("wide{i}").into_bytes())
            .find(|k| !snap.write_replicas(k).iter().any(|m| m.peer == *me))
            .unwrap();
        let wide_replicas: Vec<PeerId> =
            snap.write_replicas(&wide).iter().map(|m| m.peer).collect();
        let cut = snap
            .ring
            .iter()
            .map(|m| m.peer)
            .find(|p| p != me && !wide_replicas.contains(p))
            .unwrap();
        let mut keys = vec![wide];
        // More than a round holds: the pass goes on in rounds, past what the cut holds up.
        keys.extend((1..12_000u32).map(|i| format!("k{i}").into_bytes()));
        for (i, pk) in keys.iter().enumerate() {
            let m =
                Mutation::new(1, pk.clone()).upsert(b"", [("v", value(i as u32))], ks.now(), None);
            ks.apply(&m).unwrap();
        }
        let stored = |r: &Replication, pk: &[u8]| {
            r.keyspace()
                .read_row(1, pk, b"")
                .unwrap()
                .and_then(|row| row.get("v").map(|v| v.to_vec()))
        };
        let replica = |peer: PeerId| &nodes.iter().find(|(p, _)| *p == peer).unwrap().1;
        net.cut(cut);
        let done = ae.handoff(None, Duration::from_secs(120)).await;
        assert!(!done.blocked && done.next.is_none(), "{done:?}");
        assert!(done.rounds >= 2, "{done:?}");
        let handed = done.moved;
        let (mut expected, mut candidates) = (0, 0);
        for (i, pk) in keys.iter().enumerate() {
            let reps: Vec<PeerId> = snap.write_replicas(pk).iter().map(|m| m.peer).collect();
            let here = stored(r0, pk).is_some();
            candidates += usize::from(!reps.contains(me));
            if reps.contains(me) || reps.contains(&cut) {
                assert!(here, "key {i} stays on node 0");
            } else {
                expected += 1;
                assert!(!here, "key {i} left node 0");
                for p in reps {
                    assert_eq!(stored(replica(p), pk), Some(value(i as u32)), "key {i}");
                }
            }
        }
        assert_eq!(handed, expected);
        assert!(expected > 20, "{expected} handed off");
        assert!(candidates > HANDOFF_PER_ROUND, "{candidates} to hand off");
        net.heal(cut);
        let done = ae.handoff(None, Duration::from_secs(120)).await;
        assert!(done.next.is_none(), "{done:?}");
        assert_eq!(done.moved, candidates - expected);
        for (i, pk) in keys.iter().enumerate() {
            let reps: Vec<PeerId> = snap.write_replicas(pk).iter().map(|m| m.peer).collect();
            assert_eq!(stored(r0, pk).is_some(), reps.contains(me), "key {i}");
            if !reps.contains(me) {
                for p in reps {
                    assert_eq!(stored(replica(p), pk), Some(value(i as u32)), "key {i}");
                }
            }
        }
    }

    #[test]
    fn only_differing_partitions_move_each_way() {
        let mine = [d("a", 1), d("b", 2), d("c", 3)];
        let theirs = [d("a", 1), d("b", 9), d("d", 4)];
        let (pull, push) = plan_leaf(&mine, &theirs);
        let keys = |v: Vec<PartitionRef>| {
            v.into_iter()
                .map(|(_, k)| String::from_utf8(k).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(keys(pull), vec!["b", "d"]);
        assert_eq!(keys(push), vec!["b", "c"]);
    }
}
