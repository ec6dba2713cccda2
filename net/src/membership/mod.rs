//! Membership: who is in the mesh and whether they are alive.
//!
//! Failure detection is SWIM's ([`swim`]): each `heartbeat_interval` a node probes one member,
//! asks others to probe it when it does not answer, suspects it, and declares it down when the
//! suspicion is not refuted in time; updates ride on the probes. A node's messages per second
//! do not grow with the mesh.
//!
//! Heartbeats carry what SWIM does not: a member's [`MemberInfo`] (addresses, tags, clock,
//! credential) and a bounded sample of the members the sender knows. They go, each tick, to at
//! most 32 candidates in turn (peers not heard from yet: that is how a member is admitted and
//! joins), and alternately to one up member and one down member in turn — never to every
//! member.
//!
//! Down members keep their place in the ring: only a decision changes it (a member that says
//! `Leave`, or an operator's `remove`, both also spread by SWIM). A member that comes back with
//! a higher generation is a restart. Gossip spreads addresses, so a node that knows one seed
//! finds everyone; a member joins this node's ring only once heard from directly.
//!
//! [`view`] is the state machine, driven with explicit time; [`Membership`] wraps it with a
//! lock and the clock, publishes the ring as a [`Snapshot`] and events, and persists the ring.
//! [`clock`] compares this node's wall clock with the members' (carried by every heartbeat).

pub mod clock;
pub mod reach;
pub mod swim;
mod view;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use libp2p::{Multiaddr, PeerId};
use sipmesh_storage::{SystemClock, WallClock};
use tokio::sync::{broadcast, mpsc, watch};
use tracing::{info, warn};

use crate::error::{Error, Result};
use crate::placement::{RingMember, Snapshot, Standing};
use crate::protocol::{Gossip, MemberInfo, Request};
use swim::{RingChange, SwimId};
use view::{Changes, Known, RemoveRefused, View};

/// What the node's SWIM task is handed.
#[derive(Debug)]
pub(crate) enum SwimInput {
    /// A SWIM message from another member.
    Data(Vec<u8>),
    /// A member heard from directly (a heartbeat): alive.
    Alive(SwimId),
    /// A ring change to spread.
    Ring(RingChange),
    /// A notice to spread.
    Notice(swim::Notice),
}

/// A member's state as this node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum MemberState {
    /// Heard from recently.
    Up,
    /// Declared down by SWIM (or stopping in place); keeps its ring place, gets hints.
    Down,
    /// Out of the ring: it left gracefully, or an operator removed it.
    Left,
}

/// A member as the node and its admin API see it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Member {
    /// The peer.
    #[serde(serialize_with = "ser_display")]
    pub peer_id: PeerId,
    /// Its libp2p addresses.
    #[serde(serialize_with = "ser_display_vec")]
    pub addrs: Vec<Multiaddr>,
    /// Its generation (increases on every start).
    pub generation: u64,
    /// Its state.
    pub state: MemberState,
    /// Its application tags.
    pub tags: BTreeMap<String, String>,
    /// Milliseconds since it was last heard from (0 for this node).
    pub last_heard_ms: u64,
    /// Whether this is the local node.
    pub local: bool,
    /// Whether this node reaches it directly (`false`: only through others — a cut between
    /// the two; see [`reach`]).
    pub direct: bool,
    /// Whether it owns its ranges yet (joining: it streams them, and answers no reads).
    pub standing: Standing,
}

fn ser_display<S: serde::Serializer, T: std::fmt::Display>(
    v: &T,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.collect_str(v)
}

fn ser_display_vec<S: serde::Serializer, T: std::fmt::Display>(
    v: &[T],
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|x| x.to_string()))
}

/// A change of a member's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberEvent {
    /// The member is up (joined, restarted, or back).
    Up(PeerId),
    /// The member is down.
    Down(PeerId),
    /// The member left the ring (gracefully, or removed by an operator).
    Left(PeerId),
}

/// Settings membership needs.
#[derive(Debug, Clone)]
pub struct MembershipConfig {
    /// Copies of each partition.
    pub replication_factor: usize,
    /// This node must stream its ranges before it answers reads (a new member).
    pub joining: bool,
}

/// The membership view of one node.
pub struct Membership {
    local: PeerId,
    local_info: RwLock<MemberInfo>,
    view: Mutex<View>,
    snapshot: watch::Sender<Arc<Snapshot>>,
    events: broadcast::Sender<MemberEvent>,
    replication_factor: usize,
    /// Where the ring is persisted (`None`: not persisted, as in unit tests).
    ring_file: Option<std::path::PathBuf>,
    /// The ring (other members, and whether they were joining) as last written to `ring_file`.
    persisted: Mutex<Vec<(PeerId, bool)>>,
    /// The members' clocks against this node's.
    clocks: Mutex<clock::Clocks>,
    /// The last comparison (updated every tick): the median offset, and whether this node's
    /// clock is the odd one out.
    clock_offset_ms: AtomicI64,
    clock_skewed: AtomicBool,
    /// The SWIM task's inbox (set when the mesh starts it).
    swim: std::sync::OnceLock<mpsc::Sender<SwimInput>>,
    /// Members this node reaches only through others.
    reach: reach::Reach,
}

/// The ring file: one line per other member of the ring,
/// `<peer id> <generation> <addr,addr…> [joining]`.
fn read_ring(path: &Path) -> Vec<Known> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            let peer: PeerId = parts.next()?.parse().ok()?;
            let generation = parts.next()?.parse().ok()?;
            let addrs = parts
                .next()
                .map(|a| a.split(',').map(str::to_string).collect())
                .unwrap_or_default();
            let joining = parts.next() == Some("joining");
            Some(Known {
                peer,
                generation,
                addrs,
                joining,
            })
        })
        .collect()
}

/// The SWIM identity of a member described by `info`.
fn swim_id_of(peer: PeerId, info: &MemberInfo) -> SwimId {
    let addr = info
        .addrs
        .iter()
        .find_map(|a| a.parse::<Multiaddr>().ok())
        .map(|a| a.to_vec())
        .unwrap_or_default();
    SwimId::new(peer, info.generation, addr)
}

/// Read, increment and persist the node's generation (`dir/generation`).
pub fn next_generation(dir: &Path) -> Result<u64> {
    let path = dir.join("generation");
    let previous = match std::fs::read_to_string(&path) {
        Ok(s) => s.trim().parse::<u64>().map_err(|e| {
            Error::Config(format!(
                "{} is corrupt ({e}); delete it to start over",
                path.display()
            ))
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => {
            return Err(Error::Config(format!(
                "cannot read {}: {e}",
                path.display()
            )))
        }
    };
    // Epoch-based, as Cassandra's: at least the wall clock in seconds, so a lost or restored
    // file never makes the counter go backwards (peers ignore an older generation forever).
    let epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let next = (previous + 1).max(epoch);
    crate::config::write_atomically(&path, next.to_string().as_bytes(), None)
        .map_err(|e| Error::Config(format!("cannot write {}: {e}", path.display())))?;
    Ok(next)
}

impl Membership {
    /// A view holding only this node (not persisted).
    #[cfg(test)]
    pub fn new(local_info: MemberInfo, local: PeerId, config: MembershipConfig) -> Arc<Self> {
        Self::with_ring_file(local_info, local, config, None)
    }

    /// A view that persists its ring in `ring_file` and starts from it: the members this node
    /// knew are in the ring from the first moment, down until heard from. A node restarted
    /// while its peers are unreachable therefore sees a minority of its ring and refuses
    /// QUORUM, instead of acting as a mesh of one.
    pub fn with_ring_file(
        local_info: MemberInfo,
        local: PeerId,
        config: MembershipConfig,
        ring_file: Option<std::path::PathBuf>,
    ) -> Arc<Self> {
        let (snapshot, _) = watch::channel(Snapshot::solo(local, config.replication_factor));
        let (events, _) = broadcast::channel(256);
        let known = ring_file.as_deref().map(read_ring).unwrap_or_default();
        let mut persisted: Vec<(PeerId, bool)> = known
            .iter()
            .map(|k| (k.peer, k.joining))
            .filter(|(p, _)| *p != local)
            .collect();
        persisted.sort();
        if !persisted.is_empty() {
            info!(
                members = persisted.len() + 1,
                "ring loaded; members are down until heard from"
            );
        }
        let view = View::new(
            Instant::now(),
            local,
            config.replication_factor,
            known,
            config.joining,
        );
        let m = Arc::new(Membership {
            local,
            local_info: RwLock::new(local_info),
            view: Mutex::new(view),
            snapshot,
            events,
            replication_factor: config.replication_factor,
            ring_file,
            persisted: Mutex::new(persisted),
            clocks: Mutex::new(clock::Clocks::default()),
            clock_offset_ms: AtomicI64::new(0),
            clock_skewed: AtomicBool::new(false),
            swim: std::sync::OnceLock::new(),
            reach: reach::Reach::default(),
        });
        m.apply(Changes {
            events: Vec::new(),
            ring_changed: true,
        });
        m
    }

    /// Which members this node reaches only through others.
    pub fn reach(&self) -> &reach::Reach {
        &self.reach
    }

    fn view(&self) -> std::sync::MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publish what a step of the view changed: events, then the new ring.
    fn apply(&self, changes: Changes) {
        for event in changes.events {
            let _ = self.events.send(event);
        }
        if changes.ring_changed {
            self.rebuild();
        }
    }

    /// The addresses of the members this node knows (to dial them after a restart).
    pub fn known_addrs(&self) -> Vec<(PeerId, Multiaddr)> {
        self.view()
            .entries()
            .flat_map(|(p, e)| e.addrs.iter().map(|a| (*p, a.clone())))
            .collect()
    }

    /// Write the ring if its membership changed since it was last written.
    fn persist(&self, ring: &[RingMember], view: &View) {
        let Some(path) = &self.ring_file else { return };
        let mut peers: Vec<(PeerId, bool)> = ring
            .iter()
            .map(|m| (m.peer, m.standing == Standing::Joining))
            .filter(|(p, _)| *p != self.local)
            .collect();
        peers.sort();
        let mut last = self.persisted.lock().unwrap_or_else(|p| p.into_inner());
        if *last == peers {
            return;
        }
        let text: String = peers
            .iter()
            .filter_map(|(p, joining)| view.get(p).map(|e| (p, e, joining)))
            .map(|(p, e, joining)| {
                let addrs = e.info.addrs.join(",");
                let joining = if *joining { " joining" } else { "" };
                format!("{p} {} {addrs}{joining}\n", e.info.generation)
            })
            .collect();
        match crate::config::write_atomically(path, text.as_bytes(), None) {
            Ok(()) => *last = peers,
            Err(e) => warn!(error = %e, path = %path.display(), "cannot persist the ring"),
        }
    }

    /// The current ring.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.borrow().clone()
    }

    /// Subscribe to member state changes.
    pub fn events(&self) -> broadcast::Receiver<MemberEvent> {
        self.events.subscribe()
    }

    /// This node's info.
    pub fn local_info(&self) -> MemberInfo {
        let mut info = self
            .local_info
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        info.wall_ms = SystemClock.now_ms();
        let view = self.view();
        info.joining = view.joining();
        info.leaving = view.leaving();
        info
    }

    /// This node starts handing its ranges over before it leaves (decommission).
    pub fn start_leaving(&self) {
        let changes = self.view().start_leaving();
        self.apply(changes);
    }

    /// Whether this node is still bootstrapping (answers no reads for its ranges).
    pub fn joining(&self) -> bool {
        self.view().joining()
    }

    /// This node has streamed its ranges: from now on it answers reads for them.
    pub fn finish_joining(&self) {
        let changes = self.view().finish_joining(Instant::now());
        self.apply(changes);
    }

    /// `Some(median offset in ms)` while this node's clock disagrees with a majority of the
    /// members it hears by more than [`clock::MAX_SKEW_MS`] (then it must not coordinate).
    pub fn clock_skew(&self) -> Option<i64> {
        self.clock_skewed
            .load(Ordering::Relaxed)
            .then(|| self.clock_offset_ms.load(Ordering::Relaxed))
    }

    /// The median of the members' clocks minus this node's, ms (0 when none is heard).
    pub fn clock_offset_ms(&self) -> i64 {
        self.clock_offset_ms.load(Ordering::Relaxed)
    }

    /// Replace this node's tags (published with the next heartbeat).
    pub fn set_tags(&self, tags: BTreeMap<String, String>) {
        self.local_info
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .tags = tags;
    }

    /// Replace the credential this node's heartbeats carry (a renewal).
    pub fn set_credential(&self, credential: Vec<u8>) {
        self.local_info
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .credential = credential;
    }

    /// Every member, this node first.
    pub fn members(&self) -> Vec<Member> {
        let info = self.local_info();
        let standing = self.view().local_standing();
        let mut out = vec![Member {
            standing,
            peer_id: self.local,
            addrs: info.addrs.iter().filter_map(|a| a.parse().ok()).collect(),
            generation: info.generation,
            state: MemberState::Up,
            tags: info.tags,
            last_heard_ms: 0,
            local: true,
            direct: true,
        }];
        let now = Instant::now();
        let view = self.view();
        let mut others: Vec<Member> = view
            .entries()
            .map(|(peer, e)| Member {
                peer_id: *peer,
                addrs: e.addrs.clone(),
                generation: e.info.generation,
                state: e.state,
                tags: e.info.tags.clone(),
                last_heard_ms: now.saturating_duration_since(e.last_heard).as_millis() as u64,
                local: false,
                direct: !self.reach.only_indirect(peer),
                standing: e.standing(),
            })
            .collect();
        others.sort_by_key(|m| m.peer_id.to_string());
        out.extend(others);
        out
    }

    /// A tag of a member (this node included).
    pub fn tag(&self, peer: &PeerId, name: &str) -> Option<String> {
        if *peer == self.local {
            return self
                .local_info
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .tags
                .get(name)
                .cloned();
        }
        self.view()
            .get(peer)
            .and_then(|e| e.info.tags.get(name).cloned())
    }

    /// Whether a peer is up (this node always is).
    pub fn is_up(&self, peer: &PeerId) -> bool {
        *peer == self.local
            || self
                .view()
                .get(peer)
                .is_some_and(|e| e.state == MemberState::Up)
    }

    /// A connected peer that may be a member: heartbeat it.
    pub fn add_candidate(&self, peer: PeerId) {
        self.view().add_candidate(Instant::now(), peer);
    }

    /// The heartbeat this node sends now.
    pub fn heartbeat(&self) -> Request {
        let gossip: Vec<Gossip> = self.view().gossip();
        Request::Heartbeat {
            info: self.local_info(),
            gossip,
        }
    }

    /// Whom to send heartbeats to on tick number `tick`: up members and candidates every time,
    /// down ones every 4th tick.
    pub fn heartbeat_targets(&self, tick: u64) -> Vec<PeerId> {
        self.view().heartbeat_targets(tick)
    }

    /// A member's info arrived (its heartbeat, or its answer to ours). Returns addresses of
    /// peers learnt from gossip, for the swarm.
    pub fn on_info(
        &self,
        from: PeerId,
        info: MemberInfo,
        gossip: &[Gossip],
    ) -> Vec<(PeerId, Multiaddr)> {
        let now = Instant::now();
        if info.wall_ms > 0 {
            let offset = info.wall_ms as i64 - SystemClock.now_ms() as i64;
            self.clocks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .observe(now, from, offset);
        }
        let id = swim_id_of(from, &info);
        let (changes, learnt) = self.view().on_heartbeat(now, from, info, gossip);
        if self
            .view()
            .get(&from)
            .is_some_and(|e| e.state == MemberState::Up)
        {
            // Heard from directly: SWIM probes it from now on (a no-op if it already does).
            self.to_swim(SwimInput::Alive(id));
        }
        self.apply(changes);
        learnt
    }

    /// This node's PeerId.
    pub(crate) fn local(&self) -> PeerId {
        self.local
    }

    /// Hand the SWIM task's inbox to membership.
    pub(crate) fn attach_swim(&self, inbox: mpsc::Sender<SwimInput>) {
        let _ = self.swim.set(inbox);
    }

    /// Give the SWIM task something (dropped when its inbox is full: SWIM tolerates loss).
    pub(crate) fn to_swim(&self, input: SwimInput) {
        if let Some(tx) = self.swim.get() {
            let _ = tx.try_send(input);
        }
    }

    /// This node's SWIM identity: PeerId, generation, its first listen address.
    pub(crate) fn swim_id(&self) -> SwimId {
        let info = self.local_info.read().unwrap_or_else(|p| p.into_inner());
        swim_id_of(self.local, &info)
    }

    /// SWIM found a member alive. Returns whether this node should heartbeat it for its info
    /// (a peer it does not know, or a restarted one).
    pub(crate) fn on_swim_up(&self, peer: PeerId, generation: u64) -> bool {
        let (changes, ask) = self.view().on_swim_up(Instant::now(), peer, generation);
        self.apply(changes);
        ask
    }

    /// SWIM declared a member down.
    pub(crate) fn on_swim_down(&self, peer: PeerId, generation: u64) {
        let changes = self.view().on_swim_down(Instant::now(), peer, generation);
        self.apply(changes);
    }

    /// Spread, by SWIM, that `peer` (in `generation`) left the ring.
    pub(crate) fn spread_leave(&self, peer: PeerId, generation: u64) {
        self.to_swim(SwimInput::Ring(RingChange {
            peer: peer.to_bytes(),
            generation,
            version: 0,
        }));
    }

    /// A member left gracefully.
    pub fn on_leave(&self, from: PeerId, generation: u64) {
        let changes = self.view().on_leave(Instant::now(), from, generation);
        self.apply(changes);
    }

    /// A member stops in place: down now, ring place kept.
    pub fn on_stopping(&self, from: PeerId, generation: u64) {
        let changes = self.view().on_stopping(Instant::now(), from, generation);
        self.apply(changes);
    }

    /// An operator removes a dead member from the ring (`sipmesh mesh remove`). It is marked
    /// left, which heartbeats spread to every member, and the persisted ring drops it; its
    /// partitions are re-replicated from the other replicas by handoff and anti-entropy.
    /// Refused for this node, for a member that is up (decommission it instead: it can hand
    /// its data over), and — unless `force` — when so many members are down that some
    /// partition might have had its last copy on them.
    pub fn remove(&self, peer: PeerId, force: bool) -> std::result::Result<(), String> {
        let result = self.view().remove(Instant::now(), peer, force);
        match result {
            Ok(changes) => {
                let generation = self.view().get(&peer).map(|e| e.info.generation);
                if let Some(generation) = generation {
                    self.spread_leave(peer, generation);
                }
                self.apply(changes);
                Ok(())
            }
            Err(refused) => Err(self.refusal(peer, refused)),
        }
    }

    /// Whether `peer` may be removed (the same checks as [`Membership::remove`]).
    pub fn check_remove(&self, peer: PeerId, force: bool) -> std::result::Result<(), String> {
        let checked = self.view().check_remove(peer, force);
        checked.map_err(|refused| self.refusal(peer, refused))
    }

    /// A dead member is being removed: it stands `leaving` until the removal completes.
    pub fn mark_removing(&self, peer: PeerId) -> std::result::Result<(), String> {
        let marked = self.view().mark_removing(peer);
        match marked {
            Ok(changes) => {
                self.apply(changes);
                Ok(())
            }
            Err(refused) => Err(self.refusal(peer, refused)),
        }
    }

    fn refusal(&self, peer: PeerId, refused: RemoveRefused) -> String {
        match refused {
            RemoveRefused::Local => {
                "this is the node you are talking to; `sipmesh mesh decommission` makes it leave"
                    .into()
            }
            RemoveRefused::Unknown => format!("{peer} is not a member"),
            RemoveRefused::Up => format!(
                "{peer} is up: decommission it (`sipmesh mesh decommission`) so it hands its data over"
            ),
            RemoveRefused::LastCopies { down } => format!(
                "{down} members are down and the replication factor is {}: a partition may \
                 have had its last copy on them; bring some back first, or remove with force \
                 if they are gone for good",
                self.replication_factor
            ),
        }
    }

    /// Housekeeping (forget stale candidates and long-gone members) and the clock check.
    /// Failure detection is SWIM's; nothing here changes placement.
    pub fn tick(&self) {
        let now = Instant::now();
        let changes = self.view().tick(now);
        self.apply(changes);
        self.check_clock(now);
    }

    /// Compare this node's clock with the up members' and remember the verdict.
    fn check_clock(&self, now: Instant) {
        let up: std::collections::HashSet<PeerId> = self
            .view()
            .entries()
            .filter(|(_, e)| e.state == MemberState::Up)
            .map(|(p, _)| *p)
            .collect();
        let check = self
            .clocks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .check(now, |p| up.contains(p));
        self.clock_offset_ms
            .store(check.median_ms, Ordering::Relaxed);
        let was = self.clock_skewed.swap(check.skewed, Ordering::Relaxed);
        if check.skewed && !was {
            tracing::error!(
                offset_ms = check.median_ms,
                peers = check.peers,
                "this node's clock disagrees with a majority of the mesh: it coordinates no reads or writes until the clock is fixed (check NTP)"
            );
        } else if was && !check.skewed {
            info!(
                offset_ms = check.median_ms,
                "this node's clock agrees with the mesh again"
            );
        }
    }

    fn rebuild(&self) {
        let view = self.view();
        let ring = view.ring();
        self.persist(&ring, &view);
        let version = self.snapshot.borrow().version + 1;
        self.snapshot.send_replace(Arc::new(Snapshot {
            local: self.local,
            ring,
            replication_factor: self.replication_factor,
            version,
            shared: Default::default(),
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(p: PeerId) -> MemberInfo {
        MemberInfo {
            wall_ms: 0,
            credential: Vec::new(),
            joining: false,
            leaving: false,
            peer_id: p.to_bytes(),
            addrs: vec!["/ip4/127.0.0.1/tcp/4001".into()],
            generation: 1,
            tags: BTreeMap::new(),
        }
    }

    fn config() -> MembershipConfig {
        MembershipConfig {
            joining: false,
            replication_factor: 3,
        }
    }

    #[test]
    fn the_ring_is_persisted_and_loaded_down() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ring");
        let me = PeerId::random();
        let (a, b) = (PeerId::random(), PeerId::random());
        let m = Membership::with_ring_file(info(me), me, config(), Some(file.clone()));
        m.on_info(a, info(a), &[]);
        m.on_info(b, info(b), &[]);
        assert!(m.snapshot().has_majority());
        drop(m);
        let text = std::fs::read_to_string(&file).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
        // A restart: the ring comes back, every other member down until heard from.
        let m = Membership::with_ring_file(info(me), me, config(), Some(file));
        let members = m.members();
        assert_eq!(members.len(), 3);
        assert!(members
            .iter()
            .filter(|x| !x.local)
            .all(|x| x.state == MemberState::Down));
        assert!(
            !m.snapshot().has_majority(),
            "alone, this node is a minority"
        );
        assert_eq!(m.known_addrs().len(), 2);
        m.on_info(a, info(a), &[]);
        assert!(m.snapshot().has_majority());
    }
}
