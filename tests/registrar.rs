//! The registrar over real UDP and TCP sockets against a 3-node mesh (issue "SIP edge").

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use sipmesh::sip::message::HeaderName;
use sipmesh::LocalMesh;

async fn mesh_with_users(users: &[(&str, &str)]) -> LocalMesh {
    let mesh = LocalMesh::builder().nodes(3).start().await.unwrap();
    mesh.wait_converged(Duration::from_secs(30)).await.unwrap();
    for (u, p) in users {
        let (u, p) = (u.to_string(), p.to_string());
        mesh.node(0)
            .run(move |n| async move { n.add_user(&u, &p).await })
            .await
            .unwrap()
            .unwrap();
    }
    mesh
}

fn sip(mesh: &LocalMesh, i: usize) -> std::net::SocketAddr {
    mesh.node(i).node().unwrap().sip_addr()
}

fn http(mesh: &LocalMesh, i: usize) -> String {
    format!(
        "http://{}",
        mesh.node(i).node().unwrap().http_addr().unwrap()
    )
}

async fn bindings(mesh: &LocalMesh, i: usize, user: &str) -> Vec<serde_json::Value> {
    let (code, v) = http_get(format!("{}/v1/registrations/{user}", http(mesh, i))).await;
    assert_eq!(code, 200, "{v}");
    v["bindings"].as_array().cloned().unwrap_or_default()
}

fn contact_expires(m: &sipmesh::sip::Message) -> Vec<u32> {
    m.values(&HeaderName::Contact)
        .iter()
        .filter_map(|c| c.rsplit("expires=").next().and_then(|e| e.parse().ok()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_refresh_unregister_over_udp_and_tcp() {
    within(120, async {
        let mesh = mesh_with_users(&[("alice", "pa55"), ("bob", "b0b")]).await;
        let server = sip(&mesh, 0);
        for (user, pw, mut c) in [
            ("alice", "pa55", Client::udp(server).await),
            ("bob", "b0b", Client::tcp(server).await),
        ] {
            let contact = format!(
                "<sip:{user}@{};transport={}>",
                c.local(),
                c.transport().to_lowercase()
            );
            let mut reg = Register::new(user, &contact);
            let ok = register(&mut c, server, &mut reg, pw).await;
            assert_eq!(ok.status(), Some(200), "{user} over {}", c.transport());
            assert_eq!(contact_expires(&ok), vec![3600]);
            // The binding is visible through another node.
            let b = bindings(&mesh, 2, user).await;
            assert_eq!(b.len(), 1);
            // The receiving node owns it, and says so in its status.
            let http0 = http(&mesh, 0);
            eventually(10, "the owner counts the binding", || {
                let url = format!("{http0}/v1/status");
                async move { http_get(url).await.1["registrations"].as_u64() == Some(1) }
            })
            .await;
            assert_eq!(b[0]["transport"], c.transport());
            // Refresh with a shorter interval (same Call-ID, higher CSeq, fresh nonce count).
            reg.cseq += 1;
            reg.expires = Some(120);
            let first = c.request(&reg.build(&c, server)).await.unwrap();
            let refreshed = if first.status() == Some(401) {
                let mut r2 = Register {
                    authorization: None,
                    ..Register::new(user, &contact)
                };
                r2.call_id = reg.call_id.clone();
                r2.cseq = reg.cseq + 1;
                r2.expires = Some(120);
                register(&mut c, server, &mut r2, pw).await
            } else {
                first
            };
            assert_eq!(refreshed.status(), Some(200));
            let e = contact_expires(&refreshed);
            assert!(e.len() == 1 && (118..=120).contains(&e[0]), "{e:?}");
            // Unregister.
            let mut un = Register::new(user, "*");
            un.expires = Some(0);
            let gone = register(&mut c, server, &mut un, pw).await;
            assert_eq!(gone.status(), Some(200));
            assert!(gone.values(&HeaderName::Contact).is_empty());
            assert!(bindings(&mesh, 1, user).await.is_empty());
        }
        // A double-CRLF keepalive on TCP is answered with one CRLF.
        let mut c = Client::tcp(server).await;
        c.send(b"\r\n\r\n").await;
        assert_eq!(c.recv_raw(3000).await.as_deref(), Some(&b"\r\n"[..]));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_stores_nothing_and_ends_in_403() {
    within(120, async {
        let mesh = mesh_with_users(&[("carol", "right")]).await;
        let server = sip(&mesh, 1);
        let mut c = Client::udp(server).await;
        let mut reg = Register::new("carol", &format!("<sip:carol@{}>", c.local()));
        let mut codes = Vec::new();
        for _ in 0..4 {
            let ch = c.request(&reg.build(&c, server)).await.unwrap();
            if ch.status() != Some(401) {
                codes.push(ch.status().unwrap());
                break;
            }
            reg.cseq += 1;
            reg.authorization = Some(digest(
                &ch,
                &HeaderName::Other("www-authenticate".into()),
                "carol",
                "wrong",
                "REGISTER",
                &format!("sip:{server}"),
                1,
            ));
            let r = c.request(&reg.build(&c, server)).await.unwrap();
            codes.push(r.status().unwrap());
            reg.authorization = None;
            reg.cseq += 1;
            if r.status() == Some(403) {
                break;
            }
        }
        assert_eq!(codes.last(), Some(&403), "codes: {codes:?}");
        assert!(
            codes[..codes.len() - 1].iter().all(|c| *c == 401),
            "codes: {codes:?}"
        );
        assert!(bindings(&mesh, 0, "carol").await.is_empty());
        // An unknown user gets challenged, and nothing is stored either.
        let mut ghost = Register::new("ghost", &format!("<sip:ghost@{}>", c.local()));
        let r = register(&mut c, server, &mut ghost, "x").await;
        assert_eq!(r.status(), Some(401));
        assert!(bindings(&mesh, 2, "ghost").await.is_empty());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_nonce_count_is_rejected() {
    within(120, async {
        let mesh = mesh_with_users(&[("dave", "pw")]).await;
        let server = sip(&mesh, 0);
        let mut c = Client::udp(server).await;
        let mut reg = Register::new("dave", &format!("<sip:dave@{}>", c.local()));
        let ch = c.request(&reg.build(&c, server)).await.unwrap();
        assert_eq!(ch.status(), Some(401));
        reg.cseq += 1;
        reg.authorization = Some(digest(
            &ch,
            &HeaderName::Other("www-authenticate".into()),
            "dave",
            "pw",
            "REGISTER",
            &format!("sip:{server}"),
            1,
        ));
        let ok = c.request(&reg.build(&c, server)).await.unwrap();
        assert_eq!(ok.status(), Some(200));
        // The same credentials again (a new transaction, same nonce and nc): refused.
        reg.cseq += 1;
        reg.expires = Some(0);
        let replay = c.request(&reg.build(&c, server)).await.unwrap();
        assert_eq!(
            replay.status(),
            Some(401),
            "a replayed nonce count was accepted"
        );
        assert_eq!(
            bindings(&mesh, 2, "dave").await.len(),
            1,
            "the replay changed a binding"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrar_rules_423_star_outbound_path_and_admin_api() {
    within(120, async {
        let mesh = mesh_with_users(&[("erin", "pw")]).await;
        let server = sip(&mesh, 2);
        let mut c = Client::udp(server).await;
        // Too brief.
        let mut short = Register::new("erin", &format!("<sip:erin@{}>", c.local()));
        short.expires = Some(10);
        let r = register(&mut c, server, &mut short, "pw").await;
        assert_eq!(r.status(), Some(423));
        assert_eq!(r.header(&HeaderName::Other("min-expires".into())), Some("60"));
        // Two flows of one instance (Outbound), with Path.
        for reg_id in [1, 2] {
            let mut reg = Register::new(
                "erin",
                &format!("<sip:erin@{};ob>;+sip.instance=\"<urn:uuid:00000000-0000-0000-0000-00000000e1e1>\";reg-id={reg_id}", c.local()),
            );
            reg.extra = "Supported: outbound, path\r\nPath: <sip:edge.example;lr>\r\n".into();
            let r = register(&mut c, server, &mut reg, "pw").await;
            assert_eq!(r.status(), Some(200));
            assert_eq!(r.header(&HeaderName::Require), Some("outbound"));
            assert_eq!(r.values(&HeaderName::Path), vec!["<sip:edge.example;lr>"]);
        }
        let b = bindings(&mesh, 0, "erin").await;
        assert_eq!(b.len(), 2, "{b:?}");
        assert!(b.iter().all(|x| x["instance"] == "<urn:uuid:00000000-0000-0000-0000-00000000e1e1>"));
        // Contact: * removes them all.
        let mut star = Register::new("erin", "*");
        star.expires = Some(0);
        assert_eq!(register(&mut c, server, &mut star, "pw").await.status(), Some(200));
        assert!(bindings(&mesh, 1, "erin").await.is_empty());
        // Contact: * without Expires: 0 is a 400.
        let mut bad = Register::new("erin", "*");
        bad.expires = Some(60);
        assert_eq!(c.request(&bad.build(&c, server)).await.unwrap().status(), Some(400));
        // The admin API: users are replicated and readable anywhere; HA1s never leave.
        let (code, _) = http_post(format!("{}/v1/users", http(&mesh, 1)), mesh.node(1).node().unwrap().admin_token().unwrap(), json!({"user": "frank", "password": "x"})).await;
        assert_eq!(code, 201);
        let (code, v) = http_get(format!("{}/v1/users/frank", http(&mesh, 2))).await;
        assert_eq!(code, 200);
        assert_eq!(v["user"], "frank");
        assert!(v.get("ha1_md5").is_none() && !v.to_string().contains("ha1"));
        assert_eq!(http_get(format!("{}/v1/users/nobody", http(&mesh, 0))).await.0, 404);
        let (code, v) = http_post(format!("{}/v1/users", http(&mesh, 0)), mesh.node(0).node().unwrap().admin_token().unwrap(), json!({"user": "bad name", "password": "x"})).await;
        assert_eq!(code, 400, "{v}");
        let (_, list) = http_get(format!("{}/v1/users", http(&mesh, 0))).await;
        let mut names: Vec<&str> = list["users"].as_array().unwrap().iter().filter_map(|u| u.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, vec!["erin", "frank"]);
        assert!(list["next"].is_null(), "{list}");
        let (code, st) = http_get(format!("{}/v1/status", http(&mesh, 0))).await;
        assert_eq!(code, 200);
        assert_eq!(st["members_up"], 3);
        assert!(st["peer_id"].as_str().unwrap().starts_with("12D3"));
    })
    .await;
}

/// A challenge to a REGISTER without credentials is sent statelessly (RFC 3261 §8.2.7): no
/// transaction is left behind (a flood of unauthenticated requests holds no state for 32 s),
/// yet a retransmission gets the same challenge (same nonce, same To-tag), which works. An
/// authenticated REGISTER's transaction still absorbs retransmissions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn challenges_are_stateless_and_leave_no_transaction_behind() {
    within(120, async {
        let mesh = mesh_with_users(&[("erin", "pw")]).await;
        let server = sip(&mesh, 0);
        let admin = mesh.node(0).node().unwrap().http_addr().unwrap();
        let transactions = || async {
            metrics_text(admin)
                .await
                .lines()
                .find_map(|l| l.strip_prefix("sipmesh_transactions "))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        let mut c = Client::udp(server).await;
        let mut reg = Register::new("erin", &format!("<sip:erin@{}>", c.local()));
        let first = reg.build(&c, server);
        let ch = c.request(&first).await.expect("a challenge");
        assert_eq!(ch.status(), Some(401));
        eventually(5, "no transaction is held for the challenge", || async {
            transactions().await == Some(0)
        })
        .await;
        // The same bytes again (a retransmission, same branch): the same challenge, although
        // no transaction kept it.
        let again = c.request(&first).await.expect("a second challenge");
        assert_eq!(again.status(), Some(401));
        let nonce = |m: &sipmesh::sip::Message| {
            hvals(m, &HeaderName::Other("www-authenticate".into())).join(",")
        };
        assert_eq!(
            nonce(&ch),
            nonce(&again),
            "a retransmission got another nonce"
        );
        assert_eq!(
            hvals(&ch, &HeaderName::To),
            hvals(&again, &HeaderName::To),
            "a retransmission got another To-tag"
        );
        assert_eq!(transactions().await, Some(0));
        // Another request (a new branch) gets another nonce.
        let other = c.request(&reg.build(&c, server)).await.unwrap();
        assert_ne!(nonce(&ch), nonce(&other));
        reg.cseq += 1;
        reg.authorization = Some(digest(
            &again,
            &HeaderName::Other("www-authenticate".into()),
            "erin",
            "pw",
            "REGISTER",
            &format!("sip:{server}"),
            1,
        ));
        let authed = reg.build(&c, server);
        let ok = c.request(&authed).await.unwrap();
        assert_eq!(ok.status(), Some(200));
        // Its transaction lingers, and a retransmission gets the same 200 (not a replay 401).
        assert!(transactions().await.unwrap_or(0) >= 1);
        let same = c.request(&authed).await.unwrap();
        assert_eq!(
            same.status(),
            Some(200),
            "a retransmission was processed again"
        );
    })
    .await;
}
