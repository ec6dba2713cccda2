//! The location service: bindings of AORs to contacts, in the replicated `registrations` table
//! (one partition per AOR, one row per binding, TTL = Expires) and the `clients_by_proxy` index.

use serde::{Deserialize, Serialize};
use sipmesh_net::{Consistency, Mesh, PeerId};
use sipmesh_storage::{codec, Row};

use crate::call::signed;
use crate::error::Result;
use crate::sip::flow::Flow;
use crate::tables::REGISTRATIONS;

/// One binding of an AOR.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    /// The contact URI exactly as registered (URI parameters and escaped headers kept).
    pub contact: String,
    /// The Contact header parameters (q, expires, +sip.instance, reg-id, …).
    pub params: Vec<(String, Option<String>)>,
    /// When the binding expires (wall-clock ms).
    pub expires_at_ms: u64,
    /// The q-value as written.
    pub q: Option<String>,
    /// Call-ID of the REGISTER that made it.
    pub call_id: String,
    /// CSeq of that REGISTER.
    pub cseq: u32,
    /// User-Agent of the client.
    pub user_agent: Option<String>,
    /// The node that received the REGISTER and owns the flow.
    #[serde(with = "crate::sip::flow::peer_bytes")]
    pub owner: PeerId,
    /// The flow the REGISTER arrived on (the connection or source address).
    pub flow: Flow,
    /// RFC 5626 instance id (`+sip.instance`).
    pub instance: Option<String>,
    /// RFC 5626 reg-id.
    pub reg_id: Option<u32>,
    /// Path headers (RFC 3327), in order.
    pub path: Vec<String>,
    /// When the binding was last refreshed (wall-clock ms).
    pub updated_ms: u64,
}

impl Binding {
    /// The clustering key of the binding's row: the instance and reg-id when the client uses
    /// Outbound (RFC 5626: one binding per flow), the instance alone, or else the contact URI.
    pub fn key(&self) -> Vec<u8> {
        match (&self.instance, self.reg_id) {
            (Some(i), Some(r)) => format!("i:{i}|{r}").into_bytes(),
            (Some(i), None) => format!("i:{i}").into_bytes(),
            _ => format!("c:{}", self.contact).into_bytes(),
        }
    }

    /// Seconds left at `now_ms`.
    pub fn expires_in(&self, now_ms: u64) -> u64 {
        self.expires_at_ms.saturating_sub(now_ms).div_ceil(1000)
    }

    /// Decode a binding row.
    pub fn from_row(row: &Row) -> Option<Binding> {
        row.get("binding")
            .and_then(|b| codec::decode(b, "registrations", &row.clustering).ok())
    }

    /// Decode a binding row of `aor` if it counts: under enrollment, only if signed by the
    /// node that owns the binding's flow (`call::signed`), as only it may write one.
    fn from_verified_row(mesh: &Mesh, aor: &str, row: &Row) -> Option<Binding> {
        let row = signed::verified(
            mesh,
            "registrations",
            aor.as_bytes(),
            row,
            |signer, _, row| match Binding::from_row(row) {
                Some(b) if b.owner == *signer => Ok(()),
                Some(b) => Err(format!("signed by {signer}, not by its owner {}", b.owner)),
                None => Err("no binding in the signed columns".into()),
            },
        )?;
        Binding::from_row(&row)
    }

    /// Encode for the `binding` column.
    pub fn encode(&self) -> Vec<u8> {
        codec::encode(self).unwrap_or_default()
    }
}

/// The live bindings of an AOR as the nearest copy has them: this node's own replica when it
/// is one (no round trip; a write this replica missed is caught up by hints, read repair and
/// anti-entropy within seconds), else read at QUORUM. This is the call path's lookup. A node
/// still catching up (new, or back from a restart) reads at QUORUM: its replica may be empty.
pub async fn lookup_near(mesh: &Mesh, aor: &str) -> Result<Vec<Binding>> {
    if !mesh.reads_locally(aor.as_bytes()) {
        return lookup(mesh, aor, Consistency::Quorum).await;
    }
    let p = mesh
        .keyspace()
        .read_partition(REGISTRATIONS, aor.as_bytes())?;
    let now = mesh.keyspace().wall_ms();
    Ok(p.rows
        .iter()
        .filter_map(|row| Binding::from_verified_row(mesh, aor, row))
        .filter(|b| b.expires_at_ms > now)
        .collect())
}

/// The live bindings of an AOR (its user part), read at `cl`.
pub async fn lookup(mesh: &Mesh, aor: &str, cl: Consistency) -> Result<Vec<Binding>> {
    let p = mesh.read(REGISTRATIONS, aor.as_bytes(), cl).await?;
    let now = mesh.keyspace().wall_ms();
    Ok(p.rows
        .iter()
        .filter_map(|row| Binding::from_verified_row(mesh, aor, row))
        .filter(|b| b.expires_at_ms > now)
        .collect())
}
