//! A direct line to one peer's send queue, for a sender that sends to the
//! same peer again and again (a region's route to a shard's home): a frame
//! sent on it skips the transport's peer table (a read lock and a lookup).
//!
//! A queue the transport has retired (the peer was re-pointed to a new
//! address, or the transport closed) refuses every frame: the sender then
//! goes through [`Transport::send_with`](super::Transport::send_with),
//! which finds the current queue, and counts and reports refusals.

use std::sync::Arc;

use super::outbox::Outbox;
use super::{PayloadWriter, SendError};
use crate::{Channel, NodeId};

/// A direct line to one peer's send queue (see the module docs).
pub struct PeerLine {
    outbox: Arc<Outbox>,
    from: NodeId,
    to: NodeId,
}

impl PeerLine {
    pub(crate) fn new(outbox: Arc<Outbox>, from: NodeId, to: NodeId) -> Self {
        Self { outbox, from, to }
    }

    /// The peer this line goes to.
    pub fn peer(&self) -> NodeId {
        self.to
    }

    /// Queues a frame as [`Transport::send_with`](super::Transport::send_with)
    /// does. A refusal (full, too large, not encodable, retired) queues
    /// nothing and is not counted: send through the transport then.
    pub fn send_with(
        &self,
        channel: Channel,
        payload: &mut PayloadWriter<'_>,
    ) -> Result<(), SendError> {
        self.outbox.push(self.from, self.to, channel, payload)
    }
}

impl std::fmt::Debug for PeerLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerLine")
            .field("from", &self.from)
            .field("to", &self.to)
            .finish()
    }
}
