//! Signed rows (under signed enrollment): the rows whose writer matters — `users` (only an
//! admin member may write one) and `registrations` (only the node that owns a binding's flow)
//! — carry a `sig` column, the writer's signature over the row ([`Mesh::sign_row`]), and are
//! read only when it verifies and the writer had the right. Rights are also checked on what a
//! member coordinates (`node::rights`); the signature is what holds however else a row
//! travels: anti-entropy, handoff, a forged answer to a read. RELOAD signs every stored value
//! with its writer's certificate for the same reason.
//!
//! The signature covers the table, the partition and clustering keys, the write's timestamp
//! and every column written with it. A column written later (unsigned) makes the row not
//! count; columns left from older writes are not read.

use std::borrow::Cow;

use sipmesh_net::{Mesh, PeerId, Roles};
use sipmesh_storage::{Row, Timestamp};

/// The column holding a row's signature.
pub const SIG: &str = "sig";

/// A row's canonical bytes, which its signature covers: the table, the keys, the write's
/// timestamp, and each signed column (name and value, in name order; `sig` excluded).
fn canonical<'a>(
    table: &str,
    partition: &[u8],
    clustering: &[u8],
    ts: Timestamp,
    columns: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> Vec<u8> {
    let mut columns: Vec<_> = columns.into_iter().filter(|(n, _)| *n != SIG).collect();
    columns.sort_unstable();
    let mut out = Vec::with_capacity(256);
    let mut put = |b: &[u8]| {
        out.extend_from_slice(&(b.len() as u32).to_be_bytes());
        out.extend_from_slice(b);
    };
    put(table.as_bytes());
    put(partition);
    put(clustering);
    put(&ts.0.to_be_bytes());
    for (name, value) in columns {
        put(name.as_bytes());
        put(value);
    }
    out
}

/// The `sig` column for a row this node writes with `columns` at `ts`; `None` without
/// enrollment (no row is signed, none is checked).
pub fn sign(
    mesh: &Mesh,
    table: &str,
    partition: &[u8],
    clustering: &[u8],
    ts: Timestamp,
    columns: &[(&str, Vec<u8>)],
) -> Option<(&'static str, Vec<u8>)> {
    mesh.enrollment_issuer()?;
    let bytes = canonical(
        table,
        partition,
        clustering,
        ts,
        columns.iter().map(|(n, v)| (*n, v.as_slice())),
    );
    mesh.sign_row(&bytes).map(|sig| (SIG, sig))
}

/// The part of `row` its signature covers, if the row counts: without enrollment the row as
/// it is; under enrollment only if signed by a member that `allowed` accepts (the table's rule,
/// given the signer, its roles and the signed columns), with no column written after the
/// signed write.
pub fn verified<'r>(
    mesh: &Mesh,
    table: &str,
    partition: &[u8],
    row: &'r Row,
    allowed: impl FnOnce(&PeerId, Roles, &Row) -> Result<(), String>,
) -> Option<Cow<'r, Row>> {
    if mesh.enrollment_issuer().is_none() {
        return Some(Cow::Borrowed(row));
    }
    let (ts, sig) = match row.columns.get(SIG) {
        Some(sig) => (sig.ts, Some(sig.value.as_slice())),
        None => (row.columns.values().map(|c| c.ts).max()?, None),
    };
    let signed = Row {
        clustering: row.clustering.clone(),
        columns: row
            .columns
            .iter()
            .filter(|(name, c)| name.as_str() != SIG && c.ts == ts)
            .map(|(n, c)| (n.clone(), c.clone()))
            .collect(),
    };
    let bytes = canonical(
        table,
        partition,
        &row.clustering,
        ts,
        signed
            .columns
            .iter()
            .map(|(n, c)| (n.as_str(), c.value.as_slice())),
    );
    let later = row.columns.values().any(|c| c.ts > ts);
    let counts = mesh.row_counts(table, sig, &bytes, ts.millis(), |signer, roles| {
        if later {
            return Err("a column was written after the signed write".into());
        }
        allowed(signer, roles, &signed)
    });
    // `later` is not part of the bytes whose verdict is remembered: checked here each time.
    (counts && !later).then_some(Cow::Owned(signed))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use sipmesh_net::{Enrollment, EnrollmentKey};
    use sipmesh_storage::CellView;

    use super::*;
    use crate::LocalMesh;

    fn row(cells: &[(&str, &[u8], Timestamp)]) -> Row {
        Row {
            clustering: b"k".to_vec(),
            columns: cells
                .iter()
                .map(|(n, v, ts)| {
                    (
                        n.to_string(),
                        CellView {
                            value: v.to_vec(),
                            ts: *ts,
                            expires_at: None,
                        },
                    )
                })
                .collect(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_row_counts_only_signed_unchanged_and_by_a_writer_its_rule_accepts() {
        let mesh = LocalMesh::builder()
            .nodes(1)
            .enrollment(Enrollment::SelfIssued {
                key: Arc::new(EnrollmentKey::generate()),
                roles: Roles::EDGE,
            })
            .start()
            .await
            .unwrap();
        mesh.wait_converged(Duration::from_secs(30)).await.unwrap();
        let m = mesh.node(0).node().unwrap().mesh.clone();
        let me = m.peer_id();
        let anyone = |_: &PeerId, _: Roles, _: &Row| Ok(());
        let signed_at = |ts: Timestamp| {
            sign(&m, "t", b"p", b"k", ts, &[("v", b"one".to_vec())])
                .unwrap()
                .1
        };
        let (t1, t2) = (m.keyspace().now(), m.keyspace().now());
        let sig = signed_at(t1);
        let good = row(&[("v", b"one", t1), (SIG, &sig, t1)]);
        let kept = verified(&m, "t", b"p", &good, |signer, roles, r| {
            assert_eq!((*signer, roles), (me, Roles::EDGE));
            assert!(!r.columns.contains_key(SIG));
            Ok(())
        })
        .expect("a row signed by its writer counts");
        assert_eq!(kept.get("v"), Some(b"one".as_slice()));
        // Read again: the same verdict (remembered).
        assert!(verified(&m, "t", b"p", &good, anyone).is_some());
        // Another value, another partition, another table, no signature: nothing.
        let tampered = row(&[("v", b"two", t1), (SIG, &sig, t1)]);
        assert!(verified(&m, "t", b"p", &tampered, anyone).is_none());
        assert!(verified(&m, "t", b"other", &good, anyone).is_none());
        assert!(verified(&m, "u", b"p", &good, anyone).is_none());
        assert!(verified(&m, "t", b"p", &row(&[("v", b"one", t1)]), anyone).is_none());
        // A column written after the signed write.
        let later = row(&[("v", b"one", t1), (SIG, &sig, t1), ("w", b"x", t2)]);
        assert!(verified(&m, "t", b"p", &later, anyone).is_none());
        // A column left from an older write is not read.
        let older = row(&[
            ("v", b"one", t1),
            (SIG, &sig, t1),
            ("w", b"x", Timestamp(1)),
        ]);
        let kept = verified(&m, "t", b"p", &older, anyone).unwrap();
        assert_eq!(kept.get("w"), None);
        // The table's rule refuses the writer (e.g. not the binding's owner).
        let sig2 = signed_at(t2);
        let other = row(&[("v", b"one", t2), (SIG, &sig2, t2)]);
        assert!(verified(&m, "t", b"p", &other, |_, _, _| Err("not the owner".into())).is_none());
        assert!(m.metrics().rows_ignored() > 0);
    }
}
