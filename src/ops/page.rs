//! The live mesh page, served by the admin API at `/`: plain HTML, CSS and JavaScript compiled
//! into the binary (no CDN, no build step). The page reads `/v1/live` (Server-Sent Events),
//! `/v1/ring` and `/v1/placement/{user}`; it is read-only until the operator types the admin
//! token, which it then sends as a bearer token (kept in the tab's session storage only).

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::node::Node;

const INDEX: &str = include_str!("page/index.html");
const SCRIPT: &str = include_str!("page/app.js");
const STYLE: &str = include_str!("page/style.css");

/// Paths of the page's own files (served without a token: they hold no data).
pub fn is_asset(path: &str) -> bool {
    matches!(path, "/" | "/assets/app.js" | "/assets/style.css")
}

/// Every response of the page forbids framing and outside scripts.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'";

fn asset(kind: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}

/// The page's routes.
pub fn routes() -> Router<Node> {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/assets/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/assets/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
}
