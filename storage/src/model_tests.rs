//! Model-based test: the keyspace against a `BTreeMap` under random puts, deletes, expiry,
//! compaction and restarts (sled-style), plus slices and Merkle consistency.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use proptest::prelude::*;

use crate::engine::MemEngine;
use crate::hlc::tests::ManualClock;
use crate::{ClusteringOrder, Keyspace, KeyspaceConfig, Mutation, TableSchema};

const T: u16 = 7;

fn schema() -> TableSchema {
    TableSchema::new(T, "t", "pk", &["a", "b"]).clustered("ck", ClusteringOrder::Asc)
}

#[derive(Debug, Clone)]
enum Op {
    Put {
        pk: u8,
        ck: u8,
        col: bool,
        value: u8,
        ttl: Option<u64>,
    },
    DeleteCell {
        pk: u8,
        ck: u8,
        col: bool,
    },
    DeleteRow {
        pk: u8,
        ck: u8,
    },
    DeletePartition {
        pk: u8,
    },
    Advance(u64),
    Compact,
    Restart,
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..3, 0u8..4, any::<bool>(), any::<u8>(), prop::option::of(1u64..50))
            .prop_map(|(pk, ck, col, value, ttl)| Op::Put { pk, ck, col, value, ttl }),
        1 => (0u8..3, 0u8..4, any::<bool>()).prop_map(|(pk, ck, col)| Op::DeleteCell { pk, ck, col }),
        1 => (0u8..3, 0u8..4).prop_map(|(pk, ck)| Op::DeleteRow { pk, ck }),
        1 => (0u8..3).prop_map(|pk| Op::DeletePartition { pk }),
        2 => (1u64..40).prop_map(Op::Advance),
        1 => Just(Op::Compact),
        1 => Just(Op::Restart),
    ]
}

/// The model: (pk, ck) → (row marker expiry, column → (value, expiry)); `None` = never expires.
type ModelRow = (
    Option<Option<u64>>,
    BTreeMap<&'static str, (u8, Option<u64>)>,
);
type Model = BTreeMap<(u8, u8), ModelRow>;

fn live(exp: Option<u64>, now: u64) -> bool {
    exp.is_none_or(|e| e > now)
}

fn model_rows(model: &Model, pk: u8, now: u64) -> Vec<(u8, BTreeMap<String, u8>)> {
    model
        .range((pk, 0)..=(pk, u8::MAX))
        .filter_map(|((_, ck), (marker, cols))| {
            let cols: BTreeMap<String, u8> = cols
                .iter()
                .filter(|(_, (_, e))| live(*e, now))
                .map(|(c, (v, _))| (c.to_string(), *v))
                .collect();
            let marker_live = marker.is_some_and(|e| live(e, now));
            (marker_live || !cols.is_empty()).then_some((*ck, cols))
        })
        .collect()
}

fn open(engine: &MemEngine, clock: &Arc<ManualClock>, grace: u64) -> Keyspace {
    let config = KeyspaceConfig {
        tombstone_grace_ms: grace,
        ..KeyspaceConfig::default()
    };
    Keyspace::open(
        Arc::new(engine.clone()),
        vec![schema()],
        config,
        clock.clone(),
    )
    .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]
    #[test]
    fn keyspace_matches_model(ops in prop::collection::vec(arb_op(), 1..60), grace in prop_oneof![Just(0u64), Just(1_000_000)]) {
        let engine = MemEngine::new();
        let clock = Arc::new(ManualClock(AtomicU64::new(1_000)));
        let mut ks = open(&engine, &clock, grace);
        let mut model: Model = BTreeMap::new();
        for op in ops {
            let now = clock.0.load(Ordering::SeqCst);
            match op {
                Op::Put { pk, ck, col, value, ttl } => {
                    let name = if col { "a" } else { "b" };
                    let exp = ttl.map(|t| now + t);
                    let m = Mutation::new(T, vec![pk]).upsert(&[ck], [(name, vec![value])], ks.now(), exp);
                    ks.apply(&m).unwrap();
                    let row = model.entry((pk, ck)).or_default();
                    row.0 = Some(exp);
                    row.1.insert(name, (value, exp));
                }
                Op::DeleteCell { pk, ck, col } => {
                    let name = if col { "a" } else { "b" };
                    ks.apply(&Mutation::new(T, vec![pk]).delete_column(&[ck], name, ks.now())).unwrap();
                    if let Some(row) = model.get_mut(&(pk, ck)) {
                        row.1.remove(name);
                    }
                }
                Op::DeleteRow { pk, ck } => {
                    ks.delete_row(T, &[pk], &[ck]).unwrap();
                    model.remove(&(pk, ck));
                }
                Op::DeletePartition { pk } => {
                    ks.delete_partition(T, &[pk]).unwrap();
                    model.retain(|(p, _), _| *p != pk);
                }
                Op::Advance(ms) => { clock.0.fetch_add(ms, Ordering::SeqCst); }
                Op::Compact => { ks.compact().unwrap(); }
                Op::Restart => {
                    let root = ks.merkle().root();
                    drop(ks);
                    ks = open(&engine, &clock, grace);
                    prop_assert_eq!(ks.merkle().root(), root, "maintained Merkle leaves differ from a rebuild");
                }
            }
            let now = clock.0.load(Ordering::SeqCst);
            for pk in 0..3u8 {
                let got: Vec<(u8, BTreeMap<String, u8>)> = ks.read_partition(T, &[pk]).unwrap().rows.into_iter()
                    .map(|r| (r.clustering[0], r.columns.into_iter().map(|(c, v)| (c, v.value[0])).collect()))
                    .collect();
                let want = model_rows(&model, pk, now);
                prop_assert_eq!(&got, &want, "partition {}", pk);
                // slices agree with the full read
                let sliced: Vec<u8> = ks.slice(T, &[pk], Bound::Excluded(&[0u8][..]), Bound::Included(&[2u8][..]), 10).unwrap()
                    .into_iter().map(|r| r.clustering[0]).collect();
                let expect: Vec<u8> = want.iter().map(|(ck, _)| *ck).filter(|ck| (1..=2).contains(ck)).collect();
                prop_assert_eq!(sliced, expect);
            }
        }
    }
}

#[test]
fn descending_order_and_limits() {
    let ks = Keyspace::in_memory(vec![
        TableSchema::new(1, "d", "pk", &["v"]).clustered("ck", ClusteringOrder::Desc)
    ]);
    for ck in [3u8, 1, 2, 5] {
        ks.apply(&Mutation::new(1, b"p".to_vec()).upsert(&[ck], [("v", vec![ck])], ks.now(), None))
            .unwrap();
    }
    let all: Vec<u8> = ks
        .read_partition(1, b"p")
        .unwrap()
        .rows
        .iter()
        .map(|r| r.clustering[0])
        .collect();
    assert_eq!(all, vec![5, 3, 2, 1]);
    let top2: Vec<u8> = ks
        .slice(1, b"p", Bound::Unbounded, Bound::Unbounded, 2)
        .unwrap()
        .iter()
        .map(|r| r.clustering[0])
        .collect();
    assert_eq!(top2, vec![5, 3]);
    assert_eq!(
        ks.read_row(1, b"p", &[2]).unwrap().unwrap().get("v"),
        Some(&[2u8][..])
    );
    assert!(ks.read_row(1, b"p", &[4]).unwrap().is_none());
}

#[test]
fn schema_violations_are_errors() {
    let ks = Keyspace::in_memory(vec![TableSchema::new(1, "u", "pk", &["v"])]);
    let bad_col = Mutation::new(1, b"p".to_vec()).upsert(b"", [("nope", vec![1])], ks.now(), None);
    assert!(matches!(
        ks.apply(&bad_col),
        Err(crate::Error::Invalid { .. })
    ));
    let bad_ck = Mutation::new(1, b"p".to_vec()).upsert(b"ck", [("v", vec![1])], ks.now(), None);
    assert!(matches!(
        ks.apply(&bad_ck),
        Err(crate::Error::Invalid { .. })
    ));
    assert!(matches!(
        ks.read_partition(9, b"p"),
        Err(crate::Error::UnknownTable(_))
    ));
}

#[test]
fn replicas_converge_in_any_order() {
    let schema = || vec![schema()];
    let a = Keyspace::in_memory(schema());
    let b = Keyspace::in_memory(schema());
    let src = Keyspace::in_memory(schema());
    let mut muts = Vec::new();
    for i in 0..50u8 {
        let ts = src.now();
        let m = if i % 7 == 3 {
            Mutation::new(T, vec![i % 5]).delete_row(&[i % 3], ts)
        } else {
            Mutation::new(T, vec![i % 5]).upsert(&[i % 3], [("a", vec![i])], ts, None)
        };
        muts.push(m);
    }
    for m in &muts {
        a.apply(m).unwrap();
    }
    for m in muts.iter().rev() {
        b.apply(m).unwrap();
        b.apply(m).unwrap(); // duplicates are harmless
    }
    assert_eq!(a.merkle().root(), b.merkle().root());
    for pk in 0..5u8 {
        assert_eq!(
            a.read_partition(T, &[pk]).unwrap(),
            b.read_partition(T, &[pk]).unwrap()
        );
    }
    // streaming a token range reproduces the data
    let c = Keyspace::in_memory(schema());
    for m in a.mutations_in(0, u64::MAX).unwrap() {
        c.apply(&m).unwrap();
    }
    assert_eq!(a.merkle().root(), c.merkle().root());
}
