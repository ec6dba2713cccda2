//! Clock comparison between members: every heartbeat (and its answer) carries the sender's wall
//! clock; a node whose clock disagrees with a majority of the members it hears by more than
//! [`MAX_SKEW_MS`] knows its own clock is the odd one out. Timestamps (last-write-wins) and
//! expiry times come from the wall clock, so such a node must not coordinate reads or writes.
//! Pure state, driven with explicit time like the view.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::PeerId;

/// The largest disagreement between a node's clock and its peers' tolerated (15 s: NTP keeps
/// hosts within milliseconds; the slack covers messages delayed in queues).
pub const MAX_SKEW_MS: u64 = 15_000;
/// An observation older than this is not used.
const FRESH: Duration = Duration::from_secs(10);
/// Most peers whose offsets are kept.
const MAX_PEERS: usize = 4_096;

/// What the comparison says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClockCheck {
    /// Peers with a fresh observation.
    pub peers: usize,
    /// The median of their clocks minus this node's, ms (positive: they are ahead).
    pub median_ms: i64,
    /// A majority of them disagree with this node by more than [`MAX_SKEW_MS`].
    pub skewed: bool,
}

/// The latest clock offset observed for each peer.
#[derive(Debug, Default)]
pub struct Clocks {
    offsets: HashMap<PeerId, (i64, Instant)>,
}

impl Clocks {
    /// `peer`'s clock was `offset_ms` ahead of this node's (negative: behind) at `now`.
    pub fn observe(&mut self, now: Instant, peer: PeerId, offset_ms: i64) {
        if self.offsets.len() >= MAX_PEERS && !self.offsets.contains_key(&peer) {
            self.offsets
                .retain(|_, (_, at)| now.saturating_duration_since(*at) < FRESH);
            if self.offsets.len() >= MAX_PEERS {
                return;
            }
        }
        self.offsets.insert(peer, (offset_ms, now));
    }

    /// Compare with the peers for which `counts` holds (the up members), at `now`.
    pub fn check(&mut self, now: Instant, counts: impl Fn(&PeerId) -> bool) -> ClockCheck {
        self.offsets
            .retain(|_, (_, at)| now.saturating_duration_since(*at) < FRESH);
        let mut offsets: Vec<i64> = self
            .offsets
            .iter()
            .filter(|(p, _)| counts(p))
            .map(|(_, (o, _))| *o)
            .collect();
        if offsets.is_empty() {
            return ClockCheck::default();
        }
        offsets.sort_unstable();
        let disagreeing = offsets
            .iter()
            .filter(|o| o.unsigned_abs() > MAX_SKEW_MS)
            .count();
        ClockCheck {
            peers: offsets.len(),
            median_ms: offsets[offsets.len() / 2],
            skewed: disagreeing * 2 > offsets.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_odd_clock_out_is_skewed_and_the_others_are_not() {
        let t0 = Instant::now();
        let (a, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
        // This node is an hour ahead of both peers.
        let mut ahead = Clocks::default();
        ahead.observe(t0, a, -3_600_000);
        ahead.observe(t0, b, -3_600_020);
        let check = ahead.check(t0, |_| true);
        assert!(check.skewed);
        assert_eq!(check.peers, 2);
        assert!(check.median_ms < -3_599_000);
        // A correct node hears one correct peer and the skewed one: not a majority.
        let mut correct = Clocks::default();
        correct.observe(t0, a, 12);
        correct.observe(t0, c, 3_600_000);
        assert!(!correct.check(t0, |_| true).skewed);
        // Down peers do not count, and old observations expire.
        assert!(!ahead.check(t0, |p| *p == c).skewed);
        assert_eq!(ahead.check(t0 + FRESH, |_| true), ClockCheck::default());
    }

    #[test]
    fn small_offsets_are_tolerated() {
        let t0 = Instant::now();
        let mut clocks = Clocks::default();
        clocks.observe(t0, PeerId::random(), MAX_SKEW_MS as i64);
        clocks.observe(t0, PeerId::random(), -(MAX_SKEW_MS as i64));
        assert!(!clocks.check(t0, |_| true).skewed);
    }
}
