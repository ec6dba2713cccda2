//! A phone behind a real NAT (issue "real phones"): network namespaces this test creates, a
//! phone namespace on 192.168.77.0/24 behind a router namespace that masquerades (nftables)
//! onto a link to the host, where the mesh's SIP listens. The phone (tests/nat/phone.py,
//! standard library only) registers its private contact with no Outbound and no contact
//! rewriting; a call from a phone on the host reaches it through the NAT's pinhole, and the
//! ACK and the caller's BYE follow. Root and `ip netns` are required (scripts/test.sh runs as
//! root in CI and installs nftables).

mod common;

use std::process::Command as Std;

use common::*;

/// Run a command; panic with its output if it fails.
fn run(args: &[&str]) {
    let out = Std::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The namespaces and links of one test, removed when dropped.
struct Nat {
    phone: String,
    router: String,
    host_if: String,
}

impl Drop for Nat {
    fn drop(&mut self) {
        for ns in [&self.phone, &self.router] {
            let _ = Std::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = Std::new("ip").args(["link", "del", &self.host_if]).status();
    }
}

/// phone ns (192.168.77.2) —— router ns (192.168.77.1 | 10.77.N.2, masquerade) —— host (10.77.N.1)
fn build(n: u8) -> Nat {
    let id = std::process::id() % 10_000;
    let nat = Nat {
        phone: format!("smphone{id}"),
        router: format!("smnat{id}"),
        host_if: format!("smh{id}"),
    };
    let (p, r, h) = (&nat.phone, &nat.router, &nat.host_if);
    let (pa, pb, ra) = (format!("smp{id}"), format!("smq{id}"), format!("smr{id}"));
    let host_net = format!("10.77.{n}");
    run(&["ip", "netns", "add", p]);
    run(&["ip", "netns", "add", r]);
    run(&[
        "ip", "link", "add", &pa, "type", "veth", "peer", "name", &pb,
    ]);
    run(&["ip", "link", "set", &pa, "netns", p]);
    run(&["ip", "link", "set", &pb, "netns", r]);
    run(&["ip", "link", "add", h, "type", "veth", "peer", "name", &ra]);
    run(&["ip", "link", "set", &ra, "netns", r]);
    run(&["ip", "-n", p, "addr", "add", "192.168.77.2/24", "dev", &pa]);
    run(&["ip", "-n", p, "link", "set", &pa, "up"]);
    run(&["ip", "-n", p, "link", "set", "lo", "up"]);
    run(&[
        "ip",
        "-n",
        p,
        "route",
        "add",
        "default",
        "via",
        "192.168.77.1",
    ]);
    run(&["ip", "-n", r, "addr", "add", "192.168.77.1/24", "dev", &pb]);
    run(&[
        "ip",
        "-n",
        r,
        "addr",
        "add",
        &format!("{host_net}.2/24"),
        "dev",
        &ra,
    ]);
    run(&["ip", "-n", r, "link", "set", &pb, "up"]);
    run(&["ip", "-n", r, "link", "set", &ra, "up"]);
    run(&[
        "ip",
        "netns",
        "exec",
        r,
        "sysctl",
        "-q",
        "-w",
        "net.ipv4.ip_forward=1",
    ]);
    run(&["ip", "addr", "add", &format!("{host_net}.1/24"), "dev", h]);
    run(&["ip", "link", "set", h, "up"]);
    run(&["ip", "netns", "exec", r, "nft", "add", "table", "ip", "nat"]);
    run(&[
        "ip",
        "netns",
        "exec",
        r,
        "nft",
        "add",
        "chain",
        "ip",
        "nat",
        "post",
        "{ type nat hook postrouting priority 100 ; }",
    ]);
    run(&[
        "ip",
        "netns",
        "exec",
        r,
        "nft",
        "add",
        "rule",
        "ip",
        "nat",
        "post",
        "oifname",
        &ra,
        "masquerade",
    ]);
    nat
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_behind_a_masquerading_nat_is_called_through_its_pinhole() {
    within(120, async {
        let n = (std::process::id() % 200 + 20) as u8;
        let nat = build(n);
        let host_ip = format!("10.77.{n}.1");
        let listen: std::net::SocketAddr = format!("{host_ip}:0").parse().unwrap();
        let mesh = mesh_with_users(3, PHONES, move |c| c.sip_listen = listen).await;
        let sip = |i: usize| mesh.node(i).node().unwrap().sip_addr();
        // bob behind the NAT registers at node 2.
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/nat/phone.py");
        let phone = tokio::process::Command::new("ip")
            .args(["netns", "exec", &nat.phone, "python3"])
            .arg(&script)
            .args([
                &host_ip,
                &sip(2).port().to_string(),
                "bob",
                "b-pw",
                "192.168.77.2",
            ])
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("ip netns exec python3");
        let http = mesh.node(0).node().unwrap().http_addr().unwrap();
        eventually(20, "bob is registered through the NAT", || async {
            http_get(format!("http://{http}/v1/registrations/bob"))
                .await
                .1["bindings"]
                .as_array()
                .is_some_and(|b| b.len() == 1)
        })
        .await;
        let (_, v) = http_get(format!("http://{http}/v1/registrations/bob")).await;
        let b = &v["bindings"][0];
        assert_eq!(b["contact"], "sip:bob@192.168.77.2:5060", "{v}");
        assert!(
            b["source"]
                .as_str()
                .unwrap()
                .starts_with(&format!("10.77.{n}.2:")),
            "the NAT's address is the source: {v}"
        );
        // alice on the host, at node 0, calls bob.
        let mut alice = Ua::new("alice", sip(0)).await;
        assert_eq!(alice.register("a-pw").await, 200);
        let call_id = format!("{}@alice", token());
        invite_with_auth(&mut alice, "bob", "a-pw", &call_id, "atag").await;
        let ok = alice
            .wait_response(200, "INVITE", 10_000)
            .await
            .expect("bob answers through the NAT");
        let leg = CallerLeg::of_answer(&ok, &call_id);
        assert_eq!(leg.target, "sip:bob@192.168.77.2:5060");
        alice.send(&leg.request(&alice, "ACK", 2)).await;
        // The call lasts a moment (a BYE right behind the ACK may overtake it: the ACK takes
        // the stateless path).
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        alice.send(&leg.request(&alice, "BYE", 3)).await;
        assert!(
            alice.wait_response(200, "BYE", 10_000).await.is_some(),
            "bob's 200 to the BYE comes back"
        );
        let out =
            tokio::time::timeout(std::time::Duration::from_secs(20), phone.wait_with_output())
                .await
                .expect("the phone ends after the BYE")
                .unwrap();
        let log = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{log}");
        for step in [
            "REGISTERED",
            "INVITE sip:bob@192.168.77.2:5060 SIP/2.0",
            "ACK",
            "BYE",
        ] {
            assert!(log.contains(step), "{step} missing:\n{log}");
        }
        drop(nat);
    })
    .await;
}
