//! A [`Link`] without libp2p, for unit tests of the replication logic: requests between nodes
//! of one process go straight to the receiver's replica side; a peer can be cut off (its
//! requests fail as unreachable) and healed.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use libp2p::PeerId;

use crate::error::{Error, Result};
use crate::link::Link;
use crate::protocol::{Request, Response};
use crate::replication::Replication;

/// The nodes of one test and which of them are cut off.
#[derive(Default)]
pub(crate) struct FakeNet {
    nodes: Mutex<HashMap<PeerId, Replication>>,
    cut: Mutex<HashSet<PeerId>>,
}

impl FakeNet {
    /// Route requests for `peer` to its replica side.
    pub fn add(&self, peer: PeerId, replication: Replication) {
        self.nodes.lock().unwrap().insert(peer, replication);
    }

    /// Requests to or from `peer` fail from now on.
    pub fn cut(&self, peer: PeerId) {
        self.cut.lock().unwrap().insert(peer);
    }

    /// `peer` is reachable again.
    pub fn heal(&self, peer: PeerId) {
        self.cut.lock().unwrap().remove(&peer);
    }
}

/// One node's end of a [`FakeNet`].
pub(crate) struct FakeLink {
    pub net: Arc<FakeNet>,
    pub from: PeerId,
}

impl FakeLink {
    fn serve(&self, peer: PeerId, request: Request) -> Result<Response> {
        let cut = self.net.cut.lock().unwrap();
        if cut.contains(&peer) || cut.contains(&self.from) {
            return Err(Error::Unreachable {
                peer: peer.to_string(),
                reason: "cut off by the test".into(),
            });
        }
        drop(cut);
        let node = self.net.nodes.lock().unwrap().get(&peer).cloned();
        let Some(node) = node else {
            return Err(Error::Unreachable {
                peer: peer.to_string(),
                reason: "no such node".into(),
            });
        };
        let response = match request {
            Request::Write(m) => node.handle_write(&m),
            Request::Read {
                table,
                partition_key,
            } => node.handle_read(table, &partition_key),
            Request::Push {
                mutations,
                owned_only,
            } => node.handle_push(&mutations, owned_only),
            request @ (Request::Prepare { .. } | Request::Propose { .. }) => {
                crate::claim::serve(node.keyspace(), request)
            }
            other => Response::Error(format!("{} not served by the fake link", other.kind())),
        };
        match response {
            Response::Error(reason) => Err(Error::Remote {
                peer: peer.to_string(),
                reason,
            }),
            r => Ok(r),
        }
    }
}

impl Link for FakeLink {
    fn request(
        &self,
        peer: PeerId,
        request: Request,
        _timeout: Duration,
    ) -> BoxFuture<'static, Result<Response>> {
        let r = self.serve(peer, request);
        Box::pin(async move { r })
    }

    fn send(&self, peer: PeerId, request: Request) -> BoxFuture<'static, Result<()>> {
        let r = self.serve(peer, request).map(|_| ());
        Box::pin(async move { r })
    }
}
