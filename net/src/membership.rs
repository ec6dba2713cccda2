//! Membership: who is in the mesh and whether they are alive.
//!
//! Every node sends every member a heartbeat (its own [`MemberInfo`] plus gossip about the
//! members it knows) each `heartbeat_interval` over the node-to-node stream; the answer carries
//! the receiver's info. A member not heard from — neither a heartbeat from it nor an answer to
//! ours — for `down_after` is marked down; down for `evict_after` (and only while this node sees
//! a majority) it is evicted from the ring. A member that comes back with a higher generation is
//! a restart; one that says `Leave` has left for good (for that generation).
//!
//! Gossip spreads addresses, so a node that knows one seed finds everyone; a member joins this
//! node's ring only once heard from directly.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use libp2p::{Multiaddr, PeerId};
use tokio::sync::{broadcast, watch};
use tracing::{info, warn};

use crate::error::{Error, Result};
use crate::placement::{peer_position, RingMember, Snapshot};
use crate::protocol::{Gossip, MemberInfo, Request};

/// Candidates (peers named by gossip or connected, not yet heard from) kept at most.
const MAX_CANDIDATES: usize = 1_024;
/// How long a candidate that never answers is heartbeated.
const CANDIDATE_TTL: Duration = Duration::from_secs(300);
/// How long a member that left or was evicted is remembered (its state gossiped).
const FORGET_AFTER: Duration = Duration::from_secs(3_600);

/// A member's state as this node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum MemberState {
    /// Heard from recently.
    Up,
    /// Not heard from for `down_after`; keeps its ring place, gets hints.
    Down,
    /// Down for `evict_after`; out of the ring, its data re-replicated.
    Evicted,
    /// Left gracefully.
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
    /// The member was evicted from the ring.
    Evicted(PeerId),
    /// The member left gracefully.
    Left(PeerId),
}

struct Entry {
    info: MemberInfo,
    addrs: Vec<Multiaddr>,
    state: MemberState,
    last_heard: Instant,
    since: Instant,
}

/// Settings membership needs.
#[derive(Debug, Clone)]
pub struct MembershipConfig {
    /// Copies of each partition.
    pub replication_factor: usize,
    /// Silence after which a member is down.
    pub down_after: Duration,
    /// Time down after which a member is evicted.
    pub evict_after: Duration,
}

/// The membership view of one node.
pub struct Membership {
    local: PeerId,
    local_info: RwLock<MemberInfo>,
    members: Mutex<HashMap<PeerId, Entry>>,
    /// Connected peers that are not members yet (heartbeats go to them too).
    candidates: Mutex<HashMap<PeerId, Instant>>,
    snapshot: watch::Sender<Arc<Snapshot>>,
    events: broadcast::Sender<MemberEvent>,
    config: MembershipConfig,
    started: Instant,
    /// Where the ring is persisted (`None`: not persisted, as in unit tests).
    ring_file: Option<std::path::PathBuf>,
    /// The ring (other members) as last written to `ring_file`.
    persisted: Mutex<Vec<PeerId>>,
}

/// The ring file: one line per other member of the ring, `<peer id> <generation> <addr,addr…>`.
fn read_ring(path: &Path) -> Vec<(PeerId, u64, Vec<String>)> {
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
            Some((peer, generation, addrs))
        })
        .collect()
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
        let now = Instant::now();
        let mut members = HashMap::new();
        let mut persisted = Vec::new();
        for (peer, generation, addrs) in ring_file.as_deref().map(read_ring).unwrap_or_default() {
            if peer == local {
                continue;
            }
            persisted.push(peer);
            members.insert(
                peer,
                Entry {
                    addrs: addrs.iter().filter_map(|a| a.parse().ok()).collect(),
                    info: MemberInfo {
                        peer_id: peer.to_bytes(),
                        addrs,
                        generation,
                        tags: BTreeMap::new(),
                    },
                    state: MemberState::Down,
                    last_heard: now,
                    since: now,
                },
            );
        }
        persisted.sort();
        if !persisted.is_empty() {
            info!(
                members = persisted.len() + 1,
                "ring loaded; members are down until heard from"
            );
        }
        let m = Arc::new(Membership {
            local,
            local_info: RwLock::new(local_info),
            members: Mutex::new(members),
            candidates: Mutex::new(HashMap::new()),
            snapshot,
            events,
            config,
            started: now,
            ring_file,
            persisted: Mutex::new(persisted),
        });
        m.rebuild();
        m
    }

    /// The addresses of the members this node knows (to dial them after a restart).
    pub fn known_addrs(&self) -> Vec<(PeerId, Multiaddr)> {
        self.members
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .flat_map(|(p, e)| e.addrs.iter().map(|a| (*p, a.clone())))
            .collect()
    }

    /// Write the ring if its membership changed since it was last written.
    fn persist(&self, ring: &[RingMember], members: &HashMap<PeerId, Entry>) {
        let Some(path) = &self.ring_file else { return };
        let mut peers: Vec<PeerId> = ring
            .iter()
            .map(|m| m.peer)
            .filter(|p| *p != self.local)
            .collect();
        peers.sort();
        let mut last = self.persisted.lock().unwrap_or_else(|p| p.into_inner());
        if *last == peers {
            return;
        }
        let text: String = peers
            .iter()
            .filter_map(|p| members.get(p).map(|e| (p, e)))
            .map(|(p, e)| format!("{p} {} {}\n", e.info.generation, e.info.addrs.join(",")))
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
        self.local_info
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replace this node's tags (published with the next heartbeat).
    pub fn set_tags(&self, tags: BTreeMap<String, String>) {
        self.local_info
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .tags = tags;
    }

    /// Every member, this node first.
    pub fn members(&self) -> Vec<Member> {
        let info = self.local_info();
        let mut out = vec![Member {
            peer_id: self.local,
            addrs: info.addrs.iter().filter_map(|a| a.parse().ok()).collect(),
            generation: info.generation,
            state: MemberState::Up,
            tags: info.tags,
            last_heard_ms: 0,
            local: true,
        }];
        let members = self.members.lock().unwrap_or_else(|p| p.into_inner());
        let mut others: Vec<Member> = members
            .iter()
            .map(|(peer, e)| Member {
                peer_id: *peer,
                addrs: e.addrs.clone(),
                generation: e.info.generation,
                state: e.state,
                tags: e.info.tags.clone(),
                last_heard_ms: e.last_heard.elapsed().as_millis() as u64,
                local: false,
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
        self.members
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(peer)
            .and_then(|e| e.info.tags.get(name).cloned())
    }

    /// Whether a peer is up (this node always is).
    pub fn is_up(&self, peer: &PeerId) -> bool {
        *peer == self.local
            || self
                .members
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(peer)
                .is_some_and(|e| e.state == MemberState::Up)
    }

    /// A connected peer that may be a member: heartbeat it.
    pub fn add_candidate(&self, peer: PeerId) {
        if peer != self.local {
            let mut c = self.candidates.lock().unwrap_or_else(|p| p.into_inner());
            if c.len() < MAX_CANDIDATES || c.contains_key(&peer) {
                c.insert(peer, Instant::now());
            }
        }
    }

    /// The heartbeat this node sends now.
    pub fn heartbeat(&self) -> Request {
        let members = self.members.lock().unwrap_or_else(|p| p.into_inner());
        let gossip = members
            .iter()
            .filter(|(_, e)| e.state != MemberState::Evicted)
            .map(|(peer, e)| Gossip {
                peer_id: peer.to_bytes(),
                addrs: e.info.addrs.clone(),
                generation: e.info.generation,
                left: e.state == MemberState::Left,
            })
            .collect();
        Request::Heartbeat {
            info: self.local_info(),
            gossip,
        }
    }

    /// Whom to send heartbeats to on tick number `tick`: up members and candidates every time,
    /// down ones every 4th tick, evicted ones every 10th.
    pub fn heartbeat_targets(&self, tick: u64) -> Vec<PeerId> {
        let members = self.members.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<PeerId> = members
            .iter()
            .filter(|(_, e)| match e.state {
                MemberState::Up => true,
                MemberState::Down => tick.is_multiple_of(4),
                MemberState::Evicted => tick.is_multiple_of(10),
                MemberState::Left => false,
            })
            .map(|(p, _)| *p)
            .collect();
        let candidates = self.candidates.lock().unwrap_or_else(|p| p.into_inner());
        out.extend(candidates.keys().filter(|c| !members.contains_key(c)));
        out
    }

    /// A member's info arrived (its heartbeat, or its answer to ours). Returns addresses of
    /// peers learnt from gossip, for the swarm.
    pub fn on_info(
        &self,
        from: PeerId,
        info: MemberInfo,
        gossip: &[Gossip],
    ) -> Vec<(PeerId, Multiaddr)> {
        if PeerId::from_bytes(&info.peer_id).ok() != Some(from) {
            warn!(%from, "heartbeat names another peer; ignored");
            return Vec::new();
        }
        let mut changed = false;
        let mut learnt = Vec::new();
        {
            let mut members = self.members.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let addrs: Vec<Multiaddr> = info.addrs.iter().filter_map(|a| a.parse().ok()).collect();
            match members.get_mut(&from) {
                Some(e) => {
                    let restarted = info.generation > e.info.generation;
                    if info.generation < e.info.generation {
                        return Vec::new(); // a stale message from a previous life
                    }
                    if e.state == MemberState::Left && !restarted {
                        return Vec::new();
                    }
                    e.last_heard = now;
                    if e.state != MemberState::Up {
                        info!(peer = %from, generation = info.generation, was = ?e.state, "member up");
                        changed = true;
                        e.state = MemberState::Up;
                        e.since = now;
                        let _ = self.events.send(MemberEvent::Up(from));
                    } else if restarted {
                        info!(peer = %from, generation = info.generation, "member restarted");
                        let _ = self.events.send(MemberEvent::Up(from));
                    }
                    e.info = info;
                    e.addrs = addrs;
                }
                None => {
                    info!(peer = %from, generation = info.generation, "member joined");
                    members.insert(
                        from,
                        Entry {
                            info,
                            addrs,
                            state: MemberState::Up,
                            last_heard: now,
                            since: now,
                        },
                    );
                    changed = true;
                    let _ = self.events.send(MemberEvent::Up(from));
                }
            }
            for g in gossip {
                let Ok(peer) = PeerId::from_bytes(&g.peer_id) else {
                    continue;
                };
                if peer == self.local {
                    continue;
                }
                match members.get_mut(&peer) {
                    Some(e)
                        if g.left
                            && g.generation >= e.info.generation
                            && e.state != MemberState::Left =>
                    {
                        e.state = MemberState::Left;
                        e.since = now;
                        changed = true;
                        let _ = self.events.send(MemberEvent::Left(peer));
                    }
                    Some(_) => {}
                    None if !g.left => {
                        let mut candidates =
                            self.candidates.lock().unwrap_or_else(|p| p.into_inner());
                        if candidates.len() < MAX_CANDIDATES
                            && candidates.insert(peer, now).is_none()
                        {
                            learnt.extend(
                                g.addrs
                                    .iter()
                                    .filter_map(|a| a.parse().ok())
                                    .map(|a| (peer, a)),
                            );
                        }
                    }
                    None => {}
                }
            }
        }
        self.candidates
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&from);
        if changed {
            self.rebuild();
        }
        learnt
    }

    /// A member left gracefully.
    pub fn on_leave(&self, from: PeerId, generation: u64) {
        let changed = {
            let mut members = self.members.lock().unwrap_or_else(|p| p.into_inner());
            match members.get_mut(&from) {
                Some(e) if e.info.generation <= generation && e.state != MemberState::Left => {
                    info!(peer = %from, "member left");
                    e.state = MemberState::Left;
                    e.since = Instant::now();
                    let _ = self.events.send(MemberEvent::Left(from));
                    true
                }
                _ => false,
            }
        };
        if changed {
            self.rebuild();
        }
    }

    /// An operator removes a dead member from the ring (`sipmesh mesh remove`). It is marked
    /// left, which heartbeats spread to every member, and the persisted ring drops it; its
    /// partitions are re-replicated from the other replicas by handoff and anti-entropy.
    /// Refused for this node, for a member that is up (decommission it instead: it can hand
    /// its data over), and when so many members are down that some partition might have had
    /// its last copy on them.
    pub fn remove(&self, peer: PeerId) -> std::result::Result<(), String> {
        if peer == self.local {
            return Err(
                "this is the node you are talking to; stop it with SIGTERM to leave".into(),
            );
        }
        {
            let mut members = self.members.lock().unwrap_or_else(|p| p.into_inner());
            let down = members
                .values()
                .filter(|e| e.state == MemberState::Down)
                .count();
            let Some(e) = members.get_mut(&peer) else {
                return Err(format!("{peer} is not a member"));
            };
            match e.state {
                MemberState::Up => {
                    return Err(format!(
                        "{peer} is up: decommission it (SIGTERM) so it hands its data over"
                    ))
                }
                MemberState::Left | MemberState::Evicted => return Ok(()),
                MemberState::Down => {}
            }
            if down >= self.config.replication_factor {
                return Err(format!(
                    "{down} members are down and the replication factor is {}: a partition may \
                     have had its last copy on them; bring some back first",
                    self.config.replication_factor
                ));
            }
            info!(%peer, "member removed by the operator");
            e.state = MemberState::Left;
            e.since = Instant::now();
            let _ = self.events.send(MemberEvent::Left(peer));
        }
        self.rebuild();
        Ok(())
    }

    /// Failure detection: mark silent members down, and long-down ones evicted.
    pub fn tick(&self) {
        // Right after start nobody has been heard from yet: give the mesh one detection period.
        if self.started.elapsed() < self.config.down_after {
            return;
        }
        let majority = self.snapshot().has_majority();
        let mut changed = false;
        {
            let now = Instant::now();
            // Peers named by gossip that never answered are not dialled forever.
            self.candidates
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|_, since| now.duration_since(*since) < CANDIDATE_TTL);
            let mut members = self.members.lock().unwrap_or_else(|p| p.into_inner());
            // Members that left or were evicted long ago (their state has spread) are forgotten.
            members.retain(|_, e| {
                !matches!(e.state, MemberState::Left | MemberState::Evicted)
                    || now.duration_since(e.since) < FORGET_AFTER
            });
            for (peer, e) in members.iter_mut() {
                match e.state {
                    MemberState::Up
                        if now.duration_since(e.last_heard) > self.config.down_after =>
                    {
                        warn!(%peer, silent_ms = now.duration_since(e.last_heard).as_millis() as u64, "member down");
                        e.state = MemberState::Down;
                        e.since = now;
                        changed = true;
                        let _ = self.events.send(MemberEvent::Down(*peer));
                    }
                    MemberState::Down
                        if majority && now.duration_since(e.since) > self.config.evict_after =>
                    {
                        warn!(%peer, "member evicted from the ring after being down too long");
                        e.state = MemberState::Evicted;
                        e.since = now;
                        changed = true;
                        let _ = self.events.send(MemberEvent::Evicted(*peer));
                    }
                    _ => {}
                }
            }
        }
        if changed {
            self.rebuild();
        }
    }

    fn rebuild(&self) {
        let members = self.members.lock().unwrap_or_else(|p| p.into_inner());
        let mut ring = vec![RingMember {
            peer: self.local,
            position: peer_position(&self.local),
            up: true,
        }];
        for (peer, e) in members.iter() {
            if matches!(e.state, MemberState::Up | MemberState::Down) {
                ring.push(RingMember {
                    peer: *peer,
                    position: peer_position(peer),
                    up: e.state == MemberState::Up,
                });
            }
        }
        ring.sort_by_key(|m| m.position);
        self.persist(&ring, &members);
        let version = self.snapshot.borrow().version + 1;
        self.snapshot.send_replace(Arc::new(Snapshot {
            local: self.local,
            ring,
            replication_factor: self.config.replication_factor,
            version,
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(p: PeerId) -> MemberInfo {
        MemberInfo {
            peer_id: p.to_bytes(),
            addrs: vec!["/ip4/127.0.0.1/tcp/4001".into()],
            generation: 1,
            tags: BTreeMap::new(),
        }
    }

    fn config() -> MembershipConfig {
        MembershipConfig {
            replication_factor: 3,
            down_after: Duration::from_secs(3),
            evict_after: Duration::from_secs(60),
        }
    }

    #[test]
    fn gossip_cannot_grow_the_candidates_without_bound() {
        let me = PeerId::random();
        let m = Membership::new(info(me), me, config());
        let from = PeerId::random();
        let gossip: Vec<Gossip> = (0..5_000)
            .map(|_| Gossip {
                peer_id: PeerId::random().to_bytes(),
                addrs: vec!["/ip4/127.0.0.1/tcp/1".into()],
                generation: 1,
                left: false,
            })
            .collect();
        let learnt = m.on_info(from, info(from), &gossip);
        assert!(learnt.len() <= MAX_CANDIDATES);
        assert!(m.candidates.lock().unwrap().len() <= MAX_CANDIDATES);
        assert!(m.heartbeat_targets(1).len() <= MAX_CANDIDATES + 1);
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
