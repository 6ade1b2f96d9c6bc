//! Settings of a sharded entity type.

use std::sync::Arc;
use std::time::Duration;

use lease_api::Lease;
use sharding_core::coordinator::{LeastShardAllocationStrategy, ShardAllocationStrategy};
use sharding_core::{
    Entity, EntityId, MessageExtractor, RegionObserver, RegionSettings, TenureSettings, TypeName,
};

use crate::CoordinatorObserver;

/// Tunables of the coordinator. Defaults: the table in `docs/architecture.md`.
#[derive(Clone)]
pub struct CoordinatorSettings {
    /// A handoff not finished within this is abandoned; the shard stays (default 60 s).
    pub handoff_timeout: Duration,
    /// How often the strategy is asked for a rebalance (default 10 s).
    pub rebalance_interval: Duration,
    /// A new coordinator allocates nothing until every member registered or
    /// this passed (default 5 s).
    pub recovery_timeout: Duration,
    /// Requests buffered while acquiring the lease or recovering (default 100 000).
    pub buffer_size: usize,
    /// While leader without the lease, how often to try acquiring it (default 5 s).
    pub lease_retry_interval: Duration,
    /// With a lease: how long a leader whose side of a partition is a
    /// minority leaves the lease to the majority before asking for it. If
    /// nobody took it, the minority takes it then, so a cluster that lost
    /// most of its nodes keeps serving. Keep it at least the lease's ttl
    /// (default 30 s, the default ttl): a lease held by a crashed node
    /// frees up within a ttl of the split, and the majority must get it
    /// first, or the minority keeps it until the partition heals.
    pub minority_lease_delay: Duration,
    /// How often unanswered directives (`HostShard`, `BeginHandOff`,
    /// `HandOff`) are sent again, and members with no registration are asked
    /// to register (default 2 s, the region's retry interval).
    pub retry_interval: Duration,
    /// Where shards go and which move.
    pub strategy: Arc<dyn ShardAllocationStrategy>,
}

impl Default for CoordinatorSettings {
    fn default() -> Self {
        Self {
            handoff_timeout: Duration::from_secs(60),
            rebalance_interval: Duration::from_secs(10),
            recovery_timeout: Duration::from_secs(5),
            buffer_size: 100_000,
            lease_retry_interval: Duration::from_secs(5),
            minority_lease_delay: Duration::from_secs(30),
            retry_interval: Duration::from_secs(2),
            strategy: Arc::new(LeastShardAllocationStrategy::default()),
        }
    }
}

/// Everything [`crate::ClusterSharding::start`] needs for one entity type.
pub struct ShardingSettings<E: Entity> {
    /// The entity type's name; the same on every node.
    pub type_name: TypeName,
    /// Maps messages to entities (and entities to shards).
    pub extractor: Arc<dyn MessageExtractor<E::Message>>,
    /// Builds an entity for an id.
    pub factory: Arc<dyn Fn(&EntityId) -> E + Send + Sync>,
    /// Region tunables.
    pub region: RegionSettings,
    /// Coordinator tunables.
    pub coordinator: CoordinatorSettings,
    /// The lease that guards the coordinator; `None` keeps the leader-only
    /// behaviour unchanged (I6). Each node passes its own handle on the
    /// shared lease (same lease name, its own owner name).
    pub lease: Option<Arc<dyn Lease>>,
    /// Shard tenure, used whenever `lease` is set: a region hosts shards
    /// only while the active coordinator's grant is valid, and the
    /// coordinator re-homes a lost region's shards only once that grant has
    /// surely ended, so no shard runs on two nodes even while partitioned (I5).
    pub tenure: TenureSettings,
    /// Observes region events (histories, metrics).
    pub region_observer: Option<RegionObserver>,
    /// Observes coordinator events (histories, metrics).
    pub coordinator_observer: Option<CoordinatorObserver>,
}

impl<E: Entity> ShardingSettings<E> {
    /// Settings with defaults for `type_name`, routing by `extractor`, building
    /// entities with `factory`.
    pub fn new(
        type_name: impl Into<TypeName>,
        extractor: impl MessageExtractor<E::Message>,
        factory: impl Fn(&EntityId) -> E + Send + Sync + 'static,
    ) -> Self {
        Self {
            type_name: type_name.into(),
            extractor: Arc::new(extractor),
            factory: Arc::new(factory),
            region: RegionSettings::default(),
            coordinator: CoordinatorSettings::default(),
            lease: None,
            tenure: TenureSettings::default(),
            region_observer: None,
            coordinator_observer: None,
        }
    }
}
