//! Entities of one shard run concurrently: 1 000 entities, all in one
//! shard, whose handler sleeps 10 ms, get 10 000 messages (10 each). In
//! paused tokio time the run takes about 10 handler-times (each entity's ten
//! messages one after another, the entities side by side), not 10 000 (one
//! handler at a time across the shard). Prints one JSON line.
//!
//! `cargo run --release -p sharding-coordinator --example shard_concurrency`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cluster::{InProcessNetwork, Membership, MembershipSettings, NodeAddr, NodeId};
use serde::{Deserialize, Serialize};
use sharding_coordinator::{ClusterSharding, ShardingSettings};
use sharding_core::{Entity, EntityId};

const ENTITIES: u64 = 1_000;
const MESSAGES: u64 = 10_000;
const HANDLER: Duration = Duration::from_millis(10);

static PROCESSED: AtomicU64 = AtomicU64::new(0);

#[derive(Serialize, Deserialize)]
struct Work {
    id: u64,
}

/// A handler that waits on a timer, as one waiting on I/O would.
struct Sleeper;

impl Entity for Sleeper {
    type Message = Work;
    type Reply = ();
    async fn handle(&mut self, _: Work) {
        tokio::time::sleep(HANDLER).await;
        PROCESSED.fetch_add(1, Ordering::Relaxed);
    }
}

fn main() -> std::process::ExitCode {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
    else {
        eprintln!("no runtime");
        return std::process::ExitCode::FAILURE;
    };
    rt.block_on(async {
        let network = InProcessNetwork::new(1);
        let transport = Arc::new(network.join(NodeId(1)));
        let Ok(membership) = Membership::start(
            transport.clone(),
            NodeAddr::from("inproc:1"),
            MembershipSettings::new(Vec::new()),
        ) else {
            eprintln!("membership did not start");
            return std::process::ExitCode::FAILURE;
        };
        let sharding = ClusterSharding::new(transport, membership.view());
        let mut settings = ShardingSettings::new(
            "concurrency",
            |m: &Work| EntityId::from(m.id),
            |_: &EntityId| Sleeper,
        );
        settings.region.num_shards = 1; // every entity in one shard
        settings.region.shard_inbox = MESSAGES as usize;
        settings.coordinator.recovery_timeout = Duration::from_millis(10);
        let Ok(region) = sharding.start(settings) else {
            eprintln!("sharding did not start");
            return std::process::ExitCode::FAILURE;
        };
        // The shard's home is known and it runs before the clock starts.
        if region.ask(Work { id: 0 }).await.is_err() {
            eprintln!("warm-up ask failed");
            return std::process::ExitCode::FAILURE;
        }
        let before = PROCESSED.load(Ordering::Relaxed);
        let start = tokio::time::Instant::now();
        for i in 0..MESSAGES {
            if let Err(e) = region.tell(Work { id: i % ENTITIES }) {
                eprintln!("tell {i}: {e}");
                return std::process::ExitCode::FAILURE;
            }
        }
        while PROCESSED.load(Ordering::Relaxed) < before + MESSAGES {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let took = start.elapsed();
        println!(
            "{{\"entities\":{ENTITIES},\"messages\":{MESSAGES},\"handler_ms\":{},\"took_ms\":{},\"handler_times\":{:.1}}}",
            HANDLER.as_millis(),
            took.as_millis(),
            took.as_secs_f64() / HANDLER.as_secs_f64()
        );
        std::process::ExitCode::SUCCESS
    })
}
