//! Mesh admission: signed enrollment on top of the mesh key.
//!
//! The mesh key (a pre-shared key, libp2p `pnet`) keeps out whoever does not hold it, but every
//! holder is the same to it: one leaked copy admits anyone, and no one node can be shut out.
//! Enrollment adds a second, per-node gate:
//! - A mesh has an **enrollment key** (ed25519), kept by its operators, off the nodes.
//! - `sipmesh mesh invite` signs a [`Credential`] for one node: its PeerId, its [`Roles`], an
//!   expiry and a random serial. The credential is not secret; it is worth nothing without the
//!   node key it names (Noise proves that key on every connection).
//! - A member carries its credential in every heartbeat and heartbeat answer. A node that has a
//!   credential itself admits a peer only once the peer's credential verifies: signed by the
//!   same enrollment key, naming the PeerId Noise authenticated, not expired, not revoked.
//!   Until then the peer gets nothing: no reads, no writes, no gossip, no SIP.
//! - A [`Revocation`], signed by the same key, shuts a node out mesh-wide: it is stored in the
//!   keyspace, every node applies it, blocks the peer and marks it down.
//!
//! A node with no credential runs without enrollment (loopback meshes, tests): everyone who
//! holds the mesh key is a member, as before.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use libp2p::identity::ed25519;
use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use sipmesh_storage::{codec, Mutation};
use tokio::sync::mpsc;

use crate::peer::Command;
use crate::protocol::MemberInfo;
use crate::stats::MeshMetrics;

use crate::error::{Error, Result};

/// What a member may do, beyond taking part in the mesh (a bit set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub struct Roles(u32);

impl Roles {
    /// No role beyond membership: a SIP edge that writes only its own rows.
    pub const EDGE: Roles = Roles(0);
    /// May coordinate writes of mesh-wide administrative data (users, settings, revocations):
    /// the node's admin API changes users only with this role.
    pub const ADMIN: Roles = Roles(1);

    /// Whether every role of `other` is in `self`.
    pub fn contains(self, other: Roles) -> bool {
        self.0 & other.0 == other.0
    }

    /// Parse a comma-separated list: `edge`, `admin`.
    pub fn parse(list: &str) -> std::result::Result<Roles, String> {
        let mut roles = Roles::EDGE;
        for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match name {
                "edge" => {}
                "admin" => roles.0 |= Roles::ADMIN.0,
                other => return Err(format!("unknown role {other:?} (roles: edge, admin)")),
            }
        }
        Ok(roles)
    }
}

impl std::fmt::Display for Roles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.contains(Roles::ADMIN) {
            f.write_str("edge,admin")
        } else {
            f.write_str("edge")
        }
    }
}

/// The enrollment key: whoever holds it decides who is a member.
pub struct EnrollmentKey(ed25519::Keypair);

impl std::fmt::Debug for EnrollmentKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EnrollmentKey(public {:02x?})", &self.public()[..4])
    }
}

impl EnrollmentKey {
    /// A new random key.
    pub fn generate() -> Self {
        EnrollmentKey(ed25519::Keypair::generate())
    }

    /// The key from its 32-byte secret.
    pub fn from_secret(secret: &[u8]) -> Result<Self> {
        let mut bytes = secret.to_vec();
        let secret = ed25519::SecretKey::try_from_bytes(&mut bytes)
            .map_err(|e| Error::Config(format!("not an enrollment key: {e}")))?;
        Ok(EnrollmentKey(ed25519::Keypair::from(secret)))
    }

    /// The 32-byte secret (to store it).
    pub fn secret(&self) -> Vec<u8> {
        self.0.secret().as_ref().to_vec()
    }

    /// The public key every member checks credentials against.
    pub fn public(&self) -> [u8; 32] {
        self.0.public().to_bytes()
    }

    /// Sign a credential for `peer`, valid until `expires_ms` (ms since the Unix epoch).
    pub fn issue(&self, peer: &PeerId, roles: Roles, now_ms: u64, expires_ms: u64) -> Credential {
        let body = CredentialBody {
            issuer: self.public().to_vec(),
            peer_id: peer.to_bytes(),
            roles,
            issued_ms: now_ms,
            expires_ms,
            serial: rand::random(),
        };
        let signature = self.0.sign(&signed_bytes(CREDENTIAL_CONTEXT, &body));
        Credential { body, signature }
    }

    /// Sign the revocation of `peer`'s membership.
    pub fn revoke(&self, peer: &PeerId, now_ms: u64) -> Revocation {
        let body = RevocationBody {
            issuer: self.public().to_vec(),
            peer_id: peer.to_bytes(),
            issued_ms: now_ms,
        };
        let signature = self.0.sign(&signed_bytes(REVOCATION_CONTEXT, &body));
        Revocation { body, signature }
    }
}

/// Domain separation: a signature over a credential can never pass for a revocation, nor a
/// node's signature over a row for anything else it signs.
const CREDENTIAL_CONTEXT: &[u8] = b"sipmesh credential v1\0";
const REVOCATION_CONTEXT: &[u8] = b"sipmesh revocation v1\0";
const ROW_CONTEXT: &[u8] = b"sipmesh signed row v1\0";

/// A stored row's signature (RELOAD's model: every stored value signed with its writer's
/// certificate): the writer's membership credential, and the writer's signature, with its
/// node key, over the row's canonical bytes (which the table's owner defines, and which name
/// the row's key, timestamp and values).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct RowSignature {
    #[serde(with = "serde_bytes")]
    credential: Vec<u8>,
    #[serde(with = "serde_bytes")]
    signature: Vec<u8>,
}

/// Sign a row's canonical bytes with this node's key, carrying its credential.
pub(crate) fn sign_row(
    key: &libp2p::identity::Keypair,
    credential: Vec<u8>,
    row: &[u8],
) -> Vec<u8> {
    let mut message = ROW_CONTEXT.to_vec();
    message.extend_from_slice(row);
    let signature = key.sign(&message).unwrap_or_default();
    let mut out = Vec::new();
    let _ = codec::encode_into(
        &RowSignature {
            credential,
            signature,
        },
        &mut out,
    );
    out
}

/// The public key a PeerId embeds (ed25519 and other short keys are inlined in the PeerId).
fn public_key_of(peer: &PeerId) -> Option<libp2p::identity::PublicKey> {
    let hash: &libp2p::multihash::Multihash<64> = peer.as_ref();
    if hash.code() != 0 {
        return None;
    }
    libp2p::identity::PublicKey::try_decode_protobuf(hash.digest()).ok()
}

fn signed_bytes<T: Serialize>(context: &[u8], body: &T) -> Vec<u8> {
    let mut out = context.to_vec();
    // Encoding a plain struct of bytes and integers cannot fail.
    let _ = codec::encode_into(body, &mut out);
    out
}

fn verify(issuer: &[u8], context: &[u8], body: &impl Serialize, signature: &[u8]) -> bool {
    ed25519::PublicKey::try_from_bytes(issuer)
        .is_ok_and(|key| key.verify(&signed_bytes(context, body), signature))
}

/// What a credential says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialBody {
    /// The enrollment public key that signed it.
    #[serde(with = "serde_bytes")]
    pub issuer: Vec<u8>,
    /// The member's PeerId bytes.
    #[serde(with = "serde_bytes")]
    pub peer_id: Vec<u8>,
    /// Its roles.
    pub roles: Roles,
    /// When it was issued (ms since the Unix epoch).
    pub issued_ms: u64,
    /// When it stops being valid (ms since the Unix epoch).
    pub expires_ms: u64,
    /// A random number telling two credentials of one node apart.
    pub serial: u64,
}

/// A node's signed membership credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    /// What it says.
    pub body: CredentialBody,
    /// The issuer's signature over it.
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

impl Credential {
    /// Its bytes (as carried in heartbeats and stored in files).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let _ = codec::encode_into(self, &mut out);
        out
    }

    /// Decode (does not verify).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        codec::decode(bytes, "credential", &[])
            .map_err(|e| Error::Config(format!("not a credential: {e}")))
    }

    /// The PeerId it names.
    pub fn peer(&self) -> Result<PeerId> {
        PeerId::from_bytes(&self.body.peer_id)
            .map_err(|e| Error::Config(format!("credential names no valid peer: {e}")))
    }

    /// Check it was signed by `issuer`, names `peer` and is valid at `now_ms`.
    pub fn check(
        &self,
        issuer: &[u8; 32],
        peer: &PeerId,
        now_ms: u64,
    ) -> std::result::Result<Roles, Refusal> {
        if self.body.issuer != issuer {
            return Err(Refusal::OtherMesh);
        }
        if !verify(
            issuer,
            CREDENTIAL_CONTEXT,
            &self.body,
            self.signature.as_slice(),
        ) {
            return Err(Refusal::BadSignature);
        }
        if self.body.peer_id != peer.to_bytes() {
            return Err(Refusal::OtherPeer);
        }
        if now_ms >= self.body.expires_ms {
            return Err(Refusal::Expired);
        }
        Ok(self.body.roles)
    }
}

/// What a revocation says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationBody {
    /// The enrollment public key that signed it.
    #[serde(with = "serde_bytes")]
    pub issuer: Vec<u8>,
    /// The revoked member's PeerId bytes.
    #[serde(with = "serde_bytes")]
    pub peer_id: Vec<u8>,
    /// When it was signed (ms since the Unix epoch).
    pub issued_ms: u64,
}

/// A signed revocation: the peer is no longer a member, whatever credential it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// What it says.
    pub body: RevocationBody,
    /// The issuer's signature over it.
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

impl Revocation {
    /// Its bytes (as stored in the keyspace).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let _ = codec::encode_into(self, &mut out);
        out
    }

    /// Decode (does not verify).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        codec::decode(bytes, "revocation", &[])
            .map_err(|e| Error::Config(format!("not a revocation: {e}")))
    }

    /// The revoked peer, if the revocation was signed by `issuer`.
    pub fn verified_peer(&self, issuer: &[u8; 32]) -> Option<PeerId> {
        (self.body.issuer == issuer
            && verify(
                issuer,
                REVOCATION_CONTEXT,
                &self.body,
                self.signature.as_slice(),
            ))
        .then(|| PeerId::from_bytes(&self.body.peer_id).ok())
        .flatten()
    }
}

/// Why a peer was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// It presented no credential.
    #[error("no membership credential")]
    Missing,
    /// The credential does not decode.
    #[error("the credential does not decode")]
    Malformed,
    /// Signed by another enrollment key.
    #[error("the credential is another mesh's")]
    OtherMesh,
    /// The signature does not verify.
    #[error("the credential's signature does not verify")]
    BadSignature,
    /// Issued to another PeerId.
    #[error("the credential was issued to another node")]
    OtherPeer,
    /// Past its expiry.
    #[error("the credential has expired")]
    Expired,
    /// Revoked mesh-wide.
    #[error("the member was revoked")]
    Revoked,
}

impl Refusal {
    /// Every reason.
    pub const ALL: [Refusal; 7] = [
        Refusal::Missing,
        Refusal::Malformed,
        Refusal::OtherMesh,
        Refusal::BadSignature,
        Refusal::OtherPeer,
        Refusal::Expired,
        Refusal::Revoked,
    ];

    /// A short label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Missing => "missing",
            Refusal::Malformed => "malformed",
            Refusal::OtherMesh => "other_mesh",
            Refusal::BadSignature => "bad_signature",
            Refusal::OtherPeer => "other_peer",
            Refusal::Expired => "expired",
            Refusal::Revoked => "revoked",
        }
    }
}

/// How a refusal by the write rights starts, in a [`crate::protocol::Response::Error`].
pub(crate) const NOT_ALLOWED: &str = "not allowed: ";

/// How long a peer that failed admission is refused connections (then it may try again, with
/// a renewed credential).
const REFUSED_FOR: Duration = Duration::from_secs(60);

pub(crate) fn now_ms() -> u64 {
    use sipmesh_storage::WallClock;
    sipmesh_storage::SystemClock.now_ms()
}

/// Decides whether a member with these roles may write this mutation (under enrollment): the
/// node's per-table rights. `Err` carries the reason given to the writer.
pub type WriteRights =
    Box<dyn Fn(&PeerId, Roles, &Mutation) -> std::result::Result<(), String> + Send + Sync>;

/// The admission gate shared by the service, the heartbeat loop and the connection tracker.
#[derive(Clone)]
pub(crate) struct Gate {
    pub(crate) local: PeerId,
    pub(crate) admission: Option<Arc<Admission>>,
    pub(crate) commands: mpsc::Sender<Command>,
    pub(crate) metrics: MeshMetrics,
    pub(crate) rights: Arc<OnceLock<WriteRights>>,
}

impl Gate {
    /// The roles of a peer allowed to talk to this node; `None`: refuse it. Without enrollment
    /// every peer (every holder of the mesh key) may, with every right.
    pub(crate) fn roles(&self, peer: &PeerId) -> Option<Roles> {
        match &self.admission {
            None => Some(Roles::ADMIN),
            Some(a) => a.roles(peer, now_ms()),
        }
    }

    /// Check the credential in a member's info; a refused peer is disconnected for a while.
    pub(crate) fn check_info(
        &self,
        peer: &PeerId,
        info: &MemberInfo,
    ) -> std::result::Result<(), Refusal> {
        let Some(a) = &self.admission else {
            return Ok(());
        };
        match a.check(peer, &info.credential, now_ms()) {
            Ok(_) => Ok(()),
            Err(refusal) => {
                self.refuse(*peer, refusal);
                Err(refusal)
            }
        }
    }

    pub(crate) fn refuse(&self, peer: PeerId, refusal: Refusal) {
        tracing::warn!(%peer, reason = %refusal, "peer refused: not a member of this mesh");
        self.metrics.admission_refused(refusal.label());
        if let Some(a) = &self.admission {
            a.forget(&peer);
        }
        let _ = self.commands.try_send(Command::Block(peer));
        if refusal != Refusal::Revoked {
            let commands = self.commands.clone();
            tokio::spawn(async move {
                tokio::time::sleep(REFUSED_FOR).await;
                let _ = commands.send(Command::Unblock(peer)).await;
            });
        }
    }

    /// Under enrollment, whether a member with `roles` may write `m`.
    pub(crate) fn may_write(
        &self,
        peer: &PeerId,
        roles: Roles,
        m: &Mutation,
    ) -> std::result::Result<(), String> {
        if self.admission.is_none() {
            return Ok(());
        }
        match self.rights.get() {
            Some(rights) => rights(peer, roles, m).inspect_err(|_| self.metrics.write_refused()),
            None => Ok(()),
        }
    }

    /// Whether this node may send `m` as a coordinator (a write, a read repair, a hint).
    pub(crate) fn may_send(&self, m: &Mutation) -> std::result::Result<(), String> {
        match &self.admission {
            None => Ok(()),
            Some(a) => self.may_write(&self.local, a.own_roles(), m),
        }
    }

    /// A gate without enrollment (tests).
    #[cfg(test)]
    pub(crate) fn open(local: PeerId) -> Self {
        Gate {
            local,
            admission: None,
            commands: mpsc::channel(1).0,
            metrics: MeshMetrics::default(),
            rights: Arc::new(OnceLock::new()),
        }
    }
}

/// Most peers whose verified credential is remembered (members and recent candidates).
const MAX_ADMITTED: usize = 65_536;
/// Most revocations applied.
pub const MAX_REVOKED: usize = 65_536;
/// Most signed-row verdicts remembered (~130 bytes each: 17 MB at most).
const MAX_VERIFIED_ROWS: usize = 131_072;

/// A verified credential: its bytes (to skip checking the same bytes again), roles, expiry.
type Admitted = (Vec<u8>, Roles, u64);

/// This node's own credential: its bytes, roles and expiry.
struct Own {
    bytes: Vec<u8>,
    roles: Roles,
    expires_ms: u64,
}

/// Who is admitted, for a node that enforces enrollment.
pub(crate) struct Admission {
    /// The enrollment public key (from the node's own credential).
    issuer: [u8; 32],
    /// This node's credential, carried in its heartbeats (replaced by a renewal).
    own: RwLock<Own>,
    /// Peers whose credential verified: the credential bytes (to skip checking the same bytes
    /// again), its roles and expiry.
    admitted: RwLock<HashMap<PeerId, Admitted>>,
    revoked: RwLock<HashSet<PeerId>>,
    /// The verdicts on signed rows checked lately, by a digest of their bytes: the signer, or
    /// refused. Bounded by [`MAX_VERIFIED_ROWS`].
    rows: Mutex<HashMap<[u8; 32], std::result::Result<PeerId, ()>>>,
}

impl Admission {
    /// Enforce enrollment with this node's own credential (checked against `local`).
    pub(crate) fn new(own: &Credential, local: &PeerId, now_ms: u64) -> Result<Self> {
        let issuer: [u8; 32] =
            own.body.issuer.as_slice().try_into().map_err(|_| {
                Error::Config("the credential's issuer is not an ed25519 key".into())
            })?;
        let roles = Self::own_check(&issuer, own, local, now_ms)?;
        Ok(Admission {
            issuer,
            own: RwLock::new(Own {
                bytes: own.to_bytes(),
                roles,
                expires_ms: own.body.expires_ms,
            }),
            admitted: RwLock::new(HashMap::new()),
            revoked: RwLock::new(HashSet::new()),
            rows: Mutex::new(HashMap::new()),
        })
    }

    fn own_check(
        issuer: &[u8; 32],
        own: &Credential,
        local: &PeerId,
        now_ms: u64,
    ) -> Result<Roles> {
        own.check(issuer, local, now_ms).map_err(|r| {
            Error::Config(match r {
                Refusal::OtherPeer => format!(
                    "the credential was issued to {}, and this node is {local}",
                    own.peer().map(|p| p.to_string()).unwrap_or_default()
                ),
                Refusal::OtherMesh => {
                    "the credential was issued by another enrollment key than this mesh's".into()
                }
                other => format!("this node's own credential is not valid: {other}"),
            })
        })
    }

    /// Replace this node's own credential (a renewal: a later expiry, other roles), without a
    /// restart. It must name this node, come from the same enrollment key and be valid now;
    /// otherwise the one in use stays. Returns the new credential's bytes.
    pub(crate) fn renew(&self, new: &Credential, local: &PeerId, now_ms: u64) -> Result<Vec<u8>> {
        let roles = Self::own_check(&self.issuer, new, local, now_ms)?;
        let bytes = new.to_bytes();
        *self.own.write().unwrap_or_else(|p| p.into_inner()) = Own {
            bytes: bytes.clone(),
            roles,
            expires_ms: new.body.expires_ms,
        };
        Ok(bytes)
    }

    fn read_own(&self) -> std::sync::RwLockReadGuard<'_, Own> {
        self.own.read().unwrap_or_else(|p| p.into_inner())
    }

    /// This node's credential bytes.
    pub(crate) fn own(&self) -> Vec<u8> {
        self.read_own().bytes.clone()
    }

    /// This node's roles.
    pub(crate) fn own_roles(&self) -> Roles {
        self.read_own().roles
    }

    /// When this node's credential expires (Unix milliseconds).
    pub(crate) fn own_expires_ms(&self) -> u64 {
        self.read_own().expires_ms
    }

    /// The enrollment public key.
    pub(crate) fn issuer(&self) -> [u8; 32] {
        self.issuer
    }

    /// Check the credential a peer presented; remember it when it verifies.
    pub(crate) fn check(
        &self,
        peer: &PeerId,
        credential: &[u8],
        now_ms: u64,
    ) -> std::result::Result<Roles, Refusal> {
        if self.is_revoked(peer) {
            return Err(Refusal::Revoked);
        }
        if let Some((bytes, roles, expires)) = self.read_admitted().get(peer) {
            if bytes.as_slice() == credential && now_ms < *expires {
                return Ok(*roles);
            }
        }
        if credential.is_empty() {
            return Err(Refusal::Missing);
        }
        let parsed = Credential::from_bytes(credential).map_err(|_| Refusal::Malformed)?;
        let roles = parsed.check(&self.issuer, peer, now_ms)?;
        let mut admitted = self.admitted.write().unwrap_or_else(|p| p.into_inner());
        if admitted.len() >= MAX_ADMITTED && !admitted.contains_key(peer) {
            // Forget the credentials that expire first; members send theirs again.
            admitted.retain(|_, (_, _, expires)| now_ms < *expires);
            if admitted.len() >= MAX_ADMITTED {
                admitted.clear();
            }
        }
        admitted.insert(*peer, (credential.to_vec(), roles, parsed.body.expires_ms));
        Ok(roles)
    }

    /// The roles of an admitted peer; `None` for anyone else.
    pub(crate) fn roles(&self, peer: &PeerId, now_ms: u64) -> Option<Roles> {
        if self.is_revoked(peer) {
            return None;
        }
        self.read_admitted()
            .get(peer)
            .filter(|(_, _, expires)| now_ms < *expires)
            .map(|(_, roles, _)| *roles)
    }

    fn read_admitted(&self) -> std::sync::RwLockReadGuard<'_, HashMap<PeerId, Admitted>> {
        self.admitted.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn is_revoked(&self, peer: &PeerId) -> bool {
        self.revoked
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(peer)
    }

    /// Apply revocations; returns the peers newly revoked. Ones not signed by this mesh's
    /// enrollment key are ignored.
    pub(crate) fn revoke(&self, revocations: &[Revocation]) -> Vec<PeerId> {
        let mut fresh = Vec::new();
        let mut revoked = self.revoked.write().unwrap_or_else(|p| p.into_inner());
        for r in revocations {
            let Some(peer) = r.verified_peer(&self.issuer) else {
                continue;
            };
            if revoked.len() < MAX_REVOKED && revoked.insert(peer) {
                fresh.push(peer);
            }
        }
        drop(revoked);
        if !fresh.is_empty() {
            let mut admitted = self.admitted.write().unwrap_or_else(|p| p.into_inner());
            for p in &fresh {
                admitted.remove(p);
            }
        }
        fresh
    }

    /// Check a row signature made by [`sign_row`] over `row`, for a row written at `at_ms`:
    /// the credential it carries is this mesh's, names the signer and was valid at `at_ms`;
    /// the signer is not revoked (a revoked member's rows are not trusted, whenever written);
    /// the signature verifies with the signer's key. Returns the signer and its roles.
    pub(crate) fn verify_row(
        &self,
        signature: &[u8],
        row: &[u8],
        at_ms: u64,
    ) -> std::result::Result<(PeerId, Roles), String> {
        if signature.is_empty() {
            return Err("it is not signed".into());
        }
        let sig: RowSignature = codec::decode(signature, "row signature", &[])
            .map_err(|_| "malformed row signature".to_string())?;
        let credential = Credential::from_bytes(&sig.credential)
            .map_err(|_| "malformed credential in a row signature".to_string())?;
        let signer = credential.peer().map_err(|e| e.to_string())?;
        // The credential a member shows in its heartbeats was verified then: its signature
        // need not be checked again, only its expiry against the row's time.
        let own = self.read_own();
        let known = if own.bytes == sig.credential {
            Some((own.roles, own.expires_ms))
        } else {
            self.read_admitted()
                .get(&signer)
                .filter(|(bytes, _, _)| *bytes == sig.credential)
                .map(|(_, roles, expires)| (*roles, *expires))
        };
        drop(own);
        let roles = match known {
            Some((roles, expires)) if at_ms < expires => roles,
            _ => credential
                .check(&self.issuer, &signer, at_ms)
                .map_err(|r| format!("the signer's credential: {r}"))?,
        };
        if self.is_revoked(&signer) {
            return Err(format!("the signer {signer} is revoked"));
        }
        let key = public_key_of(&signer).ok_or("the signer's PeerId embeds no key")?;
        let mut message = ROW_CONTEXT.to_vec();
        message.extend_from_slice(row);
        if !key.verify(&message, &sig.signature) {
            return Err("the row's signature does not verify".into());
        }
        Ok((signer, roles))
    }

    /// [`Admission::verify_row`], and `allowed` (the table's rule for who may write this row),
    /// remembering the verdict for these exact bytes: a row read again unchanged costs a hash,
    /// not a signature check (only whether its signer was revoked since is asked again).
    /// `Err` carries the reason, and whether this row was refused before (to log it once).
    pub(crate) fn verify_row_cached(
        &self,
        table: &str,
        signature: &[u8],
        row: &[u8],
        at_ms: u64,
        allowed: impl FnOnce(&PeerId, Roles) -> std::result::Result<(), String>,
    ) -> std::result::Result<PeerId, (String, bool)> {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        for part in [table.as_bytes(), signature, row] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
        h.update(at_ms.to_be_bytes());
        let digest: [u8; 32] = h.finalize().into();
        let known = self
            .rows
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&digest)
            .cloned();
        match known {
            Some(Ok(signer)) if self.is_revoked(&signer) => {
                Err((format!("the signer {signer} is revoked"), true))
            }
            Some(Ok(signer)) => Ok(signer),
            Some(Err(())) => Err(("refused before".into(), true)),
            None => {
                let verdict = self
                    .verify_row(signature, row, at_ms)
                    .and_then(|(signer, roles)| allowed(&signer, roles).map(|()| signer));
                let mut rows = self.rows.lock().unwrap_or_else(|p| p.into_inner());
                if rows.len() >= MAX_VERIFIED_ROWS {
                    // Full: one verdict goes, an arbitrary one (the hash order), so a working
                    // set larger than the memory still mostly hits it.
                    if let Some(k) = rows.keys().next().copied() {
                        rows.remove(&k);
                    }
                }
                rows.insert(digest, verdict.clone().map_err(|_| ()));
                verdict.map_err(|e| (e, false))
            }
        }
    }

    /// Forget a peer's admission (its connection failed admission, or it left).
    pub(crate) fn forget(&self, peer: &PeerId) {
        self.admitted
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(peer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000_000;

    /// The admission of an edge node `local` of the mesh `key` enrolls.
    fn edge_node(key: &EnrollmentKey, local: &PeerId) -> Admission {
        Admission::new(
            &key.issue(local, Roles::EDGE, NOW, NOW + 10_000),
            local,
            NOW,
        )
        .unwrap()
    }

    #[test]
    fn a_credential_admits_only_its_own_peer_of_its_own_mesh_until_it_expires() {
        let key = EnrollmentKey::generate();
        let other_mesh = EnrollmentKey::generate();
        let member = PeerId::random();
        let stranger = PeerId::random();
        let cred = key.issue(&member, Roles::ADMIN, NOW, NOW + 1_000);
        let issuer = key.public();
        assert_eq!(cred.check(&issuer, &member, NOW), Ok(Roles::ADMIN));
        assert_eq!(cred.check(&issuer, &stranger, NOW), Err(Refusal::OtherPeer));
        assert_eq!(
            cred.check(&issuer, &member, NOW + 1_000),
            Err(Refusal::Expired)
        );
        assert_eq!(
            cred.check(&other_mesh.public(), &member, NOW),
            Err(Refusal::OtherMesh)
        );
        // A forged role does not verify.
        let mut forged = key.issue(&member, Roles::EDGE, NOW, NOW + 1_000);
        forged.body.roles = Roles::ADMIN;
        assert_eq!(
            forged.check(&issuer, &member, NOW),
            Err(Refusal::BadSignature)
        );
        // A credential signed by another key but claiming this issuer does not verify.
        let mut claimed = other_mesh.issue(&member, Roles::ADMIN, NOW, NOW + 1_000);
        claimed.body.issuer = issuer.to_vec();
        assert_eq!(
            claimed.check(&issuer, &member, NOW),
            Err(Refusal::BadSignature)
        );
        let back = Credential::from_bytes(&cred.to_bytes()).unwrap();
        assert_eq!(back, cred);
    }

    #[test]
    fn admission_remembers_members_and_revocations_shut_them_out() {
        let key = EnrollmentKey::generate();
        let local = PeerId::random();
        let admission = edge_node(&key, &local);
        let member = PeerId::random();
        let cred = key
            .issue(&member, Roles::EDGE, NOW, NOW + 10_000)
            .to_bytes();
        assert_eq!(admission.roles(&member, NOW), None);
        assert_eq!(admission.check(&member, &[], NOW), Err(Refusal::Missing));
        assert_eq!(
            admission.check(&member, b"junk", NOW),
            Err(Refusal::Malformed)
        );
        assert_eq!(admission.check(&member, &cred, NOW), Ok(Roles::EDGE));
        assert_eq!(admission.roles(&member, NOW), Some(Roles::EDGE));
        assert_eq!(admission.roles(&member, NOW + 10_000), None, "expired");
        // A revocation by another key is ignored; the mesh's own takes effect.
        let forged = EnrollmentKey::generate().revoke(&member, NOW);
        assert!(admission.revoke(&[forged]).is_empty());
        assert_eq!(admission.roles(&member, NOW), Some(Roles::EDGE));
        let real = key.revoke(&member, NOW);
        assert_eq!(
            admission.revoke(&[Revocation::from_bytes(&real.to_bytes()).unwrap()]),
            vec![member]
        );
        assert_eq!(admission.roles(&member, NOW), None);
        assert_eq!(admission.check(&member, &cred, NOW), Err(Refusal::Revoked));
        // Its own credential must name the node.
        assert!(
            Admission::new(&key.issue(&member, Roles::EDGE, NOW, NOW + 1), &local, NOW).is_err()
        );
    }

    #[test]
    fn a_signed_row_verifies_only_unchanged_from_a_member_of_this_mesh_not_revoked() {
        let key = EnrollmentKey::generate();
        let local = PeerId::random();
        let admission = edge_node(&key, &local);
        let writer = libp2p::identity::Keypair::generate_ed25519();
        let writer_id = writer.public().to_peer_id();
        let cred = key.issue(&writer_id, Roles::ADMIN, NOW, NOW + 10_000);
        let sig = sign_row(&writer, cred.to_bytes(), b"alice:ha1");
        assert_eq!(
            admission.verify_row(&sig, b"alice:ha1", NOW + 1),
            Ok((writer_id, Roles::ADMIN))
        );
        // Another row, a row written outside the credential's validity, junk.
        assert!(admission.verify_row(&sig, b"alice:ha2", NOW + 1).is_err());
        assert!(admission
            .verify_row(&sig, b"alice:ha1", NOW + 10_000)
            .is_err());
        assert!(admission.verify_row(b"junk", b"alice:ha1", NOW).is_err());
        // A credential of another mesh, or naming another peer than the signer.
        let foreign = EnrollmentKey::generate().issue(&writer_id, Roles::ADMIN, NOW, NOW + 10_000);
        let sig_foreign = sign_row(&writer, foreign.to_bytes(), b"alice:ha1");
        assert!(admission
            .verify_row(&sig_foreign, b"alice:ha1", NOW)
            .is_err());
        let thief = libp2p::identity::Keypair::generate_ed25519();
        let stolen = sign_row(&thief, cred.to_bytes(), b"alice:ha1");
        assert!(admission.verify_row(&stolen, b"alice:ha1", NOW).is_err());
        // Once the writer is admitted (its heartbeat), its credential is not checked again,
        // but its expiry still is, against the row's time.
        admission.check(&writer_id, &cred.to_bytes(), NOW).unwrap();
        assert_eq!(
            admission.verify_row(&sig, b"alice:ha1", NOW + 1),
            Ok((writer_id, Roles::ADMIN))
        );
        assert!(admission
            .verify_row(&sig, b"alice:ha1", NOW + 10_000)
            .is_err());
        assert!(admission.verify_row(&stolen, b"alice:ha1", NOW).is_err());
        // Revoked: none of its rows is trusted any more.
        admission.revoke(&[key.revoke(&writer_id, NOW)]);
        assert!(admission.verify_row(&sig, b"alice:ha1", NOW + 1).is_err());
    }

    #[test]
    fn roles_parse() {
        assert_eq!(Roles::parse("edge"), Ok(Roles::EDGE));
        assert_eq!(Roles::parse("edge,admin"), Ok(Roles::ADMIN));
        assert!(Roles::parse("root").is_err());
        assert_eq!(Roles::ADMIN.to_string(), "edge,admin");
    }

    #[test]
    fn a_renewal_must_name_this_node_come_from_this_mesh_and_be_valid() {
        let key = EnrollmentKey::generate();
        let me = PeerId::random();
        let first = key.issue(&me, Roles::EDGE, NOW, NOW + 1_000);
        let a = Admission::new(&first, &me, NOW).unwrap();
        assert_eq!(
            (a.own_roles(), a.own_expires_ms()),
            (Roles::EDGE, NOW + 1_000)
        );
        let refused = [
            key.issue(&PeerId::random(), Roles::ADMIN, NOW, NOW + 5_000),
            EnrollmentKey::generate().issue(&me, Roles::ADMIN, NOW, NOW + 5_000),
            key.issue(&me, Roles::ADMIN, NOW - 2_000, NOW - 1),
        ];
        for c in &refused {
            assert!(a.renew(c, &me, NOW).is_err());
            assert_eq!(
                a.own(),
                first.to_bytes(),
                "a bad renewal replaced the credential"
            );
        }
        let renewed = key.issue(&me, Roles::ADMIN, NOW, NOW + 5_000);
        assert_eq!(a.renew(&renewed, &me, NOW).unwrap(), renewed.to_bytes());
        assert_eq!(a.own(), renewed.to_bytes());
        assert_eq!(
            (a.own_roles(), a.own_expires_ms()),
            (Roles::ADMIN, NOW + 5_000)
        );
    }
}
