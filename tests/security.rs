//! A community node on the public internet (issue "no open relay, throttled attackers, mesh
//! admission and least privilege"): a scanner corpus against a fake trunk on loopback, the
//! trunk as the one way out, brute force banned within 2 s, legitimate users working through an
//! INVITE flood, contacts capped, the admin API's token/JSON/Host rules, and mesh admission.
//!
//! Attackers send from their own loopback addresses (127.0.1.x, 127.0.0.7x …): LocalMesh
//! trusts 127.0.0.1 only (the test phones and SIPp), so the throttle sees them as strangers.

mod common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use sipmesh::sip::message::{HeaderName, Message};
use sipmesh::{LocalMesh, TrunkConfig};
use tokio::net::UdpSocket;

/// A fake trunk: a UDP socket that counts (and keeps) what reaches it.
struct Trunk {
    addr: SocketAddr,
    seen: Arc<AtomicUsize>,
    got: tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
}

async fn trunk() -> Trunk {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = s.local_addr().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let (tx, got) = tokio::sync::mpsc::unbounded_channel();
    let n = seen.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok((len, _)) = s.recv_from(&mut buf).await {
            n.fetch_add(1, Ordering::SeqCst);
            let _ = tx.send(buf[..len].to_vec());
        }
    });
    Trunk { addr, seen, got }
}

/// A request as a scanner writes it.
fn request(method: &str, ruri: &str, c: &Client, from: &str, to: &str, extra: &str) -> String {
    let cseq_method = if method == "ACK" { "ACK" } else { method };
    format!(
        "{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bK{};rport\r\nMax-Forwards: 70\r\nFrom: <{from}>;tag={}\r\nTo: {to}\r\nCall-ID: {}@scanner\r\nCSeq: 1 {cseq_method}\r\nContact: <sip:scan@{}>\r\nUser-Agent: friendly-scanner\r\n{extra}Content-Length: 0\r\n\r\n",
        c.local(),
        token(),
        token(),
        token(),
        c.local()
    )
}

async fn metric(http: SocketAddr, name: &str) -> u64 {
    let text = metrics_text(http).await;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("sipmesh_{name}_total ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric {name}"))
}

async fn mesh_of(
    nodes: usize,
    f: impl Fn(&mut sipmesh::NodeConfig) + Send + Sync + 'static,
) -> LocalMesh {
    mesh_with_users(nodes, PHONES, f).await
}

/// A scanner's request: name, method, Request-URI, From, To, extra headers, answers allowed.
type Case = (
    String,
    &'static str,
    String,
    String,
    String,
    String,
    &'static [u16],
);

/// What SIPVicious and toll-fraud bots send, each from its own source address; nothing may
/// reach the trunk, and every answer is a refusal or a challenge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scanner_corpus_reaches_no_trunk() {
    within(120, async {
        let mesh = mesh_of(3, |_| {}).await;
        let node = mesh.node(0).node().unwrap().sip_addr();
        let http = mesh.node(0).node().unwrap().http_addr().unwrap();
        // bob is registered, so the mesh has a live user to aim at.
        let mut bob = Ua::new("bob", mesh.node(2).node().unwrap().sip_addr()).await;
        assert_eq!(bob.register("b-pw").await, 200);
        let t = trunk().await;
        let tr = t.addr;
        let local = format!("sip:100@{node}");
        let in_trunk = |user: &str| format!("sip:{user}@{tr}");
        let tagged = |uri: &str| format!("<{uri}>;tag=dlg{}", token());
        // (case, method, Request-URI, From, To, extra headers, answers allowed)
        let mut cases: Vec<Case> = vec![
            ("svmap OPTIONS".into(), "OPTIONS", format!("sip:100@{node}"), local.clone(), format!("<sip:100@{node}>"), String::new(), &[404, 407]),
            ("svwar INVITE enumeration".into(), "INVITE", format!("sip:101@{node}"), local.clone(), format!("<sip:101@{node}>"), String::new(), &[407, 404]),
            ("initial INVITE to the trunk".into(), "INVITE", in_trunk("0044207946000"), local.clone(), format!("<{}>", in_trunk("0044207946000")), String::new(), &[403]),
            ("INVITE with a To-tag".into(), "INVITE", in_trunk("0044207946000"), local.clone(), tagged(&in_trunk("0044207946000")), String::new(), &[403]),
            ("preloaded Route naming the trunk".into(), "INVITE", format!("sip:bob@{node}"), local.clone(), format!("<sip:bob@{node}>"), format!("Route: <sip:{tr};lr>\r\n"), &[403]),
            ("To-tag and a Route naming the node (spoofed in-dialog)".into(), "INVITE", in_trunk("0044207946000"), local.clone(), tagged(&in_trunk("0044207946000")), format!("Route: <sip:{node};lr>\r\n"), &[403]),
            ("To-tag and a forged mesh token".into(), "BYE", in_trunk("0044207946000"), local.clone(), tagged(&in_trunk("0044207946000")), format!("Route: <sip:{node};lr;sm=AAAAAAAAAAAAAAAAAAAAAAAA>\r\n"), &[403]),
            ("MESSAGE to the trunk".into(), "MESSAGE", in_trunk("0044207946000"), "sip:spam@evil.example".into(), format!("<{}>", in_trunk("0044207946000")), String::new(), &[403]),
            ("MESSAGE with a To-tag".into(), "MESSAGE", in_trunk("0044207946000"), "sip:spam@evil.example".into(), tagged(&in_trunk("0044207946000")), String::new(), &[403]),
            ("unauthenticated INVITE to a local number".into(), "INVITE", format!("sip:0044207946000@{node}"), "sip:anon@evil.example".into(), format!("<sip:0044207946000@{node}>"), String::new(), &[404]),
        ];
        for prefix in ["00", "011", "+", "900", "9011", "011972", "00972"] {
            let num = format!("{prefix}441234567");
            cases.push((
                format!("toll fraud {prefix} via the trunk"),
                "INVITE",
                in_trunk(&num),
                local.clone(),
                format!("<{}>", in_trunk(&num)),
                String::new(),
                &[403],
            ));
            cases.push((
                format!("toll fraud {prefix} via a Route"),
                "INVITE",
                format!("sip:{num}@{node}"),
                "sip:anon@evil.example".into(),
                format!("<sip:{num}@{node}>"),
                format!("Route: <sip:{node};lr>, <sip:{tr};lr>\r\n"),
                &[403],
            ));
        }
        for (i, (name, method, ruri, from, to, extra, allowed)) in cases.iter().enumerate() {
            let mut c = Client::udp_from(&format!("127.0.1.{}", i + 1), node).await;
            let m = c
                .request(&request(method, ruri, &c, from, to, extra))
                .await
                .unwrap_or_else(|| panic!("{name}: no answer"));
            let code = m.status().unwrap();
            assert!(allowed.contains(&code), "{name}: got {:?}", m.start);
        }
        // Amplification: the biggest unauthenticated answer is the challenge (one value per
        // offered algorithm: MD5 alone by default); measure it against a minimal INVITE.
        let mut c = Client::udp_from("127.0.1.199", node).await;
        let small = request("INVITE", &format!("sip:bob@{node}"), &c, &local, &format!("<sip:bob@{node}>"), "");
        c.send(small.as_bytes()).await;
        let answer = c.recv_raw(5000).await.expect("a challenge");
        let m = Message::parse(&answer, false).unwrap();
        assert_eq!(m.status(), Some(407));
        assert_eq!(m.count(&HeaderName::Other("proxy-authenticate".into())), 1);
        let ratio = answer.len() as f64 / small.len() as f64;
        println!(
            "amplification: {} byte INVITE -> {} byte 407 (ratio {ratio:.2})",
            small.len(),
            answer.len()
        );
        assert!(ratio < 3.0, "amplification ratio {ratio:.2}");
        // An ACK along nothing this mesh signed: dropped, never answered.
        let mut c = Client::udp_from("127.0.1.200", node).await;
        let ack = request("ACK", &in_trunk("0044207946000"), &c, &local, &tagged(&in_trunk("0044207946000")), "");
        c.send(ack.as_bytes()).await;
        assert!(c.recv_raw(500).await.is_none(), "an ACK is never answered");
        // A forged response whose second Via names the trunk: no reflection.
        let forged_before = metric(http, "sip_forged_branch").await;
        let mut c = Client::udp_from("127.0.1.201", node).await;
        let resp = format!(
            "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP {node};branch=z9hG4bKsm0badc0de.1.0011223344\r\nVia: SIP/2.0/UDP {tr};branch=z9hG4bKvictim\r\nFrom: <sip:a@{node}>;tag=1\r\nTo: <sip:b@{node}>;tag=2\r\nCall-ID: {}@reflect\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
            token()
        );
        c.send(resp.as_bytes()).await;
        eventually(5, "the forged response is counted", || async {
            metric(http, "sip_forged_branch").await > forged_before
        })
        .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(t.seen.load(Ordering::SeqCst), 0, "requests reached the trunk");
        assert!(metric(http, "sip_not_relayed").await >= 20);
    })
    .await;
}

/// The one way out: an authenticated local user, an allowed prefix, within the call rate.
/// (The control for the scanner corpus: the trunk is reachable, so "0 requests" means
/// something.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trunk_takes_only_authenticated_local_callers_to_allowed_prefixes() {
    within(120, async {
        let mut t = trunk().await;
        let tr = t.addr;
        let mesh = mesh_of(1, move |c| {
            c.policy.trunk = Some(TrunkConfig {
                uri: format!("sip:{tr}"),
                prefixes: vec!["0049".into()],
                calls_per_minute: 2,
            });
        })
        .await;
        let node = mesh.node(0).node().unwrap().sip_addr();
        let alice_from = format!("sip:alice@{node}");
        let mut c = Client::udp_from("127.0.2.1", node).await;
        // An authenticated call attempt to the trunk.
        let call = |c: &Client, num: &str, auth: Option<(&Message, u32)>| {
            let ruri = format!("sip:{num}@{tr}");
            let extra = auth
                .map(|(ch, nc)| {
                    format!(
                        "Proxy-Authorization: {}\r\n",
                        digest(
                            ch,
                            &HeaderName::Other("proxy-authenticate".into()),
                            "alice",
                            "a-pw",
                            "INVITE",
                            &ruri,
                            nc
                        )
                    )
                })
                .unwrap_or_default();
            request(
                "INVITE",
                &ruri,
                c,
                &alice_from,
                &format!("<{ruri}>"),
                &extra,
            )
        };
        let ch = c.request(&call(&c, "004930123", None)).await.unwrap();
        assert_eq!(ch.status(), Some(407), "unauthenticated: challenged");
        let m = c
            .request(&call(&c, "0044207946000", Some((&ch, 1))))
            .await
            .unwrap();
        assert_eq!(m.status(), Some(403), "a prefix the trunk does not take");
        // From a foreign domain: not a local user, never the trunk.
        let foreign = request(
            "INVITE",
            &format!("sip:004930123@{tr}"),
            &c,
            "sip:alice@evil.example",
            &format!("<sip:004930123@{tr}>"),
            "",
        );
        assert_eq!(c.request(&foreign).await.unwrap().status(), Some(403));
        assert_eq!(t.seen.load(Ordering::SeqCst), 0);
        // Authenticated, allowed prefix: the trunk gets it, without our credentials.
        c.send(call(&c, "004930123", Some((&ch, 2))).as_bytes())
            .await;
        let got = tokio::time::timeout(Duration::from_secs(5), t.got.recv())
            .await
            .expect("the trunk gets the call")
            .unwrap();
        let inv = Message::parse(&got, false).unwrap();
        assert_eq!(
            inv.request_uri(),
            Some(format!("sip:004930123@{tr}").as_str())
        );
        assert!(
            inv.header(&HeaderName::ProxyAuthorization).is_none(),
            "credentials for our realm are not passed on"
        );
        // The per-user call rate (2 a minute): the third is refused.
        let mut d = Client::udp_from("127.0.2.2", node).await;
        let ch = d.request(&call(&d, "004930124", None)).await.unwrap();
        d.send(call(&d, "004930124", Some((&ch, 1))).as_bytes())
            .await;
        let ch = d.request(&call(&d, "004930125", None)).await.unwrap();
        let refused = loop {
            let m = d.recv_final(5000).await.expect("an answer");
            if m.status() != Some(407) && m.status().unwrap_or(0) >= 300 {
                break m;
            }
            if m.status() == Some(407) {
                d.send(call(&d, "004930125", Some((&m, 1))).as_bytes())
                    .await;
            }
            let _ = &ch;
        };
        assert_eq!(refused.status(), Some(403), "{:?}", refused.start);
    })
    .await;
}

/// Password guessing (svcrack): the source is banned within 2 s, the same user from another
/// source is unaffected, and the ban shows in the admin API, which lifts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_brute_force_source_is_banned_within_2_s() {
    within(120, async {
        let mesh = mesh_of(1, |_| {}).await;
        let node = mesh.node(0).node().unwrap().sip_addr();
        let http = mesh.node(0).node().unwrap().http_addr().unwrap();
        let admin = admin_token(&mesh, 0);
        let mut attacker = Client::udp_from("127.0.0.77", node).await;
        let start = Instant::now();
        let mut attempts = 0;
        // The ban is in force from the last request that got an answer on: everything after it
        // goes unanswered.
        let mut last_answer = Duration::ZERO;
        let banned_after = loop {
            assert!(start.elapsed() < Duration::from_secs(20), "never banned");
            let mut reg = Register::new("alice", "<sip:alice@127.0.0.77:5060>");
            let Some(ch) = attacker.request(&reg.build(&attacker, node)).await else {
                break last_answer;
            };
            last_answer = start.elapsed();
            assert_eq!(ch.status(), Some(401));
            reg.cseq += 1;
            reg.authorization = Some(digest(
                &ch,
                &HeaderName::Other("www-authenticate".into()),
                "alice",
                &format!("guess{attempts}"),
                "REGISTER",
                &format!("sip:{node}"),
                1,
            ));
            attempts += 1;
            if attacker
                .request(&reg.build(&attacker, node))
                .await
                .is_none()
            {
                break last_answer;
            }
            last_answer = start.elapsed();
        };
        println!("brute force: banned after {banned_after:?} ({attempts} guesses)");
        assert!(
            banned_after < Duration::from_secs(2),
            "banned after {banned_after:?} ({attempts} guesses)"
        );
        let (code, v) = http_get(format!("http://{http}/v1/bans")).await;
        assert_eq!(code, 200);
        assert!(
            v["bans"]
                .as_array()
                .unwrap()
                .iter()
                .any(|b| b["source"] == "127.0.0.77"),
            "{v}"
        );
        // The right password from the banned source: nothing.
        let reg = Register::new("alice", "<sip:alice@127.0.0.77:5060>");
        assert!(attacker
            .request(&reg.build(&attacker, node))
            .await
            .is_none());
        // alice from elsewhere is unaffected.
        let mut phone = Client::udp_from("127.0.0.78", node).await;
        let mut reg = Register::new("alice", "<sip:alice@127.0.0.78:5060>");
        assert_eq!(
            register(&mut phone, node, &mut reg, "a-pw").await.status(),
            Some(200)
        );
        // Lifting needs the token.
        let url = format!("http://{http}/v1/bans/127.0.0.77");
        let (code, _) = http_call("DELETE", url.clone(), None, None, vec![]).await;
        assert_eq!(code, 401);
        let (code, _) = http_call("DELETE", url, Some(admin), None, vec![]).await;
        assert_eq!(code, 200);
        let mut reg = Register::new("alice", "<sip:alice@127.0.0.77:5060>");
        assert_eq!(
            register(&mut attacker, node, &mut reg, "a-pw")
                .await
                .status(),
            Some(200)
        );
    })
    .await;
}

/// An INVITE flood from one source: it is banned, and a phone registering every 300 ms from
/// another source keeps getting 200 promptly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legitimate_users_keep_working_during_an_invite_flood() {
    within(120, async {
        let mesh = mesh_of(1, |_| {}).await;
        let node = mesh.node(0).node().unwrap().sip_addr();
        let http = mesh.node(0).node().unwrap().http_addr().unwrap();
        let flood = tokio::spawn(async move {
            let s = UdpSocket::bind("127.0.0.90:0").await.unwrap();
            let local = s.local_addr().unwrap();
            let deadline = Instant::now() + Duration::from_secs(4);
            let mut sent = 0u32;
            while Instant::now() < deadline && sent < 40_000 {
                let m = format!(
                    "INVITE sip:bob@{node} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKf{sent}\r\nMax-Forwards: 70\r\nFrom: <sip:x@evil.example>;tag={sent}\r\nTo: <sip:bob@{node}>\r\nCall-ID: flood{sent}\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
                );
                let _ = s.send_to(m.as_bytes(), node).await;
                sent += 1;
                if sent.is_multiple_of(200) {
                    tokio::task::yield_now().await;
                }
            }
            sent
        });
        let mut phone = Client::udp_from("127.0.0.91", node).await;
        let mut worst = Duration::ZERO;
        for _ in 0..12 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let t0 = Instant::now();
            let mut reg = Register::new("alice", "<sip:alice@127.0.0.91:5060>");
            assert_eq!(register(&mut phone, node, &mut reg, "a-pw").await.status(), Some(200));
            worst = worst.max(t0.elapsed());
        }
        let sent = flood.await.unwrap();
        println!("flood: {sent} INVITEs from one source in 4 s; the slowest of 12 registrations from another took {worst:?}");
        assert!(sent > 1000, "the flood was a flood ({sent})");
        assert!(worst < Duration::from_secs(2), "a registration took {worst:?} during the flood");
        let (_, v) = http_get(format!("http://{http}/v1/bans")).await;
        assert!(
            v["bans"].as_array().unwrap().iter().any(|b| b["source"] == "127.0.0.90" && b["reason"] == "request_rate"),
            "{v}"
        );
        assert!(metric(http, "sip_banned_dropped").await > 100);
    })
    .await;
}

/// One REGISTER cannot make a call fork a thousand ways: 10 contacts per AOR.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contacts_per_aor_are_capped() {
    within(60, async {
        let mesh = mesh_of(1, |_| {}).await;
        let node = mesh.node(0).node().unwrap().sip_addr();
        let mut c = Client::udp(node).await;
        let contacts = |n: u16| {
            (0..n)
                .map(|i| format!("<sip:alice@127.0.0.1:{}>", 20000 + i))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut reg = Register::new("alice", &contacts(11));
        let m = register(&mut c, node, &mut reg, "a-pw").await;
        assert_eq!(m.status(), Some(403), "{:?}", m.start);
        let mut reg = Register::new("alice", &contacts(10));
        assert_eq!(
            register(&mut c, node, &mut reg, "a-pw").await.status(),
            Some(200)
        );
        let mut reg = Register::new("alice", "<sip:alice@127.0.0.1:30000>");
        let m = register(&mut c, node, &mut reg, "a-pw").await;
        assert_eq!(m.status(), Some(403), "{:?}", m.start);
    })
    .await;
}

/// The admin API: a token for every mutating call (on loopback too), JSON bodies only, and a
/// Host header naming loopback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_needs_a_token_json_and_a_loopback_host() {
    within(60, async {
        let mesh = mesh_of(1, |_| {}).await;
        let n = mesh.node(0).node().unwrap();
        let base = format!("http://{}", n.http_addr().unwrap());
        let token = n.admin_token().unwrap().to_string();
        assert!(token.len() >= 32, "a generated token is long");
        let json = || {
            Some((
                "application/json",
                r#"{"user":"eve","password":"x"}"#.to_string(),
            ))
        };
        let users = format!("{base}/v1/users");
        let (code, _) = http_call("POST", users.clone(), None, json(), vec![]).await;
        assert_eq!(code, 401, "no token");
        let (code, _) =
            http_call("POST", users.clone(), Some("wrong".into()), json(), vec![]).await;
        assert_eq!(code, 401, "wrong token");
        let form = Some(("text/plain", r#"{"user":"eve","password":"x"}"#.to_string()));
        let (code, _) = http_call("POST", users.clone(), Some(token.clone()), form, vec![]).await;
        assert_eq!(code, 415, "text/plain (what a cross-site form can send)");
        let (code, _) = http_call(
            "POST",
            users.clone(),
            Some(token.clone()),
            json(),
            vec![("Host", "evil.example:8080".into())],
        )
        .await;
        assert_eq!(code, 421, "DNS rebinding");
        let (code, _) = http_call("POST", users.clone(), Some(token.clone()), json(), vec![]).await;
        assert_eq!(code, 201);
        let (code, _) = http_call("DELETE", format!("{users}/eve"), None, None, vec![]).await;
        assert_eq!(code, 401);
        let (code, v) = http_get(format!("{base}/v1/status")).await;
        assert_eq!(code, 200, "reads on loopback need no token: {v}");
    })
    .await;
}

/// Real processes: a node whose p2p listener is beyond loopback refuses to start without a mesh
/// key; a node started without --admin-token writes one into its data dir and requires it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_admission_and_the_generated_admin_token() {
    within(120, async {
        let dir = tempfile::tempdir().unwrap();
        let bin = env!("CARGO_BIN_EXE_sipmesh");
        let out = tokio::process::Command::new(bin)
            .args([
                "node",
                "--data-dir",
                dir.path().join("open").to_str().unwrap(),
            ])
            .args([
                "--sip-listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
            ])
            .args(["--p2p-listen", "/ip4/0.0.0.0/tcp/0"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .output()
            .await
            .unwrap();
        assert!(
            !out.status.success(),
            "an open mesh beyond loopback must not start"
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("--mesh-key") && err.contains("--insecure-open-mesh"),
            "{err}"
        );

        // Signed enrollment with the CLI: a mesh key alone is not enough beyond loopback; an
        // enrollment key, the node's peer id and its invitation are.
        let sipmesh = |args: &[&str]| {
            let out = std::process::Command::new(bin)
                .args(args)
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .env_remove("SIPMESH_ADMIN_TOKEN")
                .env_remove("SIPMESH_DATA_DIR")
                .output()
                .unwrap();
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).trim().to_string(),
                String::from_utf8_lossy(&out.stderr).to_string(),
            )
        };
        let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
        assert!(sipmesh(&["mesh", "keygen", "--out", &path("mesh.key")]).0);
        let (ok, said, _) = sipmesh(&["mesh", "enrollment-keygen", "--out", &path("enroll.key")]);
        assert!(ok && said.contains("public key"), "{said}");
        let (ok, _, err) = sipmesh(&["mesh", "enrollment-keygen", "--out", &path("enroll.key")]);
        assert!(!ok && err.contains("not overwriting"), "{err}");
        let open_node = |data: &str, extra: &[&str]| {
            let mut args = vec![
                "node",
                "--data-dir",
                data,
                "--sip-listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
                "--p2p-listen",
                "/ip4/0.0.0.0/tcp/0",
            ];
            args.extend_from_slice(extra);
            sipmesh(&args)
        };
        let keyed = path("keyed");
        let mesh_key = path("mesh.key");
        let (ok, _, err) = open_node(&keyed, &["--mesh-key", &mesh_key]);
        assert!(
            !ok && err.contains("--credential") && err.contains("invite"),
            "a mesh key alone must not do beyond loopback: {err}"
        );
        let (ok, peer, err) = sipmesh(&["mesh", "id", "--data-dir", &keyed]);
        assert!(ok && peer.starts_with("12D3"), "{peer} {err}");
        let (ok, _, err) = sipmesh(&[
            "mesh",
            "invite",
            &peer,
            "--enrollment-key",
            &path("enroll.key"),
            "--roles",
            "root",
        ]);
        assert!(!ok && err.contains("--roles"), "{err}");
        let cred = format!("{keyed}/member.cred");
        let (ok, said, err) = sipmesh(&[
            "mesh",
            "invite",
            &peer,
            "--enrollment-key",
            &path("enroll.key"),
            "--roles",
            "edge,admin",
            "--out",
            &cred,
        ]);
        assert!(ok, "{said} {err}");
        // Another node's credential is refused by name.
        let other = path("other");
        let other_cred = path("other.cred");
        let (_, other_peer, _) = sipmesh(&["mesh", "id", "--data-dir", &other]);
        let (ok, ..) = sipmesh(&[
            "mesh",
            "invite",
            &other_peer,
            "--enrollment-key",
            &path("enroll.key"),
            "--out",
            &other_cred,
        ]);
        assert!(ok);
        let (ok, _, err) = open_node(
            &keyed,
            &["--mesh-key", &mesh_key, "--credential", &other_cred],
        );
        assert!(
            !ok && err.contains("issued to") && err.contains(&other_peer),
            "{err}"
        );
        // Its own (found in its data dir) lets it start beyond loopback; a revocation signed
        // with the enrollment key goes through its admin API.
        let http = 16000 + (std::process::id() % 1000) as u16 * 3 + 2_999;
        let mut enrolled = tokio::process::Command::new(bin)
            .args(["node", "--data-dir", &keyed, "--mesh-key", &mesh_key])
            .args([
                "--sip-listen",
                "127.0.0.1:0",
                "--p2p-listen",
                "/ip4/0.0.0.0/tcp/0",
            ])
            .args(["--http-listen", &format!("127.0.0.1:{http}")])
            .env("RUST_LOG", "warn")
            .env_remove("SIPMESH_ADMIN_TOKEN")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{http}");
        wait_answering(format!("{url}/v1/status")).await;
        let token = std::fs::read_to_string(format!("{keyed}/admin-token")).unwrap();
        let (ok, said, err) = sipmesh(&[
            "mesh",
            "revoke",
            &other_peer,
            "--enrollment-key",
            &path("enroll.key"),
            "--node",
            &url,
            "--token",
            token.trim(),
        ]);
        assert!(ok && said.contains("revoked"), "{said} {err}");
        let (code, v) = http_get(format!("{url}/v1/mesh/revocations")).await;
        assert_eq!(code, 200);
        assert_eq!(v["revoked"][0]["peer_id"], other_peer.as_str(), "{v}");
        // A revocation signed by another key is refused.
        assert!(sipmesh(&["mesh", "enrollment-keygen", "--out", &path("rogue.key")]).0);
        let (ok, _, err) = sipmesh(&[
            "mesh",
            "revoke",
            &peer,
            "--enrollment-key",
            &path("rogue.key"),
            "--node",
            &url,
            "--token",
            token.trim(),
        ]);
        assert!(!ok && err.contains("not signed by this mesh"), "{err}");
        enrolled.kill().await.unwrap();

        let base = 16000 + (std::process::id() % 1000) as u16 * 3;
        let data = dir.path().join("n");
        let mut child = tokio::process::Command::new(bin)
            .args(["node", "--data-dir", data.to_str().unwrap()])
            .args(["--sip-listen", &format!("127.0.0.1:{base}")])
            .args(["--p2p-listen", &format!("/ip4/127.0.0.1/tcp/{}", base + 1)])
            .args(["--http-listen", &format!("127.0.0.1:{}", base + 2)])
            .env("RUST_LOG", "warn")
            .env_remove("SIPMESH_ADMIN_TOKEN")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{}", base + 2);
        wait_answering(format!("{url}/v1/status")).await;
        let token = std::fs::read_to_string(data.join("admin-token")).unwrap();
        let body = || {
            Some((
                "application/json",
                r#"{"user":"zed","password":"x"}"#.to_string(),
            ))
        };
        let (code, _) = http_call("POST", format!("{url}/v1/users"), None, body(), vec![]).await;
        assert_eq!(code, 401);
        let (code, _) = http_call(
            "POST",
            format!("{url}/v1/users"),
            Some(token.trim().into()),
            body(),
            vec![],
        )
        .await;
        assert_eq!(code, 201);
        child.kill().await.unwrap();
    })
    .await;
}

/// Bans are mesh-wide: a scanner banned by node 0 is dropped by every node within a few
/// seconds (others keep answering everyone else), and a ban lifted through node 2's admin API
/// is lifted on every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ban_by_one_node_holds_on_every_node_and_lifts_everywhere() {
    within(120, async {
        let mesh = mesh_of(3, |_| {}).await;
        let sip = |i: usize| mesh.node(i).node().unwrap().sip_addr();
        let http = |i: usize| mesh.node(i).node().unwrap().http_addr().unwrap();
        let banned_at = |i: usize| async move {
            http_get(format!("http://{}/v1/bans", http(i)))
                .await
                .1["bans"]
                .to_string()
                .contains("127.0.0.91")
        };
        let options = |c: &Client, to: std::net::SocketAddr| {
            format!(
                "OPTIONS sip:{to} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bK{}\r\nMax-Forwards: 70\r\nFrom: <sip:x@x>;tag=1\r\nTo: <sip:{to}>\r\nCall-ID: {}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
                c.local(),
                token(),
                token()
            )
        };
        // The scanner has never talked to node 1: it is answered there.
        let mut probe = Client::udp_from("127.0.0.91", sip(1)).await;
        assert!(probe.request(&options(&probe, sip(1))).await.is_some());
        scan_from("127.0.0.91", sip(0), 40).await;
        // The datagrams are handled as they come: the ban follows within moments.
        eventually(10, "banned where it scanned", || banned_at(0)).await;
        for i in [1, 2] {
            eventually(10, "the ban reaches every node", || banned_at(i)).await;
        }
        assert!(
            probe.request(&options(&probe, sip(1))).await.is_none(),
            "node 1 drops the scanner too"
        );
        let mut other = Client::udp_from("127.0.0.92", sip(1)).await;
        assert!(other.request(&options(&other, sip(1))).await.is_some(), "others are answered");
        // Lifted at node 2: lifted everywhere.
        let admin = admin_token(&mesh, 2);
        let (code, v) = http_call(
            "DELETE",
            format!("http://{}/v1/bans/127.0.0.91", http(2)),
            Some(admin),
            None,
            vec![],
        )
        .await;
        assert_eq!(code, 200, "{v}");
        assert_eq!(v["mesh_wide"], true, "{v}");
        for i in [0, 1] {
            eventually(10, "the lift reaches every node", || async move { !banned_at(i).await })
                .await;
        }
        assert!(probe.request(&options(&probe, sip(1))).await.is_some(), "answered again");
    })
    .await;
}

/// A trunk that record-routes (as SBCs do): the phone's in-dialog requests follow the route
/// set through the node to the trunk (a foreign next hop allowed only because it is the
/// operator's trunk, after this mesh's own signed entry); the same Route toward any other host
/// is still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_dialog_requests_reach_a_record_routing_trunk() {
    within(120, async {
        let sbc = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let tr = sbc.local_addr().unwrap();
        let mesh = mesh_of(1, move |c| {
            c.policy.trunk = Some(TrunkConfig {
                uri: format!("sip:{tr}"),
                prefixes: vec!["0049".into()],
                calls_per_minute: 10,
            });
        })
        .await;
        let node = mesh.node(0).node().unwrap().sip_addr();
        let mut alice = Ua::new("alice", node).await;
        assert_eq!(alice.register("a-pw").await, 200);
        let call_id = format!("{}@trunk", token());
        let first = alice
            .invite("004930123", &call_id, "at", 1, None)
            .replacen(&format!("sip:004930123@{node}"), &format!("sip:004930123@{tr}"), 2);
        alice.send(&first).await;
        let ch = alice.wait_final("INVITE", 5000).await.expect("a challenge");
        assert_eq!(ch.status(), Some(407));
        let sent = Message::parse(first.as_bytes(), true).unwrap();
        alice
            .c
            .send(&sipmesh::sip::request::ack_for(&sent, &ch))
            .await;
        let auth = digest(
            &ch,
            &HeaderName::Other("proxy-authenticate".into()),
            "alice",
            "a-pw",
            "INVITE",
            &format!("sip:004930123@{tr}"),
            1,
        );
        let second = alice
            .invite("004930123", &call_id, "at", 2, Some(&auth))
            .replacen(&format!("sip:004930123@{node}"), &format!("sip:004930123@{tr}"), 2);
        alice.send(&second).await;
        // The SBC answers 200, adding its own Record-Route on top.
        let mut buf = vec![0u8; 65536];
        let (n, from) = tokio::time::timeout(Duration::from_secs(5), sbc.recv_from(&mut buf))
            .await
            .expect("the trunk gets the call")
            .unwrap();
        let inv = Message::parse(&buf[..n], false).unwrap();
        let mut ok = "SIP/2.0 200 OK\r\n".to_string();
        for v in hvals(&inv, &HeaderName::Via) {
            ok.push_str(&format!("Via: {v}\r\n"));
        }
        ok.push_str(&format!("Record-Route: <sip:{tr};lr>\r\n"));
        for r in hvals(&inv, &HeaderName::RecordRoute) {
            ok.push_str(&format!("Record-Route: {r}\r\n"));
        }
        ok.push_str(&format!(
            "From: {}\r\nTo: {};tag=sbc\r\nCall-ID: {call_id}\r\nCSeq: 2 INVITE\r\nContact: <sip:gw@{tr}>\r\nContent-Length: 0\r\n\r\n",
            inv.header(&HeaderName::From).unwrap(),
            inv.header(&HeaderName::To).unwrap(),
        ));
        sbc.send_to(ok.as_bytes(), from).await.unwrap();
        let answered = alice
            .wait_response(200, "INVITE", 5000)
            .await
            .expect("answered");
        let leg = CallerLeg::of_answer(&answered, &call_id);
        assert_eq!(uri_of(leg.routes.last().unwrap()), format!("sip:{tr};lr"));
        // The phone hangs up: the BYE reaches the trunk through the node.
        alice.send(&leg.request(&alice, "BYE", 3)).await;
        let bye = loop {
            let (n, _) = tokio::time::timeout(Duration::from_secs(5), sbc.recv_from(&mut buf))
                .await
                .expect("the BYE reaches the trunk")
                .unwrap();
            let m = Message::parse(&buf[..n], false).unwrap();
            if m.method().is_some_and(|x| x.as_str() == "BYE") {
                break m;
            }
        };
        assert_eq!(bye.request_uri(), Some(format!("sip:gw@{tr}").as_str()));
        // The same signed entry followed by another host's Route: refused.
        let mut evil = leg.routes.clone();
        *evil.last_mut().unwrap() = "<sip:127.0.0.1:9;lr>".into();
        let forged = CallerLeg {
            routes: evil,
            call_id: leg.call_id.clone(),
            from: leg.from.clone(),
            to: leg.to.clone(),
            target: leg.target.clone(),
        };
        let r = alice
            .c
            .request(&forged.request(&alice, "BYE", 4))
            .await
            .expect("an answer");
        assert_eq!(r.status(), Some(403), "{:?}", r.start);
    })
    .await;
}
