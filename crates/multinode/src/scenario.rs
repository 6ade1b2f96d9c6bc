//! Named fault scenarios and the seeded nemesis, each run in paused time and
//! judged by the checker.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use cluster::{LinkFaults, NodeId};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::Serialize;
use sharding_coordinator::Phase;
use sharding_core::TypeName;
use sharding_core::protocol::{Directive, Epoch, RegionMsg, TypeChannels, encode};
use sharding_core::{EntityId, ShardId, shard_of};
use tokio::time::{Instant, sleep, timeout};

use crate::availability::{Availability, AvailabilityProbe};
use crate::checker::{self, Check, CheckInput, FinalProbe, Verdict, Writes};
use crate::{COUNTER_TYPE, CounterMsg, EventKind, HarnessEvent, HarnessSettings, MultiNode};

/// Restart delays below membership's down-after (10 s), in seconds.
const RESTART_DELAYS: [f64; 4] = [0.5, 2.0, 5.0, 9.0];

/// A named fault pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Scenario {
    /// Majority and minority: {1..=3} | {4..}.
    SymmetricSplit,
    /// The leader alone against everyone else.
    LeaderIsolated,
    /// The leader cannot send to the upper half of the nodes; they can send to it.
    OneWayPartition,
    /// The leader's side is split from the rest and cannot reach the lease store.
    StoreUnreachable,
    /// The active coordinator freezes for longer than the ttl.
    StopTheWorldPause,
    /// The leader crashes and comes back a minute later.
    LeaderCrashRestart,
    /// Partitions come and go every few seconds.
    FlappingPartition,
    /// Every node is restarted in turn.
    RollingRestart,
    /// The leader is killed and started again before membership declares it
    /// down (after 0.5, 2, 5 or 9 s, by seed), as a crashed pod comes back.
    LeaderRestartBeforeDown,
    /// The same for a node that is not the leader.
    MemberRestartBeforeDown,
    /// The leader leaves gracefully and comes back 20 s later.
    LeaderLeavesAndReturns,
    /// The leader crashes; its successor is killed while it recovers.
    KillDuringRecovery,
    /// A third of the sharding protocol's messages are lost while a node's
    /// shards move away and back (registration, homes, handoffs).
    HandoffMessageLoss,
    /// Majority and minority with the active coordinator on the minority
    /// side: {active, one more} | {the rest}.
    MinorityCoordinatorSplit,
    /// A region cannot send to the active coordinator (its renewals are
    /// lost) but still hears it.
    RegionCannotReachCoordinator,
    /// A region that is not the coordinator freezes past its shard tenure.
    RegionPaused,
    /// A region is cut off; while it is, the active coordinator crashes.
    FailoverWhileRegionUnreachable,
    /// The active coordinator alone loses the lease store while its
    /// regions hold tenures it granted.
    CoordinatorCutFromStore,
    /// One region loses the active coordinator (both ways) but not the
    /// lease store; 6 s later the coordinator loses the store: the region
    /// bridges its tenure on a suspension the coordinator never hears of,
    /// while the coordinator's last renewal still holds, so it must not
    /// re-home that region's shards.
    CoordinatorAndRegionCut,
    /// Every node loses the lease store for 60 s; nothing else happens.
    StoreDownForAll,
    /// The active coordinator crashes and stays down for 120 s.
    LeaderCrashNoReturn,
    /// A new node joins the majority side during a partition.
    JoinDuringPartition,
    /// A member that is not the leader leaves gracefully and comes back
    /// 20 s later (handoff and rebalance, no fault).
    MemberLeavesAndReturns,
    /// A seeded random schedule of all of the above.
    Nemesis,
}

impl Scenario {
    /// Every scenario, in report order.
    pub const ALL: &'static [Scenario] = &[
        Scenario::SymmetricSplit,
        Scenario::LeaderIsolated,
        Scenario::OneWayPartition,
        Scenario::StoreUnreachable,
        Scenario::StopTheWorldPause,
        Scenario::LeaderCrashRestart,
        Scenario::FlappingPartition,
        Scenario::RollingRestart,
        Scenario::LeaderRestartBeforeDown,
        Scenario::MemberRestartBeforeDown,
        Scenario::LeaderLeavesAndReturns,
        Scenario::KillDuringRecovery,
        Scenario::HandoffMessageLoss,
        Scenario::MinorityCoordinatorSplit,
        Scenario::RegionCannotReachCoordinator,
        Scenario::RegionPaused,
        Scenario::FailoverWhileRegionUnreachable,
        Scenario::CoordinatorCutFromStore,
        Scenario::CoordinatorAndRegionCut,
        Scenario::StoreDownForAll,
        Scenario::LeaderCrashNoReturn,
        Scenario::JoinDuringPartition,
        Scenario::MemberLeavesAndReturns,
        Scenario::Nemesis,
    ];

    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::SymmetricSplit => "symmetric-split",
            Scenario::LeaderIsolated => "leader-isolated",
            Scenario::OneWayPartition => "one-way-partition",
            Scenario::StoreUnreachable => "store-unreachable",
            Scenario::StopTheWorldPause => "stop-the-world-pause",
            Scenario::LeaderCrashRestart => "leader-crash-restart",
            Scenario::FlappingPartition => "flapping-partition",
            Scenario::RollingRestart => "rolling-restart",
            Scenario::LeaderRestartBeforeDown => "leader-restart-before-down",
            Scenario::MemberRestartBeforeDown => "member-restart-before-down",
            Scenario::LeaderLeavesAndReturns => "leader-leaves-and-returns",
            Scenario::KillDuringRecovery => "kill-during-recovery",
            Scenario::HandoffMessageLoss => "handoff-message-loss",
            Scenario::MinorityCoordinatorSplit => "minority-coordinator-split",
            Scenario::RegionCannotReachCoordinator => "region-cannot-reach-coordinator",
            Scenario::RegionPaused => "region-paused",
            Scenario::FailoverWhileRegionUnreachable => "failover-while-region-unreachable",
            Scenario::CoordinatorCutFromStore => "coordinator-cut-from-store",
            Scenario::CoordinatorAndRegionCut => "coordinator-and-region-cut",
            Scenario::StoreDownForAll => "store-down-for-all",
            Scenario::LeaderCrashNoReturn => "leader-crash-no-return",
            Scenario::JoinDuringPartition => "join-during-partition",
            Scenario::MemberLeavesAndReturns => "member-leaves-and-returns",
            Scenario::Nemesis => "nemesis",
        }
    }

    /// Parses a command-line name.
    pub fn from_name(name: &str) -> Option<Scenario> {
        Scenario::ALL.iter().copied().find(|s| s.name() == name)
    }
}

/// Which lease guards the coordinators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum LeaseMode {
    /// No lease: a partition shows two active coordinators (the "before").
    None,
    /// The in-memory lease, in paused time.
    Memory,
    /// The Kubernetes lease on the emulated API server, in real time with
    /// every timing scaled down (ttl 2 s).
    Kubernetes,
}

/// One run to do.
#[derive(Debug, Clone, Copy)]
pub struct RunConfig {
    /// The scenario.
    pub scenario: Scenario,
    /// Seeds the network, membership, traffic and nemesis.
    pub seed: u64,
    /// Number of nodes (at least 3).
    pub nodes: u64,
    /// The lease.
    pub lease: LeaseMode,
    /// Also ask every shard once a second through a healthy majority and
    /// report the measured unavailability (slower; see [`crate::availability`]).
    pub availability: bool,
}

/// One sample of the cluster, for timelines.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Seconds since the run started.
    pub t: f64,
    /// Leader in each running node's view: `(node, leader)`.
    pub leaders: Vec<(u64, Option<u64>)>,
    /// Nodes with an active coordinator.
    pub active: Vec<u64>,
    /// The lease holder per the store.
    pub holder: Option<String>,
}

/// What one run produced.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// Scenario name.
    pub scenario: &'static str,
    /// Seed.
    pub seed: u64,
    /// Nodes.
    pub nodes: u64,
    /// Lease mode.
    pub lease: LeaseMode,
    /// The most coordinators active at one instant.
    pub max_active: usize,
    /// I1-I5 and I7 as `ok`, `n/a` or `FAIL: why`.
    pub invariants: [String; 7],
    /// The most cluster singleton instances running at one instant (I7).
    pub max_singletons: usize,
    /// Shard-seconds spent hosted on two nodes (I5).
    pub double_hosted_shard_seconds: f64,
    /// Double-hosting intervals (I5), for the timeline: seconds since the
    /// start, the shard and its hosts.
    pub double_hosting: Vec<(f64, f64, String)>,
    /// Shard-seconds with no host, from losing the last host to the next
    /// start (the price of safety; see the checker).
    pub unhosted_shard_seconds: f64,
    /// The longest gap of one shard, in seconds.
    pub worst_outage_secs: f64,
    /// Measured unavailability while a healthy majority existed, when
    /// [`RunConfig::availability`] was set.
    pub availability: Option<Availability>,
    /// Time to one stable active coordinator after the faults, in ttls.
    pub failover_ttls: Option<f64>,
    /// Saves of durable counters the store refused for a stale token.
    pub fenced_writes: usize,
    /// Asks answered during the run.
    pub asks_ok: u64,
    /// Asks that failed or timed out during the run.
    pub asks_failed: u64,
    /// Whether I1-I4 held (with `--lease none`, I1 is expected to break and is not counted).
    pub passed: bool,
    /// Fault windows, in seconds since the start.
    pub faults: Vec<(f64, f64, String)>,
    /// Cluster samples every 500 ms.
    pub timeline: Vec<Sample>,
    /// A digest of the history, to compare runs of one seed.
    pub history_digest: u64,
}

/// Runs one scenario to completion on a fresh paused-time runtime.
pub fn run(config: RunConfig) -> RunReport {
    let mut builder = tokio::runtime::Builder::new_current_thread();
    builder.enable_all();
    if config.lease != LeaseMode::Kubernetes {
        builder.start_paused(true);
    }
    let runtime = match builder.build() {
        Ok(rt) => rt,
        Err(e) => panic!("cannot build a tokio runtime: {e}"),
    };
    runtime.block_on(async move {
        // The Kubernetes lease runs against a real API server when one is set.
        let real_api = match (config.lease, crate::real_api::real_api_server()) {
            (LeaseMode::Kubernetes, Some(env)) => {
                match crate::real_api::fresh_namespace(&env).await {
                    Ok(namespace) => Some((env, namespace)),
                    Err(e) => panic!("real API server: {e}"),
                }
            }
            _ => None,
        };
        Run::new(config, real_api).execute().await
    })
}

struct Run {
    config: RunConfig,
    /// Multiplies every scenario duration (1 in paused time; 1/15 in real time).
    scale: f64,
    /// The lease ttl (for reporting failover in ttls).
    ttl: Duration,
    /// I4 (`docs/architecture.md`): ttl + lease heartbeat + recovery timeout.
    recovery_bound: Duration,
    /// With a lease: how long a new coordinator waits before placing shards.
    tenure_bound: Duration,
    harness: MultiNode,
    rng: StdRng,
    start: Instant,
    asks_ok: u64,
    asks_failed: u64,
    /// The increments sent and acknowledged (the lost-update check).
    writes: Writes,
    samples: Vec<Sample>,
    next_sample: Instant,
    probes: Vec<String>,
    down: Vec<NodeId>,
    /// Nodes cut off from the lease store by the schedule.
    store_cut: BTreeSet<NodeId>,
    /// The availability probe, if on; armed when the faults begin.
    availability: Option<AvailabilityProbe>,
}

impl Run {
    fn new(
        config: RunConfig,
        real_api: Option<(std::sync::Arc<lease_k8s::envtest::EnvTest>, String)>,
    ) -> Self {
        let (mut settings, scale) = match config.lease {
            LeaseMode::Memory => (HarnessSettings::with_memory_lease(config.seed), 1.0),
            LeaseMode::None => (HarnessSettings::new(config.seed), 1.0),
            LeaseMode::Kubernetes => (
                HarnessSettings::with_kubernetes_lease(config.seed),
                1.0 / 15.0,
            ),
        };
        settings.real_api = real_api;
        settings.region.passivate_after = Duration::from_secs(3600);
        if config.lease != LeaseMode::Kubernetes {
            settings.region.ask_timeout = Duration::from_secs(2);
        }
        let (ttl, heartbeat) = settings
            .lease
            .as_ref()
            .map_or((Duration::from_secs(30), Duration::from_secs(3)), |l| {
                (l.ttl(), l.heartbeat_interval())
            });
        // With a lease, a new coordinator also waits out its predecessors'
        // shard tenures before placing unclaimed shards.
        let tenure_bound = if settings.lease.is_some() {
            settings.tenure.bound()
        } else {
            Duration::ZERO
        };
        let recovery_bound = ttl + heartbeat + settings.coordinator.recovery_timeout + tenure_bound;
        let harness = MultiNode::start(config.nodes.max(3), settings);
        Self {
            config,
            scale,
            ttl,
            recovery_bound,
            tenure_bound,
            harness,
            rng: StdRng::seed_from_u64(config.seed ^ 0x5eed),
            start: Instant::now(),
            asks_ok: 0,
            asks_failed: 0,
            writes: Writes::default(),
            samples: Vec::new(),
            next_sample: Instant::now(),
            probes: probe_entities(PROBE_SHARDS),
            down: Vec::new(),
            store_cut: BTreeSet::new(),
            // Armed when the faults begin: the warm-up is not measured.
            availability: config.availability.then(AvailabilityProbe::default),
        }
    }

    /// `secs` of scenario time, scaled.
    fn s(&self, secs: f64) -> Duration {
        Duration::from_secs_f64(secs * self.scale)
    }

    /// A seeded random duration in `millis` of scenario time, scaled.
    fn random_ms(&mut self, millis: std::ops::Range<u64>) -> Duration {
        let ms = self.rng.random_range(millis);
        self.s(ms as f64 / 1000.0)
    }

    fn nodes(&self) -> Vec<NodeId> {
        (1..=self.config.nodes.max(3)).map(NodeId).collect()
    }

    fn fault(&self, what: String) {
        tracing::info!(%what, "fault");
        self.harness.history().push(
            NodeId(0),
            EventKind::Harness(HarnessEvent::FaultStarted(what)),
        );
    }

    /// Lets `duration` pass with light traffic and sampling (and the
    /// availability probe's asks, if on).
    async fn wait(&mut self, duration: Duration) {
        let end = Instant::now() + duration;
        while Instant::now() < end {
            self.sample();
            let running = self.harness.node_ids();
            let light = (!running.is_empty()).then(|| {
                let via = running[self.rng.random_range(0..running.len())];
                let entity = self.probes[self.rng.random_range(0..self.probes.len())].clone();
                *self.writes.attempted.entry(entity.clone()).or_default() += 1;
                let ask = self
                    .harness
                    .region(via)
                    .ask(CounterMsg::add(entity.clone(), 1));
                async move { (entity, ask.await) }
            });
            let light = async move {
                match light {
                    Some(ask) => Some(ask.await),
                    None => None,
                }
            };
            // The singleton runs next to the counters and is asked through
            // the same node.
            let tally = (!running.is_empty()).then(|| {
                let via = running[self.rng.random_range(0..running.len())];
                let proxy = self.harness.singleton(via);
                async move { proxy.ask(1).await.is_ok() }
            });
            let tally = async move {
                match tally {
                    Some(ask) => Some(ask.await),
                    None => None,
                }
            };
            let (light, tally, probed) = futures::join!(light, tally, self.ask_every_shard());
            let light = light.map(|(entity, answer)| {
                let acknowledged = matches!(answer, Ok(Ok(_)));
                if acknowledged {
                    *self.writes.acknowledged.entry(entity).or_default() += 1;
                }
                acknowledged
            });
            for outcome in [light, tally] {
                match outcome {
                    Some(true) => self.asks_ok += 1,
                    Some(false) => self.asks_failed += 1,
                    None => {}
                }
            }
            if let (Some(probe), Some((at, answers))) = (&mut self.availability, probed) {
                probe.record(at, answers);
            }
            let left = end.saturating_duration_since(Instant::now());
            sleep(left.min(self.s(0.5))).await;
        }
    }

    /// The availability probe's tick, if it is armed and due (`None`
    /// otherwise): every shard asked at once through a node of a healthy
    /// majority, each ask bounded by the tick. Returns when it asked and the
    /// answers, `None` answers without a healthy majority.
    async fn ask_every_shard(&self) -> Option<(Instant, Option<Vec<(ShardId, bool)>>)> {
        let tick = self.s(1.0);
        let at = Instant::now();
        self.availability.as_ref().filter(|p| p.is_due(at, tick))?;
        let Some(via) = self.healthy_majority_node() else {
            return Some((at, None));
        };
        let region = self.harness.region(via);
        let asks = self.probes.iter().map(|entity| {
            let shard = shard_of(&EntityId::from(entity.as_str()), PROBE_SHARDS);
            let ask = region.ask(CounterMsg::get(entity.clone()));
            async move { (shard, matches!(timeout(tick, ask).await, Ok(Ok(_)))) }
        });
        Some((at, Some(futures::future::join_all(asks).await)))
    }

    /// A running node that reaches a majority of the nodes both ways (and
    /// the lease store, with a lease): the lowest id, if any.
    fn healthy_majority_node(&self) -> Option<NodeId> {
        let running = self.harness.node_ids();
        let total = running.len().max(self.config.nodes as usize);
        let network = self.harness.network();
        running.iter().copied().find(|&v| {
            let store_ok = self.config.lease == LeaseMode::None || !self.store_cut.contains(&v);
            let peers = running
                .iter()
                .filter(|&&u| u == v || (network.can_reach(v, u) && network.can_reach(u, v)))
                .count();
            store_ok && peers * 2 > total
        })
    }

    fn sample(&mut self) {
        let now = Instant::now();
        if now < self.next_sample {
            return;
        }
        self.next_sample = now + self.s(0.5);
        let h = &self.harness;
        self.samples.push(Sample {
            t: now.duration_since(self.start).as_secs_f64(),
            leaders: h
                .node_ids()
                .into_iter()
                .map(|n| (n.0, h.leader_of(n).map(|l| l.0)))
                .collect(),
            active: h.active_coordinators().into_iter().map(|n| n.0).collect(),
            holder: h.lease_holder(),
        });
    }

    fn heal_all(&mut self) {
        self.harness.heal();
        self.harness.network().clear_link_faults();
        for n in std::mem::take(&mut self.store_cut) {
            self.harness.reconnect_to_lease_store(n);
        }
    }

    /// The node whose coordinator is active now, or `otherwise`.
    fn active_or(&self, otherwise: NodeId) -> NodeId {
        self.harness
            .active_coordinators()
            .first()
            .copied()
            .unwrap_or(otherwise)
    }

    /// The highest node id that is not `node`.
    fn other_than(&self, node: NodeId, nodes: &[NodeId]) -> NodeId {
        nodes
            .iter()
            .rev()
            .copied()
            .find(|n| *n != node)
            .unwrap_or(node)
    }

    /// Cuts `node` off from the lease store (remembered for the
    /// availability probe's idea of a healthy majority).
    fn cut_from_store(&mut self, node: NodeId) {
        self.harness.isolate_from_lease_store(node);
        self.store_cut.insert(node);
    }

    /// Pauses `node` for `duration` while sampling and asking as usual (asks
    /// through the paused node fail, as they would), so the timeline shows
    /// what happened during the pause.
    async fn pause(&mut self, node: NodeId, duration: Duration) {
        let frozen = self.harness.freeze(node);
        self.wait(duration).await;
        self.harness.thaw(frozen);
    }

    /// Kills `node` and starts it again after `delay` (below down-after: the
    /// others never see it go).
    async fn restart_before_down(&mut self, node: NodeId, delay: Duration) {
        if !self.harness.node_ids().contains(&node) {
            return;
        }
        self.fault(format!("restart {node} after {delay:?}"));
        self.harness.kill(node);
        self.wait(delay).await;
        self.harness.start_node(node);
    }

    /// Kills `node` (the coordinator), waits for another coordinator to start
    /// recovering and kills that one too; both come back once it is over.
    async fn kill_during_recovery(&mut self, node: NodeId) {
        if !self.harness.node_ids().contains(&node) {
            return;
        }
        self.fault(format!("crash {node}, then whoever recovers"));
        self.harness.kill(node);
        self.down.push(node);
        // Registrations are lost until then, so that the successor's recovery
        // lasts its timeout instead of an instant, and it can be caught in it.
        let coordinators = TypeChannels::of(&TypeName::from(COUNTER_TYPE)).coordinator;
        self.harness.network().set_channel_loss(coordinators, 1.0);
        let limit = Instant::now() + self.s(60.0);
        while Instant::now() < limit {
            let recovering = self.harness.node_ids().into_iter().find(|n| {
                self.harness
                    .coordinator_status(*n)
                    .is_some_and(|s| s.phase == Phase::Recovering)
            });
            if let Some(next) = recovering {
                self.fault(format!("crash {next} while it recovers"));
                self.harness.kill(next);
                self.down.push(next);
                break;
            }
            sleep(self.s(0.1)).await;
        }
        self.harness.network().set_channel_loss(coordinators, 0.0);
        let pause = self.random_ms(0..15_000);
        self.wait(pause).await;
        self.restart_down().await;
    }

    /// For `duration`, `insider` (a member, authenticated as itself) speaks
    /// to `victim`'s region as if it were its coordinator, every half
    /// second: an acknowledgement, grants, homes and handoffs of every shard
    /// at the real coordinator's epoch and at the ceiling, and a request to
    /// register with it. The victim must obey none of it (the sender rule).
    async fn forge(&mut self, insider: NodeId, victim: NodeId, duration: Duration) {
        let channels = TypeChannels::of(&TypeName::from(COUNTER_TYPE));
        let network = self.harness.network().clone();
        let epoch = (self.harness.node_ids().into_iter())
            .find_map(|n| self.harness.coordinator_status(n).and_then(|s| s.epoch))
            .unwrap_or_default();
        let step = self.s(0.5);
        let end = Instant::now() + duration;
        let forger = tokio::spawn(async move {
            let send = |msg: &RegionMsg| {
                if let Ok(bytes) = encode(msg) {
                    network.inject(insider, victim, channels.region, &bytes);
                }
            };
            while Instant::now() < end {
                send(&RegionMsg::RegisterRequest);
                for e in [epoch, Epoch::CEILING] {
                    send(&RegionMsg::Directive(Directive::RegisterAck { epoch: e }));
                    for seq in 0..8 {
                        send(&RegionMsg::Directive(Directive::TenureGranted {
                            epoch: e,
                            seq,
                        }));
                    }
                    for shard in (0..PROBE_SHARDS).map(ShardId) {
                        let directives = [
                            Directive::HostShard {
                                epoch: e,
                                shard,
                                allocation: 1,
                            },
                            Directive::ShardHome {
                                epoch: e,
                                shard,
                                region: insider,
                                allocation: 1,
                            },
                            Directive::HandOff { epoch: e, shard },
                        ];
                        for d in directives {
                            send(&RegionMsg::Directive(d));
                        }
                    }
                }
                sleep(step).await;
            }
        });
        self.wait(duration).await;
        forger.abort();
    }

    /// Loses sharding protocol messages (both of the counter type's
    /// channels) with `probability`; membership is untouched.
    fn sharding_loss(&self, probability: f64) {
        let channels = TypeChannels::of(&TypeName::from(COUNTER_TYPE));
        let network = self.harness.network();
        network.set_channel_loss(channels.region, probability);
        network.set_channel_loss(channels.coordinator, probability);
    }

    async fn restart_down(&mut self) {
        for node in std::mem::take(&mut self.down) {
            self.harness.start_node(node);
        }
    }

    async fn execute(mut self) -> RunReport {
        let _ = self.harness.converge(self.s(30.0)).await;
        // Shards spread over every node before the faults: past the first
        // coordinator's tenure wait, then 15 s of traffic.
        self.wait(self.s(15.0) + self.tenure_bound).await;
        if self.availability.is_some() {
            // Every shard hosted before the faults, as under real traffic: a
            // shard nobody ever asked for is not an outage.
            let region = self.harness.region(NodeId(1));
            let asks = self
                .probes
                .iter()
                .map(|e| region.ask(CounterMsg::get(e.clone())));
            futures::future::join_all(asks).await;
        }
        if let Some(probe) = &mut self.availability {
            probe.arm(Instant::now());
        }
        let nodes = self.nodes();
        let n = nodes.len();
        let half = n / 2 + 1;
        let (majority, minority) = nodes.split_at(half);
        match self.config.scenario {
            Scenario::SymmetricSplit => {
                self.fault(format!("partition {majority:?} | {minority:?}"));
                self.harness.partition(&[majority, minority]);
                self.wait(self.s(60.0)).await;
            }
            Scenario::LeaderIsolated => {
                self.fault("isolate node-1".into());
                self.harness.isolate(NodeId(1));
                self.wait(self.s(60.0)).await;
            }
            Scenario::OneWayPartition => {
                self.fault(format!("node-1 cannot send to {minority:?}"));
                for &to in minority {
                    self.harness.network().cut_one_way(NodeId(1), to);
                }
                self.wait(self.s(60.0)).await;
            }
            Scenario::StoreUnreachable => {
                self.fault(format!(
                    "partition {majority:?} | {minority:?}, {majority:?} cut from the store"
                ));
                self.harness.partition(&[majority, minority]);
                for &m in majority {
                    self.cut_from_store(m);
                }
                self.wait(self.s(90.0)).await;
            }
            Scenario::StopTheWorldPause => {
                let target = self.active_or(NodeId(1));
                self.fault(format!("pause {target} for 60 s"));
                self.pause(target, self.s(60.0)).await;
            }
            Scenario::LeaderCrashRestart => {
                self.fault("crash node-1".into());
                self.harness.kill(NodeId(1));
                self.down.push(NodeId(1));
                self.wait(self.s(60.0)).await;
                self.restart_down().await;
            }
            Scenario::FlappingPartition => {
                self.fault("flapping partitions".into());
                for _ in 0..8 {
                    let cut = self.rng.random_range(1..n);
                    let (a, b) = nodes.split_at(cut);
                    self.harness.partition(&[a, b]);
                    let on = self.random_ms(2_000..12_000);
                    self.wait(on).await;
                    self.harness.heal();
                    let off = self.random_ms(1_000..6_000);
                    self.wait(off).await;
                }
            }
            Scenario::RollingRestart => {
                self.fault("rolling restart".into());
                for &node in &nodes {
                    self.harness.kill(node);
                    self.wait(self.s(5.0)).await;
                    self.harness.start_node(node);
                    self.wait(self.s(40.0)).await;
                }
            }
            Scenario::LeaderRestartBeforeDown => {
                let delay = RESTART_DELAYS[(self.config.seed % 4) as usize];
                self.restart_before_down(NodeId(1), self.s(delay)).await;
                self.wait(self.s(60.0)).await;
            }
            Scenario::MemberRestartBeforeDown => {
                let delay = RESTART_DELAYS[(self.config.seed % 4) as usize];
                let node = nodes[n - 1];
                self.restart_before_down(node, self.s(delay)).await;
                self.wait(self.s(60.0)).await;
            }
            Scenario::LeaderLeavesAndReturns => {
                self.fault("node-1 leaves".into());
                self.harness.stop_gracefully(NodeId(1), self.s(10.0)).await;
                self.wait(self.s(20.0)).await;
                self.harness.start_node(NodeId(1));
                self.wait(self.s(40.0)).await;
            }
            Scenario::KillDuringRecovery => {
                self.kill_during_recovery(NodeId(1)).await;
                self.wait(self.s(20.0)).await;
            }
            Scenario::HandoffMessageLoss => {
                let node = nodes[n - 1];
                self.fault(format!(
                    "sharding messages lost (1 in 3), {node} away and back"
                ));
                self.sharding_loss(0.33);
                self.harness.kill(node);
                self.down.push(node);
                self.wait(self.s(20.0)).await;
                self.restart_down().await;
                self.wait(self.s(60.0)).await;
            }
            Scenario::MinorityCoordinatorSplit => {
                let active = self.active_or(NodeId(1));
                let other = *nodes
                    .iter()
                    .rev()
                    .find(|n| **n != active)
                    .unwrap_or(&active);
                let small = [active, other];
                let large: Vec<NodeId> = nodes
                    .iter()
                    .copied()
                    .filter(|n| !small.contains(n))
                    .collect();
                self.fault(format!(
                    "partition {small:?} | {large:?} (coordinator {active})"
                ));
                self.harness.partition(&[&small, &large]);
                self.wait(self.s(60.0)).await;
            }
            Scenario::RegionCannotReachCoordinator => {
                let active = self.active_or(NodeId(1));
                let region = self.other_than(active, &nodes);
                self.fault(format!("{region} cannot send to {active}"));
                self.harness.network().cut_one_way(region, active);
                self.wait(self.s(60.0)).await;
            }
            Scenario::RegionPaused => {
                let active = self.active_or(NodeId(1));
                let region = self.other_than(active, &nodes);
                self.fault(format!("pause {region} for 60 s"));
                self.pause(region, self.s(60.0)).await;
            }
            Scenario::FailoverWhileRegionUnreachable => {
                let active = self.active_or(NodeId(1));
                let region = self.other_than(active, &nodes);
                self.fault(format!("isolate {region}"));
                self.harness.isolate(region);
                self.wait(self.s(5.0)).await;
                self.fault(format!("isolate {region}, crash {active}"));
                self.harness.kill(active);
                self.down.push(active);
                self.wait(self.s(60.0)).await;
            }
            Scenario::CoordinatorCutFromStore => {
                let active = self.active_or(NodeId(1));
                self.fault(format!("{active} cut from the store"));
                self.cut_from_store(active);
                self.wait(self.s(60.0)).await;
            }
            Scenario::CoordinatorAndRegionCut => {
                let active = self.active_or(NodeId(1));
                let region = self.other_than(active, &nodes);
                // The store cut comes after the coordinator's last renewal
                // and before the region, near its lapse, suspends its tenure.
                self.fault(format!("{region} cut from {active}"));
                self.harness.network().cut_one_way(region, active);
                self.harness.network().cut_one_way(active, region);
                self.wait(self.s(6.0)).await;
                self.fault(format!(
                    "{region} cut from {active}, {active} cut from the store"
                ));
                self.cut_from_store(active);
                self.wait(self.s(54.0)).await;
            }
            Scenario::StoreDownForAll => {
                self.fault("every node cut from the store".into());
                for &node in &nodes {
                    self.cut_from_store(node);
                }
                self.wait(self.s(60.0)).await;
            }
            Scenario::LeaderCrashNoReturn => {
                let active = self.active_or(NodeId(1));
                self.fault(format!("crash {active} for 120 s"));
                self.harness.kill(active);
                self.down.push(active);
                self.wait(self.s(120.0)).await;
                self.restart_down().await;
            }
            Scenario::JoinDuringPartition => {
                let newcomer = NodeId(n as u64 + 1);
                let mut large = majority.to_vec();
                large.push(newcomer);
                self.fault(format!("partition {large:?} | {minority:?}"));
                self.harness.partition(&[&large, minority]);
                self.wait(self.s(15.0)).await;
                self.fault(format!(
                    "partition {large:?} | {minority:?}, {newcomer} joins"
                ));
                self.harness.start_node(newcomer);
                self.wait(self.s(45.0)).await;
            }
            Scenario::MemberLeavesAndReturns => {
                let active = self.active_or(NodeId(1));
                let member = self.other_than(active, &nodes);
                self.fault(format!("{member} leaves"));
                self.harness.stop_gracefully(member, self.s(10.0)).await;
                self.wait(self.s(20.0)).await;
                self.harness.start_node(member);
                self.wait(self.s(40.0)).await;
            }
            Scenario::Nemesis => self.nemesis(&nodes).await,
        }
        self.heal_all();
        self.restart_down().await;
        let healed_at = Instant::now();
        self.harness
            .history()
            .push(NodeId(0), EventKind::Harness(HarnessEvent::FaultsHealed));
        // I4: within its bound after the faults, every shard answers
        // through every node and has exactly one host.
        self.wait(self.recovery_bound).await;
        let probe = self.probe_every_shard_through_every_node().await;
        self.report(healed_at, probe)
    }

    /// A seeded random schedule of the named faults.
    async fn nemesis(&mut self, nodes: &[NodeId]) {
        let n = nodes.len();
        let rounds = self.rng.random_range(3..7);
        for _ in 0..rounds {
            let hold = self.random_ms(3_000..70_000);
            match self.rng.random_range(0..13) {
                0 => {
                    let cut = self.rng.random_range(1..n);
                    let (a, b) = nodes.split_at(cut);
                    self.fault(format!("partition {a:?} | {b:?}"));
                    self.harness.partition(&[a, b]);
                    self.wait(hold).await;
                }
                1 => {
                    let node = nodes[self.rng.random_range(0..n)];
                    self.fault(format!("isolate {node}"));
                    self.harness.isolate(node);
                    self.wait(hold).await;
                }
                2 => {
                    let from = nodes[self.rng.random_range(0..n)];
                    let to = nodes[self.rng.random_range(0..n)];
                    self.fault(format!("one-way {from} -> {to}"));
                    self.harness.network().cut_one_way(from, to);
                    self.wait(hold).await;
                }
                3 => {
                    let node = nodes[self.rng.random_range(0..n)];
                    self.fault(format!("{node} cut from the store"));
                    self.cut_from_store(node);
                    self.wait(hold).await;
                }
                4 => {
                    let node = self.active_or(nodes[0]);
                    self.fault(format!("pause {node} for {hold:?}"));
                    self.pause(node, hold).await;
                }
                5 => {
                    let node = nodes[self.rng.random_range(0..n)];
                    let delay = self.random_ms(500..9_000);
                    self.restart_before_down(node, delay).await;
                    self.wait(hold).await;
                }
                6 => {
                    let node = nodes[self.rng.random_range(0..n)];
                    let outgoing = self.rng.random_bool(0.5);
                    let way = if outgoing {
                        "cannot send"
                    } else {
                        "cannot hear"
                    };
                    self.fault(format!("{node} {way}"));
                    for &other in nodes.iter().filter(|o| **o != node) {
                        let (from, to) = if outgoing {
                            (node, other)
                        } else {
                            (other, node)
                        };
                        self.harness.network().cut_one_way(from, to);
                    }
                    self.wait(hold).await;
                }
                7 => {
                    let node = self.active_or(nodes[0]);
                    self.kill_during_recovery(node).await;
                }
                8 => {
                    let p = f64::from(self.rng.random_range(10..60u32)) / 100.0;
                    let links = self.rng.random_range(1..=n * 2);
                    self.fault(format!(
                        "loss {p:.2} on {links} links and sharding messages"
                    ));
                    for _ in 0..links {
                        let from = nodes[self.rng.random_range(0..n)];
                        let to = nodes[self.rng.random_range(0..n)];
                        let faults = LinkFaults {
                            drop_probability: p,
                            ..LinkFaults::default()
                        };
                        self.harness.network().set_link(from, to, faults);
                    }
                    self.sharding_loss(p / 2.0);
                    self.wait(hold).await;
                }
                10 => {
                    // A revocation the holder cannot hear (I1, I2).
                    let node = self.active_or(nodes[0]);
                    self.fault(format!("{node} cut from the store"));
                    self.cut_from_store(node);
                    let after = self.random_ms(0..5_000);
                    self.wait(after).await;
                    let lost = self.harness.revoke_leases();
                    self.fault(format!(
                        "{node} cut from the store, leases revoked ({lost:?})"
                    ));
                    self.wait(hold).await;
                }
                11 => {
                    // Protocol frames between a pair of nodes overtake one
                    // another and arrive twice (a reconnect, two connections).
                    let a = nodes[self.rng.random_range(0..n)];
                    let b = self.other_than(a, nodes);
                    let jitter = self.random_ms(100..3_000);
                    self.fault(format!(
                        "frames between {a} and {b} reordered (up to {jitter:?}) and duplicated"
                    ));
                    let faults = LinkFaults {
                        jitter,
                        duplicate_probability: 0.2,
                        ..LinkFaults::default()
                    };
                    let channels = TypeChannels::of(&TypeName::from(COUNTER_TYPE));
                    for channel in [channels.region, channels.coordinator] {
                        let network = self.harness.network();
                        network.set_channel_link(a, b, channel, faults);
                        network.set_channel_link(b, a, channel, faults);
                    }
                    self.wait(hold).await;
                }
                12 => {
                    // Any member but a coordinator's node (trusted: it is
                    // the one that directs) speaks for a coordinator.
                    let active = self.active_or(nodes[0]);
                    let leader = self
                        .harness
                        .node_ids()
                        .into_iter()
                        .min()
                        .unwrap_or(nodes[0]);
                    let members: Vec<NodeId> = (nodes.iter().copied())
                        .filter(|m| *m != active && *m != leader)
                        .collect();
                    let pick = self.rng.random_range(0..members.len().max(1));
                    let insider = members.get(pick).copied().unwrap_or(nodes[n - 1]);
                    let victim = self.other_than(insider, nodes);
                    self.fault(format!(
                        "{insider} forges grants and directives for {victim}"
                    ));
                    self.forge(insider, victim, hold).await;
                }
                _ => {
                    let node = nodes[self.rng.random_range(0..n)];
                    if self.harness.node_ids().contains(&node) {
                        self.fault(format!("crash {node}"));
                        self.harness.kill(node);
                        self.down.push(node);
                    }
                    self.wait(hold).await;
                    self.restart_down().await;
                }
            }
            self.heal_all();
            let gap = self.random_ms(0..20_000);
            self.wait(gap).await;
        }
    }

    /// Asks one entity of every shard through every running node (a few
    /// tries each, two seconds apart at most), then reads every region's
    /// hosted shards.
    async fn probe_every_shard_through_every_node(&mut self) -> FinalProbe {
        let at = Instant::now();
        let mut unreachable = Vec::new();
        let probes = self.probes.clone();
        for via in self.harness.node_ids() {
            for entity in &probes {
                let mut ok = false;
                for _ in 0..3 {
                    let ask = self
                        .harness
                        .region(via)
                        .ask(CounterMsg::get(entity.clone()));
                    if let Ok(Ok(_)) = timeout(self.s(2.0), ask).await {
                        ok = true;
                        break;
                    }
                    sleep(self.s(0.5)).await;
                }
                if ok {
                    self.asks_ok += 1;
                } else {
                    self.asks_failed += 1;
                    let shard = shard_of(&EntityId::from(entity.as_str()), PROBE_SHARDS);
                    unreachable.push((shard, via));
                }
            }
        }
        FinalProbe {
            at: Some(at),
            unreachable,
            hosts: self.harness.shard_hosts(),
        }
    }

    /// The increments with the store's final values.
    fn final_writes(&self) -> Writes {
        let states = self.harness.states();
        let mut writes = self.writes.clone();
        writes.finals = writes
            .attempted
            .keys()
            .filter_map(|counter| {
                let bytes = states.state(&EntityId::from(counter.as_str()))?;
                let value = postcard::from_bytes::<i64>(&bytes).ok()?;
                Some((counter.clone(), value))
            })
            .collect();
        writes.fenced = states.fenced_writes();
        writes
    }

    fn report(self, healed_at: Instant, probe: FinalProbe) -> RunReport {
        let events = self.harness.history().events();
        let grants = self.harness.grants();
        let end = Instant::now();
        let verdict: Verdict = checker::check(&CheckInput {
            events: &events,
            grants: (self.config.lease != LeaseMode::None).then_some(&grants[..]),
            start: self.start,
            end,
            healed_at: Some(healed_at),
            // I4 (`docs/architecture.md`): ttl + lease heartbeat + recovery timeout.
            recovery_bound: self.recovery_bound,
            probe,
            writes: self.final_writes(),
        });
        let cell = |c: &Check| match c {
            Check::Violated(why) => format!("FAIL: {why}"),
            other => other.cell().to_owned(),
        };
        let i1_counts = self.config.lease != LeaseMode::None;
        let broken = (verdict.i1.is_violated() && i1_counts)
            || verdict.i2.is_violated()
            || verdict.i3.is_violated()
            || verdict.i4.is_violated()
            || (verdict.i5.is_violated() && i1_counts)
            || (verdict.i7.is_violated() && i1_counts)
            || (verdict.writes.is_violated() && i1_counts);
        let passed = !broken;
        let secs = |t: Instant| t.duration_since(self.start).as_secs_f64();
        let mut faults = Vec::new();
        let mut open: Option<(f64, String)> = None;
        for e in &events {
            match &e.kind {
                EventKind::Harness(HarnessEvent::FaultStarted(what)) => {
                    if let Some((from, w)) = open.take() {
                        faults.push((from, secs(e.at), w));
                    }
                    open = Some((secs(e.at), what.clone()));
                }
                EventKind::Harness(HarnessEvent::FaultsHealed) => {
                    if let Some((from, w)) = open.take() {
                        faults.push((from, secs(e.at), w));
                    }
                }
                _ => {}
            }
        }
        RunReport {
            scenario: self.config.scenario.name(),
            seed: self.config.seed,
            nodes: self.config.nodes,
            lease: self.config.lease,
            max_active: verdict.max_active,
            invariants: [
                cell(&verdict.i1),
                cell(&verdict.i2),
                cell(&verdict.i3),
                cell(&verdict.i4),
                cell(&verdict.i5),
                cell(&verdict.i7),
                cell(&verdict.writes),
            ],
            fenced_writes: verdict.fenced_writes,
            max_singletons: verdict.max_singletons,
            double_hosted_shard_seconds: verdict.double_hosted_shard_seconds,
            double_hosting: verdict
                .double_hostings
                .iter()
                .map(|(shard, nodes, from, until)| {
                    let nodes: Vec<String> = nodes.iter().map(ToString::to_string).collect();
                    (
                        secs(*from),
                        secs(*until),
                        format!("{shard} on {}", nodes.join(", ")),
                    )
                })
                .collect(),
            unhosted_shard_seconds: verdict.unhosted_shard_seconds,
            worst_outage_secs: verdict.worst_outage.as_secs_f64(),
            availability: self.availability.as_ref().map(AvailabilityProbe::result),
            failover_ttls: verdict
                .failover
                .map(|d| d.as_secs_f64() / self.ttl.as_secs_f64()),
            asks_ok: self.asks_ok,
            asks_failed: self.asks_failed,
            passed,
            faults,
            timeline: self.samples,
            history_digest: digest(&events, self.start),
        }
    }
}

/// Shards of the counter type (the region default).
const PROBE_SHARDS: u32 = 64;

/// One entity id per shard, so a probe touches every shard.
fn probe_entities(num_shards: u32) -> Vec<String> {
    let mut by_shard: BTreeMap<ShardId, String> = BTreeMap::new();
    let mut i = 0u64;
    while by_shard.len() < num_shards as usize {
        let id = format!("probe-{i}");
        by_shard
            .entry(shard_of(&EntityId::from(&id), num_shards))
            .or_insert(id);
        i += 1;
    }
    by_shard.into_values().collect()
}

/// FNV-1a over the rendered events with times relative to the start.
fn digest(events: &[crate::Event], start: Instant) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for e in events {
        let line = format!("{:?} {} {:?}", e.at.duration_since(start), e.node, e.kind);
        for b in line.bytes() {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    hash
}
