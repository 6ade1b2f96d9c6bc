//! The most common production event: the leader's process is killed and its
//! container restarted 2 s later, before membership declares it down (here
//! after 5 s). Within 30 s every counter answers through every process, and
//! no shard is hosted by two processes (each `/status` lists its shards).

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;

use common::{Node, agent, eventually, free_port, get_json, post_json, spawn_node, start_store};

const DOWN_AFTER_MS: u64 = 5_000;
const COUNTERS: usize = 64;

#[test]
fn a_leader_restarted_before_it_is_declared_down_leaves_one_host_per_shard() {
    let dir = std::env::temp_dir().join(format!("counter-restart-test-{}", std::process::id()));
    let (_store, kubeconfig) = start_store(&dir);
    let cluster_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let http_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let seeds = format!(
        "1=127.0.0.1:{},2=127.0.0.1:{}",
        cluster_ports[0], cluster_ports[1]
    );
    let spawn = |id: u64| {
        let i = id as usize - 1;
        spawn_node(
            id,
            cluster_ports[i],
            http_ports[i],
            &seeds,
            &kubeconfig,
            DOWN_AFTER_MS,
        )
    };
    let mut nodes: Vec<Node> = (1..=3u64)
        .map(|id| Node {
            id,
            http: format!("http://127.0.0.1:{}", http_ports[id as usize - 1]),
            proc: Some(spawn(id)),
        })
        .collect();
    let agent = agent();
    let statuses = |nodes: &[Node]| -> Vec<Value> {
        nodes
            .iter()
            .filter_map(|n| get_json(&agent, &format!("{}/status", n.http)).map(|(_, v)| v))
            .collect()
    };
    eventually(Duration::from_secs(30), "cluster formed", || {
        let s = statuses(&nodes);
        s.len() == 3
            && s.iter()
                .all(|v| v["members"].as_array().is_some_and(|m| m.len() == 3))
            && s.iter()
                .filter(|v| v["coordinator"]["active"] == true)
                .count()
                == 1
    });
    // Shards spread over all three processes.
    for c in 0..COUNTERS {
        let url = format!("{}/counters/r{c}/add/1", nodes[c % 3].http);
        eventually(Duration::from_secs(10), &format!("add to r{c}"), || {
            matches!(post_json(&agent, &url), Some((200, _)))
        });
    }

    let leader = statuses(&nodes)
        .iter()
        .find(|v| v["coordinator"]["active"] == true)
        .and_then(|v| v["node"].as_u64())
        .unwrap();
    let victim = nodes.iter_mut().find(|n| n.id == leader).unwrap();
    drop(victim.proc.take()); // SIGKILL
    std::thread::sleep(Duration::from_secs(2));
    victim.proc = Some(spawn(leader));

    // Every counter through every process, and one host per shard, within 30 s.
    let problem = || -> Option<String> {
        for node in &nodes {
            for c in 0..COUNTERS {
                let url = format!("{}/counters/r{c}", node.http);
                if !matches!(get_json(&agent, &url), Some((200, _))) {
                    return Some(format!("r{c} unanswered through node {}", node.id));
                }
            }
        }
        let all = statuses(&nodes);
        if all.len() < nodes.len() {
            return Some(format!("{} of {} /status answered", all.len(), nodes.len()));
        }
        let mut hosts: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        for s in all {
            let node = s["node"].as_u64().unwrap();
            for shard in s["hosted_shards"].as_array().unwrap() {
                hosts.entry(shard.as_u64().unwrap()).or_default().push(node);
            }
        }
        let (shard, h) = hosts.iter().find(|(_, h)| h.len() > 1)?;
        Some(format!("shard {shard} hosted on nodes {h:?}"))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Some(why) = problem() {
        assert!(
            Instant::now() < deadline,
            "not converged 30 s after node {leader} restarted: {why}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The counters kept their values where their shard did not move with the
    // killed process; every one answers with a value.
    for c in 0..COUNTERS {
        let (code, body) = get_json(&agent, &format!("{}/counters/r{c}", nodes[0].http)).unwrap();
        assert_eq!(code, 200, "r{c}: {body}");
        assert!(body["value"].as_i64().is_some(), "r{c}: {body}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
