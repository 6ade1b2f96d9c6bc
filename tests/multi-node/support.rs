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

/// The in-memory lease with a short shard tenure (3 s), so that a new
/// coordinator's wait for its predecessors' grants (tenure x 1.01 + margin)
/// stays inside these tests' ask timeouts.
pub fn memory_lease(seed: u64) -> HarnessSettings {
    let mut s = HarnessSettings::with_memory_lease(seed);
    s.tenure = sharding_core::TenureSettings {
        tenure: Duration::from_secs(3),
        renew_interval: Duration::from_millis(500),
        clock_rate_bound: 0.01,
        margin: Duration::from_millis(200),
        bridge: Duration::from_millis(1600),
    };
    s
}

pub fn id(i: u64) -> NodeId {
    NodeId(i)
}

pub fn entity(i: usize) -> String {
    format!("entity-{i}")
}

/// Waits until every node sees every node and node 1's coordinator is the
/// one active coordinator.
pub async fn settled(harness: &MultiNode) {
    assert!(
        harness.converge(Duration::from_secs(20)).await,
        "membership did not converge"
    );
    eventually(Duration::from_secs(20), "one active coordinator", || {
        harness.active_coordinators() == vec![id(1)]
    })
    .await;
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
                Ok(Ok(v)) => assert_eq!(v, expected(i), "entity {i} via {node}"),
                _ => still.push(i),
            }
        }
        remaining = still;
        if !remaining.is_empty() {
            sleep(Duration::from_millis(500)).await;
        }
    }
    start.elapsed()
}

use cluster::NodeId as Id;
use multinode::{Event, EventKind};
use sharding_coordinator::{CoordinatorRecord, Phase};
use sharding_core::Epoch;

/// Samples `active_coordinators()` every 100 ms for `duration`; returns the
/// largest number seen at one instant.
pub async fn max_active_over(harness: &MultiNode, duration: Duration) -> usize {
    let end = Instant::now() + duration;
    let mut max = 0;
    while Instant::now() < end {
        max = max.max(harness.active_coordinators().len());
        sleep(Duration::from_millis(100)).await;
    }
    max
}

/// Directives sent by `node` (with their send time and epoch).
pub fn directives_sent_by(events: &[Event], node: Id) -> Vec<(Instant, Epoch)> {
    events
        .iter()
        .filter(|e| e.node == node)
        .filter_map(|e| match &e.kind {
            EventKind::Coordinator(CoordinatorRecord::DirectiveSent { directive, .. }) => {
                Some((e.at, directive.epoch()))
            }
            _ => None,
        })
        .collect()
}

/// When `node`'s coordinator entered `phase`, in order.
pub fn phase_changes(events: &[Event], node: Id, phase: Phase) -> Vec<Instant> {
    events
        .iter()
        .filter(|e| e.node == node)
        .filter_map(|e| match &e.kind {
            EventKind::Coordinator(CoordinatorRecord::PhaseChanged { phase: p, .. })
                if *p == phase =>
            {
                Some(e.at)
            }
            _ => None,
        })
        .collect()
}

/// Asserts that no two grants of one lease overlap in the store's history.
pub fn assert_no_overlapping_grants(harness: &MultiNode) {
    let grants = harness.store().history();
    for (i, a) in grants.iter().enumerate() {
        for b in grants.iter().skip(i + 1) {
            if a.lease == b.lease {
                assert!(
                    a.until <= b.from || b.until <= a.from,
                    "grants overlap: {a:?} and {b:?}"
                );
            }
        }
    }
}

/// Sends one `add` to `count` entities through `via`, so every shard gets hosted.
pub async fn warm_up(harness: &MultiNode, via: Id, count: usize) {
    for i in 0..count {
        harness
            .region(via)
            .ask(CounterMsg::add(entity(i), 1))
            .await
            .unwrap()
            .unwrap();
    }
}
