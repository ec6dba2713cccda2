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
    /// The SIP address phones and other nodes reach (`host[:port]`), if not the bound one.
    pub sip_advertise: Option<String>,
    /// `--sip-tls-listen`
    pub sip_tls_listen: Option<String>,
    /// `--sip-ws-listen`
    pub sip_ws_listen: Option<String>,
    /// `--sip-wss-listen`
    pub sip_wss_listen: Option<String>,
    /// `--tls-cert`
    pub tls_cert: Option<PathBuf>,
    /// `--tls-key`
    pub tls_key: Option<PathBuf>,
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
    /// Sync policy of the keyspace: "group-commit" (default: acknowledged writes are on disk,
    /// concurrent writes share a flush), "sync-before-ack", or "periodic" (500 ms window).
    pub sync: Option<String>,
    /// `--insecure-open-mesh`
    pub insecure_open_mesh: Option<bool>,
    /// How long a tombstone is kept at least, in seconds (default 3,600); then it is purged
    /// once every replica of its partition holds it.
    pub tombstone_grace_secs: Option<u64>,
    /// The keyspace's page cache in MiB (default 64): what it holds is read without going to
    /// the log; beyond it, reads page leaves in from disk and cost more CPU.
    pub cache_mib: Option<u64>,
    /// `--credential` (a file)
    pub credential: Option<std::path::PathBuf>,
    /// `--domain` (a list): domains of the mesh besides the realm and members' addresses.
    pub domains: Option<Vec<String>>,
    /// `--trusted-source` (a list): source addresses never throttled.
    pub trusted_sources: Option<Vec<String>>,
    /// Methods challenged when the From claims a user of the mesh.
    pub auth_methods: Option<Vec<String>>,
    /// Bindings an AOR may hold (default 10).
    pub max_contacts: Option<usize>,
    /// Branches a request may fork to (default 10).
    pub max_branches: Option<usize>,
    /// Digest algorithms offered, in order: `"MD5"` (default), `"SHA-256,MD5"`, `"SHA-256"`.
    pub digest_algorithms: Option<String>,
    /// `--min-se`: the smallest session interval accepted (seconds, at least 90).
    pub min_se: Option<u64>,
    /// Requests per source per `rate_window_secs` (default 16; 0: off).
    pub rate_limit: Option<u32>,
    /// The request-rate window (default 2 s).
    pub rate_window_secs: Option<u64>,
    /// Ban length (default 300 s).
    pub ban_secs: Option<u64>,
    /// Failed authentications per source per `auth_window_secs` before a ban (default 5).
    pub auth_failures_per_source: Option<u32>,
    /// Failed authentications per user per window after which failing sources are banned at
    /// once (default 20).
    pub auth_failures_per_user: Option<u32>,
    /// The failed-authentication window (default 60 s).
    pub auth_window_secs: Option<u64>,
    /// The outbound trunk.
    pub trunk: Option<TrunkFile>,
}

/// The `[trunk]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrunkFile {
    /// The trunk's URI, e.g. `sip:203.0.113.5:5060`.
    pub uri: String,
    /// Dialled prefixes allowed through it, e.g. `["0049", "+49"]`.
    pub prefixes: Vec<String>,
    /// Calls per user per minute (default 10).
    pub calls_per_minute: Option<u32>,
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
