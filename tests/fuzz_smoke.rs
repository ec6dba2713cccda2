//! A bounded mutation fuzz on stable Rust: every seed (RFC 4475 corpus and public fuzzing seeds)
//! is mutated many times (bit flips, byte insertions and deletions, splices of dictionary tokens)
//! and pushed through the whole parse + validate path, which must never panic. The coverage-
//! guided fuzzer (cargo fuzz, fuzz/) goes deeper; this runs in every test run. A second test
//! sends mutated requests through a live node (registrar, proxy, transactions, throttle): it
//! must keep answering and never panic.

mod common;

use std::path::Path;

use rand::{Rng, SeedableRng};

const MUTATIONS_PER_SEED: usize = 300;

fn files(dir: &Path, out: &mut Vec<Vec<u8>>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().and_then(|e| e.to_str()) != Some("dict")
            && p.extension().and_then(|e| e.to_str()) != Some("md")
        {
            out.push(std::fs::read(&p).unwrap());
        }
    }
}

const TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\r\n\r\n",
    b";",
    b",",
    b"<",
    b">",
    b"\"",
    b"\\",
    b"%00",
    b"%",
    b":",
    b"@",
    b"[",
    b"]",
    b"Content-Length: 99999\r\n",
    b"l: -1\r\n",
    b"Via: SIP/2.0/UDP [::1]:0;branch=z9hG4bK\r\n",
    b" SIP/2.0",
    b"SIP/2.0 ",
    b"\x00",
    b"\xff",
    b"\xc3",
    b"sip:",
    b"sips:",
    b"tel:",
    b";tag=",
    b";rport",
    b"CSeq: 4294967296 INVITE\r\n",
    b"Max-Forwards: 999\r\n",
    b"\t",
    b"  ",
];

/// A seed mutated 1–5 times: bit flips, byte insertions and deletions, dictionary splices,
/// chunk removals.
fn mutate(rng: &mut rand::rngs::StdRng, seed: &[u8]) -> Vec<u8> {
    let mut m = seed.to_vec();
    for _ in 0..rng.gen_range(1..6) {
        if m.is_empty() {
            m.push(b'A');
        }
        let at = rng.gen_range(0..m.len());
        match rng.gen_range(0..5) {
            0 => m[at] ^= 1 << rng.gen_range(0..8),
            1 => m.insert(at, rng.gen()),
            2 => {
                m.remove(at);
            }
            3 => {
                let t = TOKENS[rng.gen_range(0..TOKENS.len())];
                m.splice(at..at, t.iter().copied());
            }
            _ => {
                let end = (at + rng.gen_range(0..64)).min(m.len());
                m.drain(at..end);
            }
        }
    }
    m
}

#[test]
fn mutated_seeds_never_panic_the_parser() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut seeds = Vec::new();
    files(&root, &mut seeds);
    assert!(seeds.len() > 90, "corpus missing");
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5EED_4475);
    let mut runs = 0;
    for seed in &seeds {
        sipmesh::sip::fuzz_one(seed);
        for _ in 0..MUTATIONS_PER_SEED {
            let m = mutate(&mut rng, seed);
            sipmesh::sip::fuzz_one(&m);
            runs += 1;
        }
    }
    assert!(runs > 25_000);
}

/// Requests that reach the registrar and the proxy once they parse: the templates every
/// mutation starts from, with the node's address and a registered user filled in.
fn templates(node: std::net::SocketAddr) -> Vec<Vec<u8>> {
    let via = "Via: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bKfz1;rport\r\n";
    let common =
        format!("From: <sip:alice@{node}>;tag=f1\r\nCall-ID: fz@x\r\nMax-Forwards: 70\r\n");
    [
        format!("REGISTER sip:{node} SIP/2.0\r\n{via}{common}To: <sip:alice@{node}>\r\nCSeq: 1 REGISTER\r\nContact: <sip:alice@127.0.0.1:5999>;expires=60, <sip:a2@127.0.0.1:5998>;+sip.instance=\"<urn:uuid:1>\";reg-id=1\r\nPath: <sip:p@127.0.0.1;lr>\r\nAuthorization: Digest username=\"alice\", realm=\"sipmesh\", nonce=\"00\", uri=\"sip:{node}\", response=\"00\", qop=auth, nc=00000001, cnonce=\"c\"\r\nContent-Length: 0\r\n\r\n"),
        format!("INVITE sip:bob@{node} SIP/2.0\r\n{via}{common}To: <sip:bob@{node}>\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@127.0.0.1:5999>\r\nProxy-Authorization: Digest username=\"alice\", realm=\"sipmesh\", nonce=\"00\", uri=\"sip:bob@{node}\", response=\"00\"\r\nContent-Type: application/sdp\r\nContent-Length: 4\r\n\r\nv=0\n"),
        format!("BYE sip:bob@127.0.0.1:5998 SIP/2.0\r\n{via}{common}To: <sip:bob@{node}>;tag=t\r\nCSeq: 2 BYE\r\nRoute: <sip:{node};lr;sm=AAAA>, <sip:127.0.0.1:5997;lr>\r\nContent-Length: 0\r\n\r\n"),
        format!("ACK sip:bob@127.0.0.1:5998 SIP/2.0\r\n{via}{common}To: <sip:bob@{node}>;tag=t\r\nCSeq: 1 ACK\r\nRoute: <sip:{node};lr>\r\nContent-Length: 0\r\n\r\n"),
        format!("MESSAGE sip:bob@{node} SIP/2.0\r\n{via}{common}To: <sip:bob@{node}>\r\nCSeq: 1 MESSAGE\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi"),
        format!("CANCEL sip:bob@{node} SIP/2.0\r\n{via}{common}To: <sip:bob@{node}>\r\nCSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n"),
        format!("SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP {node};branch=z9hG4bKsm00000000.1.0000000000\r\n{via}{common}To: <sip:bob@{node}>;tag=t\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"),
    ]
    .into_iter()
    .map(String::into_bytes)
    .collect()
}

/// 3,000 mutated requests and responses through a live node: no panic anywhere (parser,
/// registrar, proxy, transactions), and it still answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_requests_never_panic_a_live_node() {
    common::within(120, async {
        let mesh = common::mesh_with_users(1, common::PHONES, |_| {}).await;
        let node = mesh.node(0).node().unwrap();
        let (sip, http) = (node.sip_addr(), node.http_addr().unwrap());
        let seeds = templates(sip);
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x11FE_4475);
        for i in 0..3000 {
            let seed = &seeds[i % seeds.len()];
            let m = if i % 7 == 0 { seed.clone() } else { mutate(&mut rng, seed) };
            let _ = socket.send_to(&m, sip).await;
            if i % 50 == 49 {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
        let mut c = common::Client::udp(sip).await;
        let options = format!(
            "OPTIONS sip:{sip} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bKok{}\r\nMax-Forwards: 70\r\nFrom: <sip:x@{sip}>;tag=1\r\nTo: <sip:{sip}>\r\nCall-ID: {}@ok\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
            c.local(),
            common::token(),
            common::token()
        );
        let answer = c.request(&options).await.expect("the node still answers");
        assert_eq!(answer.status(), Some(200));
        let metrics = tokio::task::spawn_blocking(move || {
            ureq::get(&format!("http://{http}/metrics")).call().unwrap().into_string().unwrap()
        })
        .await
        .unwrap();
        for name in ["sipmesh_sip_panics_total ", "sipmesh_sip_parser_panics_total "] {
            let line = metrics.lines().find(|l| l.starts_with(name)).unwrap();
            assert!(line.ends_with(" 0"), "{line}");
        }
        // Requests by method and transport, summed.
        let requests: u64 = metrics
            .lines()
            .filter(|l| l.starts_with("sipmesh_sip_requests_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum();
        assert!(requests > 1000, "most mutated requests were requests ({requests})");
    })
    .await;
}
