//! Shared helpers for the integration tests: a small SIP client over real UDP/TCP sockets,
//! digest computation, polling, and admin API calls.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use md5::{Digest, Md5};
use sipmesh::sip::message::{frame_stream, Framed, HeaderName, Message};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// A converged local mesh of `nodes` nodes configured by `f`, with `users` added (user,
/// password) through node 0.
pub async fn mesh_with_users(
    nodes: usize,
    users: &[(&'static str, &'static str)],
    f: impl Fn(&mut sipmesh::NodeConfig) + Send + Sync + 'static,
) -> sipmesh::LocalMesh {
    let mesh = sipmesh::LocalMesh::builder()
        .nodes(nodes)
        .configure(f)
        .start()
        .await
        .unwrap();
    mesh.wait_converged(Duration::from_secs(30)).await.unwrap();
    for &(u, p) in users {
        mesh.node(0)
            .run(move |n| async move { n.add_user(u, p).await })
            .await
            .unwrap()
            .unwrap();
    }
    mesh
}

/// The admin token of node `i` of a local mesh.
pub fn admin_token(mesh: &sipmesh::LocalMesh, i: usize) -> String {
    mesh.node(i)
        .node()
        .unwrap()
        .admin_token()
        .unwrap()
        .to_string()
}

/// A scanner at `ip` sends `n` OPTIONS to `server` back to back (past the throttle's rate,
/// so the source gets banned).
pub async fn scan_from(ip: &str, server: SocketAddr, n: usize) {
    let mut scanner = Client::udp_from(ip, server).await;
    for i in 0..n {
        let options = format!(
            "OPTIONS sip:{server} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bKscan{i}\r\nMax-Forwards: 70\r\nFrom: <sip:scan@x>;tag=s\r\nTo: <sip:{server}>\r\nCall-ID: scan{i}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
            scanner.local()
        );
        scanner.send(options.as_bytes()).await;
    }
}

/// A real `sipmesh node` process on `ip` with SIP, p2p and admin ports `ports`, its data in
/// `dir/n{i}`, the admin token `token`: logs at warn, output discarded, killed when dropped.
/// Add flags and environment before spawning.
pub fn node_command(
    dir: &std::path::Path,
    i: u16,
    ip: &str,
    (sip, p2p, http): (u16, u16, u16),
    token: &str,
) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_sipmesh"));
    cmd.args([
        "node",
        "--data-dir",
        dir.join(format!("n{i}")).to_str().unwrap(),
    ])
    .args(["--sip-listen", &format!("{ip}:{sip}")])
    .args(["--p2p-listen", &format!("/ip4/{ip}/tcp/{p2p}")])
    .args(["--http-listen", &format!("{ip}:{http}")])
    .args(["--admin-token", token])
    .env("RUST_LOG", "warn")
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null())
    .kill_on_drop(true);
    cmd
}

/// Node `i` of a loopback mesh whose SIP, p2p and admin ports are `base + i`, `base + 100 + i`
/// and `base + 200 + i`; every node but the first bootstraps from node 0. Killed when dropped.
pub fn spawn_loopback_node(
    dir: &std::path::Path,
    base: u16,
    i: u16,
    token: &str,
) -> tokio::process::Child {
    let mut cmd = node_command(
        dir,
        i,
        "127.0.0.1",
        (base + i, base + 100 + i, base + 200 + i),
        token,
    );
    if i > 0 {
        cmd.args(["--bootstrap", &format!("/ip4/127.0.0.1/tcp/{}", base + 100)]);
    }
    cmd.spawn().unwrap()
}

/// The users of the call tests.
pub const PHONES: &[(&str, &str)] = &[("alice", "a-pw"), ("bob", "b-pw"), ("carol", "c-pw")];

/// Every test runs under this hard timeout.
pub async fn within<F: Future<Output = ()>>(secs: u64, f: F) {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .expect("test exceeded its hard timeout");
}

/// Poll `cond` every 100 ms until it holds or `secs` pass.
pub async fn eventually<F, Fut>(secs: u64, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {secs}s: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The text of a node's `/metrics`.
pub async fn metrics_text(http: SocketAddr) -> String {
    let url = format!("http://{http}/metrics");
    tokio::task::spawn_blocking(move || {
        ureq::get(&url)
            .call()
            .map(|r| r.into_string().unwrap_or_default())
            .unwrap_or_default()
    })
    .await
    .unwrap()
}

/// Wait (up to 30 s) until a node process answers `GET url` (its admin API is up).
pub async fn wait_answering(url: String) {
    eventually(30, "the node answers", || {
        let url = url.clone();
        async move {
            tokio::task::spawn_blocking(move || ureq::get(&url).call().is_ok())
                .await
                .unwrap()
        }
    })
    .await;
}

/// A random token.
pub fn token() -> String {
    format!("{:012x}", rand::random::<u64>() & 0xFFFF_FFFF_FFFF)
}

/// A TLS client stream.
pub type TlsStream = tokio_rustls::client::TlsStream<TcpStream>;
/// A WebSocket client stream (over plain TCP).
pub type WsStream = tokio_tungstenite::WebSocketStream<TcpStream>;

/// A SIP client on one socket (UDP, TCP, TLS or WebSocket).
pub enum Client {
    /// UDP.
    Udp(UdpSocket, SocketAddr),
    /// TCP, with a read buffer.
    Tcp(TcpStream, Vec<u8>),
    /// TLS, with a read buffer.
    Tls(Box<TlsStream>, Vec<u8>),
    /// WebSocket (subprotocol sip): one SIP message per WebSocket message.
    Ws(Box<WsStream>),
    /// Secure WebSocket.
    Wss(Box<tokio_tungstenite::WebSocketStream<TlsStream>>),
}

/// A rustls client configuration trusting the PEM certificate `ca` only.
pub fn tls_client_config(ca: &std::path::Path) -> std::sync::Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    std::sync::Arc::new(
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

/// A TLS connection to `server`, verifying it as `name` against the PEM certificate `ca`.
pub async fn tls_connect(
    server: SocketAddr,
    ca: &std::path::Path,
    name: &str,
) -> std::io::Result<TlsStream> {
    let tcp = TcpStream::connect(server).await?;
    tcp.set_nodelay(true)?;
    let name = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
    tokio_rustls::TlsConnector::from(tls_client_config(ca))
        .connect(name, tcp)
        .await
}

/// A WebSocket upgrade of a TCP connection to `server`, offering `protocol`.
pub async fn ws_connect(
    server: SocketAddr,
    protocol: Option<&str>,
) -> Result<WsStream, tokio_tungstenite::tungstenite::Error> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let tcp = TcpStream::connect(server).await?;
    tcp.set_nodelay(true)?;
    let mut req = format!("ws://{server}/").into_client_request()?;
    if let Some(p) = protocol {
        req.headers_mut()
            .insert("sec-websocket-protocol", p.parse().unwrap());
    }
    let (ws, _) = tokio_tungstenite::client_async(req, tcp).await?;
    Ok(ws)
}

impl Client {
    /// A UDP client talking to `server`, from loopback of the same family (127.0.0.1 or ::1).
    pub async fn udp(server: SocketAddr) -> Client {
        let local = if server.is_ipv6() {
            "[::1]:0"
        } else {
            "127.0.0.1:0"
        };
        let s = UdpSocket::bind(local).await.unwrap();
        Client::Udp(s, server)
    }

    /// A UDP client sending from loopback address `ip` (127.0.0.0/8: a distinct source).
    pub async fn udp_from(ip: &str, server: SocketAddr) -> Client {
        let s = UdpSocket::bind((ip, 0)).await.unwrap();
        Client::Udp(s, server)
    }

    /// A TCP client connected to `server`.
    pub async fn tcp(server: SocketAddr) -> Client {
        let s = TcpStream::connect(server).await.unwrap();
        s.set_nodelay(true).unwrap();
        Client::Tcp(s, Vec::new())
    }

    /// A TLS client connected to `server`, trusting the PEM certificate `ca` for 127.0.0.1.
    pub async fn tls(server: SocketAddr, ca: &std::path::Path) -> Client {
        let s = tls_connect(server, ca, "127.0.0.1").await.unwrap();
        Client::Tls(Box::new(s), Vec::new())
    }

    /// A WebSocket client (subprotocol sip) connected to `server`.
    pub async fn ws(server: SocketAddr) -> Client {
        Client::Ws(Box::new(ws_connect(server, Some("sip")).await.unwrap()))
    }

    /// A secure WebSocket client (subprotocol sip) connected to `server`, trusting `ca`.
    pub async fn wss(server: SocketAddr, ca: &std::path::Path) -> Client {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let tls = tls_connect(server, ca, "127.0.0.1").await.unwrap();
        let mut req = format!("wss://{server}/").into_client_request().unwrap();
        req.headers_mut()
            .insert("sec-websocket-protocol", "sip".parse().unwrap());
        let (ws, _) = tokio_tungstenite::client_async(req, tls).await.unwrap();
        Client::Wss(Box::new(ws))
    }

    /// The transport token for Via.
    pub fn transport(&self) -> &'static str {
        match self {
            Client::Udp(..) => "UDP",
            Client::Tcp(..) => "TCP",
            Client::Tls(..) => "TLS",
            Client::Ws(..) => "WS",
            Client::Wss(..) => "WSS",
        }
    }

    /// The local address.
    pub fn local(&self) -> SocketAddr {
        match self {
            Client::Udp(s, _) => s.local_addr().unwrap(),
            Client::Tcp(s, _) => s.local_addr().unwrap(),
            Client::Tls(s, _) => s.get_ref().0.local_addr().unwrap(),
            Client::Ws(s) => s.get_ref().local_addr().unwrap(),
            Client::Wss(s) => s.get_ref().get_ref().0.local_addr().unwrap(),
        }
    }

    /// Send raw bytes.
    pub async fn send(&mut self, bytes: &[u8]) {
        match self {
            Client::Udp(s, server) => {
                s.send_to(bytes, *server).await.unwrap();
            }
            Client::Tcp(s, _) => s.write_all(bytes).await.unwrap(),
            Client::Tls(s, _) => {
                s.write_all(bytes).await.unwrap();
                s.flush().await.unwrap();
            }
            Client::Ws(s) => ws_send(s.as_mut(), bytes).await,
            Client::Wss(s) => ws_send(s.as_mut(), bytes).await,
        }
    }

    /// Receive one message (or raw bytes for keepalives) within `ms`; `None` on timeout or close.
    pub async fn recv_raw(&mut self, ms: u64) -> Option<Vec<u8>> {
        let fut = async {
            match self {
                Client::Udp(s, _) => {
                    let mut buf = vec![0u8; 65536];
                    let (n, _) = s.recv_from(&mut buf).await.ok()?;
                    buf.truncate(n);
                    Some(buf)
                }
                Client::Tcp(s, buf) => read_framed(s, buf).await,
                Client::Tls(s, buf) => read_framed(s.as_mut(), buf).await,
                Client::Ws(s) => ws_recv(s.as_mut()).await,
                Client::Wss(s) => ws_recv(s.as_mut()).await,
            }
        };
        tokio::time::timeout(Duration::from_millis(ms), fut)
            .await
            .ok()
            .flatten()
    }

    /// Receive the next message within `ms`, skipping provisional responses.
    pub async fn recv_final(&mut self, ms: u64) -> Option<Message> {
        loop {
            let raw = self.recv_raw(ms).await?;
            let m = Message::parse(&raw, true).ok()?;
            if m.status().is_some_and(|c| c < 200) {
                continue;
            }
            return Some(m);
        }
    }

    /// Send a request and wait for its final response.
    pub async fn request(&mut self, msg: &str) -> Option<Message> {
        self.send(msg.as_bytes()).await;
        self.recv_final(5000).await
    }

    /// Send a request as a phone does (RFC 3261 Timer E over UDP: again after 0.5, 1, 2, 4 s
    /// until a final response), and wait for its final response; over TCP, once.
    pub async fn request_retransmitting(&mut self, msg: &str) -> Option<Message> {
        if !matches!(self, Client::Udp(..)) {
            return self.request(msg).await;
        }
        for wait in [500, 1000, 2000, 4000, 4000] {
            self.send(msg.as_bytes()).await;
            if let Some(m) = self.recv_final(wait).await {
                return Some(m);
            }
        }
        None
    }
}

/// Send one SIP message as a WebSocket text message.
async fn ws_send<S>(s: &mut tokio_tungstenite::WebSocketStream<S>, bytes: &[u8])
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures::SinkExt;
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    s.send(tokio_tungstenite::tungstenite::Message::text(text))
        .await
        .unwrap()
}

/// Receive one SIP message from a WebSocket (`None`: closed).
async fn ws_recv<S>(s: &mut tokio_tungstenite::WebSocketStream<S>) -> Option<Vec<u8>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message as W;
    loop {
        match s.next().await?.ok()? {
            W::Text(t) => return Some(t.as_bytes().to_vec()),
            W::Binary(b) => return Some(b.to_vec()),
            W::Close(_) => return None,
            _ => continue,
        }
    }
}

/// Read one framed message (or keepalive bytes) from a byte stream.
pub async fn read_framed<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
) -> Option<Vec<u8>> {
    loop {
        match frame_stream(buf) {
            Framed::Message { skip, len } => {
                return Some(buf.drain(..skip + len).skip(skip).collect())
            }
            Framed::Ping(n) | Framed::Pong(n) => return Some(buf.drain(..n).collect()),
            Framed::Error(_) => return None,
            Framed::Incomplete => {}
        }
        let mut chunk = [0u8; 8192];
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A REGISTER.
pub struct Register<'a> {
    pub user: &'a str,
    pub call_id: String,
    pub cseq: u32,
    pub contact: String,
    pub expires: Option<u32>,
    pub authorization: Option<String>,
    pub extra: String,
}

impl<'a> Register<'a> {
    pub fn new(user: &'a str, contact: &str) -> Self {
        Register {
            user,
            call_id: format!("{}@test", token()),
            cseq: 1,
            contact: contact.to_string(),
            expires: Some(3600),
            authorization: None,
            extra: String::new(),
        }
    }

    pub fn build(&self, c: &Client, server: SocketAddr) -> String {
        let mut m = format!(
            "REGISTER sip:{server} SIP/2.0\r\nVia: SIP/2.0/{} {};branch=z9hG4bK{};rport\r\nMax-Forwards: 70\r\nFrom: <sip:{}@{server}>;tag={}\r\nTo: <sip:{}@{server}>\r\nCall-ID: {}\r\nCSeq: {} REGISTER\r\nContact: {}\r\n",
            c.transport(),
            c.local(),
            token(),
            self.user,
            token(),
            self.user,
            self.call_id,
            self.cseq,
            self.contact
        );
        if let Some(e) = self.expires {
            m.push_str(&format!("Expires: {e}\r\n"));
        }
        if let Some(a) = &self.authorization {
            m.push_str(&format!("Authorization: {a}\r\n"));
        }
        m.push_str(&self.extra);
        m.push_str("Content-Length: 0\r\n\r\n");
        m
    }
}

fn md5_hex(s: &str) -> String {
    Md5::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A Digest (MD5, qop=auth) Authorization value answering the first challenge of `challenge`.
pub fn digest(
    challenge: &Message,
    header: &HeaderName,
    user: &str,
    password: &str,
    method: &str,
    uri: &str,
    nc: u32,
) -> String {
    let ch = challenge.header(header).expect("a challenge");
    let get = |name: &str| {
        let start = ch.find(&format!("{name}=")).expect("param") + name.len() + 1;
        let rest = &ch[start..];
        if let Some(r) = rest.strip_prefix('"') {
            r[..r.find('"').unwrap()].to_string()
        } else {
            rest.split(',').next().unwrap().trim().to_string()
        }
    };
    let (realm, nonce) = (get("realm"), get("nonce"));
    let ha1 = md5_hex(&format!("{user}:{realm}:{password}"));
    let ha2 = md5_hex(&format!("{method}:{uri}"));
    let nc = format!("{nc:08x}");
    let cnonce = token();
    let response = md5_hex(&format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}"));
    format!(
        "Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", response=\"{response}\", algorithm=MD5, qop=auth, nc={nc}, cnonce=\"{cnonce}\""
    )
}

/// Register with the full digest exchange; returns the final response.
pub async fn register(
    c: &mut Client,
    server: SocketAddr,
    reg: &mut Register<'_>,
    password: &str,
) -> Message {
    let first = c
        .request_retransmitting(&reg.build(c, server))
        .await
        .expect("an answer to REGISTER");
    if first.status() != Some(401) {
        return first;
    }
    reg.cseq += 1;
    reg.authorization = Some(digest(
        &first,
        &HeaderName::Other("www-authenticate".into()),
        reg.user,
        password,
        "REGISTER",
        &format!("sip:{server}"),
        1,
    ));
    c.request_retransmitting(&reg.build(c, server))
        .await
        .expect("an answer to the authenticated REGISTER")
}

/// An admin API call with a method, optional token, optional raw body and content type, and
/// extra headers; returns the status and body.
pub async fn http_call(
    method: &'static str,
    url: String,
    token: Option<String>,
    body: Option<(&'static str, String)>,
    headers: Vec<(&'static str, String)>,
) -> (u16, serde_json::Value) {
    tokio::task::spawn_blocking(move || {
        let mut req = ureq::request(method, &url);
        if let Some(t) = token {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        for (k, v) in headers {
            req = req.set(k, &v);
        }
        let r = match body {
            Some((ct, b)) => req.set("Content-Type", ct).send_string(&b),
            None => req.call(),
        };
        match r {
            Ok(r) => (r.status(), r.into_json().unwrap_or_default()),
            Err(ureq::Error::Status(code, r)) => (code, r.into_json().unwrap_or_default()),
            Err(e) => panic!("{method} {url}: {e}"),
        }
    })
    .await
    .unwrap()
}

/// GET a JSON document from a node's admin API.
pub async fn http_get(url: String) -> (u16, serde_json::Value) {
    tokio::task::spawn_blocking(move || match ureq::get(&url).call() {
        Ok(r) => (r.status(), r.into_json().unwrap_or_default()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_json().unwrap_or_default()),
        Err(e) => panic!("GET {url}: {e}"),
    })
    .await
    .unwrap()
}

/// POST JSON to a node's admin API with its bearer token.
pub async fn http_post(
    url: String,
    token: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let auth = format!("Bearer {token}");
    tokio::task::spawn_blocking(move || {
        match ureq::post(&url).set("Authorization", &auth).send_json(body) {
            Ok(r) => (r.status(), r.into_json().unwrap_or_default()),
            Err(ureq::Error::Status(code, r)) => (code, r.into_json().unwrap_or_default()),
            Err(e) => panic!("POST {url}: {e}"),
        }
    })
    .await
    .unwrap()
}

/// Import `user,password` lines through a node's admin API (`base`: `http://IP:PORT`).
pub async fn import_users(base: &str, token: &str, csv: String) -> (u16, serde_json::Value) {
    http_post(
        format!("{base}/v1/users/import"),
        token,
        serde_json::json!({ "csv": csv }),
    )
    .await
}

/// A user agent on one UDP socket, for call tests: builds requests and answers like a phone.
pub struct Ua {
    /// The socket.
    pub c: Client,
    /// The user.
    pub user: String,
    /// The node it talks to.
    pub server: SocketAddr,
}

/// Copy the header values of `name` from `m`.
pub fn hvals(m: &Message, name: &HeaderName) -> Vec<String> {
    m.values(name).iter().map(|s| s.to_string()).collect()
}

/// The URI inside a name-addr value.
pub fn uri_of(v: &str) -> String {
    sipmesh::sip::header::NameAddr::parse(v, "x")
        .map(|n| n.uri)
        .unwrap_or_default()
}

impl Ua {
    /// A UA for `user` talking to `server`.
    pub async fn new(user: &str, server: SocketAddr) -> Ua {
        Ua {
            c: Client::udp(server).await,
            user: user.to_string(),
            server,
        }
    }

    /// Talk to another node from now on (same socket).
    pub fn retarget(&mut self, server: SocketAddr) {
        self.server = server;
        if let Client::Udp(_, s) = &mut self.c {
            *s = server;
        }
    }

    /// A UA for `user` on client `c` (TCP, TLS, WebSocket) talking to `server`.
    pub fn on(user: &str, server: SocketAddr, c: Client) -> Ua {
        Ua {
            c,
            user: user.to_string(),
            server,
        }
    }

    /// Its contact URI (over WebSocket, an unreachable host name, as RFC 7118 §5.2 clients
    /// write it).
    pub fn contact(&self) -> String {
        match self.c {
            Client::Udp(..) => format!("sip:{}@{}", self.user, self.c.local()),
            Client::Tcp(..) => format!("sip:{}@{};transport=tcp", self.user, self.c.local()),
            Client::Tls(..) => format!("sip:{}@{};transport=tls", self.user, self.c.local()),
            Client::Ws(..) | Client::Wss(..) => {
                format!("sip:{}@df7jal23ls0d.invalid;transport=ws", self.user)
            }
        }
    }

    /// Register its socket as the user's contact; returns the final status.
    pub async fn register(&mut self, password: &str) -> u16 {
        let contact = format!("<{}>", self.contact());
        let user = self.user.clone();
        let mut reg = Register::new(&user, &contact);
        let server = self.server;
        register(&mut self.c, server, &mut reg, password)
            .await
            .status()
            .unwrap_or(0)
    }

    fn via(&self) -> String {
        let sent_by = match self.c {
            Client::Ws(..) | Client::Wss(..) => "df7jal23ls0d.invalid".to_string(),
            _ => self.c.local().to_string(),
        };
        format!(
            "SIP/2.0/{} {sent_by};branch=z9hG4bK{};rport",
            self.c.transport(),
            token()
        )
    }

    /// An INVITE to `to` (a user), with optional Proxy-Authorization.
    pub fn invite(
        &self,
        to: &str,
        call_id: &str,
        from_tag: &str,
        cseq: u32,
        auth: Option<&str>,
    ) -> String {
        let server = self.server;
        let mut m = format!(
            "INVITE sip:{to}@{server} SIP/2.0\r\nVia: {}\r\nMax-Forwards: 70\r\nFrom: <sip:{}@{server}>;tag={from_tag}\r\nTo: <sip:{to}@{server}>\r\nCall-ID: {call_id}\r\nCSeq: {cseq} INVITE\r\nContact: <{}>\r\n",
            self.via(),
            self.user,
            self.contact()
        );
        if let Some(a) = auth {
            m.push_str(&format!("Proxy-Authorization: {a}\r\n"));
        }
        m.push_str("Content-Type: application/sdp\r\nContent-Length: 4\r\n\r\nv=0\n");
        m
    }

    /// An in-dialog request: to `target` through `routes`.
    #[allow(clippy::too_many_arguments)]
    pub fn in_dialog(
        &self,
        method: &str,
        target: &str,
        routes: &[String],
        from: &str,
        to: &str,
        call_id: &str,
        cseq: u32,
    ) -> String {
        let mut m = format!(
            "{method} {target} SIP/2.0\r\nVia: {}\r\nMax-Forwards: 70\r\n",
            self.via()
        );
        for r in routes {
            m.push_str(&format!("Route: {r}\r\n"));
        }
        m.push_str(&format!(
            "From: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\nContact: <{}>\r\nContent-Length: 0\r\n\r\n",
            self.contact()
        ));
        m
    }

    /// Answer a request: status, To tag (added if absent), Record-Route copied, our Contact.
    pub fn answer(&self, req: &Message, code: u16, reason: &str, to_tag: &str) -> String {
        let mut m = format!("SIP/2.0 {code} {reason}\r\n");
        for v in hvals(req, &HeaderName::Via) {
            m.push_str(&format!("Via: {v}\r\n"));
        }
        if code > 100 {
            for r in hvals(req, &HeaderName::RecordRoute) {
                m.push_str(&format!("Record-Route: {r}\r\n"));
            }
        }
        let to = req.header(&HeaderName::To).unwrap_or_default();
        let to = if to.contains("tag=") || code == 100 {
            to.to_string()
        } else {
            format!("{to};tag={to_tag}")
        };
        m.push_str(&format!(
            "From: {}\r\nTo: {to}\r\nCall-ID: {}\r\nCSeq: {}\r\nContact: <{}>\r\nContent-Length: 0\r\n\r\n",
            req.header(&HeaderName::From).unwrap_or_default(),
            req.header(&HeaderName::CallId).unwrap_or_default(),
            req.header(&HeaderName::CSeq).unwrap_or_default(),
            self.contact()
        ));
        m
    }

    /// Wait for a message (request or response) matching `pred`, up to `ms`; others are dropped
    /// (but answered with 200 if they are requests other than ACK, so nothing retransmits).
    pub async fn wait_for(&mut self, ms: u64, pred: impl Fn(&Message) -> bool) -> Option<Message> {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
        loop {
            let left = deadline
                .saturating_duration_since(tokio::time::Instant::now())
                .as_millis() as u64;
            if left == 0 {
                return None;
            }
            let raw = self.c.recv_raw(left).await?;
            let Ok(m) = Message::parse(&raw, false) else {
                continue;
            };
            if pred(&m) {
                return Some(m);
            }
        }
    }

    /// Wait for a request with this method.
    pub async fn wait_request(&mut self, method: &str, ms: u64) -> Option<Message> {
        self.wait_for(ms, |m| m.method().is_some_and(|x| x.as_str() == method))
            .await
    }

    /// Wait for a response with this status (for this CSeq method).
    pub async fn wait_response(&mut self, code: u16, method: &str, ms: u64) -> Option<Message> {
        self.wait_for(ms, |m| {
            m.status() == Some(code)
                && m.header(&HeaderName::CSeq)
                    .is_some_and(|c| c.ends_with(method))
        })
        .await
    }

    /// Wait for any final response to `method`.
    pub async fn wait_final(&mut self, method: &str, ms: u64) -> Option<Message> {
        self.wait_for(ms, |m| {
            m.status().is_some_and(|c| c >= 200)
                && m.header(&HeaderName::CSeq)
                    .is_some_and(|c| c.ends_with(method))
        })
        .await
    }

    /// Answer a request where its top Via says (RFC 3261 §18.2.2), not to our node.
    pub async fn respond(&mut self, req: &Message, code: u16, reason: &str, to_tag: &str) {
        let text = self.answer(req, code, reason, to_tag);
        if !matches!(self.c, Client::Udp(..)) {
            // A connection: responses go back on it (RFC 3261 §18.2.2).
            self.c.send(text.as_bytes()).await;
            return;
        }
        let via = sipmesh::sip::header::Via::parse(req.values(&HeaderName::Via)[0]).unwrap();
        let host = via.received().unwrap_or(&via.host).to_string();
        let port = via
            .rport()
            .flatten()
            .and_then(|p| p.parse().ok())
            .or(via.port)
            .unwrap_or(5060);
        let dest: SocketAddr = format!("{host}:{port}").parse().unwrap();
        if let Client::Udp(s, _) = &self.c {
            s.send_to(text.as_bytes(), dest).await.unwrap();
        }
    }

    /// Send text.
    pub async fn send(&mut self, text: &str) {
        self.c.send(text.as_bytes()).await;
    }
}

/// The caller's side of an answered call: what its in-dialog requests need (RFC 3261 §12.1.2).
pub struct CallerLeg {
    /// The call's Call-ID.
    pub call_id: String,
    /// The route set: the 2xx's Record-Route, reversed.
    pub routes: Vec<String>,
    /// The caller's From (with its tag).
    pub from: String,
    /// The callee's To (with its tag).
    pub to: String,
    /// The callee's Contact URI: the remote target.
    pub target: String,
}

impl CallerLeg {
    /// The caller's leg from the 2xx to its INVITE `call_id`.
    pub fn of_answer(ok: &Message, call_id: &str) -> CallerLeg {
        CallerLeg {
            call_id: call_id.to_string(),
            routes: hvals(ok, &HeaderName::RecordRoute)
                .into_iter()
                .rev()
                .collect(),
            from: ok.header(&HeaderName::From).unwrap().to_string(),
            to: ok.header(&HeaderName::To).unwrap().to_string(),
            target: uri_of(&hvals(ok, &HeaderName::Contact)[0]),
        }
    }

    /// An in-dialog request of the caller `ua`, along the route set.
    pub fn request(&self, ua: &Ua, method: &str, cseq: u32) -> String {
        ua.in_dialog(
            method,
            &self.target,
            &self.routes,
            &self.from,
            &self.to,
            &self.call_id,
            cseq,
        )
    }
}

/// `caller` (password `password`) calls `callee`'s user; the callee answers 200 (To tag
/// `tag`), retransmitting it until the caller has it as a UAS does (RFC 3261 §13.3.1.4: from
/// T1, doubling), and the caller ACKs. The call stays up; returns the caller's leg.
pub async fn answered_call(
    caller: &mut Ua,
    password: &str,
    callee: &mut Ua,
    tag: &str,
) -> CallerLeg {
    let call_id = format!("{}@{}", token(), caller.user);
    let callee_user = callee.user.clone();
    invite_with_auth(caller, &callee_user, password, &call_id, "atag").await;
    let Some(inv) = callee.wait_request("INVITE", 5000).await else {
        let r = caller.wait_final("INVITE", 100).await;
        panic!(
            "the callee does not ring; the caller got {:?}",
            r.map(|m| m.start)
        );
    };
    let answer = callee.answer(&inv, 200, "OK", tag);
    let mut ok = None;
    let mut t = 500;
    for _ in 0..6 {
        callee.send(&answer).await;
        ok = caller.wait_response(200, "INVITE", t).await;
        if ok.is_some() {
            break;
        }
        t = (t * 2).min(4000);
    }
    let leg = CallerLeg::of_answer(&ok.expect("answered"), &call_id);
    caller.send(&leg.request(caller, "ACK", 2)).await;
    leg
}

/// An [`answered_call`] hung up by the caller; returns the time from the first INVITE to the
/// caller's 200 and ACK (the digest challenge included).
pub async fn call_and_hang_up(
    caller: &mut Ua,
    password: &str,
    callee: &mut Ua,
    tag: &str,
) -> Duration {
    let started = std::time::Instant::now();
    let leg = answered_call(caller, password, callee, tag).await;
    let setup = started.elapsed();
    assert!(
        callee.wait_request("ACK", 5000).await.is_some(),
        "the ACK reaches the callee"
    );
    caller.send(&leg.request(caller, "BYE", 3)).await;
    let bye = callee
        .wait_request("BYE", 5000)
        .await
        .expect("the callee gets the BYE");
    callee.send(&callee.answer(&bye, 200, "OK", tag)).await;
    assert!(
        caller.wait_response(200, "BYE", 5000).await.is_some(),
        "the caller gets the BYE's 200"
    );
    setup
}

/// Send an INVITE from `caller` to `to`, answering the 407 with the caller's `password`;
/// returns the authenticated INVITE as sent (for the ACK of its final answer).
pub async fn invite_with_auth(
    caller: &mut Ua,
    to: &str,
    password: &str,
    call_id: &str,
    tag: &str,
) -> Message {
    let first = caller.invite(to, call_id, tag, 1, None);
    caller.send(&first).await;
    let challenge = caller
        .wait_final("INVITE", 5000)
        .await
        .expect("a challenge");
    assert_eq!(challenge.status(), Some(407), "{:?}", challenge.start);
    let sent = Message::parse(first.as_bytes(), true).unwrap();
    caller
        .c
        .send(&sipmesh::sip::request::ack_for(&sent, &challenge))
        .await;
    let uri = sent.request_uri().unwrap().to_string();
    let auth = digest(
        &challenge,
        &HeaderName::Other("proxy-authenticate".into()),
        &caller.user,
        password,
        "INVITE",
        &uri,
        1,
    );
    let second = caller.invite(to, call_id, tag, 2, Some(&auth));
    caller.send(&second).await;
    Message::parse(second.as_bytes(), true).unwrap()
}

/// The SIPp binary; the test script installs it, so its absence is an error, not a skip.
pub fn sipp() -> &'static str {
    let ok = std::process::Command::new("sipp")
        .arg("-v")
        .output()
        .is_ok();
    assert!(
        ok,
        "sipp not found: run ./scripts/test.sh (it installs Debian's sip-tester)"
    );
    "sipp"
}

/// Free local port for a SIPp process (UDP and TCP).
pub fn free_port() -> u16 {
    loop {
        let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = u.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

pub fn scenario(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("bench/scenarios")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

pub async fn run_sipp(dir: &Path, args: &[String]) -> std::process::Output {
    tokio::process::Command::new(sipp())
        .current_dir(dir)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .await
        .expect("run sipp")
}

pub fn errors_in(dir: &Path) -> String {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with("_errors.log"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
        .chars()
        .take(3000)
        .collect()
}

/// Register `user` at `node` with SIPp (bench/scenarios/reg.xml) over `t` ("u1", "t1"), its
/// contact `contact_hp` (`IP:PORT`, e.g. a SIPp UAS's); panics with SIPp's errors if it fails.
pub async fn sipp_register(
    dir: &std::path::Path,
    user: &str,
    password: &str,
    node: SocketAddr,
    t: &str,
    contact_hp: &str,
) {
    let inf = dir.join(format!("{user}.csv"));
    std::fs::write(
        &inf,
        format!("SEQUENTIAL\n{user};[authentication username={user} password={password}]\n"),
    )
    .unwrap();
    let s = |x: &str| x.to_string();
    let out = run_sipp(
        dir,
        &[
            s("-sf"),
            scenario("reg.xml"),
            s("-inf"),
            inf.to_string_lossy().into_owned(),
            s("-m"),
            s("1"),
            s("-i"),
            s("127.0.0.1"),
            s("-t"),
            s(t),
            s("-key"),
            s("contact_hp"),
            s(contact_hp),
            s("-nostdin"),
            s("-timeout"),
            s("30s"),
            s("-timeout_error"),
            s("-trace_err"),
            node.to_string(),
        ],
    )
    .await;
    assert!(
        out.status.success(),
        "registering {user} failed: {}",
        errors_in(dir)
    );
}
