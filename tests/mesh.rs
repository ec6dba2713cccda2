//! The mesh: membership, replication at consistency levels, hints, anti-entropy, joins and
//! partitions, on real libp2p swarms over loopback with real sled files (issue "The mesh").

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use sipmesh::tables::USERS;
use sipmesh::{Consistency, LocalMesh};
use sipmesh_net::{Error as NetError, MemberState};
use sipmesh_storage::Mutation;

/// Every test runs under this hard timeout.
async fn within<F: Future<Output = ()>>(secs: u64, f: F) {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .expect("test exceeded its hard timeout");
}

fn key(i: usize) -> Vec<u8> {
    format!("user{i:05}").into_bytes()
}

async fn write(
    mesh: &LocalMesh,
    via: usize,
    k: Vec<u8>,
    value: String,
    cl: Consistency,
) -> Result<(), NetError> {
    mesh.node(via)
        .run(move |node| async move {
            let ts = node.keyspace().now();
            let m = Mutation::new(USERS, k).upsert(
                b"",
                [("display_name", value.into_bytes())],
                ts,
                None,
            );
            node.mesh.write(m, cl).await
        })
        .await
        .expect("node running")
}

async fn read(
    mesh: &LocalMesh,
    via: usize,
    k: Vec<u8>,
    cl: Consistency,
) -> Result<Option<String>, NetError> {
    mesh.node(via)
        .run(move |node| async move {
            let p = node.mesh.read(USERS, &k, cl).await?;
            Ok(p.rows
                .first()
                .and_then(|r| r.get("display_name"))
                .map(|v| String::from_utf8_lossy(v).into_owned()))
        })
        .await
        .expect("node running")
}

fn local_value(mesh: &LocalMesh, i: usize, k: &[u8]) -> Option<String> {
    let node = mesh.node(i).node().expect("running");
    node.keyspace()
        .read_row(USERS, k, b"")
        .expect("read")
        .and_then(|r| {
            r.get("display_name")
                .map(|v| String::from_utf8_lossy(v).into_owned())
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_quorum_writes_readable_everywhere() {
    within(180, async {
        let mesh = LocalMesh::builder().nodes(5).start().await.unwrap();
        mesh.wait_converged(Duration::from_secs(30)).await.unwrap();
        for i in 0..1000 {
            write(&mesh, i % 5, key(i), format!("v{i}"), Consistency::Quorum)
                .await
                .unwrap();
        }
        for via in 0..5 {
            for i in 0..1000 {
                let got = read(&mesh, via, key(i), Consistency::Quorum).await.unwrap();
                assert_eq!(
                    got.as_deref(),
                    Some(format!("v{i}").as_str()),
                    "key {i} via node {via}"
                );
            }
        }
        // Each key lives on exactly its 3 replicas (plus nowhere else once the dust settles).
        let node0 = mesh.node(0).node().unwrap();
        for i in (0..1000).step_by(50) {
            let replicas = node0.mesh.replicas_of(&key(i));
            assert_eq!(replicas.len(), 3);
            for r in replicas {
                let idx = mesh.nodes().iter().position(|n| n.peer_id == r).unwrap();
                assert_eq!(
                    local_value(&mesh, idx, &key(i)).as_deref(),
                    Some(format!("v{i}").as_str())
                );
            }
        }
    })
    .await;
}
