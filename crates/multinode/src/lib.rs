//! A MultiNodeSpec-style harness: N nodes in one process on the in-process
//! network, with faults (partition, heal, isolate, kill, restart) and probes
//! (leaders, active coordinators, shard hosts). Runs under paused tokio time.

pub mod availability;
pub mod checker;
mod counter;
mod history;
pub mod real_api;
pub mod scenario;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cluster::{
    InProcessNetwork, InProcessTransport, Membership, MembershipSettings, NodeAddr, NodeId,
    Transport,
};
use cluster_singleton::{ClusterSingleton, SingletonSettings};
use lease_api::{Lease, LeaseSettings};
use lease_k8s::KubernetesLease;
use lease_k8s::emulator::ApiServer;
use lease_memory::{Grant, InMemoryLease, InMemoryLeaseStore};
use sharding_coordinator::CoordinatorRecord;
use sharding_coordinator::{ClusterSharding, CoordinatorSettings, ShardingSettings};
use sharding_core::durable::InMemoryStateStore;
use sharding_core::protocol::{RegionMsg, TypeChannels, encode};
use sharding_core::{RegionSettings, ShardId, ShardRegion, TenureSettings, TypeName};

pub use cluster_singleton::SingletonEvent;
pub use counter::{Counter, CounterMsg, CounterOp, DurableCounter, Tally};
pub use history::{Event, EventKind, HarnessEvent, History};

/// The entity type name every harness node runs.
pub const COUNTER_TYPE: &str = "counter";

/// The cluster singleton every harness node runs next to the counters.
pub const SINGLETON: &str = "tally";

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
    /// Where leases live when `lease` is set.
    pub backend: LeaseBackendKind,
    /// Shard tenure timing (used when `lease` is set).
    pub tenure: TenureSettings,
    /// With [`LeaseBackendKind::Kubernetes`]: a real API server and the
    /// (existing, fresh) namespace of this run, instead of the emulator.
    pub real_api: Option<(Arc<lease_k8s::envtest::EnvTest>, String)>,
}

/// Which store backs the nodes' leases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseBackendKind {
    /// [`InMemoryLeaseStore`]: paused time works.
    Memory,
    /// `KubernetesLease` against the loopback API server emulator: real time only.
    Kubernetes,
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
            backend: LeaseBackendKind::Memory,
            tenure: TenureSettings::default(),
            real_api: None,
        }
    }

    /// Defaults with an in-memory lease of the default timing (`docs/architecture.md`).
    pub fn with_memory_lease(seed: u64) -> Self {
        let mut settings = Self::new(seed);
        settings.lease = LeaseSettings::builder(format!("{COUNTER_TYPE}-coordinator"), "node")
            .build()
            .ok();
        settings
    }
}

impl HarnessSettings {
    /// Real-time settings with the Kubernetes lease on the emulated API
    /// server: every timing scaled down about fifteen-fold (lease ttl 2 s,
    /// membership down after 1 s) so scenarios take seconds, not minutes.
    pub fn with_kubernetes_lease(seed: u64) -> Self {
        let mut s = Self::new(seed);
        s.backend = LeaseBackendKind::Kubernetes;
        s.lease = LeaseSettings::builder(format!("{COUNTER_TYPE}-coordinator"), "node")
            .ttl(Duration::from_secs(2))
            .heartbeat_interval(Duration::from_millis(300))
            .operation_timeout(Duration::from_millis(500))
            .safety_margin(Duration::from_millis(200))
            .build()
            .ok();
        s.scale_for_real_time();
        s
    }

    /// Real-time settings without a lease (same scaled timings).
    pub fn real_time_without_lease(seed: u64) -> Self {
        let mut s = Self::new(seed);
        s.scale_for_real_time();
        s
    }

    fn scale_for_real_time(&mut self) {
        self.membership.heartbeat_interval = Duration::from_millis(200);
        self.membership.probe_timeout = Duration::from_millis(100);
        self.membership.down_after = Duration::from_secs(1);
        self.membership.announce_interval = Duration::from_millis(300);
        self.coordinator.lease_retry_interval = Duration::from_millis(500);
        self.coordinator.minority_lease_delay = Duration::from_secs(2);
        self.coordinator.retry_interval = Duration::from_millis(200);
        self.membership.join_timeout = Duration::from_millis(500);
        self.coordinator.recovery_timeout = Duration::from_millis(500);
        self.coordinator.rebalance_interval = Duration::from_secs(1);
        self.coordinator.handoff_timeout = Duration::from_secs(4);
        self.region.retry_interval = Duration::from_millis(200);
        self.region.ask_timeout = Duration::from_secs(1);
        self.tenure = TenureSettings {
            tenure: Duration::from_millis(1000),
            renew_interval: Duration::from_millis(200),
            clock_rate_bound: 0.01,
            margin: Duration::from_millis(100),
            bridge: Duration::from_millis(600),
        };
    }
}

/// The namespace of harness leases on the emulated API server.
pub const K8S_NAMESPACE: &str = "default";

/// Rebuilds tenures from the API server's writes: a tenure starts when a
/// holder first appears and ends when another holder (or none) is written,
/// or `leaseDurationSeconds` after its last write, whichever is first.
fn grants_from_writes(writes: &[lease_k8s::emulator::LeaseWrite]) -> Vec<Grant> {
    let mut grants: Vec<Grant> = Vec::new();
    let mut open: BTreeMap<String, Grant> = BTreeMap::new();
    for w in writes {
        let key = format!("{}/{}", w.namespace, w.name);
        let ttl = Duration::from_secs(u64::try_from(w.duration_secs.unwrap_or(1)).unwrap_or(1));
        if let Some(grant) = open.get_mut(&key) {
            if w.holder.as_deref() == Some(grant.owner.as_str()) {
                grant.until = w.at + ttl;
                continue;
            }
        }
        if let Some(mut done) = open.remove(&key) {
            done.until = done.until.min(w.at);
            grants.push(done);
        }
        if let Some(holder) = &w.holder {
            // The backend's token: the resourceVersion of the write that began the tenure.
            let token = w.resource_version.unwrap_or(0);
            let grant = Grant {
                lease: w.name.clone(),
                owner: holder.clone(),
                token: lease_api::FencingToken::new(token),
                from: w.at,
                until: w.at + ttl,
            };
            open.insert(key, grant);
        }
    }
    grants.extend(open.into_values());
    grants.sort_by_key(|g| g.from);
    grants
}

/// The lease owner name of `node`.
pub fn owner_of(node: NodeId) -> String {
    format!("node-{}", node.0)
}

/// One running node.
pub struct Node {
    transport: Arc<InProcessTransport>,
    lease: Option<NodeLease>,
    membership: Membership,
    sharding: ClusterSharding,
    region: ShardRegion<DurableCounter>,
    singleton: ClusterSingleton<Tally>,
}

/// A node's lease handle, by backend.
#[derive(Clone)]
enum NodeLease {
    Memory(Arc<InMemoryLease>),
    Kubernetes(Arc<KubernetesLease>),
}

impl NodeLease {
    fn as_dyn(&self) -> Arc<dyn Lease> {
        match self {
            NodeLease::Memory(l) => Arc::clone(l) as Arc<dyn Lease>,
            NodeLease::Kubernetes(l) => Arc::clone(l) as Arc<dyn Lease>,
        }
    }
}

/// A node in a stop-the-world pause, from [`MultiNode::freeze`].
#[derive(Debug)]
#[must_use = "thaw the node to end its pause"]
pub struct Frozen {
    node: NodeId,
    /// The last directive its coordinator sent, replayed on thaw.
    last_sent: Option<(NodeId, sharding_core::protocol::Directive)>,
}

/// N nodes, one network.
pub struct MultiNode {
    network: InProcessNetwork,
    store: InMemoryLeaseStore,
    api: ApiServer,
    /// The real API server's view, when runs use one instead of `api`.
    real: Option<real_api::RealStore>,
    history: History,
    settings: HarnessSettings,
    nodes: BTreeMap<NodeId, Node>,
    generation: u64,
    /// The counters' database, shared by every node and every restart.
    states: InMemoryStateStore,
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
            api: ApiServer::new(),
            real: settings
                .real_api
                .clone()
                .map(|(env, namespace)| real_api::RealStore::new(env, namespace)),
            history: History::default(),
            settings,
            nodes: BTreeMap::new(),
            generation: 0,
            states: InMemoryStateStore::with_history(),
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
        let mut settings = ShardingSettings::new(COUNTER_TYPE, |m: &CounterMsg| m.entity_id(), {
            let states = self.states.clone();
            move |_: &sharding_core::EntityId| DurableCounter::new(Counter, states.clone())
        });
        settings.region = self.settings.region.clone();
        settings.coordinator = self.settings.coordinator.clone();
        settings.tenure = self.settings.tenure;
        let lease = self.node_lease(node, None);
        settings.lease = lease.as_ref().map(NodeLease::as_dyn);
        if self.settings.record {
            settings.coordinator_observer = Some(self.history.coordinator_observer());
            settings.region_observer = Some(self.history.region_observer());
        }
        let region = match sharding.start(settings) {
            Ok(r) => r,
            Err(e) => panic!("harness could not start the counter type: {e}"),
        };
        let singleton = self.start_singleton(node, Arc::clone(&transport), &membership);
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
                singleton,
            },
        );
    }

    /// `node`'s lease handle: the coordinator's (`name` None) or another
    /// lease of the same timing under `name`; `None` without a lease.
    fn node_lease(&self, node: NodeId, name: Option<&str>) -> Option<NodeLease> {
        let template = self.settings.lease.as_ref()?;
        let mut owned = match template.with_owner(owner_of(node)) {
            Ok(s) => s,
            Err(e) => panic!("harness lease settings are invalid: {e}"),
        };
        if let Some(name) = name {
            owned = match owned.with_name(name) {
                Ok(s) => s,
                Err(e) => panic!("harness lease name {name} is invalid: {e}"),
            };
        }
        Some(match self.settings.backend {
            LeaseBackendKind::Memory => NodeLease::Memory(Arc::new(self.store.lease(owned))),
            LeaseBackendKind::Kubernetes => {
                NodeLease::Kubernetes(Arc::new(self.kubernetes_lease(node, owned)))
            }
        })
    }

    /// The tally singleton on `node`, with its own lease when the harness
    /// has one (I7).
    fn start_singleton(
        &self,
        node: NodeId,
        transport: Arc<InProcessTransport>,
        membership: &Membership,
    ) -> ClusterSingleton<Tally> {
        let mut settings = SingletonSettings::new(SINGLETON, Tally::default);
        settings.lease = self
            .node_lease(node, Some(&format!("{SINGLETON}-singleton")))
            .map(|l| l.as_dyn());
        if let Some(lease) = &self.settings.lease {
            // Stopped well inside the lease's safety margin.
            settings.stop_timeout = settings.stop_timeout.min(lease.safety_margin() / 2);
            settings.lease_retry_interval = self.settings.coordinator.lease_retry_interval;
            settings.minority_lease_delay = self.settings.coordinator.minority_lease_delay;
        }
        settings.proxy.ask_timeout = self.settings.region.ask_timeout;
        if self.settings.record {
            settings.observer = Some(self.history.singleton_observer());
        }
        match ClusterSingleton::start(transport, membership.view(), settings) {
            Ok(s) => s,
            Err(e) => panic!("harness could not start the singleton: {e}"),
        }
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
            n.sharding.shutdown(timeout).await;
            n.singleton.shutdown(timeout).await;
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

    /// `node`'s in-memory lease handle, if in-memory leases are on.
    pub fn lease(&self, node: NodeId) -> Option<Arc<InMemoryLease>> {
        match self.nodes.get(&node).and_then(|n| n.lease.clone()) {
            Some(NodeLease::Memory(l)) => Some(l),
            _ => None,
        }
    }

    /// `node`'s lease handle, whatever the backend.
    pub fn lease_handle(&self, node: NodeId) -> Option<Arc<dyn Lease>> {
        self.nodes
            .get(&node)
            .and_then(|n| n.lease.as_ref().map(NodeLease::as_dyn))
    }

    /// The emulated API server (used when the backend is Kubernetes).
    pub fn api_server(&self) -> &ApiServer {
        &self.api
    }

    fn kubernetes_lease(&self, node: NodeId, settings: LeaseSettings) -> KubernetesLease {
        let owner = owner_of(node);
        if let Some(real) = &self.real {
            let client = real.client_for(&owner);
            return match KubernetesLease::new(client, real.namespace.clone(), settings) {
                Ok(l) => l,
                Err(e) => panic!("harness lease settings are invalid: {e}"),
            };
        }
        let endpoint = match self.api.endpoint(&owner) {
            Ok(e) => e,
            Err(e) => panic!("cannot open an emulator endpoint: {e}"),
        };
        let url = match endpoint.url.parse() {
            Ok(u) => u,
            Err(e) => panic!("emulator url {}: {e}", endpoint.url),
        };
        let client = match kube::Client::try_from(kube::Config::new(url)) {
            Ok(c) => c,
            Err(e) => panic!("cannot build a kube client: {e}"),
        };
        match KubernetesLease::new(client, K8S_NAMESPACE, settings) {
            Ok(l) => l,
            Err(e) => panic!("harness lease settings are invalid: {e}"),
        }
    }

    /// Who held the coordinator's lease when, according to the store: the
    /// in-memory store's history, or what the emulated API server was written.
    pub fn grants(&self) -> Vec<Grant> {
        let all = match self.settings.backend {
            LeaseBackendKind::Memory => self.store.history(),
            LeaseBackendKind::Kubernetes => match &self.real {
                Some(real) => grants_from_writes(&real.writes()),
                None => grants_from_writes(&self.api.writes()),
            },
        };
        let Some(name) = self
            .settings
            .lease
            .as_ref()
            .map(|l| l.lease_name().to_owned())
        else {
            return all;
        };
        all.into_iter().filter(|g| g.lease == name).collect()
    }

    /// This node's proxy to the tally singleton.
    pub fn singleton(&self, node: NodeId) -> cluster_singleton::SingletonProxy<Tally> {
        match self.nodes.get(&node) {
            Some(n) => n.singleton.proxy(),
            None => panic!("{node} is not running"),
        }
    }

    /// Nodes on which the tally singleton runs now.
    pub fn singleton_running(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.singleton.is_running_here())
            .map(|(id, _)| *id)
            .collect()
    }

    /// The current lease holder as the store sees it (for timelines).
    pub fn lease_holder(&self) -> Option<String> {
        let name = self.settings.lease.as_ref()?.lease_name().to_owned();
        match self.settings.backend {
            LeaseBackendKind::Memory => self.store.holder(&name).map(|(owner, _)| owner),
            LeaseBackendKind::Kubernetes => self
                .api
                .lease(K8S_NAMESPACE, &name)
                .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_owned)),
        }
    }

    /// Revokes the counter coordinator's and the singleton's leases in the
    /// in-memory store behind their holders' backs (an operator, a store
    /// clean-up); returns the owners that lost them. The Kubernetes backend
    /// is not revoked here (its deletion case runs in the conformance suite).
    pub fn revoke_leases(&self) -> Vec<String> {
        if self.settings.backend != LeaseBackendKind::Memory {
            return Vec::new();
        }
        let Some(coordinator) = self
            .settings
            .lease
            .as_ref()
            .map(|l| l.lease_name().to_owned())
        else {
            return Vec::new();
        };
        [coordinator, format!("{SINGLETON}-singleton")]
            .iter()
            .filter_map(|name| self.store.revoke(name))
            .collect()
    }

    /// `node`'s transport, to inject raw traffic in tests.
    pub fn transport(&self, node: NodeId) -> Option<Arc<InProcessTransport>> {
        self.nodes.get(&node).map(|n| Arc::clone(&n.transport))
    }

    /// Cuts `node` off from the lease store (its calls fail at once).
    pub fn isolate_from_lease_store(&self, node: NodeId) {
        match self.settings.backend {
            LeaseBackendKind::Memory => self.store.cut_off(&owner_of(node)),
            LeaseBackendKind::Kubernetes => self.cut_from_api(node, true),
        }
    }

    /// Gives `node` its lease store access back.
    pub fn reconnect_to_lease_store(&self, node: NodeId) {
        match self.settings.backend {
            LeaseBackendKind::Memory => self.store.reconnect(&owner_of(node)),
            LeaseBackendKind::Kubernetes => self.cut_from_api(node, false),
        }
    }

    fn cut_from_api(&self, node: NodeId, cut: bool) {
        let owner = owner_of(node);
        match (&self.real, cut) {
            (Some(real), _) => real.cut(&owner, cut),
            (None, true) => self.api.cut(&owner, true),
            (None, false) => self.api.heal(&owner),
        }
    }

    /// A stop-the-world pause of `node` for `duration`, as far as the rest of
    /// the world can tell: it hears and says nothing, and its lease calls
    /// hang. When it resumes, the directive it last sent is sent again with
    /// its original epoch: the one a real pause would have had in flight (a
    /// send that passed its `is_active()` check just before the pause); to
    /// every other region too if the node is no longer active by then.
    /// Returns how many copies were sent.
    ///
    /// The node's tasks keep running during the pause (one tokio runtime
    /// cannot freeze a subset of tasks); what they do cannot reach anyone,
    /// and the replay models the one hazard a pause adds. To observe the
    /// cluster during the pause, use [`freeze`](Self::freeze) and
    /// [`thaw`](Self::thaw) around your own waiting.
    pub async fn pause(&self, node: NodeId, duration: Duration) -> usize {
        let frozen = self.freeze(node);
        tokio::time::sleep(duration).await;
        self.thaw(frozen)
    }

    /// Starts a stop-the-world pause of `node` (see [`pause`](Self::pause));
    /// [`thaw`](Self::thaw) ends it.
    pub fn freeze(&self, node: NodeId) -> Frozen {
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
        match self.settings.backend {
            LeaseBackendKind::Memory => self.store.black_hole(&owner_of(node)),
            LeaseBackendKind::Kubernetes => self.cut_from_api(node, true),
        }
        tracing::info!(%node, "paused");
        Frozen { node, last_sent }
    }

    /// Ends a pause: reconnects the node and replays the directive it had in
    /// flight. Returns how many copies were sent.
    pub fn thaw(&self, frozen: Frozen) -> usize {
        let Frozen { node, last_sent } = frozen;
        self.network.reconnect(node);
        self.reconnect_to_lease_store(node);
        tracing::info!(%node, "resumed");
        let (Some((to, directive)), Some(transport)) = (last_sent, self.transport(node)) else {
            return 0;
        };
        let channels = TypeChannels::of(&TypeName::from(COUNTER_TYPE));
        let mut replayed = 0;
        // A coordinator that is still active resumes its send: to the
        // addressee only (copying a current directive to other regions would
        // forge orders it never gave). One that lost its tenure meanwhile
        // sends a stale directive: to its addressee and, for good measure,
        // to every other region. Never to the paused node's own region: it
        // was frozen in the same pause and is caught up by the coordinator.
        let still_active = self.active_coordinators().contains(&node);
        let mut targets: Vec<NodeId> = if still_active {
            Vec::new()
        } else {
            self.node_ids().into_iter().filter(|n| *n != node).collect()
        };
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

    /// The counters' state store: every save attempt, and the final values.
    pub fn states(&self) -> &InMemoryStateStore {
        &self.states
    }

    /// The region handle on `node`.
    pub fn region(&self, node: NodeId) -> &ShardRegion<DurableCounter> {
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
