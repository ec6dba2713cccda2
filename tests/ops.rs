//! Operator experience (issue "Operator experience"): metrics scraped by a real Prometheus
//! (Debian's `prometheus`) with the shipped alerting rules loaded, every metric documented in
//! docs/OPERATIONS.md, the rules unit-tested with `promtool`, the systemd unit verified with
//! `systemd-analyze`, and the operator commands of the guide run against real `sipmesh node`
//! processes: import with progress, status (and `--watch`), bans, dialogs, decommission.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::*;
use sipmesh::sip::message::HeaderName;
use tokio::process::{Child, Command};

const LONG: u64 = 5000;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `/metrics` of a node, as text.
async fn scrape(http: std::net::SocketAddr) -> (String, String) {
    tokio::task::spawn_blocking(move || {
        let r = ureq::get(&format!("http://{http}/metrics")).call().unwrap();
        let ct = r.content_type().to_string();
        (ct, r.into_string().unwrap())
    })
    .await
    .unwrap()
}

/// The value of the sample `series` (name with its labels, exactly as exposed).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Percent-encode a query parameter.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A free TCP port on loopback.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_every_documented_metric_and_raises_alerts() {
    within(240, async {
        let mesh = mesh_with_users(3, PHONES, |_| {}).await;
        let node = |i: usize| mesh.node(i).node().unwrap();
        let http = node(0).http_addr().unwrap();
        let mut alice = Ua::new("alice", node(0).sip_addr()).await;
        assert_eq!(alice.register("a-pw").await, 200);
        eventually(10, "a heartbeat round trip is measured", || async {
            sample(&scrape(http).await.1, "sipmesh_heartbeat_rtt_seconds_count").unwrap_or(0.0) > 0.0
        })
        .await;

        let (content_type, text) = scrape(http).await;
        assert!(content_type.starts_with("application/openmetrics-text"), "{content_type}");
        assert!(text.trim_end().ends_with("# EOF"));
        // Conventions: every counter's samples end in _total; every family is documented.
        let guide = std::fs::read_to_string(repo().join("docs/OPERATIONS.md")).unwrap();
        let mut families = 0;
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let mut parts = line.split_whitespace().skip(2);
            let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
            families += 1;
            if kind == "counter" {
                assert!(
                    text.lines().any(|l| l.starts_with(&format!("{name}_total"))),
                    "counter {name} has no {name}_total sample"
                );
            }
            assert!(
                guide.contains(&format!("`{name}`")),
                "{name} is not documented in docs/OPERATIONS.md"
            );
        }
        assert!(families >= 40, "{families} metric families");
        // Labels carry methods, transports and classes, never a user.
        assert!(!text.contains("alice"), "no per-user labels");
        let at_least = |series: &str, min: f64| {
            let v = sample(&text, series).unwrap_or_else(|| panic!("no sample {series}"));
            assert!(v >= min, "{series} = {v}, want >= {min}");
        };
        at_least(r#"sipmesh_sip_requests_total{method="REGISTER",transport="udp"}"#, 2.0);
        at_least(r#"sipmesh_sip_responses_sent_total{method="REGISTER",class="4xx"}"#, 1.0);
        at_least(r#"sipmesh_sip_responses_sent_total{method="REGISTER",class="2xx"}"#, 1.0);
        at_least(r#"sipmesh_sip_transaction_seconds_count{method="REGISTER"}"#, 2.0);
        at_least(r#"sipmesh_replication_seconds_count{op="write",consistency="quorum"}"#, 1.0);
        assert_eq!(sample(&text, r#"sipmesh_members{state="up"}"#), Some(3.0));
        assert_eq!(sample(&text, "sipmesh_mesh_majority"), Some(1.0));
        assert_eq!(sample(&text, "sipmesh_bindings"), Some(1.0));

        // A real Prometheus scrapes the three nodes with the shipped rules.
        let dir = tempfile::tempdir().unwrap();
        let targets: Vec<String> = (0..3)
            .map(|i| format!("'{}'", node(i).http_addr().unwrap()))
            .collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - '{}'\nscrape_configs:\n  - job_name: sipmesh\n    static_configs:\n      - targets: [{}]\n",
            repo().join("contrib/prometheus/sipmesh-rules.yml").display(),
            targets.join(", ")
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let port = free_port();
        let _prometheus = Command::new("prometheus")
            .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("prometheus runs: scripts/test.sh installs Debian's prometheus");
        let api = move |path: String| async move {
            http_get(format!("http://127.0.0.1:{port}{path}")).await.1
        };
        let query = move |q: &'static str| async move {
            let v = api(format!("/api/v1/query?query={}", enc(q))).await;
            v["data"]["result"][0]["value"][1]
                .as_str()
                .and_then(|x| x.parse::<f64>().ok())
        };
        wait_answering(format!("http://127.0.0.1:{port}/-/ready")).await;
        eventually(60, "Prometheus scraped all three nodes", || async {
            query(r#"sum(sipmesh_members{state="up"})"#).await == Some(9.0)
                && query(r#"sum(up{job="sipmesh"})"#).await == Some(3.0)
        })
        .await;
        assert!(
            query(r#"sum(sipmesh_sip_requests_total{method="REGISTER"})"#).await.unwrap_or(0.0) >= 2.0
        );
        let rules = api("/api/v1/rules".into()).await;
        let loaded: Vec<&serde_json::Value> = rules["data"]["groups"][0]["rules"]
            .as_array()
            .unwrap()
            .iter()
            .collect();
        assert_eq!(loaded.len(), 11, "{rules}");
        for r in &loaded {
            assert_eq!(r["health"], "ok", "{r}");
        }
        // A node dies: the others see a member down, Prometheus a target down.
        mesh.kill(2);
        eventually(60, "the alerts for a dead node are pending or firing", || async {
            let alerts = api("/api/v1/alerts".into()).await.to_string();
            alerts.contains("SipmeshMemberDown") && alerts.contains("SipmeshNodeDown")
        })
        .await;
    })
    .await;
}

#[tokio::test]
async fn alerting_rules_pass_promtool() {
    let dir = repo().join("contrib/prometheus");
    let check = std::process::Command::new("promtool")
        .args(["check", "rules", "sipmesh-rules.yml"])
        .current_dir(&dir)
        .output()
        .expect("promtool runs: scripts/test.sh installs Debian's prometheus");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let test = std::process::Command::new("promtool")
        .args(["test", "rules", "sipmesh-rules.test.yml"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(
        test.status.success(),
        "{}{}",
        String::from_utf8_lossy(&test.stdout),
        String::from_utf8_lossy(&test.stderr)
    );
}

#[test]
fn systemd_unit_verifies() {
    let unit = std::fs::read_to_string(repo().join("contrib/systemd/sipmesh.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/usr/local/bin/sipmesh node --config /etc/sipmesh/sipmesh.toml")
    );
    let dir = tempfile::tempdir().unwrap();
    // The unit as installed, with the binary this test built in place of /usr/local/bin.
    let verify = |text: String| {
        let path = dir.path().join("sipmesh.service");
        std::fs::write(&path, text).unwrap();
        std::process::Command::new("systemd-analyze")
            .arg("verify")
            .arg(&path)
            .output()
            .expect("systemd-analyze runs: scripts/test.sh installs systemd")
    };
    let ok = verify(unit.replace("/usr/local/bin/sipmesh", env!("CARGO_BIN_EXE_sipmesh")));
    assert!(
        ok.status.success() && ok.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // The verifier is not a rubber stamp: a missing binary fails.
    let bad = verify(unit.replace("/usr/local/bin/sipmesh", "/nonexistent/sipmesh"));
    assert!(!bad.status.success());
}

const TOKEN: &str = "ops-test-admin-token-0123456";

fn spawn(dir: &Path, base: u16, i: u16) -> Child {
    spawn_loopback_node(dir, base, i, TOKEN)
}

/// Run `sipmesh ARGS` with the admin token; (success, stdout, stderr).
async fn cli(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sipmesh"))
        .args(args)
        .env("SIPMESH_ADMIN_TOKEN", TOKEN)
        .env_remove("RUST_BACKTRACE")
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_commands_on_real_nodes() {
    within(300, async {
        let base = 28000 + (std::process::id() % 500) as u16 * 3;
        let http = |i: u16| format!("http://127.0.0.1:{}", base + 200 + i);
        let sip =
            |i: u16| -> std::net::SocketAddr { format!("127.0.0.1:{}", base + i).parse().unwrap() };
        let dir = tempfile::tempdir().unwrap();
        let mut nodes = Vec::new();
        for i in 0..3 {
            nodes.push(spawn(dir.path(), base, i));
            wait_answering(format!("{}/v1/status", http(i))).await;
        }
        for i in 0..3 {
            eventually(30, "every member up", || async move {
                http_get(format!("{}/v1/status", http(i))).await.1["members_up"] == 3
            })
            .await;
        }

        // Import: progress on stderr, a summary on stdout.
        let mut csv = String::from("user,password\nalice,a-pw\nbob,b-pw\n");
        for i in 0..4998 {
            csv.push_str(&format!("user{i},pw{i}\n"));
        }
        let file = dir.path().join("users.csv");
        std::fs::write(&file, csv).unwrap();
        let (ok, out, err) =
            cli(&["user", "import", file.to_str().unwrap(), "--node", &http(0)]).await;
        assert!(ok, "{out}{err}");
        assert!(err.contains("imported 2000/5000"), "progress: {err}");
        assert!(err.contains("imported 5000/5000 (100%), 0 failed"), "{err}");
        assert!(out.contains("added 5000 of 5000 users"), "{out}");
        // Listing: the CLI pages through every user (1,000 a page); the API pages in token
        // order with `next`, each member sending at most a page, and names a bad parameter.
        let (ok, out, err) = cli(&["user", "list", "--node", &http(1)]).await;
        assert!(ok, "{err}");
        let listed: Vec<&str> = out.lines().collect();
        let unique: std::collections::BTreeSet<&str> = listed.iter().copied().collect();
        assert_eq!((listed.len(), unique.len()), (5000, 5000));
        assert!(unique.contains("alice") && unique.contains("user4997"));
        let mut paged = std::collections::BTreeSet::new();
        let mut after: Option<String> = None;
        let mut pages = 0;
        loop {
            let mut url = format!("{}/v1/users?limit=700", http(2));
            if let Some(a) = &after {
                url.push_str(&format!("&after={a}"));
            }
            let (code, v) = http_get(url).await;
            assert_eq!(code, 200, "{v}");
            let users = v["users"].as_array().unwrap();
            assert!(users.len() <= 700, "{}", users.len());
            for u in users {
                assert!(paged.insert(u.as_str().unwrap().to_string()), "{u} twice");
            }
            pages += 1;
            assert!(pages <= 20, "{pages} pages");
            match v["next"].as_str() {
                Some(n) => after = Some(n.to_string()),
                None => break,
            }
        }
        assert_eq!(paged.len(), 5000);
        assert!(pages >= 8, "{pages} pages of 700");
        for (query, names) in [
            ("limit=0", "limit"),
            ("limit=10001", "limit"),
            ("limit=many", "limit"),
            ("after=bad%20name", "after"),
        ] {
            let (code, v) = http_get(format!("{}/v1/users?{query}", http(0))).await;
            assert_eq!(code, 400, "{query}: {v}");
            assert!(
                v["error"].as_str().unwrap().starts_with(names),
                "{query}: {v}"
            );
        }
        // A bad line is refused before anything is sent, naming the line.
        std::fs::write(&file, "carol,c-pw\nbad user,x\n").unwrap();
        let (ok, _, err) =
            cli(&["user", "import", file.to_str().unwrap(), "--node", &http(0)]).await;
        assert!(!ok && err.contains("line 2"), "{err}");

        // Status: members with their load; --watch refreshes.
        let (ok, out, err) = cli(&["status", "--node", &http(0)]).await;
        assert!(ok, "{err}");
        assert!(
            out.contains("members up  3 of 3 in the ring (QUORUM served)"),
            "{out}"
        );
        assert_eq!(
            out.lines()
                .filter(|l| l.contains(" up ") && l.contains("/100000"))
                .count(),
            3,
            "{out}"
        );
        let mut watch = Command::new(env!("CARGO_BIN_EXE_sipmesh"))
            .args(["status", "--watch", "1", "--node", &http(0)])
            .env("SIPMESH_ADMIN_TOKEN", TOKEN)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(3500)).await;
        watch.start_kill().unwrap();
        let out = watch.wait_with_output().await.unwrap();
        let screens = String::from_utf8_lossy(&out.stdout)
            .matches("every 1s:")
            .count();
        assert!(screens >= 2, "--watch refreshed {screens} times");

        // Dialogs: a call alice (node 0) -> bob (node 2), listed and ended by the operator.
        let mut alice = Ua::new("alice", sip(0)).await;
        let mut bob = Ua::new("bob", sip(2)).await;
        assert_eq!(alice.register("a-pw").await, 200);
        assert_eq!(bob.register("b-pw").await, 200);
        let call_id = answered_call(&mut alice, "a-pw", &mut bob, "btag")
            .await
            .call_id;
        let (ok, out, err) = cli(&["dialogs", "list", "--node", &http(1)]).await;
        assert!(ok && out.contains(&call_id), "{out}{err}");
        let id = out
            .lines()
            .find(|l| l.starts_with(&call_id))
            .unwrap()
            .trim()
            .to_string();
        let (code, v) = http_get(format!("{}/v1/dialogs?limit=1", http(1))).await;
        assert_eq!(code, 200, "{v}");
        assert_eq!(v["dialogs"][0]["id"], id.as_str(), "{v}");
        assert!(v["next"].is_null(), "one dialog, one page: {v}");
        let (code, v) = http_get(format!("{}/v1/dialogs?limit=2001", http(1))).await;
        assert_eq!(code, 400, "{v}");
        assert!(v["error"].as_str().unwrap().starts_with("limit"), "{v}");
        let (ok, out, err) = cli(&["dialogs", "end", &id, "--node", &http(1)]).await;
        assert!(ok, "{out}{err}");
        for ua in [&mut alice, &mut bob] {
            let bye = ua
                .wait_request("BYE", LONG)
                .await
                .expect("a BYE for each party");
            let reason = bye
                .header(&HeaderName::Other("reason".into()))
                .unwrap_or_default()
                .to_string();
            assert!(reason.contains("ended by the operator"), "{reason}");
        }
        eventually(10, "the dialog is gone", || async {
            cli(&["dialogs", "list", "--node", &http(0)])
                .await
                .1
                .contains("no dialogs")
        })
        .await;

        // Bans: a scanner banned, listed, lifted.
        scan_from("127.0.0.9", sip(0), 40).await;
        eventually(10, "the scanner is listed", || async {
            cli(&["bans", "list", "--node", &http(0)])
                .await
                .1
                .contains("127.0.0.9")
        })
        .await;
        let (ok, out, _) = cli(&["bans", "lift", "127.0.0.9", "--node", &http(0)]).await;
        assert!(ok && out.contains("lifted"), "{out}");
        assert!(!cli(&["bans", "list", "--node", &http(0)])
            .await
            .1
            .contains("127.0.0.9"));
        let (ok, _, err) = cli(&["bans", "lift", "not-an-ip", "--node", &http(0)]).await;
        assert!(!ok && err.contains("not an IP address"), "{err}");

        // Decommission node 2: it hands over, leaves the ring and exits 0; nothing is lost.
        let (ok, out, err) = cli(&["mesh", "decommission", "--node", &http(2)]).await;
        assert!(ok && out.contains("decommissioning"), "{out}{err}");
        let status = tokio::time::timeout(Duration::from_secs(60), nodes[2].wait())
            .await
            .expect("the decommissioned node exits")
            .unwrap();
        assert!(status.success(), "{status:?}");
        eventually(20, "node 2 left the ring", || async {
            let v = http_get(format!("{}/v1/status", http(0))).await.1;
            v["ring_members"] == 2 && v["majority"] == true
        })
        .await;
        for user in ["alice", "user0", "user4997"] {
            let (code, _) = http_get(format!("{}/v1/users/{user}", http(0))).await;
            assert_eq!(code, 200, "{user} survives the decommission");
        }
    })
    .await;
}

/// Two nodes on one host, on two addresses with the same p2p port (as on a host with two
/// public addresses; found while running docs/OPERATIONS.md on loopback). The second starts
/// before its seed: its first dial fails and it redials once its own listener is up. libp2p's
/// default dials from the listening port, so the redial went from 0.0.0.0:PORT to
/// 127.0.0.1:PORT, the kernel picked 127.0.0.1 as the source, and the socket connected to
/// itself: the node never joined.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_sharing_a_port_on_one_host_join() {
    within(90, async {
        let port = 29800 + (std::process::id() % 100) as u16;
        let dir = tempfile::tempdir().unwrap();
        // The seed on 127.0.0.1: the address the kernel gives as source toward loopback.
        let ip = |i: u16| {
            if i == 0 {
                "127.0.0.1".to_string()
            } else {
                format!("127.0.0.{}", 30 + i)
            }
        };
        let node = |i: u16, seed: bool| {
            let mut cmd =
                node_command(dir.path(), i, &ip(i), (port, port + 100, port + 200), TOKEN);
            if seed {
                cmd.args(["--bootstrap", &format!("/ip4/127.0.0.1/tcp/{}", port + 100)]);
            }
            cmd.spawn().unwrap()
        };
        let status = move |i: u16| format!("http://{}:{}/v1/status", ip(i), port + 200);
        let _joiner = node(1, true);
        wait_answering(status(1)).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let _seed = node(0, false);
        wait_answering(status(0)).await;
        for i in 0..2 {
            eventually(30, "both nodes see each other", || async move {
                http_get(status(i)).await.1["members_up"] == 2
            })
            .await;
        }
    })
    .await;
}

/// `sipmesh dev` for a newcomer: quiet logs, and a banner that says how to register a softphone
/// (server, ports, transport, users and passwords), where the live page is, and the token. The
/// banner's users work: one registers through the printed server and password. Ctrl-C stops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_prints_how_to_connect_a_softphone() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    within(120, async {
        let mut dev = Command::new(env!("CARGO_BIN_EXE_sipmesh"))
            .args(["dev", "--nodes", "1"])
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(dev.stdout.take().unwrap()).lines();
        let mut banner = String::new();
        while let Some(line) = lines.next_line().await.unwrap() {
            banner.push_str(&line);
            banner.push('\n');
            if line.contains("Ctrl-C stops the mesh") {
                break;
            }
        }
        for want in [
            "live mesh page  http://127.0.0.1:8080/",
            "admin token",
            "SIP server      127.0.0.1",
            "port            5060 (node 0)",
            "transport       UDP or TCP",
            "user alice      password alice-",
            "run with -v for more",
        ] {
            assert!(banner.contains(want), "{want:?} missing from:\n{banner}");
        }
        // The printed credentials register.
        let password = banner
            .lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix("user alice")?
                    .trim()
                    .strip_prefix("password ")
            })
            .unwrap()
            .to_string();
        let mut alice = Ua::new("alice", "127.0.0.1:5060".parse().unwrap()).await;
        assert_eq!(alice.register(&password).await, 200);
        let (code, _) = http_get("http://127.0.0.1:8080/".into()).await;
        assert_eq!(code, 200, "the live page is served");
        // Ctrl-C stops it; nothing was logged below a warning.
        let pid = dev.id().unwrap() as i32;
        assert!(std::process::Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status()
            .unwrap()
            .success());
        let out = tokio::time::timeout(Duration::from_secs(30), dev.wait_with_output())
            .await
            .expect("dev stops on Ctrl-C")
            .unwrap();
        let logs = String::from_utf8_lossy(&out.stderr);
        assert!(!logs.contains(" INFO "), "quiet by default:\n{logs}");
    })
    .await;
}

/// Mistakes in the TLS, WebSocket and session-timer flags stop the node with a one-line error
/// naming the flag, before anything listens.
/// `sipmesh node` on loopback with ephemeral ports and its data in `data`.
fn node_on_loopback(data: &str) -> [&str; 9] {
    [
        "node",
        "--data-dir",
        data,
        "--sip-listen",
        "127.0.0.1:0",
        "--p2p-listen",
        "/ip4/127.0.0.1/tcp/0",
        "--http-listen",
        "127.0.0.1:0",
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_cache_out_of_range_fails_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_string_lossy().into_owned();
    for (mib, want) in [
        ("0", "config: cache_mib = 0: use 8 to 65536"),
        ("7", "config: cache_mib = 7: use 8 to 65536"),
        ("100000", "config: cache_mib = 100000: use 8 to 65536"),
    ] {
        let config = dir.path().join(format!("cache-{mib}.toml"));
        std::fs::write(&config, format!("cache_mib = {mib}\n")).unwrap();
        let mut args = node_on_loopback(&data).to_vec();
        args.extend(["--config", config.to_str().unwrap()]);
        let (ok, _, err) = cli(&args).await;
        assert!(!ok, "cache_mib = {mib} must fail");
        assert!(err.contains(want), "cache_mib = {mib}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transport_and_session_timer_flags_fail_with_their_names() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_string_lossy().into_owned();
    let base = node_on_loopback(&data);
    let cert = dir.path().join("missing.pem");
    let cert = cert.to_string_lossy();
    for (extra, want) in [
        (
            vec!["--sip-tls-listen", "127.0.0.1:0"],
            "--sip-tls-listen needs a certificate",
        ),
        (
            vec!["--sip-wss-listen", "127.0.0.1:0"],
            "--sip-wss-listen needs a certificate",
        ),
        (vec!["--tls-cert", &cert], "--tls-cert needs --tls-key"),
        (
            vec!["--sip-ws-listen", "nowhere"],
            "--sip-ws-listen \"nowhere\" is not IP:PORT",
        ),
        (vec!["--min-se", "30"], "--min-se 30"),
        (
            vec![
                "--sip-tls-listen",
                "127.0.0.1:0",
                "--tls-cert",
                &cert,
                "--tls-key",
                &cert,
            ],
            "missing.pem",
        ),
    ] {
        let mut args: Vec<&str> = base.to_vec();
        args.extend(extra.iter().copied());
        let (ok, _, err) = cli(&args).await;
        assert!(!ok, "{args:?} must fail");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(err.starts_with("error:"), "{err}");
    }
}
