//! Three service processes with their counters in PostgreSQL
//! (`TEST_DATABASE_URL`; CI starts one with `.ci/postgres`): increments
//! through every node, `kill -9` of the process whose coordinator is
//! active in the middle of them, more increments; at the end every counter
//! holds every acknowledged increment (and none that was never sent),
//! through every surviving node.

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

mod common;

use common::{
    Node, agent, eventually, free_port, get_json, post_json, spawn_node_with, start_store,
};

/// A fresh database for this run, on the server of `TEST_DATABASE_URL`.
fn fresh_database(url: &str) -> String {
    let name = format!("counters_{}", std::process::id());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        for sql in [
            format!("DROP DATABASE IF EXISTS {name}"),
            format!("CREATE DATABASE {name}"),
        ] {
            client.batch_execute(&sql).await.unwrap();
        }
    });
    let (base, _) = url.rsplit_once('/').unwrap();
    format!("{base}/{name}")
}

#[test]
fn counters_in_postgres_keep_every_acknowledged_increment_across_kill_9() {
    let Ok(url) = std::env::var("TEST_DATABASE_URL") else {
        eprintln!("TEST_DATABASE_URL not set: skipped (CI sets it)");
        return;
    };
    let database = fresh_database(&url);
    let dir = std::env::temp_dir().join(format!("counter-durable-test-{}", std::process::id()));
    let (_store, kubeconfig) = start_store(&dir);
    let cluster_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let seeds = format!(
        "1=127.0.0.1:{},2=127.0.0.1:{}",
        cluster_ports[0], cluster_ports[1]
    );
    let env = [("DATABASE_URL", Path::new(&database))];
    let mut nodes: Vec<Node> = (1..=3u64)
        .map(|id| {
            let http_port = free_port();
            let proc = spawn_node_with(
                id,
                cluster_ports[id as usize - 1],
                http_port,
                &seeds,
                &kubeconfig,
                1000,
                &env,
            );
            Node {
                id,
                http: format!("http://127.0.0.1:{http_port}"),
                proc: Some(proc),
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
    eventually(
        Duration::from_secs(30),
        "cluster formed, one active coordinator",
        || {
            let s = statuses(&nodes);
            s.len() == 3
                && s.iter().all(|v| v["state_store"] == "postgres")
                && s.iter()
                    .filter(|v| v["coordinator"]["active"] == true)
                    .count()
                    == 1
        },
    );

    let mut attempted: BTreeMap<usize, i64> = BTreeMap::new();
    let mut acknowledged: BTreeMap<usize, i64> = BTreeMap::new();
    let mut add = |nodes: &[Node], k: usize| {
        let live: Vec<&Node> = nodes.iter().filter(|n| n.proc.is_some()).collect();
        let node = live[k % live.len()];
        let counter = k % 40;
        *attempted.entry(counter).or_default() += 1;
        if let Some((200, _)) =
            post_json(&agent, &format!("{}/counters/c{counter}/add/1", node.http))
        {
            *acknowledged.entry(counter).or_default() += 1;
        }
    };
    for k in 0..400 {
        add(&nodes, k);
    }
    // Kill -9 the process whose coordinator is active, and keep adding
    // through the survivors while the cluster recovers.
    let leader = statuses(&nodes)
        .iter()
        .find(|v| v["coordinator"]["active"] == true)
        .and_then(|v| v["node"].as_u64())
        .unwrap();
    drop(
        nodes
            .iter_mut()
            .find(|n| n.id == leader)
            .unwrap()
            .proc
            .take(),
    );
    for k in 400..1000 {
        add(&nodes, k);
    }

    let survivors: Vec<&Node> = nodes.iter().filter(|n| n.proc.is_some()).collect();
    let acked: i64 = acknowledged.values().sum();
    let sent: i64 = attempted.values().sum();
    eprintln!("{acked} of {sent} increments acknowledged");
    assert!(
        acked >= 800,
        "too few acknowledged to mean anything: {acked}"
    );
    let mut exact = 0;
    for counter in 0..40 {
        for node in &survivors {
            let url = format!("{}/counters/c{counter}", node.http);
            let mut value = None;
            eventually(Duration::from_secs(30), "the counter answers", || {
                value = get_json(&agent, &url)
                    .filter(|(code, _)| *code == 200)
                    .and_then(|(_, body)| body["value"].as_i64());
                value.is_some()
            });
            let value = value.unwrap();
            let (ack, att) = (acknowledged[&counter], attempted[&counter]);
            assert!(
                ack <= value && value <= att,
                "counter c{counter} via node {}: {value}, {ack} acknowledged, {att} sent",
                node.id
            );
            exact += usize::from(value == ack);
        }
    }
    eprintln!(
        "{exact} of {} readings equal the acknowledged sum exactly",
        40 * survivors.len()
    );
}

#[test]
fn durable_counters_without_a_lease_are_refused_at_start() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_counter-service"))
        .env("NODE_ID", "1")
        .env("CLUSTER_LISTEN", format!("127.0.0.1:{}", free_port()))
        .env("HTTP_LISTEN", format!("127.0.0.1:{}", free_port()))
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
        .env("LEASE", "none")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let log = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(log.contains("LEASE=kubernetes"), "{log}");
}
