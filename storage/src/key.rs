//! The on-disk key layout: ordered by `(token, table, partition key, clustering key, column)`.
//!
//! ```text
//! token (8 bytes, big-endian) | table id (2 bytes, big-endian) | esc(partition key) | entry
//! entry = 0x00                      the partition tombstone (value: one cell)
//!       | 0x01 esc(clustering key)  a row (value: its tombstone, marker and column cells)
//! esc(b) = b with 0x00 written as 0x00 0xFF, then the terminator 0x00 0x01
//! ```
//! `esc` preserves byte order and is prefix-free, so a partition's entries are contiguous, its
//! rows come in clustering-key order, and a token range is one contiguous key range. One stored
//! value per row (not per cell) keeps writes and reads at one engine operation per row.
//!
//! The token is the first 8 bytes of SHA-256 of the partition key — the same hash Kademlia puts
//! keys on, so a prefix of the XOR keyspace is a contiguous token range.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{hex, Error, Result};
use crate::schema::TableId;

/// A partition's position on the ring: the first 8 bytes of SHA-256 of its key.
pub type Token = u64;

/// The token of a partition key.
pub fn token_of(partition_key: &[u8]) -> Token {
    let digest = Sha256::digest(partition_key);
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// What an entry of a partition is.
///
/// Ordered as on disk: the partition tombstone first, then rows by clustering key, and within a
/// row its tombstone, its marker, then its columns by name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EntryKey {
    /// Deletes every cell of the partition with an older timestamp.
    PartitionTombstone,
    /// Deletes every cell of the row with an older timestamp.
    RowTombstone(Vec<u8>),
    /// Says the row exists even if all its columns are null.
    RowMarker(Vec<u8>),
    /// A column value of a row: (clustering key, column name).
    Column(Vec<u8>, String),
}

impl EntryKey {
    fn sort_key(&self) -> (u8, &[u8], u8, &str) {
        match self {
            EntryKey::PartitionTombstone => (0, &[], 0, ""),
            EntryKey::RowTombstone(ck) => (1, ck, 0, ""),
            EntryKey::RowMarker(ck) => (1, ck, 1, ""),
            EntryKey::Column(ck, name) => (1, ck, 2, name),
        }
    }

    /// The clustering key of a row-level entry.
    pub fn clustering(&self) -> Option<&[u8]> {
        match self {
            EntryKey::PartitionTombstone => None,
            EntryKey::RowTombstone(ck) | EntryKey::RowMarker(ck) | EntryKey::Column(ck, _) => {
                Some(ck)
            }
        }
    }
}

impl Ord for EntryKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.sort_key().cmp(&other.sort_key())
    }
}

impl PartialOrd for EntryKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

fn escape_into(bytes: &[u8], out: &mut Vec<u8>) {
    for &b in bytes {
        out.push(b);
        if b == 0 {
            out.push(0xFF);
        }
    }
    out.extend_from_slice(&[0x00, 0x01]);
}

/// Reads an escaped string at the start of `input`; returns it and the rest.
fn unescape(input: &[u8]) -> Option<(Vec<u8>, &[u8])> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        let b = input[i];
        if b == 0 {
            match input.get(i + 1)? {
                0xFF => out.push(0),
                0x01 => return Some((out, &input[i + 2..])),
                _ => return None,
            }
            i += 2;
        } else {
            out.push(b);
            i += 1;
        }
    }
    None
}

/// The key prefix of a whole partition.
pub fn partition_prefix(table: TableId, partition_key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + partition_key.len() + 2);
    out.extend_from_slice(&token_of(partition_key).to_be_bytes());
    out.extend_from_slice(&table.to_be_bytes());
    escape_into(partition_key, &mut out);
    out
}

/// The key of the partition tombstone, given the partition prefix.
pub fn partition_tombstone_key(partition_prefix: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(partition_prefix.len() + 1);
    out.extend_from_slice(partition_prefix);
    out.push(0x00);
    out
}

/// The key of one row (which holds the row's tombstone, marker and columns).
pub fn row_key(partition_prefix: &[u8], clustering: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(partition_prefix.len() + clustering.len() + 3);
    out.extend_from_slice(partition_prefix);
    out.push(0x01);
    escape_into(clustering, &mut out);
    out
}

/// A decoded full key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedKey {
    /// The partition's token.
    pub token: Token,
    /// The table.
    pub table: TableId,
    /// The partition key.
    pub partition_key: Vec<u8>,
    /// The row's clustering key, or `None` for the partition tombstone.
    pub clustering: Option<Vec<u8>>,
}

/// The length of a stored key's partition prefix (what [`partition_prefix`] wrote), without
/// copying anything; `None` if the key is not one this crate wrote.
pub fn partition_prefix_len(key: &[u8]) -> Option<usize> {
    let mut i = 10;
    while i < key.len() {
        if key[i] == 0 {
            match key.get(i + 1)? {
                0xFF => {}
                0x01 => return Some(i + 2),
                _ => return None,
            }
            i += 2;
        } else {
            i += 1;
        }
    }
    None
}

/// Decode a key written by [`row_key`] or [`partition_tombstone_key`].
pub fn decode_key(key: &[u8]) -> Result<DecodedKey> {
    let corrupt = |reason: &str| Error::Corrupt {
        table: "cells".into(),
        key: hex(key),
        reason: reason.into(),
    };
    if key.len() < 10 {
        return Err(corrupt("key shorter than token and table id"));
    }
    let token = u64::from_be_bytes(key[..8].try_into().expect("8 bytes"));
    let table = u16::from_be_bytes(key[8..10].try_into().expect("2 bytes"));
    let (partition_key, rest) =
        unescape(&key[10..]).ok_or_else(|| corrupt("bad partition key encoding"))?;
    let clustering = match rest.split_first() {
        Some((0x00, [])) => None,
        Some((0x01, rest)) => match unescape(rest) {
            Some((ck, [])) => Some(ck),
            _ => return Err(corrupt("bad clustering key encoding")),
        },
        _ => return Err(corrupt("bad entry tag")),
    };
    Ok(DecodedKey {
        token,
        table,
        partition_key,
        clustering,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(pk in prop::collection::vec(any::<u8>(), 0..6), ck in prop::option::of(prop::collection::vec(prop_oneof![Just(0u8), Just(1), Just(0xFF), any::<u8>()], 0..5)), table in any::<u16>()) {
            let p = partition_prefix(table, &pk);
            let key = match &ck { Some(ck) => row_key(&p, ck), None => partition_tombstone_key(&p) };
            let d = decode_key(&key).unwrap();
            prop_assert_eq!(partition_prefix_len(&key), Some(p.len()));
            prop_assert_eq!(d.token, token_of(&pk));
            prop_assert_eq!(d.table, table);
            prop_assert_eq!(d.partition_key, pk);
            prop_assert_eq!(d.clustering, ck);
        }

        #[test]
        fn clustering_order_preserved(pk in prop::collection::vec(any::<u8>(), 0..4),
                                      a in prop::collection::vec(prop_oneof![Just(0u8), Just(1), any::<u8>()], 0..5),
                                      b in prop::collection::vec(prop_oneof![Just(0u8), Just(1), any::<u8>()], 0..5)) {
            let p = partition_prefix(1, &pk);
            prop_assert_eq!(a.cmp(&b), row_key(&p, &a).cmp(&row_key(&p, &b)));
            prop_assert!(partition_tombstone_key(&p) < row_key(&p, &a));
            prop_assert!(row_key(&p, &a).starts_with(&p));
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            &b""[..],
            b"short",
            b"0123456789\x00",
            b"0123456789ab\x00\x01\x05",
        ] {
            assert!(decode_key(bad).is_err());
        }
    }
}
