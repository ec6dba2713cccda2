//! Bad input: 30+ malformed messages each get their fault's status (or are dropped), limits hold
//! (oversize messages, header floods, slow and idle TCP senders, connection floods), and the
//! node keeps answering.

mod common;

use std::time::Duration;

use common::*;
use sipmesh::sip::message::Message;
use sipmesh::LocalMesh;

/// A well-formed OPTIONS to a user (so it would be routed), to be broken in one place.
fn base(via: &str) -> String {
    format!(
        "OPTIONS sip:nobody@example.com SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\nFrom: <sip:a@example.com>;tag=1\r\nTo: <sip:nobody@example.com>\r\nCall-ID: CALLID\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
}

/// (name, message, expected status or None for a drop)
fn cases(via: &str) -> Vec<(&'static str, String, Option<u16>)> {
    let ok = base(via);
    let sub = |from: &str, to: &str| ok.replacen(from, to, 1);
    vec![
        ("control: well formed", ok.clone(), Some(404)),
        (
            "version 3.0",
            sub(" SIP/2.0\r\n", " SIP/3.0\r\n"),
            Some(505),
        ),
        (
            "lowercase version",
            sub(" SIP/2.0\r\n", " sip/2.0\r\n"),
            Some(400),
        ),
        (
            "two spaces in request line",
            sub("OPTIONS sip", "OPTIONS  sip"),
            Some(400),
        ),
        ("no version", sub(" SIP/2.0\r\n", "\r\n"), Some(400)),
        (
            "method with bad char",
            sub("OPTIONS sip", "OPT{ONS sip"),
            Some(400),
        ),
        (
            "R-URI in brackets",
            sub("sip:nobody@example.com SIP", "<sip:nobody@example.com> SIP"),
            Some(400),
        ),
        (
            "unknown R-URI scheme",
            sub("sip:nobody@example.com SIP", "xyz:nobody SIP"),
            Some(416),
        ),
        (
            "R-URI with headers",
            sub(
                "sip:nobody@example.com SIP",
                "sip:nobody@example.com?Subject=x SIP",
            ),
            Some(400),
        ),
        (
            "R-URI bad port",
            sub(
                "sip:nobody@example.com SIP",
                "sip:nobody@example.com:99999 SIP",
            ),
            Some(400),
        ),
        (
            "R-URI empty host",
            sub("sip:nobody@example.com SIP", "sip:nobody@ SIP"),
            Some(400),
        ),
        (
            "missing From",
            sub("From: <sip:a@example.com>;tag=1\r\n", ""),
            Some(400),
        ),
        (
            "missing To",
            sub("To: <sip:nobody@example.com>\r\n", ""),
            Some(400),
        ),
        ("missing Call-ID", sub("Call-ID: CALLID\r\n", ""), Some(400)),
        ("missing CSeq", sub("CSeq: 1 OPTIONS\r\n", ""), Some(400)),
        (
            "two CSeq",
            sub(
                "CSeq: 1 OPTIONS\r\n",
                "CSeq: 1 OPTIONS\r\nCSeq: 2 OPTIONS\r\n",
            ),
            Some(400),
        ),
        (
            "two Call-ID",
            sub("Call-ID: CALLID\r\n", "Call-ID: CALLID\r\ni: other\r\n"),
            Some(400),
        ),
        (
            "CSeq method mismatch",
            sub("CSeq: 1 OPTIONS", "CSeq: 1 INVITE"),
            Some(400),
        ),
        (
            "CSeq not a number",
            sub("CSeq: 1 OPTIONS", "CSeq: one OPTIONS"),
            Some(400),
        ),
        (
            "CSeq too big",
            sub("CSeq: 1 OPTIONS", "CSeq: 2147483648 OPTIONS"),
            Some(400),
        ),
        (
            "Max-Forwards 256",
            sub("Max-Forwards: 70", "Max-Forwards: 256"),
            Some(400),
        ),
        (
            "Max-Forwards text",
            sub("Max-Forwards: 70", "Max-Forwards: seventy"),
            Some(400),
        ),
        (
            "Max-Forwards 0",
            sub("Max-Forwards: 70", "Max-Forwards: 0"),
            Some(483),
        ),
        (
            "Proxy-Require",
            sub(
                "Max-Forwards: 70\r\n",
                "Max-Forwards: 70\r\nProxy-Require: teleport\r\n",
            ),
            Some(420),
        ),
        (
            "unterminated quote in From",
            sub(
                "From: <sip:a@example.com>",
                "From: \"Bob <sip:a@example.com>",
            ),
            Some(400),
        ),
        (
            "From without brackets but params in URI",
            sub("From: <sip:a@example.com>", "From: sip:a@example.com?x=y"),
            Some(400),
        ),
        (
            "To with space in URI",
            sub(
                "To: <sip:nobody@example.com>",
                "To: <sip:no body@example.com>",
            ),
            Some(400),
        ),
        (
            "Content-Length negative",
            sub("Content-Length: 0", "Content-Length: -1"),
            Some(400),
        ),
        (
            "Content-Length text",
            sub("Content-Length: 0", "Content-Length: zero"),
            Some(400),
        ),
        (
            "Content-Length beyond datagram",
            sub("Content-Length: 0", "Content-Length: 500"),
            Some(400),
        ),
        (
            "two different Content-Length",
            sub("Content-Length: 0", "Content-Length: 0\r\nl: 4"),
            Some(400),
        ),
        (
            "header without colon",
            sub(
                "Max-Forwards: 70\r\n",
                "Max-Forwards: 70\r\nBroken header line\r\n",
            ),
            Some(400),
        ),
        (
            "header name with space",
            sub(
                "Max-Forwards: 70\r\n",
                "Max-Forwards: 70\r\nBad Name: x\r\n",
            ),
            Some(400),
        ),
        (
            "Expires out of range",
            sub(
                "Max-Forwards: 70\r\n",
                "Max-Forwards: 70\r\nExpires: 99999999999\r\n",
            ),
            Some(400),
        ),
        (
            "Contact malformed",
            sub(
                "Max-Forwards: 70\r\n",
                "Max-Forwards: 70\r\nContact: <sip:x@y\r\n",
            ),
            Some(400),
        ),
        (
            "continuation before any header",
            ok.replacen("\r\nVia:", "\r\n folded\r\nVia:", 1),
            Some(400),
        ),
        (
            "non-UTF-8 header value",
            sub("Call-ID: CALLID", "Call-ID: \u{fffd}CALLID").replace('\u{fffd}', "\u{ff}"),
            Some(400),
        ),
        (
            "response with bad code",
            "SIP/2.0 1000 Huge\r\nVia: X\r\n\r\n".to_string(),
            None,
        ),
        (
            "response to nobody",
            ok.replacen(
                "OPTIONS sip:nobody@example.com SIP/2.0",
                "SIP/2.0 200 OK",
                1,
            ),
            None,
        ),
        ("no Via at all", sub(&format!("Via: {via}\r\n"), ""), None),
        (
            "binary junk",
            "\u{1}\u{2}\u{3}garbage\r\n\r\n".to_string(),
            None,
        ),
        (
            "no header end",
            "OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/UDP h".to_string(),
            None,
        ),
    ]
}

fn fix_non_utf8(name: &str, msg: String) -> Vec<u8> {
    let mut bytes = msg.into_bytes();
    if name == "non-UTF-8 header value" {
        // replace the UTF-8 encoding of U+00FF with a lone 0xFF byte
        if let Some(i) = bytes.windows(2).position(|w| w == [0xC3, 0xBF]) {
            bytes.splice(i..i + 2, [0xFF]);
        }
    }
    bytes
}

async fn one_node(max_connections: usize) -> LocalMesh {
    LocalMesh::builder()
        .nodes(1)
        .configure(move |c| {
            c.limits.message_timeout = Duration::from_secs(1);
            c.limits.idle_timeout = Duration::from_secs(2);
            c.limits.max_connections = max_connections;
            // The cases address nobody@example.com, without credentials.
            c.policy.domains = vec!["example.com".into()];
            c.policy.auth_methods.clear();
        })
        .start()
        .await
        .unwrap()
}

async fn still_answers(server: std::net::SocketAddr) {
    let mut c = Client::udp(server).await;
    let via = format!("SIP/2.0/UDP {};branch=z9hG4bK{};rport", c.local(), token());
    let msg = base(&via)
        .replace("CALLID", &token())
        .replace("sip:nobody@example.com SIP", &format!("sip:{server} SIP"));
    let r = c.request(&msg).await.expect("the node stopped answering");
    assert_eq!(r.status(), Some(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_get_their_fault() {
    within(180, async {
        let mesh = one_node(1024).await;
        let server = mesh.node(0).node().unwrap().sip_addr();
        let mut n = 0;
        for transport in ["UDP", "TCP"] {
            for (name, msg, expect) in cases("VIA") {
                // TCP frames by Content-Length: the datagram-only cases do not apply.
                if transport == "TCP"
                    && (name.contains("Content-Length")
                        || name == "no header end"
                        || name == "binary junk")
                {
                    continue;
                }
                let mut c = if transport == "UDP" {
                    Client::udp(server).await
                } else {
                    Client::tcp(server).await
                };
                let via = format!(
                    "SIP/2.0/{transport} {};branch=z9hG4bK{};rport",
                    c.local(),
                    token()
                );
                let msg = msg.replace("VIA", &via).replace("CALLID", &token());
                c.send(&fix_non_utf8(name, msg)).await;
                let answer = c.recv_raw(if expect.is_some() { 5000 } else { 700 }).await;
                let code = answer
                    .and_then(|b| Message::parse(&b, true).ok())
                    .and_then(|m| m.status());
                assert_eq!(code, expect, "{name} over {transport}");
                n += 1;
            }
        }
        assert!(n >= 60, "only {n} cases ran");
        still_answers(server).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_hold_oversize_floods_slow_and_idle_senders() {
    within(180, async {
        let mesh = one_node(32).await;
        let node = mesh.node(0).node().unwrap();
        let server = node.sip_addr();
        // Oversize datagram: dropped.
        let mut c = Client::udp(server).await;
        let via = format!("SIP/2.0/UDP {};branch=z9hG4bK{};rport", c.local(), token());
        let big = base(&via).replace(
            "Content-Length: 0\r\n",
            &format!("X-Pad: {}\r\nContent-Length: 0\r\n", "a".repeat(65_000)),
        );
        c.send(big.as_bytes()).await;
        assert!(
            c.recv_raw(700).await.is_none(),
            "an oversize message was answered"
        );
        // Header flood: 400.
        let flood: String = (0..300).map(|i| format!("X-H{i}: v\r\n")).collect();
        let via = format!("SIP/2.0/UDP {};branch=z9hG4bK{};rport", c.local(), token());
        let m = base(&via).replace("CALLID", &token()).replace(
            "Max-Forwards: 70\r\n",
            &format!("Max-Forwards: 70\r\n{flood}"),
        );
        c.send(m.as_bytes()).await;
        assert!(
            c.recv_raw(700).await.is_none(),
            "a header flood was answered"
        );
        // Slow TCP sender: half a message, then silence: closed after the message timeout.
        let mut slow = Client::tcp(server).await;
        slow.send(b"OPTIONS sip:x@example.com SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bKs\r\n")
            .await;
        let started = std::time::Instant::now();
        assert!(slow.recv_raw(5000).await.is_none());
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "slow sender kept its connection {:?}",
            started.elapsed()
        );
        // Endless stream without a header end: closed once past the size limit.
        let mut endless = Client::tcp(server).await;
        let chunk = vec![b'a'; 16 * 1024];
        for _ in 0..5 {
            endless.send(&chunk).await;
        }
        assert!(endless.recv_raw(3000).await.is_none());
        // Idle connections are closed; a connection flood beyond the limit is refused.
        let mut conns = Vec::new();
        for _ in 0..40 {
            if let Ok(s) = tokio::net::TcpStream::connect(server).await {
                conns.push(s);
            }
        }
        eventually(10, "connections beyond the limit are refused", || {
            let refused = node.counter("sip_tcp_refused").unwrap();
            async move { refused >= 8 }
        })
        .await;
        eventually(15, "idle connections are closed", || {
            let open = node.tcp_connections();
            async move { open == 0 }
        })
        .await;
        drop(conns);
        still_answers(server).await;
    })
    .await;
}
