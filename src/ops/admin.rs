//! The admin HTTP API (JSON) and Prometheus `/metrics`.
//!
//! | method and path | what |
//! | --- | --- |
//! | `GET /v1/status` | this node and the mesh: members, load, registrations, dialogs |
//! | `GET /v1/users[?after=USER][&limit=N]` | a page of the mesh's users (token order; N ≤ 10,000, default 1,000) and `next` |
//! | `POST /v1/users` | `{"user", "password", "display_name"?}`: add or replace (QUORUM) |
//! | `POST /v1/users/import` | `{"csv": "user,password lines"}` (QUORUM) |
//! | `GET /v1/users/{user}` | one user (never its HA1s) or 404 |
//! | `DELETE /v1/users/{user}` | remove a user |
//! | `GET /v1/registrations/{user}` | the AOR's bindings, read at QUORUM |
//! | `GET /v1/dialogs[?after=ID][&limit=N]` | a page of the mesh's active dialogs by id (N ≤ 2,000, default 500) and `next` |
//! | `GET /v1/bootstrap` | the least-loaded live nodes to register with (SIP URIs, load, q) |
//! | `POST /v1/mesh/remove` | `{"peer_id", "force"?}`: remove a dead member from the ring once every up member streamed its ranges (409 if it is up, if data could be lost and not `force`, or if a member could not stream yet) |
//! | `DELETE /v1/dialogs/{id}` | end a dialog: BYE to both parties, record removed |
//! | `GET /v1/mesh/revocations` | members revoked (signed enrollment) |
//! | `POST /v1/mesh/revocations` | `{"revocation"}` (from `sipmesh mesh revoke`, signed by the enrollment key): shut a member out, mesh-wide |
//! | `POST /v1/mesh/decommission` | `{"within_secs"?}`: hand every replica over, leave the ring, stop (202) |
//! | `GET /v1/overview` | status, counters, anti-entropy, bans and events (`?since=SEQ`) |
//! | `GET /v1/live` | the overview every second as Server-Sent Events (`event: overview`) |
//! | `GET /v1/ring` | each member's ring position and share of the keyspace |
//! | `GET /v1/placement/{user}` | the replicas of a user's partitions and its bindings' owners |
//! | `GET /v1/events` | recent events (`?since=SEQ`) |
//! | `GET /` | the live mesh page (its files need no token; its data does off loopback) |
//! | `GET /v1/bans` | sources banned by the throttle, why, seconds left |
//! | `DELETE /v1/bans/{ip}` | lift a ban, mesh-wide |
//! | `GET /metrics` | Prometheus metrics (OpenMetrics text; every metric in docs/OPERATIONS.md) |
//!
//! Every mutating call (POST, PUT, DELETE) needs `Authorization: Bearer <token>`, on loopback
//! too (the token is compared in constant time); off loopback every call does. Bodies are JSON
//! only (`Content-Type: application/json`, else 415): a browser cannot send one cross-origin
//! without a preflight, so a web page cannot reset a password through a local node. On a
//! loopback listener the `Host` header must name loopback, which defeats DNS rebinding.

use std::net::SocketAddr;

use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::stream::{self, StreamExt};
use serde::Deserialize;
use serde_json::json;
use sipmesh_net::Consistency;

use crate::error::{Error, Result};
use crate::node::Node;

/// Largest import body.
const MAX_IMPORT_BYTES: usize = 32 * 1024 * 1024;
/// How long an imported user's write waits, past QUORUM, for the other live replicas.
const IMPORT_SETTLE: std::time::Duration = std::time::Duration::from_millis(200);
/// Users written concurrently by an import.
const IMPORT_CONCURRENCY: usize = 64;

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

fn internal(e: Error) -> Response {
    match e {
        Error::Config(m) => error(StatusCode::BAD_REQUEST, m),
        Error::Net(e @ sipmesh_net::Error::Unavailable { .. })
        | Error::Net(e @ sipmesh_net::Error::ClockSkew { .. })
        | Error::Net(e @ sipmesh_net::Error::Timeout { .. }) => {
            error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
        Error::Net(e @ sipmesh_net::Error::NotAllowed(_)) => {
            error(StatusCode::FORBIDDEN, e.to_string())
        }
        other => error(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
    }
}

/// Bind the admin API's listener (so the node knows its address before serving).
pub(crate) async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Io {
            what: format!("cannot listen for HTTP on {addr}"),
            source,
        })
}

/// Serve the admin API on a bound listener until shutdown.
pub(crate) async fn serve(
    node: Node,
    listener: tokio::net::TcpListener,
    mut shutdown: sipmesh_net::shutdown::Shutdown,
) {
    let g = Guard {
        token: node.config.admin_token.clone().unwrap_or_default(),
        loopback: listener.local_addr().is_ok_and(|a| a.ip().is_loopback()),
    };
    let app = Router::new()
        .route("/v1/status", get(status))
        .route("/v1/users", get(list_users).post(add_user))
        .route(
            "/v1/users/import",
            post(import_users).layer(DefaultBodyLimit::max(MAX_IMPORT_BYTES)),
        )
        .route("/v1/users/{user}", get(get_user).delete(delete_user))
        .route("/v1/registrations/{user}", get(registrations))
        .route("/v1/dialogs", get(dialogs))
        .route("/v1/bootstrap", get(bootstrap))
        .route("/v1/mesh/remove", post(remove_member))
        .route(
            "/v1/mesh/revocations",
            get(list_revocations).post(add_revocation),
        )
        .route("/v1/bans", get(bans))
        .route("/v1/bans/{ip}", axum::routing::delete(lift_ban))
        .route("/v1/dialogs/{id}", axum::routing::delete(end_dialog))
        .route("/v1/mesh/decommission", post(decommission))
        .route("/v1/overview", get(overview_handler))
        .route("/v1/live", get(live))
        .route("/v1/ring", get(ring))
        .route("/v1/placement/{user}", get(placement))
        .route("/v1/events", get(events))
        .route("/metrics", get(metrics))
        .merge(crate::ops::page::routes())
        .layer(axum::Extension(shutdown.clone()))
        .layer(middleware::from_fn_with_state(g, guard))
        .with_state(node);
    let stopped = async move { shutdown.wait().await };
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stopped)
        .await
    {
        tracing::error!(error = %e, "admin API stopped");
    }
}

/// What the guard of the admin API checks.
#[derive(Clone)]
struct Guard {
    token: String,
    loopback: bool,
}

/// Whether a `Host` header names loopback (`localhost`, `127.x`, `[::1]`, any port).
fn loopback_host(host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(':') => h,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

async fn guard(State(g): State<Guard>, req: Request, next: Next) -> Response {
    let headers = req.headers();
    if g.loopback {
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !loopback_host(host) {
            return error(
                StatusCode::MISDIRECTED_REQUEST,
                "the Host header must name this loopback listener",
            );
        }
    }
    let method = req.method();
    let mutating = !matches!(method.as_str(), "GET" | "HEAD" | "OPTIONS");
    // The page's own files hold no data: a browser loads them without a token, then asks
    // for the data with the token the operator types in.
    let asset = !mutating && crate::ops::page::is_asset(req.uri().path());
    if (mutating || !g.loopback) && !asset {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !crate::call::secret::constant_time_eq(given.as_bytes(), g.token.as_bytes()) {
            return error(
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token (see --admin-token / SIPMESH_ADMIN_TOKEN)",
            );
        }
    }
    if mutating && matches!(method.as_str(), "POST" | "PUT") {
        let json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.trim()
                    .to_ascii_lowercase()
                    .starts_with("application/json")
            });
        if !json {
            return error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "bodies must be JSON (Content-Type: application/json)",
            );
        }
    }
    next.run(req).await
}

#[derive(Deserialize)]
struct Removal {
    peer_id: String,
    /// Remove even when a partition may have had its last copies on the down members (the
    /// operator knows they are gone for good, as after a redeploy with new identities).
    #[serde(default)]
    force: bool,
}

async fn remove_member(State(node): State<Node>, Json(r): Json<Removal>) -> Response {
    let Ok(peer) = r.peer_id.parse::<sipmesh_net::PeerId>() else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("{:?} is not a peer id", r.peer_id),
        );
    };
    match node.mesh.remove_member(peer, r.force).await {
        Ok(()) => {
            node.metrics.events.push(
                crate::events::Kind::Admin,
                format!(
                    "removed {peer} from the ring{}",
                    if r.force { " (forced)" } else { "" }
                ),
            );
            Json(json!({ "removed": peer.to_string() })).into_response()
        }
        Err(why) => error(StatusCode::CONFLICT, why),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewRevocation {
    /// The revocation's text form (`sipmesh-revocation-1:…`).
    revocation: String,
}

async fn add_revocation(State(node): State<Node>, Json(r): Json<NewRevocation>) -> Response {
    let revocation = match crate::ops::enrollment::parse_revocation(&r.revocation) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    match crate::node::revocations::publish(&node, &revocation).await {
        Ok(peer) => {
            node.metrics
                .events
                .push(crate::events::Kind::Admin, format!("revoked member {peer}"));
            Json(json!({ "revoked": peer.to_string() })).into_response()
        }
        Err(e) => internal(e),
    }
}

async fn list_revocations(State(node): State<Node>) -> Response {
    let Some(issuer) = node.mesh.enrollment_issuer() else {
        return Json(json!({ "enrollment": false, "revoked": [] })).into_response();
    };
    match crate::node::revocations::stored(&node).await {
        Ok(all) => {
            let revoked: Vec<serde_json::Value> = all
                .iter()
                .filter_map(|r| {
                    r.verified_peer(&issuer)
                        .map(|p| json!({ "peer_id": p.to_string(), "issued_ms": r.body.issued_ms }))
                })
                .collect();
            Json(json!({ "enrollment": true, "revoked": revoked })).into_response()
        }
        Err(e) => internal(e),
    }
}

async fn bans(State(node): State<Node>) -> Response {
    let bans = node.throttle().bans(std::time::Instant::now());
    Json(json!({ "bans": bans })).into_response()
}

async fn lift_ban(State(node): State<Node>, Path(ip): Path<String>) -> Response {
    let Ok(addr) = ip.parse::<std::net::IpAddr>() else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("{ip:?} is not an IP address"),
        );
    };
    if !node.throttle().lift(&addr) {
        return error(StatusCode::NOT_FOUND, format!("{addr} is not banned"));
    }
    node.metrics.events.push(
        crate::events::Kind::Ban,
        format!("lifted the ban on {addr}"),
    );
    // Mesh-wide: the other nodes lift it when its row is gone.
    match crate::node::bans::lift(&node, addr).await {
        Ok(()) => Json(json!({ "lifted": addr.to_string(), "mesh_wide": true })).into_response(),
        Err(e) => (
            StatusCode::OK,
            Json(json!({
                "lifted": addr.to_string(),
                "mesh_wide": false,
                "warning": format!("lifted here only: {e}"),
            })),
        )
            .into_response(),
    }
}

/// This node and the mesh as `/v1/status` gives them.
fn status_json(node: &Node) -> serde_json::Value {
    let members = node.mesh.members();
    let up = members
        .iter()
        .filter(|m| m.state == sipmesh_net::MemberState::Up)
        .count();
    let (registrations, dialogs) = node.load();
    let snap = node.mesh.snapshot();
    let (clock_offset_ms, clock_skewed) = node.mesh.clock();
    json!({
        "peer_id": node.mesh.peer_id().to_string(),
        "sip": format!("sip:{}", node.sip_advertised()),
        "http": node.http_addr().map(|a| format!("http://{a}")),
        "p2p": node.mesh.dial_addr().map(|a| a.to_string()),
        "realm": node.config.realm,
        "version": env!("CARGO_PKG_VERSION"),
        "members_up": up,
        "ring_members": snap.ring.len(),
        "majority": snap.has_majority(),
        "joining": node.mesh.joining(),
        "registrations": registrations,
        "dialogs": dialogs,
        "capacity": node.config.capacity,
        "load": registrations + dialogs,
        "tcp_connections": node.transport.connections(),
        "transactions": node.transactions_alive(),
        "hints": node.keyspace().hints().len(),
        "catching_up": node.mesh.catching_up(),
        "clock_offset_ms": clock_offset_ms,
        "clock_skewed": clock_skewed,
        "members": members,
    })
}

async fn status(State(node): State<Node>) -> Response {
    Json(status_json(&node)).into_response()
}

/// Most bans the overview lists.
const OVERVIEW_BANS: usize = 50;

/// What the live page shows: the status, counters for rates, anti-entropy, bans, and the
/// events after sequence number `since`.
fn overview(node: &Node, since: u64) -> serde_json::Value {
    use crate::sip::message::Method;
    let sip = &node.metrics.sip;
    let events = node.metrics.events.since(since);
    let last_event = events.last().map_or(since, |e| e.seq);
    let mut bans = node.throttle().bans(std::time::Instant::now());
    bans.truncate(OVERVIEW_BANS);
    let (rounds, differing, repaired) = node.mesh.metrics().anti_entropy_totals();
    json!({
        "status": status_json(node),
        "ring_version": node.mesh.snapshot().version,
        "now_ms": node.keyspace().wall_ms(),
        "counters": {
            "requests": sip.requests_total(),
            "registers_ok": node.metrics.registrar_ok.get(),
            "auth_failures": node.metrics.registrar_auth_failures.get(),
            "calls_answered": sip.responses(&Method::Invite, 2),
            "invites": sip.requests_of(&Method::Invite),
            "failures": sip.server_failures(),
        },
        "anti_entropy": { "rounds": rounds, "differing": differing, "repaired": repaired },
        "bans": bans,
        "events": events,
        "last_event": last_event,
    })
}

#[derive(Deserialize)]
struct Since {
    #[serde(default)]
    since: u64,
}

async fn overview_handler(
    State(node): State<Node>,
    axum::extract::Query(q): axum::extract::Query<Since>,
) -> Response {
    Json(overview(&node, q.since)).into_response()
}

async fn events(
    State(node): State<Node>,
    axum::extract::Query(q): axum::extract::Query<Since>,
) -> Response {
    Json(json!({ "events": node.metrics.events.since(q.since) })).into_response()
}

/// How often the live stream sends the overview.
const LIVE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Server-Sent Events: an `overview` event at once and every second (with only the events
/// not sent yet), until the client goes or the node stops.
async fn live(
    State(node): State<Node>,
    axum::Extension(shutdown): axum::Extension<sipmesh_net::shutdown::Shutdown>,
    axum::extract::Query(q): axum::extract::Query<Since>,
) -> impl IntoResponse {
    use axum::response::sse::{Event, KeepAlive, Sse};
    let stream = stream::unfold(
        (node, shutdown, q.since, true),
        |(node, mut shutdown, since, first)| async move {
            if !first {
                tokio::select! {
                    _ = shutdown.wait() => return None,
                    _ = tokio::time::sleep(LIVE_EVERY) => {}
                }
            }
            if shutdown.is_triggered() {
                return None;
            }
            let v = overview(&node, since);
            let next = v["last_event"].as_u64().unwrap_or(since);
            let event = Event::default().event("overview").data(v.to_string());
            Some((
                Ok::<_, std::convert::Infallible>(event),
                (node, shutdown, next, false),
            ))
        },
    );
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// Positions sampled to estimate each member's share of the keyspace.
const RING_SAMPLES: u32 = 2048;

/// The ring: each member's position (0..1 around the circle: the first 32 bits of its
/// Kademlia position) and the share of the keyspace it replicates (sampled).
/// Where a Kademlia position sits around the page's circle: its first 32 bits, as 0..1.
fn around(p: &sipmesh_net::placement::Position) -> f64 {
    f64::from(u32::from_be_bytes([p[0], p[1], p[2], p[3]])) / f64::from(u32::MAX)
}

async fn ring(State(node): State<Node>) -> Response {
    use sha2::Digest;
    let snap = node.mesh.snapshot();
    let mut held: std::collections::HashMap<sipmesh_net::PeerId, u32> =
        std::collections::HashMap::new();
    for i in 0..RING_SAMPLES {
        let pos: [u8; 32] = sha2::Sha256::digest(i.to_be_bytes()).into();
        for m in snap.replicas_at(&pos) {
            *held.entry(m.peer).or_default() += 1;
        }
    }
    let members: Vec<_> = snap
        .ring
        .iter()
        .map(|m| {
            json!({
                "peer_id": m.peer.to_string(),
                "up": m.up,
                "standing": m.standing,
                "local": m.peer == snap.local,
                "position": around(&m.position),
                "share": f64::from(held.get(&m.peer).copied().unwrap_or(0)) / f64::from(RING_SAMPLES),
            })
        })
        .collect();
    Json(json!({
        "version": snap.version,
        "replication_factor": snap.effective_rf(),
        "members": members,
    }))
    .into_response()
}

/// Where a user's data lives: the replicas of its `users` and `registrations` partitions
/// (closest first), and the nodes owning its bindings (read at QUORUM).
async fn placement(State(node): State<Node>, Path(user): Path<String>) -> Response {
    let aor = crate::sip::uri::canonical_user(&user);
    // `users` and `registrations` are both keyed by the user: one placement.
    let replicas: Vec<serde_json::Value> = node
        .mesh
        .snapshot()
        .replicas(aor.as_bytes())
        .iter()
        .map(|m| json!({ "peer_id": m.peer.to_string(), "up": m.up }))
        .collect();
    let owners = match crate::call::location::lookup(&node.mesh, &aor, Consistency::Quorum).await {
        Ok(b) => b
            .iter()
            .map(|b| json!({ "peer_id": b.owner.to_string(), "contact": b.contact }))
            .collect::<Vec<_>>(),
        Err(e) => return internal(e),
    };
    Json(json!({
        "user": aor,
        "position": around(&sipmesh_net::placement::key_position(aor.as_bytes())),
        "user_replicas": replicas,
        "registration_replicas": replicas,
        "binding_owners": owners,
    }))
    .into_response()
}

async fn end_dialog(State(node): State<Node>, Path(id): Path<String>) -> Response {
    match node.end_dialog(&id).await {
        Ok(true) => Json(json!({ "ended": id })).into_response(),
        Ok(false) => error(StatusCode::NOT_FOUND, format!("no dialog {id:?}")),
        Err(e) => internal(e),
    }
}

#[derive(Deserialize)]
struct Decommission {
    /// Seconds the handover may take (default 300).
    #[serde(default)]
    within_secs: Option<u64>,
}

async fn decommission(State(node): State<Node>, Json(d): Json<Decommission>) -> Response {
    let within = std::time::Duration::from_secs(d.within_secs.unwrap_or(300).clamp(5, 3600));
    node.decommission(within);
    (
        StatusCode::ACCEPTED,
        Json(json!({
            "decommissioning": node.mesh.peer_id().to_string(),
            "within_secs": within.as_secs(),
        })),
    )
        .into_response()
}

#[derive(Deserialize)]
struct NewUser {
    user: String,
    password: String,
    display_name: Option<String>,
}

async fn add_user(State(node): State<Node>, Json(u): Json<NewUser>) -> Response {
    match node
        .users
        .add(&u.user, &u.password, u.display_name.as_deref())
        .await
    {
        Ok(()) => (StatusCode::CREATED, Json(json!({ "user": u.user }))).into_response(),
        Err(e) => internal(e),
    }
}

async fn get_user(State(node): State<Node>, Path(user): Path<String>) -> Response {
    match node.users.get(&user).await {
        Ok(Some(u)) => Json(u).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no user {user:?}")),
        Err(e) => internal(e),
    }
}

async fn delete_user(State(node): State<Node>, Path(user): Path<String>) -> Response {
    match node.users.remove(&user).await {
        Ok(true) => Json(json!({ "removed": user })).into_response(),
        Ok(false) => error(StatusCode::NOT_FOUND, format!("no user {user:?}")),
        Err(e) => internal(e),
    }
}

/// Users a listing page holds unless `limit` says otherwise.
const USERS_PAGE_DEFAULT: usize = 1_000;

/// `?after=…&limit=…` of a listing.
#[derive(Deserialize)]
struct PageQuery {
    after: Option<String>,
    limit: Option<String>,
}

/// A listing's `limit`: `default` when absent, else a number from 1 to `max`; otherwise the
/// message of a 400 naming the parameter.
fn page_limit(
    limit: Option<&str>,
    default: usize,
    max: usize,
) -> std::result::Result<usize, String> {
    match limit.map(str::parse::<usize>) {
        None => Ok(default),
        Some(Ok(n)) if (1..=max).contains(&n) => Ok(n),
        Some(_) => Err(format!("limit: expected a number from 1 to {max}")),
    }
}

/// `GET /v1/users[?after=USER][&limit=N]`: a page of the mesh's users in token order (as
/// Cassandra pages a table), `{"users": [...], "next": USER | null}`; `next` is the `after`
/// of the following page.
async fn list_users(
    State(node): State<Node>,
    axum::extract::Query(q): axum::extract::Query<PageQuery>,
) -> Response {
    let max = crate::node::internode::USERS_PAGE_MAX;
    let limit = match page_limit(q.limit.as_deref(), USERS_PAGE_DEFAULT, max) {
        Ok(l) => l,
        Err(m) => return error(StatusCode::BAD_REQUEST, m),
    };
    if let Some(after) = &q.after {
        if crate::call::users::validate_user(after).is_err() {
            return error(
                StatusCode::BAD_REQUEST,
                format!("after: {after:?} is not a user name"),
            );
        }
    }
    match node.list_users(q.after, limit).await {
        Ok(page) => Json(json!({ "users": page.users, "next": page.next })).into_response(),
        Err(e) => internal(e),
    }
}

/// Parse an import body: `user,password` per line; blank lines, `#` comments and a
/// `user,password` header line are skipped. Errors name the line.
pub fn parse_import(body: &str) -> std::result::Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (i, line) in body.lines().enumerate() {
        let line = line.trim();
        if line.is_empty()
            || line.starts_with('#')
            || (i == 0 && line.eq_ignore_ascii_case("user,password"))
        {
            continue;
        }
        let (user, password) = line
            .split_once(',')
            .ok_or_else(|| format!("line {}: expected user,password", i + 1))?;
        let (user, password) = (user.trim(), password.trim());
        crate::call::users::validate_user(user).map_err(|e| format!("line {}: {e}", i + 1))?;
        if password.is_empty() {
            return Err(format!("line {}: empty password", i + 1));
        }
        out.push((user.to_string(), password.to_string()));
    }
    Ok(out)
}

#[derive(Deserialize)]
struct Import {
    csv: String,
}

async fn import_users(State(node): State<Node>, Json(body): Json<Import>) -> Response {
    let rows = match parse_import(&body.csv) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let total = rows.len();
    let failures: Vec<String> = stream::iter(rows)
        .map(|(u, p)| {
            let node = node.clone();
            async move {
                match node.users.mutation(&u, &p, None) {
                    Ok(m) => node
                        .mesh
                        .write_settled(m, Consistency::Quorum, IMPORT_SETTLE)
                        .await
                        .err()
                        .map(|e| format!("{u}: {e}")),
                    Err(e) => Some(format!("{u}: {e}")),
                }
            }
        })
        .buffer_unordered(IMPORT_CONCURRENCY)
        .filter_map(|r| async move { r })
        .collect()
        .await;
    if failures.is_empty() {
        Json(json!({ "imported": total })).into_response()
    } else {
        (
            StatusCode::MULTI_STATUS,
            Json(json!({ "imported": total - failures.len(), "failed": failures })),
        )
            .into_response()
    }
}

async fn registrations(State(node): State<Node>, Path(user): Path<String>) -> Response {
    match crate::call::location::lookup(
        &node.mesh,
        &crate::sip::uri::canonical_user(&user),
        Consistency::Quorum,
    )
    .await
    {
        Ok(bindings) => {
            let now = node.keyspace().wall_ms();
            let list: Vec<_> = bindings
                .iter()
                .map(|b| {
                    json!({
                        "contact": b.contact,
                        "expires": b.expires_in(now),
                        "q": b.q,
                        "owner": b.owner.to_string(),
                        "instance": b.instance,
                        "reg_id": b.reg_id,
                        "call_id": b.call_id,
                        "cseq": b.cseq,
                        "user_agent": b.user_agent,
                        "path": b.path,
                        "source": b.flow.peer().to_string(),
                        "transport": b.flow.transport(),
                    })
                })
                .collect();
            Json(json!({ "user": user, "bindings": list })).into_response()
        }
        Err(e) => internal(e),
    }
}

async fn bootstrap(State(node): State<Node>) -> Response {
    Json(json!({ "nodes": crate::call::redirect::least_loaded(&node.mesh, 3) })).into_response()
}

/// Dialogs a listing page holds unless `limit` says otherwise.
const DIALOGS_PAGE_DEFAULT: usize = 500;

/// `GET /v1/dialogs[?after=ID][&limit=N]`: a page of the mesh's dialogs by id,
/// `{"dialogs": [...], "next": ID | null}`; `next` is the `after` of the following page.
async fn dialogs(
    State(node): State<Node>,
    axum::extract::Query(q): axum::extract::Query<PageQuery>,
) -> Response {
    let max = crate::node::internode::DIALOGS_PAGE_MAX;
    let limit = match page_limit(q.limit.as_deref(), DIALOGS_PAGE_DEFAULT, max) {
        Ok(l) => l,
        Err(m) => return error(StatusCode::BAD_REQUEST, m),
    };
    if q.after.as_ref().is_some_and(|a| a.len() > 4096) {
        return error(StatusCode::BAD_REQUEST, "after: longer than a dialog id");
    }
    match node.list_dialogs(q.after, limit).await {
        Ok(page) => {
            let list: Vec<serde_json::Value> = page
                .dialogs
                .into_iter()
                .map(|l| {
                    let mut v = serde_json::to_value(&l.dialog).unwrap_or_default();
                    v["stored"] = l.stored.into();
                    v
                })
                .collect();
            Json(json!({ "dialogs": list, "next": page.next })).into_response()
        }
        Err(e) => internal(e),
    }
}

async fn metrics(State(node): State<Node>) -> Response {
    let body = node.metrics.encode(node.mesh.metrics(), |m| {
        let members = node.mesh.members();
        let count = |st: sipmesh_net::MemberState| members.iter().filter(|x| x.state == st).count();
        let g = &m.gauges;
        g.members("up", count(sipmesh_net::MemberState::Up));
        g.members("down", count(sipmesh_net::MemberState::Down));
        g.members("left", count(sipmesh_net::MemberState::Left));
        let snap = node.mesh.snapshot();
        g.ring_members.set(snap.ring.len() as i64);
        g.mesh_majority.set(i64::from(snap.has_majority()));
        g.mesh_joining.set(i64::from(node.mesh.joining()));
        g.credential_expires.set(
            node.mesh
                .credential_expires_ms()
                .map_or(0, |ms| (ms / 1000) as i64),
        );
        g.hints_pending.set(node.keyspace().hints().len() as i64);
        let (server, client, _) = node.dispatcher.transactions().counts();
        g.transactions.set((server + client) as i64);
        g.dialogs.set(node.proxy.dialogs().count() as i64);
        g.bindings.set(node.owned_bindings() as i64);
        g.tcp_connections.set(node.transport.connections() as i64);
        g.bans
            .set(node.throttle().bans(std::time::Instant::now()).len() as i64);
        g.capacity.set(i64::from(node.config.capacity));
        let (offset_ms, skewed) = node.mesh.clock();
        g.clock_offset.set(offset_ms as f64 / 1000.0);
        g.clock_skewed.set(i64::from(skewed));
        crate::metrics::Metrics::catch_up(
            &m.keyspace_clock_refusals,
            node.keyspace().clock_refusals(),
        );
    });
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn import_lines() {
        let ok = parse_import("user,password\nalice,a1\n\n# c\n bob , b2 \n").unwrap();
        assert_eq!(
            ok,
            vec![("alice".into(), "a1".into()), ("bob".into(), "b2".into())]
        );
        assert!(parse_import("alice").unwrap_err().contains("line 1"));
        assert!(parse_import("ok,1\nbad user,2")
            .unwrap_err()
            .contains("line 2"));
        assert!(parse_import("carol,").is_err());
    }

    #[test]
    fn loopback_hosts() {
        for h in [
            "127.0.0.1:8080",
            "localhost:8080",
            "LOCALHOST",
            "[::1]:8080",
            "127.1.2.3",
        ] {
            assert!(loopback_host(h), "{h}");
        }
        for h in [
            "evil.example:8080",
            "192.0.2.1:8080",
            "",
            "localhost.evil.example",
        ] {
            assert!(!loopback_host(h), "{h}");
        }
    }
}
