//! The SIP edge as real phones meet it (issue "real phones"): the challenge they can answer,
//! their Contact parameters given back as sent, RFC 3261 §10.3 ordering, Path only from edge
//! proxies, and framing kept when a datagram is forwarded over a stream.

mod common;

use std::time::Duration;

use common::*;
use sipmesh::sip::digest::Algorithm;
use sipmesh::sip::message::{HeaderName, Message};

fn www() -> HeaderName {
    HeaderName::Other("www-authenticate".into())
}

fn sip(mesh: &sipmesh::LocalMesh, i: usize) -> std::net::SocketAddr {
    mesh.node(i).node().unwrap().sip_addr()
}

async fn bindings(mesh: &sipmesh::LocalMesh, user: &str) -> Vec<serde_json::Value> {
    let http = mesh.node(0).node().unwrap().http_addr().unwrap();
    let (code, v) = http_get(format!("http://{http}/v1/registrations/{user}")).await;
    assert_eq!(code, 200, "{v}");
    v["bindings"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn challenges_offer_md5_alone_unless_configured() {
    within(120, async {
        // The default: one challenge, MD5, as Kamailio sends — what every phone can answer.
        let mesh = mesh_with_users(1, &[("amy", "pw")], |_| {}).await;
        let server = sip(&mesh, 0);
        let mut c = Client::udp(server).await;
        let mut reg = Register::new("amy", &format!("<sip:amy@{}>", c.local()));
        let ch = c.request(&reg.build(&c, server)).await.unwrap();
        assert_eq!(ch.status(), Some(401));
        let offered = ch.values(&www());
        assert_eq!(offered.len(), 1, "{offered:?}");
        assert!(offered[0].contains("algorithm=MD5"), "{offered:?}");
        assert_eq!(
            register(&mut c, server, &mut reg, "pw").await.status(),
            Some(200)
        );
        drop(mesh);
        // Configured: SHA-256 first, then MD5, one challenge each with the same nonce.
        let mesh = mesh_with_users(1, &[("amy", "pw")], |c| {
            c.digest_algorithms = vec![Algorithm::Sha256, Algorithm::Md5];
        })
        .await;
        let server = sip(&mesh, 0);
        let mut c = Client::udp(server).await;
        let reg = Register::new("amy", &format!("<sip:amy@{}>", c.local()));
        let ch = c.request(&reg.build(&c, server)).await.unwrap();
        let offered: Vec<String> = ch.values(&www()).iter().map(|s| s.to_string()).collect();
        assert_eq!(offered.len(), 2, "{offered:?}");
        assert!(offered[0].contains("algorithm=SHA-256"));
        assert!(offered[1].contains("algorithm=MD5"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_register_200_gives_contact_parameters_back_as_sent() {
    within(120, async {
        let mesh = mesh_with_users(1, &[("ben", "pw")], |_| {}).await;
        let server = sip(&mesh, 0);
        let mut c = Client::udp(server).await;
        let instance = "\"<urn:uuid:00000000-0000-1000-8000-000a95a0e128>\"";
        let contact = format!(
            "<sip:ben@{};ob>;+sip.instance={instance};reg-id=1;+sip.methods=\"INVITE,BYE\"",
            c.local()
        );
        let mut reg = Register::new("ben", &contact);
        reg.extra = "Supported: outbound\r\n".into();
        let ok = register(&mut c, server, &mut reg, "pw").await;
        assert_eq!(ok.status(), Some(200));
        let back = ok.values(&HeaderName::Contact);
        assert_eq!(back.len(), 1, "{back:?}");
        assert!(
            back[0].contains(&format!(";+sip.instance={instance}")),
            "{}",
            back[0]
        );
        assert!(
            back[0].contains(";+sip.methods=\"INVITE,BYE\""),
            "{}",
            back[0]
        );
        assert!(back[0].contains(";reg-id=1"), "{}", back[0]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_out_of_order_register_fails_and_changes_nothing() {
    within(120, async {
        let mesh = mesh_with_users(1, &[("cat", "pw")], |_| {}).await;
        let server = sip(&mesh, 0);
        let mut c = Client::udp(server).await;
        let mut reg = Register::new("cat", &format!("<sip:cat@{}>", c.local()));
        reg.cseq = 10;
        assert_eq!(
            register(&mut c, server, &mut reg, "pw").await.status(),
            Some(200)
        );
        let before = bindings(&mesh, "cat").await;
        assert_eq!(before.len(), 1);
        // Same Call-ID, lower CSeq (a delayed request): RFC 3261 §10.3 step 7 aborts it.
        reg.cseq = 3;
        reg.expires = Some(0);
        let late = register(&mut c, server, &mut reg, "pw").await;
        assert_eq!(late.status(), Some(500), "{:?}", late.start);
        assert_eq!(
            bindings(&mesh, "cat").await.len(),
            1,
            "the binding was removed"
        );
        // A higher CSeq goes through.
        reg.cseq = 20;
        assert_eq!(
            register(&mut c, server, &mut reg, "pw").await.status(),
            Some(200)
        );
        assert!(bindings(&mesh, "cat").await.is_empty());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_sent_by_a_phone_itself_is_not_trusted() {
    within(120, async {
        let mesh = mesh_with_users(1, &[("dan", "pw")], |_| {}).await;
        let server = sip(&mesh, 0);
        // 127.0.0.2 is not a trusted source (an edge proxy): its Path would pick where the
        // mesh sends dan's calls.
        let mut c = Client::udp_from("127.0.0.2", server).await;
        let mut reg = Register::new("dan", &format!("<sip:dan@{}>", c.local()));
        reg.extra = "Supported: path\r\nPath: <sip:evil.example;lr>\r\n".into();
        let ok = register(&mut c, server, &mut reg, "pw").await;
        assert_eq!(ok.status(), Some(200));
        assert!(ok.values(&HeaderName::Path).is_empty());
        let b = bindings(&mesh, "dan").await;
        assert_eq!(b.len(), 1);
        assert_eq!(b[0]["path"], serde_json::json!([]), "{b:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_datagram_without_content_length_reaches_a_tcp_phone_whole() {
    within(120, async {
        let mesh = mesh_with_users(1, &[("eve", "pw")], |_| {}).await;
        let server = sip(&mesh, 0);
        let mut callee = Client::tcp(server).await;
        let mut reg = Register::new(
            "eve",
            &format!("<sip:eve@{};transport=tcp>", callee.local()),
        );
        assert_eq!(
            register(&mut callee, server, &mut reg, "pw").await.status(),
            Some(200)
        );
        let mut caller = Client::udp(server).await;
        // Legal on UDP (RFC 3261 §18.3): the body is the rest of the datagram.
        let message = format!(
            "MESSAGE sip:eve@{server} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bK{};rport\r\nMax-Forwards: 70\r\nFrom: <sip:guest@example.org>;tag={}\r\nTo: <sip:eve@{server}>\r\nCall-ID: {}@test\r\nCSeq: 1 MESSAGE\r\nContent-Type: text/plain\r\n\r\nhello over a stream",
            caller.local(),
            token(),
            token(),
            token()
        );
        caller.send(message.as_bytes()).await;
        let got = loop {
            let raw = callee
                .recv_raw(5000)
                .await
                .expect("the MESSAGE over the phone's TCP flow");
            let m = Message::parse(&raw, true).unwrap();
            if m.is_request() {
                break m;
            }
        };
        assert_eq!(got.body(), b"hello over a stream");
        assert_eq!(got.header(&HeaderName::ContentLength), Some("19"));
        // The callee's answer goes back to the caller.
        let answer = sipmesh::sip::build::ResponseBuilder::new(&got, 200, "OK")
            .to_tag("t")
            .build();
        callee.send(&answer).await;
        let r = caller.recv_final(5000).await.expect("the 200 relayed back");
        assert_eq!(r.status(), Some(200));
        tokio::time::sleep(Duration::from_millis(10)).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timer_c_cancels_the_ringing_branch_and_answers_408() {
    within(120, async {
        // Timer C at 2 s (RFC 3261 wants > 3 min; the rule is the same).
        let mesh = mesh_with_users(3, &[("fay", "pw"), ("gus", "pw")], |c| {
            c.timer_c = Duration::from_secs(2);
        })
        .await;
        let mut callee = Ua::new("gus", sip(&mesh, 2)).await;
        assert_eq!(callee.register("pw").await, 200);
        let mut caller = Ua::new("fay", sip(&mesh, 0)).await;
        assert_eq!(caller.register("pw").await, 200);
        let call_id = format!("{}@test", token());
        invite_with_auth(&mut caller, "gus", "pw", &call_id, "ft").await;
        let invite = callee
            .wait_request("INVITE", 5000)
            .await
            .expect("the INVITE");
        let rang = std::time::Instant::now();
        callee.respond(&invite, 180, "Ringing", "gt").await;
        // Nobody answers. Timer C fires: the callee gets a CANCEL for this INVITE…
        let cancel = callee
            .wait_request("CANCEL", 10_000)
            .await
            .expect("a CANCEL when Timer C fires");
        assert!(
            rang.elapsed() >= Duration::from_millis(1500),
            "{:?}",
            rang.elapsed()
        );
        assert_eq!(
            cancel.header(&HeaderName::CallId),
            invite.header(&HeaderName::CallId)
        );
        callee.respond(&cancel, 200, "OK", "gt").await;
        callee
            .respond(&invite, 487, "Request Terminated", "gt")
            .await;
        // …and the caller gets 408 (once), not a ringing call that never ends.
        let last = caller
            .wait_final("INVITE", 10_000)
            .await
            .expect("a final answer upstream");
        assert_eq!(last.status(), Some(408), "{:?}", last.start);
        // The 487 is ACKed by the proxy (no retransmissions reach the caller as a second final).
        assert!(callee.wait_request("ACK", 5000).await.is_some());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_right_behind_its_invite_always_ends_the_call() {
    within(120, async {
        let mesh = mesh_with_users(3, &[("hal", "pw")], |_| {}).await;
        let mut callee = Ua::new("hal", sip(&mesh, 2)).await;
        assert_eq!(callee.register("pw").await, 200);
        let server = sip(&mesh, 0);
        let mut caller = Client::udp(server).await;
        // The CANCEL leaves right behind the INVITE, so it usually arrives while the INVITE is
        // still being routed (location lookup across the mesh), before any branch exists.
        let me = caller.local();
        for round in 0..10 {
            let (branch, tag, call_id) = (token(), token(), format!("{}@test", token()));
            let head = |method: &str| {
                format!(
                    "{method} sip:hal@{server} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK{branch};rport\r\nMax-Forwards: 70\r\nFrom: <sip:guest@example.org>;tag={tag}\r\nTo: <sip:hal@{server}>\r\nCall-ID: {call_id}\r\nCSeq: 1 {method}\r\n"
                )
            };
            let invite = format!(
                "{}Contact: <sip:guest@{me}>\r\nContent-Type: application/sdp\r\nContent-Length: 4\r\n\r\nv=0\n",
                head("INVITE")
            );
            let cancel = format!("{}Content-Length: 0\r\n\r\n", head("CANCEL"));
            caller.send(invite.as_bytes()).await;
            caller.send(cancel.as_bytes()).await;
            // The callee rings if the INVITE reaches it, and answers a CANCEL as a phone does
            // (200 to the CANCEL, 487 to the INVITE); the caller needs 200 for its CANCEL and
            // a final answer to its INVITE.
            let (mut invite_seen, mut cancelled) = (None, false);
            let (mut cancel_ok, mut invite_final) = (None, None);
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while cancel_ok.is_none() || invite_final.is_none() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "round {round}: CANCEL {cancel_ok:?}, INVITE {invite_final:?}, callee rang: \
                     {}, cancelled: {cancelled}",
                    invite_seen.is_some()
                );
                if let Some(m) = callee.wait_for(100, |m| m.is_request()).await {
                    if m.header(&HeaderName::CallId) == Some(call_id.as_str()) {
                        match m.method().map(|x| x.as_str().to_string()).as_deref() {
                            Some("INVITE") => {
                                callee.respond(&m, 180, "Ringing", "ht").await;
                                invite_seen = Some(m);
                            }
                            Some("CANCEL") => {
                                cancelled = true;
                                callee.respond(&m, 200, "OK", "ht").await;
                                if let Some(inv) = &invite_seen {
                                    callee.respond(inv, 487, "Request Terminated", "ht").await;
                                }
                            }
                            _ => {}
                        }
                    }
                }
                let Some(raw) = caller.recv_raw(100).await else {
                    continue;
                };
                let Ok(m) = Message::parse(&raw, false) else {
                    continue;
                };
                if m.status().is_none_or(|c| c < 200) {
                    continue;
                }
                let cseq = m.header(&HeaderName::CSeq).unwrap_or_default().to_string();
                if cseq.ends_with("CANCEL") {
                    cancel_ok = m.status();
                } else if cseq.ends_with("INVITE") {
                    invite_final = m.status();
                    let to = m.header(&HeaderName::To).unwrap_or_default().to_string();
                    let ack = format!(
                        "{}Content-Length: 0\r\n\r\n",
                        head("ACK").replace(&format!("To: <sip:hal@{server}>"), &format!("To: {to}"))
                    );
                    caller.send(ack.as_bytes()).await;
                }
            }
            assert!(
                invite_seen.is_none() || cancelled,
                "round {round}: the callee rang and never heard the CANCEL"
            );
            assert_eq!(cancel_ok, Some(200), "round {round}");
            assert_eq!(invite_final, Some(487), "round {round}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_bound_to_every_address_names_itself_by_its_advertised_name() {
    within(120, async {
        let mesh = mesh_with_users(1, &[("ida", "pw")], |c| {
            c.sip_listen = "0.0.0.0:0".parse().unwrap();
            c.sip_advertise = Some("localhost".into());
        })
        .await;
        let node = mesh.node(0).node().unwrap();
        let port = node.sip_addr().port();
        let server: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let name = format!("localhost:{port}");
        assert_eq!(node.sip_advertised(), name);
        let http = node.http_addr().unwrap();
        let (_, status) = http_get(format!("http://{http}/v1/status")).await;
        assert_eq!(status["sip"], format!("sip:{name}"), "{status}");
        let mut callee = Ua::new("ida", server).await;
        assert_eq!(callee.register("pw").await, 200);
        // A preloaded Route naming the node by its name: the node's own, popped (not a loop
        // into itself, not a foreign hop).
        let mut caller = Client::udp(server).await;
        let me = caller.local();
        let invite = format!(
            "INVITE sip:ida@{name} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK{};rport\r\nMax-Forwards: 70\r\nRoute: <sip:{name};lr>\r\nFrom: <sip:guest@example.org>;tag={}\r\nTo: <sip:ida@{name}>\r\nCall-ID: {}@test\r\nCSeq: 1 INVITE\r\nContact: <sip:guest@{me}>\r\nContent-Length: 0\r\n\r\n",
            token(),
            token(),
            token()
        );
        caller.send(invite.as_bytes()).await;
        let got = callee
            .wait_request("INVITE", 5000)
            .await
            .expect("the INVITE, through the node's own Route");
        let text = String::from_utf8_lossy(&got.raw).to_string();
        assert!(!text.contains("0.0.0.0"), "the bound address leaked:\n{text}");
        let via = got.values(&HeaderName::Via)[0].to_string();
        assert!(via.contains(&format!(" {name};")), "{via}");
        let rr = got.values(&HeaderName::RecordRoute);
        assert!(!rr.is_empty() && rr.iter().all(|r| r.contains(&name)), "{rr:?}");
        assert!(got.values(&HeaderName::Route).is_empty(), "our Route was not popped");
        // Answered to the node by its bound address (the helper cannot resolve names).
        let busy = callee.answer(&got, 486, "Busy Here", "it");
        callee.send(&busy).await;
        let last = caller.recv_final(5000).await.expect("the 486 relayed back");
        assert_eq!(last.status(), Some(486));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sips_target_is_never_reached_over_a_clear_transport() {
    within(120, async {
        let mesh = mesh_with_users(1, &[("jo", "pw")], |_| {}).await;
        let server = sip(&mesh, 0);
        let mut callee = Ua::new("jo", server).await;
        assert_eq!(callee.register("pw").await, 200);
        let mut caller = Client::udp(server).await;
        let me = caller.local();
        // Over UDP and over TCP alike: this node has no TLS, so no hop to jo can be.
        for (ruri, route) in [
            (format!("sips:jo@{server}"), String::new()),
            (format!("sips:jo@{server};transport=tcp"), String::new()),
        ] {
            let invite = format!(
                "INVITE {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK{};rport\r\nMax-Forwards: 70\r\n{route}From: <sip:guest@example.org>;tag={}\r\nTo: <sip:jo@{server}>\r\nCall-ID: {}@test\r\nCSeq: 1 INVITE\r\nContact: <sip:guest@{me}>\r\nContent-Length: 0\r\n\r\n",
                token(),
                token(),
                token()
            );
            let r = caller.request(&invite).await.expect("an answer");
            assert_eq!(r.status(), Some(416), "{ruri} {route}: {:?}", r.start);
        }
        assert!(
            callee.wait_request("INVITE", 500).await.is_none(),
            "the phone was reached over UDP"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbound_register_through_a_proxy_without_outbound_gets_439() {
    within(120, async {
        let mesh = mesh_with_users(1, &[("kim", "pw")], |_| {}).await;
        let server = sip(&mesh, 0);
        let mut c = Client::udp(server).await;
        let contact = format!(
            "<sip:kim@{};ob>;+sip.instance=\"<urn:uuid:00000000-0000-1000-8000-00000000c1c1>\";reg-id=1",
            c.local()
        );
        // Through an edge proxy (a second Via) whose Path has no `ob`: 439, nothing stored.
        let mut reg = Register::new("kim", &contact);
        reg.extra = "Supported: outbound, path\r\nVia: SIP/2.0/UDP 192.0.2.9;branch=z9hG4bKphone\r\nPath: <sip:edge.example.org;lr>\r\n".into();
        let r = register(&mut c, server, &mut reg, "pw").await;
        assert_eq!(r.status(), Some(439), "{:?}", r.start);
        assert!(bindings(&mesh, "kim").await.is_empty());
        // The same with `ob` on the edge proxy's Path: accepted.
        let mut reg = Register::new("kim", &contact);
        reg.extra = "Supported: outbound, path\r\nVia: SIP/2.0/UDP 192.0.2.9;branch=z9hG4bKphone\r\nPath: <sip:edge.example.org;lr;ob>\r\n".into();
        let r = register(&mut c, server, &mut reg, "pw").await;
        assert_eq!(r.status(), Some(200), "{:?}", r.start);
        // Straight from the phone (one Via): this node is the first hop, and supports it.
        let mut reg = Register::new("kim", &contact);
        reg.extra = "Supported: outbound\r\n".into();
        assert_eq!(
            register(&mut c, server, &mut reg, "pw").await.status(),
            Some(200)
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_interval_below_min_se_gets_422() {
    within(120, async {
        let mesh = mesh_with_users(1, &[("lu", "pw")], |_| {}).await;
        let server = sip(&mesh, 0);
        let mut callee = Ua::new("lu", server).await;
        assert_eq!(callee.register("pw").await, 200);
        let mut caller = Client::udp(server).await;
        let me = caller.local();
        let invite = format!(
            "INVITE sip:lu@{server} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK{};rport\r\nMax-Forwards: 70\r\nFrom: <sip:guest@example.org>;tag={}\r\nTo: <sip:lu@{server}>\r\nCall-ID: {}@test\r\nCSeq: 1 INVITE\r\nSupported: timer\r\nSession-Expires: 30\r\nContact: <sip:guest@{me}>\r\nContent-Length: 0\r\n\r\n",
            token(),
            token(),
            token()
        );
        let r = caller.request(&invite).await.expect("an answer");
        assert_eq!(r.status(), Some(422), "{:?}", r.start);
        assert_eq!(r.header(&HeaderName::Other("min-se".into())), Some("90"));
        assert!(callee.wait_request("INVITE", 500).await.is_none());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strict_routed_request_is_restored_before_it_is_routed() {
    within(120, async {
        let mesh = mesh_with_users(1, &[("max", "pw")], |_| {}).await;
        let server = sip(&mesh, 0);
        let mut callee = Ua::new("max", server).await;
        assert_eq!(callee.register("pw").await, 200);
        let mut caller = Client::udp(server).await;
        let me = caller.local();
        let (tag, call_id) = (token(), format!("{}@test", token()));
        let request = |method: &str, ruri: &str, routes: &[String], to: &str, cseq: u32| {
            let mut m = format!(
                "{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK{};rport\r\nMax-Forwards: 70\r\n",
                token()
            );
            for r in routes {
                m.push_str(&format!("Route: {r}\r\n"));
            }
            m.push_str(&format!(
                "From: <sip:guest@example.org>;tag={tag}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\nContact: <sip:guest@{me}>\r\nContent-Length: 0\r\n\r\n"
            ));
            m
        };
        let to = format!("<sip:max@{server}>");
        caller
            .send(request("INVITE", &format!("sip:max@{server}"), &[], &to, 1).as_bytes())
            .await;
        let invite = callee.wait_request("INVITE", 5000).await.expect("the INVITE");
        callee.respond(&invite, 200, "OK", "mt").await;
        let ok = caller.recv_final(5000).await.expect("the 200");
        assert_eq!(ok.status(), Some(200));
        let to = ok.header(&HeaderName::To).unwrap().to_string();
        let target = uri_of(ok.values(&HeaderName::Contact)[0]);
        // The caller's route set: the Record-Route reversed.
        let set: Vec<String> = ok
            .values(&HeaderName::RecordRoute)
            .iter()
            .rev()
            .map(|s| s.to_string())
            .collect();
        assert!(!set.is_empty());
        caller
            .send(request("ACK", &target, &set, &to, 1).as_bytes())
            .await;
        // A strict router's BYE: the first route entry as the Request-URI, the remote target
        // as the last Route (RFC 3261 §12.2.1.1).
        let mut strict: Vec<String> = set[1..].to_vec();
        strict.push(format!("<{target}>"));
        caller
            .send(request("BYE", &uri_of(&set[0]), &strict, &to, 2).as_bytes())
            .await;
        let bye = callee.wait_request("BYE", 5000).await.expect("the BYE");
        assert_eq!(bye.request_uri(), Some(target.as_str()));
        assert!(bye.values(&HeaderName::Route).is_empty(), "{:?}", bye.values(&HeaderName::Route));
        callee.respond(&bye, 200, "OK", "mt").await;
        let done = caller.recv_final(5000).await.expect("the BYE's 200");
        assert_eq!(done.status(), Some(200));
    })
    .await;
}

/// IPv6 end to end: three nodes whose SIP listens on ::1, phones on ::1. Registration with
/// digest, a call from node 0 to a callee registered at node 2 (so it crosses the mesh), the
/// Record-Route entries and Vias naming the nodes in brackets, an in-dialog BYE back along
/// the route set, and the dialog gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_across_the_mesh_over_ipv6() {
    within(120, async {
        let mesh = mesh_with_users(3, PHONES, |c| {
            c.sip_listen = "[::1]:0".parse().unwrap();
            c.throttle.trusted.push("::1".parse().unwrap());
        })
        .await;
        for i in 0..3 {
            assert!(sip(&mesh, i).is_ipv6());
        }
        let mut alice = Ua::new("alice", sip(&mesh, 0)).await;
        let mut bob = Ua::new("bob", sip(&mesh, 2)).await;
        assert!(alice.contact().contains("@[::1]:"), "{}", alice.contact());
        assert_eq!(alice.register("a-pw").await, 200);
        assert_eq!(bob.register("b-pw").await, 200);
        let call_id = format!("{}@alice", token());
        invite_with_auth(&mut alice, "bob", "a-pw", &call_id, "atag").await;
        let inv = bob
            .wait_request("INVITE", 5000)
            .await
            .expect("bob rings over IPv6");
        let rr = hvals(&inv, &HeaderName::RecordRoute);
        assert_eq!(rr.len(), 2, "{rr:?}");
        assert!(rr.iter().all(|r| r.contains("[::1]:")), "{rr:?}");
        let vias = hvals(&inv, &HeaderName::Via);
        assert!(vias[0].contains("[::1]:"), "{vias:?}");
        bob.send(&bob.answer(&inv, 200, "OK", "btag")).await;
        let ok = alice
            .wait_response(200, "INVITE", 5000)
            .await
            .expect("answered");
        let leg = CallerLeg::of_answer(&ok, &call_id);
        alice.send(&leg.request(&alice, "ACK", 2)).await;
        assert!(
            bob.wait_request("ACK", 5000).await.is_some(),
            "the ACK arrives"
        );
        alice.send(&leg.request(&alice, "BYE", 3)).await;
        let bye = bob
            .wait_request("BYE", 5000)
            .await
            .expect("the BYE arrives");
        bob.send(&bob.answer(&bye, 200, "OK", "btag")).await;
        assert!(alice.wait_response(200, "BYE", 5000).await.is_some());
        let http = mesh.node(0).node().unwrap().http_addr().unwrap();
        eventually(10, "the dialog is gone", || async {
            http_get(format!("http://{http}/v1/dialogs")).await.1["dialogs"]
                .as_array()
                .is_some_and(|d| d.is_empty())
        })
        .await;
    })
    .await;
}

/// A UDP phone behind a NAT registers a private contact (192.168.x) from another address (the
/// NAT's). Calls to it go to the address its REGISTER came from, with the contact as the
/// Request-URI — locally and across the mesh — and in-dialog requests follow; a contact on a
/// public or loopback address is still taken as given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_behind_a_nat_is_reached_where_it_registered_from() {
    within(120, async {
        let mesh = mesh_with_users(3, PHONES, |_| {}).await;
        // bob at node 2, his contact an unreachable private address.
        let mut bob = Ua::new("bob", sip(&mesh, 2)).await;
        let private = "<sip:bob@192.168.77.2:5060>";
        let mut reg = Register::new("bob", private);
        let ok = register(&mut bob.c, sip(&mesh, 2), &mut reg, "b-pw").await;
        assert_eq!(ok.status(), Some(200));
        for (caller_node, tag) in [(0usize, "far"), (2, "near")] {
            let mut alice = Ua::new("alice", sip(&mesh, caller_node)).await;
            assert_eq!(alice.register("a-pw").await, 200);
            let call_id = format!("{}@{tag}", token());
            invite_with_auth(&mut alice, "bob", "a-pw", &call_id, tag).await;
            let inv = bob
                .wait_request("INVITE", 5000)
                .await
                .unwrap_or_else(|| panic!("bob behind the NAT rings ({tag})"));
            assert_eq!(inv.request_uri(), Some("sip:bob@192.168.77.2:5060"));
            bob.send(&bob.answer(&inv, 200, "OK", "btag")).await;
            let ok = alice
                .wait_response(200, "INVITE", 5000)
                .await
                .expect("answered");
            let leg = CallerLeg::of_answer(&ok, &call_id);
            alice.send(&leg.request(&alice, "ACK", 2)).await;
            assert!(bob.wait_request("ACK", 5000).await.is_some(), "ACK ({tag})");
            alice.send(&leg.request(&alice, "BYE", 3)).await;
            let bye = bob
                .wait_request("BYE", 5000)
                .await
                .expect("the BYE reaches bob");
            bob.send(&bob.answer(&bye, 200, "OK", "btag")).await;
            assert!(alice.wait_response(200, "BYE", 5000).await.is_some());
        }
    })
    .await;
}

/// RFC 3327 and §16.6 step 7: a phone registered through an edge proxy (a trusted source,
/// with Path) is reached through that proxy; and when its Path names a strict router (no
/// `lr`), the proxy puts that URI in the Request-URI and the Request-URI (the phone's contact)
/// in the last Route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_toward_a_strict_router_carries_its_request_uri_in_the_last_route() {
    within(120, async {
        let mesh = mesh_with_users(1, &[("olga", "pw"), ("pat", "pw")], |c| {
            c.auth_invites = false;
            c.throttle.trusted = vec!["127.0.0.7".parse().unwrap()];
        })
        .await;
        let server = sip(&mesh, 0);
        // The edge proxy at 127.0.0.7, relaying olga's REGISTER with its strict-router Path.
        let mut edge = Client::udp_from("127.0.0.7", server).await;
        let edge_uri = format!("sip:{}", edge.local());
        let contact = "sip:olga@192.0.2.50:5070";
        let mut reg = Register::new("olga", &format!("<{contact}>"));
        reg.extra = format!(
            "Supported: path\r\nVia: SIP/2.0/UDP 192.0.2.50:5070;branch=z9hG4bKphone\r\nPath: <{edge_uri}>\r\n"
        );
        let ok = register(&mut edge, server, &mut reg, "pw").await;
        assert_eq!(ok.status(), Some(200), "{:?}", ok.start);
        assert_eq!(hvals(&ok, &HeaderName::Path), vec![format!("<{edge_uri}>")]);
        // pat calls olga: the INVITE goes to the edge, strict-routed.
        let mut pat = Ua::new("pat", server).await;
        assert_eq!(pat.register("pw").await, 200);
        let call_id = format!("{}@strict", token());
        pat.send(&pat.invite("olga", &call_id, "pt", 1, None)).await;
        let inv = loop {
            let raw = edge.recv_raw(5000).await.expect("the INVITE reaches the edge proxy");
            let m = Message::parse(&raw, false).unwrap();
            if m.method().is_some_and(|x| x.as_str() == "INVITE") {
                break m;
            }
        };
        assert_eq!(inv.request_uri(), Some(edge_uri.as_str()));
        let routes = hvals(&inv, &HeaderName::Route);
        assert_eq!(
            routes.last().map(|r| uri_of(r)),
            Some(contact.to_string()),
            "{routes:?}"
        );
        assert!(
            !routes.iter().any(|r| uri_of(r) == edge_uri),
            "the strict router's URI left the Route set: {routes:?}"
        );
    })
    .await;
}
