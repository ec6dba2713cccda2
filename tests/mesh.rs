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

/// Poll `cond` every 200 ms until it holds or `secs` pass.
async fn eventually(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {secs}s: {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Keys of the USERS table held in node `i`'s local storage.
fn local_keys(mesh: &LocalMesh, i: usize) -> BTreeSet<Vec<u8>> {
    let node = mesh.node(i).node().expect("running");
    node.keyspace()
        .partitions_of(USERS, None, usize::MAX)
        .unwrap()
        .0
        .into_iter()
        .collect()
}

/// Whether every uniform Merkle leaf has the same hash on each of its replicas (the running
/// nodes' common view of the ring).
fn replicas_agree(mesh: &LocalMesh) -> bool {
    let running: Vec<usize> = (0..mesh.nodes().len())
        .filter(|&i| mesh.node(i).node().is_some())
        .collect();
    let snap = mesh.node(running[0]).node().unwrap().mesh.snapshot();
    for leaf in 0..sipmesh_storage::MERKLE_LEAVES {
        let Some(reps) = snap.leaf_replicas(leaf) else {
            continue;
        };
        let hashes: BTreeSet<u64> = reps
            .iter()
            .filter_map(|p| mesh.index_of(p))
            .filter_map(|i| mesh.node(i).node())
            .map(|n| n.keyspace().merkle().leaf(leaf))
            .collect();
        if hashes.len() > 1 {
            return false;
        }
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_node_loses_no_acknowledged_write_and_catches_up() {
    within(240, async {
        let mesh = std::sync::Arc::new(LocalMesh::builder().nodes(5).start().await.unwrap());
        mesh.wait_converged(Duration::from_secs(30)).await.unwrap();
        const N: usize = 1500;
        const VICTIM: usize = 3;
        let writer = {
            let mesh = mesh.clone();
            tokio::spawn(async move {
                let mut acked = Vec::new();
                let coordinators = [0, 1, 2, 4];
                for i in 0..N {
                    let via = coordinators[i % 4];
                    if write(&mesh, via, key(i), format!("v{i}"), Consistency::Quorum)
                        .await
                        .is_ok()
                    {
                        acked.push(i);
                    }
                }
                acked
            })
        };
        // Kill the victim in the middle of the stream.
        tokio::time::sleep(Duration::from_millis(700)).await;
        mesh.kill(VICTIM);
        let acked = writer.await.unwrap();
        assert!(
            acked.len() > N * 9 / 10,
            "only {} of {N} writes acknowledged",
            acked.len()
        );
        for &i in &acked {
            let got = read(
                &mesh,
                (i % 4) + usize::from(i % 4 >= VICTIM),
                key(i),
                Consistency::Quorum,
            )
            .await
            .unwrap();
            assert_eq!(
                got.as_deref(),
                Some(format!("v{i}").as_str()),
                "acknowledged write {i} lost"
            );
        }
        // Restart: hints and anti-entropy bring the victim every write it is a replica of.
        mesh.restart(VICTIM).await.unwrap();
        mesh.wait_converged(Duration::from_secs(30)).await.unwrap();
        let victim = mesh.node(VICTIM).peer_id;
        let snap = mesh.node(0).node().unwrap().mesh.snapshot();
        let expected: Vec<usize> = acked
            .iter()
            .copied()
            .filter(|&i| snap.replicas(&key(i)).iter().any(|m| m.peer == victim))
            .collect();
        assert!(!expected.is_empty());
        eventually(90, "the restarted node holds every write it missed", || {
            expected.iter().all(|&i| {
                local_value(&mesh, VICTIM, &key(i)).as_deref() == Some(format!("v{i}").as_str())
            })
        })
        .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_minority_refuses_majority_writes_then_converges() {
    within(240, async {
        let mesh = LocalMesh::builder().nodes(5).start().await.unwrap();
        mesh.wait_converged(Duration::from_secs(30)).await.unwrap();
        for i in 0..200 {
            write(
                &mesh,
                i % 5,
                key(i),
                format!("before{i}"),
                Consistency::Quorum,
            )
            .await
            .unwrap();
        }
        let ring_before = mesh.node(2).node().unwrap().mesh.snapshot();
        let (minority, majority) = ([0usize, 1], [2usize, 3, 4]);
        mesh.partition(&minority, &majority).await.unwrap();
        // Each side sees the other down. Failure detection never changes placement, so the
        // ring keeps all five members on both sides, however long the partition lasts.
        let sees = |i: usize, peers: &[usize], state: MemberState| {
            let node = mesh.node(i).node().unwrap();
            peers.iter().all(|&p| {
                node.mesh
                    .members()
                    .iter()
                    .any(|m| m.peer_id == mesh.node(p).peer_id && m.state == state)
            })
        };
        eventually(30, "the majority sees the minority down", || {
            majority
                .iter()
                .all(|&i| sees(i, &minority, MemberState::Down))
        })
        .await;
        eventually(30, "the minority sees the majority down", || {
            minority
                .iter()
                .all(|&i| sees(i, &majority, MemberState::Down))
        })
        .await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        for i in 0..5 {
            let ring: Vec<_> = mesh
                .node(i)
                .node()
                .unwrap()
                .mesh
                .snapshot()
                .ring
                .iter()
                .map(|m| m.peer)
                .collect();
            let before: Vec<_> = ring_before.ring.iter().map(|m| m.peer).collect();
            assert_eq!(ring, before, "node {i}'s ring changed during the partition");
        }
        // A partition with two replicas on the majority side takes QUORUM writes there; one
        // with two on the minority side is writable on neither side.
        let minority_peers: Vec<_> = minority.iter().map(|&i| mesh.node(i).peer_id).collect();
        let on_minority = |k: &[u8]| {
            ring_before
                .replicas(k)
                .iter()
                .filter(|m| minority_peers.contains(&m.peer))
                .count()
        };
        let (mut written, mut refused) = (Vec::new(), 0);
        for i in 0..200 {
            let result = write(
                &mesh,
                majority[i % 3],
                key(i),
                format!("after{i}"),
                Consistency::Quorum,
            )
            .await;
            if on_minority(&key(i)) >= 2 {
                let err = result.expect_err("a write without a quorum of replicas succeeded");
                assert!(
                    matches!(err, NetError::Unavailable { .. } | NetError::Timeout { .. }),
                    "{err}"
                );
                refused += 1;
            } else {
                result.unwrap_or_else(|e| panic!("majority write {i} failed: {e}"));
                written.push(i);
            }
        }
        assert!(
            !written.is_empty() && refused > 0,
            "{} written, {refused} refused",
            written.len()
        );
        for i in 0..20 {
            let started = std::time::Instant::now();
            let err = write(
                &mesh,
                minority[i % 2],
                key(i),
                format!("lost{i}"),
                Consistency::Quorum,
            )
            .await
            .expect_err("a minority write succeeded");
            assert!(
                matches!(err, NetError::Unavailable { .. } | NetError::Timeout { .. }),
                "{err}"
            );
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "minority write took {:?}",
                started.elapsed()
            );
        }
        mesh.heal(&minority, &majority).await.unwrap();
        mesh.wait_converged(Duration::from_secs(30)).await.unwrap();
        eventually(90, "replicas converge after healing", || {
            replicas_agree(&mesh)
        })
        .await;
        for i in 0..200 {
            let got = read(&mesh, i % 5, key(i), Consistency::Quorum)
                .await
                .unwrap();
            let want = if written.contains(&i) {
                "after"
            } else {
                "before"
            };
            assert_eq!(got.as_deref(), Some(format!("{want}{i}").as_str()));
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_node_ends_up_with_exactly_its_keys() {
    within(240, async {
        let mut mesh = LocalMesh::builder().nodes(5).start().await.unwrap();
        mesh.wait_converged(Duration::from_secs(30)).await.unwrap();
        for i in 0..600 {
            write(&mesh, i % 5, key(i), format!("v{i}"), Consistency::Quorum)
                .await
                .unwrap();
        }
        let new = mesh.add_node().await.unwrap();
        mesh.wait_converged(Duration::from_secs(30)).await.unwrap();
        // It joins (streams), then every member settles on the new ring.
        eventually(120, "every member sees every member own its ranges", || {
            (0..6).all(|i| {
                let snap = mesh.node(i).node().unwrap().mesh.snapshot();
                snap.ring.len() == 6
                    && snap
                        .ring
                        .iter()
                        .all(|m| m.standing == sipmesh_net::Standing::Normal)
            })
        })
        .await;
        let peer = mesh.node(new).peer_id;
        let snap = mesh.node(new).node().unwrap().mesh.snapshot();
        assert_eq!(snap.ring.len(), 6);
        let mine: BTreeSet<Vec<u8>> = (0..600)
            .map(key)
            .filter(|k| snap.replicas(k).iter().any(|m| m.peer == peer))
            .collect();
        assert!(!mine.is_empty());
        eventually(
            90,
            "the new node holds exactly the keys it is a replica of",
            || local_keys(&mesh, new) == mine,
        )
        .await;
        // ... and the old nodes hand off what they no longer replicate.
        eventually(90, "every node holds exactly its keys", || {
            (0..6).all(|i| {
                let p = mesh.node(i).peer_id;
                let want: BTreeSet<Vec<u8>> = (0..600)
                    .map(key)
                    .filter(|k| snap.replicas(k).iter().any(|m| m.peer == p))
                    .collect();
                local_keys(&mesh, i) == want
            })
        })
        .await;
        for i in 0..600 {
            assert_eq!(
                local_value(&mesh, new, &key(i)).is_some(),
                mine.contains(&key(i))
            );
        }
    })
    .await;
}

/// A new mesh of `nodes` with no anti-entropy round and no hint delivered during the test: what
/// a node missed stays missed.
async fn mesh_without_repair(nodes: usize) -> LocalMesh {
    let mesh = LocalMesh::builder()
        .nodes(nodes)
        .anti_entropy_interval(Duration::from_secs(3_600))
        .configure(|c| c.mesh.hint_interval = Duration::from_secs(3_600))
        .start()
        .await
        .unwrap();
    mesh.wait_converged(Duration::from_secs(30)).await.unwrap();
    mesh
}

/// Node 2 misses `keys` QUORUM writes (`v{i}` under `key(i)`): stopped while they are made,
/// then restarted.
async fn node_2_misses_writes(mesh: &LocalMesh, keys: usize) {
    mesh.stop(2).await.unwrap();
    for i in 0..keys {
        write(mesh, i % 2, key(i), format!("v{i}"), Consistency::Quorum)
            .await
            .unwrap();
    }
    mesh.restart(2).await.unwrap();
    mesh.wait_converged(Duration::from_secs(30)).await.unwrap();
}

/// Pending ranges: a joining node answers no read for what it has not streamed. Node 2 misses
/// the writes (stopped, no hints delivered, no anti-entropy), so only nodes 0 and 1 hold them;
/// node 3 then joins and displaces a replica of most keys. Before pending ranges it answered
/// reads at once: a QUORUM read asking it and node 2 found nothing. Now reads keep asking the
/// old replicas until it has streamed from every fellow replica, then it answers, and the
/// replicas it displaced hand off only after members settle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_node_answers_no_read_before_it_has_streamed() {
    within(240, async {
        let mut mesh = mesh_without_repair(3).await;
        let keys = 300;
        node_2_misses_writes(&mesh, keys).await;
        assert!((0..keys).all(|i| local_value(&mesh, 2, &key(i)).is_none()));
        let new = mesh.add_node().await.unwrap();
        let joiner = mesh.node(new).node().unwrap();
        let was_joining = joiner.mesh.joining();
        mesh.wait_converged(Duration::from_secs(30)).await.unwrap();
        let check = |phase: &'static str| {
            let mesh = &mesh;
            async move {
                for i in 0..keys {
                    for via in [new, 2] {
                        let got = read(mesh, via, key(i), Consistency::Quorum).await.unwrap();
                        assert_eq!(
                            got.as_deref(),
                            Some(format!("v{i}").as_str()),
                            "{phase}: key {i} read through node {via}"
                        );
                    }
                }
            }
        };
        check("while the new node joins").await;
        eventually(60, "the new node joins", || !joiner.mesh.joining()).await;
        assert!(was_joining, "the new node answered reads from the start");
        // It streamed what it owns: reads through it find every key without asking others.
        let snap = joiner.mesh.snapshot();
        let peer = mesh.node(new).peer_id;
        let mine: Vec<usize> = (0..keys)
            .filter(|&i| snap.replicas(&key(i)).iter().any(|m| m.peer == peer))
            .collect();
        assert!(mine.len() > keys / 3, "it owns {} keys", mine.len());
        for &i in &mine {
            assert_eq!(local_value(&mesh, new, &key(i)), Some(format!("v{i}")));
        }
        check("once it joined").await;
    })
    .await;
}

/// Pending ranges on the way out: a decommissioning node first says it is leaving, and from
/// then on writes also reach a quorum of the replicas its ranges will have. Node 2 is down (and
/// gets no hints), so a write during the handover reaches only node 3 and one other replica;
/// before, a key written after the handover listed its partitions was then on one replica of
/// those the key has without node 3, and a QUORUM read through the returning node 2 could miss
/// it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_during_a_decommission_reach_the_replicas_left_behind() {
    within(240, async {
        let mesh = mesh_without_repair(4).await;
        for i in 0..1_500 {
            write(&mesh, i % 2, key(i), format!("v{i}"), Consistency::Quorum)
                .await
                .unwrap();
        }
        mesh.stop(2).await.unwrap();
        let done = std::sync::atomic::AtomicBool::new(false);
        let leaving = async {
            let handed = mesh.leave(3).await.unwrap();
            done.store(true, std::sync::atomic::Ordering::Relaxed);
            handed
        };
        let writing = async {
            let mut acked = Vec::new();
            let mut i = 10_000;
            while !done.load(std::sync::atomic::Ordering::Relaxed) && i < 30_000 {
                if write(&mesh, i % 2, key(i), format!("v{i}"), Consistency::Quorum)
                    .await
                    .is_ok()
                {
                    acked.push(i);
                }
                i += 1;
            }
            acked
        };
        let ((handed, failed), acked) = tokio::join!(leaving, writing);
        assert_eq!(failed, 0, "handover failures");
        assert!(handed > 0);
        assert!(
            acked.len() > 20,
            "{} writes during the handover",
            acked.len()
        );
        mesh.restart(2).await.unwrap();
        eventually(60, "node 2 sees the two others up", || {
            let node = mesh.node(2).node().unwrap();
            [0, 1]
                .iter()
                .all(|&i| node.mesh.is_up(&mesh.node(i).peer_id))
        })
        .await;
        for &i in acked.iter().chain(&(0..1_500).collect::<Vec<_>>()) {
            let got = read(&mesh, 2, key(i), Consistency::Quorum).await.unwrap();
            assert_eq!(got.as_deref(), Some(format!("v{i}").as_str()), "key {i}");
        }
    })
    .await;
}

/// Removing a dead member (Cassandra's removenode): its ranges stream to their new replicas
/// before it leaves the ring. Node 2 missed the writes (stopped, no hints, no anti-entropy), so
/// a key whose replicas were nodes 3, 2 and one other was acknowledged by node 3 and that other
/// only. Node 3 dies and is removed; before, the ring dropped it at once and a QUORUM read
/// through node 2 and the replica taking node 3's place found nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_members_ranges_reach_their_new_replicas_before_it_leaves() {
    within(240, async {
        let mesh = mesh_without_repair(4).await;
        let keys = 300;
        node_2_misses_writes(&mesh, keys).await;
        let dead = mesh.node(3).peer_id;
        mesh.kill(3);
        eventually(30, "node 3 is down for every other node", || {
            (0..3).all(|i| !mesh.node(i).node().unwrap().mesh.is_up(&dead))
        })
        .await;
        let removed = mesh
            .node(0)
            .run(move |n| async move { n.mesh.remove_member(dead, false).await })
            .await
            .unwrap();
        removed.expect("the removal completes");
        eventually(30, "node 3 is out of every ring", || {
            (0..3).all(|i| {
                let snap = mesh.node(i).node().unwrap().mesh.snapshot();
                snap.ring.len() == 3 && snap.ring.iter().all(|m| m.peer != dead)
            })
        })
        .await;
        for i in 0..keys {
            let got = read(&mesh, 2, key(i), Consistency::Quorum).await.unwrap();
            assert_eq!(got.as_deref(), Some(format!("v{i}").as_str()), "key {i}");
        }
    })
    .await;
}

/// Two-phase tombstone collection: with a one-second grace period, a delete's tombstone stays on
/// every replica while one replica is down (it still holds the deleted value), reaches that
/// replica when it returns (no resurrection), and only then goes, from all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tombstones_go_only_once_every_replica_has_them() {
    within(180, async {
        let mesh = LocalMesh::builder()
            .nodes(3)
            .anti_entropy_interval(Duration::from_millis(500))
            .configure(|c| {
                c.tombstone_grace = Duration::from_secs(1);
                c.mesh.compaction_interval = Duration::from_millis(500);
            })
            .start()
            .await
            .unwrap();
        mesh.wait_converged(Duration::from_secs(30)).await.unwrap();
        let k = key(7);
        write(&mesh, 0, k.clone(), "doomed".into(), Consistency::All)
            .await
            .unwrap();
        let tombstone_at = |i: usize| {
            let node = mesh.node(i).node().expect("running");
            node.keyspace()
                .partition_entries(USERS, &k)
                .unwrap()
                .iter()
                .any(|(e, _)| matches!(e, sipmesh_storage::EntryKey::RowTombstone(_)))
        };
        mesh.stop(2).await.unwrap();
        mesh.node(0)
            .run({
                let k = k.clone();
                move |n| async move {
                    let m = Mutation::new(USERS, k).delete_row(b"", n.keyspace().now());
                    n.mesh.write(m, Consistency::Quorum).await
                }
            })
            .await
            .unwrap()
            .unwrap();
        // Many grace periods and compactions later, the tombstone is still on both live
        // replicas: the third has not got it.
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(
            tombstone_at(0) && tombstone_at(1),
            "purged while a replica was down"
        );
        mesh.restart(2).await.unwrap();
        eventually(60, "the returning replica gets the delete", || {
            local_value(&mesh, 2, &k).is_none()
        })
        .await;
        for via in 0..3 {
            assert_eq!(
                read(&mesh, via, k.clone(), Consistency::Quorum)
                    .await
                    .unwrap(),
                None
            );
        }
        eventually(60, "the tombstone is collected on every replica", || {
            (0..3).all(|i| {
                let node = mesh.node(i).node().expect("running");
                node.keyspace()
                    .partition_entries(USERS, &k)
                    .unwrap()
                    .is_empty()
            })
        })
        .await;
        let collected: u64 = (0..3)
            .map(|i| {
                mesh.node(i)
                    .node()
                    .unwrap()
                    .mesh
                    .metrics()
                    .tombstones_collected()
            })
            .sum();
        assert!(collected > 0);
        // And it stays gone: anti-entropy brings nothing back.
        tokio::time::sleep(Duration::from_secs(2)).await;
        for i in 0..3 {
            assert!(
                local_value(&mesh, i, &k).is_none(),
                "the value came back on node {i}"
            );
            let node = mesh.node(i).node().expect("running");
            assert!(node
                .keyspace()
                .partition_entries(USERS, &k)
                .unwrap()
                .is_empty());
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_to_one_cell_converge() {
    within(120, async {
        let mesh = std::sync::Arc::new(LocalMesh::builder().nodes(4).start().await.unwrap());
        mesh.wait_converged(Duration::from_secs(30)).await.unwrap();
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let mesh = mesh.clone();
                tokio::spawn(async move {
                    for j in 0..25 {
                        write(
                            &mesh,
                            w,
                            b"hot".to_vec(),
                            format!("w{w}-{j}"),
                            Consistency::Quorum,
                        )
                        .await
                        .unwrap();
                    }
                })
            })
            .collect();
        for w in writers {
            w.await.unwrap();
        }
        let replicas: Vec<usize> = mesh
            .node(0)
            .node()
            .unwrap()
            .mesh
            .replicas_of(b"hot")
            .iter()
            .map(|p| mesh.index_of(p).unwrap())
            .collect();
        eventually(30, "every replica holds the same value", || {
            let values: BTreeSet<Option<String>> = replicas
                .iter()
                .map(|&i| local_value(&mesh, i, b"hot"))
                .collect();
            values.len() == 1 && values.iter().next().unwrap().is_some()
        })
        .await;
        let settled = local_value(&mesh, replicas[0], b"hot");
        for via in 0..4 {
            assert_eq!(
                read(&mesh, via, b"hot".to_vec(), Consistency::All)
                    .await
                    .unwrap(),
                settled
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_key_keeps_strangers_out() {
    within(120, async {
        let key_a = [7u8; 32];
        let mesh = LocalMesh::builder()
            .nodes(2)
            .mesh_key(key_a)
            .start()
            .await
            .unwrap();
        mesh.wait_converged(Duration::from_secs(30)).await.unwrap();
        let seed = mesh.node(0).addr.clone();
        // Without the key: never a member, either way.
        let stranger = LocalMesh::builder()
            .nodes(1)
            .bootstrap(seed.clone())
            .start()
            .await
            .unwrap();
        // With a different key: the same.
        let wrong = LocalMesh::builder()
            .nodes(1)
            .mesh_key([8u8; 32])
            .bootstrap(seed.clone())
            .start()
            .await
            .unwrap();
        // With the key: joins (the control that shows the test can fail).
        let friend = LocalMesh::builder()
            .nodes(1)
            .mesh_key(key_a)
            .bootstrap(seed)
            .start()
            .await
            .unwrap();
        let friend_id = friend.node(0).peer_id;
        eventually(30, "the friend joins", || {
            mesh.node(0).node().unwrap().mesh.is_up(&friend_id)
        })
        .await;
        tokio::time::sleep(Duration::from_secs(4)).await;
        // What members hold, outsiders cannot read; what outsiders write, members never see.
        mesh.node(0)
            .run(|n| async move { n.add_user("alice", "a-pw").await })
            .await
            .unwrap()
            .unwrap();
        for outsider in [&stranger, &wrong] {
            let read = outsider
                .node(0)
                .run(|n| async move {
                    n.mesh
                        .read(sipmesh::tables::USERS, b"alice", Consistency::One)
                        .await
                })
                .await
                .unwrap();
            assert!(
                read.map_or(true, |p| p.rows.is_empty()),
                "an outsider read a member's row"
            );
            let _ = outsider
                .node(0)
                .run(|n| async move { n.add_user("mallory", "m-pw").await })
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        for i in 0..2 {
            let got = mesh
                .node(i)
                .run(|n| async move {
                    n.mesh
                        .read(sipmesh::tables::USERS, b"mallory", Consistency::One)
                        .await
                })
                .await
                .unwrap()
                .unwrap();
            assert!(got.rows.is_empty(), "an outsider's write reached a member");
        }
        for outsider in [&stranger, &wrong] {
            let id = outsider.node(0).peer_id;
            assert_eq!(
                outsider.node(0).node().unwrap().mesh.members().len(),
                1,
                "an outsider sees members"
            );
            for i in 0..2 {
                assert!(
                    !mesh
                        .node(i)
                        .node()
                        .unwrap()
                        .mesh
                        .members()
                        .iter()
                        .any(|m| m.peer_id == id),
                    "an outsider became a member"
                );
            }
        }
    })
    .await;
}

/// A partition wider than a whole frame may be (about 18 MB of rows; frames stop at 16 MiB),
/// written to one replica only (as if the others had missed every write), reaches the others
/// whole: anti-entropy moves it in pages of 256 KiB, resuming inside the partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anti_entropy_moves_a_wide_partition_in_pages() {
    within(120, async {
        let mesh = LocalMesh::builder().nodes(3).start().await.unwrap();
        mesh.wait_converged(Duration::from_secs(30)).await.unwrap();
        const ROWS: u32 = 70_000;
        let rows = mesh
            .node(0)
            .run(|node| async move {
                let ks = node.keyspace();
                let mut m = Mutation::new(sipmesh::tables::REGISTRATIONS, b"wide".to_vec());
                for i in 0..ROWS {
                    m = m.upsert(
                        &i.to_be_bytes(),
                        [("binding", vec![b'b'; 250])],
                        ks.now(),
                        None,
                    );
                }
                ks.apply(&m).unwrap()
            })
            .await
            .unwrap();
        assert_eq!(rows, ROWS as usize);
        let count = |i: usize| {
            mesh.node(i)
                .node()
                .unwrap()
                .keyspace()
                .read_partition(sipmesh::tables::REGISTRATIONS, b"wide")
                .unwrap()
                .rows
                .len()
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while count(1) < ROWS as usize || count(2) < ROWS as usize {
            assert!(
                tokio::time::Instant::now() < deadline,
                "not converged: {} and {} of {ROWS} rows",
                count(1),
                count(2)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let roots: Vec<u64> = (0..3)
            .map(|i| mesh.node(i).node().unwrap().keyspace().merkle().root())
            .collect();
        assert!(roots.windows(2).all(|w| w[0] == w[1]), "{roots:x?}");
    })
    .await;
}

/// The ring is persisted: a node restarted while the rest of its ring is down knows it is a
/// minority and refuses QUORUM at once (no mesh of one), and serves it again once a majority
/// of its ring is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_alone_is_no_mesh_of_one() {
    within(120, async {
        let mesh = LocalMesh::builder().nodes(3).start().await.unwrap();
        mesh.wait_converged(Duration::from_secs(30)).await.unwrap();
        write(&mesh, 0, key(1), "before".into(), Consistency::Quorum)
            .await
            .unwrap();
        mesh.kill(1);
        mesh.kill(2);
        mesh.kill(0);
        mesh.restart(0).await.unwrap();
        let members = mesh.node(0).node().unwrap().mesh.members().len();
        assert_eq!(members, 3, "the restarted node knows its ring");
        let t0 = std::time::Instant::now();
        let refused = write(&mesh, 0, key(2), "alone".into(), Consistency::Quorum).await;
        assert!(
            matches!(refused, Err(NetError::Unavailable { .. })),
            "a QUORUM write alone: {refused:?}"
        );
        assert!(t0.elapsed() < Duration::from_secs(1), "refused fast");
        assert!(read(&mesh, 0, key(1), Consistency::Quorum).await.is_err());
        mesh.restart(1).await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while write(&mesh, 0, key(3), "majority".into(), Consistency::Quorum)
            .await
            .is_err()
        {
            assert!(
                std::time::Instant::now() < deadline,
                "QUORUM never came back"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(
            read(&mesh, 0, key(1), Consistency::Quorum)
                .await
                .unwrap()
                .as_deref(),
            Some("before")
        );
    })
    .await;
}

/// The seed node (started without --bootstrap) leaves gracefully, as `systemctl stop` does,
/// and starts again: it dials the members of its persisted ring (the others no longer dial a
/// member that left) and is back in everyone's ring.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_that_left_rejoins_through_its_persisted_ring() {
    within(120, async {
        let mesh = LocalMesh::builder().nodes(3).start().await.unwrap();
        mesh.wait_converged(Duration::from_secs(30)).await.unwrap();
        assert!(
            mesh.node(0).config().mesh.bootstrap.is_empty(),
            "node 0 is the seed"
        );
        let seed = mesh.node(0).peer_id;
        mesh.leave(0).await.unwrap();
        mesh.wait_state(seed, MemberState::Left, Duration::from_secs(10))
            .await
            .unwrap();
        mesh.restart(0).await.unwrap();
        mesh.wait_state(seed, MemberState::Up, Duration::from_secs(30))
            .await
            .expect("the others see the seed back");
        mesh.wait_converged(Duration::from_secs(30)).await.unwrap();
        write(&mesh, 0, key(7), "back".into(), Consistency::Quorum)
            .await
            .unwrap();
    })
    .await;
}

/// `sipmesh mesh remove`: refused for a member that is up; a dead member is removed, the
/// decision reaches the other members (it is left everywhere, out of every ring), and QUORUM
/// keeps working on the remaining replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_removes_a_dead_member() {
    within(120, async {
        let mesh = LocalMesh::builder().nodes(3).start().await.unwrap();
        mesh.wait_converged(Duration::from_secs(30)).await.unwrap();
        let n0 = mesh.node(0).node().unwrap();
        let (http, token) = (
            n0.http_addr().unwrap(),
            n0.admin_token().unwrap().to_string(),
        );
        let dead = mesh.node(2).peer_id;
        let cli = |peer: String| {
            let (http, token) = (http, token.clone());
            async move {
                tokio::process::Command::new(env!("CARGO_BIN_EXE_sipmesh"))
                    .args(["mesh", "remove", &peer, "--node", &format!("http://{http}")])
                    .args(["--token", &token])
                    .output()
                    .await
                    .unwrap()
            }
        };
        let up = cli(dead.to_string()).await;
        assert!(
            !up.status.success(),
            "removing a live member must be refused"
        );
        assert!(String::from_utf8_lossy(&up.stderr).contains("is up"));
        mesh.kill(2);
        eventually(30, "node 0 sees node 2 down", || {
            !mesh.node(0).node().unwrap().mesh.is_up(&dead)
        })
        .await;
        let out = cli(dead.to_string()).await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for i in 0..2 {
            eventually(30, "the removal reaches every member", || {
                mesh.node(i)
                    .node()
                    .unwrap()
                    .mesh
                    .members()
                    .iter()
                    .any(|m| m.peer_id == dead && m.state == MemberState::Left)
            })
            .await;
        }
        write(&mesh, 1, key(7), "after".into(), Consistency::Quorum)
            .await
            .unwrap();
    })
    .await;
}

/// Partial connectivity (issue "Grow to thousands of community nodes"): node 0 and node 2
/// cannot reach each other, both reach node 1. SWIM keeps both up (its indirect probes go
/// through node 1), and replica reads and writes between them are relayed through node 1, so
/// writes at ALL still succeed and reads see them. Prints the latency relaying adds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_between_two_members_is_routed_around() {
    within(180, async {
        let mesh = LocalMesh::builder().nodes(3).start().await.unwrap();
        mesh.wait_converged(Duration::from_secs(30)).await.unwrap();
        const WRITES: usize = 30;
        let timed = |base: usize| {
            let mesh = &mesh;
            async move {
                let started = std::time::Instant::now();
                for i in base..base + WRITES {
                    write(mesh, 0, key(i), format!("v{i}"), Consistency::All)
                        .await
                        .unwrap_or_else(|e| panic!("write {i} at ALL: {e}"));
                }
                started.elapsed() / WRITES as u32
            }
        };
        let direct = timed(0).await;
        mesh.partition(&[0], &[2]).await.unwrap();
        // The cut is not a death: after several SWIM periods both are still up everywhere.
        tokio::time::sleep(Duration::from_secs(6)).await;
        for (i, j) in [(0, 2), (2, 0), (1, 0), (1, 2)] {
            let peer = mesh.node(j).peer_id;
            assert!(
                mesh.node(i).node().unwrap().mesh.is_up(&peer),
                "node {i} sees node {j} down across a cut it can route around"
            );
        }
        let relayed = timed(1_000).await;
        let (answered, _) = mesh.node(0).node().unwrap().mesh.metrics().relayed_totals();
        assert!(answered >= WRITES as u64, "{answered} requests relayed");
        // Node 2 holds what node 0 wrote, and node 0 reads it back at ALL through node 1.
        for i in [1_000, 1_000 + WRITES - 1] {
            let held = mesh
                .node(2)
                .node()
                .unwrap()
                .keyspace()
                .read_partition(USERS, &key(i))
                .unwrap();
            assert_eq!(held.rows.len(), 1, "node 2 holds key {i}");
            assert_eq!(
                read(&mesh, 0, key(i), Consistency::All).await.unwrap(),
                Some(format!("v{i}"))
            );
        }
        eprintln!(
            "write at ALL from node 0, mean of {WRITES}: direct {direct:?}, relayed to node 2 through node 1 {relayed:?}"
        );
    })
    .await;
}

/// A node started alone (no seeds, no ring of others from an earlier run) is a new mesh of
/// one: no peer holds anything it lacks, so it reads its own replicas from the start instead
/// of through the quorum path until its first anti-entropy round. A node started with seeds,
/// and a member restarted on its ring file, still catch up first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_mesh_of_one_reads_its_own_replicas_at_once() {
    within(120, async {
        // Rounds far apart: whatever a node's state, no round ends it during the test.
        let mesh = LocalMesh::builder()
            .nodes(2)
            .anti_entropy_interval(Duration::from_secs(600))
            .start()
            .await
            .unwrap();
        let first = mesh.node(0).node().unwrap();
        assert!(
            !first.mesh.catching_up(),
            "the first node of a new mesh has nothing to catch up from"
        );
        assert!(first.mesh.reads_locally(b"alice"));
        drop(first); // a handle keeps the node's keyspace (and its lock) open
        let seeded = mesh.node(1).node().unwrap();
        assert!(
            seeded.mesh.catching_up(),
            "a node started with seeds catches up first"
        );
        drop(seeded);
        mesh.wait_converged(Duration::from_secs(30)).await.unwrap();
        mesh.stop(0).await.unwrap();
        mesh.restart(0).await.unwrap();
        let restarted = mesh.node(0).node().unwrap();
        assert!(
            restarted.mesh.catching_up(),
            "a member restarted on a ring of two catches up first"
        );
        assert!(!restarted.mesh.reads_locally(b"alice"));
    })
    .await;
}
