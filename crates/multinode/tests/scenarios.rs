//! Every scenario once with the memory lease; determinism; the lease-less split brain.

use multinode::scenario::{LeaseMode, Scenario, run};

mod common;

use common::config;

#[test]
fn every_scenario_keeps_the_invariants_with_the_memory_lease() {
    let mut failures = Vec::new();
    for &scenario in Scenario::ALL {
        let report = run(config(scenario, 1, LeaseMode::Memory));
        eprintln!(
            "{:<22} max_active={} {:?} failover={:?} asks ok/failed={}/{} double-hosted={:.1}s",
            report.scenario,
            report.max_active,
            report.invariants,
            report.failover_ttls,
            report.asks_ok,
            report.asks_failed,
            report.double_hosted_shard_seconds
        );
        if !report.passed {
            failures.push((report.scenario, report.invariants.clone()));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn the_same_seed_gives_the_same_history() {
    let a = run(config(Scenario::Nemesis, 7, LeaseMode::Memory));
    let b = run(config(Scenario::Nemesis, 7, LeaseMode::Memory));
    assert_eq!(a.history_digest, b.history_digest);
    let c = run(config(Scenario::Nemesis, 8, LeaseMode::Memory));
    assert_ne!(a.history_digest, c.history_digest);
}

#[test]
fn without_a_lease_the_suite_sees_the_split_brain() {
    let report = run(config(Scenario::SymmetricSplit, 1, LeaseMode::None));
    assert_eq!(report.max_active, 2);
    assert!(
        report.invariants[0].starts_with("FAIL"),
        "{:?}",
        report.invariants
    );
    assert!(
        report.invariants[5].starts_with("FAIL"),
        "two singleton instances (I7): {:?}",
        report.invariants
    );
    assert_eq!(report.max_singletons, 2);
    assert!(
        report.passed,
        "breaking I1 and I7 is the expected demonstration without a lease: {:?}",
        report.invariants
    );
}

#[test]
fn the_new_fault_schedules_do_what_they_say() {
    // A scenario that never reaches its fault would pass vacuously.
    let report = run(config(Scenario::KillDuringRecovery, 1, LeaseMode::Memory));
    assert!(
        report
            .faults
            .iter()
            .any(|f| f.2.contains("while it recovers")),
        "no coordinator was caught recovering: {:?}",
        report.faults
    );
    assert!(report.passed, "{:?}", report.invariants);
    let report = run(config(
        Scenario::LeaderRestartBeforeDown,
        2,
        LeaseMode::Memory,
    ));
    assert!(
        report
            .faults
            .iter()
            .any(|f| f.2.contains("restart node-1 after 5s")),
        "{:?}",
        report.faults
    );
}
