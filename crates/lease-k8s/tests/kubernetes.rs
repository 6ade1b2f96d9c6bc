//! Kubernetes-specific behaviour in real time: every scenario that needs no
//! emulator back door runs on the emulated API server and, when
//! `KUBEBUILDER_ASSETS` is set, on a real kube-apiserver.

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{NS, Store, client_for, lease, settings};
use lease_api::{Lease, LeaseStatus, LostReason, Succession, Suspension};
use lease_k8s::KubernetesLease;
use lease_k8s::emulator::ApiServer;
use serde_json::json;
use tokio::time::{Instant, sleep};

/// Runs `$scenario(&Store)` as two tests: on the emulator and on the real
/// API server (which skips, saying so, without `KUBEBUILDER_ASSETS`).
macro_rules! on_both {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_the_emulator() {
                let _serial = super::common::serial().await;
                super::$scenario(&super::Store::emulator()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_a_real_api_server() {
                let _serial = super::common::serial().await;
                if let Some(store) = super::Store::real().await {
                    super::$scenario(&store).await;
                }
            }
        }
    )*};
}

on_both!(
    api_server_down_briefly_keeps_the_lease,
    api_server_down_longer_loses_before_anyone_takes_over,
    two_contenders_for_an_expired_lease_one_wins,
    a_contender_with_a_clock_an_hour_ahead_never_takes_over_early,
    one_api_call_per_renew_in_steady_state,
    a_takeover_seen_on_renew_is_a_loss,
    release_clears_the_holder_and_the_next_owner_gets_a_higher_token,
    a_deleted_lease_never_gives_a_lower_token,
    a_successor_after_a_deletion_cannot_rule_out_a_suspension,
    a_suspension_restarts_nobodys_expiry_clock,
);

async fn wait_for_lost(l: &KubernetesLease, limit: Duration) -> Option<LeaseStatus> {
    let mut status = l.status();
    let found = tokio::time::timeout(
        limit,
        status.wait_for(|s| matches!(s, LeaseStatus::Lost(_))),
    )
    .await;
    found.ok().and_then(|r| r.ok().map(|s| s.clone()))
}

async fn api_server_down_briefly_keeps_the_lease(server: &Store) {
    let a = server.lease("brief", "a");
    assert!(a.acquire().await.unwrap());
    sleep(Duration::from_millis(400)).await;
    // Down for less than ttl - margin - heartbeat: renewals resume in time.
    server.set_down(true);
    let end = Instant::now() + Duration::from_millis(1000);
    while Instant::now() < end {
        assert!(a.check_alive(), "lost during a short outage");
        sleep(Duration::from_millis(25)).await;
    }
    server.set_down(false);
    sleep(Duration::from_secs(2)).await;
    assert!(a.check_alive());
    assert!(matches!(*a.status().borrow(), LeaseStatus::Held(_)));
}

async fn api_server_down_longer_loses_before_anyone_takes_over(server: &Store) {
    let a = server.lease("long", "a");
    let b = server.lease("long", "b");
    assert!(a.acquire().await.unwrap());
    assert!(!b.acquire().await.unwrap());
    server.set_down(true);
    let lost = tokio::spawn({
        let a = Arc::clone(&a);
        async move {
            wait_for_lost(&a, Duration::from_secs(5)).await;
            Instant::now()
        }
    });
    sleep(Duration::from_secs(3)).await;
    server.set_down(false);
    let lost_at = lost.await.unwrap();
    let won_at = loop {
        assert!(!(a.check_alive() && b.check_alive()), "two holders");
        let attempt = Instant::now();
        if b.acquire().await.unwrap_or(false) {
            break attempt;
        }
        sleep(Duration::from_millis(50)).await;
    };
    assert!(lost_at < won_at, "Lost must come first");
    assert!(!a.check_alive());
}

async fn two_contenders_for_an_expired_lease_one_wins(server: &Store) {
    for round in 0..3 {
        let name = format!("race-{round}");
        let holder = server.lease(&name, "holder");
        assert!(holder.acquire().await.unwrap());
        let b = server.lease(&name, "b");
        let c = server.lease(&name, "c");
        // Both see the record now; it stops changing when the holder goes.
        assert!(!b.acquire().await.unwrap());
        assert!(!c.acquire().await.unwrap());
        drop(holder);
        sleep(Duration::from_millis(2600)).await;
        let (rb, rc) = tokio::join!(b.acquire(), c.acquire());
        let wins = [rb.unwrap(), rc.unwrap()].iter().filter(|w| **w).count();
        assert_eq!(wins, 1, "round {round}");
    }
}

async fn a_contender_with_a_clock_an_hour_ahead_never_takes_over_early(server: &Store) {
    let a = server.lease("skew", "a");
    let ahead: lease_k8s::WallClock = Arc::new(|| {
        k8s_openapi::jiff::Timestamp::now() + k8s_openapi::jiff::SignedDuration::from_hours(1)
    });
    let b =
        KubernetesLease::with_wall_clock(server.client_for("b"), NS, settings("skew", "b"), ahead)
            .unwrap();
    assert!(a.acquire().await.unwrap());
    let end = Instant::now() + Duration::from_secs(6);
    while Instant::now() < end {
        assert!(!b.acquire().await.unwrap(), "took over a renewed lease");
        sleep(Duration::from_millis(100)).await;
    }
    assert!(a.check_alive());
}

async fn one_api_call_per_renew_in_steady_state(server: &Store) {
    let before = server.lease_requests("a").await;
    let a = server.lease("calls", "a");
    assert!(a.acquire().await.unwrap());
    let acquire_calls = server.lease_requests("a").await;
    assert_eq!(
        (
            acquire_calls.get - before.get,
            acquire_calls.create - before.create
        ),
        (1, 1)
    );
    // Steady state: the handle's watch (a LIST and a WATCH, opened when the
    // handle was made, possibly landing after the acquire on a slow
    // machine) is established well within a second.
    sleep(Duration::from_millis(1000)).await;
    let steady = server.lease_requests("a").await;
    sleep(Duration::from_millis(3150)).await;
    let after = server.lease_requests("a").await;
    let renews = after.update - steady.update;
    assert!(
        (9..=11).contains(&renews),
        "{renews} renew PUTs in ~10 heartbeats"
    );
    assert_eq!(after.get, steady.get, "no GET before a renew");
    assert_eq!(
        after.total() - steady.total(),
        renews,
        "exactly one call per renew: {steady:?} -> {after:?}"
    );
}

async fn a_takeover_seen_on_renew_is_a_loss(server: &Store) {
    let a = server.lease("stolen", "a");
    assert!(a.acquire().await.unwrap());
    // Someone rewrites the record behind our back.
    let mut object = server.get("stolen").await.unwrap();
    object["spec"]["holderIdentity"] = json!("intruder");
    assert_eq!(server.update(object).await, 200);
    let lost = wait_for_lost(&a, Duration::from_secs(2)).await;
    assert_eq!(
        lost,
        Some(LeaseStatus::Lost(LostReason::TakenOver {
            by: Some("intruder".into())
        }))
    );
    assert!(!a.check_alive());
}

/// A Lease deleted under its holder (an admin, a namespace clean-up, a
/// GitOps prune): the holder loses it, and whoever takes it next, having
/// never seen the old object, gets a token above every earlier one.
async fn a_deleted_lease_never_gives_a_lower_token(server: &Store) {
    let a = server.lease("deleted", "a");
    let b = server.lease("deleted", "b");
    let c = server.lease("deleted", "c");
    assert!(a.acquire().await.unwrap());
    let first = a.fencing_token().unwrap();
    // A handover, so the old object's holder count is above zero.
    assert!(a.release().await.unwrap());
    assert!(b.acquire().await.unwrap());
    let second = b.fencing_token().unwrap();
    assert!(second > first);
    sleep(Duration::from_millis(700)).await; // a few renewals
    assert_eq!(server.delete("deleted").await, 200);
    let lost = wait_for_lost(&b, Duration::from_secs(2)).await;
    assert_eq!(lost, Some(LeaseStatus::Lost(LostReason::Revoked)));
    assert!(!b.check_alive());
    // c never saw the old object: it creates a fresh one.
    assert!(c.acquire().await.unwrap());
    let third = c.fencing_token().unwrap();
    assert!(
        third > second && third > first,
        "token went back: {first} then {second}, after the deletion {third}"
    );
    let stored = server.get("deleted").await.unwrap();
    assert_eq!(stored["spec"]["holderIdentity"], "c");
    // b, still renewing nothing, does not come back.
    sleep(Duration::from_millis(700)).await;
    assert!(!b.check_alive() && c.check_alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried_until_the_deadline() {
    let _serial = common::serial().await;
    let server = ApiServer::new();
    let a = lease(&server, "flaky", "a");
    assert!(a.acquire().await.unwrap());
    server.fail_next("a", 2, 503);
    sleep(Duration::from_secs(2)).await;
    assert!(a.check_alive(), "two failed renewals are absorbed");
    server.fail_next("a", 1000, 500);
    assert!(wait_for_lost(&a, Duration::from_secs(3)).await.is_some());
}

async fn release_clears_the_holder_and_the_next_owner_gets_a_higher_token(server: &Store) {
    let a = server.lease("handover", "a");
    let b = server.lease("handover", "b");
    assert!(a.acquire().await.unwrap());
    let first = a.fencing_token().unwrap();
    assert!(a.release().await.unwrap());
    let stored = server.get("handover").await.unwrap();
    assert!(
        stored["spec"]
            .get("holderIdentity")
            .is_none_or(|h| h.is_null())
    );
    assert_eq!(stored["spec"]["leaseDurationSeconds"], 1);
    assert!(
        b.acquire().await.unwrap(),
        "a released lease is free at once"
    );
    assert!(b.fencing_token().unwrap() > first);
    let renew_time = server.get("handover").await.unwrap()["spec"]["renewTime"]
        .as_str()
        .unwrap()
        .to_owned();
    // MicroTime: UTC with exactly six fractional digits.
    let fraction = renew_time.trim_end_matches('Z').rsplit('.').next().unwrap();
    assert!(
        renew_time.ends_with('Z') && fraction.len() == 6,
        "{renew_time}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_client_reaches_the_emulator_through_a_kubeconfig() {
    let _serial = common::serial().await;
    let server = ApiServer::new();
    let endpoint = server.endpoint("kubeconfig").unwrap();
    let client = endpoint.client(NS).await.unwrap();
    let a = KubernetesLease::new(client, NS, settings("via-kubeconfig", "a")).unwrap();
    assert!(a.acquire().await.unwrap());
    assert_eq!(server.counts("kubeconfig").create, 1);
}

#[test]
fn bad_names_are_rejected_with_the_field() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _guard = rt.enter();
    let server = ApiServer::new();
    let client = client_for(&server, "x");
    let bad = KubernetesLease::new(client.clone(), NS, settings("Bad_Name", "x"))
        .err()
        .unwrap();
    assert_eq!(bad.field(), "lease_name");
    let bad = KubernetesLease::new(client, "Bad.Namespace", settings("ok", "x"))
        .err()
        .unwrap();
    assert_eq!(bad.field(), "namespace");
}

#[test]
fn owner_defaults_to_hostname() {
    match std::env::var("HOSTNAME") {
        Ok(h) if !h.trim().is_empty() => {
            assert_eq!(KubernetesLease::owner_from_hostname().unwrap(), h)
        }
        _ => assert_eq!(
            KubernetesLease::owner_from_hostname().unwrap_err().field(),
            "owner_name"
        ),
    }
}

/// A deleted Lease takes its suspension mark, if it had one, with it; a
/// contender that saw its holder cannot tell, so its tenure reports
/// `Unknown` (members may still be bridging on a suspension).
async fn a_successor_after_a_deletion_cannot_rule_out_a_suspension(server: &Store) {
    let a = server.lease("deleted-suspended", "a");
    let b = server.lease("deleted-suspended", "b");
    assert!(a.acquire().await.unwrap());
    let token = a.fencing_token().unwrap();
    assert!(!b.acquire().await.unwrap(), "b saw a holding it");
    assert_eq!(b.suspend(token).await.unwrap(), Suspension::Suspended);
    assert_eq!(server.delete("deleted-suspended").await, 200);
    let end = Instant::now() + Duration::from_secs(6);
    while !b.acquire().await.unwrap() {
        assert!(Instant::now() < end, "the deleted lease never became free");
        sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(b.succession(), Some(Succession::Unknown));
}

/// A suspension is not a renewal: a contender watching the Lease judges
/// its expiry from the holder's last renew, not from the suspension, and
/// the record it takes over says the term was suspended.
async fn a_suspension_restarts_nobodys_expiry_clock(server: &Store) {
    let a = server.lease("suspended-clock", "a");
    let b = server.lease("suspended-clock", "b");
    assert!(a.acquire().await.unwrap());
    let token = a.fencing_token().unwrap();
    b.observe(); // b watches, so it sees every renew of a
    sleep(Duration::from_millis(700)).await; // a few renewals
    server.cut("a");
    let cut = Instant::now();
    sleep(Duration::from_millis(1500)).await;
    assert_eq!(b.suspend(token).await.unwrap(), Suspension::Suspended);
    let stored = server.get("suspended-clock").await.unwrap();
    assert_eq!(
        stored["metadata"]["annotations"][lease_k8s::SUSPENDED],
        token.get().to_string()
    );
    let end = cut + Duration::from_secs(8);
    while !b.acquire().await.unwrap() {
        assert!(
            Instant::now() < end,
            "the suspended lease never became free"
        );
        sleep(Duration::from_millis(50)).await;
    }
    // ttl 2 s after a's last renew (before the cut); a clock restarted by
    // the suspension would run until 1.5 s + ttl after the cut.
    let waited = cut.elapsed();
    assert!(
        waited < Duration::from_millis(2750),
        "taken {waited:?} after the holder went silent: the suspension restarted the clock"
    );
    assert_eq!(b.succession(), Some(Succession::AfterSuspendedTerm));
    server.heal("a");
}
