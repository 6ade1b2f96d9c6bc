//! The lease gate of the coordinator, on a small in-process cluster.

use std::time::Duration;

use multinode::{CounterMsg, HarnessSettings, MultiNode, owner_of};
use sharding_coordinator::Phase;
use sharding_coordinator::lease_api::Lease;
use sharding_core::Epoch;
use tokio::time::{Instant, sleep};

use crate::support::*;

fn phase_of(harness: &MultiNode, node: cluster::NodeId) -> Option<Phase> {
    harness.coordinator_status(node).map(|s| s.phase)
}

#[tokio::test(start_paused = true)]
async fn acquire_blocks_coordinator_activity() {
    let settings = memory_lease(11);
    // An outsider holds the lease before the cluster starts.
    let template = settings.lease.clone().unwrap();
    let outsider = settings
        .store
        .lease(template.with_owner("outsider").unwrap());
    assert!(outsider.acquire().await.unwrap());

    let mut s = settings;
    s.region.ask_timeout = Duration::from_secs(120);
    let harness = MultiNode::start(3, s);
    assert!(harness.converge(Duration::from_secs(20)).await);
    let region = harness.region(id(2)).clone();
    let pending = tokio::spawn(async move { region.ask(CounterMsg::add("e", 1)).await });

    // The leader cannot get the lease: nobody is active, nothing is directed.
    assert_eq!(max_active_over(&harness, Duration::from_secs(40)).await, 0);
    assert_eq!(harness.leader_of(id(2)), Some(id(1)));
    assert!(directives_sent_by(&harness.history().events(), id(1)).is_empty());
    assert!(!pending.is_finished(), "the ask waits");
    assert_eq!(phase_of(&harness, id(1)), Some(Phase::Acquiring));

    let released_at = Instant::now();
    assert!(outsider.release().await.unwrap());
    eventually(Duration::from_secs(15), "active after release", || {
        harness.active_coordinators() == vec![id(1)]
    })
    .await;
    // The query buffered while the lease was elsewhere is answered.
    assert_eq!(pending.await.unwrap().unwrap(), Ok(1));
    assert!(released_at.elapsed() < Duration::from_secs(15));
}

fn lease_settings(seed: u64) -> HarnessSettings {
    let mut s = memory_lease(seed);
    s.region.passivate_after = Duration::from_secs(3600);
    s
}

#[tokio::test(start_paused = true)]
async fn lost_lease_stops_activity() {
    let mut s = lease_settings(12);
    // Many shards, so fresh entities keep needing the coordinator.
    s.region.num_shards = 10_000;
    s.region.ask_timeout = Duration::from_secs(1);
    let harness = MultiNode::start(3, s);
    settled(&harness).await;
    // A new coordinator places no shard before its predecessors' grants
    // could have lapsed (tenure x 1.01 + margin), longer than these asks wait.
    sleep(Duration::from_secs(4)).await;
    warm_up(&harness, id(2), 20).await;

    harness.isolate_from_lease_store(id(1));
    let lease = harness.lease(id(1)).unwrap();
    let deadline = lease.valid_until().unwrap();
    // Keep asking for fresh entities through the loss and well past it.
    let mut fresh = 0;
    while Instant::now() < deadline + Duration::from_secs(10) {
        let _ = harness
            .region(id(2))
            .ask(CounterMsg::add(format!("fresh-{fresh}"), 1))
            .await;
        fresh += 1;
        sleep(Duration::from_millis(100)).await;
    }
    let events = harness.history().events();
    let sent = directives_sent_by(&events, id(1));
    assert!(
        sent.iter()
            .any(|(at, _)| *at > deadline - Duration::from_secs(5)),
        "traffic kept the coordinator busy"
    );
    assert!(
        sent.iter().all(|(at, _)| *at < deadline),
        "a directive left after the lease's validity deadline"
    );
    let passive_at = *phase_changes(&events, id(1), Phase::Acquiring)
        .last()
        .unwrap();
    assert!(
        passive_at <= deadline,
        "passive at {passive_at:?}, deadline {deadline:?}"
    );
    assert!(harness.active_coordinators().is_empty());

    // Back in touch with the store: it retries and serves again.
    harness.reconnect_to_lease_store(id(1));
    eventually(Duration::from_secs(15), "active again", || {
        harness.active_coordinators() == vec![id(1)]
    })
    .await;
}

/// Node 0 joins; node 1, the leader so far, sees it take the lead.
async fn lower_id_takes_the_lead(harness: &mut MultiNode) {
    harness.start_node(id(0));
    eventually(
        Duration::from_secs(20),
        "node 1 sees the new leader",
        || harness.leader_of(id(1)) == Some(id(0)),
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn release_on_leave() {
    let mut harness = MultiNode::start(2, lease_settings(13));
    settled(&harness).await;
    // A node with a lower id joins and becomes the leader: node 1 releases.
    lower_id_takes_the_lead(&mut harness).await;
    let lost_leadership = Instant::now();
    eventually(Duration::from_secs(2), "released", || {
        harness
            .store()
            .holder("counter-coordinator")
            .is_none_or(|(o, _)| o != owner_of(id(1)))
    })
    .await;
    let grant = harness
        .store()
        .history()
        .into_iter()
        .find(|g| g.owner == owner_of(id(1)))
        .unwrap();
    assert!(
        grant.until <= lost_leadership + Duration::from_secs(1),
        "released, not expired: {grant:?}"
    );
    eventually(Duration::from_secs(15), "new leader active", || {
        harness.active_coordinators() == vec![id(0)]
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn failed_release_never_blocks() {
    let mut harness = MultiNode::start(2, lease_settings(14));
    settled(&harness).await;
    // Node 1's store calls now hang: its release will never complete.
    harness.store().black_hole(&owner_of(id(1)));
    lower_id_takes_the_lead(&mut harness).await;
    eventually(Duration::from_millis(200), "node 1 standby at once", || {
        harness.coordinator_status(id(1)).map(|s| s.phase) == Some(Phase::Standby)
    })
    .await;
    // Its lease expires in the store; then the new leader gets it.
    eventually(Duration::from_secs(45), "new leader active", || {
        harness.active_coordinators() == vec![id(0)]
    })
    .await;
    assert_no_overlapping_grants(&harness);
}

#[tokio::test(start_paused = true)]
async fn buffered_queries_served_after_reacquire() {
    let mut s = lease_settings(15);
    s.region.ask_timeout = Duration::from_secs(120);
    let harness = MultiNode::start(3, s);
    settled(&harness).await;

    harness.isolate_from_lease_store(id(1));
    eventually(Duration::from_secs(40), "lost", || {
        harness.coordinator_status(id(1)).map(|s| s.phase) == Some(Phase::Acquiring)
    })
    .await;
    let region = harness.region(id(2)).clone();
    let pending = tokio::spawn(async move { region.ask(CounterMsg::add("late", 7)).await });
    sleep(Duration::from_secs(10)).await;
    assert!(!pending.is_finished(), "no active coordinator, no answer");

    harness.reconnect_to_lease_store(id(1));
    let answered = tokio::time::timeout(Duration::from_secs(20), pending).await;
    assert_eq!(answered.unwrap().unwrap().unwrap(), Ok(7));
    assert_eq!(harness.active_coordinators(), vec![id(1)]);
}

#[tokio::test(start_paused = true)]
async fn acquire_failure_retries() {
    let s = lease_settings(16);
    // Node 1's store calls hang from the start: every acquire times out (5 s).
    s.store.black_hole(&owner_of(id(1)));
    let harness = MultiNode::start(3, s);
    assert!(harness.converge(Duration::from_secs(20)).await);
    let start = Instant::now();
    let before = harness.store().calls(&owner_of(id(1))).acquire;
    sleep(Duration::from_secs(60)).await;
    let attempts = harness.store().calls(&owner_of(id(1))).acquire - before;
    // One attempt per timeout (5 s) + retry interval (5 s), for each of
    // node 1's two leases under the same owner: the coordinator's and the
    // harness singleton's.
    assert!(
        (10..=14).contains(&attempts),
        "{attempts} attempts in {:?}",
        start.elapsed()
    );
    assert!(harness.active_coordinators().is_empty());

    harness.store().reconnect(&owner_of(id(1)));
    eventually(
        Duration::from_secs(20),
        "active once the store answers",
        || harness.active_coordinators() == vec![id(1)],
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn no_lease_path_unchanged() {
    let harness = MultiNode::start(3, settings(17));
    settled(&harness).await;
    assert!(harness.lease(id(1)).is_none());
    let events = harness.history().events();
    assert!(
        phase_changes(&events, id(1), Phase::Acquiring).is_empty(),
        "no lease, no Acquiring"
    );
    assert_eq!(phase_changes(&events, id(1), Phase::Recovering).len(), 1);
    assert_eq!(
        harness.coordinator_status(id(1)).unwrap().epoch,
        Some(Epoch(1))
    );
    assert_eq!(
        harness
            .region(id(3))
            .ask(CounterMsg::add("x", 2))
            .await
            .unwrap(),
        Ok(2)
    );
}
