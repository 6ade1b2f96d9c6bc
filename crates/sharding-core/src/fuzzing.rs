//! The sharding protocol's decoders for fuzzing (feature `fuzzing`): every
//! region and coordinator message, the data between regions, and a user
//! message as the region decodes it. See `cluster::fuzzing`.

use cluster::NodeId;
use cluster::fuzzing::Decoder;
use serde::{Deserialize, Serialize};

use crate::protocol::{
    CoordinatorMsg, DataIn, DataMsg, Directive, RegionMsg, decode, decode_data, encode,
};
use crate::{EntityId, Epoch, ShardId};

/// A user message of the usual shape (the region decodes any user type
/// through the same `decode`).
#[derive(Serialize, Deserialize)]
enum UserMsg {
    Add { id: String, amount: i64 },
    Tags(Vec<String>),
}

fn sample<T: Serialize>(value: &T) -> Vec<u8> {
    encode(value).map(|b| b.to_vec()).unwrap_or_default()
}

/// The sharding protocol's network decoders.
pub fn decoders() -> Vec<Decoder> {
    let epoch = Epoch(3);
    vec![
        Decoder {
            name: "region message",
            decode: |b| {
                decode::<RegionMsg>("region message", b)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            },
            samples: vec![
                sample(&RegionMsg::Directive(Directive::HostShard {
                    allocation: 7,
                    epoch,
                    shard: ShardId(4),
                })),
                sample(&RegionMsg::RegisterRequest),
            ],
        },
        Decoder {
            name: "region data",
            decode: |b| match decode_data::<UserMsg, u64>(b).map_err(|e| e.to_string())? {
                DataIn::Deliver { message, .. } => message.map(|_| ()).map_err(|e| e.to_string()),
                DataIn::Reply { result, .. } => result.map(|_| ()).map_err(|e| e.to_string()),
            },
            samples: vec![
                sample(&DataMsg::<UserMsg, u64>::Deliver {
                    shard: ShardId(1),
                    entity: EntityId::from("counter-17"),
                    reply_to: Some((NodeId(2), 99)),
                    hops: 1,
                    message: UserMsg::Add {
                        id: "counter-17".into(),
                        amount: 3,
                    },
                }),
                sample(&DataMsg::<UserMsg, u64>::Reply {
                    request: 5,
                    result: Err("gone".into()),
                }),
                sample(&DataMsg::<UserMsg, u64>::Reply {
                    request: 6,
                    result: Ok(12),
                }),
            ],
        },
        Decoder {
            name: "coordinator message",
            decode: |b| {
                decode::<CoordinatorMsg>("coordinator message", b)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            },
            samples: vec![
                sample(&CoordinatorMsg::Register {
                    shards: vec![ShardId(1), ShardId(9)],
                    max_epoch: epoch,
                    incarnation: 4,
                }),
                sample(&CoordinatorMsg::RenewTenure { seq: 12 }),
            ],
        },
        Decoder {
            name: "user message",
            decode: |b| {
                decode::<UserMsg>("entity message", b)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            },
            samples: vec![
                sample(&UserMsg::Add {
                    id: "c1".into(),
                    amount: -4,
                }),
                sample(&UserMsg::Tags(vec!["a".into(), "bc".into()])),
            ],
        },
    ]
}
