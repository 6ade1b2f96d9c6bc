//! How a message names its entity and shard.

use crate::{EntityId, ShardId, shard_of};

/// Maps a message to its entity and the entity to its shard.
///
/// A closure `|m: &M| -> EntityId` is an extractor that uses [`shard_of`];
/// implement the trait for full control over shard placement.
pub trait MessageExtractor<M>: Send + Sync + 'static {
    /// The entity the message is for.
    fn entity_id(&self, message: &M) -> EntityId;

    /// The shard of `entity` among `num_shards`; [`shard_of`] by default.
    fn shard_id(&self, entity: &EntityId, num_shards: u32) -> ShardId {
        shard_of(entity, num_shards)
    }
}

impl<M, F> MessageExtractor<M> for F
where
    F: Fn(&M) -> EntityId + Send + Sync + 'static,
{
    fn entity_id(&self, message: &M) -> EntityId {
        self(message)
    }
}
