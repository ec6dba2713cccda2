//! The membership state machine: what this node knows of every other member, driven only by
//! the messages it is given and the time it is told (`now`), never by a clock of its own — so
//! every rule is unit-tested with explicit time, as the SIP transactions are.
//!
//! Failure detection marks members down and up again; it never changes placement. The ring (the
//! members that own data) changes only by decisions: a member joins when first heard from, and
//! leaves when it says so (decommission) or when an operator removes it (`remove`). A member down
//! for days keeps its place and gets hints, as in Cassandra, so a partition can never make two
//! sides each shrink the ring to a majority of their own.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use libp2p::{Multiaddr, PeerId};
use tracing::{info, warn};

use super::{MemberEvent, MemberState};
use crate::placement::{peer_position, RingMember, Standing};
use crate::protocol::{Gossip, MemberInfo};

/// Candidates (peers named by gossip or connected, not yet heard from) kept at most.
pub(crate) const MAX_CANDIDATES: usize = 1_024;
/// How long a candidate that never answers is heartbeated.
pub(crate) const CANDIDATE_TTL: Duration = Duration::from_secs(300);
/// Candidates heartbeated per tick at most (in turn).
pub(crate) const CANDIDATES_PER_TICK: usize = 32;
/// Members named in one heartbeat's gossip at most.
pub(crate) const GOSSIP_SAMPLE: usize = 16;
/// How long a member that left is remembered (its state gossiped so every member learns it).
pub(crate) const FORGET_AFTER: Duration = Duration::from_secs(3_600);
/// How long writes still reach the replicas a member displaced once it finished joining, for
/// members that have not heard yet (Cassandra's ring delay). The joiner tells every up member at
/// once, and heartbeats every member in turn besides.
pub(crate) const SETTLE: Duration = Duration::from_secs(30);

/// A member as the persisted ring remembers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Known {
    pub(crate) peer: PeerId,
    pub(crate) generation: u64,
    pub(crate) addrs: Vec<String>,
    pub(crate) joining: bool,
}

/// A member as this node knows it.
pub(crate) struct Entry {
    pub(crate) info: MemberInfo,
    pub(crate) addrs: Vec<Multiaddr>,
    pub(crate) state: MemberState,
    pub(crate) last_heard: Instant,
    pub(crate) since: Instant,
    /// This generation announced it is stopping: its late heartbeats do not bring it back up.
    pub(crate) stopped: bool,
    /// SWIM declared this generation down: only SWIM brings it back (when it refutes or
    /// rejoins), so a late heartbeat answer cannot leave it up where SWIM no longer probes it.
    pub(crate) swim_down: bool,
    /// When this node learnt that the member finished joining (settling until [`SETTLE`]).
    pub(crate) joined_at: Option<Instant>,
}

impl Entry {
    pub(crate) fn standing(&self) -> Standing {
        standing(self.info.joining, self.info.leaving, self.joined_at)
    }
}

/// A member that leaves while still joining stays joining: it holds nothing reads count on.
fn standing(joining: bool, leaving: bool, joined_at: Option<Instant>) -> Standing {
    match (joining, leaving, joined_at) {
        (true, _, _) => Standing::Joining,
        (false, true, _) => Standing::Leaving,
        (false, false, Some(_)) => Standing::Settling,
        (false, false, None) => Standing::Normal,
    }
}

/// What a step changed: the events to publish, and whether the ring (who owns data, who is up)
/// must be rebuilt.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Changes {
    pub(crate) events: Vec<MemberEvent>,
    pub(crate) ring_changed: bool,
}

impl Changes {
    fn push(&mut self, event: MemberEvent) {
        self.ring_changed = true;
        self.events.push(event);
    }
}

/// Why a removal was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RemoveRefused {
    /// The node asked is the one to remove.
    Local,
    /// Not a member.
    Unknown,
    /// Up: it must be decommissioned so it hands its data over.
    Up,
    /// So many members are down that a partition may have its last copies on them.
    LastCopies { down: usize },
}

/// The membership state of one node, without locks or clocks.
pub(crate) struct View {
    local: PeerId,
    replication_factor: usize,
    members: HashMap<PeerId, Entry>,
    /// Connected or gossiped peers that are not members yet (heartbeats go to them too).
    candidates: HashMap<PeerId, Instant>,
    /// This node is bootstrapping (and since when it finished, while settling).
    joining: bool,
    joined_at: Option<Instant>,
    /// This node is handing its ranges over before it leaves.
    leaving: bool,
}

impl View {
    /// A view started at `now` holding `known` (the persisted ring), each down until heard
    /// from; `joining` when this node must stream its ranges before it answers reads.
    pub(crate) fn new(
        now: Instant,
        local: PeerId,
        replication_factor: usize,
        known: Vec<Known>,
        joining: bool,
    ) -> Self {
        let members = known
            .into_iter()
            .filter(|k| k.peer != local)
            .map(
                |Known {
                     peer,
                     generation,
                     addrs,
                     joining,
                 }| {
                    let entry = Entry {
                        stopped: false,
                        swim_down: false,
                        joined_at: None,
                        addrs: addrs.iter().filter_map(|a| a.parse().ok()).collect(),
                        info: MemberInfo {
                            wall_ms: 0,
                            credential: Vec::new(),
                            peer_id: peer.to_bytes(),
                            addrs,
                            generation,
                            tags: BTreeMap::new(),
                            joining,
                            leaving: false,
                        },
                        state: MemberState::Down,
                        last_heard: now,
                        since: now,
                    };
                    (peer, entry)
                },
            )
            .collect();
        View {
            local,
            replication_factor,
            members,
            candidates: HashMap::new(),
            joining,
            joined_at: None,
            leaving: false,
        }
    }

    /// Whether this node is still bootstrapping.
    pub(crate) fn joining(&self) -> bool {
        self.joining
    }

    /// Where this node stands in owning its ranges.
    pub(crate) fn local_standing(&self) -> Standing {
        standing(self.joining, self.leaving, self.joined_at)
    }

    /// Whether this node is handing its ranges over before it leaves.
    pub(crate) fn leaving(&self) -> bool {
        self.leaving
    }

    /// This node starts handing its ranges over (decommission): writes also reach the
    /// replicas they will have without it.
    pub(crate) fn start_leaving(&mut self) -> Changes {
        let mut changes = Changes::default();
        if !self.leaving {
            self.leaving = true;
            changes.ring_changed = true;
        }
        changes
    }

    /// This node has streamed its ranges: it answers reads from now on (settling first).
    pub(crate) fn finish_joining(&mut self, now: Instant) -> Changes {
        let mut changes = Changes::default();
        if self.joining {
            info!("joined: this node answers reads for its ranges");
            self.joining = false;
            self.joined_at = Some(now);
            changes.ring_changed = true;
        }
        changes
    }

    #[cfg(test)]
    pub(crate) fn local(&self) -> PeerId {
        self.local
    }

    pub(crate) fn get(&self, peer: &PeerId) -> Option<&Entry> {
        self.members.get(peer)
    }

    pub(crate) fn entries(&self) -> impl Iterator<Item = (&PeerId, &Entry)> {
        self.members.iter()
    }

    #[cfg(test)]
    pub(crate) fn candidate_count(&self) -> usize {
        self.candidates.len()
    }

    /// A connected peer that may be a member: heartbeat it.
    pub(crate) fn add_candidate(&mut self, now: Instant, peer: PeerId) {
        if peer != self.local
            && !self.members.contains_key(&peer)
            && (self.candidates.len() < MAX_CANDIDATES || self.candidates.contains_key(&peer))
        {
            self.candidates.insert(peer, now);
        }
    }

    /// What this node gossips: at most [`GOSSIP_SAMPLE`] members it knows, picked at random,
    /// with whether they left — a bounded message whatever the mesh's size. Discovery and
    /// leaves also travel by SWIM (`swim`); this sample is how a new node learns addresses.
    pub(crate) fn gossip(&self) -> Vec<Gossip> {
        use rand::seq::IteratorRandom;
        self.members
            .iter()
            .choose_multiple(&mut rand::thread_rng(), GOSSIP_SAMPLE)
            .into_iter()
            .map(|(peer, e)| Gossip {
                peer_id: peer.to_bytes(),
                addrs: e.info.addrs.clone(),
                generation: e.info.generation,
                left: e.state == MemberState::Left,
            })
            .collect()
    }

    /// Whom to heartbeat on tick number `tick` — a bounded number whatever the mesh's size
    /// (failure detection is SWIM's, `swim`): up to [`CANDIDATES_PER_TICK`] candidates in turn
    /// (peers not yet heard from: to admit them and learn their info), and on odd ticks one up
    /// member in turn (to refresh its info: tags, clock), on even ticks one down member in turn
    /// (to find it back after a restart).
    pub(crate) fn heartbeat_targets(&self, tick: u64) -> Vec<PeerId> {
        let mut up: Vec<&PeerId> = Vec::new();
        let mut down: Vec<&PeerId> = Vec::new();
        for (p, e) in &self.members {
            match e.state {
                MemberState::Up => up.push(p),
                MemberState::Down => down.push(p),
                MemberState::Left => {}
            }
        }
        up.sort();
        down.sort();
        let mut candidates: Vec<&PeerId> = self
            .candidates
            .keys()
            .filter(|c| !self.members.contains_key(c))
            .collect();
        candidates.sort();
        // At most CANDIDATES_PER_TICK, in turn: a node joining a large mesh learns of many
        // peers at once and must not heartbeat them all at every tick.
        let start = if candidates.len() > CANDIDATES_PER_TICK {
            (tick as usize * CANDIDATES_PER_TICK) % candidates.len()
        } else {
            0
        };
        let mut out: Vec<PeerId> = candidates
            .iter()
            .cycle()
            .skip(start)
            .take(candidates.len().min(CANDIDATES_PER_TICK))
            .map(|p| **p)
            .collect();
        if !up.is_empty() && !tick.is_multiple_of(2) {
            out.push(*up[((tick / 2) % up.len() as u64) as usize]);
        }
        if !down.is_empty() && tick.is_multiple_of(2) {
            out.push(*down[((tick / 2) % down.len() as u64) as usize]);
        }
        out
    }

    /// SWIM found `peer` (in `generation`) alive. A down member of that generation or later is
    /// up again; a peer this node does not know becomes a candidate (heartbeated for its info
    /// and credential before it joins the ring). Returns whether it was unknown.
    pub(crate) fn on_swim_up(
        &mut self,
        now: Instant,
        peer: PeerId,
        generation: u64,
    ) -> (Changes, bool) {
        let mut changes = Changes::default();
        if peer == self.local {
            return (changes, false);
        }
        match self.members.get_mut(&peer) {
            Some(e) => {
                let stale = generation < e.info.generation
                    || e.state == MemberState::Left
                    || (e.stopped && generation == e.info.generation);
                if !stale && generation == e.info.generation {
                    e.swim_down = false;
                }
                if !stale && e.state == MemberState::Down && generation == e.info.generation {
                    info!(%peer, generation, "member up (SWIM)");
                    e.state = MemberState::Up;
                    e.since = now;
                    e.last_heard = now;
                    changes.push(MemberEvent::Up(peer));
                }
                // A later generation is a restart: its heartbeat brings its new info.
                (changes, !stale && generation > e.info.generation)
            }
            None => {
                self.add_candidate(now, peer);
                (changes, true)
            }
        }
    }

    /// SWIM declared `peer` (in `generation`) down.
    pub(crate) fn on_swim_down(&mut self, now: Instant, peer: PeerId, generation: u64) -> Changes {
        let mut changes = Changes::default();
        if let Some(e) = self.members.get_mut(&peer) {
            if generation >= e.info.generation {
                e.swim_down = true;
            }
            if e.state == MemberState::Up && generation >= e.info.generation {
                warn!(%peer, generation, "member down (SWIM)");
                e.state = MemberState::Down;
                e.since = now;
                changes.push(MemberEvent::Down(peer));
            }
        }
        changes
    }

    /// A member's heartbeat (or its answer to ours) arrived at `now`, with its gossip. Returns
    /// what changed and the addresses of peers first learnt from the gossip (to dial).
    pub(crate) fn on_heartbeat(
        &mut self,
        now: Instant,
        from: PeerId,
        info: MemberInfo,
        gossip: &[Gossip],
    ) -> (Changes, Vec<(PeerId, Multiaddr)>) {
        let mut changes = Changes::default();
        if PeerId::from_bytes(&info.peer_id).ok() != Some(from) || from == self.local {
            warn!(%from, "heartbeat names another peer; ignored");
            return (changes, Vec::new());
        }
        let addrs: Vec<Multiaddr> = info.addrs.iter().filter_map(|a| a.parse().ok()).collect();
        match self.members.get_mut(&from) {
            Some(e) => {
                let restarted = info.generation > e.info.generation;
                if info.generation < e.info.generation {
                    return (changes, Vec::new()); // a stale message from a previous life
                }
                if (e.state == MemberState::Left || e.stopped) && !restarted {
                    return (changes, Vec::new());
                }
                e.stopped = false;
                e.last_heard = now;
                if restarted {
                    e.swim_down = false;
                }
                if e.state != MemberState::Up && !e.swim_down {
                    info!(peer = %from, generation = info.generation, was = ?e.state, "member up");
                    e.state = MemberState::Up;
                    e.since = now;
                    changes.push(MemberEvent::Up(from));
                } else if restarted {
                    info!(peer = %from, generation = info.generation, "member restarted");
                    changes.events.push(MemberEvent::Up(from));
                }
                // A bare heartbeat (from a member that has not admitted this node yet) says
                // nothing of its tags, and maybe nothing of its addresses: keep what is known
                // (unless it restarted: then the old ones may be stale).
                let mut info = info;
                let bare = info.tags.is_empty() && !restarted;
                if bare {
                    info.tags = std::mem::take(&mut e.info.tags);
                }
                if bare && addrs.is_empty() {
                    info.addrs = std::mem::take(&mut e.info.addrs);
                } else {
                    e.addrs = addrs;
                }
                if e.info.leaving != info.leaving {
                    info!(peer = %from, leaving = info.leaving, "member's standing changed");
                    changes.ring_changed = true;
                }
                if e.info.joining != info.joining {
                    // Finished joining: settling. (Joining again: a restart from an empty
                    // data directory under the same identity.)
                    e.joined_at = (!info.joining).then_some(now);
                    info!(peer = %from, joining = info.joining, "member's standing changed");
                    changes.ring_changed = true;
                }
                e.info = info;
            }
            None => {
                info!(peer = %from, generation = info.generation, "member joined");
                self.members.insert(
                    from,
                    Entry {
                        stopped: false,
                        swim_down: false,
                        joined_at: None,
                        info,
                        addrs,
                        state: MemberState::Up,
                        last_heard: now,
                        since: now,
                    },
                );
                changes.push(MemberEvent::Up(from));
            }
        }
        self.candidates.remove(&from);
        let mut learnt = Vec::new();
        for g in gossip {
            let Ok(peer) = PeerId::from_bytes(&g.peer_id) else {
                continue;
            };
            if peer == self.local {
                continue;
            }
            match self.members.get_mut(&peer) {
                Some(e)
                    if g.left
                        && g.generation >= e.info.generation
                        && e.state != MemberState::Left =>
                {
                    info!(%peer, "member left (gossip)");
                    e.state = MemberState::Left;
                    e.since = now;
                    changes.push(MemberEvent::Left(peer));
                }
                Some(_) => {}
                None if !g.left
                    && self.candidates.len() < MAX_CANDIDATES
                    && !self.candidates.contains_key(&peer) =>
                {
                    self.candidates.insert(peer, now);
                    learnt.extend(
                        g.addrs
                            .iter()
                            .filter_map(|a| a.parse().ok())
                            .map(|a| (peer, a)),
                    );
                }
                None => {}
            }
        }
        (changes, learnt)
    }

    /// A member of `generation` stops in place (a restart): down at once, as if its silence had
    /// been detected; it keeps its ring place and gets hints. A later generation's heartbeat
    /// brings it back up.
    pub(crate) fn on_stopping(&mut self, now: Instant, from: PeerId, generation: u64) -> Changes {
        let mut changes = Changes::default();
        if let Some(e) = self.members.get_mut(&from) {
            if e.info.generation == generation && e.state != MemberState::Left {
                e.stopped = true;
            }
            if e.info.generation == generation && e.state == MemberState::Up {
                info!(peer = %from, "member stopping (down, keeps its ring place)");
                e.state = MemberState::Down;
                e.since = now;
                changes.push(MemberEvent::Down(from));
            }
        }
        changes
    }

    /// A member left gracefully (decommission) with `generation`.
    pub(crate) fn on_leave(&mut self, now: Instant, from: PeerId, generation: u64) -> Changes {
        let mut changes = Changes::default();
        if let Some(e) = self.members.get_mut(&from) {
            if e.info.generation <= generation && e.state != MemberState::Left {
                info!(peer = %from, "member left");
                e.state = MemberState::Left;
                e.since = now;
                changes.push(MemberEvent::Left(from));
            }
        }
        changes
    }

    /// An operator removes a dead member from the ring. Refused for this node, for a member
    /// that is up, and — unless `force` — while as many members are down as the replication
    /// factor (a partition may have had its last copies on them).
    pub(crate) fn remove(
        &mut self,
        now: Instant,
        peer: PeerId,
        force: bool,
    ) -> Result<Changes, RemoveRefused> {
        self.check_remove(peer, force)?;
        let mut changes = Changes::default();
        let Some(e) = self.members.get_mut(&peer) else {
            return Err(RemoveRefused::Unknown);
        };
        if e.state == MemberState::Left {
            return Ok(changes);
        }
        info!(%peer, force, "member removed by the operator");
        e.state = MemberState::Left;
        e.since = now;
        changes.push(MemberEvent::Left(peer));
        Ok(changes)
    }

    /// Whether `peer` may be removed (see [`View::remove`]).
    pub(crate) fn check_remove(&self, peer: PeerId, force: bool) -> Result<(), RemoveRefused> {
        if peer == self.local {
            return Err(RemoveRefused::Local);
        }
        let down = self
            .members
            .values()
            .filter(|e| e.state == MemberState::Down)
            .count();
        let e = self.members.get(&peer).ok_or(RemoveRefused::Unknown)?;
        match e.state {
            MemberState::Up => Err(RemoveRefused::Up),
            MemberState::Left => Ok(()),
            MemberState::Down if down >= self.replication_factor && !force => {
                Err(RemoveRefused::LastCopies { down })
            }
            MemberState::Down => Ok(()),
        }
    }

    /// A dead member is being removed: it stands `leaving` (writes also reach the replicas its
    /// ranges will have) until the removal completes. Only a down member; nothing to do for
    /// one this node never knew (a newer member: its ring is already without it).
    pub(crate) fn mark_removing(&mut self, peer: PeerId) -> Result<Changes, RemoveRefused> {
        let mut changes = Changes::default();
        let Some(e) = self.members.get_mut(&peer) else {
            return Ok(changes);
        };
        match e.state {
            MemberState::Up => return Err(RemoveRefused::Up),
            MemberState::Left => return Ok(changes),
            MemberState::Down => {}
        }
        if !e.info.leaving {
            info!(%peer, "member being removed: its ranges stream to their new replicas");
            e.info.leaving = true;
            changes.ring_changed = true;
        }
        Ok(changes)
    }

    /// Housekeeping at `now`: candidates that never answered and members that left long ago
    /// are forgotten. Failure detection is SWIM's (`on_swim_down`); nothing here changes who
    /// owns data.
    pub(crate) fn tick(&mut self, now: Instant) -> Changes {
        self.candidates
            .retain(|_, since| now.saturating_duration_since(*since) < CANDIDATE_TTL);
        self.members.retain(|_, e| {
            e.state != MemberState::Left || now.saturating_duration_since(e.since) < FORGET_AFTER
        });
        let mut changes = Changes::default();
        let settled = |at: &mut Option<Instant>| {
            let done = at.is_some_and(|t| now.saturating_duration_since(t) >= SETTLE);
            if done {
                *at = None;
            }
            done
        };
        for e in self.members.values_mut() {
            changes.ring_changed |= settled(&mut e.joined_at);
        }
        changes.ring_changed |= settled(&mut self.joined_at);
        changes
    }

    /// The ring: this node and every member that has not left, sorted by position.
    pub(crate) fn ring(&self) -> Vec<RingMember> {
        let mut ring = vec![RingMember {
            peer: self.local,
            position: peer_position(&self.local),
            up: true,
            standing: self.local_standing(),
        }];
        ring.extend(
            self.members
                .iter()
                .filter(|(_, e)| e.state != MemberState::Left)
                .map(|(peer, e)| RingMember {
                    peer: *peer,
                    position: peer_position(peer),
                    up: e.state == MemberState::Up,
                    standing: e.standing(),
                }),
        );
        ring.sort_by_key(|m| m.position);
        ring
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(p: PeerId, generation: u64) -> MemberInfo {
        MemberInfo {
            wall_ms: 0,
            credential: Vec::new(),
            joining: false,
            leaving: false,
            peer_id: p.to_bytes(),
            addrs: vec!["/ip4/127.0.0.1/tcp/4001".into()],
            generation,
            tags: BTreeMap::new(),
        }
    }

    fn view(t0: Instant) -> View {
        View::new(t0, PeerId::random(), 3, Vec::new(), false)
    }

    fn state(v: &View, p: &PeerId) -> Option<MemberState> {
        v.get(p).map(|e| e.state)
    }

    fn up_count(v: &View) -> usize {
        v.ring().iter().filter(|m| m.up).count()
    }

    #[test]
    fn a_member_joins_when_heard_from_and_goes_down_when_swim_says_so() {
        let t0 = Instant::now();
        let mut v = view(t0);
        let a = PeerId::random();
        let (changes, _) = v.on_heartbeat(t0, a, info(a, 1), &[]);
        assert_eq!(changes.events, vec![MemberEvent::Up(a)]);
        assert!(changes.ring_changed);
        // Silence alone marks nobody down: SWIM's probes decide.
        assert_eq!(v.tick(t0 + Duration::from_secs(3_000)), Changes::default());
        assert_eq!(state(&v, &a), Some(MemberState::Up));
        // SWIM's verdict about an older generation is stale.
        assert!(v.on_swim_down(t0, a, 0).events.is_empty());
        let changes = v.on_swim_down(t0, a, 1);
        assert_eq!(changes.events, vec![MemberEvent::Down(a)]);
        assert_eq!(state(&v, &a), Some(MemberState::Down));
        // SWIM finding it alive again (it refuted, or rejoined) brings it back.
        let (changes, unknown) = v.on_swim_up(t0, a, 1);
        assert_eq!(changes.events, vec![MemberEvent::Up(a)]);
        assert!(!unknown);
        v.on_swim_down(t0, a, 1);
        // A late heartbeat answer of the generation SWIM declared down does not: SWIM would no
        // longer probe it, so it could stay up for ever after dying.
        let (changes, _) = v.on_heartbeat(t0 + Duration::from_secs(10), a, info(a, 1), &[]);
        assert!(changes.events.is_empty());
        assert_eq!(state(&v, &a), Some(MemberState::Down));
        // A restart (a new generation) does.
        let (changes, _) = v.on_heartbeat(t0 + Duration::from_secs(10), a, info(a, 2), &[]);
        assert_eq!(changes.events, vec![MemberEvent::Up(a)]);
        assert_eq!(up_count(&v), 2);
        // A peer SWIM knows and this node does not is a candidate, not a member.
        let b = PeerId::random();
        let (changes, unknown) = v.on_swim_up(t0, b, 1);
        assert!(unknown && changes.events.is_empty());
        assert!(v.get(&b).is_none());
        assert_eq!(v.candidate_count(), 1);
    }

    #[test]
    fn a_bare_heartbeat_keeps_the_tags_known_and_takes_addresses_it_names() {
        let t0 = Instant::now();
        let mut v = view(t0);
        let a = PeerId::random();
        let mut full = info(a, 1);
        full.tags.insert("sip_ip".into(), "192.0.2.1:5060".into());
        v.on_heartbeat(t0, a, full.clone(), &[]);
        // Bare: a member that has not admitted this node yet shows only its credential.
        let bare = MemberInfo {
            addrs: Vec::new(),
            tags: BTreeMap::new(),
            ..full.clone()
        };
        v.on_heartbeat(t0, a, bare.clone(), &[]);
        let e = v.get(&a).unwrap();
        assert_eq!(e.info.tags, full.tags);
        assert_eq!(e.info.addrs, full.addrs);
        assert_eq!(e.addrs.len(), 1);
        // A bare heartbeat names the member's listen addresses (identify shows them to any
        // connection anyway): new ones are taken, the tags are kept.
        let moved = MemberInfo {
            addrs: vec!["/ip4/127.0.0.2/tcp/4002".into()],
            ..bare.clone()
        };
        v.on_heartbeat(t0, a, moved.clone(), &[]);
        let e = v.get(&a).unwrap();
        assert_eq!(e.info.tags, full.tags);
        assert_eq!(e.info.addrs, moved.addrs);
        assert_eq!(e.addrs, vec!["/ip4/127.0.0.2/tcp/4002".parse().unwrap()]);
        // A restart's bare heartbeat says the old ones may be stale: dropped.
        v.on_heartbeat(
            t0,
            a,
            MemberInfo {
                generation: 2,
                ..bare
            },
            &[],
        );
        assert!(v.get(&a).unwrap().info.tags.is_empty());
    }

    #[test]
    fn failure_detection_never_changes_placement() {
        let t0 = Instant::now();
        let mut v = view(t0);
        let peers: Vec<PeerId> = (0..4).map(|_| PeerId::random()).collect();
        for p in &peers {
            v.on_heartbeat(t0, *p, info(*p, 1), &[]);
        }
        let ring: Vec<PeerId> = v.ring().iter().map(|m| m.peer).collect();
        // Two members down for a week: down, but still in the ring (a 5-member ring with 3 up
        // keeps its majority only because its base did not shrink).
        for p in &peers[2..] {
            v.on_swim_down(t0, *p, 1);
        }
        for hour in 1..=168u64 {
            let now = t0 + Duration::from_secs(hour * 3_600);
            for p in &peers[..2] {
                v.on_heartbeat(now, *p, info(*p, 1), &[]);
            }
            v.tick(now);
        }
        let after: Vec<PeerId> = v.ring().iter().map(|m| m.peer).collect();
        assert_eq!(ring, after, "the ring changed without a decision");
        assert_eq!(state(&v, &peers[2]), Some(MemberState::Down));
        assert_eq!(up_count(&v), 3);
    }

    #[test]
    fn loaded_members_start_down_and_are_heartbeated_until_heard() {
        let t0 = Instant::now();
        let loaded = PeerId::random();
        let known = vec![Known {
            peer: loaded,
            generation: 7,
            addrs: vec!["/ip4/127.0.0.1/tcp/1".into()],
            joining: false,
        }];
        let mut v = View::new(t0, PeerId::random(), 3, known, false);
        let a = PeerId::random();
        v.on_heartbeat(t0, a, info(a, 1), &[]);
        assert_eq!(state(&v, &loaded), Some(MemberState::Down));
        assert_eq!(v.ring().len(), 3);
        assert_eq!(up_count(&v), 2);
        assert!(v.heartbeat_targets(2).contains(&loaded));
        // SWIM has not heard of it in this generation: its word alone does not bring it up.
        assert!(v.on_swim_up(t0, loaded, 6).0.events.is_empty());
        let (changes, _) = v.on_heartbeat(t0, loaded, info(loaded, 7), &[]);
        assert_eq!(changes.events, vec![MemberEvent::Up(loaded)]);
        assert_eq!(up_count(&v), 3);
    }

    #[test]
    fn generations_tell_restarts_from_stale_messages() {
        let t0 = Instant::now();
        let mut v = view(t0);
        let a = PeerId::random();
        v.on_heartbeat(t0, a, info(a, 5), &[]);
        // A restart (higher generation) while up is reported, without a ring change.
        let (changes, _) = v.on_heartbeat(t0, a, info(a, 6), &[]);
        assert_eq!(changes.events, vec![MemberEvent::Up(a)]);
        assert!(!changes.ring_changed);
        // A message from the previous life changes nothing, not even liveness.
        let later = t0 + Duration::from_secs(10);
        let (changes, _) = v.on_heartbeat(later, a, info(a, 5), &[]);
        assert_eq!(changes, Changes::default());
        assert!(v.on_swim_down(later, a, 5).events.is_empty());
        assert_eq!(state(&v, &a), Some(MemberState::Up));
        assert_eq!(
            v.on_swim_down(later, a, 6).events,
            vec![MemberEvent::Down(a)]
        );
    }

    #[test]
    fn a_member_that_left_stays_out_until_it_restarts() {
        let t0 = Instant::now();
        let mut v = view(t0);
        let a = PeerId::random();
        v.on_heartbeat(t0, a, info(a, 3), &[]);
        assert_eq!(v.on_leave(t0, a, 3).events, vec![MemberEvent::Left(a)]);
        assert_eq!(v.ring().len(), 1);
        // Late heartbeats of the same generation do not bring it back.
        let (changes, _) = v.on_heartbeat(t0, a, info(a, 3), &[]);
        assert_eq!(changes, Changes::default());
        // A new generation is a new start: it rejoins.
        let (changes, _) = v.on_heartbeat(t0, a, info(a, 4), &[]);
        assert_eq!(changes.events, vec![MemberEvent::Up(a)]);
        assert_eq!(v.ring().len(), 2);
    }

    #[test]
    fn a_member_stopping_in_place_is_down_at_once_and_keeps_its_place() {
        let t0 = Instant::now();
        let mut v = view(t0);
        let a = PeerId::random();
        v.on_heartbeat(t0, a, info(a, 1), &[]);
        let changes = v.on_stopping(t0, a, 1);
        assert_eq!(changes.events, vec![MemberEvent::Down(a)]);
        assert_eq!(state(&v, &a), Some(MemberState::Down));
        assert!(
            v.ring().iter().any(|m| m.peer == a),
            "it keeps its ring place"
        );
        // A late heartbeat of the stopped generation does not bring it back; a restart does.
        let (late, _) = v.on_heartbeat(t0, a, info(a, 1), &[]);
        assert!(late.events.is_empty());
        assert_eq!(state(&v, &a), Some(MemberState::Down));
        let (back, _) = v.on_heartbeat(t0, a, info(a, 2), &[]);
        assert_eq!(back.events, vec![MemberEvent::Up(a)]);
        // A stale announcement (an older generation) changes nothing.
        assert!(v.on_stopping(t0, a, 1).events.is_empty());
        assert_eq!(state(&v, &a), Some(MemberState::Up));
    }

    #[test]
    fn a_leave_spreads_by_gossip() {
        let t0 = Instant::now();
        let mut v = view(t0);
        let (a, b) = (PeerId::random(), PeerId::random());
        v.on_heartbeat(t0, a, info(a, 1), &[]);
        v.on_heartbeat(t0, b, info(b, 1), &[]);
        let gossip = [Gossip {
            peer_id: b.to_bytes(),
            addrs: Vec::new(),
            generation: 1,
            left: true,
        }];
        let (changes, _) = v.on_heartbeat(t0, a, info(a, 1), &gossip);
        assert_eq!(changes.events, vec![MemberEvent::Left(b)]);
        assert_eq!(state(&v, &b), Some(MemberState::Left));
        // Remembered for an hour (so it spreads further), then forgotten.
        v.tick(t0 + FORGET_AFTER - Duration::from_secs(1));
        assert!(v.get(&b).is_some());
        v.on_heartbeat(t0 + FORGET_AFTER, a, info(a, 1), &[]);
        v.tick(t0 + FORGET_AFTER + Duration::from_secs(1));
        assert!(v.get(&b).is_none());
        assert!(v.get(&a).is_some());
    }

    #[test]
    fn removal_is_refused_when_it_could_lose_data_unless_forced() {
        let t0 = Instant::now();
        let mut v = view(t0);
        let peers: Vec<PeerId> = (0..5).map(|_| PeerId::random()).collect();
        for p in &peers {
            v.on_heartbeat(t0, *p, info(*p, 1), &[]);
        }
        let local = v.local();
        assert_eq!(v.remove(t0, local, true), Err(RemoveRefused::Local));
        assert_eq!(
            v.remove(t0, PeerId::random(), false),
            Err(RemoveRefused::Unknown)
        );
        assert_eq!(v.remove(t0, peers[0], false), Err(RemoveRefused::Up));
        // Three down with RF=3: a partition may have lived only on them.
        let later = t0 + Duration::from_secs(60);
        for p in &peers[..3] {
            v.on_swim_down(later, *p, 1);
        }
        assert_eq!(
            v.remove(later, peers[0], false),
            Err(RemoveRefused::LastCopies { down: 3 })
        );
        // The operator who knows those nodes are gone for good (a redeploy) forces it.
        let changes = v.remove(later, peers[0], true).unwrap();
        assert_eq!(changes.events, vec![MemberEvent::Left(peers[0])]);
        // Two down now: no force needed.
        assert!(v.remove(later, peers[1], false).is_ok());
        assert_eq!(v.ring().len(), 4);
        // Removing twice is not an error.
        assert_eq!(v.remove(later, peers[1], false), Ok(Changes::default()));
    }

    #[test]
    fn candidates_are_bounded_and_forgotten() {
        let t0 = Instant::now();
        let mut v = view(t0);
        let from = PeerId::random();
        let gossip: Vec<Gossip> = (0..5_000)
            .map(|_| Gossip {
                peer_id: PeerId::random().to_bytes(),
                addrs: vec!["/ip4/127.0.0.1/tcp/1".into()],
                generation: 1,
                left: false,
            })
            .collect();
        let (_, learnt) = v.on_heartbeat(t0, from, info(from, 1), &gossip);
        assert_eq!(learnt.len(), MAX_CANDIDATES);
        assert_eq!(v.candidate_count(), MAX_CANDIDATES);
        assert_eq!(v.heartbeat_targets(3).len(), CANDIDATES_PER_TICK + 1);
        let mut reached = std::collections::HashSet::new();
        for tick in 0..(MAX_CANDIDATES / CANDIDATES_PER_TICK) as u64 {
            reached.extend(v.heartbeat_targets(tick));
        }
        assert_eq!(reached.len(), MAX_CANDIDATES + 1, "every candidate in turn");
        v.tick(t0 + CANDIDATE_TTL);
        assert_eq!(v.candidate_count(), 0);
    }

    #[test]
    fn heartbeats_per_tick_do_not_grow_with_the_mesh() {
        let t0 = Instant::now();
        let mut v = view(t0);
        let peers: Vec<PeerId> = (0..1_000).map(|_| PeerId::random()).collect();
        for p in &peers {
            v.on_heartbeat(t0, *p, info(*p, 1), &[]);
        }
        for p in &peers[..100] {
            v.on_swim_down(t0, *p, 1);
        }
        // One up member on odd ticks, one down member on even ticks, each in turn.
        assert_eq!(v.heartbeat_targets(1).len(), 1);
        assert_eq!(v.heartbeat_targets(2).len(), 1);
        let mut seen = std::collections::HashSet::new();
        for tick in 0..3_600 {
            seen.extend(v.heartbeat_targets(tick));
        }
        assert_eq!(seen.len(), 1_000, "every member is reached in turn");
        // And gossip is a bounded sample.
        assert_eq!(v.gossip().len(), GOSSIP_SAMPLE);
    }

    #[test]
    fn a_joiner_owns_nothing_for_reads_until_it_finished_then_settles() {
        let t0 = Instant::now();
        let mut v = view(t0);
        let a = PeerId::random();
        let mut joiner = info(a, 1);
        joiner.joining = true;
        assert!(v.on_heartbeat(t0, a, joiner.clone(), &[]).0.ring_changed);
        let standing_of = |v: &View| v.ring().iter().find(|m| m.peer == a).unwrap().standing;
        assert_eq!(standing_of(&v), Standing::Joining);
        // Still joining: nothing changes.
        assert!(!v.on_heartbeat(t0, a, joiner.clone(), &[]).0.ring_changed);
        // It says it finished: settling, then normal after SETTLE.
        joiner.joining = false;
        assert!(v.on_heartbeat(t0, a, joiner, &[]).0.ring_changed);
        assert_eq!(standing_of(&v), Standing::Settling);
        assert!(!v.tick(t0 + SETTLE / 2).ring_changed);
        assert_eq!(standing_of(&v), Standing::Settling);
        assert!(v.tick(t0 + SETTLE).ring_changed);
        assert_eq!(standing_of(&v), Standing::Normal);
        // This node's own standing follows the same steps.
        let mut me = View::new(t0, PeerId::random(), 3, Vec::new(), true);
        assert!(me.joining());
        assert_eq!(me.ring()[0].standing, Standing::Joining);
        assert!(me.finish_joining(t0).ring_changed);
        assert_eq!(me.ring()[0].standing, Standing::Settling);
        assert!(me.tick(t0 + SETTLE).ring_changed);
        assert_eq!(me.ring()[0].standing, Standing::Normal);
    }
}
