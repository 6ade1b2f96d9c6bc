//! The shard region: one per entity type per node; routes every message to
//! the one place its entity lives.
//!
//! Routing a message is a map read from the caller's task (the hot path):
//! to a shard hosted on this node, a channel send; to a shard on another
//! node, the message encoded straight into the frame for that node. Messages
//! arriving from other nodes take the same path from the connection's task.
//! Everything else (unknown homes, handoffs, directives) goes through the
//! region task.

mod actor;
mod delivery;
mod inbox;
mod receive;
mod recycle;
mod routes;
mod shard;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use cluster::{ClusterView, Envelope, NodeId, PeerLine, SendError, Transport};
use tokio::sync::{mpsc, oneshot};

use crate::protocol::{Epoch, TypeChannels, encode_deliver};
use crate::{Entity, EntityId, MessageExtractor, ShardId, TypeName};

use delivery::{Delivery, ReplyLink, ReplyTo};
use routes::{Route, Routes};
use shard::ShardCmd;

/// Tunables of a region. Defaults: the table in `docs/architecture.md`.
#[derive(Debug, Clone)]
pub struct RegionSettings {
    /// Number of shards of the type; must be the same on every node (default 64).
    pub num_shards: u32,
    /// How often unanswered `GetShardHome` and `Register` are retried (default 2 s).
    pub retry_interval: Duration,
    /// Messages buffered for shards whose home is unknown (default 100 000).
    pub buffer_size: usize,
    /// Idle entities are stopped after this long (default 120 s).
    pub passivate_after: Duration,
    /// How long `ask` waits for a reply (default 5 s).
    pub ask_timeout: Duration,
    /// Capacity of each hosted shard's inbox, in messages (default 100 000).
    pub shard_inbox: usize,
}

impl Default for RegionSettings {
    fn default() -> Self {
        Self {
            num_shards: 64,
            retry_interval: Duration::from_secs(2),
            buffer_size: 100_000,
            passivate_after: Duration::from_secs(120),
            ask_timeout: Duration::from_secs(5),
            shard_inbox: 100_000,
        }
    }
}

/// Why a message was not delivered or an ask not answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ShardingError {
    /// The region's buffer is full; the message was dropped and counted.
    #[error("region buffer full ({capacity} messages); message dropped")]
    BufferFull {
        /// The buffer capacity.
        capacity: usize,
    },
    /// No reply within the ask timeout.
    #[error("no reply from entity `{entity}` within {after:?}")]
    AskTimeout {
        /// The entity asked.
        entity: EntityId,
        /// The timeout.
        after: Duration,
    },
    /// The message or reply could not be encoded or decoded.
    #[error("codec: {0}")]
    Codec(String),
    /// The message could not be delivered (forwarding loop, dead peer...).
    #[error("undeliverable: {0}")]
    Undeliverable(String),
    /// The region has stopped.
    #[error("region stopped")]
    RegionStopped,
    /// A remote region reported an error.
    #[error("remote: {0}")]
    Remote(String),
}

/// Counters of one region; every drop is counted here (and logged).
#[derive(Debug, Default)]
pub struct RegionStats {
    delivered_local: AtomicU64,
    forwarded: AtomicU64,
    buffered: AtomicUsize,
    dropped_buffer_full: AtomicU64,
    dropped_undeliverable: AtomicU64,
    refused_directives: AtomicU64,
    refused_foreign: AtomicU64,
    entities_started: AtomicU64,
    entities_passivated: AtomicU64,
}

/// A snapshot of [`RegionStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RegionStatsSnapshot {
    /// Messages a local shard took from its inbox (counted by the shard, a
    /// batch at a time; one returned at a handoff counts again where it lands).
    pub delivered_local: u64,
    /// Messages forwarded to another node.
    pub forwarded: u64,
    /// Messages waiting for their shard's home right now.
    pub buffered: usize,
    /// Messages dropped because the buffer was full.
    pub dropped_buffer_full: u64,
    /// Messages dropped for other reasons (undecodable, forwarding loop, send failure).
    pub dropped_undeliverable: u64,
    /// Directives refused, for any reason: a stale, absurd or unregistered
    /// epoch (I3), or a sender that is not this region's coordinator.
    pub refused_directives: u64,
    /// Of those, the directives from a node other than the coordinator this
    /// region registered with (a member speaking for a coordinator it is
    /// not, or one whose view disagrees with ours for a moment).
    pub refused_foreign_directives: u64,
    /// Entity incarnations started.
    pub entities_started: u64,
    /// Entities stopped for being idle.
    pub entities_passivated: u64,
}

impl RegionStats {
    fn snapshot(&self) -> RegionStatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        RegionStatsSnapshot {
            delivered_local: get(&self.delivered_local),
            forwarded: get(&self.forwarded),
            buffered: self.buffered.load(Ordering::Relaxed),
            dropped_buffer_full: get(&self.dropped_buffer_full),
            dropped_undeliverable: get(&self.dropped_undeliverable),
            refused_directives: get(&self.refused_directives),
            refused_foreign_directives: get(&self.refused_foreign),
            entities_started: get(&self.entities_started),
            entities_passivated: get(&self.entities_passivated),
        }
    }

    fn delivered_local(&self, messages: u64) {
        if messages > 0 {
            self.delivered_local.fetch_add(messages, Ordering::Relaxed);
        }
    }

    fn entity_started(&self) {
        self.entities_started.fetch_add(1, Ordering::Relaxed);
    }

    fn entity_passivated(&self) {
        self.entities_passivated.fetch_add(1, Ordering::Relaxed);
    }
}

/// What a region observed, for probes and histories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegionEvent {
    /// A directive passed the epoch check and was carried out.
    DirectiveObeyed {
        /// From which coordinator node.
        from: NodeId,
        /// `HostShard`, `HandOff`...
        kind: &'static str,
        /// Its epoch.
        epoch: Epoch,
        /// Its shard, if any.
        shard: Option<ShardId>,
    },
    /// A directive was refused: its epoch is below one already obeyed, at or
    /// above the ceiling, or not the registered one (I3), or its sender is
    /// not the coordinator this region registered with.
    DirectiveRefused {
        /// From which coordinator node.
        from: NodeId,
        /// `HostShard`, `HandOff`...
        kind: &'static str,
        /// Its epoch.
        epoch: Epoch,
        /// The highest epoch obeyed so far.
        max_epoch: Epoch,
    },
    /// This node started hosting a shard.
    ShardStarted(ShardId),
    /// This node stopped hosting a shard.
    ShardStopped(ShardId),
}

/// Receives region events; must be cheap, it runs on the region task.
pub type RegionObserver = Arc<dyn Fn(&TypeName, NodeId, &RegionEvent) + Send + Sync>;

/// Everything needed to start a region.
pub struct RegionConfig<E: Entity> {
    /// The entity type.
    pub type_name: TypeName,
    /// Maps messages to entities and shards.
    pub extractor: Arc<dyn MessageExtractor<E::Message>>,
    /// Builds an entity for an id.
    pub factory: Arc<dyn Fn(&EntityId) -> E + Send + Sync>,
    /// Tunables.
    pub settings: RegionSettings,
    /// Optional observer of directives and shard moves (histories, metrics).
    pub observer: Option<RegionObserver>,
    /// Shard tenure (with a lease): the region hosts shards only while the
    /// active coordinator's grant is valid. `None`: no tenure (I6).
    pub tenure: Option<crate::TenureSettings>,
    /// With tenure: how the region suspends its coordinator's lease tenure
    /// to bridge its own when that coordinator stops answering. `None`: no
    /// bridge (the tenure lapses as granted).
    pub suspender: Option<crate::TenureSuspender>,
}

pub(crate) enum RegionCmd<E: Entity> {
    Route(Delivery<E>),
    Shutdown(oneshot::Sender<()>),
    Stop,
}

/// Who waits for the reply to an ask sent to another node.
type Asker<E> = oneshot::Sender<Result<<E as Entity>::Reply, ShardingError>>;

struct Shared<E: Entity> {
    type_name: TypeName,
    node: NodeId,
    num_shards: u32,
    extractor: Arc<dyn MessageExtractor<E::Message>>,
    /// Read on every send.
    routes: RwLock<Routes<E>>,
    commands: mpsc::Sender<RegionCmd<E>>,
    settings: RegionSettings,
    stats: Arc<RegionStats>,
    max_epoch: AtomicU64,
    /// Whether entities may handle messages: false from the instant the
    /// shard tenure lapses until it is granted again (I5). An atomic flag,
    /// so that delivery never reads a clock.
    hosting: Arc<AtomicBool>,
    /// Per shard (modulo the array length): messages from handles (and
    /// from other nodes) still inside the region task. While non-zero,
    /// nothing takes the direct route for that shard, so one sender's
    /// messages never overtake each other on the two paths.
    via_region: Box<[AtomicU64]>,
    transport: Arc<dyn Transport>,
    channels: TypeChannels,
    /// How replies to asks from other nodes go back.
    link: Arc<ReplyLink>,
    /// Asks sent to other nodes, by request number.
    asks: Mutex<HashMap<u64, Asker<E>>>,
    next_request: AtomicU64,
    /// Reused space for grouping received messages per shard.
    staging: receive::StagingPool,
}

impl<E: Entity> Shared<E> {
    fn via_region(&self, shard: ShardId) -> &AtomicU64 {
        let i = shard.0 as usize % self.via_region.len();
        &self.via_region[i]
    }

    fn routes(&self) -> RwLockReadGuard<'_, Routes<E>> {
        self.routes.read().unwrap_or_else(|e| e.into_inner())
    }

    fn routes_mut(&self) -> RwLockWriteGuard<'_, Routes<E>> {
        self.routes.write().unwrap_or_else(|e| e.into_inner())
    }

    fn asks(&self) -> MutexGuard<'_, HashMap<u64, Asker<E>>> {
        self.asks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The hot path: straight to the shard's inbox or its node when the
    /// route is settled, else through the region task. A refused delivery
    /// is counted, and its asker (here or remote) told why.
    fn route(&self, mut delivery: Delivery<E>) -> Result<(), ShardingError> {
        let via_region = self.via_region(delivery.shard);
        if via_region.load(Ordering::Acquire) == 0 {
            let routes = self.routes();
            match routes.get(delivery.shard) {
                // Sent under the read lock: no sender clone per message.
                Some(Route::Local(shard)) => match shard.try_send(ShardCmd::Deliver(delivery)) {
                    Ok(()) => return Ok(()),
                    Err(inbox::TrySendError::Full(ShardCmd::Deliver(d))) => {
                        return Err(self.full(d, self.settings.shard_inbox));
                    }
                    // The shard is stopping; let the region task reroute.
                    Err(inbox::TrySendError::Closed(ShardCmd::Deliver(d))) => delivery = d,
                    Err(_) => return Ok(()),
                },
                // Only first hops: a message forwarded here for a shard we
                // think is elsewhere goes to the region task, which asks the
                // coordinator rather than bounce it on. Sent under the read
                // lock: once the region task has removed the route (before it
                // acknowledges a handoff), nothing more goes to the old home.
                Some(Route::Remote(home, line)) if delivery.hops == 0 => {
                    let home = *home;
                    let sent = self.send_to(home, line.as_ref(), delivery);
                    drop(routes);
                    return self.count_forward(home, sent);
                }
                _ => {}
            }
        }
        let capacity = self.settings.buffer_size;
        if self.stats.buffered.load(Ordering::Relaxed) >= capacity {
            return Err(self.full(delivery, capacity));
        }
        delivery.counted = true;
        via_region.fetch_add(1, Ordering::AcqRel);
        let (error, d) = match self.commands.try_send(RegionCmd::Route(delivery)) {
            Ok(()) => return Ok(()),
            Err(mpsc::error::TrySendError::Full(RegionCmd::Route(d))) => {
                via_region.fetch_sub(1, Ordering::AcqRel);
                return Err(self.full(d, capacity));
            }
            Err(mpsc::error::TrySendError::Closed(RegionCmd::Route(d))) => {
                (ShardingError::RegionStopped, d)
            }
            Err(_) => return Ok(()), // only deliveries are sent here
        };
        via_region.fetch_sub(1, Ordering::AcqRel);
        d.fail(error.clone());
        Err(error)
    }

    fn full(&self, d: Delivery<E>, capacity: usize) -> ShardingError {
        self.stats
            .dropped_buffer_full
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(type_name = %self.type_name, capacity, "buffer full, message dropped");
        let error = ShardingError::BufferFull { capacity };
        d.fail(error.clone());
        error
    }

    /// Encodes `d` straight into a frame for `home`. On failure an ask
    /// from here is forgotten and told why; the caller counts.
    fn send_to(
        &self,
        home: NodeId,
        line: Option<&PeerLine>,
        d: Delivery<E>,
    ) -> Result<(), ShardingError> {
        let Delivery {
            shard,
            entity,
            message,
            reply,
            hops,
            ..
        } = d;
        let (reply_to, asked_here) = match reply {
            ReplyTo::Nobody => (None, None),
            ReplyTo::Local(tx) => {
                let request = self.next_request.fetch_add(1, Ordering::Relaxed);
                self.asks().insert(request, tx);
                (Some((self.node, request)), Some(request))
            }
            ReplyTo::Remote {
                origin, request, ..
            } => (Some((origin, request)), None),
        };
        let hops = hops.saturating_add(1);
        let mut write = |buf: &mut bytes::BytesMut| {
            encode_deliver(buf, shard, &entity, reply_to, hops, &message)
        };
        // The direct line first; any refusal goes through the transport,
        // which finds the current queue and counts what it refuses.
        let direct = line.map(|line| line.send_with(self.channels.data, &mut write));
        let sent = match direct {
            Some(Ok(())) => Ok(()),
            _ => self
                .transport
                .send_with(home, self.channels.data, &mut write),
        };
        sent.map_err(|error| {
            let error = match error {
                SendError::Encode(e) => ShardingError::Codec(e.to_string()),
                e => ShardingError::Undeliverable(e.to_string()),
            };
            if let Some(tx) = asked_here.and_then(|r| self.asks().remove(&r)) {
                let _ = tx.send(Err(error.clone()));
            }
            error
        })
    }

    /// Counts a forward's outcome.
    fn count_forward(
        &self,
        home: NodeId,
        sent: Result<(), ShardingError>,
    ) -> Result<(), ShardingError> {
        match &sent {
            Ok(()) => self.stats.forwarded.fetch_add(1, Ordering::Relaxed),
            Err(error) => {
                tracing::warn!(node = %self.node, %home, %error, "forward failed, message dropped");
                self.stats
                    .dropped_undeliverable
                    .fetch_add(1, Ordering::Relaxed)
            }
        };
        sent
    }
}

/// The handle users send messages through; cheap to clone.
pub struct ShardRegion<E: Entity> {
    shared: Arc<Shared<E>>,
}

impl<E: Entity> Clone for ShardRegion<E> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<E: Entity> ShardRegion<E> {
    /// Starts the region of `config.type_name` on the node behind `transport`.
    pub fn start(
        config: RegionConfig<E>,
        transport: Arc<dyn Transport>,
        view: ClusterView,
    ) -> Self {
        let node = transport.local_node();
        let channels = TypeChannels::of(&config.type_name);
        let (commands, commands_rx) = mpsc::channel(config.settings.buffer_size.max(1));
        let stats = Arc::new(RegionStats::default());
        let shared = Arc::new(Shared {
            type_name: config.type_name.clone(),
            node,
            num_shards: config.settings.num_shards.max(1),
            extractor: config.extractor,
            routes: RwLock::new(Routes::new(config.settings.num_shards.max(1))),
            commands,
            settings: config.settings.clone(),
            stats: Arc::clone(&stats),
            max_epoch: AtomicU64::new(0),
            hosting: Arc::new(AtomicBool::new(true)),
            via_region: (0..config.settings.num_shards.clamp(1, 65_536))
                .map(|_| AtomicU64::new(0))
                .collect(),
            transport: Arc::clone(&transport),
            channels,
            link: Arc::new(ReplyLink {
                transport: Arc::clone(&transport),
                channel: channels.data,
            }),
            asks: Mutex::new(HashMap::new()),
            next_request: AtomicU64::new(0),
            staging: receive::StagingPool::default(),
        });
        // Weak: the transport outlives a stopped region.
        let weak = Arc::downgrade(&shared);
        transport.subscribe_handler(
            channels.data,
            Arc::new(move |batch: &mut Vec<Envelope>| match weak.upgrade() {
                Some(shared) => shared.on_data(batch),
                None => batch.clear(),
            }),
        );
        actor::spawn(actor::Parts {
            shared: Arc::clone(&shared),
            factory: config.factory,
            transport,
            view,
            channels,
            commands: commands_rx,
            observer: config.observer,
            tenure: config.tenure,
            suspender: config.suspender,
        });
        Self { shared }
    }

    /// Sends `message` to its entity: at most once, never blocking. An error
    /// means it was not accepted (and was counted).
    ///
    /// Messages from one sender to one entity arrive in the order sent,
    /// including across a handoff of their shard.
    pub fn tell(&self, message: E::Message) -> Result<(), ShardingError> {
        let delivery = self.delivery(message, ReplyTo::Nobody);
        self.shared.route(delivery)
    }

    /// Sends `message` and waits for the entity's reply, up to the ask timeout.
    pub async fn ask(&self, message: E::Message) -> Result<E::Reply, ShardingError> {
        let (tx, mut rx) = oneshot::channel();
        let delivery = self.delivery(message, ReplyTo::Local(tx));
        let entity = delivery.entity.clone();
        self.shared.route(delivery)?;
        let after = self.shared.settings.ask_timeout;
        // Most replies come within one turn of the scheduler: give the shard
        // that turn before arming a timer (a clock read and a timer entry
        // per ask otherwise). The timeout still bounds the wait.
        tokio::task::yield_now().await;
        let rx = match rx.try_recv() {
            Ok(result) => return result,
            Err(oneshot::error::TryRecvError::Closed) => {
                return Err(ShardingError::Undeliverable(format!(
                    "message to `{entity}` was dropped"
                )));
            }
            Err(oneshot::error::TryRecvError::Empty) => rx,
        };
        match tokio::time::timeout(after, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ShardingError::Undeliverable(format!(
                "message to `{entity}` was dropped"
            ))),
            Err(_) => Err(ShardingError::AskTimeout { entity, after }),
        }
    }

    /// The shards hosted on this node now.
    pub fn hosted_shards(&self) -> Vec<ShardId> {
        let mut shards: Vec<_> = (self.shared.routes().iter())
            .filter(|(_, route)| matches!(route, Route::Local(_)))
            .map(|(shard, _)| shard)
            .collect();
        shards.sort();
        shards
    }

    /// The shard of `entity`.
    pub fn shard_of(&self, entity: &EntityId) -> ShardId {
        self.shared
            .extractor
            .shard_id(entity, self.shared.num_shards)
    }

    /// The highest coordinator epoch this region has obeyed.
    pub fn max_epoch(&self) -> Epoch {
        Epoch(self.shared.max_epoch.load(Ordering::Relaxed))
    }

    /// Counters.
    pub fn stats(&self) -> RegionStatsSnapshot {
        self.shared.stats.snapshot()
    }

    /// The entity type.
    pub fn type_name(&self) -> &TypeName {
        &self.shared.type_name
    }

    /// This node.
    pub fn node(&self) -> NodeId {
        self.shared.node
    }

    /// Hands this node's shards off through the coordinator, then stops the
    /// region. Gives up waiting after `timeout` (the shards then stop here
    /// and are re-allocated when the node leaves).
    pub async fn shutdown(&self, timeout: Duration) {
        let (done, wait) = oneshot::channel();
        if self
            .shared
            .commands
            .send(RegionCmd::Shutdown(done))
            .await
            .is_ok()
        {
            let _ = tokio::time::timeout(timeout, wait).await;
        }
    }

    /// Stops the region at once, without handing shards off (as a crash
    /// would): its entities stop and buffered messages fail.
    pub fn stop(&self) {
        if self.shared.commands.try_send(RegionCmd::Stop).is_err() {
            tracing::warn!(type_name = %self.shared.type_name, "region stop not delivered (inbox full or already stopped)");
        }
    }

    fn delivery(&self, message: E::Message, reply: ReplyTo<E>) -> Delivery<E> {
        let entity = self.shared.extractor.entity_id(&message);
        let shard = self
            .shared
            .extractor
            .shard_id(&entity, self.shared.num_shards);
        Delivery {
            shard,
            entity,
            message,
            reply,
            hops: 0,
            counted: false,
            rehomed: false,
        }
    }
}
