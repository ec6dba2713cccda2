//! Joining: a new member streams the ranges it will own before it answers reads for them
//! (Cassandra's bootstrap, with its pending ranges in `placement`).
//!
//! A node whose data directory has never held a ring, started with seeds, is new: it marks
//! the directory (`DATA_DIR/joining`, so a restart mid-way resumes joining) and says `joining`
//! in every heartbeat. Members then send it the writes of the ranges it will own and ask the
//! others for reads. Once the ring it sees has held still for [`RING_DELAY`] (so it knows the
//! members, and what it will own), it streams every leaf it shares with each fellow replica —
//! all of them up, or it waits — and, if the ring did not change meanwhile, it has joined: the
//! mark goes, it tells every up member at once, and it answers reads. The replicas it displaced
//! keep receiving writes and keep their copies while members settle (`view::SETTLE`).
//!
//! One member at a time: two joining at once near the same keys can each take one of a key's
//! replicas away before either has streamed (as in Cassandra, which refuses it).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use tracing::{info, warn};

use crate::anti_entropy::AntiEntropy;
use crate::error::{Error, Result};
use crate::link::Link;
use crate::membership::Membership;
use crate::shutdown::Shutdown;

/// How long the ring must hold still before a joiner streams (it learns the members first).
pub const RING_DELAY: Duration = Duration::from_secs(3);
/// How often a joiner looks whether it can stream.
const POLL: Duration = Duration::from_millis(500);
/// How often a joiner that waits says why.
const SAY_EVERY: Duration = Duration::from_secs(10);

fn mark(dir: &Path) -> PathBuf {
    dir.join("joining")
}

/// Whether this node starts joining: it did not finish joining before (its mark is there), or
/// its data directory has never held a ring and it has seeds to join through (`seeded`: and is
/// not one of the members a new mesh starts with). Marks the directory when it starts joining.
pub fn starts_joining(dir: &Path, seeded: bool) -> Result<bool> {
    let mark = mark(dir);
    if mark.exists() {
        return Ok(true);
    }
    if !seeded || dir.join("ring").exists() {
        return Ok(false);
    }
    crate::config::write_atomically(&mark, b"streaming its ranges\n", None)
        .map_err(|e| Error::Config(format!("cannot write {}: {e}", mark.display())))?;
    Ok(true)
}

/// The members (and whether each is up) as a joiner waits for them to hold still.
fn shape(membership: &Membership) -> Vec<(PeerId, bool)> {
    membership
        .snapshot()
        .ring
        .iter()
        .map(|m| (m.peer, m.up))
        .collect()
}

/// Join: wait for a still ring, stream, finish (see the module's doc). Returns when this node
/// has joined, or at shutdown.
pub(crate) async fn join(
    ae: AntiEntropy,
    membership: Arc<Membership>,
    (link, timeout): (Arc<dyn Link>, Duration),
    dir: PathBuf,
    seeded: bool,
    mut shutdown: Shutdown,
) {
    if !membership.joining() {
        return;
    }
    let started = Instant::now();
    info!("joining: this node streams its ranges before it answers reads for them");
    let mut still = (shape(&membership), Instant::now());
    let mut said = Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tokio::time::sleep(POLL) => {}
        }
        let now = shape(&membership);
        if now != still.0 {
            still = (now, Instant::now());
            continue;
        }
        let alone = still.0.len() <= 1;
        let waiting = if alone && seeded {
            Err("no member heard from yet".to_string())
        } else if still.1.elapsed() < RING_DELAY {
            continue;
        } else {
            ae.bootstrap_pass().await
        };
        match waiting {
            Ok(x) if shape(&membership) == still.0 => {
                if let Err(e) = std::fs::remove_file(mark(&dir)) {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        warn!(error = %e, "cannot remove the joining mark; retrying");
                        continue;
                    }
                }
                membership.finish_joining();
                info!(
                    partitions = x.pulled,
                    bytes = x.bytes,
                    took_ms = started.elapsed().as_millis() as u64,
                    "joined: streamed this node's ranges; it answers reads for them now"
                );
                announce(&membership, &link, timeout).await;
                return;
            }
            Ok(_) => {} // the ring changed while streaming: again, from the new ring
            Err(why) if said.elapsed() >= SAY_EVERY => {
                said = Instant::now();
                warn!(reason = %why, "still joining: waiting to stream this node's ranges");
            }
            Err(_) => {}
        }
    }
}

/// Tell every up member at once that this node joined (a heartbeat: it carries the standing),
/// rather than waiting for the heartbeats' turn.
async fn announce(membership: &Membership, link: &Arc<dyn Link>, timeout: Duration) {
    let heartbeat = membership.heartbeat();
    crate::link::ask_up_members(membership, &**link, &heartbeat, timeout).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_seeded_node_joins_and_a_restart_mid_way_resumes() {
        let dir = tempfile::tempdir().unwrap();
        // Without seeds (the first node of a mesh, or one of a new mesh's members): owns its
        // ranges from the start.
        assert!(!starts_joining(dir.path(), false).unwrap());
        assert!(!mark(dir.path()).exists());
        // A new node with seeds joins, and marks its directory.
        assert!(starts_joining(dir.path(), true).unwrap());
        assert!(mark(dir.path()).exists());
        // Restarted before it finished (the ring is written meanwhile): still joining, even
        // without seeds.
        std::fs::write(dir.path().join("ring"), b"").unwrap();
        assert!(starts_joining(dir.path(), false).unwrap());
        // Once it finished (the mark gone), a restart with a ring owns its ranges.
        std::fs::remove_file(mark(dir.path())).unwrap();
        assert!(!starts_joining(dir.path(), true).unwrap());
    }
}
