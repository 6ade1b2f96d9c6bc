//! The entity every harness scenario drives: a counter per id.

use serde::{Deserialize, Serialize};
use sharding_core::EntityId;
use sharding_core::durable::{Durable, DurableEntity, InMemoryStateStore};

/// A message to a counter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterMsg {
    /// The counter's id.
    pub id: String,
    /// What to do.
    pub op: CounterOp,
}

/// Counter operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CounterOp {
    /// Add to the counter; replies with the new value.
    Add(i64),
    /// Replies with the current value.
    Get,
}

impl CounterMsg {
    /// `Add(n)` to counter `id`.
    pub fn add(id: impl Into<String>, n: i64) -> Self {
        Self {
            id: id.into(),
            op: CounterOp::Add(n),
        }
    }

    /// `Get` from counter `id`.
    pub fn get(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            op: CounterOp::Get,
        }
    }

    /// The entity id extractor for counters.
    pub fn entity_id(&self) -> EntityId {
        EntityId::from(&self.id)
    }
}

/// A counter whose value lives in the harness's shared state store (the
/// cluster's database): it survives crashes and moves, and every save
/// carries its shard allocation's fencing token.
#[derive(Debug, Default)]
pub struct Counter;

impl DurableEntity for Counter {
    type State = i64;
    type Message = CounterMsg;
    type Reply = i64;

    fn apply(&mut self, value: &mut i64, message: CounterMsg) -> i64 {
        if let CounterOp::Add(n) = message.op {
            *value += n;
        }
        *value
    }
}

/// The entity the harness regions run.
pub type DurableCounter = Durable<Counter, InMemoryStateStore>;

/// The cluster singleton every harness node runs next to the counters: a
/// tally of what it is told (in memory; a new instance starts at 0).
#[derive(Debug, Default)]
pub struct Tally {
    total: i64,
}

impl cluster_singleton::Singleton for Tally {
    type Message = i64;
    type Reply = i64;

    async fn handle(&mut self, n: i64) -> i64 {
        self.total += n;
        self.total
    }
}
