//! The split brain, with the in-memory lease: exactly one active coordinator.
//! `sharding_basics::without_a_lease_a_partition_gives_two_active_coordinators`
//! is the "before"; these are the "after".

use std::time::Duration;

use multinode::{EventKind, HarnessSettings, MultiNode, owner_of};
use sharding_coordinator::{CoordinatorRecord, Phase};
use sharding_core::RegionEvent;
use tokio::time::Instant;

use crate::support::*;

const LEASE: &str = "counter-coordinator";

fn lease_settings(seed: u64) -> HarnessSettings {
    let mut s = memory_lease(seed);
    s.region.passivate_after = Duration::from_secs(3600);
    s
}

async fn five_nodes(seed: u64) -> MultiNode {
    let harness = MultiNode::start(5, lease_settings(seed));
    settled(&harness).await;
    warm_up(&harness, id(3), 200).await;
    harness
}

#[tokio::test(start_paused = true)]
async fn partition_3_2_keeps_exactly_one_active_coordinator() {
    let harness = five_nodes(21).await;
    let partitioned_at = Instant::now();
    harness.partition(&[&[id(1), id(2), id(3)], &[id(4), id(5)]]);

    // Long enough for each side to down the other and elect its own leader.
    assert!(max_active_over(&harness, Duration::from_secs(60)).await <= 1);
    assert_eq!(
        harness.leader_of(id(4)),
        Some(id(4)),
        "the minority side has its own leader"
    );
    assert_eq!(harness.active_coordinators(), vec![id(1)]);
    assert_eq!(
        harness.coordinator_status(id(4)).map(|s| s.phase),
        Some(Phase::Acquiring),
        "the other leader stays passive"
    );
    // Only the lease holder's side directs regions.
    let events = harness.history().events();
    for e in events.iter().filter(|e| e.at >= partitioned_at) {
        if let EventKind::Coordinator(CoordinatorRecord::DirectiveSent { directive, .. }) = &e.kind
        {
            assert_eq!(
                e.node,
                id(1),
                "{} sent {directive:?} during the partition",
                e.node
            );
        }
    }

    harness.heal();
    assert!(max_active_over(&harness, Duration::from_secs(60)).await <= 1);
    assert!(harness.converge(Duration::from_secs(30)).await);
    assert_eq!(harness.active_coordinators(), vec![id(1)]);
    assert_no_overlapping_grants(&harness);
}

#[tokio::test(start_paused = true)]
async fn lease_store_unreachable_from_the_active_side() {
    let harness = five_nodes(22).await;
    harness.partition(&[&[id(1), id(2), id(3)], &[id(4), id(5)]]);
    for n in [1, 2, 3] {
        harness.isolate_from_lease_store(id(n));
    }
    assert!(max_active_over(&harness, Duration::from_secs(90)).await <= 1);
    assert_eq!(
        harness.active_coordinators(),
        vec![id(4)],
        "the side that reaches the store leads"
    );

    let events = harness.history().events();
    let grants = harness.store().history();
    let old = grants.iter().find(|g| g.owner == owner_of(id(1))).unwrap();
    let new = grants.iter().find(|g| g.owner == owner_of(id(4))).unwrap();
    let passive_at = *phase_changes(&events, id(1), Phase::Acquiring)
        .last()
        .unwrap();
    assert!(
        passive_at < old.until,
        "passive at {passive_at:?}, store expiry {:?}",
        old.until
    );
    assert!(new.from >= old.until, "taken over only after expiry");
    assert!(new.token > old.token);
    assert!(
        directives_sent_by(&events, id(1))
            .iter()
            .all(|(at, _)| *at < passive_at),
        "nothing directed after going passive"
    );
    assert_eq!(harness.store().holder(LEASE).unwrap().0, owner_of(id(4)));
    assert_no_overlapping_grants(&harness);
}

#[tokio::test(start_paused = true)]
async fn a_paused_coordinator_is_fenced_off() {
    let harness = five_nodes(23).await;
    let old_epoch = harness.coordinator_status(id(1)).unwrap().epoch.unwrap();
    assert!(!directives_sent_by(&harness.history().events(), id(1)).is_empty());

    // Frozen past its ttl: the others take over with a newer fencing token.
    let resumed_at_least = Instant::now() + Duration::from_secs(60);
    let replayed = harness.pause(id(1), Duration::from_secs(60)).await;
    assert_eq!(
        replayed, 4,
        "its in-flight directive reaches every other region"
    );
    assert!(Instant::now() >= resumed_at_least);
    let new_epoch = harness.region(id(3)).max_epoch();
    assert!(
        new_epoch > old_epoch,
        "a newer coordinator took over: {new_epoch} > {old_epoch}"
    );

    tokio::time::sleep(Duration::from_millis(10)).await;
    let events = harness.history().events();
    let after_resume: Vec<_> = events.iter().filter(|e| e.at >= resumed_at_least).collect();
    let refused = after_resume
        .iter()
        .filter(|e| matches!(&e.kind, EventKind::Region(RegionEvent::DirectiveRefused { epoch, .. }) if *epoch == old_epoch))
        .count();
    assert_eq!(refused, 4, "every other region refused the stale directive");
    let obeyed_stale = after_resume.iter().any(|e| {
        matches!(&e.kind, EventKind::Region(RegionEvent::DirectiveObeyed { epoch, .. }) if *epoch < new_epoch)
            && e.node != id(1)
    });
    assert!(!obeyed_stale, "no region obeyed the paused coordinator");
    assert!(harness.active_coordinators().len() <= 1);
    assert_no_overlapping_grants(&harness);
}
