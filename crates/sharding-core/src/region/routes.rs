//! The direct routes: where a handle sends a shard's messages without the
//! region task. Read on every send, so shard ids below the type's shard
//! count index an array (no hashing); a custom extractor's ids beyond it
//! go to a map.

use std::collections::HashMap;

use super::inbox::Sender;
use super::shard::ShardCmd;
use crate::{Entity, ShardId};
use cluster::{NodeId, PeerLine};

/// Array slots at most; the rest of the ids use the map.
const DENSE_MAX: u32 = 65_536;

/// Where a handle sends a shard's messages.
pub(crate) enum Route<E: Entity> {
    /// Hosted here: the shard's inbox.
    Local(Sender<ShardCmd<E>>),
    /// Hosted on that node, and nothing for the shard waits in the region;
    /// with a direct line to its send queue where the transport has one.
    Remote(NodeId, Option<PeerLine>),
}

/// The routes of the shards whose home is settled.
pub(crate) struct Routes<E: Entity> {
    dense: Box<[Option<Route<E>>]>,
    sparse: HashMap<ShardId, Route<E>, foldhash::fast::FixedState>,
}

impl<E: Entity> Routes<E> {
    /// Routes for shard ids `0..num_shards` held in an array.
    pub(crate) fn new(num_shards: u32) -> Self {
        Self {
            dense: (0..num_shards.min(DENSE_MAX)).map(|_| None).collect(),
            sparse: HashMap::default(),
        }
    }

    pub(crate) fn get(&self, shard: ShardId) -> Option<&Route<E>> {
        match self.dense.get(shard.0 as usize) {
            Some(slot) => slot.as_ref(),
            None => self.sparse.get(&shard),
        }
    }

    pub(crate) fn insert(&mut self, shard: ShardId, route: Route<E>) {
        match self.dense.get_mut(shard.0 as usize) {
            Some(slot) => *slot = Some(route),
            None => {
                self.sparse.insert(shard, route);
            }
        }
    }

    pub(crate) fn remove(&mut self, shard: ShardId) {
        match self.dense.get_mut(shard.0 as usize) {
            Some(slot) => *slot = None,
            None => {
                self.sparse.remove(&shard);
            }
        }
    }

    /// Keeps the routes for which `keep` holds.
    pub(crate) fn retain(&mut self, keep: impl Fn(&Route<E>) -> bool) {
        for slot in self.dense.iter_mut() {
            if slot.as_ref().is_some_and(|route| !keep(route)) {
                *slot = None;
            }
        }
        self.sparse.retain(|_, route| keep(route));
    }

    pub(crate) fn clear(&mut self) {
        self.retain(|_| false);
    }

    /// Every route, with its shard.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (ShardId, &Route<E>)> {
        let dense = (self.dense.iter().enumerate())
            .filter_map(|(i, slot)| Some((ShardId(i as u32), slot.as_ref()?)));
        dense.chain(self.sparse.iter().map(|(shard, route)| (*shard, route)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nothing;

    impl Entity for Nothing {
        type Message = ();
        type Reply = ();
        async fn handle(&mut self, _: ()) {}
    }

    fn home(routes: &Routes<Nothing>, shard: u32) -> Option<u64> {
        match routes.get(ShardId(shard)) {
            Some(Route::Remote(node, _)) => Some(node.0),
            _ => None,
        }
    }

    #[test]
    fn ids_inside_and_beyond_the_shard_count_route_alike() {
        let mut routes = Routes::<Nothing>::new(4);
        for shard in [0, 3, 4, 1_000_000] {
            routes.insert(
                ShardId(shard),
                Route::Remote(NodeId(u64::from(shard) + 1), None),
            );
        }
        assert_eq!(home(&routes, 3), Some(4));
        assert_eq!(home(&routes, 1_000_000), Some(1_000_001));
        assert_eq!(home(&routes, 2), None);
        routes.remove(ShardId(4));
        routes.retain(|route| !matches!(route, Route::Remote(NodeId(1), _)));
        let mut left: Vec<u32> = routes.iter().map(|(shard, _)| shard.0).collect();
        left.sort();
        assert_eq!(left, vec![3, 1_000_000]);
        routes.clear();
        assert_eq!(routes.iter().count(), 0);
    }
}
