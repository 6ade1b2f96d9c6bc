//! Shared helpers for multi-node tests.

use std::time::Duration;

use cluster::NodeId;
use multinode::{CounterMsg, HarnessSettings, MultiNode};
use tokio::time::{Instant, sleep};

/// Long enough for a membership failure to be detected and a new coordinator
/// to recover (down after 10 s + probes + recovery timeout).
pub const FAILOVER: Duration = Duration::from_secs(30);

pub fn settings(seed: u64) -> HarnessSettings {
    HarnessSettings::new(seed)
}

pub fn id(i: u64) -> NodeId {
    NodeId(i)
}

pub fn entity(i: usize) -> String {
    format!("entity-{i}")
}

/// Polls `pred` every 100 ms until it holds or `limit` passes.
pub async fn eventually(limit: Duration, what: &str, mut pred: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if pred() {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        sleep(Duration::from_millis(100)).await;
    }
}

/// Asks every entity through `via` until all answer `expected(i)`, retrying
/// failures; returns how long it took.
pub async fn all_answer(
    harness: &MultiNode,
    via: &[NodeId],
    entities: usize,
    limit: Duration,
    expected: impl Fn(usize) -> i64,
) -> Duration {
    let start = Instant::now();
    let mut remaining: Vec<usize> = (0..entities).collect();
    while !remaining.is_empty() {
        assert!(
            start.elapsed() < limit,
            "{} entities still not answering after {limit:?}, e.g. {:?}",
            remaining.len(),
            &remaining[..remaining.len().min(5)]
        );
        let mut still = Vec::new();
        for &i in &remaining {
            let node = via[i % via.len()];
            match harness.region(node).ask(CounterMsg::get(entity(i))).await {
                Ok(v) => assert_eq!(v, expected(i), "entity {i} via {node}"),
                Err(_) => still.push(i),
            }
        }
        remaining = still;
        if !remaining.is_empty() {
            sleep(Duration::from_millis(500)).await;
        }
    }
    start.elapsed()
}
