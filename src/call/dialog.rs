//! Dialogs: the state of established calls, kept by the node that faces the caller, stored in the
//! replicated `dialogs_of_node` table once a call is old enough, with a TTL that in-dialog
//! traffic refreshes. What a custodian needs to close the calls of a dead node.

use std::collections::HashMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sipmesh_net::{Consistency, Mesh, PeerId};
use sipmesh_storage::{codec, Mutation};
use tracing::debug;

use crate::sip::flow::Flow;
use crate::sip::header::NameAddr;
use crate::sip::message::{HeaderName, Message};
use crate::sip::validate::Checked;
use crate::slack::Slack;
use crate::tables::DIALOGS_OF_NODE;

/// How long a call lasts before its dialog is written (a few seconds: most calls that fail
/// early or are one-shot write nothing).
pub const DEFAULT_WRITE_AFTER: Duration = Duration::from_secs(5);
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
    /// requests come on, `node_of` the mesh node a route-set URI names. `None` if From or To do
    /// not parse.
    pub fn from_answer(
        request: &Message,
        response: &Message,
        upstream: &Flow,
        now_ms: u64,
        node_of: impl Fn(&str) -> Option<PeerId>,
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
        let mut nodes: Vec<PeerId> = Vec::new();
        for peer in rr
            .iter()
            .rev()
            .filter_map(|r| uri_of(r))
            .filter_map(|u| node_of(&u))
        {
            // Double Record-Route: one node can have two entries in a row.
            if nodes.last() != Some(&peer) {
                nodes.push(peer);
            }
        }
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

/// Partitions per node in `dialogs_of_node`: a node's stored dialogs spread over this many, so
/// no partition grows with the node's calls (at 100,000 long calls, ~1,600 rows each).
pub const DIALOG_BUCKETS: u16 = 64;
/// Dialogs a node keeps in memory at most; beyond this new ones are not remembered (they still
/// work: the route set carries what routing needs), and a metric says so.
const MAX_LOCAL_DIALOGS: usize = 200_000;

/// The partition key of a node's bucket of stored dialogs.
fn bucket_key(node: &PeerId, call_id: &str) -> Vec<u8> {
    bucket_partition(node, bucket_of(call_id))
}

/// The bucket of a call's dialogs under its writer.
fn bucket_of(call_id: &str) -> u16 {
    (xxhash_rust::xxh3::xxh3_64(call_id.as_bytes()) % DIALOG_BUCKETS as u64) as u16
}

fn bucket_partition(node: &PeerId, bucket: u16) -> Vec<u8> {
    let mut k = node.to_bytes();
    k.extend_from_slice(&bucket.to_be_bytes());
    k
}

/// What a node remembers of the dialogs it is the stateful proxy of.
struct Local {
    /// Whether this node writes the dialog (it faces the caller).
    writer: bool,
    /// Whether the record is in the keyspace.
    stored: bool,
    /// When the keyspace copy was last written (wall-clock ms).
    written_ms: u64,
    /// When in-dialog traffic last passed (wall-clock ms).
    seen_ms: u64,
    /// How long the dialog lives without in-dialog traffic (ms): its session interval and a
    /// grace when the parties negotiated session timers (RFC 4028), else the TTL.
    lifetime_ms: u64,
    /// The record.
    record: Dialog,
}

/// The smallest session interval this mesh accepts (RFC 4028 §4: 90 s), sent as Min-SE in 422.
pub const MIN_SE: u64 = 90;

/// The session interval a message states (`Session-Expires`, compact `x`), in seconds.
pub fn session_interval(m: &Message) -> Option<u64> {
    let v = m
        .header(&HeaderName::Other("session-expires".into()))
        .or_else(|| m.header(&HeaderName::Other("x".into())))?;
    let digits: String = v
        .trim()
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok().filter(|s| *s > 0)
}

/// How long a dialog with this session interval lives without a refresh: the interval and the
/// grace RFC 4028 §10 gives the refresher (a third of it, at most 32 s).
fn session_lifetime_ms(interval: u64) -> u64 {
    (interval + (interval / 3).min(32)) * 1000
}

/// A dialog as nodes list it for the admin API.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Listed {
    /// The record.
    pub dialog: Dialog,
    /// Whether it is in the keyspace (calls longer than the write delay are).
    pub stored: bool,
}

/// The dialogs of a node: in memory while they last; in the keyspace (`dialogs_of_node`, under
/// the node that faces the caller, bucketed) once a call has lasted `write_after` — so short
/// calls write nothing, and a long one writes once when it is old enough and once when it ends.
/// What survivors need to keep routing a call is in its route set; the stored record is what a
/// custodian needs to close the calls of a dead node.
pub struct Dialogs {
    mesh: Mesh,
    ttl: Duration,
    write_after: Duration,
    local: Mutex<HashMap<String, Local>>,
}

impl Dialogs {
    /// Dialog tracking over the mesh.
    pub fn new(mesh: Mesh, ttl: Duration, write_after: Duration) -> Self {
        Dialogs {
            mesh,
            ttl,
            write_after,
            local: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Local>> {
        self.local.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many dialogs this node is the stateful proxy of.
    pub fn count(&self) -> usize {
        self.lock().len()
    }

    fn upsert(&self, d: &Dialog, writer: &PeerId, lifetime_ms: u64) -> Mutation {
        let ks = self.mesh.keyspace();
        let expires = ks.wall_ms() + lifetime_ms;
        Mutation::new(DIALOGS_OF_NODE, bucket_key(writer, &d.call_id)).upsert(
            d.id.as_bytes(),
            [("dialog", codec::encode(d).unwrap_or_default())],
            ks.now(),
            Some(expires),
        )
    }

    fn delete(&self, d_id: &str, call_id: &str, writer: &PeerId) -> Mutation {
        Mutation::new(DIALOGS_OF_NODE, bucket_key(writer, call_id))
            .delete_row(d_id.as_bytes(), self.mesh.keyspace().now())
    }

    async fn write_all(&self, muts: Vec<Mutation>) -> bool {
        match self.mesh.write_many(muts, Consistency::Quorum).await {
            Ok(()) => true,
            Err(e) => {
                debug!(error = %e, "dialog write failed (hinted)");
                false
            }
        }
    }

    /// This node's dialogs whose path includes `node`.
    pub fn written_through(&self, node: &PeerId) -> Vec<Dialog> {
        self.lock()
            .values()
            .filter(|l| l.writer && l.record.nodes.contains(node))
            .map(|l| l.record.clone())
            .collect()
    }

    /// A dialog was established through this node (a 2xx to an INVITE passed), with the
    /// session interval the 2xx states, if any. Nothing is written now: see
    /// [`Dialogs::sweep`].
    pub fn established(&self, d: Dialog, writer: bool, session: Option<u64>) {
        let now = self.mesh.keyspace().wall_ms();
        let mut local = self.lock();
        if local.len() >= MAX_LOCAL_DIALOGS && !local.contains_key(&d.id) {
            debug!("dialog table full; not remembered");
            return;
        }
        // A re-INVITE's 2xx refreshes what is known, it does not replace the record.
        local.entry(d.id.clone()).or_insert(Local {
            writer,
            stored: false,
            written_ms: 0,
            seen_ms: now,
            lifetime_ms: session
                .map(session_lifetime_ms)
                .unwrap_or(self.ttl.as_millis() as u64),
            record: d,
        });
    }

    /// In-dialog traffic passed: the dialog is alive (the sweep refreshes a stored copy's
    /// TTL).
    pub fn touch(&self, id: &str) {
        let now = self.mesh.keyspace().wall_ms();
        if let Some(l) = self.lock().get_mut(id) {
            l.seen_ms = now;
        }
    }

    /// Write the dialogs that have lasted `write_after`, and refresh stored ones with recent
    /// traffic whose copy is a quarter of a TTL old (in one batch); forget the ones not seen
    /// for a TTL (their parties vanished without a BYE). Run every second or so.
    pub async fn sweep(&self) {
        let now = self.mesh.keyspace().wall_ms();
        let (due, stale): (Vec<(Dialog, u64)>, usize) = {
            let mut local = self.lock();
            let before = local.len();
            local.retain(|_, l| now.saturating_sub(l.seen_ms.max(l.written_ms)) < l.lifetime_ms);
            let stale = before - local.len();
            local.release();
            let after = self.write_after.as_millis() as u64;
            let due = local
                .values()
                .filter(|l| {
                    let new = !l.stored && now.saturating_sub(l.record.started_ms) >= after;
                    let refresh = l.stored
                        && l.seen_ms > l.written_ms
                        && now.saturating_sub(l.written_ms) > l.lifetime_ms / 4;
                    l.writer && (new || refresh)
                })
                .map(|l| (l.record.clone(), l.lifetime_ms))
                .collect();
            (due, stale)
        };
        if stale > 0 {
            debug!(stale, "forgot dialogs not refreshed within their lifetime");
        }
        if due.is_empty() {
            return;
        }
        let me = self.mesh.peer_id();
        let muts = due
            .iter()
            .map(|(d, lifetime)| self.upsert(d, &me, *lifetime))
            .collect();
        if self.write_all(muts).await {
            let mut local = self.lock();
            for (d, _) in &due {
                if let Some(l) = local.get_mut(&d.id) {
                    l.stored = true;
                    l.written_ms = now;
                }
            }
        }
    }

    /// A 2xx to a BYE passed this node as a relay: if it is the end of one of this node's
    /// dialogs, forget it and delete its stored record.
    pub fn ended_elsewhere(self: &Arc<Self>, response: &Message) {
        if self.lock().is_empty() {
            return;
        }
        let tag = |h: HeaderName| {
            response
                .header(&h)
                .and_then(|v| NameAddr::parse(v, "tag").ok())
                .and_then(|n| n.tag().map(str::to_string))
        };
        let (Some(call_id), Some(a), Some(b)) = (
            response.header(&HeaderName::CallId),
            tag(HeaderName::From),
            tag(HeaderName::To),
        ) else {
            return;
        };
        let id = dialog_id(call_id, &a, &b);
        if self.lock().contains_key(&id) {
            let (this, call_id) = (self.clone(), call_id.to_string());
            tokio::spawn(async move { this.ended(&id, &call_id, &[]).await });
        }
    }

    /// The dialog ended (a 2xx to its BYE passed this node): forget it, and delete its stored
    /// record if it has one — this node's, or that of a dead node the BYE's route skipped (the
    /// call outlived the node that stored it).
    pub async fn ended(&self, id: &str, call_id: &str, dead_on_path: &[PeerId]) {
        let removed = self.lock().remove(id);
        let mut muts = Vec::new();
        if removed.is_some_and(|l| l.stored) {
            muts.push(self.delete(id, call_id, &self.mesh.peer_id()));
        }
        for dead in dead_on_path {
            muts.push(self.delete(id, call_id, dead));
        }
        if !muts.is_empty() {
            self.write_all(muts).await;
        }
    }

    /// Remove a dialog from this node's memory and its record from the keyspace (force-close).
    pub async fn remove(&self, d: &Dialog) {
        self.lock().remove(&d.id);
        if let Some(writer) = d.nodes.first() {
            let m = self.delete(&d.id, &d.call_id, writer);
            self.write_all(vec![m]).await;
        }
    }

    /// The dialogs a node stored, read at QUORUM from its buckets.
    pub async fn of_node(&self, node: &PeerId) -> crate::error::Result<Vec<Dialog>> {
        let mut out = Vec::new();
        for bucket in 0..DIALOG_BUCKETS {
            let p = self
                .mesh
                .read(
                    DIALOGS_OF_NODE,
                    &bucket_partition(node, bucket),
                    Consistency::Quorum,
                )
                .await?;
            out.extend(
                p.rows
                    .iter()
                    .filter_map(|r| r.get("dialog"))
                    .filter_map(decode),
            );
        }
        Ok(out)
    }

    /// A page of what this node knows of dialogs, for a mesh-wide listing: those in its
    /// memory and the stored records its keyspace holds, with ids after `after`, the first
    /// `limit` by id; and whether there are more. Memory for at most `limit` records however
    /// many there are; the stored ones are read bucket by bucket (for the admin API, not the
    /// call path: run it on the blocking pool).
    pub fn local_page(&self, after: Option<&str>, limit: usize) -> (Vec<Listed>, bool) {
        let mut page = Selection::new(after, limit);
        for l in self.lock().values() {
            if page.wants(&l.record.id) {
                page.add(Listed {
                    dialog: l.record.clone(),
                    stored: l.stored,
                });
            }
        }
        // Each bucket in id order from the cursor, up to the first id past the page's end.
        self.stored_records(after, |id, raw| {
            if !page.wants(id) {
                return false;
            }
            if let Some(dialog) = decode(raw) {
                page.add(Listed {
                    dialog,
                    stored: true,
                });
            }
            true
        });
        page.finish()
    }

    /// The dialog with this id, if this node knows of it (in memory or stored here).
    pub fn local_find(&self, id: &str) -> Option<Listed> {
        let known = self.lock().get(id).map(|l| Listed {
            dialog: l.record.clone(),
            stored: l.stored,
        });
        // One point read per writer: the bucket follows from the Call-ID, which holds no `;`.
        let call_id = id.split(';').next().unwrap_or(id);
        let bucket = bucket_of(call_id).to_be_bytes();
        let ks = self.mesh.keyspace();
        let mut stored = None;
        let mut after: Option<Vec<u8>> = None;
        while let Ok((keys, more)) = ks.partitions_of(DIALOGS_OF_NODE, after.as_deref(), 256) {
            for pk in keys.iter().filter(|pk| pk.ends_with(&bucket)) {
                if let Ok(Some(row)) = ks.read_row(DIALOGS_OF_NODE, pk, id.as_bytes()) {
                    stored = stored.or_else(|| row.get("dialog").and_then(decode));
                }
            }
            match keys.last() {
                Some(last) if more && stored.is_none() => after = Some(last.clone()),
                _ => break,
            }
        }
        match (known, stored) {
            (Some(mut k), s) => {
                k.stored |= s.is_some();
                Some(k)
            }
            (None, s) => s.map(|dialog| Listed {
                dialog,
                stored: true,
            }),
        }
    }

    /// The stored records this node's keyspace holds with ids after `after`, as id and
    /// encoded bytes (the caller decodes what it wants), bucket by bucket in id order, a few
    /// rows at a time; `visit` returning false ends the bucket. The buckets are listed a page
    /// of partition keys at a time.
    fn stored_records(&self, after: Option<&str>, mut visit: impl FnMut(&str, &[u8]) -> bool) {
        const ROWS_AT_ONCE: usize = 32;
        let ks = self.mesh.keyspace();
        let mut bucket_after: Option<Vec<u8>> = None;
        while let Ok((keys, more)) = ks.partitions_of(DIALOGS_OF_NODE, bucket_after.as_deref(), 256)
        {
            for pk in &keys {
                let mut from: Option<Vec<u8>> = after.map(|a| a.as_bytes().to_vec());
                'bucket: loop {
                    let start = from.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
                    let Ok(rows) =
                        ks.slice(DIALOGS_OF_NODE, pk, start, Bound::Unbounded, ROWS_AT_ONCE)
                    else {
                        break;
                    };
                    for row in &rows {
                        if let (Ok(id), Some(raw)) =
                            (std::str::from_utf8(&row.clustering), row.get("dialog"))
                        {
                            if !visit(id, raw) {
                                break 'bucket;
                            }
                        }
                    }
                    match rows.last() {
                        Some(last) if rows.len() == ROWS_AT_ONCE => {
                            from = Some(last.clustering.clone())
                        }
                        _ => break,
                    }
                }
            }
            match keys.last() {
                Some(last) if more => bucket_after = Some(last.clone()),
                _ => break,
            }
        }
    }
}

/// The first `limit` dialogs by id after `after`, from records offered in any order and
/// possibly twice (in memory and stored; on several nodes): one entry per id, stored if any
/// copy is. Holds at most `limit` records.
pub struct Selection<'a> {
    after: Option<&'a str>,
    limit: usize,
    kept: std::collections::BTreeMap<String, Listed>,
    more: bool,
}

impl<'a> Selection<'a> {
    /// An empty page of at most `limit` (at least 1) after `after`.
    pub fn new(after: Option<&'a str>, limit: usize) -> Self {
        Selection {
            after,
            limit: limit.max(1),
            kept: std::collections::BTreeMap::new(),
            more: false,
        }
    }

    /// Whether a record with this id could be on the page (so is worth decoding or cloning).
    pub fn wants(&mut self, id: &str) -> bool {
        if self.after.is_some_and(|a| id <= a) {
            return false;
        }
        if self.kept.len() >= self.limit && !self.kept.contains_key(id) {
            if let Some((last, _)) = self.kept.last_key_value() {
                if id > last.as_str() {
                    self.more = true;
                    return false;
                }
            }
        }
        true
    }

    /// Offer a record (one [`Selection::wants`] accepted).
    pub fn add(&mut self, l: Listed) {
        if !self.wants(&l.dialog.id) {
            return;
        }
        if let Some(k) = self.kept.get_mut(&l.dialog.id) {
            k.stored |= l.stored;
            return;
        }
        self.kept.insert(l.dialog.id.clone(), l);
        if self.kept.len() > self.limit {
            self.kept.pop_last();
            self.more = true;
        }
    }

    /// Note that more may follow what was offered (a member said so).
    pub fn more_after(&mut self) {
        self.more = true;
    }

    /// The page by id, and whether more follow.
    pub fn finish(self) -> (Vec<Listed>, bool) {
        (self.kept.into_values().collect(), self.more)
    }
}

/// Decode a dialog record.
pub fn decode(bytes: &[u8]) -> Option<Dialog> {
    codec::decode(bytes, "dialogs", b"").ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(header: &str) -> Message {
        let text = format!(
            "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\r\nFrom: <sip:a@a>;tag=1\r\nTo: <sip:b@b>;tag=2\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n{header}Content-Length: 0\r\n\r\n"
        );
        Message::parse(text.as_bytes(), true).unwrap()
    }

    #[test]
    fn the_session_interval_is_read_in_both_forms() {
        assert_eq!(
            session_interval(&with("Session-Expires: 1800;refresher=uac\r\n")),
            Some(1800)
        );
        assert_eq!(session_interval(&with("x: 90\r\n")), Some(90));
        assert_eq!(session_interval(&with("")), None);
        assert_eq!(session_interval(&with("Session-Expires: soon\r\n")), None);
        assert_eq!(session_interval(&with("Session-Expires: 0\r\n")), None);
    }

    fn listed(id: &str, stored: bool) -> Listed {
        Listed {
            dialog: Dialog {
                id: id.into(),
                call_id: id.into(),
                caller_tag: "a".into(),
                callee_tag: "b".into(),
                caller_uri: "sip:a@x".into(),
                callee_uri: "sip:b@x".into(),
                caller_contact: "sip:a@192.0.2.1".into(),
                callee_contact: "sip:b@192.0.2.2".into(),
                caller_route_set: vec![],
                callee_route_set: vec![],
                caller_cseq: 1,
                nodes: vec![],
                caller_flow: Flow::Udp("192.0.2.1:5060".parse().unwrap()),
                started_ms: 0,
            },
            stored,
        }
    }

    /// Pages of a listing: records offered in any order, twice (memory and store, several
    /// nodes), give each id once, stored if any copy is, the first `limit` after the cursor,
    /// and `more` exactly while some are left.
    #[test]
    fn a_selection_pages_by_id_once_each_and_knows_when_more_are_left() {
        let ids: Vec<String> = (0..250)
            .map(|i| format!("d{:03}", (i * 97) % 250))
            .collect();
        let offers: Vec<Listed> = ids
            .iter()
            .map(|id| listed(id, false))
            .chain(ids.iter().rev().step_by(3).map(|id| listed(id, true)))
            .collect();
        let mut sorted = ids.clone();
        sorted.sort();
        for limit in [1, 7, 100, 250, 400] {
            let (mut got, mut after) = (Vec::new(), None::<String>);
            loop {
                let mut page = Selection::new(after.as_deref(), limit);
                for l in &offers {
                    page.add(l.clone());
                }
                let (list, more) = page.finish();
                assert!(list.len() <= limit);
                after = list.last().map(|l| l.dialog.id.clone());
                got.extend(list);
                if !more {
                    break;
                }
            }
            let got_ids: Vec<&str> = got.iter().map(|l| l.dialog.id.as_str()).collect();
            assert_eq!(got_ids, sorted, "pages of {limit}");
            for l in &got {
                let stored = offers
                    .iter()
                    .any(|o| o.dialog.id == l.dialog.id && o.stored);
                assert_eq!(l.stored, stored, "{}", l.dialog.id);
            }
        }
        // A member that says more follow makes the page say so too.
        let mut page = Selection::new(None, 10);
        page.add(listed("a", false));
        page.more_after();
        assert!(page.finish().1);
    }

    #[test]
    fn a_session_lives_its_interval_and_a_bounded_grace() {
        assert_eq!(session_lifetime_ms(90), 120_000);
        assert_eq!(session_lifetime_ms(1800), 1_832_000);
    }
}
