//! The coordinator's pure state model and the allocation strategies.
//!
//! No I/O here: the coordinator task in `sharding-coordinator` turns protocol
//! messages into [`CoordinatorEvent`]s and applies them, so every state change
//! is one event through one `apply`.

mod allocation;
mod state;

pub use allocation::{LeastShardAllocationStrategy, ShardAllocationStrategy};
pub use state::{CoordinatorEvent, CoordinatorState, StateError};
