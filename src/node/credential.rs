//! Online renewal of this node's membership credential (signed enrollment,
//! `sipmesh_net::admission`).
//!
//! The `--credential` file is checked every [`CHECK_EVERY`], as the TLS certificate is. When it
//! changed (modification time or size), the new credential is read and, if it names this node,
//! comes from this mesh's enrollment key and is valid now, used at once: the next heartbeat
//! carries it, and members admit this node under its new expiry and roles. A file that does not
//! load (half written, another node's, expired) is logged and recorded as an event; the
//! credential in use stays. Nothing restarts, so calls and registrations carry on.
//!
//! A credential within [`WARN_BEFORE`] of its expiry is logged once a day (and
//! `sipmesh_credential_expires_timestamp_seconds` lets an alert fire: see OPERATIONS.md).

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use sipmesh_net::shutdown::Shutdown;
use tracing::{info, warn};

use super::Node;
use crate::events::Kind;

/// How often the file is checked.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);
/// How long before expiry a warning is logged (daily).
pub const WARN_BEFORE: Duration = Duration::from_secs(7 * 24 * 3600);
const WARN_EVERY: Duration = Duration::from_secs(24 * 3600);

/// What identifies one version of the file.
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &std::path::Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// Read the file and use the credential in it. `Ok(expiry ms)` when it is in use.
fn renew(node: &Node, path: &std::path::Path) -> Result<u64, String> {
    let credential = crate::ops::enrollment::read_credential(path).map_err(|e| e.to_string())?;
    node.mesh
        .renew_credential(&credential)
        .map_err(|e| e.to_string())?;
    Ok(credential.body.expires_ms)
}

/// Watch `path` until `shutdown`.
pub(crate) async fn watch(node: Node, path: PathBuf, mut shutdown: Shutdown) {
    let mut seen = stamp(&path);
    let mut warned: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tokio::time::sleep(CHECK_EVERY) => {}
        }
        let now = stamp(&path);
        if now.is_some() && now != seen {
            seen = now;
            let text = match renew(&node, &path) {
                Ok(expires_ms) => {
                    info!(file = %path.display(), expires_ms, "membership credential renewed");
                    warned = None;
                    format!(
                        "membership credential renewed from {} (expires in {} days)",
                        path.display(),
                        expires_ms.saturating_sub(node.keyspace().wall_ms()) / 86_400_000
                    )
                }
                Err(e) => {
                    warn!(file = %path.display(), error = %e, "membership credential not renewed; the one in use stays");
                    format!("membership credential not renewed: {e}")
                }
            };
            node.metrics.events.push(Kind::Admin, text);
        }
        let Some(expires_ms) = node.mesh.credential_expires_ms() else {
            continue;
        };
        let left = Duration::from_millis(expires_ms.saturating_sub(node.keyspace().wall_ms()));
        if left < WARN_BEFORE && warned.is_none_or(|w| w.elapsed() >= WARN_EVERY) {
            warned = Some(tokio::time::Instant::now());
            warn!(
                file = %path.display(),
                hours_left = left.as_secs() / 3600,
                "this node's membership credential expires soon: issue a new one (sipmesh mesh invite) and write it over the --credential file"
            );
        }
    }
}
