//! A MultiNodeSpec-style harness: N nodes in one process on the in-process
//! network, with faults (partition, heal, isolate, kill, restart) and probes
//! (leaders, active coordinators, shard hosts). Runs under paused tokio time.

pub mod checker;
mod counter;
mod history;
pub mod scenario;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cluster::{
    InProcessNetwork, InProcessTransport, Membership, MembershipSettings, NodeAddr, NodeId,
    Transport,
};
use lease_api::{Lease, LeaseSettings};
use lease_memory::{InMemoryLease, InMemoryLeaseStore};
use sharding_coordinator::CoordinatorRecord;
use sharding_coordinator::{ClusterSharding, CoordinatorSettings, ShardingSettings};
use sharding_core::protocol::{RegionMsg, TypeChannels, encode};
use sharding_core::{RegionSettings, ShardId, ShardRegion, TypeName};

pub use counter::{Counter, CounterMsg, CounterOp};
pub use history::{Event, EventKind, HarnessEvent, History};

/// The entity type name every harness node runs.
pub const COUNTER_TYPE: &str = "counter";

/// How harness nodes are configured.
#[derive(Clone)]
pub struct HarnessSettings {
    /// Seed for the network and membership RNGs.
    pub seed: u64,
    /// Region tunables.
    pub region: RegionSettings,
    /// Coordinator tunables.
    pub coordinator: CoordinatorSettings,
    /// Membership timing (seeds are filled in by the harness).
    pub membership: MembershipSettings,
    /// With `Some`, every node guards its coordinator with an in-memory lease
    /// of these settings (owner replaced by `node-<id>`); `None`: no lease.
    pub lease: Option<LeaseSettings>,
    /// Record coordinator and region events into [`MultiNode::history`].
    pub record: bool,
    /// The lease store the nodes share; set it up (e.g. a lease held by an
    /// outsider) before starting the harness if a test needs to.
    pub store: InMemoryLeaseStore,
}

impl HarnessSettings {
    /// Defaults, seeded.
    pub fn new(seed: u64) -> Self {
        let mut membership = MembershipSettings::new(Vec::new());
        membership.rng_seed = seed;
        Self {
            seed,
            region: RegionSettings::default(),
            coordinator: CoordinatorSettings::default(),
            membership,
            lease: None,
            record: true,
            store: InMemoryLeaseStore::new(),
        }
    }

    /// Defaults with an in-memory lease of DESIGN.md's default timing.
    pub fn with_memory_lease(seed: u64) -> Self {
        let mut settings = Self::new(seed);
        settings.lease = LeaseSettings::builder(format!("{COUNTER_TYPE}-coordinator"), "node")
            .build()
            .ok();
        settings
    }
}

/// The lease owner name of `node`.
pub fn owner_of(node: NodeId) -> String {
    format!("node-{}", node.0)
}

/// One running node.
pub struct Node {
    transport: Arc<InProcessTransport>,
    lease: Option<Arc<InMemoryLease>>,
    membership: Membership,
    sharding: ClusterSharding,
    region: ShardRegion<Counter>,
}

/// N nodes, one network.
pub struct MultiNode {
    network: InProcessNetwork,
    store: InMemoryLeaseStore,
    history: History,
    settings: HarnessSettings,
    nodes: BTreeMap<NodeId, Node>,
    generation: u64,
}

fn addr(node: NodeId) -> NodeAddr {
    NodeAddr(format!("inproc:{}", node.0))
}

impl MultiNode {
    /// Starts nodes `1..=n`; nodes 1 and 2 are the seeds.
    pub fn start(n: u64, settings: HarnessSettings) -> Self {
        let mut harness = Self {
            network: InProcessNetwork::new(settings.seed),
            store: settings.store.clone(),
            history: History::default(),
            settings,
            nodes: BTreeMap::new(),
            generation: 0,
        };
        for i in 1..=n {
            harness.start_node(NodeId(i));
        }
        harness
    }

    /// Starts (or restarts) `node` with a fresh identity generation.
    pub fn start_node(&mut self, node: NodeId) {
        self.generation += 1;
        let transport = Arc::new(self.network.join(node));
        let mut membership = self.settings.membership.clone();
        membership.seeds = vec![(NodeId(1), addr(NodeId(1))), (NodeId(2), addr(NodeId(2)))];
        membership.rng_seed = self.settings.seed.wrapping_mul(1000).wrapping_add(node.0);
        membership.generation = self.generation;
        let membership = match Membership::start(transport.clone(), addr(node), membership) {
            Ok(m) => m,
            Err(e) => panic!("harness membership settings are invalid: {e}"),
        };
        let sharding = ClusterSharding::new(transport.clone(), membership.view());
        let mut settings = ShardingSettings::new(
            COUNTER_TYPE,
            |m: &CounterMsg| m.entity_id(),
            |_: &sharding_core::EntityId| Counter::default(),
        );
        settings.region = self.settings.region.clone();
        settings.coordinator = self.settings.coordinator.clone();
        let lease = self.settings.lease.as_ref().map(|template| {
            let owned = match template.with_owner(owner_of(node)) {
                Ok(s) => s,
                Err(e) => panic!("harness lease settings are invalid: {e}"),
            };
            Arc::new(self.store.lease(owned))
        });
        settings.lease = lease.clone().map(|l| l as Arc<dyn Lease>);
        if self.settings.record {
            settings.coordinator_observer = Some(self.history.coordinator_observer());
            settings.region_observer = Some(self.history.region_observer());
        }
        let region = match sharding.start(settings) {
            Ok(r) => r,
            Err(e) => panic!("harness could not start the counter type: {e}"),
        };
        tracing::info!(%node, "harness node started");
        self.history
            .push(node, EventKind::Harness(HarnessEvent::NodeStarted));
        self.nodes.insert(
            node,
            Node {
                transport,
                lease,
                membership,
                sharding,
                region,
            },
        );
    }

    /// Crashes `node`: no goodbye, its messages are lost.
    pub fn kill(&mut self, node: NodeId) {
        self.network.kill(node);
        if let Some(n) = self.nodes.remove(&node) {
            n.region.stop();
            self.history
                .push(node, EventKind::Harness(HarnessEvent::NodeStopped));
        }
        tracing::info!(%node, "harness node killed");
    }

    /// Shuts `node` down gracefully: its shards are handed off first.
    pub async fn stop_gracefully(&mut self, node: NodeId, timeout: Duration) {
        if let Some(n) = self.nodes.remove(&node) {
            n.region.shutdown(timeout).await;
            n.membership.leave().await;
            self.network.kill(node);
            self.history
                .push(node, EventKind::Harness(HarnessEvent::NodeStopped));
        }
    }

    /// The shared lease store (used only when the settings have a lease).
    pub fn store(&self) -> &InMemoryLeaseStore {
        &self.store
    }

    /// The recorded history.
    pub fn history(&self) -> &History {
        &self.history
    }

    /// `node`'s lease handle, if leases are on.
    pub fn lease(&self, node: NodeId) -> Option<Arc<InMemoryLease>> {
        self.nodes.get(&node).and_then(|n| n.lease.clone())
    }

    /// `node`'s transport, to inject raw traffic in tests.
    pub fn transport(&self, node: NodeId) -> Option<Arc<InProcessTransport>> {
        self.nodes.get(&node).map(|n| Arc::clone(&n.transport))
    }

    /// Cuts `node` off from the lease store (its calls fail at once).
    pub fn isolate_from_lease_store(&self, node: NodeId) {
        self.store.cut_off(&owner_of(node));
    }

    /// Gives `node` its lease store access back.
    pub fn reconnect_to_lease_store(&self, node: NodeId) {
        self.store.reconnect(&owner_of(node));
    }

    /// A stop-the-world pause of `node` for `duration`, as far as the rest of
    /// the world can tell: it hears and says nothing, and its lease calls
    /// hang. When it resumes, the directive it last sent is sent again with
    /// its original epoch to every other region: the one a real pause would
    /// have had in flight (a send that passed its `is_active()` check just
    /// before the pause). Returns how many copies were sent.
    ///
    /// The node's tasks keep running during the pause (one tokio runtime
    /// cannot freeze a subset of tasks); what they do cannot reach anyone,
    /// and the replay models the one hazard a pause adds.
    pub async fn pause(&self, node: NodeId, duration: Duration) -> usize {
        let owner = owner_of(node);
        let last_sent = self
            .history
            .events()
            .into_iter()
            .rev()
            .find_map(|e| match e.kind {
                EventKind::Coordinator(CoordinatorRecord::DirectiveSent { to, directive })
                    if e.node == node =>
                {
                    Some((to, directive))
                }
                _ => None,
            });
        self.network.isolate(node);
        self.store.black_hole(&owner);
        tracing::info!(%node, ?duration, "paused");
        tokio::time::sleep(duration).await;
        self.network.reconnect(node);
        self.store.reconnect(&owner);
        tracing::info!(%node, "resumed");
        let (Some((to, directive)), Some(transport)) = (last_sent, self.transport(node)) else {
            return 0;
        };
        let channels = TypeChannels::of(&TypeName::from(COUNTER_TYPE));
        let mut replayed = 0;
        // The stale directive goes to its addressee and, for good measure, to
        // every other region. Not to the paused node's own region: it was
        // frozen in the same pause and is caught up by the new coordinator.
        let mut targets: Vec<NodeId> = self.node_ids().into_iter().filter(|n| *n != node).collect();
        if to != node && !targets.contains(&to) {
            targets.push(to);
        }
        for target in targets {
            if let Ok(bytes) = encode(&RegionMsg::Directive(directive)) {
                if transport.send(target, channels.region, bytes).is_ok() {
                    replayed += 1;
                }
            }
        }
        replayed
    }

    /// The network, for faults not wrapped here.
    pub fn network(&self) -> &InProcessNetwork {
        &self.network
    }

    /// Splits the network into groups.
    pub fn partition(&self, groups: &[&[NodeId]]) {
        self.network.partition(groups);
    }

    /// Removes every partition.
    pub fn heal(&self) {
        self.network.heal();
    }

    /// Cuts `node` off from every other node.
    pub fn isolate(&self, node: NodeId) {
        self.network.isolate(node);
    }

    /// The running nodes.
    pub fn node_ids(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    /// The region handle on `node`.
    pub fn region(&self, node: NodeId) -> &ShardRegion<Counter> {
        match self.nodes.get(&node) {
            Some(n) => &n.region,
            None => panic!("{node} is not running"),
        }
    }

    /// The leader in `node`'s view.
    pub fn leader_of(&self, node: NodeId) -> Option<NodeId> {
        self.nodes
            .get(&node)
            .and_then(|n| n.membership.view().leader())
    }

    /// Members in `node`'s view.
    pub fn members_of(&self, node: NodeId) -> Vec<NodeId> {
        self.nodes
            .get(&node)
            .map(|n| n.membership.view().members())
            .unwrap_or_default()
    }

    /// Nodes whose counter coordinator is active now.
    pub fn active_coordinators(&self) -> Vec<NodeId> {
        let type_name = TypeName::from(COUNTER_TYPE);
        self.nodes
            .iter()
            .filter(|(_, n)| {
                n.sharding
                    .coordinator(&type_name)
                    .is_some_and(|c| c.is_active())
            })
            .map(|(id, _)| *id)
            .collect()
    }

    /// The coordinator status on `node`.
    pub fn coordinator_status(
        &self,
        node: NodeId,
    ) -> Option<sharding_coordinator::CoordinatorStatus> {
        let type_name = TypeName::from(COUNTER_TYPE);
        self.nodes
            .get(&node)
            .and_then(|n| n.sharding.coordinator(&type_name))
            .map(|c| c.status())
    }

    /// Which nodes host each shard now (more than one is a double-hosted shard).
    pub fn shard_hosts(&self) -> BTreeMap<ShardId, Vec<NodeId>> {
        let mut hosts: BTreeMap<ShardId, Vec<NodeId>> = BTreeMap::new();
        for (id, node) in &self.nodes {
            for shard in node.region.hosted_shards() {
                hosts.entry(shard).or_default().push(*id);
            }
        }
        hosts
    }

    /// Waits until every node sees every running node, or `limit` passes.
    pub async fn converge(&self, limit: Duration) -> bool {
        let all = self.node_ids();
        let start = tokio::time::Instant::now();
        loop {
            if all.iter().all(|n| self.members_of(*n) == all) {
                return true;
            }
            if start.elapsed() >= limit {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
