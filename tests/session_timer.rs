//! RFC 4028 session timers end to end, on a real 3-node mesh with a Min-SE of 2 s (the RFC's
//! floor of 90 s is the default; a node can be given less, as tests are): an INVITE asking for
//! less than Min-SE gets 422 with Min-SE; a call whose parties go silent is forgotten by the
//! node that keeps its state once its session interval has passed (not before); a call
//! refreshed within its interval stays.

mod common;

use std::time::{Duration, Instant};

use common::*;
use sipmesh::sip::message::HeaderName;

/// The dialogs node `i` holds (`/v1/status`).
async fn dialogs_at(mesh: &sipmesh::LocalMesh, i: usize) -> u64 {
    let http = mesh.node(i).node().unwrap().http_addr().unwrap();
    let (_, v) = http_get(format!("http://{http}/v1/status")).await;
    v["dialogs"].as_u64().unwrap_or(u64::MAX)
}

/// Alice (node 0) calls Bob (node 2) asking for a session interval of `secs`; Bob answers
/// with it. Returns the caller's leg, or the final status when not answered.
async fn call_with_interval(alice: &mut Ua, bob: &mut Ua, secs: u64) -> Result<CallerLeg, u16> {
    let call_id = format!("{}@st", token());
    let invite = alice.invite("bob", &call_id, "at", 1, None).replacen(
        "Content-Type:",
        &format!("Session-Expires: {secs};refresher=uac\r\nSupported: timer\r\nContent-Type:"),
        1,
    );
    alice.send(&invite).await;
    let inv = match bob.wait_request("INVITE", 3000).await {
        Some(inv) => inv,
        None => {
            let r = alice.wait_final("INVITE", 1000).await.expect("an answer");
            return Err(r.status().unwrap());
        }
    };
    let mut answer = bob.answer(&inv, 200, "OK", "bt");
    answer = answer.replacen(
        "Content-Length: 0",
        &format!("Session-Expires: {secs};refresher=uac\r\nRequire: timer\r\nContent-Length: 0"),
        1,
    );
    bob.send(&answer).await;
    let ok = alice
        .wait_response(200, "INVITE", 5000)
        .await
        .expect("answered");
    let leg = CallerLeg::of_answer(&ok, &call_id);
    alice.send(&leg.request(alice, "ACK", 1)).await;
    Ok(leg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_call_expires_with_its_session_interval_and_a_refreshed_one_stays() {
    within(120, async {
        let mesh = mesh_with_users(3, PHONES, |c| {
            c.auth_invites = false;
            c.min_se = 2;
        })
        .await;
        let sip = |i: usize| mesh.node(i).node().unwrap().sip_addr();
        let mut alice = Ua::new("alice", sip(0)).await;
        let mut bob = Ua::new("bob", sip(2)).await;
        assert_eq!(alice.register("a-pw").await, 200);
        assert_eq!(bob.register("b-pw").await, 200);

        // Below Min-SE: 422, with the node's Min-SE.
        let call_id = format!("{}@short", token());
        let short = alice.invite("bob", &call_id, "s", 1, None).replacen(
            "Content-Type:",
            "Session-Expires: 1\r\nContent-Type:",
            1,
        );
        alice.send(&short).await;
        let r = alice.wait_final("INVITE", 5000).await.unwrap();
        assert_eq!(r.status(), Some(422));
        let sent = sipmesh::sip::Message::parse(short.as_bytes(), true).unwrap();
        alice
            .c
            .send(&sipmesh::sip::request::ack_for(&sent, &r))
            .await;
        assert_eq!(hvals(&r, &HeaderName::Other("min-se".into())), vec!["2"]);

        // A call with a 3 s session interval whose parties then go silent (died).
        call_with_interval(&mut alice, &mut bob, 3).await.unwrap();
        let up = Instant::now();
        // Node 0 faces the caller and keeps the call's state (node 2 relays to Bob's flow).
        eventually(2, "the caller's node holds the dialog", || async {
            dialogs_at(&mesh, 0).await == 1
        })
        .await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(dialogs_at(&mesh, 0).await, 1, "not before its interval");
        eventually(10, "the node forgets the silent call", || async {
            dialogs_at(&mesh, 0).await == 0
        })
        .await;
        let gone = up.elapsed();
        assert!(
            gone >= Duration::from_secs(3) && gone < Duration::from_secs(9),
            "expired after {gone:?} (interval 3 s, plus RFC 4028's margin and a sweep)"
        );

        // A call refreshed (UPDATE) every second stays up past several intervals.
        let leg = call_with_interval(&mut alice, &mut bob, 3).await.unwrap();
        for cseq in 2..9 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            alice.send(&leg.request(&alice, "UPDATE", cseq)).await;
            let upd = bob.wait_request("UPDATE", 5000).await.expect("the refresh");
            bob.respond(&upd, 200, "OK", "bt").await;
            assert!(alice.wait_response(200, "UPDATE", 5000).await.is_some());
        }
        assert_eq!(dialogs_at(&mesh, 0).await, 1, "a refreshed call stays");
        alice.send(&leg.request(&alice, "BYE", 20)).await;
        let bye = bob.wait_request("BYE", 5000).await.expect("BYE");
        bob.respond(&bye, 200, "OK", "bt").await;
        eventually(10, "the BYE ends it", || async {
            dialogs_at(&mesh, 0).await == 0
        })
        .await;
    })
    .await;
}
