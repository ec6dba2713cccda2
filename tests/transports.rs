//! TLS (RFC 3261 §26) and WebSocket (RFC 7118) transports on a real 3-node mesh: phones on
//! TLS and WebSocket register and call UDP phones across nodes, both ways; sips: only ever
//! travels over TLS; the certificate is reloaded without a restart; bad handshakes, oversize
//! frames, a missing subprotocol and slow clients are refused with a metric while the node
//! keeps serving the others.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use common::*;
use futures::{SinkExt, StreamExt};
use sipmesh::sip::message::{HeaderName, Message};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite;

/// A self-signed certificate for 127.0.0.1 in a directory the test keeps.
fn certificate() -> (tempfile::TempDir, sipmesh::sip::tls::TlsFiles) {
    let dir = tempfile::tempdir().unwrap();
    let files =
        sipmesh::sip::tls::self_signed(dir.path(), &["127.0.0.1".into(), "localhost".into()])
            .unwrap();
    (dir, files)
}

/// A 3-node mesh with TLS, WS and WSS listeners, and alice, bob and carol.
async fn secure_mesh(
    files: &sipmesh::sip::tls::TlsFiles,
    limits: impl Fn(&mut sipmesh::NodeConfig) + Send + Sync + 'static,
) -> sipmesh::LocalMesh {
    let files = files.clone();
    mesh_with_users(
        3,
        &[
            ("alice", "alice-pw"),
            ("bob", "bob-pw"),
            ("carol", "carol-pw"),
        ],
        move |c| {
            c.sip_tls_listen = Some("127.0.0.1:0".parse().unwrap());
            c.sip_ws_listen = Some("127.0.0.1:0".parse().unwrap());
            c.sip_wss_listen = Some("127.0.0.1:0".parse().unwrap());
            c.tls = Some(files.clone());
            limits(c);
        },
    )
    .await
}

fn node(mesh: &sipmesh::LocalMesh, i: usize) -> sipmesh::Node {
    mesh.node(i).node().unwrap()
}

fn tls_addr(mesh: &sipmesh::LocalMesh, i: usize) -> SocketAddr {
    node(mesh, i).sip_listeners().tls.unwrap()
}

fn ws_addr(mesh: &sipmesh::LocalMesh, i: usize) -> SocketAddr {
    node(mesh, i).sip_listeners().ws.unwrap()
}

/// The user's bindings' transports, as the admin API reports them.
async fn transports_of(mesh: &sipmesh::LocalMesh, user: &str) -> Vec<String> {
    let http = node(mesh, 1).http_addr().unwrap();
    let (_, v) = http_get(format!("http://{http}/v1/registrations/{user}")).await;
    v["bindings"]
        .as_array()
        .map(|bs| {
            bs.iter()
                .filter_map(|b| b["transport"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// `a` (on TLS or WebSocket at one node) and `b` (UDP at another) call each other: each call
/// rings, is answered, and is hung up by the callee with a BYE that reaches the caller.
async fn calls_both_ways(mesh: &sipmesh::LocalMesh, a: &mut Ua, b: &mut Ua, transport: &str) {
    // a calls b.
    let leg = answered_call(a, "alice-pw", b, "b-tag").await;
    let rr = &leg.routes;
    assert!(
        rr.iter()
            .any(|r| r.contains(&format!("transport={transport}"))),
        "the caller's route set leads back over {transport}: {rr:?}"
    );
    // b hangs up: the BYE comes down a's connection.
    let inv_leg_bye = {
        let bye = format!(
            "BYE {} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bK{};rport\r\nMax-Forwards: 70\r\n{}From: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n",
            a.contact(),
            b.c.local(),
            token(),
            // b's route set: the Record-Route as received (not reversed).
            leg.routes
                .iter()
                .rev()
                .map(|r| format!("Route: {r}\r\n"))
                .collect::<String>(),
            leg.to,
            leg.from,
            leg.call_id
        );
        b.send(&bye).await;
        a.wait_request("BYE", 5000).await
    };
    let bye = inv_leg_bye.expect("the callee's BYE reaches the caller over its connection");
    a.respond(&bye, 200, "OK", "").await;
    let ok = b.wait_response(200, "BYE", 5000).await;
    assert!(ok.is_some(), "the caller's 200 to BYE comes back");

    // b calls a: the INVITE goes down a's registered connection, with a's transport in Via.
    let call_id = format!("{}@b", token());
    invite_with_auth(b, "alice", "bob-pw", &call_id, "btag").await;
    let inv = a
        .wait_request("INVITE", 5000)
        .await
        .expect("the INVITE reaches the phone down its connection");
    let top_via = hvals(&inv, &HeaderName::Via)[0].clone();
    assert!(
        top_via.starts_with(&format!("SIP/2.0/{}", transport.to_ascii_uppercase())),
        "{top_via}"
    );
    a.respond(&inv, 200, "OK", "a-tag").await;
    let ok = b
        .wait_response(200, "INVITE", 5000)
        .await
        .expect("answered");
    let leg = CallerLeg::of_answer(&ok, &call_id);
    b.send(&leg.request(b, "ACK", 2)).await;
    let ack = a.wait_request("ACK", 5000).await;
    assert!(ack.is_some(), "the ACK reaches the phone");
    b.send(&leg.request(b, "BYE", 3)).await;
    let bye = a.wait_request("BYE", 5000).await.expect("the BYE arrives");
    a.respond(&bye, 200, "OK", "").await;
    assert!(b.wait_response(200, "BYE", 5000).await.is_some());
    let _ = mesh;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_phone_and_a_udp_phone_call_each_other_across_nodes() {
    within(90, async {
        let (_dir, files) = certificate();
        let mesh = secure_mesh(&files, |_| {}).await;
        let mut alice = Ua::on(
            "alice",
            tls_addr(&mesh, 0),
            Client::tls(tls_addr(&mesh, 0), &files.cert).await,
        );
        let mut bob = Ua::new("bob", node(&mesh, 2).sip_addr()).await;
        assert_eq!(alice.register("alice-pw").await, 200);
        assert_eq!(bob.register("bob-pw").await, 200);
        assert_eq!(transports_of(&mesh, "alice").await, vec!["TLS"]);
        calls_both_ways(&mesh, &mut alice, &mut bob, "tls").await;
        assert!(node(&mesh, 0).counter("sip_tls_connections").unwrap() >= 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_phone_and_a_udp_phone_call_each_other_across_nodes() {
    within(90, async {
        let (_dir, files) = certificate();
        let mesh = secure_mesh(&files, |_| {}).await;
        let mut alice = Ua::on(
            "alice",
            ws_addr(&mesh, 1),
            Client::ws(ws_addr(&mesh, 1)).await,
        );
        let mut bob = Ua::new("bob", node(&mesh, 2).sip_addr()).await;
        assert_eq!(alice.register("alice-pw").await, 200);
        assert_eq!(bob.register("bob-pw").await, 200);
        assert_eq!(transports_of(&mesh, "alice").await, vec!["WS"]);
        calls_both_ways(&mesh, &mut alice, &mut bob, "ws").await;
        // On the same node too: a UDP phone at node 1 calls the WebSocket phone.
        let mut carol = Ua::new("carol", node(&mesh, 1).sip_addr()).await;
        assert_eq!(carol.register("carol-pw").await, 200);
        let call_id = format!("{}@c", token());
        invite_with_auth(&mut carol, "alice", "carol-pw", &call_id, "ctag").await;
        let inv = alice.wait_request("INVITE", 5000).await.expect("rings");
        alice.respond(&inv, 486, "Busy Here", "a2").await;
        let busy = carol.wait_final("INVITE", 5000).await.unwrap();
        assert_eq!(busy.status(), Some(486));
        assert!(node(&mesh, 1).counter("sip_ws_connections").unwrap() >= 1);
    })
    .await;
}

/// An INVITE to `uri` from `ua` (no credentials): its final answer.
async fn invite_uri(ua: &mut Ua, uri: &str) -> Message {
    let call_id = format!("{}@s", token());
    let inv = ua.invite("x", &call_id, "t1", 1, None).replacen(
        &format!("INVITE sip:x@{}", ua.server),
        &format!("INVITE {uri}"),
        1,
    );
    ua.send(&inv).await;
    ua.wait_final("INVITE", 5000).await.expect("an answer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sips_travels_only_over_tls() {
    within(90, async {
        let (_dir, files) = certificate();
        let mesh = secure_mesh(&files, |c| c.auth_invites = false).await;
        let mut bob = Ua::new("bob", node(&mesh, 2).sip_addr()).await;
        assert_eq!(bob.register("bob-pw").await, 200);
        // Over UDP, a sips: request is refused.
        let mut udp = Ua::new("carol", node(&mesh, 0).sip_addr()).await;
        let r = invite_uri(&mut udp, "sips:bob@sipmesh").await;
        assert_eq!(r.status(), Some(416), "{:?}", r.start);
        // Over TLS, toward a user with only a UDP binding: no TLS path, refused.
        let mut tls = Ua::on(
            "alice",
            tls_addr(&mesh, 0),
            Client::tls(tls_addr(&mesh, 0), &files.cert).await,
        );
        let r = invite_uri(&mut tls, "sips:bob@sipmesh").await;
        assert_eq!(r.status(), Some(480), "{:?}", r.start);
        // Toward a user registered over TLS (at another node): it rings over TLS.
        let mut carol = Ua::on(
            "carol",
            tls_addr(&mesh, 2),
            Client::tls(tls_addr(&mesh, 2), &files.cert).await,
        );
        assert_eq!(carol.register("carol-pw").await, 200);
        let call_id = format!("{}@s", token());
        let inv = tls.invite("carol", &call_id, "t2", 1, None).replacen(
            &format!("INVITE sip:carol@{}", tls.server),
            "INVITE sips:carol@sipmesh",
            1,
        );
        tls.send(&inv).await;
        let ring = carol
            .wait_request("INVITE", 5000)
            .await
            .expect("rings over TLS");
        assert!(hvals(&ring, &HeaderName::Via)[0].starts_with("SIP/2.0/TLS"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_served_without_a_restart() {
    within(60, async {
        let (dir, files) = certificate();
        let mesh = secure_mesh(&files, |_| {}).await;
        let addr = tls_addr(&mesh, 0);
        let served = |ca: PathBuf, name: &'static str| async move {
            let s = tls_connect(addr, &ca, name).await.ok()?;
            Some(s.get_ref().1.peer_certificates()?[0].to_vec())
        };
        let before = served(files.cert.clone(), "127.0.0.1").await.unwrap();
        // The operator renews the certificate: new files in place (for a new name).
        let renewed = tempfile::tempdir().unwrap();
        let new =
            sipmesh::sip::tls::self_signed(renewed.path(), &["renewed.example".into()]).unwrap();
        std::fs::copy(&new.key, &files.key).unwrap();
        std::fs::copy(&new.cert, &files.cert).unwrap();
        eventually(20, "the renewed certificate is served", || {
            let ca = new.cert.clone();
            async move { served(ca, "renewed.example").await.is_some() }
        })
        .await;
        let after = served(new.cert.clone(), "renewed.example").await.unwrap();
        assert_ne!(before, after);
        // A broken file is not loaded: the renewed certificate stays in use.
        std::fs::write(&files.cert, "garbage").unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(served(new.cert.clone(), "renewed.example").await.is_some());
        drop(dir);
    })
    .await;
}

/// Whether the server closed `stream` within `secs` (EOF or an error on read).
async fn closed<S: tokio::io::AsyncRead + Unpin>(stream: &mut S, secs: u64) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tls_and_websocket_clients_are_refused_and_the_node_keeps_serving() {
    within(90, async {
        let (_dir, files) = certificate();
        let mesh = secure_mesh(&files, |c| {
            c.limits.handshake_timeout = Duration::from_secs(1);
            c.limits.message_timeout = Duration::from_secs(1);
        })
        .await;
        let n = node(&mesh, 0);
        let l = n.sip_listeners();

        // A malformed TLS handshake: garbage where a ClientHello belongs.
        let mut s = tokio::net::TcpStream::connect(l.tls.unwrap())
            .await
            .unwrap();
        s.write_all(b"\x16\x03\x01\x00\x05hello, not TLS at all\r\n\r\n")
            .await
            .unwrap();
        assert!(closed(&mut s, 5).await, "a bad handshake is closed");
        // A TLS client that never finishes its handshake.
        let mut idle = tokio::net::TcpStream::connect(l.tls.unwrap())
            .await
            .unwrap();
        assert!(closed(&mut idle, 5).await, "a silent TLS client is closed");
        eventually(5, "TLS handshake failures are counted", || {
            let n = n.clone();
            async move { n.counter("sip_tls_handshake_failures").unwrap() >= 2 }
        })
        .await;

        // A WebSocket upgrade without the sip subprotocol: refused with 400.
        match ws_connect(l.ws.unwrap(), Some("chat")).await {
            Err(tungstenite::Error::Http(r)) => assert_eq!(r.status(), 400),
            other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
        }
        match ws_connect(l.ws.unwrap(), None).await {
            Err(tungstenite::Error::Http(r)) => assert_eq!(r.status(), 400),
            other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
        }
        // A slow client: the upgrade request dribbles in, and is cut at the handshake timeout.
        let mut slow = tokio::net::TcpStream::connect(l.ws.unwrap()).await.unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        assert!(closed(&mut slow, 5).await, "a slow upgrade is closed");
        eventually(5, "WebSocket refusals are counted", || {
            let n = n.clone();
            async move { n.counter("sip_ws_refused").unwrap() >= 3 }
        })
        .await;

        // A frame over the message limit closes the connection.
        let mut big = ws_connect(l.ws.unwrap(), Some("sip")).await.unwrap();
        let _ = big
            .send(tungstenite::Message::text("x".repeat(200 * 1024)))
            .await;
        let ended = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match big.next().await {
                    None | Some(Err(_)) | Some(Ok(tungstenite::Message::Close(_))) => break,
                    _ => continue,
                }
            }
        })
        .await;
        assert!(ended.is_ok(), "an oversize frame closes the connection");
        // A slow sender: half a frame, then nothing: closed after the message timeout.
        let ws = ws_connect(l.ws.unwrap(), Some("sip")).await.unwrap();
        let mut raw = ws.into_inner();
        raw.write_all(&[0x81, 0x85, 1, 2, 3, 4, b'O' ^ 1])
            .await
            .unwrap();
        assert!(closed(&mut raw, 6).await, "a half-sent frame is closed");
        eventually(5, "WebSocket closes are counted", || {
            let n = n.clone();
            async move { n.counter("sip_ws_closed").unwrap() >= 2 }
        })
        .await;

        // The node still serves: a TLS phone and a WebSocket phone register.
        let mut alice = Ua::on(
            "alice",
            l.tls.unwrap(),
            Client::tls(l.tls.unwrap(), &files.cert).await,
        );
        assert_eq!(alice.register("alice-pw").await, 200);
        let mut bob = Ua::on("bob", l.ws.unwrap(), Client::ws(l.ws.unwrap()).await);
        assert_eq!(bob.register("bob-pw").await, 200);
        // And the metrics are exposed.
        let http = n.http_addr().unwrap();
        let text = metrics_text(http).await;
        for name in [
            "sipmesh_sip_tls_handshake_failures_total",
            "sipmesh_sip_ws_refused_total",
            "sipmesh_sip_ws_closed_total",
        ] {
            assert!(text.contains(name), "{name} in /metrics");
        }
    })
    .await;
}

/// A JsSIP user agent in Node.js (tests/browser/node_call.mjs) registers over WSS at node 0
/// and calls a SIPp phone registered over UDP at node 2; SIPp answers, the call stays up, the
/// JsSIP side hangs up and SIPp receives the BYE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jssip_phone_on_node_js_over_wss_calls_a_sipp_phone_over_udp() {
    within(120, async {
        let (_dir, files) = certificate();
        let mesh = secure_mesh(&files, |_| {}).await;
        let dir = tempfile::tempdir().unwrap();
        let uas_port = free_port();
        let mut uas = tokio::process::Command::new(sipp())
            .current_dir(dir.path())
            .args(["-sf", &scenario("uas.xml"), "-i", "127.0.0.1", "-p"])
            .arg(uas_port.to_string())
            .args([
                "-t",
                "u1",
                "-m",
                "1",
                "-nostdin",
                "-trace_msg",
                "-trace_err",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let node2 = node(&mesh, 2).sip_addr();
        sipp_register(
            dir.path(),
            "bob",
            "bob-pw",
            node2,
            "u1",
            &format!("127.0.0.1:{uas_port}"),
        )
        .await;
        let wss = node(&mesh, 0).sip_listeners().wss.unwrap();
        let driver = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
        let run = tokio::process::Command::new("node")
            .current_dir(&driver)
            .arg("node_call.mjs")
            .arg(format!("wss://127.0.0.1:{}", wss.port()))
            .arg(&files.cert)
            .args([
                "alice",
                "alice-pw",
                "sipmesh",
                "sipmesh",
                "sip:bob@sipmesh",
                "1500",
            ])
            .kill_on_drop(true)
            .output()
            .await
            .expect("node (Node.js) runs: scripts/test.sh installs it");
        let out: serde_json::Value = serde_json::from_slice(run.stdout.trim_ascii())
            .unwrap_or_else(|_| {
                panic!(
                    "the JsSIP driver prints JSON: {}\n{}",
                    String::from_utf8_lossy(&run.stdout),
                    String::from_utf8_lossy(&run.stderr)
                )
            });
        assert!(run.status.success() && out.get("error").is_none(), "{out}");
        let events = out["events"].to_string();
        for e in ["registered", "accepted 200", "confirmed"] {
            assert!(events.contains(e), "{e}: {out}");
        }
        assert_eq!(out["ended_by"], "local", "{out}");
        // SIPp received the call and the BYE, and ended after its one call.
        let status = tokio::time::timeout(Duration::from_secs(20), uas.wait())
            .await
            .expect("SIPp ends after the call")
            .unwrap();
        let log: String = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with("_messages.log"))
            .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
            .collect();
        assert!(log.contains("INVITE sip:bob@"), "SIPp got the INVITE");
        assert!(
            log.contains("\nBYE sip:") || log.contains("BYE sip:"),
            "SIPp got the BYE"
        );
        assert!(
            status.success(),
            "SIPp's call succeeded: {}",
            errors_in(dir.path())
        );
        // alice was bound over WSS at node 0.
        assert!(node(&mesh, 0).counter("sip_ws_connections").unwrap() >= 1);
    })
    .await;
}

/// Outbound (RFC 5626) over TLS and over WebSocket: a binding registered with reg-id and an
/// instance on a connection lives as long as that connection; when the phone's connection
/// closes, its binding is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_bindings_on_tls_and_websocket_die_with_their_connection() {
    within(60, async {
        let (_dir, files) = certificate();
        let mesh = secure_mesh(&files, |_| {}).await;
        for (user, pw, client) in [
            (
                "alice",
                "alice-pw",
                Client::tls(tls_addr(&mesh, 0), &files.cert).await,
            ),
            ("bob", "bob-pw", Client::ws(ws_addr(&mesh, 0)).await),
        ] {
            let server = match client {
                Client::Tls(..) => tls_addr(&mesh, 0),
                _ => ws_addr(&mesh, 0),
            };
            let mut ua = Ua::on(user, server, client);
            let contact = format!(
                "<{}>;reg-id=1;+sip.instance=\"<urn:uuid:00000000-0000-4000-8000-{:012x}>\"",
                ua.contact(),
                rand::random::<u32>()
            );
            let mut reg = Register::new(user, &contact);
            reg.extra = "Supported: outbound, path\r\n".into();
            let ok = register(&mut ua.c, server, &mut reg, pw).await;
            assert_eq!(ok.status(), Some(200), "{:?}", ok.start);
            assert!(
                hvals(&ok, &HeaderName::Require)
                    .iter()
                    .any(|r| r.contains("outbound")),
                "Outbound is used over {}",
                ua.c.transport()
            );
            assert_eq!(transports_of(&mesh, user).await.len(), 1);
            drop(ua);
            eventually(10, "the binding dies with its connection", || async {
                transports_of(&mesh, user).await.is_empty()
            })
            .await;
        }
    })
    .await;
}

/// A `sips:` contact whose connection is gone is reached by a new TLS connection from the
/// node, which verifies the phone's certificate (here the node's own, which it trusts): the
/// INVITE arrives over TLS, never over UDP or TCP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sips_contact_is_reached_over_a_new_tls_connection() {
    within(60, async {
        let (_dir, files) = certificate();
        let mesh = secure_mesh(&files, |c| c.auth_invites = false).await;
        // The phone's own TLS server (a phone that listens, as a desk phone does).
        let server = sipmesh::sip::tls::Tls::load(files.clone()).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let phone_addr = listener.local_addr().unwrap();
        // It registers over TLS from another connection, with a sips: contact at its server,
        // then that connection closes (no Outbound: the binding stays).
        {
            let mut ua = Ua::on(
                "carol",
                tls_addr(&mesh, 2),
                Client::tls(tls_addr(&mesh, 2), &files.cert).await,
            );
            let contact = format!("<sips:carol@{phone_addr}>");
            let mut reg = Register::new("carol", &contact);
            let ok = register(&mut ua.c, tls_addr(&mesh, 2), &mut reg, "carol-pw").await;
            assert_eq!(ok.status(), Some(200));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut caller = Ua::on(
            "alice",
            tls_addr(&mesh, 0),
            Client::tls(tls_addr(&mesh, 0), &files.cert).await,
        );
        let call_id = format!("{}@sips", token());
        caller
            .send(&caller.invite("carol", &call_id, "t", 1, None))
            .await;
        let (tcp, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
            .await
            .expect("the node connects to the sips: contact")
            .unwrap();
        let mut tls = server.acceptor().accept(tcp).await.expect("over TLS");
        let mut buf = Vec::new();
        let raw = tokio::time::timeout(Duration::from_secs(5), read_framed(&mut tls, &mut buf))
            .await
            .expect("a message in time")
            .expect("a message");
        let inv = Message::parse(&raw, true).unwrap();
        assert_eq!(
            inv.method().map(|m| m.as_str().to_string()),
            Some("INVITE".into())
        );
        assert_eq!(
            inv.request_uri(),
            Some(format!("sips:carol@{phone_addr}").as_str())
        );
        assert!(hvals(&inv, &HeaderName::Via)[0].starts_with("SIP/2.0/TLS"));
    })
    .await;
}
