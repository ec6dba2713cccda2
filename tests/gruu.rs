//! GRUU (RFC 5627) on a real 3-node mesh: a phone that supports GRUU gets a public and a
//! temporary GRUU in its REGISTER 200; each reaches that phone only, through any node; a GRUU
//! this mesh did not make names nobody; and a dialog whose remote target is a GRUU survives
//! the death of the node that carried the call, once the phone has registered elsewhere (on
//! TCP, where its contact cannot be reached: only a GRUU finds its new connection).

mod common;

use std::time::Duration;

use common::*;
use sipmesh::sip::message::{HeaderName, Message};
use sipmesh_net::MemberState;

/// Register `ua` with an instance id and `Supported: gruu`; the 200's (pub-gruu, temp-gruu)
/// for its contact.
async fn register_with_gruu(ua: &mut Ua, password: &str, uuid: &str) -> (String, String) {
    let contact = format!("<{}>;+sip.instance=\"<urn:uuid:{uuid}>\"", ua.contact());
    let user = ua.user.clone();
    let mut reg = Register::new(&user, &contact);
    reg.extra = "Supported: gruu\r\n".into();
    let server = ua.server;
    let ok = register(&mut ua.c, server, &mut reg, password).await;
    assert_eq!(ok.status(), Some(200), "{:?}", ok.start);
    let mine = hvals(&ok, &HeaderName::Contact)
        .into_iter()
        .find(|c| c.contains(uuid))
        .expect("our binding in the 200");
    let quoted = |name: &str| -> String {
        let at = mine
            .find(&format!("{name}=\""))
            .unwrap_or_else(|| panic!("{name} in {mine}"));
        let rest = &mine[at + name.len() + 2..];
        rest[..rest.find('"').unwrap()].to_string()
    };
    let public = quoted("pub-gruu");
    let temp = quoted("temp-gruu");
    assert_eq!(
        public,
        format!("sip:{user}@{server};gr=urn:uuid:{uuid}"),
        "the public GRUU is the AOR with the instance"
    );
    assert!(
        temp.ends_with(";gr") && !temp.contains(&user) && !temp.contains(uuid),
        "{temp}"
    );
    (public, temp)
}

/// `from` sends an INVITE (not challenged) to `uri`; returns the Call-ID.
async fn invite_to(from: &mut Ua, uri: &str) -> String {
    let call_id = format!("{}@g", token());
    let text = from.invite("x", &call_id, "gtag", 1, None).replacen(
        &format!("INVITE sip:x@{} ", from.server),
        &format!("INVITE {uri} "),
        1,
    );
    from.send(&text).await;
    call_id
}

/// The final answer to `from`'s INVITE `call_id`, acknowledged (so it is not retransmitted).
async fn final_status(from: &mut Ua, call_id: &str) -> u16 {
    let r = from
        .wait_for(5000, |m| {
            m.status().is_some_and(|c| c >= 200) && m.header(&HeaderName::CallId) == Some(call_id)
        })
        .await
        .expect("a final answer");
    let ack = format!(
        "ACK {} SIP/2.0\r\nVia: {}\r\nMax-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {call_id}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
        format_args!("sip:x@{}", from.server),
        hvals(&r, &HeaderName::Via)[0],
        r.header(&HeaderName::From).unwrap(),
        r.header(&HeaderName::To).unwrap(),
    );
    from.send(&ack).await;
    r.status().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_gruu_reaches_its_own_phone_through_any_node() {
    within(90, async {
        let mesh = mesh_with_users(3, PHONES, |c| c.auth_invites = false).await;
        let sip = |i: usize| mesh.node(i).node().unwrap().sip_addr();
        // Two phones of alice: one at node 0, one at node 1.
        let mut a1 = Ua::new("alice", sip(0)).await;
        let mut a2 = Ua::new("alice", sip(1)).await;
        let (pub1, _temp1) =
            register_with_gruu(&mut a1, "a-pw", "00000000-0000-4000-8000-000000000001").await;
        let (pub2, temp2) =
            register_with_gruu(&mut a2, "a-pw", "00000000-0000-4000-8000-000000000002").await;
        let mut bob = Ua::new("bob", sip(2)).await;
        assert_eq!(bob.register("b-pw").await, 200);

        // The AOR forks to both phones; a GRUU to one.
        let call = invite_to(&mut bob, &pub1).await;
        let inv = a1
            .wait_request("INVITE", 5000)
            .await
            .expect("phone 1 rings");
        assert!(
            a2.wait_for(1000, |m| m.header(&HeaderName::CallId)
                == Some(call.as_str()))
                .await
                .is_none(),
            "phone 2 must not ring for phone 1's GRUU"
        );
        assert!(
            inv.request_uri().unwrap().starts_with(&a1.contact()),
            "retargeted to the contact: {:?}",
            inv.request_uri()
        );
        a1.respond(&inv, 486, "Busy Here", "b1").await;
        assert_eq!(final_status(&mut bob, &call).await, 486);
        // The temporary GRUU of phone 2, entering another node.
        let mut carol = Ua::new("carol", sip(0)).await;
        assert_eq!(carol.register("c-pw").await, 200);
        let call = invite_to(&mut carol, &temp2).await;
        let inv = a2
            .wait_request("INVITE", 5000)
            .await
            .expect("phone 2 rings");
        assert!(
            a1.wait_for(1000, |m| m.header(&HeaderName::CallId)
                == Some(call.as_str()))
                .await
                .is_none(),
            "phone 1 must not ring for phone 2's GRUU"
        );
        a2.respond(&inv, 486, "Busy Here", "b2").await;
        assert_eq!(final_status(&mut carol, &call).await, 486);
        let _ = pub2;

        // A temporary GRUU this mesh did not make: 404. An instance with no binding: 480.
        let forged = temp2.replacen("tgruu.", "tgruu.AAAA", 1);
        let call = invite_to(&mut bob, &forged).await;
        assert_eq!(final_status(&mut bob, &call).await, 404);
        let gone = pub1.replace("000000000001", "000000000009");
        let call = invite_to(&mut bob, &gone).await;
        assert_eq!(final_status(&mut bob, &call).await, 480);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dialog_to_a_gruu_survives_the_node_that_carried_it() {
    within(120, async {
        let mesh = mesh_with_users(3, PHONES, |c| c.auth_invites = false).await;
        let sip = |i: usize| mesh.node(i).node().unwrap().sip_addr();
        let uuid = "00000000-0000-4000-8000-0000000000aa";
        // Alice is on TCP: nothing listens at her contact, so the only way to reach her is
        // down the connection she registered on.
        let mut alice = Ua::on("alice", sip(0), Client::tcp(sip(0)).await);
        let (gruu, _) = register_with_gruu(&mut alice, "a-pw", uuid).await;
        let mut bob = Ua::new("bob", sip(2)).await;
        assert_eq!(bob.register("b-pw").await, 200);

        // Alice calls Bob through node 0, her remote target her GRUU.
        let call_id = format!("{}@gruu", token());
        let invite = alice
            .invite("bob", &call_id, "atag", 1, None)
            .replacen(&format!("Contact: <{}>", alice.contact()), &format!("Contact: <{gruu}>"), 1);
        alice.send(&invite).await;
        let inv = bob.wait_request("INVITE", 5000).await.expect("bob rings");
        assert_eq!(
            uri_of(&hvals(&inv, &HeaderName::Contact)[0]),
            gruu,
            "bob's remote target is alice's GRUU"
        );
        bob.respond(&inv, 200, "OK", "btag").await;
        let ok = alice.wait_response(200, "INVITE", 5000).await.expect("answered");
        let leg = CallerLeg::of_answer(&ok, &call_id);
        alice.send(&leg.request(&alice, "ACK", 1)).await;
        assert!(bob.wait_request("ACK", 5000).await.is_some());

        // Node 0, which carried the call and alice's registration, dies; alice registers
        // again through node 1 (same instance).
        let dead = mesh.node(0).peer_id;
        mesh.kill(0);
        mesh.wait_state(dead, MemberState::Down, Duration::from_secs(10))
            .await
            .expect("node 0 down");
        let mut alice = Ua::on("alice", sip(1), Client::tcp(sip(1)).await);
        register_with_gruu(&mut alice, "a-pw", uuid).await;

        // Bob hangs up along his route set (node 2's entry, then dead node 0's) to the GRUU.
        let routes: String = hvals(&inv, &HeaderName::RecordRoute)
            .iter()
            .map(|r| format!("Route: {r}\r\n"))
            .collect();
        let bye = format!(
            "BYE {gruu} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bK{};rport\r\nMax-Forwards: 70\r\n{routes}From: {}\r\nTo: {}\r\nCall-ID: {call_id}\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n",
            bob.c.local(),
            token(),
            ok.header(&HeaderName::To).unwrap(),
            ok.header(&HeaderName::From).unwrap(),
        );
        bob.send(&bye).await;
        let got = alice
            .wait_request("BYE", 8000)
            .await
            .expect("the BYE reaches alice through node 1");
        assert!(got.request_uri().unwrap().starts_with(&alice.contact()));
        alice.respond(&got, 200, "OK", "").await;
        let done: Option<Message> = bob.wait_response(200, "BYE", 5000).await;
        assert!(done.is_some(), "the 200 comes back to bob");
    })
    .await;
}
