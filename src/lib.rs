//! Cluster sharding with a lease-guarded ShardCoordinator.
//!
//! This facade re-exports the workspace crates; depend on it, or on the
//! individual crates. Lease backends come in by feature: `lease-memory`
//! (default) and `lease-k8s`; the cluster singleton by `singleton` (default).

pub use cluster;
#[cfg(feature = "singleton")]
pub use cluster_singleton;
pub use lease_api;
#[cfg(feature = "lease-k8s")]
pub use lease_k8s;
#[cfg(feature = "lease-memory")]
pub use lease_memory;
pub use sharding_coordinator;
pub use sharding_core;

pub use sharding_coordinator::{ClusterSharding, ShardingSettings};
pub use sharding_core::{Entity, EntityId, ShardRegion};

/// The README's Rust examples, compiled and run by `cargo test --doc`.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
