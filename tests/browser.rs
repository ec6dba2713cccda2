//! The live mesh page in a real browser (issue "Operator experience"): Debian's chromium,
//! driven by playwright-core (tests/browser/mesh_page.mjs), loads `/` from node 0 of a 3-node
//! mesh with phones registered and a call up. What the page shows must match `/v1/status`;
//! locating a user highlights its replicas; the page is read-only until the admin token is
//! typed, then lifts a ban at the node. The screenshot lands in target/screenshots/ (a copy
//! from a run is docs/mesh-page.png).

mod common;

use common::*;
use sipmesh::sip::message::HeaderName;

/// Where the browser driver lives (its node_modules are installed by scripts/test.sh).
fn driver_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// Where screenshots go (created).
fn screenshots() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Run a browser driver script with `args`: the JSON object it prints.
async fn drive(script: &str, args: &[String]) -> serde_json::Value {
    let run = tokio::process::Command::new("node")
        .current_dir(driver_dir())
        .arg(script)
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .expect("node (Node.js) runs: scripts/test.sh installs it");
    assert!(
        run.status.success(),
        "the browser driver failed: {}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    serde_json::from_slice(run.stdout.trim_ascii()).expect("the driver prints JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_page_matches_status_and_acts_only_with_the_token() {
    within(240, async {
        let mesh = mesh_with_users(3, PHONES, |_| {}).await;
        let sip = |i: usize| mesh.node(i).node().unwrap().sip_addr();
        let http = mesh.node(0).node().unwrap().http_addr().unwrap();
        let admin = admin_token(&mesh, 0);

        // Phones at node 0 and node 2, and a call between them that stays up.
        let mut alice = Ua::new("alice", sip(0)).await;
        let mut bob = Ua::new("bob", sip(2)).await;
        assert_eq!(alice.register("a-pw").await, 200);
        assert_eq!(bob.register("b-pw").await, 200);
        answered_call(&mut alice, "a-pw", &mut bob, "btag").await;

        // A scanner from 127.0.0.9 gets itself banned.
        scan_from("127.0.0.9", sip(0), 40).await;
        eventually(10, "the scanner is banned", || async {
            let (_, v) = http_get(format!("http://{http}/v1/bans")).await;
            v["bans"].to_string().contains("127.0.0.9")
        })
        .await;
        // Member tags (load, registrations, dialogs) are published every 2 s.
        eventually(10, "node 0's tags show its call", || async {
            let (_, v) = http_get(format!(
                "http://{}/v1/status",
                mesh.node(2).node().unwrap().http_addr().unwrap()
            ))
            .await;
            v["members"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["tags"]["dialogs"] == "1")
        })
        .await;

        let shot = screenshots().join("mesh-page.png");
        let _ = std::fs::remove_file(&shot);
        let page = drive(
            "mesh_page.mjs",
            &[
                format!("http://{http}/"),
                shot.to_string_lossy().into_owned(),
                "alice".into(),
                admin.clone(),
                "127.0.0.9".into(),
            ],
        )
        .await;
        let (_, status) = http_get(format!("http://{http}/v1/status")).await;

        let shown = &page["read_only"];
        assert_eq!(shown["members_up"], status["members_up"], "{page}");
        assert_eq!(shown["members_up"], 3);
        assert_eq!(shown["registrations"], status["registrations"]);
        assert_eq!(shown["registrations"], 1, "alice is bound at node 0");
        assert_eq!(shown["dialogs"], status["dialogs"]);
        assert_eq!(shown["dialogs"], 1, "the call is up");
        assert_eq!(shown["majority"], "yes");
        let mut want: Vec<(String, String)> = status["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["peer_id"].as_str().unwrap().into(),
                    m["state"].as_str().unwrap().into(),
                )
            })
            .collect();
        let mut got: Vec<(String, String)> = shown["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["peer_id"].as_str().unwrap().into(),
                    m["state"].as_str().unwrap().into(),
                )
            })
            .collect();
        want.sort();
        got.sort();
        assert_eq!(got, want, "the page lists every member in its state");
        // Node 2's row counts bob's binding (from its published tags).
        let node2 = mesh.node(2).node().unwrap().mesh.peer_id().to_string();
        let row2 = shown["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["peer_id"] == node2.as_str())
            .unwrap();
        assert_eq!(row2["registrations"], 1, "{row2}");
        assert_eq!(shown["ring_dots"], 3);
        assert_ne!(
            shown["rate_register"], "–",
            "rates come from successive updates"
        );
        assert!(shown["bans"].to_string().contains("127.0.0.9"));
        assert!(
            shown["events"].to_string().contains("ban"),
            "the ban is a recent event"
        );
        // Read-only without the token.
        assert_eq!(shown["admin"], false);
        assert_eq!(shown["lift_buttons_visible"], 0);
        // Locating alice: her 3 replicas highlighted, her binding's owner named.
        let lookup = page["lookup"].as_str().unwrap();
        assert!(
            lookup.contains("alice") && lookup.contains("via"),
            "{lookup}"
        );
        assert_eq!(page["highlighted"], 3);
        // With the token, the page lifted the ban at the node.
        assert_eq!(page["admin"]["admin"], true);
        let (_, bans) = http_get(format!("http://{http}/v1/bans")).await;
        assert!(!bans["bans"].to_string().contains("127.0.0.9"), "{bans}");
        // Every asset came from the node.
        assert_eq!(page["foreign_requests"], serde_json::json!([]));
        assert!(
            std::fs::metadata(&shot).unwrap().len() > 10_000,
            "a screenshot"
        );
    })
    .await;
}

/// A counter of `/metrics` with these labels (0 when absent).
async fn metric(http: std::net::SocketAddr, family: &str, labels: &str) -> u64 {
    metrics_text(http)
        .await
        .lines()
        .filter(|l| l.starts_with(family) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// The browser phone (issue "TLS and WebSocket"): two pages of one headless Chromium, as two
/// users registered over WebSocket at two different nodes of a 3-node mesh. The caller calls,
/// the callee answers automatically with Chromium's fake microphone, the call stays up and the
/// caller hangs up. The pages' states and the SIP the nodes saw (INVITE, ACK, BYE over WS)
/// must agree. Screenshots land in target/screenshots/ (copies from a run: docs/phone-*.png).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_browser_phones_call_each_other_across_the_mesh() {
    within(240, async {
        let mesh = mesh_with_users(3, PHONES, |c| {
            c.sip_ws_listen = Some("127.0.0.1:0".parse().unwrap());
        })
        .await;
        let http = |i: usize| mesh.node(i).node().unwrap().http_addr().unwrap();
        let shots = screenshots();
        let page = drive(
            "phone_call.mjs",
            &[
                format!("http://{}/phone?user=alice", http(0)),
                format!("http://{}/phone?user=bob", http(2)),
                "alice".into(),
                "a-pw".into(),
                "bob".into(),
                "b-pw".into(),
                shots.to_string_lossy().into_owned(),
                format!("http://{}", http(1)),
            ],
        )
        .await;
        assert!(page.get("error").is_none(), "{page:#}");
        // Audio flows both ways (Chromium's fake microphone, ICE on loopback).
        for side in ["caller", "callee"] {
            let m = &page["media"][side];
            assert!(
                m["ice"] == "connected" || m["ice"] == "completed",
                "{side}: {m}"
            );
            assert!(
                m["bytes"].as_u64().unwrap_or(0) > 0,
                "{side} hears audio: {m}"
            );
        }
        for (step, want) in [
            ("registered", "idle"),
            ("up", "confirmed"),
            ("still_up", "confirmed"),
            ("ended", "ended"),
        ] {
            for side in ["caller", "callee"] {
                assert_eq!(
                    page[step][side]["reg"], "registered",
                    "{step} {side}: {page:#}"
                );
                assert_eq!(page[step][side]["call"], want, "{step} {side}: {page:#}");
            }
        }
        // Each phone is bound over WebSocket at the node whose page it is (as a third node
        // listed them while the pages were open).
        for (user, node) in [("alice", 0), ("bob", 2)] {
            let v = &page["bindings"][user];
            let b = &v["bindings"][0];
            assert_eq!(b["transport"], "WS", "{v}");
            assert_eq!(b["owner"], mesh.node(node).peer_id.to_string(), "{v}");
        }
        // The nodes saw the call's SIP over WebSocket: the INVITE, ACK and BYE from the caller
        // at node 0, and node 2 forwarded the INVITE down the callee's WebSocket.
        for method in ["INVITE", "ACK", "BYE"] {
            let n = metric(
                http(0),
                "sipmesh_sip_requests_total",
                &format!("method=\"{method}\",transport=\"ws\""),
            )
            .await;
            assert!(n >= 1, "node 0 received {method} over WS: {n}");
        }
        let answers = metric(http(2), "sipmesh_sip_responses_received_total", "").await;
        assert!(
            answers >= 2,
            "node 2 received the callee's answers: {answers}"
        );
        for f in ["phone-caller.png", "phone-callee.png"] {
            assert!(
                std::fs::metadata(shots.join(f)).unwrap().len() > 10_000,
                "{f}"
            );
        }
    })
    .await;
}

/// A WebRTC-compatible SDP answer to a browser's offer (audio, PCMU, the offer's mid): enough
/// for the browser to accept it; no media flows (the UDP phone here is a test phone).
fn sdp_answer(offer: &str) -> String {
    let mid = offer
        .lines()
        .find_map(|l| l.strip_prefix("a=mid:"))
        .unwrap_or("0")
        .trim()
        .to_string();
    let fingerprint = (0..32)
        .map(|i| format!("{:02X}", i * 7 % 256))
        .collect::<Vec<_>>()
        .join(":");
    format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE {mid}\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\nc=IN IP4 127.0.0.1\r\na=mid:{mid}\r\na=ice-ufrag:sipm\r\na=ice-pwd:sipmeshsipmeshsipmeshsi\r\na=fingerprint:sha-256 {fingerprint}\r\na=setup:active\r\na=rtcp-mux\r\na=sendrecv\r\na=rtpmap:0 PCMU/8000\r\n"
    )
}

/// A browser phone (WebSocket, node 0) calls a UDP phone registered at node 2: the UDP phone
/// answers with SDP the browser accepts, the call is up on the page, and the UDP phone's BYE
/// ends it there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_phone_calls_a_udp_phone_across_the_mesh() {
    within(240, async {
        let mesh = mesh_with_users(3, PHONES, |c| {
            c.sip_ws_listen = Some("127.0.0.1:0".parse().unwrap());
        })
        .await;
        let http0 = mesh.node(0).node().unwrap().http_addr().unwrap();
        let mut bob = Ua::new("bob", mesh.node(2).node().unwrap().sip_addr()).await;
        assert_eq!(bob.register("b-pw").await, 200);
        let args = [
            format!("http://{http0}/phone"),
            "alice".into(),
            "a-pw".into(),
            "bob".into(),
            screenshots()
                .join("phone-to-udp.png")
                .to_string_lossy()
                .into_owned(),
        ];
        let driver = drive("phone_to_udp.mjs", &args);
        let phone = async {
            let inv = bob.wait_request("INVITE", 60_000).await.expect("the browser's INVITE");
            let offer = String::from_utf8_lossy(inv.body()).to_string();
            assert!(offer.contains("m=audio"), "{offer}");
            let sdp = sdp_answer(&offer);
            let ok = bob.answer(&inv, 200, "OK", "bob1").replacen(
                "Content-Length: 0\r\n\r\n",
                &format!(
                    "Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
                    sdp.len()
                ),
                1,
            );
            bob.send(&ok).await;
            assert!(bob.wait_request("ACK", 10_000).await.is_some(), "the browser ACKs");
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            // Bob hangs up along his route set (the INVITE's Record-Route, in order).
            let routes: String = hvals(&inv, &HeaderName::RecordRoute)
                .iter()
                .map(|r| format!("Route: {r}\r\n"))
                .collect();
            let bye = format!(
                "BYE {} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bK{};rport\r\nMax-Forwards: 70\r\n{routes}From: {};tag=bob1\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n",
                uri_of(&hvals(&inv, &HeaderName::Contact)[0]),
                bob.c.local(),
                token(),
                inv.header(&HeaderName::To).unwrap(),
                inv.header(&HeaderName::From).unwrap(),
                inv.header(&HeaderName::CallId).unwrap(),
            );
            bob.send(&bye).await;
            bob.wait_response(200, "BYE", 10_000).await.is_some()
        };
        let (page, bye_ok) = tokio::join!(driver, phone);
        assert!(page.get("error").is_none(), "{page:#}");
        assert_eq!(page["up"]["call"], "confirmed", "{page:#}");
        assert_eq!(page["ended"]["call"], "ended", "{page:#}");
        assert!(bye_ok, "the browser answered the UDP phone's BYE");
    })
    .await;
}
