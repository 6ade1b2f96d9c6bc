//! Scenarios with the Kubernetes lease in real time. A file of its own: test
//! binaries run one after another, so no CPU-heavy paused-time run competes
//! with these timing margins (ttl 2 s).

use multinode::scenario::{LeaseMode, Scenario, run};

mod common;

use common::config;

#[test]
fn the_kubernetes_lease_keeps_the_invariants_in_real_time() {
    for scenario in [Scenario::StoreUnreachable, Scenario::StopTheWorldPause] {
        let report = run(config(scenario, 3, LeaseMode::Kubernetes));
        assert!(
            report.passed,
            "{}: {:?}",
            report.scenario, report.invariants
        );
        assert_eq!(report.max_active, 1, "{}", report.scenario);
    }
}
