//! Failover (issue "Proxy assignment, standby flows and failover"): standby flows (RFC 5626),
//! calls that outlive a node on their path, force-close by the custodian, 302 assignment at
//! capacity, and a graceful leave that loses no binding — with LocalMesh and real processes.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use sipmesh::sip::message::{HeaderName, Message};
use sipmesh::sip::request::ack_for;
use sipmesh::{Consistency, LocalMesh};
use sipmesh_net::MemberState;

const LONG: u64 = 5000;
/// The admin token of the real processes.
const ADMIN_TOKEN: &str = "failover-test-token-0123456789";

async fn mesh_with(
    nodes: usize,
    f: impl Fn(&mut sipmesh::NodeConfig) + Send + Sync + 'static,
) -> LocalMesh {
    mesh_with_users(nodes, PHONES, f).await
}

fn sip(mesh: &LocalMesh, i: usize) -> std::net::SocketAddr {
    mesh.node(i).node().unwrap().sip_addr()
}

/// Register `ua` as one Outbound flow (instance + reg-id) of bob.
async fn register_flow(ua: &mut Ua, reg_id: u32) -> Message {
    let contact = format!(
        "<{};ob>;+sip.instance=\"<urn:uuid:00000000-0000-0000-0000-0000000b0b00>\";reg-id={reg_id}",
        ua.contact()
    );
    let mut reg = Register::new("bob", &contact);
    reg.extra = "Supported: outbound\r\n".into();
    let server = ua.server;
    register(&mut ua.c, server, &mut reg, "b-pw").await
}

/// An established call from `alice` to the callee UA that rings; returns the 200 seen by alice
/// and the INVITE seen by the callee.
async fn establish(alice: &mut Ua, callee: &mut Ua, call_id: &str) -> (Message, Message) {
    invite_with_auth(alice, "bob", "a-pw", call_id, "atag").await;
    let inv = callee
        .wait_request("INVITE", LONG)
        .await
        .expect("the callee rings");
    callee.respond(&inv, 200, "OK", "btag").await;
    let ok = alice
        .wait_response(200, "INVITE", LONG)
        .await
        .expect("alice gets the 200");
    let routes: Vec<String> = hvals(&ok, &HeaderName::RecordRoute)
        .into_iter()
        .rev()
        .collect();
    let target = uri_of(&hvals(&ok, &HeaderName::Contact)[0]);
    let (from, to) = (
        ok.header(&HeaderName::From).unwrap().to_string(),
        ok.header(&HeaderName::To).unwrap().to_string(),
    );
    alice
        .send(&alice.in_dialog("ACK", &target, &routes, &from, &to, call_id, 2))
        .await;
    assert!(
        callee.wait_request("ACK", LONG).await.is_some(),
        "the ACK reaches the callee"
    );
    (ok, inv)
}

async fn dialogs(mesh: &LocalMesh, i: usize) -> usize {
    let http = mesh.node(i).node().unwrap().http_addr().unwrap();
    let (_, v) = http_get(format!("http://{http}/v1/dialogs")).await;
    v["dialogs"]
        .as_array()
        .map(|d| d.len())
        .unwrap_or(usize::MAX)
}

async fn stored_dialogs(mesh: &LocalMesh, i: usize) -> usize {
    let http = mesh.node(i).node().unwrap().http_addr().unwrap();
    let (_, v) = http_get(format!("http://{http}/v1/dialogs")).await;
    v["dialogs"]
        .as_array()
        .map(|d| d.iter().filter(|d| d["stored"] == true).count())
        .unwrap_or(usize::MAX)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_flow_takes_the_next_call_after_a_node_dies() {
    within(180, async {
        let mesh = mesh_with(3, |_| {}).await;
        let mut alice = Ua::new("alice", sip(&mesh, 0)).await;
        let mut flow1 = Ua::new("bob", sip(&mesh, 1)).await;
        let mut flow2 = Ua::new("bob", sip(&mesh, 2)).await;
        for (ua, id) in [(&mut flow1, 1), (&mut flow2, 2)] {
            let ok = register_flow(ua, id).await;
            assert_eq!(ok.status(), Some(200));
            assert_eq!(ok.header(&HeaderName::Require), Some("outbound"));
            assert!(
                ok.header(&HeaderName::Other("flow-timer".into())).is_some(),
                "Flow-Timer missing"
            );
        }
        // One call rings one flow only: the phone must not ring twice.
        let call = format!("{}@a", token());
        let sent = invite_with_auth(&mut alice, "bob", "a-pw", &call, "t1").await;
        let inv = flow1
            .wait_request("INVITE", LONG)
            .await
            .expect("flow 1 (lowest reg-id) rings");
        assert!(
            flow2.wait_request("INVITE", 1000).await.is_none(),
            "the phone rang twice"
        );
        flow1.respond(&inv, 486, "Busy Here", "b1").await;
        let busy = alice.wait_final("INVITE", LONG).await.unwrap();
        assert_eq!(busy.status(), Some(486));
        alice.c.send(&ack_for(&sent, &busy)).await;
        // Node 1 dies: within 5 s nobody routes to its flows; the next call takes flow 2.
        let killed = Instant::now();
        let dead = mesh.node(1).peer_id;
        mesh.kill(1);
        mesh.wait_state(dead, MemberState::Down, Duration::from_secs(5))
            .await
            .expect("node 1 down within 5 s");
        let call = format!("{}@a", token());
        invite_with_auth(&mut alice, "bob", "a-pw", &call, "t2").await;
        let inv = flow2
            .wait_request("INVITE", LONG)
            .await
            .expect("flow 2 rings after node 1 died");
        flow2.respond(&inv, 200, "OK", "b2").await;
        assert!(alice.wait_response(200, "INVITE", LONG).await.is_some());
        eprintln!(
            "failover: first call through the standby flow answered {:?} after the kill",
            killed.elapsed()
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_outlives_a_dead_node_on_its_path() {
    within(180, async {
        let mesh = mesh_with(3, |c| c.dialog_grace = Duration::from_secs(60)).await;
        // Alice is registered at node 0 but calls through node 1; bob is at node 2.
        let mut alice = Ua::new("alice", sip(&mesh, 0)).await;
        assert_eq!(alice.register("a-pw").await, 200);
        let mut bob = Ua::new("bob", sip(&mesh, 2)).await;
        assert_eq!(bob.register("b-pw").await, 200);
        alice.retarget(sip(&mesh, 1));
        let call = format!("{}@a", token());
        let (ok, inv) = establish(&mut alice, &mut bob, &call).await;
        eventually(10, "the dialog is stored", || async {
            dialogs(&mesh, 0).await == 1
        })
        .await;
        let dead = mesh.node(1).peer_id;
        mesh.kill(1);
        mesh.wait_state(dead, MemberState::Down, Duration::from_secs(5))
            .await
            .unwrap();
        // Bob hangs up: node 2 skips the dead node's hop.
        let bob_routes = hvals(&inv, &HeaderName::RecordRoute);
        let (from, to) = (
            ok.header(&HeaderName::From).unwrap().to_string(),
            ok.header(&HeaderName::To).unwrap().to_string(),
        );
        bob.send(&bob.in_dialog("BYE", &alice.contact(), &bob_routes, &to, &from, &call, 2))
            .await;
        let bye = alice
            .wait_request("BYE", LONG)
            .await
            .expect("alice gets the BYE");
        alice.respond(&bye, 200, "OK", "atag").await;
        assert!(
            bob.wait_response(200, "BYE", LONG).await.is_some(),
            "bob's BYE completes"
        );
        eventually(10, "the dialog disappears", || async {
            dialogs(&mesh, 0).await == 0
        })
        .await;
        // A second call; this time the caller hangs up, through another node (node 0).
        let call = format!("{}@a", token());

        alice.retarget(sip(&mesh, 0));
        let (ok, _) = establish(&mut alice, &mut bob, &call).await;
        let routes: Vec<String> = hvals(&ok, &HeaderName::RecordRoute)
            .into_iter()
            .rev()
            .collect();
        let target = uri_of(&hvals(&ok, &HeaderName::Contact)[0]);
        let (from, to) = (
            ok.header(&HeaderName::From).unwrap().to_string(),
            ok.header(&HeaderName::To).unwrap().to_string(),
        );
        alice
            .send(&alice.in_dialog("BYE", &target, &routes, &from, &to, &call, 3))
            .await;
        let bye = bob
            .wait_request("BYE", LONG)
            .await
            .expect("bob gets the BYE");
        bob.respond(&bye, 200, "OK", "btag").await;
        assert!(alice.wait_response(200, "BYE", LONG).await.is_some());
        eventually(10, "no dialog is left", || async {
            dialogs(&mesh, 2).await == 0
        })
        .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custodian_force_closes_calls_of_a_dead_node() {
    within(180, async {
        let grace = Duration::from_secs(2);
        let mesh = mesh_with(3, move |c| c.dialog_grace = grace).await;
        let mut alice = Ua::new("alice", sip(&mesh, 0)).await;
        assert_eq!(alice.register("a-pw").await, 200);
        let mut bob = Ua::new("bob", sip(&mesh, 2)).await;
        assert_eq!(bob.register("b-pw").await, 200);
        alice.retarget(sip(&mesh, 1));
        let call = format!("{}@a", token());
        establish(&mut alice, &mut bob, &call).await;
        // A call is stored once it has lasted a few seconds (shorter calls write nothing).
        eventually(15, "the dialog is stored", || async {
            stored_dialogs(&mesh, 0).await == 1
        })
        .await;
        let killed = Instant::now();
        mesh.kill(1);
        // Nobody hangs up: both parties get a BYE within grace + 5 s.
        let deadline = (grace + Duration::from_secs(5)).as_millis() as u64;
        let a = alice
            .wait_request("BYE", deadline)
            .await
            .expect("alice gets a force-close BYE");
        assert!(killed.elapsed() <= grace + Duration::from_secs(5));
        alice.respond(&a, 200, "OK", "atag").await;
        let left = deadline
            .saturating_sub(killed.elapsed().as_millis() as u64)
            .max(500);
        let b = bob
            .wait_request("BYE", left)
            .await
            .expect("bob gets a force-close BYE");
        bob.respond(&b, 200, "OK", "btag").await;
        assert_eq!(a.header(&HeaderName::CallId), Some(call.as_str()));
        eprintln!(
            "failover: force-close BYEs sent {:?} after the kill (grace {grace:?})",
            killed.elapsed()
        );
        eventually(10, "the dialog is removed", || async {
            dialogs(&mesh, 2).await == 0
        })
        .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assignment_redirects_new_clients_at_capacity() {
    within(120, async {
        let mesh = mesh_with(3, |c| c.capacity = 1).await;
        let server = sip(&mesh, 0);
        let mut alice = Ua::new("alice", server).await;
        assert_eq!(alice.register("a-pw").await, 200);
        // Node 0 is full: a new client is redirected to the others, least loaded first.
        let mut bob = Ua::new("bob", server).await;
        let contact = format!("<{}>", bob.contact());
        let mut reg = Register::new("bob", &contact);
        let r = register(&mut bob.c, server, &mut reg, "b-pw").await;
        assert_eq!(r.status(), Some(302));
        let targets: Vec<String> = r
            .values(&HeaderName::Contact)
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(targets.len(), 2, "{targets:?}");
        for i in [1, 2] {
            assert!(
                targets
                    .iter()
                    .any(|t| t.contains(&sip(&mesh, i).to_string())),
                "{targets:?}"
            );
        }
        assert!(targets.iter().all(|t| t.contains(";q=")));
        assert!(!targets.iter().any(|t| t.contains(&server.to_string())));
        // An existing client refreshing is never redirected.
        assert_eq!(alice.register("a-pw").await, 200);
        // /v1/bootstrap lists the least-loaded nodes (the full one is not among them).
        let http = mesh.node(1).node().unwrap().http_addr().unwrap();
        let (code, v) = http_get(format!("http://{http}/v1/bootstrap")).await;
        assert_eq!(code, 200);
        let nodes = v["nodes"].as_array().unwrap();
        eventually(10, "node 0's load is published", || async {
            let (_, v) = http_get(format!("http://{http}/v1/bootstrap")).await;
            let ids: Vec<String> = v["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n["peer_id"].as_str().unwrap().to_string())
                .collect();
            !ids.contains(&mesh.node(0).peer_id.to_string()) && ids.len() == 2
        })
        .await;
        assert!(!nodes.is_empty());
        assert!(nodes[0]["sip"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s.as_str().unwrap().ends_with("transport=udp")));
    })
    .await;
}

/// Real processes: a node holding 1,000 bindings stops in place on SIGTERM (a restart): it exits
/// within 10 s, the others see it down at once (well inside the 3 s failure detection) with its
/// ring place kept, and every binding stays readable at QUORUM. Restarted, it is back without
/// any data moving. Then it is decommissioned: it hands everything over, leaves the ring and
/// exits, and every binding is still readable through every remaining node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_in_place_and_decommission_leaves_losing_no_binding() {
    within(300, async {
        let dir = tempfile::tempdir().unwrap();
        let base = 15000 + (std::process::id() % 1000) as u16 * 10;
        let mut children = Vec::new();
        let mut seed = String::new();
        for i in 0..4u16 {
            let mut cmd = node_command(
                dir.path(),
                i,
                "127.0.0.1",
                (base + i, base + 100 + i, base + 200 + i),
                ADMIN_TOKEN,
            );
            cmd.args(["--trusted-source", "127.0.0.1"]);
            if i > 0 {
                cmd.args(["--bootstrap", &seed]);
            }
            children.push(cmd.spawn().unwrap());
            let url = format!("http://127.0.0.1:{}/v1/status", base + 200 + i);
            wait_answering(url.clone()).await;
            if i == 0 {
                seed = http_get(url).await.1["p2p"].as_str().unwrap().to_string();
            }
        }
        let http = |i: u16| format!("http://127.0.0.1:{}", base + 200 + i);
        eventually(30, "4 members up", || async {
            http_get(format!("{}/v1/status", http(0))).await.1["members_up"] == 4
        })
        .await;
        let csv: String = (0..1000).map(|i| format!("g{i:04},pw\n")).collect();
        let (code, v) = import_users(&http(0), ADMIN_TOKEN, csv).await;
        assert_eq!(code, 200, "{v}");
        // 1,000 bindings at node 1, registered by SIPp.
        let inf = dir.path().join("g.csv");
        let text: String = std::iter::once("SEQUENTIAL\n".to_string())
            .chain(
                (0..1000)
                    .map(|i| format!("g{i:04};[authentication username=g{i:04} password=pw]\n")),
            )
            .collect();
        std::fs::write(&inf, text).unwrap();
        let scenario =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/scenarios/reg.xml");
        let out = tokio::process::Command::new("sipp")
            .current_dir(dir.path())
            .args([
                "-sf",
                scenario.to_str().unwrap(),
                "-inf",
                inf.to_str().unwrap(),
                "-m",
                "1000",
                "-r",
                "200",
                "-i",
                "127.0.0.1",
            ])
            .args([
                "-key",
                "contact_hp",
                "127.0.0.1:5999",
                "-nostdin",
                "-timeout",
                "60s",
                "-timeout_error",
            ])
            .arg(format!("127.0.0.1:{}", base + 1))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .await
            .expect("sipp (installed by scripts/test.sh)");
        assert!(out.status.success(), "registering 1000 users failed");
        assert_eq!(
            http_get(format!("{}/v1/status", http(1))).await.1["registrations"],
            1000
        );
        // SIGTERM node 1: it must be gone within 10 s, cleanly, and down for the others at once.
        let pid = children[1].id().unwrap() as i32;
        let started = Instant::now();
        // The shell's builtin kill: no dependence on a kill binary being installed.
        std::process::Command::new("sh")
            .args(["-c", &format!("kill -TERM {pid}")])
            .status()
            .unwrap();
        let status = tokio::time::timeout(Duration::from_secs(10), children[1].wait())
            .await
            .expect("exit within 10 s")
            .unwrap();
        assert!(status.success(), "{status:?}");
        eventually(2, "the others see node 1 down at once", || async {
            http_get(format!("{}/v1/status", http(0))).await.1["members_up"] == 3
        })
        .await;
        assert!(
            started.elapsed() < Duration::from_millis(2900),
            "told, not detected"
        );
        let v = http_get(format!("{}/v1/status", http(0))).await.1;
        assert_eq!(v["ring_members"], 4, "a stop keeps the ring: {v}");
        for u in (0..1000).step_by(13) {
            let (code, v) = http_get(format!("{}/v1/registrations/g{u:04}", http(2))).await;
            assert_eq!(code, 200, "QUORUM with node 1 stopped: {v}");
        }
        // Restarted on its data: back in its place.
        children[1] = {
            let mut cmd = node_command(
                dir.path(),
                1,
                "127.0.0.1",
                (base + 1, base + 101, base + 201),
                ADMIN_TOKEN,
            );
            cmd.args(["--bootstrap", &seed]);
            cmd.spawn().unwrap()
        };
        eventually(30, "node 1 is back", || async {
            http_get(format!("{}/v1/status", http(0))).await.1["members_up"] == 4
        })
        .await;
        // Decommissioned: it hands over, leaves the ring, exits.
        let (code, v) = http_post(
            format!("{}/v1/mesh/decommission", http(1)),
            ADMIN_TOKEN,
            serde_json::json!({}),
        )
        .await;
        assert_eq!(code, 202, "{v}");
        let status = tokio::time::timeout(Duration::from_secs(60), children[1].wait())
            .await
            .expect("the decommissioned node exits")
            .unwrap();
        assert!(status.success(), "{status:?}");
        eventually(10, "the others see node 1 left the ring", || async {
            let v = http_get(format!("{}/v1/status", http(0))).await.1;
            v["members_up"] == 3 && v["ring_members"] == 3
        })
        .await;
        // Every binding is readable at QUORUM through each remaining node.
        for i in [0u16, 2, 3] {
            for u in (0..1000).step_by(7) {
                let (code, v) = http_get(format!("{}/v1/registrations/g{u:04}", http(i))).await;
                assert_eq!(code, 200);
                assert_eq!(
                    v["bindings"].as_array().map(|b| b.len()),
                    Some(1),
                    "g{u:04} via node {i}: {v}"
                );
            }
        }
        let _ = Consistency::Quorum;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ringing_call_through_a_dead_node_fails_fast() {
    within(120, async {
        let mesh = mesh_with(3, |_| {}).await;
        let mut alice = Ua::new("alice", sip(&mesh, 0)).await;
        let mut bob = Ua::new("bob", sip(&mesh, 2)).await;
        assert_eq!(bob.register("b-pw").await, 200);
        let call = format!("{}@a", token());
        invite_with_auth(&mut alice, "bob", "a-pw", &call, "t").await;
        let inv = bob.wait_request("INVITE", LONG).await.expect("bob rings");
        bob.respond(&inv, 180, "Ringing", "b").await;
        assert!(alice.wait_response(180, "INVITE", LONG).await.is_some());
        let killed = Instant::now();
        mesh.kill(2);
        // The caller does not wait for transaction timers (32 s, or 3 min after a 180).
        let r = alice
            .wait_final("INVITE", 8000)
            .await
            .expect("a final answer soon after the node died");
        assert!(r.status().is_some_and(|c| c >= 400), "{:?}", r.start);
        assert!(killed.elapsed() < Duration::from_secs(8));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_tcp_flow_is_dropped_and_the_other_flow_rings() {
    within(120, async {
        let mesh = mesh_with(3, |_| {}).await;
        // Flow 1: TCP through node 2 (reg-id 1); flow 2: UDP through node 1 (reg-id 2).
        let mut tcp = Client::tcp(sip(&mesh, 2)).await;
        let contact = format!("<sip:bob@{};transport=tcp;ob>;+sip.instance=\"<urn:uuid:00000000-0000-0000-0000-0000000b0b00>\";reg-id=1", tcp.local());
        let mut reg = Register::new("bob", &contact);
        reg.extra = "Supported: outbound\r\n".into();
        let server = sip(&mesh, 2);
        assert_eq!(register(&mut tcp, server, &mut reg, "b-pw").await.status(), Some(200));
        let mut flow2 = Ua::new("bob", sip(&mesh, 1)).await;
        assert_eq!(register_flow(&mut flow2, 2).await.status(), Some(200));
        let http = mesh.node(0).node().unwrap().http_addr().unwrap();
        let count = || async { http_get(format!("http://{http}/v1/registrations/bob")).await.1["bindings"].as_array().map(|b| b.len()) };
        assert_eq!(count().await, Some(2));
        // The phone's TCP connection dies: its owner drops that binding (RFC 5626 §5.3).
        drop(tcp);
        eventually(10, "the dead flow's binding is dropped", || async { count().await == Some(1) }).await;
        // The next call rings the remaining flow.
        let mut alice = Ua::new("alice", sip(&mesh, 0)).await;
        invite_with_auth(&mut alice, "bob", "a-pw", &format!("{}@a", token()), "t").await;
        let inv = flow2.wait_request("INVITE", LONG).await.expect("the live flow rings");
        flow2.respond(&inv, 200, "OK", "b").await;
        assert!(alice.wait_response(200, "INVITE", LONG).await.is_some());
    })
    .await;
}

/// A binding moves: bob registers at node 2, then the same contact registers at node 1 (its
/// owner changes). Calls reach him through the new owner; when that owner dies its binding is
/// not used (480, not a call into the void); once bob registers again at node 2, calls reach
/// him there. No node routes by a stale idea of who owns the binding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_binding_is_routed_through_its_new_owner_even_after_that_owner_dies() {
    within(180, async {
        let mesh = mesh_with(3, |_| {}).await;
        let mut alice = Ua::new("alice", sip(&mesh, 0)).await;
        let mut bob = Ua::new("bob", sip(&mesh, 2)).await;
        assert_eq!(bob.register("b-pw").await, 200);
        bob.retarget(sip(&mesh, 1));
        assert_eq!(bob.register("b-pw").await, 200);
        let contacts = |i: usize| {
            let node = mesh.node(i).node().unwrap();
            async move { node.contacts("bob").await.unwrap() }
        };
        assert_eq!(contacts(0).await.len(), 1, "one binding, moved, not two");
        // Through the new owner.
        let call = format!("{}@a", token());
        let sent = invite_with_auth(&mut alice, "bob", "a-pw", &call, "t1").await;
        let inv = bob.wait_request("INVITE", LONG).await.expect("bob rings");
        let via = hvals(&inv, &HeaderName::Via);
        assert!(
            via[0].contains(&sip(&mesh, 1).to_string()),
            "relayed by the new owner (node 1): {via:?}"
        );
        bob.respond(&inv, 486, "Busy Here", "b1").await;
        let busy = alice.wait_final("INVITE", LONG).await.unwrap();
        assert_eq!(busy.status(), Some(486));
        alice.c.send(&ack_for(&sent, &busy)).await;
        assert!(
            bob.wait_request("ACK", LONG).await.is_some(),
            "the ACK of the 486"
        );
        // The new owner dies: its binding is not used.
        let dead = mesh.node(1).peer_id;
        mesh.kill(1);
        mesh.wait_state(dead, MemberState::Down, Duration::from_secs(10))
            .await
            .unwrap();
        let call = format!("{}@a", token());
        let sent = invite_with_auth(&mut alice, "bob", "a-pw", &call, "t2").await;
        let r = alice.wait_final("INVITE", LONG).await.unwrap();
        assert_eq!(
            r.status(),
            Some(480),
            "the dead owner's binding is unusable"
        );
        alice.c.send(&ack_for(&sent, &r)).await;
        // Bob registers again, at node 2: calls reach him there.
        bob.retarget(sip(&mesh, 2));
        assert_eq!(bob.register("b-pw").await, 200);
        let call = format!("{}@a", token());
        invite_with_auth(&mut alice, "bob", "a-pw", &call, "t3").await;
        let inv = bob
            .wait_request("INVITE", LONG)
            .await
            .expect("bob rings again");
        assert!(hvals(&inv, &HeaderName::Via)[0].contains(&sip(&mesh, 2).to_string()));
        bob.respond(&inv, 200, "OK", "b3").await;
        assert!(alice.wait_response(200, "INVITE", LONG).await.is_some());
    })
    .await;
}
