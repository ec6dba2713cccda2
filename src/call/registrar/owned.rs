//! The bindings a node owns — registered through it, on its flows — as only the owner knows
//! them: the expiry the phone really asked for, the latest CSeq, the flow. The owner is their
//! authority; the replicated `registrations` rows are leases others route by.
//!
//! A row is written with a lease of twice the interval the phone asked for. A refresh that
//! changes nothing but the expiry, and whose new expiry the row's lease still covers, writes
//! nothing to the keyspace. The owner deletes a row when the phone's real expiry passes
//! ([`Owned::expired`]), so the lease only matters if the owner dies (its bindings are then
//! ignored anyway) or restarts (the lease is then the expiry, at most one interval late).

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::call::location::Binding;
use crate::sip::flow::Flow;
use crate::slack::Slack;

/// How much longer than the phone's own expiry a binding row lives in the keyspace.
pub const LEASE_FACTOR: u64 = 2;

/// A binding row: its AOR (the partition) and its key in it.
type RowRef = (String, Vec<u8>);

/// One binding this node owns, in a few dozen bytes: what tells a refresh from a change, and
/// the expiries.
#[derive(Debug, Clone)]
struct Entry {
    /// The binding's row key.
    key: Box<[u8]>,
    /// A digest of what a refresh must not change (contact, parameters, flow, path…).
    fingerprint: u64,
    /// When the row in the keyspace expires.
    lease_ms: u64,
    /// When the phone's registration ends.
    expires_at_ms: u64,
    /// A digest of the Call-ID, and the CSeq, of the REGISTER that last refreshed it (RFC 3261
    /// §10.3 step 7 orders REGISTERs of one Call-ID by CSeq; another Call-ID replaces).
    call_id: u64,
    cseq: u32,
}

/// A digest of a binding's fields but expiry, Call-ID, CSeq and refresh time (what a row need
/// not be rewritten for: the owner keeps those).
fn fingerprint(b: &Binding) -> u64 {
    let mut h = DefaultHasher::new();
    (
        &b.contact,
        &b.params,
        &b.q,
        &b.user_agent,
        &b.owner,
        &b.flow,
        &b.instance,
        b.reg_id,
        &b.path,
    )
        .hash(&mut h);
    h.finish()
}

fn digest(s: &str) -> u64 {
    let mut h = DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

/// The bindings this node owns, by AOR.
pub struct Owned {
    /// The bindings by AOR, in [`SHARDS`] shards (less contention, and an expiry sweep that
    /// visits a few shards per tick instead of every binding at once).
    shards: Vec<Mutex<HashMap<String, Vec<Entry>>>>,
    /// The next shard the sweep visits.
    next_shard: AtomicU64,
    /// Outbound flows of owned bindings: flow → (AOR, binding row key), to drop them when the
    /// flow dies.
    flows: Mutex<HashMap<Flow, Vec<RowRef>>>,
    /// How many bindings are owned (the node's registration load).
    count: AtomicU64,
}

/// What the owner says of a binding a REGISTER brings.
#[derive(Debug, PartialEq, Eq)]
pub enum Refresh {
    /// Not a binding this node knows: it must be written.
    Unknown,
    /// An older REGISTER (same Call-ID, lower or equal CSeq): ignore it (RFC 3261 §10.3 step 7).
    OutOfOrder,
    /// The same binding with a later expiry the row's lease covers: nothing to write.
    Covered,
    /// The binding changed, or its lease runs out first: write it.
    Changed,
}

/// Shards of the owned bindings.
const SHARDS: usize = 64;
/// Shards an expiry sweep visits (a full pass takes `SHARDS / SWEEP_SHARDS` sweeps).
const SWEEP_SHARDS: usize = 16;

impl Default for Owned {
    fn default() -> Self {
        Owned {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            next_shard: AtomicU64::new(0),
            flows: Mutex::new(HashMap::new()),
            count: AtomicU64::new(0),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Owned {
    fn shard(&self, aor: &str) -> &Mutex<HashMap<String, Vec<Entry>>> {
        &self.shards[(digest(aor) as usize) % SHARDS]
    }

    /// How many bindings this node owns.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// How a REGISTER's binding `b` (its `expires_at_ms` the phone's expiry) relates to what
    /// this node owns for `aor`.
    pub fn refresh(&self, aor: &str, b: &Binding) -> Refresh {
        let by_aor = lock(self.shard(aor));
        let key = b.key();
        let Some(e) = by_aor
            .get(aor)
            .and_then(|list| list.iter().find(|e| *e.key == *key))
        else {
            return Refresh::Unknown;
        };
        if e.call_id == digest(&b.call_id) && e.cseq >= b.cseq {
            Refresh::OutOfOrder
        } else if e.fingerprint == fingerprint(b) && b.expires_at_ms <= e.lease_ms {
            Refresh::Covered
        } else {
            Refresh::Changed
        }
    }

    /// The expiry, Call-ID and CSeq of a covered refresh.
    pub fn refreshed(&self, aor: &str, b: &Binding) {
        let key = b.key();
        if let Some(e) = lock(self.shard(aor))
            .get_mut(aor)
            .and_then(|list| list.iter_mut().find(|e| *e.key == *key))
        {
            e.expires_at_ms = b.expires_at_ms;
            e.call_id = digest(&b.call_id);
            e.cseq = b.cseq;
        }
    }

    /// A binding of this node was written (`stored` as the row holds it, `expires_at_ms` the
    /// phone's expiry).
    pub fn written(&self, aor: &str, stored: Binding, expires_at_ms: u64) {
        let key = stored.key();
        if stored.reg_id.is_some() {
            let mut flows = lock(&self.flows);
            let list = flows
                .entry(stored.flow.clone())
                .or_insert_with(|| Vec::with_capacity(1));
            if !list.iter().any(|(a, k)| a == aor && *k == key) {
                list.push((aor.to_string(), key.clone()));
            }
        }
        let mut by_aor = lock(self.shard(aor));
        let entry = Entry {
            key: key.clone().into_boxed_slice(),
            fingerprint: fingerprint(&stored),
            lease_ms: stored.expires_at_ms,
            expires_at_ms,
            call_id: digest(&stored.call_id),
            cseq: stored.cseq,
        };
        // Most AORs have one binding: a new list holds exactly it (a `push` onto an empty
        // `Vec` would reserve four).
        let Some(list) = by_aor.get_mut(aor) else {
            by_aor.insert(aor.to_string(), vec![entry]);
            self.count.fetch_add(1, Ordering::Relaxed);
            return;
        };
        match list.iter_mut().find(|e| *e.key == *key) {
            Some(e) => *e = entry,
            None => {
                list.push(entry);
                self.count.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// A binding row was deleted.
    pub fn removed(&self, aor: &str, key: &[u8]) {
        let mut by_aor = lock(self.shard(aor));
        if let Some(list) = by_aor.get_mut(aor) {
            let before = list.len();
            list.retain(|e| *e.key != *key);
            self.count
                .fetch_sub((before - list.len()) as u64, Ordering::Relaxed);
            if list.is_empty() {
                by_aor.remove(aor);
            }
        }
    }

    /// The phone's own expiry of a binding this node owns.
    pub fn expiry(&self, aor: &str, key: &[u8]) -> Option<u64> {
        lock(self.shard(aor))
            .get(aor)
            .and_then(|list| list.iter().find(|e| *e.key == *key))
            .map(|e| e.expires_at_ms)
    }

    /// Bindings on a flow that died: forgotten here; their rows are the caller's to delete.
    pub fn take_flow(&self, flow: &Flow) -> Vec<RowRef> {
        let gone = lock(&self.flows).remove(flow).unwrap_or_default();
        for (aor, key) in &gone {
            self.removed(aor, key);
        }
        gone
    }

    /// Bindings whose phones' expiry passed by `now_ms`, in the next few shards, forgotten
    /// here, with whether their rows outlive them (and must be deleted). A full pass over every
    /// binding takes `SHARDS / SWEEP_SHARDS` calls.
    pub fn expired(&self, now_ms: u64) -> Vec<(String, Vec<u8>, bool)> {
        let mut out = Vec::new();
        for _ in 0..SWEEP_SHARDS {
            let shard = self.next_shard.fetch_add(1, Ordering::Relaxed) as usize % SHARDS;
            self.expire_shard(shard, now_ms, &mut out);
        }
        self.count.fetch_sub(out.len() as u64, Ordering::Relaxed);
        let mut flows = lock(&self.flows);
        for (aor, key, _) in &out {
            for list in flows.values_mut() {
                list.retain(|(a, k)| !(a == aor && k == key));
            }
        }
        flows.retain(|_, list| !list.is_empty());
        flows.release();
        out
    }

    fn expire_shard(&self, shard: usize, now_ms: u64, out: &mut Vec<(String, Vec<u8>, bool)>) {
        let mut by_aor = lock(&self.shards[shard]);
        for (aor, list) in by_aor.iter_mut() {
            list.retain(|e| {
                if e.expires_at_ms > now_ms {
                    return true;
                }
                out.push((aor.clone(), e.key.to_vec(), e.lease_ms > now_ms));
                false
            });
        }
        by_aor.retain(|_, list| !list.is_empty());
        by_aor.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sipmesh_net::PeerId;

    fn binding(cseq: u32, expires_at_ms: u64) -> Binding {
        Binding {
            contact: "sip:a@192.0.2.1".into(),
            params: Vec::new(),
            expires_at_ms,
            q: None,
            call_id: "c".into(),
            cseq,
            user_agent: None,
            owner: PeerId::from_bytes(&[0, 2, 1, 2]).unwrap_or(PeerId::random()),
            flow: Flow::Udp("192.0.2.1:5060".parse().unwrap()),
            instance: None,
            reg_id: None,
            path: Vec::new(),
            updated_ms: 0,
        }
    }

    #[test]
    fn refreshes_within_the_lease_write_nothing() {
        let o = Owned::default();
        let mut stored = binding(1, 2_000_000);
        assert_eq!(o.refresh("a", &stored), Refresh::Unknown);
        o.written("a", stored.clone(), 1_000_000);
        assert_eq!(o.count(), 1);
        // Same binding, later CSeq, expiry within the lease: covered.
        let mut again = binding(2, 1_500_000);
        again.owner = stored.owner;
        assert_eq!(o.refresh("a", &again), Refresh::Covered);
        o.refreshed("a", &again);
        assert_eq!(o.expiry("a", &again.key()), Some(1_500_000));
        // An older REGISTER is out of order; one past the lease, or changed, must be written.
        assert_eq!(o.refresh("a", &binding(2, 1_600_000)), Refresh::OutOfOrder);
        // A new Call-ID (a phone that restarted) replaces the binding: still only a refresh.
        let mut other_call = binding(1, 1_700_000);
        other_call.owner = stored.owner;
        other_call.call_id = "c2".into();
        assert_eq!(o.refresh("a", &other_call), Refresh::Covered);
        again.cseq = 3;
        again.expires_at_ms = 2_500_000;
        assert_eq!(o.refresh("a", &again), Refresh::Changed);
        stored.cseq = 4;
        stored.flow = Flow::Udp("192.0.2.9:5060".parse().unwrap());
        assert_eq!(o.refresh("a", &stored), Refresh::Changed);
    }

    #[test]
    fn expiry_forgets_and_says_whether_the_row_outlives_it() {
        let o = Owned::default();
        o.written("a", binding(1, 4_000), 2_000);
        o.written("b", binding(1, 9_000), 9_000);
        let full_pass = |now| {
            (0..SHARDS / SWEEP_SHARDS)
                .flat_map(|_| o.expired(now))
                .collect::<Vec<_>>()
        };
        assert_eq!(full_pass(1_000), vec![]);
        let gone = full_pass(3_000);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].0, "a");
        assert!(gone[0].2, "the row's lease runs to 4,000");
        assert_eq!(o.count(), 1);
        o.removed("b", &binding(1, 0).key());
        assert_eq!(o.count(), 0);
    }
}
