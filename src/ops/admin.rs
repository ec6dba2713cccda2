//! The admin HTTP API (JSON) and Prometheus `/metrics`.
//!
//! | method and path | what |
//! | --- | --- |
//! | `GET /v1/status` | this node and the mesh: members, load, registrations, dialogs |
//! | `GET /v1/users` | every user of the mesh |
//! | `POST /v1/users` | `{"user", "password", "display_name"?}`: add or replace (QUORUM) |
//! | `POST /v1/users/import` | `{"csv": "user,password lines"}` (QUORUM) |
//! | `GET /v1/users/{user}` | one user (never its HA1s) or 404 |
//! | `DELETE /v1/users/{user}` | remove a user |
//! | `GET /v1/registrations/{user}` | the AOR's bindings, read at QUORUM |
//! | `GET /v1/dialogs` | every active dialog of the mesh |
//! | `GET /v1/bootstrap` | the least-loaded live nodes to register with (SIP URIs, load, q) |
//! | `POST /v1/mesh/remove` | `{"peer_id", "force"?}`: remove a dead member from the ring (409 if it is up, or if data could be lost and not `force`) |
//! | `GET /v1/bans` | sources banned by the throttle, why, seconds left |
//! | `DELETE /v1/bans/{ip}` | lift a ban |
//! | `GET /metrics` | Prometheus counters |
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
        | Error::Net(e @ sipmesh_net::Error::Timeout { .. }) => {
            error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
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
        .route("/v1/bans", get(bans))
        .route("/v1/bans/{ip}", axum::routing::delete(lift_ban))
        .route("/metrics", get(metrics))
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
    if mutating || !g.loopback {
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
    match node.mesh.remove_member(peer, r.force) {
        Ok(()) => Json(json!({ "removed": peer.to_string() })).into_response(),
        Err(why) => error(StatusCode::CONFLICT, why),
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
    if node.throttle().lift(&addr) {
        Json(json!({ "lifted": addr.to_string() })).into_response()
    } else {
        error(StatusCode::NOT_FOUND, format!("{addr} is not banned"))
    }
}

async fn status(State(node): State<Node>) -> Response {
    let members = node.mesh.members();
    let up = members
        .iter()
        .filter(|m| m.state == sipmesh_net::MemberState::Up)
        .count();
    let registrations = node.owned_bindings();
    Json(json!({
        "peer_id": node.mesh.peer_id().to_string(),
        "sip": format!("sip:{}", node.sip_advertised()),
        "http": node.http_addr().map(|a| format!("http://{a}")),
        "p2p": node.mesh.dial_addr().map(|a| a.to_string()),
        "realm": node.config.realm,
        "members_up": up,
        "registrations": registrations,
        "dialogs": node.proxy.dialogs().count(),
        "capacity": node.config.capacity,
        "tcp_connections": node.transport.connections(),
        "transactions": node.transactions_alive(),
        "hints": node.keyspace().hints().len(),
        "members": members,
    }))
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

async fn list_users(State(node): State<Node>) -> Response {
    match node.list_users().await {
        Ok(users) => Json(json!({ "users": users })).into_response(),
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

async fn dialogs(State(node): State<Node>) -> Response {
    match node.list_dialogs().await {
        Ok(d) => {
            let list: Vec<serde_json::Value> = d
                .into_iter()
                .map(|l| {
                    let mut v = serde_json::to_value(&l.dialog).unwrap_or_default();
                    v["stored"] = l.stored.into();
                    v
                })
                .collect();
            Json(json!({ "dialogs": list })).into_response()
        }
        Err(e) => internal(e),
    }
}

async fn metrics(State(node): State<Node>) -> Response {
    let members_up = node
        .mesh
        .members()
        .iter()
        .filter(|m| m.state == sipmesh_net::MemberState::Up)
        .count() as u64;
    let body = node.metrics.render(&[
        (
            "members_up",
            "Members of the mesh that are up, this node included",
            members_up,
        ),
        (
            "tcp_connections",
            "Open SIP TCP connections",
            node.transport.connections() as u64,
        ),
        (
            "hints_pending",
            "Hints waiting for a peer",
            node.keyspace().hints().len() as u64,
        ),
        (
            "mesh_majority",
            "1 while this node sees a majority of its persisted ring (QUORUM is served), else 0",
            u64::from(node.mesh.snapshot().has_majority()),
        ),
        (
            "keyspace_clock_refusals",
            "Mutations refused since start for a timestamp beyond the clock bound (5 min ahead)",
            node.keyspace().clock_refusals(),
        ),
    ]);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
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
