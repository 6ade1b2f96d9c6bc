//! Wire-level contracts pinned by snapshots: the entity-to-shard hash, the
//! protocol encodings, and the coordinator state model.

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::fmt::Write;

use cluster::NodeId;
use sharding_core::coordinator::{CoordinatorEvent, CoordinatorState, StateError};
use sharding_core::protocol::{CoordinatorMsg, DataMsg, Directive, RegionMsg, encode};
use sharding_core::{EntityId, Epoch, ShardId, shard_of};

#[test]
fn shard_hash_is_stable() {
    let ids = [
        "",
        "a",
        "b",
        "cart-1",
        "cart-2",
        "user:42",
        "device/7f3a",
        "order-2026-11-27",
        "ünïcödé",
        "a-very-long-entity-identifier-that-goes-on-and-on-0123456789",
    ];
    let mut table = String::new();
    for id in ids {
        let e = EntityId::from(id);
        writeln!(
            table,
            "{id:?}: 1 -> {}, 10 -> {}, 64 -> {}, 1000 -> {}",
            shard_of(&e, 1).0,
            shard_of(&e, 10).0,
            shard_of(&e, 64).0,
            shard_of(&e, 1000).0
        )
        .unwrap();
    }
    insta::assert_snapshot!(table);
}

#[test]
fn shards_spread_evenly() {
    let mut counts = [0u32; 64];
    for i in 0..64_000 {
        counts[shard_of(&EntityId::from(format!("entity-{i}")), 64).0 as usize] += 1;
    }
    let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
    assert!(*min > 850 && *max < 1150, "min {min} max {max}");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn protocol_encodings_are_stable() {
    let epoch = Epoch(7);
    let shard = ShardId(3);
    let coordinator_msgs = [
        CoordinatorMsg::Register {
            shards: vec![ShardId(1), ShardId(300)],
            max_epoch: epoch,
            incarnation: 1_764_000_000_000,
        },
        CoordinatorMsg::GetShardHome { shard },
        CoordinatorMsg::ShardStarted { shard },
        CoordinatorMsg::BeginHandOffAck { shard },
        CoordinatorMsg::ShardStopped { shard },
        CoordinatorMsg::GracefulShutdownReq,
    ];
    let region_msgs = [
        RegionMsg::Directive(Directive::RegisterAck { epoch }),
        RegionMsg::Directive(Directive::ShardHome {
            epoch,
            shard,
            region: NodeId(2),
            allocation: 1,
        }),
        RegionMsg::Directive(Directive::HostShard {
            epoch,
            shard,
            allocation: 1,
        }),
        RegionMsg::Directive(Directive::BeginHandOff { epoch, shard }),
        RegionMsg::Directive(Directive::HandOff { epoch, shard }),
        RegionMsg::RegisterRequest,
    ];
    // Between regions: the user's message and reply inline (here a string
    // and a u32), each encoded once.
    let data_msgs: [DataMsg<String, u32>; 3] = [
        DataMsg::Deliver {
            shard,
            entity: EntityId::from("cart-1"),
            reply_to: Some((NodeId(4), 99)),
            hops: 1,
            message: "add 3".into(),
        },
        DataMsg::Reply {
            request: 99,
            result: Ok(42),
        },
        DataMsg::Reply {
            request: 100,
            result: Err("boom".into()),
        },
    ];
    let mut out = String::new();
    for m in &coordinator_msgs {
        writeln!(out, "{m:?}\n  {}", hex(&encode(m).unwrap())).unwrap();
    }
    for m in &region_msgs {
        writeln!(out, "{m:?}\n  {}", hex(&encode(m).unwrap())).unwrap();
    }
    for m in &data_msgs {
        writeln!(out, "{m:?}\n  {}", hex(&encode(m).unwrap())).unwrap();
    }
    insta::assert_snapshot!(out);
}

#[test]
fn coordinator_state_model() {
    let (r1, r2) = (NodeId(1), NodeId(2));
    let mut state = CoordinatorState::default();
    let events = [
        CoordinatorEvent::RegionRegistered { region: r1 },
        CoordinatorEvent::RegionRegistered { region: r2 },
        CoordinatorEvent::ShardHomeAllocated {
            shard: ShardId(1),
            region: r1,
        },
        CoordinatorEvent::ShardHomeAllocated {
            shard: ShardId(2),
            region: r2,
        },
        CoordinatorEvent::ShardHomeAllocated {
            shard: ShardId(3),
            region: r2,
        },
        CoordinatorEvent::ShardHomeDeallocated { shard: ShardId(3) },
    ];
    for e in &events {
        state.apply(e).unwrap();
        assert!(state.is_consistent());
    }
    insta::assert_json_snapshot!("after_allocations", state);

    // Invalid events are refused and change nothing.
    let before = state.clone();
    assert_eq!(
        state.apply(&CoordinatorEvent::ShardHomeAllocated {
            shard: ShardId(1),
            region: r2
        }),
        Err(StateError::ShardAlreadyAllocated {
            shard: ShardId(1),
            region: r1
        })
    );
    assert_eq!(
        state.apply(&CoordinatorEvent::ShardHomeAllocated {
            shard: ShardId(9),
            region: NodeId(7)
        }),
        Err(StateError::UnknownRegion(NodeId(7)))
    );
    assert_eq!(
        state.apply(&CoordinatorEvent::ShardHomeDeallocated { shard: ShardId(3) }),
        Err(StateError::ShardNotAllocated(ShardId(3)))
    );
    assert_eq!(
        state.apply(&CoordinatorEvent::RegionRegistered { region: r1 }),
        Err(StateError::RegionAlreadyRegistered(r1))
    );
    assert_eq!(state, before);

    state
        .apply(&CoordinatorEvent::RegionTerminated { region: r2 })
        .unwrap();
    assert_eq!(state.home(ShardId(2)), None);
    insta::assert_json_snapshot!("after_region_terminated", state);
}
