//! Keyspace benchmark: mutation throughput and partition-read latency on registration-sized rows
//! (one partition per AOR, 5 columns, ~300 bytes), on sled with the periodic sync policy, from
//! one thread. Run: `cargo bench -p sipmesh-storage --bench keyspace`.

use std::time::{Duration, Instant};

use sipmesh_storage::{
    ClusteringOrder, Keyspace, KeyspaceConfig, Mutation, SyncPolicy, TableSchema,
};

const AORS: usize = 100_000;
const READS: usize = 200_000;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p) as usize]
}

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tables = vec![TableSchema::new(
        3,
        "registrations",
        "aor",
        &["contact", "owner", "call_id", "cseq", "user_agent"],
    )
    .clustered("instance", ClusteringOrder::Asc)];
    let config = KeyspaceConfig {
        sync: SyncPolicy::Periodic { every_ms: 500 },
        ..KeyspaceConfig::default()
    };
    let ks = Keyspace::open_sled(dir.path(), tables, config).expect("open");
    let aor = |i: usize| format!("sip:user{i:06}@sipmesh.example").into_bytes();
    let now = ks.wall_ms();

    let started = Instant::now();
    let mut cells = 0usize;
    for i in 0..AORS {
        let m = Mutation::new(3, aor(i)).upsert(
            b"<urn:uuid:00000000-0000-0000-0000-000000000001>",
            [
                (
                    "contact",
                    format!("<sip:user{i:06}@192.0.2.{}:5060;transport=udp;ob>", i % 250)
                        .into_bytes(),
                ),
                (
                    "owner",
                    b"12D3KooWQYhTNQdmr3ArTeUHRYzFg94BKyTkoWBDWez9kSCVe2Xo".to_vec(),
                ),
                ("call_id", format!("{i:032x}@client.example").into_bytes()),
                ("cseq", (i as u32).to_be_bytes().to_vec()),
                (
                    "user_agent",
                    b"SIPp/3.6 (benchmark) sipmesh-storage keyspace bench".to_vec(),
                ),
            ],
            ks.now(),
            Some(now + 3_600_000),
        );
        cells += m.entries.len();
        ks.apply(&m).expect("apply");
    }
    let write_elapsed = started.elapsed();
    ks.flush().expect("flush");

    let mut lat = Vec::with_capacity(READS);
    let started = Instant::now();
    let mut x = 0x9E37_79B9u64;
    for _ in 0..READS {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let i = (x as usize) % AORS;
        let t = Instant::now();
        let p = ks.read_partition(3, &aor(i)).expect("read");
        lat.push(t.elapsed());
        assert_eq!(p.rows.len(), 1);
    }
    let read_elapsed = started.elapsed();
    lat.sort();

    let mut point_lat = Vec::with_capacity(READS);
    let started = Instant::now();
    for _ in 0..READS {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let i = (x as usize) % AORS;
        let t = Instant::now();
        let row = ks
            .read_row(
                3,
                &aor(i),
                b"<urn:uuid:00000000-0000-0000-0000-000000000001>",
            )
            .expect("read");
        point_lat.push(t.elapsed());
        assert!(row.is_some());
    }
    let point_elapsed = started.elapsed();
    point_lat.sort();

    println!(
        "keyspace bench: {AORS} registration partitions (6 cells each incl. row marker, ~300 B)"
    );
    println!(
        "writes: {:.0} mutations/s, {:.0} cell writes/s ({:?} total)",
        AORS as f64 / write_elapsed.as_secs_f64(),
        cells as f64 / write_elapsed.as_secs_f64(),
        write_elapsed
    );
    println!(
        "partition reads: {:.0} reads/s, p50 {:?}, p99 {:?} ({:?} total)",
        READS as f64 / read_elapsed.as_secs_f64(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        read_elapsed
    );
    println!(
        "point reads (one row): {:.0} reads/s, p50 {:?}, p99 {:?} ({:?} total)",
        READS as f64 / point_elapsed.as_secs_f64(),
        percentile(&point_lat, 0.5),
        percentile(&point_lat, 0.99),
        point_elapsed
    );

    // A compaction pass over every row (nothing to expire or purge: what the mesh pays per
    // pass while registrations are live).
    let started = Instant::now();
    let stats = ks.compact().expect("compact");
    let pass_elapsed = started.elapsed();
    assert_eq!((stats.expired, stats.purged), (0, 0));
    println!(
        "a compaction pass over {AORS} rows: {:?} ({:.2} µs per row)",
        pass_elapsed,
        pass_elapsed.as_secs_f64() * 1e6 / AORS as f64
    );

    // One mutation of 100,000 rows in one partition (what a wide partition's anti-entropy page
    // or a bulk write looks like): the write path must be linear in the mutation's size.
    const WIDE: u32 = 100_000;
    let ts = ks.now();
    let mut wide = Mutation::new(3, b"wide".to_vec());
    for i in 0..WIDE {
        wide = wide.upsert(
            &i.to_be_bytes(),
            [("cseq", i.to_be_bytes().to_vec())],
            ts,
            None,
        );
    }
    let started = Instant::now();
    let changed = ks.apply(&wide).expect("apply wide");
    let wide_elapsed = started.elapsed();
    assert_eq!(changed, WIDE as usize);
    println!(
        "one {WIDE}-row mutation: {:?} ({:.2} µs per row)",
        wide_elapsed,
        wide_elapsed.as_secs_f64() * 1e6 / WIDE as f64
    );
}
