//! The region task: shard locations, buffering, forwarding, directives.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use cluster::{ClusterView, Envelope, MemberStatus, NodeId, Transport};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, sleep_until};

use super::delivery::Delivery;
use super::inbox::{self, TrySendError};
use super::routes::Route;
use super::shard::{EntityFactory, Shard, ShardCmd, Stopped};
use super::{RegionCmd, RegionEvent, RegionObserver, ShardingError, Shared};
use crate::protocol::{
    CoordinatorMsg, Directive, Epoch, FencingToken, RegionMsg, TypeChannels, decode, encode,
};
use crate::tenure::{TenureClock, TenureSettings, TenureSuspender};
use crate::{Entity, ShardId};

/// Why a region refuses a directive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// Not from the coordinator it registered with (nor, for an
    /// acknowledgement, from its leader).
    Foreign,
    /// At or above [`Epoch::CEILING`].
    Absurd,
    /// Below the highest epoch obeyed (I3).
    Stale,
    /// Above the acknowledged epoch, which only a `RegisterAck` raises.
    Unregistered,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Foreign => "not from our coordinator",
            Self::Absurd => "absurd",
            Self::Stale => "stale",
            Self::Unregistered => "above the acknowledged epoch",
        })
    }
}

/// Forwarding hops after which a message is dropped (tables disagree too long).
const MAX_HOPS: u8 = 3;

pub(super) struct Parts<E: Entity> {
    pub(super) shared: Arc<Shared<E>>,
    pub(super) factory: EntityFactory<E>,
    pub(super) transport: Arc<dyn Transport>,
    pub(super) view: ClusterView,
    pub(super) channels: TypeChannels,
    pub(super) commands: mpsc::Receiver<RegionCmd<E>>,
    pub(super) observer: Option<RegionObserver>,
    pub(super) tenure: Option<TenureSettings>,
    pub(super) suspender: Option<TenureSuspender>,
}

pub(super) fn spawn<E: Entity>(parts: Parts<E>) {
    let (stopped_tx, stopped_rx) = mpsc::unbounded_channel();
    let (looks_tx, looks_rx) = mpsc::unbounded_channel();
    let inbox = parts.transport.subscribe(parts.channels.region);
    let actor = Actor {
        node: parts.shared.node,
        shared: parts.shared,
        factory: parts.factory,
        transport: parts.transport,
        view: parts.view,
        channels: parts.channels,
        observer: parts.observer,
        locations: BTreeMap::new(),
        hosted: BTreeSet::new(),
        tokens: BTreeMap::new(),
        senders: BTreeMap::new(),
        handing_off: BTreeMap::new(),
        pending: BTreeMap::new(),
        held: BTreeMap::new(),
        max_epoch: Epoch::default(),
        registered_with: None,
        reregistering: false,
        leader: None,
        incarnations: BTreeMap::new(),
        stopped_tx,
        shutting_down: None,
        tenure: parts.tenure.map(TenureClock::new),
        suspender: parts.suspender,
        acked_by: None,
        looking: false,
        looks_tx,
    };
    tokio::spawn(actor.run(parts.commands, inbox, stopped_rx, looks_rx));
}

struct Actor<E: Entity> {
    node: NodeId,
    shared: Arc<Shared<E>>,
    factory: EntityFactory<E>,
    transport: Arc<dyn Transport>,
    view: ClusterView,
    channels: TypeChannels,
    observer: Option<RegionObserver>,
    /// Known homes of shards (this node included). Changed only through
    /// `set_home` and `forget_home`, which keep the direct routes in step.
    locations: BTreeMap<ShardId, NodeId>,
    /// Shards with a running shard task here (handing-off ones included).
    hosted: BTreeSet<ShardId>,
    /// The fencing token of each allocation to this node, kept while the
    /// shard's home is here; its entities' writes carry it.
    tokens: BTreeMap<ShardId, FencingToken>,
    /// Inboxes of the shards hosted here and not handing off. Handles see a
    /// shard (in `shared.routes`) only once the messages buffered for it have
    /// been passed on, so one sender's messages keep their order.
    senders: BTreeMap<ShardId, inbox::Sender<ShardCmd<E>>>,
    /// Shards being handed off, and the coordinator node that asked (none
    /// when the region stops them itself because its tenure lapsed).
    handing_off: BTreeMap<ShardId, Option<NodeId>>,
    /// Messages waiting for their shard's home.
    pending: BTreeMap<ShardId, VecDeque<Delivery<E>>>,
    /// Messages for a shard being handed off from here: they wait until the
    /// shard has returned what it had not delivered, so they stay behind it.
    held: BTreeMap<ShardId, VecDeque<Delivery<E>>>,
    /// The highest epoch obeyed (I3). Only a `RegisterAck` raises it, so it
    /// is also the epoch of the last acknowledgement, which every other
    /// directive must carry exactly.
    max_epoch: Epoch,
    /// The coordinator this region registered with (always its view's
    /// leader): the only node whose directives it obeys ("Who may direct a
    /// region" in `docs/architecture.md`).
    registered_with: Option<NodeId>,
    /// Our coordinator's epoch is not the one we obeyed: we registered
    /// again, and do so on every retry tick until it acknowledges (a lost
    /// Register must not leave us refusing it for good).
    reregistering: bool,
    /// The leader of the view and its incarnation: a new incarnation is a new
    /// coordinator that knows nothing of this region until it registers.
    leader: Option<(NodeId, u64)>,
    /// Members' incarnations in the last view seen, to forget homes on
    /// nodes that restarted.
    incarnations: BTreeMap<NodeId, u64>,
    stopped_tx: mpsc::UnboundedSender<Stopped<E>>,
    shutting_down: Option<oneshot::Sender<()>>,
    /// With a lease: the tenure that lets this region host shards (I5).
    tenure: Option<TenureClock>,
    /// Suspends our coordinator's lease tenure, to bridge ours.
    suspender: Option<TenureSuspender>,
    /// The coordinator whose acknowledgement set `max_epoch` (kept across
    /// leader changes, unlike `registered_with`).
    acked_by: Option<NodeId>,
    /// A look at the store is in flight.
    looking: bool,
    /// Where looks at the store report: (started, suspended).
    looks_tx: mpsc::UnboundedSender<(Instant, bool)>,
}

impl<E: Entity> Actor<E> {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<RegionCmd<E>>,
        mut inbox: mpsc::Receiver<Envelope>,
        mut stopped: mpsc::UnboundedReceiver<Stopped<E>>,
        mut looks: mpsc::UnboundedReceiver<(Instant, bool)>,
    ) {
        let mut view = self.view.watch();
        let mut tick = tokio::time::interval(self.shared.settings.retry_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let renew_every = self
            .tenure
            .as_ref()
            .map_or(Duration::from_secs(3600), |t| t.settings().renew_interval);
        let mut renew = tokio::time::interval(renew_every);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.on_view_change();
        loop {
            let lapse_at = self.lapse_at();
            // Biased, in a fixed order, so a seeded simulation replays exactly.
            tokio::select! {
                biased;
                // The tenure first: no message is handled past its end (I5).
                () = sleep_until(lapse_at.unwrap_or_else(Instant::now)), if lapse_at.is_some() => self.lapse(),
                // Rare events first; then the traffic: directives before user messages.
                Some(s) = stopped.recv() => self.shard_stopped(s),
                Some((started, suspended)) = looks.recv() => self.looked(started, suspended),
                Ok(()) = view.changed() => self.on_view_change(),
                _ = tick.tick() => self.retry(),
                _ = renew.tick(), if self.tenure.is_some() => {
                    self.renew();
                    self.look_for_bridge();
                }
                Some(envelope) = inbox.recv() => self.on_envelope(envelope),
                Some(cmd) = commands.recv() => match cmd {
                    RegionCmd::Route(d) => self.route(d),
                    RegionCmd::Stop => break,
                    RegionCmd::Shutdown(done) => {
                        tracing::info!(node = %self.node, type_name = %self.shared.type_name, "region shutting down");
                        self.shutting_down = Some(done);
                        self.request_shutdown();
                    }
                },
                else => break,
            }
            if self.shutting_down.is_some() && self.hosted.is_empty() {
                break;
            }
        }
        self.stop();
        if let Some(done) = self.shutting_down.take() {
            let _ = done.send(());
        }
    }

    fn stop(&mut self) {
        // Dropping the senders stops every shard.
        self.shared.routes_mut().clear();
        self.senders.clear();
        let waiting: Vec<VecDeque<Delivery<E>>> = std::mem::take(&mut self.pending)
            .into_values()
            .chain(std::mem::take(&mut self.held).into_values())
            .collect();
        for queue in waiting {
            for d in queue {
                if d.counted {
                    self.shared
                        .via_region(d.shard)
                        .fetch_sub(1, Ordering::AcqRel);
                }
                self.shared.stats.buffered.fetch_sub(1, Ordering::Relaxed);
                self.shared
                    .stats
                    .dropped_undeliverable
                    .fetch_add(1, Ordering::Relaxed);
                d.fail(ShardingError::RegionStopped);
            }
        }
        tracing::info!(node = %self.node, type_name = %self.shared.type_name, "region stopped");
    }

    fn observe(&self, event: RegionEvent) {
        if let Some(observer) = &self.observer {
            observer(&self.shared.type_name, self.node, &event);
        }
    }

    fn on_view_change(&mut self) {
        let state = self.view.state();
        let leader = state.leader_incarnation();
        if leader != self.leader {
            tracing::debug!(node = %self.node, ?leader, "region sees a new leader; registering");
            self.leader = leader;
            self.registered_with = None;
            self.register();
        }
        // Homes on nodes that left or restarted are void: ask again on the
        // next message.
        let incarnations: BTreeMap<NodeId, u64> = state
            .members
            .iter()
            .map(|(node, m)| (*node, m.incarnation))
            .collect();
        let before = std::mem::replace(&mut self.incarnations, incarnations);
        let node = self.node;
        let now = std::mem::take(&mut self.incarnations);
        self.retain_homes(|home| {
            home == node || (now.contains_key(&home) && before.get(&home) == now.get(&home))
        });
        self.incarnations = now;
    }

    /// When the tenure lapses, while shards may be hosted under it.
    fn lapse_at(&self) -> Option<Instant> {
        let tenure = self.tenure.as_ref()?;
        if !self.shared.hosting.load(Ordering::Acquire) {
            return None;
        }
        Some(tenure.valid_until().unwrap_or_else(Instant::now))
    }

    /// Whether shards may be hosted here now: always without a lease; with
    /// one, only under a valid tenure. Read when a shard starts, never per
    /// message: the lapse timer flips `shared.hosting` for the hot path.
    fn may_host(&self) -> bool {
        self.tenure
            .as_ref()
            .is_none_or(|t| t.is_valid(Instant::now()))
    }

    /// Asks the coordinator this region is registered with to extend its tenure.
    fn renew(&mut self) {
        let Some(coordinator) = self.registered_with else {
            return; // it registers first; the acknowledgement renews
        };
        let Some(tenure) = self.tenure.as_mut() else {
            return;
        };
        let seq = tenure.request(Instant::now());
        self.to_coordinator(coordinator, &CoordinatorMsg::RenewTenure { seq });
    }

    /// Close to a lapse without an answer from our coordinator: look at the
    /// lease store, suspending the tenure of the coordinator whose epoch we
    /// obey. Once suspended it can renew no more, so it can never act on our
    /// lapse (it re-homes a lost region's shards only under a renewal begun
    /// after that region's tenure surely ended), and a successor waits out
    /// `bridge` for what nobody claims: we may host on ("Shard tenure" in
    /// `docs/architecture.md`).
    fn look_for_bridge(&mut self) {
        let (Some(tenure), Some(suspender)) = (self.tenure.as_ref(), self.suspender.as_ref())
        else {
            return;
        };
        let now = Instant::now();
        if self.looking || self.max_epoch == Epoch::default() || !tenure.wants_bridge(now) {
            return;
        }
        // Only a region that still sees most of the cluster answering, and
        // its coordinator not, suspends: a region cut off with a few nodes
        // would depose a coordinator the majority still uses, and one whose
        // coordinator answers probes lost grants, not the coordinator.
        let state = self.view.state();
        let up = |m: &cluster::Member| m.status == MemberStatus::Up;
        let answering = state.members.values().filter(|m| up(m)).count();
        let coordinator_answers = self
            .acked_by
            .and_then(|c| state.members.get(&c))
            .is_some_and(up);
        if coordinator_answers || answering * 2 <= state.members.len() {
            return;
        }
        self.looking = true;
        let look = suspender(self.max_epoch);
        let report = self.looks_tx.clone();
        tokio::spawn(async move {
            let suspended = look.await;
            let _ = report.send((now, suspended));
        });
    }

    /// A look at the store came back.
    fn looked(&mut self, started: Instant, suspended: bool) {
        self.looking = false;
        let Some(tenure) = self.tenure.as_mut() else {
            return;
        };
        if suspended && tenure.bridged(started, Instant::now()) {
            tracing::debug!(node = %self.node, type_name = %self.shared.type_name, epoch = %self.max_epoch, until = ?tenure.valid_until(), "coordinator's tenure suspended; shard tenure bridged");
        }
    }

    /// The tenure ended without a renewal: stop every shard at once (their
    /// entities handle nothing more), keep what arrives for them, and keep
    /// asking (I5).
    fn lapse(&mut self) {
        let Some(tenure) = self.tenure.as_mut() else {
            return;
        };
        if tenure.is_valid(Instant::now()) {
            return; // renewed meanwhile
        }
        tenure.lapse();
        self.shared.hosting.store(false, Ordering::Release);
        let shards: Vec<ShardId> = self.senders.keys().copied().collect();
        // Their homes are the coordinator's to say again: it may have moved
        // them by the time we are granted a tenure again.
        let node = self.node;
        self.retain_homes(|home| home != node);
        tracing::warn!(node = %self.node, type_name = %self.shared.type_name, shards = shards.len(), "shard tenure lapsed; stopping every shard until the coordinator renews it");
        (self.shared.routes_mut()).retain(|route| matches!(route, Route::Remote(..)));
        for shard in shards {
            if let Some(sender) = self.senders.remove(&shard) {
                self.handing_off.insert(shard, None);
                let _ = sender.send_over_capacity(ShardCmd::HandOff);
            }
        }
        self.renew();
    }

    /// A grant arrived: if the shards were stopped for a lapse, host again
    /// what has messages waiting and is homed here.
    fn granted(&mut self, seq: u64) {
        let Some(tenure) = self.tenure.as_mut() else {
            return;
        };
        if !tenure.granted(seq) || self.shared.hosting.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::info!(node = %self.node, type_name = %self.shared.type_name, "shard tenure granted; hosting again");
        let waiting: Vec<ShardId> = self
            .pending
            .keys()
            .filter(|s| self.locations.get(s) == Some(&self.node))
            .copied()
            .collect();
        for shard in waiting {
            self.flush(shard);
        }
    }

    fn leader(&self) -> Option<NodeId> {
        self.leader.map(|(node, _)| node)
    }

    /// Publishes the region's counters through the `metrics` facade, for
    /// whatever exporter the application installed (none: a no-op).
    fn publish_metrics(&self) {
        let s = self.shared.stats.snapshot();
        let t = self.shared.type_name.0.clone();
        metrics::gauge!("sharding_region_buffered_messages", "type" => t.clone())
            .set(s.buffered as f64);
        metrics::gauge!("sharding_region_hosted_shards", "type" => t.clone())
            .set(self.hosted.len() as f64);
        for (name, value) in [
            ("sharding_region_delivered_local_total", s.delivered_local),
            ("sharding_region_forwarded_total", s.forwarded),
            (
                "sharding_region_dropped_buffer_full_total",
                s.dropped_buffer_full,
            ),
            (
                "sharding_region_dropped_undeliverable_total",
                s.dropped_undeliverable,
            ),
            (
                "sharding_region_refused_directives_total",
                s.refused_directives,
            ),
            ("sharding_region_entities_started_total", s.entities_started),
            (
                "sharding_region_entities_passivated_total",
                s.entities_passivated,
            ),
        ] {
            metrics::counter!(name, "type" => t.clone()).absolute(value);
        }
    }

    fn retry(&mut self) {
        self.publish_metrics();
        match self.registered_with {
            None => self.register(),
            Some(coordinator) if self.reregistering => self.register_with(coordinator),
            Some(_) => {}
        }
        let waiting: Vec<ShardId> = self.pending.keys().copied().collect();
        for shard in waiting {
            self.request_home(shard);
        }
        if self.shutting_down.is_some() {
            self.request_shutdown();
        }
        self.shared.asks().retain(|_, tx| !tx.is_closed());
    }

    fn to_coordinator(&self, node: NodeId, msg: &CoordinatorMsg) {
        let sent = encode(msg).map_err(|e| e.to_string()).and_then(|bytes| {
            self.transport
                .send(node, self.channels.coordinator, bytes)
                .map_err(|e| e.to_string())
        });
        if let Err(error) = sent {
            tracing::debug!(node = %self.node, coordinator = %node, ?msg, %error, "message to coordinator not sent");
        }
    }

    fn register(&self) {
        if let Some(leader) = self.leader() {
            self.register_with(leader);
        }
    }

    fn register_with(&self, coordinator: NodeId) {
        let mut shards: Vec<ShardId> = self
            .hosted
            .iter()
            .filter(|s| !self.handing_off.contains_key(s))
            .copied()
            .collect();
        shards.sort();
        self.to_coordinator(
            coordinator,
            &CoordinatorMsg::Register {
                shards,
                max_epoch: self.max_epoch,
                incarnation: self.view.local_incarnation(),
            },
        );
    }

    fn request_home(&self, shard: ShardId) {
        if let Some(leader) = self.leader() {
            self.to_coordinator(leader, &CoordinatorMsg::GetShardHome { shard });
        }
    }

    fn request_shutdown(&self) {
        if let Some(leader) = self.leader() {
            self.to_coordinator(leader, &CoordinatorMsg::GracefulShutdownReq);
        }
    }

    fn route(&mut self, d: Delivery<E>) {
        if self.handing_off.contains_key(&d.shard) {
            return self.hold(d);
        }
        match self.locations.get(&d.shard).copied() {
            Some(home) if home == self.node => self.deliver_local(d),
            // Sent here by a region that thought the shard lives here: our
            // own idea of its home may be as stale as theirs. Ask the
            // coordinator rather than pass it on, so stale tables never
            // bounce a message until its hop limit.
            Some(_) if d.hops > 0 && !d.rehomed => {
                let mut d = d;
                d.rehomed = true;
                self.forget_home(d.shard);
                self.buffer(d);
            }
            Some(home) => self.forward(home, d),
            None => self.buffer(d),
        }
    }

    fn deliver_local(&mut self, mut d: Delivery<E>) {
        if !self.hosted.contains(&d.shard) {
            if !self.may_host() {
                // Homed here but no tenure: wait for the grant, which flushes it.
                if let Some(d) = self.count_in(d) {
                    self.pending.entry(d.shard).or_default().push_back(d);
                }
                return;
            }
            self.start_shard(d.shard);
        }
        let shard = d.shard;
        let Some(sender) = self.senders.get(&shard).cloned() else {
            // Handing off: wait for the next home.
            return self.buffer(d);
        };
        let counted = std::mem::take(&mut d.counted);
        let sent = sender.try_send(ShardCmd::Deliver(d));
        self.publish(shard);
        match sent {
            Ok(()) => {}
            Err(TrySendError::Full(ShardCmd::Deliver(d))) => {
                let capacity = self.shared.settings.shard_inbox;
                self.drop_delivery(d, ShardingError::BufferFull { capacity }, true);
            }
            Err(TrySendError::Closed(ShardCmd::Deliver(mut d))) => {
                d.counted = counted;
                return self.buffer(d);
            }
            Err(_) => {}
        }
        // Only now: the message is in the shard's inbox ahead of anything a
        // handle sends there next.
        if counted {
            self.shared.via_region(shard).fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn forward(&mut self, home: NodeId, d: Delivery<E>) {
        if d.hops >= MAX_HOPS {
            let why = format!("dropped after {} hops (shard tables disagree)", d.hops);
            return self.drop_delivery(d, ShardingError::Undeliverable(why), false);
        }
        let (shard, counted) = (d.shard, d.counted);
        let sent = self.shared.send_to(home, None, d);
        // Only now: the message is in the peer's outbox ahead of anything a
        // handle sends there next.
        if counted {
            self.shared.via_region(shard).fetch_sub(1, Ordering::AcqRel);
        }
        let _ = self.shared.count_forward(home, sent);
    }

    /// Keeps `d` until its handed-off shard has returned its backlog.
    fn hold(&mut self, d: Delivery<E>) {
        if let Some(d) = self.count_in(d) {
            self.held.entry(d.shard).or_default().push_back(d);
        }
    }

    /// Keeps `d` until its shard's home is known, asking for it once.
    fn buffer(&mut self, d: Delivery<E>) {
        let Some(d) = self.count_in(d) else { return };
        let shard = d.shard;
        let queue = self.pending.entry(shard).or_default();
        let first = queue.is_empty();
        queue.push_back(d);
        if first {
            self.request_home(shard);
        }
    }

    /// Counts `d` into the region's bounded buffer, or drops it when full.
    fn count_in(&self, d: Delivery<E>) -> Option<Delivery<E>> {
        let capacity = self.shared.settings.buffer_size;
        if self.shared.stats.buffered.load(Ordering::Relaxed) >= capacity {
            self.drop_delivery(d, ShardingError::BufferFull { capacity }, true);
            return None;
        }
        self.shared.stats.buffered.fetch_add(1, Ordering::Relaxed);
        Some(d)
    }

    /// Routes a queue taken out of the buffer again.
    fn reroute(&mut self, queue: Option<VecDeque<Delivery<E>>>) {
        let Some(queue) = queue else { return };
        self.shared
            .stats
            .buffered
            .fetch_sub(queue.len(), Ordering::Relaxed);
        for d in queue {
            self.route(d);
        }
    }

    fn drop_delivery(&self, d: Delivery<E>, error: ShardingError, full: bool) {
        let counter = if full {
            &self.shared.stats.dropped_buffer_full
        } else {
            &self.shared.stats.dropped_undeliverable
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if d.counted {
            self.shared
                .via_region(d.shard)
                .fetch_sub(1, Ordering::AcqRel);
        }
        tracing::warn!(node = %self.node, shard = %d.shard, entity = %d.entity, %error, "message dropped");
        d.fail(error);
    }

    fn flush(&mut self, shard: ShardId) {
        let queue = self.pending.remove(&shard);
        self.reroute(queue);
        self.publish(shard);
    }

    /// Lets handles send to `shard` directly, once nothing for it waits
    /// here (its backlog went first): into its inbox if hosted here, to its
    /// node if elsewhere.
    fn publish(&self, shard: ShardId) {
        if let Some(sender) = self.senders.get(&shard) {
            let route = Route::Local(sender.clone());
            self.shared.routes_mut().insert(shard, route);
            return;
        }
        let Some(&home) = self.locations.get(&shard) else {
            return;
        };
        let waiting = self.pending.contains_key(&shard)
            || self.held.contains_key(&shard)
            || self.handing_off.contains_key(&shard);
        if home != self.node && !waiting {
            let mut routes = self.shared.routes_mut();
            // A shard still running here keeps its inbox route until handed off.
            if !matches!(routes.get(shard), Some(Route::Local(_))) {
                let line = self.shared.transport.peer_line(home);
                routes.insert(shard, Route::Remote(home, line));
            }
        }
    }

    /// Records `shard`'s home; a changed home withdraws the direct route
    /// to the old one (re-published by `publish` when due).
    fn set_home(&mut self, shard: ShardId, home: NodeId) {
        if self.locations.insert(shard, home) != Some(home) {
            self.withdraw_remote(shard);
        }
    }

    /// Forgets `shard`'s home and any direct route to it.
    fn forget_home(&mut self, shard: ShardId) {
        if self.locations.remove(&shard).is_some() {
            self.withdraw_remote(shard);
        }
    }

    fn retain_homes(&mut self, keep: impl Fn(NodeId) -> bool) {
        let gone: Vec<ShardId> = (self.locations.iter())
            .filter(|(_, home)| !keep(**home))
            .map(|(shard, _)| *shard)
            .collect();
        for shard in gone {
            self.forget_home(shard);
        }
    }

    fn withdraw_remote(&self, shard: ShardId) {
        let mut routes = self.shared.routes_mut();
        if matches!(routes.get(shard), Some(Route::Remote(..))) {
            routes.remove(shard);
        }
    }

    fn start_shard(&mut self, shard: ShardId) {
        // A shard started before any allocation reached us (after a
        // coordinator change) carries the highest epoch obeyed.
        let token = *self.tokens.entry(shard).or_insert(FencingToken {
            epoch: self.max_epoch,
            allocation: 0,
        });
        let sender = Shard::spawn(
            shard,
            token,
            Arc::clone(&self.factory),
            Arc::clone(&self.shared.hosting),
            self.shared.settings.passivate_after,
            self.shared.settings.shard_inbox,
            Arc::clone(&self.shared.stats),
            Arc::clone(&self.shared.link),
            self.stopped_tx.clone(),
        );
        self.senders.insert(shard, sender);
        self.hosted.insert(shard);
        self.set_home(shard, self.node);
        tracing::debug!(node = %self.node, %shard, "shard started");
        self.observe(RegionEvent::ShardStarted(shard));
        // Whatever started it, our coordinator hears of it: one it homed
        // elsewhere meanwhile is stopped here again (one host per shard).
        if let Some(coordinator) = self.registered_with.or(self.leader()) {
            self.to_coordinator(coordinator, &CoordinatorMsg::ShardStarted { shard });
        }
    }

    fn shard_stopped(&mut self, stopped: Stopped<E>) {
        let shard = stopped.shard;
        // The token stays while the shard's home is here: a shard stopped
        // at a tenure lapse restarts under the same allocation.
        self.hosted.remove(&shard);
        tracing::debug!(node = %self.node, %shard, "shard stopped");
        self.observe(RegionEvent::ShardStopped(shard));
        if let Some(Some(coordinator)) = self.handing_off.remove(&shard) {
            self.to_coordinator(coordinator, &CoordinatorMsg::ShardStopped { shard });
        }
        // What the shard had not delivered is older than what was held meanwhile.
        for d in stopped.undelivered {
            self.route(d);
        }
        let queue = self.held.remove(&shard);
        self.reroute(queue);
    }

    fn on_envelope(&mut self, envelope: Envelope) {
        let msg: RegionMsg = match decode("region message", &envelope.payload) {
            Ok(m) => m,
            Err(error) => {
                self.shared
                    .stats
                    .dropped_undeliverable
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(node = %self.node, from = %envelope.from, %error, "bad region message dropped");
                return;
            }
        };
        match msg {
            RegionMsg::Directive(directive) => self.on_directive(envelope.from, directive),
            // Only our leader's coordinator may make us register with it:
            // registering with another member would let it direct us.
            RegionMsg::RegisterRequest if Some(envelope.from) == self.leader() => {
                self.registered_with = None;
                self.register_with(envelope.from);
            }
            RegionMsg::RegisterRequest => {
                tracing::debug!(node = %self.node, from = %envelope.from, leader = ?self.leader(), "register request from a node that does not lead our view ignored");
            }
        }
    }

    /// Why a directive is refused, if it is: the sender rule first (only
    /// the coordinator we registered with, as the transport authenticates
    /// it, may direct us), then the epoch (I3): never the ceiling or above,
    /// never below one obeyed, and, but for a `RegisterAck`, exactly the
    /// epoch of the last acknowledgement, so no other directive raises the
    /// floor.
    fn refusal(&self, from: NodeId, directive: &Directive) -> Option<Refusal> {
        let epoch = directive.epoch();
        let ack = matches!(directive, Directive::RegisterAck { .. });
        // We register only with our leader, so only it acknowledges.
        let sender = if ack {
            self.leader()
        } else {
            self.registered_with
        };
        if sender != Some(from) {
            Some(Refusal::Foreign)
        } else if !epoch.is_plausible() {
            Some(Refusal::Absurd)
        } else if epoch < self.max_epoch {
            Some(Refusal::Stale)
        } else if !ack && epoch > self.max_epoch {
            Some(Refusal::Unregistered)
        } else {
            None
        }
    }

    fn on_directive(&mut self, from: NodeId, directive: Directive) {
        let epoch = directive.epoch();
        if let Some(why) = self.refusal(from, &directive) {
            let stats = &self.shared.stats;
            stats.refused_directives.fetch_add(1, Ordering::Relaxed);
            if why == Refusal::Foreign {
                stats.refused_foreign.fetch_add(1, Ordering::Relaxed);
                // Routine while views disagree; a flood is what the counter shows.
                tracing::debug!(node = %self.node, %from, registered_with = ?self.registered_with, kind = directive.kind(), %epoch, %why, "directive refused");
            } else {
                tracing::warn!(node = %self.node, %from, kind = directive.kind(), %epoch, max_epoch = %self.max_epoch, %why, "directive refused");
            }
            self.observe(RegionEvent::DirectiveRefused {
                from,
                kind: directive.kind(),
                epoch,
                max_epoch: self.max_epoch,
            });
            let ours = Some(from) == self.registered_with;
            if ours && why != Refusal::Absurd && !self.reregistering {
                // Our own coordinator is behind us, or began a new term:
                // register again (now, then on every retry tick until it
                // answers) so it learns the epoch we obeyed (and, without a
                // lease, moves its term above it), or we learn its new one.
                self.reregistering = true;
                self.register_with(from);
            }
            return;
        }
        if let Directive::RegisterAck { .. } = directive {
            self.registered_with = Some(from);
            self.acked_by = Some(from);
            self.reregistering = false;
        }
        self.max_epoch = epoch;
        self.shared.max_epoch.store(epoch.0, Ordering::Relaxed);
        self.observe(RegionEvent::DirectiveObeyed {
            from,
            kind: directive.kind(),
            epoch,
            shard: directive.shard(),
        });
        match directive {
            Directive::TenureGranted { seq, .. } => self.granted(seq),
            Directive::RegisterAck { .. } => {
                // Homes here that nothing runs are hearsay from before this
                // registration; ask again rather than start them.
                let node = self.node;
                let stale: Vec<ShardId> = (self.locations.iter())
                    .filter(|(shard, home)| **home == node && !self.hosted.contains(shard))
                    .map(|(shard, _)| *shard)
                    .collect();
                for shard in stale {
                    self.forget_home(shard);
                }
                self.renew();
                let waiting: Vec<ShardId> = self.pending.keys().copied().collect();
                for shard in waiting {
                    self.request_home(shard);
                }
            }
            Directive::ShardHome {
                shard,
                region,
                allocation,
                ..
            } => {
                self.set_home(shard, region);
                if region != self.node {
                    self.tokens.remove(&shard);
                } else if !self.hosted.contains(&shard) {
                    self.tokens
                        .insert(shard, FencingToken { epoch, allocation });
                    if !self.may_host() {
                        // Its messages wait for the grant (I5).
                        return self.renew();
                    }
                    self.start_shard(shard);
                }
                self.flush(shard);
            }
            Directive::HostShard {
                shard, allocation, ..
            } => {
                if !self.hosted.contains(&shard) {
                    self.tokens
                        .insert(shard, FencingToken { epoch, allocation });
                    if !self.may_host() {
                        // Not acknowledged: the coordinator asks again, and
                        // by then the grant has come (I5).
                        self.set_home(shard, self.node);
                        return self.renew();
                    }
                    self.start_shard(shard);
                }
                self.to_coordinator(from, &CoordinatorMsg::ShardStarted { shard });
                self.flush(shard);
            }
            Directive::BeginHandOff { shard, .. } => {
                if !self.hosted.contains(&shard) {
                    // Withdraws the direct route too: handles send nothing
                    // more to the old home once this is acknowledged.
                    self.forget_home(shard);
                }
                self.to_coordinator(from, &CoordinatorMsg::BeginHandOffAck { shard });
            }
            Directive::HandOff { shard, .. } => {
                self.forget_home(shard);
                self.tokens.remove(&shard);
                self.shared.routes_mut().remove(shard);
                match self.senders.remove(&shard) {
                    Some(sender) => {
                        self.handing_off.insert(shard, Some(from));
                        // If the shard already stopped on its own, the Stopped
                        // notice is on its way and answers the coordinator.
                        let _ = sender.send_over_capacity(ShardCmd::HandOff);
                    }
                    None if self.handing_off.contains_key(&shard) => {
                        self.handing_off.insert(shard, Some(from));
                    }
                    None => self.to_coordinator(from, &CoordinatorMsg::ShardStopped { shard }),
                }
            }
        }
    }
}
