//! Membership on the in-process network, in paused time: convergence, the
//! split brain under a partition, healing, one-way cuts, isolation, crashes.

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cluster::{ClusterEvent, InProcessNetwork, Membership, MembershipSettings, NodeAddr, NodeId};
use tokio::time::{Instant, sleep};

/// Down timeout plus a few probe rounds: by then every view has settled.
const SETTLE: Duration = Duration::from_secs(20);

struct Sim {
    network: InProcessNetwork,
    nodes: BTreeMap<u64, Membership>,
    generation: u64,
}

fn id(i: u64) -> NodeId {
    NodeId(i)
}

impl Sim {
    fn new(n: u64, seed: u64) -> Self {
        let mut sim = Self {
            network: InProcessNetwork::new(seed),
            nodes: BTreeMap::new(),
            generation: 0,
        };
        for i in 1..=n {
            sim.start(i);
        }
        sim
    }

    fn start(&mut self, i: u64) {
        self.generation += 1;
        let transport = Arc::new(self.network.join(id(i)));
        let seeds = vec![(id(1), addr(1)), (id(2), addr(2))];
        let mut settings = MembershipSettings::new(seeds);
        settings.rng_seed = i;
        settings.generation = self.generation;
        let membership = Membership::start(transport, addr(i), settings).unwrap();
        self.nodes.insert(i, membership);
    }

    fn kill(&mut self, i: u64) {
        self.network.kill(id(i));
        self.nodes.remove(&i);
    }

    fn leader_of(&self, i: u64) -> Option<NodeId> {
        self.nodes[&i].view().leader()
    }

    fn members_of(&self, i: u64) -> Vec<NodeId> {
        self.nodes[&i].view().members()
    }

    fn leaders(&self) -> BTreeMap<u64, Option<NodeId>> {
        self.nodes.keys().map(|&i| (i, self.leader_of(i))).collect()
    }

    /// Polls until `pred` holds, failing with the views after `limit`.
    async fn until(&self, limit: Duration, what: &str, pred: impl Fn(&Sim) -> bool) -> Duration {
        let start = Instant::now();
        while !pred(self) {
            assert!(
                start.elapsed() < limit,
                "{what}: not reached within {limit:?}; leaders {:?}",
                self.leaders()
            );
            sleep(Duration::from_millis(100)).await;
        }
        start.elapsed()
    }
}

fn addr(i: u64) -> NodeAddr {
    NodeAddr(format!("inproc:{i}"))
}

fn ids(list: &[u64]) -> Vec<NodeId> {
    list.iter().copied().map(NodeId).collect()
}

#[tokio::test(start_paused = true)]
async fn five_nodes_converge_on_one_leader() {
    let sim = Sim::new(5, 1);
    sim.until(SETTLE, "convergence", |s| {
        (1..=5).all(|i| s.members_of(i) == ids(&[1, 2, 3, 4, 5]))
    })
    .await;
    assert!((1..=5).all(|i| sim.leader_of(i) == Some(id(1))));
    assert!(sim.nodes[&1].view().is_leader());
    assert!(!sim.nodes[&2].view().is_leader());
}

#[tokio::test(start_paused = true)]
async fn partition_gives_two_leaders_and_heal_gives_one() {
    let sim = Sim::new(5, 2);
    sim.until(SETTLE, "convergence", |s| {
        (1..=5).all(|i| s.members_of(i).len() == 5)
    })
    .await;

    sim.network.partition(&[&ids(&[1, 2, 3]), &ids(&[4, 5])]);
    let took = sim
        .until(SETTLE, "split brain", |s| {
            [1, 2, 3]
                .iter()
                .all(|&i| s.members_of(i) == ids(&[1, 2, 3]))
                && [4, 5].iter().all(|&i| s.members_of(i) == ids(&[4, 5]))
        })
        .await;
    for i in [1, 2, 3] {
        assert_eq!(sim.leader_of(i), Some(id(1)), "majority side");
    }
    for i in [4, 5] {
        assert_eq!(
            sim.leader_of(i),
            Some(id(4)),
            "minority side elects its own leader"
        );
    }
    // Down only after the suspicion timeout: never before down_after.
    assert!(took >= Duration::from_secs(10), "split after {took:?}");

    sim.network.heal();
    let healed = sim
        .until(Duration::from_secs(60), "heal", |s| {
            (1..=5).all(|i| s.members_of(i).len() == 5)
        })
        .await;
    eprintln!("healed after {healed:?}");
    assert!(
        (1..=5).all(|i| sim.leader_of(i) == Some(id(1))),
        "{:?}",
        sim.leaders()
    );
}

#[tokio::test(start_paused = true)]
async fn one_way_cut_is_bridged_by_indirect_probes() {
    let sim = Sim::new(5, 3);
    sim.until(SETTLE, "convergence", |s| {
        (1..=5).all(|i| s.members_of(i).len() == 5)
    })
    .await;
    // 5 can no longer send to 1; 1 still reaches 5. SWIM's indirect probes go
    // around the cut, so nobody is declared down and there is one leader.
    sim.network.cut_one_way(id(5), id(1));
    sleep(SETTLE * 2).await;
    for i in 1..=5 {
        assert_eq!(sim.members_of(i).len(), 5, "view of {i}");
        assert_eq!(sim.leader_of(i), Some(id(1)));
    }
    assert!(!sim.network.can_reach(id(5), id(1)));
    assert!(sim.network.can_reach(id(1), id(5)));
}

#[tokio::test(start_paused = true)]
async fn isolated_node_is_downed_and_leads_only_itself() {
    let sim = Sim::new(5, 4);
    sim.until(SETTLE, "convergence", |s| {
        (1..=5).all(|i| s.members_of(i).len() == 5)
    })
    .await;
    sim.network.isolate(id(3));
    sim.until(SETTLE, "isolation", |s| {
        s.members_of(3) == ids(&[3])
            && [1, 2, 4, 5]
                .iter()
                .all(|&i| s.members_of(i) == ids(&[1, 2, 4, 5]))
    })
    .await;
    assert_eq!(sim.leader_of(3), Some(id(3)));
    assert_eq!(sim.leader_of(4), Some(id(1)));
}

#[tokio::test(start_paused = true)]
async fn stopping_the_leader_moves_leadership() {
    let mut sim = Sim::new(5, 5);
    sim.until(SETTLE, "convergence", |s| {
        (1..=5).all(|i| s.members_of(i).len() == 5)
    })
    .await;
    let mut events = sim.nodes[&2].view().events();
    sim.kill(1);
    sim.until(SETTLE, "failover", |s| {
        (2..=5).all(|i| s.leader_of(i) == Some(id(2)))
    })
    .await;
    let mut saw = Vec::new();
    while let Ok(event) = events.try_recv() {
        saw.push(event);
    }
    assert!(saw.contains(&ClusterEvent::MemberDown(id(1))), "{saw:?}");
    assert!(
        saw.contains(&ClusterEvent::LeaderChanged {
            from: Some(id(1)),
            to: Some(id(2))
        }),
        "{saw:?}"
    );

    // The crashed node restarts with a newer generation and takes the lead back.
    sim.start(1);
    sim.until(Duration::from_secs(60), "rejoin", |s| {
        (1..=5).all(|i| s.members_of(i).len() == 5 && s.leader_of(i) == Some(id(1)))
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn graceful_leave_is_seen_at_once() {
    let mut sim = Sim::new(3, 6);
    sim.until(SETTLE, "convergence", |s| {
        (1..=3).all(|i| s.members_of(i).len() == 3)
    })
    .await;
    let leaving = sim.nodes.remove(&3).unwrap();
    leaving.leave().await;
    // No suspicion timeout for a node that said goodbye.
    let took = sim
        .until(SETTLE, "leave", |s| {
            (1..=2).all(|i| s.members_of(i) == ids(&[1, 2]))
        })
        .await;
    assert!(took < Duration::from_secs(5), "leave took {took:?}");
}

#[tokio::test(start_paused = true)]
async fn same_seed_same_history() {
    async fn run(seed: u64) -> Vec<(u64, Vec<NodeId>)> {
        let sim = Sim::new(4, seed);
        let mut samples = Vec::new();
        for step in 0..40u64 {
            if step == 10 {
                sim.network.partition(&[&ids(&[1, 2]), &ids(&[3, 4])]);
            }
            if step == 30 {
                sim.network.heal();
            }
            sleep(Duration::from_millis(700)).await;
            for i in 1..=4 {
                samples.push((i, sim.members_of(i)));
            }
        }
        samples
    }
    assert_eq!(run(42).await, run(42).await);
}

#[tokio::test(start_paused = true)]
async fn a_silent_member_is_shown_suspect_before_it_is_removed() {
    let mut sim = Sim::new(3, 11);
    sleep(SETTLE).await;
    assert_eq!(sim.members_of(1), vec![id(1), id(2), id(3)]);
    sim.network.isolate(id(3));
    let start = Instant::now();
    let mut suspected_after = None;
    while start.elapsed() < SETTLE {
        let state = sim.nodes[&1].view().state();
        match state.members.get(&id(3)).map(|m| m.status) {
            Some(cluster::membership::MemberStatus::Suspect) if suspected_after.is_none() => {
                suspected_after = Some(start.elapsed());
            }
            None => break,
            _ => {}
        }
        sleep(Duration::from_millis(100)).await;
    }
    // Foca does not notify suspicion; the view picks it up within an
    // announce interval (2 s) of foca's own suspicion.
    let suspected_after = suspected_after.expect("node 3 never shown suspect");
    assert!(
        suspected_after < Duration::from_secs(6),
        "{suspected_after:?}"
    );
    assert_eq!(sim.members_of(1), vec![id(1), id(2)], "removed after");
    sim.kill(3);
}

#[tokio::test(start_paused = true)]
async fn a_node_without_seeds_founds_the_cluster_and_leads_at_once() {
    let network = InProcessNetwork::new(3);
    let transport = Arc::new(network.join(id(1)));
    let membership =
        Membership::start(transport, addr(1), MembershipSettings::new(Vec::new())).unwrap();
    sleep(Duration::from_millis(10)).await;
    assert!(membership.view().state().joined);
    assert_eq!(membership.view().leader(), Some(id(1)));
}
