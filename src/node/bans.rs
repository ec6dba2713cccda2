//! Mesh-wide bans: a source banned by any node's throttle is banned by every node. Each node
//! publishes its new bans to the `bans` table (one row per source, TTL = the ban's end) and
//! spreads each as a notice (SWIM's infection-style broadcast: every member has it within
//! seconds, at a cost per member that does not grow with the mesh). At start and about every
//! [`CATCH_UP_EVERY`] a node also reads the table (at QUORUM, so a lift written at QUORUM is
//! not missed) for what the notices missed. A ban lifted through the admin API is deleted from
//! the table and spread as a notice; a node also lifts a ban it saw in the table once the row is
//! gone. Every member is trusted to ban (docs/SECURITY.md); trusted sources are never banned.
//!
//! Why not only the table: every node reading one partition every few seconds makes its three
//! replicas serve, and hold a connection with, every node of the mesh.

use std::collections::HashSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use sipmesh_net::shutdown::Shutdown;
use sipmesh_net::{Consistency, Notice};
use sipmesh_storage::Mutation;
use tracing::{debug, info};

use super::Node;
use crate::call::throttle::BanReason;
use crate::events::Kind;
use crate::tables::BANS;

/// How often a node publishes its new bans.
pub const SYNC_EVERY: Duration = Duration::from_secs(2);
/// How often a node reads the whole table (notices bring bans as they happen; the table is
/// for a node that was away, and for a lift whose clock ran behind the ban's), give or take a
/// fifth so the mesh's reads do not arrive together.
pub const CATCH_UP_EVERY: Duration = Duration::from_secs(600);
/// The notice topic of bans.
pub const TOPIC: u8 = 1;
/// The one partition of the `bans` table.
const SCOPE: &[u8] = b"all";

/// The mutation that publishes a ban of `source` for `length`.
fn publish(node: &Node, source: IpAddr, reason: BanReason, length: Duration) -> Mutation {
    let ks = node.keyspace();
    let until = ks.wall_ms() + length.as_millis() as u64;
    Mutation::new(BANS, SCOPE.to_vec()).upsert(
        source.to_string().as_bytes(),
        [
            ("reason", reason.as_str().as_bytes().to_vec()),
            ("by", node.mesh.peer_id().to_string().into_bytes()),
        ],
        ks.now(),
        Some(until),
    )
}

/// Delete `source`'s row: the ban is lifted mesh-wide.
pub(crate) async fn lift(node: &Node, source: IpAddr) -> crate::error::Result<()> {
    let m = Mutation::new(BANS, SCOPE.to_vec())
        .delete_row(source.to_string().as_bytes(), node.keyspace().now());
    node.mesh.write(m, Consistency::Quorum).await?;
    node.mesh
        .announce(notice(node, source, BanReason::RequestRate, None));
    Ok(())
}

/// Apply a ban or lift read from the table or a notice. `left_ms` is what is left of the ban
/// (`None`: lifted).
fn apply(node: &Node, ip: IpAddr, reason: BanReason, left_ms: Option<u64>, by: &str) {
    let throttle = node.throttle();
    let now = Instant::now();
    match left_ms {
        Some(left) => {
            if throttle.ban_until(ip, reason, now + Duration::from_millis(left), now) {
                info!(source = %ip, ?reason, by, "source banned by another member");
                node.metrics.events.push(
                    Kind::Ban,
                    format!("banned {ip} ({}, by {by})", reason.as_str()),
                );
            }
        }
        None => {
            if throttle.is_banned(&ip, now) && throttle.lift(&ip) {
                info!(source = %ip, by, "ban lifted elsewhere in the mesh");
                node.metrics
                    .events
                    .push(Kind::Ban, format!("lifted the ban on {ip} (elsewhere)"));
            }
        }
    }
}

/// The notice of a ban of `source` until `until_ms` (wall clock), or of its lift (`None`),
/// at `version` (this node's wall clock, ms).
pub(crate) fn notice(
    node: &Node,
    source: IpAddr,
    reason: BanReason,
    until_ms: Option<u64>,
) -> Notice {
    let payload = match until_ms {
        Some(until) => format!("ban {} {until} {}", reason.as_str(), node.mesh.peer_id()),
        None => format!("lift - 0 {}", node.mesh.peer_id()),
    };
    Notice {
        topic: TOPIC,
        key: source.to_string().into_bytes(),
        version: node.keyspace().wall_ms(),
        payload: payload.into_bytes(),
    }
}

/// Take a ban notice (ignoring other topics and malformed ones).
fn on_notice(node: &Node, n: &Notice) {
    if n.topic != TOPIC || n.key.len() > 64 {
        return;
    }
    let Some(ip) = std::str::from_utf8(&n.key)
        .ok()
        .and_then(|s| s.parse::<IpAddr>().ok())
    else {
        return;
    };
    let text = String::from_utf8_lossy(&n.payload);
    let mut f = text.split(' ');
    let (Some(what), Some(reason), Some(until), Some(by)) =
        (f.next(), f.next(), f.next(), f.next())
    else {
        return;
    };
    match what {
        "ban" => {
            let Some(until) = until.parse::<u64>().ok() else {
                return;
            };
            let reason = BanReason::parse(reason).unwrap_or(BanReason::RequestRate);
            let left = until.saturating_sub(node.keyspace().wall_ms());
            apply(node, ip, reason, Some(left), by);
        }
        "lift" => apply(node, ip, BanReason::RequestRate, None, by),
        _ => {}
    }
}

/// Publish and apply bans until shutdown: new bans of this node go to the table and out as
/// notices every [`SYNC_EVERY`]; others' notices are applied as they arrive; the table is read
/// at start and about every [`CATCH_UP_EVERY`] for what notices missed (a node that was down, a
/// lift whose clock ran behind the ban's), and at once when this node fell behind the notices.
pub(crate) async fn sync(node: Node, mut shutdown: Shutdown) {
    // Sources seen in the table: one that disappears was lifted somewhere.
    let mut seen: HashSet<IpAddr> = HashSet::new();
    let mut notices = node.mesh.notices();
    let mut catch_up = tokio::time::Instant::now();
    let mut ticks = tokio::time::interval(SYNC_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = ticks.tick() => {}
            notice = notices.recv() => {
                match notice {
                    Ok(n) => on_notice(&node, &n),
                    // Fell behind: the next table read catches up.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        catch_up = tokio::time::Instant::now();
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
                continue;
            }
        }
        let throttle = node.throttle().clone();
        let unpublished = throttle.take_unpublished();
        if !unpublished.is_empty() {
            let wall = node.keyspace().wall_ms();
            let mut rows = Vec::with_capacity(unpublished.len());
            for (ip, reason, length) in unpublished {
                rows.push(publish(&node, ip, reason, length));
                node.mesh.announce(notice(
                    &node,
                    ip,
                    reason,
                    Some(wall + length.as_millis() as u64),
                ));
            }
            if let Err(e) = node.mesh.write_many(rows, Consistency::One).await {
                debug!(error = %e, "could not publish bans");
            }
        }
        if tokio::time::Instant::now() < catch_up {
            continue;
        }
        catch_up =
            tokio::time::Instant::now() + CATCH_UP_EVERY.mul_f64(0.8 + rand::random::<f64>() * 0.4);
        let rows = match node.mesh.read(BANS, SCOPE, Consistency::Quorum).await {
            Ok(p) => p.rows,
            Err(e) => {
                debug!(error = %e, "could not read the mesh's bans");
                catch_up = tokio::time::Instant::now();
                continue;
            }
        };
        let wall = node.keyspace().wall_ms();
        let mut present = HashSet::with_capacity(rows.len());
        for row in &rows {
            let Some(ip) = std::str::from_utf8(&row.clustering)
                .ok()
                .and_then(|s| s.parse::<IpAddr>().ok())
            else {
                continue;
            };
            present.insert(ip);
            let reason = row
                .get("reason")
                .and_then(|r| std::str::from_utf8(r).ok())
                .and_then(BanReason::parse)
                .unwrap_or(BanReason::RequestRate);
            let left = row.expires_at().unwrap_or(wall).saturating_sub(wall);
            let by = row
                .get("by")
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            apply(&node, ip, reason, Some(left), &by);
        }
        for gone in seen.difference(&present) {
            apply(&node, *gone, BanReason::RequestRate, None, "the table");
        }
        seen = present;
    }
}
