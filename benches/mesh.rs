//! QUORUM write and read throughput and latency in a 3-node local mesh (RF=3), all nodes in this
//! process on loopback over real libp2p streams and sled files.
//! Run: `cargo bench --bench mesh`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sipmesh::tables::USERS;
use sipmesh::{Consistency, LocalMesh};
use sipmesh_storage::Mutation;
use tokio::sync::Semaphore;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const OPS: usize = 60_000;

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p) as usize]
}

fn cpu_seconds() -> f64 {
    // utime + stime of this process, from /proc/self/stat (clock ticks of 10 ms).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

async fn run(mesh: &LocalMesh, write: bool, in_flight: usize) -> (f64, Vec<Duration>, f64) {
    let cpu0 = cpu_seconds();
    let started = Instant::now();
    let mut handles = Vec::new();
    // Spread coordinators over the three nodes.
    for n in 0..3 {
        let per_node = OPS / 3;
        let h = mesh.node(n).run(move |node| async move {
            let sem = Arc::new(Semaphore::new(in_flight / 3));
            let mut tasks = Vec::with_capacity(per_node);
            for i in 0..per_node {
                let permit = sem.clone().acquire_owned().await.unwrap();
                let node = node.clone();
                tasks.push(tokio::spawn(async move {
                    let k = format!("user{n}-{i:06}").into_bytes();
                    let t = Instant::now();
                    if write {
                        let m = Mutation::new(USERS, k).upsert(
                            b"",
                            [
                                ("display_name", vec![b'x'; 64]),
                                ("realm", b"sipmesh".to_vec()),
                            ],
                            node.keyspace().now(),
                            None,
                        );
                        node.mesh
                            .write(m, Consistency::Quorum)
                            .await
                            .expect("write");
                    } else {
                        let p = node
                            .mesh
                            .read(USERS, &k, Consistency::Quorum)
                            .await
                            .expect("read");
                        assert_eq!(p.rows.len(), 1);
                    }
                    drop(permit);
                    t.elapsed()
                }));
            }
            let mut lat = Vec::with_capacity(per_node);
            for t in tasks {
                lat.push(t.await.unwrap());
            }
            lat
        });
        handles.push(h);
    }
    let mut lat = Vec::new();
    for h in handles {
        lat.extend(h.await.expect("node running"));
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    lat.sort();
    (lat.len() as f64 / elapsed, lat, cpu)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    // SYNC=periodic|sync-before-ack|group-commit (default): when a write reaches the disk.
    let sync = match std::env::var("SYNC").as_deref() {
        Ok("periodic") => sipmesh_storage::SyncPolicy::Periodic { every_ms: 500 },
        Ok("sync-before-ack") => sipmesh_storage::SyncPolicy::SyncBeforeAck,
        _ => sipmesh_storage::SyncPolicy::GroupCommit,
    };
    let mesh = LocalMesh::builder()
        .nodes(3)
        .configure(move |c| c.sync = sync)
        .anti_entropy_interval(Duration::from_secs(3600))
        .start()
        .await
        .expect("mesh");
    mesh.wait_converged(Duration::from_secs(30))
        .await
        .expect("converge");
    println!("mesh bench: 3 nodes in one process, RF=3, QUORUM, {OPS} ops per run, {sync:?}");
    for (name, write, in_flight) in [
        ("writes", true, 240),
        ("reads", false, 240),
        ("writes", true, 48),
        ("reads", false, 48),
    ] {
        let (rate, lat, cpu) = run(&mesh, write, in_flight).await;
        println!(
            "QUORUM {name}, {in_flight} in flight: {rate:.0}/s, p50 {:?}, p99 {:?}, CPU {:.1} µs per op (all 3 nodes)",
            pct(&lat, 0.5),
            pct(&lat, 0.99),
            cpu * 1e6 / lat.len() as f64
        );
    }
    mesh.shutdown();
}
