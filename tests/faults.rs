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
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tokio::process::{Child, Command};

const TOKEN: &str = "faults-test-admin-token-0123";

fn spawn(dir: &Path, base: u16, i: u16, seed: Option<&str>, config: Option<&Path>) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sipmesh"));
    cmd.args([
        "node",
        "--data-dir",
        dir.join(format!("n{i}")).to_str().unwrap(),
    ])
    .args(["--sip-listen", &format!("127.0.0.1:{}", base + i)])
    .args([
        "--p2p-listen",
        &format!("/ip4/127.0.0.1/tcp/{}", base + 100 + i),
    ])
    .args(["--http-listen", &format!("127.0.0.1:{}", base + 200 + i)])
    .args(["--admin-token", TOKEN])
    .env("RUST_LOG", "warn")
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .kill_on_drop(true);
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
