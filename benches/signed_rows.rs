//! The cost of signed rows under enrollment (`call::signed`): signing a row as its writer,
//! checking a row never seen (one ed25519 verification: the row's; the writer's credential is
//! known from its heartbeats, here this node's own), and checking one seen before (a SHA-256
//! of its bytes and a map lookup).
//! Run: `cargo bench --bench signed_rows`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sipmesh::LocalMesh;
use sipmesh_net::{Enrollment, EnrollmentKey, Roles};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ROWS: usize = 20_000;

fn per_op(d: Duration, n: usize) -> f64 {
    d.as_secs_f64() * 1e6 / n as f64
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mesh = LocalMesh::builder()
        .nodes(1)
        .enrollment(Enrollment::SelfIssued {
            key: Arc::new(EnrollmentKey::generate()),
            roles: Roles::ADMIN,
        })
        .start()
        .await
        .expect("a node");
    let m = mesh.node(0).node().expect("running").mesh.clone();
    // Rows the size of a binding's canonical bytes (~300 bytes).
    let rows: Vec<Vec<u8>> = (0..ROWS)
        .map(|i| {
            let mut r =
                format!("registrations|user{i:06}|c:sip:user{i:06}@192.0.2.1:5060|").into_bytes();
            r.resize(300, b'x');
            r
        })
        .collect();

    let t = Instant::now();
    let sigs: Vec<Vec<u8>> = rows
        .iter()
        .map(|r| m.sign_row(r).expect("enrolled"))
        .collect();
    let sign = t.elapsed();

    let at = m.keyspace().wall_ms();
    let check = |passes: usize| {
        let t = Instant::now();
        for _ in 0..passes {
            for (r, s) in rows.iter().zip(&sigs) {
                assert!(m.row_counts("registrations", Some(s), r, at, |_, _| Ok(())));
            }
        }
        t.elapsed()
    };
    let first = check(1);
    let again = check(5);

    println!("signed rows, {ROWS} rows of 300 bytes, one node, this process's wall time:");
    println!(
        "  sign (ed25519):                 {:>7.1} µs/row",
        per_op(sign, ROWS)
    );
    println!(
        "  check, first time (2 verifies): {:>7.1} µs/row",
        per_op(first, ROWS)
    );
    println!(
        "  check, seen before (SHA-256):   {:>7.2} µs/row",
        per_op(again, 5 * ROWS)
    );
    mesh.shutdown();
}
