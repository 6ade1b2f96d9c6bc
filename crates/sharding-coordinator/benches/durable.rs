//! Durable `tell` on PostgreSQL against the same number of raw single-row
//! upserts through the same connection pool, with the same concurrency (one
//! writer per entity). Needs `TEST_DATABASE_URL` (or `DATABASE_URL`);
//! without it the bench says so and measures nothing. Uses a table of its
//! own, dropped at the end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster::{InProcessNetwork, Membership, MembershipSettings, NodeAddr, NodeId};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use durable_postgres::PgStateStore;
use serde::{Deserialize, Serialize};
use sharding_coordinator::{ClusterSharding, ShardingSettings};
use sharding_core::durable::{Durable, DurableEntity};
use sharding_core::{EntityId, ShardRegion};

const ENTITIES: u32 = 32;
const MESSAGES: u32 = 2_000;

#[derive(Serialize, Deserialize)]
enum Op {
    Add(u32),
    Get(u32),
}

struct Counter;

impl DurableEntity for Counter {
    type State = i64;
    type Message = Op;
    type Reply = i64;
    fn apply(&mut self, state: &mut i64, op: Op) -> i64 {
        if let Op::Add(_) = op {
            *state += 1;
        }
        *state
    }
}

type DurableCounter = Durable<Counter, PgStateStore>;

struct Node {
    region: ShardRegion<DurableCounter>,
    _membership: Membership,
    _sharding: ClusterSharding,
}

async fn node(store: PgStateStore) -> Node {
    let network = InProcessNetwork::new(1);
    let transport = Arc::new(network.join(NodeId(1)));
    let membership = Membership::start(
        transport.clone(),
        NodeAddr::from("inproc:1"),
        MembershipSettings::new(Vec::new()),
    )
    .expect("membership");
    let sharding = ClusterSharding::new(transport, membership.view());
    let mut settings = ShardingSettings::new(
        "durable-bench",
        |m: &Op| match m {
            Op::Add(id) | Op::Get(id) => EntityId::from(*id),
        },
        move |_: &EntityId| DurableCounter::new(Counter, store.clone()),
    );
    settings.coordinator.recovery_timeout = Duration::from_millis(10);
    let region = sharding.start(settings).expect("start");
    for id in 0..ENTITIES {
        region
            .ask(Op::Get(id))
            .await
            .expect("warm-up ask")
            .expect("warm-up save");
    }
    Node {
        region,
        _membership: membership,
        _sharding: sharding,
    }
}

fn durable(c: &mut Criterion) {
    let Some(url) = std::env::var("TEST_DATABASE_URL")
        .or_else(|_| std::env::var("DATABASE_URL"))
        .ok()
    else {
        eprintln!("durable bench: TEST_DATABASE_URL not set, nothing measured");
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let config: tokio_postgres::Config = url.parse().expect("database URL");
    let manager = Manager::from_config(
        config,
        tokio_postgres::NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let pool = Pool::builder(manager).max_size(16).build().expect("pool");
    let type_name = format!("bench_{}", std::process::id());
    let store = rt
        .block_on(PgStateStore::with_pool(pool.clone(), &type_name))
        .expect("store");
    let table = store.table().to_owned();
    let node = rt.block_on(node(store));

    let mut group = c.benchmark_group("durable_tell");
    group.throughput(Throughput::Elements(u64::from(MESSAGES)));
    group.sample_size(10);
    group.bench_function("sharded_postgres", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let region = node.region.clone();
            async move {
                let start = Instant::now();
                for _ in 0..iters {
                    for i in 0..MESSAGES {
                        region.tell(Op::Add(i % ENTITIES)).expect("tell");
                    }
                    // An ask per entity queues behind its tells: all saved.
                    let asks = (0..ENTITIES).map(|id| region.ask(Op::Get(id)));
                    for answer in futures::future::join_all(asks).await {
                        answer.expect("ask").expect("saved");
                    }
                }
                start.elapsed()
            }
        });
    });
    let upsert = format!(
        "INSERT INTO {table} (entity_id, token_epoch, token_allocation, state) VALUES ($1, 0, 0, $2) \
         ON CONFLICT (entity_id) DO UPDATE SET state = EXCLUDED.state, updated_at = now()"
    );
    group.bench_function("raw_upsert", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let (pool, upsert) = (pool.clone(), upsert.clone());
            async move {
                let start = Instant::now();
                for _ in 0..iters {
                    // A task per writer, as every entity runs in its own.
                    let writers = (0..ENTITIES).map(|id| {
                        let (pool, upsert) = (pool.clone(), upsert.clone());
                        tokio::spawn(async move {
                            let key = format!("raw-{id}");
                            for n in 0..MESSAGES / ENTITIES {
                                // A connection per write, as the store takes one.
                                let client = pool.get().await.expect("connection");
                                let state = postcard::to_stdvec(&i64::from(n)).expect("encode");
                                client
                                    .execute(&upsert, &[&key, &state])
                                    .await
                                    .expect("upsert");
                            }
                        })
                    });
                    for writer in futures::future::join_all(writers).await {
                        writer.expect("writer task");
                    }
                }
                start.elapsed()
            }
        });
    });
    group.finish();
    rt.block_on(async {
        if let Ok(client) = pool.get().await {
            let _ = client
                .batch_execute(&format!("DROP TABLE IF EXISTS {table}"))
                .await;
        }
    });
}

criterion_group!(benches, durable);
criterion_main!(benches);
