//! SIPp (Debian's sip-tester) registers 1,000 users with digest auth against a 3-node mesh:
//! 0 failed registrations, and every binding readable at QUORUM afterwards.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use sipmesh::LocalMesh;

const USERS: usize = 1000;

/// The SIPp loads of this file run one at a time: each wants the 2 cores to itself.
static LOAD: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipp_registers_1000_users_through_a_3_node_mesh() {
    let _one_at_a_time = LOAD.lock().await;
    within(300, async {
        let mesh = LocalMesh::builder().nodes(3).start().await.unwrap();
        mesh.wait_converged(Duration::from_secs(30)).await.unwrap();
        let http = mesh.node(0).node().unwrap().http_addr().unwrap();
        let csv: String = (0..USERS).map(|i| format!("u{i:04},pw{i:04}\n")).collect();
        let token = admin_token(&mesh, 0);
        let (code, v) = import_users(&format!("http://{http}"), &token, csv).await;
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
                    let b = node.contacts(&aor).await.unwrap();
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

const CALLS: usize = 1000;

/// A SIPp UAS registered at node 2 answers 1,000 calls from a SIPp UAC registered at node 0.
async fn thousand_calls(transport: &str) {
    let mesh = mesh_with_users(
        3,
        &[("callee", "callee-pw"), ("caller", "caller-pw")],
        |_| {},
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let t = if transport == "tcp" { "t1" } else { "u1" };
    let (uas_port, uac_port) = (free_port(), free_port());
    let node = |i: usize| mesh.node(i).node().unwrap().sip_addr().to_string();
    let s = |x: &str| x.to_string();
    // The callee: a SIPp UAS, registered at node 2.
    let mut uas = tokio::process::Command::new(sipp())
        .current_dir(dir.path())
        .args([
            "-sf",
            &scenario("uas.xml"),
            "-i",
            "127.0.0.1",
            "-p",
            &uas_port.to_string(),
            "-t",
            t,
            "-nostdin",
            "-trace_err",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    for (user, pw, node_i, contact_port) in [
        ("callee", "callee-pw", 2, uas_port),
        ("caller", "caller-pw", 0, uac_port),
    ] {
        let node = mesh.node(node_i).node().unwrap().sip_addr();
        let contact = format!("127.0.0.1:{contact_port}");
        sipp_register(dir.path(), user, pw, node, t, &contact).await;
    }
    // The caller: 1,000 calls through node 0.
    let callees = dir.path().join("callees.csv");
    std::fs::write(&callees, "SEQUENTIAL\ncallee\n").unwrap();
    let out = run_sipp(
        dir.path(),
        &[
            s("-sf"),
            scenario("uac.xml"),
            s("-inf"),
            callees.to_string_lossy().into_owned(),
            s("-s"),
            s("caller"),
            s("-au"),
            s("caller"),
            s("-ap"),
            s("caller-pw"),
            s("-m"),
            CALLS.to_string(),
            s("-r"),
            s("100"),
            s("-l"),
            s("200"),
            s("-d"),
            s("200"),
            s("-i"),
            s("127.0.0.1"),
            s("-p"),
            uac_port.to_string(),
            s("-t"),
            s(t),
            s("-nostdin"),
            s("-timeout"),
            s("180s"),
            s("-timeout_error"),
            s("-trace_err"),
            node(0),
        ],
    )
    .await;
    assert!(
        out.status.success(),
        "calls over {transport} failed ({:?}): {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
            .chars()
            .take(2000)
            .collect::<String>(),
        errors_in(dir.path())
    );
    // No dialog is left in the keyspace.
    let http = mesh.node(1).node().unwrap().http_addr().unwrap();
    eventually(30, "every dialog is removed", || async {
        let (_, v) = http_get(format!("http://{http}/v1/dialogs")).await;
        v["dialogs"].as_array().is_some_and(|d| d.is_empty())
    })
    .await;
    let _ = uas.kill().await;
}

/// One test, so the two loads never share the 2 cores with each other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipp_1000_calls_across_the_mesh_over_udp_then_tcp() {
    let _one_at_a_time = LOAD.lock().await;
    within(600, async {
        thousand_calls("udp").await;
        thousand_calls("tcp").await;
    })
    .await;
}
