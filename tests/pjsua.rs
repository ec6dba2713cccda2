//! Interop with PJSIP, the SIP stack inside many softphones and devices, through its PJSUA2 API
//! (PyPI `pjsua2-python`): two phones on a 3-node mesh register with digest at different nodes,
//! call across the mesh, hold and unhold (re-INVITEs), hang up from the callee, and cancel a
//! ringing call — over UDP and over TCP. The phones are `tests/pjsua/phones.py`, run by the
//! Python that `scripts/test.sh` prepares (`SIPMESH_PYTHON`, default `target/pjsua-venv`).

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;

fn python() -> PathBuf {
    std::env::var_os("SIPMESH_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/pjsua-venv/bin/python")
        })
}

async fn phones(transport: &str) {
    let mesh = mesh_with_users(3, &[("alice", "alice-pw"), ("bob", "bob-pw")], |_| {}).await;
    let sip = |i: usize| mesh.node(i).node().unwrap().sip_addr().to_string();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/pjsua/phones.py");
    let child = tokio::process::Command::new(python())
        .arg(&script)
        .args([transport, &sip(0), &sip(2)])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), child)
        .await
        .expect("the PJSIP phones finish within 120 s")
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} (scripts/test.sh installs pjsua2-python there): {e}",
                python().display()
            )
        });
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.lines().last() == Some("OK"),
        "PJSIP phones over {transport}: {}\nstdout:\n{stdout}\nstderr (tail):\n{}",
        out.status,
        stderr
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
    for step in ["call up", "held", "unheld", "hung up by the callee", "487"] {
        assert!(stdout.contains(step), "no {step:?} in:\n{stdout}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pjsip_phones_call_hold_and_cancel_over_udp() {
    within(180, phones("udp")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pjsip_phones_call_hold_and_cancel_over_tcp() {
    within(180, phones("tcp")).await;
}
