//! Running and watching nodes.
//!
//! - [`admin`]: the admin HTTP API (JSON) and Prometheus `/metrics`.
//! - [`config`]: the TOML configuration file.
//! - [`local_mesh`]: [`crate::LocalMesh`], N nodes in one process for tests.
//!
//! [`launch`] starts a node with its admin API, as `sipmesh node` and `LocalMesh` do.

pub mod admin;
pub mod config;
pub mod local_mesh;

use crate::error::{Error, Result};
use crate::node::{Node, NodeConfig};

/// Start a node and its admin API: bind the admin listener first (so the node publishes the
/// real address), start the node, then serve the API.
pub async fn launch(mut config: NodeConfig) -> Result<Node> {
    let listener = match config.http_listen {
        Some(addr) => {
            if !addr.ip().is_loopback() && config.admin_token.is_none() {
                return Err(Error::Config(format!(
                    "--http-listen {addr} is not a loopback address: set admin_token in the config file (or SIPMESH_ADMIN_TOKEN)"
                )));
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
