//! [`LocalMesh`]: N nodes on loopback in one process, each with temporary storage and its own
//! tokio runtime — so a test can kill a node as abruptly as a crash (its runtime is dropped with
//! every task and socket), restart it on the same data, partition the mesh and heal it.
//!
//! ```no_run
//! # async fn demo() -> sipmesh::Result<()> {
//! let mesh = sipmesh::LocalMesh::builder().nodes(3).start().await?;
//! mesh.wait_converged(std::time::Duration::from_secs(20)).await?;
//! mesh.kill(2);
//! mesh.restart(2).await?;
//! mesh.shutdown();
//! # Ok(()) }
//! ```

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use sipmesh_net::{MemberState, Multiaddr, PeerId};
use tempfile::TempDir;

use crate::error::{Error, Result};
use crate::node::{Node, NodeConfig};

/// A change applied to every node's configuration.
pub type Tweak = std::sync::Arc<dyn Fn(&mut NodeConfig) + Send + Sync>;

/// Settings of a local mesh.
#[derive(Clone)]
pub struct LocalMeshBuilder {
    tweak: Option<Tweak>,
    nodes: usize,
    replication_factor: usize,
    mesh_key: Option<sipmesh_net::config::MeshConfigKey>,
    anti_entropy_interval: Duration,
    bootstrap: Vec<Multiaddr>,
    enrollment: Option<sipmesh_net::Enrollment>,
}

/// One node of a local mesh.
pub struct LocalNode {
    /// Its index in the mesh.
    pub index: usize,
    /// Its PeerId (stable across restarts).
    pub peer_id: PeerId,
    /// Its libp2p address (stable across restarts).
    pub addr: Multiaddr,
    config: NodeConfig,
    running: Mutex<Option<(tokio::runtime::Runtime, Node)>>,
}

/// A mesh of nodes in this process.
pub struct LocalMesh {
    nodes: Vec<LocalNode>,
    builder: LocalMeshBuilder,
    _dir: TempDir,
}

impl Default for LocalMeshBuilder {
    fn default() -> Self {
        LocalMeshBuilder {
            tweak: None,
            nodes: 3,
            replication_factor: 3,
            mesh_key: None,
            anti_entropy_interval: Duration::from_secs(1),
            bootstrap: Vec::new(),
            enrollment: None,
        }
    }
}

impl LocalMeshBuilder {
    /// How many nodes (default 3).
    pub fn nodes(mut self, n: usize) -> Self {
        self.nodes = n.max(1);
        self
    }
    /// Replication factor (default 3).
    pub fn replication_factor(mut self, rf: usize) -> Self {
        self.replication_factor = rf.max(1);
        self
    }
    /// Run every node with this private-network key.
    pub fn mesh_key(mut self, key: [u8; 32]) -> Self {
        self.mesh_key = Some(sipmesh_net::config::MeshConfigKey(key));
        self
    }
    /// Anti-entropy interval (default 1 s, faster than production so tests converge quickly).
    pub fn anti_entropy_interval(mut self, d: Duration) -> Self {
        self.anti_entropy_interval = d;
        self
    }

    /// Enforce signed enrollment on every node, each with this credential source (a
    /// self-issued one: every node gets the same roles).
    pub fn enrollment(mut self, enrollment: sipmesh_net::Enrollment) -> Self {
        self.enrollment = Some(enrollment);
        self
    }

    /// Change every node's configuration (SIP settings, limits, …) before it starts.
    pub fn configure(mut self, f: impl Fn(&mut NodeConfig) + Send + Sync + 'static) -> Self {
        self.tweak = Some(std::sync::Arc::new(f));
        self
    }

    /// Join an existing mesh through this seed (node 0 bootstraps from it).
    pub fn bootstrap(mut self, seed: Multiaddr) -> Self {
        self.bootstrap.push(seed);
        self
    }

    fn node_config(&self, dir: &std::path::Path, index: usize) -> NodeConfig {
        let mut config = NodeConfig::new(dir.join(format!("node{index}")));
        config.mesh.replication_factor = self.replication_factor;
        config.mesh.mesh_key = self.mesh_key.map(|k| k.psk());
        config.mesh.anti_entropy_interval = self.anti_entropy_interval;
        config.mesh.bootstrap = self.bootstrap.clone();
        config.mesh.enrollment = self.enrollment.clone();
        // The test client and SIPp send from 127.0.0.1 at load-test rates; throttling tests
        // send from other loopback addresses (127.0.0.0/8).
        config.throttle.trusted = vec![std::net::Ipv4Addr::LOCALHOST.into()];
        if let Some(t) = &self.tweak {
            t(&mut config);
        }
        config
    }

    /// Start the nodes; each bootstraps from node 0.
    pub async fn start(self) -> Result<LocalMesh> {
        let dir = tempfile::Builder::new()
            .prefix("sipmesh-localmesh-")
            .tempdir()
            .map_err(|source| Error::Io {
                what: "cannot create a temporary directory".into(),
                source,
            })?;
        let mut nodes: Vec<LocalNode> = Vec::new();
        for index in 0..self.nodes {
            let mut config = self.node_config(dir.path(), index);
            // A new mesh's members own their ranges from the start; joining an existing mesh
            // (`bootstrap`), they stream them first.
            config.mesh.initial = self.bootstrap.is_empty();
            if let Some(seed) = nodes.first() {
                config.mesh.bootstrap = vec![seed.addr.clone()];
            }
            let node = LocalNode::launch(index, config).await?;
            nodes.push(node);
        }
        Ok(LocalMesh {
            nodes,
            builder: self,
            _dir: dir,
        })
    }
}

fn runtime(index: usize) -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(4)
        .thread_name(format!("node{index}"))
        .enable_all()
        .build()
        .map_err(|source| Error::Io {
            what: "cannot build a runtime".into(),
            source,
        })
}

/// Dropping a runtime blocks; do it off any async context.
fn drop_runtime(rt: tokio::runtime::Runtime) {
    let _ = std::thread::spawn(move || rt.shutdown_timeout(Duration::from_secs(10))).join();
}

/// Start a node, retrying for a few seconds while its old ports or files are still being
/// released by the previous (killed) instance.
async fn start_retrying(config: NodeConfig) -> Result<Node> {
    let mut attempt = 0;
    loop {
        match crate::ops::launch(config.clone()).await {
            Ok(n) => return Ok(n),
            Err(e) if attempt < 50 => {
                attempt += 1;
                tracing::debug!(error = %e, attempt, "restart failed; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

impl LocalNode {
    async fn launch(index: usize, mut config: NodeConfig) -> Result<LocalNode> {
        let rt = runtime(index)?;
        let c = config.clone();
        let node = rt
            .spawn(crate::ops::launch(c))
            .await
            .map_err(|e| Error::Config(format!("node task failed: {e}")))??;
        let addr = node.mesh.listen_addrs()[0].clone();
        // Restarts reuse the same addresses, so the others (and phones) find the node where it was.
        config.mesh.listen = vec![addr.clone()];
        config.sip_listen = node.sip_addr();
        config.http_listen = node.http_addr();
        Ok(LocalNode {
            index,
            peer_id: node.mesh.peer_id(),
            addr: addr.with(sipmesh_net::config::p2p(node.mesh.peer_id())),
            config,
            running: Mutex::new(Some((rt, node))),
        })
    }

    /// The running node, if it is running.
    pub fn node(&self) -> Option<Node> {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|(_, n)| n.clone())
    }

    /// Run `f` with the node, on the node's own runtime.
    pub async fn run<F, Fut, T>(&self, f: F) -> Result<T>
    where
        F: FnOnce(Node) -> Fut,
        Fut: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let (handle, node) = {
            let guard = self.running.lock().unwrap_or_else(|p| p.into_inner());
            let (rt, node) = guard.as_ref().ok_or(Error::NotRunning(self.index))?;
            (rt.handle().clone(), node.clone())
        };
        handle
            .spawn(f(node))
            .await
            .map_err(|_| Error::NotRunning(self.index))
    }

    /// The node's configuration.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }
}

impl LocalMesh {
    /// Settings for a new local mesh.
    pub fn builder() -> LocalMeshBuilder {
        LocalMeshBuilder::default()
    }

    /// Node `i`.
    pub fn node(&self, i: usize) -> &LocalNode {
        &self.nodes[i]
    }

    /// Every node.
    pub fn nodes(&self) -> &[LocalNode] {
        &self.nodes
    }

    /// Start one more node, joining through node 0; returns its index.
    pub async fn add_node(&mut self) -> Result<usize> {
        let index = self.nodes.len();
        let mut config = self.builder.node_config(self._dir.path(), index);
        config.mesh.bootstrap = vec![self.nodes[0].addr.clone()];
        let node = LocalNode::launch(index, config).await?;
        self.nodes.push(node);
        Ok(index)
    }

    /// The index of the node with this PeerId.
    pub fn index_of(&self, peer: &PeerId) -> Option<usize> {
        self.nodes.iter().position(|n| n.peer_id == *peer)
    }

    /// Wait until every running node sees every other running node up.
    pub async fn wait_converged(&self, within: Duration) -> Result<()> {
        let running: Vec<PeerId> = self
            .nodes
            .iter()
            .filter(|n| n.node().is_some())
            .map(|n| n.peer_id)
            .collect();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let mut all = true;
            for n in &self.nodes {
                let Some(node) = n.node() else { continue };
                let up = running.iter().all(|p| node.mesh.is_up(p));
                all &= up;
            }
            if all {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(Error::Config(format!(
                    "the mesh did not converge within {within:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Wait until every running node sees `peer` in `state`.
    pub async fn wait_state(
        &self,
        peer: PeerId,
        state: MemberState,
        within: Duration,
    ) -> Result<()> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let all = self
                .nodes
                .iter()
                .filter(|n| n.peer_id != peer)
                .all(|n| match n.node() {
                    None => true,
                    Some(node) => node
                        .mesh
                        .members()
                        .iter()
                        .any(|m| m.peer_id == peer && m.state == state),
                });
            if all {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(Error::Config(format!(
                    "{peer} not {state:?} everywhere within {within:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Kill node `i` as abruptly as a crash: its runtime is dropped with every task and socket,
    /// without telling anyone. Its data stays on disk.
    pub fn kill(&self, i: usize) {
        let taken = self.nodes[i]
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some((rt, node)) = taken {
            drop(node);
            drop_runtime(rt);
        }
    }

    /// Node `i` stops in place (as on SIGTERM): down at once for the others, ring place kept.
    pub async fn stop(&self, i: usize) -> Result<()> {
        self.nodes[i]
            .run(|node| async move { node.stop_in_place().await })
            .await?;
        self.kill(i);
        Ok(())
    }

    /// Node `i` leaves gracefully (as on decommission), then stops. Returns (partitions handed
    /// over, failed transfers).
    pub async fn leave(&self, i: usize) -> Result<(usize, usize)> {
        let handed = self.nodes[i]
            .run(|node| async move { node.leave_gracefully().await })
            .await?;
        self.kill(i);
        Ok(handed)
    }

    /// Restart node `i` on its data directory and address.
    pub async fn restart(&self, i: usize) -> Result<()> {
        let n = &self.nodes[i];
        if n.node().is_some() {
            return Ok(());
        }
        let rt = runtime(i)?;
        let started = rt.spawn(start_retrying(n.config.clone())).await;
        match started {
            Ok(Ok(node)) => {
                *n.running.lock().unwrap_or_else(|p| p.into_inner()) = Some((rt, node));
                Ok(())
            }
            other => {
                drop_runtime(rt);
                match other {
                    Ok(Err(e)) => Err(e),
                    _ => Err(Error::Config("node task failed".into())),
                }
            }
        }
    }

    /// Partition the mesh: nodes in `a` and nodes in `b` can no longer reach each other.
    pub async fn partition(&self, a: &[usize], b: &[usize]) -> Result<()> {
        self.set_blocked(a, b, true).await?;
        self.set_blocked(b, a, true).await
    }

    /// Heal a partition made by [`LocalMesh::partition`].
    pub async fn heal(&self, a: &[usize], b: &[usize]) -> Result<()> {
        self.set_blocked(a, b, false).await?;
        self.set_blocked(b, a, false).await
    }

    async fn set_blocked(&self, from: &[usize], to: &[usize], block: bool) -> Result<()> {
        let peers: Vec<PeerId> = to.iter().map(|&i| self.nodes[i].peer_id).collect();
        for &i in from {
            let peers = peers.clone();
            self.nodes[i]
                .run(move |node| async move {
                    if block {
                        node.mesh.block(&peers).await
                    } else {
                        node.mesh.unblock(&peers).await
                    }
                })
                .await?;
        }
        Ok(())
    }

    /// Stop every node.
    pub fn shutdown(&self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

impl Drop for LocalMesh {
    fn drop(&mut self) {
        self.shutdown();
    }
}
