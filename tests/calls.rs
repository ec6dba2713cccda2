//! Calls across the mesh with phones on real UDP sockets: authentication, routing through the
//! callee's owner node over libp2p, Record-Route for in-dialog requests from either side, dialog
//! state in the keyspace, CANCEL, forking, and the error answers (issue "Calls across the mesh").

mod common;

use common::*;
use sipmesh::sip::message::HeaderName;
use sipmesh::sip::request::ack_for;
use sipmesh::LocalMesh;

const LONG: u64 = 5000;

async fn mesh() -> LocalMesh {
    mesh_with_users(3, PHONES, |_| {}).await
}

fn sip(mesh: &LocalMesh, i: usize) -> std::net::SocketAddr {
    mesh.node(i).node().unwrap().sip_addr()
}

async fn dialogs(mesh: &LocalMesh, i: usize) -> Vec<serde_json::Value> {
    let http = mesh.node(i).node().unwrap().http_addr().unwrap();
    let (code, v) = http_get(format!("http://{http}/v1/dialogs")).await;
    assert_eq!(code, 200);
    v["dialogs"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_across_the_mesh_with_reinvite_and_bye_from_the_callee() {
    within(120, async {
        let mesh = mesh().await;
        let mut alice = Ua::new("alice", sip(&mesh, 0)).await;
        let mut bob = Ua::new("bob", sip(&mesh, 2)).await;
        assert_eq!(alice.register("a-pw").await, 200);
        assert_eq!(bob.register("b-pw").await, 200);
        let call_id = format!("{}@alice", token());
        invite_with_auth(&mut alice, "bob", "a-pw", &call_id, "atag").await;
        // Bob (registered at node 2) gets the INVITE, through both nodes.
        let inv = bob
            .wait_request("INVITE", LONG)
            .await
            .expect("bob gets the INVITE");
        let rr = hvals(&inv, &HeaderName::RecordRoute);
        assert_eq!(rr.len(), 2, "both nodes record-route: {rr:?}");
        assert!(
            inv.header(&HeaderName::ProxyAuthorization).is_none(),
            "alice's credentials are not passed on to bob"
        );
        assert_eq!(inv.request_uri(), Some(bob.contact().as_str()));
        bob.send(&bob.answer(&inv, 180, "Ringing", "btag")).await;
        assert!(
            alice.wait_response(180, "INVITE", LONG).await.is_some(),
            "alice hears ringing"
        );
        bob.send(&bob.answer(&inv, 200, "OK", "btag")).await;
        let ok = alice
            .wait_response(200, "INVITE", LONG)
            .await
            .expect("alice gets the 200");
        // RFC 3261 §12.1: the caller's route set is the Record-Route reversed, the callee's as is.
        let route_set: Vec<String> = hvals(&ok, &HeaderName::RecordRoute)
            .into_iter()
            .rev()
            .collect();
        let to = ok.header(&HeaderName::To).unwrap().to_string();
        let from = ok.header(&HeaderName::From).unwrap().to_string();
        let bob_target = uri_of(&hvals(&ok, &HeaderName::Contact)[0]);
        // ACK for the 2xx, end to end along the route set.
        alice
            .send(&alice.in_dialog("ACK", &bob_target, &route_set, &from, &to, &call_id, 2))
            .await;
        assert!(
            bob.wait_request("ACK", LONG).await.is_some(),
            "the ACK reaches bob"
        );
        // The dialog is in the keyspace, visible from any node.
        eventually(10, "the dialog is stored", || async {
            dialogs(&mesh, 1).await.len() == 1
        })
        .await;
        let d = &dialogs(&mesh, 1).await[0];
        assert_eq!(d["call_id"], call_id.as_str());
        assert_eq!(d["nodes"].as_array().unwrap().len(), 2);
        // Bob (callee side) re-INVITEs along the reversed route set.
        let bob_routes = rr.clone();
        let alice_target = alice.contact();
        bob.send(&bob.in_dialog(
            "INVITE",
            &alice_target,
            &bob_routes,
            &to,
            &from,
            &call_id,
            1,
        ))
        .await;
        let reinv = alice
            .wait_request("INVITE", LONG)
            .await
            .expect("alice gets the re-INVITE");
        assert!(reinv.header(&HeaderName::To).unwrap().contains("atag"));
        alice.send(&alice.answer(&reinv, 200, "OK", "atag")).await;
        assert!(
            bob.wait_response(200, "INVITE", LONG).await.is_some(),
            "bob gets the re-INVITE's 200"
        );
        bob.send(&bob.in_dialog("ACK", &alice_target, &bob_routes, &to, &from, &call_id, 1))
            .await;
        assert!(alice.wait_request("ACK", LONG).await.is_some());
        // Bob hangs up.
        bob.send(&bob.in_dialog("BYE", &alice_target, &bob_routes, &to, &from, &call_id, 2))
            .await;
        let bye = alice
            .wait_request("BYE", LONG)
            .await
            .expect("alice gets the BYE");
        alice.send(&alice.answer(&bye, 200, "OK", "atag")).await;
        assert!(
            bob.wait_response(200, "BYE", LONG).await.is_some(),
            "bob gets the BYE's 200"
        );
        eventually(10, "the dialog is removed", || async {
            dialogs(&mesh, 2).await.is_empty()
        })
        .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_before_answer_and_forking() {
    within(120, async {
        let mesh = mesh().await;
        let mut alice = Ua::new("alice", sip(&mesh, 1)).await;
        let mut bob = Ua::new("bob", sip(&mesh, 0)).await;
        assert_eq!(bob.register("b-pw").await, 200);
        // CANCEL before answer.
        let call_id = format!("{}@alice", token());
        let sent = invite_with_auth(&mut alice, "bob", "a-pw", &call_id, "t1").await;
        let inv = bob.wait_request("INVITE", LONG).await.expect("bob rings");
        bob.send(&bob.answer(&inv, 180, "Ringing", "bt")).await;
        assert!(alice.wait_response(180, "INVITE", LONG).await.is_some());
        let cancel = String::from_utf8(sent.raw.to_vec())
            .unwrap()
            .replacen("INVITE sip:", "CANCEL sip:", 1)
            .replace("CSeq: 2 INVITE", "CSeq: 2 CANCEL")
            .replace(
                "Content-Type: application/sdp\r\nContent-Length: 4\r\n\r\nv=0\n",
                "Content-Length: 0\r\n\r\n",
            );
        alice.send(&cancel).await;
        let c = bob
            .wait_request("CANCEL", LONG)
            .await
            .expect("bob gets the CANCEL");
        bob.send(&bob.answer(&c, 200, "OK", "bt")).await;
        bob.send(&bob.answer(&inv, 487, "Request Terminated", "bt"))
            .await;
        assert!(
            alice.wait_response(200, "CANCEL", LONG).await.is_some(),
            "the CANCEL is answered"
        );
        let term = alice
            .wait_response(487, "INVITE", LONG)
            .await
            .expect("alice gets 487");
        alice.c.send(&ack_for(&sent, &term)).await;
        // Forking: bob on two phones; one answers, the other is cancelled.
        let mut bob2 = Ua::new("bob", sip(&mesh, 2)).await;
        assert_eq!(bob2.register("b-pw").await, 200);
        let call_id = format!("{}@alice", token());
        invite_with_auth(&mut alice, "bob", "a-pw", &call_id, "t2").await;
        let i1 = bob
            .wait_request("INVITE", LONG)
            .await
            .expect("phone 1 rings");
        let i2 = bob2
            .wait_request("INVITE", LONG)
            .await
            .expect("phone 2 rings");
        bob.send(&bob.answer(&i1, 180, "Ringing", "p1")).await;
        bob2.send(&bob2.answer(&i2, 180, "Ringing", "p2")).await;
        bob2.send(&bob2.answer(&i2, 200, "OK", "p2")).await;
        let ok = alice
            .wait_response(200, "INVITE", LONG)
            .await
            .expect("alice gets phone 2's 200");
        assert!(ok.header(&HeaderName::To).unwrap().contains("p2"));
        let c1 = bob
            .wait_request("CANCEL", LONG)
            .await
            .expect("phone 1 is cancelled");
        bob.send(&bob.answer(&c1, 200, "OK", "p1")).await;
        bob.send(&bob.answer(&i1, 487, "Request Terminated", "p1"))
            .await;
        // Alice never sees phone 1's 487: one final response per INVITE.
        assert!(alice.wait_response(487, "INVITE", 1500).await.is_none());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_user_unavailable_and_auth_failures() {
    within(120, async {
        let mesh = mesh().await;
        let mut alice = Ua::new("alice", sip(&mesh, 0)).await;
        // Unknown callee: 404 (after authentication).
        let sent =
            invite_with_auth(&mut alice, "nobody", "a-pw", &format!("{}@a", token()), "x").await;
        let r = alice.wait_final("INVITE", LONG).await.unwrap();
        assert_eq!(r.status(), Some(404));
        alice.c.send(&ack_for(&sent, &r)).await;
        // A known user with no binding: 480.
        let sent =
            invite_with_auth(&mut alice, "carol", "a-pw", &format!("{}@a", token()), "y").await;
        let r = alice.wait_final("INVITE", LONG).await.unwrap();
        assert_eq!(r.status(), Some(480));
        alice.c.send(&ack_for(&sent, &r)).await;
        // Wrong caller password: 407, then 403.
        let call_id = format!("{}@a", token());
        let first = alice.invite("bob", &call_id, "z", 1, None);
        alice.send(&first).await;
        let ch = alice.wait_final("INVITE", LONG).await.unwrap();
        assert_eq!(ch.status(), Some(407));
        let uri = format!("sip:bob@{}", sip(&mesh, 0));
        let bad = digest(
            &ch,
            &HeaderName::Other("proxy-authenticate".into()),
            "alice",
            "wrong",
            "INVITE",
            &uri,
            1,
        );
        alice
            .send(&alice.invite("bob", &call_id, "z", 2, Some(&bad)))
            .await;
        assert_eq!(
            alice.wait_final("INVITE", LONG).await.unwrap().status(),
            Some(403)
        );
        // A caller not registered anywhere, without credentials: 407.
        let mut stranger = Ua::new("mallory", sip(&mesh, 1)).await;
        stranger
            .send(&stranger.invite("bob", &format!("{}@m", token()), "m", 1, None))
            .await;
        assert_eq!(
            stranger.wait_final("INVITE", LONG).await.unwrap().status(),
            Some(407)
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binding_that_loops_back_is_482() {
    within(60, async {
        let mesh = mesh().await;
        let server = sip(&mesh, 0);
        // carol's contact is the node itself: every forward comes back.
        let mut carol = Ua::new("carol", server).await;
        let mut reg = Register::new("carol", &format!("<sip:carol@{server}>"));
        assert_eq!(
            register(&mut carol.c, server, &mut reg, "c-pw")
                .await
                .status(),
            Some(200)
        );
        let mut alice = Ua::new("alice", server).await;
        let sent =
            invite_with_auth(&mut alice, "carol", "a-pw", &format!("{}@a", token()), "l").await;
        let r = alice.wait_final("INVITE", LONG).await.expect("an answer");
        assert!(matches!(r.status(), Some(482) | Some(483)), "{:?}", r.start);
        alice.c.send(&ack_for(&sent, &r)).await;
    })
    .await;
}

/// A node that joins is Up at once, but its replicas are empty until it has streamed their
/// data (and a returning node's are stale): until then it reads a quorum instead of its own
/// replica. A call entering the new node right after it joined reaches a callee registered
/// before it existed (with the old local-replica read: 480).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_member_reads_a_quorum_until_it_has_caught_up() {
    within(120, async {
        let users: Vec<(String, String)> = (0..12)
            .map(|i| (format!("u{i}"), format!("p{i}")))
            .collect();
        let mut mesh = LocalMesh::builder()
            .nodes(3)
            // No anti-entropy round during the test: the new node stays behind.
            .anti_entropy_interval(std::time::Duration::from_secs(3600))
            .start()
            .await
            .unwrap();
        mesh.wait_converged(std::time::Duration::from_secs(30))
            .await
            .unwrap();
        for (u, p) in users
            .iter()
            .cloned()
            .chain([("alice".into(), "a-pw".into())])
        {
            mesh.node(0)
                .run(move |n| async move { n.add_user(&u, &p).await })
                .await
                .unwrap()
                .unwrap();
        }
        let mut phones = Vec::new();
        for (u, p) in &users {
            let mut ua = Ua::new(u, sip(&mesh, 0)).await;
            assert_eq!(ua.register(p).await, 200);
            phones.push(ua);
        }
        let new = mesh.add_node().await.unwrap();
        mesh.wait_converged(std::time::Duration::from_secs(30))
            .await
            .unwrap();
        let node = mesh.node(new).node().unwrap();
        assert!(node.mesh.catching_up(), "a new node is catching up");
        // A callee whose bindings the new node will replicate (but does not hold yet).
        let snap = node.mesh.snapshot();
        let i = users
            .iter()
            .position(|(u, _)| snap.is_local_owner(u.as_bytes()))
            .expect("the new node replicates some of the users");
        let callee = &users[i].0;
        let mut alice = Ua::new("alice", sip(&mesh, new)).await;
        assert_eq!(alice.register("a-pw").await, 200);
        let call_id = format!("{}@alice", token());
        invite_with_auth(&mut alice, callee, "a-pw", &call_id, "atag").await;
        let ring = phones[i].wait_request("INVITE", LONG).await;
        assert!(ring.is_some(), "{callee} rings through the new node");
    })
    .await;
}

/// Issue "Grow to thousands of community nodes", item 3: the caller's node cannot reach the
/// callee's (a cut between the two, both ways), yet the call goes through — each finds it
/// reaches the other only through the third node (a ping sent with the traffic goes
/// unanswered, or SWIM's probe does), and SIP goes through it, both ways, for the INVITE, its
/// answers and the in-dialog requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_crosses_a_cut_between_the_caller_s_and_the_callee_s_nodes() {
    const CALLS: usize = 5;
    within(180, async {
        let mesh = mesh().await;
        let mut alice = Ua::new("alice", sip(&mesh, 0)).await;
        let mut bob = Ua::new("bob", sip(&mesh, 2)).await;
        assert_eq!(alice.register("a-pw").await, 200);
        assert_eq!(bob.register("b-pw").await, 200);
        let mut direct = Vec::new();
        for i in 0..CALLS {
            direct.push(call_and_hang_up(&mut alice, "a-pw", &mut bob, &format!("d{i}")).await);
        }
        let (n0, n1, n2) = (
            mesh.node(0).node().unwrap(),
            mesh.node(1).node().unwrap(),
            mesh.node(2).node().unwrap(),
        );
        assert_eq!(n0.counter("sip_routed_around"), Some(0));
        mesh.partition(&[0], &[2]).await.unwrap();
        // A call right away: its first INVITE is lost in the cut, and a retransmission finds
        // the way round (the ping sent with traffic, or SWIM's probes, found the cut).
        call_and_hang_up(&mut alice, "a-pw", &mut bob, "cut").await;
        let (p0, p2) = (mesh.node(0).peer_id, mesh.node(2).peer_id);
        assert!(
            !n0.mesh.reached_directly(&p2) && !n2.mesh.reached_directly(&p0),
            "each side reaches the other only through node 1"
        );
        assert!(n0.mesh.is_up(&p2) && n2.mesh.is_up(&p0), "a cut is not a death");
        let mut routed = Vec::new();
        for i in 0..CALLS {
            routed.push(call_and_hang_up(&mut alice, "a-pw", &mut bob, &format!("r{i}")).await);
        }
        direct.sort();
        routed.sort();
        let (direct, routed) = (direct[CALLS / 2], routed[CALLS / 2]);
        let around = |n: &sipmesh::Node| n.counter("sip_routed_around").unwrap();
        let calls = CALLS as u64;
        assert!(around(&n0) >= 2 * calls, "node 0 sent the INVITE and the ACK, BYE around");
        assert!(around(&n2) >= 2 * calls, "node 2 sent the answers around");
        assert!(
            n1.counter("sip_passed_on").unwrap() >= 4 * calls,
            "node 1 passed them on"
        );
        assert_eq!(around(&n1), 0);
        eprintln!(
            "call setup (INVITE to 200, digest included) from node 0 to a callee at node 2, median of {CALLS}: direct {direct:?}, through node 1 {routed:?}"
        );
    })
    .await;
}

/// Percent-encode a query value or path segment.
fn pct(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Admin listings of dialogs come in pages by id (each member sends at most a page), and a
/// dialog is found by id through a node that holds only its stored record: three calls
/// stored after 100 ms, listed one a page through node 1 (not on their path), and one ended
/// through node 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialogs_are_listed_in_pages_and_ended_through_a_node_holding_only_the_record() {
    within(120, async {
        let mesh = mesh_with_users(3, PHONES, |c| {
            c.dialog_write_after = std::time::Duration::from_millis(100)
        })
        .await;
        let mut alice = Ua::new("alice", sip(&mesh, 0)).await;
        let mut bob = Ua::new("bob", sip(&mesh, 2)).await;
        assert_eq!(alice.register("a-pw").await, 200);
        assert_eq!(bob.register("b-pw").await, 200);
        let mut calls = Vec::new();
        for tag in ["t1", "t2", "t3"] {
            calls.push(
                answered_call(&mut alice, "a-pw", &mut bob, tag)
                    .await
                    .call_id,
            );
        }
        let http = mesh.node(1).node().unwrap().http_addr().unwrap();
        let pages = || async {
            let (mut ids, mut after, mut nexts) = (Vec::new(), None::<String>, 0);
            loop {
                let mut url = format!("http://{http}/v1/dialogs?limit=1");
                if let Some(a) = &after {
                    url.push_str(&format!("&after={}", pct(a)));
                }
                let (code, v) = http_get(url).await;
                assert_eq!(code, 200, "{v}");
                let list = v["dialogs"].as_array().unwrap().clone();
                assert!(list.len() <= 1, "{v}");
                for d in list {
                    ids.push((d["id"].as_str().unwrap().to_string(), d["stored"] == true));
                }
                match v["next"].as_str() {
                    Some(n) => {
                        nexts += 1;
                        after = Some(n.to_string())
                    }
                    None => break,
                }
                assert!(nexts <= 10, "{nexts} pages");
            }
            ids
        };
        eventually(20, "three stored dialogs, one a page, by id", || async {
            let ids = pages().await;
            let mut sorted = ids.clone();
            sorted.sort();
            ids.len() == 3 && ids == sorted && ids.iter().all(|(_, stored)| *stored)
        })
        .await;
        let ids = pages().await;
        for call_id in &calls {
            assert!(
                ids.iter().any(|(id, _)| id.starts_with(call_id.as_str())),
                "{ids:?}"
            );
        }
        // End the middle one through node 1: found from its stored record there.
        let id = &ids[1].0;
        let url = format!("http://{http}/v1/dialogs/{}", pct(id));
        let token = mesh
            .node(1)
            .node()
            .unwrap()
            .admin_token()
            .unwrap()
            .to_string();
        let (code, v) = http_call("DELETE", url, Some(token), None, vec![]).await;
        assert_eq!(code, 200, "{v}");
        for ua in [&mut alice, &mut bob] {
            assert!(
                ua.wait_request("BYE", LONG).await.is_some(),
                "a BYE for each party"
            );
        }
        eventually(10, "two dialogs left", || async {
            pages().await.len() == 2
        })
        .await;
    })
    .await;
}
