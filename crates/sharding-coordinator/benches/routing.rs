//! Local routing: sharded `tell` and `ask` against raw tokio channels to the
//! same number of tasks, and against kameo actors, on both runtimes; and an
//! entity whose handler awaits against one that does not.
//! Ratios are computed by `cargo xtask bench` from the same run.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use cluster::{InProcessNetwork, Membership, MembershipSettings, NodeAddr, NodeId};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kameo::Actor;
use kameo::actor::{ActorRef, Spawn};
use kameo::message::{Context, Message};
use sharding_coordinator::{ClusterSharding, ShardingSettings};
use sharding_core::{Entity, EntityId, ShardRegion};
use tokio::runtime::Runtime;
use tokio::sync::{mpsc, oneshot};

const ENTITIES: u32 = 10_000;
const MESSAGES: u32 = 100_000;

mod common;

use common::{Msg, PROCESSED, Sink};

#[derive(Actor)]
struct KameoSink;

impl Message<Msg> for KameoSink {
    type Reply = ();
    async fn handle(&mut self, _: Msg, _: &mut Context<Self, Self::Reply>) {
        PROCESSED.fetch_add(1, Ordering::Relaxed);
    }
}

/// A handler that awaits once per message (as one doing I/O would).
struct YieldSink;

impl Entity for YieldSink {
    type Message = Msg;
    type Reply = ();
    async fn handle(&mut self, _: Msg) {
        tokio::task::yield_now().await;
        PROCESSED.fetch_add(1, Ordering::Relaxed);
    }
}

fn runtimes() -> Vec<(&'static str, Runtime)> {
    let current = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let multi = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    vec![("current_thread", current), ("multi_thread", multi)]
}

async fn wait_processed(target: u64) {
    while PROCESSED.load(Ordering::Relaxed) < target {
        tokio::task::yield_now().await;
    }
}

/// One node whose shards and entities all exist already.
struct Sharded<E: Entity = Sink> {
    region: ShardRegion<E>,
    _membership: Membership,
    _sharding: ClusterSharding,
}

async fn sharded() -> Sharded {
    sharded_with(|| Sink).await
}

async fn sharded_with<E: Entity<Message = Msg>>(
    make: impl Fn() -> E + Send + Sync + 'static,
) -> Sharded<E> {
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
        "bench",
        |m: &Msg| EntityId::from(m.id),
        move |_: &EntityId| make(),
    );
    settings.coordinator.recovery_timeout = Duration::from_millis(10);
    let region = sharding.start(settings).expect("start");
    for id in 0..ENTITIES {
        region.ask(Msg { id }).await.expect("warm-up ask");
    }
    Sharded {
        region,
        _membership: membership,
        _sharding: sharding,
    }
}

fn local_tell(c: &mut Criterion) {
    for (name, rt) in runtimes() {
        let mut group = c.benchmark_group(format!("local_tell/{name}"));
        group.throughput(Throughput::Elements(u64::from(MESSAGES)));
        group.sample_size(10);

        let node = rt.block_on(sharded());
        group.bench_function("sharded", |b| {
            b.to_async(&rt)
                .iter_custom(|iters| tell_all(node.region.clone(), iters));
        });

        let senders: Vec<mpsc::UnboundedSender<Msg>> = rt.block_on(async {
            (0..ENTITIES)
                .map(|_| {
                    let (tx, mut rx) = mpsc::unbounded_channel::<Msg>();
                    tokio::spawn(async move {
                        while let Some(m) = rx.recv().await {
                            black_box(m);
                            PROCESSED.fetch_add(1, Ordering::Relaxed);
                        }
                    });
                    tx
                })
                .collect()
        });
        group.bench_function("raw_mpsc", |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let senders = senders.clone();
                async move {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let target = PROCESSED.load(Ordering::Relaxed) + u64::from(MESSAGES);
                        for i in 0..MESSAGES {
                            senders[(i % ENTITIES) as usize]
                                .send(Msg { id: i })
                                .expect("send");
                        }
                        wait_processed(target).await;
                    }
                    start.elapsed()
                }
            });
        });

        let actors: Vec<ActorRef<KameoSink>> = rt.block_on(async {
            (0..ENTITIES)
                .map(|_| KameoSink::spawn_with_mailbox(KameoSink, kameo::mailbox::unbounded()))
                .collect()
        });
        group.bench_function("kameo", |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let actors = actors.clone();
                async move {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let target = PROCESSED.load(Ordering::Relaxed) + u64::from(MESSAGES);
                        for i in 0..MESSAGES {
                            actors[(i % ENTITIES) as usize]
                                .tell(Msg { id: i })
                                .try_send()
                                .expect("tell");
                        }
                        wait_processed(target).await;
                    }
                    start.elapsed()
                }
            });
        });
        group.finish();
    }
}

fn local_ask(c: &mut Criterion) {
    for (name, rt) in runtimes() {
        let mut group = c.benchmark_group(format!("local_ask/{name}"));
        group.throughput(Throughput::Elements(1));
        let node = rt.block_on(sharded());
        group.bench_function("sharded", |b| {
            b.to_async(&rt)
                .iter(|| async { node.region.ask(Msg { id: 7 }).await.expect("ask") });
        });
        let tx = rt.block_on(async {
            let (tx, mut rx) = mpsc::unbounded_channel::<(Msg, oneshot::Sender<()>)>();
            tokio::spawn(async move {
                while let Some((m, reply)) = rx.recv().await {
                    black_box(m);
                    let _ = reply.send(());
                }
            });
            tx
        });
        group.bench_function("raw_oneshot", |b| {
            b.to_async(&rt).iter(|| async {
                let (reply, wait) = oneshot::channel();
                tx.send((Msg { id: 7 }, reply)).expect("send");
                wait.await.expect("reply")
            });
        });
        group.finish();
    }
}

/// `tell`s to entities whose handler yields once, against plain ones.
fn entity_yield(c: &mut Criterion) {
    for (name, rt) in runtimes() {
        let mut group = c.benchmark_group(format!("entity_yield/{name}"));
        group.throughput(Throughput::Elements(u64::from(MESSAGES)));
        group.sample_size(10);
        let plain = rt.block_on(sharded());
        let yielding = rt.block_on(sharded_with(|| YieldSink));
        group.bench_function("plain", |b| {
            b.to_async(&rt)
                .iter_custom(|iters| tell_all(plain.region.clone(), iters));
        });
        group.bench_function("yield", |b| {
            b.to_async(&rt)
                .iter_custom(|iters| tell_all(yielding.region.clone(), iters));
        });
        group.finish();
    }
}

async fn tell_all<E: Entity<Message = Msg>>(region: ShardRegion<E>, iters: u64) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        let target = PROCESSED.load(Ordering::Relaxed) + u64::from(MESSAGES);
        for i in 0..MESSAGES {
            region.tell(Msg { id: i % ENTITIES }).expect("tell");
        }
        wait_processed(target).await;
    }
    start.elapsed()
}

criterion_group!(benches, local_tell, local_ask, entity_yield);
criterion_main!(benches);
