//! Capacity a burst leaves behind. A hash table or a queue keeps the capacity its peak needed:
//! after a registration storm (every phone re-registering when a network comes back), the
//! transaction table alone would hold tens of MiB for transactions long ended. Each holder
//! calls [`Slack::release`] from a periodic sweep, which gives back all but twice what is held
//! once the capacity is more than four times that (so a steady load never shrinks and regrows).

use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::hash::{BuildHasher, Hash};

/// Below this capacity nothing is given back (not worth a rehash).
const FLOOR: usize = 1_024;

/// The capacity to shrink to, if `capacity` is far above what `len` needs.
fn shrink_to(len: usize, capacity: usize) -> Option<usize> {
    (capacity > FLOOR && capacity > 4 * len).then(|| (2 * len).max(FLOOR / 2))
}

/// A collection whose unused capacity can be given back.
pub(crate) trait Slack {
    /// Give back most of the capacity this collection does not use.
    fn release(&mut self);
}

impl<K: Eq + Hash, V, S: BuildHasher> Slack for HashMap<K, V, S> {
    fn release(&mut self) {
        if let Some(to) = shrink_to(self.len(), self.capacity()) {
            self.shrink_to(to);
        }
    }
}

impl<T> Slack for VecDeque<T> {
    fn release(&mut self) {
        if let Some(to) = shrink_to(self.len(), self.capacity()) {
            self.shrink_to(to);
        }
    }
}

impl<T: Ord> Slack for BinaryHeap<T> {
    fn release(&mut self) {
        if let Some(to) = shrink_to(self.len(), self.capacity()) {
            self.shrink_to(to);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drained_table_gives_its_capacity_back_and_a_busy_one_keeps_it() {
        let mut m: HashMap<u64, [u8; 64]> = (0..100_000).map(|i| (i, [0; 64])).collect();
        let peak = m.capacity();
        m.release();
        assert_eq!(m.capacity(), peak, "a full table keeps its capacity");
        m.retain(|k, _| *k < 30_000);
        // (`capacity` counts what can be inserted without growing, which deleted slots lower.)
        let room = m.capacity();
        m.release();
        assert_eq!(
            m.capacity(),
            room,
            "a table a third full keeps its capacity"
        );
        m.retain(|k, _| *k < 10_000);
        m.release();
        assert!(m.capacity() <= peak / 4, "{} of {peak}", m.capacity());
        assert!(m.capacity() >= 20_000, "room for twice what is held");
        assert_eq!(m.len(), 10_000);
        m.clear();
        m.release();
        assert!(m.capacity() <= FLOOR);

        let mut q: VecDeque<u64> = (0..50_000).collect();
        q.drain(..49_000);
        q.release();
        assert!(q.capacity() < 4_000 && q.len() == 1_000);
        assert_eq!(q.front(), Some(&49_000));

        let mut h: BinaryHeap<u64> = (0..50_000).collect();
        while h.len() > 100 {
            h.pop();
        }
        h.release();
        assert!(h.capacity() <= FLOOR && h.peek() == Some(&99));
    }
}
