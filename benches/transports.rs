//! What TLS and WebSocket cost a node, in one run on one box: a real `sipmesh node` process
//! (release binary) with UDP, TLS, WS and WSS listeners, driven from this process by PAIRS
//! caller/callee pairs of phones on each transport in turn (both sides of every call on the
//! transport measured). Each pair runs calls back to back for SECONDS: INVITE (not challenged),
//! 200, ACK, BYE, 200. Reported: calls/s and the node's CPU µs per call (utime + stime of the
//! node process from /proc/PID/stat), and the ratio to UDP; then the node's CPU µs per TLS
//! handshake (HANDSHAKES fresh TLS connections, each closed after its handshake).
//!
//! Run: `cargo bench --bench transports` (env PAIRS=20 SECONDS=10 HANDSHAKES=2000
//! TRANSPORTS="udp tls ws wss"; the node's PID is printed on stderr, for `perf record -p`).
//! Results and the command go in docs/BENCHMARKS.md.

#[path = "../tests/common/mod.rs"]
#[allow(unused_imports)]
mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use sipmesh::sip::message::HeaderName;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// utime + stime of a process, in µs (clock ticks of 10 ms).
fn cpu_us(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks * 10_000.0
}

/// The node process, stopped (by PID) when dropped.
struct NodeProcess {
    child: Child,
    sip: SocketAddr,
    tls: SocketAddr,
    ws: SocketAddr,
    wss: SocketAddr,
    http: SocketAddr,
    token: String,
    _dir: tempfile::TempDir,
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_node(cert: &sipmesh::sip::tls::TlsFiles) -> NodeProcess {
    let dir = tempfile::tempdir().unwrap();
    let token = "bench-token-0123456789".to_string();
    let sip_port = free_port();
    let [tls, ws, wss, http] = [(); 4].map(|_| free_port());
    let addr = |p: u16| -> SocketAddr { format!("127.0.0.1:{p}").parse().unwrap() };
    let child = Command::new(env!("CARGO_BIN_EXE_sipmesh"))
        .arg("node")
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--sip-listen", &addr(sip_port).to_string()])
        .args(["--sip-tls-listen", &addr(tls).to_string()])
        .args(["--sip-ws-listen", &addr(ws).to_string()])
        .args(["--sip-wss-listen", &addr(wss).to_string()])
        .arg("--tls-cert")
        .arg(&cert.cert)
        .arg("--tls-key")
        .arg(&cert.key)
        .args(["--p2p-listen", "/ip4/127.0.0.1/tcp/0"])
        .args(["--http-listen", &addr(http).to_string()])
        .args(["--auth-invites", "false"])
        .args(["--trusted-source", "127.0.0.1"])
        .env("SIPMESH_ADMIN_TOKEN", &token)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("node.log")).unwrap())
        .spawn()
        .expect("the sipmesh binary");
    let log = dir.path().join("node.log");
    let up = tokio::time::timeout(
        Duration::from_secs(30),
        wait_answering(format!("http://{}/v1/status", addr(http))),
    )
    .await;
    if up.is_err() {
        panic!(
            "the node did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
    NodeProcess {
        child,
        sip: addr(sip_port),
        tls: addr(tls),
        ws: addr(ws),
        wss: addr(wss),
        http: addr(http),
        token,
        _dir: dir,
    }
}

/// A phone of user `user` on `transport`.
async fn phone(node: &NodeProcess, transport: &str, user: &str, ca: &std::path::Path) -> Ua {
    match transport {
        "udp" => Ua::new(user, node.sip).await,
        "tls" => Ua::on(user, node.tls, Client::tls(node.tls, ca).await),
        "ws" => Ua::on(user, node.ws, Client::ws(node.ws).await),
        "wss" => Ua::on(user, node.wss, Client::wss(node.wss, ca).await),
        other => panic!("unknown transport {other}"),
    }
}

/// One call from `a` to `b`: INVITE, 200, ACK, BYE, 200. Whether it completed.
async fn one_call(a: &mut Ua, b: &mut Ua, n: u64) -> bool {
    let call_id = format!("{n}-{}@bench", token());
    let callee = b.user.clone();
    a.send(&a.invite(&callee, &call_id, "ct", 1, None)).await;
    let Some(inv) = b.wait_request("INVITE", 5000).await else {
        return false;
    };
    b.respond(&inv, 200, "OK", "bt").await;
    let Some(ok) = a.wait_response(200, "INVITE", 5000).await else {
        return false;
    };
    let leg = CallerLeg::of_answer(&ok, &call_id);
    a.send(&leg.request(a, "ACK", 1)).await;
    if b.wait_request("ACK", 5000).await.is_none() {
        return false;
    }
    a.send(&leg.request(a, "BYE", 2)).await;
    let Some(bye) = b.wait_request("BYE", 5000).await else {
        return false;
    };
    b.respond(&bye, 200, "OK", "").await;
    a.wait_response(200, "BYE", 5000).await.is_some() && ok.header(&HeaderName::CallId).is_some()
}

async fn calls_over(
    node: &NodeProcess,
    transport: &str,
    pairs: u64,
    secs: u64,
    ca: &std::path::Path,
) -> (f64, f64) {
    let mut phones = Vec::new();
    for i in 0..pairs {
        // Users of their own per transport: a call forks to nobody else's binding.
        let mut a = phone(node, transport, &format!("{transport}a{i}"), ca).await;
        let mut b = phone(node, transport, &format!("{transport}b{i}"), ca).await;
        for ua in [&mut a, &mut b] {
            let code = ua.register("pw").await;
            assert_eq!(code, 200, "{} registers over {transport}", ua.user);
        }
        phones.push((a, b));
    }
    let pid = node.child.id();
    let cpu0 = cpu_us(pid);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for (mut a, mut b) in phones {
        tasks.push(tokio::spawn(async move {
            let mut done = 0u64;
            let mut n = 0;
            while Instant::now() < deadline && n < 1_000_000 {
                n += 1;
                if one_call(&mut a, &mut b, n).await {
                    done += 1;
                }
            }
            done
        }));
    }
    let mut calls = 0;
    for t in tasks {
        calls += t.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_us(pid) - cpu0;
    (calls as f64 / elapsed, cpu / calls.max(1) as f64)
}

async fn handshakes(node: &NodeProcess, n: u64, ca: &std::path::Path) -> f64 {
    let pid = node.child.id();
    let cpu0 = cpu_us(pid);
    for _ in 0..n {
        let s = tls_connect(node.tls, ca, "127.0.0.1").await.unwrap();
        drop(s);
    }
    // Let the node finish closing them.
    tokio::time::sleep(Duration::from_millis(700)).await;
    (cpu_us(pid) - cpu0) / n as f64
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let pairs = env_or("PAIRS", 20);
    let secs = env_or("SECONDS", 10);
    let shakes = env_or("HANDSHAKES", 2000);
    let certs = tempfile::tempdir().unwrap();
    let cert = sipmesh::sip::tls::self_signed(certs.path(), &["127.0.0.1".into()]).unwrap();
    let node = start_node(&cert).await;
    let mut users = String::new();
    for t in ["udp", "tls", "ws", "wss"] {
        for i in 0..pairs {
            users.push_str(&format!("{t}a{i},pw\n{t}b{i},pw\n"));
        }
    }
    let (code, v) = import_users(&format!("http://{}", node.http), &node.token, users).await;
    assert!(code < 300, "importing users: {v}");
    println!("| transport | calls/s | node CPU µs per call | vs UDP |");
    println!("|---|---|---|---|");
    let mut udp = 0.0;
    let wanted = std::env::var("TRANSPORTS").unwrap_or_else(|_| "udp tls ws wss".into());
    eprintln!("node pid {}", node.child.id());
    for transport in wanted.split_whitespace() {
        let (rate, per_call) = calls_over(&node, transport, pairs, secs, &cert.cert).await;
        if transport == "udp" || udp == 0.0 {
            udp = per_call;
        }
        println!(
            "| {transport} | {rate:.0} | {per_call:.0} | {:.2}× |",
            per_call / udp
        );
    }
    let per_handshake = handshakes(&node, shakes, &cert.cert).await;
    println!("\nTLS handshake (TLS 1.3, ECDSA P-256, full handshake, no resumption): {per_handshake:.0} µs node CPU each, over {shakes}");
}
