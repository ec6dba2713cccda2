//! SIPp (Debian's sip-tester) registers 1,000 users with digest auth against a 3-node mesh:
//! 0 failed registrations, and every binding readable at QUORUM afterwards.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use sipmesh::{Consistency, LocalMesh};

const USERS: usize = 1000;

/// The SIPp binary; the test script installs it, so its absence is an error, not a skip.
pub fn sipp() -> &'static str {
    let ok = std::process::Command::new("sipp")
        .arg("-v")
        .output()
        .is_ok();
    assert!(
        ok,
        "sipp not found: run ./scripts/test.sh (it installs Debian's sip-tester)"
    );
    "sipp"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipp_registers_1000_users_through_a_3_node_mesh() {
    within(300, async {
        let mesh = LocalMesh::builder().nodes(3).start().await.unwrap();
        mesh.wait_converged(Duration::from_secs(30)).await.unwrap();
        let http = mesh.node(0).node().unwrap().http_addr.unwrap();
        let csv: String = (0..USERS).map(|i| format!("u{i:04},pw{i:04}\n")).collect();
        let (code, v) = tokio::task::spawn_blocking(move || {
            let r = ureq::post(&format!("http://{http}/v1/users/import"))
                .send_string(&csv)
                .unwrap();
            (r.status(), r.into_json::<serde_json::Value>().unwrap())
        })
        .await
        .unwrap();
        assert_eq!(code, 200, "{v}");
        assert_eq!(v["imported"], USERS);

        let dir = tempfile::tempdir().unwrap();
        let scenario = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/scenarios/reg.xml");
        let mut runs = Vec::new();
        for n in 0..3 {
            let inf = dir.path().join(format!("users{n}.csv"));
            let mut text = String::from("SEQUENTIAL\n");
            let mine: Vec<usize> = (0..USERS).filter(|i| i % 3 == n).collect();
            for i in &mine {
                text.push_str(&format!(
                    "u{i:04};[authentication username=u{i:04} password=pw{i:04}]\n"
                ));
            }
            std::fs::write(&inf, text).unwrap();
            let server = mesh.node(n).node().unwrap().sip_addr();
            let child = tokio::process::Command::new(sipp())
                .current_dir(dir.path())
                .args([
                    "-sf",
                    scenario.to_str().unwrap(),
                    "-inf",
                    inf.to_str().unwrap(),
                ])
                .args(["-m", &mine.len().to_string(), "-r", "150", "-l", "200"])
                .args(["-i", "127.0.0.1", "-key", "contact_hp", "127.0.0.1:5999"])
                .args([
                    "-nostdin",
                    "-timeout",
                    "120s",
                    "-timeout_error",
                    "-trace_err",
                ])
                .arg(server.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn sipp");
            runs.push((n, child));
        }
        for (n, child) in runs {
            let out = child.wait_with_output().await.unwrap();
            let errors = std::fs::read_dir(dir.path())
                .unwrap()
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().ends_with("_errors.log"))
                .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
                .collect::<Vec<_>>()
                .join("\n");
            assert!(
                out.status.success(),
                "sipp against node {n} failed ({:?}): {}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr),
                errors.chars().take(3000).collect::<String>()
            );
        }
        // Every user has exactly one binding, read at QUORUM through node 1.
        let missing = mesh
            .node(1)
            .run(|node| async move {
                let mut missing = Vec::new();
                for i in 0..USERS {
                    let aor = format!("u{i:04}");
                    let b = sipmesh::location::lookup(&node.mesh, &aor, Consistency::Quorum)
                        .await
                        .unwrap();
                    if b.len() != 1 {
                        missing.push(aor);
                    }
                }
                missing
            })
            .await
            .unwrap();
        assert!(
            missing.is_empty(),
            "{} users without a binding: {:?}",
            missing.len(),
            &missing[..missing.len().min(10)]
        );
    })
    .await;
}
