//! The coordinator's hot work: cold `GetShardHome` allocations (10 000 shards
//! over 100 regions) through the strategy and the state model, against a plain
//! map insert per shard; and computing a rebalance plan.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hint::black_box;

use cluster::NodeId;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sharding_core::ShardId;
use sharding_core::coordinator::{
    CoordinatorEvent, CoordinatorState, LeastShardAllocationStrategy, ShardAllocationStrategy,
};

const SHARDS: u32 = 10_000;
const REGIONS: u64 = 100;

fn registered() -> CoordinatorState {
    let mut state = CoordinatorState::default();
    for r in 0..REGIONS {
        state
            .apply(&CoordinatorEvent::RegionRegistered { region: NodeId(r) })
            .expect("register");
    }
    state
}

fn allocations(c: &mut Criterion) {
    let mut group = c.benchmark_group("coordinator_allocate");
    group.throughput(Throughput::Elements(u64::from(SHARDS)));
    group.sample_size(10);
    let strategy = LeastShardAllocationStrategy::default();
    group.bench_function("cold_get_shard_home", |b| {
        b.iter_batched(
            registered,
            |mut state| {
                for s in 0..SHARDS {
                    let shard = ShardId(s);
                    let home = strategy
                        .allocate(NodeId(0), shard, state.regions())
                        .expect("a region");
                    state
                        .apply(&CoordinatorEvent::ShardHomeAllocated {
                            shard,
                            region: home,
                        })
                        .expect("allocate");
                }
                state
            },
            criterion::BatchSize::LargeInput,
        );
    });
    group.bench_function("baseline_map_insert", |b| {
        b.iter(|| {
            let mut map = HashMap::with_capacity(SHARDS as usize);
            for s in 0..SHARDS {
                map.insert(ShardId(s), NodeId(u64::from(s) % REGIONS));
            }
            black_box(map)
        });
    });
    group.finish();

    let mut group = c.benchmark_group("coordinator_rebalance");
    group.throughput(Throughput::Elements(1));
    // 10 000 shards over 100 regions, plus one new empty region.
    let mut table: BTreeMap<NodeId, BTreeSet<ShardId>> = (0..REGIONS)
        .map(|r| {
            (
                NodeId(r),
                (0..SHARDS)
                    .filter(|s| u64::from(*s) % REGIONS == r)
                    .map(ShardId)
                    .collect(),
            )
        })
        .collect();
    table.insert(NodeId(REGIONS), BTreeSet::new());
    group.bench_function("plan", |b| {
        b.iter(|| black_box(strategy.rebalance(black_box(&table), &BTreeSet::new())));
    });
    group.bench_function("baseline_count_shards", |b| {
        b.iter(|| black_box(table.values().map(BTreeSet::len).sum::<usize>()));
    });
    group.finish();
}

criterion_group!(benches, allocations);
criterion_main!(benches);
