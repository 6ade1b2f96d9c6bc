//! Against a real PostgreSQL: `TEST_DATABASE_URL` (CI starts one with
//! `.ci/postgres`). Without it the tests say so and pass vacuously; with it,
//! each uses its own table.

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::sync::atomic::{AtomicU32, Ordering};

use durable_postgres::{PgStateStore, PgStoreError};
use serde::{Deserialize, Serialize};
use sharding_core::durable::{Durable, DurableEntity, DurableError, StateStore, StoreError};
use sharding_core::{Entity, EntityContext, EntityId, Epoch, FencingToken, ShardId};

fn url() -> Option<String> {
    let url = std::env::var("TEST_DATABASE_URL").ok();
    if url.is_none() {
        eprintln!("TEST_DATABASE_URL not set: skipped (CI sets it)");
    }
    url
}

/// A fresh store on its own table.
async fn store() -> Option<PgStateStore> {
    static N: AtomicU32 = AtomicU32::new(0);
    let url = url()?;
    let name = format!(
        "t{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    Some(PgStateStore::connect(&url, &name).await.unwrap())
}

fn token(epoch: u64, allocation: u64) -> FencingToken {
    FencingToken {
        epoch: Epoch(epoch),
        allocation,
    }
}

#[tokio::test]
async fn a_claimed_row_keeps_its_state_across_store_instances() {
    let Some(store) = store().await else { return };
    let id = EntityId::from("a");
    assert_eq!(store.claim(&id, token(1, 1)).await.unwrap(), None);
    store.save(&id, token(1, 1), vec![1, 2, 3]).await.unwrap();
    // Another process: a new pool on the same table.
    let again = PgStateStore::connect(&url().unwrap(), &store.table()["durable_".len()..])
        .await
        .unwrap();
    assert_eq!(
        again.claim(&id, token(1, 2)).await.unwrap(),
        Some(vec![1, 2, 3])
    );
}

#[tokio::test]
async fn the_database_refuses_a_stale_write() {
    let Some(store) = store().await else { return };
    let id = EntityId::from("b");
    store.claim(&id, token(4, 10)).await.unwrap();
    store.save(&id, token(4, 10), vec![10]).await.unwrap();
    // The shard moved; the new home claims the row.
    store.claim(&id, token(4, 11)).await.unwrap();
    let refused = store.save(&id, token(4, 10), vec![99]).await.unwrap_err();
    match &refused {
        StoreError::Fenced { stored, writer, .. } => {
            assert_eq!(stored, "epoch-4/11");
            assert_eq!(*writer, token(4, 10));
        }
        other => panic!("{other}"),
    }
    // A claim from the older allocation is refused too.
    assert!(matches!(
        store.claim(&id, token(4, 10)).await,
        Err(StoreError::Fenced { .. })
    ));
    assert!(matches!(
        store.claim(&id, token(3, 99)).await,
        Err(StoreError::Fenced { .. })
    ));
    // The row is the newer incarnation's.
    assert_eq!(
        store.claim(&id, token(4, 11)).await.unwrap(),
        Some(vec![10])
    );
    store.save(&id, token(5, 1), vec![11]).await.unwrap();
    assert_eq!(store.claim(&id, token(5, 1)).await.unwrap(), Some(vec![11]));
}

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

#[tokio::test]
async fn a_paused_incarnation_that_wakes_writes_nothing() {
    let Some(store) = store().await else { return };
    let context = |t| EntityContext::new(EntityId::from("c"), ShardId(2), t);
    let mut old: Durable<Counter, PgStateStore> = Durable::new(Counter, store.clone());
    old.started_in(&context(token(2, 1))).await;
    assert_eq!(old.handle(Add(1)).await, Ok(1));
    let mut new: Durable<Counter, PgStateStore> = Durable::new(Counter, store.clone());
    new.started_in(&context(token(2, 2))).await;
    assert_eq!(new.handle(Add(5)).await, Ok(6));
    assert!(matches!(
        old.handle(Add(100)).await,
        Err(DurableError::Fenced(_))
    ));
    assert_eq!(new.handle(Add(1)).await, Ok(7));
}

#[tokio::test]
async fn setup_errors_name_what_is_wrong() {
    assert!(matches!(
        PgStateStore::connect("postgres://x@127.0.0.1:1/db", "Bad-Name").await,
        Err(PgStoreError::TypeName(name)) if name == "Bad-Name"
    ));
    assert!(matches!(
        PgStateStore::connect("not a url ::", "counter").await,
        Err(PgStoreError::Url(_))
    ));
    // Nothing listens on port 1: the table cannot be created, named.
    match PgStateStore::connect("postgres://x@127.0.0.1:1/db", "counter").await {
        Err(PgStoreError::Migrate { table, .. }) => assert_eq!(table, "durable_counter"),
        other => panic!("{other:?}"),
    }
}

/// A TCP relay to the database that can be cut (connections dropped, new
/// ones refused) and healed.
struct Relay {
    addr: std::net::SocketAddr,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    cut: tokio::sync::watch::Sender<u64>,
}

impl Relay {
    async fn start(target: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (cut, cuts) = tokio::sync::watch::channel(0u64);
        let flag = up.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !flag.load(Ordering::SeqCst) {
                    continue; // dropped: refused
                }
                let target = target.clone();
                let mut cuts = cuts.clone();
                cuts.borrow_and_update(); // only later cuts end this one
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cuts.changed() => {}
                    }
                });
            }
        });
        Self { addr, up, cut }
    }

    fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
        if !up {
            self.cut.send_modify(|n| *n += 1);
        }
    }
}

#[tokio::test]
async fn a_database_that_goes_away_acknowledges_nothing_and_loses_nothing() {
    let Some(url) = url() else { return };
    let config: tokio_postgres::Config = url.parse().unwrap();
    let target = match (config.get_hosts().first(), config.get_ports().first()) {
        (Some(tokio_postgres::config::Host::Tcp(host)), Some(port)) => format!("{host}:{port}"),
        _ => panic!("TEST_DATABASE_URL must name a TCP host and port"),
    };
    let relay = Relay::start(target).await;
    let via_relay = format!(
        "postgres://postgres@{}/{}",
        relay.addr,
        config.get_dbname().unwrap_or("postgres")
    );
    let store = PgStateStore::connect(&via_relay, &format!("gone{}", std::process::id()))
        .await
        .unwrap();
    let mut entity: Durable<Counter, PgStateStore> = Durable::new(Counter, store.clone());
    entity
        .started_in(&EntityContext::new(
            EntityId::from("d"),
            ShardId(1),
            token(1, 1),
        ))
        .await;
    assert_eq!(entity.handle(Add(2)).await, Ok(2));
    relay.set_up(false);
    let down = entity.handle(Add(40)).await;
    assert!(
        matches!(down, Err(DurableError::Unavailable(_))),
        "{down:?}"
    );
    relay.set_up(true);
    // The unacknowledged add is nowhere; the next one lands.
    assert_eq!(entity.handle(Add(1)).await, Ok(3));
    assert_eq!(
        store
            .claim(&EntityId::from("d"), token(1, 1))
            .await
            .unwrap(),
        Some(postcard::to_stdvec(&3i64).unwrap())
    );
}

#[tokio::test]
async fn nodes_starting_together_all_get_the_table() {
    let Some(url) = url() else { return };
    let name = format!("race{}", std::process::id());
    let starts = (0..8).map(|_| PgStateStore::connect(&url, &name));
    for store in futures::future::join_all(starts).await {
        let store = store.unwrap();
        assert_eq!(store.table(), format!("durable_{name}"));
    }
}
