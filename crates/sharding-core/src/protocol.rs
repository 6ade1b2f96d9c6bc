//! The messages between regions and coordinators, and between regions.
//!
//! Modelled on Akka's sharding protocol. Every coordinator-to-region message is
//! a [`Directive`] that carries the coordinator's [`Epoch`]; a region refuses a
//! directive whose epoch is below one it already obeyed (I3).

use std::fmt;

use bytes::Bytes;
use cluster::{Channel, NodeId};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{EntityId, ShardId, TypeName};

/// The authority of a coordinator: the lease's fencing token, or without a
/// lease the leader's term. Strictly increases across coordinator changes.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Epoch(pub u64);

impl Epoch {
    /// No plausible epoch reaches this: lease tokens and terms grow by one
    /// per coordinator change (a Kubernetes resourceVersion by one per
    /// write to the store), so 2^48 is thousands of years of changes every
    /// millisecond. An epoch at or above it came from a broken or hostile
    /// peer; it is refused and counted, never obeyed or incremented, so it
    /// cannot fence the cluster off for good or wrap around to 0.
    pub const CEILING: Epoch = Epoch(1 << 48);

    /// Whether this epoch could have been issued by a coordinator: below
    /// [`Epoch::CEILING`] (the ceiling itself is refused too).
    pub fn is_plausible(self) -> bool {
        self < Self::CEILING
    }

    /// The next epoch, or `None` past [`Epoch::CEILING`].
    pub fn next(self) -> Option<Epoch> {
        self.0
            .checked_add(1)
            .map(Epoch)
            .filter(|e| e.is_plausible())
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "epoch-{}", self.0)
    }
}

/// Orders every allocation of a shard, cluster-wide: the epoch of the
/// coordinator that made it, then the allocation's number under that
/// coordinator. A shard's new home always holds a higher token than any
/// earlier home, so storage that refuses a write carrying a token below the
/// one it has seen refuses every stale incarnation (see `durable`).
/// Meaningful with a lease, where no two coordinators share an epoch.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct FencingToken {
    /// The allocating coordinator's epoch.
    pub epoch: Epoch,
    /// The allocation's number under that coordinator (0: a shard the
    /// coordinator adopted from a registration rather than allocated).
    pub allocation: u64,
}

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.epoch, self.allocation)
    }
}

/// Region to coordinator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CoordinatorMsg {
    /// A region announces itself and the shards it hosts; sent until acked,
    /// again whenever the leader (or the leader's incarnation) changes, and
    /// whenever a coordinator asks with [`RegionMsg::RegisterRequest`].
    Register {
        /// The shards this region hosts now.
        shards: Vec<ShardId>,
        /// The highest epoch this region has obeyed.
        max_epoch: Epoch,
        /// The region's node incarnation (its membership generation): a
        /// higher one replaces what the coordinator knew of the node.
        incarnation: u64,
    },
    /// Where does this shard live?
    GetShardHome {
        /// The shard.
        shard: ShardId,
    },
    /// The region started hosting the shard.
    ShardStarted {
        /// The shard.
        shard: ShardId,
    },
    /// The region stopped routing to the shard's old home.
    BeginHandOffAck {
        /// The shard.
        shard: ShardId,
    },
    /// The region stopped every entity of the shard.
    ShardStopped {
        /// The shard.
        shard: ShardId,
    },
    /// The region is shutting down: move its shards elsewhere.
    GracefulShutdownReq,
    /// With a lease: extend this region's tenure over its shards. One per
    /// region per renew interval, whatever the number of shards.
    RenewTenure {
        /// Echoed in the grant, so the region measures from this request's start.
        seq: u64,
    },
}

/// Coordinator to region: every one carries the coordinator's epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Directive {
    /// Your registration is accepted.
    RegisterAck {
        /// Coordinator epoch.
        epoch: Epoch,
    },
    /// `shard` lives in `region`.
    ShardHome {
        /// Coordinator epoch.
        epoch: Epoch,
        /// The shard.
        shard: ShardId,
        /// Its home.
        region: NodeId,
        /// The allocation that put it there (see [`FencingToken`]).
        allocation: u64,
    },
    /// Start hosting `shard`.
    HostShard {
        /// Coordinator epoch.
        epoch: Epoch,
        /// The shard.
        shard: ShardId,
        /// This allocation's number (see [`FencingToken`]).
        allocation: u64,
    },
    /// `shard` is about to move: stop routing to its current home, buffer instead.
    BeginHandOff {
        /// Coordinator epoch.
        epoch: Epoch,
        /// The shard.
        shard: ShardId,
    },
    /// Stop every entity of `shard` and report `ShardStopped`.
    HandOff {
        /// Coordinator epoch.
        epoch: Epoch,
        /// The shard.
        shard: ShardId,
    },
    /// The answer to `RenewTenure { seq }`: the region may host its shards
    /// until that request's start + tenure - margin, on its own clock.
    TenureGranted {
        /// Coordinator epoch.
        epoch: Epoch,
        /// The request answered.
        seq: u64,
    },
}

impl Directive {
    /// The epoch of the coordinator that issued it.
    pub fn epoch(&self) -> Epoch {
        match *self {
            Directive::RegisterAck { epoch }
            | Directive::ShardHome { epoch, .. }
            | Directive::HostShard { epoch, .. }
            | Directive::BeginHandOff { epoch, .. }
            | Directive::HandOff { epoch, .. }
            | Directive::TenureGranted { epoch, .. } => epoch,
        }
    }

    /// The shard it concerns, if any.
    pub fn shard(&self) -> Option<ShardId> {
        match *self {
            Directive::RegisterAck { .. } | Directive::TenureGranted { .. } => None,
            Directive::ShardHome { shard, .. }
            | Directive::HostShard { shard, .. }
            | Directive::BeginHandOff { shard, .. }
            | Directive::HandOff { shard, .. } => Some(shard),
        }
    }

    /// A short name for logs and histories.
    pub fn kind(&self) -> &'static str {
        match self {
            Directive::RegisterAck { .. } => "RegisterAck",
            Directive::ShardHome { .. } => "ShardHome",
            Directive::HostShard { .. } => "HostShard",
            Directive::BeginHandOff { .. } => "BeginHandOff",
            Directive::HandOff { .. } => "HandOff",
            Directive::TenureGranted { .. } => "TenureGranted",
        }
    }
}

/// Everything a region receives on its channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RegionMsg {
    /// From the coordinator.
    Directive(Directive),
    /// A coordinator asks a region to register with it: when it starts
    /// recovery, when a member it has no registration from joins its view or
    /// shows a new incarnation, and when an unregistered region asks it
    /// something. Not a directive: it moves nothing, so it needs no epoch.
    RegisterRequest,
}

/// Region to region, on the type's data channel: user messages and the
/// replies to asks. The user's message or reply is inline, so it is encoded
/// once, straight into its frame, and decoded once: by its shard's task when
/// the shard is hosted where it arrives (the connection reads only the
/// shard, which comes first), else by the receiving connection's task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DataMsg<M, R> {
    /// A user message for an entity, forwarded by another region.
    Deliver {
        /// The entity's shard.
        shard: ShardId,
        /// The entity.
        entity: EntityId,
        /// Set for `ask`: the asking node and its request number.
        reply_to: Option<(NodeId, u64)>,
        /// Forwarding hops so far; bounded to stop loops while tables disagree.
        hops: u8,
        /// The user message.
        message: M,
    },
    /// The answer to a forwarded `ask`.
    Reply {
        /// The request number.
        request: u64,
        /// The entity's reply, or why there is none.
        result: Result<R, String>,
    },
}

/// A [`DataMsg`] as received: its head decoded first and the user's part
/// apart, so that an asker whose message does not decode hears why.
#[derive(Debug)]
pub(crate) enum DataIn<M, R> {
    Deliver {
        shard: ShardId,
        entity: EntityId,
        reply_to: Option<(NodeId, u64)>,
        hops: u8,
        message: Result<M, ProtocolError>,
    },
    Reply {
        request: u64,
        result: Result<Result<R, String>, ProtocolError>,
    },
}

/// [`DataMsg`] without its last field; the variants in the same order.
#[derive(Deserialize)]
enum DataHead {
    Deliver {
        shard: ShardId,
        entity: EntityId,
        reply_to: Option<(NodeId, u64)>,
        hops: u8,
    },
    Reply {
        request: u64,
    },
}

/// Decodes a [`DataMsg`] in two steps. Postcard writes a variant's fields in
/// order with nothing between them, so the head decodes on its own and the
/// user's part is what follows it.
pub(crate) fn decode_data<M: DeserializeOwned, R: DeserializeOwned>(
    bytes: &[u8],
) -> Result<DataIn<M, R>, ProtocolError> {
    // The common case, read by hand; anything else (a reply, bytes that
    // are not well formed) takes postcard's path, which also names errors.
    if let Some(head) = DeliverHead::take(bytes) {
        return Ok(DataIn::Deliver {
            shard: head.shard,
            entity: head.entity,
            reply_to: head.reply_to,
            hops: head.hops,
            message: decode("entity message", head.rest),
        });
    }
    let (head, rest) =
        postcard::take_from_bytes::<DataHead>(bytes).map_err(|source| ProtocolError {
            what: "region data",
            source,
        })?;
    Ok(match head {
        DataHead::Deliver {
            shard,
            entity,
            reply_to,
            hops,
        } => DataIn::Deliver {
            shard,
            entity,
            reply_to,
            hops,
            message: decode("entity message", rest),
        },
        DataHead::Reply { request } => DataIn::Reply {
            request,
            result: decode("entity reply", rest),
        },
    })
}

/// Writes `DataMsg::Deliver { shard, entity, reply_to, hops, message }`
/// into `buf` exactly as postcard does: the head by hand (it is on every
/// remote message, and postcard's generic path costs several calls per
/// field), the user's message with postcard.
pub(crate) fn encode_deliver<M: Serialize>(
    buf: &mut bytes::BytesMut,
    shard: ShardId,
    entity: &EntityId,
    reply_to: Option<(NodeId, u64)>,
    hops: u8,
    message: &M,
) -> Result<(), postcard::Error> {
    use bytes::BufMut;
    const DELIVER: u64 = 0;
    let id = entity.as_str().as_bytes();
    buf.reserve(1 + 5 + 10 + id.len() + 1 + 20 + 1);
    put_varint(buf, DELIVER);
    put_varint(buf, u64::from(shard.0));
    put_varint(buf, id.len() as u64);
    buf.put_slice(id);
    match reply_to {
        None => buf.put_u8(0),
        Some((node, request)) => {
            buf.put_u8(1);
            put_varint(buf, node.0);
            put_varint(buf, request);
        }
    }
    buf.put_u8(hops);
    encode_into(message, buf)
}

/// Postcard's varint: seven bits a byte, low bits first.
fn put_varint(buf: &mut bytes::BytesMut, mut value: u64) {
    use bytes::BufMut;
    while value >= 0x80 {
        buf.put_u8((value & 0x7f) as u8 | 0x80);
        value >>= 7;
    }
    buf.put_u8(value as u8);
}

/// The shard of a [`DataMsg::Deliver`], read from its first bytes alone
/// (postcard writes the variant's index, then the shard, as varints); `None`
/// for a reply or bytes that do not start a message. Lets the receiving
/// connection route a message and leave its decoding to the shard's task.
pub(crate) fn deliver_shard(bytes: &[u8]) -> Option<ShardId> {
    const DELIVER: u32 = 0;
    let (variant, rest) = postcard::take_from_bytes::<u32>(bytes).ok()?;
    if variant != DELIVER {
        return None;
    }
    let (shard, _) = postcard::take_from_bytes::<ShardId>(rest).ok()?;
    Some(shard)
}

/// The head of a well-formed `DataMsg::Deliver`, read by hand as postcard
/// wrote it; stricter than postcard (any doubt gives `None`), never laxer.
struct DeliverHead<'a> {
    shard: ShardId,
    entity: EntityId,
    reply_to: Option<(NodeId, u64)>,
    hops: u8,
    /// The user's message.
    rest: &'a [u8],
}

impl<'a> DeliverHead<'a> {
    fn take(bytes: &'a [u8]) -> Option<Self> {
        let mut at = bytes;
        if take_varint(&mut at, 5)? != 0 {
            return None; // not `Deliver`
        }
        let shard = ShardId(u32::try_from(take_varint(&mut at, 5)?).ok()?);
        let len = usize::try_from(take_varint(&mut at, 10)?).ok()?;
        let (id, rest) = at.split_at_checked(len)?;
        let entity = EntityId::from(std::str::from_utf8(id).ok()?);
        at = rest;
        let (&option, rest) = at.split_first()?;
        at = rest;
        let reply_to = match option {
            0 => None,
            1 => Some((NodeId(take_varint(&mut at, 10)?), take_varint(&mut at, 10)?)),
            _ => return None,
        };
        let (&hops, rest) = at.split_first()?;
        Some(Self {
            shard,
            entity,
            reply_to,
            hops,
            rest,
        })
    }
}

/// A varint of at most `max` bytes off the front of `at`; `None` when it
/// is cut or would not fit 64 bits.
fn take_varint(at: &mut &[u8], max: usize) -> Option<u64> {
    let mut value = 0u64;
    for i in 0..max {
        let (&byte, rest) = at.split_first()?;
        *at = rest;
        if i == 9 && byte > 1 {
            return None; // beyond 64 bits
        }
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// Bytes that are not a valid protocol message.
#[derive(Debug, thiserror::Error)]
#[error("undecodable {what}: {source}")]
pub struct ProtocolError {
    what: &'static str,
    #[source]
    source: postcard::Error,
}

/// Encodes a protocol or user message with postcard.
pub fn encode<T: Serialize>(value: &T) -> Result<Bytes, postcard::Error> {
    postcard::to_stdvec(value).map(Bytes::from)
}

/// Encodes `value` with postcard at the end of `buf` (a frame being built).
pub fn encode_into<T: Serialize>(
    value: &T,
    buf: &mut bytes::BytesMut,
) -> Result<(), postcard::Error> {
    postcard::serialize_with_flavor(value, cluster::BytesFlavor(buf))
}

/// Decodes a protocol or user message; `what` names it in the error.
pub fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, ProtocolError> {
    postcard::from_bytes(bytes).map_err(|source| ProtocolError { what, source })
}

/// The three channels of an entity type: its regions' protocol, its
/// coordinators', and the user messages between regions.
///
/// Derived from a stable hash of the type name so every node agrees without
/// configuration; [`TypeChannels::of`] is deterministic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TypeChannels {
    /// Where regions listen.
    pub region: Channel,
    /// Where coordinators listen.
    pub coordinator: Channel,
    /// User messages and replies between regions ([`DataMsg`]), apart from
    /// the protocol so the receiving side hands them on without a task hop.
    pub data: Channel,
}

impl TypeChannels {
    /// The channels of `type_name` (never the membership channel).
    pub fn of(type_name: &TypeName) -> Self {
        let hash = crate::shard_of(&EntityId::from(&type_name.0), 21_000).0;
        // Multiples of three from 1024 upwards (below 64 026): region = n,
        // coordinator = n + 1, data = n + 2.
        let base = 1024 + u16::try_from(hash).unwrap_or(0) * 3;
        Self {
            region: Channel(base),
            coordinator: Channel(base + 1),
            data: Channel(base + 2),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(msg: &DataMsg<&String, &u64>) -> Vec<u8> {
        let mut buf = bytes::BytesMut::new();
        encode_into(msg, &mut buf).expect("encodes");
        buf.to_vec()
    }

    #[test]
    fn a_deliver_decodes_in_two_steps_as_it_was_sent() {
        let message = "hello".to_string();
        let bytes = sent(&DataMsg::Deliver {
            shard: ShardId(3),
            entity: EntityId::from("e-1"),
            reply_to: Some((NodeId(2), 77)),
            hops: 1,
            message: &message,
        });
        match decode_data::<String, u64>(&bytes).expect("a head") {
            DataIn::Deliver {
                shard,
                entity,
                reply_to,
                hops,
                message,
            } => {
                assert_eq!(
                    (shard, entity, reply_to, hops),
                    (ShardId(3), EntityId::from("e-1"), Some((NodeId(2), 77)), 1)
                );
                assert_eq!(message.expect("a message"), "hello");
            }
            other => panic!("decoded as {other:?}"),
        }
        // Same bytes as the owned form: what the snapshot pins is what is sent.
        let owned = DataMsg::<String, u64>::Deliver {
            shard: ShardId(3),
            entity: EntityId::from("e-1"),
            reply_to: Some((NodeId(2), 77)),
            hops: 1,
            message,
        };
        assert_eq!(encode(&owned).expect("encodes").to_vec(), bytes);
    }

    #[test]
    fn replies_decode_and_a_bad_message_keeps_its_head() {
        for result in [Ok(&42u64), Err("boom".to_string())] {
            let expected = result.clone().copied();
            let bytes = sent(&DataMsg::Reply { request: 9, result });
            match decode_data::<String, u64>(&bytes).expect("a head") {
                DataIn::Reply { request, result } => {
                    assert_eq!(request, 9);
                    assert_eq!(result.expect("decodes"), expected);
                }
                other => panic!("decoded as {other:?}"),
            }
        }
        // A message that is not a String (0xff is no valid length): the
        // head survives, so the asker can be answered.
        let mut bytes = sent(&DataMsg::Deliver {
            shard: ShardId(1),
            entity: EntityId::from("e"),
            reply_to: Some((NodeId(4), 5)),
            hops: 1,
            message: &String::new(),
        });
        bytes.pop();
        bytes.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
        match decode_data::<String, u64>(&bytes).expect("a head") {
            DataIn::Deliver {
                reply_to, message, ..
            } => {
                assert_eq!(reply_to, Some((NodeId(4), 5)));
                assert!(message.is_err());
            }
            other => panic!("decoded as {other:?}"),
        }
        assert!(decode_data::<String, u64>(&[7]).is_err(), "no such variant");
    }

    #[test]
    fn a_deliver_written_by_hand_is_postcards() {
        let message = "a message".to_string();
        let long_id = "an-entity-id-longer-than-a-hundred-and-twenty-seven-bytes-".repeat(3);
        for (shard, entity, reply_to, hops) in [
            (0, "e", None, 0),
            (127, "cart-42", Some((NodeId(1), 0)), 1),
            (
                128,
                long_id.as_str(),
                Some((NodeId(u64::MAX), u64::MAX)),
                u8::MAX,
            ),
            (u32::MAX, "", Some((NodeId(300), 16_384)), 7),
        ] {
            let (shard, entity) = (ShardId(shard), EntityId::from(entity));
            let mut by_hand = bytes::BytesMut::new();
            encode_deliver(&mut by_hand, shard, &entity, reply_to, hops, &message).unwrap();
            let expected = sent(&DataMsg::Deliver {
                shard,
                entity,
                reply_to,
                hops,
                message: &message,
            });
            assert_eq!(by_hand.to_vec(), expected, "{shard:?} {reply_to:?} {hops}");
        }
    }

    #[test]
    fn a_deliver_read_by_hand_is_what_postcard_reads() {
        let message = "m".to_string();
        let long_id = "x".repeat(300);
        for (shard, entity, reply_to, hops) in [
            (0, "e", None, 0),
            (
                128,
                long_id.as_str(),
                Some((NodeId(u64::MAX), u64::MAX)),
                u8::MAX,
            ),
            (u32::MAX, "", Some((NodeId(300), 16_384)), 7),
        ] {
            let bytes = sent(&DataMsg::Deliver {
                shard: ShardId(shard),
                entity: EntityId::from(entity),
                reply_to,
                hops,
                message: &message,
            });
            let head = DeliverHead::take(&bytes).expect("well formed");
            let (by_postcard, rest) = postcard::take_from_bytes::<DataHead>(&bytes).unwrap();
            let DataHead::Deliver {
                shard,
                entity,
                reply_to,
                hops,
            } = by_postcard
            else {
                panic!("a deliver");
            };
            assert_eq!(
                (head.shard, head.entity, head.reply_to, head.hops, head.rest),
                (shard, entity, reply_to, hops, rest)
            );
        }
        // Not read by hand: a reply, cut bytes, a bad option tag, bad UTF-8,
        // a shard beyond u32, a varint beyond 64 bits.
        let reply = sent(&DataMsg::Reply {
            request: 1,
            result: Ok(&2),
        });
        let bad: [&[u8]; 6] = [
            &reply,
            &[0, 1, 3, b'a'],
            &[0, 1, 1, b'a', 2, 0],
            &[0, 1, 1, 0xff, 0, 0],
            &[0, 0x80, 0x80, 0x80, 0x80, 0x10, 0, 0, 0],
            &[
                0, 1, 0, 1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0, 0,
            ],
        ];
        for bytes in bad {
            assert!(DeliverHead::take(bytes).is_none(), "{bytes:?}");
            // And postcard refuses them too, or reads a reply.
            let by_postcard = postcard::take_from_bytes::<DataHead>(bytes);
            assert!(
                matches!(by_postcard, Err(_) | Ok((DataHead::Reply { .. }, _))),
                "{bytes:?}"
            );
        }
    }

    #[test]
    fn the_shard_of_a_deliver_reads_from_its_first_bytes() {
        let message = "m".to_string();
        for shard in [0, 1, 127, 128, 70_000, u32::MAX] {
            let bytes = sent(&DataMsg::Deliver {
                shard: ShardId(shard),
                entity: EntityId::from("e"),
                reply_to: None,
                hops: 1,
                message: &message,
            });
            assert_eq!(deliver_shard(&bytes), Some(ShardId(shard)));
        }
        let reply = sent(&DataMsg::Reply {
            request: 0,
            result: Ok(&1),
        });
        assert_eq!(deliver_shard(&reply), None, "a reply has no shard");
        assert_eq!(deliver_shard(&[]), None);
        assert_eq!(deliver_shard(&[0, 0xff]), None, "a cut varint");
    }
}
