//! The admin HTTP API (JSON) and Prometheus `/metrics`.
//!
//! | method and path | what |
//! | --- | --- |
//! | `GET /v1/status` | this node and the mesh: members, load, registrations, dialogs |
//! | `GET /v1/users` | every user of the mesh |
//! | `POST /v1/users` | `{"user", "password", "display_name"?}`: add or replace (QUORUM) |
//! | `POST /v1/users/import` | CSV body of `user,password` lines (QUORUM) |
//! | `GET /v1/users/{user}` | one user (never its HA1s) or 404 |
//! | `DELETE /v1/users/{user}` | remove a user |
//! | `GET /v1/registrations/{user}` | the AOR's bindings, read at QUORUM |
//! | `GET /v1/dialogs` | every active dialog of the mesh |
//! | `GET /v1/bootstrap` | the least-loaded live nodes to register with (SIP URIs, load, q) |
//! | `GET /metrics` | Prometheus counters |
//!
//! With an admin token configured every request needs `Authorization: Bearer <token>`.

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
    let token = node.config.admin_token.clone();
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
        .route("/metrics", get(metrics))
        .layer(middleware::from_fn_with_state(token, require_token))
        .with_state(node);
    let stopped = async move { shutdown.wait().await };
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stopped)
        .await
    {
        tracing::error!(error = %e, "admin API stopped");
    }
}

async fn require_token(State(token): State<Option<String>>, req: Request, next: Next) -> Response {
    if let Some(token) = token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(token.as_str()) {
            return error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
        }
    }
    next.run(req).await
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
        "sip": format!("sip:{}", node.sip_addr()),
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

async fn import_users(State(node): State<Node>, body: String) -> Response {
    let rows = match parse_import(&body) {
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
}
