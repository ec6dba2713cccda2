//! Group commit: a write is acknowledged only once it is on disk, and the flushes of concurrent
//! writes are batched into one (as Cassandra's batch commitlog and PostgreSQL's commit_delay).
//!
//! A writer applies its mutation, then waits for a flush that *starts after* its apply: it
//! sends a waiter to the flusher thread, which takes every waiter queued so far, flushes the
//! engine once (sled: write its buffers, `sync_file_range` them), and wakes them all. Writers
//! that arrive during a flush wait for the next one, so a burst of N concurrent writes costs
//! about two flushes, not N. With [`SyncPolicy::GroupCommit`] (the default) an acknowledged
//! write survives a kill of the process; see docs/ARCHITECTURE.md for a kernel crash and
//! power loss.

use std::sync::mpsc;

use sipmesh_storage::{Keyspace, SyncPolicy};
use tokio::sync::oneshot;
use tracing::warn;

/// Waiters queued at most; beyond this a writer flushes on its own (still correct, slower).
const MAX_WAITERS: usize = 65_536;
/// Waiters woken by one flush at most (the rest ride the next).
const MAX_BATCH: usize = 8_192;

/// The flusher of one keyspace.
pub(crate) struct GroupCommit {
    tx: Option<mpsc::SyncSender<oneshot::Sender<bool>>>,
    keyspace: Keyspace,
}

impl GroupCommit {
    /// A group commit for `keyspace`: a flusher thread when its policy is
    /// [`SyncPolicy::GroupCommit`], nothing otherwise.
    pub(crate) fn new(keyspace: Keyspace) -> Self {
        let tx = (keyspace.sync_policy() == SyncPolicy::GroupCommit).then(|| {
            let (tx, rx) = mpsc::sync_channel::<oneshot::Sender<bool>>(MAX_WAITERS);
            let ks = keyspace.clone();
            let spawned = std::thread::Builder::new()
                .name("group-commit".into())
                .spawn(move || flusher(ks, rx));
            if let Err(e) = spawned {
                warn!(error = %e, "cannot start the group-commit thread; flushing per write");
            }
            tx
        });
        GroupCommit { tx, keyspace }
    }

    /// Wait until everything applied before this call is on disk. Ok(()) also when the policy
    /// does not flush before acknowledging.
    pub(crate) async fn durable(&self) -> Result<(), String> {
        let Some(tx) = &self.tx else {
            return Ok(());
        };
        let (wake, woken) = oneshot::channel();
        match tx.try_send(wake) {
            Ok(()) => match woken.await {
                Ok(true) => Ok(()),
                Ok(false) => Err("flush failed".into()),
                Err(_) => Err("the flusher stopped".into()),
            },
            Err(_) => {
                // Queue full (or the flusher is gone): flush here, off the async workers.
                let ks = self.keyspace.clone();
                tokio::task::spawn_blocking(move || ks.flush())
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())
            }
        }
    }
}

fn flusher(ks: Keyspace, rx: mpsc::Receiver<oneshot::Sender<bool>>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        let ok = match ks.flush() {
            Ok(()) => true,
            Err(e) => {
                warn!(error = %e, "flush failed; writes not acknowledged");
                false
            }
        };
        for w in batch {
            let _ = w.send(ok);
        }
    }
}
