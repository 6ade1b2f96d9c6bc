//! Messages from other regions, read together on a connection's task.
//!
//! A message for a shard hosted here goes to the shard's inbox still
//! encoded (its shard's task decodes it); the connection reads only its
//! shard. The messages of one batch are grouped per shard and each group
//! is queued under one lock. Everything else (a shard hosted elsewhere or
//! not known yet, one with messages inside the region task) is decoded
//! and takes the path of a local send, after the groups.
//!
//! Order per shard is kept: once one of a shard's messages takes the slow
//! path, the rest of that shard's messages in the batch follow it; and a
//! group refused by a stopping shard goes to the slow path ahead of them.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use cluster::Envelope;

use super::Shared;
use super::delivery::{Delivery, Encoded, Incoming};
use super::inbox::TrySendError;
use super::routes::{Route, Routes};
use super::shard::ShardCmd;
use crate::protocol::deliver_shard;
use crate::{Entity, ShardId, ShardingError};

/// Stagings kept for reuse at most (one per connection task at a time).
const KEEP: usize = 8;

/// One batch's messages, grouped per shard; kept between batches, so that
/// grouping allocates nothing once warm.
#[derive(Default)]
pub(crate) struct Staging {
    /// Where each shard's group is in `groups`.
    index: HashMap<ShardId, usize, foldhash::fast::FixedState>,
    /// The first `index.len()` are this batch's; the rest are spare.
    groups: Vec<(ShardId, Vec<Encoded>)>,
    /// Shards with a message on the slow path in this batch.
    slow: Vec<ShardId>,
    /// The slow path's messages, in arrival order.
    deferred: Vec<Encoded>,
}

impl Staging {
    fn stage(&mut self, shard: ShardId, encoded: Encoded) {
        let used = self.index.len();
        let i = *self.index.entry(shard).or_insert(used);
        if i == self.groups.len() {
            self.groups.push((shard, Vec::new()));
        }
        let (id, group) = &mut self.groups[i];
        *id = shard;
        group.push(encoded);
    }

    fn defer(&mut self, shard: ShardId, encoded: Encoded) {
        if !self.slow.contains(&shard) {
            self.slow.push(shard);
        }
        self.deferred.push(encoded);
    }
}

/// Stagings to reuse.
#[derive(Default)]
pub(crate) struct StagingPool(Mutex<Vec<Staging>>);

impl StagingPool {
    fn lock(&self) -> MutexGuard<'_, Vec<Staging>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take(&self) -> Staging {
        self.lock().pop().unwrap_or_default()
    }

    fn put(&self, staging: Staging) {
        let mut pool = self.lock();
        if pool.len() < KEEP {
            pool.push(staging);
        }
    }
}

impl<E: Entity> Shared<E> {
    /// User messages and replies from other regions, read together on the
    /// receiving connection's task.
    pub(super) fn on_data(&self, batch: &mut Vec<Envelope>) {
        let mut staging = self.staging.take();
        let routes = self.routes();
        for envelope in batch.drain(..) {
            self.sort(&routes, envelope, &mut staging);
        }
        let mut reroute = Vec::new();
        self.flush(&routes, &mut staging, &mut reroute);
        // The slow path locks the routes itself.
        drop(routes);
        reroute.append(&mut staging.deferred);
        staging.slow.clear();
        self.staging.put(staging);
        for encoded in reroute {
            if let Some(d) = Delivery::decode(&encoded, &self.link, &self.stats) {
                // A refusal is counted, logged and answered inside.
                let _ = self.route(d);
            }
        }
    }

    /// Stages a message for a shard hosted here, defers one for the slow
    /// path, or completes an ask with a reply.
    fn sort(&self, routes: &Routes<E>, envelope: Envelope, staging: &mut Staging) {
        let Some(shard) = deliver_shard(&envelope.payload) else {
            // A reply, or bytes that are no message.
            match Incoming::<E>::decode(envelope.from, &envelope.payload, &self.link, &self.stats) {
                Incoming::Reply { request, result } => {
                    // None: the asker timed out already.
                    if let Some(tx) = self.asks().remove(&request) {
                        let _ = tx.send(result);
                    }
                }
                // Unreachable: a message that decodes has a readable shard.
                Incoming::Deliver(d) => {
                    d.fail(ShardingError::Undeliverable("no readable shard".into()));
                }
                Incoming::Dropped => {}
            }
            return;
        };
        let encoded = Encoded {
            from: envelope.from,
            payload: envelope.payload,
        };
        // As `route` decides for a local send.
        let direct = !staging.slow.contains(&shard)
            && self
                .via_region(shard)
                .load(std::sync::atomic::Ordering::Acquire)
                == 0
            && matches!(routes.get(shard), Some(Route::Local(_)));
        if direct {
            staging.stage(shard, encoded);
        } else {
            staging.defer(shard, encoded);
        }
    }

    /// Queues each group in its shard's inbox. A group the shard no longer
    /// takes goes to `reroute`; what a full inbox has no room for is
    /// dropped, counted and answered.
    fn flush(&self, routes: &Routes<E>, staging: &mut Staging, reroute: &mut Vec<Encoded>) {
        let used = staging.index.len();
        staging.index.clear();
        for (shard, group) in &mut staging.groups[..used] {
            // The routes are read-locked since the group was staged.
            let Some(Route::Local(inbox)) = routes.get(*shard) else {
                reroute.append(group);
                continue;
            };
            match inbox.send_all(group, ShardCmd::Encoded) {
                Ok(()) => {}
                Err(TrySendError::Full(())) => {
                    for encoded in group.drain(..) {
                        if let Some(d) = Delivery::decode(&encoded, &self.link, &self.stats) {
                            self.full(d, self.settings.shard_inbox);
                        }
                    }
                }
                Err(TrySendError::Closed(())) => reroute.append(group),
            }
        }
    }
}
