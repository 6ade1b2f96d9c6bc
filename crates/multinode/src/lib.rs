//! A MultiNodeSpec-style harness: N nodes in one process on the in-process
//! network, with faults (partition, heal, isolate, kill, restart) and probes
//! (leaders, active coordinators, shard hosts). Runs under paused tokio time.

mod counter;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cluster::{InProcessNetwork, Membership, MembershipSettings, NodeAddr, NodeId};
use sharding_coordinator::{ClusterSharding, CoordinatorSettings, ShardingSettings};
use sharding_core::{RegionSettings, ShardId, ShardRegion, TypeName};

pub use counter::{Counter, CounterMsg, CounterOp};

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
        }
    }
}

/// One running node.
pub struct Node {
    membership: Membership,
    sharding: ClusterSharding,
    region: ShardRegion<Counter>,
}

/// N nodes, one network.
pub struct MultiNode {
    network: InProcessNetwork,
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
        let sharding = ClusterSharding::new(transport, membership.view());
        let mut settings = ShardingSettings::new(
            COUNTER_TYPE,
            |m: &CounterMsg| m.entity_id(),
            |_: &sharding_core::EntityId| Counter::default(),
        );
        settings.region = self.settings.region.clone();
        settings.coordinator = self.settings.coordinator.clone();
        let region = match sharding.start(settings) {
            Ok(r) => r,
            Err(e) => panic!("harness could not start the counter type: {e}"),
        };
        tracing::info!(%node, "harness node started");
        self.nodes.insert(
            node,
            Node {
                membership,
                sharding,
                region,
            },
        );
    }

    /// Crashes `node`: no goodbye, its messages are lost.
    pub fn kill(&mut self, node: NodeId) {
        self.network.kill(node);
        self.nodes.remove(&node);
        tracing::info!(%node, "harness node killed");
    }

    /// Shuts `node` down gracefully: its shards are handed off first.
    pub async fn stop_gracefully(&mut self, node: NodeId, timeout: Duration) {
        if let Some(n) = self.nodes.remove(&node) {
            n.region.shutdown(timeout).await;
            n.membership.leave().await;
            self.network.kill(node);
        }
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
