//! Cells: the unit of replication. A cell is a value (with an optional expiry) or a tombstone,
//! stamped with the [`Timestamp`] of its write.
//!
//! # Merge laws
//! [`Cell::merge`] is last-write-wins: it returns the greater of two cells under one total order,
//! [`Cell::order_key`]: by timestamp; at equal timestamps a tombstone beats a value (a delete
//! issued at the same instant wins, as in Cassandra); then the greater deletion time or value
//! bytes; then the later expiry (no expiry counts as latest). Because `merge` is `max` over a
//! total order it is
//! - commutative: `a.merge(b) == b.merge(a)`,
//! - associative: `a.merge(b.merge(c)) == a.merge(b).merge(c)`,
//! - idempotent: `a.merge(a) == a`,
//!
//! so replicas that receive the same cells in any order, any number of times, converge to the
//! same cell. These laws are checked with proptest below.
//!
//! Expiry: a value whose expiry has passed reads as absent. Compaction turns it into a tombstone
//! with the same timestamp and `deleted_at = expires_at`, which is greater under the order, so
//! that conversion is itself a merge and cannot make replicas diverge.

use serde::{Deserialize, Serialize};

use crate::hlc::Timestamp;

/// The content of a cell.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CellValue {
    /// A live value, expiring at `expires_at` (wall-clock ms) if set.
    Live {
        /// The bytes of the value.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        /// When the value expires (wall-clock milliseconds since the epoch), if it does.
        expires_at: Option<u64>,
    },
    /// A deletion marker, kept for the grace period so replicas learn of the delete.
    Tombstone {
        /// When the deletion happened (wall-clock ms), the start of the grace period.
        deleted_at: u64,
    },
}

/// A timestamped cell.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Cell {
    /// The write timestamp (hybrid logical clock).
    pub ts: Timestamp,
    /// Value or tombstone.
    pub value: CellValue,
}

impl Cell {
    /// A live value without expiry.
    pub fn live(ts: Timestamp, value: impl Into<Vec<u8>>) -> Self {
        Cell {
            ts,
            value: CellValue::Live {
                value: value.into(),
                expires_at: None,
            },
        }
    }

    /// A live value that expires at `expires_at` (wall-clock ms).
    pub fn expiring(ts: Timestamp, value: impl Into<Vec<u8>>, expires_at: u64) -> Self {
        Cell {
            ts,
            value: CellValue::Live {
                value: value.into(),
                expires_at: Some(expires_at),
            },
        }
    }

    /// A tombstone; its grace period starts at the timestamp's wall-clock time.
    pub fn tombstone(ts: Timestamp) -> Self {
        Cell {
            ts,
            value: CellValue::Tombstone {
                deleted_at: ts.millis(),
            },
        }
    }

    /// The total order that last-write-wins uses (see the module docs).
    pub fn order_key(&self) -> (Timestamp, u8, &[u8], u64) {
        match &self.value {
            CellValue::Tombstone { deleted_at } => (self.ts, 1, &[], *deleted_at),
            CellValue::Live { value, expires_at } => {
                (self.ts, 0, value.as_slice(), expires_at.unwrap_or(u64::MAX))
            }
        }
    }

    /// Last-write-wins merge: the greater of the two cells under [`Cell::order_key`].
    pub fn merge(self, other: Cell) -> Cell {
        if other.order_key() > self.order_key() {
            other
        } else {
            self
        }
    }

    /// Whether `other` would win over `self` in a merge (so applying it changes the stored cell).
    pub fn is_superseded_by(&self, other: &Cell) -> bool {
        other.order_key() > self.order_key()
    }

    /// The value if the cell is live and not expired at wall time `now_ms`.
    pub fn live_value(&self, now_ms: u64) -> Option<&[u8]> {
        match &self.value {
            CellValue::Live { value, expires_at } if expires_at.is_none_or(|e| e > now_ms) => {
                Some(value)
            }
            _ => None,
        }
    }

    /// Whether this is a tombstone or an expired value at `now_ms`.
    pub fn is_dead(&self, now_ms: u64) -> bool {
        self.live_value(now_ms).is_none()
    }

    /// The expiry time of a live value.
    pub fn expires_at(&self) -> Option<u64> {
        match &self.value {
            CellValue::Live { expires_at, .. } => *expires_at,
            CellValue::Tombstone { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_cell() -> impl Strategy<Value = Cell> {
        let ts = 0u64..4;
        let value = prop_oneof![
            (
                prop::collection::vec(0u8..3, 0..3),
                prop::option::of(0u64..3)
            )
                .prop_map(|(value, expires_at)| CellValue::Live { value, expires_at }),
            (0u64..3).prop_map(|deleted_at| CellValue::Tombstone { deleted_at }),
        ];
        (ts, value).prop_map(|(ts, value)| Cell {
            ts: Timestamp(ts),
            value,
        })
    }

    proptest! {
        #[test]
        fn merge_is_commutative(a in arb_cell(), b in arb_cell()) {
            prop_assert_eq!(a.clone().merge(b.clone()), b.merge(a));
        }

        #[test]
        fn merge_is_associative(a in arb_cell(), b in arb_cell(), c in arb_cell()) {
            prop_assert_eq!(
                a.clone().merge(b.clone().merge(c.clone())),
                a.merge(b).merge(c)
            );
        }

        #[test]
        fn merge_is_idempotent(a in arb_cell(), b in arb_cell()) {
            prop_assert_eq!(a.clone().merge(a.clone()), a.clone());
            let ab = a.clone().merge(b.clone());
            prop_assert_eq!(ab.clone().merge(b), ab);
        }

        #[test]
        fn any_order_converges(cells in prop::collection::vec(arb_cell(), 1..8), seed in any::<u64>()) {
            let forward = cells.iter().cloned().reduce(Cell::merge).unwrap();
            let mut shuffled = cells.clone();
            // deterministic shuffle from the seed, with duplicates
            let n = shuffled.len();
            for i in 0..n {
                let j = (seed.rotate_left(i as u32) as usize) % n;
                shuffled.swap(i, j);
            }
            shuffled.push(cells[(seed as usize) % n].clone());
            let other = shuffled.into_iter().reduce(Cell::merge).unwrap();
            prop_assert_eq!(forward, other);
        }
    }

    #[test]
    fn newer_wins_and_tombstone_wins_ties() {
        let a = Cell::live(Timestamp(5), b"a".to_vec());
        let b = Cell::live(Timestamp(6), b"b".to_vec());
        assert_eq!(a.clone().merge(b.clone()), b);
        let t = Cell::tombstone(Timestamp(5));
        assert_eq!(a.clone().merge(t.clone()), t);
        let e = Cell::expiring(Timestamp(5), b"a".to_vec(), 100);
        assert!(e.live_value(99).is_some());
        assert!(e.live_value(100).is_none());
    }
}
