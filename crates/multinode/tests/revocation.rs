//! A lease revoked in the store while the cluster is partitioned: the
//! holder hears of it through its watch at once, so the other side, which
//! may take the lease the next moment, is never active next to it (I1).
//! (With the holder's reaction to its watch switched off, while the other
//! side's watch still shows the lease free and it acquires at once, seeds
//! 10 and 11 had nodes 1 and 3 active together: the check has teeth.)

use std::time::Duration;

use cluster::NodeId;
use multinode::{HarnessSettings, MultiNode};

/// Runs `run` on a current-thread runtime in paused time (a seeded run).
fn paused(run: impl std::future::Future<Output = Result<(), String>>) -> Result<(), String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .map_err(|e| e.to_string())?
        .block_on(run)
}

fn run(seed: u64) -> Result<(), String> {
    paused(async move {
        let h = MultiNode::start(5, HarnessSettings::with_memory_lease(seed));
        if !h.converge(Duration::from_secs(30)).await {
            return Err("did not converge".into());
        }
        tokio::time::sleep(Duration::from_secs(40)).await;
        let lease = h
            .lease_handle(NodeId(1))
            .ok_or("no lease")?
            .settings()
            .lease_name()
            .to_owned();
        h.partition(&[&[NodeId(1), NodeId(2)], &[NodeId(3), NodeId(4), NodeId(5)]]);
        // Revoke at a seed-dependent moment: before, during and after the
        // sides notice the partition, at any phase of the heartbeat.
        let wait = Duration::from_millis(seed * 1_237 % 40_000);
        tokio::time::sleep(wait).await;
        let revoked = h.store().revoke(&lease);
        let end = tokio::time::Instant::now() + Duration::from_secs(60);
        while tokio::time::Instant::now() < end {
            let active = h.active_coordinators();
            if active.len() > 1 {
                return Err(format!(
                    "seed {seed}: {active:?} active together after revoking {revoked:?}'s lease {wait:?} into the partition"
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    })
}

#[test]
fn a_lease_revoked_during_a_partition_never_leaves_two_coordinators_active() {
    let failures: Vec<String> = (1..=30).filter_map(|seed| run(seed).err()).collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The same revocation while the active coordinator is cut off from the
/// store, so that it cannot hear of it, then a partition that lets another
/// node lead: the others must not take the lease while the cut-off holder
/// still acts on it (I1), and every active coordinator holds the lease by
/// the store's own history (I2). Before the store told a revocation from a
/// release, the other side took the freed lease at once and both were
/// active until the holder's own estimate ran out.
fn run_cut_off(seed: u64) -> Result<(), String> {
    paused(async move {
        let h = MultiNode::start(5, HarnessSettings::with_memory_lease(seed));
        if !h.converge(Duration::from_secs(30)).await {
            return Err("did not converge".into());
        }
        tokio::time::sleep(Duration::from_secs(40)).await;
        let [active] = h.active_coordinators()[..] else {
            return Err(format!("seed {seed}: not one active coordinator"));
        };
        let lease = h
            .lease_handle(active)
            .ok_or("no lease")?
            .settings()
            .lease_name()
            .to_owned();
        let start = tokio::time::Instant::now();
        h.store().cut_off(&multinode::owner_of(active));
        tokio::time::sleep(Duration::from_millis(seed * 731 % 3_000)).await;
        let revoked = h.store().revoke(&lease);
        // The holder keeps a majority of one view for a while; the rest of
        // the cluster leads itself from the moment it drops the holder.
        let others: Vec<NodeId> = (1..=5).map(NodeId).filter(|n| *n != active).collect();
        let (with, rest) = others.split_at(1);
        let side = [active, with[0]];
        h.partition(&[&side, rest]);
        let end = start + Duration::from_secs(90);
        while tokio::time::Instant::now() < end {
            let now = tokio::time::Instant::now();
            let actives = h.active_coordinators();
            if actives.len() > 1 {
                return Err(format!(
                    "seed {seed}: {actives:?} active together {:?} after cutting {active} off and revoking {revoked:?}'s lease",
                    now - start
                ));
            }
            for node in actives {
                let owner = multinode::owner_of(node);
                if h.store().holder_at(&lease, now).as_deref() != Some(owner.as_str()) {
                    return Err(format!(
                        "seed {seed}: {node} active {:?} after the cut without the store's grant (I2)",
                        now - start
                    ));
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    })
}

#[test]
fn a_lease_revoked_while_its_holder_is_cut_off_is_not_taken_while_the_holder_acts() {
    let failures: Vec<String> = (1..=20)
        .filter_map(|seed| run_cut_off(seed).err())
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
