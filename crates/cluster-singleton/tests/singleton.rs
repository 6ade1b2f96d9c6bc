//! The cluster singleton on in-process nodes, in paused time: one instance
//! with a lease even under a partition (I7), two without; handover with no
//! overlap and nothing lost that the proxy accepted; the lease gating it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cluster::{InProcessNetwork, Membership, MembershipSettings, NodeAddr, NodeId};
use cluster_singleton::{
    ClusterSingleton, ProxyError, Singleton, SingletonEvent, SingletonObserver, SingletonSettings,
};
use lease_api::{Lease, LeaseSettings};
use lease_memory::InMemoryLeaseStore;
use tokio::time::{Instant, sleep};

const LEASE: &str = "tally-singleton";

/// Remembers the last number it was told; counts those that arrived below
/// an earlier one (per-sender order broken).
#[derive(Default)]
struct Sequence {
    last: u64,
    out_of_order: u64,
}

impl Singleton for Sequence {
    type Message = u64;
    type Reply = (u64, u64);
    async fn handle(&mut self, n: u64) -> (u64, u64) {
        if n < self.last {
            self.out_of_order += 1;
        }
        self.last = self.last.max(n);
        (self.last, self.out_of_order)
    }
}

/// Adds what it is told; counts every message any instance handled.
struct Tally {
    total: u64,
    handled: Arc<AtomicU64>,
}

impl Singleton for Tally {
    type Message = u64;
    type Reply = u64;
    async fn handle(&mut self, n: u64) -> u64 {
        self.handled.fetch_add(1, Ordering::Relaxed);
        self.total += n;
        self.total
    }
    async fn stopped(&mut self) {
        // Takes a while, so that an overlap would show.
        sleep(Duration::from_millis(300)).await;
    }
}

type Log = Arc<Mutex<Vec<(Instant, NodeId, SingletonEvent)>>>;

struct Node {
    membership: Option<Membership>,
    singleton: ClusterSingleton<Tally>,
}

struct Cluster {
    network: InProcessNetwork,
    store: InMemoryLeaseStore,
    with_lease: bool,
    log: Log,
    handled: Arc<AtomicU64>,
    nodes: BTreeMap<NodeId, Node>,
}

fn addr(n: u64) -> NodeAddr {
    NodeAddr(format!("inproc:{n}"))
}

impl Cluster {
    fn start(n: u64, with_lease: bool) -> Self {
        let mut cluster = Self::empty(n, with_lease);
        for i in 1..=n {
            cluster.add(NodeId(i));
        }
        cluster
    }

    fn empty(n: u64, with_lease: bool) -> Self {
        Self {
            network: InProcessNetwork::new(n),
            store: InMemoryLeaseStore::new(),
            with_lease,
            log: Log::default(),
            handled: Arc::new(AtomicU64::new(0)),
            nodes: BTreeMap::new(),
        }
    }

    fn lease_of(&self, node: NodeId) -> Arc<dyn Lease> {
        let settings = LeaseSettings::builder(LEASE, format!("node-{}", node.0))
            .build()
            .expect("valid lease settings");
        Arc::new(self.store.lease(settings))
    }

    fn add(&mut self, node: NodeId) {
        let transport = Arc::new(self.network.join(node));
        let mut ms = MembershipSettings::new(vec![(NodeId(1), addr(1)), (NodeId(2), addr(2))]);
        ms.rng_seed = node.0;
        let membership =
            Membership::start(transport.clone(), addr(node.0), ms).expect("membership starts");
        let handled = Arc::clone(&self.handled);
        let mut settings = SingletonSettings::new("tally", move || Tally {
            total: 0,
            handled: Arc::clone(&handled),
        });
        settings.lease = self.with_lease.then(|| self.lease_of(node));
        settings.proxy.buffer_size = 50;
        let log = Arc::clone(&self.log);
        let observer: SingletonObserver = Arc::new(move |_, node, event| {
            log.lock()
                .expect("log")
                .push((Instant::now(), node, *event));
        });
        settings.observer = Some(observer);
        let singleton = ClusterSingleton::start(transport, membership.view(), settings)
            .expect("valid singleton settings");
        self.nodes.insert(
            node,
            Node {
                membership: Some(membership),
                singleton,
            },
        );
    }

    fn running(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.singleton.is_running_here())
            .map(|(id, _)| *id)
            .collect()
    }

    fn proxy(&self, node: u64) -> cluster_singleton::SingletonProxy<Tally> {
        self.nodes[&NodeId(node)].singleton.proxy()
    }

    /// The most instances running at one instant, from the recorded events.
    fn max_overlap(&self) -> usize {
        let mut running = 0usize;
        let mut max = 0;
        for (_, _, event) in self.log.lock().expect("log").iter() {
            match event {
                SingletonEvent::Started => running += 1,
                SingletonEvent::Stopped => running = running.saturating_sub(1),
            }
            max = max.max(running);
        }
        max
    }

    async fn leave_gracefully(&mut self, node: NodeId) {
        let mut n = self.nodes.remove(&node).expect("running node");
        n.singleton.shutdown(Duration::from_secs(5)).await;
        if let Some(m) = n.membership.take() {
            m.leave().await;
        }
        self.network.kill(node);
    }

    fn crash(&mut self, node: NodeId) {
        self.network.kill(node);
        self.nodes.remove(&node);
    }
}

async fn eventually(limit: Duration, what: &str, mut pred: impl FnMut() -> bool) {
    let start = Instant::now();
    while !pred() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn runs_once_on_the_leader_and_answers_through_every_node() {
    for with_lease in [false, true] {
        let c = Cluster::start(3, with_lease);
        eventually(Duration::from_secs(30), "singleton on node 1", || {
            c.running() == vec![NodeId(1)]
        })
        .await;
        for (i, via) in [1, 2, 3, 2].into_iter().enumerate() {
            assert_eq!(
                c.proxy(via).ask(1).await,
                Ok(i as u64 + 1),
                "via node {via}"
            );
        }
        assert_eq!(c.max_overlap(), 1);
    }
}

#[tokio::test(start_paused = true)]
async fn the_instance_waits_for_the_lease() {
    let c = Cluster::start(3, true);
    // Someone outside the cluster holds the lease first.
    let stranger = c
        .store
        .lease(LeaseSettings::builder(LEASE, "stranger").build().unwrap());
    assert!(stranger.acquire().await.unwrap());
    sleep(Duration::from_secs(20)).await;
    assert!(c.running().is_empty(), "ran without the lease");
    // Meanwhile the proxy keeps what it is told.
    c.proxy(3).tell(5).unwrap();
    stranger.release().await.unwrap();
    eventually(
        Duration::from_secs(10),
        "started once the lease was free",
        || c.running() == vec![NodeId(1)],
    )
    .await;
    // Same proxy: its messages arrive in the order they were sent.
    assert_eq!(
        c.proxy(3).ask(1).await,
        Ok(6),
        "the buffered tell was delivered"
    );
}

#[tokio::test(start_paused = true)]
async fn a_lost_lease_stops_the_instance_before_the_store_could_give_it_away() {
    let c = Cluster::start(3, true);
    eventually(Duration::from_secs(30), "running", || {
        c.running() == vec![NodeId(1)]
    })
    .await;
    c.store.cut_off("node-1");
    eventually(Duration::from_secs(40), "stopped", || {
        c.running().is_empty()
    })
    .await;
    // Stopped (its `stopped` hook included) while the store still holds
    // node 1's lease: nobody else could have acquired it yet.
    let stranger = c
        .store
        .lease(LeaseSettings::builder(LEASE, "stranger").build().unwrap());
    assert!(!stranger.acquire().await.unwrap(), "stopped too late");
    sleep(Duration::from_secs(5)).await;
    assert!(
        stranger.acquire().await.unwrap(),
        "the store never let it go"
    );
    // Node 1 still leads and retries; nobody else may run it.
    assert_eq!(c.max_overlap(), 1);
}

#[tokio::test(start_paused = true)]
async fn graceful_leave_hands_over_with_no_overlap_and_nothing_lost() {
    for with_lease in [false, true] {
        let mut c = Cluster::start(3, with_lease);
        eventually(Duration::from_secs(30), "running on 1", || {
            c.running() == vec![NodeId(1)]
        })
        .await;
        let proxy = c.proxy(3);
        let mut told = 0u64;
        for _ in 0..20 {
            proxy.tell(1).unwrap();
            told += 1;
        }
        c.leave_gracefully(NodeId(1)).await;
        if with_lease {
            // Given back on leaving, not left to expire.
            assert_ne!(
                c.store.holder(LEASE).map(|(h, _)| h),
                Some("node-1".to_string()),
                "node 1 still holds the lease after leaving"
            );
        }
        // Told while no instance runs: buffered, then delivered.
        for _ in 0..20 {
            proxy.tell(1).unwrap();
            told += 1;
            sleep(Duration::from_millis(100)).await;
        }
        eventually(Duration::from_secs(40), "running on 2", || {
            c.running() == vec![NodeId(2)]
        })
        .await;
        eventually(Duration::from_secs(20), "every tell handled", || {
            c.handled.load(Ordering::Relaxed) == told
        })
        .await;
        assert_eq!(proxy.dropped(), 0);
        assert_eq!(c.max_overlap(), 1, "lease: {with_lease}");
        if with_lease {
            assert_eq!(
                c.store.holder(LEASE).map(|(h, _)| h),
                Some("node-2".to_string())
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_new_leader_waits_for_the_old_instance_to_stop() {
    for with_lease in [false, true] {
        // Nodes 2 and 3 first: node 2 leads and runs it. Node 1 then joins
        // and leads at once, while node 2 still runs its instance.
        let mut c = Cluster::empty(3, with_lease);
        c.add(NodeId(2));
        c.add(NodeId(3));
        eventually(Duration::from_secs(30), "running on 2", || {
            c.running() == vec![NodeId(2)]
        })
        .await;
        c.add(NodeId(1));
        eventually(Duration::from_secs(60), "running on 1", || {
            c.running() == vec![NodeId(1)]
        })
        .await;
        assert_eq!(c.max_overlap(), 1, "lease: {with_lease}");
        assert_eq!(c.proxy(3).ask(2).await, Ok(2));
    }
}

#[tokio::test(start_paused = true)]
async fn a_crashed_node_s_singleton_restarts_on_the_next_leader() {
    for with_lease in [false, true] {
        let mut c = Cluster::start(3, with_lease);
        eventually(Duration::from_secs(30), "running on 1", || {
            c.running() == vec![NodeId(1)]
        })
        .await;
        c.crash(NodeId(1));
        // Down after 10 s, plus the lease's ttl (30 s) with a lease.
        eventually(Duration::from_secs(60), "running on 2", || {
            c.running() == vec![NodeId(2)]
        })
        .await;
        assert_eq!(c.proxy(3).ask(7).await, Ok(7), "a fresh instance answers");
    }
}

#[tokio::test(start_paused = true)]
async fn split_brain_gives_one_instance_with_a_lease_and_two_without() {
    for (with_lease, expected) in [(true, 1), (false, 2)] {
        let c = Cluster::start(5, with_lease);
        eventually(Duration::from_secs(30), "running on 1", || {
            c.running() == vec![NodeId(1)]
        })
        .await;
        let (a, b) = ([NodeId(1), NodeId(2), NodeId(3)], [NodeId(4), NodeId(5)]);
        c.network.partition(&[&a, &b]);
        sleep(Duration::from_secs(60)).await;
        assert_eq!(c.max_overlap(), expected, "lease: {with_lease}");
        c.network.heal();
        eventually(
            Duration::from_secs(60),
            "one instance after the heal",
            || c.running() == vec![NodeId(1)],
        )
        .await;
    }
}

#[tokio::test(start_paused = true)]
async fn an_isolated_leader_leaves_the_lease_to_the_majority() {
    let c = Cluster::start(5, true);
    eventually(Duration::from_secs(30), "running on 1", || {
        c.running() == vec![NodeId(1)]
    })
    .await;
    // Node 1 still reaches the lease store: without stepping aside it would
    // keep the lease, and the singleton, away from the four others.
    c.network.isolate(NodeId(1));
    eventually(Duration::from_secs(60), "running on the majority", || {
        c.running() == vec![NodeId(2)]
    })
    .await;
    assert_eq!(c.proxy(4).ask(3).await, Ok(3));
    assert_eq!(c.max_overlap(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_full_proxy_buffer_is_a_typed_error_and_counted() {
    let c = Cluster::start(3, true);
    let stranger = c
        .store
        .lease(LeaseSettings::builder(LEASE, "stranger").build().unwrap());
    assert!(stranger.acquire().await.unwrap());
    let proxy = c.proxy(2);
    for _ in 0..50 {
        proxy.tell(1).unwrap();
    }
    assert_eq!(proxy.tell(1), Err(ProxyError::BufferFull { capacity: 50 }));
    assert_eq!(proxy.dropped(), 1);
}

#[tokio::test(start_paused = true)]
async fn one_proxy_s_messages_arrive_in_order_including_those_buffered() {
    let network = InProcessNetwork::new(3);
    let mut singletons = Vec::new();
    let mut memberships = Vec::new();
    for i in 1..=3u64 {
        let transport = Arc::new(network.join(NodeId(i)));
        let mut ms = MembershipSettings::new(vec![(NodeId(1), addr(1)), (NodeId(2), addr(2))]);
        ms.rng_seed = i;
        let membership = Membership::start(transport.clone(), addr(i), ms).expect("starts");
        let s = ClusterSingleton::start(
            transport,
            membership.view(),
            SingletonSettings::new("sequence", Sequence::default),
        )
        .expect("valid settings");
        singletons.push(s);
        memberships.push(membership);
    }
    // Told from node 3 at once, before any instance runs (buffered), then
    // while it runs.
    let proxy = singletons[2].proxy();
    for n in 1..=500u64 {
        proxy.tell(n).expect("buffered");
        if n % 50 == 0 {
            sleep(Duration::from_millis(700)).await;
        }
    }
    let (last, out_of_order) = proxy.ask(501).await.expect("answered");
    assert_eq!((last, out_of_order), (501, 0));
    assert_eq!(proxy.dropped(), 0);
}

#[test]
fn bad_settings_name_the_field() {
    let mut s = SingletonSettings::new("", || Tally {
        total: 0,
        handled: Arc::default(),
    });
    assert_eq!(s.validate().unwrap_err().field, "name");
    s.name = "tally".into();
    s.proxy.buffer_size = 0;
    assert_eq!(s.validate().unwrap_err().field, "proxy.buffer_size");
    s.proxy.buffer_size = 10;
    let store = InMemoryLeaseStore::new();
    s.lease = Some(Arc::new(
        store.lease(LeaseSettings::builder(LEASE, "n").build().unwrap()),
    ));
    s.stop_timeout = Duration::from_secs(10);
    let err = s.validate().unwrap_err();
    assert_eq!(err.field, "stop_timeout");
    assert!(err.to_string().contains("10s"), "{err}");
}
