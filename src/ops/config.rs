//! The node's configuration file (TOML). Every command-line flag of `sipmesh node` has a key
//! here of the same name with `_` for `-`; flags override the file, the file overrides defaults.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};

/// The configuration file's keys (all optional; see `sipmesh node --help` for meanings).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `--data-dir`
    pub data_dir: Option<PathBuf>,
    /// `--sip-listen`
    pub sip_listen: Option<String>,
    /// `--p2p-listen`
    pub p2p_listen: Option<String>,
    /// `--http-listen`
    pub http_listen: Option<String>,
    /// `--bootstrap` (a list)
    pub bootstrap: Option<Vec<String>>,
    /// `--realm`
    pub realm: Option<String>,
    /// `--replication-factor`
    pub replication_factor: Option<usize>,
    /// `--capacity`
    pub capacity: Option<u32>,
    /// `--auth-invites`
    pub auth_invites: Option<bool>,
    /// `--mesh-key`
    pub mesh_key: Option<PathBuf>,
    /// Bearer token of the admin API (also `SIPMESH_ADMIN_TOKEN`).
    pub admin_token: Option<String>,
    /// Registrations shorter than this get 423 (seconds).
    pub min_expires: Option<u32>,
    /// Registration interval when the client gives none (seconds).
    pub default_expires: Option<u32>,
    /// Longest registration interval granted (seconds).
    pub max_expires: Option<u32>,
    /// Sync policy of the keyspace: "periodic" (default) or "sync-before-ack".
    pub sync: Option<String>,
}

impl FileConfig {
    /// Read and check a config file.
    pub fn load(path: &Path) -> Result<FileConfig> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("--config {}: {e}", path.display())))?;
        toml::from_str(&text)
            .map_err(|e| Error::Config(format!("--config {}: {e}", path.display())))
    }
}
