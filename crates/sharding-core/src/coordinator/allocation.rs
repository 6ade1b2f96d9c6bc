//! Where new shards go, and which shards move when regions are unbalanced.

use std::collections::{BTreeMap, BTreeSet};

use cluster::NodeId;

use crate::ShardId;

/// Decides shard placement. Pure: the coordinator passes the current table.
pub trait ShardAllocationStrategy: Send + Sync + 'static {
    /// The region that should host `shard`; `None` if there is no candidate.
    /// `regions` holds only regions that may receive shards.
    fn allocate(
        &self,
        requester: NodeId,
        shard: ShardId,
        regions: &BTreeMap<NodeId, BTreeSet<ShardId>>,
    ) -> Option<NodeId>;

    /// Shards to move now; `in_progress` are already moving and not counted.
    fn rebalance(
        &self,
        regions: &BTreeMap<NodeId, BTreeSet<ShardId>>,
        in_progress: &BTreeSet<ShardId>,
    ) -> BTreeSet<ShardId>;
}

/// Allocates to the region with the fewest shards; rebalances from regions
/// above the optimum towards regions below it, at most
/// `max(1, min(absolute_limit, relative_limit x total shards))` per round.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LeastShardAllocationStrategy {
    /// At most this many shards move per round (default 20).
    pub absolute_limit: usize,
    /// At most this fraction of all shards moves per round (default 0.1).
    pub relative_limit: f64,
}

impl Default for LeastShardAllocationStrategy {
    fn default() -> Self {
        Self {
            absolute_limit: 20,
            relative_limit: 0.1,
        }
    }
}

impl LeastShardAllocationStrategy {
    /// The per-round limit for `total` allocated shards.
    pub fn limit(&self, total: usize) -> usize {
        // Truncation is the intent: a fraction of a shard does not move.
        let relative = (self.relative_limit.max(0.0) * total as f64) as usize;
        self.absolute_limit.min(relative).max(1)
    }
}

impl ShardAllocationStrategy for LeastShardAllocationStrategy {
    fn allocate(
        &self,
        _requester: NodeId,
        _shard: ShardId,
        regions: &BTreeMap<NodeId, BTreeSet<ShardId>>,
    ) -> Option<NodeId> {
        // Ties go to the lowest node id, so placement is deterministic.
        regions
            .iter()
            .min_by_key(|(node, shards)| (shards.len(), **node))
            .map(|(node, _)| *node)
    }

    fn rebalance(
        &self,
        regions: &BTreeMap<NodeId, BTreeSet<ShardId>>,
        in_progress: &BTreeSet<ShardId>,
    ) -> BTreeSet<ShardId> {
        if regions.len() < 2 || !in_progress.is_empty() {
            return BTreeSet::new();
        }
        let total: usize = regions.values().map(BTreeSet::len).sum();
        let floor = total / regions.len();
        let ceil = total.div_ceil(regions.len());
        let deficit: usize = regions
            .values()
            .map(|s| floor.saturating_sub(s.len()))
            .sum();
        if deficit == 0 {
            return BTreeSet::new();
        }
        let want = deficit.min(self.limit(total));
        let mut moving = BTreeSet::new();
        // First the excess above the ceiling, biggest regions first...
        let mut by_size: Vec<_> = regions.iter().collect();
        by_size.sort_by_key(|(node, shards)| (std::cmp::Reverse(shards.len()), **node));
        for (_, shards) in &by_size {
            let excess = shards.len().saturating_sub(ceil);
            moving.extend(shards.iter().rev().take(excess));
        }
        // ...then one from each region at the ceiling, while someone is short.
        if moving.len() < want && ceil > floor {
            for (_, shards) in &by_size {
                if moving.len() >= want {
                    break;
                }
                if shards.len() == ceil {
                    if let Some(shard) = shards.iter().next_back() {
                        moving.insert(*shard);
                    }
                }
            }
        }
        moving.into_iter().take(want).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(sizes: &[(u64, std::ops::Range<u32>)]) -> BTreeMap<NodeId, BTreeSet<ShardId>> {
        sizes
            .iter()
            .map(|(n, r)| (NodeId(*n), r.clone().map(ShardId).collect()))
            .collect()
    }

    #[test]
    fn allocates_to_the_least_loaded_region() {
        let s = LeastShardAllocationStrategy::default();
        let t = table(&[(1, 0..3), (2, 3..4), (3, 4..6)]);
        assert_eq!(s.allocate(NodeId(1), ShardId(9), &t), Some(NodeId(2)));
        assert_eq!(s.allocate(NodeId(1), ShardId(9), &BTreeMap::new()), None);
    }

    #[test]
    fn new_empty_region_receives_shards_within_the_limits() {
        let s = LeastShardAllocationStrategy::default();
        // 3 regions with 21-22 shards each (64 total), a 4th joins empty.
        let t = table(&[(1, 0..22), (2, 22..43), (3, 43..64), (4, 0..0)]);
        let moving = s.rebalance(&t, &BTreeSet::new());
        // limit = max(1, min(20, 0.1 x 64 = 6)) = 6
        assert_eq!(moving.len(), 6);
        assert!(moving.iter().all(|sh| !t[&NodeId(4)].contains(sh)));
    }

    #[test]
    fn balanced_table_moves_nothing() {
        let s = LeastShardAllocationStrategy::default();
        let t = table(&[(1, 0..22), (2, 22..43), (3, 43..64)]);
        assert!(s.rebalance(&t, &BTreeSet::new()).is_empty());
    }

    #[test]
    fn nothing_new_while_a_rebalance_is_in_progress() {
        let s = LeastShardAllocationStrategy::default();
        let t = table(&[(1, 0..10), (2, 0..0)]);
        let busy: BTreeSet<_> = [ShardId(0)].into();
        assert!(s.rebalance(&t, &busy).is_empty());
        assert_eq!(s.rebalance(&t, &BTreeSet::new()).len(), 1);
    }

    #[test]
    fn converges_to_balance() {
        let s = LeastShardAllocationStrategy {
            absolute_limit: 3,
            relative_limit: 1.0,
        };
        let mut t = table(&[(1, 0..40), (2, 0..0), (3, 0..0)]);
        for _ in 0..40 {
            let moving = s.rebalance(&t, &BTreeSet::new());
            if moving.is_empty() {
                break;
            }
            assert!(moving.len() <= 3);
            for shard in moving {
                for shards in t.values_mut() {
                    shards.remove(&shard);
                }
                let target = s.allocate(NodeId(1), shard, &t).unwrap();
                t.get_mut(&target).unwrap().insert(shard);
            }
        }
        let sizes: Vec<_> = t.values().map(BTreeSet::len).collect();
        assert_eq!(sizes.iter().sum::<usize>(), 40);
        assert!(
            sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1,
            "{sizes:?}"
        );
    }
}
