//! The live mesh page, served by the admin API at `/`: plain HTML, CSS and JavaScript compiled
//! into the binary (no CDN, no build step). The page reads `/v1/live` (Server-Sent Events),
//! `/v1/ring` and `/v1/placement/{user}`; it is read-only until the operator types the admin
//! token, which it then sends as a bearer token (kept in the tab's session storage only).
//!
//! The browser phone, at `/phone`: a page with JsSIP (vendored in `page/vendor/`, bundled by
//! `scripts/vendor-jssip.sh`, licences beside it) that registers a user over the node's
//! WebSocket listener and calls other users of the mesh. `/phone/config.json` tells it the
//! listener ports, the realm and the domain users register in.

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::node::Node;

const INDEX: &str = include_str!("page/index.html");
const SCRIPT: &str = include_str!("page/app.js");
const STYLE: &str = include_str!("page/style.css");
const PHONE: &str = include_str!("page/phone.html");
const PHONE_SCRIPT: &str = include_str!("page/phone.js");
const JSSIP: &str = include_str!("page/vendor/jssip.min.js");
const JSSIP_LICENSES: &str = include_str!("page/vendor/LICENSES.txt");

/// Paths of the page's own files (served without a token: they hold no data).
pub fn is_asset(path: &str) -> bool {
    matches!(
        path,
        "/" | "/assets/app.js"
            | "/assets/style.css"
            | "/phone"
            | "/phone/config.json"
            | "/assets/phone.js"
            | "/assets/jssip.min.js"
            | "/assets/jssip-licenses.txt"
    )
}

/// The phone also connects to the node's WebSocket listeners (another port: not 'self') and
/// plays the call's audio.
const PHONE_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self' ws: wss:; media-src 'self' blob: mediastream:; frame-ancestors 'none'";

/// Every response of the page forbids framing and outside scripts.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'";

fn asset(kind: &'static str, body: &'static str) -> impl IntoResponse {
    asset_with(kind, CSP, body)
}

fn asset_with(kind: &'static str, csp: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CONTENT_SECURITY_POLICY, csp),
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
        .route(
            "/phone",
            get(|| async { asset_with("text/html; charset=utf-8", PHONE_CSP, PHONE) }),
        )
        .route("/phone/config.json", get(phone_config))
        .route(
            "/assets/phone.js",
            get(|| async { asset("text/javascript; charset=utf-8", PHONE_SCRIPT) }),
        )
        .route(
            "/assets/jssip.min.js",
            get(|| async { asset("text/javascript; charset=utf-8", JSSIP) }),
        )
        .route(
            "/assets/jssip-licenses.txt",
            get(|| async { asset("text/plain; charset=utf-8", JSSIP_LICENSES) }),
        )
}

/// What the phone needs to know: this node, its WebSocket ports, the realm, and the domain
/// users register in (the realm, a domain of the mesh).
async fn phone_config(axum::extract::State(node): axum::extract::State<Node>) -> impl IntoResponse {
    let l = node.sip_listeners();
    (
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(serde_json::json!({
            "node": node.sip_advertised(),
            "realm": node.realm(),
            "domain": node.realm(),
            "ws": l.ws.map(|a| a.port()),
            "wss": l.wss.map(|a| a.port()),
        })),
    )
}
