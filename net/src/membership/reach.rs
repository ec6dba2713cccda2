//! Which members this node reaches only through others.
//!
//! SWIM already finds out: it asks others to probe a member only after its own probe got no
//! answer. A member whose direct probe failed but that stays alive (the indirect probes
//! through others reached it) sits behind a cut this node cannot cross — a firewall, a NAT, a
//! broken route between two sites. So does one the host refuses to send to, or a dial to it
//! fails. Traffic for it is then better sent through a member that
//! can reach it ([`crate::relay`] for reads and writes, the node's forwarded datagrams for
//! SIP). The mark goes as soon as anything arrives from the member directly (any membership
//! message, or a datagram the node saw), which also covers a direct probe that was only slow.
//!
//! SWIM probes each member once per round, so in a mesh of N it may take N probe periods to
//! find a new cut to one member. Traffic does not wait for that: before sending to a member not
//! heard from directly for [`FRESH`], the node also sends it a ping of its own
//! ([`Reach::before_send`]); if nothing came back directly within [`ANSWER_WITHIN`], the next
//! send (a SIP retransmission, 500 ms later) finds the member marked and goes around.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use libp2p::PeerId;

/// Members marked at most (a mark is a few dozen bytes; beyond this the marks start over).
const MAX_MARKED: usize = 4_096;
/// Members whose last direct contact is remembered, at most (beyond this they start over).
const MAX_CONTACTS: usize = 16_384;
/// A member heard from directly this recently needs no ping before traffic.
pub const FRESH: Duration = Duration::from_secs(10);
/// A ping not answered within this marks the member (SIP's first retransmission comes at
/// 500 ms: it then goes around).
pub const ANSWER_WITHIN: Duration = Duration::from_millis(400);

/// Members this node could not reach directly; when members were last heard from directly
/// and pinged.
#[derive(Default)]
pub struct Reach {
    indirect: Mutex<HashSet<PeerId>>,
    /// How many are marked, read without the lock: the common case is none.
    marked: AtomicUsize,
    contacts: Mutex<HashMap<PeerId, Contact>>,
}

/// The last direct contact with a member this node sends traffic to.
#[derive(Default, Clone, Copy)]
struct Contact {
    heard: Option<Instant>,
    pinged: Option<Instant>,
    /// The first send since it was last heard from.
    waiting: Option<Instant>,
}

impl Reach {
    /// This node could not reach `peer` directly: its SWIM probe or a ping got no answer, or
    /// a send or a dial failed.
    pub fn unreachable(&self, peer: PeerId) {
        let mut marks = self.lock();
        if marks.len() >= MAX_MARKED && !marks.contains(&peer) {
            marks.clear();
        }
        marks.insert(peer);
        self.marked.store(marks.len(), Ordering::Relaxed);
    }

    /// Something arrived from `peer` directly at `now`: it is reachable.
    pub fn heard(&self, peer: &PeerId, now: Instant) {
        if let Some(c) = self.contacts().get_mut(peer) {
            c.heard = Some(now);
            c.waiting = None;
        }
        if self.marked.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut marks = self.lock();
        if marks.remove(peer) {
            self.marked.store(marks.len(), Ordering::Relaxed);
        }
    }

    /// Traffic is about to go to `peer` at `now`: whether to ping it directly too — it was
    /// not heard from directly for [`FRESH`], or traffic has gone to it for [`ANSWER_WITHIN`]
    /// with nothing back. A ping left unanswered for [`ANSWER_WITHIN`] marks it; the next ping
    /// (whether the cut healed) goes [`FRESH`] later.
    pub fn before_send(&self, peer: PeerId, now: Instant) -> bool {
        let mut contacts = self.contacts();
        if contacts.len() >= MAX_CONTACTS && !contacts.contains_key(&peer) {
            contacts.clear();
        }
        let c = contacts.entry(peer).or_default();
        let since = |t: Instant| now.saturating_duration_since(t);
        // A ping with nothing heard since.
        let pending = c.pinged.filter(|&p| c.heard.is_none_or(|h| h < p));
        match pending {
            Some(p) if since(p) < ANSWER_WITHIN => false,
            Some(p) if since(p) < FRESH => {
                drop(contacts);
                self.unreachable(peer);
                false
            }
            _ => {
                let waiting = *c.waiting.get_or_insert(now);
                let quiet = c.heard.is_none_or(|h| since(h) >= FRESH);
                if quiet || since(waiting) >= ANSWER_WITHIN {
                    c.pinged = Some(now);
                    true
                } else {
                    false
                }
            }
        }
    }

    /// Whether this node could not reach `peer` directly lately and nothing came from it
    /// directly since.
    pub fn only_indirect(&self, peer: &PeerId) -> bool {
        self.marked.load(Ordering::Relaxed) != 0 && self.lock().contains(peer)
    }

    /// How many members are marked.
    pub fn marked(&self) -> usize {
        self.marked.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<PeerId>> {
        self.indirect.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn contacts(&self) -> std::sync::MutexGuard<'_, HashMap<PeerId, Contact>> {
        self.contacts.lock().unwrap_or_else(|p| p.into_inner())
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
        reach.unreachable(a);
        reach.unreachable(a);
        assert!(reach.only_indirect(&a) && !reach.only_indirect(&b));
        assert_eq!(reach.marked(), 1);
        let now = Instant::now();
        reach.heard(&b, now);
        assert!(reach.only_indirect(&a));
        reach.heard(&a, now);
        assert!(!reach.only_indirect(&a));
        assert_eq!(reach.marked(), 0);
    }

    #[test]
    fn traffic_to_a_member_not_heard_from_pings_it_and_an_unanswered_ping_marks_it() {
        let reach = Reach::default();
        let (a, b) = (PeerId::random(), PeerId::random());
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let fresh = FRESH.as_millis() as u64;
        // Never heard from: the first send pings, the next ones wait for the answer.
        assert!(reach.before_send(a, at(0)));
        assert!(!reach.before_send(a, at(100)));
        assert!(!reach.only_indirect(&a));
        // No answer within ANSWER_WITHIN: the next send (a retransmission) finds it marked,
        // and it is not pinged again until FRESH has passed.
        assert!(!reach.before_send(a, at(500)));
        assert!(reach.only_indirect(&a));
        assert!(!reach.before_send(a, at(fresh - 1)));
        assert!(reach.before_send(a, at(fresh)));
        reach.heard(&a, at(fresh + 30));
        assert!(!reach.only_indirect(&a), "the cut healed");
        // Answered: heard directly, unmarked, no ping while answers keep coming.
        assert!(reach.before_send(b, at(0)));
        reach.heard(&b, at(20));
        assert!(!reach.before_send(b, at(500)));
        reach.heard(&b, at(510));
        assert!(!reach.before_send(b, at(5_000)));
        reach.heard(&b, at(5_010));
        assert!(!reach.only_indirect(&b));
        // Heard lately, but traffic gets nothing back (a new cut): after ANSWER_WITHIN of
        // sending, a ping; unanswered, marked.
        assert!(!reach.before_send(b, at(6_000)));
        assert!(!reach.before_send(b, at(6_300)));
        assert!(reach.before_send(b, at(6_500)));
        assert!(!reach.before_send(b, at(6_700)));
        assert!(!reach.only_indirect(&b));
        assert!(!reach.before_send(b, at(7_000)));
        assert!(reach.only_indirect(&b));
        // Quiet for longer than FRESH, then traffic: pinged first.
        let c = PeerId::random();
        assert!(reach.before_send(c, at(0)));
        reach.heard(&c, at(10));
        assert!(reach.before_send(c, at(10 + fresh)));
    }

    #[test]
    fn marks_are_bounded() {
        let reach = Reach::default();
        for _ in 0..MAX_MARKED + 10 {
            reach.unreachable(PeerId::random());
        }
        assert!(reach.marked() <= MAX_MARKED);
        let now = Instant::now();
        for _ in 0..MAX_CONTACTS + 10 {
            reach.before_send(PeerId::random(), now);
        }
        assert!(reach.contacts().len() <= MAX_CONTACTS);
    }
}
