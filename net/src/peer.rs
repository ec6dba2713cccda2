//! The libp2p peer: one task owns the `Swarm`; everything else talks to it through a bounded
//! command channel (and opens streams through a `libp2p_stream::Control`).
//!
//! Transport: TCP + (optional pre-shared-key private network) + Noise + Yamux. Behaviours:
//! connection limits, a block list (for tests that partition a mesh), Kademlia in server mode on
//! sipmesh's own protocol name (peer discovery, address lookup by PeerId), identify, ping, and
//! the stream behaviour that carries sipmesh's frames.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::Boxed;
use libp2p::core::upgrade::Version;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    allow_block_list, connection_limits, identify, identity, kad, noise, ping, pnet, yamux,
    Multiaddr, PeerId, StreamProtocol, Swarm, Transport,
};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::config::MeshConfig;
use crate::error::{Error, Result};
use crate::kad_gate::{Admitted, MembersOnly};

/// sipmesh's Kademlia protocol name (keeps the DHT separate from IPFS's).
const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/sipmesh/kad/1.0.0");
/// Commands waiting for the swarm task.
const COMMAND_QUEUE: usize = 256;
/// Events waiting for membership.
const EVENT_QUEUE: usize = 1024;
/// How often the seeds are dialled again while this node has no connection at all.
const REDIAL_SEEDS_EVERY: Duration = Duration::from_secs(3);
/// A connection without streams (and no Kademlia query) for this long is closed: membership
/// needs none (its messages are datagrams where the node sends them), so a node keeps only the
/// connections its links use.
const IDLE_CONNECTION: Duration = Duration::from_secs(10);

#[derive(NetworkBehaviour)]
struct Behaviour {
    limits: connection_limits::Behaviour,
    blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    kad: MembersOnly<kad::Behaviour<kad::store::MemoryStore>>,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    stream: libp2p_stream::Behaviour,
}

/// A command for the swarm task.
#[derive(Debug)]
pub enum Command {
    /// Remember an address of a peer (Kademlia's routing table and the swarm's dialer).
    AddAddress(PeerId, Multiaddr),
    /// Look a peer's addresses up in the DHT.
    FindPeer(PeerId),
    /// Refuse every connection with this peer (and close the open ones).
    Block(PeerId),
    /// Allow connections with this peer again.
    Unblock(PeerId),
    /// Stop the swarm.
    Shutdown,
}

/// What the swarm task tells membership.
#[derive(Debug, Clone)]
pub enum PeerEvent {
    /// A connection to this peer is established (it may be a new member).
    Connected(PeerId),
}

/// Load the node key from `dir/node.key`, or create it.
pub fn load_or_create_key(dir: &Path) -> Result<identity::Keypair> {
    let path = dir.join("node.key");
    match std::fs::read(&path) {
        Ok(bytes) => identity::Keypair::from_protobuf_encoding(&bytes)
            .map_err(|e| Error::Config(format!("node key {} is corrupt: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::Config(format!("cannot create {}: {e}", dir.display())))?;
            let key = identity::Keypair::generate_ed25519();
            let bytes = key
                .to_protobuf_encoding()
                .map_err(|e| Error::Config(format!("cannot encode the node key: {e}")))?;
            crate::config::write_atomically(&path, &bytes, Some(0o600))
                .map_err(|e| Error::Config(format!("cannot write {}: {e}", path.display())))?;
            Ok(key)
        }
        Err(e) => Err(Error::Config(format!(
            "cannot read {}: {e}",
            path.display()
        ))),
    }
}

/// TCP that dials from a fresh port, never from its listening one. libp2p dials with
/// `PortUse::Reuse` by default: the socket is bound to `0.0.0.0:LISTEN_PORT`, and when the
/// destination is an address of this host with the same port (two nodes on one host, on two
/// addresses, both on 4001) the kernel picks the destination itself as the source, and the
/// socket connects to itself; every Noise handshake then fails. Port reuse only helps NAT hole
/// punching, which the mesh does not do.
struct FreshPorts<T>(T);

impl<T: Transport + Unpin> Transport for FreshPorts<T> {
    type Output = T::Output;
    type Error = T::Error;
    type ListenerUpgrade = T::ListenerUpgrade;
    type Dial = T::Dial;

    fn listen_on(
        &mut self,
        id: libp2p::core::transport::ListenerId,
        addr: Multiaddr,
    ) -> std::result::Result<(), libp2p::core::transport::TransportError<Self::Error>> {
        self.0.listen_on(id, addr)
    }

    fn remove_listener(&mut self, id: libp2p::core::transport::ListenerId) -> bool {
        self.0.remove_listener(id)
    }

    fn dial(
        &mut self,
        addr: Multiaddr,
        mut opts: libp2p::core::transport::DialOpts,
    ) -> std::result::Result<Self::Dial, libp2p::core::transport::TransportError<Self::Error>> {
        opts.port_use = libp2p::core::transport::PortUse::New;
        self.0.dial(addr, opts)
    }

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<libp2p::core::transport::TransportEvent<Self::ListenerUpgrade, Self::Error>>
    {
        std::pin::Pin::new(&mut self.get_mut().0).poll(cx)
    }
}

pub(crate) fn transport(
    key: &identity::Keypair,
    psk: Option<pnet::PreSharedKey>,
) -> Result<Boxed<(PeerId, StreamMuxerBox)>> {
    let tcp = FreshPorts(libp2p::tcp::tokio::Transport::new(
        libp2p::tcp::Config::default().nodelay(true),
    ));
    let noise = noise::Config::new(key).map_err(|e| Error::Config(format!("noise: {e}")))?;
    let yamux = yamux::Config::default();
    let timeout = Duration::from_secs(10);
    Ok(match psk {
        Some(psk) => tcp
            .and_then(move |socket, _| pnet::PnetConfig::new(psk).handshake(socket))
            .upgrade(Version::V1Lazy)
            .authenticate(noise)
            .multiplex(yamux)
            .timeout(timeout)
            .boxed(),
        None => tcp
            .upgrade(Version::V1Lazy)
            .authenticate(noise)
            .multiplex(yamux)
            .timeout(timeout)
            .boxed(),
    })
}

/// The running swarm, as the rest of the mesh sees it.
pub struct PeerHandle {
    /// Commands to the swarm task.
    pub commands: mpsc::Sender<Command>,
    /// Opens and accepts streams.
    pub control: libp2p_stream::Control,
    /// The addresses the node listens on (known once the listeners are up).
    pub listen_addrs: Vec<Multiaddr>,
    /// Peers this node has a connection with now.
    pub connected: Arc<AtomicUsize>,
}

/// Start the swarm: listen, dial the seeds, and spawn the task that owns it.
///
/// `admitted` says who is a member (signed enrollment): Kademlia answers only them
/// (`kad_gate`). `None`: everyone who holds the mesh key is.
pub async fn start(
    config: &MeshConfig,
    key: identity::Keypair,
    admitted: Option<Admitted>,
) -> Result<(
    PeerHandle,
    mpsc::Receiver<PeerEvent>,
    tokio::task::JoinHandle<()>,
)> {
    let local = key.public().to_peer_id();
    let transport = transport(&key, config.mesh_key)?;
    let limits = connection_limits::ConnectionLimits::default()
        .with_max_established(Some(config.max_connections))
        .with_max_established_per_peer(Some(config.max_connections_per_peer))
        .with_max_pending_incoming(Some(64))
        .with_max_pending_outgoing(Some(64));
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_other_transport(move |_| transport)
        .map_err(|e| Error::Config(format!("transport: {e}")))?
        .with_behaviour(|key| {
            let mut kad_config = kad::Config::new(KAD_PROTOCOL);
            kad_config.set_query_timeout(Duration::from_secs(10));
            let mut kad =
                kad::Behaviour::with_config(local, kad::store::MemoryStore::new(local), kad_config);
            kad.set_mode(Some(kad::Mode::Server));
            Behaviour {
                limits: connection_limits::Behaviour::new(limits),
                blocked: allow_block_list::Behaviour::default(),
                kad: MembersOnly::new(kad, admitted),
                identify: identify::Behaviour::new(identify::Config::new(
                    "/sipmesh/id/1.0.0".into(),
                    key.public(),
                )),
                ping: ping::Behaviour::new(ping::Config::new()),
                stream: libp2p_stream::Behaviour::new(),
            }
        })
        .map_err(|e| Error::Config(format!("behaviour: {e}")))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_CONNECTION))
        .build();

    for addr in &config.listen {
        swarm
            .listen_on(addr.clone())
            .map_err(|e| Error::Config(format!("cannot listen on {addr}: {e}")))?;
    }
    // Wait for the listeners to report their addresses (port 0 gets a real port here).
    let mut listen_addrs = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while listen_addrs.len() < config.listen.len() {
        let event = tokio::time::timeout_at(deadline, swarm.select_next_some())
            .await
            .map_err(|_| Error::Config("listeners did not come up within 10 s".into()))?;
        match event {
            SwarmEvent::NewListenAddr { address, .. } => listen_addrs.push(address),
            SwarmEvent::ListenerError { error, .. } => {
                return Err(Error::Config(format!("listener failed: {error}")))
            }
            SwarmEvent::ListenerClosed { reason: Err(e), .. } => {
                return Err(Error::Config(format!("listener closed: {e}")))
            }
            _ => {}
        }
    }
    info!(peer_id = %local, addrs = ?listen_addrs, "libp2p peer listening");

    let seeds = config.bootstrap.clone();
    for seed in &seeds {
        dial_seed(&mut swarm, seed);
    }
    let control = swarm.behaviour().stream.new_control();
    let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
    let (event_tx, event_rx) = mpsc::channel(EVENT_QUEUE);
    let connected = Arc::new(AtomicUsize::new(0));
    let task = tokio::spawn(run(swarm, cmd_rx, event_tx, seeds, connected.clone()));
    Ok((
        PeerHandle {
            commands: cmd_tx,
            control,
            listen_addrs,
            connected,
        },
        event_rx,
        task,
    ))
}

fn dial_seed(swarm: &mut Swarm<Behaviour>, seed: &Multiaddr) {
    if let Some(Protocol::P2p(peer)) = seed.iter().last() {
        let without: Multiaddr = seed
            .iter()
            .filter(|p| !matches!(p, Protocol::P2p(_)))
            .collect();
        swarm.add_peer_address(peer, without);
    }
    if let Err(e) = swarm.dial(seed.clone()) {
        debug!(%seed, error = %e, "could not dial seed");
    }
}

async fn run(
    mut swarm: Swarm<Behaviour>,
    mut commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<PeerEvent>,
    seeds: Vec<Multiaddr>,
    connected: Arc<AtomicUsize>,
) {
    let mut redial = tokio::time::interval(REDIAL_SEEDS_EVERY);
    let mut bootstrapped = false;
    let mut blocked: HashSet<PeerId> = HashSet::new();
    loop {
        tokio::select! {
            command = commands.recv() => match command {
                Some(Command::AddAddress(peer, addr)) => {
                    // The swarm keeps no address book of its own: Kademlia's routing table is
                    // where dials find addresses (a seed restarted without --bootstrap reaches
                    // its persisted ring this way).
                    swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
                    swarm.add_peer_address(peer, addr);
                }
                Some(Command::FindPeer(peer)) => {
                    swarm.behaviour_mut().kad.get_closest_peers(peer);
                }
                Some(Command::Block(peer)) => {
                    blocked.insert(peer);
                    swarm.behaviour_mut().blocked.block_peer(peer);
                }
                Some(Command::Unblock(peer)) => {
                    blocked.remove(&peer);
                    swarm.behaviour_mut().blocked.unblock_peer(peer);
                }
                Some(Command::Shutdown) | None => break,
            },
            _ = redial.tick() => {
                if swarm.connected_peers().next().is_none() {
                    for seed in &seeds {
                        dial_seed(&mut swarm, seed);
                    }
                }
            }
            event = swarm.select_next_some() => match event {
                SwarmEvent::ConnectionClosed { .. } => {
                    connected.store(swarm.network_info().num_peers(), Ordering::Relaxed);
                }
                SwarmEvent::ConnectionEstablished { peer_id, endpoint, .. } => {
                    connected.store(swarm.network_info().num_peers(), Ordering::Relaxed);
                    if endpoint.is_dialer() {
                        swarm.behaviour_mut().kad.add_address(&peer_id, endpoint.get_remote_address().clone());
                    }
                    if !bootstrapped {
                        bootstrapped = swarm.behaviour_mut().kad.bootstrap().is_ok();
                    }
                    if events.try_send(PeerEvent::Connected(peer_id)).is_err() {
                        warn!("membership is not keeping up with connection events");
                    }
                }
                SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }))
                    if !blocked.contains(&peer_id) =>
                {
                    for addr in info.listen_addrs {
                        swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                    }
                }
                SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                    result: kad::QueryResult::GetClosestPeers(Ok(ok)), ..
                })) => {
                    for peer in ok.peers {
                        for addr in peer.addrs {
                            swarm.add_peer_address(peer.peer_id, addr);
                        }
                    }
                }
                SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                    debug!(?peer_id, %error, "outgoing connection failed");
                }
                _ => {}
            }
        }
    }
    debug!("swarm task stopped");
}
