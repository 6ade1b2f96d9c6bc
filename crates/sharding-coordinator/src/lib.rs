//! The ShardCoordinator and the `ClusterSharding` entry point.
//!
//! A coordinator runs for every entity type on every node; only the one on
//! the leader of its cluster view is active (a warm standby elsewhere). It
//! allocates shards through a strategy, recovers allocations from region
//! registrations after a failover, rebalances, and hands shards off on
//! graceful shutdown. Every directive carries its epoch (I3).

mod coordinator;
mod settings;
mod sharding;
mod status;

pub use settings::{CoordinatorSettings, ShardingSettings};
pub use sharding::{ClusterSharding, CoordinatorHandle, StartError};
pub use status::{CoordinatorObserver, CoordinatorRecord, CoordinatorStatus, Phase};
