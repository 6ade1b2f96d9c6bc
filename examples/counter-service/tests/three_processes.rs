//! Three service processes on loopback over TCP, the Kubernetes lease against
//! the API server emulator in its own process; 1000 asks; the leader process
//! is killed; every counter answers again; SIGTERM hands shards off.

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .http_status_as_error(false)
        .build()
        .into()
}

fn get_json(agent: &ureq::Agent, url: &str) -> Option<(u16, Value)> {
    let mut response = agent.get(url).call().ok()?;
    let status = response.status().as_u16();
    let body: Value = response.body_mut().read_json().ok()?;
    Some((status, body))
}

fn post_json(agent: &ureq::Agent, url: &str) -> Option<(u16, Value)> {
    let mut response = agent.post(url).send_empty().ok()?;
    let status = response.status().as_u16();
    let body: Value = response.body_mut().read_json().unwrap_or(Value::Null);
    Some((status, body))
}

fn eventually(limit: Duration, what: &str, mut pred: impl FnMut() -> bool) {
    let start = Instant::now();
    while !pred() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

struct Node {
    id: u64,
    http: String,
    proc: Option<Proc>,
}

#[test]
fn three_processes_survive_the_leader_dying_and_hand_off_on_sigterm() {
    let dir = std::env::temp_dir().join(format!("counter-service-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    let mut emulator = Command::new(env!("CARGO_BIN_EXE_k8s-api-emulator"))
        .arg(&kubeconfig)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut url = String::new();
    BufReader::new(emulator.stdout.take().unwrap())
        .read_line(&mut url)
        .unwrap();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let _emulator = Proc(emulator);

    let cluster_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let seeds = format!(
        "1=127.0.0.1:{},2=127.0.0.1:{}",
        cluster_ports[0], cluster_ports[1]
    );
    let mut nodes: Vec<Node> = (1..=3u64)
        .map(|id| {
            let http_port = free_port();
            let child = Command::new(env!("CARGO_BIN_EXE_counter-service"))
                .env("NODE_ID", id.to_string())
                .env(
                    "CLUSTER_LISTEN",
                    format!("127.0.0.1:{}", cluster_ports[id as usize - 1]),
                )
                .env("SEEDS", &seeds)
                .env("HTTP_LISTEN", format!("127.0.0.1:{http_port}"))
                .env("LEASE", "kubernetes")
                .env("KUBECONFIG", &kubeconfig)
                .env("HOSTNAME", format!("node-{id}"))
                .env("LEASE_TTL_MS", "2000")
                .env("LEASE_HEARTBEAT_MS", "300")
                .env("MEMBERSHIP_HEARTBEAT_MS", "200")
                .env("MEMBERSHIP_DOWN_AFTER_MS", "1000")
                .env("RUST_LOG", "warn")
                .spawn()
                .unwrap();
            Node {
                id,
                http: format!("http://127.0.0.1:{http_port}"),
                proc: Some(Proc(child)),
            }
        })
        .collect();
    let agent = agent();
    let statuses = |nodes: &[Node]| -> Vec<Value> {
        nodes
            .iter()
            .filter(|n| n.proc.is_some())
            .filter_map(|n| get_json(&agent, &format!("{}/status", n.http)).map(|(_, v)| v))
            .collect()
    };
    let active_count = |statuses: &[Value]| {
        statuses
            .iter()
            .filter(|s| s["coordinator"]["active"] == true)
            .count()
    };

    eventually(
        Duration::from_secs(30),
        "cluster formed with one active coordinator",
        || {
            let s = statuses(&nodes);
            s.len() == 3
                && s.iter()
                    .all(|v| v["members"].as_array().is_some_and(|m| m.len() == 3))
                && active_count(&s) == 1
        },
    );

    // 1000 asks through all three nodes: 200 counters, 5 increments each.
    for k in 0..1000usize {
        let node = &nodes[k % 3];
        let url = format!("{}/counters/c{}/add/1", node.http, k % 200);
        let mut ok = false;
        for _ in 0..20 {
            if let Some((200, _)) = post_json(&agent, &url) {
                ok = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(ok, "ask {k} via node {} failed", node.id);
    }
    for c in 0..200 {
        let (code, body) =
            get_json(&agent, &format!("{}/counters/c{c}", nodes[c % 3].http)).unwrap();
        assert_eq!(
            (code, body["value"].as_i64()),
            (200, Some(5)),
            "counter c{c}"
        );
    }

    // Kill the process whose coordinator is active.
    let s = statuses(&nodes);
    let leader = s
        .iter()
        .find(|v| v["coordinator"]["active"] == true)
        .unwrap()["node"]
        .as_u64()
        .unwrap();
    let victim = nodes.iter_mut().find(|n| n.id == leader).unwrap();
    drop(victim.proc.take());
    let survivors: Vec<&Node> = nodes.iter().filter(|n| n.proc.is_some()).collect();

    eventually(
        Duration::from_secs(30),
        "one active coordinator among the survivors",
        || {
            let s = statuses(&nodes);
            s.len() == 2 && active_count(&s) == 1
        },
    );
    eventually(
        Duration::from_secs(30),
        "every counter answers again",
        || {
            (0..200).all(|c| {
                let node = survivors[c % 2];
                matches!(
                    get_json(&agent, &format!("{}/counters/c{c}", node.http)),
                    Some((200, _))
                )
            })
        },
    );

    // /metrics is Prometheus text with the library's counters.
    let metrics = agent
        .get(&format!("{}/metrics", survivors[0].http))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    let scrape =
        prometheus_parse::Scrape::parse(metrics.lines().map(|l| Ok(l.to_owned()))).unwrap();
    assert!(
        scrape
            .samples
            .iter()
            .any(|s| s.metric == "sharding_region_delivered_local_total"),
        "{metrics}"
    );

    // SIGTERM on one survivor: it hands its shards off and exits cleanly.
    let leaving_id = survivors[1].id;
    let staying = survivors[0].http.clone();
    let leaving = nodes.iter_mut().find(|n| n.id == leaving_id).unwrap();
    let mut proc = leaving.proc.take().unwrap();
    let pid = proc.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let start = Instant::now();
    let exit = loop {
        if let Some(status) = proc.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(exit.success(), "{exit:?}");
    eventually(
        Duration::from_secs(30),
        "the last node answers for every counter",
        || {
            (0..200).all(|c| {
                matches!(
                    get_json(&agent, &format!("{staying}/counters/c{c}")),
                    Some((200, _))
                )
            })
        },
    );
    let _ = std::fs::remove_dir_all(&dir);
}
