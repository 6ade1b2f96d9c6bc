//! A shard: the entities of one shard id on this node.
//!
//! Single writer per entity is kept here: an entity is restarted only after
//! its previous incarnation has fully stopped, and messages that arrive while
//! it stops wait in a buffer.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, DefaultHasher};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::RegionStats;
use super::delivery::Delivery;
use crate::{Entity, EntityId, ShardId};

/// The shared entity constructor.
pub(crate) type EntityFactory<E> = Arc<dyn Fn(&EntityId) -> E + Send + Sync>;

/// Commands from the region and its handles.
pub(crate) enum ShardCmd<E: Entity> {
    Deliver(Delivery<E>),
    /// Stop every entity, then return undelivered messages to the region.
    HandOff,
}

/// Entity lifecycle notices, unbounded so an entity never blocks on its shard.
enum Control {
    Idle { entity: EntityId, incarnation: u64 },
    Stopped { entity: EntityId, incarnation: u64 },
}

enum Slot<E: Entity> {
    Running {
        /// Boxed: a mailbox allocates its slots in blocks of 32, and an idle
        /// entity's empty block is most of its memory.
        mailbox: mpsc::UnboundedSender<Box<Delivery<E>>>,
        incarnation: u64,
    },
    /// Its mailbox is closed; it is draining and will report `Stopped`.
    Stopping { buffer: Vec<Delivery<E>> },
}

/// What a shard hands back to its region when it has stopped.
pub(crate) struct Stopped<E: Entity> {
    pub(crate) shard: ShardId,
    pub(crate) undelivered: Vec<Delivery<E>>,
}

pub(crate) struct Shard<E: Entity> {
    id: ShardId,
    factory: EntityFactory<E>,
    passivate_after: Duration,
    /// Fixed-key hasher: iteration order (handoff) is the same on every run.
    entities: HashMap<EntityId, Slot<E>, BuildHasherDefault<DefaultHasher>>,
    next_incarnation: u64,
    control_tx: mpsc::UnboundedSender<Control>,
    stats: Arc<RegionStats>,
}

impl<E: Entity> Shard<E> {
    pub(crate) fn spawn(
        id: ShardId,
        factory: EntityFactory<E>,
        passivate_after: Duration,
        inbox_capacity: usize,
        stats: Arc<RegionStats>,
        stopped: mpsc::UnboundedSender<Stopped<E>>,
    ) -> mpsc::Sender<ShardCmd<E>> {
        let (tx, rx) = mpsc::channel(inbox_capacity.max(1));
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let shard = Shard {
            id,
            factory,
            passivate_after,
            entities: HashMap::default(),
            next_incarnation: 0,
            control_tx,
            stats,
        };
        tokio::spawn(shard.run(rx, control_rx, stopped));
        tx
    }

    async fn run(
        mut self,
        mut inbox: mpsc::Receiver<ShardCmd<E>>,
        mut control: mpsc::UnboundedReceiver<Control>,
        stopped: mpsc::UnboundedSender<Stopped<E>>,
    ) {
        let mut handing_off = false;
        let mut undelivered = Vec::new();
        loop {
            if handing_off && self.entities.is_empty() {
                break;
            }
            tokio::select! {
                biased;
                Some(notice) = control.recv() => match notice {
                    Control::Idle { entity, incarnation } => self.passivate(entity, incarnation),
                    Control::Stopped { entity, incarnation } => {
                        if let Some(buffer) = self.entity_stopped(&entity, incarnation, handing_off) {
                            undelivered.extend(buffer);
                        }
                    }
                },
                cmd = inbox.recv(), if !handing_off => match cmd {
                    Some(ShardCmd::Deliver(d)) => self.deliver(d),
                    Some(ShardCmd::HandOff) => {
                        handing_off = true;
                        for slot in self.entities.values_mut() {
                            if let Slot::Running { .. } = slot {
                                *slot = Slot::Stopping { buffer: Vec::new() };
                            }
                        }
                        tracing::debug!(shard = %self.id, entities = self.entities.len(), "handing off");
                    }
                    // The region dropped us (it is stopping): stop everything.
                    None => {
                        handing_off = true;
                        for slot in self.entities.values_mut() {
                            if let Slot::Running { .. } = slot {
                                *slot = Slot::Stopping { buffer: Vec::new() };
                            }
                        }
                    }
                },
            }
        }
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
        match self.entities.get_mut(&delivery.entity) {
            Some(Slot::Running { mailbox, .. }) => {
                if let Err(mpsc::error::SendError(d)) = mailbox.send(Box::new(delivery)) {
                    // Unreachable while the slot is Running (the entity owns the
                    // receiver until Stopped), but never lose it: retry as new.
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
        let incarnation = self.next_incarnation;
        self.next_incarnation += 1;
        let entity = (self.factory)(&id);
        let _ = mailbox.send(Box::new(first));
        tokio::spawn(run_entity(
            id.clone(),
            entity,
            rx,
            self.control_tx.clone(),
            incarnation,
            self.passivate_after,
        ));
        self.stats.entity_started();
        self.entities.insert(
            id,
            Slot::Running {
                mailbox,
                incarnation,
            },
        );
    }

    fn passivate(&mut self, entity: EntityId, incarnation: u64) {
        if let Some(slot) = self.entities.get_mut(&entity) {
            if matches!(slot, Slot::Running { incarnation: i, .. } if *i == incarnation) {
                // Dropping the sender lets the entity drain and stop.
                *slot = Slot::Stopping { buffer: Vec::new() };
                self.stats.entity_passivated();
                tracing::trace!(shard = %self.id, %entity, "passivating idle entity");
            }
        }
    }

    /// Returns messages that must go back to the region (during handoff).
    fn entity_stopped(
        &mut self,
        entity: &EntityId,
        _incarnation: u64,
        handing_off: bool,
    ) -> Option<Vec<Delivery<E>>> {
        let Some(Slot::Stopping { buffer }) = self.entities.remove(entity) else {
            return None;
        };
        if handing_off {
            return Some(buffer);
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
    id: EntityId,
    mut entity: E,
    mut mailbox: mpsc::UnboundedReceiver<Box<Delivery<E>>>,
    control: mpsc::UnboundedSender<Control>,
    incarnation: u64,
    passivate_after: Duration,
) {
    entity.started(&id).await;
    let mut last_active = Instant::now();
    let idle = tokio::time::sleep(passivate_after);
    tokio::pin!(idle);
    let mut reported_idle = false;
    loop {
        tokio::select! {
            biased;
            next = mailbox.recv() => match next {
                Some(delivery) => {
                    let reply = entity.handle(delivery.message).await;
                    delivery.reply.send(Ok(reply));
                    last_active = Instant::now();
                }
                None => break,
            },
            () = &mut idle, if !reported_idle => {
                let due = last_active + passivate_after;
                if Instant::now() >= due {
                    reported_idle = true;
                    let _ = control.send(Control::Idle { entity: id.clone(), incarnation });
                } else {
                    idle.as_mut().reset(due);
                }
            }
        }
    }
    entity.stopped().await;
    let _ = control.send(Control::Stopped {
        entity: id,
        incarnation,
    });
}
