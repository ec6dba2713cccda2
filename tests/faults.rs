//! Fault injection on real `sipmesh node` processes (issue "The replicated keyspace keeps every
//! acknowledged write"): LocalMesh's kill drops a runtime and sled flushes on drop, so only a
//! real SIGKILL shows what a process kill loses.
//!
//! Workload: Jepsen's "set" — concurrent adds of unique users through the admin API, each
//! recorded only once acknowledged (201 after a QUORUM write). Nemesis: SIGKILL of every node
//! right after the last acknowledgement. Check: after a restart, every acknowledged user is
//! there.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tokio::process::Child;

const TOKEN: &str = "faults-test-admin-token-0123";

fn spawn(dir: &Path, base: u16, i: u16, seed: Option<&str>, config: Option<&Path>) -> Child {
    let mut cmd = node_command(
        dir,
        i,
        "127.0.0.1",
        (base + i, base + 100 + i, base + 200 + i),
        TOKEN,
    );
    if let Some(s) = seed {
        cmd.args(["--bootstrap", s]);
    }
    if let Some(c) = config {
        cmd.args(["--config", c.to_str().unwrap()]);
    }
    cmd.spawn().unwrap()
}

fn http(base: u16, i: u16) -> String {
    format!("http://127.0.0.1:{}", base + 200 + i)
}

/// Start (or restart) `n` nodes on the same directories and ports; wait until all are up.
async fn start(dir: &Path, base: u16, n: u16, config: Option<&Path>) -> Vec<Child> {
    let seed = format!("/ip4/127.0.0.1/tcp/{}", base + 100);
    let mut children = Vec::new();
    for i in 0..n {
        children.push(spawn(
            dir,
            base,
            i,
            (i > 0).then_some(seed.as_str()),
            config,
        ));
        wait_answering(format!("{}/v1/status", http(base, i))).await;
    }
    for i in 0..n {
        eventually(30, "every member up", || async move {
            http_get(format!("{}/v1/status", http(base, i))).await.1["members_up"] == n
        })
        .await;
    }
    children
}

/// Add users from `writers` concurrent clients for `secs`; the users whose add was acknowledged.
async fn add_users(base: u16, writers: u16, secs: u64) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let acked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for w in 0..writers {
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            let mut k = 0u32;
            while Instant::now() < deadline && k < 2000 {
                let user = format!("w{w}u{k}");
                k += 1;
                let (code, _) = http_post(
                    format!("{}/v1/users", http(base, w % 3)),
                    TOKEN,
                    serde_json::json!({ "user": user, "password": "pw" }),
                )
                .await;
                if code == 201 {
                    acked.lock().unwrap().push(user);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let v = acked.lock().unwrap().clone();
    v
}

/// Every node SIGKILLed right after the last acknowledgement loses no acknowledged write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill_of_every_node() {
    within(300, async {
        let dir = tempfile::tempdir().unwrap();
        let base = 17000 + (std::process::id() % 500) as u16 * 3 % 1000;
        let mut nodes = start(dir.path(), base, 3, None).await;
        let acked = add_users(base, 6, 4).await;
        // The nemesis: every node, at once, as an OOM kill or a forced redeploy would.
        for c in &mut nodes {
            c.start_kill().unwrap();
        }
        for c in &mut nodes {
            c.wait().await.unwrap();
        }
        assert!(acked.len() > 50, "the workload ran ({} acked)", acked.len());
        println!(
            "{} users acknowledged in 4 s by 6 writers, then SIGKILL",
            acked.len()
        );
        let _nodes = start(dir.path(), base, 3, None).await;
        let mut lost = Vec::new();
        for (i, user) in acked.iter().enumerate() {
            let (code, _) =
                http_get(format!("{}/v1/users/{user}", http(base, (i % 3) as u16))).await;
            if code != 200 {
                lost.push((user.clone(), code));
            }
        }
        assert!(
            lost.is_empty(),
            "{} of {} acknowledged users lost after SIGKILL: {:?}",
            lost.len(),
            acked.len(),
            &lost[..lost.len().min(10)]
        );
    })
    .await;
}

/// libfaketime (Debian `faketime`), preloaded into one node so its wall clock runs an hour
/// ahead (its monotonic clock, which timers use, stays true).
const FAKETIME_LIB: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

/// Skewed clocks (issue "keeps every acknowledged write … and skewed clocks"): node 2's wall
/// clock runs an hour ahead. It learns from the heartbeats that its clock is the odd one out
/// and refuses to coordinate anything (503, a metric, an error log), so nothing it stamps an
/// hour ahead reaches a replica, and no read through a correct node ever shows a write or
/// delete that was not acknowledged. Writes through the correct nodes keep working, including
/// deletes of what they wrote: the skewed replica cannot shadow them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_an_hour_ahead_coordinates_nothing_and_shadows_nothing() {
    within(180, async {
        assert!(
            Path::new(FAKETIME_LIB).exists(),
            "{FAKETIME_LIB}: scripts/test.sh installs Debian's faketime"
        );
        let dir = tempfile::tempdir().unwrap();
        let base = 26000 + (std::process::id() % 300) as u16 * 3;
        let mut nodes = Vec::new();
        for i in 0..3u16 {
            let mut cmd = node_command(
                dir.path(),
                i,
                "127.0.0.1",
                (base + i, base + 100 + i, base + 200 + i),
                TOKEN,
            );
            if i > 0 {
                cmd.args(["--bootstrap", &format!("/ip4/127.0.0.1/tcp/{}", base + 100)]);
            }
            if i == 2 {
                cmd.env("LD_PRELOAD", FAKETIME_LIB)
                    .env("FAKETIME", "+1h")
                    .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
            }
            nodes.push(cmd.spawn().unwrap());
            wait_answering(format!("{}/v1/status", http(base, i))).await;
        }
        for i in 0..3 {
            eventually(30, "every member up", || async move {
                http_get(format!("{}/v1/status", http(base, i))).await.1["members_up"] == 3
            })
            .await;
        }
        eventually(10, "node 2 knows its clock is off", || async {
            http_get(format!("{}/v1/status", http(base, 2))).await.1["clock_skewed"] == true
        })
        .await;
        let (_, s2) = http_get(format!("{}/v1/status", http(base, 2))).await;
        let offset = s2["clock_offset_ms"].as_i64().unwrap();
        assert!((-3_660_000..-3_540_000).contains(&offset), "{offset}");
        for i in 0..2 {
            let (_, s) = http_get(format!("{}/v1/status", http(base, i))).await;
            assert_eq!(s["clock_skewed"], false, "node {i} is right: {s}");
        }
        let add = |i: u16, user: &'static str| async move {
            http_post(
                format!("{}/v1/users", http(base, i)),
                TOKEN,
                serde_json::json!({ "user": user, "password": "pw" }),
            )
            .await
        };
        let delete = |i: u16, user: &'static str| async move {
            http_call(
                "DELETE",
                format!("{}/v1/users/{user}", http(base, i)),
                Some(TOKEN.into()),
                None,
                vec![],
            )
            .await
        };
        // The skewed node refuses to coordinate, and says why.
        let (code, v) = add(2, "phantom").await;
        assert_eq!(code, 503, "{v}");
        assert!(v["error"].as_str().unwrap().contains("clock"), "{v}");
        let (code, _) = http_get(format!("{}/v1/users/anyone", http(base, 2))).await;
        assert_eq!(code, 503);
        // Correct nodes: add, delete, re-add, each acknowledged, each visible everywhere that
        // coordinates; nothing the skewed node was asked shows up.
        assert_eq!(add(0, "alice").await.0, 201);
        assert_eq!(add(1, "bob").await.0, 201);
        assert_eq!(delete(1, "alice").await.0, 200);
        assert_eq!(add(2, "carol").await.0, 503);
        assert_eq!(delete(2, "bob").await.0, 503);
        for _ in 0..20 {
            for i in 0..2 {
                let get = |u: &str| http_get(format!("{}/v1/users/{u}", http(base, i)));
                assert_eq!(
                    get("alice").await.0,
                    404,
                    "alice's acknowledged delete holds"
                );
                assert_eq!(
                    get("bob").await.0,
                    200,
                    "bob's unacknowledged delete never happened"
                );
                assert_eq!(get("phantom").await.0, 404, "no phantom write");
                assert_eq!(get("carol").await.0, 404, "no phantom write");
            }
        }
        let metrics = tokio::task::spawn_blocking(move || {
            ureq::get(&format!("{}/metrics", http(base, 2)))
                .call()
                .unwrap()
                .into_string()
                .unwrap()
        })
        .await
        .unwrap();
        assert!(
            metrics.contains("sipmesh_clock_skewed 1"),
            "the skew is a metric"
        );
    })
    .await;
}
