//! Durable counters under faults: a write that reaches the store after its
//! incarnation's tenure ended is refused by the store itself.

use std::time::Duration;

use multinode::{CounterMsg, MultiNode};
use sharding_core::EntityId;
use sharding_core::durable::DurableError;
use tokio::time::sleep;

use crate::support::{entity, id, memory_lease, settled};

#[tokio::test(start_paused = true)]
async fn a_write_paused_past_its_tenure_is_refused_by_the_store() {
    let harness = MultiNode::start(3, memory_lease(19));
    settled(&harness).await;
    for i in 0..64 {
        harness
            .region(id(1))
            .ask(CounterMsg::add(entity(i), 1))
            .await
            .unwrap()
            .unwrap();
    }
    // A counter whose shard lives on node 3 (not the coordinator's node).
    let hosts = harness.shard_hosts();
    let region = harness.region(id(1)).clone();
    let counter = (0..64)
        .map(entity)
        .find(|e| hosts.get(&region.shard_of(&EntityId::from(e.as_str()))) == Some(&vec![id(3)]))
        .expect("a counter on node 3");
    let key = EntityId::from(&counter);
    let states = harness.states().clone();

    // Node 3's incarnation is on its way to the store when node 3 pauses
    // (cut off from everyone, its write held in flight).
    states.hold(&key);
    let on_node_3 = harness.region(id(3)).clone();
    let stale = tokio::spawn({
        let counter = counter.clone();
        async move { on_node_3.ask(CounterMsg::add(counter, 100)).await }
    });
    sleep(Duration::from_millis(100)).await;
    assert_eq!(states.held_saves(), 1, "the write is in flight");
    harness.network().isolate(id(3));

    // Node 3's tenure lapses, the coordinator re-homes the shard, and the
    // new home claims the counter's row with a newer token.
    let mut answered = None;
    for _ in 0..60 {
        match harness
            .region(id(1))
            .ask(CounterMsg::add(counter.clone(), 10))
            .await
        {
            Ok(Ok(v)) => {
                answered = Some(v);
                break;
            }
            _ => sleep(Duration::from_millis(500)).await,
        }
    }
    assert_eq!(
        answered,
        Some(11),
        "the new home has the acknowledged count"
    );
    assert_ne!(
        harness.shard_hosts().get(&region.shard_of(&key)),
        Some(&vec![id(3)])
    );

    // Node 3 wakes: its write lands in the store, which refuses it.
    states.release(&key);
    let stale = stale.await.unwrap();
    assert!(
        !matches!(stale, Ok(Ok(_))),
        "the stale write was acknowledged: {stale:?}"
    );
    if let Ok(answer) = &stale {
        assert!(matches!(answer, Err(DurableError::Fenced(_))), "{answer:?}");
    }
    sleep(Duration::from_millis(100)).await;
    assert_eq!(states.fenced_writes(), 1);
    let stored: i64 = postcard::from_bytes(&states.state(&key).unwrap()).unwrap();
    assert_eq!(stored, 11, "the stale +100 is nowhere");

    harness.network().heal();
    sleep(Duration::from_secs(20)).await;
    for node in harness.node_ids() {
        let v = harness
            .region(node)
            .ask(CounterMsg::get(counter.clone()))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(v, 11, "through {node}");
    }
}
