//! SIP transports: UDP and TCP on the same address (RFC 3261 §18).
//!
//! Limits: a message is at most [`MAX_MESSAGE`] bytes; at most `max_connections` TCP
//! connections; a TCP connection idle for `idle_timeout` is closed, and a message must arrive
//! whole within `message_timeout` of its first byte (slow senders cannot pin a connection); a
//! connection whose stream cannot be framed is closed. Every parse runs under `catch_unwind`, so
//! a panic in a dependency costs one message, never the node.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, Semaphore};
use tracing::{debug, info, warn};

use crate::metrics::{inc, Metrics};
use crate::sip::flow::Flow;
use crate::sip::message::{frame_stream, Framed, Message, MAX_MESSAGE};

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
}

impl Default for TransportLimits {
    fn default() -> Self {
        TransportLimits {
            max_connections: 1024,
            idle_timeout: Duration::from_secs(300),
            message_timeout: Duration::from_secs(10),
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

/// The node's SIP transports.
pub struct Transport {
    local: SocketAddr,
    udp: Arc<UdpSocket>,
    conns: Mutex<HashMap<u64, Conn>>,
    by_peer: Mutex<HashMap<SocketAddr, u64>>,
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

/// Sends bytes to another mesh node (with the flow it should deliver them on). It returns a
/// datagram for the transport to send from its UDP socket, or `None` when it sent the bytes
/// some other way.
pub type MeshSender = Box<
    dyn Fn(
            &sipmesh_net::PeerId,
            Option<&Flow>,
            Arc<[u8]>,
        ) -> Result<Option<(SocketAddr, Vec<u8>)>, SendError>
        + Send
        + Sync,
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

    /// Send bytes on a flow (never blocks: UDP is best effort, TCP is queued).
    /// The node's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

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
                Some(send) => match send(node, target.as_deref(), bytes)? {
                    Some((addr, datagram)) => self.send(&Flow::Udp(addr), Arc::from(datagram)),
                    None => Ok(()),
                },
                None => Err(SendError::Closed),
            },
            Flow::Tcp { conn, peer } => {
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

    /// Whether a flow is still usable (a TCP connection still open; UDP always).
    pub fn is_alive(&self, flow: &Flow) -> bool {
        match flow {
            Flow::Udp(_) | Flow::Mesh { .. } => true,
            Flow::Tcp { conn, peer } => self
                .conns
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(conn)
                .is_some_and(|c| c.peer == *peer && !c.closing.load(Ordering::Relaxed)),
        }
    }

    /// A TCP flow to `peer`: an open connection, or a new one.
    pub async fn tcp_flow(self: &Arc<Self>, peer: SocketAddr) -> Result<Flow, SendError> {
        if let Some(conn) = self
            .by_peer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&peer)
            .copied()
        {
            if self
                .conns
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(&conn)
            {
                return Ok(Flow::Tcp { conn, peer });
            }
        }
        let permit = self
            .permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| SendError::Full)?;
        let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(peer))
            .await
            .map_err(|_| {
                SendError::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connect timed out",
                ))
            })??;
        Ok(self.clone().adopt(stream, peer, permit))
    }

    fn adopt(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) -> Flow {
        let _ = stream.set_nodelay(true);
        inc(&self.metrics.sip_tcp_connections);
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
            .insert(peer, conn);
        let flow = Flow::Tcp { conn, peer };
        tokio::spawn(connection(self, stream, flow.clone(), rx, permit, closing));
        flow
    }

    fn forget(&self, flow: &Flow) {
        if let Flow::Tcp { conn, peer } = flow {
            self.conns
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(conn);
            let mut by_peer = self.by_peer.lock().unwrap_or_else(|p| p.into_inner());
            if by_peer.get(peer) == Some(conn) {
                by_peer.remove(peer);
            }
        }
    }

    fn deliver(&self, msg: Message, flow: Flow) {
        inc(&self.metrics.sip_messages_received);
        if let Some(h) = self.handler.get().and_then(|h| h.upgrade()) {
            h.on_message(msg, flow);
        }
    }

    /// Close every TCP connection (stop or leave: phones fail over to their other flows).
    pub fn close_all(&self) {
        self.conns.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.by_peer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Open TCP connections.
    pub fn connections(&self) -> usize {
        self.conns.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
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
        if !t
            .handler
            .get()
            .and_then(|h| h.upgrade())
            .is_none_or(|h| h.admit(peer))
        {
            continue;
        }
        if let Some(msg) = parse_guarded(data, false, &t.metrics) {
            t.deliver(msg, Flow::Udp(peer));
        }
    }
}

async fn accept_loop(t: Arc<Transport>, listener: TcpListener) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "TCP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        match t.permits.clone().try_acquire_owned() {
            Ok(permit) => {
                t.clone().adopt(stream, peer, permit);
            }
            Err(_) => {
                inc(&t.metrics.sip_tcp_refused);
                warn!(%peer, "TCP connection refused: connection limit reached");
                drop(stream);
            }
        }
    }
}

async fn connection(
    t: Arc<Transport>,
    stream: TcpStream,
    flow: Flow,
    mut rx: mpsc::Receiver<Arc<[u8]>>,
    _permit: tokio::sync::OwnedSemaphorePermit,
    closing: Arc<std::sync::atomic::AtomicBool>,
) {
    let (mut reader, mut writer) = stream.into_split();
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
                    debug!(?flow, %fault, "closing a TCP connection that cannot be framed");
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
                    "TCP connection timed out"
                );
                inc(&t.metrics.sip_tcp_closed_framing);
                timed_out = true;
                break;
            }
        }
    }
    // The read side is done (peer closed, timeout, or a stream that cannot be framed). Keep the
    // write side registered for a moment so answers already being computed still go out, then
    // let the writer drain its queue and close.
    closing.store(true, Ordering::Relaxed);
    if let Flow::Tcp { conn, peer } = &flow {
        let mut by_peer = t.by_peer.lock().unwrap_or_else(|p| p.into_inner());
        if by_peer.get(peer) == Some(conn) {
            by_peer.remove(peer);
        }
    }
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
