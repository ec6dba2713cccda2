//! The members' per-table write rights, under signed enrollment (RELOAD's access policies as
//! the model): what a member may write as a coordinator, checked by every replica it writes to.
//!
//! - `users` (HA1 hashes, password-equivalent): only members whose credential has the `admin`
//!   role; a node's admin API changes users only with it.
//! - `proxies`: a node writes only its own row (its addresses, capacity and load).
//! - `dialogs_of_node`: a node stores dialogs only in its own partitions; any member may
//!   delete one (the node that sees the BYE ends the call).
//! - `bans`: a ban names the node that banned (`by`), and it must be the writer; any member
//!   may lift one.
//! - `registrations`: a binding names the node that owns its flow, and it must be the writer
//!   (a phone that moves registers with its new node, which writes a binding naming itself);
//!   any member may delete one (a phone unregistering through another node).
//! - `mesh` and `revocations`: any member (the mesh secret at bootstrap;
//!   revocations are signed by the enrollment key and checked by every reader).
//!
//! These hold for writes a member coordinates (and the read repairs and hints it sends). Rows
//! that move between replicas (anti-entropy, handoff) are not checked here: a replica passes
//! on the rows it holds, as a Cassandra node does. What makes `users` and `registrations`
//! hold however a row travels is its signature (`call::signed`): a row that its writer could
//! not have written does not count when read (docs/SECURITY.md, "What a member can still do").

use sipmesh_net::{PeerId, Roles};
use sipmesh_storage::{CellValue, EntryKey, Mutation};

use crate::call::location::Binding;
use crate::tables::{BANS, DIALOGS_OF_NODE, PROXIES, REGISTRATIONS, USERS};

fn is_delete(key: &EntryKey, value: &CellValue) -> bool {
    matches!(
        key,
        EntryKey::PartitionTombstone | EntryKey::RowTombstone(_)
    ) || matches!(value, CellValue::Tombstone { .. })
}

/// Whether `writer`, with `roles`, may write `m`.
pub fn check(writer: &PeerId, roles: Roles, m: &Mutation) -> Result<(), String> {
    let upserts = || m.entries.iter().filter(|(k, c)| !is_delete(k, &c.value));
    match m.table {
        USERS if !roles.contains(Roles::ADMIN) => {
            Err("users are written only by members with the admin role".into())
        }
        PROXIES if m.partition_key != writer.to_string().as_bytes() => {
            Err("a node writes only its own proxies row".into())
        }
        DIALOGS_OF_NODE
            if !m.partition_key.starts_with(&writer.to_bytes()) && upserts().next().is_some() =>
        {
            Err("a node stores dialogs only in its own partitions".into())
        }
        REGISTRATIONS => {
            let foreign = upserts().any(|(k, c)| match (k, &c.value) {
                (EntryKey::Column(clustering, col), CellValue::Live { value, .. })
                    if col == "binding" =>
                {
                    sipmesh_storage::codec::decode::<Binding>(value, "registrations", clustering)
                        .map_or(true, |b| b.owner != *writer)
                }
                _ => false,
            });
            if foreign {
                Err("a binding must name the node that writes it as its owner".into())
            } else {
                Ok(())
            }
        }
        BANS => {
            let me = writer.to_string();
            let forged = upserts().any(|(k, c)| match (k, &c.value) {
                (EntryKey::Column(_, col), CellValue::Live { value, .. }) if col == "by" => {
                    value.as_slice() != me.as_bytes()
                }
                _ => false,
            });
            if forged {
                Err("a ban must name the node that writes it".into())
            } else {
                Ok(())
            }
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sipmesh_storage::Timestamp;

    fn ts() -> Timestamp {
        Timestamp::from_millis(1_700_000_000_000)
    }

    #[test]
    fn members_write_only_what_their_roles_and_identity_allow() {
        let me = PeerId::random();
        let other = PeerId::random();
        let user = Mutation::new(USERS, b"alice".to_vec()).upsert(
            b"",
            [("realm", b"r".to_vec())],
            ts(),
            None,
        );
        assert!(check(&me, Roles::EDGE, &user).is_err());
        assert!(check(&me, Roles::ADMIN, &user).is_ok());
        let own = Mutation::new(PROXIES, me.to_string().into_bytes()).upsert(
            b"",
            [("load", b"1".to_vec())],
            ts(),
            None,
        );
        let theirs = Mutation::new(PROXIES, other.to_string().into_bytes()).upsert(
            b"",
            [("load", b"1".to_vec())],
            ts(),
            None,
        );
        assert!(check(&me, Roles::EDGE, &own).is_ok());
        assert!(check(&me, Roles::ADMIN, &theirs).is_err());
        let mut pk = other.to_bytes();
        pk.extend_from_slice(&[0, 1]);
        let store = Mutation::new(DIALOGS_OF_NODE, pk.clone()).upsert(
            b"d1",
            [("dialog", b"x".to_vec())],
            ts(),
            None,
        );
        let end = Mutation::new(DIALOGS_OF_NODE, pk).delete_row(b"d1", ts());
        assert!(check(&me, Roles::EDGE, &store).is_err());
        assert!(check(&me, Roles::EDGE, &end).is_ok());
        let ban = |by: &PeerId| {
            Mutation::new(BANS, b"all".to_vec()).upsert(
                b"192.0.2.1",
                [
                    ("reason", b"flood".to_vec()),
                    ("by", by.to_string().into_bytes()),
                ],
                ts(),
                None,
            )
        };
        let binding = |owner: &PeerId| {
            let b = Binding {
                contact: "sip:a@192.0.2.1".into(),
                params: Vec::new(),
                expires_at_ms: 1,
                q: None,
                call_id: "c".into(),
                cseq: 1,
                user_agent: None,
                owner: *owner,
                flow: crate::sip::flow::Flow::Udp("192.0.2.1:5060".parse().unwrap()),
                instance: None,
                reg_id: None,
                path: Vec::new(),
                updated_ms: 0,
            };
            Mutation::new(REGISTRATIONS, b"alice".to_vec()).upsert(
                &b.key(),
                [("binding", b.encode())],
                ts(),
                None,
            )
        };
        assert!(check(&me, Roles::EDGE, &binding(&me)).is_ok());
        assert!(check(&me, Roles::ADMIN, &binding(&other)).is_err());
        let unregister = Mutation::new(REGISTRATIONS, b"alice".to_vec()).delete_row(b"c:x", ts());
        assert!(check(&me, Roles::EDGE, &unregister).is_ok());
        assert!(check(&me, Roles::EDGE, &ban(&me)).is_ok());
        assert!(check(&me, Roles::EDGE, &ban(&other)).is_err());
    }
}
