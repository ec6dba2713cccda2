//! Dialogs: the state of established calls, in the replicated `dialogs` table (one partition per
//! dialog) and the `dialogs_by_proxy` index (one partition per node on the path), with a TTL that
//! in-dialog traffic refreshes. Everything a surviving node needs to take a call over or close it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sipmesh_net::{Consistency, Mesh, PeerId};
use sipmesh_storage::{codec, Mutation};
use tracing::debug;

use crate::sip::flow::Flow;
use crate::sip::header::NameAddr;
use crate::sip::message::{HeaderName, Message};
use crate::sip::uri::SipUri;
use crate::sip::validate::Checked;
use crate::tables::{DIALOGS, DIALOGS_BY_PROXY};

/// How long a dialog lives in the keyspace without in-dialog traffic (refreshed by it).
pub const DEFAULT_DIALOG_TTL: Duration = Duration::from_secs(2 * 3600);

/// An established call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dialog {
    /// `Call-ID;tag;tag` with the tags sorted (the same id from either side).
    pub id: String,
    /// Call-ID.
    pub call_id: String,
    /// The caller's tag (From of the INVITE).
    pub caller_tag: String,
    /// The callee's tag (To of the 2xx).
    pub callee_tag: String,
    /// The caller's AOR (From URI).
    pub caller_uri: String,
    /// The callee's AOR (To URI).
    pub callee_uri: String,
    /// The caller's Contact (its remote target).
    pub caller_contact: String,
    /// The callee's Contact (its remote target).
    pub callee_contact: String,
    /// The route set as the caller uses it (the 2xx's Record-Route, in order).
    pub caller_route_set: Vec<String>,
    /// The route set as the callee uses it (the Record-Route, reversed).
    pub callee_route_set: Vec<String>,
    /// The caller's CSeq when the dialog was established.
    pub caller_cseq: u32,
    /// The mesh nodes on the path, caller side first.
    #[serde(with = "crate::sip::flow::peers_bytes")]
    pub nodes: Vec<PeerId>,
    /// The flow the caller's requests came in on, at the first node.
    pub caller_flow: Flow,
    /// When the call was answered (wall-clock ms).
    pub started_ms: u64,
}

/// The id of a dialog: Call-ID and both tags, sorted.
pub fn dialog_id(call_id: &str, tag_a: &str, tag_b: &str) -> String {
    let (a, b) = if tag_a <= tag_b {
        (tag_a, tag_b)
    } else {
        (tag_b, tag_a)
    };
    format!("{call_id};{a};{b}")
}

/// The id of the dialog an in-dialog request belongs to.
pub fn id_of(c: &Checked) -> String {
    dialog_id(
        &c.call_id,
        c.from.tag().unwrap_or_default(),
        c.to.tag().unwrap_or_default(),
    )
}

impl Dialog {
    /// The dialog a 2xx to an INVITE establishes (RFC 3261 §12.1), as seen by a proxy on its
    /// path: `request` is the INVITE as this proxy forwarded it, `upstream` the flow the caller's
    /// requests come on. `None` if From or To do not parse.
    pub fn from_answer(
        request: &Message,
        response: &Message,
        upstream: &Flow,
        now_ms: u64,
    ) -> Option<Dialog> {
        let to = NameAddr::parse(response.header(&HeaderName::To)?, "To").ok()?;
        let from = NameAddr::parse(request.header(&HeaderName::From)?, "From").ok()?;
        let call_id = request
            .header(&HeaderName::CallId)
            .unwrap_or_default()
            .to_string();
        let (caller_tag, callee_tag) = (
            from.tag().unwrap_or_default().to_string(),
            to.tag().unwrap_or_default().to_string(),
        );
        let rr: Vec<String> = response
            .values(&HeaderName::RecordRoute)
            .iter()
            .map(|s| s.to_string())
            .collect();
        let uri_of = |v: &str| NameAddr::parse(v, "Route").ok().map(|n| n.uri);
        let nodes: Vec<PeerId> = rr
            .iter()
            .rev()
            .filter_map(|r| uri_of(r))
            .filter_map(|u| SipUri::parse(&u).ok())
            .filter_map(|u| crate::call::record_route::node_of(&u))
            .collect();
        let contact = |m: &Message| {
            m.values(&HeaderName::Contact)
                .first()
                .and_then(|c| uri_of(c))
                .unwrap_or_default()
        };
        Some(Dialog {
            id: dialog_id(&call_id, &caller_tag, &callee_tag),
            call_id,
            caller_tag,
            callee_tag,
            caller_uri: from.uri,
            callee_uri: to.uri,
            caller_contact: contact(request),
            callee_contact: contact(response),
            // RFC 3261 §12.1: the UAC uses the Record-Route reversed, the UAS as it is.
            caller_route_set: rr.iter().rev().cloned().collect(),
            callee_route_set: rr.clone(),
            caller_cseq: request
                .header(&HeaderName::CSeq)
                .and_then(|c| c.split_ascii_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0),
            nodes,
            caller_flow: upstream.clone(),
            started_ms: now_ms,
        })
    }
}

/// What a node remembers of the dialogs it is on the path of.
struct Local {
    /// Whether this node wrote the dialog to the keyspace (it removes it too).
    writer: bool,
    /// When the keyspace copy was last refreshed (wall-clock ms).
    refreshed_ms: u64,
    /// The record.
    record: Dialog,
}

/// The dialogs of a node.
pub struct Dialogs {
    mesh: Mesh,
    ttl: Duration,
    local: Mutex<HashMap<String, Local>>,
}

impl Dialogs {
    /// Dialog tracking over the mesh.
    pub fn new(mesh: Mesh, ttl: Duration) -> Self {
        Dialogs {
            mesh,
            ttl,
            local: Mutex::new(HashMap::new()),
        }
    }

    /// How many dialogs this node is on the path of.
    pub fn count(&self) -> usize {
        self.local.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn mutations(&self, d: &Dialog, delete: bool) -> Vec<Mutation> {
        let ks = self.mesh.keyspace();
        let ts = ks.now();
        let expires = ks.wall_ms() + self.ttl.as_millis() as u64;
        let mut out = Vec::new();
        let main = Mutation::new(DIALOGS, d.id.clone().into_bytes());
        out.push(if delete {
            main.delete_row(b"", ts)
        } else {
            main.upsert(
                b"",
                [("dialog", codec::encode(d).unwrap_or_default())],
                ts,
                Some(expires),
            )
        });
        // Indexed under its writer (the caller-facing node, first on the path): the custodian
        // of a dead writer finds them there; a writer that survives another node of the path
        // closes those dialogs itself.
        for node in d.nodes.iter().take(1) {
            let m = Mutation::new(DIALOGS_BY_PROXY, node.to_string().into_bytes());
            out.push(if delete {
                m.delete_row(d.id.as_bytes(), ts)
            } else {
                m.upsert(
                    d.id.as_bytes(),
                    [("state", b"confirmed".to_vec())],
                    ts,
                    Some(expires),
                )
            });
        }
        out
    }

    async fn write_all(&self, muts: Vec<Mutation>) {
        if let Err(e) = self.mesh.write_many(muts, Consistency::Quorum).await {
            debug!(error = %e, "dialog write failed (hinted)");
        }
    }

    /// This node's written dialogs whose path includes `node`.
    pub fn written_through(&self, node: &PeerId) -> Vec<Dialog> {
        self.local
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|l| l.writer && l.record.nodes.contains(node))
            .map(|l| l.record.clone())
            .collect()
    }

    /// A dialog was established through this node; the writer stores it at QUORUM.
    pub async fn established(&self, d: Dialog, writer: bool) {
        let now = self.mesh.keyspace().wall_ms();
        self.local.lock().unwrap_or_else(|p| p.into_inner()).insert(
            d.id.clone(),
            Local {
                writer,
                refreshed_ms: now,
                record: d.clone(),
            },
        );
        if writer {
            let muts = self.mutations(&d, false);
            self.write_all(muts).await;
        }
    }

    /// In-dialog traffic: refresh the keyspace copy's TTL (at most once per TTL/4).
    pub async fn touch(&self, id: &str) {
        let now = self.mesh.keyspace().wall_ms();
        let record = {
            let mut local = self.local.lock().unwrap_or_else(|p| p.into_inner());
            match local.get_mut(id) {
                Some(l)
                    if l.writer
                        && now.saturating_sub(l.refreshed_ms) > self.ttl.as_millis() as u64 / 4 =>
                {
                    l.refreshed_ms = now;
                    Some(l.record.clone())
                }
                _ => None,
            }
        };
        if let Some(d) = record {
            let muts = self.mutations(&d, false);
            self.write_all(muts).await;
        }
    }

    /// The dialog ended (a 2xx to BYE passed): the writer removes it from the keyspace — or
    /// any node of the path, if the writer is down (the call outlived it).
    pub async fn ended(&self, id: &str) {
        let removed = self
            .local
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        if let Some(l) = removed {
            let writer_down = l.record.nodes.first().is_some_and(|p| !self.mesh.is_up(p));
            if l.writer || writer_down {
                self.remove(&l.record).await;
            }
        }
    }

    /// Remove a dialog from the keyspace (and from this node's memory).
    pub async fn remove(&self, d: &Dialog) {
        self.local
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&d.id);
        let muts = self.mutations(d, true);
        self.write_all(muts).await;
    }

    /// The dialogs a node was on the path of, read at QUORUM from the keyspace.
    pub async fn of_node(&self, node: &PeerId) -> crate::error::Result<Vec<Dialog>> {
        let index = self
            .mesh
            .read(
                DIALOGS_BY_PROXY,
                node.to_string().as_bytes(),
                Consistency::Quorum,
            )
            .await?;
        let mut out = Vec::new();
        for row in index.rows {
            let p = self
                .mesh
                .read(DIALOGS, &row.clustering, Consistency::Quorum)
                .await?;
            if let Some(d) = p
                .rows
                .first()
                .and_then(|r| r.get("dialog"))
                .and_then(decode)
            {
                out.push(d);
            }
        }
        Ok(out)
    }

    /// Dialogs whose partitions this node holds (one part of a mesh-wide listing).
    pub fn local_records(&self) -> Vec<Vec<u8>> {
        let ks = self.mesh.keyspace();
        let mut out = Vec::new();
        if let Ok(parts) = ks.partitions() {
            for (_, table, pk) in parts {
                if table == DIALOGS {
                    if let Ok(Some(row)) = ks.read_row(DIALOGS, &pk, b"") {
                        if let Some(v) = row.get("dialog") {
                            out.push(v.to_vec());
                        }
                    }
                }
            }
        }
        out
    }
}

/// Decode a dialog record.
pub fn decode(bytes: &[u8]) -> Option<Dialog> {
    codec::decode(bytes, "dialogs", b"").ok()
}
