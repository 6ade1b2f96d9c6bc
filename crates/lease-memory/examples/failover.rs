//! Two owners contend for one lease; the holder is cut off from the store and
//! the other takes over, never overlapping. Runs in real time with a 2 s ttl.
//!
//! `cargo run -p lease-memory --example failover`

use std::sync::Arc;
use std::time::Duration;

use lease_api::{Lease, LeaseSettings, LeaseStatus};
use lease_memory::InMemoryLeaseStore;
use tokio::time::{Instant, sleep};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let start = Instant::now();
    let t = move || format!("{:>6.2}s", start.elapsed().as_secs_f64());
    let settings = |owner: &str| {
        LeaseSettings::builder("shard-coordinator", owner)
            .ttl(Duration::from_secs(2))
            .heartbeat_interval(Duration::from_millis(200))
            .operation_timeout(Duration::from_millis(500))
            .build()
    };

    let store = InMemoryLeaseStore::new();
    let a = Arc::new(store.lease(settings("node-a")?));
    let b = Arc::new(store.lease(settings("node-b")?));

    let mut a_status = a.status();
    tokio::spawn(async move {
        while a_status.changed().await.is_ok() {
            if let LeaseStatus::Lost(reason) = a_status.borrow_and_update().clone() {
                println!(
                    "{} node-a: lease LOST ({reason}); check_alive is now false",
                    t()
                );
            }
        }
    });

    println!("{} node-a acquire -> {}", t(), a.acquire().await?);
    println!(
        "{} node-b acquire -> {} (node-a holds it)",
        t(),
        b.acquire().await?
    );
    println!(
        "{} node-a holds token {:?}, renewing every 200 ms",
        t(),
        a.fencing_token()
    );
    sleep(Duration::from_secs(1)).await;

    println!(
        "{} node-a is cut off from the store (its renewals now fail)",
        t()
    );
    store.cut_off("node-a");
    loop {
        assert!(!(a.check_alive() && b.check_alive()), "two holders at once");
        if b.acquire().await? {
            println!(
                "{} node-b acquired the lease with token {:?} (node-a alive: {})",
                t(),
                b.fencing_token(),
                a.check_alive()
            );
            break;
        }
        sleep(Duration::from_millis(100)).await;
    }

    store.reconnect("node-a");
    println!(
        "{} node-a reconnects; acquire -> {} (node-b holds it now)",
        t(),
        a.acquire().await?
    );
    println!("{} ground truth from the store:", t());
    for grant in store.history() {
        println!(
            "         {} token {} from {:.2}s until {:.2}s",
            grant.owner,
            grant.token,
            (grant.from - start).as_secs_f64(),
            (grant.until - start).as_secs_f64()
        );
    }
    b.release().await?;
    Ok(())
}
