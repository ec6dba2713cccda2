//! The RFC 3261 timers (§17, Table 4), in one place.

use std::time::Duration;

/// RTT estimate.
pub const T1: Duration = Duration::from_millis(500);
/// Longest retransmit interval for non-INVITE requests and INVITE responses.
pub const T2: Duration = Duration::from_secs(4);
/// Longest time a message stays in the network.
pub const T4: Duration = Duration::from_secs(5);

/// Timer A: INVITE retransmit interval (UDP), initially T1, doubling.
pub const A: Duration = T1;
/// Timer B: INVITE transaction timeout, 64·T1.
pub const B: Duration = Duration::from_millis(64 * 500);
/// Timer C: proxy INVITE transaction timeout after a provisional (> 3 min).
pub const C: Duration = Duration::from_secs(181);
/// Timer D: wait time for response retransmits after a non-2xx final (≥ 32 s on UDP, 0 on TCP).
pub const D_UNRELIABLE: Duration = Duration::from_secs(32);
/// Timer E: non-INVITE retransmit interval (UDP), initially T1, doubling up to T2.
pub const E: Duration = T1;
/// Timer F: non-INVITE transaction timeout, 64·T1.
pub const F: Duration = Duration::from_millis(64 * 500);
/// Timer G: INVITE final response retransmit interval (UDP), initially T1, doubling up to T2.
pub const G: Duration = T1;
/// Timer H: wait time for ACK receipt, 64·T1.
pub const H: Duration = Duration::from_millis(64 * 500);
/// Timer I: wait time for ACK retransmits (T4 on UDP, 0 on TCP).
pub const I_UNRELIABLE: Duration = T4;
/// Timer J: wait time for non-INVITE request retransmits (64·T1 on UDP, 0 on TCP).
pub const J_UNRELIABLE: Duration = Duration::from_millis(64 * 500);
/// Timer K: wait time for response retransmits (T4 on UDP, 0 on TCP).
pub const K_UNRELIABLE: Duration = T4;
/// Timer L (RFC 6026): how long an INVITE server transaction stays Accepted after a 2xx.
pub const L: Duration = Duration::from_millis(64 * 500);
/// Timer M (RFC 6026): how long an INVITE client transaction stays Accepted after a 2xx.
pub const M: Duration = Duration::from_millis(64 * 500);

/// `d` on an unreliable transport, zero on a reliable one.
pub fn unless_reliable(reliable: bool, d: Duration) -> Duration {
    if reliable {
        Duration::ZERO
    } else {
        d
    }
}
