//! The message and entity every routing bench uses, and its counter.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use sharding_core::Entity;

/// Messages handled so far, by every `Sink` (and every baseline).
pub static PROCESSED: AtomicU64 = AtomicU64::new(0);

/// A message for entity `id`.
#[derive(Serialize, Deserialize)]
pub struct Msg {
    pub id: u32,
}

/// An entity that only counts.
pub struct Sink;

impl Entity for Sink {
    type Message = Msg;
    type Reply = ();
    async fn handle(&mut self, _: Msg) {
        PROCESSED.fetch_add(1, Ordering::Relaxed);
    }
}
