//! Failure detection and dissemination whose cost per node does not grow with the mesh: SWIM
//! (Das, Gupta, Motivala 2002) with infection-style dissemination and suspicion, by the `foca`
//! crate (docs/DEPENDENCIES.md says why foca and not our own).
//!
//! Every `probe_period` a node probes one member (round robin over a shuffled list), asks
//! `num_indirect_probes` others to probe it when the direct probe gets no answer, and only then
//! suspects it. A suspected member that is alive hears of it (updates ride on every probe and
//! ack) and refutes it with a higher incarnation; one that stays silent for the suspicion
//! timeout is down. The suspicion timeout and the number of times an update is passed on both
//! grow with log N, so a node's messages per second are the same at 10 or 10,000 members.
//!
//! Ring changes (a member leaving, an operator's removal) travel the same way, as versioned
//! broadcasts ([`RingNews`]) piggybacked on the same messages.
//!
//! [`Swim`] is sans-IO: it is handed bytes, timer events and the time they fired, and returns
//! what to send, when to wake it and what changed. The node drives it from one task; the
//! simulator (`mesh-sim`) drives the same code with virtual time and a simulated network.

use std::collections::HashMap;
use std::num::{NonZeroU32, NonZeroU8, NonZeroUsize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use foca::Timer;
use foca::{BincodeCodec, BroadcastHandler, Config, Foca, Invalidates, OwnedNotification};
use libp2p::PeerId;
use rand09::rngs::SmallRng;
use rand09::SeedableRng;
use serde::{Deserialize, Serialize};

/// The biggest SWIM message, bytes (a sealed datagram's payload fits 1,300).
pub const MAX_PACKET: usize = 1_200;
/// Ring changes remembered (the newest per member); older ones are forgotten first.
pub const MAX_RING_NEWS: usize = 16_384;

/// A member's identity in SWIM: the peer, its generation (a restart is a new identity that
/// replaces the old one), a counter bumped when it rejoins after being declared down without
/// restarting, and one address to dial it (multiaddr bytes), so a member learnt from gossip can
/// be reached without a lookup.
#[derive(Clone, Serialize, Deserialize)]
#[serde(from = "SwimIdWire", into = "SwimIdWire")]
pub struct SwimId {
    peer: Vec<u8>,
    /// The node's generation.
    pub generation: u64,
    /// Rejoins of this generation.
    pub rejoin: u32,
    addr: Vec<u8>,
    /// foca's key for the member (`Identity::addr`), kept inline: foca compares it with every
    /// member of its table in a linear scan, and reading it from `peer` would chase a pointer
    /// per member.
    key: u128,
}

/// Identities are equal when peer, generation and rejoin are: the dial address is a hint, and
/// two members' views of it (a heartbeat's info, the member's own) must not make two
/// identities of one life.
impl PartialEq for SwimId {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
            && self.generation == other.generation
            && self.rejoin == other.rejoin
            && self.peer == other.peer
    }
}

impl Eq for SwimId {}

impl std::hash::Hash for SwimId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.key.hash(state);
        self.generation.hash(state);
        self.rejoin.hash(state);
    }
}

/// [`SwimId`] as it travels (the key is derived, not sent).
#[derive(Clone, Serialize, Deserialize)]
struct SwimIdWire {
    #[serde(with = "serde_bytes")]
    peer: Vec<u8>,
    generation: u64,
    rejoin: u32,
    #[serde(with = "serde_bytes")]
    addr: Vec<u8>,
}

impl From<SwimIdWire> for SwimId {
    fn from(w: SwimIdWire) -> Self {
        SwimId {
            key: key_of(&w.peer),
            peer: w.peer,
            generation: w.generation,
            rejoin: w.rejoin,
            addr: w.addr,
        }
    }
}

impl From<SwimId> for SwimIdWire {
    fn from(id: SwimId) -> Self {
        SwimIdWire {
            peer: id.peer,
            generation: id.generation,
            rejoin: id.rejoin,
            addr: id.addr,
        }
    }
}

/// The last 16 bytes of a PeerId (its public key's, for ed25519) as a number.
fn key_of(peer: &[u8]) -> u128 {
    let tail = &peer[peer.len().saturating_sub(16)..];
    let mut bytes = [0u8; 16];
    bytes[16 - tail.len()..].copy_from_slice(tail);
    u128::from_be_bytes(bytes)
}

impl std::fmt::Debug for SwimId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.peer_id() {
            Some(p) => write!(f, "{p}/{}.{}", self.generation, self.rejoin),
            None => write!(f, "?/{}.{}", self.generation, self.rejoin),
        }
    }
}

impl SwimId {
    /// The identity of `peer` in `generation`, dialled at `addr` (multiaddr bytes; empty when
    /// unknown, longer than 64 bytes is dropped).
    pub fn new(peer: PeerId, generation: u64, addr: Vec<u8>) -> Self {
        let peer = peer.to_bytes();
        SwimId {
            key: key_of(&peer),
            peer,
            generation,
            rejoin: 0,
            addr: if addr.len() <= 64 { addr } else { Vec::new() },
        }
    }

    /// The peer (`None` for bytes that are not a PeerId, which a member never sends).
    pub fn peer_id(&self) -> Option<PeerId> {
        PeerId::from_bytes(&self.peer).ok()
    }

    /// The address to dial it at (multiaddr bytes, maybe empty).
    pub fn addr_bytes(&self) -> &[u8] {
        &self.addr
    }
}

impl foca::Identity for SwimId {
    /// The last 16 bytes of the PeerId (its public key's, for ed25519): foca compares members
    /// by it in a linear scan, so it must be cheap to make and compare.
    type Addr = u128;

    fn renew(&self) -> Option<Self> {
        Some(SwimId {
            rejoin: self.rejoin.wrapping_add(1),
            ..self.clone()
        })
    }

    fn addr(&self) -> u128 {
        self.key
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        (self.generation, self.rejoin) > (adversary.generation, adversary.rejoin)
    }
}

/// A change of the ring, spread to every member: `peer` (in `generation`) left the ring, by
/// decommission or an operator's removal. Versioned by generation: a later one replaces an
/// earlier one for the same peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingChange {
    /// The member.
    #[serde(with = "serde_bytes")]
    pub peer: Vec<u8>,
    /// Its generation when it left.
    pub generation: u64,
    /// A version, for changes other than leaving (the simulator's test broadcasts).
    pub version: u64,
}

/// A small fact the node spreads to every member (a ban, a revocation), versioned: a later
/// version replaces an earlier one with the same topic and key. Infection-style, like ring
/// changes: each member passes it on O(log N) times, so it costs a member the same whatever
/// the mesh's size, where a table every node polls costs its replicas O(N).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    /// What kind of fact (the node's numbering).
    pub topic: u8,
    /// What it is about (a source address, a PeerId).
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// Its version (a timestamp).
    pub version: u64,
    /// The fact, at most [`MAX_NOTICE`] bytes.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

/// Largest notice payload: several fit one SWIM packet.
pub const MAX_NOTICE: usize = 384;

/// What SWIM spreads besides liveness.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum News {
    Ring(RingChange),
    Notice(Notice),
}

impl News {
    /// What a newer version of the same news replaces, and its order.
    fn key(&self) -> (Vec<u8>, (u64, u64)) {
        match self {
            News::Ring(c) => {
                let mut k = vec![0];
                k.extend_from_slice(&c.peer);
                (k, (c.generation, c.version))
            }
            News::Notice(n) => {
                let mut k = vec![1, n.topic];
                k.extend_from_slice(&n.key);
                (k, (n.version, 0))
            }
        }
    }
}

/// The key foca keeps a broadcast under: newer news about the same thing replaces it.
#[derive(Debug, Clone)]
pub struct RingKey {
    peer: Vec<u8>,
    order: (u64, u64),
}

impl Invalidates for RingKey {
    fn invalidates(&self, other: &Self) -> bool {
        self.peer == other.peer && self.order >= other.order
    }
}

/// A broadcast that is neither a ring change nor a notice.
#[derive(Debug, thiserror::Error)]
#[error("malformed ring change or notice")]
pub struct BadRingChange;

/// The ring changes and notices this node has seen (the newest per subject), and those not
/// yet taken by the node.
#[derive(Default)]
pub struct RingNews {
    seen: HashMap<Vec<u8>, (u64, u64)>,
    fresh: Arc<Mutex<Vec<News>>>,
}

impl BroadcastHandler<SwimId> for RingNews {
    type Key = RingKey;
    type Error = BadRingChange;

    fn receive_item(
        &mut self,
        data: &[u8],
        _sender: Option<&SwimId>,
    ) -> Result<Option<RingKey>, BadRingChange> {
        let (news, _): (News, usize) =
            bincode::serde::decode_from_slice(data, bincode::config::standard())
                .map_err(|_| BadRingChange)?;
        if let News::Notice(n) = &news {
            if n.payload.len() > MAX_NOTICE {
                return Err(BadRingChange);
            }
        }
        let (subject, order) = news.key();
        if self.seen.get(&subject).is_some_and(|o| *o >= order) {
            return Ok(None);
        }
        if self.seen.len() >= MAX_RING_NEWS && !self.seen.contains_key(&subject) {
            // Full: forget the oldest generation's news to make room.
            if let Some(oldest) = self
                .seen
                .iter()
                .min_by_key(|(_, o)| **o)
                .map(|(k, _)| k.clone())
            {
                self.seen.remove(&oldest);
            }
        }
        self.seen.insert(subject.clone(), order);
        let mut fresh = self.fresh.lock().unwrap_or_else(|p| p.into_inner());
        if fresh.len() < MAX_RING_NEWS {
            fresh.push(news);
        }
        Ok(Some(RingKey {
            peer: subject,
            order,
        }))
    }
}

/// SWIM settings for a mesh of about `members` nodes probed every `period`.
///
/// The suspicion timeout is `max(suspicion, 1.6 × period × log10(members + 1))`: a floor for small
/// meshes on busy machines, then growing with log N as SWIM's and Lifeguard's do. Each update is
/// passed on `4 × log10(members + 1)` times (at least 4), piggybacked on probes and acks and
/// gossiped to 3 members every `period × 2/5` while there is news, which reaches every member
/// with high probability in O(log N) rounds.
pub fn config(members: usize, period: Duration, suspicion: Duration) -> Config {
    let n = members.max(1) as f64 + 1.0;
    let max_tx = (4.0 * n.log10()).ceil().clamp(4.0, 255.0) as u8;
    let mut c = Config::new_lan(NonZeroU32::new(members.max(1) as u32).unwrap_or(NonZeroU32::MIN));
    c.probe_period = period;
    c.probe_rtt = period * 3 / 5;
    c.num_indirect_probes = NonZeroUsize::new(3).unwrap_or(NonZeroUsize::MIN);
    c.max_transmissions = NonZeroU8::new(max_tx).unwrap_or(NonZeroU8::MIN);
    c.suspect_to_down_after = suspicion.max(period.mul_f64(1.6 * n.log10()));
    c.remove_down_after = Duration::from_secs(24 * 3_600);
    c.max_packet_size = NonZeroUsize::new(MAX_PACKET).unwrap_or(NonZeroUsize::MIN);
    c.notify_down_members = true;
    // A partition heals without help: down members are asked, now and then, to rejoin.
    c.periodic_announce_to_down_members = Some(foca::PeriodicParams {
        frequency: period * 10,
        num_members: NonZeroUsize::MIN,
    });
    // Discovery after a join: now and then ask one member for its view.
    c.periodic_announce = Some(foca::PeriodicParams {
        frequency: period * 20,
        num_members: NonZeroUsize::MIN,
    });
    // Updates also spread between probes, to a few members at a time.
    c.periodic_gossip = Some(foca::PeriodicParams {
        frequency: period * 2 / 5,
        num_members: NonZeroUsize::new(3).unwrap_or(NonZeroUsize::MIN),
    });
    c
}

/// The suspicion timeout's floor for a node that wants a dead member down after about
/// `down_after` in a small mesh: that less two probe periods (SWIM needs about that to
/// suspect), at least one period.
pub fn suspicion_floor(down_after: Duration, period: Duration) -> Duration {
    down_after.saturating_sub(period * 2).max(period)
}

/// What a step of [`Swim`] asks of its driver, and what it learnt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send these bytes to this member.
    Send(SwimId, Vec<u8>),
    /// Call [`Swim::timer`] with this event after this long.
    Wake(Duration, Timer<SwimId>),
    /// The member is alive (joined, back, or a new identity of a restarted node).
    Up(SwimId),
    /// The member is down.
    Down(SwimId),
    /// A ring change reached this node for the first time.
    Ring(RingChange),
    /// A notice reached this node for the first time (or a newer version of one).
    Notice(Notice),
    /// This node was declared down and rejoined under a renewed identity.
    Rejoined(SwimId),
}

/// The member an outgoing SWIM message asks its receiver to probe on this node's behalf (a
/// `PingReq`: this node's own probe of that member got no answer), if it is one.
pub fn indirect_probe_target(bytes: &[u8]) -> Option<PeerId> {
    use foca::Codec;
    let mut codec = BincodeCodec(bincode::config::standard());
    let header: foca::Header<SwimId> = codec.decode_header(bytes).ok()?;
    match header.message {
        foca::Message::PingReq { target, .. } => target.peer_id(),
        _ => None,
    }
}

/// A SWIM member: foca, its settings and the queue of what it asked for.
pub struct Swim {
    foca: Foca<SwimId, BincodeCodec<bincode::config::Configuration>, SmallRng, RingNews>,
    runtime: foca::AccumulatingRuntime<SwimId>,
    period: Duration,
    suspicion: Duration,
    sized_for: usize,
    news: Arc<Mutex<Vec<News>>>,
}

impl Swim {
    /// A member with identity `id`, sized for a mesh of `members`, its randomness from `seed`.
    pub fn new(
        id: SwimId,
        members: usize,
        period: Duration,
        suspicion: Duration,
        seed: u64,
    ) -> Self {
        let handler = RingNews::default();
        let news = handler.fresh.clone();
        let foca = Foca::with_custom_broadcast(
            id,
            config(members, period, suspicion),
            SmallRng::seed_from_u64(seed),
            BincodeCodec(bincode::config::standard()),
            handler,
        );
        Swim {
            foca,
            runtime: foca::AccumulatingRuntime::default(),
            period,
            suspicion,
            sized_for: members.max(1),
            news,
        }
    }

    /// This member's identity now (renewed after a rejoin).
    pub fn identity(&self) -> &SwimId {
        self.foca.identity()
    }

    /// Ask `to` to let this node in (and for its view of the mesh).
    pub fn announce(&mut self, to: SwimId) -> Vec<Output> {
        if let Err(e) = self.foca.announce(to, &mut self.runtime) {
            tracing::debug!(error = %e, "swim announce");
        }
        self.drain()
    }

    /// Add members known to be alive (from a heartbeat, or the simulator's start); `spread`:
    /// pass the news on (a join), or not (a mesh that is already formed).
    pub fn add_alive(
        &mut self,
        ids: impl IntoIterator<Item = SwimId>,
        spread: bool,
    ) -> Vec<Output> {
        let updates = ids.into_iter().map(foca::Member::alive);
        if let Err(e) = self.foca.apply_many(updates, spread, &mut self.runtime) {
            tracing::debug!(error = %e, "swim apply");
        }
        self.drain()
    }

    /// Bytes from another member.
    pub fn data(&mut self, bytes: &[u8]) -> Vec<Output> {
        if bytes.len() > MAX_PACKET {
            return Vec::new();
        }
        if let Err(e) = self.foca.handle_data(bytes, &mut self.runtime) {
            tracing::debug!(error = %e, "swim message refused");
        }
        self.drain()
    }

    /// A timer it asked for fired.
    pub fn timer(&mut self, event: Timer<SwimId>) -> Vec<Output> {
        if let Err(e) = self.foca.handle_timer(event, &mut self.runtime) {
            tracing::debug!(error = %e, "swim timer");
        }
        self.drain()
    }

    /// Spread a ring change to every member.
    pub fn broadcast(&mut self, change: &RingChange) -> Vec<Output> {
        self.spread(News::Ring(change.clone()))
    }

    /// Spread a notice to every member (one with a payload over [`MAX_NOTICE`] is dropped).
    pub fn notice(&mut self, notice: &Notice) -> Vec<Output> {
        if notice.payload.len() > MAX_NOTICE {
            tracing::warn!(topic = notice.topic, "notice too large; not spread");
            return self.drain();
        }
        self.spread(News::Notice(notice.clone()))
    }

    fn spread(&mut self, news: News) -> Vec<Output> {
        match bincode::serde::encode_to_vec(&news, bincode::config::standard()) {
            Ok(bytes) => {
                if let Err(e) = self.foca.add_broadcast(&bytes) {
                    tracing::warn!(error = %e, "news not spread");
                }
            }
            Err(e) => tracing::warn!(error = %e, "news not encoded"),
        }
        self.drain()
    }

    /// Members this node believes alive (suspects included).
    pub fn alive(&self) -> usize {
        self.foca.num_members()
    }

    /// Whether SWIM counts `peer` as alive (suspected included).
    pub fn is_alive(&self, peer: &PeerId) -> bool {
        let bytes = peer.to_bytes();
        self.foca.iter_members().any(|m| m.id().peer == bytes)
    }

    /// Re-size the settings when the mesh has grown or shrunk by half since they were set
    /// (the suspicion timeout and transmissions follow log N).
    fn resize(&mut self) {
        let n = self.foca.num_members() + 1;
        if n > self.sized_for * 2 || n * 2 < self.sized_for {
            let config = config(n, self.period, self.suspicion);
            if self.foca.set_config(config).is_ok() {
                self.sized_for = n;
            }
        }
    }

    fn drain(&mut self) -> Vec<Output> {
        let mut out = Vec::new();
        while let Some((to, bytes)) = self.runtime.to_send() {
            out.push(Output::Send(to, bytes.to_vec()));
        }
        while let Some((after, event)) = self.runtime.to_schedule() {
            out.push(Output::Wake(after, event));
        }
        let mut membership_changed = false;
        while let Some(n) = self.runtime.to_notify() {
            match n {
                OwnedNotification::MemberUp(id) => {
                    membership_changed = true;
                    out.push(Output::Up(id));
                }
                OwnedNotification::MemberDown(id) => {
                    membership_changed = true;
                    out.push(Output::Down(id));
                }
                OwnedNotification::Rename(_, new) => {
                    // A restart (or rejoin) replacing a live identity: the new one is alive.
                    let peer = new.peer.clone();
                    if self
                        .foca
                        .iter_members()
                        .any(|m| m.id().peer == peer && m.id() == &new)
                    {
                        out.push(Output::Up(new));
                    }
                }
                OwnedNotification::Rejoin(id) => out.push(Output::Rejoined(id)),
                _ => {}
            }
        }
        let news = std::mem::take(&mut *self.news.lock().unwrap_or_else(|p| p.into_inner()));
        out.extend(news.into_iter().map(|n| match n {
            News::Ring(c) => Output::Ring(c),
            News::Notice(n) => Output::Notice(n),
        }));
        if membership_changed {
            self.resize();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny lossless network with virtual time for `n` members.
    struct Net {
        nodes: Vec<Swim>,
        alive: Vec<bool>,
        now: Duration,
        queue: Vec<(Duration, usize, Input)>,
        ups: Vec<Vec<SwimId>>,
        downs: Vec<Vec<SwimId>>,
        news: Vec<Vec<RingChange>>,
        notices: Vec<Vec<Notice>>,
        ids: Vec<SwimId>,
        /// Pairs that cannot reach each other directly (both ways).
        cut: Vec<(usize, usize)>,
        /// Members each node asked others to probe for it.
        probed_indirectly: Vec<Vec<PeerId>>,
    }

    enum Input {
        Data(Vec<u8>),
        Timer(Timer<SwimId>),
    }

    impl Net {
        fn new(n: usize) -> Net {
            let ids: Vec<SwimId> = (0..n)
                .map(|i| SwimId::new(PeerId::random(), 1, vec![i as u8]))
                .collect();
            let nodes = ids
                .iter()
                .enumerate()
                .map(|(i, id)| {
                    Swim::new(
                        id.clone(),
                        n,
                        Duration::from_millis(500),
                        Duration::from_secs(2),
                        i as u64,
                    )
                })
                .collect();
            let mut net = Net {
                nodes,
                alive: vec![true; n],
                now: Duration::ZERO,
                queue: Vec::new(),
                ups: vec![Vec::new(); n],
                downs: vec![Vec::new(); n],
                news: vec![Vec::new(); n],
                notices: vec![Vec::new(); n],
                ids,
                cut: Vec::new(),
                probed_indirectly: vec![Vec::new(); n],
            };
            // Each node hears of node 0 (its seed) and announces itself to it.
            for i in 1..n {
                let out = net.nodes[i].add_alive([net.ids[0].clone()], true);
                net.handle(i, out);
                let out = net.nodes[i].announce(net.ids[0].clone());
                net.handle(i, out);
            }
            net
        }

        fn index(&self, id: &SwimId) -> usize {
            self.ids.iter().position(|x| x.peer == id.peer).unwrap()
        }

        fn handle(&mut self, from: usize, outputs: Vec<Output>) {
            for out in outputs {
                match out {
                    Output::Send(to, bytes) => {
                        let j = self.index(&to);
                        if let Some(target) = indirect_probe_target(&bytes) {
                            self.probed_indirectly[from].push(target);
                        }
                        if self.cut.contains(&(from, j)) || self.cut.contains(&(j, from)) {
                            continue;
                        }
                        let at = self.now + Duration::from_millis(1);
                        self.queue.push((at, j, Input::Data(bytes)));
                    }
                    Output::Wake(after, t) => {
                        self.queue.push((self.now + after, from, Input::Timer(t)))
                    }
                    Output::Up(id) => self.ups[from].push(id),
                    Output::Down(id) => self.downs[from].push(id),
                    Output::Ring(c) => self.news[from].push(c),
                    Output::Notice(n) => self.notices[from].push(n),
                    Output::Rejoined(_) => {}
                }
            }
        }

        fn run_until(&mut self, until: Duration) {
            loop {
                self.queue.sort_by_key(|(at, _, _)| std::cmp::Reverse(*at));
                let Some((at, _, _)) = self.queue.last() else {
                    return;
                };
                if *at > until {
                    self.now = until;
                    return;
                }
                let (at, i, input) = self.queue.pop().unwrap();
                self.now = at;
                if !self.alive[i] {
                    continue;
                }
                let out = match input {
                    Input::Data(b) => self.nodes[i].data(&b),
                    Input::Timer(t) => self.nodes[i].timer(t),
                };
                self.handle(i, out);
            }
        }
    }

    #[test]
    fn members_find_each_other_detect_a_death_and_spread_ring_changes() {
        let mut net = Net::new(5);
        net.run_until(Duration::from_secs(10));
        for i in 0..5 {
            assert_eq!(net.nodes[i].alive(), 4, "node {i} knows every other member");
        }
        // Node 4 dies: every live node declares it down, and no one else.
        net.alive[4] = false;
        let dead = net.ids[4].clone();
        net.run_until(Duration::from_secs(25));
        for i in 0..4 {
            assert_eq!(net.downs[i], vec![dead.clone()], "node {i}");
            assert!(!net.nodes[i].is_alive(&dead.peer_id().unwrap()));
        }
        // A ring change from node 1 reaches every live node once.
        let change = RingChange {
            peer: net.ids[3].peer.clone(),
            generation: 1,
            version: 0,
        };
        let out = net.nodes[1].broadcast(&change);
        net.handle(1, out);
        net.run_until(Duration::from_secs(30));
        for i in [0, 2, 3] {
            assert_eq!(net.news[i], vec![change.clone()], "node {i}");
        }
    }

    #[test]
    fn a_cut_between_two_members_shows_as_indirect_probes_and_no_death() {
        let mut net = Net::new(3);
        net.run_until(Duration::from_secs(10));
        assert!(net.probed_indirectly.iter().all(Vec::is_empty));
        net.cut.push((0, 2));
        net.run_until(Duration::from_secs(30));
        let (p0, p2) = (net.ids[0].peer_id().unwrap(), net.ids[2].peer_id().unwrap());
        // Each side's direct probes of the other fail, and others reach it: alive, not down.
        assert!(
            net.probed_indirectly[0].contains(&p2),
            "node 0 probes 2 through 1"
        );
        assert!(
            net.probed_indirectly[2].contains(&p0),
            "node 2 probes 0 through 1"
        );
        assert!(net.probed_indirectly[1].is_empty(), "node 1 reaches both");
        for i in 0..3 {
            assert!(
                net.downs[i].is_empty(),
                "node {i} declared {:?} down",
                net.downs[i]
            );
            assert_eq!(net.nodes[i].alive(), 2);
        }
    }

    #[test]
    fn notices_reach_every_member_once_and_newer_versions_replace_older() {
        let mut net = Net::new(6);
        net.run_until(Duration::from_secs(10));
        let ban = |version: u64, payload: &[u8]| Notice {
            topic: 1,
            key: b"192.0.2.9".to_vec(),
            version,
            payload: payload.to_vec(),
        };
        let out = net.nodes[2].notice(&ban(5, b"banned"));
        net.handle(2, out);
        net.run_until(Duration::from_secs(15));
        for i in (0..6).filter(|i| *i != 2) {
            assert_eq!(net.notices[i], vec![ban(5, b"banned")], "node {i}");
        }
        // An older version is ignored, a newer one (the lift) replaces it everywhere.
        let out = net.nodes[4].notice(&ban(3, b"stale"));
        net.handle(4, out);
        let out = net.nodes[0].notice(&ban(9, b"lifted"));
        net.handle(0, out);
        net.run_until(Duration::from_secs(20));
        for i in [1, 2, 3, 5] {
            assert_eq!(net.notices[i].last(), Some(&ban(9, b"lifted")), "node {i}");
            assert!(!net.notices[i].contains(&ban(3, b"stale")), "node {i}");
        }
        // Too large to spread: dropped at the source.
        let out = net.nodes[1].notice(&ban(12, &[0; MAX_NOTICE + 1]));
        net.handle(1, out);
        net.run_until(Duration::from_secs(25));
        assert!(net
            .notices
            .iter()
            .all(|n| n.iter().all(|x| x.version != 12)));
    }

    #[test]
    fn a_restart_replaces_the_old_identity() {
        let mut net = Net::new(3);
        net.run_until(Duration::from_secs(5));
        // Node 2 restarts with a new generation and announces itself to node 0.
        let restarted = SwimId {
            generation: 2,
            ..net.ids[2].clone()
        };
        net.nodes[2] = Swim::new(
            restarted.clone(),
            3,
            Duration::from_millis(500),
            Duration::from_secs(2),
            99,
        );
        let out = net.nodes[2].add_alive([net.ids[0].clone()], true);
        net.handle(2, out);
        let out = net.nodes[2].announce(net.ids[0].clone());
        net.handle(2, out);
        net.run_until(Duration::from_secs(15));
        for i in 0..2 {
            assert!(
                net.ups[i].contains(&restarted),
                "node {i} sees the new generation up"
            );
            assert!(net.downs[i].iter().all(|d| d.generation != 2), "node {i}");
        }
    }

    #[test]
    fn the_dial_address_does_not_make_another_identity() {
        let peer = PeerId::random();
        let a = SwimId::new(peer, 3, b"one".to_vec());
        let b = SwimId::new(peer, 3, b"two".to_vec());
        assert_eq!(a, b);
        assert_ne!(a, SwimId::new(peer, 4, b"one".to_vec()));
        assert_ne!(a, SwimId::new(PeerId::random(), 3, b"one".to_vec()));
        let wire = bincode::serde::encode_to_vec(&a, bincode::config::standard()).unwrap();
        let (back, _): (SwimId, usize) =
            bincode::serde::decode_from_slice(&wire, bincode::config::standard()).unwrap();
        assert_eq!(back, a);
        assert_eq!(back.addr_bytes(), b"one");
        assert_eq!(foca::Identity::addr(&back), foca::Identity::addr(&a));
    }

    #[test]
    fn settings_grow_with_log_n() {
        let small = config(3, Duration::from_millis(500), Duration::from_secs(2));
        let large = config(1_000, Duration::from_millis(500), Duration::from_secs(2));
        assert_eq!(small.suspect_to_down_after, Duration::from_secs(2));
        assert!(large.suspect_to_down_after > Duration::from_secs(2));
        assert!(large.suspect_to_down_after < Duration::from_secs(4));
        assert!(large.max_transmissions > small.max_transmissions);
    }
}
