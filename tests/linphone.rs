//! Interop with a real softphone stack: Linphone (Debian `linphone-cli`, its `linphone-daemon`,
//! headless, no sound card), against a 3-node mesh over real loopback sockets. Alice registers
//! with digest at node 0, Bob at node 2; Alice calls Bob across the mesh, Bob answers, and the
//! call is hung up from either side — over UDP, over TCP, and with Alice on TLS (verifying the
//! node's certificate) calling Bob on UDP.
//!
//! The daemon is driven through its command socket (`--pipe`), as an operator's script would.
//! Each phone gets its own HOME (Linphone keeps a database there) and configuration file.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// One `linphone-daemon` process, stopped (by PID) when dropped.
struct Linphone {
    child: Child,
    socket: PathBuf,
    _home: tempfile::TempDir,
}

impl Linphone {
    /// Start a daemon listening for SIP on `transport` ("udp", "tcp" or "tls") only (a port
    /// of 0 is off, -1 random); on TLS it trusts the certificate `ca` only. The chain is
    /// verified; the name is not: Debian's liblinphone (mbedtls 2) compares only DNS names of
    /// the subjectAltName, never an IP address one, and the node is reached at 127.0.0.1 (the
    /// name check is covered by the rustls and Node.js clients of tests/transports.rs).
    async fn start(name: &str, transport: &str, auto_answer: bool, ca: Option<&Path>) -> Linphone {
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(home.path().join(".local/share/linphone")).unwrap();
        let port = |t: &str| if transport == t { -1 } else { 0 };
        let (udp, tcp, tls) = (port("udp"), port("tcp"), port("tls"));
        let trust = ca
            .map(|ca| {
                format!(
                    "root_ca={}\nverify_server_certs=1\nverify_server_cn=0\n",
                    ca.display()
                )
            })
            .unwrap_or_default();
        let rc = home.path().join("linphonerc");
        std::fs::write(
            &rc,
            format!(
                "[sip]\nsip_port={udp}\nsip_tcp_port={tcp}\nsip_tls_port={tls}\n{trust}\
                 [rtp]\naudio_rtp_port=0\nvideo_rtp_port=0\n[video]\nenabled=0\n"
            ),
        )
        .unwrap();
        // The daemon creates its command socket as /tmp/<pipe>.
        let pipe = format!("sipmesh-linphone-{}-{name}-{}", std::process::id(), token());
        let socket = PathBuf::from("/tmp").join(&pipe);
        let mut cmd = Command::new("linphone-daemon");
        cmd.env("HOME", home.path())
            .arg("--config")
            .arg(&rc)
            .arg("--log")
            .arg(home.path().join("log"))
            .arg("--pipe")
            .arg(&pipe)
            .arg("--disable-stats-events")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if auto_answer {
            cmd.arg("--auto-answer");
        }
        let child = cmd
            .spawn()
            .expect("linphone-daemon (Debian linphone-cli; scripts/test.sh installs it)");
        let phone = Linphone {
            child,
            socket,
            _home: home,
        };
        eventually(20, "linphone-daemon's command socket", || {
            let socket = phone.socket.clone();
            async move { socket.exists() }
        })
        .await;
        phone
    }

    /// Send one command and return the daemon's answer (it keeps the connection open, so the
    /// answer ends when nothing more arrives for a moment). The daemon serves one client at a
    /// time and may drop a connection made while it still closes the previous one: retried.
    async fn cmd(&self, command: &str) -> String {
        for _ in 0..50 {
            if let Some(answer) = self.try_cmd(command).await {
                return answer;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("linphone-daemon does not answer `{command}`");
    }

    async fn try_cmd(&self, command: &str) -> Option<String> {
        let mut s = UnixStream::connect(&self.socket).await.ok()?;
        s.write_all(format!("{command}\n").as_bytes()).await.ok()?;
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        let mut wait = Duration::from_secs(5);
        while let Ok(Ok(n)) = tokio::time::timeout(wait, s.read(&mut buf)).await {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
            wait = Duration::from_millis(200);
        }
        let answer = String::from_utf8_lossy(&out).into_owned();
        answer.contains("Status:").then_some(answer)
    }

    /// Poll `command` until its answer contains `want`.
    async fn wait_for(&self, command: &str, want: &str, what: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let answer = self.cmd(command).await;
            if answer.contains(want) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{what}: `{command}` still answers {answer:?}, log:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self._home.path().join("log")).unwrap_or_default();
        let sip: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(" SIP/2.0") && !l.contains("belle-sip"))
            .collect();
        sip[sip.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Linphone {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Register Alice (on `alice_t`) at node 0 and Bob (on `bob_t`, auto-answering) at node 2,
/// then call Bob twice: hung up by the callee, then by the caller.
async fn calls_across_the_mesh(alice_t: &str, bob_t: &str) {
    // Nodes with a TLS listener and a certificate for 127.0.0.1.
    let certs = tempfile::tempdir().unwrap();
    let files = sipmesh::sip::tls::self_signed(certs.path(), &["127.0.0.1".into()]).unwrap();
    let tls = files.clone();
    let mesh = mesh_with_users(3, &[("alice", "alice-pw"), ("bob", "bob-pw")], move |c| {
        c.sip_tls_listen = Some("127.0.0.1:0".parse().unwrap());
        c.tls = Some(tls.clone());
    })
    .await;
    let sip = |i: usize| mesh.node(i).node().unwrap().sip_addr();
    let proxy = |i: usize, t: &str| {
        let n = mesh.node(i).node().unwrap();
        let addr = if t == "tls" {
            n.sip_listeners().tls.unwrap()
        } else {
            n.sip_addr()
        };
        format!("<sip:{addr};transport={t}>")
    };
    let alice = Linphone::start("alice", alice_t, false, Some(&files.cert)).await;
    let bob = Linphone::start("bob", bob_t, true, Some(&files.cert)).await;
    alice
        .cmd(&format!(
            "register sip:alice@{} {} alice-pw",
            sip(0),
            proxy(0, alice_t)
        ))
        .await;
    bob.cmd(&format!(
        "register sip:bob@{} {} bob-pw",
        sip(2),
        proxy(2, bob_t)
    ))
    .await;
    alice
        .wait_for(
            "register-status ALL",
            "LinphoneRegistrationOk",
            "alice registers",
        )
        .await;
    bob.wait_for(
        "register-status ALL",
        "LinphoneRegistrationOk",
        "bob registers",
    )
    .await;
    // The bindings are Linphone's, over the transport asked for, owned by the nodes they
    // registered with.
    let http = mesh.node(1).node().unwrap().http_addr().unwrap();
    for (user, node, transport) in [("alice", 0, alice_t), ("bob", 2, bob_t)] {
        let (code, v) = http_get(format!("http://{http}/v1/registrations/{user}")).await;
        assert_eq!(code, 200, "{v}");
        let b = &v["bindings"][0];
        assert_eq!(
            b["transport"]
                .as_str()
                .map(str::to_ascii_lowercase)
                .as_deref(),
            Some(transport),
            "{v}"
        );
        assert!(
            b["instance"]
                .as_str()
                .unwrap_or_default()
                .starts_with("<urn:uuid:"),
            "{v}"
        );
        assert_eq!(b["owner"], mesh.node(node).peer_id.to_string(), "{v}");
    }
    for hang_up_by_callee in [true, false] {
        let answer = alice.cmd(&format!("call sip:bob@{}", sip(0))).await;
        assert!(answer.contains("Status: Ok"), "{answer}");
        alice
            .wait_for(
                "call-status",
                "LinphoneCallStreamsRunning",
                "alice's call is up",
            )
            .await;
        bob.wait_for(
            "call-status",
            "LinphoneCallStreamsRunning",
            "bob's call is up",
        )
        .await;
        // Stays up.
        tokio::time::sleep(Duration::from_secs(1)).await;
        alice
            .wait_for(
                "call-status",
                "LinphoneCallStreamsRunning",
                "the call stays up",
            )
            .await;
        let (hangs_up, other) = if hang_up_by_callee {
            (&bob, &alice)
        } else {
            (&alice, &bob)
        };
        let answer = hangs_up.cmd("terminate").await;
        assert!(answer.contains("Status: Ok"), "{answer}");
        other
            .wait_for(
                "call-status",
                "No current call",
                "the BYE reaches the other side",
            )
            .await;
        hangs_up
            .wait_for("call-status", "No current call", "the call ended")
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linphone_calls_across_the_mesh_over_udp() {
    within(180, calls_across_the_mesh("udp", "udp")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linphone_calls_across_the_mesh_over_tcp() {
    within(180, calls_across_the_mesh("tcp", "tcp")).await;
}

/// A TLS phone (verifying the node's certificate) calls a UDP phone across nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linphone_on_tls_calls_linphone_on_udp_across_the_mesh() {
    within(180, calls_across_the_mesh("tls", "udp")).await;
}
