//! The entity trait users implement.

use std::future::Future;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{EntityId, FencingToken, ShardId};

/// Where an entity incarnation runs: its id, its shard, and the fencing
/// token of the shard's allocation to this node. Storage that compares the
/// token refuses the writes of any older incarnation (see `durable`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EntityContext {
    /// The entity.
    pub id: EntityId,
    /// Its shard.
    pub shard: ShardId,
    /// The allocation this incarnation runs under.
    pub token: FencingToken,
}

impl EntityContext {
    /// A context for running an entity outside a region (tests, tools).
    pub fn new(id: EntityId, shard: ShardId, token: FencingToken) -> Self {
        Self { id, shard, token }
    }
}

/// A stateful entity: one instance per [`EntityId`] in the whole cluster,
/// started on its first message and stopped on passivation or handoff.
///
/// Messages to one entity are handled one at a time, in arrival order.
///
/// ```
/// use sharding_core::{Entity, EntityId};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// enum CounterMsg { Add(i64), Get }
///
/// struct Counter { value: i64 }
///
/// impl Entity for Counter {
///     type Message = CounterMsg;
///     type Reply = i64;
///     async fn handle(&mut self, msg: CounterMsg) -> i64 {
///         if let CounterMsg::Add(n) = msg { self.value += n; }
///         self.value
///     }
/// }
/// ```
pub trait Entity: Send + 'static {
    /// What the entity receives.
    type Message: Serialize + DeserializeOwned + Send + 'static;
    /// What it answers (to `ask`; discarded for `tell`).
    type Reply: Serialize + DeserializeOwned + Send + 'static;

    /// Called once before the first message.
    fn started(&mut self, _id: &EntityId) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Called once before the first message, with where the incarnation
    /// runs; by default calls [`started`](Self::started). Entities that
    /// write to storage take the fencing token from here.
    fn started_in(&mut self, context: &EntityContext) -> impl Future<Output = ()> + Send {
        self.started(&context.id)
    }

    /// Handles one message.
    fn handle(&mut self, message: Self::Message) -> impl Future<Output = Self::Reply> + Send;

    /// Called once after the last message (passivation, handoff, shutdown).
    fn stopped(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }
}
