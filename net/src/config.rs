//! Everything that tunes the mesh, with defaults that suit a small mesh on a busy machine.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use libp2p::Multiaddr;

/// Settings of a mesh peer.
#[derive(Debug, Clone)]
pub struct MeshConfig {
    /// Where the node key (`node.key`) and generation counter (`generation`) live.
    pub data_dir: PathBuf,
    /// libp2p listen addresses (port 0 only in tests).
    pub listen: Vec<Multiaddr>,
    /// Seed addresses, with or without `/p2p/<PeerId>`.
    pub bootstrap: Vec<Multiaddr>,
    /// A private-network pre-shared key: only peers with the same key can connect.
    pub mesh_key: Option<libp2p::pnet::PreSharedKey>,
    /// Copies of each partition.
    pub replication_factor: usize,
    /// How often each member is sent a heartbeat.
    pub heartbeat_interval: Duration,
    /// A member not heard from for this long is marked down. With heartbeats every 500 ms this
    /// tolerates six lost or late heartbeats on a busy 2-core machine and still detects a death
    /// well within 5 s.
    pub down_after: Duration,
    /// The timeout of one replication request.
    pub request_timeout: Duration,
    /// How often anti-entropy compares digests with each peer.
    pub anti_entropy_interval: Duration,
    /// How often hints are offered to peers that are back up.
    pub hint_interval: Duration,
    /// How often a compaction pass starts at most (a scan of the whole keyspace, in pages of
    /// 25,000 rows every 5 s: expired values become tombstones; tombstones past their grace
    /// period are collected with the other replicas).
    pub compaction_interval: Duration,
    /// Most established connections in total.
    pub max_connections: u32,
    /// Most established connections per peer.
    pub max_connections_per_peer: u32,
    /// Application tags published in heartbeats (SIP URI, admin URL, capacity, load…).
    pub tags: BTreeMap<String, String>,
    /// Signed enrollment (`admission`): with it, only peers holding a credential of the same
    /// enrollment key are members. `None`: every holder of the mesh key is.
    pub enrollment: Option<Enrollment>,
    /// One of the members a new mesh starts with (`sipmesh dev`, `LocalMesh`): it owns its
    /// ranges from the start, there being nothing to stream. A node started later with seeds
    /// joins instead: it streams its ranges before it answers reads (`bootstrap`).
    pub initial: bool,
}

/// Where a node's membership credential comes from.
#[derive(Debug, Clone)]
pub enum Enrollment {
    /// Issued by the mesh's operators (`sipmesh mesh invite`).
    Credential(crate::admission::Credential),
    /// Issued by the node itself at start, with the enrollment key (a local mesh whose
    /// operator holds the key: `sipmesh dev`, tests).
    SelfIssued {
        /// The enrollment key.
        key: std::sync::Arc<crate::admission::EnrollmentKey>,
        /// The roles to give the node.
        roles: crate::admission::Roles,
    },
}

impl MeshConfig {
    /// Defaults for a node keeping its files in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        MeshConfig {
            data_dir: data_dir.into(),
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("valid multiaddr")],
            bootstrap: Vec::new(),
            mesh_key: None,
            replication_factor: 3,
            heartbeat_interval: Duration::from_millis(500),
            down_after: Duration::from_secs(3),
            request_timeout: Duration::from_secs(2),
            anti_entropy_interval: Duration::from_secs(10),
            hint_interval: Duration::from_secs(1),
            compaction_interval: Duration::from_secs(300),
            max_connections: 512,
            max_connections_per_peer: 4,
            tags: BTreeMap::new(),
            enrollment: None,
            initial: false,
        }
    }

    /// Read a mesh key file in the IPFS `swarm.key` format
    /// (`/key/swarm/psk/1.0.0/`, `/base16/`, 64 hex digits).
    pub fn read_mesh_key(path: &std::path::Path) -> crate::Result<libp2p::pnet::PreSharedKey> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            crate::Error::Config(format!("cannot read mesh key {}: {e}", path.display()))
        })?;
        text.trim().parse().map_err(|e| {
            crate::Error::Config(format!(
                "mesh key {} is not a swarm.key (/key/swarm/psk/1.0.0/ /base16/ <64 hex>): {e}",
                path.display()
            ))
        })
    }
}

/// A raw 32-byte private-network key (for tests and `LocalMesh`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeshConfigKey(pub [u8; 32]);

impl MeshConfigKey {
    /// As libp2p's pre-shared key.
    pub fn psk(self) -> libp2p::pnet::PreSharedKey {
        libp2p::pnet::PreSharedKey::new(self.0)
    }
}

/// The `/p2p/<PeerId>` component of a multiaddr.
pub fn p2p(peer: libp2p::PeerId) -> libp2p::multiaddr::Protocol<'static> {
    libp2p::multiaddr::Protocol::P2p(peer)
}

/// Write a small file so that a crash leaves either the old or the new contents, never a torn
/// or empty one: write a temporary file, fsync it, rename it over `path`, fsync the directory.
/// `mode` sets Unix permissions on the temporary file before any byte is written.
pub fn write_atomically(
    path: &std::path::Path,
    bytes: &[u8],
    mode: Option<u32>,
) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if let Some(m) = mode {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(m);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = opts.open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    #[cfg(unix)]
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}
