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
