//! Kademlia answers members only. Under signed enrollment a peer that holds the mesh key but no
//! credential gets a connection (it must, to show a credential in its first heartbeat) — and
//! libp2p's Kademlia answers every connected peer's queries from its routing table, which names
//! the mesh's members and their addresses. [`MembersOnly`] wraps a behaviour so that each
//! connection's handler drops the peer's inbound streams (its requests) until the peer is
//! admitted; what this node asks the peer, and everything else, is unchanged.
//!
//! A peer is checked when each stream opens, so a member admitted a moment after connecting
//! (its first heartbeat) is answered from then on, and a revoked one no longer is.

use std::sync::Arc;
use std::task::{Context, Poll};

use libp2p::core::transport::PortUse;
use libp2p::core::Endpoint;
use libp2p::swarm::handler::ConnectionEvent;
use libp2p::swarm::{
    ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent, ConnectionId, FromSwarm,
    NetworkBehaviour, SubstreamProtocol, THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId};

/// Whether a peer is admitted (a member).
pub(crate) type Admitted = Arc<dyn Fn(&PeerId) -> bool + Send + Sync>;

/// A behaviour whose connection handlers take inbound streams from admitted peers only.
pub(crate) struct MembersOnly<B> {
    inner: B,
    /// `None`: everyone (a mesh without signed enrollment: every holder of the key is a member).
    admitted: Option<Admitted>,
}

impl<B> MembersOnly<B> {
    pub(crate) fn new(inner: B, admitted: Option<Admitted>) -> Self {
        MembersOnly { inner, admitted }
    }
}

impl<B> std::ops::Deref for MembersOnly<B> {
    type Target = B;
    fn deref(&self) -> &B {
        &self.inner
    }
}

impl<B> std::ops::DerefMut for MembersOnly<B> {
    fn deref_mut(&mut self) -> &mut B {
        &mut self.inner
    }
}

impl<B: NetworkBehaviour> NetworkBehaviour for MembersOnly<B> {
    type ConnectionHandler = Gate<THandler<B>>;
    type ToSwarm = B::ToSwarm;

    fn handle_pending_inbound_connection(
        &mut self,
        id: ConnectionId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.inner
            .handle_pending_inbound_connection(id, local, remote)
    }

    fn handle_established_inbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        let inner = self
            .inner
            .handle_established_inbound_connection(id, peer, local, remote)?;
        Ok(Gate {
            inner,
            peer,
            admitted: self.admitted.clone(),
        })
    }

    fn handle_pending_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: Option<PeerId>,
        addresses: &[Multiaddr],
        role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.inner
            .handle_pending_outbound_connection(id, peer, addresses, role)
    }

    fn handle_established_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        let inner = self
            .inner
            .handle_established_outbound_connection(id, peer, addr, role, port_use)?;
        Ok(Gate {
            inner,
            peer,
            admitted: self.admitted.clone(),
        })
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        self.inner.on_swarm_event(event)
    }

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        self.inner.on_connection_handler_event(peer, id, event)
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        self.inner.poll(cx)
    }
}

/// A connection handler that drops the peer's inbound streams while it is not admitted.
pub(crate) struct Gate<H> {
    inner: H,
    peer: PeerId,
    admitted: Option<Admitted>,
}

impl<H: ConnectionHandler> ConnectionHandler for Gate<H> {
    type FromBehaviour = H::FromBehaviour;
    type ToBehaviour = H::ToBehaviour;
    type InboundProtocol = H::InboundProtocol;
    type OutboundProtocol = H::OutboundProtocol;
    type InboundOpenInfo = H::InboundOpenInfo;
    type OutboundOpenInfo = H::OutboundOpenInfo;

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol, Self::InboundOpenInfo> {
        self.inner.listen_protocol()
    }

    fn connection_keep_alive(&self) -> bool {
        self.inner.connection_keep_alive()
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<
        ConnectionHandlerEvent<Self::OutboundProtocol, Self::OutboundOpenInfo, Self::ToBehaviour>,
    > {
        self.inner.poll(cx)
    }

    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<Option<Self::ToBehaviour>> {
        self.inner.poll_close(cx)
    }

    fn on_behaviour_event(&mut self, event: Self::FromBehaviour) {
        self.inner.on_behaviour_event(event)
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<
            Self::InboundProtocol,
            Self::OutboundProtocol,
            Self::InboundOpenInfo,
            Self::OutboundOpenInfo,
        >,
    ) {
        if matches!(event, ConnectionEvent::FullyNegotiatedInbound(_))
            && self.admitted.as_ref().is_some_and(|a| !a(&self.peer))
        {
            // Dropped: the stream closes, and the peer's request fails.
            return;
        }
        self.inner.on_connection_event(event)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use futures::StreamExt;
    use libp2p::identity::Keypair;
    use libp2p::kad;
    use libp2p::swarm::SwarmEvent;

    use super::*;
    use crate::config::{MeshConfig, MeshConfigKey};
    use crate::peer::{self, Command};

    /// Which peers an outsider holding the mesh key learns of (and so dials) from a member's
    /// Kademlia while looking `target` up. (A peer that does not answer is not in a query's
    /// result, so what was learnt shows in the dials.)
    async fn ask(
        outsider: &mut libp2p::Swarm<kad::Behaviour<kad::store::MemoryStore>>,
        target: PeerId,
    ) -> Vec<PeerId> {
        outsider.behaviour_mut().get_closest_peers(target);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let mut dialled = Vec::new();
        loop {
            let event = tokio::time::timeout_at(deadline, outsider.select_next_some())
                .await
                .expect("the query ends within 20 s");
            match event {
                SwarmEvent::Dialing {
                    peer_id: Some(p), ..
                } => dialled.push(p),
                SwarmEvent::Behaviour(kad::Event::OutboundQueryProgressed {
                    result: kad::QueryResult::GetClosestPeers(_),
                    step,
                    ..
                }) if step.last => return dialled,
                _ => {}
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn kademlia_answers_a_key_holder_only_once_it_is_admitted() {
        let psk = MeshConfigKey([9; 32]).psk();
        let dir = tempfile::tempdir().unwrap();
        let mut config = MeshConfig::new(dir.path());
        config.mesh_key = Some(psk);
        let admit = Arc::new(AtomicBool::new(false));
        let admitted: Admitted = {
            let admit = admit.clone();
            Arc::new(move |_: &PeerId| admit.load(Ordering::SeqCst))
        };
        let member_key = Keypair::generate_ed25519();
        let member = member_key.public().to_peer_id();
        let (handle, _events, task) = peer::start(&config, member_key, Some(admitted))
            .await
            .unwrap();
        // A member the member knows: what its routing table would give away.
        let secret = PeerId::random();
        handle
            .commands
            .send(Command::AddAddress(
                secret,
                "/ip4/127.0.0.1/tcp/9".parse().unwrap(),
            ))
            .await
            .unwrap();

        let key = Keypair::generate_ed25519();
        let local = key.public().to_peer_id();
        let transport = peer::transport(&key, Some(psk)).unwrap();
        let mut outsider = libp2p::SwarmBuilder::with_existing_identity(key)
            .with_tokio()
            .with_other_transport(move |_| transport)
            .unwrap()
            .with_behaviour(|_| {
                let mut c = kad::Config::new(libp2p::StreamProtocol::new("/sipmesh/kad/1.0.0"));
                c.set_query_timeout(Duration::from_secs(5));
                kad::Behaviour::with_config(local, kad::store::MemoryStore::new(local), c)
            })
            .unwrap()
            .build();
        outsider
            .behaviour_mut()
            .add_address(&member, handle.listen_addrs[0].clone());

        let learnt = ask(&mut outsider, secret).await;
        assert!(
            !learnt.contains(&secret),
            "a peer not admitted learnt a member from the DHT: {learnt:?}"
        );
        // Once admitted (its credential verified), the same peer is answered.
        admit.store(true, Ordering::SeqCst);
        let learnt = ask(&mut outsider, secret).await;
        assert!(
            learnt.contains(&secret),
            "an admitted peer is answered: {learnt:?}"
        );
        let _ = handle.commands.send(Command::Shutdown).await;
        let _ = task.await;
    }
}
