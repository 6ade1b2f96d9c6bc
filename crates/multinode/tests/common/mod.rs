//! Shared by the scenario test files.

use multinode::scenario::{LeaseMode, RunConfig, Scenario};

/// Five nodes, one seed.
pub fn config(scenario: Scenario, seed: u64, lease: LeaseMode) -> RunConfig {
    RunConfig {
        scenario,
        seed,
        nodes: 5,
        lease,
        availability: false,
    }
}
