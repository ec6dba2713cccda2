//! Users: digest credentials in the replicated `users` table (HA1 only, never the password),
//! written and read at QUORUM, with a short-lived cache for the SIP hot path.
//!
//! Under signed enrollment a user row counts only if a member with the `admin` role signed it
//! (`call::signed`): a member without it cannot add or change a user however the row travels
//! (anti-entropy, handoff, a forged read answer), and the rows a revoked member signed stop
//! counting mesh-wide.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sipmesh_net::{Consistency, Mesh, Roles};
use sipmesh_storage::Mutation;

use crate::call::signed;
use crate::error::{Error, Result};
use crate::sip::digest::{ha1, Algorithm, Credentials};
use crate::slack::Slack;
use crate::tables::USERS;

/// How long a looked-up user is reused by the registrar before reading it again.
const CACHE_TTL: Duration = Duration::from_secs(2);
/// Users cached at most.
const CACHE_MAX: usize = 100_000;
/// The cache is not pruned below this size.
const PRUNE_FLOOR: usize = 1_024;
/// How long a user write waits, past QUORUM, for the other live replicas (whose local reads
/// authenticate).
const SETTLE: Duration = Duration::from_millis(200);
/// Longest user name.
pub const MAX_USER_LEN: usize = 64;

/// A user as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UserRecord {
    /// The user name (the user part of the AOR).
    pub user: String,
    /// The realm the HA1s are for.
    pub realm: String,
    /// Display name.
    pub display_name: Option<String>,
    /// Whether the user may not register or call.
    pub disabled: bool,
    /// The HA1s.
    #[serde(skip)]
    pub credentials: Credentials,
}

/// Check a user name: 1–64 characters of the SIP user-unreserved set, letters and digits.
pub fn validate_user(user: &str) -> Result<()> {
    let ok = !user.is_empty()
        && user.len() <= MAX_USER_LEN
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.!~*'()&=+$,;?/%".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "invalid user name {user:?}: use 1-{MAX_USER_LEN} letters, digits or -_.!~*'()&=+$,;?/%"
        )))
    }
}

/// The user store of a node.
pub struct Users {
    mesh: Mesh,
    realm: String,
    cache: Mutex<HashMap<String, (Option<UserRecord>, Instant)>>,
    /// The cache size at which stale entries are next dropped.
    prune_at: AtomicUsize,
}

fn text(v: Option<&[u8]>) -> Option<String> {
    v.map(|b| String::from_utf8_lossy(b).into_owned())
}

impl Users {
    /// The store over `mesh`, for `realm`.
    pub fn new(mesh: Mesh, realm: &str) -> Self {
        Users {
            mesh,
            realm: realm.to_string(),
            cache: Mutex::new(HashMap::new()),
            prune_at: AtomicUsize::new(PRUNE_FLOOR),
        }
    }

    /// The mutation that stores a user (HA1s for the realm).
    pub fn mutation(
        &self,
        user: &str,
        password: &str,
        display_name: Option<&str>,
    ) -> Result<Mutation> {
        validate_user(user)?;
        if password.is_empty() {
            return Err(Error::Config(format!("empty password for user {user:?}")));
        }
        let mut cols: Vec<(&str, Vec<u8>)> = vec![
            (
                "ha1_md5",
                ha1(Algorithm::Md5, user, &self.realm, password).into_bytes(),
            ),
            (
                "ha1_sha256",
                ha1(Algorithm::Sha256, user, &self.realm, password).into_bytes(),
            ),
            ("realm", self.realm.clone().into_bytes()),
            ("disabled", b"0".to_vec()),
        ];
        if let Some(d) = display_name {
            cols.push(("display_name", d.as_bytes().to_vec()));
        }
        let ts = self.mesh.keyspace().now();
        if let Some(sig) = signed::sign(&self.mesh, "users", user.as_bytes(), b"", ts, &cols) {
            cols.push(sig);
        }
        Ok(Mutation::new(USERS, user.as_bytes().to_vec()).upsert(b"", cols, ts, None))
    }

    /// Add (or replace) a user, at QUORUM.
    pub async fn add(&self, user: &str, password: &str, display_name: Option<&str>) -> Result<()> {
        let m = self.mutation(user, password, display_name)?;
        self.mesh
            .write_settled(m, Consistency::Quorum, SETTLE)
            .await?;
        self.forget(user);
        Ok(())
    }

    /// Remove a user, at QUORUM. Returns whether it existed.
    pub async fn remove(&self, user: &str) -> Result<bool> {
        let existed = self.get(user).await?.is_some();
        let ts = self.mesh.keyspace().now();
        let m = Mutation::new(USERS, user.as_bytes().to_vec()).delete_row(b"", ts);
        self.mesh
            .write_settled(m, Consistency::Quorum, SETTLE)
            .await?;
        self.forget(user);
        Ok(existed)
    }

    fn forget(&self, user: &str) {
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(user);
    }

    /// Read a user at QUORUM.
    pub async fn get(&self, user: &str) -> Result<Option<UserRecord>> {
        let p = self
            .mesh
            .read(USERS, user.as_bytes(), Consistency::Quorum)
            .await?;
        Ok(self.record(user, &p))
    }

    /// The user a partition holds: its row, if it counts (under enrollment: signed by an
    /// admin member, `call::signed`).
    fn record(&self, user: &str, p: &sipmesh_storage::Partition) -> Option<UserRecord> {
        let row = p.rows.first()?;
        let row = signed::verified(
            &self.mesh,
            "users",
            user.as_bytes(),
            row,
            |signer, roles, _| {
                if roles.contains(Roles::ADMIN) {
                    Ok(())
                } else {
                    Err(format!("its writer {signer} has not the admin role"))
                }
            },
        )?;
        Self::fields(user, &row)
    }

    fn fields(user: &str, row: &sipmesh_storage::Row) -> Option<UserRecord> {
        Some(UserRecord {
            user: user.to_string(),
            realm: text(row.get("realm"))?,
            display_name: text(row.get("display_name")),
            disabled: row.get("disabled") == Some(b"1"),
            credentials: Credentials {
                ha1_md5: text(row.get("ha1_md5"))?,
                ha1_sha256: text(row.get("ha1_sha256"))?,
            },
        })
    }

    /// Read a user for authentication: from this node's own replica when it is one and has
    /// the user (no round trip); otherwise at QUORUM, reusing a lookup younger than
    /// [`CACHE_TTL`]. A user added or changed at QUORUM reaches a replica that missed the
    /// write within seconds (hints, read repair, anti-entropy); until then the QUORUM path
    /// answers for users the replica lacks.
    pub async fn get_cached(&self, user: &str) -> Result<Option<UserRecord>> {
        if self.mesh.reads_locally(user.as_bytes()) {
            let p = self
                .mesh
                .keyspace()
                .read_partition(USERS, user.as_bytes())?;
            if let Some(rec) = self.record(user, &p) {
                return Ok(Some(rec));
            }
        }
        if let Some((rec, at)) = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(user)
        {
            if at.elapsed() < CACHE_TTL {
                return Ok(rec.clone());
            }
        }
        let rec = self.get(user).await?;
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        // Stale entries go once the cache has doubled since the last pass (amortised O(1) per
        // insert), so it holds about the users of the last CACHE_TTL, not every user ever
        // seen; at CACHE_MAX live entries it starts over.
        if cache.len() >= self.prune_at.load(Ordering::Relaxed) {
            self.prune(&mut cache);
        }
        cache.insert(user.to_string(), (rec.clone(), Instant::now()));
        Ok(rec)
    }

    /// Forget cached lookups older than [`CACHE_TTL`] and give back the capacity a burst left
    /// ([`crate::slack`]).
    pub fn release_slack(&self) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        self.prune(&mut cache);
        cache.release();
    }

    /// Drop the stale entries (all of them at [`CACHE_MAX`] live ones); the next pass comes
    /// once the cache has doubled.
    fn prune(&self, cache: &mut HashMap<String, (Option<UserRecord>, Instant)>) {
        cache.retain(|_, (_, at)| at.elapsed() < CACHE_TTL);
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        self.prune_at
            .store((cache.len() * 2).max(PRUNE_FLOOR), Ordering::Relaxed);
    }

    /// A page of the user partitions this node holds, in token order after user `after`: at
    /// most `max` names, and whether there may be more (one part of a mesh-wide listing). A
    /// name may be of a user deleted since (its partition lives until compaction): the
    /// listing checks each. Reads the keyspace: run it on the blocking pool.
    pub fn local_users(&self, after: Option<&str>, max: usize) -> Result<(Vec<String>, bool)> {
        let (keys, more) =
            self.mesh
                .keyspace()
                .partitions_of(USERS, after.map(str::as_bytes), max)?;
        let names = keys
            .into_iter()
            .map(|pk| String::from_utf8_lossy(&pk).into_owned())
            .collect();
        Ok((names, more))
    }
}
