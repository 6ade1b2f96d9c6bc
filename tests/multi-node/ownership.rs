//! Shard ownership converges after every fault, judged from every node: a
//! restart before the node is declared down, unregistered regions, and
//! registrations carrying absurd epochs.

use std::time::Duration;

use bytes::Bytes;
use cluster::{NodeId, Transport};
use multinode::{COUNTER_TYPE, CounterMsg, HarnessSettings, MultiNode};
use sharding_core::protocol::{CoordinatorMsg, RegionMsg, TypeChannels, decode, encode};
use sharding_core::{EntityId, Epoch, TypeName};
use tokio::time::sleep;

use crate::support::*;

const ENTITIES: usize = 200;

fn channels() -> TypeChannels {
    TypeChannels::of(&TypeName::from(COUNTER_TYPE))
}

/// Every shard with at most one host, every entity through every node.
async fn converged(harness: &MultiNode, limit: Duration, expected: impl Fn(usize) -> i64) {
    let via = harness.node_ids();
    for node in &via {
        all_answer(harness, &[*node], ENTITIES, limit, &expected).await;
    }
    let twice: Vec<_> = harness
        .shard_hosts()
        .into_iter()
        .filter(|(_, hosts)| hosts.len() > 1)
        .collect();
    assert!(twice.is_empty(), "shards hosted twice: {twice:?}");
}

async fn restart_the_leader_before_it_is_declared_down(settings: HarnessSettings) {
    let mut harness = MultiNode::start(5, settings);
    settled(&harness).await;
    let via = harness.node_ids();
    for i in 0..ENTITIES {
        let node = via[i % via.len()];
        harness
            .region(node)
            .ask(CounterMsg::add(entity(i), 1))
            .await
            .unwrap()
            .unwrap();
    }
    // Node 1 hosts some shards and leads; it comes back 2 s later, long
    // before membership's down-after (10 s): nobody saw it go.
    let before = harness.shard_hosts();
    assert!(before.values().any(|h| h.contains(&id(1))));
    harness.kill(id(1));
    sleep(Duration::from_secs(2)).await;
    harness.start_node(id(1));
    // Counters are durable: node 1's come back with their count too.
    converged(&harness, Duration::from_secs(40), |_| 1).await;
}

#[tokio::test(start_paused = true)]
async fn a_leader_restarted_before_down_leaves_every_shard_reachable_once_without_a_lease() {
    let mut s = settings(21);
    s.region.passivate_after = Duration::from_secs(3600);
    restart_the_leader_before_it_is_declared_down(s).await;
}

#[tokio::test(start_paused = true)]
async fn a_leader_restarted_before_down_leaves_every_shard_reachable_once_with_a_lease() {
    let mut s = memory_lease(22);
    s.region.passivate_after = Duration::from_secs(3600);
    restart_the_leader_before_it_is_declared_down(s).await;
}

#[tokio::test(start_paused = true)]
async fn an_unknown_region_asking_for_a_home_is_told_to_register() {
    let harness = MultiNode::start(3, settings(23));
    settled(&harness).await;
    // A node the coordinator has no registration from (not even a member).
    let stranger = harness.network().join(NodeId(9));
    let mut inbox = stranger.subscribe(channels().region);
    let ask = encode(&CoordinatorMsg::GetShardHome {
        shard: sharding_core::ShardId(4),
    })
    .unwrap();
    stranger.send(id(1), channels().coordinator, ask).unwrap();
    sleep(Duration::from_millis(50)).await;
    let answer = inbox.try_recv().expect("the coordinator ignored it");
    let msg: RegionMsg = decode("region message", &answer.payload).unwrap();
    assert_eq!(msg, RegionMsg::RegisterRequest);
}

#[tokio::test(start_paused = true)]
async fn a_registration_with_an_absurd_epoch_is_refused_and_never_wraps_the_term() {
    let harness = MultiNode::start(3, settings(24));
    settled(&harness).await;
    let before = harness.coordinator_status(id(1)).unwrap().epoch.unwrap();
    let stranger = harness.network().join(NodeId(9));
    for max_epoch in [u64::MAX, u64::MAX - 1, Epoch::CEILING.0 + 1] {
        let register = encode(&CoordinatorMsg::Register {
            shards: vec![],
            max_epoch: Epoch(max_epoch),
            incarnation: 1,
        })
        .unwrap();
        stranger
            .send(id(1), channels().coordinator, register)
            .unwrap();
    }
    // Garbage on the coordinator channel is dropped too.
    stranger
        .send(
            id(1),
            channels().coordinator,
            Bytes::from_static(&[0xff; 9]),
        )
        .unwrap();
    sleep(Duration::from_secs(5)).await;
    let after = harness.coordinator_status(id(1)).unwrap().epoch.unwrap();
    assert_eq!(after, before, "the term moved");
    // Regions still obey the real coordinator.
    for node in harness.node_ids() {
        harness
            .region(node)
            .ask(CounterMsg::add(entity(node.0 as usize), 1))
            .await
            .unwrap()
            .unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn impossible_tenure_settings_are_refused_naming_the_field() {
    use std::sync::Arc;

    use cluster::{InProcessNetwork, Membership, MembershipSettings, NodeAddr};
    use lease_api::{Lease, LeaseSettings};
    use lease_memory::InMemoryLeaseStore;
    use multinode::{Counter, DurableCounter};
    use sharding_coordinator::{ClusterSharding, ShardingSettings, StartError};
    use sharding_core::durable::InMemoryStateStore;

    let network = InProcessNetwork::new(1);
    let transport = Arc::new(network.join(NodeId(1)));
    let membership = Membership::start(
        transport.clone(),
        NodeAddr::from("inproc:1"),
        MembershipSettings::new(Vec::new()),
    )
    .unwrap();
    let sharding = ClusterSharding::new(transport, membership.view());
    let store = InMemoryLeaseStore::new();
    let mut settings = ShardingSettings::new("counter", |m: &CounterMsg| m.entity_id(), {
        let states = InMemoryStateStore::new();
        move |_: &EntityId| DurableCounter::new(Counter, states.clone())
    });
    // A tenure shorter than two renewals lapses on one lost message.
    settings.tenure.tenure = Duration::from_secs(5);
    settings.tenure.renew_interval = Duration::from_secs(3);
    settings.lease = Some(Arc::new(
        store.lease(
            LeaseSettings::builder("counter-coordinator", "node-1")
                .build()
                .unwrap(),
        ),
    ) as Arc<dyn Lease>);
    match sharding.start(settings) {
        Err(StartError::InvalidTenure(type_name, error)) => {
            assert_eq!(type_name, TypeName::from("counter"));
            assert_eq!(error.field, "tenure");
        }
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("started with a tenure that cannot be renewed"),
    }
}
