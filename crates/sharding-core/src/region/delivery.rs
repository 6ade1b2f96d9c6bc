//! A user message on its way to an entity, and where its reply goes.

use std::sync::Arc;

use cluster::{Channel, NodeId, Transport};
use tokio::sync::oneshot;

use crate::protocol::{DataMsg, encode_into};
use crate::{Entity, EntityId, ShardId, ShardingError};

/// Where an entity's reply goes.
pub(crate) enum ReplyTo<E: Entity> {
    /// `tell`: nobody waits.
    Nobody,
    /// `ask` on this node.
    Local(oneshot::Sender<Result<E::Reply, ShardingError>>),
    /// `ask` on another node: reply over the transport.
    Remote {
        origin: NodeId,
        request: u64,
        link: Arc<ReplyLink>,
    },
}

/// What a remote reply needs to travel back: the type's data channel.
pub(crate) struct ReplyLink {
    pub(crate) transport: Arc<dyn Transport>,
    pub(crate) channel: Channel,
}

/// One user message for one entity.
pub(crate) struct Delivery<E: Entity> {
    pub(crate) shard: ShardId,
    pub(crate) entity: EntityId,
    pub(crate) message: E::Message,
    pub(crate) reply: ReplyTo<E>,
    pub(crate) hops: u8,
    /// Counted in `Shared::via_region` until the region task passes it on.
    pub(crate) counted: bool,
    /// Forwarded here by a region that thought the shard lives here, and the
    /// coordinator has been asked for its home since: pass it on now.
    pub(crate) rehomed: bool,
}

impl<E: Entity> ReplyTo<E> {
    /// Sends the entity's answer (or the reason there is none) to whoever asked.
    pub(crate) fn send(self, result: Result<E::Reply, ShardingError>) {
        match self {
            ReplyTo::Nobody => {}
            ReplyTo::Local(tx) => {
                // The asker may have timed out and gone; nothing to do then.
                let _ = tx.send(result);
            }
            ReplyTo::Remote {
                origin,
                request,
                link,
            } => {
                let msg = DataMsg::<&E::Message, &E::Reply>::Reply {
                    request,
                    result: result.as_ref().map_err(|e| e.to_string()),
                };
                let sent = link
                    .transport
                    .send_with(origin, link.channel, &mut |buf| encode_into(&msg, buf));
                if let Err(error) = sent {
                    tracing::warn!(%origin, request, %error, "reply to a remote ask lost");
                }
            }
        }
    }
}

impl<E: Entity> Delivery<E> {
    /// Gives up on this delivery, telling an asker why.
    pub(crate) fn fail(self, error: ShardingError) {
        self.reply.send(Err(error));
    }
}
