//! Scans of token ranges and partitions, for anti-entropy and handoff: raw entries, the
//! partitions stored, per-partition digests of a Merkle leaf, and pages of one partition —
//! every one of them bounded, so a wide partition is read in pieces.

use std::ops::Bound;

use super::{prefix_end, Keyspace, RawEntry};
use crate::cell::Cell;
use crate::error::Result;
use crate::key::{self, decode_key, partition_prefix, EntryKey, Token};
use crate::merkle::entry_hash;
use crate::mutation::Mutation;
use crate::schema::TableId;

/// The digest of one partition's stored entries (the XOR of their entry hashes, as the Merkle
/// leaves are made), so two replicas can compare a leaf partition by partition.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PartitionDigest {
    /// The table.
    pub table: TableId,
    /// The partition key.
    #[serde(with = "serde_bytes")]
    pub partition_key: Vec<u8>,
    /// The XOR of its entries' hashes.
    pub hash: u64,
}

/// A page of a partition: its entries, and the raw key to resume after if there is more.
pub type Page = (Vec<(EntryKey, Cell)>, Option<Vec<u8>>);

/// The raw key just past every entry of partition `(table, pk)`: where a scan that has
/// finished that partition resumes.
fn after_partition(table: TableId, pk: &[u8]) -> Bound<Vec<u8>> {
    prefix_end(&partition_prefix(table, pk))
}

impl Keyspace {
    /// The digests of the partitions whose tokens lie in `first..=last`, in key order,
    /// starting after partition `after`, at most `max` of them; and the partition to resume
    /// after, if there are more.
    #[allow(clippy::type_complexity)]
    pub fn partition_digests(
        &self,
        first: Token,
        last: Token,
        after: Option<(TableId, &[u8])>,
        max: usize,
    ) -> Result<(Vec<PartitionDigest>, Option<(TableId, Vec<u8>)>)> {
        let start = match after {
            Some((table, pk)) => after_partition(table, pk),
            None => Bound::Included(first.to_be_bytes().to_vec()),
        };
        let end = match last.checked_add(1) {
            Some(next) => Bound::Excluded(next.to_be_bytes().to_vec()),
            None => Bound::Unbounded,
        };
        let mut out: Vec<PartitionDigest> = Vec::new();
        for kv in self.inner.cells.range(start, end) {
            let (k, v) = kv?;
            let d = decode_key(&k)?;
            let same = out
                .last()
                .is_some_and(|p| p.table == d.table && p.partition_key == d.partition_key);
            if !same {
                if out.len() == max {
                    let resume = out.last().map(|p| (p.table, p.partition_key.clone()));
                    return Ok((out, resume));
                }
                out.push(PartitionDigest {
                    table: d.table,
                    partition_key: d.partition_key,
                    hash: 0,
                });
            }
            if let Some(p) = out.last_mut() {
                p.hash ^= entry_hash(&k, &v);
            }
        }
        Ok((out, None))
    }

    /// A page of one partition's raw entries, in order, starting after raw key `after`, until
    /// about `max_bytes` of stored data; and the raw key to resume after, if there is more. A
    /// partition of any width is read in bounded pages.
    pub fn partition_page(
        &self,
        table: TableId,
        partition_key: &[u8],
        after: Option<&[u8]>,
        max_bytes: usize,
    ) -> Result<Page> {
        self.schema(table)?;
        let prefix = partition_prefix(table, partition_key);
        let start = match after {
            Some(k) if k.starts_with(&prefix) => Bound::Excluded(k.to_vec()),
            _ => Bound::Included(prefix.clone()),
        };
        let mut out = Vec::new();
        let mut size = 0;
        for kv in self.inner.cells.range(start, prefix_end(&prefix)) {
            let (k, v) = kv?;
            size += k.len() + v.len();
            self.expand(&k, &v, &mut out)?;
            if size >= max_bytes {
                return Ok((out, Some(k)));
            }
        }
        Ok((out, None))
    }

    /// Every raw entry whose token lies in `first..=last`, in order.
    pub fn scan_tokens(
        &self,
        first: Token,
        last: Token,
    ) -> impl Iterator<Item = Result<RawEntry>> + '_ {
        let start = Bound::Included(first.to_be_bytes().to_vec());
        let end = match last.checked_add(1) {
            Some(next) => Bound::Excluded(next.to_be_bytes().to_vec()),
            None => Bound::Unbounded,
        };
        self.inner.cells.range(start, end).flat_map(move |kv| {
            let expanded = kv.and_then(|(k, v)| {
                let d = decode_key(&k)?;
                let mut entries = Vec::new();
                self.expand(&k, &v, &mut entries)?;
                Ok(entries.into_iter().map(move |(entry, cell)| {
                    Ok(RawEntry {
                        table: d.table,
                        partition_key: d.partition_key.clone(),
                        entry,
                        cell,
                    })
                }))
            });
            match expanded {
                Ok(iter) => Box::new(iter) as Box<dyn Iterator<Item = Result<RawEntry>>>,
                Err(e) => Box::new(std::iter::once(Err(e))),
            }
        })
    }

    /// The entries whose token lies in `first..=last`, grouped into one mutation per partition.
    pub fn mutations_in(&self, first: Token, last: Token) -> Result<Vec<Mutation>> {
        let mut out: Vec<Mutation> = Vec::new();
        for e in self.scan_tokens(first, last) {
            let e = e?;
            match out.last_mut() {
                Some(m) if m.table == e.table && m.partition_key == e.partition_key => {
                    m.entries.push((e.entry, e.cell))
                }
                _ => {
                    let mut m = Mutation::new(e.table, e.partition_key);
                    m.entries.push((e.entry, e.cell));
                    out.push(m);
                }
            }
        }
        Ok(out)
    }

    /// The partition keys of `table` stored here, in token order, starting after partition
    /// `after` of that table (from the first when `None`), at most `max` of them; and whether
    /// there may be more. For listings: it reads past the other tables' entries in the token
    /// range it covers, and holds at most `max` keys.
    pub fn partitions_of(
        &self,
        table: TableId,
        after: Option<&[u8]>,
        max: usize,
    ) -> Result<(Vec<Vec<u8>>, bool)> {
        let start = match after {
            Some(pk) => after_partition(table, pk),
            None => Bound::Unbounded,
        };
        let mut out: Vec<Vec<u8>> = Vec::new();
        for kv in self.inner.cells.range(start, Bound::Unbounded) {
            let (k, _) = kv?;
            let d = decode_key(&k)?;
            if d.table != table || out.last() == Some(&d.partition_key) {
                continue;
            }
            if out.len() == max {
                return Ok((out, true));
            }
            out.push(d.partition_key);
        }
        Ok((out, false))
    }

    /// The stored rows of a partition as (row key, hash of its stored bytes): what
    /// [`Keyspace::drop_partition_locally_if_unchanged`] compares against.
    pub fn partition_fingerprint(
        &self,
        table: TableId,
        partition_key: &[u8],
    ) -> Result<Vec<(Vec<u8>, u64)>> {
        let prefix = partition_prefix(table, partition_key);
        let mut out = Vec::new();
        for kv in self
            .inner
            .cells
            .range(Bound::Included(prefix.clone()), prefix_end(&prefix))
        {
            let (k, v) = kv?;
            let h = entry_hash(&k, &v);
            out.push((k, h));
        }
        Ok(out)
    }

    /// Remove from this node only the rows of a partition that are exactly as `seen` recorded
    /// them (by [`Keyspace::partition_fingerprint`] before they were handed over); a row written
    /// since — a write acknowledged during the handoff — stays for the next round. Returns how
    /// many rows stayed.
    pub fn drop_partition_locally_if_unchanged(
        &self,
        table: TableId,
        partition_key: &[u8],
        seen: &[(Vec<u8>, u64)],
    ) -> Result<usize> {
        let token = key::token_of(partition_key);
        let seen: std::collections::HashMap<&[u8], u64> =
            seen.iter().map(|(k, h)| (k.as_slice(), *h)).collect();
        let _guard = self.stripe(token).lock().unwrap_or_else(|p| p.into_inner());
        let mut batch = Vec::new();
        let mut kept = 0;
        for (k, h) in self.partition_fingerprint(table, partition_key)? {
            if seen.get(k.as_slice()) == Some(&h) {
                self.inner.merkle.toggle(token, h);
                batch.push((k, None));
            } else {
                kept += 1;
            }
        }
        if !batch.is_empty() {
            self.inner.cells.apply(batch)?;
        }
        Ok(kept)
    }
}

#[cfg(test)]
mod tests {
    use crate::merkle::{leaf_of, leaf_tokens};
    use crate::{ClusteringOrder, Keyspace, Mutation, TableSchema, Timestamp};

    fn ks() -> Keyspace {
        Keyspace::in_memory(vec![
            TableSchema::new(1, "t", "k", &["v"]).clustered("c", ClusteringOrder::Asc)
        ])
    }

    fn fill(ks: &Keyspace, pk: &[u8], rows: u32, ts: u64) {
        let mut m = Mutation::new(1, pk.to_vec());
        for i in 0..rows {
            m = m.upsert(&i.to_be_bytes(), [("v", vec![7; 20])], Timestamp(ts), None);
        }
        ks.apply(&m).unwrap();
    }

    #[test]
    fn a_timestamp_beyond_the_clock_bound_is_refused_and_never_stored() {
        let ks = ks();
        let now = Timestamp::from_millis(ks.wall_ms());
        let ahead =
            Timestamp::from_millis(ks.wall_ms() + crate::hlc::MAX_FORWARD_DRIFT_MS + 60_000);
        for ts in [ahead, Timestamp(u64::MAX)] {
            let m = Mutation::new(1, b"p".to_vec()).upsert(b"r", [("v", vec![1])], ts, None);
            assert!(matches!(ks.apply(&m), Err(crate::Error::ClockSkew { .. })));
            assert!(ks.partition_entries(1, b"p").unwrap().is_empty(), "stored");
        }
        assert_eq!(ks.clock_refusals(), 2);
        // a later correct write is not shadowed by anything
        let m = Mutation::new(1, b"p".to_vec()).upsert(b"r", [("v", vec![2])], now, None);
        assert_eq!(ks.apply(&m).unwrap(), 1);
    }

    #[test]
    fn partitions_of_a_table_page_in_token_order_past_other_tables() {
        let ks = Keyspace::in_memory(vec![
            TableSchema::new(1, "t", "k", &["v"]).clustered("c", ClusteringOrder::Asc),
            TableSchema::new(2, "u", "k", &["v"]),
        ]);
        for i in 0..300u32 {
            fill(&ks, format!("p{i}").as_bytes(), 1 + i % 3, 5);
            // The same keys in another table, and keys only it has.
            for pk in [format!("p{i}"), format!("q{i}")] {
                let m = Mutation::new(2, pk.into_bytes()).upsert(
                    b"",
                    [("v", vec![1])],
                    Timestamp(5),
                    None,
                );
                ks.apply(&m).unwrap();
            }
        }
        let mut want: Vec<(u64, Vec<u8>)> = (0..300u32)
            .map(|i| format!("p{i}").into_bytes())
            .map(|pk| (crate::token_of(&pk), pk))
            .collect();
        want.sort();
        let want: Vec<Vec<u8>> = want.into_iter().map(|(_, pk)| pk).collect();
        let (all, more) = ks.partitions_of(1, None, usize::MAX).unwrap();
        assert_eq!((all, more), (want.clone(), false));
        for max in [1, 7, 100, 300] {
            let (mut got, mut after) = (Vec::new(), None::<Vec<u8>>);
            loop {
                let (page, more) = ks.partitions_of(1, after.as_deref(), max).unwrap();
                assert!(page.len() <= max);
                after = page.last().cloned();
                got.extend(page);
                if !more {
                    break;
                }
            }
            assert_eq!(got, want, "pages of {max}");
        }
        // After the last key: nothing; a key that is not stored still places the cursor.
        let last = want.last().unwrap();
        assert_eq!(ks.partitions_of(1, Some(last), 5).unwrap(), (vec![], false));
        let (page, _) = ks.partitions_of(1, Some(b"gone"), 1_000).unwrap();
        let from = crate::token_of(b"gone");
        assert!(page.iter().all(|pk| crate::token_of(pk) > from));
        assert_eq!(
            page.len(),
            want.iter().filter(|pk| crate::token_of(pk) > from).count()
        );
    }

    #[test]
    fn a_handoff_drop_keeps_rows_written_after_the_fingerprint() {
        let ks = ks();
        fill(&ks, b"p", 3, 5);
        let seen = ks.partition_fingerprint(1, b"p").unwrap();
        assert_eq!(seen.len(), 3);
        // During the transfer: row 1 is overwritten, row 9 is new.
        let m = Mutation::new(1, b"p".to_vec())
            .upsert(&1u32.to_be_bytes(), [("v", vec![8])], Timestamp(9), None)
            .upsert(&9u32.to_be_bytes(), [("v", vec![8])], Timestamp(9), None);
        ks.apply(&m).unwrap();
        let kept = ks
            .drop_partition_locally_if_unchanged(1, b"p", &seen)
            .unwrap();
        assert_eq!(kept, 2);
        let left = ks.partition_fingerprint(1, b"p").unwrap();
        assert_eq!(
            left.len(),
            2,
            "the two rows written during the handoff stay"
        );
        ks.drop_partition_locally_if_unchanged(1, b"p", &left)
            .unwrap();
        assert!(ks.partition_entries(1, b"p").unwrap().is_empty());
    }

    #[test]
    fn pages_split_a_wide_partition_and_join_back_whole() {
        let ks = ks();
        fill(&ks, b"wide", 1000, 5);
        let whole = ks.partition_entries(1, b"wide").unwrap();
        let mut joined = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        let mut pages = 0;
        loop {
            let (page, next) = ks
                .partition_page(1, b"wide", after.as_deref(), 4096)
                .unwrap();
            assert!(!page.is_empty());
            // a page stops at the first row past the byte budget
            assert!(page.len() < 1000 * 3);
            joined.extend(page);
            pages += 1;
            match next {
                Some(k) => {
                    assert!(
                        after.as_ref().is_none_or(|a| k > *a),
                        "cursor moves forward"
                    );
                    after = Some(k);
                }
                None => break,
            }
        }
        assert!(pages > 5, "{pages} pages");
        assert_eq!(joined, whole);
    }

    #[test]
    fn digests_tell_which_partitions_of_a_leaf_differ() {
        let (a, b) = (ks(), ks());
        // Partitions in one leaf: pick keys until three share the first key's leaf.
        let leaf = leaf_of(crate::token_of(b"p0"));
        let keys: Vec<Vec<u8>> = (0..200_000u32)
            .map(|i| format!("p{i}").into_bytes())
            .filter(|k| leaf_of(crate::token_of(k)) == leaf)
            .take(3)
            .collect();
        for k in &keys {
            fill(&a, k, 3, 5);
            fill(&b, k, 3, 5);
        }
        // b misses a newer cell in the second partition.
        fill(&a, &keys[1], 1, 9);
        let (first, last) = leaf_tokens(leaf);
        let (da, next) = a.partition_digests(first, last, None, 100).unwrap();
        assert_eq!(next, None);
        let (db, _) = b.partition_digests(first, last, None, 100).unwrap();
        assert_eq!(da.len(), 3);
        let differing: Vec<_> = da
            .iter()
            .zip(&db)
            .filter(|(x, y)| x.hash != y.hash)
            .map(|(x, _)| x.partition_key.clone())
            .collect();
        assert_eq!(differing, vec![keys[1].clone()]);
        // Paged two at a time, the same digests.
        let (p1, resume) = a.partition_digests(first, last, None, 2).unwrap();
        let resume = resume.unwrap();
        let (p2, end) = a
            .partition_digests(first, last, Some((resume.0, &resume.1)), 2)
            .unwrap();
        assert_eq!(end, None);
        assert_eq!([p1, p2].concat(), da);
    }
}
