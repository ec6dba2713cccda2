//! A bounded mutation fuzz on stable Rust: every seed (RFC 4475 corpus and public fuzzing seeds)
//! is mutated many times (bit flips, byte insertions and deletions, splices of dictionary tokens)
//! and pushed through the whole parse + validate path, which must never panic. The coverage-
//! guided fuzzer (cargo fuzz, fuzz/) goes deeper; this runs in every test run.

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

#[test]
fn mutated_seeds_never_panic_the_parser() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut seeds = Vec::new();
    files(&root, &mut seeds);
    assert!(seeds.len() > 90, "corpus missing");
    let tokens: Vec<&[u8]> = vec![
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
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5EED_4475);
    let mut runs = 0;
    for seed in &seeds {
        sipmesh::sip::fuzz_one(seed);
        for _ in 0..MUTATIONS_PER_SEED {
            let mut m = seed.clone();
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
                        let t = tokens[rng.gen_range(0..tokens.len())];
                        m.splice(at..at, t.iter().copied());
                    }
                    _ => {
                        let end = (at + rng.gen_range(0..64)).min(m.len());
                        m.drain(at..end);
                    }
                }
            }
            sipmesh::sip::fuzz_one(&m);
            runs += 1;
        }
    }
    assert!(runs > 25_000);
}
