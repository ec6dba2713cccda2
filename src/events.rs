//! Recent events of the node, for the live mesh page and `/v1/events`: members joining,
//! coming back, going down and leaving; bans; custodian actions; operator actions. A bounded
//! ring: the newest [`KEEP`] events, each with a sequence number so a reader asks only for
//! what it has not seen.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::Serialize;
use sipmesh_storage::{SystemClock, WallClock};

/// Events kept.
pub const KEEP: usize = 200;
/// Longest event text kept (bytes).
const MAX_TEXT: usize = 300;

/// What kind of event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A member is up (joined, restarted, or back).
    Up,
    /// A member is down.
    Down,
    /// A member left the ring (gracefully, or removed).
    Left,
    /// A source was banned by the throttle, or a ban was lifted.
    Ban,
    /// This node acted as custodian of a dead node's dialogs.
    Custody,
    /// An operator action through the admin API.
    Admin,
}

/// One event.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Increases by one per event, from 1.
    pub seq: u64,
    /// Wall clock, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// What kind.
    pub kind: Kind,
    /// What happened, for a person.
    pub text: String,
}

/// The node's recent events.
#[derive(Debug, Default)]
pub struct Events {
    inner: Mutex<(u64, VecDeque<Event>)>,
}

impl Events {
    /// Record an event (the oldest goes when [`KEEP`] are held).
    pub fn push(&self, kind: Kind, text: impl Into<String>) {
        let mut text = text.into();
        if text.len() > MAX_TEXT {
            let mut cut = MAX_TEXT;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
        }
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.0 += 1;
        let seq = g.0;
        if g.1.len() >= KEEP {
            g.1.pop_front();
        }
        g.1.push_back(Event {
            seq,
            at_ms: SystemClock.now_ms(),
            kind,
            text,
        });
    }

    /// Events after sequence number `seq`, oldest first.
    pub fn since(&self, seq: u64) -> Vec<Event> {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.1.iter().filter(|e| e.seq > seq).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_ordered() {
        let e = Events::default();
        for i in 0..KEEP + 10 {
            e.push(Kind::Ban, format!("event {i}"));
        }
        let all = e.since(0);
        assert_eq!(all.len(), KEEP);
        assert_eq!(all[0].seq, 11);
        assert_eq!(all.last().unwrap().seq, (KEEP + 10) as u64);
        assert_eq!(e.since((KEEP + 8) as u64).len(), 2);
        e.push(Kind::Admin, "é".repeat(400));
        assert!(e.since(0).last().unwrap().text.len() <= MAX_TEXT);
    }
}
