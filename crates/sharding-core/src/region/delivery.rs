//! A user message on its way to an entity, and where its reply goes.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use cluster::{Channel, NodeId, Transport};
use tokio::sync::oneshot;

use super::RegionStats;
use crate::protocol::{DataIn, DataMsg, decode_data, encode_into};
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

/// A message from another node, still encoded: the receiving connection
/// read only its shard, and the shard's task decodes the rest, so the
/// connection's task (one per peer) is not the whole cost of every message.
pub(crate) struct Encoded {
    pub(crate) from: NodeId,
    pub(crate) payload: Bytes,
}

/// What another region sent on the data channel.
pub(crate) enum Incoming<E: Entity> {
    Deliver(Delivery<E>),
    Reply {
        request: u64,
        result: Result<E::Reply, ShardingError>,
    },
    /// Did not decode: counted, logged, and an asker answered.
    Dropped,
}

impl<E: Entity> Incoming<E> {
    /// Decodes what `from` sent; replies to remote asks go through `link`.
    pub(crate) fn decode(
        from: NodeId,
        payload: &[u8],
        link: &Arc<ReplyLink>,
        stats: &RegionStats,
    ) -> Self {
        let undeliverable = |what: &str, error: &dyn std::fmt::Display| {
            stats.dropped_undeliverable.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%from, %error, "{what} dropped");
        };
        match decode_data::<E::Message, E::Reply>(payload) {
            Err(error) => {
                undeliverable("undecodable region data", &error);
                Incoming::Dropped
            }
            Ok(DataIn::Deliver {
                shard,
                entity,
                reply_to,
                hops,
                message,
            }) => {
                let reply = match reply_to {
                    None => ReplyTo::Nobody,
                    Some((origin, request)) => ReplyTo::Remote {
                        origin,
                        request,
                        link: Arc::clone(link),
                    },
                };
                match message {
                    Ok(message) => Incoming::Deliver(Delivery {
                        shard,
                        entity,
                        message,
                        reply,
                        hops,
                        counted: false,
                        rehomed: false,
                    }),
                    Err(error) => {
                        undeliverable("undecodable entity message", &error);
                        reply.send(Err(ShardingError::Codec(error.to_string())));
                        Incoming::Dropped
                    }
                }
            }
            Ok(DataIn::Reply { request, result }) => Incoming::Reply {
                request,
                result: match result {
                    Ok(Ok(reply)) => Ok(reply),
                    Ok(Err(remote)) => Err(ShardingError::Remote(remote)),
                    Err(error) => Err(ShardingError::Codec(error.to_string())),
                },
            },
        }
    }
}

impl<E: Entity> Delivery<E> {
    /// Decodes a message a connection queued for its shard (see [`Encoded`]).
    pub(crate) fn decode(
        encoded: &Encoded,
        link: &Arc<ReplyLink>,
        stats: &RegionStats,
    ) -> Option<Self> {
        match Incoming::decode(encoded.from, &encoded.payload, link, stats) {
            Incoming::Deliver(delivery) => Some(delivery),
            // Only messages with a shard are queued as encoded.
            Incoming::Reply { .. } | Incoming::Dropped => None,
        }
    }

    /// Gives up on this delivery, telling an asker why.
    pub(crate) fn fail(self, error: ShardingError) {
        self.reply.send(Err(error));
    }
}
