//! A hybrid logical clock (HLC): timestamps that follow wall time, never go backwards, and move
//! past any timestamp seen from another node, so a node with a slow wall clock cannot lose its
//! writes to older ones.
//!
//! A [`Timestamp`] is a `u64`: the upper 48 bits are milliseconds since the Unix epoch, the lower
//! 16 bits a logical counter. Ordering timestamps is ordering the integers.
//!
//! Restarts: the clock persists a *ceiling* a little ahead of the physical time it has handed out
//! (a window of [`CEILING_WINDOW_MS`]) and, after a restart, never issues anything below it. The
//! next ceiling is persisted by a thread of its own once half the window is used, so handing out
//! a timestamp never waits for a disk flush unless the disk is slower than half a window.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::Result;

/// Bits of the logical counter.
const LOGICAL_BITS: u32 = 16;
/// How far ahead of issued time the persisted ceiling is placed: one durable write per half
/// window.
pub const CEILING_WINDOW_MS: u64 = 2_000;
/// A remote timestamp further than this ahead of our wall clock does not move our clock: a peer
/// with a wildly wrong clock must not drag the whole mesh into the future.
pub const MAX_FORWARD_DRIFT_MS: u64 = 5 * 60 * 1_000;

/// A hybrid-logical-clock timestamp (48 bits of milliseconds, 16 bits of logical counter).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// The timestamp at the start of millisecond `ms`.
    pub fn from_millis(ms: u64) -> Self {
        Timestamp(ms << LOGICAL_BITS)
    }
    /// The wall-clock milliseconds part.
    pub fn millis(self) -> u64 {
        self.0 >> LOGICAL_BITS
    }
    /// The logical counter part.
    pub fn logical(self) -> u16 {
        (self.0 & ((1 << LOGICAL_BITS) - 1)) as u16
    }
}

/// A source of wall-clock time in milliseconds since the Unix epoch (injectable for tests).
pub trait WallClock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl WallClock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// Persists the ceiling; called at most once per [`CEILING_WINDOW_MS`] of issued time.
pub type CeilingStore = Box<dyn Fn(u64) -> Result<()> + Send + Sync>;

/// The hybrid logical clock. Cheap to share behind an `Arc`.
pub struct Hlc {
    clock: Arc<dyn WallClock>,
    state: Mutex<State>,
    /// Persists ceilings: on a thread of its own, or (without a thread) inline.
    store: Option<Arc<CeilingStore>>,
    /// Ceilings for the persisting thread, and the thread (joined on drop, so the store it
    /// holds is released with the clock).
    ahead: Option<(
        std::sync::mpsc::SyncSender<u64>,
        std::thread::JoinHandle<()>,
    )>,
    /// The highest ceiling known to be durable (written by the persisting thread).
    durable_ms: Arc<AtomicU64>,
}

struct State {
    /// The last timestamp issued or observed.
    last: u64,
    /// The highest ceiling asked of the persisting thread.
    requested_ms: u64,
}

impl std::fmt::Debug for Hlc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hlc").finish_non_exhaustive()
    }
}

impl Hlc {
    /// A clock that starts above `persisted_ceiling_ms` (0 for a fresh store) and persists its
    /// ceiling through `store`.
    pub fn new(
        clock: Arc<dyn WallClock>,
        persisted_ceiling_ms: u64,
        store: Option<CeilingStore>,
    ) -> Self {
        // A quick restart: this node may have issued timestamps up to the ceiling, which is
        // ahead of the wall clock. Starting there would stamp every write ahead of the other
        // nodes' until the wall clock caught up, so a later delete or update through another
        // node would lose to an earlier write through this one. Wait it out instead (at most
        // the window; a bigger gap means the wall clock went back, and then the ceiling is
        // where this clock starts, to stay monotonic).
        let wall = clock.now_ms();
        if persisted_ceiling_ms > wall && persisted_ceiling_ms - wall <= CEILING_WINDOW_MS {
            std::thread::sleep(std::time::Duration::from_millis(
                persisted_ceiling_ms - wall + 1,
            ));
        }
        let store = store.map(Arc::new);
        let durable_ms = Arc::new(AtomicU64::new(persisted_ceiling_ms));
        let ahead = store.as_ref().and_then(|store| {
            let (tx, rx) = std::sync::mpsc::sync_channel::<u64>(4);
            let (store, durable) = (store.clone(), durable_ms.clone());
            std::thread::Builder::new()
                .name("hlc-ceiling".into())
                .spawn(move || {
                    // Ends when the clock (the sender) is dropped.
                    while let Ok(mut c) = rx.recv() {
                        while let Ok(later) = rx.try_recv() {
                            c = c.max(later);
                        }
                        match store(c) {
                            Ok(()) => {
                                durable.fetch_max(c, Ordering::SeqCst);
                            }
                            Err(e) => {
                                tracing::error!(error = %e, "could not persist the clock ceiling")
                            }
                        }
                    }
                })
                .ok()
                .map(|handle| (tx, handle))
        });
        Hlc {
            clock,
            state: Mutex::new(State {
                last: Timestamp::from_millis(persisted_ceiling_ms).0,
                requested_ms: persisted_ceiling_ms,
            }),
            store,
            ahead,
            durable_ms,
        }
    }

    /// An in-memory clock on the system wall clock (no persistence).
    pub fn system() -> Self {
        Hlc::new(Arc::new(SystemClock), 0, None)
    }

    /// Wall-clock milliseconds as this clock sees them (for TTLs).
    pub fn wall_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// A new timestamp, strictly greater than every timestamp issued or observed before.
    pub fn now(&self) -> Timestamp {
        let physical = Timestamp::from_millis(self.clock.now_ms()).0;
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.last = (st.last + 1).max(physical);
        let ts = st.last;
        self.ensure_ceiling(&mut st, ts);
        Timestamp(ts)
    }

    /// Observe a timestamp from another node, so later local timestamps are greater.
    /// A timestamp too far ahead of our wall clock is not followed (see [`MAX_FORWARD_DRIFT_MS`]);
    /// returns whether it was followed.
    pub fn observe(&self, remote: Timestamp) -> bool {
        let now_ms = self.clock.now_ms();
        if remote.millis() > now_ms.saturating_add(MAX_FORWARD_DRIFT_MS) {
            tracing::warn!(
                remote_ms = remote.millis(),
                now_ms,
                "timestamp from a peer is far in the future; not following it"
            );
            return false;
        }
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if remote.0 > st.last {
            st.last = remote.0;
            self.ensure_ceiling(&mut st, remote.0);
        }
        true
    }

    /// Keep the durable ceiling ahead of `ts`: ask for the next one once half the window is
    /// used; wait for it only if `ts` reached the durable one (the disk is very slow).
    fn ensure_ceiling(&self, st: &mut State, ts: u64) {
        let Some(store) = &self.store else { return };
        let ms = Timestamp(ts).millis();
        if ms + CEILING_WINDOW_MS / 2 >= st.requested_ms {
            let next = ms + CEILING_WINDOW_MS;
            let queued = self
                .ahead
                .as_ref()
                .is_some_and(|(tx, _)| tx.try_send(next).is_ok());
            if queued {
                st.requested_ms = next;
            }
        }
        if ms >= self.durable_ms.load(Ordering::SeqCst) {
            // Past the durable ceiling: persist inline (correctness over latency).
            let next = ms + CEILING_WINDOW_MS;
            match store(next) {
                Ok(()) => {
                    self.durable_ms.fetch_max(next, Ordering::SeqCst);
                    st.requested_ms = st.requested_ms.max(next);
                }
                Err(e) => tracing::error!(error = %e, "could not persist the clock ceiling"),
            }
        }
    }
}

impl Drop for Hlc {
    fn drop(&mut self) {
        if let Some((tx, handle)) = self.ahead.take() {
            drop(tx);
            let _ = handle.join();
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A wall clock the test moves by hand.
    #[derive(Default)]
    pub struct ManualClock(pub AtomicU64);
    impl WallClock for ManualClock {
        fn now_ms(&self) -> u64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    #[test]
    fn monotonic_when_wall_clock_goes_back() {
        let wall = Arc::new(ManualClock(AtomicU64::new(10_000)));
        let hlc = Hlc::new(wall.clone(), 0, None);
        let a = hlc.now();
        wall.0.store(5_000, Ordering::SeqCst);
        let b = hlc.now();
        assert!(b > a);
        assert_eq!(b.millis(), 10_000);
        assert_eq!(b.logical(), 1);
    }

    #[test]
    fn follows_remote_but_not_wild_ones() {
        let wall = Arc::new(ManualClock(AtomicU64::new(10_000)));
        let hlc = Hlc::new(wall, 0, None);
        assert!(hlc.observe(Timestamp::from_millis(20_000)));
        assert!(hlc.now() > Timestamp::from_millis(20_000));
        assert!(!hlc.observe(Timestamp::from_millis(10_000 + MAX_FORWARD_DRIFT_MS + 1)));
        assert!(hlc.now() < Timestamp::from_millis(30_000));
    }

    #[test]
    fn restart_never_goes_back() {
        let wall = Arc::new(ManualClock(AtomicU64::new(50_000)));
        let persisted = Arc::new(AtomicU64::new(0));
        let p = persisted.clone();
        let hlc = Hlc::new(
            wall.clone(),
            0,
            Some(Box::new(move |c| {
                p.store(c, Ordering::SeqCst);
                Ok(())
            })),
        );
        let last = hlc.now();
        assert!(persisted.load(Ordering::SeqCst) > last.millis());
        // restart with the wall clock behind
        wall.0.store(1_000, Ordering::SeqCst);
        let hlc2 = Hlc::new(wall, persisted.load(Ordering::SeqCst), None);
        assert!(hlc2.now() > last);
    }

    #[test]
    fn a_quick_restart_waits_out_the_ceiling_instead_of_running_ahead() {
        let persisted = Arc::new(AtomicU64::new(0));
        let p = persisted.clone();
        let hlc = Hlc::new(
            Arc::new(SystemClock),
            0,
            Some(Box::new(move |c| {
                p.store(c, Ordering::SeqCst);
                Ok(())
            })),
        );
        let last = hlc.now();
        let ceiling = persisted.load(Ordering::SeqCst);
        assert!(ceiling > SystemClock.now_ms(), "the ceiling is ahead");
        drop(hlc);
        let hlc2 = Hlc::new(Arc::new(SystemClock), ceiling, None);
        let first = hlc2.now();
        assert!(first > last);
        assert!(
            first.millis() <= SystemClock.now_ms(),
            "a restarted clock stamps no later than the wall clock"
        );
    }

    #[test]
    fn a_slow_disk_does_not_stall_timestamps_inside_the_window() {
        let wall = Arc::new(ManualClock(AtomicU64::new(100_000)));
        let persisted = Arc::new(AtomicU64::new(0));
        let p = persisted.clone();
        let hlc = Hlc::new(
            wall.clone(),
            0,
            Some(Box::new(move |c| {
                std::thread::sleep(std::time::Duration::from_millis(200));
                p.fetch_max(c, Ordering::SeqCst);
                Ok(())
            })),
        );
        hlc.now(); // the first ceiling is written inline
        let durable = persisted.load(Ordering::SeqCst);
        assert!(durable > 100_000);
        // Move past half the window: the next ceiling goes to the thread, not inline.
        wall.0
            .store(100_000 + CEILING_WINDOW_MS / 2 + 1, Ordering::SeqCst);
        let t = std::time::Instant::now();
        for _ in 0..100 {
            hlc.now();
        }
        assert!(
            t.elapsed() < std::time::Duration::from_millis(150),
            "{:?}",
            t.elapsed()
        );
        // It lands in the background.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while persisted.load(Ordering::SeqCst) == durable {
            assert!(std::time::Instant::now() < deadline);
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}
