//! Memory per idle entity: starts N entities on one node, lets them go idle,
//! and prints the resident-set growth per entity as one JSON line.
//!
//! `cargo run --release -p sharding-coordinator --example idle_entities -- 1000000`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cluster::{InProcessNetwork, Membership, MembershipSettings, NodeAddr, NodeId};
use serde::{Deserialize, Serialize};
use sharding_coordinator::{ClusterSharding, ShardingSettings};
use sharding_core::{Entity, EntityId};

static PROCESSED: AtomicU64 = AtomicU64::new(0);

#[derive(Serialize, Deserialize)]
struct Touch {
    id: u64,
}

/// A typical small entity: a little state.
struct Idle {
    _value: u64,
}

impl Entity for Idle {
    type Message = Touch;
    type Reply = ();
    async fn handle(&mut self, _: Touch) {
        PROCESSED.fetch_add(1, Ordering::Relaxed);
    }
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let count: u64 = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    let network = InProcessNetwork::new(1);
    let transport = Arc::new(network.join(NodeId(1)));
    let membership = Membership::start(
        transport.clone(),
        NodeAddr::from("inproc:1"),
        MembershipSettings::new(Vec::new()),
    )?;
    let sharding = ClusterSharding::new(transport, membership.view());
    let mut settings = ShardingSettings::new(
        "idle",
        |m: &Touch| EntityId::from(m.id),
        |_: &EntityId| Idle { _value: 0 },
    );
    settings.coordinator.recovery_timeout = Duration::from_millis(10);
    settings.region.buffer_size = 2_000_000;
    settings.region.shard_inbox = 2_000_000;
    let region = sharding.start(settings)?;
    // Host every shard first so the measurement is entities only.
    for id in 0..10_000 {
        region.ask(Touch { id: u64::MAX - id }).await?;
    }
    let base = PROCESSED.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = rss_bytes();
    let mut sent = 0;
    while sent < count {
        let batch = (count - sent).min(50_000);
        for id in sent..sent + batch {
            region.tell(Touch { id })?;
        }
        sent += batch;
        while PROCESSED.load(Ordering::Relaxed) < base + sent {
            tokio::task::yield_now().await;
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = rss_bytes();
    let stats = region.stats();
    println!(
        "{{\"entities\":{count},\"rss_before\":{before},\"rss_after\":{after},\"bytes_per_entity\":{:.1},\"entities_started\":{}}}",
        after.saturating_sub(before) as f64 / count as f64,
        stats.entities_started
    );
    Ok(())
}
