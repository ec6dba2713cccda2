//! Client transactions (RFC 3261 §17.1, with RFC 6026's Accepted state): INVITE and non-INVITE.
//! Pure state machines: events in (with the current time), actions out; no I/O, no clock.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::timers::{self, unless_reliable};
use super::Action;
use crate::sip::message::Message;
use crate::sip::request::ack_for;

/// States of a client transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// INVITE sent, no response yet.
    Calling,
    /// Non-INVITE sent, no response yet.
    Trying,
    /// A provisional response arrived.
    Proceeding,
    /// A final response arrived (non-2xx for INVITE); absorbing retransmissions.
    Completed,
    /// INVITE: a 2xx arrived (RFC 6026); 2xx retransmissions still pass up.
    Accepted,
    /// Done.
    Terminated,
}

/// A client transaction.
#[derive(Debug)]
pub struct ClientTransaction {
    /// The request, while it may be retransmitted or needs an ACK; dropped once a final
    /// response came (a transaction then lingers for up to 32 s holding only its ACK).
    request: Option<Message>,
    invite: bool,
    reliable: bool,
    state: State,
    /// Timer A/E: next retransmission and current interval.
    retransmit: Option<(Instant, Duration)>,
    /// Timer B/F (timeout), C (proxy INVITE after a provisional), D/K/M (end of state).
    ends: Option<Instant>,
    ack: Option<Arc<[u8]>>,
    /// Timer C's duration (RFC 3261 §16.6 step 11; > 3 min unless configured otherwise).
    timer_c: Duration,
    /// Timer C fired: the user was told (and cancels the branch); the transaction waits up to
    /// 64·T1 for the final response the CANCEL brings (§9.1).
    timer_c_fired: bool,
}

impl ClientTransaction {
    /// Start a transaction for `request`; the returned actions send it.
    pub fn new(request: Message, reliable: bool, now: Instant) -> (Self, Vec<Action>) {
        let invite = request.method() == Some(&crate::sip::Method::Invite);
        let first = if invite { timers::A } else { timers::E };
        let t = ClientTransaction {
            invite,
            reliable,
            state: if invite {
                State::Calling
            } else {
                State::Trying
            },
            retransmit: (!reliable).then_some((now + first, first)),
            ends: Some(now + if invite { timers::B } else { timers::F }),
            ack: None,
            request: Some(request),
            timer_c: timers::C,
            timer_c_fired: false,
        };
        let send = t
            .request
            .iter()
            .map(|r| Action::Send(r.raw.clone()))
            .collect();
        (t, send)
    }

    /// Use `d` for Timer C (a proxy may choose any value above 3 minutes; tests use less).
    pub fn with_timer_c(mut self, d: Duration) -> Self {
        self.timer_c = d;
        self
    }

    /// The current state.
    #[cfg(test)]
    pub fn state(&self) -> State {
        self.state
    }

    /// Whether the transaction is over.
    pub fn is_terminated(&self) -> bool {
        self.state == State::Terminated
    }

    /// Whether the transaction only lingers (a final response came: it absorbs
    /// retransmissions or passes 2xx through): it can be dropped early when memory is short.
    pub fn is_lingering(&self) -> bool {
        matches!(self.state, State::Completed | State::Accepted)
    }

    /// When `on_timer` must next be called.
    pub fn deadline(&self) -> Option<Instant> {
        match (self.retransmit.map(|r| r.0), self.ends) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// A response matched this transaction.
    pub fn on_response(&mut self, response: Message, now: Instant) -> Vec<Action> {
        let Some(code) = response.status() else {
            return Vec::new();
        };
        match self.state {
            State::Calling | State::Trying | State::Proceeding => {}
            State::Completed => {
                // A retransmitted final: re-send our ACK (INVITE), absorb otherwise.
                return self.ack.iter().map(|a| Action::Send(a.clone())).collect();
            }
            State::Accepted if (200..300).contains(&code) => {
                return vec![Action::Deliver(response)]
            }
            _ => return Vec::new(),
        }
        if code < 200 {
            if self.invite {
                self.retransmit = None;
                // Timer C replaces Timer B at the first response, and only a provisional
                // response other than 100 restarts it (§16.7 step 2); never once it fired.
                if !self.timer_c_fired && (code > 100 || self.state == State::Calling) {
                    self.ends = Some(now + self.timer_c);
                }
            } else if self.state == State::Trying {
                // Non-INVITE keeps retransmitting in Proceeding, at T2.
                if let Some((at, _)) = self.retransmit {
                    self.retransmit = Some((at, timers::T2));
                }
            }
            self.state = State::Proceeding;
            return vec![Action::Deliver(response)];
        }
        self.retransmit = None;
        let request = self.request.take();
        if self.invite && code < 300 {
            self.state = State::Accepted;
            self.ends = Some(now + timers::M);
            return vec![Action::Deliver(response)];
        }
        self.state = State::Completed;
        let mut out = Vec::new();
        if self.invite {
            let ack: Arc<[u8]> = match &request {
                Some(r) => Arc::from(ack_for(r, &response)),
                None => Arc::from(&b""[..]),
            };
            out.push(Action::Send(ack.clone()));
            self.ack = Some(ack);
            self.ends = Some(now + unless_reliable(self.reliable, timers::D_UNRELIABLE));
        } else {
            self.ends = Some(now + unless_reliable(self.reliable, timers::K_UNRELIABLE));
        }
        out.push(Action::Deliver(response));
        out
    }

    /// The transport reported that the request could not be sent.
    pub fn on_transport_error(&mut self) -> Vec<Action> {
        if matches!(
            self.state,
            State::Calling | State::Trying | State::Proceeding
        ) {
            self.state = State::Terminated;
            self.retransmit = None;
            self.ends = None;
            return vec![Action::Timeout];
        }
        Vec::new()
    }

    /// Time passed: fire the timers that are due.
    pub fn on_timer(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        if let Some((at, interval)) = self.retransmit {
            if now >= at
                && matches!(
                    self.state,
                    State::Calling | State::Trying | State::Proceeding
                )
            {
                if let Some(r) = &self.request {
                    out.push(Action::Send(r.raw.clone()));
                }
                let next = if self.invite {
                    interval * 2
                } else {
                    (interval * 2).min(timers::T2)
                };
                self.retransmit = Some((now + next, next));
            }
        }
        if self.ends.is_some_and(|e| now >= e) {
            if self.invite && self.state == State::Proceeding && !self.timer_c_fired {
                // Timer C (§16.8): the user cancels the branch; its final response (487, or a
                // 2xx that crossed the CANCEL) still comes through this transaction.
                self.timer_c_fired = true;
                self.ends = Some(now + timers::B);
                out.push(Action::Timeout);
                return out;
            }
            if matches!(
                self.state,
                State::Calling | State::Trying | State::Proceeding
            ) {
                out.push(Action::Timeout); // Timer B, C or F
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
    use crate::sip::message::HeaderName;

    fn msg(s: &str) -> Message {
        Message::parse(s.as_bytes(), false).unwrap()
    }

    const INVITE: &str = "INVITE sip:bob@b SIP/2.0\r\nVia: SIP/2.0/UDP p;branch=z9hG4bKc1\r\nRoute: <sip:r;lr>\r\nFrom: <sip:a@a>;tag=1\r\nTo: <sip:bob@b>\r\nCall-ID: c\r\nCSeq: 5 INVITE\r\nContent-Length: 0\r\n\r\n";
    const OPTIONS: &str = "OPTIONS sip:bob@b SIP/2.0\r\nVia: SIP/2.0/UDP p;branch=z9hG4bKc2\r\nFrom: <sip:a@a>;tag=1\r\nTo: <sip:bob@b>\r\nCall-ID: c\r\nCSeq: 6 OPTIONS\r\nContent-Length: 0\r\n\r\n";

    fn response(code: u16, method: &str) -> Message {
        msg(&format!("SIP/2.0 {code} X\r\nVia: SIP/2.0/UDP p;branch=z9hG4bKc1\r\nFrom: <sip:a@a>;tag=1\r\nTo: <sip:bob@b>;tag=2\r\nCall-ID: c\r\nCSeq: 5 {method}\r\nContent-Length: 0\r\n\r\n"))
    }

    fn sends(actions: &[Action]) -> usize {
        actions
            .iter()
            .filter(|a| matches!(a, Action::Send(_)))
            .count()
    }

    #[test]
    fn invite_retransmits_with_a_doubling_and_times_out_with_b() {
        let t0 = Instant::now();
        let (mut t, first) = ClientTransaction::new(msg(INVITE), false, t0);
        assert_eq!(sends(&first), 1);
        let mut total = 0;
        let mut at = t0;
        for ms in [500u64, 1000, 2000, 4000, 8000, 16000] {
            at += Duration::from_millis(ms);
            total += sends(&t.on_timer(at));
        }
        assert_eq!(total, 6, "A fires at 0.5, 1.5, 3.5, 7.5, 15.5, 31.5 s");
        let end = t.on_timer(t0 + timers::B);
        assert!(end.iter().any(|a| matches!(a, Action::Timeout)));
        assert!(t.is_terminated());
    }

    #[test]
    fn invite_non_2xx_is_acked_and_retransmissions_reacked() {
        let t0 = Instant::now();
        let (mut t, _) = ClientTransaction::new(msg(INVITE), false, t0);
        let a = t.on_response(response(180, "INVITE"), t0);
        assert!(matches!(a.as_slice(), [Action::Deliver(_)]));
        assert_eq!(
            sends(&t.on_timer(t0 + Duration::from_secs(5))),
            0,
            "no retransmission after a provisional"
        );
        let a = t.on_response(response(486, "INVITE"), t0);
        assert_eq!(sends(&a), 1);
        let Action::Send(ack) = &a[0] else { panic!() };
        let ack = Message::parse(ack, true).unwrap();
        assert_eq!(ack.method(), Some(&crate::sip::Method::Ack));
        assert_eq!(ack.header(&HeaderName::CSeq), Some("5 ACK"));
        assert!(ack.header(&HeaderName::To).unwrap().contains("tag=2"));
        assert_eq!(ack.values(&HeaderName::Route), vec!["<sip:r;lr>"]);
        // retransmitted 486: ACK again, not delivered twice
        let again = t.on_response(response(486, "INVITE"), t0);
        assert!(matches!(again.as_slice(), [Action::Send(_)]));
        t.on_timer(t0 + timers::D_UNRELIABLE);
        assert!(t.is_terminated());
    }

    #[test]
    fn invite_2xx_is_accepted_and_retransmitted_2xx_passes_up() {
        let t0 = Instant::now();
        let (mut t, _) = ClientTransaction::new(msg(INVITE), true, t0);
        t.on_response(response(200, "INVITE"), t0);
        assert_eq!(t.state(), State::Accepted);
        assert!(matches!(
            t.on_response(response(200, "INVITE"), t0).as_slice(),
            [Action::Deliver(_)]
        ));
        t.on_timer(t0 + timers::M);
        assert!(t.is_terminated());
    }

    #[test]
    fn timer_c_restarts_only_on_101_to_199_and_leaves_room_for_the_cancels_answer() {
        let t0 = Instant::now();
        let (t, _) = ClientTransaction::new(msg(INVITE), true, t0);
        let mut t = t.with_timer_c(Duration::from_secs(60));
        let s = Duration::from_secs;
        t.on_response(response(100, "INVITE"), t0);
        // A 100 started Timer C (Timer B no longer applies in Proceeding)…
        assert!(t.on_timer(t0 + timers::B).is_empty());
        // …and further 100s do not restart it; a 180 does.
        t.on_response(response(100, "INVITE"), t0 + s(50));
        assert_eq!(t.deadline(), Some(t0 + s(60)));
        t.on_response(response(180, "INVITE"), t0 + s(55));
        assert_eq!(t.deadline(), Some(t0 + s(115)));
        // Expiry: the user hears a timeout (and cancels), the transaction stays to take the
        // 487 the CANCEL brings, ACKs it, and nothing restarts Timer C any more.
        let fired = t.on_timer(t0 + s(115));
        assert!(matches!(fired.as_slice(), [Action::Timeout]));
        assert!(!t.is_terminated());
        t.on_response(response(180, "INVITE"), t0 + s(116));
        assert_eq!(t.deadline(), Some(t0 + s(115) + timers::B));
        let a = t.on_response(response(487, "INVITE"), t0 + s(117));
        assert_eq!(sends(&a), 1, "the 487 is ACKed");
        assert_eq!(t.state(), State::Completed);
    }

    #[test]
    fn timer_c_without_an_answer_to_the_cancel_ends_after_64_t1() {
        let t0 = Instant::now();
        let (t, _) = ClientTransaction::new(msg(INVITE), true, t0);
        let mut t = t.with_timer_c(Duration::from_secs(10));
        t.on_response(response(180, "INVITE"), t0);
        assert!(matches!(
            t.on_timer(t0 + Duration::from_secs(10)).as_slice(),
            [Action::Timeout]
        ));
        t.on_timer(t0 + Duration::from_secs(10) + timers::B);
        assert!(t.is_terminated());
    }

    #[test]
    fn non_invite_retransmits_capped_at_t2_and_times_out_with_f() {
        let t0 = Instant::now();
        let (mut t, _) = ClientTransaction::new(msg(OPTIONS), false, t0);
        let mut at = t0;
        let mut total = 0;
        for ms in [500u64, 1000, 2000, 4000, 4000, 4000] {
            at += Duration::from_millis(ms);
            total += sends(&t.on_timer(at));
        }
        assert_eq!(total, 6);
        assert!(t
            .on_timer(t0 + timers::F)
            .iter()
            .any(|a| matches!(a, Action::Timeout)));
    }

    #[test]
    fn non_invite_over_tcp_never_retransmits_and_k_is_zero() {
        let t0 = Instant::now();
        let (mut t, _) = ClientTransaction::new(msg(OPTIONS), true, t0);
        assert_eq!(sends(&t.on_timer(t0 + Duration::from_secs(10))), 0);
        t.on_response(response(200, "OPTIONS"), t0);
        t.on_timer(t0);
        assert!(t.is_terminated());
    }
}
