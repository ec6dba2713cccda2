//! One sipmesh node: its keyspace on sled, its mesh peer, its SIP server (registrar, proxy).
//!
//! - [`dispatch`]: every message from the transports is validated, matched to a transaction and
//!   handed to the registrar or the proxy.
//! - [`internode`]: the messages nodes send each other over the mesh (SIP, listings).
//! - [`load`]: proxy assignment — load published, least-loaded nodes for 302 and bootstrap.
//! - [`failover`]: the custodian of a dead node's dialogs.
//! - [`bans`]: bans made by any node's throttle apply on every node.
//! - [`credential`]: a renewed membership credential is used without a restart.

pub(crate) mod bans;
pub(crate) mod credential;
pub(crate) mod dispatch;
pub(crate) mod failover;
pub(crate) mod internode;
pub(crate) mod load;
pub(crate) mod revocations;
pub mod rights;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use sipmesh_net::shutdown::{Background, Shutdown};
use sipmesh_net::{AppMessage as MeshMessage, Consistency, Mesh, MeshConfig};
use sipmesh_storage::{Keyspace, KeyspaceConfig, Mutation, SyncPolicy};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::call::auth::Authenticator;
use crate::call::dialog::{Dialogs, Listed, Selection};
use crate::call::flow_token::NodeId;
use crate::call::policy::{Policy, PolicyConfig};
use crate::call::proxy::{Proxy, ProxyConfig};
use crate::call::registrar::{Registrar, RegistrarConfig};
use crate::call::secret::MeshSecret;
use crate::call::throttle::{Throttle, ThrottleConfig};
use crate::call::users::Users;
use crate::call::Context;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::node::dispatch::Dispatcher;
use crate::node::internode::{
    seal, AppMessage, Internode, Members, DATAGRAM_MAGIC, DATAGRAM_MAX_SIP, DIALOGS_PAGE_MAX,
    FORWARD_MAX_SIP, USERS_PAGE_MAX,
};
use crate::sip::address::OwnNames;
use crate::sip::flow::StreamKind;
use crate::sip::transaction::Transactions;
use crate::sip::transport::{SendError, Transport, TransportLimits};
use crate::tables::{self, MESH};

/// Run keyspace work (a listing's scan) on the blocking pool: off the async workers and off
/// the loop that serves other nodes.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| sipmesh_storage::Error::Engine(e.to_string()).into())
}

/// Members a mesh-wide listing asks at once.
const ASK_AT_ONCE: usize = 16;

/// A page of a mesh-wide dialog listing ([`Node::list_dialogs`]).
#[derive(Debug, Clone)]
pub struct DialogsPage {
    /// The dialogs, by id.
    pub dialogs: Vec<Listed>,
    /// The id the next page starts after; `None`: this was the last page.
    pub next: Option<String>,
}

/// A page of a mesh-wide user listing ([`Node::list_users`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsersPage {
    /// Names, in token order.
    pub users: Vec<String>,
    /// The user the next page starts after; `None`: this was the last page.
    pub next: Option<String>,
}

/// Everything a node is configured with.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Where the keyspace, node key and generation live.
    pub data_dir: PathBuf,
    /// The mesh settings (listen addresses, seeds, replication factor, timings).
    pub mesh: MeshConfig,
    /// The keyspace's sync policy.
    pub sync: SyncPolicy,
    /// sled's page cache, in bytes.
    pub cache_bytes: u64,
    /// How long a tombstone is kept at least; then it is purged once every replica of its
    /// partition holds it.
    pub tombstone_grace: Duration,
    /// SIP address (UDP and TCP).
    pub sip_listen: SocketAddr,
    /// The SIP address phones and other nodes reach (`host[:port]`, a hostname or an IP), when
    /// it is not the bound one: bound to 0.0.0.0, or behind a NAT. Required for 0.0.0.0.
    pub sip_advertise: Option<String>,
    /// SIP over TLS (RFC 3261 §26); needs `tls`.
    pub sip_tls_listen: Option<SocketAddr>,
    /// SIP over WebSocket (RFC 7118).
    pub sip_ws_listen: Option<SocketAddr>,
    /// SIP over secure WebSocket (RFC 7118); needs `tls`.
    pub sip_wss_listen: Option<SocketAddr>,
    /// The certificate and key for TLS and WSS (PEM files, reloaded when they change).
    pub tls: Option<crate::sip::tls::TlsFiles>,
    /// The admin API's address, published to the mesh (bound and served by
    /// [`crate::ops::launch`]; `None`: no admin API).
    pub http_listen: Option<SocketAddr>,
    /// The digest realm of the mesh.
    pub realm: String,
    /// Whether INVITEs from users are challenged (407).
    pub auth_invites: bool,
    /// Registrations (flows) this node takes before redirecting new clients.
    pub capacity: u32,
    /// Registration intervals.
    pub registrar: RegistrarConfig,
    /// Bearer token for the admin API (required when it is not on loopback).
    pub admin_token: Option<String>,
    /// Transport limits.
    pub limits: TransportLimits,
    /// Answer UDP requests at their source port even without `rport` (for clients behind NAT).
    pub force_rport: bool,
    /// How long a dialog stays in the keyspace without in-dialog traffic.
    pub dialog_ttl: Duration,
    /// How long the custodian of a dead node waits before force-closing its dialogs.
    pub dialog_grace: Duration,
    /// How long a call lasts before its dialog is written to the keyspace (shorter calls
    /// write nothing).
    pub dialog_write_after: Duration,
    /// Timer C: how long a ringing INVITE branch waits for an answer before it is cancelled
    /// and the caller gets 408 (RFC 3261 §16.6 step 11: above 3 minutes; tests use less).
    pub timer_c: Duration,
    /// The smallest session interval a call may ask for (RFC 4028 Min-SE, seconds): 90, the
    /// RFC's floor; tests use less. A dialog not refreshed within its session interval is
    /// forgotten, so a call whose parties died expires on time.
    pub min_se: u64,
    /// The routing policy (domains, trunk, caps, challenged methods).
    pub policy: PolicyConfig,
    /// Rate limits and bans.
    pub throttle: ThrottleConfig,
    /// Run with a p2p listener beyond loopback and no mesh key (warned at every start).
    pub insecure_open_mesh: bool,
    /// The file this node's membership credential came from (`--credential`): checked every
    /// 2 s, and a renewed credential written there is used without a restart.
    pub credential_file: Option<PathBuf>,
    /// The digest algorithms challenges offer, in order (MD5 alone by default: many phones
    /// give up on a response that names an algorithm they do not know).
    pub digest_algorithms: Vec<crate::sip::digest::Algorithm>,
}

impl NodeConfig {
    /// Defaults for a node keeping its files in `data_dir`, on loopback with OS-chosen ports.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        let data_dir = data_dir.into();
        NodeConfig {
            mesh: MeshConfig::new(data_dir.clone()),
            data_dir,
            sync: SyncPolicy::default(),
            cache_bytes: sipmesh_storage::DEFAULT_CACHE_BYTES,
            tombstone_grace: Duration::from_secs(3_600),
            sip_listen: "127.0.0.1:0".parse().expect("valid"),
            sip_advertise: None,
            sip_tls_listen: None,
            sip_ws_listen: None,
            sip_wss_listen: None,
            tls: None,
            http_listen: Some("127.0.0.1:0".parse().expect("valid")),
            realm: "sipmesh".into(),
            auth_invites: true,
            capacity: 100_000,
            registrar: RegistrarConfig::default(),
            admin_token: None,
            limits: TransportLimits::default(),
            force_rport: false,
            dialog_ttl: crate::call::dialog::DEFAULT_DIALOG_TTL,
            dialog_grace: Duration::from_secs(30),
            dialog_write_after: crate::call::dialog::DEFAULT_WRITE_AFTER,
            timer_c: crate::sip::transaction::timers::C,
            min_se: crate::call::dialog::MIN_SE,
            policy: PolicyConfig::default(),
            throttle: ThrottleConfig::default(),
            insecure_open_mesh: false,
            credential_file: None,
            digest_algorithms: vec![crate::sip::digest::Algorithm::Md5],
        }
    }
}

/// A running node. Cheap to clone.
#[derive(Clone)]
pub struct Node {
    /// The mesh peer (which holds the keyspace).
    pub mesh: Mesh,
    /// The user store.
    pub(crate) users: Arc<Users>,
    /// The dispatcher (and through it the registrar).
    pub(crate) dispatcher: Arc<Dispatcher>,
    /// The SIP transports.
    pub(crate) transport: Arc<Transport>,
    /// The proxy (and its dialogs).
    pub(crate) proxy: Arc<Proxy>,
    /// Counters.
    pub(crate) metrics: Arc<Metrics>,
    /// Rate limits and bans.
    pub(crate) throttle: Arc<Throttle>,
    /// The configuration.
    pub(crate) config: Arc<NodeConfig>,
    /// The node's background loops.
    background: Arc<Background>,
    /// The SIP address it advertises (`host:port`).
    advertised: String,
    /// The IP address and port other nodes send SIP to.
    mesh_sip: SocketAddr,
    /// Told when a decommission finished.
    decommissioned: Arc<tokio::sync::Notify>,
}

const SECRET_KEY: &[u8] = b"nonce_secret";
/// How often the TLS certificate files are checked for a change.
const TLS_RELOAD_EVERY: Duration = Duration::from_secs(2);

/// The node's certificate, loaded before anything listens (an error names the file).
fn load_tls(config: &NodeConfig) -> Result<Option<Arc<crate::sip::tls::Tls>>> {
    let needs_tls = config.sip_tls_listen.is_some() || config.sip_wss_listen.is_some();
    match (&config.tls, needs_tls) {
        (Some(files), _) => Ok(Some(Arc::new(
            crate::sip::tls::Tls::load(files.clone()).map_err(|e| Error::Config(e.to_string()))?,
        ))),
        (None, true) => Err(Error::Config(
            "--sip-tls-listen and --sip-wss-listen need a certificate: --tls-cert FILE \
             --tls-key FILE"
                .into(),
        )),
        (None, false) => Ok(None),
    }
}

/// Start the TLS, WS and WSS listeners the configuration asks for.
async fn listen_streams(
    config: &NodeConfig,
    transport: &Arc<Transport>,
    tls: &Option<Arc<crate::sip::tls::Tls>>,
) -> Result<()> {
    let io = |flag: &str, addr: SocketAddr| {
        let what = format!("cannot listen for SIP on {addr} ({flag})");
        move |source| Error::Io { what, source }
    };
    if let (Some(addr), Some(tls)) = (config.sip_tls_listen, tls) {
        transport
            .listen_tls(addr, tls.clone())
            .await
            .map_err(io("--sip-tls-listen", addr))?;
    }
    if let Some(addr) = config.sip_ws_listen {
        transport
            .listen_ws(addr, None)
            .await
            .map_err(io("--sip-ws-listen", addr))?;
    }
    if let (Some(addr), Some(tls)) = (config.sip_wss_listen, tls) {
        transport
            .listen_ws(addr, Some(tls.clone()))
            .await
            .map_err(io("--sip-wss-listen", addr))?;
    }
    Ok(())
}
/// How often the mesh-wide nonce secret is re-read (concurrent first starts converge on one).
const SECRET_REFRESH: Duration = Duration::from_secs(10);
/// Reads of the same secret after which the mesh is taken to agree on it.
const SECRET_SETTLED_AFTER: u32 = 6;
/// How often the secret is re-read once settled.
const SECRET_REFRESH_SETTLED: Duration = Duration::from_secs(300);

async fn read_secret(mesh: &Mesh) -> Result<Option<Vec<u8>>> {
    let p = mesh.read(MESH, SECRET_KEY, Consistency::Quorum).await?;
    Ok(p.rows
        .first()
        .and_then(|r| r.get("value"))
        .map(|v| v.to_vec()))
}

/// The mesh-wide nonce secret: read it, or create it if this is the mesh's first node.
async fn mesh_secret(mesh: &Mesh, has_seeds: bool) -> Vec<u8> {
    // A restarted replica has the secret on disk: use it at once (the refresh loop adopts a
    // newer one from the mesh), so a node that sees no majority yet still starts.
    if let Ok(Some(row)) = mesh.keyspace().read_row(MESH, SECRET_KEY, b"") {
        if let Some(v) = row.get("value") {
            return v.to_vec();
        }
    }
    // A node that knew a ring waits for it as a joining node waits for its seed.
    let has_seeds = has_seeds || mesh.members().len() > 1;
    if has_seeds {
        // Let membership find the seed first, so a joining node adopts the mesh's secret.
        for _ in 0..100 {
            if mesh.members().len() > 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    for _ in 0..60 {
        match read_secret(mesh).await {
            Ok(Some(s)) => return s,
            Ok(None) => {
                let secret: [u8; 32] = rand::random();
                let m = Mutation::new(MESH, SECRET_KEY.to_vec()).upsert(
                    b"",
                    [("value", secret.to_vec())],
                    mesh.keyspace().now(),
                    None,
                );
                if mesh.write(m, Consistency::Quorum).await.is_ok() {
                    if let Ok(Some(s)) = read_secret(mesh).await {
                        return s;
                    }
                }
            }
            Err(e) => warn!(error = %e, "cannot read the mesh secret yet"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    warn!("using a node-local nonce secret until the mesh's can be read");
    rand::random::<[u8; 32]>().to_vec()
}

/// Record members going up, down and leaving in the node's recent events.
async fn record_member_events(node: Node, mut shutdown: sipmesh_net::shutdown::Shutdown) {
    use crate::events::Kind;
    use sipmesh_net::MemberEvent;
    let mut events = node.mesh.events();
    loop {
        let ev = tokio::select! {
            _ = shutdown.wait() => return,
            ev = events.recv() => match ev {
                Ok(ev) => ev,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => return,
            },
        };
        let (kind, peer, what) = match ev {
            MemberEvent::Up(p) => (Kind::Up, p, "is up"),
            MemberEvent::Down(p) => (Kind::Down, p, "is down"),
            MemberEvent::Left(p) => (Kind::Left, p, "left the ring"),
        };
        let sip = node.mesh.tag(&peer, "sip").unwrap_or_default();
        node.metrics
            .events
            .push(kind, format!("{peer} {what} {sip}").trim_end().to_string());
    }
}

impl Node {
    /// Open the keyspace, join the mesh, and start SIP.
    pub async fn start(config: NodeConfig) -> Result<Node> {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| Error::Io {
            what: format!("cannot create data dir {}", config.data_dir.display()),
            source,
        })?;
        let tls = load_tls(&config)?;
        let keyspace = open_keyspace(&config).await?;
        let metrics = Arc::new(Metrics::default());
        let transport = Transport::bind(config.sip_listen, config.limits.clone(), metrics.clone())
            .await
            .map_err(|source| Error::Io {
                what: format!("cannot listen for SIP on {}", config.sip_listen),
                source,
            })?;
        let sip_addr = transport.local_addr();
        let (mut names, mesh_sip) =
            OwnNames::for_node(sip_addr, config.sip_advertise.as_deref()).map_err(Error::Config)?;
        listen_streams(&config, &transport, &tls).await?;
        let mut mesh_config = config.mesh.clone();
        let listeners = transport.listeners();
        for (kind, addr) in [
            (StreamKind::Tls, listeners.tls),
            (StreamKind::Ws, listeners.ws),
            (StreamKind::Wss, listeners.wss),
        ] {
            if let Some(addr) = addr {
                names = names.with_listener(kind, addr.port());
                if let Some(adv) = names.advertised_for(Some(kind)) {
                    mesh_config
                        .tags
                        .insert(format!("sip_{}", kind.param()), adv.to_string());
                }
            }
        }
        mesh_config
            .tags
            .insert("sip".into(), format!("sip:{}", names.advertised()));
        mesh_config
            .tags
            .insert("sip_ip".into(), mesh_sip.to_string());
        mesh_config
            .tags
            .insert("capacity".into(), config.capacity.to_string());
        let (mesh, app_rx) = Mesh::start(mesh_config, keyspace).await?;
        mesh.set_write_rights(Box::new(rights::check));
        let background = Arc::new(Background::default());
        let users = Arc::new(Users::new(mesh.clone(), &config.realm));
        let secret = Arc::new(MeshSecret::new(
            mesh_secret(&mesh, !config.mesh.bootstrap.is_empty()).await,
        ));
        let auth = Arc::new(
            Authenticator::new(&config.realm, secret.clone())
                .for_node(NodeId::of(&mesh.peer_id()))
                .algorithms(&config.digest_algorithms),
        );
        {
            let (mesh, secret) = (mesh.clone(), secret.clone());
            background.spawn("secret refresh", |s| refresh_secret(mesh, secret, s));
        }
        let ctx = Arc::new(Context {
            transactions: Transactions::new(transport.clone(), config.timer_c),
            transport: transport.clone(),
            mesh: mesh.clone(),
            users: users.clone(),
            auth,
            metrics: metrics.clone(),
            secret,
            policy: Arc::new(Policy::new(config.policy.clone(), &config.realm)),
            throttle: Arc::new(Throttle::new(config.throttle.clone())),
            names,
        });
        let registrar = Arc::new(Registrar::new(
            ctx.clone(),
            config.registrar.clone(),
            config.capacity as u64,
        ));
        let dialogs = Arc::new(Dialogs::new(
            mesh.clone(),
            config.dialog_ttl,
            config.dialog_write_after,
        ));
        let proxy = Proxy::new(
            ctx.clone(),
            dialogs,
            ProxyConfig {
                auth_invites: config.auth_invites,
                min_se: config.min_se,
            },
        );
        if let Some(tls) = tls {
            let events = metrics.clone();
            background.spawn("tls reload", |s| {
                tls.watch(
                    TLS_RELOAD_EVERY,
                    move |r| {
                        let what = match r {
                            Ok(()) => "TLS certificate reloaded".to_string(),
                            Err(e) => format!("TLS certificate not reloaded: {e}"),
                        };
                        events.events.push(crate::events::Kind::Admin, what);
                    },
                    s,
                )
            });
        }
        mesh.set_datagram_sender(membership_datagrams(
            &mesh,
            Arc::downgrade(&transport),
            ctx.secret.clone(),
        ));
        let members = Arc::new(Members::new(mesh.clone()));
        transport.set_mesh_sender(
            mesh_sender(
                mesh.clone(),
                members,
                ctx.secret.clone(),
                (Arc::downgrade(&transport), ctx.metrics.clone()),
            ),
            DATAGRAM_MAGIC,
        );
        background.spawn("failover", |s| {
            crate::node::failover::watch(mesh.clone(), proxy.clone(), config.dialog_grace, s)
        });
        let dispatcher = Dispatcher::new(proxy.clone(), registrar, &ctx, config.force_rport);
        mesh.set_app_handler(internode_handler(&dispatcher));
        let handler: Arc<dyn crate::sip::transport::Handler> = dispatcher.clone();
        transport.start(&handler);
        let node = Node {
            mesh,
            users,
            dispatcher,
            transport,
            proxy,
            metrics,
            throttle: ctx.throttle.clone(),
            config: Arc::new(config),
            background,
            advertised: ctx.names.advertised().to_string(),
            mesh_sip,
            decommissioned: Arc::new(tokio::sync::Notify::new()),
        };
        node.background
            .spawn("internode", |s| serve_internode(node.clone(), app_rx, s));
        node.background
            .spawn("load publisher", |s| load::publish(node.clone(), s));
        node.background.spawn("sweeper", |s| sweep(node.clone(), s));
        node.background
            .spawn("member events", |s| record_member_events(node.clone(), s));
        node.background
            .spawn("mesh bans", |s| bans::sync(node.clone(), s));
        node.background
            .spawn("revocations", |s| revocations::sync(node.clone(), s));
        if let Some(path) = node.config.credential_file.clone() {
            node.background.spawn("credential renewal", |s| {
                credential::watch(node.clone(), path, s)
            });
        }
        info!(peer_id = %node.mesh.peer_id(), sip = %sip_addr, http = ?node.config.http_listen, "node started");
        Ok(node)
    }

    /// Leave the mesh and stop.
    pub async fn shutdown(&self, within: Duration) {
        self.mesh.leave(within.min(Duration::from_secs(3))).await;
        self.stop().await;
    }

    /// Stop the node's loops and the mesh's, and flush the keyspace.
    async fn stop(&self) {
        self.background.stop(Duration::from_secs(2)).await;
        self.mesh.shutdown().await;
        let _ = self.keyspace().flush();
    }

    /// Run a loop in the node's background (stopped with the node).
    pub(crate) fn spawn<F, Fut>(&self, name: &'static str, f: F)
    where
        F: FnOnce(Shutdown) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        self.background.spawn(name, f);
    }

    /// This node's load, whose sum is what capacity is measured against: (bindings it owns,
    /// dialogs it is on).
    pub(crate) fn load(&self) -> (u64, u64) {
        (
            self.dispatcher.registrar().load(),
            self.proxy.dialogs().count() as u64,
        )
    }

    /// Stop in place (SIGTERM: `systemctl stop` or `restart`, an upgrade, a backup): the node
    /// keeps its ring place and its data, so nothing moves. It refuses new registrations (503 +
    /// Retry-After), closes its client flows (phones move to their other flows or register
    /// elsewhere), tells the members it is going down (they mark it down at once and keep hints
    /// for it) and stops; what it acknowledged is on disk (group commit). Leaving the ring is
    /// [`Node::decommission`].
    pub async fn stop_in_place(&self) {
        self.dispatcher.registrar().drain();
        self.transport.close_all();
        self.mesh.announce_stop(Duration::from_secs(1)).await;
        self.stop().await;
        info!("stopped in place");
    }

    /// Leave gracefully: refuse new registrations (503 + Retry-After), give every replica to
    /// its next holder and wait for them (up to 7 s), close client flows so phones fail over,
    /// tell the mesh it left, stop. Returns (partitions handed over, failed transfers).
    pub async fn leave_gracefully(&self) -> (usize, usize) {
        self.leave_within(Duration::from_secs(7)).await
    }

    /// Decommission (an operator's request through the admin API): leave gracefully, giving
    /// the handover up to `within`, then tell [`Node::decommissioned`] waiters.
    pub fn decommission(&self, within: Duration) {
        let node = self.clone();
        self.metrics.events.push(
            crate::events::Kind::Admin,
            "decommissioning: handing every replica over, then leaving",
        );
        tokio::spawn(async move {
            // Let the admin API answer first.
            tokio::time::sleep(Duration::from_millis(200)).await;
            let (partitions, failed) = node.leave_within(within).await;
            info!(partitions, failed, "decommissioned");
            // One waiter (the process); the permit is kept if it is not waiting yet.
            node.decommissioned.notify_one();
        });
    }

    /// Resolves once a decommission finished (the process should exit).
    pub async fn decommissioned(&self) {
        self.decommissioned.notified().await
    }

    async fn leave_within(&self, within: Duration) -> (usize, usize) {
        self.dispatcher.registrar().drain();
        let handed = tokio::time::timeout(within, self.mesh.handover())
            .await
            .unwrap_or((0, usize::MAX));
        self.transport.close_all();
        self.mesh.leave(Duration::from_secs(1)).await;
        self.stop().await;
        info!(partitions = handed.0, failed = handed.1, "left the mesh");
        handed
    }

    /// The local keyspace.
    pub fn keyspace(&self) -> &Keyspace {
        self.mesh.keyspace()
    }

    /// The SIP address (bound).
    pub fn sip_addr(&self) -> SocketAddr {
        self.transport.local_addr()
    }

    /// The TLS, WS and WSS listeners' bound addresses (those the node has).
    pub fn sip_listeners(&self) -> crate::sip::transport::Listeners {
        self.transport.listeners()
    }

    /// The SIP address phones and other nodes reach (`host:port`): `--sip-advertise`, or the
    /// bound address.
    pub fn sip_advertised(&self) -> &str {
        &self.advertised
    }

    /// The IP address and port other nodes send SIP to.
    pub(crate) fn mesh_sip(&self) -> SocketAddr {
        self.mesh_sip
    }

    /// The public name of the mesh secret this node seals datagrams with.
    pub(crate) fn secret_key_id(&self) -> String {
        self.dispatcher.secret.key_id()
    }

    /// The admin API's address, if it runs.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.config.http_listen
    }

    /// The admin API's bearer token.
    pub fn admin_token(&self) -> Option<&str> {
        self.config.admin_token.as_deref()
    }

    /// Rate limits and bans of the SIP edge.
    pub fn throttle(&self) -> &Arc<Throttle> {
        &self.throttle
    }

    /// The digest realm.
    pub fn realm(&self) -> &str {
        &self.config.realm
    }

    /// Add (or replace) a user of the mesh, written at QUORUM.
    pub async fn add_user(&self, user: &str, password: &str) -> Result<()> {
        self.users.add(user, password, None).await
    }

    /// The mutation that stores a user, signed by this node under enrollment: what
    /// [`Node::add_user`] writes, not written.
    pub fn user_mutation(&self, user: &str, password: &str) -> Result<sipmesh_storage::Mutation> {
        self.users.mutation(user, password, None)
    }

    /// Whether the registrar here would authenticate `user`: its row is readable and, under
    /// enrollment, signed by a member with the admin role that is not revoked.
    pub async fn knows_user(&self, user: &str) -> Result<bool> {
        Ok(self.users.get_cached(user).await?.is_some())
    }

    /// Revoke a member mesh-wide (the revocation must be signed by the mesh's enrollment key);
    /// returns the revoked peer.
    pub async fn revoke(
        &self,
        revocation: &sipmesh_net::Revocation,
    ) -> Result<sipmesh_net::PeerId> {
        revocations::publish(self, revocation).await
    }

    /// Live SIP transactions: server, client, and pending timers.
    pub(crate) fn transactions_alive(&self) -> serde_json::Value {
        let (server, client, timers) = self.dispatcher.transactions().counts();
        serde_json::json!({ "server": server, "client": client, "timers": timers })
    }

    /// Open SIP TCP connections.
    pub fn tcp_connections(&self) -> usize {
        self.transport.connections()
    }

    /// A counter of this node by name, as on `/metrics` without the `sipmesh_` prefix.
    pub fn counter(&self, name: &str) -> Option<u64> {
        self.metrics.get(name)
    }

    /// The other members that are up: whom a mesh-wide listing asks.
    fn up_peers(&self) -> Vec<sipmesh_net::PeerId> {
        self.mesh
            .members()
            .into_iter()
            .filter(|m| !m.local && m.state == sipmesh_net::MemberState::Up)
            .map(|m| m.peer_id)
            .collect()
    }

    /// Ask every other up member, [`ASK_AT_ONCE`] at a time; their answers decoded as they
    /// come (`None`: not one this version knows).
    fn ask_up_members(
        &self,
        ask: Vec<u8>,
    ) -> impl futures::Stream<Item = Result<Option<AppMessage>>> + '_ {
        futures::stream::iter(self.up_peers())
            .map(move |peer| {
                let ask = ask.clone();
                async move {
                    let answer = self
                        .mesh
                        .request_app(peer, ask, Duration::from_secs(5))
                        .await?;
                    Ok(AppMessage::decode(&answer))
                }
            })
            .buffer_unordered(ASK_AT_ONCE)
    }

    /// A page of the mesh's users: the first `limit` (at most [`USERS_PAGE_MAX`]) in token
    /// order after user `after`, from the union of what each up member holds, without the
    /// users deleted since; and the user the next page starts after (`None`: this was the
    /// last). Each member sends at most `limit` names, so a page costs the same however many
    /// users the mesh has. A page may hold fewer than `limit` users and still have a next.
    pub(crate) async fn list_users(
        &self,
        after: Option<String>,
        limit: usize,
    ) -> Result<UsersPage> {
        let limit = limit.clamp(1, USERS_PAGE_MAX);
        let users = self.users.clone();
        let from = after.clone();
        let (local, mut more) =
            blocking(move || users.local_users(from.as_deref(), limit)).await??;
        let token = |u: &str| sipmesh_storage::token_of(u.as_bytes());
        let mut all: std::collections::BTreeSet<(u64, String)> =
            local.into_iter().map(|u| (token(&u), u)).collect();
        let ask = AppMessage::ListUsersAfter {
            after,
            limit: limit as u32,
        }
        .encode();
        let mut answers = std::pin::pin!(self.ask_up_members(ask));
        while let Some(answer) = answers.next().await {
            if let Some(AppMessage::UsersPage { users, more: m }) = answer? {
                more |= m;
                all.extend(users.into_iter().take(limit).map(|u| (token(&u), u)));
                // The first `limit` of the union so far: what falls off could never be on
                // the page. Each member's own next names come after its last, so after the
                // page's last too.
                while all.len() > limit {
                    all.pop_last();
                    more = true;
                }
            }
        }
        let page: Vec<String> = all.into_iter().take(limit).map(|(_, u)| u).collect();
        let next = if more { page.last().cloned() } else { None };
        // Drop users deleted since (a partition can outlive its row until compaction).
        let found: Vec<bool> = futures::stream::iter(page.clone())
            .map(|u| {
                let users = self.users.clone();
                async move { users.get(&u).await.map(|r| r.is_some()) }
            })
            .buffered(16)
            .try_collect()
            .await?;
        let users = page
            .into_iter()
            .zip(found)
            .filter_map(|(u, f)| f.then_some(u))
            .collect();
        Ok(UsersPage { users, next })
    }

    /// A page of the mesh's dialogs: the first `limit` (at most [`DIALOGS_PAGE_MAX`]) by id
    /// after `after`, from the union of what each up member knows (one entry per dialog,
    /// stored if any copy is); and the id the next page starts after (`None`: the last page).
    /// Each member sends at most `limit`, so no answer grows with the calls a node carries.
    pub(crate) async fn list_dialogs(
        &self,
        after: Option<String>,
        limit: usize,
    ) -> Result<DialogsPage> {
        let limit = limit.clamp(1, DIALOGS_PAGE_MAX);
        let dialogs = self.proxy.dialogs().clone();
        let from = after.clone();
        let (local, more) = blocking(move || dialogs.local_page(from.as_deref(), limit)).await?;
        let mut page = Selection::new(after.as_deref(), limit);
        if more {
            page.more_after();
        }
        for l in local {
            page.add(l);
        }
        let ask = AppMessage::ListDialogsAfter {
            after: after.clone(),
            limit: limit as u32,
        }
        .encode();
        let mut answers = std::pin::pin!(self.ask_up_members(ask));
        while let Some(answer) = answers.next().await {
            if let Some(AppMessage::DialogsPage { dialogs, more }) = answer? {
                if more {
                    page.more_after();
                }
                for l in dialogs.into_iter().take(limit) {
                    page.add(l);
                }
            }
        }
        let (dialogs, more) = page.finish();
        let next = if more {
            dialogs.last().map(|l| l.dialog.id.clone())
        } else {
            None
        };
        Ok(DialogsPage { dialogs, next })
    }

    /// The dialog with this id, from this node or the first up member that knows of it.
    async fn find_dialog(&self, id: &str) -> Result<Option<Listed>> {
        let dialogs = self.proxy.dialogs().clone();
        let wanted = id.to_string();
        let here = blocking(move || dialogs.local_find(&wanted)).await?;
        if here.is_some() {
            return Ok(here);
        }
        let ask = AppMessage::FindDialog(id.to_string()).encode();
        let mut answers = std::pin::pin!(self.ask_up_members(ask));
        while let Some(answer) = answers.next().await {
            if let Some(AppMessage::Found(Some(l))) = answer? {
                return Ok(Some(*l));
            }
        }
        Ok(None)
    }

    /// End a dialog for an operator: BYE to both parties (`Reason: ... ended by the operator`)
    /// and its record removed, by the node holding it (asked over the mesh when it is another
    /// up member). `Ok(false)`: no dialog with this id in the mesh.
    pub(crate) async fn end_dialog(&self, id: &str) -> Result<bool> {
        let Some(listed) = self.find_dialog(id).await? else {
            return Ok(false);
        };
        let me = self.mesh.peer_id();
        if let Some(holder) = listed
            .dialog
            .nodes
            .first()
            .copied()
            .filter(|h| *h != me && self.mesh.is_up(h))
        {
            let answer = self
                .mesh
                .request_app(
                    holder,
                    AppMessage::EndDialog(id.to_string()).encode(),
                    Duration::from_secs(10),
                )
                .await?;
            if matches!(AppMessage::decode(&answer), Some(AppMessage::Ended(true))) {
                return Ok(true);
            }
        }
        self.end_here(&listed.dialog).await;
        Ok(true)
    }

    async fn end_here(&self, d: &crate::call::dialog::Dialog) {
        crate::node::failover::force_close_because(
            &self.proxy,
            d,
            "SIP;cause=200;text=\"ended by the operator\"",
        )
        .await;
        self.metrics.events.push(
            crate::events::Kind::Admin,
            format!(
                "ended dialog {} ({} to {})",
                d.call_id, d.caller_uri, d.callee_uri
            ),
        );
    }

    /// The contact URIs bound to an AOR (its user part), read at QUORUM.
    pub async fn contacts(&self, aor: &str) -> Result<Vec<String>> {
        let bindings = crate::call::location::lookup(&self.mesh, aor, Consistency::Quorum).await?;
        Ok(bindings.into_iter().map(|b| b.contact).collect())
    }

    /// Bindings this node owns.
    pub(crate) fn owned_bindings(&self) -> u64 {
        self.dispatcher.registrar().load()
    }
}

/// How often dialogs old enough are written and expired bindings forgotten.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Every how many sweeps the memory a burst left is given back ([`crate::slack`]).
const RELEASE_EVERY_SWEEPS: u64 = 10;

/// Write dialogs that lasted long enough; forget bindings whose phones stopped refreshing;
/// now and then give back what a burst left (transactions, nonces, cached users).
async fn sweep(node: Node, mut shutdown: Shutdown) {
    for round in 1u64.. {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tokio::time::sleep(SWEEP_EVERY) => {}
        }
        node.proxy.dialogs().sweep().await;
        node.dispatcher.registrar().sweep().await;
        if round % RELEASE_EVERY_SWEEPS == 0 {
            let ctx = node.proxy.context();
            ctx.transactions.release_slack();
            ctx.auth.release_slack(node.mesh.keyspace().wall_ms());
            node.users.release_slack();
        }
    }
}

/// Serve what other nodes send: SIP to deliver, listings to answer.
async fn serve_internode(node: Node, mut rx: mpsc::Receiver<MeshMessage>, mut shutdown: Shutdown) {
    loop {
        let msg = tokio::select! {
            _ = shutdown.wait() => return,
            msg = rx.recv() => match msg {
                Some(m) => m,
                None => return,
            },
        };
        let answer = match AppMessage::decode(&msg.payload) {
            Some(AppMessage::ListUsers) => AppMessage::Users(
                node.users
                    .local_users(None, USERS_PAGE_MAX)
                    .map(|(u, _)| u)
                    .unwrap_or_default(),
            ),
            Some(AppMessage::ListUsersAfter { after, limit }) => {
                // A scan of the keyspace: off this loop and off the async workers.
                let users = node.users.clone();
                tokio::spawn(async move {
                    let limit = (limit as usize).clamp(1, USERS_PAGE_MAX);
                    let page = blocking(move || users.local_users(after.as_deref(), limit)).await;
                    let (users, more) = match page.and_then(|r| r) {
                        Ok(p) => p,
                        Err(e) => {
                            warn!(error = %e, "cannot list users");
                            return;
                        }
                    };
                    if let Some(reply) = msg.reply {
                        let _ = reply.send(AppMessage::UsersPage { users, more }.encode());
                    }
                });
                continue;
            }
            Some(AppMessage::ListDialogs) => {
                AppMessage::Dialogs(node.proxy.dialogs().local_page(None, DIALOGS_PAGE_MAX).0)
            }
            Some(AppMessage::ListDialogsAfter { after, limit }) => {
                // Reads the stored records: off this loop and off the async workers.
                let dialogs = node.proxy.dialogs().clone();
                tokio::spawn(async move {
                    let limit = (limit as usize).clamp(1, DIALOGS_PAGE_MAX);
                    let page = blocking(move || dialogs.local_page(after.as_deref(), limit)).await;
                    if let (Ok((dialogs, more)), Some(reply)) = (page, msg.reply) {
                        let _ = reply.send(AppMessage::DialogsPage { dialogs, more }.encode());
                    }
                });
                continue;
            }
            Some(AppMessage::FindDialog(id)) => {
                let dialogs = node.proxy.dialogs().clone();
                tokio::spawn(async move {
                    let found = blocking(move || dialogs.local_find(&id))
                        .await
                        .ok()
                        .flatten();
                    if let Some(reply) = msg.reply {
                        let _ = reply.send(AppMessage::Found(found.map(Box::new)).encode());
                    }
                });
                continue;
            }
            Some(AppMessage::EndDialog(id)) => {
                // Ending sends BYEs: off this loop.
                let node = node.clone();
                tokio::spawn(async move {
                    let dialogs = node.proxy.dialogs().clone();
                    let wanted = id.clone();
                    let found = blocking(move || dialogs.local_find(&wanted))
                        .await
                        .ok()
                        .flatten();
                    if let Some(l) = &found {
                        node.end_here(&l.dialog).await;
                    }
                    if let Some(reply) = msg.reply {
                        let _ = reply.send(AppMessage::Ended(found.is_some()).encode());
                    }
                });
                continue;
            }
            _ => {
                warn!(from = %msg.from, "unknown application message");
                continue;
            }
        };
        if let Some(reply) = msg.reply {
            let _ = reply.send(answer.encode());
        }
    }
}

/// SIP to other nodes: bytes for one of its flows (it relays them), or a message for it to
/// handle. A message that fits one packet goes as a sealed datagram to the node's SIP port;
/// a larger one rides the mesh's streams, in order per node. To a node SWIM reaches only
/// through others (a cut between the two), the datagram goes through one of them
/// ([`Internode::Forward`]): the node still gets it from its origin. To a node not heard from
/// directly for a while, a ping goes along ([`Mesh::before_send`]): a new cut shows before
/// SWIM's round of probes comes to that node.
fn mesh_sender(
    mesh: Mesh,
    members: Arc<Members>,
    secret: Arc<MeshSecret>,
    (transport, metrics): (std::sync::Weak<Transport>, Arc<Metrics>),
) -> crate::sip::transport::MeshSender {
    let me = NodeId::of(&mesh.peer_id());
    Box::new(move |node, target, bytes| {
        let transport = transport.upgrade().ok_or(SendError::Closed)?;
        let udp = |addr: SocketAddr, datagram: Vec<u8>| {
            transport.send(&crate::sip::flow::Flow::Udp(addr), Arc::from(datagram))
        };
        let around = |frame: &Internode<'_>| {
            let (relay, datagram) = forward(&mesh, &members, &secret, me, node, frame)?;
            tracing::debug!(%node, %relay, "SIP routed around a cut");
            crate::metrics::inc(&metrics.sip_routed_around);
            Some(udp(relay, datagram))
        };
        if mesh.before_send(node) {
            if let Some(addr) = members.sip_addr(node) {
                let ping = seal(&Internode::Ping, me, mesh.keyspace().wall_ms(), &secret);
                if udp(addr, ping).is_err() {
                    mesh.mark_unreachable(node);
                }
            }
        }
        let frame = match target {
            Some(flow) => Internode::Deliver {
                flow: flow.clone(),
                bytes: &bytes,
            },
            None => Internode::Sip { bytes: &bytes },
        };
        if !mesh.reached_directly(node) && bytes.len() <= FORWARD_MAX_SIP {
            if let Some(sent) = around(&frame) {
                return sent;
            }
        }
        if bytes.len() <= DATAGRAM_MAX_SIP {
            if let Some(addr) = members.sip_addr(node) {
                let now = mesh.keyspace().wall_ms();
                return match udp(addr, seal(&frame, me, now, &secret)) {
                    Ok(()) => Ok(()),
                    // This host refuses to send there (a firewall rule, no route): a cut.
                    Err(e) => {
                        mesh.mark_unreachable(node);
                        around(&frame).unwrap_or(Err(e))
                    }
                };
            }
        }
        mesh.try_send_app(*node, frame.encode())
            .map_err(|_| SendError::Full)
    })
}

/// `frame` for `node` sealed, inside a datagram to one of the members nearest it that this
/// node reaches directly (chosen at random, so a retransmission may take the other); `None`
/// when there is none.
fn forward(
    mesh: &Mesh,
    members: &Members,
    secret: &MeshSecret,
    me: NodeId,
    node: &sipmesh_net::PeerId,
    frame: &Internode<'_>,
) -> Option<(SocketAddr, Vec<u8>)> {
    let relays: Vec<SocketAddr> = mesh
        .relays_for(node)
        .iter()
        .filter_map(|r| members.sip_addr(r))
        .collect();
    if relays.is_empty() {
        tracing::debug!(%node, candidates = ?mesh.relays_for(node), "no member to send through");
        return None;
    }
    let relay = relays[rand::random::<usize>() % relays.len()];
    let now = mesh.keyspace().wall_ms();
    let inner = seal(frame, me, now, secret);
    let outer = Internode::Forward {
        to: NodeId::of(node),
        datagram: &inner,
    };
    Some((relay, seal(&outer, me, now, secret)))
}

/// Membership's one-way messages go as sealed datagrams from this node's SIP port to the
/// member's, when the member publishes an address and the same mesh secret. Holds the
/// transport weakly and not the mesh: the mesh keeps this sender.
fn membership_datagrams(
    mesh: &Mesh,
    transport: std::sync::Weak<Transport>,
    secret: Arc<MeshSecret>,
) -> sipmesh_net::DatagramSender {
    let me = NodeId::of(&mesh.peer_id());
    let keyspace = mesh.keyspace().clone();
    Box::new(move |_peer, tag, frame| {
        let Some(addr) = internode::datagram_addr(tag) else {
            return false;
        };
        if tag(internode::KEY_ID_TAG).as_deref() != Some(secret.key_id().as_str()) {
            return false;
        }
        let Some(transport) = transport.upgrade() else {
            return false;
        };
        let sealed = seal(
            &Internode::Mesh { bytes: frame },
            me,
            keyspace.wall_ms(),
            &secret,
        );
        transport
            .send(&crate::sip::flow::Flow::Udp(addr), Arc::from(sealed))
            .is_ok()
    })
}

/// SIP from other nodes, taken on the task that read it from the stream. Holds the node's
/// parts weakly: the mesh must not keep a stopped node alive.
fn internode_handler(dispatcher: &Arc<Dispatcher>) -> sipmesh_net::AppHandler {
    let dispatcher = Arc::downgrade(dispatcher);
    Box::new(move |from, frame| match Internode::decode(&frame) {
        Some(frame) => {
            if let Some(d) = dispatcher.upgrade() {
                d.on_internode(from, frame);
            }
        }
        None => warn!(%from, "not a SIP frame of this version; dropped"),
    })
}

/// Open the keyspace on sled, off the async workers.
async fn open_keyspace(config: &NodeConfig) -> Result<Keyspace> {
    let dir = config.data_dir.join("keyspace");
    let ks_config = KeyspaceConfig {
        sync: config.sync,
        cache_bytes: config.cache_bytes,
        tombstone_grace_ms: config.tombstone_grace.as_millis() as u64,
        ..KeyspaceConfig::default()
    };
    tokio::task::spawn_blocking(move || Keyspace::open_sled(&dir, tables::all(), ks_config))
        .await
        .map_err(|e| Error::Config(format!("keyspace open task failed: {e}")))?
        .map_err(Error::from)
}

/// Re-read the mesh-wide nonce secret now and then (concurrent first starts converge on one).
/// Every [`SECRET_REFRESH`] while the mesh may still be converging on one secret (until it
/// read the same one [`SECRET_SETTLED_AFTER`] times in a row), then every
/// [`SECRET_REFRESH_SETTLED`]: every node reads the same partition, so its replicas serve the
/// whole mesh, and must not be asked often.
async fn refresh_secret(mesh: Mesh, secret: Arc<MeshSecret>, mut shutdown: Shutdown) {
    let mut same = 0u32;
    loop {
        let every = if same >= SECRET_SETTLED_AFTER {
            SECRET_REFRESH_SETTLED
        } else {
            SECRET_REFRESH
        };
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tokio::time::sleep(every) => {}
        }
        if let Ok(Some(s)) = read_secret(&mesh).await {
            same = if secret.set(s) { 0 } else { same + 1 };
        }
    }
}
