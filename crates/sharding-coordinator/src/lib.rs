//! The ShardCoordinator and the `ClusterSharding` entry point.
//!
//! A coordinator runs for every entity type on every node; only the one on
//! the leader of its cluster view is active (a warm standby elsewhere). It
//! allocates shards through a strategy, recovers allocations from region
//! registrations after a failover, rebalances, and hands shards off on
//! graceful shutdown. Every directive carries its epoch (I3).
//!
//! With a lease in [`ShardingSettings::lease`], only the leader that holds it
//! is active (I1, I2): the [`gate::LeaseGate`] decides, and every handler and
//! every directive checks `is_active() = is_leader() && lease.check_alive()`.
//! The epoch is then the lease's fencing token.

mod coordinator;
mod settings;
mod sharding;
mod status;

/// The lease gate, shared with the cluster singleton (it lives in `lease-api`).
pub use lease_api::gate;
pub use settings::{CoordinatorSettings, ShardingSettings};
pub use sharding::{ClusterSharding, CoordinatorHandle, StartError};
pub use status::{CoordinatorObserver, CoordinatorRecord, CoordinatorStatus, Phase};

/// The lease contract, re-exported so users need one dependency.
pub use lease_api;
/// The Kubernetes lease backend (feature `lease-k8s`).
#[cfg(feature = "lease-k8s")]
pub use lease_k8s;
/// The in-memory lease backend (feature `lease-memory`).
#[cfg(feature = "lease-memory")]
pub use lease_memory;
