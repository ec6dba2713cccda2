//! Server transactions (RFC 3261 §17.2, with RFC 6026's Accepted state): INVITE and non-INVITE.
//! Pure state machines: events in (with the current time), actions out; no I/O, no clock.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::timers::{self, unless_reliable};
use super::Action;

/// States of a server transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Non-INVITE: request received, no response yet.
    Trying,
    /// A provisional response was sent.
    Proceeding,
    /// A final response was sent (non-2xx for INVITE); absorbing retransmissions.
    Completed,
    /// INVITE: ACK received for a non-2xx final; absorbing ACK retransmissions.
    Confirmed,
    /// INVITE: a 2xx was sent (RFC 6026); retransmitted INVITEs are absorbed.
    Accepted,
    /// Done.
    Terminated,
}

/// A server transaction.
#[derive(Debug)]
pub struct ServerTransaction {
    invite: bool,
    reliable: bool,
    state: State,
    last_response: Option<Arc<[u8]>>,
    /// Timer G (INVITE final retransmit) next firing and current interval.
    retransmit: Option<(Instant, Duration)>,
    /// Timer H/I/J/L: when the current state ends.
    ends: Option<Instant>,
}

impl ServerTransaction {
    /// A transaction for a request just received.
    pub fn new(invite: bool, reliable: bool) -> Self {
        ServerTransaction {
            invite,
            reliable,
            state: if invite {
                State::Proceeding
            } else {
                State::Trying
            },
            last_response: None,
            retransmit: None,
            ends: None,
        }
    }

    /// Whether this is an INVITE transaction.
    pub fn is_invite(&self) -> bool {
        self.invite
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Whether the transaction is over.
    pub fn is_terminated(&self) -> bool {
        self.state == State::Terminated
    }

    /// Whether the transaction only lingers (its final response sent, nothing left for it to
    /// send on its own: absorbing retransmissions or passing 2xx through): it can be dropped
    /// early when memory is short.
    pub fn is_lingering(&self) -> bool {
        match self.state {
            State::Accepted | State::Confirmed => true,
            State::Completed => !self.invite,
            _ => false,
        }
    }

    /// When `on_timer` must next be called.
    pub fn deadline(&self) -> Option<Instant> {
        match (self.retransmit.map(|r| r.0), self.ends) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The request was received again: re-send the last response, if any.
    pub fn on_retransmission(&mut self) -> Vec<Action> {
        match (self.state, &self.last_response) {
            (State::Proceeding | State::Completed, Some(r)) => vec![Action::Send(r.clone())],
            _ => Vec::new(),
        }
    }

    /// Whether an ACK matching this transaction is the end-to-end ACK of a 2xx (RFC 6026: in
    /// the Accepted state it goes to the transaction user, to be forwarded).
    pub fn acks_2xx(&self) -> bool {
        self.state == State::Accepted
    }

    /// An ACK matched this (INVITE) transaction.
    pub fn on_ack(&mut self, now: Instant) -> Vec<Action> {
        if self.invite && self.state == State::Completed {
            self.state = State::Confirmed;
            self.retransmit = None;
            self.ends = Some(now + unless_reliable(self.reliable, timers::I_UNRELIABLE));
        }
        Vec::new()
    }

    /// The transaction user sends a response with status `code`.
    pub fn on_response(&mut self, code: u16, bytes: Arc<[u8]>, now: Instant) -> Vec<Action> {
        match self.state {
            State::Trying | State::Proceeding => {}
            // A 2xx retransmitted by the UAS passes through an Accepted INVITE transaction.
            State::Accepted if (200..300).contains(&code) => return vec![Action::Send(bytes)],
            _ => return Vec::new(),
        }
        self.last_response = Some(bytes.clone());
        if self.invite && (200..300).contains(&code) {
            // Accepted: 2xx retransmissions come from the UAS, not from here.
            self.last_response = None;
        }
        if code < 200 {
            self.state = State::Proceeding;
        } else if self.invite && code < 300 {
            self.state = State::Accepted;
            self.ends = Some(now + timers::L);
        } else if self.invite {
            self.state = State::Completed;
            if !self.reliable {
                self.retransmit = Some((now + timers::G, timers::G));
            }
            self.ends = Some(now + timers::H);
        } else {
            self.state = State::Completed;
            self.ends = Some(now + unless_reliable(self.reliable, timers::J_UNRELIABLE));
        }
        vec![Action::Send(bytes)]
    }

    /// Time passed: fire the timers that are due.
    pub fn on_timer(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        if let Some((at, interval)) = self.retransmit {
            if now >= at && self.state == State::Completed {
                if let Some(r) = &self.last_response {
                    out.push(Action::Send(r.clone()));
                }
                let next = (interval * 2).min(timers::T2);
                self.retransmit = Some((now + next, next));
            }
        }
        if self.ends.is_some_and(|e| now >= e) {
            if self.invite && self.state == State::Completed {
                out.push(Action::Timeout); // Timer H: the ACK never came
            }
            self.state = State::Terminated;
            self.retransmit = None;
            self.ends = None;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(s: &str) -> Arc<[u8]> {
        Arc::from(s.as_bytes())
    }

    #[test]
    fn non_invite_over_udp_absorbs_then_ends_after_j() {
        let t0 = Instant::now();
        let mut t = ServerTransaction::new(false, false);
        assert!(
            t.on_retransmission().is_empty(),
            "nothing to resend while Trying"
        );
        assert_eq!(t.on_response(200, bytes("200"), t0).len(), 1);
        assert_eq!(t.state(), State::Completed);
        assert!(matches!(t.on_retransmission().as_slice(), [Action::Send(b)] if &**b == b"200"));
        assert!(t.on_timer(t0 + Duration::from_secs(31)).is_empty());
        assert!(!t.is_terminated());
        t.on_timer(t0 + timers::J_UNRELIABLE);
        assert!(t.is_terminated());
    }

    #[test]
    fn non_invite_over_tcp_ends_at_once() {
        let t0 = Instant::now();
        let mut t = ServerTransaction::new(false, true);
        t.on_response(404, bytes("404"), t0);
        t.on_timer(t0);
        assert!(t.is_terminated());
    }

    #[test]
    fn invite_non_2xx_retransmits_with_g_until_ack() {
        let t0 = Instant::now();
        let mut t = ServerTransaction::new(true, false);
        t.on_response(100, bytes("100"), t0);
        assert!(matches!(t.on_retransmission().as_slice(), [Action::Send(b)] if &**b == b"100"));
        t.on_response(486, bytes("486"), t0);
        assert_eq!(t.state(), State::Completed);
        // G: 0.5 s, then 1, 2, 4, 4 ...
        let mut at = t0;
        let mut sent = 0;
        for step in [500u64, 1000, 2000, 4000, 4000] {
            at += Duration::from_millis(step);
            sent += t
                .on_timer(at)
                .iter()
                .filter(|a| matches!(a, Action::Send(_)))
                .count();
        }
        assert_eq!(sent, 5);
        t.on_ack(at);
        assert_eq!(t.state(), State::Confirmed);
        assert!(t.on_timer(at + Duration::from_secs(1)).is_empty());
        t.on_timer(at + timers::I_UNRELIABLE);
        assert!(t.is_terminated());
    }

    #[test]
    fn invite_without_ack_times_out_with_h() {
        let t0 = Instant::now();
        let mut t = ServerTransaction::new(true, true);
        t.on_response(603, bytes("603"), t0);
        let actions = t.on_timer(t0 + timers::H);
        assert!(actions.iter().any(|a| matches!(a, Action::Timeout)));
        assert!(t.is_terminated());
    }

    #[test]
    fn invite_2xx_is_accepted_and_forwards_2xx_retransmissions() {
        let t0 = Instant::now();
        let mut t = ServerTransaction::new(true, false);
        t.on_response(200, bytes("200"), t0);
        assert_eq!(t.state(), State::Accepted);
        assert!(
            t.on_retransmission().is_empty(),
            "retransmitted INVITEs are absorbed"
        );
        assert_eq!(t.on_response(200, bytes("200 again"), t0).len(), 1);
        t.on_timer(t0 + timers::L);
        assert!(t.is_terminated());
    }
}
