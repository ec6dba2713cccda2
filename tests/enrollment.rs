//! Signed enrollment on real libp2p swarms over loopback (issue "A community node on the
//! public internet", item 7): holding the mesh key is not enough to be a member; members write
//! only what their roles allow; a revocation shuts a member out mesh-wide.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

mod common;

use sipmesh::tables::{PROXIES, REGISTRATIONS, USERS};
use sipmesh::{Consistency, LocalMesh};
use sipmesh_net::{Enrollment, EnrollmentKey, Mesh, MeshConfig, Multiaddr, Roles};
use sipmesh_storage::{Keyspace, Mutation};

const MESH_KEY: [u8; 32] = [7u8; 32];

async fn within<F: Future<Output = ()>>(secs: u64, f: F) {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .expect("test timed out");
}

async fn eventually(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn enrolled(key: &Arc<EnrollmentKey>, roles: Roles) -> Enrollment {
    Enrollment::SelfIssued {
        key: key.clone(),
        roles,
    }
}

/// A mesh of `n` nodes, all holding the mesh key, enrolled with `key` as admins, or not
/// enrolled at all (`None`), bootstrapping from `seed` if given.
async fn nodes(n: usize, enrollment: Option<Enrollment>, seed: Option<Multiaddr>) -> LocalMesh {
    let mut b = LocalMesh::builder()
        .nodes(n)
        .mesh_key(MESH_KEY)
        .anti_entropy_interval(Duration::from_secs(1));
    if let Some(e) = enrollment {
        b = b.enrollment(e);
    }
    if let Some(seed) = seed {
        b = b.bootstrap(seed);
    }
    b.start().await.unwrap()
}

fn has_user(mesh: &LocalMesh, i: usize, user: &str) -> bool {
    let node = mesh.node(i).node().unwrap();
    node.mesh
        .keyspace()
        .read_row(USERS, user.as_bytes(), b"")
        .ok()
        .flatten()
        .is_some()
}

/// Outsiders holding the mesh key (one not enrolled, one enrolled in another mesh) never
/// become members, read nothing and write nothing; an enrolled member with the edge role
/// joins, reads, and cannot change users; a revocation sent to one node shuts it out of every
/// node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_enrolled_nodes_are_members_and_a_revocation_holds_mesh_wide() {
    within(180, async {
        let key = Arc::new(EnrollmentKey::generate());
        let mesh = nodes(2, Some(enrolled(&key, Roles::ADMIN)), None).await;
        mesh.wait_converged(Duration::from_secs(30)).await.unwrap();
        let seed = mesh.node(0).addr.clone();
        let unenrolled = nodes(1, None, Some(seed.clone())).await;
        let other_key = Arc::new(EnrollmentKey::generate());
        let foreign = nodes(
            1,
            Some(enrolled(&other_key, Roles::ADMIN)),
            Some(seed.clone()),
        )
        .await;
        let edge = nodes(1, Some(enrolled(&key, Roles::EDGE)), Some(seed)).await;
        let edge_id = edge.node(0).peer_id;
        for i in 0..2 {
            eventually(30, "the enrolled edge node joins", || {
                mesh.node(i).node().unwrap().mesh.is_up(&edge_id)
            })
            .await;
        }
        mesh.node(0)
            .run(|n| async move { n.add_user("alice", "a-pw").await })
            .await
            .unwrap()
            .unwrap();
        for outsider in [&unenrolled, &foreign] {
            let read = outsider
                .node(0)
                .run(|n| async move { n.mesh.read(USERS, b"alice", Consistency::One).await })
                .await
                .unwrap();
            assert!(
                read.map_or(true, |p| p.rows.is_empty()),
                "an outsider read a member's row"
            );
            let _ = outsider
                .node(0)
                .run(|n| async move { n.add_user("mallory", "m-pw").await })
                .await
                .unwrap();
        }
        // The member reads what members hold, and may not change users.
        let read = edge
            .node(0)
            .run(|n| async move { n.mesh.read(USERS, b"alice", Consistency::Quorum).await })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(read.rows.len(), 1, "the enrolled member reads alice");
        let refused = edge
            .node(0)
            .run(|n| async move { n.add_user("eve", "e-pw").await })
            .await
            .unwrap();
        let why = refused
            .expect_err("an edge member changed users")
            .to_string();
        assert!(why.contains("admin role"), "{why}");
        // Several anti-entropy rounds later, nothing of the outsiders' reached a member.
        tokio::time::sleep(Duration::from_secs(4)).await;
        for i in 0..2 {
            assert!(
                !has_user(&mesh, i, "mallory"),
                "an outsider's write reached node {i}"
            );
            assert!(
                !has_user(&mesh, i, "eve"),
                "the edge member's user reached node {i}"
            );
            let members = mesh.node(i).node().unwrap().mesh.members();
            for outsider in [&unenrolled, &foreign] {
                let id = outsider.node(0).peer_id;
                assert!(
                    !members.iter().any(|m| m.peer_id == id),
                    "an outsider became a member of node {i}"
                );
            }
        }
        // What an outsider learnt of the members: their PeerIds and listen addresses (from
        // the connections), no tags (no SIP address, no admin URL, no load).
        for outsider in [&unenrolled, &foreign] {
            let o = outsider.node(0).node().unwrap();
            for i in 0..2 {
                let id = mesh.node(i).peer_id;
                assert_eq!(
                    o.mesh.tag(&id, "sip"),
                    None,
                    "an outsider learnt node {i}'s tags"
                );
            }
            // The edge member may have found the outsider through the DHT and dialled it; its
            // bare heartbeat then names it (PeerId, generation, listen addresses) and nothing
            // more.
            if let Some(m) = o.mesh.members().into_iter().find(|m| m.peer_id == edge_id) {
                assert!(
                    m.tags.is_empty(),
                    "an outsider learnt the edge member's tags: {m:?}"
                );
            }
        }
        assert!(
            mesh.node(0)
                .node()
                .unwrap()
                .mesh
                .metrics()
                .admission_refusals()
                > 0,
            "refusals are counted"
        );

        // Revoked through node 0: node 1 shuts the member out too.
        let revocation = key.revoke(&edge_id, 1);
        let forged = other_key.revoke(&mesh.node(1).peer_id, 1);
        let n0 = mesh.node(0).node().unwrap();
        assert!(
            n0.revoke(&forged).await.is_err(),
            "a revocation signed by another key was accepted"
        );
        assert_eq!(n0.revoke(&revocation).await.unwrap(), edge_id);
        for i in 0..2 {
            eventually(20, "every node marks the revoked member down", || {
                let m = &mesh.node(i).node().unwrap().mesh;
                !m.is_up(&edge_id) && m.roles_of(&edge_id).is_none()
            })
            .await;
        }
        let after = edge
            .node(0)
            .run(|n| async move { n.mesh.read(USERS, b"alice", Consistency::Quorum).await })
            .await
            .unwrap();
        assert!(after.is_err(), "the revoked member still reads at QUORUM");
        assert!(
            mesh.node(1)
                .node()
                .unwrap()
                .mesh
                .is_up(&mesh.node(0).peer_id),
            "the forged revocation shut out an honest member"
        );
    })
    .await;
}

/// A user row counts only when an admin member signed it and is not revoked, however it
/// travelled: an edge member writes forged rows straight into its own replica (a new user
/// unsigned, one signed by itself, an admin's user's HA1 overwritten), anti-entropy carries them
/// to the admins' replicas, and no node authenticates any of them; nor does any route to a
/// binding its owner did not sign; the users an admin signed stop counting when it is revoked,
/// and count again once another admin writes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_rows_count_only_when_signed_by_an_admin_that_is_not_revoked() {
    within(180, async {
        let key = Arc::new(EnrollmentKey::generate());
        let mesh = nodes(2, Some(enrolled(&key, Roles::ADMIN)), None).await;
        mesh.wait_converged(Duration::from_secs(30)).await.unwrap();
        let edge = nodes(
            1,
            Some(enrolled(&key, Roles::EDGE)),
            Some(mesh.node(0).addr.clone()),
        )
        .await;
        let edge_id = edge.node(0).peer_id;
        for i in 0..2 {
            eventually(30, "the edge member joins", || {
                mesh.node(i).node().unwrap().mesh.is_up(&edge_id)
            })
            .await;
        }
        let (n0, n1) = (mesh.node(0).node().unwrap(), mesh.node(1).node().unwrap());
        n0.add_user("alice", "a-pw").await.unwrap();
        n1.add_user("bob", "b-pw").await.unwrap();
        let e = edge.node(0).node().unwrap();
        let knows = |node: sipmesh::Node, user: &'static str| async move {
            node.knows_user(user).await.unwrap()
        };
        for node in [&n0, &n1, &e] {
            assert!(
                knows(node.clone(), "alice").await,
                "an admin's user is known"
            );
            assert!(knows(node.clone(), "bob").await, "an admin's user is known");
        }

        // The edge member forges, in its own replica only.
        let ks = e.mesh.keyspace();
        let cols = |ha1: &str| {
            vec![
                ("ha1_md5", ha1.as_bytes().to_vec()),
                ("ha1_sha256", ha1.as_bytes().to_vec()),
                ("realm", n0.realm().as_bytes().to_vec()),
                ("disabled", b"0".to_vec()),
            ]
        };
        let unsigned =
            Mutation::new(USERS, b"mallory".to_vec()).upsert(b"", cols("0000"), ks.now(), None);
        ks.apply(&unsigned).unwrap();
        let self_signed = e.user_mutation("eve", "e-pw").unwrap();
        assert!(
            self_signed
                .entries
                .iter()
                .any(|(k, _)| matches!(k, sipmesh_storage::EntryKey::Column(_, c) if c == "sig")),
            "a row written under enrollment is signed"
        );
        ks.apply(&self_signed).unwrap();
        let overwrite = Mutation::new(USERS, b"alice".to_vec()).upsert(
            b"",
            [("ha1_md5", b"1111".to_vec())],
            ks.now(),
            None,
        );
        ks.apply(&overwrite).unwrap();

        // Anti-entropy carries them to the admins' replicas...
        for (i, node) in [&n0, &n1].into_iter().enumerate() {
            eventually(30, "anti-entropy carries the forged rows", || {
                let row = |u: &str| {
                    node.mesh
                        .keyspace()
                        .read_row(USERS, u.as_bytes(), b"")
                        .unwrap()
                };
                row("mallory").is_some()
                    && row("eve").is_some()
                    && row("alice").and_then(|r| r.get("ha1_md5").map(<[u8]>::to_vec))
                        == Some(b"1111".to_vec())
            })
            .await;
            // ...and no node counts them: not the new users, not the changed one.
            for user in ["mallory", "eve", "alice"] {
                assert!(
                    !knows(node.clone(), user).await,
                    "node {i} authenticates {user} from a row no admin signed"
                );
            }
            assert!(knows(node.clone(), "bob").await, "bob is untouched");
            assert!(
                node.mesh.metrics().rows_ignored() > 0,
                "ignored rows are counted"
            );
        }

        // Bindings: only the node that owns one's flow may sign it. Bob registers with node 0;
        // the edge member copies that binding into another AOR in its own replica, unsigned.
        let server = n0.sip_addr();
        let mut phone = common::Client::udp(server).await;
        let contact = format!("<sip:bob@{}>", phone.local());
        let mut reg = common::Register::new("bob", &contact);
        let ok = common::register(&mut phone, server, &mut reg, "b-pw").await;
        assert_eq!(ok.status(), Some(200), "bob registers");
        let bound = |node: sipmesh::Node, aor: &'static str| async move {
            node.contacts(aor).await.unwrap().len()
        };
        assert_eq!(bound(n1.clone(), "bob").await, 1, "node 0's binding counts");
        let bob = ks.read_partition(REGISTRATIONS, b"bob").unwrap();
        let copied = bob.rows[0].get("binding").unwrap().to_vec();
        let forged = Mutation::new(REGISTRATIONS, b"carol".to_vec()).upsert(
            b"c:sip:carol@192.0.2.66",
            [("binding", copied)],
            ks.now(),
            Some(ks.wall_ms() + 600_000),
        );
        ks.apply(&forged).unwrap();
        for (i, node) in [&n0, &n1].into_iter().enumerate() {
            eventually(30, "anti-entropy carries the forged binding", || {
                !node
                    .mesh
                    .keyspace()
                    .read_partition(REGISTRATIONS, b"carol")
                    .unwrap()
                    .rows
                    .is_empty()
            })
            .await;
            assert_eq!(
                bound(node.clone(), "carol").await,
                0,
                "node {i} routes to a binding its owner did not sign"
            );
            assert_eq!(bound(node.clone(), "bob").await, 1);
        }

        // Node 1 is revoked: bob, whom it signed, stops counting...
        n0.revoke(&key.revoke(&mesh.node(1).peer_id, 1))
            .await
            .unwrap();
        for node in [&n0, &e] {
            common::eventually(20, "the revoked admin's user stops counting", || async {
                !knows(node.clone(), "bob").await
            })
            .await;
        }
        // ...until another admin writes it again; alice too.
        n0.add_user("bob", "b-pw").await.unwrap();
        n0.add_user("alice", "a-pw").await.unwrap();
        for node in [&n0, &e] {
            common::eventually(20, "re-signed users count again", || async {
                knows(node.clone(), "bob").await && knows(node.clone(), "alice").await
            })
            .await;
        }
    })
    .await;
}

/// A member that does not hold back (a bare mesh peer without the node's rights, as a
/// modified node would be) finds the replicas refusing the writes it coordinates beyond its
/// role: a user, and another node's row. (Rows moving between replicas by anti-entropy are not
/// checked: docs/SECURITY.md, "What a member can still do".)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_refuse_writes_beyond_a_members_rights() {
    within(120, async {
        let key = Arc::new(EnrollmentKey::generate());
        let mesh = LocalMesh::builder()
            .nodes(2)
            .mesh_key(MESH_KEY)
            .anti_entropy_interval(Duration::from_secs(600))
            .enrollment(enrolled(&key, Roles::ADMIN))
            .start()
            .await
            .unwrap();
        mesh.wait_converged(Duration::from_secs(30)).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut config = MeshConfig::new(dir.path().join("rogue"));
        config.mesh_key = Some(sipmesh_net::config::MeshConfigKey(MESH_KEY).psk());
        config.bootstrap = vec![mesh.node(0).addr.clone()];
        // No anti-entropy during the test: what reaches the others here came by the writes.
        config.anti_entropy_interval = Duration::from_secs(600);
        config.enrollment = Some(enrolled(&key, Roles::EDGE));
        let ks = Keyspace::in_memory(sipmesh::tables::all());
        let (rogue, _inbox) = Mesh::start(config, ks.clone()).await.unwrap();
        let rogue_id = rogue.peer_id();
        for i in 0..2 {
            eventually(30, "the member joins", || {
                mesh.node(i).node().unwrap().mesh.is_up(&rogue_id)
            })
            .await;
        }
        let stamp = ks.now();
        let user = Mutation::new(USERS, b"mallory".to_vec()).upsert(
            b"",
            [("realm", b"sipmesh".to_vec())],
            stamp,
            None,
        );
        let err = rogue
            .write(user, Consistency::Quorum)
            .await
            .expect_err("replicas took a user from an edge member");
        assert!(err.to_string().contains("admin role"), "{err}");
        let theirs = mesh.node(0).peer_id.to_string().into_bytes();
        let spoof = Mutation::new(PROXIES, theirs).upsert(
            b"",
            [("capacity", b"1000000".to_vec())],
            stamp,
            None,
        );
        assert!(
            rogue.write(spoof, Consistency::Quorum).await.is_err(),
            "replicas took another node's proxies row"
        );
        // The control: its own row is its to write.
        let own = Mutation::new(PROXIES, rogue_id.to_string().into_bytes()).upsert(
            b"",
            [("capacity", b"10".to_vec())],
            stamp,
            None,
        );
        rogue.write(own, Consistency::Quorum).await.unwrap();
        for i in 0..2 {
            assert!(!has_user(&mesh, i, "mallory"), "node {i} took mallory");
            let node = mesh.node(i).node().unwrap();
            let row = node
                .mesh
                .keyspace()
                .read_row(PROXIES, mesh.node(0).peer_id.to_string().as_bytes(), b"")
                .unwrap();
            assert!(
                row.is_none_or(|r| r.get("capacity") != Some(b"1000000".as_slice())),
                "node {i} took the spoofed proxies row"
            );
        }
        assert!(
            mesh.node(0).node().unwrap().mesh.metrics().writes_refused() > 0,
            "refused writes are counted"
        );
        rogue.shutdown().await;
    })
    .await;
}

/// A credential renewed on disk is used without a restart: written over the `--credential`
/// file, it reaches the other members with the next heartbeat (here it adds the admin role, so
/// the node's user write, refused before, is accepted by its peer); a file that is not valid
/// for the node (another peer's credential) leaves the one in use in place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_credential_is_used_without_a_restart() {
    within(120, async {
        let key = Arc::new(EnrollmentKey::generate());
        let mesh = LocalMesh::builder()
            .nodes(2)
            .mesh_key(MESH_KEY)
            .configure({
                let (admin, edge) = (enrolled(&key, Roles::ADMIN), enrolled(&key, Roles::EDGE));
                move |c| {
                    let is_edge = c.data_dir.ends_with("node1");
                    c.mesh.enrollment = Some(if is_edge { edge.clone() } else { admin.clone() });
                    c.credential_file = Some(c.data_dir.join("member.cred"));
                }
            })
            .start()
            .await
            .unwrap();
        mesh.wait_converged(Duration::from_secs(30)).await.unwrap();
        let edge = mesh.node(1);
        let file = edge.config().credential_file.clone().unwrap();
        let add = |user: &'static str| {
            edge.run(
                move |n| async move { n.add_user(user, "pw").await.map_err(|e| e.to_string()) },
            )
        };
        let refused = add("before")
            .await
            .unwrap()
            .expect_err("an edge node changed users");
        assert!(refused.contains("admin role"), "{refused}");
        let expires = |mesh: &LocalMesh| mesh.node(1).node().unwrap().mesh.credential_expires_ms();
        let first = expires(&mesh).expect("an enrolled node has a credential");

        // Another peer's credential in the file: refused, the one in use stays.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let stranger = key.issue(
            &sipmesh_net::PeerId::random(),
            Roles::ADMIN,
            now,
            now + 3_600_000,
        );
        let write = |c: &sipmesh_net::admission::Credential| {
            let tmp = file.with_extension("new");
            std::fs::write(&tmp, sipmesh::ops::enrollment::credential_text(c)).unwrap();
            std::fs::rename(&tmp, &file).unwrap();
        };
        write(&stranger);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(
            expires(&mesh),
            Some(first),
            "another peer's credential was taken"
        );
        assert!(add("still-not").await.unwrap().is_err());

        // Its own renewed credential, with the admin role and a new expiry: used at once.
        let renewed = key.issue(&edge.peer_id, Roles::ADMIN, now, now + 7_200_000);
        write(&renewed);
        eventually(20, "the renewed credential is in use", || {
            expires(&mesh) == Some(now + 7_200_000)
        })
        .await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            match add("after").await.unwrap() {
                Ok(()) => break,
                Err(e) => assert!(
                    tokio::time::Instant::now() < deadline,
                    "the peer never accepted the renewed roles: {e}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        eventually(
            20,
            "the user written under the renewed credential reached node 0",
            || has_user(&mesh, 0, "after"),
        )
        .await;
    })
    .await;
}
