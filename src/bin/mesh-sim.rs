//! `mesh-sim`: the mesh's membership (`sipmesh_net::swim`, the same SWIM state machine the nodes
//! run) for N nodes in one process, with virtual time and a simulated network that delays, loses
//! and partitions messages. Deterministic for a given `--seed`.
//!
//! ```sh
//! cargo run --release --bin mesh-sim -- --nodes 1000 --seconds 60 --loss 0.01 --kill 10
//! ```
//!
//! Prints one JSON line: messages and bytes per live node per second, the time from a kill until
//! every live node marks the node down (p50/p99 over the killed nodes), live nodes ever marked
//! down (false suspicions), and the time a ring change takes to reach every live node.
//!
//! The run: nodes start with the mesh formed (every node knows every other, as after the
//! persisted ring is loaded), each at a random moment of its first probe period; `--kill` nodes
//! are killed at even intervals over the second quarter of the run; node 0 broadcasts a ring
//! change at the run's midpoint; `--partition F` cuts a fraction F of the nodes off for
//! `--partition-secs` from 60 % of the run (`healed_s`: from the heal until every live node has
//! every other alive again).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::Duration;

use anyhow::{bail, Result};
use clap::Parser;
use rand::{Rng, SeedableRng};
use sipmesh_net::swim::{Output, RingChange, Swim, SwimId, Timer};
use sipmesh_net::PeerId;

#[derive(Parser, Debug)]
#[command(about = "Simulate the mesh's membership for N nodes with virtual time")]
struct Args {
    /// Nodes in the mesh.
    #[arg(long, default_value_t = 100)]
    nodes: usize,
    /// Virtual seconds to run.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Probability that a message is lost (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Nodes to kill during the run.
    #[arg(long, default_value_t = 0)]
    kill: usize,
    /// One-way latency: uniform between this and twice this, ms.
    #[arg(long, default_value_t = 2)]
    latency_ms: u64,
    /// The probe period, ms (the node's heartbeat interval).
    #[arg(long, default_value_t = 500)]
    period_ms: u64,
    /// The suspicion timeout's floor, ms (it grows with log10 N above it).
    #[arg(long, default_value_t = 2000)]
    suspicion_ms: u64,
    /// Fraction of nodes cut off from the rest for `--partition-secs`.
    #[arg(long, default_value_t = 0.0)]
    partition: f64,
    /// How long the partition lasts, s.
    #[arg(long, default_value_t = 10)]
    partition_secs: u64,
    /// Randomness seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// Virtual time, µs.
type Micros = u64;

enum Event {
    Start(usize),
    Deliver {
        to: usize,
        bytes: Vec<u8>,
    },
    Timer(usize, Timer<SwimId>),
    Kill(usize),
    Broadcast,
    /// After a partition: has every live node every other live node alive again?
    Check,
}

struct Queue {
    heap: BinaryHeap<Reverse<(Micros, u64)>>,
    events: HashMap<u64, Event>,
    seq: u64,
}

impl Queue {
    fn push(&mut self, at: Micros, event: Event) {
        self.seq += 1;
        self.heap.push(Reverse((at, self.seq)));
        self.events.insert(self.seq, event);
    }

    fn pop(&mut self) -> Option<(Micros, Event)> {
        let Reverse((at, seq)) = self.heap.pop()?;
        self.events.remove(&seq).map(|e| (at, e))
    }
}

fn peer_of(i: usize, seed: u64) -> PeerId {
    // An identity multihash of an ed25519 public-key protobuf, as a real PeerId is.
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ (i as u64).wrapping_mul(0x9e37_79b9));
    let mut bytes = vec![0x00, 0x24, 0x08, 0x01, 0x12, 0x20];
    bytes.extend((0..32).map(|_| rng.gen::<u8>()));
    PeerId::from_bytes(&bytes).expect("an identity multihash is a PeerId")
}

fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    Some(sorted[idx.min(sorted.len() - 1)])
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.nodes < 2 {
        bail!("--nodes must be at least 2");
    }
    if !(0.0..=1.0).contains(&args.loss) {
        bail!("--loss must be between 0 and 1");
    }
    if !(0.0..1.0).contains(&args.partition) {
        bail!("--partition must be at least 0 and below 1");
    }
    if args.kill >= args.nodes {
        bail!("--kill must be below --nodes");
    }
    if args.seconds == 0 {
        bail!("--seconds must be above 0");
    }
    let n = args.nodes;
    let period = Duration::from_millis(args.period_ms.max(10));
    let suspicion = Duration::from_millis(args.suspicion_ms.max(10));
    let end: Micros = args.seconds * 1_000_000;
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);

    let ids: Vec<SwimId> = (0..n)
        .map(|i| {
            let addr = format!(
                "/ip4/10.{}.{}.{}/tcp/4001",
                i >> 16,
                (i >> 8) & 255,
                i & 255
            );
            let addr: sipmesh_net::Multiaddr = addr.parse().expect("a valid multiaddr");
            SwimId::new(peer_of(i, args.seed), 1, addr.to_vec())
        })
        .collect();
    let index: HashMap<PeerId, usize> = ids
        .iter()
        .enumerate()
        .filter_map(|(i, id)| id.peer_id().map(|p| (p, i)))
        .collect();
    let setup = std::time::Instant::now();
    let mut nodes: Vec<Swim> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| Swim::new(id.clone(), n, period, suspicion, args.seed ^ i as u64))
        .collect();
    let mut alive = vec![true; n];
    let mut killed_at: Vec<Option<Micros>> = vec![None; n];
    // For each killed node: how many live nodes have marked it down, and when the last did.
    let mut down_count: HashMap<usize, usize> = HashMap::new();
    let mut all_down_at: HashMap<usize, Micros> = HashMap::new();
    let mut falsely_downed = vec![false; n];
    let mut false_down_events = 0u64;
    let mut got_news = vec![false; n];
    let mut news_at: Option<Micros> = None;
    let mut news_done: Option<Micros> = None;
    let mut msgs = 0u64;
    let mut bytes_sent = 0u64;
    let mut live_node_seconds = 0f64;
    let mut last_t: Micros = 0;

    let mut queue = Queue {
        heap: BinaryHeap::new(),
        events: HashMap::new(),
        seq: 0,
    };
    let period_us = period.as_micros() as u64;
    for i in 0..n {
        queue.push(rng.gen_range(0..period_us), Event::Start(i));
    }
    let mut victims: Vec<usize> = (1..n).collect();
    for k in 0..args.kill {
        let j = rng.gen_range(k..victims.len());
        victims.swap(k, j);
    }
    victims.truncate(args.kill);
    for (k, v) in victims.iter().enumerate() {
        let at = end / 4 + (end / 4) * k as u64 / args.kill.max(1) as u64;
        queue.push(at, Event::Kill(*v));
    }
    queue.push(end / 2, Event::Broadcast);
    let partitioned = (n as f64 * args.partition) as usize;
    let part_from = end * 6 / 10;
    let part_to = part_from + args.partition_secs * 1_000_000;
    // Nodes 1..=partitioned are cut off (node 0 broadcasts; it stays with the majority).
    let side = |i: usize| i >= 1 && i <= partitioned;
    let mut healed_at: Option<Micros> = None;
    if partitioned > 0 {
        queue.push(part_to, Event::Check);
    }

    let mut next_report: Micros = 0;
    eprintln!(
        "mesh-sim: {n} nodes built in {:.1} s",
        setup.elapsed().as_secs_f64()
    );
    while let Some((t, event)) = queue.pop() {
        if t > end {
            break;
        }
        if t >= next_report {
            // Progress on stderr: how fast virtual time goes (the JSON line is on stdout).
            eprintln!(
                "mesh-sim: virtual {:.0} s after {:.1} s",
                t as f64 / 1e6,
                setup.elapsed().as_secs_f64()
            );
            next_report += 5_000_000;
        }
        let live = alive.iter().filter(|a| **a).count();
        live_node_seconds += live as f64 * (t - last_t) as f64 / 1e6;
        last_t = t;
        let (node, outputs) = match event {
            Event::Start(i) => {
                let others: Vec<SwimId> = ids
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, id)| id.clone())
                    .collect();
                (i, nodes[i].add_alive(others, false))
            }
            Event::Deliver { to, bytes } => {
                if !alive[to] {
                    continue;
                }
                (to, nodes[to].data(&bytes))
            }
            Event::Timer(i, timer) => {
                if !alive[i] {
                    continue;
                }
                (i, nodes[i].timer(timer))
            }
            Event::Kill(i) => {
                alive[i] = false;
                killed_at[i] = Some(t);
                down_count.insert(i, 0);
                continue;
            }
            Event::Check => {
                let live = alive.iter().filter(|a| **a).count();
                let whole = (0..n).all(|i| !alive[i] || nodes[i].alive() == live - 1);
                if whole {
                    healed_at = Some(t);
                } else {
                    queue.push(t + 100_000, Event::Check);
                }
                continue;
            }
            Event::Broadcast => {
                news_at = Some(t);
                got_news[0] = true;
                let change = RingChange {
                    peer: ids[0].peer_id().map(|p| p.to_bytes()).unwrap_or_default(),
                    generation: 1,
                    version: 1,
                };
                (0, nodes[0].broadcast(&change))
            }
        };
        for out in outputs {
            match out {
                Output::Send(to, bytes) => {
                    msgs += 1;
                    bytes_sent += bytes.len() as u64;
                    let Some(&j) = to.peer_id().as_ref().and_then(|p| index.get(p)) else {
                        continue;
                    };
                    if rng.gen_bool(args.loss) {
                        continue;
                    }
                    if t >= part_from && t < part_to && side(node) != side(j) {
                        continue;
                    }
                    let delay = args.latency_ms * 1_000;
                    let at = t + delay + rng.gen_range(0..=delay);
                    queue.push(at, Event::Deliver { to: j, bytes });
                }
                Output::Wake(after, timer) => {
                    queue.push(t + after.as_micros() as u64, Event::Timer(node, timer));
                }
                Output::Down(id) => {
                    let Some(&j) = id.peer_id().as_ref().and_then(|p| index.get(p)) else {
                        continue;
                    };
                    if alive[j] {
                        false_down_events += 1;
                        falsely_downed[j] = true;
                    } else if let Some(c) = down_count.get_mut(&j) {
                        *c += 1;
                    }
                }
                Output::Ring(_) => {
                    if !got_news[node] {
                        got_news[node] = true;
                        if news_done.is_none() && (0..n).all(|k| got_news[k] || !alive[k]) {
                            news_done = Some(t);
                        }
                    }
                }
                Output::Up(_) | Output::Rejoined(_) | Output::Notice(_) => {}
            }
        }
        // A killed node is detected when every live node has marked it down.
        for (&k, &c) in &down_count {
            if !all_down_at.contains_key(&k) && c >= alive.iter().filter(|a| **a).count() {
                all_down_at.insert(k, t);
            }
        }
    }

    let mut detect: Vec<f64> = all_down_at
        .iter()
        .filter_map(|(k, at)| killed_at[*k].map(|kt| (at - kt) as f64 / 1e6))
        .collect();
    detect.sort_by(|a, b| a.total_cmp(b));
    let undetected = args.kill - detect.len();
    let live_per_s = live_node_seconds.max(1e-9);
    let out = serde_json::json!({
        "nodes": n,
        "seconds": args.seconds,
        "loss": args.loss,
        "kill": args.kill,
        "partition": args.partition,
        "period_ms": period.as_millis() as u64,
        "msgs_per_node_per_s": (msgs as f64 / live_per_s * 10.0).round() / 10.0,
        "bytes_per_node_per_s": (bytes_sent as f64 / live_per_s).round(),
        "detect_p50_s": percentile(&detect, 0.5),
        "detect_p99_s": percentile(&detect, 0.99),
        "undetected": undetected,
        "false_suspicions": falsely_downed.iter().filter(|f| **f).count(),
        "false_down_events": false_down_events,
        "healed_s": healed_at.map(|h| (h - part_to) as f64 / 1e6),
        "converge_s": news_done.zip(news_at).map(|(d, a)| (d - a) as f64 / 1e6),
        "wall_s": (setup.elapsed().as_secs_f64() * 10.0).round() / 10.0,
    });
    println!("{out}");
    Ok(())
}
