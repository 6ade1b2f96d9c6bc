//! A shard: the entities of one shard id on this node.
//!
//! Single writer per entity is kept here: an entity is restarted only after
//! its previous incarnation has fully stopped, and messages that arrive while
//! it stops wait in a buffer.
//!
//! Passivation is a sweep, not a timer per entity: the shard counts ticks of
//! half the idle timeout and stops entities that saw no message for three
//! ticks (idle between 1x and 1.5x the timeout). An idle entity then costs a
//! task, a mailbox and a map entry, and delivery reads no clock.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, DefaultHasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;

use super::RegionStats;
use super::delivery::Delivery;
use crate::entity::EntityContext;
use crate::{Entity, EntityId, FencingToken, ShardId};

/// The shared entity constructor.
pub(crate) type EntityFactory<E> = Arc<dyn Fn(&EntityId) -> E + Send + Sync>;

/// Ticks without a message after which an entity is passivated.
const IDLE_TICKS: u64 = 3;

/// Commands from the region and its handles.
pub(crate) enum ShardCmd<E: Entity> {
    Deliver(Delivery<E>),
    /// Stop every entity, then return undelivered messages to the region.
    HandOff,
}

/// An entity task reports that it has stopped (unbounded: it never blocks).
struct EntityStopped<E: Entity> {
    entity: EntityId,
    /// Messages it did not handle because the shard tenure lapsed (I5).
    unhandled: Vec<Delivery<E>>,
}

enum Slot<E: Entity> {
    Running {
        /// Boxed: a mailbox allocates its slots in blocks of 32, and an idle
        /// entity's empty block is most of its memory.
        mailbox: mpsc::UnboundedSender<Box<Delivery<E>>>,
        /// The sweep tick of the last message.
        last_tick: u64,
    },
    /// Its mailbox is closed; it is draining and will report it stopped.
    Stopping { buffer: Vec<Delivery<E>> },
}

/// What a shard hands back to its region when it has stopped.
pub(crate) struct Stopped<E: Entity> {
    pub(crate) shard: ShardId,
    pub(crate) undelivered: Vec<Delivery<E>>,
}

pub(crate) struct Shard<E: Entity> {
    id: ShardId,
    /// The allocation this shard runs under: every entity's writes carry it.
    token: FencingToken,
    factory: EntityFactory<E>,
    /// Fixed-key hasher: iteration order (handoff, sweep) is the same on every run.
    entities: HashMap<EntityId, Slot<E>, BuildHasherDefault<DefaultHasher>>,
    tick: u64,
    stopped_tx: mpsc::UnboundedSender<EntityStopped<E>>,
    stats: Arc<RegionStats>,
    /// False once the region's shard tenure lapsed: entities handle nothing more.
    hosting: Arc<AtomicBool>,
    /// Messages entities gave back unhandled; returned to the region on stop.
    unhandled: Vec<Delivery<E>>,
}

impl<E: Entity> Shard<E> {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn spawn(
        id: ShardId,
        token: FencingToken,
        factory: EntityFactory<E>,
        hosting: Arc<AtomicBool>,
        passivate_after: Duration,
        inbox_capacity: usize,
        stats: Arc<RegionStats>,
        stopped: mpsc::UnboundedSender<Stopped<E>>,
    ) -> mpsc::Sender<ShardCmd<E>> {
        let (tx, rx) = mpsc::channel(inbox_capacity.max(1));
        let (stopped_tx, stopped_rx) = mpsc::unbounded_channel();
        let shard = Shard {
            id,
            token,
            factory,
            entities: HashMap::default(),
            tick: 0,
            stopped_tx,
            stats,
            hosting,
            unhandled: Vec::new(),
        };
        let sweep_every = (passivate_after / 2).max(Duration::from_millis(1));
        tokio::spawn(shard.run(rx, stopped_rx, stopped, sweep_every));
        tx
    }

    async fn run(
        mut self,
        mut inbox: mpsc::Receiver<ShardCmd<E>>,
        mut entity_stopped: mpsc::UnboundedReceiver<EntityStopped<E>>,
        stopped: mpsc::UnboundedSender<Stopped<E>>,
        sweep_every: Duration,
    ) {
        let mut sweep =
            tokio::time::interval_at(tokio::time::Instant::now() + sweep_every, sweep_every);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut handing_off = false;
        let mut undelivered = Vec::new();
        loop {
            if handing_off && self.entities.is_empty() {
                break;
            }
            tokio::select! {
                biased;
                Some(notice) = entity_stopped.recv() => {
                    self.unhandled.extend(notice.unhandled);
                    if let Some(buffer) = self.entity_stopped(&notice.entity, handing_off) {
                        undelivered.extend(buffer);
                    }
                }
                _ = sweep.tick(), if !handing_off => self.sweep(),
                cmd = inbox.recv(), if !handing_off => match cmd {
                    Some(ShardCmd::Deliver(d)) => self.deliver(d),
                    // Handed off, or the region dropped us: stop everything.
                    Some(ShardCmd::HandOff) | None => {
                        handing_off = true;
                        for slot in self.entities.values_mut() {
                            if let Slot::Running { .. } = slot {
                                *slot = Slot::Stopping { buffer: Vec::new() };
                            }
                        }
                        tracing::debug!(shard = %self.id, entities = self.entities.len(), "stopping all entities");
                    }
                },
            }
        }
        // Unhandled messages are older than anything buffered meanwhile.
        let mut undelivered: Vec<Delivery<E>> = std::mem::take(&mut self.unhandled)
            .into_iter()
            .chain(undelivered)
            .collect();
        // Whatever still sits in the inbox goes back to the region for rerouting.
        inbox.close();
        while let Ok(cmd) = inbox.try_recv() {
            if let ShardCmd::Deliver(d) = cmd {
                undelivered.push(d);
            }
        }
        tracing::debug!(shard = %self.id, returned = undelivered.len(), "shard stopped");
        let _ = stopped.send(Stopped {
            shard: self.id,
            undelivered,
        });
    }

    fn deliver(&mut self, delivery: Delivery<E>) {
        let tick = self.tick;
        match self.entities.get_mut(&delivery.entity) {
            Some(Slot::Running { mailbox, last_tick }) => {
                *last_tick = tick;
                if let Err(mpsc::error::SendError(d)) = mailbox.send(Box::new(delivery)) {
                    if !self.hosting.load(Ordering::Acquire) {
                        // The entity closed its mailbox at the lapse (I5).
                        self.unhandled.push(*d);
                        return;
                    }
                    // Unreachable otherwise while the slot is Running (the
                    // entity owns the receiver until it reports stopped),
                    // but never lose it.
                    self.entities.remove(&d.entity);
                    self.start(*d);
                }
            }
            Some(Slot::Stopping { buffer }) => buffer.push(delivery),
            None => self.start(delivery),
        }
    }

    fn start(&mut self, first: Delivery<E>) {
        let id = first.entity.clone();
        let (mailbox, rx) = mpsc::unbounded_channel();
        let entity = (self.factory)(&id);
        let _ = mailbox.send(Box::new(first));
        let context = EntityContext {
            id: id.clone(),
            shard: self.id,
            token: self.token,
        };
        tokio::spawn(run_entity(
            context,
            entity,
            rx,
            self.stopped_tx.clone(),
            Arc::clone(&self.hosting),
        ));
        self.stats.entity_started();
        self.entities.insert(
            id,
            Slot::Running {
                mailbox,
                last_tick: self.tick,
            },
        );
    }

    /// Stops entities idle for `IDLE_TICKS` ticks: dropping the mailbox
    /// sender lets each drain what it has and stop.
    fn sweep(&mut self) {
        self.tick += 1;
        let tick = self.tick;
        let mut passivated = 0;
        for slot in self.entities.values_mut() {
            if let Slot::Running { last_tick, .. } = slot {
                if tick - *last_tick >= IDLE_TICKS {
                    *slot = Slot::Stopping { buffer: Vec::new() };
                    passivated += 1;
                }
            }
        }
        for _ in 0..passivated {
            self.stats.entity_passivated();
        }
        if passivated > 0 {
            tracing::trace!(shard = %self.id, passivated, "idle entities passivated");
        }
    }

    /// Returns messages that must go back to the region (during handoff).
    fn entity_stopped(&mut self, entity: &EntityId, handing_off: bool) -> Option<Vec<Delivery<E>>> {
        let Some(Slot::Stopping { buffer }) = self.entities.remove(entity) else {
            return None;
        };
        if handing_off {
            return Some(buffer);
        }
        if !self.hosting.load(Ordering::Acquire) {
            // The tenure lapsed; the region's stop is on its way.
            self.unhandled.extend(buffer);
            return None;
        }
        // Messages arrived while it stopped: start a fresh incarnation for them.
        let mut buffer = buffer.into_iter();
        if let Some(first) = buffer.next() {
            self.start(first);
            for rest in buffer {
                self.deliver(rest);
            }
        }
        None
    }
}

async fn run_entity<E: Entity>(
    context: EntityContext,
    mut entity: E,
    mut mailbox: mpsc::UnboundedReceiver<Box<Delivery<E>>>,
    stopped: mpsc::UnboundedSender<EntityStopped<E>>,
    hosting: Arc<AtomicBool>,
) {
    entity.started_in(&context).await;
    let mut unhandled = Vec::new();
    while let Some(delivery) = mailbox.recv().await {
        // An atomic load, not a clock read: the region's lapse timer flips it.
        if !hosting.load(Ordering::Acquire) {
            // The shard tenure lapsed: hand this and the rest back (I5).
            unhandled.push(*delivery);
            mailbox.close();
            while let Ok(rest) = mailbox.try_recv() {
                unhandled.push(*rest);
            }
            break;
        }
        let Delivery { message, reply, .. } = *delivery;
        let answer = entity.handle(message).await;
        reply.send(Ok(answer));
    }
    entity.stopped().await;
    let _ = stopped.send(EntityStopped {
        entity: context.id,
        unhandled,
    });
}
