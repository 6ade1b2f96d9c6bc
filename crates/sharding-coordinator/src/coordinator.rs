//! The ShardCoordinator of one entity type on one node.
//!
//! It runs on every node; only the one on the leader of its view (and, with a
//! lease, holding it) is active. Every transition of [`Phase`] happens in
//! [`Coordinator::step`], and every message handler and every directive first
//! checks [`Coordinator::is_active`].

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use cluster::{ClusterView, Envelope, NodeId, Transport};
use lease_api::{Lease, Succession};
use sharding_core::coordinator::{CoordinatorEvent, CoordinatorState};
use sharding_core::protocol::{CoordinatorMsg, Directive, RegionMsg, TypeChannels, decode, encode};
use sharding_core::{Epoch, ShardId, TenureSettings, TypeName};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, sleep_until};

use crate::{
    CoordinatorObserver, CoordinatorRecord, CoordinatorSettings, CoordinatorStatus, Phase,
};
use lease_api::gate::{GateCommand, GateEvent, GateState, LeaseGate};

/// A directive sent again on every retry tick until its answer arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unanswered {
    /// `HostShard`, until `ShardStarted`.
    Host,
    /// `HandOff` to a region that claimed a shard homed elsewhere, until
    /// `ShardStopped`.
    StopDuplicate,
}

/// A shard on its way from one region to the next.
struct Handoff {
    from: NodeId,
    started: Instant,
    /// Regions that have not acknowledged `BeginHandOff` yet.
    awaiting: BTreeSet<NodeId>,
    handoff_sent: bool,
}

pub(crate) struct Coordinator {
    type_name: TypeName,
    node: NodeId,
    transport: Arc<dyn Transport>,
    view: ClusterView,
    channels: TypeChannels,
    settings: CoordinatorSettings,
    observer: Option<CoordinatorObserver>,
    status: watch::Sender<CoordinatorStatus>,
    lease: Option<Arc<dyn Lease>>,
    gate: LeaseGate,
    /// The leadership last fed to the gate.
    gate_leader: bool,
    /// The quorum last fed to the gate.
    gate_quorum: bool,
    /// The members of the view at the last view change.
    last_members: BTreeSet<NodeId>,
    /// Nodes that left the view without a graceful shutdown we know of, and
    /// have not come back: with the members, they tell whether this side of
    /// the cluster is a majority. Kept in every phase, since a standby may
    /// be the one to lead a minority next.
    departed: BTreeSet<NodeId>,
    /// Acquire outcomes, reported by the tasks that run them.
    gate_events: mpsc::UnboundedSender<GateEvent>,

    phase: Phase,
    /// When recovery ends at the latest.
    recovery_deadline: Option<Instant>,
    /// Regions registered during recovery: their incarnation and the shards
    /// each claimed.
    claims: BTreeMap<NodeId, (u64, Vec<ShardId>)>,
    /// The incarnation each registered region registered with.
    incarnations: BTreeMap<NodeId, u64>,
    /// Directives that need an answer and have not had one, by region and shard.
    unanswered: BTreeMap<(NodeId, ShardId), Unanswered>,
    /// The number of each shard's allocation by this coordinator; with the
    /// epoch, the fencing token its host's writes carry.
    allocations: BTreeMap<ShardId, u64>,
    /// Never reused, so a shard's every new home gets a higher token.
    next_allocation: u64,
    /// Shard tenure (with a lease): regions host only under our grants (I5).
    tenure: Option<TenureSettings>,
    /// When we last sent each region anything it may count as a grant.
    last_grant: BTreeMap<NodeId, Instant>,
    /// Shards of regions we lost, not to be re-homed before their tenure
    /// has surely ended there.
    fenced: BTreeMap<ShardId, Instant>,
    /// Since this tenure began, shards nobody claimed may still be tenured
    /// under a predecessor's grants: none is allocated before this.
    allocation_fence: Option<Instant>,
    /// Shards whose host under any earlier grant we know: claimed by a
    /// registered region (so, I5 holding before us, nobody else hosts them)
    /// or placed by us. They may move before `allocation_fence`: a
    /// rebalance or a handoff right after a failover costs no tenure wait.
    accounted: BTreeSet<ShardId>,
    state: CoordinatorState,
    /// The epoch of the current tenure; directives carry it.
    epoch: Epoch,
    /// The highest epoch this node has used or heard of: the next tenure is above it.
    highest_epoch: Epoch,
    handoffs: BTreeMap<ShardId, Handoff>,
    /// `GetShardHome` waiting for a handoff to finish.
    deferred: BTreeMap<ShardId, BTreeSet<NodeId>>,
    /// Requests received while acquiring or recovering, served once active.
    buffered: VecDeque<(NodeId, CoordinatorMsg)>,
    shutting_down: BTreeSet<NodeId>,
}

/// A running coordinator task and its controls.
pub(crate) struct Spawned {
    pub(crate) status: watch::Receiver<CoordinatorStatus>,
    /// Asks it to stop; it answers on the sender it is given.
    pub(crate) stop: mpsc::Sender<oneshot::Sender<()>>,
    pub(crate) task: tokio::task::JoinHandle<()>,
}

pub(crate) struct Parts {
    pub(crate) type_name: TypeName,
    pub(crate) transport: Arc<dyn Transport>,
    pub(crate) view: ClusterView,
    pub(crate) settings: CoordinatorSettings,
    pub(crate) lease: Option<Arc<dyn Lease>>,
    pub(crate) observer: Option<CoordinatorObserver>,
    pub(crate) tenure: Option<TenureSettings>,
}

impl Coordinator {
    pub(crate) fn spawn(parts: Parts) -> Spawned {
        let channels = TypeChannels::of(&parts.type_name);
        let inbox = parts.transport.subscribe(channels.coordinator);
        let (status, status_rx) = watch::channel(CoordinatorStatus {
            phase: Phase::Standby,
            epoch: None,
        });
        let (gate_events, gate_rx) = mpsc::unbounded_channel();
        let (stop, stop_rx) = mpsc::channel(1);
        // A minority leader leaves the lease to the majority for a while.
        let minority_delay = if parts.lease.is_some() {
            parts.settings.minority_lease_delay
        } else {
            Duration::ZERO
        };
        let owner = parts
            .lease
            .as_ref()
            .map_or_else(String::new, |l| l.settings().owner_name().to_owned());
        let gate = LeaseGate::new(parts.lease.is_some(), parts.settings.lease_retry_interval)
            .with_minority_delay(minority_delay)
            .with_jitter_seed(&owner);
        // Every node watches the lease, leader or not: a warm standby takes
        // a released lease at once and a silent holder's one ttl after its
        // last renew, instead of starting to look when it becomes leader.
        if let Some(lease) = &parts.lease {
            lease.observe();
        }
        let coordinator = Coordinator {
            lease: parts.lease,
            gate,
            gate_leader: false,
            gate_quorum: true,
            last_members: BTreeSet::new(),
            departed: BTreeSet::new(),
            gate_events,
            node: parts.transport.local_node(),
            type_name: parts.type_name,
            transport: parts.transport,
            view: parts.view,
            channels,
            settings: parts.settings,
            observer: parts.observer,
            status,
            phase: Phase::Standby,
            recovery_deadline: None,
            claims: BTreeMap::new(),
            incarnations: BTreeMap::new(),
            unanswered: BTreeMap::new(),
            allocations: BTreeMap::new(),
            next_allocation: 1,
            tenure: parts.tenure,
            last_grant: BTreeMap::new(),
            fenced: BTreeMap::new(),
            allocation_fence: None,
            accounted: BTreeSet::new(),
            state: CoordinatorState::default(),
            epoch: Epoch::default(),
            highest_epoch: Epoch::default(),
            handoffs: BTreeMap::new(),
            deferred: BTreeMap::new(),
            buffered: VecDeque::new(),
            shutting_down: BTreeSet::new(),
        };
        let task = tokio::spawn(coordinator.run(inbox, gate_rx, stop_rx));
        Spawned {
            status: status_rx,
            stop,
            task,
        }
    }

    async fn run(
        mut self,
        mut inbox: mpsc::Receiver<Envelope>,
        mut gate_rx: mpsc::UnboundedReceiver<GateEvent>,
        mut stop_rx: mpsc::Receiver<oneshot::Sender<()>>,
    ) {
        let mut view = self.view.watch();
        let mut rebalance = tokio::time::interval(self.settings.rebalance_interval);
        rebalance.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut retry = tokio::time::interval(self.settings.retry_interval);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut lease_status = self.lease.as_ref().map(|l| l.status());
        let mut lease_observed = self.lease.as_ref().map(|l| l.observed());
        self.step();
        loop {
            let recovery = self.recovery_deadline;
            let gate_retry = self.gate.next_retry();
            let lease_check = self.lease_check_at();
            // Biased, in a fixed order, so a seeded simulation replays exactly.
            tokio::select! {
                biased;
                Some(done) = stop_rx.recv() => {
                    self.stop().await;
                    let _ = done.send(());
                    return;
                }
                Ok(()) = view.changed() => self.on_view_change(),
                Some(event) = gate_rx.recv() => self.feed_gate(event),
                Some(()) = lease_api::gate::lease_lost(&mut lease_status) => {}
                Some(()) = lease_api::gate::lease_freed(&mut lease_observed) => self.feed_gate(GateEvent::LeaseFreed),
                _ = rebalance.tick() => self.on_rebalance_tick(),
                _ = retry.tick() => self.on_retry_tick(),
                () = sleep_until(recovery.unwrap_or_else(Instant::now)), if recovery.is_some() => {}
                () = sleep_until(gate_retry.unwrap_or_else(Instant::now)), if gate_retry.is_some() => self.feed_gate(GateEvent::Tick),
                () = sleep_until(lease_check.unwrap_or_else(Instant::now)), if lease_check.is_some() => {}
                // Traffic last, so lease and leadership changes are never starved.
                Some(envelope) = inbox.recv() => self.on_envelope(envelope),
                else => break,
            }
            self.step();
        }
    }

    /// A graceful stop: passive at once, then the lease goes back to the
    /// store (bounded by its operation timeout), so the next leader acquires
    /// it as soon as it leads instead of waiting for it to expire.
    async fn stop(&mut self) {
        if self.phase != Phase::Standby {
            self.set_phase(Phase::Standby);
        }
        let Some(lease) = self.lease.clone() else {
            return;
        };
        let limit = lease.settings().operation_timeout();
        match tokio::time::timeout(limit, lease.release()).await {
            Ok(Ok(released)) => {
                tracing::info!(node = %self.node, released, "coordinator stopped; lease released")
            }
            Ok(Err(error)) => {
                tracing::warn!(node = %self.node, %error, "coordinator stopped; lease release failed, it will expire")
            }
            Err(_) => {
                tracing::warn!(node = %self.node, "coordinator stopped; lease release timed out, it will expire")
            }
        }
    }

    /// While serving on a lease, look at `check_alive` at least once per
    /// heartbeat, in case the loss is not published (directives are gated on
    /// `check_alive` itself regardless).
    fn lease_check_at(&self) -> Option<Instant> {
        if matches!(self.phase, Phase::Standby | Phase::Acquiring) {
            return None;
        }
        let lease = self.lease.as_ref()?;
        Some(Instant::now() + lease.settings().heartbeat_interval())
    }

    /// Feeds the gate and carries out its command.
    fn feed_gate(&mut self, event: GateEvent) {
        let Some(command) = self.gate.handle(event, Instant::now()) else {
            return;
        };
        let Some(lease) = self.lease.clone() else {
            return;
        };
        let node = self.node;
        match command {
            GateCommand::Acquire => {
                let events = self.gate_events.clone();
                tokio::spawn(async move {
                    let outcome = match lease.acquire().await {
                        Ok(held) => GateEvent::Acquired(held),
                        Err(error) => {
                            tracing::warn!(%node, %error, "lease acquire failed; retrying");
                            GateEvent::AcquireFailed
                        }
                    };
                    let _ = events.send(outcome);
                });
            }
            GateCommand::Release => {
                // Never awaited: a release that fails or hangs must not block
                // the coordinator; the lease then expires on its own.
                tokio::spawn(async move {
                    match lease.release().await {
                        Ok(released) => tracing::info!(%node, released, "lease released"),
                        Err(error) => {
                            tracing::warn!(%node, %error, "lease release failed; it will expire")
                        }
                    }
                });
            }
        }
    }

    /// Leader of its own view: the cheap local predicate.
    fn is_leader(&self) -> bool {
        self.view.is_leader()
    }

    fn lease_alive(&self) -> bool {
        self.lease.as_ref().is_none_or(|l| l.check_alive())
    }

    /// Whether this coordinator may act: `is_leader() && lease.check_alive()`
    /// (I1, I2), checked by every handler and before every directive.
    fn is_active(&self) -> bool {
        self.phase == Phase::Active && self.is_leader() && self.lease_alive()
    }

    /// Every phase transition, in one place. The gate says whether we may
    /// lead; the phase adds recovery on top of it.
    fn step(&mut self) {
        let leader = self.is_leader();
        if leader != self.gate_leader {
            self.gate_leader = leader;
            self.feed_gate(GateEvent::Leader(leader));
        }
        if self.gate.state() == GateState::Held && !self.lease_alive() {
            self.feed_gate(GateEvent::LeaseLost);
        }
        match (self.gate.state(), self.phase) {
            (GateState::Standby, Phase::Standby) => {}
            (GateState::Standby, _) => self.enter_standby(),
            (GateState::Acquiring { .. }, Phase::Acquiring) => {}
            (GateState::Acquiring { .. }, _) => {
                // Not held yet, or just lost: passive at once. What was
                // buffered belongs to the activation it arrived in; replayed
                // in a later one it could adopt a shard placed elsewhere
                // meanwhile (I5). Regions retry every request.
                self.recovery_deadline = None;
                self.claims.clear();
                self.buffered.clear();
                self.set_phase(Phase::Acquiring);
            }
            (GateState::Held, Phase::Standby | Phase::Acquiring) => self.begin_recovery(),
            (GateState::Held, Phase::Recovering) => {
                let members = self.view.members();
                let everyone = members.iter().all(|m| self.claims.contains_key(m));
                let timed_out = self.recovery_deadline.is_some_and(|d| Instant::now() >= d);
                if everyone || timed_out {
                    self.finish_recovery();
                }
            }
            (GateState::Held, Phase::Active) => {}
        }
    }

    /// Starts learning the allocation from the regions themselves.
    fn begin_recovery(&mut self) {
        self.claims.clear();
        self.forget_allocations();
        self.recovery_deadline = Some(Instant::now() + self.settings.recovery_timeout);
        self.set_phase(Phase::Recovering);
        // Regions registered with an earlier tenure do not know we are back.
        for member in self.view.members() {
            self.ask_to_register(member);
        }
    }

    /// Drops everything learned in a tenure: the next one learns it afresh
    /// from registrations.
    fn forget_allocations(&mut self) {
        self.state = CoordinatorState::default();
        self.incarnations.clear();
        self.unanswered.clear();
        self.last_grant.clear();
        self.fenced.clear();
        self.allocation_fence = None;
        self.accounted.clear();
        self.handoffs.clear();
        self.deferred.clear();
        self.shutting_down.clear();
    }

    /// Asks `region` to register (again). Not a directive; sent in any phase
    /// past standby, since it moves nothing.
    fn ask_to_register(&self, region: NodeId) {
        if let Err(error) = self.send_to_region(region, &RegionMsg::RegisterRequest) {
            tracing::debug!(node = %self.node, %region, %error, "register request not sent");
        }
    }

    /// Asks every member of the view we have no registration from, or only
    /// an earlier incarnation's, to register.
    fn ask_unregistered_members(&self) {
        let state = self.view.state();
        for (member, m) in &state.members {
            let current = self
                .incarnations
                .get(member)
                .is_some_and(|known| *known >= m.incarnation);
            if !current {
                self.ask_to_register(*member);
            }
        }
    }

    fn send_to_region(&self, to: NodeId, msg: &RegionMsg) -> Result<(), String> {
        let bytes = encode(msg).map_err(|e| e.to_string())?;
        self.transport
            .send(to, self.channels.region, bytes)
            .map_err(|e| e.to_string())
    }

    fn set_phase(&mut self, phase: Phase) {
        self.phase = phase;
        let epoch = (phase == Phase::Active).then_some(self.epoch);
        tracing::info!(node = %self.node, type_name = %self.type_name, ?phase, ?epoch, "coordinator phase");
        self.status.send_replace(CoordinatorStatus { phase, epoch });
        let t = self.type_name.0.clone();
        metrics::gauge!("sharding_coordinator_active", "type" => t.clone())
            .set(f64::from(u8::from(phase == Phase::Active)));
        metrics::gauge!("sharding_coordinator_epoch", "type" => t)
            .set(epoch.map_or(0.0, |e| e.0 as f64));
        self.record(CoordinatorRecord::PhaseChanged { phase, epoch });
    }

    fn enter_standby(&mut self) {
        self.recovery_deadline = None;
        self.epoch = Epoch::default();
        self.claims.clear();
        self.forget_allocations();
        self.buffered.clear();
        self.set_phase(Phase::Standby);
    }

    fn finish_recovery(&mut self) {
        self.epoch = match &self.lease {
            // With a lease the epoch is its fencing token: strictly greater
            // for every new holder, so regions fence off older ones (I3).
            Some(lease) => match lease.fencing_token() {
                Some(token) => Epoch(token.get()),
                // Lapsed this very instant: the next step goes to Acquiring.
                None => return,
            },
            // Without one, a term above anything any region obeyed
            // (plausible by construction: absurd registrations are refused).
            None => match self.highest_epoch.next() {
                Some(epoch) => epoch,
                None => {
                    tracing::error!(node = %self.node, highest = %self.highest_epoch, "no epoch left below the ceiling; staying in recovery");
                    return;
                }
            },
        };
        self.recovery_deadline = None;
        self.highest_epoch = self.highest_epoch.max(self.epoch);
        // Every grant ends before its coordinator's lease validity, and that
        // ends before anyone else's tenure begins (I2): a tenure that began
        // after the previous term ran out has no predecessor grant left to
        // wait for. After a release, or a takeover of our own owner name
        // from an earlier process, grants may still run: wait them out
        // before allocating any shard nobody claims (I5; docs/architecture.md,
        // "Shard tenure").
        // After a suspended term, regions may be bridging on the suspension:
        // each looked at the store before we acquired, so `bridge_bound`
        // covers them.
        let succession = self.lease.as_ref().and_then(|l| l.succession());
        self.allocation_fence = self.tenure.and_then(|t| match succession {
            Some(Succession::AfterTermEnded) => None,
            Some(Succession::AfterSuspendedTerm) => Some(Instant::now() + t.bridge_bound()),
            _ => Some(Instant::now() + t.bound().max(t.bridge_bound())),
        });
        self.set_phase(Phase::Active);
        let claims = std::mem::take(&mut self.claims);
        for (region, (incarnation, shards)) in claims {
            self.register(region, incarnation, &shards);
        }
        while let Some((from, msg)) = self.buffered.pop_front() {
            self.handle(from, msg);
        }
    }

    fn record(&self, record: CoordinatorRecord) {
        if let Some(observer) = &self.observer {
            observer(&self.type_name, self.node, &record);
        }
    }

    fn apply(&mut self, event: CoordinatorEvent) {
        if let Err(error) = self.state.apply(&event) {
            // The handlers check before applying; this is a bug, not bad input.
            tracing::error!(node = %self.node, ?event, %error, "coordinator event rejected");
        }
    }

    /// Sends a directive, only while active: a passive coordinator never directs.
    fn direct(&mut self, to: NodeId, directive: Directive) {
        if !self.is_active() {
            return;
        }
        self.record(CoordinatorRecord::DirectiveSent { to, directive });
        if matches!(directive, Directive::TenureGranted { .. }) {
            // Only a grant extends a region's tenure.
            self.last_grant.insert(to, Instant::now());
        }
        if let Err(error) = self.send_to_region(to, &RegionMsg::Directive(directive)) {
            tracing::debug!(node = %self.node, %to, kind = directive.kind(), %error, "directive not sent");
        }
    }

    fn on_envelope(&mut self, envelope: Envelope) {
        let msg: CoordinatorMsg = match decode("coordinator message", &envelope.payload) {
            Ok(msg) => msg,
            Err(error) => {
                tracing::warn!(node = %self.node, from = %envelope.from, %error, "bad coordinator message dropped");
                return;
            }
        };
        if let CoordinatorMsg::Register { max_epoch, .. } = &msg {
            if !max_epoch.is_plausible() {
                // Raising our term above it would wrap, or fence every
                // region off for good.
                metrics::counter!("sharding_coordinator_refused_absurd_epochs_total", "type" => self.type_name.0.clone()).increment(1);
                tracing::warn!(node = %self.node, from = %envelope.from, %max_epoch, "registration with an absurd epoch refused");
                return;
            }
            if !self.view.state().contains(envelope.from) {
                // Not a member yet: it retries until acknowledged, and is
                // asked again when it joins our view.
                tracing::debug!(node = %self.node, from = %envelope.from, "registration from a non-member ignored");
                return;
            }
        }
        match self.phase {
            Phase::Standby => {
                tracing::trace!(node = %self.node, from = %envelope.from, ?msg, "standby: ignored");
            }
            // Not yet (or no longer) under a lease: nothing is kept for a
            // later activation; the regions retry. Registrations are
            // collected afresh when recovery starts.
            Phase::Acquiring => {
                tracing::trace!(node = %self.node, from = %envelope.from, ?msg, "acquiring: dropped");
            }
            Phase::Recovering => match msg {
                CoordinatorMsg::Register {
                    shards,
                    max_epoch,
                    incarnation,
                } => {
                    self.highest_epoch = self.highest_epoch.max(max_epoch);
                    let newer = self
                        .claims
                        .get(&envelope.from)
                        .is_none_or(|(known, _)| *known <= incarnation);
                    if newer {
                        self.claims.insert(envelope.from, (incarnation, shards));
                    }
                }
                other if self.buffered.len() < self.settings.buffer_size => {
                    self.buffered.push_back((envelope.from, other));
                }
                other => {
                    tracing::warn!(node = %self.node, from = %envelope.from, ?other, "recovery buffer full, request dropped (the region retries)");
                }
            },
            Phase::Active if self.is_active() => self.handle(envelope.from, msg),
            // Active in name but the lease just lapsed (the next step moves
            // us to Acquiring): not kept, as in Acquiring.
            Phase::Active => {}
        }
    }

    fn handle(&mut self, from: NodeId, msg: CoordinatorMsg) {
        if !self.is_active() {
            return;
        }
        let registered = self.state.is_registered(from);
        match msg {
            CoordinatorMsg::Register {
                shards,
                max_epoch,
                incarnation,
            } => {
                if self
                    .incarnations
                    .get(&from)
                    .is_some_and(|known| *known > incarnation)
                {
                    tracing::debug!(node = %self.node, region = %from, incarnation, "registration of an earlier incarnation ignored");
                    return;
                }
                if max_epoch > self.epoch && self.lease.is_none() {
                    // A region obeyed a newer term than ours (another side of a
                    // partition): move above it so our directives are obeyed.
                    // `max_epoch` is plausible (checked on receipt), so this
                    // never passes the ceiling.
                    if let Some(epoch) = max_epoch.next() {
                        self.epoch = epoch;
                        self.highest_epoch = self.epoch;
                        self.status.send_replace(CoordinatorStatus {
                            phase: Phase::Active,
                            epoch: Some(self.epoch),
                        });
                        // Regions obey only the epoch of their registration's
                        // acknowledgement: the others register again.
                        let others: Vec<NodeId> = (self.state.regions().keys())
                            .filter(|r| **r != from)
                            .copied()
                            .collect();
                        for region in others {
                            self.ask_to_register(region);
                        }
                    }
                }
                self.register(from, incarnation, &shards);
            }
            // Whatever an unregistered region asks, it registers first: it
            // may host shards we do not know of.
            _ if !registered => {
                tracing::debug!(node = %self.node, region = %from, "request from an unregistered region; asking it to register");
                self.ask_to_register(from);
            }
            CoordinatorMsg::GetShardHome { shard } => self.get_shard_home(from, shard),
            CoordinatorMsg::RenewTenure { seq } => {
                if self.may_grant() {
                    self.direct(
                        from,
                        Directive::TenureGranted {
                            epoch: self.epoch,
                            seq,
                        },
                    );
                }
            }
            CoordinatorMsg::ShardStarted { shard } => self.shard_started(from, shard),
            CoordinatorMsg::BeginHandOffAck { shard } => {
                let ready = self.handoffs.get_mut(&shard).is_some_and(|h| {
                    h.awaiting.remove(&from);
                    h.awaiting.is_empty() && !h.handoff_sent
                });
                if ready {
                    self.send_handoff(shard);
                }
            }
            CoordinatorMsg::ShardStopped { shard } => {
                if self.unanswered.get(&(from, shard)) == Some(&Unanswered::StopDuplicate) {
                    self.unanswered.remove(&(from, shard));
                }
                if self.handoffs.get(&shard).is_some_and(|h| h.from == from) {
                    self.handoffs.remove(&shard);
                    if self.state.home(shard) == Some(from) {
                        self.apply(CoordinatorEvent::ShardHomeDeallocated { shard });
                    }
                    tracing::debug!(node = %self.node, %shard, region = %from, "handoff complete");
                    // Re-home it now rather than on the next message, so a
                    // rebalance really moves the shard.
                    self.allocate(from, shard);
                    self.serve_deferred(shard);
                }
            }
            CoordinatorMsg::GracefulShutdownReq => {
                if self.state.is_registered(from) && self.shutting_down.insert(from) {
                    tracing::info!(node = %self.node, region = %from, "region shutting down; handing its shards off");
                }
                let shards: Vec<ShardId> = self
                    .state
                    .regions()
                    .get(&from)
                    .map(|s| s.iter().copied().collect())
                    .unwrap_or_default();
                for shard in shards {
                    self.start_handoff(shard);
                }
            }
        }
    }

    /// Registers a region and the shards it hosts; a shard already homed
    /// elsewhere is handed off from the newcomer (one home per shard).
    fn register(&mut self, region: NodeId, incarnation: u64, shards: &[ShardId]) {
        self.accounted.extend(shards.iter().copied());
        if !self.state.is_registered(region) {
            self.apply(CoordinatorEvent::RegionRegistered { region });
        }
        // First, so the directives below are obeyed: a region obeys only
        // the coordinator, and the epoch, it registered with.
        self.direct(region, Directive::RegisterAck { epoch: self.epoch });
        let known = self.incarnations.insert(region, incarnation);
        if known.is_some_and(|k| k < incarnation) {
            // A new life of the node: the duplicates we asked its predecessor
            // to stop are gone. A `HostShard` still on its way may be obeyed
            // by this life, so that shard stays homed here (and is sent
            // again) rather than re-homed elsewhere under it (I5).
            self.unanswered
                .retain(|(r, _), what| *r != region || *what == Unanswered::Host);
        }
        // Shards we placed there that it does not claim stay there: the
        // registration may be older than its start of them (frames
        // reordered, a home still in flight), so it may host them now, and
        // placing them elsewhere at once could run them twice (I5). It is
        // told to host them (again); a region that really lost them (a
        // restart, a tenure lapse) starts them again under its next grant.
        let omitted: Vec<ShardId> = self
            .state
            .regions()
            .get(&region)
            .map(|hosted| {
                hosted
                    .iter()
                    .filter(|s| !shards.contains(s) && !self.handoffs.contains_key(s))
                    .copied()
                    .collect()
            })
            .unwrap_or_default();
        for shard in omitted {
            self.host(region, shard);
        }
        for &shard in shards {
            match self.state.home(shard) {
                None => self.apply(CoordinatorEvent::ShardHomeAllocated { shard, region }),
                Some(home) if home == region => {}
                Some(home) => {
                    tracing::warn!(node = %self.node, %shard, %home, claimant = %region, "shard claimed twice; handing off from the claimant");
                    self.stop_duplicate(region, shard);
                }
            }
        }
    }

    /// Tells `region`, the shard's home, to host it, until it says it does.
    fn host(&mut self, region: NodeId, shard: ShardId) {
        self.unanswered.insert((region, shard), Unanswered::Host);
        self.direct(
            region,
            Directive::HostShard {
                epoch: self.epoch,
                shard,
                allocation: self.allocations.get(&shard).copied().unwrap_or(0),
            },
        );
    }

    /// Tells `region` to stop its copy of `shard` (homed elsewhere), until it
    /// says it has (one home per shard, I4).
    fn stop_duplicate(&mut self, region: NodeId, shard: ShardId) {
        self.unanswered
            .insert((region, shard), Unanswered::StopDuplicate);
        self.direct(
            region,
            Directive::HandOff {
                epoch: self.epoch,
                shard,
            },
        );
    }

    /// A region says it hosts `shard`: our `HostShard` arrived, or it obeyed
    /// an earlier tenure's. A shard homed nowhere is adopted there; one homed
    /// elsewhere is stopped there.
    fn shard_started(&mut self, region: NodeId, shard: ShardId) {
        if self.unanswered.get(&(region, shard)) == Some(&Unanswered::Host) {
            self.unanswered.remove(&(region, shard));
        }
        match self.state.home(shard) {
            Some(home) if home == region => {}
            // Adopted only where we could have placed it: the report may be
            // old (the region stopped it since), and before the allocation
            // fence another region may still host it under a predecessor's
            // grant (I5). Otherwise it is stopped there; once placed, its
            // home is known.
            None if !self.handoffs.contains_key(&shard) && self.may_allocate(shard) => {
                self.accounted.insert(shard);
                self.apply(CoordinatorEvent::ShardHomeAllocated { shard, region });
            }
            None if !self.handoffs.contains_key(&shard) => {
                tracing::debug!(node = %self.node, %shard, %region, "started shard not adopted before its fence; stopping it there");
                self.stop_duplicate(region, shard);
            }
            _ => {
                if self.handoffs.get(&shard).is_none_or(|h| h.from != region) {
                    self.stop_duplicate(region, shard);
                }
            }
        }
    }

    fn get_shard_home(&mut self, requester: NodeId, shard: ShardId) {
        if !self.state.is_registered(requester) {
            // It registers first (asked to), then asks again.
            self.ask_to_register(requester);
            return;
        }
        if self.handoffs.contains_key(&shard) {
            self.deferred.entry(shard).or_default().insert(requester);
            return;
        }
        let (home, new) = match self.state.home(shard) {
            Some(home) => (home, false),
            None => match self.allocate(requester, shard) {
                Some(home) => (home, true),
                None => return, // no region to place it in yet; the requester retries
            },
        };
        let directive = Directive::ShardHome {
            epoch: self.epoch,
            shard,
            region: home,
            allocation: self.allocations.get(&shard).copied().unwrap_or(0),
        };
        self.direct(requester, directive);
        if new {
            // Every region learns a new home at once, so a message for the
            // shard sent through any node is routed without asking us: while
            // no coordinator is active (a failover) routing goes on.
            let others: Vec<NodeId> = self
                .state
                .regions()
                .keys()
                .copied()
                .filter(|r| *r != requester)
                .collect();
            for region in others {
                self.direct(region, directive);
            }
        }
    }

    /// Regions that may receive shards: all but those shutting down. Borrowed
    /// in the common case, so a cold allocation does not copy the table.
    fn candidates(&self) -> Cow<'_, BTreeMap<NodeId, BTreeSet<ShardId>>> {
        if self.shutting_down.is_empty() {
            return Cow::Borrowed(self.state.regions());
        }
        Cow::Owned(
            self.state
                .regions()
                .iter()
                .filter(|(r, _)| !self.shutting_down.contains(r))
                .map(|(r, s)| (*r, s.clone()))
                .collect(),
        )
    }

    /// Picks a home for an unallocated shard through the strategy and tells
    /// that region to host it.
    fn allocate(&mut self, requester: NodeId, shard: ShardId) -> Option<NodeId> {
        if !self.may_allocate(shard) {
            return None; // the requester asks again
        }
        let home = self
            .settings
            .strategy
            .allocate(requester, shard, &self.candidates())?;
        self.accounted.insert(shard);
        self.apply(CoordinatorEvent::ShardHomeAllocated {
            shard,
            region: home,
        });
        let allocation = self.next_allocation;
        self.next_allocation += 1;
        self.allocations.insert(shard, allocation);
        self.host(home, shard);
        Some(home)
    }

    /// A tenure is granted only if it surely ends before our lease's local
    /// validity deadline: a coordinator cut off from the store stops
    /// granting in time for every grant of its own to end before the store
    /// could give the lease to anyone else (I5).
    fn may_grant(&self) -> bool {
        let Some(tenure) = self.tenure else {
            return false;
        };
        match self.lease.as_ref().and_then(|l| l.valid_until()) {
            Some(deadline) => Instant::now() + tenure.bound() <= deadline,
            None => true,
        }
    }

    /// With tenure, a shard may be placed only once no grant of ours or of a
    /// predecessor can still let another region host it (I5).
    fn may_allocate(&mut self, shard: ShardId) -> bool {
        let now = Instant::now();
        if !self.accounted.contains(&shard)
            && self.allocation_fence.is_some_and(|until| now < until)
        {
            return false;
        }
        match self.fenced.get(&shard) {
            Some(until) if now < *until || !self.renewed_since(*until) => false,
            Some(_) => {
                self.fenced.remove(&shard);
                true
            }
            None => true,
        }
    }

    /// Whether our lease was last renewed by a request that started after
    /// `instant`. A region that lost us may bridge its tenure by suspending
    /// our lease tenure, which it does only before its tenure ends; a
    /// renewal begun after that end succeeded before any such suspension,
    /// so none happened, and none can while we keep this tenure (I5;
    /// `docs/architecture.md`, "Shard tenure").
    fn renewed_since(&self, instant: Instant) -> bool {
        let Some(lease) = &self.lease else {
            return true;
        };
        let settings = lease.settings();
        lease
            .valid_until()
            .is_some_and(|v| v + settings.safety_margin() > instant + settings.ttl())
    }

    fn serve_deferred(&mut self, shard: ShardId) {
        for requester in self.deferred.remove(&shard).unwrap_or_default() {
            self.get_shard_home(requester, shard);
        }
    }

    fn start_handoff(&mut self, shard: ShardId) {
        let Some(from) = self.state.home(shard) else {
            return;
        };
        if self.handoffs.contains_key(&shard) {
            return;
        }
        let awaiting: BTreeSet<NodeId> = self.state.regions().keys().copied().collect();
        tracing::debug!(node = %self.node, %shard, %from, "handoff starting");
        self.handoffs.insert(
            shard,
            Handoff {
                from,
                started: Instant::now(),
                awaiting: awaiting.clone(),
                handoff_sent: false,
            },
        );
        for region in awaiting {
            self.direct(
                region,
                Directive::BeginHandOff {
                    epoch: self.epoch,
                    shard,
                },
            );
        }
    }

    fn send_handoff(&mut self, shard: ShardId) {
        let Some(handoff) = self.handoffs.get_mut(&shard) else {
            return;
        };
        handoff.handoff_sent = true;
        let from = handoff.from;
        self.direct(
            from,
            Directive::HandOff {
                epoch: self.epoch,
                shard,
            },
        );
    }

    fn on_rebalance_tick(&mut self) {
        if !self.is_active() {
            return;
        }
        // Abandon handoffs that took too long: the shard stays where it was.
        let now = Instant::now();
        let expired: Vec<ShardId> = self
            .handoffs
            .iter()
            .filter(|(_, h)| now.duration_since(h.started) >= self.settings.handoff_timeout)
            .map(|(s, _)| *s)
            .collect();
        for shard in expired {
            tracing::warn!(node = %self.node, %shard, "handoff timed out; shard stays");
            self.handoffs.remove(&shard);
            self.serve_deferred(shard);
        }
        let in_progress: BTreeSet<ShardId> = self.handoffs.keys().copied().collect();
        let moving = self
            .settings
            .strategy
            .rebalance(&self.candidates(), &in_progress);
        for shard in moving {
            self.start_handoff(shard);
        }
    }

    /// Sends every unanswered directive again, and asks every member we have
    /// no registration from (or only an earlier incarnation's) to register:
    /// no lost message leaves a shard unreachable or hosted twice for longer
    /// than a retry interval.
    fn on_retry_tick(&mut self) {
        if !self.is_active() {
            return;
        }
        self.ask_unregistered_members();
        let epoch = self.epoch;
        // Only what still holds: a shard moved or re-homed since is not
        // started, or stopped, on the strength of an old decision.
        let (state, handoffs) = (&self.state, &self.handoffs);
        self.unanswered.retain(|(region, shard), what| {
            let home = state.home(*shard);
            match what {
                Unanswered::Host => home == Some(*region) && !handoffs.contains_key(shard),
                Unanswered::StopDuplicate => home != Some(*region),
            }
        });
        let unanswered: Vec<((NodeId, ShardId), Unanswered)> =
            self.unanswered.iter().map(|(k, v)| (*k, *v)).collect();
        for ((region, shard), what) in unanswered {
            let directive = match what {
                Unanswered::Host => Directive::HostShard {
                    epoch,
                    shard,
                    allocation: self.allocations.get(&shard).copied().unwrap_or(0),
                },
                Unanswered::StopDuplicate => Directive::HandOff { epoch, shard },
            };
            self.direct(region, directive);
        }
        let handoffs: Vec<(ShardId, NodeId, bool, Vec<NodeId>)> = self
            .handoffs
            .iter()
            .map(|(s, h)| {
                (
                    *s,
                    h.from,
                    h.handoff_sent,
                    h.awaiting.iter().copied().collect(),
                )
            })
            .collect();
        for (shard, from, handoff_sent, awaiting) in handoffs {
            if handoff_sent {
                self.direct(from, Directive::HandOff { epoch, shard });
            } else {
                for region in awaiting {
                    self.direct(region, Directive::BeginHandOff { epoch, shard });
                }
            }
        }
    }

    fn on_view_change(&mut self) {
        let state = self.view.state();
        // Before terminating regions, which forgets who shut down gracefully.
        let members: BTreeSet<NodeId> = state.members.keys().copied().collect();
        for gone in self.last_members.difference(&members) {
            if !self.shutting_down.contains(gone) {
                self.departed.insert(*gone);
            }
        }
        self.departed.retain(|n| !members.contains(n));
        self.last_members = members;
        if self.is_active() {
            let gone: Vec<NodeId> = self
                .state
                .regions()
                .keys()
                .filter(|r| !state.contains(**r))
                .copied()
                .collect();
            for region in gone {
                self.terminate_region(region);
            }
            // Members new to the view, or seen under a new incarnation, may
            // host shards (or have lost theirs): they register (again).
            self.ask_unregistered_members();
        }
        self.check_quorum();
    }

    /// Tells the gate whether this side still has a majority of the nodes
    /// we served: a leader cut off with a few nodes must not sit on the
    /// lease while the rest, unable to act without it, serve nothing.
    fn check_quorum(&mut self) {
        let state = self.view.state();
        let quorum = state.members.len() > self.departed.len();
        if quorum != self.gate_quorum {
            self.gate_quorum = quorum;
            tracing::info!(node = %self.node, members = state.members.len(), departed = ?self.departed, quorum, "majority of the cluster {}", if quorum { "regained" } else { "lost" });
            self.feed_gate(GateEvent::Quorum(quorum));
        }
    }

    /// Forgets a region that left the view; its shards will be re-allocated.
    fn terminate_region(&mut self, region: NodeId) {
        tracing::info!(node = %self.node, %region, "region terminated; its shards will be re-allocated");
        if let Some(hosted) = self.state.regions().get(&region) {
            // It may still host them under a predecessor's grant too.
            for shard in hosted {
                self.accounted.remove(shard);
            }
        }
        if let Some(tenure) = self.tenure {
            // It may still host them, until its tenure surely ends (I5):
            // our last grant's bound, or, if we granted it nothing, what
            // it may hold from before us (the allocation fence); and only
            // once a renewal of ours shows it did not bridge on us.
            let last = self.last_grant.remove(&region);
            let until = last
                .map(|t| t + tenure.bound())
                .into_iter()
                .chain(self.allocation_fence)
                .max()
                .unwrap_or_else(Instant::now);
            {
                let shards: Vec<ShardId> = self
                    .state
                    .regions()
                    .get(&region)
                    .map(|s| s.iter().copied().collect())
                    .unwrap_or_default();
                for shard in shards {
                    self.fenced.insert(shard, until);
                }
            }
        }
        self.apply(CoordinatorEvent::RegionTerminated { region });
        self.incarnations.remove(&region);
        self.unanswered.retain(|(r, _), _| *r != region);
        self.shutting_down.remove(&region);
        let finished: Vec<ShardId> = self
            .handoffs
            .iter_mut()
            .filter_map(|(shard, h)| {
                h.awaiting.remove(&region);
                (h.from == region).then_some(*shard)
            })
            .collect();
        for shard in finished {
            self.handoffs.remove(&shard);
            self.serve_deferred(shard);
        }
        let ready: Vec<ShardId> = self
            .handoffs
            .iter()
            .filter(|(_, h)| h.awaiting.is_empty() && !h.handoff_sent)
            .map(|(s, _)| *s)
            .collect();
        for shard in ready {
            self.send_handoff(shard);
        }
    }
}
