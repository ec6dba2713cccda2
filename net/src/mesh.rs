//! [`Mesh`]: the handle a node holds on its libp2p peer, membership and replicated keyspace.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use libp2p::{Multiaddr, PeerId};
use sipmesh_storage::{Cell, EntryKey, Keyspace, Mutation, Partition, TableId};
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::{debug, info, warn, Instrument};

use crate::admission::{now_ms, Admission, Gate, Refusal, Revocation, Roles, WriteRights};
use crate::anti_entropy::{self, AntiEntropy, HandoffCursor};
use crate::config::{Enrollment, MeshConfig};
use crate::error::{Error, Result};
use crate::link::{self, ask_up_members, Handler, Link, Links};
use crate::membership::swim::{self, Swim};
use crate::membership::{self, Member, MemberEvent, Membership, MembershipConfig, SwimInput};
use crate::peer::{self, Command, PeerEvent};
use crate::placement::Snapshot;
use crate::protocol::{encode_frame, Frame, MemberInfo, Request, Response, PROTOCOL};
use crate::replication::{Consistency, Replication};
use crate::shutdown::{Background, Shutdown};
use crate::stats::MeshMetrics;

/// Application messages waiting for the node.
const APP_QUEUE: usize = 8192;
/// SWIM messages and members queued for the SWIM task at most (more are dropped: SWIM
/// tolerates loss).
const SWIM_INBOX: usize = 1_024;
/// How often a node checks whether it must hand off partitions it no longer replicates.
const HANDOFF_EVERY: Duration = Duration::from_secs(5);
/// Rows one compaction page scans at most, one page per HANDOFF_EVERY: ~30 ms of a blocking
/// thread when the rows are in the page cache (~1.1 µs per row with nothing to do,
/// storage/benches/keyspace.rs), up to ~100 ms when they are read from the log.
const COMPACTION_PAGE_ROWS: usize = 25_000;
/// Wall time handoff may spend per HANDOFF_EVERY, in rounds back to back (a round of 2,000
/// partitions takes ~50 ms): at most a fifth of the time.
const HANDOFF_BUDGET: Duration = Duration::from_secs(1);
/// A handoff scan runs at least this often even if the ring did not change.
const HANDOFF_SAFETY_NET: Duration = Duration::from_secs(300);
/// How long shutdown waits for the background loops.
const SHUTDOWN_WITHIN: Duration = Duration::from_secs(2);

/// A link nothing was sent on for this long is closed (unless it goes to a fellow replica).
const LINK_IDLE: Duration = Duration::from_secs(20);
/// How often idle links are looked for.
const LINK_SWEEP: Duration = Duration::from_secs(5);
/// Notices received and not yet taken by a slow subscriber (it then misses the oldest).
const NOTICE_QUEUE: usize = 1_024;
/// Mesh frames up to this size may travel as datagrams ([`DatagramSender`]): every SWIM
/// packet fits (on the links, one that did not would wait for a dial, and a late ack is a
/// false suspicion), and sealed it still fits a 1,500-byte MTU.
pub const DATAGRAM_FRAME_MAX: usize = swim::MAX_PACKET + 64;

/// A connected peer that has not shown a valid credential within this long is disconnected.
const ADMIT_WITHIN: Duration = Duration::from_secs(10);

/// How long a self-issued credential is valid (renewed at every start).
/// How long a member may take to stream the ranges of a member being removed (the CLI waits
/// 60 s for the answer).
const RESYNC_WITHIN: Duration = Duration::from_secs(50);
const SELF_ISSUED_FOR_MS: u64 = 365 * 24 * 3600 * 1000;

/// Application bytes from another node.
#[derive(Debug)]
pub struct AppMessage {
    /// The sending node.
    pub from: PeerId,
    /// The bytes.
    pub payload: Vec<u8>,
    /// Where to answer, for [`Mesh::request_app`]; `None` for [`Mesh::send_app`].
    pub reply: Option<oneshot::Sender<Vec<u8>>>,
}

/// The node's handle on the mesh. Cheap to clone.
#[derive(Clone)]
pub struct Mesh {
    inner: Arc<Inner>,
}

struct Inner {
    local: PeerId,
    /// This node's key (its PeerId's), which signs the rows it writes under enrollment.
    key: libp2p::identity::Keypair,
    keyspace: Keyspace,
    membership: Arc<Membership>,
    links: Arc<Links>,
    replication: Replication,
    anti_entropy: AntiEntropy,
    commands: mpsc::Sender<Command>,
    listen_addrs: Vec<Multiaddr>,
    /// The mesh's background loops (aborted when the last handle goes).
    background: Background,
    /// Where one-way application messages go.
    one_way: Arc<OnceLock<AppHandler>>,
    metrics: MeshMetrics,
    /// From start until an anti-entropy round pulls nothing: this node's replicas may lack
    /// what the others hold (a new or returning member), so reads must not trust them alone.
    catching_up: Arc<AtomicBool>,
    gate: Gate,
    service: Arc<Service>,
    one_way_sender: OneWay,
    notices: broadcast::Sender<swim::Notice>,
}

/// Sends a mesh frame (membership's one-way messages: SWIM, and heartbeats to up members) to a
/// member as one datagram outside the streams — the node's sealed UDP between SIP ports.
/// Returns `false` when it cannot (no address known, no key shared with that member): the frame
/// then rides the link. Datagrams need no connection, so membership keeps none open.
/// It is handed the member, a lookup of the member's tags (where its SIP address is), and the
/// frame.
pub type DatagramSender =
    Box<dyn Fn(&PeerId, &dyn Fn(&str) -> Option<String>, &[u8]) -> bool + Send + Sync>;

/// One-way membership messages: as a datagram where the node can send one, else on the link.
#[derive(Clone)]
struct OneWay {
    links: Arc<Links>,
    membership: Arc<Membership>,
    datagrams: Arc<OnceLock<DatagramSender>>,
    /// Peers a test partitioned away ([`Mesh::block`]): no datagrams either way.
    blocked: Arc<Mutex<HashSet<PeerId>>>,
    /// Whether any peer is blocked (read on every datagram without the lock).
    any_blocked: Arc<AtomicBool>,
}

impl OneWay {
    fn blocked(&self, peer: &PeerId) -> bool {
        if !self.any_blocked.load(Ordering::Relaxed) {
            return false;
        }
        self.blocked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(peer)
    }

    /// Send an encoded one-way frame (`encode_frame`'s, length prefix included) as a datagram
    /// if possible; returns whether it went as one.
    fn datagram_frame(&self, peer: PeerId, frame: &[u8]) -> bool {
        let Some(send) = self.datagrams.get() else {
            return false;
        };
        if self.blocked(&peer) {
            return true; // partitioned: dropped, as the network would
        }
        if frame.len() - 4 > DATAGRAM_FRAME_MAX {
            return false;
        }
        let tag = |name: &str| self.membership.tag(&peer, name);
        send(&peer, &tag, &frame[4..])
    }

    /// Send as a datagram if possible; returns whether it went as one.
    fn datagram(&self, peer: PeerId, request: &Request) -> bool {
        self.datagrams.get().is_some()
            && encode_frame(&Frame::OneWay(request.clone()))
                .is_ok_and(|frame| self.datagram_frame(peer, &frame))
    }

    /// Send as a datagram, or queue on the link (dropped when its queue is full); encoded once.
    fn send(&self, peer: PeerId, request: Request) {
        let kind = request.kind();
        let Ok(frame) = encode_frame(&Frame::OneWay(request)) else {
            return;
        };
        if !self.datagram_frame(peer, &frame) {
            let _ = self.links.try_send_frame(peer, kind, frame);
        }
    }
}

/// Takes the one-way application messages of other nodes (the node's SIP traffic), on the task
/// that read them from the stream: no queue, no hand-off between tasks.
pub type AppHandler = Box<dyn Fn(PeerId, Vec<u8>) + Send + Sync>;

struct Service {
    replication: Replication,
    /// For an operator's removal of a dead member ([`Request::Resync`]).
    anti_entropy: AntiEntropy,
    /// The links, for relaying ([`Request::Relay`]), and how long a relayed request may take.
    relay: (Arc<Links>, Duration),
    keyspace: Keyspace,
    membership: Arc<Membership>,
    commands: mpsc::Sender<Command>,
    /// Application requests (with an answer), for the node's own task.
    app: mpsc::Sender<AppMessage>,
    /// One-way application messages (dropped until the node sets the handler).
    one_way: Arc<OnceLock<AppHandler>>,
    gate: Gate,
}

impl Service {
    fn learn(&self, learnt: Vec<(PeerId, Multiaddr)>) {
        for (peer, addr) in learnt {
            let _ = self.commands.try_send(Command::AddAddress(peer, addr));
        }
    }
}

impl Service {
    /// Pass a member's request on to `to` (see `relay`): one hop, replica reads and writes
    /// only, to a member this node sees up, a write only if the sender may make it.
    fn relay(
        &self,
        from: PeerId,
        roles: Roles,
        to: &[u8],
        request: Request,
    ) -> BoxFuture<'static, Response> {
        let refuse = |why: String| -> BoxFuture<'static, Response> {
            Box::pin(async move { Response::Error(format!("{}{why}", crate::relay::RELAY_FAILED)) })
        };
        let Ok(to) = PeerId::from_bytes(to) else {
            return refuse("not a PeerId".into());
        };
        if !request.relayable() {
            return refuse(format!("a {} request is not relayed", request.kind()));
        }
        if to == from || !self.membership.is_up(&to) || to == self.membership.local() {
            return refuse(format!("{to} is not another member up here"));
        }
        if let Request::Write(m) = &request {
            if let Err(reason) = self.gate.may_write(&from, roles, m) {
                return Box::pin(async move {
                    Response::Error(format!("{}{reason}", crate::admission::NOT_ALLOWED))
                });
            }
        }
        let (links, timeout) = self.relay.clone();
        Box::pin(async move {
            match links.request(to, request, timeout).await {
                Ok(response) => response,
                Err(Error::Remote { reason, .. }) => Response::Error(reason),
                Err(e) => Response::Error(format!("{}{e}", crate::relay::RELAY_FAILED)),
            }
        })
    }

    /// A write's acknowledgement, sent once the write is on disk (group commit).
    fn when_durable(&self, response: Response) -> BoxFuture<'static, Response> {
        let replication = self.replication.clone();
        Box::pin(async move {
            if !matches!(response, Response::Ack) {
                return response;
            }
            match replication.durable().await {
                Ok(()) => Response::Ack,
                Err(e) => Response::Error(e.to_string()),
            }
        })
    }
}

impl Handler for Service {
    fn handle(&self, peer: PeerId, request: Request) -> BoxFuture<'static, Response> {
        let span = tracing::debug_span!("serve", %peer, kind = request.kind());
        let _enter = span.enter();
        // Admission: a heartbeat shows the credential; anything else needs it shown already.
        let roles = match &request {
            Request::Heartbeat { info, .. } => match self.gate.check_info(&peer, info) {
                Ok(()) => self.gate.roles(&peer),
                Err(refusal) => {
                    let response = Response::Error(format!("not a member: {refusal}"));
                    return Box::pin(async move { response });
                }
            },
            _ => self.gate.roles(&peer),
        };
        let Some(roles) = roles else {
            return Box::pin(async move { Response::Error("not a member of this mesh".into()) });
        };
        let response = match request {
            Request::Heartbeat { info, gossip } => {
                let learnt = self.membership.on_info(peer, info, &gossip);
                self.learn(learnt);
                Response::Member(self.membership.local_info())
            }
            Request::Leave { generation } => {
                self.membership.on_leave(peer, generation);
                // Passed on by SWIM to the members the leaver could not tell.
                self.membership.spread_leave(peer, generation);
                Response::Ack
            }
            Request::Stopping { generation } => {
                self.membership.on_stopping(peer, generation);
                Response::Ack
            }
            Request::Swim(bytes) => {
                self.membership.to_swim(SwimInput::Data(bytes));
                Response::Ack
            }
            Request::Resync { removing } => {
                if !roles.contains(Roles::ADMIN) {
                    Response::Error("removing a member needs the admin role".into())
                } else {
                    let marked = PeerId::from_bytes(&removing)
                        .map_err(|e| e.to_string())
                        .and_then(|gone| self.membership.mark_removing(gone));
                    if let Err(why) = marked {
                        return Box::pin(async move { Response::Error(why) });
                    }
                    let ae = self.anti_entropy.clone();
                    return Box::pin(async move {
                        match ae.bootstrap_pass().await {
                            Ok(_) => Response::Ack,
                            Err(why) => Response::Error(why),
                        }
                    });
                }
            }
            Request::Relay { to, request } => return self.relay(peer, roles, &to, *request),
            Request::Write(m) => {
                if let Err(reason) = self.gate.may_write(&peer, roles, &m) {
                    return Box::pin(async move {
                        Response::Error(format!("{}{reason}", crate::admission::NOT_ALLOWED))
                    });
                }
                let response = self.replication.handle_write(&m);
                return self.when_durable(response);
            }
            Request::Read {
                table,
                partition_key,
            } => self.replication.handle_read(table, &partition_key),
            Request::Leaves(leaves) => {
                let merkle = self.keyspace.merkle();
                if leaves
                    .iter()
                    .any(|&l| l as usize >= sipmesh_storage::MERKLE_LEAVES)
                {
                    Response::Error("leaf out of range".into())
                } else {
                    Response::Leaves(
                        leaves
                            .iter()
                            .map(|&l| (merkle.leaf(l as usize), merkle.touched(l as usize)))
                            .collect(),
                    )
                }
            }
            // Scans of the store: off the async workers.
            request @ (Request::Digests { .. } | Request::Page { .. }) => {
                let ks = self.keyspace.clone();
                return Box::pin(async move {
                    tokio::task::spawn_blocking(move || anti_entropy::serve_scan(&ks, request))
                        .await
                        .unwrap_or_else(|e| Response::Error(e.to_string()))
                });
            }
            // Tombstone collection reads and rewrites the store: off the async workers.
            request @ (Request::Held { .. } | Request::Purge { .. }) => {
                let (ks, metrics) = (self.keyspace.clone(), self.gate.metrics.clone());
                return Box::pin(async move {
                    tokio::task::spawn_blocking(move || crate::gc::serve(&ks, request, &metrics))
                        .await
                        .unwrap_or_else(|e| Response::Error(e.to_string()))
                });
            }
            // Claims flush the acceptor's state before answering: off the async workers.
            request @ (Request::Prepare { .. } | Request::Propose { .. }) => {
                let ks = self.keyspace.clone();
                return Box::pin(async move {
                    tokio::task::spawn_blocking(move || crate::claim::serve(&ks, request))
                        .await
                        .unwrap_or_else(|e| Response::Error(e.to_string()))
                });
            }
            Request::Push {
                mutations,
                owned_only,
            } => {
                let response = self.replication.handle_push(&mutations, owned_only);
                return self.when_durable(response);
            }
            Request::App(payload) => {
                let (tx, rx) = oneshot::channel();
                let app = self.app.clone();
                return Box::pin(async move {
                    let msg = AppMessage {
                        from: peer,
                        payload,
                        reply: Some(tx),
                    };
                    if app.send(msg).await.is_err() {
                        return Response::Error("node is shutting down".into());
                    }
                    match rx.await {
                        Ok(bytes) => Response::App(bytes),
                        Err(_) => Response::Error("no answer from the node".into()),
                    }
                });
            }
        };
        Box::pin(async move { response })
    }

    fn one_way(&self, peer: PeerId, request: Request) {
        if self.gate.roles(&peer).is_none() {
            debug!(%peer, "one-way message from a peer that is not a member; dropped");
            return;
        }
        self.membership.reach().heard(&peer, Instant::now());
        match request {
            Request::App(payload) => match self.one_way.get() {
                Some(handle) => handle(peer, payload),
                None => debug!(%peer, "one-way message before the node is ready; dropped"),
            },
            Request::Swim(bytes) => self.membership.to_swim(SwimInput::Data(bytes)),
            // A member's heartbeat sent as a datagram (no answer: the receiver sends its own).
            Request::Heartbeat { info, gossip } if self.gate.check_info(&peer, &info).is_ok() => {
                let learnt = self.membership.on_info(peer, info, &gossip);
                self.learn(learnt);
            }
            _ => {}
        }
    }
}

/// Connected peers may be members: membership heartbeats them.
/// Under enrollment, a peer that has not shown a valid credential within [`ADMIT_WITHIN`] of
/// connecting is disconnected (it would otherwise keep a connection, and the DHT's answers,
/// without ever heartbeating).
async fn track_connections(
    membership: Arc<Membership>,
    mut events: mpsc::Receiver<PeerEvent>,
    gate: Gate,
    mut shutdown: Shutdown,
) {
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            ev = events.recv() => match ev {
                Some(PeerEvent::Connected(peer)) => {
                    membership.add_candidate(peer);
                    if gate.admission.is_some() && gate.roles(&peer).is_none() {
                        let gate = gate.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(ADMIT_WITHIN).await;
                            if gate.roles(&peer).is_none() {
                                gate.refuse(peer, Refusal::Missing);
                            }
                        });
                    }
                }
                None => return,
            },
        }
    }
}

/// The SWIM task: owns this node's [`Swim`], feeds it the messages, timers and members it is
/// handed, sends what it asks as datagrams where the node can (else one-way on the links,
/// dropped when a link's queue is full: SWIM tolerates loss), and tells membership who is up
/// and down.
async fn swim(
    membership: Arc<Membership>,
    sender: OneWay,
    commands: mpsc::Sender<Command>,
    notices: broadcast::Sender<swim::Notice>,
    mut inbox: mpsc::Receiver<SwimInput>,
    (period, suspicion): (Duration, Duration),
    mut shutdown: Shutdown,
) {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    let members = membership.snapshot().ring.len();
    let mut swim = Swim::new(
        membership.swim_id(),
        members,
        period,
        suspicion,
        rand::random(),
    );
    // Timers: (when, sequence) in a heap, the events by sequence.
    let mut heap: BinaryHeap<Reverse<(tokio::time::Instant, u64)>> = BinaryHeap::new();
    let mut timers: HashMap<u64, swim::Timer<swim::SwimId>> = HashMap::new();
    let mut seq = 0u64;
    loop {
        let next = heap
            .peek()
            .map(|Reverse((at, _))| *at)
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3_600));
        let outputs = tokio::select! {
            _ = shutdown.wait() => return,
            input = inbox.recv() => match input {
                None => return,
                Some(SwimInput::Data(bytes)) => swim.data(&bytes),
                Some(SwimInput::Alive(id)) => swim.add_alive([id], true),
                Some(SwimInput::Ring(change)) => swim.broadcast(&change),
                Some(SwimInput::Notice(notice)) => swim.notice(&notice),
            },
            _ = tokio::time::sleep_until(next) => {
                let now = tokio::time::Instant::now();
                let mut out = Vec::new();
                while let Some(Reverse((at, s))) = heap.peek().copied() {
                    if at > now {
                        break;
                    }
                    heap.pop();
                    if let Some(timer) = timers.remove(&s) {
                        out.extend(swim.timer(timer));
                    }
                }
                out
            }
        };
        for out in outputs {
            match out {
                swim::Output::Send(to, bytes) => {
                    if let Some(target) = swim::indirect_probe_target(&bytes) {
                        membership.reach().unreachable(target);
                    }
                    if let Some(peer) = to.peer_id() {
                        sender.send(peer, Request::Swim(bytes));
                    }
                }
                swim::Output::Wake(after, timer) => {
                    seq += 1;
                    heap.push(Reverse((tokio::time::Instant::now() + after, seq)));
                    timers.insert(seq, timer);
                }
                swim::Output::Up(id) => {
                    let Some(peer) = id.peer_id() else { continue };
                    if membership.on_swim_up(peer, id.generation) {
                        // Not known here (or restarted): its heartbeat answer brings its info.
                        if let Ok(addr) = Multiaddr::try_from(id.addr_bytes().to_vec()) {
                            let _ = commands.try_send(Command::AddAddress(peer, addr));
                        }
                        membership.add_candidate(peer);
                    }
                }
                swim::Output::Down(id) => {
                    if let Some(peer) = id.peer_id() {
                        membership.on_swim_down(peer, id.generation);
                    }
                }
                swim::Output::Ring(change) => {
                    if let Ok(peer) = PeerId::from_bytes(&change.peer) {
                        membership.on_leave(peer, change.generation);
                    }
                }
                swim::Output::Notice(notice) => {
                    let _ = notices.send(notice);
                }
                swim::Output::Rejoined(id) => {
                    warn!(identity = ?id, "SWIM declared this node down; rejoined under a renewed identity");
                }
            }
        }
    }
}

/// Every `interval`: housekeeping, then a heartbeat to each candidate, one up member and now
/// and then one down member (each waits up to `timeout` for the answer, which is the member's
/// own info). Failure detection is the SWIM task's.
async fn heartbeats(
    membership: Arc<Membership>,
    (link, sender): (Arc<dyn Link>, OneWay),
    service: Arc<Service>,
    commands: mpsc::Sender<Command>,
    (interval, timeout): (Duration, Duration),
    metrics: MeshMetrics,
    mut shutdown: Shutdown,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tick = 0u64;
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = ticker.tick() => {}
        }
        tick += 1;
        membership.tick();
        let hb = membership.heartbeat();
        // A peer not admitted yet learns nothing from this node but its credential, its
        // PeerId and generation, and its own listen addresses (which identify tells every
        // connected peer anyway): no tags, no gossip. The addresses must be there: the peer
        // admits this node from this very heartbeat and spreads its SWIM identity, address
        // included, to the members that have never seen it; without one they could not dial
        // it until a Kademlia lookup found it (10 s and more).
        // Only under enrollment is anyone not admitted.
        let bare = match &hb {
            Request::Heartbeat { info, .. } if service.gate.admission.is_some() => {
                Some(Request::Heartbeat {
                    info: MemberInfo {
                        tags: BTreeMap::new(),
                        ..info.clone()
                    },
                    gossip: Vec::new(),
                })
            }
            _ => None,
        };
        // To an admitted member that is up: one datagram, no gossip (SWIM spreads who is in
        // the mesh), no answer (it sends its own in turn), no connection.
        let datagram = match &hb {
            Request::Heartbeat { info, .. } => Request::Heartbeat {
                info: info.clone(),
                gossip: Vec::new(),
            },
            _ => hb.clone(),
        };
        for peer in membership.heartbeat_targets(tick) {
            if service.gate.roles(&peer).is_some()
                && membership.is_up(&peer)
                && sender.datagram(peer, &datagram)
            {
                metrics.heartbeat_datagram();
                continue;
            }
            let hb = match &bare {
                Some(bare) if service.gate.roles(&peer).is_none() => bare,
                _ => &hb,
            };
            let request = link.request(peer, hb.clone(), timeout);
            let service = service.clone();
            let commands = commands.clone();
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let sent = std::time::Instant::now();
                let answer = request.await;
                metrics.heartbeat(answer.is_ok().then(|| sent.elapsed()));
                match answer {
                    Ok(Response::Member(info)) => {
                        if service.gate.check_info(&peer, &info).is_ok() {
                            let learnt = service.membership.on_info(peer, info, &[]);
                            service.learn(learnt);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        debug!(%peer, error = %e, "heartbeat failed");
                        if tick.is_multiple_of(20) {
                            let _ = commands.try_send(Command::FindPeer(peer));
                        }
                    }
                }
            });
        }
    }
}

/// Every [`LINK_SWEEP`]: close the links idle for [`LINK_IDLE`], except those to this node's
/// fellow replicas (the peers it shares Merkle leaves with: anti-entropy, hints and handoff use
/// them; under XOR placement a handful of neighbours in the key space),
/// and sample the counts for the metrics. Links to anyone else (a SIP next hop, a coordinator's
/// replicas) are dialled on demand and closed when idle, so connections per node stay bounded
/// however large the mesh.
async fn close_idle_links(
    links: Arc<Links>,
    membership: Arc<Membership>,
    (connected, serving): (
        Arc<std::sync::atomic::AtomicUsize>,
        Arc<std::sync::atomic::AtomicUsize>,
    ),
    metrics: MeshMetrics,
    mut shutdown: Shutdown,
) {
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tokio::time::sleep(LINK_SWEEP) => {}
        }
        let keep = membership.snapshot().shared_leaves();
        let closed = links.close_idle(LINK_IDLE, |p| keep.contains_key(p));
        if closed > 0 {
            debug!(closed, "idle links closed");
        }
        metrics.connections(
            links.count(),
            serving.load(Ordering::Relaxed),
            keep.len(),
            connected.load(Ordering::Relaxed),
            membership.reach().marked(),
        );
    }
}

/// Offer stored hints to peers that are up, every `every`.
async fn deliver_hints(
    replication: Replication,
    every: Duration,
    metrics: MeshMetrics,
    mut shutdown: Shutdown,
) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = ticker.tick() => {}
        }
        metrics.hints(replication.deliver_hints().await);
    }
}

/// One anti-entropy round every `every` (the first after one interval).
async fn anti_entropy_rounds(
    ae: AntiEntropy,
    every: Duration,
    metrics: MeshMetrics,
    catching_up: Arc<AtomicBool>,
    mut shutdown: Shutdown,
) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    // Until a round pulls nothing, the node is catching up (a new or returning member streaming
    // its replicas): say how far it got, then that it is in sync.
    let (mut pulled, mut bytes) = (0usize, 0usize);
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = ticker.tick() => {}
        }
        let Some(x) = ae.round().await else { continue };
        metrics.anti_entropy(&x);
        if !catching_up.load(Ordering::Relaxed) {
            continue;
        }
        pulled += x.pulled;
        bytes += x.bytes;
        if x.pulled > 0 {
            info!(
                partitions = pulled,
                bytes,
                leaves_differing = x.differing,
                "catching up: replicas streamed from peers so far"
            );
        } else if x.compared > 0 || ae.alone() {
            info!(
                partitions = pulled,
                bytes, "in sync with every peer (replicas streamed since start)"
            );
            catching_up.store(false, Ordering::Relaxed);
        }
    }
}

/// What tombstone collection needs (`gc`).
struct GcContext {
    local: PeerId,
    membership: Arc<Membership>,
    link: Arc<dyn Link>,
    timeout: Duration,
    compact_every: Duration,
}

/// Hand off partitions this node no longer replicates (when the ring changed, and now and
/// then as a safety net), and compact the keyspace (a pass at most every `compact_every`, in
/// pages).
async fn handoff_and_compaction(
    ae: AntiEntropy,
    keyspace: Keyspace,
    metrics: MeshMetrics,
    gc: GcContext,
    mut shutdown: Shutdown,
) {
    let mut ticker = tokio::time::interval(HANDOFF_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    let mut last_compaction = tokio::time::Instant::now();
    // The pass in progress: `Some(after)` resumes it after that key (`None`: from the start).
    let mut cursor: Option<Option<Vec<u8>>> = None;
    // Handoff reads the leaves this node does not replicate whole: only when the ring changed
    // since the last complete pass that moved nothing (and now and then as a safety net).
    let mut handed_at: Option<(u64, tokio::time::Instant)> = None;
    // The pass in progress: the ring version it started on, where it goes on from, and what
    // it moved so far.
    let mut pass: Option<(u64, Option<HandoffCursor>, usize)> = None;
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = ticker.tick() => {}
        }
        let version = ae.ring_version();
        let due = match handed_at {
            Some((v, at)) => v != version || at.elapsed() >= HANDOFF_SAFETY_NET,
            None => true,
        };
        if due {
            // A pass started on another ring starts again from the beginning.
            let (from, so_far) = match pass.take() {
                Some((v, from, so_far)) if v == version => (from, so_far),
                _ => (None, 0),
            };
            let started = std::time::Instant::now();
            let done = ae.handoff(from, HANDOFF_BUDGET).await;
            debug!(
                moved = done.moved,
                rounds = done.rounds,
                took_ms = started.elapsed().as_millis() as u64,
                complete = done.next.is_none(),
                "handoff rounds"
            );
            if done.moved > 0 {
                info!(
                    partitions = done.moved,
                    "handed off partitions this node no longer replicates"
                );
            }
            metrics.handed_off(done.moved);
            let so_far = so_far + done.moved;
            if done.blocked {
                // Not now (a member down, or the store unreadable): the pass waits.
                pass = Some((version, done.next, so_far));
            } else if done.next.is_some() {
                pass = Some((version, done.next, so_far));
            } else if so_far == 0 {
                // A whole pass over an unchanged ring found nothing to move: done until it
                // changes.
                debug!(version, "handoff pass found nothing to move");
                handed_at = Some((version, tokio::time::Instant::now()));
            }
        }
        // A pass goes in pages (one per tick, from where the last one stopped), so its cost
        // is spread and bounded however large the keyspace: at most COMPACTION_PAGE_ROWS
        // rows every HANDOFF_EVERY. A new pass starts at most every `compact_every`.
        if cursor.is_none() && last_compaction.elapsed() >= gc.compact_every {
            last_compaction = tokio::time::Instant::now();
            cursor = Some(None);
        }
        if let Some(after) = cursor.take() {
            let ks = keyspace.clone();
            let started = std::time::Instant::now();
            let compacted = tokio::task::spawn_blocking(move || {
                ks.compact_page_for_gc(
                    after.as_deref(),
                    COMPACTION_PAGE_ROWS,
                    crate::gc::MAX_PARTITIONS_PER_PASS,
                )
            })
            .await;
            match compacted {
                Ok(Ok(page)) => {
                    let (stats, candidates) = (page.stats, page.candidates);
                    debug!(
                        ?stats,
                        tombstones = candidates.len(),
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        done = page.next.is_none(),
                        "compaction page"
                    );
                    cursor = page.next.map(Some);
                    // Nothing left to hand off: no old owner still holds a value to push.
                    let handed_off = handed_at.is_some_and(|(v, _)| v == ae.ring_version());
                    if handed_off && !candidates.is_empty() {
                        let purged = crate::gc::collect(
                            gc.local,
                            &keyspace,
                            &gc.membership,
                            &gc.link,
                            candidates,
                            gc.timeout,
                        )
                        .await;
                        metrics.tombstones_purged(purged);
                    }
                }
                Ok(Err(e)) => tracing::error!(error = %e, "compaction failed"),
                Err(_) => {}
            }
        }
    }
}

impl Mesh {
    /// Start the peer: load (or create) the node key, listen, join through the seeds, and run
    /// membership, hint delivery, anti-entropy and handoff in the background. Returns the mesh
    /// and the inbox of application messages from other nodes.
    pub async fn start(
        config: MeshConfig,
        keyspace: Keyspace,
    ) -> Result<(Mesh, mpsc::Receiver<AppMessage>)> {
        let key = peer::load_or_create_key(&config.data_dir)?;
        let local = key.public().to_peer_id();
        let generation = membership::next_generation(&config.data_dir)?;
        let admission = match &config.enrollment {
            None => None,
            Some(Enrollment::Credential(c)) => Some(Admission::new(c, &local, now_ms())?),
            Some(Enrollment::SelfIssued { key, roles }) => {
                let now = now_ms();
                let own = key.issue(&local, *roles, now, now + SELF_ISSUED_FOR_MS);
                Some(Admission::new(&own, &local, now)?)
            }
        }
        .map(Arc::new);
        let admitted = admission.clone().map(|a| {
            Arc::new(move |peer: &PeerId| a.roles(peer, now_ms()).is_some())
                as crate::kad_gate::Admitted
        });
        let (handle, peer_events, swarm_task) = peer::start(&config, key.clone(), admitted).await?;
        let info = MemberInfo {
            wall_ms: 0,
            credential: admission.as_ref().map(|a| a.own()).unwrap_or_default(),
            peer_id: local.to_bytes(),
            addrs: handle.listen_addrs.iter().map(|a| a.to_string()).collect(),
            generation,
            tags: config.tags.clone(),
            joining: false, // membership fills these in
            leaving: false,
        };
        let seeded = !config.bootstrap.is_empty();
        let joining =
            crate::bootstrap::starts_joining(&config.data_dir, seeded && !config.initial)?;
        let membership = Membership::with_ring_file(
            info,
            local,
            MembershipConfig {
                replication_factor: config.replication_factor.max(1),
                joining,
            },
            Some(config.data_dir.join("ring")),
        );
        for (peer, addr) in membership.known_addrs() {
            let _ = handle.commands.try_send(Command::AddAddress(peer, addr));
        }
        let metrics = MeshMetrics::default();
        let gate = Gate {
            local,
            admission,
            commands: handle.commands.clone(),
            metrics: metrics.clone(),
            rights: Arc::new(OnceLock::new()),
        };
        let links = Links::new(handle.control.clone(), config.request_timeout);
        let link: Arc<dyn Link> = Arc::new(crate::relay::RelayLink {
            links: links.clone(),
            membership: membership.clone(),
            metrics: metrics.clone(),
        });
        let replication = Replication::new(
            local,
            keyspace.clone(),
            membership.clone(),
            link.clone(),
            config.request_timeout,
            gate.clone(),
        );
        let anti_entropy = AntiEntropy::new(
            local,
            keyspace.clone(),
            membership.clone(),
            link.clone(),
            replication.clone(),
            config.request_timeout,
        );
        let (app_tx, app_rx) = mpsc::channel(APP_QUEUE);
        let one_way = Arc::new(OnceLock::new());
        let service = Arc::new(Service {
            anti_entropy: anti_entropy.clone(),
            relay: (links.clone(), config.request_timeout),
            gate: gate.clone(),
            replication: replication.clone(),
            keyspace: keyspace.clone(),
            membership: membership.clone(),
            commands: handle.commands.clone(),
            app: app_tx,
            one_way: one_way.clone(),
        });
        let mut control = handle.control.clone();
        let incoming = control
            .accept(PROTOCOL)
            .map_err(|e| Error::Config(format!("stream protocol: {e}")))?;
        let span = tracing::info_span!("mesh", peer = %local);
        let background = Background::default();
        let serving = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        // Until its first anti-entropy round, a node reads through a quorum: its replicas may
        // lack what its peers hold. A node that starts alone — no seeds, and no ring of others
        // from an earlier run — is a new mesh of one: no peer holds anything it lacks, so its
        // own replicas answer from the start (a restarted member has its ring file and
        // catches up; a joiner has seeds).
        let alone = !seeded && membership.snapshot().ring.len() <= 1;
        let catching_up = Arc::new(AtomicBool::new(!alone));
        background.keep("swarm", swarm_task);
        background.keep(
            "serve streams",
            tokio::spawn(
                link::serve(incoming, service.clone(), serving.clone()).instrument(span.clone()),
            ),
        );
        background.spawn("connection events", |s| {
            track_connections(membership.clone(), peer_events, gate.clone(), s)
                .instrument(span.clone())
        });
        let (swim_tx, swim_rx) = mpsc::channel(SWIM_INBOX);
        let (notices, _) = broadcast::channel(NOTICE_QUEUE);
        membership.attach_swim(swim_tx);
        let one_way_sender = OneWay {
            links: links.clone(),
            membership: membership.clone(),
            datagrams: Arc::new(OnceLock::new()),
            blocked: Arc::new(Mutex::new(HashSet::new())),
            any_blocked: Arc::new(AtomicBool::new(false)),
        };
        background.spawn("swim", |s| {
            swim(
                membership.clone(),
                one_way_sender.clone(),
                handle.commands.clone(),
                notices.clone(),
                swim_rx,
                (
                    config.heartbeat_interval,
                    swim::suspicion_floor(config.down_after, config.heartbeat_interval),
                ),
                s,
            )
            .instrument(span.clone())
        });
        background.spawn("heartbeats", |s| {
            heartbeats(
                membership.clone(),
                (link.clone(), one_way_sender.clone()),
                service.clone(),
                handle.commands.clone(),
                (config.heartbeat_interval, config.down_after),
                metrics.clone(),
                s,
            )
            .instrument(span.clone())
        });
        background.spawn("idle links", |s| {
            close_idle_links(
                links.clone(),
                membership.clone(),
                (handle.connected.clone(), serving.clone()),
                metrics.clone(),
                s,
            )
            .instrument(span.clone())
        });
        background.spawn("hints", |s| {
            deliver_hints(
                replication.clone(),
                config.hint_interval,
                metrics.clone(),
                s,
            )
            .instrument(span.clone())
        });
        background.spawn("anti-entropy", |s| {
            anti_entropy_rounds(
                anti_entropy.clone(),
                config.anti_entropy_interval,
                metrics.clone(),
                catching_up.clone(),
                s,
            )
            .instrument(span.clone())
        });
        background.spawn("join", |s| {
            crate::bootstrap::join(
                anti_entropy.clone(),
                membership.clone(),
                (link.clone(), config.request_timeout),
                config.data_dir.clone(),
                seeded,
                s,
            )
            .instrument(span.clone())
        });
        background.spawn("handoff and compaction", |s| {
            let gc = GcContext {
                local,
                membership: membership.clone(),
                link: link.clone(),
                timeout: config.request_timeout,
                compact_every: config.compaction_interval,
            };
            handoff_and_compaction(
                anti_entropy.clone(),
                keyspace.clone(),
                metrics.clone(),
                gc,
                s,
            )
            .instrument(span.clone())
        });
        info!(peer_id = %local, generation, "mesh started");
        let mesh = Mesh {
            inner: Arc::new(Inner {
                local,
                key,
                keyspace,
                membership,
                links,
                replication,
                anti_entropy,
                commands: handle.commands,
                listen_addrs: handle.listen_addrs,
                background,
                one_way,
                metrics,
                catching_up,
                gate,
                service,
                one_way_sender,
                notices,
            }),
        };
        Ok((mesh, app_rx))
    }

    /// This node's PeerId.
    pub fn peer_id(&self) -> PeerId {
        self.inner.local
    }

    /// The addresses this node listens on.
    pub fn listen_addrs(&self) -> &[Multiaddr] {
        &self.inner.listen_addrs
    }

    /// A dialable address of this node (first listen address with `/p2p/<PeerId>`).
    pub fn dial_addr(&self) -> Option<Multiaddr> {
        self.inner.listen_addrs.first().map(|a| {
            a.clone()
                .with(libp2p::multiaddr::Protocol::P2p(self.inner.local))
        })
    }

    /// The local keyspace (this node's replica data).
    pub fn keyspace(&self) -> &Keyspace {
        &self.inner.keyspace
    }

    /// The current ring.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.inner.membership.snapshot()
    }

    /// Every member, this node first.
    pub fn members(&self) -> Vec<Member> {
        self.inner.membership.members()
    }

    /// An operator removes a dead member from the ring: marked left mesh-wide, dropped from
    /// the persisted ring. Refused for an up member, or when data could be lost unless `force`
    /// (the reason).
    ///
    /// Unless `force`, first as Cassandra's removenode: the member stands `leaving` (writes also
    /// reach the replicas its ranges will have), and every up member, this one included,
    /// streams with its fellow replicas; the member leaves the ring only once all of them did,
    /// so no QUORUM read through its successors misses what it and one other replica held.
    /// When one cannot, the removal is refused (retry), and the member stays `leaving`.
    pub async fn remove_member(
        &self,
        peer: PeerId,
        force: bool,
    ) -> std::result::Result<(), String> {
        let membership = &self.inner.membership;
        membership.check_remove(peer, force)?;
        if !force {
            membership.mark_removing(peer)?;
            let request = Request::Resync {
                removing: peer.to_bytes(),
            };
            let asks = async {
                let answers =
                    ask_up_members(membership, &self.inner.links, &request, RESYNC_WITHIN).await;
                answers
                    .into_iter()
                    .map(|(p, answer)| match answer {
                        Ok(Response::Ack) => Ok(()),
                        Ok(Response::Error(why)) => Err(format!("{p}: {why}")),
                        Ok(other) => Err(format!("{p}: unexpected answer {other:?}")),
                        Err(e) => Err(format!("{p}: {e}")),
                    })
                    .collect::<Vec<_>>()
            };
            let own = async {
                self.inner
                    .anti_entropy
                    .bootstrap_pass()
                    .await
                    .map(|_| ())
                    .map_err(|why| format!("this node: {why}"))
            };
            let (own, theirs) = tokio::join!(own, asks);
            let asked = theirs.len() + 1;
            let failed: Vec<String> = std::iter::once(own)
                .chain(theirs)
                .filter_map(|r| r.err())
                .collect();
            if let Some(first) = failed.first() {
                return Err(format!(
                    "{peer} is not removed yet: {} of {} members could not stream its ranges \
                     ({first}); it stays in the ring, its writes also reaching its successors; \
                     retry",
                    failed.len(),
                    asked
                ));
            }
            info!(%peer, members = asked, "the ranges of a removed member streamed to their new replicas");
        }
        membership.remove(peer, force)
    }

    /// The median of the members' clocks minus this node's (ms), and whether this node's clock
    /// is off the mesh's (then it coordinates no reads or writes: [`Error::ClockSkew`]).
    pub fn clock(&self) -> (i64, bool) {
        let m = &self.inner.membership;
        (m.clock_offset_ms(), m.clock_skew().is_some())
    }

    /// Whether a member is up.
    pub fn is_up(&self, peer: &PeerId) -> bool {
        self.inner.membership.is_up(peer)
    }

    /// Subscribe to member state changes.
    pub fn events(&self) -> broadcast::Receiver<MemberEvent> {
        self.inner.membership.events()
    }

    /// Replace this node's membership credential without a restart (a renewal before expiry, or
    /// other roles): it must name this node, come from this mesh's enrollment key and be valid
    /// now, else the one in use stays and the error says why. Members see it with this node's
    /// next heartbeat.
    pub fn renew_credential(&self, credential: &crate::admission::Credential) -> Result<()> {
        let Some(a) = &self.inner.gate.admission else {
            return Err(Error::Config(
                "this node runs without enrollment: there is no credential to renew".into(),
            ));
        };
        let bytes = a.renew(credential, &self.peer_id(), now_ms())?;
        self.inner.membership.set_credential(bytes);
        Ok(())
    }

    /// When this node's membership credential expires (Unix milliseconds); `None` without
    /// enrollment.
    pub fn credential_expires_ms(&self) -> Option<u64> {
        self.inner
            .gate
            .admission
            .as_ref()
            .map(|a| a.own_expires_ms())
    }

    /// Replace this node's published tags.
    pub fn set_tags(&self, tags: BTreeMap<String, String>) {
        self.inner.membership.set_tags(tags)
    }

    /// The replicas of a partition key, closest first.
    pub fn replicas_of(&self, partition_key: &[u8]) -> Vec<PeerId> {
        self.snapshot()
            .replicas(partition_key)
            .iter()
            .map(|m| m.peer)
            .collect()
    }

    /// Write a mutation at consistency `cl`.
    pub async fn write(&self, m: Mutation, cl: Consistency) -> Result<()> {
        let t0 = std::time::Instant::now();
        let r = self.inner.replication.write(m, cl).await;
        self.inner.metrics.replicated("write", cl, t0.elapsed(), &r);
        r
    }

    /// Whether this node is still joining: streaming the ranges it will own, answering no
    /// reads for them (`bootstrap`).
    pub fn joining(&self) -> bool {
        self.inner.membership.joining()
    }

    /// Whether this node is still catching up (from start until an anti-entropy round pulls
    /// nothing): its own replicas may miss data, so reads should ask a quorum instead.
    pub fn catching_up(&self) -> bool {
        self.inner.catching_up.load(Ordering::Relaxed)
    }

    /// Whether this node's own replica of a partition may answer a read alone: this node is
    /// one of its replicas and is not catching up (a new or returning node's replicas may
    /// lack what the others hold).
    pub fn reads_locally(&self, partition_key: &[u8]) -> bool {
        !self.catching_up() && self.snapshot().is_local_replica(partition_key)
    }

    /// What the mesh layer measures, for the node's `/metrics`.
    pub fn metrics(&self) -> &MeshMetrics {
        &self.inner.metrics
    }

    /// Write several mutations at consistency `cl`, batched per replica when they share them.
    pub async fn write_many(&self, ms: Vec<Mutation>, cl: Consistency) -> Result<()> {
        let t0 = std::time::Instant::now();
        let r = self.inner.replication.write_many(ms, cl).await;
        self.inner.metrics.replicated("write", cl, t0.elapsed(), &r);
        r
    }

    /// Write a mutation at consistency `cl`, then wait up to `linger` for the other live
    /// replicas too, so a read at ONE from any of them sees it at once when they are healthy.
    pub async fn write_settled(
        &self,
        m: Mutation,
        cl: Consistency,
        linger: Duration,
    ) -> Result<()> {
        let t0 = std::time::Instant::now();
        let r = self.inner.replication.write_settled(m, cl, linger).await;
        self.inner.metrics.replicated("write", cl, t0.elapsed(), &r);
        r
    }

    /// Decide `key` once, mesh-wide: `value` unless a value was decided for it already (by any
    /// node); returns the decided value. A compare-and-set by a majority of the key's replicas
    /// (single-decree Paxos, `claim`): two nodes never both see their own value decided.
    pub async fn claim(&self, key: &[u8], value: Vec<u8>) -> Result<Vec<u8>> {
        let t0 = std::time::Instant::now();
        let r = self.inner.replication.claim(key, value).await;
        self.inner
            .metrics
            .replicated("claim", Consistency::Quorum, t0.elapsed(), &r);
        r
    }

    /// Read a partition's live rows at consistency `cl`.
    pub async fn read(
        &self,
        table: TableId,
        partition_key: &[u8],
        cl: Consistency,
    ) -> Result<Partition> {
        let t0 = std::time::Instant::now();
        let r = self.inner.replication.read(table, partition_key, cl).await;
        self.inner.metrics.replicated("read", cl, t0.elapsed(), &r);
        r
    }

    /// Read a partition's merged cells at consistency `cl`.
    pub async fn read_entries(
        &self,
        table: TableId,
        partition_key: &[u8],
        cl: Consistency,
    ) -> Result<Vec<(EntryKey, Cell)>> {
        let t0 = std::time::Instant::now();
        let r = self
            .inner
            .replication
            .read_entries(table, partition_key, cl)
            .await;
        self.inner.metrics.replicated("read", cl, t0.elapsed(), &r);
        r
    }

    /// Spread a notice to every member (infection-style, with SWIM's messages): see
    /// [`swim::Notice`]. Members take it from [`Mesh::notices`]; so does this node.
    pub fn announce(&self, notice: swim::Notice) {
        self.inner.membership.to_swim(SwimInput::Notice(notice));
    }

    /// Notices as they reach this node (each once per version; a subscriber that falls more
    /// than a thousand behind misses the oldest).
    pub fn notices(&self) -> broadcast::Receiver<swim::Notice> {
        self.inner.notices.subscribe()
    }

    /// Send membership's one-way messages through `sender` from now on where it can (once;
    /// later calls are ignored). See [`DatagramSender`].
    pub fn set_datagram_sender(&self, sender: DatagramSender) {
        let _ = self.inner.one_way_sender.datagrams.set(sender);
    }

    /// A mesh frame that arrived as a datagram from member `peer` (the node authenticated it):
    /// handled as the same frame on a stream would be. Anything but a one-way membership
    /// message is dropped, as is anything from a peer that is not a member.
    pub fn on_datagram(&self, peer: PeerId, frame: &[u8]) {
        if self.inner.one_way_sender.blocked(&peer) {
            return;
        }
        match sipmesh_storage::codec::decode::<Frame>(frame, "frame", b"") {
            Ok(Frame::OneWay(request @ (Request::Swim(_) | Request::Heartbeat { .. }))) => {
                self.inner.service.one_way(peer, request)
            }
            _ => debug!(%peer, "datagram that is not a membership message; dropped"),
        }
    }

    /// Take one-way application messages with `handler` from now on (once; later calls are
    /// ignored).
    pub fn set_app_handler(&self, handler: AppHandler) {
        let _ = self.inner.one_way.set(handler);
    }

    /// A tag a member publishes (`None` if the member or the tag is unknown).
    pub fn tag(&self, peer: &PeerId, name: &str) -> Option<String> {
        self.inner.membership.tag(peer, name)
    }

    /// Send application bytes to another node, without waiting for an answer.
    pub async fn send_app(&self, peer: PeerId, payload: Vec<u8>) -> Result<()> {
        Link::send(&self.inner.links, peer, Request::App(payload)).await
    }

    /// Queue application bytes for another node without waiting: messages to one node leave in
    /// the order they were queued. Fails if the node's queue is full.
    pub fn try_send_app(&self, peer: PeerId, payload: Vec<u8>) -> Result<()> {
        self.inner.links.try_send(peer, Request::App(payload))
    }

    /// Send application bytes to another node and wait for its answer.
    pub async fn request_app(
        &self,
        peer: PeerId,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>> {
        match Link::request(&self.inner.links, peer, Request::App(payload), timeout).await? {
            Response::App(bytes) => Ok(bytes),
            other => Err(Error::Protocol(format!(
                "unexpected answer to an app request: {other:?}"
            ))),
        }
    }

    /// Whether this node reaches `peer` directly: `false` when SWIM's direct probe of it, or
    /// a ping the node sent it, got no answer, or the host refused to send to it, and nothing
    /// came from it directly since (see [`crate::membership::reach`]).
    pub fn reached_directly(&self, peer: &PeerId) -> bool {
        !self.inner.membership.reach().only_indirect(peer)
    }

    /// Something (a datagram the node authenticated) came from `peer` directly.
    pub fn heard_directly(&self, peer: &PeerId) {
        self.inner.membership.reach().heard(peer, Instant::now());
    }

    /// The node could not send to `peer` directly (its own host refused: a firewall rule, no
    /// route): it is reached only through others until heard from directly again.
    pub fn mark_unreachable(&self, peer: &PeerId) {
        self.inner.membership.reach().unreachable(*peer);
    }

    /// Traffic is about to go to `peer`: whether the node should also ping it directly (it
    /// was not heard from directly for a while, or traffic to it got nothing back for a
    /// moment). An unanswered ping soon makes
    /// [`Mesh::reached_directly`] `false`: SWIM's own probes may take a whole round to notice
    /// a new cut. See [`crate::membership::reach`].
    pub fn before_send(&self, peer: &PeerId) -> bool {
        self.inner
            .membership
            .reach()
            .before_send(*peer, Instant::now())
    }

    /// Up members to send through to reach `peer` when this node cannot directly: the nearest
    /// to it in the key space that this node reaches directly, two at most.
    pub fn relays_for(&self, peer: &PeerId) -> Vec<PeerId> {
        crate::relay::relays_for(&self.inner.membership, self.inner.local, *peer)
    }

    /// Whether a test cut this node off from `peer` ([`Mesh::block`]): the node then drops
    /// its datagrams too, as the network would.
    pub fn is_blocked(&self, peer: &PeerId) -> bool {
        self.inner.one_way_sender.blocked(peer)
    }

    /// Refuse all traffic with these peers (tests use this to partition a mesh).
    pub async fn block(&self, peers: &[PeerId]) {
        for p in peers {
            let _ = self.inner.commands.send(Command::Block(*p)).await;
            self.inner.links.close(p);
        }
        self.inner
            .one_way_sender
            .blocked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(peers.iter().copied());
        self.inner
            .one_way_sender
            .any_blocked
            .store(true, Ordering::Relaxed);
    }

    /// Whether this node enforces signed enrollment, and if so the enrollment public key.
    pub fn enrollment_issuer(&self) -> Option<[u8; 32]> {
        self.inner.gate.admission.as_ref().map(|a| a.issuer())
    }

    /// The roles of a peer this node admits (every right without enrollment); `None` for a
    /// peer that is not (or no longer) a member.
    pub fn roles_of(&self, peer: &PeerId) -> Option<Roles> {
        if *peer == self.inner.local {
            return Some(self.own_roles());
        }
        self.inner.gate.roles(peer)
    }

    /// This node's own roles (every right without enrollment).
    pub fn own_roles(&self) -> Roles {
        self.inner
            .gate
            .admission
            .as_ref()
            .map_or(Roles::ADMIN, |a| a.own_roles())
    }

    /// Apply revocations signed by this mesh's enrollment key (others are ignored): each
    /// revoked peer is disconnected for good and gets nothing more from this node; failure
    /// detection then marks it down. Returns the peers newly revoked. Without enrollment this
    /// does nothing.
    pub fn revoke(&self, revocations: &[Revocation]) -> Vec<PeerId> {
        let Some(a) = &self.inner.gate.admission else {
            return Vec::new();
        };
        let fresh = a.revoke(revocations);
        for peer in &fresh {
            if *peer != self.inner.local {
                self.inner.gate.refuse(*peer, Refusal::Revoked);
                self.inner.links.close(peer);
            }
        }
        fresh
    }

    /// Under enrollment, sign a row this node writes: `row` is the row's canonical bytes (its
    /// key, timestamp and values, as the table's owner defines them). The result carries this
    /// node's credential, so any member can check it later, whoever passed the row on
    /// (anti-entropy, handoff, a read answer). `None` without enrollment.
    pub fn sign_row(&self, row: &[u8]) -> Option<Vec<u8>> {
        let a = self.inner.gate.admission.as_ref()?;
        Some(crate::admission::sign_row(&self.inner.key, a.own(), row))
    }

    /// Under enrollment, whether a row signature made by [`Mesh::sign_row`] over `row`, for
    /// a row of `table` written at `at_ms` (wall-clock ms), counts: signed by a member of this
    /// mesh whose credential was valid then, who is not revoked now, and whom `allowed` (the
    /// table's rule: the roles it needs, the writer the row must name) accepts. A refused row
    /// is logged and counted (`sipmesh_rows_ignored_total`) the first time. Verdicts are
    /// remembered per exact bytes, so a row read again costs a hash. Without enrollment there
    /// is nothing to check against: `false`.
    pub fn row_counts(
        &self,
        table: &str,
        signature: Option<&[u8]>,
        row: &[u8],
        at_ms: u64,
        allowed: impl FnOnce(&PeerId, Roles) -> std::result::Result<(), String>,
    ) -> bool {
        let Some(a) = &self.inner.gate.admission else {
            return false;
        };
        match a.verify_row_cached(table, signature.unwrap_or_default(), row, at_ms, allowed) {
            Ok(_) => true,
            Err((_, true)) => false,
            Err((reason, false)) => {
                warn!(table, %reason, "row ignored: no valid signature of a writer with the right");
                self.metrics().row_ignored();
                false
            }
        }
    }

    /// Set the per-table write rights of members (checked under enrollment on every write and
    /// push a peer sends). The first call wins.
    pub fn set_write_rights(&self, rights: WriteRights) {
        let _ = self.inner.gate.rights.set(rights);
    }

    /// Allow traffic with these peers again.
    pub async fn unblock(&self, peers: &[PeerId]) {
        for p in peers {
            let _ = self.inner.commands.send(Command::Unblock(*p)).await;
        }
        let mut blocked = self
            .inner
            .one_way_sender
            .blocked
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for p in peers {
            blocked.remove(p);
        }
        self.inner
            .one_way_sender
            .any_blocked
            .store(!blocked.is_empty(), Ordering::Relaxed);
    }

    /// Before leaving: give every partition to the replicas it will have without this node.
    /// Returns (partitions, failed transfers).
    ///
    /// First it says it is leaving, to every up member at once: from then on their writes
    /// also reach the replicas its ranges will have, so nothing written during the transfer
    /// is missing there once it is gone.
    pub async fn handover(&self) -> (usize, usize) {
        self.inner.membership.start_leaving();
        let told = self
            .tell_up_members(self.inner.membership.heartbeat(), Duration::from_secs(1))
            .await;
        info!(
            told,
            "leaving: members write to the replicas this node's ranges will have"
        );
        self.inner.anti_entropy.handover().await
    }

    /// Send `request` to every up member, waiting up to `timeout` for their answers; returns
    /// how many were told.
    async fn tell_up_members(&self, request: Request, timeout: Duration) -> usize {
        let membership = &self.inner.membership;
        ask_up_members(membership, &self.inner.links, &request, timeout)
            .await
            .len()
    }

    /// Leave gracefully: tell every up member (waiting up to `timeout` for their answers).
    pub async fn leave(&self, timeout: Duration) {
        let generation = self.inner.membership.local_info().generation;
        let told = self
            .tell_up_members(Request::Leave { generation }, timeout)
            .await;
        info!(told, "left the mesh");
    }

    /// Stopping in place: tell every up member this node is going down (waiting up to
    /// `timeout` for their answers), so they mark it down at once and keep its ring place.
    pub async fn announce_stop(&self, timeout: Duration) {
        let generation = self.inner.membership.local_info().generation;
        let told = self
            .tell_up_members(Request::Stopping { generation }, timeout)
            .await;
        info!(told, "stopping in place; the ring keeps this node");
    }

    /// Stop every background loop and the swarm.
    pub async fn shutdown(&self) {
        let _ = self.inner.commands.try_send(Command::Shutdown);
        self.inner.background.stop(SHUTDOWN_WITHIN).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_swim_packet_goes_as_a_datagram() {
        let frame =
            encode_frame(&Frame::OneWay(Request::Swim(vec![0xff; swim::MAX_PACKET]))).unwrap();
        assert!(frame.len() - 4 <= DATAGRAM_FRAME_MAX, "{}", frame.len());
    }
}
