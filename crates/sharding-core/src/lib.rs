//! The sharding data plane: identifiers, the entity API, the protocol, shards
//! and regions, allocation strategies, and the coordinator's state model.
//!
//! The coordinator itself (leader- and lease-gated) lives in
//! `sharding-coordinator`; this crate never depends on a lease backend.

pub mod coordinator;
pub mod durable;
mod entity;
mod extractor;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod ids;
pub mod protocol;
pub mod region;
pub mod tenure;

pub use entity::{Entity, EntityContext};
pub use extractor::MessageExtractor;
pub use ids::{EntityId, ShardId, TypeName, shard_of};
pub use protocol::{Epoch, FencingToken};
pub use region::{
    RegionConfig, RegionEvent, RegionObserver, RegionSettings, RegionStatsSnapshot, ShardRegion,
    ShardingError,
};
pub use tenure::{TenureError, TenureSettings, TenureSuspender};
