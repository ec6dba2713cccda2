//! SIP transports: UDP and TCP on the same address (RFC 3261 §18), and, on listeners of their
//! own, TLS (§26), WebSocket and secure WebSocket (RFC 7118).
//!
//! Limits: a message is at most [`MAX_MESSAGE`] bytes; at most `max_connections` connections of
//! every kind together; a TLS or WebSocket handshake must finish within `handshake_timeout`; a
//! connection idle for `idle_timeout` is closed, and a message must arrive whole within
//! `message_timeout` of its first byte (slow senders cannot pin a connection; on WebSocket,
//! within twice that); a connection whose stream cannot be framed, or a WebSocket frame or
//! message over [`MAX_MESSAGE`], closes the connection. Every parse runs under `catch_unwind`,
//! so a panic in a dependency costs one message, never the node.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, Semaphore};
use tokio_tungstenite::tungstenite;
use tracing::{debug, info, warn};

use crate::metrics::{inc, Metrics};
use crate::sip::flow::{Flow, StreamKind};
use crate::sip::message::{frame_stream, Framed, Message, MAX_MESSAGE};
use crate::sip::tls::Tls;

/// What the transport hands up.
pub trait Handler: Send + Sync + 'static {
    /// A message arrived on `flow`.
    fn on_message(&self, msg: Message, flow: Flow);
    /// A TCP connection closed (its flow is dead).
    fn on_closed(&self, _flow: Flow) {}
    /// A UDP datagram starting with [`Transport`]'s mesh magic byte arrived (another node's).
    fn on_datagram(&self, _data: &[u8], _peer: SocketAddr) {}
    /// Whether to parse what `peer` sent at all (false: a banned source, dropped before any
    /// work is spent on it).
    fn admit(&self, _peer: SocketAddr) -> bool {
        true
    }
}

/// Transport limits.
#[derive(Debug, Clone)]
pub struct TransportLimits {
    /// Most concurrent TCP connections.
    pub max_connections: usize,
    /// A TCP connection with no traffic for this long is closed.
    pub idle_timeout: Duration,
    /// A message must arrive whole within this long of its first byte.
    pub message_timeout: Duration,
    /// A TLS or WebSocket handshake must finish within this long of the connection.
    pub handshake_timeout: Duration,
}

impl Default for TransportLimits {
    fn default() -> Self {
        TransportLimits {
            max_connections: 1024,
            idle_timeout: Duration::from_secs(300),
            message_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// Why a send failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The TCP connection is gone.
    #[error("connection closed")]
    Closed,
    /// The connection's send queue is full (the peer does not read).
    #[error("send queue full")]
    Full,
    /// The socket failed.
    #[error("socket error: {0}")]
    Io(#[from] std::io::Error),
}

/// Frames queued per TCP connection before sends fail.
const TCP_SEND_QUEUE: usize = 1024;
/// How long a connection whose read side ended still accepts answers to send.
const CLOSE_LINGER: Duration = Duration::from_millis(500);

struct Conn {
    /// The peer the connection is with: a flow naming this id and another peer is not it.
    peer: SocketAddr,
    tx: mpsc::Sender<Arc<[u8]>>,
    /// The read side ended: answers may still go out, but the flow is dead for new traffic.
    closing: Arc<std::sync::atomic::AtomicBool>,
}

/// The high half of this process's TCP connection ids: seconds since the Unix epoch at start.
/// A binding stored before a restart names a connection id of the old process; with the boot
/// epoch (and a random start for the counter, for two starts in one second) in the id it cannot
/// name a connection of the new one; ids are also bound to the peer address.
fn boot_epoch() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() & 0xFFFF_FFFF)
        .unwrap_or(1)
}

/// The addresses of the listeners beside UDP/TCP.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Listeners {
    /// SIP over TLS.
    pub tls: Option<SocketAddr>,
    /// SIP over WebSocket.
    pub ws: Option<SocketAddr>,
    /// SIP over secure WebSocket.
    pub wss: Option<SocketAddr>,
}

/// The kind of connection in the reuse index: TCP or one of the stream kinds.
type PeerKey = (Option<StreamKind>, SocketAddr);

/// The node's SIP transports.
pub struct Transport {
    local: SocketAddr,
    udp: Arc<UdpSocket>,
    conns: Mutex<HashMap<u64, Conn>>,
    by_peer: Mutex<HashMap<PeerKey, u64>>,
    listeners: Mutex<Listeners>,
    tls: OnceLock<Arc<Tls>>,
    next_conn: AtomicU64,
    limits: TransportLimits,
    permits: Arc<Semaphore>,
    /// Weak: the handler (the SIP server) holds this transport; the node holds the handler.
    handler: OnceLock<std::sync::Weak<dyn Handler>>,
    mesh: OnceLock<MeshSender>,
    /// Datagrams starting with this byte are another node's, not SIP.
    mesh_magic: OnceLock<u8>,
    metrics: Arc<Metrics>,
}

/// Sends bytes to another mesh node (with the flow it should deliver them on): as a datagram
/// from this transport's UDP socket, or on the mesh's streams.
pub type MeshSender = Box<
    dyn Fn(&sipmesh_net::PeerId, Option<&Flow>, Arc<[u8]>) -> Result<(), SendError> + Send + Sync,
>;

/// Parse under `catch_unwind`: a panic in a dependency becomes a dropped message.
pub fn parse_guarded(bytes: &[u8], stream: bool, metrics: &Metrics) -> Option<Message> {
    match std::panic::catch_unwind(|| Message::parse(bytes, stream)) {
        Ok(Ok(m)) => Some(m),
        Ok(Err(fault)) => {
            debug!(%fault, "unparseable message dropped");
            inc(&metrics.sip_dropped);
            None
        }
        Err(_) => {
            warn!("the SIP parser panicked; message dropped");
            inc(&metrics.sip_parser_panics);
            inc(&metrics.sip_dropped);
            None
        }
    }
}

impl Transport {
    /// Bind UDP and TCP on `addr` (port 0 picks one port for both).
    pub async fn bind(
        addr: SocketAddr,
        limits: TransportLimits,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Arc<Self>> {
        // With port 0, find a port free for both UDP and TCP.
        let (udp, tcp) = {
            let mut attempt = 0;
            loop {
                let udp = udp_socket(addr)?;
                let local = udp.local_addr()?;
                match TcpListener::bind(local).await {
                    Ok(tcp) => break (udp, tcp),
                    Err(e) if addr.port() == 0 && attempt < 20 => {
                        attempt += 1;
                        debug!(error = %e, "TCP port taken; trying another");
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        let local = udp.local_addr()?;
        let t = Arc::new(Transport {
            local,
            udp: Arc::new(udp),
            conns: Mutex::new(HashMap::new()),
            by_peer: Mutex::new(HashMap::new()),
            listeners: Mutex::new(Listeners::default()),
            tls: OnceLock::new(),
            next_conn: AtomicU64::new(
                boot_epoch() << 32 | (u64::from(rand::random::<u16>()) << 16) | 1,
            ),
            permits: Arc::new(Semaphore::new(limits.max_connections)),
            limits,
            handler: OnceLock::new(),
            mesh: OnceLock::new(),
            mesh_magic: OnceLock::new(),
            metrics,
        });
        tokio::spawn(accept_loop(t.clone(), tcp));
        info!(%local, "SIP listening on UDP and TCP");
        Ok(t)
    }

    /// Start delivering messages to `handler` (once). The caller keeps the handler alive.
    pub fn start(self: &Arc<Self>, handler: &Arc<dyn Handler>) {
        if self.handler.set(Arc::downgrade(handler)).is_ok() {
            tokio::spawn(udp_loop(self.clone()));
        }
    }

    /// Route mesh flows through `send` (the node's mesh peer), and hand datagrams starting
    /// with `magic` to [`Handler::on_datagram`].
    pub fn set_mesh_sender(&self, send: MeshSender, magic: u8) {
        let _ = self.mesh.set(send);
        let _ = self.mesh_magic.set(magic);
    }

    /// The local address (UDP and TCP).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The node's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Send bytes on a flow (never blocks: UDP is best effort, connections are queued).
    pub fn send(&self, flow: &Flow, bytes: Arc<[u8]>) -> Result<(), SendError> {
        match flow {
            Flow::Udp(addr) => match self.udp.try_send_to(&bytes, *addr) {
                Ok(_) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    let udp = self.udp.clone();
                    let addr = *addr;
                    tokio::spawn(async move {
                        let _ = udp.send_to(&bytes, addr).await;
                    });
                    Ok(())
                }
                Err(e) => Err(e.into()),
            },
            Flow::Mesh { node, target } => match self.mesh.get() {
                Some(send) => send(node, target.as_deref(), bytes),
                None => Err(SendError::Closed),
            },
            Flow::Tcp { conn, peer } | Flow::Stream { conn, peer, .. } => {
                let conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
                let c = conns
                    .get(conn)
                    .filter(|c| c.peer == *peer)
                    .ok_or(SendError::Closed)?;
                c.tx.try_send(bytes).map_err(|e| match e {
                    mpsc::error::TrySendError::Full(_) => SendError::Full,
                    mpsc::error::TrySendError::Closed(_) => SendError::Closed,
                })
            }
        }
    }

    /// Whether a flow is still usable (a connection still open; UDP always).
    pub fn is_alive(&self, flow: &Flow) -> bool {
        match flow.conn() {
            None => true,
            Some((conn, peer)) => self
                .conns
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&conn)
                .is_some_and(|c| c.peer == peer && !c.closing.load(Ordering::Relaxed)),
        }
    }

    /// An open connection of `kind` (`None`: TCP) to `peer`, if there is one.
    fn reuse(&self, kind: Option<StreamKind>, peer: SocketAddr) -> Option<u64> {
        let conn = self
            .by_peer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(kind, peer))
            .copied()?;
        self.conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&conn)
            .then_some(conn)
    }

    async fn connect(
        self: &Arc<Self>,
        peer: SocketAddr,
    ) -> Result<(TcpStream, tokio::sync::OwnedSemaphorePermit), SendError> {
        let permit = self
            .permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| SendError::Full)?;
        let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(peer))
            .await
            .map_err(|_| timed_out("connect timed out"))??;
        let _ = stream.set_nodelay(true);
        Ok((stream, permit))
    }

    /// A TCP flow to `peer`: an open connection, or a new one.
    pub async fn tcp_flow(self: &Arc<Self>, peer: SocketAddr) -> Result<Flow, SendError> {
        if let Some(conn) = self.reuse(None, peer) {
            return Ok(Flow::Tcp { conn, peer });
        }
        let (stream, permit) = self.connect(peer).await?;
        Ok(self.clone().adopt(stream, peer, permit, None))
    }

    /// A TLS flow to `peer`, verified as `host`: an open connection, or a new one. Fails when
    /// the node has no TLS.
    pub async fn tls_flow(
        self: &Arc<Self>,
        peer: SocketAddr,
        host: &str,
    ) -> Result<Flow, SendError> {
        if let Some(conn) = self.reuse(Some(StreamKind::Tls), peer) {
            return Ok(Flow::Stream {
                kind: StreamKind::Tls,
                conn,
                peer,
            });
        }
        let tls = self.tls.get().ok_or(SendError::Closed)?.clone();
        let name = crate::sip::tls::server_name(host).ok_or(SendError::Closed)?;
        let (stream, permit) = self.connect(peer).await?;
        let handshake = tokio::time::timeout(
            self.limits.handshake_timeout,
            tls.connector().connect(name, stream),
        )
        .await;
        let secured = match handshake {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                inc(&self.metrics.sip_tls_handshake_failures);
                return Err(e.into());
            }
            Err(_) => {
                inc(&self.metrics.sip_tls_handshake_failures);
                return Err(timed_out("TLS handshake timed out"));
            }
        };
        inc(&self.metrics.sip_tls_connections);
        Ok(self
            .clone()
            .adopt(secured, peer, permit, Some(StreamKind::Tls)))
    }

    /// Register a new connection of `kind` (`None`: TCP) with `peer`: its flow, the queue its
    /// writer reads, and its closing flag.
    fn register(
        &self,
        peer: SocketAddr,
        kind: Option<StreamKind>,
    ) -> (
        Flow,
        mpsc::Receiver<Arc<[u8]>>,
        Arc<std::sync::atomic::AtomicBool>,
    ) {
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(TCP_SEND_QUEUE);
        let closing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        self.conns.lock().unwrap_or_else(|p| p.into_inner()).insert(
            conn,
            Conn {
                peer,
                tx,
                closing: closing.clone(),
            },
        );
        self.by_peer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((kind, peer), conn);
        let flow = match kind {
            None => Flow::Tcp { conn, peer },
            Some(kind) => Flow::Stream { kind, conn, peer },
        };
        (flow, rx, closing)
    }

    /// Take a byte stream (TCP or TLS) as a connection of `kind`.
    fn adopt<S>(
        self: Arc<Self>,
        stream: S,
        peer: SocketAddr,
        permit: tokio::sync::OwnedSemaphorePermit,
        kind: Option<StreamKind>,
    ) -> Flow
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        if kind.is_none() {
            inc(&self.metrics.sip_tcp_connections);
        }
        let (flow, rx, closing) = self.register(peer, kind);
        tokio::spawn(connection(self, stream, flow.clone(), rx, permit, closing));
        flow
    }

    /// Stop offering a connection for reuse (its peer may open another).
    fn unindex(&self, flow: &Flow) {
        if let Some((conn, peer)) = flow.conn() {
            let key = (flow.stream_kind(), peer);
            let mut by_peer = self.by_peer.lock().unwrap_or_else(|p| p.into_inner());
            if by_peer.get(&key) == Some(&conn) {
                by_peer.remove(&key);
            }
        }
    }

    fn forget(&self, flow: &Flow) {
        if let Some((conn, _)) = flow.conn() {
            self.conns
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&conn);
            self.unindex(flow);
        }
    }

    fn deliver(&self, msg: Message, flow: Flow) {
        inc(&self.metrics.sip_messages_received);
        if let Some(h) = self.handler.get().and_then(|h| h.upgrade()) {
            h.on_message(msg, flow);
        }
    }

    fn admits(&self, peer: SocketAddr) -> bool {
        self.handler
            .get()
            .and_then(|h| h.upgrade())
            .is_none_or(|h| h.admit(peer))
    }

    /// Close every connection (stop or leave: phones fail over to their other flows).
    pub fn close_all(&self) {
        self.conns.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.by_peer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Open connections (TCP, TLS, WebSocket).
    pub fn connections(&self) -> usize {
        self.conns.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// The TLS, WS and WSS listeners' addresses.
    pub fn listeners(&self) -> Listeners {
        *self.listeners.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The node's TLS, once [`Transport::listen_tls`] or a WSS listener set it.
    pub fn tls(&self) -> Option<&Arc<Tls>> {
        self.tls.get()
    }

    /// Listen for SIP over TLS on `addr` with `tls`'s certificate.
    pub async fn listen_tls(
        self: &Arc<Self>,
        addr: SocketAddr,
        tls: Arc<Tls>,
    ) -> std::io::Result<SocketAddr> {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let _ = self.tls.set(tls);
        self.listeners.lock().unwrap_or_else(|p| p.into_inner()).tls = Some(local);
        tokio::spawn(stream_accept_loop(self.clone(), listener, StreamKind::Tls));
        info!(%local, "SIP listening on TLS");
        Ok(local)
    }

    /// Listen for SIP over WebSocket on `addr` (secure WebSocket with `tls`).
    pub async fn listen_ws(
        self: &Arc<Self>,
        addr: SocketAddr,
        tls: Option<Arc<Tls>>,
    ) -> std::io::Result<SocketAddr> {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let kind = match tls {
            Some(tls) => {
                let _ = self.tls.set(tls);
                self.listeners.lock().unwrap_or_else(|p| p.into_inner()).wss = Some(local);
                StreamKind::Wss
            }
            None => {
                self.listeners.lock().unwrap_or_else(|p| p.into_inner()).ws = Some(local);
                StreamKind::Ws
            }
        };
        tokio::spawn(stream_accept_loop(self.clone(), listener, kind));
        info!(%local, transport = kind.via(), "SIP listening on WebSocket");
        Ok(local)
    }
}

fn timed_out(what: &'static str) -> SendError {
    SendError::Io(std::io::Error::new(std::io::ErrorKind::TimedOut, what))
}

/// Socket buffers of the UDP socket: bursts of thousands of small datagrams must not overflow
/// the kernel's default ~200 KiB (the kernel caps these at net.core.[rw]mem_max).
const UDP_RECV_BUFFER: usize = 4 * 1024 * 1024;
const UDP_SEND_BUFFER: usize = 1024 * 1024;

fn udp_socket(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let domain = if addr.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    if let Err(e) = s.set_recv_buffer_size(UDP_RECV_BUFFER) {
        debug!(error = %e, "cannot enlarge the UDP receive buffer");
    }
    let _ = s.set_send_buffer_size(UDP_SEND_BUFFER);
    s.bind(&addr.into())?;
    s.set_nonblocking(true)?;
    UdpSocket::from_std(s.into())
}

/// The STUN magic cookie (RFC 5389).
const STUN_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];

/// The answer to a STUN Binding request (RFC 5389): a Binding success response carrying the
/// sender's address in XOR-MAPPED-ADDRESS; `None` if `data` is not a Binding request.
pub fn stun_binding_response(data: &[u8], peer: SocketAddr) -> Option<Vec<u8>> {
    if data.len() < 20 || data[0..2] != [0x00, 0x01] || data[4..8] != STUN_COOKIE {
        return None;
    }
    let len = u16::from_be_bytes([data[2], data[3]]) as usize;
    if !len.is_multiple_of(4) || 20 + len != data.len() {
        return None;
    }
    let txid = &data[8..20];
    let mut attr = Vec::with_capacity(24);
    let port = peer.port() ^ 0x2112;
    match peer.ip() {
        std::net::IpAddr::V4(ip) => {
            attr.extend_from_slice(&[0x00, 0x20, 0x00, 0x08, 0x00, 0x01]);
            attr.extend_from_slice(&port.to_be_bytes());
            for (i, b) in ip.octets().iter().enumerate() {
                attr.push(b ^ STUN_COOKIE[i]);
            }
        }
        std::net::IpAddr::V6(ip) => {
            attr.extend_from_slice(&[0x00, 0x20, 0x00, 0x14, 0x00, 0x02]);
            attr.extend_from_slice(&port.to_be_bytes());
            let mut key = STUN_COOKIE.to_vec();
            key.extend_from_slice(txid);
            for (i, b) in ip.octets().iter().enumerate() {
                attr.push(b ^ key[i]);
            }
        }
    }
    let mut out = vec![0x01, 0x01];
    out.extend_from_slice(&(attr.len() as u16).to_be_bytes());
    out.extend_from_slice(&STUN_COOKIE);
    out.extend_from_slice(txid);
    out.extend_from_slice(&attr);
    Some(out)
}

async fn udp_loop(t: Arc<Transport>) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let (n, peer) = match t.udp.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                // ICMP errors from earlier sends surface here on some systems; keep going.
                debug!(error = %e, "UDP receive error");
                continue;
            }
        };
        let data = &buf[..n];
        if n > MAX_MESSAGE {
            inc(&t.metrics.sip_dropped);
            continue;
        }
        if data.first() == t.mesh_magic.get() {
            if let Some(h) = t.handler.get().and_then(|h| h.upgrade()) {
                h.on_datagram(data, peer);
            }
            continue;
        }
        if data.iter().all(|b| *b == b'\r' || *b == b'\n' || *b == 0) {
            continue; // keepalive noise
        }
        if let Some(answer) = stun_binding_response(data, peer) {
            // RFC 5626 §4.4.2: Outbound keepalives over UDP are STUN binding requests.
            inc(&t.metrics.sip_keepalives);
            let _ = t.udp.try_send_to(&answer, peer);
            continue;
        }
        if !t.admits(peer) {
            continue;
        }
        if let Some(msg) = parse_guarded(data, false, &t.metrics) {
            t.deliver(msg, Flow::Udp(peer));
        }
    }
}

async fn accept_loop(t: Arc<Transport>, listener: TcpListener) {
    loop {
        let Some((stream, peer, permit)) = accept_one(&t, &listener).await else {
            continue;
        };
        t.clone().adopt(stream, peer, permit, None);
    }
}

/// Accept one connection within the connection limit (`None`: refused or failed).
async fn accept_one(
    t: &Arc<Transport>,
    listener: &TcpListener,
) -> Option<(TcpStream, SocketAddr, tokio::sync::OwnedSemaphorePermit)> {
    let (stream, peer) = match listener.accept().await {
        Ok(x) => x,
        Err(e) => {
            warn!(error = %e, "accept failed");
            tokio::time::sleep(Duration::from_millis(50)).await;
            return None;
        }
    };
    if !t.admits(peer) {
        return None; // a banned source: closed before any handshake work
    }
    match t.permits.clone().try_acquire_owned() {
        Ok(permit) => {
            let _ = stream.set_nodelay(true);
            Some((stream, peer, permit))
        }
        Err(_) => {
            inc(&t.metrics.sip_tcp_refused);
            warn!(%peer, "connection refused: connection limit reached");
            None
        }
    }
}

/// Accept TLS, WS or WSS connections: each handshake runs in its own task, bounded by the
/// handshake timeout, holding one of the connection permits.
async fn stream_accept_loop(t: Arc<Transport>, listener: TcpListener, kind: StreamKind) {
    loop {
        let Some((stream, peer, permit)) = accept_one(&t, &listener).await else {
            continue;
        };
        tokio::spawn(handshake(t.clone(), stream, peer, permit, kind));
    }
}

async fn handshake(
    t: Arc<Transport>,
    stream: TcpStream,
    peer: SocketAddr,
    permit: tokio::sync::OwnedSemaphorePermit,
    kind: StreamKind,
) {
    let deadline = tokio::time::Instant::now() + t.limits.handshake_timeout;
    if kind == StreamKind::Ws {
        return websocket(t, stream, peer, permit, kind, deadline).await;
    }
    let Some(tls) = t.tls.get() else {
        return;
    };
    let failure = match tokio::time::timeout_at(deadline, tls.acceptor().accept(stream)).await {
        Ok(Ok(secured)) => {
            inc(&t.metrics.sip_tls_connections);
            return match kind {
                StreamKind::Wss => websocket(t, secured, peer, permit, kind, deadline).await,
                _ => {
                    t.adopt(secured, peer, permit, Some(kind));
                }
            };
        }
        Ok(Err(e)) => e.to_string(),
        Err(_) => "timed out".to_string(),
    };
    debug!(%peer, error = %failure, "TLS handshake failed");
    inc(&t.metrics.sip_tls_handshake_failures);
}

/// Bytes a WebSocket connection reads at a time (a few SIP messages).
const WS_READ_BUFFER: usize = 8 * 1024;

/// The WebSocket subprotocol of SIP (RFC 7118 §4.1).
const SUBPROTOCOL: &str = "sip";

/// Whether an upgrade request offers the `sip` subprotocol.
fn offers_sip(req: &tungstenite::handshake::server::Request) -> bool {
    req.headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == SUBPROTOCOL)
}

/// Upgrade a connection to WebSocket (subprotocol `sip` required), then serve it.
async fn websocket<S>(
    t: Arc<Transport>,
    stream: S,
    peer: SocketAddr,
    permit: tokio::sync::OwnedSemaphorePermit,
    kind: StreamKind,
    deadline: tokio::time::Instant,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    use tungstenite::handshake::server::{ErrorResponse, Request, Response};
    // tungstenite's defaults are for bulk transfer: a 128 KiB read buffer, zero-filled before
    // every read (a sixth of the node's CPU on WebSocket calls), and an unbounded write buffer.
    let config = tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
        .read_buffer_size(WS_READ_BUFFER)
        .write_buffer_size(0)
        .max_write_buffer_size(4 * MAX_MESSAGE);
    // The callback's signature is tungstenite's.
    #[allow(clippy::result_large_err)]
    let check = |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        if !offers_sip(req) {
            let mut refusal = ErrorResponse::new(Some(
                "SIP over WebSocket needs the subprotocol \"sip\" (RFC 7118)".into(),
            ));
            *refusal.status_mut() = tungstenite::http::StatusCode::BAD_REQUEST;
            return Err(refusal);
        }
        resp.headers_mut().insert(
            "sec-websocket-protocol",
            tungstenite::http::HeaderValue::from_static(SUBPROTOCOL),
        );
        Ok(resp)
    };
    let read = Arc::new(AtomicU64::new(0));
    let stream = Counting {
        inner: stream,
        read: read.clone(),
    };
    let ws = match tokio::time::timeout_at(
        deadline,
        tokio_tungstenite::accept_hdr_async_with_config(stream, check, Some(config)),
    )
    .await
    {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "WebSocket upgrade refused");
            inc(&t.metrics.sip_ws_refused);
            return;
        }
        Err(_) => {
            debug!(%peer, "WebSocket upgrade timed out");
            inc(&t.metrics.sip_ws_refused);
            return;
        }
    };
    inc(&t.metrics.sip_ws_connections);
    let (flow, rx, closing) = t.register(peer, Some(kind));
    ws_connection(t, ws, read, flow, rx, permit, closing).await;
}

/// A byte stream that counts the bytes read from it (how a WebSocket connection tells a
/// message in progress from silence).
struct Counting<S> {
    inner: S,
    read: Arc<AtomicU64>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counting<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        self.read.fetch_add(n, Ordering::Relaxed);
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counting<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Serve one WebSocket connection: each WebSocket message is one SIP message (RFC 7118 §5.1),
/// sent as text when it is UTF-8.
async fn ws_connection<S>(
    t: Arc<Transport>,
    ws: tokio_tungstenite::WebSocketStream<S>,
    read: Arc<AtomicU64>,
    flow: Flow,
    mut rx: mpsc::Receiver<Arc<[u8]>>,
    _permit: tokio::sync::OwnedSemaphorePermit,
    closing: Arc<std::sync::atomic::AtomicBool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut stream) = ws.split();
    let writer_task = tokio::spawn(async move {
        while let Some(bytes) = rx.recv().await {
            if bytes.iter().all(|b| *b == b'\r' || *b == b'\n') {
                continue; // a stream keepalive answer: WebSocket has its own pings
            }
            let msg = match std::str::from_utf8(&bytes) {
                Ok(text) => tungstenite::Message::text(text),
                Err(_) => tungstenite::Message::binary(bytes.to_vec()),
            };
            if sink.send(msg).await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });
    let mut idle_since = tokio::time::Instant::now();
    let mut read_at_message = read.load(Ordering::Relaxed);
    let mut pending = false;
    let mut timed_out = false;
    loop {
        // Bytes read since the last whole message, still there at the next check, are a
        // message that took longer than the message timeout (tungstenite holds partial frames):
        // a slow sender. No bytes for the idle timeout: an idle connection.
        let next = tokio::time::timeout(t.limits.message_timeout, stream.next()).await;
        let msg = match next {
            Err(_) => {
                let partial = read.load(Ordering::Relaxed) != read_at_message;
                if (partial && pending) || idle_since.elapsed() >= t.limits.idle_timeout {
                    debug!(?flow, partial, "WebSocket connection timed out");
                    inc(&t.metrics.sip_ws_closed);
                    timed_out = true;
                    break;
                }
                pending = partial;
                continue;
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                debug!(?flow, error = %e, "WebSocket connection closed");
                if matches!(
                    e,
                    tungstenite::Error::Capacity(_) | tungstenite::Error::Protocol(_)
                ) {
                    inc(&t.metrics.sip_ws_closed);
                }
                break;
            }
            Ok(Some(Ok(m))) => m,
        };
        idle_since = tokio::time::Instant::now();
        read_at_message = read.load(Ordering::Relaxed);
        pending = false;
        let data: &[u8] = match &msg {
            tungstenite::Message::Text(text) => text.as_bytes(),
            tungstenite::Message::Binary(bytes) => bytes,
            tungstenite::Message::Close(_) => break,
            _ => continue, // pings are answered by tungstenite
        };
        if data.iter().all(|b| b.is_ascii_whitespace()) {
            inc(&t.metrics.sip_keepalives);
            continue;
        }
        if let Some(msg) = parse_guarded(data, false, &t.metrics) {
            t.deliver(msg, flow.clone());
        }
    }
    finish(t, flow, closing, writer_task, timed_out).await;
}

async fn connection<S>(
    t: Arc<Transport>,
    stream: S,
    flow: Flow,
    mut rx: mpsc::Receiver<Arc<[u8]>>,
    _permit: tokio::sync::OwnedSemaphorePermit,
    closing: Arc<std::sync::atomic::AtomicBool>,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut reader, mut writer) = tokio::io::split(stream);
    let writer_task = tokio::spawn(async move {
        while let Some(bytes) = rx.recv().await {
            if writer.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = writer.shutdown().await;
    });
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = vec![0u8; 16 * 1024];
    let mut partial_since: Option<tokio::time::Instant> = None;
    let mut timed_out = false;
    'conn: loop {
        loop {
            match frame_stream(&buf) {
                Framed::Incomplete => break,
                Framed::Ping(n) => {
                    buf.drain(..n);
                    inc(&t.metrics.sip_keepalives);
                    let _ = t.send(&flow, Arc::from(&b"\r\n"[..]));
                }
                Framed::Pong(n) => {
                    buf.drain(..n);
                }
                Framed::Message { skip, len } => {
                    let bytes: Vec<u8> = buf.drain(..skip + len).skip(skip).collect();
                    if let Some(msg) = parse_guarded(&bytes, true, &t.metrics) {
                        t.deliver(msg, flow.clone());
                    }
                }
                Framed::Error(fault) => {
                    debug!(?flow, %fault, "closing a connection that cannot be framed");
                    inc(&t.metrics.sip_tcp_closed_framing);
                    break 'conn;
                }
            }
        }
        partial_since = match (buf.is_empty(), partial_since) {
            (true, _) => None,
            (false, None) => Some(tokio::time::Instant::now()),
            (false, since) => since,
        };
        let deadline = match partial_since {
            Some(since) => since + t.limits.message_timeout,
            None => tokio::time::Instant::now() + t.limits.idle_timeout,
        };
        match tokio::time::timeout_at(deadline, reader.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                if buf.len() + n > MAX_MESSAGE + 4 {
                    inc(&t.metrics.sip_tcp_closed_framing);
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            Err(_) => {
                debug!(
                    ?flow,
                    partial = partial_since.is_some(),
                    "connection timed out"
                );
                inc(&t.metrics.sip_tcp_closed_framing);
                timed_out = true;
                break;
            }
        }
    }
    finish(t, flow, closing, writer_task, timed_out).await;
}

/// The read side of a connection is done (peer closed, timeout, or a stream that cannot be
/// framed). Keep the write side registered for a moment so answers already being computed
/// still go out, then let the writer drain its queue and close.
async fn finish(
    t: Arc<Transport>,
    flow: Flow,
    closing: Arc<std::sync::atomic::AtomicBool>,
    writer_task: tokio::task::JoinHandle<()>,
    timed_out: bool,
) {
    closing.store(true, Ordering::Relaxed);
    t.unindex(&flow);
    if !timed_out {
        tokio::time::sleep(CLOSE_LINGER).await;
    }
    t.forget(&flow);
    if tokio::time::timeout(Duration::from_secs(5), writer_task)
        .await
        .is_err()
    {
        debug!(?flow, "writer did not drain in time");
    }
    if let Some(h) = t.handler.get().and_then(|h| h.upgrade()) {
        h.on_closed(flow);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stun_binding_is_answered_with_the_mapped_address() {
        let mut req = vec![0x00, 0x01, 0x00, 0x00];
        req.extend_from_slice(&STUN_COOKIE);
        req.extend_from_slice(&[7u8; 12]);
        let peer: SocketAddr = "192.0.2.10:5062".parse().unwrap();
        let r = stun_binding_response(&req, peer).unwrap();
        assert_eq!(&r[0..2], &[0x01, 0x01]);
        assert_eq!(&r[8..20], &[7u8; 12]);
        let port = u16::from_be_bytes([r[26], r[27]]) ^ 0x2112;
        assert_eq!(port, 5062);
        let ip: Vec<u8> = r[28..32]
            .iter()
            .zip(STUN_COOKIE)
            .map(|(a, b)| a ^ b)
            .collect();
        assert_eq!(ip, vec![192, 0, 2, 10]);
        assert!(stun_binding_response(b"OPTIONS sip:x SIP/2.0\r\n\r\n", peer).is_none());
    }
}
