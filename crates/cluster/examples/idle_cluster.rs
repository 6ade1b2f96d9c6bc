//! Wall time of an idle cluster: N in-process nodes (paused time, one
//! thread) formed, then 30 s of cluster time with nothing happening but
//! SWIM's own traffic. Membership's cost per message shows here: it must
//! not grow with the cluster.
//!
//! `cargo run --release -p cluster --example idle_cluster -- 1000`

use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster::{InProcessNetwork, Membership, MembershipSettings, NodeAddr, NodeId};

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(400);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let network = InProcessNetwork::new(7);
        let seeds = vec![(NodeId(1), NodeAddr::from("inproc:1"))];
        let started = Instant::now();
        let nodes: Vec<Membership> = (1..=n)
            .map(|i| {
                let transport = Arc::new(network.join(NodeId(i)));
                let mut settings = MembershipSettings::new(seeds.clone());
                settings.rng_seed = i;
                Membership::start(transport, NodeAddr(format!("inproc:{i}")), settings)
                    .expect("membership")
            })
            .collect();
        let formed = tokio::time::Instant::now();
        while nodes.iter().any(|m| m.view().members().len() as u64 != n) {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if formed.elapsed() > Duration::from_secs(600) {
                break;
            }
        }
        let converged = nodes
            .iter()
            .filter(|m| m.view().members().len() as u64 == n)
            .count();
        let formation = started.elapsed();
        let idle = Instant::now();
        tokio::time::sleep(Duration::from_secs(30)).await;
        println!(
            "{n} nodes: formed in {:.1} s cluster time ({:.1} s wall, {converged}/{n} see all); 30 s idle took {:.1} s wall",
            formed.elapsed().as_secs_f64() - 30.0,
            formation.as_secs_f64(),
            idle.elapsed().as_secs_f64()
        );
    });
}
