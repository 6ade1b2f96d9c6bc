//! The store's own behaviour: ground-truth history, revocation, latency.

use std::time::Duration;

use lease_api::{Lease, LeaseSettings, LeaseStatus, LostReason};
use lease_memory::InMemoryLeaseStore;
use tokio::time::{Instant, sleep};

fn settings(owner: &str) -> LeaseSettings {
    LeaseSettings::builder("coordinator", owner)
        .build()
        .expect("valid settings")
}

#[tokio::test(start_paused = true)]
async fn history_records_each_tenure_without_overlap() {
    let store = InMemoryLeaseStore::new();
    let a = store.lease(settings("a"));
    let b = store.lease(settings("b"));
    let t0 = Instant::now();
    assert!(a.acquire().await.unwrap());
    sleep(Duration::from_secs(10)).await;
    assert!(a.release().await.unwrap());
    let released_at = Instant::now();
    assert!(b.acquire().await.unwrap());
    sleep(Duration::from_secs(45)).await;

    let history = store.history();
    assert_eq!(history.len(), 2, "{history:?}");
    assert_eq!((history[0].owner.as_str(), history[0].from), ("a", t0));
    assert_eq!(history[0].until, released_at);
    assert_eq!(history[1].owner, "b");
    assert!(history[1].token > history[0].token);
    assert!(history[1].until > Instant::now(), "b keeps renewing");
    assert_eq!(store.holder_at("coordinator", t0).as_deref(), Some("a"));
    assert_eq!(
        store.holder_at("coordinator", Instant::now()).as_deref(),
        Some("b")
    );
}

#[tokio::test(start_paused = true)]
async fn revoke_is_noticed_at_the_next_renew() {
    let store = InMemoryLeaseStore::new();
    let a = store.lease(settings("a"));
    assert!(a.acquire().await.unwrap());
    assert_eq!(store.revoke("coordinator").as_deref(), Some("a"));
    assert_eq!(store.holder("coordinator"), None);
    let mut status = a.status();
    let lost = tokio::time::timeout(
        a.settings().heartbeat_interval() * 2,
        status.wait_for(|s| matches!(s, LeaseStatus::Lost(_))),
    )
    .await
    .expect("loss noticed within a heartbeat")
    .unwrap()
    .clone();
    assert_eq!(lost, LeaseStatus::Lost(LostReason::Revoked));
    assert!(!a.check_alive());
    assert_eq!(store.revoke("coordinator"), None, "nothing left to revoke");
}

#[tokio::test(start_paused = true)]
async fn takeover_is_reported_with_the_new_holder() {
    let store = InMemoryLeaseStore::new();
    let a = store.lease(settings("a"));
    let b = store.lease(settings("b"));
    assert!(a.acquire().await.unwrap());
    // a is frozen out long enough for its record to expire, then b takes over.
    store.black_hole("a");
    sleep(Duration::from_secs(31)).await;
    assert!(!a.check_alive());
    assert!(b.acquire().await.unwrap());
    store.reconnect("a");
    assert!(
        !a.acquire().await.unwrap(),
        "a must not steal b's live lease"
    );
    assert_eq!(store.holder("coordinator").unwrap().0, "b");
}

#[tokio::test(start_paused = true)]
async fn latency_delays_every_call() {
    let store = InMemoryLeaseStore::new();
    let a = store.lease(settings("a"));
    store.set_latency("a", Duration::from_millis(700));
    let start = Instant::now();
    assert!(a.acquire().await.unwrap());
    assert_eq!(Instant::now() - start, Duration::from_millis(700));
}

#[tokio::test(start_paused = true)]
async fn validity_deadline_counts_from_request_start() {
    let store = InMemoryLeaseStore::new();
    let a = store.lease(settings("a"));
    store.set_latency("a", Duration::from_secs(2));
    let start = Instant::now();
    assert!(a.acquire().await.unwrap());
    let s = a.settings();
    assert_eq!(a.valid_until(), Some(start + s.ttl() - s.safety_margin()));
}

#[tokio::test(start_paused = true)]
async fn exactly_one_store_call_per_renew() {
    let store = InMemoryLeaseStore::new();
    let a = store.lease(settings("a"));
    assert!(a.acquire().await.unwrap());
    sleep(Duration::from_millis(31_500)).await;
    let calls = store.calls("a");
    assert_eq!(calls.acquire, 1);
    // 31.5 s at a 3 s heartbeat: 10 renewals, one call each.
    assert_eq!(calls.renew, 10, "{calls:?}");
    assert_eq!(calls.release, 0);
}
