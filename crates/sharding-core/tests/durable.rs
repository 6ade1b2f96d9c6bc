//! Durable entities against the in-memory store: state survives
//! incarnations, and a stale incarnation's write is refused by the store.

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use serde::{Deserialize, Serialize};
use sharding_core::durable::{Durable, DurableEntity, DurableError, InMemoryStateStore};
use sharding_core::{Entity, EntityContext, EntityId, Epoch, FencingToken, ShardId};

#[derive(Serialize, Deserialize)]
struct Add(i64);

struct Counter;

impl DurableEntity for Counter {
    type State = i64;
    type Message = Add;
    type Reply = i64;
    fn apply(&mut self, state: &mut i64, Add(n): Add) -> i64 {
        *state += n;
        *state
    }
}

fn token(epoch: u64, allocation: u64) -> FencingToken {
    FencingToken {
        epoch: Epoch(epoch),
        allocation,
    }
}

async fn incarnation(
    store: &InMemoryStateStore,
    t: FencingToken,
) -> Durable<Counter, InMemoryStateStore> {
    let mut entity = Durable::new(Counter, store.clone());
    let context = EntityContext::new(EntityId::from("c1"), ShardId(1), t);
    entity.started_in(&context).await;
    entity
}

fn saved(store: &InMemoryStateStore) -> i64 {
    postcard::from_bytes(&store.state(&EntityId::from("c1")).unwrap()).unwrap()
}

#[tokio::test]
async fn state_survives_from_one_incarnation_to_the_next() {
    let store = InMemoryStateStore::new();
    let mut first = incarnation(&store, token(1, 1)).await;
    assert_eq!(first.handle(Add(2)).await, Ok(2));
    assert_eq!(first.handle(Add(3)).await, Ok(5));
    first.stopped().await;
    let mut second = incarnation(&store, token(1, 2)).await;
    assert_eq!(second.handle(Add(1)).await, Ok(6));
    assert_eq!(saved(&store), 6);
}

#[tokio::test]
async fn a_stale_incarnation_is_fenced_by_the_store_and_refuses_everything_after() {
    let store = InMemoryStateStore::with_history();
    let mut old = incarnation(&store, token(3, 7)).await;
    assert_eq!(old.handle(Add(1)).await, Ok(1));
    // The old process pauses; its shard moves; the new home claims the row.
    let mut new = incarnation(&store, token(3, 8)).await;
    assert_eq!(new.handle(Add(10)).await, Ok(11));
    // The old one wakes and writes: refused, not acknowledged.
    let refused = old.handle(Add(100)).await;
    assert!(
        matches!(refused, Err(DurableError::Fenced(_))),
        "{refused:?}"
    );
    assert_eq!(store.fenced_writes(), 1);
    assert_eq!(saved(&store), 11);
    // It never writes again, even what it could.
    assert!(matches!(
        old.handle(Add(1)).await,
        Err(DurableError::Fenced(_))
    ));
    assert_eq!(
        store.history().len(),
        3,
        "the second refusal never reached the store"
    );
    assert_eq!(new.handle(Add(1)).await, Ok(12));
}

#[tokio::test]
async fn an_incarnation_that_starts_after_a_newer_one_is_fenced_at_its_claim() {
    let store = InMemoryStateStore::new();
    let mut new = incarnation(&store, token(2, 1)).await;
    assert_eq!(new.handle(Add(4)).await, Ok(4));
    // Started by a coordinator of an older epoch (a message in flight).
    let mut old = incarnation(&store, token(1, 9)).await;
    assert!(matches!(
        old.handle(Add(1)).await,
        Err(DurableError::Fenced(_))
    ));
    assert_eq!(saved(&store), 4);
    assert_eq!(store.token(&EntityId::from("c1")), Some(token(2, 1)));
}

#[tokio::test]
async fn a_store_that_is_down_acknowledges_nothing_and_loses_nothing() {
    let store = InMemoryStateStore::new();
    let mut entity = incarnation(&store, token(1, 1)).await;
    assert_eq!(entity.handle(Add(1)).await, Ok(1));
    store.set_available(false);
    assert!(matches!(
        entity.handle(Add(5)).await,
        Err(DurableError::Unavailable(_))
    ));
    store.set_available(true);
    // The unacknowledged add is not in the state; the next one is.
    assert_eq!(entity.handle(Add(2)).await, Ok(3));
    assert_eq!(saved(&store), 3);
    // Down while starting: the first message loads it.
    store.set_available(false);
    let mut late = incarnation(&store, token(1, 2)).await;
    store.set_available(true);
    assert_eq!(late.handle(Add(1)).await, Ok(4));
}

#[tokio::test]
async fn unreadable_stored_state_is_a_typed_error() {
    let store = InMemoryStateStore::new();
    let mut writer = Durable::new(Strings, store.clone());
    writer
        .started_in(&EntityContext::new(
            EntityId::from("c1"),
            ShardId(1),
            token(1, 1),
        ))
        .await;
    // A string of 200 bytes is not an i64 varint.
    writer.handle("x".repeat(200)).await.unwrap();
    let mut reader = incarnation(&store, token(1, 2)).await;
    let error = reader.handle(Add(1)).await.unwrap_err();
    assert!(matches!(error, DurableError::Corrupt(_)), "{error}");
}

struct Strings;

impl DurableEntity for Strings {
    type State = String;
    type Message = String;
    type Reply = ();
    fn apply(&mut self, state: &mut String, message: String) {
        *state = message;
    }
}
