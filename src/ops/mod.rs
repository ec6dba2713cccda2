//! Running and watching nodes.
//!
//! - [`admin`]: the admin HTTP API (JSON) and Prometheus `/metrics`.
//! - [`config`]: the TOML configuration file.
//! - [`enrollment`]: the enrollment key, credential and revocation files and texts.
//! - [`page`]: the live mesh page served at `/`.
//! - [`local_mesh`]: [`crate::LocalMesh`], N nodes in one process for tests.
//!
//! [`launch`] starts a node with its admin API, as `sipmesh node` and `LocalMesh` do.

pub mod admin;
pub mod config;
pub mod enrollment;
pub mod local_mesh;
pub mod page;

use crate::error::{Error, Result};
use crate::node::{Node, NodeConfig};

/// Start a node and its admin API: bind the admin listener first (so the node publishes the
/// real address), start the node, then serve the API.
pub async fn launch(mut config: NodeConfig) -> Result<Node> {
    admission(&config)?;
    let listener = match config.http_listen {
        Some(addr) => {
            if config.admin_token.is_none() {
                config.admin_token = Some(admin_token_file(&config.data_dir)?);
            }
            let l = admin::bind(addr).await?;
            config.http_listen = l.local_addr().ok();
            Some(l)
        }
        None => None,
    };
    let node = Node::start(config).await?;
    if let Some(l) = listener {
        let n = node.clone();
        node.spawn("admin api", |s| admin::serve(n, l, s));
    }
    Ok(node)
}

/// The admin token kept in `DATA_DIR/admin-token`: read, or generated (256 random bits, hex)
/// and written readable by the owner only.
fn admin_token_file(data_dir: &std::path::Path) -> Result<String> {
    let path = data_dir.join("admin-token");
    let io = |what: String| move |source| Error::Io { what, source };
    if let Ok(text) = std::fs::read_to_string(&path) {
        let t = text.trim().to_string();
        if !t.is_empty() {
            return Ok(t);
        }
    }
    std::fs::create_dir_all(data_dir)
        .map_err(io(format!("cannot create {}", data_dir.display())))?;
    let token = crate::sip::digest::hex(&rand::random::<[u8; 32]>());
    sipmesh_net::config::write_atomically(&path, token.as_bytes(), Some(0o600))
        .map_err(io(format!("cannot write {}", path.display())))?;
    Ok(token)
}

/// Mesh admission: a node reachable beyond loopback refuses to run an open mesh (any peer that
/// connects could read every HA1 and write any cell) unless the operator says so, and then it
/// warns at every start. It needs both gates: the mesh key (who may connect) and a signed
/// credential (who is a member, revocable one node at a time).
fn admission(config: &NodeConfig) -> Result<()> {
    let beyond: Vec<String> = config
        .mesh
        .listen
        .iter()
        .filter(|a| !multiaddr_is_loopback(a))
        .map(|a| a.to_string())
        .collect();
    let missing: Vec<&str> = [
        (config.mesh.mesh_key.is_none(), "--mesh-key"),
        (config.mesh.enrollment.is_none(), "--credential"),
    ]
    .into_iter()
    .filter_map(|(absent, flag)| absent.then_some(flag))
    .collect();
    if beyond.is_empty() || missing.is_empty() {
        return Ok(());
    }
    if config.insecure_open_mesh {
        tracing::warn!(
            listen = ?beyond,
            missing = ?missing,
            "INSECURE: the p2p listener is beyond loopback and the mesh is open \
             (--insecure-open-mesh): whoever reaches it with the mesh key (or anyone, without \
             one) can join, read every password hash and write any row"
        );
        return Ok(());
    }
    Err(Error::Config(format!(
        "--p2p-listen {} is beyond loopback and {} is not set: give every node of the mesh the \
         same --mesh-key (`sipmesh mesh keygen --out FILE` makes one) and its own --credential \
         (`sipmesh mesh invite`, see docs/OPERATIONS.md), or pass --insecure-open-mesh",
        beyond.join(", "),
        missing.join(" and ")
    )))
}

/// Whether a listen multiaddr is on a loopback address.
fn multiaddr_is_loopback(a: &sipmesh_net::Multiaddr) -> bool {
    use sipmesh_net::multiaddr::Protocol;
    a.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_loopback(),
        Protocol::Ip6(ip) => ip.is_loopback(),
        _ => false,
    })
}
