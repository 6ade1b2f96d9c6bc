//! How envelopes move between nodes, whatever carries them.
//!
//! Two implementations share one contract: [`InProcessNetwork`] for tests and
//! simulations (every message still goes through the byte encoding), and
//! [`TcpTransport`] for real deployments.

mod admission;
#[cfg(feature = "dev-certs")]
pub mod dev_certs;
pub(crate) mod frame_codec;
mod inbox;
pub mod inprocess;
mod outbox;
mod peer_line;
pub mod tcp;
pub mod tls;

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;

use crate::{Channel, Envelope, NodeAddr, NodeId};

pub use admission::RefusalReason;
pub use inbox::TransportStats;
pub(crate) use inbox::{Gathered, Inboxes};
pub use inprocess::{InProcessNetwork, InProcessTransport, LinkFaults};
pub(crate) use outbox::Outbox;
pub use peer_line::PeerLine;
pub use tcp::{BindError, TcpSettings, TcpTransport};
pub use tls::{TlsError, TlsSettings, node_identity};

/// Sends envelopes to other nodes and hands received ones to subscribers.
///
/// Sending is at-most-once and never blocks: a message is queued or refused
/// at once. Messages lost by the network itself are not reported to the sender
/// (a real network cannot); every drop inside this node is counted in
/// [`stats`](Self::stats).
pub trait Transport: Send + Sync + 'static {
    /// This node.
    fn local_node(&self) -> NodeId;

    /// Queues `payload` for `to` on `channel`.
    fn send(&self, to: NodeId, channel: Channel, payload: Bytes) -> Result<(), SendError> {
        self.send_with(to, channel, &mut |buf: &mut BytesMut| {
            buf.extend_from_slice(&payload);
            Ok(())
        })
    }

    /// Queues a frame for `to` on `channel` whose payload `payload` writes
    /// straight into it: the bytes are encoded once, into the buffer the
    /// connection writes from, with no copy on the way. `payload` is called
    /// once; an error from it queues nothing.
    fn send_with(
        &self,
        to: NodeId,
        channel: Channel,
        payload: &mut PayloadWriter<'_>,
    ) -> Result<(), SendError>;

    /// Receives every envelope for `channel` from now on. A second subscription
    /// to the same channel replaces the first.
    fn subscribe(&self, channel: Channel) -> mpsc::Receiver<Envelope>;

    /// Hands every envelope for `channel` to `handler`, on the task that
    /// received it and in the order each peer sent them, with no queue in
    /// between: for traffic whose subscriber would only pass it on. Envelopes
    /// read together from one connection come in one call (at most
    /// [`HANDLER_BATCH`]), so the handler can pass them on in groups. The
    /// handler must take them all, return quickly and never block. Replaces
    /// any earlier subscription to the channel.
    fn subscribe_handler(&self, channel: Channel, handler: EnvelopeHandler);

    /// Tells the transport where `node` listens (membership learns addresses).
    fn learn_address(&self, node: NodeId, addr: &NodeAddr);

    /// Counters of this node's traffic and drops.
    fn stats(&self) -> TransportStats;

    /// A direct line to `to`'s send queue, for a sender that sends there
    /// often; `None` where the transport has none (then use `send_with`).
    fn peer_line(&self, _to: NodeId) -> Option<PeerLine> {
        None
    }
}

/// Writes a payload into the frame being built (see [`Transport::send_with`]).
pub type PayloadWriter<'a> = dyn FnMut(&mut BytesMut) -> Result<(), postcard::Error> + 'a;

/// Receives envelopes on the transport's own task, a batch at a time, and
/// takes them out of the `Vec` (see [`Transport::subscribe_handler`]).
pub type EnvelopeHandler = Arc<dyn Fn(&mut Vec<Envelope>) + Send + Sync>;

/// The most envelopes a handler gets in one call.
pub const HANDLER_BATCH: usize = 256;

/// Why a message was not queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// No address is known for the peer.
    #[error("no address known for {0}")]
    UnknownPeer(NodeId),
    /// The peer's send queue is full; the message was dropped and counted.
    #[error("send queue to {peer} is full ({capacity} frames)")]
    QueueFull {
        /// The peer.
        peer: NodeId,
        /// The queue capacity.
        capacity: usize,
    },
    /// The encoded message exceeds the maximum frame size.
    #[error("frame of {size} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Encoded size.
        size: usize,
        /// Configured maximum.
        max: usize,
    },
    /// The payload could not be encoded; nothing was queued.
    #[error("payload could not be encoded: {0}")]
    Encode(postcard::Error),
    /// This node's transport has been shut down.
    #[error("transport of {0} is closed")]
    Closed(NodeId),
}
