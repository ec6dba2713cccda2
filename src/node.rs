//! One sipmesh node: its keyspace on sled and its mesh peer.

use std::path::PathBuf;

use sipmesh_net::{Mesh, MeshConfig};
use sipmesh_storage::{Keyspace, KeyspaceConfig, SyncPolicy};
use tokio::sync::mpsc;
use tracing::info;

use crate::error::Result;
use crate::tables;

/// Everything a node is configured with.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Where the keyspace, node key and generation live.
    pub data_dir: PathBuf,
    /// The mesh settings (listen addresses, seeds, replication factor, timings).
    pub mesh: MeshConfig,
    /// The keyspace's sync policy.
    pub sync: SyncPolicy,
}

impl NodeConfig {
    /// Defaults for a node keeping its files in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        let data_dir = data_dir.into();
        NodeConfig {
            mesh: MeshConfig::new(data_dir.clone()),
            data_dir,
            sync: SyncPolicy::default(),
        }
    }
}

/// A running node. Cheap to clone.
#[derive(Clone)]
pub struct Node {
    /// The mesh peer (which holds the keyspace).
    pub mesh: Mesh,
}

impl Node {
    /// Open the keyspace and join the mesh.
    pub async fn start(config: NodeConfig) -> Result<Node> {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| crate::Error::Io {
            what: format!("cannot create data dir {}", config.data_dir.display()),
            source,
        })?;
        let ks_dir = config.data_dir.join("keyspace");
        let ks_config = KeyspaceConfig {
            sync: config.sync,
            ..KeyspaceConfig::default()
        };
        let keyspace = tokio::task::spawn_blocking(move || {
            Keyspace::open_sled(&ks_dir, tables::all(), ks_config)
        })
        .await
        .map_err(|e| crate::Error::Config(format!("keyspace open task failed: {e}")))??;
        let (mesh, app_rx) = Mesh::start(config.mesh.clone(), keyspace).await?;
        tokio::spawn(drain_app(app_rx));
        info!(peer_id = %mesh.peer_id(), data_dir = %config.data_dir.display(), "node started");
        Ok(Node { mesh })
    }

    /// The local keyspace.
    pub fn keyspace(&self) -> &Keyspace {
        self.mesh.keyspace()
    }
}

/// Until the SIP layer consumes application messages, answer requests with nothing.
async fn drain_app(mut rx: mpsc::Receiver<sipmesh_net::AppMessage>) {
    while let Some(msg) = rx.recv().await {
        if let Some(reply) = msg.reply {
            let _ = reply.send(Vec::new());
        }
    }
}
