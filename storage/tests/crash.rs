//! Crash test, sled-style: a child process writes under the sync-before-ack policy and prints
//! each acknowledged key; the parent kills it with SIGKILL at a random moment, reopens the
//! keyspace and checks that every acknowledged write is there. Repeated over several rounds on
//! the same directory, so recovery of an already-recovered store is tested too.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::Rng;
use sipmesh_storage::{Keyspace, KeyspaceConfig, Mutation, SyncPolicy, TableSchema};

const CHILD_ENV: &str = "SIPMESH_CRASH_CHILD";
const ROUNDS: usize = 6;

fn tables() -> Vec<TableSchema> {
    vec![TableSchema::new(
        1,
        "registrations",
        "aor",
        &["contact", "expires"],
    )]
}

fn open(dir: &Path) -> Keyspace {
    let config = KeyspaceConfig {
        sync: SyncPolicy::SyncBeforeAck,
        ..KeyspaceConfig::default()
    };
    Keyspace::open_sled(dir, tables(), config).expect("open keyspace")
}

fn child(dir: &Path, start: u64) {
    let ks = open(dir);
    let out = std::io::stdout();
    let mut out = out.lock();
    for i in start.. {
        let m = Mutation::new(1, format!("user{i}").into_bytes()).upsert(
            b"",
            [
                ("contact", format!("sip:{i}@127.0.0.1").into_bytes()),
                ("expires", vec![7; 40]),
            ],
            ks.now(),
            None,
        );
        ks.apply(&m).expect("apply");
        writeln!(out, "{i}").expect("stdout");
        out.flush().expect("flush");
    }
}

fn main() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        let (dir, start) = spec.split_once('|').expect("dir|start");
        child(Path::new(dir), start.parse().expect("start"));
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rng = rand::thread_rng();
    let mut next = 0u64;
    let mut all_acked: Vec<u64> = Vec::new();
    let started = Instant::now();
    for round in 0..ROUNDS {
        let mut child = Command::new(std::env::current_exe().expect("exe"))
            .env(CHILD_ENV, format!("{}|{next}", dir.path().display()))
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("stdout");
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .filter_map(|l| l.parse::<u64>().ok())
                .collect::<Vec<u64>>()
        });
        // Wait until the child has acknowledged something, then a random extra moment.
        std::thread::sleep(Duration::from_millis(rng.gen_range(300..1200)));
        child.kill().expect("kill");
        child.wait().expect("wait");
        let acked = reader.join().expect("reader");
        let ks = open(dir.path());
        all_acked.extend(acked.iter().copied());
        for &i in &all_acked {
            let row = ks
                .read_row(1, format!("user{i}").as_bytes(), b"")
                .expect("read")
                .unwrap_or_else(|| panic!("round {round}: acknowledged write user{i} lost"));
            assert_eq!(
                row.get("contact"),
                Some(format!("sip:{i}@127.0.0.1").as_bytes())
            );
        }
        drop(ks);
        next = acked.last().map(|l| l + 1).unwrap_or(next).max(next);
        // Anything the child wrote but did not acknowledge may or may not be there; both are fine.
        next += 1_000;
        println!(
            "crash round {round}: {} acknowledged writes survived SIGKILL",
            acked.len()
        );
    }
    let acked_total = all_acked.len();
    assert!(acked_total > 0, "the child never acknowledged a write");
    println!(
        "crash test: {ROUNDS} rounds, {acked_total} acknowledged writes, all recovered ({:?})",
        started.elapsed()
    );
}
