//! Which members this node reaches only through others.
//!
//! SWIM already finds out: it asks others to probe a member only after its own probe got no
//! answer. A member whose direct probe failed but that stays alive (the indirect probes
//! through others reached it) sits behind a cut this node cannot cross — a firewall, a NAT, a
//! broken route between two sites. Traffic for it is then better sent through a member that
//! can reach it ([`crate::relay`] for reads and writes, the node's forwarded datagrams for
//! SIP). The mark goes as soon as anything arrives from the member directly (any membership
//! message, or a datagram the node saw), which also covers a direct probe that was only slow.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use libp2p::PeerId;

/// Members marked at most (a mark is a few dozen bytes; beyond this the marks start over).
const MAX_MARKED: usize = 4_096;

/// Members a direct probe failed to reach, and since when.
#[derive(Default)]
pub struct Reach {
    indirect: Mutex<HashMap<PeerId, Instant>>,
    /// How many are marked, read without the lock: the common case is none.
    marked: AtomicUsize,
}

impl Reach {
    /// A direct probe of `peer` got no answer (SWIM is asking others to probe it).
    pub fn probe_failed(&self, peer: PeerId) {
        let mut marks = self.lock();
        if marks.len() >= MAX_MARKED && !marks.contains_key(&peer) {
            marks.clear();
        }
        marks.entry(peer).or_insert_with(Instant::now);
        self.marked.store(marks.len(), Ordering::Relaxed);
    }

    /// Something arrived from `peer` directly: it is reachable.
    pub fn heard(&self, peer: &PeerId) {
        if self.marked.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut marks = self.lock();
        if marks.remove(peer).is_some() {
            self.marked.store(marks.len(), Ordering::Relaxed);
        }
    }

    /// Whether this node's last direct probe of `peer` failed and nothing came from it
    /// directly since.
    pub fn only_indirect(&self, peer: &PeerId) -> bool {
        self.marked.load(Ordering::Relaxed) != 0 && self.lock().contains_key(peer)
    }

    /// How many members are marked.
    pub fn marked(&self) -> usize {
        self.marked.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PeerId, Instant>> {
        self.indirect.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_probe_marks_until_the_member_is_heard_directly() {
        let reach = Reach::default();
        let (a, b) = (PeerId::random(), PeerId::random());
        assert!(!reach.only_indirect(&a));
        reach.probe_failed(a);
        reach.probe_failed(a);
        assert!(reach.only_indirect(&a) && !reach.only_indirect(&b));
        assert_eq!(reach.marked(), 1);
        reach.heard(&b);
        assert!(reach.only_indirect(&a));
        reach.heard(&a);
        assert!(!reach.only_indirect(&a));
        assert_eq!(reach.marked(), 0);
    }

    #[test]
    fn marks_are_bounded() {
        let reach = Reach::default();
        for _ in 0..MAX_MARKED + 10 {
            reach.probe_failed(PeerId::random());
        }
        assert!(reach.marked() <= MAX_MARKED);
    }
}
