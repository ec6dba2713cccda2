//! The keyspace on real sled files: durability across reopen, TTL, corrupt bytes, clock ceiling.

use std::ops::Bound;

use sipmesh_storage::{
    ClusteringOrder, Error, Keyspace, KeyspaceConfig, Mutation, SyncPolicy, TableSchema,
};

fn tables() -> Vec<TableSchema> {
    vec![
        TableSchema::new(1, "users", "user", &["ha1", "realm"]),
        TableSchema::new(2, "registrations", "aor", &["contact", "q"])
            .clustered("instance", ClusteringOrder::Asc),
    ]
}

/// Open the keyspace; a reopen right after a close may find sled's lock still held for a
/// moment by the closed database's background flusher, so retry for a few seconds.
fn open(dir: &std::path::Path) -> Keyspace {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match Keyspace::open_sled(dir, tables(), config()) {
            Ok(ks) => return ks,
            Err(e) if std::time::Instant::now() < deadline && e.to_string().contains("lock") => {
                std::thread::sleep(std::time::Duration::from_millis(50))
            }
            Err(e) => panic!("cannot open the keyspace: {e}"),
        }
    }
}

fn config() -> KeyspaceConfig {
    KeyspaceConfig {
        sync: SyncPolicy::Periodic { every_ms: 50 },
        tombstone_grace_ms: 0,
        ..KeyspaceConfig::default()
    }
}

#[test]
fn data_survives_reopen_and_clock_moves_forward() {
    let dir = tempfile::tempdir().unwrap();
    let (root, last_ts) = {
        let ks = open(dir.path());
        for i in 0..200u32 {
            let m = Mutation::new(2, b"alice".to_vec()).upsert(
                &i.to_be_bytes(),
                [("contact", format!("sip:a{i}@h").into_bytes())],
                ks.now(),
                None,
            );
            ks.apply(&m).unwrap();
        }
        ks.delete_row(2, b"alice", &7u32.to_be_bytes()).unwrap();
        ks.flush().unwrap();
        (ks.merkle().root(), ks.now())
    };
    let ks = open(dir.path());
    assert!(
        ks.now() > last_ts,
        "the clock went backwards across a restart"
    );
    assert_eq!(ks.merkle().root(), root);
    let p = ks.read_partition(2, b"alice").unwrap();
    assert_eq!(p.rows.len(), 199);
    let slice = ks
        .slice(
            2,
            b"alice",
            Bound::Included(&5u32.to_be_bytes()[..]),
            Bound::Excluded(&9u32.to_be_bytes()[..]),
            100,
        )
        .unwrap();
    let cks: Vec<u32> = slice
        .iter()
        .map(|r| u32::from_be_bytes(r.clustering.clone().try_into().unwrap()))
        .collect();
    assert_eq!(cks, vec![5, 6, 8]);
}

#[test]
fn ttl_hides_then_compaction_purges() {
    let dir = tempfile::tempdir().unwrap();
    let ks = open(dir.path());
    let now = ks.wall_ms();
    ks.apply(&Mutation::new(1, b"bob".to_vec()).upsert(
        b"",
        [("ha1", b"x".to_vec())],
        ks.now(),
        Some(now + 300),
    ))
    .unwrap();
    ks.apply(&Mutation::new(1, b"carol".to_vec()).upsert(
        b"",
        [("ha1", b"y".to_vec())],
        ks.now(),
        None,
    ))
    .unwrap();
    assert!(ks.read_row(1, b"bob", b"").unwrap().is_some());
    let before = ks.entry_count().unwrap();
    // poll: the TTL elapses on the wall clock
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while ks.read_row(1, b"bob", b"").unwrap().is_some() {
        assert!(std::time::Instant::now() < deadline, "TTL never expired");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let s1 = ks.compact().unwrap();
    assert_eq!(s1.expired, 2, "marker and column become tombstones");
    let s2 = ks.compact().unwrap(); // grace 0: now purged
    assert_eq!(s2.purged, 2);
    assert_eq!(ks.entry_count().unwrap(), before - 1, "the row is gone");
    assert!(ks.read_row(1, b"carol", b"").unwrap().is_some());
}

#[test]
fn corrupt_bytes_are_a_typed_error_naming_table_and_key() {
    let dir = tempfile::tempdir().unwrap();
    {
        let ks = open(dir.path());
        ks.apply(&Mutation::new(1, b"dave".to_vec()).upsert(
            b"",
            [("ha1", b"z".to_vec())],
            ks.now(),
            None,
        ))
        .unwrap();
        ks.flush().unwrap();
    }
    // Damage the stored cell with sled directly.
    {
        let db = (0..200)
            .find_map(|_| {
                sled::open(dir.path())
                    .inspect_err(|_| std::thread::sleep(std::time::Duration::from_millis(50)))
                    .ok()
            })
            .expect("sled opens once the keyspace let go of it");
        let cells = db.open_tree("cells").unwrap();
        let keys: Vec<_> = cells.iter().keys().map(|k| k.unwrap()).collect();
        for k in keys {
            cells.insert(k, &[1u8, 0xFF, 0xFF][..]).unwrap();
        }
        db.flush().unwrap();
    }
    let ks = open(dir.path());
    match ks.read_partition(1, b"dave") {
        Err(Error::Corrupt { table, key, .. }) => {
            assert_eq!(table, "users");
            assert!(!key.is_empty());
        }
        other => panic!("expected a Corrupt error, got {other:?}"),
    }
}

#[test]
fn a_100k_row_mutation_applies_whole_through_the_normal_path() {
    const ROWS: u32 = 100_000;
    let dir = tempfile::tempdir().unwrap();
    let ks = open(dir.path());
    let ts = ks.now();
    let mut m = Mutation::new(2, b"wide".to_vec());
    for i in 0..ROWS {
        m = m.upsert(
            &i.to_be_bytes(),
            [("contact", vec![b'c'; 8]), ("q", vec![b'1'])],
            ts,
            None,
        );
    }
    assert_eq!(ks.apply(&m).unwrap(), ROWS as usize);
    let p = ks.read_partition(2, b"wide").unwrap();
    assert_eq!(p.rows.len(), ROWS as usize);
    assert_eq!(
        p.rows[ROWS as usize - 1].clustering,
        (ROWS - 1).to_be_bytes().to_vec()
    );
    // The same mutation again changes nothing; a newer one for every other row changes half.
    assert_eq!(ks.apply(&m).unwrap(), 0);
    let later = ks.now();
    let mut half = Mutation::new(2, b"wide".to_vec());
    for i in (0..ROWS).step_by(2) {
        half = half.upsert(&i.to_be_bytes(), [("q", vec![b'2'])], later, None);
    }
    assert_eq!(ks.apply(&half).unwrap(), ROWS as usize / 2);
    let p = ks.read_partition(2, b"wide").unwrap();
    assert_eq!(p.rows[2].get("q"), Some(&b"2"[..]));
    assert_eq!(p.rows[3].get("q"), Some(&b"1"[..]));
}
