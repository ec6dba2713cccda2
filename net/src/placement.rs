//! Placement: the replicas of a partition are the `replication_factor` ring members closest to
//! the partition key's hash by Kademlia's XOR metric.
//!
//! Positions are SHA-256 hashes — of the partition key for data, of the PeerId's bytes for
//! members — exactly as Kademlia places keys and peers, so a node's partial view still gives the
//! answer Kademlia would. A down member keeps its place (and gets hints) until it leaves or is
//! removed, so an outage moves no data.
//!
//! Pending ranges, as Cassandra's bootstrap: a member that is joining receives the writes of the
//! ranges it will own but answers no read for them until it has streamed them ([`Standing`]).
//! While any member is joining or has just joined, a partition has up to three replica sets —
//! the one readers that have not heard of the join use (normal members only), the one readers
//! use now (joiners left out), and the one it will have (everyone) — all of the same size. A
//! write goes to their union and waits for a quorum plus one acknowledgement per member the
//! union has beyond the replication factor, which is a quorum inside each of them.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use serde::Serialize;

use libp2p::PeerId;
use sha2::{Digest, Sha256};
use sipmesh_storage::merkle::MERKLE_DEPTH;

/// A position in the 256-bit Kademlia key space.
pub type Position = [u8; 32];

/// The position of a partition key.
pub fn key_position(partition_key: &[u8]) -> Position {
    Sha256::digest(partition_key).into()
}

/// The position of a peer.
pub fn peer_position(peer: &PeerId) -> Position {
    Sha256::digest(peer.to_bytes()).into()
}

pub(crate) fn distance(a: &Position, b: &Position) -> Position {
    let mut d = [0u8; 32];
    for i in 0..32 {
        d[i] = a[i] ^ b[i];
    }
    d
}

/// Where a member stands in owning its ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Standing {
    /// It owns its ranges: reads and writes go to it.
    Normal,
    /// It is bootstrapping: writes for the ranges it will own go to it (pending ranges), reads
    /// do not, until it has streamed those ranges from their replicas.
    Joining,
    /// It finished joining a moment ago: reads go to it, and writes still reach a quorum of the
    /// replicas it displaced as well, for members that have not heard yet.
    Settling,
    /// It is handing its ranges over before it leaves (decommission): reads still go to it,
    /// and writes also reach a quorum of the replicas the ranges will have without it.
    Leaving,
}

/// A member of the ring as placement sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingMember {
    /// The peer.
    pub peer: PeerId,
    /// Its position.
    pub position: Position,
    /// Whether it is currently up (down members keep their place until they leave).
    pub up: bool,
    /// Whether it owns its ranges yet.
    pub standing: Standing,
}

/// An immutable view of the ring, rebuilt by membership on every change and shared by `Arc`.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// This node.
    pub local: PeerId,
    /// Every ring member, this node included, in order of position.
    pub ring: Vec<RingMember>,
    /// The configured replication factor.
    pub replication_factor: usize,
    /// Increases on every change of the view.
    pub version: u64,
    /// The leaves this node shares with each peer (computed once, on first use).
    pub shared: OnceLock<Arc<SharedLeaves>>,
}

/// For each peer this node may share keys with: the Merkle leaves they may both replicate.
pub type SharedLeaves = HashMap<PeerId, Vec<u32>>;

impl Snapshot {
    /// A ring of one node.
    pub fn solo(local: PeerId, replication_factor: usize) -> Arc<Self> {
        Arc::new(Snapshot {
            local,
            ring: vec![RingMember {
                peer: local,
                position: peer_position(&local),
                up: true,
                standing: Standing::Normal,
            }],
            replication_factor,
            version: 0,
            shared: OnceLock::new(),
        })
    }

    /// The replication factor in effect: the configured one, or the ring size if smaller.
    pub fn effective_rf(&self) -> usize {
        self.replication_factor.min(self.ring.len()).max(1)
    }

    /// Whether this node replicates every partition: it is on the ring and the ring has no
    /// more members than the replication factor (then every replica set is the whole ring).
    pub fn replicates_everything(&self) -> bool {
        self.ring.len() <= self.replication_factor.max(1)
            && self.ring.iter().any(|m| m.peer == self.local)
    }

    /// Whether this node is a replica reads ask, and so a write replica, of every key in a
    /// Merkle leaf: then handoff has nothing to look for there. Keys in a leaf share the
    /// leaf-depth prefix of their distance to each member, so a member whose prefix distance
    /// is smaller is nearer for all of them; this node qualifies when the members ordered at
    /// or before it (joiners last, as [`Snapshot::replicas_at`] orders them), itself included,
    /// are no more than the replication factor. Linear in the ring.
    pub fn replicates_leaf(&self, leaf: usize) -> bool {
        let shift = 16 - MERKLE_DEPTH;
        let rank = |m: &RingMember| {
            let prefix = (u16::from_be_bytes([m.position[0], m.position[1]]) >> shift) as usize;
            (m.standing == Standing::Joining, prefix ^ leaf)
        };
        let Some(me) = self.ring.iter().find(|m| m.peer == self.local) else {
            return false;
        };
        let mine = rank(me);
        self.ring.iter().filter(|m| rank(m) <= mine).count() <= self.effective_rf()
    }

    /// Members that are up, this node included.
    pub fn up_count(&self) -> usize {
        self.ring.iter().filter(|m| m.up).count()
    }

    /// Whether this node sees a strict majority of the ring up. A node that does not is on the
    /// minority side of a partition (or alone) and must not accept QUORUM or ALL requests.
    /// A joiner that has heard from no member yet knows no ring: it has none either.
    pub fn has_majority(&self) -> bool {
        let unknown = matches!(self.ring.as_slice(), [me] if me.standing == Standing::Joining);
        !unknown && self.up_count() * 2 > self.ring.len()
    }

    /// The ring member whose position starts with `prefix` (how flow tokens name nodes), and
    /// whether it is up.
    /// A binary search (every datagram between nodes names its sender this way).
    pub fn member_by_prefix(&self, prefix: &[u8]) -> Option<(PeerId, bool)> {
        let n = prefix.len().min(32);
        let at = self.ring.partition_point(|m| m.position[..n] < prefix[..n]);
        self.ring
            .get(at)
            .filter(|m| m.position.starts_with(prefix))
            .map(|m| (m.peer, m.up))
    }

    /// Whether some member is joining or has just joined (then reads and writes of a partition
    /// may have different replicas).
    pub fn in_transition(&self) -> bool {
        self.ring.iter().any(|m| m.standing != Standing::Normal)
    }

    /// The `effective_rf` members closest to `position`, those `later` says true of only after
    /// all the others (so a set is filled up with them when too few others exist).
    fn closest(
        &self,
        position: &Position,
        later: impl Fn(&RingMember) -> bool,
    ) -> Vec<&RingMember> {
        let mut by_distance: Vec<((bool, Position), &RingMember)> = self
            .ring
            .iter()
            .map(|m| ((later(m), distance(&m.position, position)), m))
            .collect();
        let rf = self.effective_rf();
        if by_distance.len() > rf {
            by_distance.select_nth_unstable_by_key(rf - 1, |a| a.0);
            by_distance.truncate(rf);
        }
        by_distance.sort_unstable_by_key(|a| a.0);
        by_distance.into_iter().map(|(_, m)| m).collect()
    }

    /// The replicas reads of a position ask, closest first: joining members only when too few
    /// others exist (a mesh starting together, where there is nothing to stream yet).
    pub fn replicas_at(&self, position: &Position) -> Vec<&RingMember> {
        self.closest(position, |m| m.standing == Standing::Joining)
    }

    /// The replicas of a partition key that reads ask, closest first.
    pub fn replicas(&self, partition_key: &[u8]) -> Vec<&RingMember> {
        self.replicas_at(&key_position(partition_key))
    }

    /// The replicas writes of a partition key go to: those reads ask, and while members join
    /// or leave, those reads asked before ([`Standing::Settling`] members left out) and those
    /// they will ask (joiners in, leavers out). A write needs `cl.required(effective_rf())`
    /// plus one for each member beyond `effective_rf()` (Cassandra's pending ranges): then a
    /// quorum of every set of `effective_rf()` of them has it.
    pub fn write_replicas(&self, partition_key: &[u8]) -> Vec<&RingMember> {
        let position = key_position(partition_key);
        let mut set = self.replicas_at(&position);
        if self.in_transition() {
            let before = self.closest(&position, |m| {
                matches!(m.standing, Standing::Joining | Standing::Settling)
            });
            let after = self.closest(&position, |m| m.standing == Standing::Leaving);
            for m in before.into_iter().chain(after) {
                if !set.iter().any(|s| s.peer == m.peer) {
                    set.push(m);
                }
            }
        }
        set
    }

    /// Whether this node is a replica reads of the partition key ask.
    pub fn is_local_replica(&self, partition_key: &[u8]) -> bool {
        self.replicas(partition_key)
            .iter()
            .any(|m| m.peer == self.local)
    }

    /// Whether this node holds the partition key for writes (a replica reads ask, one they
    /// asked a moment ago, or one they will ask once it joined).
    pub fn is_local_owner(&self, partition_key: &[u8]) -> bool {
        self.write_replicas(partition_key)
            .iter()
            .any(|m| m.peer == self.local)
    }

    /// The replicas of every key in a Merkle leaf, if they are the same for all of them (they
    /// are unless two members share the leaf-depth prefix of their positions where it matters).
    pub fn leaf_replicas(&self, leaf: usize) -> Option<Vec<PeerId>> {
        let rf = self.effective_rf();
        let shift = 16 - MERKLE_DEPTH;
        let prefix = |p: &Position| (u16::from_be_bytes([p[0], p[1]]) >> shift) as usize;
        let mut by_distance: Vec<(usize, PeerId)> = self
            .ring
            .iter()
            .map(|m| (prefix(&m.position) ^ leaf, m.peer))
            .collect();
        by_distance.sort_unstable_by_key(|(d, _)| *d);
        if by_distance.len() > rf && by_distance[rf - 1].0 == by_distance[rf].0 {
            return None;
        }
        Some(by_distance.into_iter().take(rf).map(|(_, p)| p).collect())
    }
}

impl Snapshot {
    /// The members that may be replicas of some key in a Merkle leaf: the RF nearest the leaf
    /// by the leaf-depth prefix of their positions, and any tied with the last of them (the
    /// bits below the prefix decide between those, key by key) — in each replica set a write
    /// reaches while members join. Linear in the ring.
    pub fn leaf_candidates(&self, leaf: usize) -> Vec<PeerId> {
        let rf = self.effective_rf();
        if self.ring.len() <= rf {
            return self.ring.iter().map(|m| m.peer).collect();
        }
        let shift = 16 - MERKLE_DEPTH;
        let prefix = |p: &Position| (u16::from_be_bytes([p[0], p[1]]) >> shift) as usize;
        let among = |later: &dyn Fn(&RingMember) -> bool| -> Vec<PeerId> {
            let mut d: Vec<(bool, usize)> = self
                .ring
                .iter()
                .map(|m| (later(m), prefix(&m.position) ^ leaf))
                .collect();
            let (_, &mut limit, _) = d.select_nth_unstable(rf - 1);
            self.ring
                .iter()
                .filter(|m| (later(m), prefix(&m.position) ^ leaf) <= limit)
                .map(|m| m.peer)
                .collect()
        };
        let mut out = among(&|m| m.standing == Standing::Leaving);
        if self.in_transition() {
            let joining = among(&|m| m.standing == Standing::Joining);
            let before = among(&|m| matches!(m.standing, Standing::Joining | Standing::Settling));
            for p in joining.into_iter().chain(before) {
                if !out.contains(&p) {
                    out.push(p);
                }
            }
        }
        out
    }

    /// For every other member this node may share keys with, the Merkle leaves both may
    /// replicate (what anti-entropy compares with it). Computed once per snapshot: linear in
    /// the ring per leaf. Under XOR placement the peers found are this node's neighbours in
    /// the key space, a handful whatever the ring's size.
    pub fn shared_leaves(&self) -> Arc<SharedLeaves> {
        self.shared
            .get_or_init(|| {
                let mut out: SharedLeaves = HashMap::new();
                for leaf in 0..(1usize << MERKLE_DEPTH) {
                    let c = self.leaf_candidates(leaf);
                    if c.contains(&self.local) {
                        for p in c.into_iter().filter(|p| *p != self.local) {
                            out.entry(p).or_default().push(leaf as u32);
                        }
                    }
                }
                Arc::new(out)
            })
            .clone()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use sipmesh_storage::merkle::{leaf_of, MERKLE_LEAVES};
    use sipmesh_storage::token_of;

    /// A settled ring of `n` random members, the first this node, three replicas of a key.
    pub(crate) fn ring(n: usize) -> Snapshot {
        let peers: Vec<PeerId> = (0..n).map(|_| PeerId::random()).collect();
        let mut ring: Vec<RingMember> = peers
            .iter()
            .map(|p| RingMember {
                peer: *p,
                position: peer_position(p),
                up: true,
                standing: Standing::Normal,
            })
            .collect();
        ring.sort_by_key(|m| m.position);
        Snapshot {
            local: peers[0],
            ring,
            replication_factor: 3,
            version: 1,
            shared: OnceLock::new(),
        }
    }

    #[test]
    fn replicas_are_the_xor_closest_and_stable() {
        let s = ring(7);
        for i in 0..200u32 {
            let key = i.to_be_bytes();
            let reps = s.replicas(&key);
            assert_eq!(reps.len(), 3);
            let pos = key_position(&key);
            let worst = distance(&reps[2].position, &pos);
            for m in &s.ring {
                if !reps.iter().any(|r| r.peer == m.peer) {
                    assert!(distance(&m.position, &pos) > worst);
                }
            }
        }
    }

    /// Handoff skips its keyspace scan only when every write replica set holds this node.
    #[test]
    fn a_ring_no_larger_than_the_replication_factor_replicates_everything() {
        for n in 1..=5 {
            let mut s = ring(n);
            let all = (0..500u32).all(|i| s.is_local_owner(&i.to_be_bytes()));
            assert_eq!(s.replicates_everything(), all, "ring of {n}");
            assert_eq!(s.replicates_everything(), n <= 3, "ring of {n}");
            // A node no longer on the ring (removed) holds nothing of its own.
            s.local = PeerId::random();
            assert!(!s.replicates_everything(), "ring of {n}, not a member");
        }
    }

    #[test]
    fn shared_leaves_cover_every_pair_of_replicas_and_only_neighbours() {
        let s = ring(40);
        let shared = s.shared_leaves();
        for i in 0..20_000u32 {
            let key = i.to_be_bytes();
            let reps: Vec<PeerId> = s.replicas(&key).iter().map(|m| m.peer).collect();
            if !reps.contains(&s.local) {
                continue;
            }
            let leaf = leaf_of(token_of(&key)) as u32;
            for p in reps.iter().filter(|p| **p != s.local) {
                assert!(
                    shared.get(p).is_some_and(|l| l.contains(&leaf)),
                    "a fellow replica of key {i} does not compare leaf {leaf}"
                );
            }
        }
        // Its fellow replicas are a few neighbours, not the ring.
        assert!(shared.len() < 20, "{} of 39 peers", shared.len());
    }

    #[test]
    fn leaf_replicas_agree_with_key_replicas() {
        let s = ring(9);
        let mut uniform = 0;
        for i in 0..3000u32 {
            let key = i.to_be_bytes();
            let leaf = leaf_of(token_of(&key));
            if let Some(leaf_reps) = s.leaf_replicas(leaf) {
                uniform += 1;
                let mut a: Vec<PeerId> = s.replicas(&key).iter().map(|m| m.peer).collect();
                let mut b = leaf_reps;
                a.sort();
                b.sort();
                assert_eq!(a, b, "leaf {leaf}");
            }
        }
        assert!(uniform > 2500);
    }

    #[test]
    fn a_leaf_replicated_whole_holds_only_keys_this_node_replicates() {
        let mut s = ring(9);
        let check = |s: &Snapshot| {
            let whole = (0..MERKLE_LEAVES).filter(|l| s.replicates_leaf(*l)).count();
            let mut checked = 0;
            for i in 0..20_000u32 {
                let key = i.to_be_bytes();
                if s.replicates_leaf(leaf_of(token_of(&key))) {
                    assert!(s.is_local_owner(&key), "key {i}");
                    assert!(s.is_local_replica(&key), "key {i}");
                    checked += 1;
                }
            }
            assert!(checked > 0 || whole == 0);
            whole
        };
        let settled = check(&s);
        // Some of the leaves, never all of them (3 replicas of 9 members).
        assert!(settled > 0 && settled < MERKLE_LEAVES, "{settled} leaves");
        // The same leaves as the leaf's replica set says, when nobody joins.
        let by_set = (0..MERKLE_LEAVES)
            .filter(|l| s.leaf_replicas(*l).is_some_and(|r| r.contains(&s.local)))
            .count();
        assert_eq!(settled, by_set);
        // While members join, readers order them last: still true of the leaves it says.
        let others: Vec<usize> = (0..9).filter(|i| s.ring[*i].peer != s.local).collect();
        for (n, i) in others.into_iter().enumerate() {
            s.ring[i].standing = Standing::Joining;
            if n % 2 == 1 {
                check(&s);
            }
        }
        // Every other member joining: readers ask this node first for every key.
        assert_eq!(check(&s), MERKLE_LEAVES, "the only member readers may ask");
        // A joiner itself is asked by readers only when too few others exist.
        let me = s.ring.iter().position(|m| m.peer == s.local).unwrap();
        s.ring[me].standing = Standing::Joining;
        check(&s);
        s.ring[(me + 1) % 9].standing = Standing::Normal;
        s.ring[(me + 2) % 9].standing = Standing::Normal;
        s.ring[(me + 3) % 9].standing = Standing::Normal;
        assert_eq!(check(&s), 0, "a joiner with three members ahead of it");
    }

    #[test]
    fn members_are_found_by_a_prefix_of_their_position() {
        let snap = ring(50);
        for m in &snap.ring {
            assert_eq!(
                snap.member_by_prefix(&m.position[..8]),
                Some((m.peer, true))
            );
            assert_eq!(snap.member_by_prefix(&m.position), Some((m.peer, true)));
        }
        let mut absent = snap.ring[7].position;
        absent[7] ^= 0xff;
        assert_eq!(snap.member_by_prefix(&absent[..8]), None);
        assert_eq!(snap.member_by_prefix(&[0xff; 8]), None);
    }

    #[test]
    fn small_rings_and_majority() {
        let mut s = ring(2);
        assert_eq!(s.effective_rf(), 2);
        assert!(s.has_majority());
        s.ring[1].up = false;
        assert!(!s.has_majority());
        let s = ring(1);
        assert_eq!(s.replicas(b"k").len(), 1);
    }

    #[test]
    fn while_members_join_or_leave_a_write_reaches_a_quorum_of_every_replica_set() {
        let mut s = ring(8);
        s.ring[3].standing = Standing::Joining;
        s.ring[5].standing = Standing::Settling;
        s.ring[6].standing = Standing::Leaving;
        let (joiner, settling, leaver) = (s.ring[3].peer, s.ring[5].peer, s.ring[6].peer);
        let peers = |v: Vec<&RingMember>| v.into_iter().map(|m| m.peer).collect::<Vec<_>>();
        let mut widened = 0;
        for i in 0..2_000u32 {
            let key = i.to_be_bytes();
            let pos = key_position(&key);
            let read = peers(s.replicas(&key));
            assert!(!read.contains(&joiner), "a joiner answers reads");
            let before = peers(s.closest(&pos, |m| {
                matches!(m.standing, Standing::Joining | Standing::Settling)
            }));
            assert!(!before.contains(&settling));
            let after = peers(s.closest(&pos, |m| m.standing == Standing::Leaving));
            assert!(!after.contains(&leaver));
            let write = peers(s.write_replicas(&key));
            let needed = 2 + write.len() - 3;
            widened += usize::from(write.len() > 3);
            for set in [&read, &before, &after] {
                assert_eq!(set.len(), 3);
                assert!(set.iter().all(|p| write.contains(p)));
                // The fewest of `set` among any `needed` of `write`: still a quorum of it.
                let outside = write.iter().filter(|p| !set.contains(p)).count();
                assert!(needed - outside.min(needed) >= 2, "key {i}");
            }
        }
        assert!(
            widened > 100,
            "the joiners changed {widened} of 2,000 write sets"
        );
        // Without anyone joining, nothing widens.
        let plain = ring(8);
        for i in 0..200u32 {
            let key = i.to_be_bytes();
            assert_eq!(
                peers(plain.write_replicas(&key)),
                peers(plain.replicas(&key))
            );
        }
        // Everyone joining (a mesh starting together): reads still have three replicas.
        let mut fresh = ring(5);
        for m in &mut fresh.ring {
            m.standing = Standing::Joining;
        }
        assert_eq!(fresh.replicas(b"k").len(), 3);
    }
}
