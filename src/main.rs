//! The `sipmesh` command: run a node, a local development mesh, or administer a mesh.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand};
use sipmesh::ops::config::FileConfig;
use sipmesh::{Node, NodeConfig};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A peer-to-peer mesh of stateful SIP proxy/registrar supernodes.
#[derive(Parser)]
#[command(name = "sipmesh", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// The admin API's bearer token, for `user` and `status` (printed by `sipmesh dev`; a
    /// node keeps its own in DATA_DIR/admin-token).
    #[arg(
        long,
        global = true,
        env = "SIPMESH_ADMIN_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    /// More logs: -v info, -vv debug (RUST_LOG, when set, wins). `node` logs info by default,
    /// `dev` only warnings.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node.
    Node(Box<NodeArgs>),
    /// Run a local mesh on loopback with demo users; prints how to connect. Ctrl-C stops it.
    Dev {
        /// How many nodes.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
    },
    /// Manage users through a node's admin API.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Operate on the mesh's membership.
    Mesh {
        #[command(subcommand)]
        command: MeshCommand,
    },
    /// Show a node's view of the mesh: members, their load, registrations and dialogs.
    Status {
        /// The node's admin URL.
        #[arg(long, default_value = "http://127.0.0.1:8080", env = "SIPMESH_NODE")]
        node: String,
        /// Refresh every N seconds until Ctrl-C.
        #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "2")]
        watch: Option<u64>,
    },
    /// List or lift the throttle's bans.
    Bans {
        #[command(subcommand)]
        command: BanCommand,
    },
    /// List or end active calls.
    Dialogs {
        #[command(subcommand)]
        command: DialogCommand,
    },
}

#[derive(Subcommand)]
enum BanCommand {
    /// Sources banned now, why, and for how long.
    List {
        /// The node's admin URL.
        #[arg(long, default_value = "http://127.0.0.1:8080", env = "SIPMESH_NODE")]
        node: String,
    },
    /// Lift the ban on a source address.
    Lift {
        /// The banned IP address.
        ip: String,
        /// The node's admin URL.
        #[arg(long, default_value = "http://127.0.0.1:8080", env = "SIPMESH_NODE")]
        node: String,
    },
}

#[derive(Subcommand)]
enum DialogCommand {
    /// Every active dialog of the mesh.
    List {
        /// The node's admin URL.
        #[arg(long, default_value = "http://127.0.0.1:8080", env = "SIPMESH_NODE")]
        node: String,
    },
    /// End a dialog: BYE to both parties (`Reason: ... ended by the operator`).
    End {
        /// The dialog id, as `sipmesh dialogs list` shows it.
        id: String,
        /// The node's admin URL.
        #[arg(long, default_value = "http://127.0.0.1:8080", env = "SIPMESH_NODE")]
        node: String,
    },
}

#[derive(Subcommand)]
enum MeshCommand {
    /// Generate a mesh key (IPFS swarm.key format) for --mesh-key: every node of a mesh needs
    /// the same one.
    Keygen {
        /// Write it here (owner-only permissions; refuses to overwrite).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Generate the mesh's enrollment key (signs credentials and revocations). Keep it off the
    /// nodes, with the operators; print its public key with `mesh invite`.
    EnrollmentKeygen {
        /// Write it here (owner-only permissions; refuses to overwrite).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Print a node's peer id (creating its node key in DATA_DIR if it has none yet), to invite it.
    Id {
        /// The node's data directory.
        #[arg(long, env = "SIPMESH_DATA_DIR")]
        data_dir: PathBuf,
    },
    /// Issue a node's membership credential (its join token), for `sipmesh node --credential`.
    Invite {
        /// The node's peer id (`sipmesh mesh id`).
        peer_id: String,
        /// The enrollment key file (`sipmesh mesh enrollment-keygen`).
        #[arg(long, value_name = "FILE")]
        enrollment_key: PathBuf,
        /// Its roles: edge (a SIP node writing only its own rows), or edge,admin (its admin API
        /// may also change users).
        #[arg(long, default_value = "edge")]
        roles: String,
        /// Days until it expires.
        #[arg(long, default_value_t = 365)]
        days: u64,
        /// Write it to this file (else print it).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Revoke a member, mesh-wide: every node disconnects it for good.
    Revoke {
        /// The member's peer id.
        peer_id: String,
        /// The enrollment key file.
        #[arg(long, value_name = "FILE")]
        enrollment_key: PathBuf,
        /// The admin URL of any node of the mesh (it stores the revocation at QUORUM).
        #[arg(long, default_value = "http://127.0.0.1:8080", env = "SIPMESH_NODE")]
        node: String,
    },
    /// Decommission the node: it hands every replica over, leaves the ring and stops.
    Decommission {
        /// Longest the handover may take, in seconds.
        #[arg(long, default_value_t = 300)]
        within: u64,
        /// The node's admin URL.
        #[arg(long, default_value = "http://127.0.0.1:8080", env = "SIPMESH_NODE")]
        node: String,
    },
    /// Remove a dead member from the ring (its data is re-replicated from the other copies).
    Remove {
        /// The member's peer id (see `sipmesh status`).
        peer_id: String,
        /// Remove even while as many members are down as the replication factor (some data may
        /// have had its last copies on them): only for members gone for good.
        #[arg(long)]
        force: bool,
        /// The node's admin URL.
        #[arg(long, default_value = "http://127.0.0.1:8080", env = "SIPMESH_NODE")]
        node: String,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Add (or replace) a user.
    Add {
        /// The user name.
        user: String,
        /// The password (only its HA1 hashes are stored).
        #[arg(long)]
        password: String,
        /// The node's admin URL.
        #[arg(long, default_value = "http://127.0.0.1:8080", env = "SIPMESH_NODE")]
        node: String,
    },
    /// Remove a user.
    Remove {
        /// The user name.
        user: String,
        /// The node's admin URL.
        #[arg(long, default_value = "http://127.0.0.1:8080", env = "SIPMESH_NODE")]
        node: String,
    },
    /// List every user of the mesh.
    List {
        /// The node's admin URL.
        #[arg(long, default_value = "http://127.0.0.1:8080", env = "SIPMESH_NODE")]
        node: String,
    },
    /// Import users from a CSV file of `user,password` lines.
    Import {
        /// The CSV file.
        file: PathBuf,
        /// The node's admin URL.
        #[arg(long, default_value = "http://127.0.0.1:8080", env = "SIPMESH_NODE")]
        node: String,
    },
}

#[derive(clap::Args)]
struct NodeArgs {
    /// Directory of the node's keyspace, key and generation.
    #[arg(long, env = "SIPMESH_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// SIP address, UDP and TCP (IP:PORT).
    #[arg(long, env = "SIPMESH_SIP_LISTEN")]
    sip_listen: Option<String>,
    /// The SIP address phones and other nodes reach, HOST[:PORT] (a hostname or an IP), when
    /// it is not the bound one: required with --sip-listen 0.0.0.0:PORT, or behind a NAT.
    #[arg(long, env = "SIPMESH_SIP_ADVERTISE", value_name = "HOST[:PORT]")]
    sip_advertise: Option<String>,
    /// SIP over TLS (IP:PORT, 5061 by convention; RFC 3261 §26). Needs --tls-cert and --tls-key.
    #[arg(long, env = "SIPMESH_SIP_TLS_LISTEN", value_name = "IP:PORT")]
    sip_tls_listen: Option<String>,
    /// SIP over WebSocket (IP:PORT; RFC 7118, subprotocol "sip"): browser phones.
    #[arg(long, env = "SIPMESH_SIP_WS_LISTEN", value_name = "IP:PORT")]
    sip_ws_listen: Option<String>,
    /// SIP over secure WebSocket (IP:PORT), with the TLS certificate.
    #[arg(long, env = "SIPMESH_SIP_WSS_LISTEN", value_name = "IP:PORT")]
    sip_wss_listen: Option<String>,
    /// The TLS certificate chain (PEM), reloaded when the file changes.
    #[arg(long, env = "SIPMESH_TLS_CERT", value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// The TLS private key (PEM), reloaded when the file changes.
    #[arg(long, env = "SIPMESH_TLS_KEY", value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// libp2p listen multiaddr, e.g. /ip4/0.0.0.0/tcp/4001.
    #[arg(long, env = "SIPMESH_P2P_LISTEN")]
    p2p_listen: Option<String>,
    /// Admin HTTP address (IP:PORT).
    #[arg(long, env = "SIPMESH_HTTP_LISTEN")]
    http_listen: Option<String>,
    /// A seed node's multiaddr (with or without /p2p/<PeerId>); repeatable.
    #[arg(long)]
    bootstrap: Vec<String>,
    /// Digest realm of the mesh.
    #[arg(long, env = "SIPMESH_REALM")]
    realm: Option<String>,
    /// Copies of each partition.
    #[arg(long, env = "SIPMESH_REPLICATION_FACTOR")]
    replication_factor: Option<usize>,
    /// Registrations this node accepts before redirecting new clients.
    #[arg(long, env = "SIPMESH_CAPACITY")]
    capacity: Option<u32>,
    /// Whether INVITEs are challenged (true|false).
    #[arg(long, env = "SIPMESH_AUTH_INVITES")]
    auth_invites: Option<bool>,
    /// Private-network key file (IPFS swarm.key format): only nodes with it can connect.
    #[arg(long, env = "SIPMESH_MESH_KEY")]
    mesh_key: Option<PathBuf>,
    /// A TOML config file; flags override it.
    #[arg(long, env = "SIPMESH_CONFIG")]
    config: Option<PathBuf>,
    /// Bearer token of the admin API (default: generated into DATA_DIR/admin-token).
    #[arg(long, env = "SIPMESH_ADMIN_TOKEN")]
    admin_token: Option<String>,
    /// This node's membership credential (`sipmesh mesh invite`); default DATA_DIR/member.cred
    /// when that file exists. With it, only nodes holding credentials of the same enrollment
    /// key are members. Checked every 2 s: a renewed credential moved over it is used
    /// without a restart.
    #[arg(long, env = "SIPMESH_CREDENTIAL", value_name = "FILE")]
    credential: Option<PathBuf>,
    /// Let a node whose p2p listener is beyond loopback run without --mesh-key (anyone who can
    /// reach it can join, read and write the keyspace). Warns at every start.
    #[arg(long)]
    insecure_open_mesh: bool,
    /// A domain of the mesh besides the realm and the members' SIP addresses; repeatable.
    #[arg(long = "domain")]
    domains: Vec<String>,
    /// A source address never throttled (a trusted gateway, a load tester); repeatable.
    #[arg(long = "trusted-source")]
    trusted_sources: Vec<String>,
    /// Digest algorithms offered in challenges, in order: MD5 (default: what every phone
    /// knows), SHA-256,MD5 (RFC 8760 clients pick SHA-256), or SHA-256 alone.
    #[arg(long = "digest-algorithms", value_name = "LIST")]
    digest_algorithms: Option<String>,
    /// The smallest session interval a call may ask for, in seconds (RFC 4028 Min-SE; at
    /// least 90, the default). A call not refreshed within its interval is forgotten.
    #[arg(long = "min-se", value_name = "SECONDS")]
    min_se: Option<u64>,
}

fn parse_sock(flag: &str, v: &str) -> Result<SocketAddr> {
    v.parse()
        .map_err(|e| anyhow!("{flag} {v:?} is not IP:PORT ({e})"))
}

fn parse_multiaddr(flag: &str, v: &str) -> Result<sipmesh_net::Multiaddr> {
    v.parse().map_err(|e| {
        anyhow!("{flag} {v:?} is not a multiaddr ({e}); example: /ip4/127.0.0.1/tcp/4001")
    })
}

/// The TLS and WebSocket listeners and the certificate, checked together: a TLS or WSS
/// listener needs both files, and the files need a listener.
fn stream_config(
    c: &mut NodeConfig,
    listens: [(&str, Option<String>); 3],
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
) -> Result<()> {
    let mut addrs = [None; 3];
    for (i, (flag, v)) in listens.iter().enumerate() {
        if let Some(v) = v {
            addrs[i] = Some(parse_sock(flag, v)?);
        }
    }
    [c.sip_tls_listen, c.sip_ws_listen, c.sip_wss_listen] = addrs;
    c.tls = match (cert, key) {
        (Some(cert), Some(key)) => Some(sipmesh::sip::tls::TlsFiles { cert, key }),
        (None, None) => None,
        (Some(_), None) => bail!("--tls-cert needs --tls-key"),
        (None, Some(_)) => bail!("--tls-key needs --tls-cert"),
    };
    if c.tls.is_none() {
        for (flag, addr) in [
            ("--sip-tls-listen", c.sip_tls_listen),
            ("--sip-wss-listen", c.sip_wss_listen),
        ] {
            if addr.is_some() {
                bail!("{flag} needs a certificate: add --tls-cert FILE --tls-key FILE");
            }
        }
    }
    Ok(())
}

/// The keyspace's page cache, in MiB: at least enough for sled to work, at most 64 GiB.
const MIN_CACHE_MIB: u64 = 8;
const MAX_CACHE_MIB: u64 = 65_536;

fn node_config(args: NodeArgs) -> Result<NodeConfig> {
    let file = match &args.config {
        Some(p) => FileConfig::load(p)?,
        None => FileConfig::default(),
    };
    let data_dir = args
        .data_dir
        .or(file.data_dir.clone())
        .ok_or_else(|| anyhow!("missing --data-dir (or data_dir in --config)"))?;
    let mut c = NodeConfig::new(data_dir);
    security_config(
        &mut c,
        &args.domains,
        &args.trusted_sources,
        args.digest_algorithms.as_deref(),
        &file,
    )?;
    if let Some(se) = args.min_se.or(file.min_se) {
        if se < sipmesh::MIN_SE {
            bail!(
                "--min-se {se}: RFC 4028 allows no Min-SE below {} seconds",
                sipmesh::MIN_SE
            );
        }
        c.min_se = se;
    }
    let sip = args
        .sip_listen
        .or(file.sip_listen)
        .ok_or_else(|| anyhow!("missing --sip-listen (or sip_listen in --config)"))?;
    c.sip_listen = parse_sock("--sip-listen", &sip)?;
    c.sip_advertise = args.sip_advertise.or(file.sip_advertise.clone());
    if let Some(a) = &c.sip_advertise {
        if sipmesh::sip::address::HostPort::parse(a, c.sip_listen.port()).is_none() {
            bail!("--sip-advertise {a:?} is not HOST[:PORT] (a hostname or an IP address)");
        }
    }
    if c.sip_listen.ip().is_unspecified() && c.sip_advertise.is_none() {
        bail!(
            "--sip-listen {} binds every address: add --sip-advertise HOST[:PORT], the address \
             phones and other nodes reach",
            c.sip_listen
        );
    }
    stream_config(
        &mut c,
        [
            (
                "--sip-tls-listen",
                args.sip_tls_listen.or(file.sip_tls_listen.clone()),
            ),
            (
                "--sip-ws-listen",
                args.sip_ws_listen.or(file.sip_ws_listen.clone()),
            ),
            (
                "--sip-wss-listen",
                args.sip_wss_listen.or(file.sip_wss_listen.clone()),
            ),
        ],
        args.tls_cert.or(file.tls_cert.clone()),
        args.tls_key.or(file.tls_key.clone()),
    )?;
    let p2p = args
        .p2p_listen
        .or(file.p2p_listen)
        .ok_or_else(|| anyhow!("missing --p2p-listen (or p2p_listen in --config)"))?;
    c.mesh.listen = vec![parse_multiaddr("--p2p-listen", &p2p)?];
    let http = args
        .http_listen
        .or(file.http_listen)
        .ok_or_else(|| anyhow!("missing --http-listen (or http_listen in --config)"))?;
    c.http_listen = Some(parse_sock("--http-listen", &http)?);
    let seeds = if args.bootstrap.is_empty() {
        file.bootstrap.unwrap_or_default()
    } else {
        args.bootstrap
    };
    c.mesh.bootstrap = seeds
        .iter()
        .map(|s| parse_multiaddr("--bootstrap", s))
        .collect::<Result<_>>()?;
    if let Some(r) = args.realm.or(file.realm) {
        if r.is_empty() || r.contains('"') {
            bail!("--realm {r:?} must be non-empty and without quotes");
        }
        c.realm = r;
    }
    if let Some(rf) = args.replication_factor.or(file.replication_factor) {
        if rf == 0 || rf > 15 {
            bail!("--replication-factor {rf} must be between 1 and 15");
        }
        c.mesh.replication_factor = rf;
    }
    if let Some(cap) = args.capacity.or(file.capacity) {
        c.capacity = cap;
    }
    if let Some(a) = args.auth_invites.or(file.auth_invites) {
        c.auth_invites = a;
    }
    if let Some(k) = args.mesh_key.or(file.mesh_key) {
        c.mesh.mesh_key = Some(sipmesh_net::MeshConfig::read_mesh_key(&k).context("--mesh-key")?);
    }
    let default_credential = c.data_dir.join("member.cred");
    let credential = args
        .credential
        .or(file.credential)
        .or_else(|| default_credential.exists().then_some(default_credential));
    if let Some(path) = credential {
        let cred = sipmesh::ops::enrollment::read_credential(&path).context("--credential")?;
        c.mesh.enrollment = Some(sipmesh_net::Enrollment::Credential(cred));
        c.credential_file = Some(path);
    }
    c.insecure_open_mesh = args.insecure_open_mesh || file.insecure_open_mesh.unwrap_or(false);
    c.admin_token = args.admin_token.or(file.admin_token);
    if c.admin_token.as_deref().is_some_and(|t| t.len() < 16) {
        bail!("--admin-token must be at least 16 characters");
    }

    if let Some(v) = file.min_expires {
        c.registrar.min_expires = v;
    }
    if let Some(v) = file.default_expires {
        c.registrar.default_expires = v;
    }
    if let Some(v) = file.max_expires {
        c.registrar.max_expires = v;
    }
    if c.registrar.min_expires > c.registrar.default_expires
        || c.registrar.default_expires > c.registrar.max_expires
    {
        bail!("config: need min_expires <= default_expires <= max_expires");
    }
    if let Some(secs) = file.tombstone_grace_secs {
        if secs < 60 {
            bail!("config: tombstone_grace_secs = {secs}: at least 60 (a tombstone must outlive the replication of the delete)");
        }
        c.tombstone_grace = std::time::Duration::from_secs(secs);
    }
    if let Some(mib) = file.cache_mib {
        if !(MIN_CACHE_MIB..=MAX_CACHE_MIB).contains(&mib) {
            bail!("config: cache_mib = {mib}: use {MIN_CACHE_MIB} to {MAX_CACHE_MIB} (MiB of RAM for the keyspace's page cache; default 64)");
        }
        c.cache_bytes = mib * 1024 * 1024;
    }
    c.sync = match file.sync.as_deref() {
        None | Some("group-commit") => sipmesh_storage::SyncPolicy::GroupCommit,
        Some("periodic") => sipmesh_storage::SyncPolicy::Periodic { every_ms: 500 },
        Some("sync-before-ack") => sipmesh_storage::SyncPolicy::SyncBeforeAck,
        Some(other) => bail!(
            "config: sync = {other:?}; use \"group-commit\" (default), \"sync-before-ack\" or \"periodic\" (acknowledges before the disk: a kill loses up to 500 ms of writes)"
        ),
    };
    Ok(c)
}

/// The routing policy and throttle settings from flags and the config file.
fn security_config(
    c: &mut NodeConfig,
    domains: &[String],
    trusted: &[String],
    algorithms: Option<&str>,
    file: &FileConfig,
) -> Result<()> {
    let domains = if domains.is_empty() {
        file.domains.clone().unwrap_or_default()
    } else {
        domains.to_vec()
    };
    c.policy.domains = domains;
    let trusted = if trusted.is_empty() {
        file.trusted_sources.clone().unwrap_or_default()
    } else {
        trusted.to_vec()
    };
    c.throttle.trusted = trusted
        .iter()
        .map(|t| {
            t.parse()
                .map_err(|e| anyhow!("--trusted-source {t:?} is not an IP address ({e})"))
        })
        .collect::<Result<_>>()?;
    if let Some(m) = &file.auth_methods {
        c.policy.auth_methods = m.iter().map(|x| x.to_ascii_uppercase()).collect();
    }
    if let Some(n) = file.max_contacts {
        if n == 0 {
            bail!("config: max_contacts must be at least 1");
        }
        c.policy.max_contacts = n;
    }
    if let Some(n) = file.max_branches {
        if n == 0 {
            bail!("config: max_branches must be at least 1");
        }
        c.policy.max_branches = n;
    }
    if let Some(t) = &file.trunk {
        if sipmesh::sip::uri::SipUri::parse(&t.uri).is_err() {
            bail!("config: trunk.uri {:?} is not a SIP URI", t.uri);
        }
        c.policy.trunk = Some(sipmesh::TrunkConfig {
            uri: t.uri.clone(),
            prefixes: t.prefixes.clone(),
            calls_per_minute: t.calls_per_minute.unwrap_or(10),
        });
    }
    if let Some(list) = algorithms.or(file.digest_algorithms.as_deref()) {
        c.digest_algorithms = sipmesh::sip::digest::Algorithm::parse_list(list)
            .map_err(|e| anyhow!("--digest-algorithms {list:?}: {e}"))?;
    }
    let th = &mut c.throttle;
    if let Some(v) = file.rate_limit {
        th.requests_per_window = v;
    }
    if let Some(v) = file.rate_window_secs {
        th.window = Duration::from_secs(v.max(1));
    }
    if let Some(v) = file.ban_secs {
        th.ban = Duration::from_secs(v);
    }
    if let Some(v) = file.auth_failures_per_source {
        th.auth_failures_per_source = v;
    }
    if let Some(v) = file.auth_failures_per_user {
        th.auth_failures_per_user = v;
    }
    if let Some(v) = file.auth_window_secs {
        th.auth_window = Duration::from_secs(v.max(1));
    }
    Ok(())
}

async fn wait_for_shutdown() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("signal handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

async fn run_node(args: NodeArgs) -> Result<()> {
    let config = node_config(args)?;
    let node = sipmesh::ops::launch(config).await?;
    println!("sipmesh node {} up", node.mesh.peer_id());
    println!("  SIP   sip:{} (UDP, TCP)", node.sip_addr());
    let l = node.sip_listeners();
    for (what, addr) in [("TLS  ", l.tls), ("WS   ", l.ws), ("WSS  ", l.wss)] {
        if let Some(a) = addr {
            println!("  {what} {a}");
        }
    }
    if let Some(h) = node.http_addr() {
        println!("  admin http://{h}");
    }
    if let Some(a) = node.mesh.dial_addr() {
        println!("  p2p   {a}");
    }
    tokio::select! {
        _ = wait_for_shutdown() => {
            println!("stopping in place (the ring keeps this node; `sipmesh mesh decommission` leaves it)...");
            node.stop_in_place().await;
            println!("stopped; bye");
        }
        _ = node.decommissioned() => println!("decommissioned: left the ring; bye"),
    }
    Ok(())
}

async fn run_dev(n: usize) -> Result<()> {
    if n == 0 || n > 9 {
        bail!("--nodes {n} must be between 1 and 9");
    }
    let dir = tempfile::Builder::new().prefix("sipmesh-dev-").tempdir()?;
    let token = sipmesh::sip::digest::hex(&rand::random::<[u8; 16]>());
    let mut nodes: Vec<Node> = Vec::new();
    // One self-signed certificate for every dev node (TLS and WSS), for localhost.
    let tls = sipmesh::sip::tls::self_signed(
        &dir.path().join("tls"),
        &["localhost".into(), "127.0.0.1".into()],
    )?;
    for i in 0..n {
        let mut c = NodeConfig::new(dir.path().join(format!("node{i}")));
        c.admin_token = Some(token.clone());
        // A development mesh on loopback: SIPp and softphones on this host are not throttled
        // (other loopback addresses are, so the throttle can be tried).
        c.throttle.trusted = vec![std::net::Ipv4Addr::LOCALHOST.into()];
        c.sip_listen = format!("127.0.0.1:{}", 5060 + 2 * i).parse()?;
        c.sip_tls_listen = Some(format!("127.0.0.1:{}", 5061 + 2 * i).parse()?);
        c.sip_ws_listen = Some(format!("127.0.0.1:{}", 8090 + i).parse()?);
        c.sip_wss_listen = Some(format!("127.0.0.1:{}", 8443 + i).parse()?);
        c.tls = Some(tls.clone());
        c.http_listen = Some(format!("127.0.0.1:{}", 8080 + i).parse()?);
        c.mesh.listen = vec![format!("/ip4/127.0.0.1/tcp/{}", 4001 + i).parse()?];
        c.mesh.initial = true; // a new mesh: nothing to stream
        if let Some(first) = nodes.first() {
            c.mesh.bootstrap = first.mesh.dial_addr().into_iter().collect();
        }
        let node = sipmesh::ops::launch(c).await.with_context(|| {
            format!(
                "starting dev node {i} (are ports {}/udp+tcp, {}, {}, {}, {} and {} free?)",
                5060 + 2 * i,
                5061 + 2 * i,
                8090 + i,
                8443 + i,
                8080 + i,
                4001 + i
            )
        })?;
        nodes.push(node);
    }
    // Wait until every node sees the others, then add the demo users.
    for _ in 0..200 {
        if nodes.iter().all(|x| {
            x.mesh
                .members()
                .iter()
                .filter(|m| m.state == sipmesh_net::MemberState::Up)
                .count()
                == n
        }) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut users = Vec::new();
    for name in ["alice", "bob", "carol"] {
        let pw = format!("{name}-{:06x}", rand::random::<u32>() & 0xFF_FFFF);
        nodes[0]
            .add_user(name, &pw)
            .await
            .with_context(|| format!("adding demo user {name}"))?;
        users.push((name, pw));
    }
    let realm = nodes[0].realm().to_string();
    let http0 = nodes[0]
        .http_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let ports: Vec<String> = nodes
        .iter()
        .enumerate()
        .map(|(i, x)| format!("{} (node {i})", x.sip_addr().port()))
        .collect();
    println!("\nsipmesh dev: {n} nodes on loopback, ready.\n");
    println!("  live mesh page  http://{http0}/");
    println!("  admin token     {token}   (paste it into the page to unlock actions)\n");
    println!("Register a softphone (Linphone, Zoiper, MicroSIP, ...) with any node:");
    println!("  SIP server      127.0.0.1");
    println!("  port            {}", ports.join(", "));
    println!(
        "  transport       UDP or TCP (TLS on port {}, self-signed)",
        nodes[0]
            .sip_listeners()
            .tls
            .map(|a| a.port())
            .unwrap_or_default()
    );
    println!("  domain / realm  127.0.0.1 / {realm}");
    for (u, p) in &users {
        println!("  user {u:6}     password {p}");
    }
    let (u, p) = &users[0];
    println!(
        "  e.g. account sip:{u}@127.0.0.1:{} with password {p}, then call sip:{}@127.0.0.1",
        nodes[0].sip_addr().port(),
        users[1].0
    );
    println!("\nOr in a browser: the phone page of any node, e.g.");
    println!(
        "  http://{http0}/phone?user={u}   (password {p}; SIP over WebSocket to ws://127.0.0.1:{})",
        nodes[0]
            .sip_listeners()
            .ws
            .map(|a| a.port())
            .unwrap_or_default()
    );
    println!("\nOr with SIPp (Debian package sip-tester):");
    println!(
        "  printf 'SEQUENTIAL\\n{u};[authentication username={u} password={p}]\\n' > /tmp/{u}.csv"
    );
    println!("  sipp 127.0.0.1:{} -sf bench/scenarios/reg.xml -inf /tmp/{u}.csv -m 1 -key contact_hp 127.0.0.1:5099 -trace_err", nodes[0].sip_addr().port());
    println!("\nNodes:");
    for (i, node) in nodes.iter().enumerate() {
        let l = node.sip_listeners();
        let port = |a: Option<SocketAddr>| a.map(|a| a.port()).unwrap_or_default();
        println!(
            "  node {i}: SIP sip:{} (UDP+TCP), TLS {}, WS {}, WSS {}  admin http://{}  p2p {}",
            node.sip_addr(),
            port(l.tls),
            port(l.ws),
            port(l.wss),
            node.http_addr().map(|a| a.to_string()).unwrap_or_default(),
            node.mesh
                .dial_addr()
                .map(|a| a.to_string())
                .unwrap_or_default()
        );
    }
    println!(
        "\nstatus: cargo run --release -- status --node http://{http0} --token {token} --watch"
    );
    println!(
        "data in {} (removed on exit). Logs: warnings only; run with -v for more.\nCtrl-C stops the mesh.",
        dir.path().display()
    );
    wait_for_shutdown().await;
    println!("stopping...");
    for node in &nodes {
        node.shutdown(Duration::from_secs(5)).await;
    }
    Ok(())
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(60))
        .build()
}

fn call(
    req: ureq::Request,
    token: Option<&str>,
    body: Option<serde_json::Value>,
) -> Result<serde_json::Value> {
    let req = match token {
        Some(t) => req.set("Authorization", &format!("Bearer {t}")),
        None => req,
    };
    let url = req.url().to_string();
    let result = match body {
        Some(b) => req.send_json(b),
        None => req.call(),
    };
    match result {
        Ok(r) => Ok(r.into_json()?),
        Err(ureq::Error::Status(code, r)) => {
            let v: serde_json::Value = r.into_json().unwrap_or_default();
            let hint = if code == 401 {
                " (pass --token or set SIPMESH_ADMIN_TOKEN; a node keeps its token in DATA_DIR/admin-token)"
            } else {
                ""
            };
            bail!(
                "{url}: HTTP {code}: {}{hint}",
                v.get("error").and_then(|e| e.as_str()).unwrap_or("error")
            )
        }
        Err(e) => {
            bail!("cannot reach the node at {url}: {e} (is `sipmesh node` running? see --node)")
        }
    }
}

fn user_command(cmd: UserCommand, token: Option<&str>) -> Result<()> {
    let a = agent();
    match cmd {
        UserCommand::Add {
            user,
            password,
            node,
        } => {
            call(
                a.post(&format!("{node}/v1/users")),
                token,
                Some(serde_json::json!({"user": user, "password": password})),
            )?;
            println!("added {user}");
        }
        UserCommand::Remove { user, node } => {
            call(a.delete(&format!("{node}/v1/users/{user}")), token, None)?;
            println!("removed {user}");
        }
        UserCommand::List { node } => {
            // Page by page (token order), printed as they come.
            let mut after: Option<String> = None;
            loop {
                let mut url = format!("{node}/v1/users?limit={LIST_PAGE}");
                if let Some(a) = &after {
                    url.push_str(&format!("&after={}", encode_path(a)));
                }
                let v = call(a.get(&url), token, None)?;
                for u in v["users"].as_array().into_iter().flatten() {
                    println!("{}", u.as_str().unwrap_or_default());
                }
                match v["next"].as_str() {
                    Some(n) if after.as_deref() != Some(n) => after = Some(n.to_string()),
                    _ => break,
                }
            }
        }
        UserCommand::Import { file, node } => import(&a, &file, &node, token)?,
    }
    Ok(())
}

/// Users asked for per listing page.
const LIST_PAGE: usize = 1_000;

/// Users sent per import request.
const IMPORT_BATCH: usize = 2_000;

/// Import a CSV of users in batches, with progress on stderr and a summary: added, failed,
/// and the failures by reason.
fn import(a: &ureq::Agent, file: &std::path::Path, node: &str, token: Option<&str>) -> Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let rows =
        sipmesh::ops::admin::parse_import(&text).map_err(|e| anyhow!("{}: {e}", file.display()))?;
    let total = rows.len();
    let started = std::time::Instant::now();
    let (mut added, mut failed) = (0usize, Vec::<String>::new());
    for batch in rows.chunks(IMPORT_BATCH) {
        let csv: String = batch.iter().map(|(u, p)| format!("{u},{p}\n")).collect();
        let v = call(
            a.post(&format!("{node}/v1/users/import")),
            token,
            Some(serde_json::json!({ "csv": csv })),
        );
        match v {
            Ok(v) => {
                added += v["imported"].as_u64().unwrap_or(0) as usize;
                failed.extend(
                    v["failed"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|f| f.as_str().unwrap_or_default().to_string()),
                );
            }
            Err(e) => {
                failed.extend(batch.iter().map(|(u, _)| format!("{u}: {e:#}")));
            }
        }
        let done = added + failed.len();
        let secs = started.elapsed().as_secs_f64();
        eprintln!(
            "imported {done}/{total} ({:.0}%), {} failed, {:.0} users/s",
            100.0 * done as f64 / total.max(1) as f64,
            failed.len(),
            done as f64 / secs.max(0.001)
        );
    }
    println!(
        "added {added} of {total} users in {:.1} s; {} failed",
        started.elapsed().as_secs_f64(),
        failed.len()
    );
    if failed.is_empty() {
        return Ok(());
    }
    // Failures by reason (the text after "user: "), with an example user each.
    let mut reasons: std::collections::BTreeMap<String, (usize, String)> = Default::default();
    for f in &failed {
        let (user, why) = f.split_once(": ").unwrap_or(("?", f));
        let e = reasons
            .entry(why.to_string())
            .or_insert((0, user.to_string()));
        e.0 += 1;
    }
    for (why, (n, example)) in reasons.iter().take(20) {
        println!("  {n:6} failed: {why} (e.g. {example})");
    }
    bail!(
        "{} of {total} users were not added (run the import again: it is idempotent)",
        failed.len()
    )
}

fn status_once(node: &str, token: Option<&str>) -> Result<()> {
    let v = call(agent().get(&format!("{node}/v1/status")), token, None)?;
    let text = |x: &serde_json::Value| x.as_str().unwrap_or_default().to_string();
    println!("node        {}", text(&v["peer_id"]));
    println!("sip         {}", text(&v["sip"]));
    println!("realm       {}", text(&v["realm"]));
    println!(
        "members up  {} of {} in the ring (QUORUM {})",
        v["members_up"],
        v["ring_members"],
        if v["majority"].as_bool().unwrap_or(false) {
            "served"
        } else {
            "UNAVAILABLE: no majority"
        }
    );
    println!("bindings    {} (owned by this node)", v["registrations"]);
    println!("dialogs     {}", v["dialogs"]);
    println!("hints       {} (writes waiting for a replica)", v["hints"]);
    if v["joining"].as_bool().unwrap_or(false) {
        println!("joining     streaming the ranges it will own; it answers no reads for them yet");
    }
    if v["catching_up"].as_bool().unwrap_or(false) {
        println!(
            "sync        catching up: its replicas are being streamed; it reads from a quorum"
        );
    }
    if v["clock_skewed"].as_bool().unwrap_or(false) {
        println!(
            "CLOCK       off the mesh's by {} ms: this node coordinates no reads or writes (check NTP)",
            -v["clock_offset_ms"].as_i64().unwrap_or(0)
        );
    }
    println!(
        "\n  {:52} {:5} {:>16} {:>6} {:>7} {:>4} {:>8}  sip",
        "member", "state", "load/capacity", "regs", "dialogs", "gen", "heard"
    );
    for m in v["members"].as_array().into_iter().flatten() {
        let local = m["local"].as_bool().unwrap_or(false);
        let tag = |k: &str| text(&m["tags"][k]);
        let (regs, dialogs) = if local {
            (v["registrations"].to_string(), v["dialogs"].to_string())
        } else {
            (tag("registrations"), tag("dialogs"))
        };
        let heard = if local {
            "-".to_string()
        } else {
            format!(
                "{:.1}s",
                m["last_heard_ms"].as_u64().unwrap_or(0) as f64 / 1000.0
            )
        };
        println!(
            "{} {:52} {:5} {:>16} {:>6} {:>7} {:>10} {:>8}  {}",
            if local { "*" } else { " " },
            text(&m["peer_id"]),
            text(&m["state"]).to_lowercase(),
            format!("{}/{}", tag("load"), tag("capacity")),
            regs,
            dialogs,
            m["generation"],
            heard,
            tag("sip")
        );
    }
    Ok(())
}

fn status(node: &str, token: Option<&str>, watch: Option<u64>) -> Result<()> {
    let Some(every) = watch else {
        return status_once(node, token);
    };
    if every == 0 {
        bail!("--watch 0: give the refresh interval in seconds (1 or more)");
    }
    loop {
        // Clear the screen and go home, as `watch` does.
        print!("\x1b[2J\x1b[H");
        println!("every {every}s: {node}/v1/status  (Ctrl-C stops)\n");
        if let Err(e) = status_once(node, token) {
            println!("{e:#}");
        }
        std::thread::sleep(Duration::from_secs(every));
    }
}

fn bans_command(cmd: BanCommand, token: Option<&str>) -> Result<()> {
    match cmd {
        BanCommand::List { node } => {
            let v = call(agent().get(&format!("{node}/v1/bans")), token, None)?;
            let bans = v["bans"].as_array().cloned().unwrap_or_default();
            if bans.is_empty() {
                println!("no bans");
            }
            for b in bans {
                println!(
                    "{:40} {:24} {} s left",
                    b["source"].as_str().unwrap_or_default(),
                    b["reason"].as_str().unwrap_or_default(),
                    b["expires_in"]
                );
            }
        }
        BanCommand::Lift { ip, node } => {
            if ip.parse::<std::net::IpAddr>().is_err() {
                bail!("{ip:?} is not an IP address");
            }
            call(agent().delete(&format!("{node}/v1/bans/{ip}")), token, None)?;
            println!("lifted the ban on {ip}");
        }
    }
    Ok(())
}

fn dialogs_command(cmd: DialogCommand, token: Option<&str>) -> Result<()> {
    match cmd {
        DialogCommand::List { node } => {
            // Page by page (by id), printed as they come.
            let (mut after, mut listed) = (None::<String>, 0usize);
            loop {
                let mut url = format!("{node}/v1/dialogs?limit={LIST_PAGE}");
                if let Some(a) = &after {
                    url.push_str(&format!("&after={}", encode_path(a)));
                }
                let v = call(agent().get(&url), token, None)?;
                for d in v["dialogs"].as_array().into_iter().flatten() {
                    listed += 1;
                    println!(
                        "{}\n    {} -> {}  since {} ms  stored {}",
                        d["id"].as_str().unwrap_or_default(),
                        d["caller_uri"].as_str().unwrap_or_default(),
                        d["callee_uri"].as_str().unwrap_or_default(),
                        d["started_ms"],
                        d["stored"]
                    );
                }
                match v["next"].as_str() {
                    Some(n) if after.as_deref() != Some(n) => after = Some(n.to_string()),
                    _ => break,
                }
            }
            if listed == 0 {
                println!("no dialogs");
            }
        }
        DialogCommand::End { id, node } => {
            let url = format!("{node}/v1/dialogs/{}", encode_path(&id));
            call(agent().delete(&url), token, None)?;
            println!("ended {id}");
        }
    }
    Ok(())
}

/// Percent-encode a path segment or query value (dialog ids hold `;` and `@`).
fn encode_path(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn parse_peer(peer_id: &str) -> Result<sipmesh_net::PeerId> {
    peer_id
        .parse()
        .map_err(|_| anyhow!("{peer_id:?} is not a peer id (see `sipmesh mesh id`)"))
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn mesh_command(cmd: MeshCommand, token: Option<&str>) -> Result<()> {
    match cmd {
        MeshCommand::Keygen { out } => {
            let key = sipmesh::sip::digest::hex(&rand::random::<[u8; 32]>());
            let text = format!("/key/swarm/psk/1.0.0/\n/base16/\n{key}\n");
            let mut f = std::fs::OpenOptions::new();
            f.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut f, 0o600);
            let mut file = f.open(&out).with_context(|| {
                format!("cannot create {} (it must not exist yet)", out.display())
            })?;
            std::io::Write::write_all(&mut file, text.as_bytes())?;
            file.sync_all()?;
            sipmesh_net::MeshConfig::read_mesh_key(&out).context("the written key")?;
            println!(
                "wrote a mesh key to {}: copy it to every node over a secure channel and pass --mesh-key {}",
                out.display(),
                out.display()
            );
        }
        MeshCommand::EnrollmentKeygen { out } => {
            let key = sipmesh_net::EnrollmentKey::generate();
            sipmesh::ops::enrollment::write_enrollment_key(&out, &key)?;
            println!(
                "wrote the enrollment key to {} (public key {}): keep it with the operators, \
                 off the nodes; `sipmesh mesh invite PEER_ID --enrollment-key {}` admits a node",
                out.display(),
                sipmesh::ops::enrollment::public_text(&key.public()),
                out.display()
            );
        }
        MeshCommand::Id { data_dir } => {
            let key = sipmesh_net::load_or_create_key(&data_dir)?;
            println!("{}", key.public().to_peer_id());
        }
        MeshCommand::Invite {
            peer_id,
            enrollment_key,
            roles,
            days,
            out,
        } => {
            let peer = parse_peer(&peer_id)?;
            let roles = sipmesh_net::Roles::parse(&roles).map_err(|e| anyhow!("--roles: {e}"))?;
            if days == 0 || days > 3650 {
                bail!("--days must be between 1 and 3650");
            }
            let key = sipmesh::ops::enrollment::read_enrollment_key(&enrollment_key)
                .context("--enrollment-key")?;
            let now = wall_ms();
            let cred = key.issue(&peer, roles, now, now + days * 86_400_000);
            match out {
                Some(path) => {
                    sipmesh::ops::enrollment::write_credential(&path, &cred)?;
                    println!(
                        "wrote {peer}'s credential ({roles}, {days} days) to {}: put it in the \
                         node's data dir as member.cred, or pass --credential {}",
                        path.display(),
                        path.display()
                    );
                }
                None => println!("{}", sipmesh::ops::enrollment::credential_text(&cred)),
            }
        }
        MeshCommand::Revoke {
            peer_id,
            enrollment_key,
            node,
        } => {
            let peer = parse_peer(&peer_id)?;
            let key = sipmesh::ops::enrollment::read_enrollment_key(&enrollment_key)
                .context("--enrollment-key")?;
            let revocation = key.revoke(&peer, wall_ms());
            call(
                agent().post(&format!("{node}/v1/mesh/revocations")),
                token,
                Some(serde_json::json!({
                    "revocation": sipmesh::ops::enrollment::revocation_text(&revocation)
                })),
            )?;
            println!("revoked {peer}: every node disconnects it within a few seconds");
        }
        MeshCommand::Remove {
            peer_id,
            force,
            node,
        } => {
            call(
                agent().post(&format!("{node}/v1/mesh/remove")),
                token,
                Some(serde_json::json!({ "peer_id": peer_id, "force": force })),
            )?;
            println!("removed {peer_id} from the ring");
        }
        MeshCommand::Decommission { within, node } => {
            let v = call(
                agent().post(&format!("{node}/v1/mesh/decommission")),
                token,
                Some(serde_json::json!({ "within_secs": within })),
            )?;
            println!(
                "decommissioning {}: it hands its replicas over (its log shows the progress), leaves the ring and stops",
                v["decommissioning"].as_str().unwrap_or_default()
            );
        }
    }
    Ok(())
}

fn log_filter(verbose: u8, default: &str) -> tracing_subscriber::EnvFilter {
    if let Ok(f) = tracing_subscriber::EnvFilter::try_from_default_env() {
        return f;
    }
    match verbose {
        0 => default.into(),
        1 => "info,libp2p=warn".into(),
        _ => "debug,libp2p=info".into(),
    }
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The chain of causes on one line; no backtrace (RUST_BACKTRACE is for bugs).
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    let token = cli.token.as_deref();
    match cli.command {
        Command::User { command } => user_command(command, token),
        Command::Status { node, watch } => status(&node, token, watch),
        Command::Mesh { command } => mesh_command(command, token),
        Command::Bans { command } => bans_command(command, token),
        Command::Dialogs { command } => dialogs_command(command, token),
        command => {
            let default = match command {
                Command::Dev { .. } => "warn",
                _ => "info,libp2p=warn",
            };
            tracing_subscriber::fmt()
                .with_env_filter(log_filter(cli.verbose, default))
                .with_writer(std::io::stderr)
                // Colours only on a terminal: journald and log files get plain text.
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .init();
            let mut rt = tokio::runtime::Builder::new_multi_thread();
            if let Some(n) = std::env::var("SIPMESH_WORKERS")
                .ok()
                .and_then(|v| v.parse().ok())
            {
                rt.worker_threads(n);
            }
            let rt = rt.enable_all().build()?;
            rt.block_on(async move {
                match command {
                    Command::Node(args) => run_node(*args).await,
                    Command::Dev { nodes } => run_dev(nodes).await,
                    _ => unreachable!("handled above"),
                }
            })
        }
    }
}
