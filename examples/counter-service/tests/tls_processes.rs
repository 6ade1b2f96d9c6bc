//! Three service processes on mutual TLS (certificates from the dev CA, as
//! `cargo xtask certs` makes them): they form a cluster and serve every
//! counter through every node; a fourth process with a certificate from
//! another CA is refused, counted under
//! `cluster_handshake_refused_total{reason="tls"}`, and never becomes a member.

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::path::Path;
use std::time::Duration;

use cluster::NodeId;
use cluster::transport::dev_certs::DevCa;

mod common;

use common::{agent, eventually, free_port, get_json, post_json, spawn_node_with, start_store};

fn tls_env(dir: &Path) -> [(&'static str, std::path::PathBuf); 3] {
    [
        ("TLS_CA", dir.join("ca.crt")),
        ("TLS_CERT", dir.join("tls.crt")),
        ("TLS_KEY", dir.join("tls.key")),
    ]
}

#[test]
fn three_processes_on_mtls_serve_and_refuse_a_stranger() {
    let dir = std::env::temp_dir().join(format!("counter-tls-test-{}", std::process::id()));
    let (_store, kubeconfig) = start_store(&dir);
    let ca = DevCa::new("counters").unwrap();
    let rogue_ca = DevCa::new("counters").unwrap();

    let cluster_ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let http_ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let seeds = format!("1=127.0.0.1:{}", cluster_ports[0]);
    let mut procs = Vec::new();
    for id in 1..=4u64 {
        let certs = dir.join(format!("certs-{id}"));
        // Node 4 holds a certificate for its own identity, from another CA.
        let issuer = if id == 4 { &rogue_ca } else { &ca };
        issuer.write_node(NodeId(id), &certs).unwrap();
        let env = tls_env(&certs);
        let env: Vec<(&str, &Path)> = env.iter().map(|(k, v)| (*k, v.as_path())).collect();
        procs.push(spawn_node_with(
            id,
            cluster_ports[id as usize - 1],
            http_ports[id as usize - 1],
            &seeds,
            &kubeconfig,
            1000,
            &env,
        ));
    }
    let agent = agent();
    let http = |i: usize| format!("http://127.0.0.1:{}", http_ports[i]);
    let members = |i: usize| {
        get_json(&agent, &format!("{}/status", http(i)))
            .map(|(_, s)| s["members"].clone())
            .unwrap_or_default()
    };
    eventually(Duration::from_secs(30), "three members everywhere", || {
        (0..3).all(|i| members(i) == serde_json::json!([1, 2, 3]))
    });
    for id in 0..20 {
        for i in 0..3 {
            let url = format!("{}/counters/c{id}/add/1", http(i));
            eventually(Duration::from_secs(15), "an add answers", || {
                post_json(&agent, &url).is_some_and(|(status, _)| status == 200)
            });
        }
        let (_, value) = get_json(&agent, &format!("{}/counters/c{id}", http(2))).unwrap();
        assert_eq!(value["value"], 3, "counter c{id}");
    }
    // The stranger never joined, and the refusals are in the metrics.
    assert_eq!(members(0), serde_json::json!([1, 2, 3]));
    assert_ne!(members(3), serde_json::json!([1, 2, 3, 4]));
    let refused_tls = |i: usize| -> f64 {
        let text = agent
            .get(&format!("{}/metrics", http(i)))
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap();
        let scrape =
            prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
        scrape
            .samples
            .iter()
            .filter(|s| {
                s.metric == "cluster_handshake_refused_total"
                    && s.labels.get("reason") == Some("tls")
            })
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
                _ => 0.0,
            })
            .sum()
    };
    eventually(Duration::from_secs(10), "TLS refusals counted", || {
        refused_tls(0) >= 1.0
    });
    drop(procs);
}
