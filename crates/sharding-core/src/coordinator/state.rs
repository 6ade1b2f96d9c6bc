//! Which region hosts which shard, changed only through events.

use std::collections::{BTreeMap, BTreeSet};

use cluster::NodeId;
use serde::Serialize;

use crate::ShardId;

/// One change to the allocation table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum CoordinatorEvent {
    /// A region joined (it may host nothing yet).
    RegionRegistered {
        /// The region's node.
        region: NodeId,
    },
    /// A region is gone; its shards become unallocated.
    RegionTerminated {
        /// The region's node.
        region: NodeId,
    },
    /// A shard now lives in a region.
    ShardHomeAllocated {
        /// The shard.
        shard: ShardId,
        /// Its home.
        region: NodeId,
    },
    /// A shard has no home (handed off, about to be allocated again).
    ShardHomeDeallocated {
        /// The shard.
        shard: ShardId,
    },
}

/// An event that would break the model's invariants.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// The region is not registered.
    #[error("{0} is not a registered region")]
    UnknownRegion(NodeId),
    /// The region is already registered.
    #[error("{0} is already registered")]
    RegionAlreadyRegistered(NodeId),
    /// The shard already has a home.
    #[error("{shard} is already allocated to {region}")]
    ShardAlreadyAllocated {
        /// The shard.
        shard: ShardId,
        /// Its current home.
        region: NodeId,
    },
    /// The shard has no home.
    #[error("{0} is not allocated")]
    ShardNotAllocated(ShardId),
}

/// The allocation table: regions, and the home of every allocated shard.
///
/// Invariants: every shard has at most one home, every home is a registered
/// region, and `regions` and `shards` describe the same allocation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CoordinatorState {
    regions: BTreeMap<NodeId, BTreeSet<ShardId>>,
    shards: BTreeMap<ShardId, NodeId>,
}

impl CoordinatorState {
    /// Applies one event, or explains why it is invalid (and changes nothing).
    pub fn apply(&mut self, event: &CoordinatorEvent) -> Result<(), StateError> {
        match *event {
            CoordinatorEvent::RegionRegistered { region } => {
                if self.regions.contains_key(&region) {
                    return Err(StateError::RegionAlreadyRegistered(region));
                }
                self.regions.insert(region, BTreeSet::new());
            }
            CoordinatorEvent::RegionTerminated { region } => {
                let shards = self
                    .regions
                    .remove(&region)
                    .ok_or(StateError::UnknownRegion(region))?;
                for shard in shards {
                    self.shards.remove(&shard);
                }
            }
            CoordinatorEvent::ShardHomeAllocated { shard, region } => {
                if let Some(&home) = self.shards.get(&shard) {
                    return Err(StateError::ShardAlreadyAllocated {
                        shard,
                        region: home,
                    });
                }
                self.regions
                    .get_mut(&region)
                    .ok_or(StateError::UnknownRegion(region))?
                    .insert(shard);
                self.shards.insert(shard, region);
            }
            CoordinatorEvent::ShardHomeDeallocated { shard } => {
                let region = self
                    .shards
                    .remove(&shard)
                    .ok_or(StateError::ShardNotAllocated(shard))?;
                if let Some(hosted) = self.regions.get_mut(&region) {
                    hosted.remove(&shard);
                }
            }
        }
        debug_assert!(self.is_consistent());
        Ok(())
    }

    /// The home of `shard`.
    pub fn home(&self, shard: ShardId) -> Option<NodeId> {
        self.shards.get(&shard).copied()
    }

    /// Every region and the shards it hosts.
    pub fn regions(&self) -> &BTreeMap<NodeId, BTreeSet<ShardId>> {
        &self.regions
    }

    /// Whether `region` is registered.
    pub fn is_registered(&self, region: NodeId) -> bool {
        self.regions.contains_key(&region)
    }

    /// Number of allocated shards.
    pub fn allocated(&self) -> usize {
        self.shards.len()
    }

    /// Checks the invariants; used by tests and debug builds.
    pub fn is_consistent(&self) -> bool {
        let by_region: usize = self.regions.values().map(BTreeSet::len).sum();
        by_region == self.shards.len()
            && self
                .shards
                .iter()
                .all(|(shard, region)| self.regions.get(region).is_some_and(|s| s.contains(shard)))
    }
}
