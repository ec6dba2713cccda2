//! The RFC 4475 torture messages (tests/corpus/rfc4475, byte-exact) over UDP and TCP, each
//! checked against the outcome EXPECTED.md suggests for a proxy/registrar; after every message
//! the node must still answer an OPTIONS. Also every public fuzzing seed (tests/corpus/seeds),
//! which must never crash or wedge the node.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use sipmesh::sip::message::{HeaderName, Message};
use sipmesh::LocalMesh;

#[derive(Debug, Clone, Copy)]
enum Expect {
    /// A response with one of these codes.
    Code(&'static [u16]),
    /// No response (a response to nobody, or no Via to answer to).
    Drop,
    /// Forwarded to its callee's binding at 127.0.0.1:5080 with the body byte-exact; the answer
    /// from there comes back. Its preloaded Route (to that address, outside the mesh) is taken
    /// out first: a phone's Route toward a foreign host is refused (403 Not relaying).
    Forwarded,
    /// A REGISTER: 401, then 200 once credentials for `user` are added, listing `contacts`.
    Register(&'static str, &'static [&'static str]),
}

use Expect::*;

const CASES: &[(&str, Expect)] = &[
    // An in-dialog request from a phone whose Route names a host outside the mesh: the node is
    // no open relay.
    ("wsinv", Code(&[403])),
    ("intmeth", Code(&[404, 480])),
    ("esc01", Code(&[404, 480])),
    (
        "escnull",
        Register(
            "null-%00-null",
            &["sip:%00@host5.example.com", "sip:%00%00@host5.example.com"],
        ),
    ),
    ("esc02", Code(&[501, 404, 403])), // R-URI registrar.example.com: not a mesh domain
    ("lwsdisp", Code(&[404, 480])),
    ("longreq", Code(&[404, 480])),
    ("dblreq", Code(&[401])),
    ("semiuri", Code(&[404, 480])),
    ("transports", Code(&[404, 480])),
    ("mpart01", Forwarded), // kumiko@example.org, registered at 127.0.0.1:5080
    ("unreason", Drop),
    ("noreason", Drop),
    ("badinv01", Code(&[400])),
    ("clerr", Code(&[400])),
    ("ncl", Code(&[400])),
    ("scalar02", Code(&[400])),
    ("scalarlg", Drop),
    ("quotbal", Code(&[400])),
    ("ltgtruri", Code(&[400])),
    ("lwsruri", Code(&[400])),
    ("lwsstart", Code(&[400])),
    ("trws", Code(&[400])),
    ("escruri", Code(&[400])),
    ("baddate", Code(&[404, 480])),
    ("regbadct", Code(&[400])),
    ("badaspec", Code(&[400])),
    ("baddn", Code(&[400])),
    ("badvers", Code(&[505])),
    ("mismatch01", Code(&[400])),
    ("mismatch02", Code(&[501, 400])),
    ("bigcode", Drop),
    ("badbranch", Code(&[400])),
    ("insuf", Code(&[400])),
    ("unkscm", Code(&[416])),
    ("novelsc", Code(&[416])),
    ("unksm2", Code(&[400])),
    ("bext01", Code(&[420])),
    ("invut", Code(&[404, 480])),
    ("regaut01", Code(&[401])),
    ("multi01", Code(&[400])),
    ("mcl01", Code(&[400])),
    ("bcast", Drop),
    ("zeromf", Code(&[483])),
    ("sdp01", Code(&[404, 480])),
    ("inv2543", Code(&[404, 480])),
    ("test", Drop),
    // Registrations last: they bind users that the routing cases above address.
    (
        "cparam01",
        Register("watson", &["sip:+19725552222@gw1.example.net"]),
    ),
    (
        "cparam02",
        Register("watson", &["sip:+19725552222@gw1.example.net;unknownparam"]),
    ),
    (
        "regescrt",
        Register(
            "user",
            &["sip:user@example.com?Route=%3Csip:sip.example.com%3E"],
        ),
    ),
];

/// Files whose framing is broken on a stream: the connection is closed, nothing is answered.
const TCP_UNFRAMEABLE: &[&str] = &["clerr", "ncl", "mcl01", "inv2543", "baddn"];

fn corpus(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus/rfc4475")
        .join(format!("{name}.dat"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

async fn options_answered(server: std::net::SocketAddr) {
    let mut c = Client::udp(server).await;
    let msg = format!(
        "OPTIONS sip:{server} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bK{};rport\r\nMax-Forwards: 70\r\nFrom: <sip:probe@test>;tag={}\r\nTo: <sip:{server}>\r\nCall-ID: {}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
        c.local(),
        token(),
        token(),
        token()
    );
    let r = c
        .request(&msg)
        .await
        .expect("the node stopped answering OPTIONS");
    assert_eq!(r.status(), Some(200));
}

/// Insert credentials after the start line and give the request a new branch.
fn with_credentials(raw: &[u8], authorization: &str, name: &str) -> Vec<u8> {
    let text = String::from_utf8_lossy(raw)
        .replace("branch=z9hG4bKkdjuw", &format!("branch=z9hG4bKkdjuw{name}"));
    let first = text.find("\r\n").unwrap() + 2;
    format!(
        "{}Authorization: {authorization}\r\n{}",
        &text[..first],
        &text[first..]
    )
    .into_bytes()
}

fn contacts(m: &Message) -> Vec<String> {
    m.values(&HeaderName::Contact)
        .iter()
        .map(|c| {
            c.trim_start_matches('<')
                .split('>')
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

async fn run_case(mesh: &LocalMesh, name: &str, expect: Expect, tcp: bool) {
    let server = mesh.node(0).node().unwrap().sip_addr();
    let mut raw = corpus(name);
    if matches!(expect, Forwarded) {
        let route = b"Route: <sip:127.0.0.1:5080>\r\n";
        let at = raw
            .windows(route.len())
            .position(|w| w == route)
            .expect("mpart01 has its Route");
        raw.drain(at..at + route.len());
        let mut c = Client::udp(server).await;
        let mut reg = common::Register::new("kumiko", "<sip:kumiko@127.0.0.1:5080>");
        let ok = register(&mut c, server, &mut reg, "torture").await;
        assert_eq!(ok.status(), Some(200), "kumiko registers");
    }
    let next_hop = match expect {
        Forwarded => Some(
            tokio::net::UdpSocket::bind("127.0.0.1:5080")
                .await
                .expect("port 5080 for mpart01"),
        ),
        _ => None,
    };
    let mut c = if tcp {
        Client::tcp(server).await
    } else {
        Client::udp(server).await
    };
    c.send(&raw).await;
    if let Some(hop) = next_hop {
        let mut buf = vec![0u8; 65536];
        let (n, from) = tokio::time::timeout(Duration::from_secs(5), hop.recv_from(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("{name}: not forwarded"))
            .unwrap();
        let fwd = Message::parse(&buf[..n], false).unwrap();
        let orig = Message::parse(&raw, false).unwrap();
        assert_eq!(
            fwd.body(),
            orig.body(),
            "{name}: body changed when forwarded"
        );
        assert_eq!(fwd.body().len(), 553);
        let vias: Vec<String> = fwd
            .values(&HeaderName::Via)
            .iter()
            .map(|v| format!("Via: {v}\r\n"))
            .collect();
        let answer = format!(
            "SIP/2.0 200 OK\r\n{}From: {}\r\nTo: {};tag=k\r\nCall-ID: {}\r\nCSeq: {}\r\nContent-Length: 0\r\n\r\n",
            vias.concat(),
            fwd.header(&HeaderName::From).unwrap(),
            fwd.header(&HeaderName::To).unwrap(),
            fwd.header(&HeaderName::CallId).unwrap(),
            fwd.header(&HeaderName::CSeq).unwrap()
        );
        hop.send_to(answer.as_bytes(), from).await.unwrap();
        let got = c
            .recv_final(5000)
            .await
            .unwrap_or_else(|| panic!("{name}: the answer did not come back"));
        assert_eq!(got.status(), Some(200), "{name}");
        return;
    }
    let unframeable = tcp && TCP_UNFRAMEABLE.contains(&name);
    let wait = if matches!(expect, Drop) || unframeable {
        1500
    } else {
        5000
    };
    let mut first = None;
    while let Some(b) = c.recv_raw(wait).await {
        let m =
            Message::parse(&b, true).unwrap_or_else(|f| panic!("{name}: unparseable answer: {f}"));
        if m.status().is_some_and(|s| s < 200) {
            continue; // 100 Trying for a forwarded INVITE
        }
        first = Some(m);
        break;
    }
    if tcp && name == "dblreq" {
        // On a stream the bytes are two messages: the REGISTER (401) and the INVITE (404), in
        // either order; the junk after the INVITE's body then closes the connection.
        let second = c
            .recv_raw(5000)
            .await
            .and_then(|b| Message::parse(&b, true).ok());
        let mut codes: Vec<u16> = [first, second]
            .into_iter()
            .flatten()
            .filter_map(|m| m.status())
            .collect();
        codes.sort();
        assert_eq!(codes, vec![401, 404], "{name} over TCP");
        return;
    }
    if unframeable {
        assert!(
            first.is_none(),
            "{name} over TCP: expected the connection to close, got {:?}",
            first.map(|m| m.status())
        );
        return;
    }
    match expect {
        Forwarded => unreachable!("handled above"),
        Drop => assert!(
            first.is_none(),
            "{name}: expected no answer, got {:?}",
            first.map(|m| m.status())
        ),
        Code(codes) => {
            let m = first.unwrap_or_else(|| panic!("{name}: no answer"));
            let got = m.status();
            assert!(
                got.is_some_and(|g| codes.contains(&g)),
                "{name}: expected {codes:?}, got {:?}",
                m.start
            );
        }
        Register(user, want) => {
            let challenge = first.unwrap_or_else(|| panic!("{name}: no answer"));
            assert_eq!(challenge.status(), Some(401), "{name}");
            let auth = digest(
                &challenge,
                &HeaderName::Other("www-authenticate".into()),
                user,
                "torture",
                "REGISTER",
                "sip:example.com",
                1,
            );
            c.send(&with_credentials(&raw, &auth, name)).await;
            let ok = c
                .recv_final(5000)
                .await
                .unwrap_or_else(|| panic!("{name}: no answer to the authenticated REGISTER"));
            assert_eq!(ok.status(), Some(200), "{name}");
            let got = contacts(&ok);
            for w in want {
                assert!(
                    got.iter().any(|g| g == w),
                    "{name}: binding {w} not in {got:?}"
                );
            }
            if name == "cparam01" {
                assert!(
                    !got.iter().any(|g| g.contains("unknownparam")
                        && g.starts_with("sip:+1972")
                        && !got.contains(
                            &"sip:+19725552222@gw1.example.net;unknownparam".to_string()
                        )),
                    "{name}: contact-param leaked into the URI"
                );
            }
        }
    }
}

async fn torture_mesh() -> LocalMesh {
    let mesh = LocalMesh::builder()
        .nodes(1)
        .configure(|c| {
            c.force_rport = true;
            // Route INVITEs by the Request-URI (the torture messages carry no credentials).
            c.auth_invites = false;
            c.limits.message_timeout = Duration::from_millis(800);
            // The torture messages address users at these domains.
            c.policy.domains = ["example.com", "example.org", "example.net"]
                .map(String::from)
                .to_vec();
            c.policy.auth_methods.clear();
        })
        .start()
        .await
        .unwrap();
    for user in ["null-%00-null", "watson", "user", "kumiko"] {
        mesh.node(0)
            .run(move |n| async move { n.add_user(user, "torture").await })
            .await
            .unwrap()
            .unwrap();
    }
    mesh
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc4475_over_udp() {
    within(240, async {
        let mesh = torture_mesh().await;
        let server = mesh.node(0).node().unwrap().sip_addr();
        for (name, expect) in CASES {
            run_case(&mesh, name, *expect, false).await;
            options_answered(server).await;
        }
        // escnull: two distinct bindings; cparam01's contact-param is not a URI parameter.
        let http = mesh.node(0).node().unwrap().http_addr().unwrap();
        let (_, v) = http_get(format!("http://{http}/v1/registrations/null-%2500-null")).await;
        assert_eq!(v["bindings"].as_array().map(|b| b.len()), Some(2), "{v}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc4475_over_tcp() {
    within(240, async {
        let mesh = torture_mesh().await;
        let server = mesh.node(0).node().unwrap().sip_addr();
        for (name, expect) in CASES {
            run_case(&mesh, name, *expect, true).await;
            options_answered(server).await;
        }
    })
    .await;
}

fn seed_files() -> Vec<std::path::PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/seeds");
    let mut out = Vec::new();
    let mut stack = vec![root];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().and_then(|e| e.to_str()) != Some("dict") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzzing_seeds_never_wedge_the_node() {
    within(240, async {
        let mesh = torture_mesh().await;
        let server = mesh.node(0).node().unwrap().sip_addr();
        let files = seed_files();
        assert!(files.len() > 40, "seed corpus missing");
        for f in &files {
            let bytes = std::fs::read(f).unwrap();
            let mut u = Client::udp(server).await;
            for chunk in bytes.chunks(60_000) {
                u.send(chunk).await;
            }
            let mut t = Client::tcp(server).await;
            t.send(&bytes).await;
            let _ = t.recv_raw(50).await;
        }
        options_answered(server).await;
        let node = mesh.node(0).node().unwrap();
        assert_eq!(node.counter("sip_parser_panics"), Some(0));
    })
    .await;
}
