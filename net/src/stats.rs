//! What the mesh layer measures: replication latency and outcomes, anti-entropy, handoff,
//! hints and heartbeat round trips. The node registers these with its Prometheus registry
//! ([`MeshMetrics::register`]); every label has a fixed, small set of values.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::error::Error;
use crate::replication::Consistency;

/// Labels of a replicated read or write.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    /// `read` or `write`.
    pub op: &'static str,
    /// `one`, `quorum` or `all`.
    pub consistency: &'static str,
}

/// Labels of a failed replicated read or write.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailLabels {
    /// `read` or `write`.
    pub op: &'static str,
    /// `one`, `quorum` or `all`.
    pub consistency: &'static str,
    /// `unavailable`, `timeout` or `error`.
    pub reason: &'static str,
}

/// The mesh layer's metrics (cheap to clone: every metric is shared).
#[derive(Clone, Debug)]
pub struct MeshMetrics {
    replication_seconds: Family<OpLabels, Histogram>,
    replication_failures: Family<FailLabels, Counter>,
    anti_entropy_rounds: Counter,
    anti_entropy_leaves_compared: Counter,
    anti_entropy_leaves_differing: Counter,
    anti_entropy_partitions_repaired: Counter,
    anti_entropy_bytes: Counter,
    handoff_partitions: Counter,
    hints_delivered: Counter,
    heartbeat_rtt_seconds: Histogram,
    heartbeat_failures: Counter,
    heartbeat_datagrams: Counter,
    relayed: Family<RelayLabels, Counter>,
    links_open: Gauge,
    links_served: Gauge,
    replica_peers: Gauge,
    peers_connected: Gauge,
    members_only_indirect: Gauge,
    admission_refused: Family<RefusalLabels, Counter>,
    writes_refused: Counter,
    rows_unsigned: Counter,
    tombstones_purged: Counter,
}

/// Labels of a relayed request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RelayLabels {
    /// `answered` (through a relay) or `failed` (no relay got it through).
    pub result: &'static str,
}

/// Labels of a refused peer.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    /// Why: `missing`, `malformed`, `other_mesh`, `bad_signature`, `other_peer`, `expired`,
    /// `revoked`.
    pub reason: &'static str,
}

fn latency_buckets() -> Histogram {
    // 100 µs .. ~3.3 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

impl Default for MeshMetrics {
    fn default() -> Self {
        MeshMetrics {
            replication_seconds: Family::new_with_constructor(latency_buckets),
            replication_failures: Family::default(),
            anti_entropy_rounds: Counter::default(),
            anti_entropy_leaves_compared: Counter::default(),
            anti_entropy_leaves_differing: Counter::default(),
            anti_entropy_partitions_repaired: Counter::default(),
            anti_entropy_bytes: Counter::default(),
            handoff_partitions: Counter::default(),
            hints_delivered: Counter::default(),
            heartbeat_rtt_seconds: latency_buckets(),
            heartbeat_failures: Counter::default(),
            heartbeat_datagrams: Counter::default(),
            relayed: Family::default(),
            links_open: Gauge::default(),
            links_served: Gauge::default(),
            replica_peers: Gauge::default(),
            peers_connected: Gauge::default(),
            members_only_indirect: Gauge::default(),
            admission_refused: Family::default(),
            writes_refused: Counter::default(),
            rows_unsigned: Counter::default(),
            tombstones_purged: Counter::default(),
        }
    }
}

fn level(cl: Consistency) -> &'static str {
    match cl {
        Consistency::One => "one",
        Consistency::Quorum => "quorum",
        Consistency::All => "all",
    }
}

impl MeshMetrics {
    /// Register every metric in `registry` (names get the registry's prefix).
    pub fn register(&self, registry: &mut Registry) {
        registry.register_with_unit(
            "replication",
            "Replicated reads and writes coordinated by this node, until their consistency level was reached or failed",
            Unit::Seconds,
            self.replication_seconds.clone(),
        );
        registry.register(
            "replication_failures",
            "Replicated reads and writes that failed (unavailable: too few replicas up or no majority; timeout; error)",
            self.replication_failures.clone(),
        );
        registry.register(
            "anti_entropy_rounds",
            "Anti-entropy rounds run (one exchange with every up peer)",
            self.anti_entropy_rounds.clone(),
        );
        registry.register(
            "anti_entropy_leaves_compared",
            "Merkle leaves compared with peers",
            self.anti_entropy_leaves_compared.clone(),
        );
        registry.register(
            "anti_entropy_leaves_differing",
            "Merkle leaves found different from a peer's",
            self.anti_entropy_leaves_differing.clone(),
        );
        registry.register(
            "anti_entropy_partitions_repaired",
            "Partitions pulled from or pushed to peers by anti-entropy",
            self.anti_entropy_partitions_repaired.clone(),
        );
        registry.register_with_unit(
            "anti_entropy",
            "Bytes moved by anti-entropy (both ways)",
            Unit::Bytes,
            self.anti_entropy_bytes.clone(),
        );
        registry.register(
            "handoff_partitions",
            "Partitions handed off to their new replicas after a ring change",
            self.handoff_partitions.clone(),
        );
        registry.register(
            "hints_delivered",
            "Hinted writes delivered to a replica that was back",
            self.hints_delivered.clone(),
        );
        registry.register_with_unit(
            "heartbeat_rtt",
            "Round trip of membership heartbeats to other members",
            Unit::Seconds,
            self.heartbeat_rtt_seconds.clone(),
        );
        registry.register(
            "heartbeat_failures",
            "Heartbeats that got no answer in time",
            self.heartbeat_failures.clone(),
        );
        registry.register(
            "heartbeat_datagrams",
            "Heartbeats sent to up members as datagrams (no answer awaited)",
            self.heartbeat_datagrams.clone(),
        );
        registry.register(
            "mesh_relayed",
            "Replica reads and writes that could not reach a member directly and were relayed through another, by result",
            self.relayed.clone(),
        );
        registry.register(
            "mesh_links",
            "Links (streams) this node holds open to other nodes",
            self.links_open.clone(),
        );
        registry.register(
            "mesh_links_served",
            "Links (streams) other nodes hold open to this node",
            self.links_served.clone(),
        );
        registry.register(
            "mesh_members_only_indirect",
            "Members this node reaches only through others (its direct probe failed; traffic for them goes through a member nearest them)",
            self.members_only_indirect.clone(),
        );
        registry.register(
            "mesh_replica_peers",
            "Members this node shares partitions with (their links stay open however idle)",
            self.replica_peers.clone(),
        );
        registry.register(
            "mesh_peers_connected",
            "Nodes this node holds a libp2p connection with",
            self.peers_connected.clone(),
        );
        registry.register(
            "admission_refused",
            "Peers refused as members (signed enrollment), by reason",
            self.admission_refused.clone(),
        );
        registry.register(
            "tombstones_purged",
            "Tombstones purged after every replica of their partition confirmed holding them",
            self.tombstones_purged.clone(),
        );
        registry.register(
            "writes_refused",
            "Mutations from members refused by the per-table write rights",
            self.writes_refused.clone(),
        );
        registry.register(
            "rows_ignored",
            "Rows ignored when read (each distinct row once): no valid signature of a writer with the right",
            self.rows_unsigned.clone(),
        );
    }

    /// Tombstones this node purged after every replica confirmed them (its own collection, or
    /// another replica's).
    pub(crate) fn tombstones_purged(&self, n: usize) {
        self.tombstones_purged.inc_by(n as u64);
    }

    /// Tombstones purged since start.
    pub fn tombstones_collected(&self) -> u64 {
        self.tombstones_purged.get()
    }

    /// A peer failed admission.
    pub(crate) fn admission_refused(&self, reason: &'static str) {
        self.admission_refused
            .get_or_create(&RefusalLabels { reason })
            .inc();
    }

    /// A member's mutation was refused by the write rights.
    pub(crate) fn write_refused(&self) {
        self.writes_refused.inc();
    }

    /// A row was ignored (read as absent): no signature, one that failed, or a writer without
    /// the right.
    pub(crate) fn row_ignored(&self) {
        self.rows_unsigned.inc();
    }

    /// Signed rows ignored since start.
    pub fn rows_ignored(&self) -> u64 {
        self.rows_unsigned.get()
    }

    /// Mutations refused by the write rights since start.
    pub fn writes_refused(&self) -> u64 {
        self.writes_refused.get()
    }

    /// Peers refused admission since start, all reasons.
    pub fn admission_refusals(&self) -> u64 {
        crate::admission::Refusal::ALL
            .iter()
            .map(|r| r.label())
            .map(|reason| {
                self.admission_refused
                    .get_or_create(&RefusalLabels { reason })
                    .get()
            })
            .sum()
    }

    /// A replicated operation ended after `took`.
    pub(crate) fn replicated<T>(
        &self,
        op: &'static str,
        cl: Consistency,
        took: Duration,
        outcome: &Result<T, Error>,
    ) {
        let consistency = level(cl);
        match outcome {
            Ok(_) => self
                .replication_seconds
                .get_or_create(&OpLabels { op, consistency })
                .observe(took.as_secs_f64()),
            Err(e) => {
                let reason = match e {
                    Error::Unavailable { .. } => "unavailable",
                    Error::ClockSkew { .. } => "clock_skew",
                    Error::Timeout { .. } => "timeout",
                    _ => "error",
                };
                self.replication_failures
                    .get_or_create(&FailLabels {
                        op,
                        consistency,
                        reason,
                    })
                    .inc();
            }
        }
    }

    /// An anti-entropy round ended.
    pub(crate) fn anti_entropy(&self, x: &crate::anti_entropy::Exchange) {
        self.anti_entropy_rounds.inc();
        self.anti_entropy_leaves_compared.inc_by(x.compared as u64);
        self.anti_entropy_leaves_differing
            .inc_by(x.differing as u64);
        self.anti_entropy_partitions_repaired
            .inc_by((x.pulled + x.pushed) as u64);
        self.anti_entropy_bytes.inc_by(x.bytes as u64);
    }

    pub(crate) fn handed_off(&self, n: usize) {
        self.handoff_partitions.inc_by(n as u64);
    }

    pub(crate) fn hints(&self, n: usize) {
        self.hints_delivered.inc_by(n as u64);
    }

    pub(crate) fn relayed(&self, answered: bool) {
        let result = if answered { "answered" } else { "failed" };
        self.relayed.get_or_create(&RelayLabels { result }).inc();
    }

    /// Requests relayed so far: (answered, failed).
    pub fn relayed_totals(&self) -> (u64, u64) {
        let get = |result| self.relayed.get_or_create(&RelayLabels { result }).get();
        (get("answered"), get("failed"))
    }

    pub(crate) fn heartbeat_datagram(&self) {
        self.heartbeat_datagrams.inc();
    }

    pub(crate) fn connections(
        &self,
        links: usize,
        served: usize,
        replicas: usize,
        peers: usize,
        only_indirect: usize,
    ) {
        self.members_only_indirect.set(only_indirect as i64);
        self.links_open.set(links as i64);
        self.replica_peers.set(replicas as i64);
        self.links_served.set(served as i64);
        self.peers_connected.set(peers as i64);
    }

    /// Links open and peers connected, as last sampled.
    pub fn connection_counts(&self) -> (u64, u64) {
        (
            self.links_open.get().max(0) as u64,
            self.peers_connected.get().max(0) as u64,
        )
    }

    pub(crate) fn heartbeat(&self, rtt: Option<Duration>) {
        match rtt {
            Some(d) => self.heartbeat_rtt_seconds.observe(d.as_secs_f64()),
            None => {
                self.heartbeat_failures.inc();
            }
        }
    }

    /// Anti-entropy totals since start: (rounds, leaves differing, partitions repaired).
    pub fn anti_entropy_totals(&self) -> (u64, u64, u64) {
        (
            self.anti_entropy_rounds.get(),
            self.anti_entropy_leaves_differing.get(),
            self.anti_entropy_partitions_repaired.get(),
        )
    }
}
