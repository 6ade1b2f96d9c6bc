//! A shard: the entities of one shard id on this node, driven by the shard's
//! own task.
//!
//! An entity is not a task: its state sits in the shard's map and the shard
//! polls its handlers itself, so a local message crosses one channel (caller
//! to shard) and an idle entity costs its struct and a map entry. At most one
//! handler per entity is in flight; messages for a busy entity wait in its
//! own queue, which allocates nothing until a second message comes while the
//! first is handled. Entities of one shard run concurrently: a handler that
//! awaits a timer or I/O only holds up its own entity.
//!
//! Single writer per entity is kept here: an entity is restarted only after
//! its previous incarnation's `stopped` has returned, and messages that
//! arrive meanwhile wait for the next incarnation.
//!
//! Passivation is a sweep, not a timer per entity: the shard counts ticks of
//! half the idle timeout and stops idle entities that saw no message for
//! three ticks (idle between 1x and 1.5x the timeout); delivery reads no clock.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use foldhash::fast::FixedState;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::mpsc;

use super::RegionStats;
use super::delivery::{Delivery, Encoded, ReplyLink};
use super::inbox::{self, Receiver, Sender};
use super::recycle::Running;
use crate::entity::EntityContext;
use crate::{Entity, EntityId, FencingToken, ShardId};

/// The shared entity constructor.
pub(crate) type EntityFactory<E> = Arc<dyn Fn(&EntityId) -> E + Send + Sync>;

/// Ticks without a message after which an entity is passivated.
const IDLE_TICKS: u64 = 3;

/// Commands taken from the inbox per wake-up, at most.
const INBOX_BATCH: usize = 64;

/// Handlers polled in a row (per trip through the loop) before the rest
/// goes to `work`.
const POLL_BUDGET: usize = 256;

/// Commands from the region and its handles.
pub(crate) enum ShardCmd<E: Entity> {
    Deliver(Delivery<E>),
    /// A message from another node, decoded here.
    Encoded(Encoded),
    /// Stop every entity, then return undelivered messages to the region.
    HandOff,
}

impl<E: Entity> ShardCmd<E> {
    /// How many messages this command carries.
    fn messages(&self) -> u64 {
        match self {
            ShardCmd::Deliver(_) | ShardCmd::Encoded(_) => 1,
            ShardCmd::HandOff => 0,
        }
    }

    /// Moves the message this command carries (decoded, if it came
    /// encoded) to the end of `out`.
    fn give_back(self, link: &Arc<ReplyLink>, stats: &RegionStats, out: &mut Vec<Delivery<E>>) {
        match self {
            ShardCmd::Deliver(d) => out.push(d),
            ShardCmd::Encoded(encoded) => out.extend(Delivery::decode(&encoded, link, stats)),
            ShardCmd::HandOff => {}
        }
    }
}

/// What one piece of an entity's work gives back to the shard.
enum Done<E> {
    /// A message was handled; the entity returns to its slot.
    Handled(EntityId, E),
    /// `stopped` returned: the incarnation is over.
    Stopped(EntityId),
}

/// A handler (or `started_in` and the first handler, or `stopped`) in flight.
type Work<E> = Pin<Box<dyn Future<Output = Done<E>> + Send>>;

/// Work not polled yet. A handler is kept as its inputs until then, so it
/// can be written into a reused slot (see `recycle`).
enum Fresh<E: Entity> {
    Handle(EntityId, E, Delivery<E>),
    Work(Work<E>),
}

/// Runs handlers in reused slots; a trait object, so that `Shard<E>` need
/// not name the handler's future type.
trait Handlers<E: Entity>: Send {
    /// Polls the handler of `delivery` once: done, or `None` while it waits
    /// (then `poll_done` gives it once it is done).
    fn start(&mut self, id: EntityId, entity: E, delivery: Delivery<E>) -> Option<Done<E>>;

    /// A waiting handler that is done.
    fn poll_done(&mut self, cx: &mut Context<'_>) -> Poll<Done<E>>;

    /// Handlers waiting.
    fn waiting(&self) -> usize;
}

/// `make` is `answer::<E>`: naming it here names its future type `F`.
struct Answers<M, F> {
    make: M,
    running: Running<F>,
}

impl<E, M, F> Handlers<E> for Answers<M, F>
where
    E: Entity,
    M: Fn(EntityId, E, Delivery<E>) -> F + Send,
    F: Future<Output = Done<E>> + Send + 'static,
{
    fn start(&mut self, id: EntityId, entity: E, delivery: Delivery<E>) -> Option<Done<E>> {
        self.running.start((self.make)(id, entity, delivery))
    }

    fn poll_done(&mut self, cx: &mut Context<'_>) -> Poll<Done<E>> {
        self.running.poll_done(cx)
    }

    fn waiting(&self) -> usize {
        self.running.waiting()
    }
}

struct Slot<E: Entity> {
    state: State<E>,
    /// The sweep tick of the last message.
    last_tick: u64,
}

/// Boxed queues keep a slot at the entity's size plus a word or two: most
/// slots are idle, and the map holds one per entity.
enum State<E: Entity> {
    /// No handler in flight: the user's struct and nothing else.
    Idle(E),
    /// A handler owns the entity; later messages wait here, in order
    /// (allocated on the first one).
    #[allow(clippy::box_collection)] // one word in every slot instead of four
    Busy(Option<Box<VecDeque<Delivery<E>>>>),
    /// Stopping after the messages in `queue` (already accepted by this
    /// incarnation); `buffer` waits for the next incarnation.
    Stopping(Box<Stopping<E>>),
}

struct Stopping<E: Entity> {
    queue: VecDeque<Delivery<E>>,
    buffer: Vec<Delivery<E>>,
}

impl<E: Entity> State<E> {
    fn stopping(queue: VecDeque<Delivery<E>>, buffer: Vec<Delivery<E>>) -> Self {
        State::Stopping(Box::new(Stopping { queue, buffer }))
    }
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
    /// Fixed-seed hasher: iteration order (handoff, sweep) is the same on
    /// every run; foldhash because hashing the id is on every message.
    entities: HashMap<EntityId, Slot<E>, FixedState>,
    work: FuturesUnordered<Work<E>>,
    /// Work not polled yet (see `submit`).
    fresh: Vec<Fresh<E>>,
    handlers: Box<dyn Handlers<E>>,
    /// Handlers this trip through the loop may still poll (`POLL_BUDGET`).
    budget: usize,
    tick: u64,
    stats: Arc<RegionStats>,
    /// Where replies to asks from other nodes go (for encoded messages).
    link: Arc<ReplyLink>,
    /// False once the region's shard tenure lapsed: entities handle nothing more.
    hosting: Arc<AtomicBool>,
    /// Messages not handled because the tenure lapsed; returned to the
    /// region on stop, before anything buffered later.
    unhandled: Vec<Delivery<E>>,
    handing_off: bool,
    /// During handoff: messages for the next incarnations, returned on stop.
    undelivered: Vec<Delivery<E>>,
    /// Taken from the inbox with the handoff, behind it: newer than
    /// anything the shard holds, older than what is still in the inbox.
    after_handoff: Vec<Delivery<E>>,
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
        link: Arc<ReplyLink>,
        stopped: mpsc::UnboundedSender<Stopped<E>>,
    ) -> Sender<ShardCmd<E>> {
        let (tx, rx) = inbox::inbox(inbox_capacity);
        let shard = Shard {
            id,
            token,
            factory,
            entities: HashMap::default(),
            work: FuturesUnordered::new(),
            fresh: Vec::new(),
            handlers: Box::new(Answers {
                make: answer::<E>,
                running: Running::new(),
            }),
            budget: POLL_BUDGET,
            tick: 0,
            stats,
            link,
            hosting,
            unhandled: Vec::new(),
            handing_off: false,
            undelivered: Vec::new(),
            after_handoff: Vec::new(),
        };
        let sweep_every = (passivate_after / 2).max(Duration::from_millis(1));
        tokio::spawn(shard.run(rx, stopped, sweep_every));
        tx
    }

    async fn run(
        mut self,
        mut inbox: Receiver<ShardCmd<E>>,
        stopped: mpsc::UnboundedSender<Stopped<E>>,
        sweep_every: Duration,
    ) {
        let mut sweep =
            tokio::time::interval_at(tokio::time::Instant::now() + sweep_every, sweep_every);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch = VecDeque::with_capacity(INBOX_BATCH);
        let mut took_batch = false;
        loop {
            if std::mem::take(&mut took_batch) && self.handlers.waiting() > 0 {
                // Handlers wait: let the runtime deliver their wake-ups (it
                // holds some until this task yields) before the next batch,
                // so new messages do not pile up behind them.
                tokio::task::yield_now().await;
            }
            self.budget = POLL_BUDGET;
            self.run_fresh();
            if self.handing_off && self.entities.is_empty() {
                break;
            }
            tokio::select! {
                biased;
                done = std::future::poll_fn(|cx| self.handlers.poll_done(cx)),
                    if self.handlers.waiting() > 0 => self.done(done),
                Some(done) = self.work.next(), if !self.work.is_empty() => self.done(done),
                _ = sweep.tick(), if !self.handing_off => self.sweep(),
                // Up to a batch per wake-up: one trip through the select
                // and one lock of the inbox for all of it.
                n = inbox.recv_many(&mut batch, INBOX_BATCH), if !self.handing_off => {
                    took_batch = true;
                    if n == 0 {
                        self.command(None);
                    }
                    let mut cmds = batch.drain(..);
                    let mut taken = 0;
                    for cmd in cmds.by_ref() {
                        taken += cmd.messages();
                        self.command(Some(cmd));
                        if self.handing_off {
                            break;
                        }
                    }
                    for cmd in cmds {
                        cmd.give_back(&self.link, &self.stats, &mut self.after_handoff);
                    }
                    // One count per batch, not an atomic add per send.
                    self.stats.delivered_local(taken);
                }
            }
        }
        // Unhandled messages are older than anything buffered meanwhile.
        let mut undelivered = std::mem::take(&mut self.unhandled);
        undelivered.append(&mut self.undelivered);
        undelivered.append(&mut self.after_handoff);
        // Whatever still sits in the inbox goes back to the region for rerouting.
        inbox.close();
        while let Some(cmd) = inbox.try_recv() {
            cmd.give_back(&self.link, &self.stats, &mut undelivered);
        }
        tracing::debug!(shard = %self.id, returned = undelivered.len(), "shard stopped");
        let _ = stopped.send(Stopped {
            shard: self.id,
            undelivered,
        });
    }

    #[inline(always)]
    fn command(&mut self, cmd: Option<ShardCmd<E>>) {
        match cmd {
            Some(ShardCmd::Deliver(d)) => self.deliver(d),
            Some(ShardCmd::Encoded(encoded)) => {
                // Not decodable: counted, logged and answered inside.
                if let Some(d) = Delivery::decode(&encoded, &self.link, &self.stats) {
                    self.deliver(d);
                }
            }
            // Handed off, or the region dropped us: stop everything.
            Some(ShardCmd::HandOff) | None => self.hand_off(),
        }
    }

    /// New work is polled once at once: most handlers finish without
    /// waiting. A handler that waits stays in its slot in `handlers`; other
    /// work that waits (starting, stopping) moves to `work`, where its next
    /// poll registers the waker that counts.
    fn submit(&mut self, fresh: Fresh<E>) {
        self.fresh.push(fresh);
    }

    fn run_fresh(&mut self) {
        let mut cx = Context::from_waker(Waker::noop());
        while let Some(fresh) = self.fresh.pop() {
            if self.budget == 0 {
                // A long queue of ready handlers: let `work` (which yields
                // to the runtime now and then) take the rest, so one busy
                // entity does not hold the thread.
                self.work.push(match fresh {
                    Fresh::Handle(id, entity, d) => Box::pin(answer(id, entity, d)),
                    Fresh::Work(work) => work,
                });
                continue;
            }
            self.budget -= 1;
            match fresh {
                Fresh::Handle(id, entity, d) => {
                    if let Some(done) = self.handlers.start(id, entity, d) {
                        self.done(done);
                    }
                }
                Fresh::Work(mut work) => match work.as_mut().poll(&mut cx) {
                    Poll::Ready(done) => self.done(done),
                    Poll::Pending => self.work.push(work),
                },
            }
        }
    }

    // Inlined, like `command`: on every message's path, and measured
    // (a local tell lost about 10 % when the compiler stopped inlining them).
    #[inline(always)]
    fn deliver(&mut self, delivery: Delivery<E>) {
        let tick = self.tick;
        let Some(slot) = self.entities.get_mut(&delivery.entity) else {
            self.start(delivery);
            return;
        };
        match &mut slot.state {
            State::Busy(queue) => {
                slot.last_tick = tick;
                queue.get_or_insert_default().push_back(delivery);
            }
            State::Stopping(s) => s.buffer.push(delivery),
            State::Idle(_) => {
                slot.last_tick = tick;
                let State::Idle(entity) = std::mem::replace(&mut slot.state, State::Busy(None))
                else {
                    unreachable!("matched Idle above");
                };
                if self.budget == 0 || !self.hosting.load(Ordering::Acquire) {
                    self.handle(entity, delivery);
                    return;
                }
                // The common case, polled here: a handler that finishes
                // puts its entity straight back, with no second lookup.
                self.budget -= 1;
                let id = delivery.entity.clone();
                match self.handlers.start(id, entity, delivery) {
                    Some(Done::Handled(_, entity)) => slot.state = State::Idle(entity),
                    Some(done) => self.done(done),
                    None => {} // waiting; `poll_done` brings it back
                }
            }
        }
    }

    /// Starts a fresh incarnation for `first`; while the tenure has lapsed,
    /// keeps the message for the region instead (I5).
    fn start(&mut self, first: Delivery<E>) {
        if !self.hosting.load(Ordering::Acquire) {
            self.unhandled.push(first);
            return;
        }
        let id = first.entity.clone();
        let mut entity = (self.factory)(&id);
        let context = EntityContext {
            id: id.clone(),
            shard: self.id,
            token: self.token,
        };
        self.stats.entity_started();
        self.entities.insert(
            id,
            Slot {
                state: State::Busy(None),
                last_tick: self.tick,
            },
        );
        self.submit(Fresh::Work(Box::pin(async move {
            entity.started_in(&context).await;
            answer(context.id, entity, first).await
        })));
    }

    /// Runs `delivery` on `entity` (whose slot is Busy or Stopping), unless
    /// the tenure lapsed: then this and every queued message go back to the
    /// region and the entity stops (I5).
    fn handle(&mut self, entity: E, delivery: Delivery<E>) {
        // An atomic load, not a clock read: the region's lapse timer flips it.
        if self.hosting.load(Ordering::Acquire) {
            let id = delivery.entity.clone();
            self.submit(Fresh::Handle(id, entity, delivery));
            return;
        }
        let id = delivery.entity.clone();
        self.unhandled.push(delivery);
        if let Some(slot) = self.entities.get_mut(&id) {
            let buffer = match std::mem::replace(&mut slot.state, State::Busy(None)) {
                State::Busy(queue) => {
                    self.unhandled.extend(queue.into_iter().flat_map(|q| *q));
                    Vec::new()
                }
                State::Stopping(s) => {
                    self.unhandled.extend(s.queue);
                    s.buffer
                }
                State::Idle(_) => Vec::new(),
            };
            slot.state = State::stopping(VecDeque::new(), buffer);
        }
        self.stop(id, entity);
    }

    fn stop(&mut self, id: EntityId, mut entity: E) {
        self.submit(Fresh::Work(Box::pin(async move {
            entity.stopped().await;
            Done::Stopped(id)
        })));
    }

    fn done(&mut self, done: Done<E>) {
        match done {
            Done::Handled(id, entity) => {
                let Some(slot) = self.entities.get_mut(&id) else {
                    return; // unreachable: a slot lives until its entity stopped
                };
                let (next, stopping) = match &mut slot.state {
                    State::Busy(queue) => (queue.as_mut().and_then(|q| q.pop_front()), false),
                    State::Stopping(s) => (s.queue.pop_front(), true),
                    State::Idle(_) => (None, false), // unreachable: the handler owned it
                };
                match next {
                    Some(next) => self.handle(entity, next),
                    None if stopping => self.stop(id, entity),
                    None => slot.state = State::Idle(entity),
                }
            }
            Done::Stopped(id) => {
                let Some(Slot {
                    state: State::Stopping(stopping),
                    ..
                }) = self.entities.remove(&id)
                else {
                    return;
                };
                let buffer = stopping.buffer;
                if self.handing_off {
                    self.undelivered.extend(buffer);
                } else if !self.hosting.load(Ordering::Acquire) {
                    // The tenure lapsed; the region's stop is on its way.
                    self.unhandled.extend(buffer);
                } else {
                    // Messages arrived while it stopped: a fresh incarnation.
                    for d in buffer {
                        self.deliver(d);
                    }
                }
            }
        }
    }

    /// Stops every entity; each handles what it already accepted first.
    fn hand_off(&mut self) {
        self.handing_off = true;
        let ids: Vec<EntityId> = self.entities.keys().cloned().collect();
        tracing::debug!(shard = %self.id, entities = ids.len(), "stopping all entities");
        for id in ids {
            self.begin_stop(id);
        }
    }

    /// Stops idle entities that saw no message for `IDLE_TICKS` ticks.
    fn sweep(&mut self) {
        self.tick += 1;
        let tick = self.tick;
        let idle: Vec<EntityId> = self
            .entities
            .iter()
            .filter(|(_, s)| matches!(s.state, State::Idle(_)) && tick - s.last_tick >= IDLE_TICKS)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &idle {
            self.begin_stop(id.clone());
            self.stats.entity_passivated();
        }
        if !idle.is_empty() {
            tracing::trace!(shard = %self.id, passivated = idle.len(), "idle entities passivated");
        }
    }

    /// Idle: `stopped` starts now. Busy: after its queue.
    fn begin_stop(&mut self, id: EntityId) {
        let Some(slot) = self.entities.get_mut(&id) else {
            return;
        };
        match std::mem::replace(&mut slot.state, State::Busy(None)) {
            State::Idle(entity) => {
                slot.state = State::stopping(VecDeque::new(), Vec::new());
                self.stop(id, entity);
            }
            State::Busy(queue) => {
                slot.state = State::stopping(queue.map(|q| *q).unwrap_or_default(), Vec::new());
            }
            already @ State::Stopping(_) => slot.state = already,
        }
    }
}

/// Handles one message and answers whoever asked.
async fn answer<E: Entity>(id: EntityId, mut entity: E, delivery: Delivery<E>) -> Done<E> {
    let Delivery { message, reply, .. } = delivery;
    let answer = entity.handle(message).await;
    reply.send(Ok(answer));
    Done::Handled(id, entity)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Word(#[allow(dead_code)] u64);

    impl Entity for Word {
        type Message = ();
        type Reply = ();
        async fn handle(&mut self, _: ()) {}
    }

    #[test]
    fn an_idle_slot_is_the_entity_and_two_words() {
        // State: the entity or a pointer, plus the tag; then the tick.
        assert!(
            std::mem::size_of::<Slot<Word>>() <= 24,
            "{}",
            std::mem::size_of::<Slot<Word>>()
        );
    }

    /// An entity that records what it handled.
    struct Log(Arc<std::sync::Mutex<Vec<u32>>>);

    impl Entity for Log {
        type Message = u32;
        type Reply = ();
        async fn handle(&mut self, n: u32) {
            self.0.lock().unwrap_or_else(|e| e.into_inner()).push(n);
        }
    }

    fn delivery(n: u32) -> Delivery<Log> {
        Delivery {
            shard: ShardId(0),
            entity: EntityId::from(u64::from(n % 2)),
            message: n,
            reply: crate::region::delivery::ReplyTo::Nobody,
            hops: 0,
            counted: false,
            rehomed: false,
        }
    }

    /// `n` as it comes from another node: encoded, for the shard to decode.
    fn encoded(n: u32) -> Encoded {
        let msg = crate::protocol::DataMsg::<&u32, &()>::Deliver {
            shard: ShardId(0),
            entity: EntityId::from(u64::from(n % 2)),
            reply_to: None,
            hops: 1,
            message: &n,
        };
        let mut payload = bytes::BytesMut::new();
        crate::protocol::encode_into(&msg, &mut payload).expect("encodes");
        Encoded {
            from: cluster::NodeId(2),
            payload: payload.freeze(),
        }
    }

    fn link() -> Arc<ReplyLink> {
        let network = cluster::InProcessNetwork::new(1);
        Arc::new(ReplyLink {
            transport: Arc::new(network.join(cluster::NodeId(1))),
            channel: cluster::Channel(5000),
        })
    }

    /// Messages taken from the inbox in the same batch as the handoff, and
    /// those left in the inbox, go back after it, in the order sent; those
    /// that came encoded are decoded on the way.
    #[tokio::test(flavor = "current_thread")]
    async fn what_follows_a_handoff_in_one_batch_goes_back_in_order() {
        let handled = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = Arc::clone(&handled);
        let (stopped_tx, mut stopped) = mpsc::unbounded_channel();
        let inbox = Shard::spawn(
            ShardId(0),
            FencingToken::default(),
            Arc::new(move |_: &EntityId| Log(Arc::clone(&log))),
            Arc::new(AtomicBool::new(true)),
            Duration::from_secs(60),
            1000,
            Arc::new(RegionStats::default()),
            link(),
            stopped_tx,
        );
        // All queued before the shard first runs: one batch of 64 holds
        // the handoff and what follows it; the rest stays in the inbox.
        for n in 0..3 {
            assert!(inbox.try_send(ShardCmd::Deliver(delivery(n))).is_ok());
        }
        assert!(inbox.try_send(ShardCmd::HandOff).is_ok());
        for n in 3..(3 + INBOX_BATCH as u32 * 2) {
            let cmd = match n % 3 {
                0 => ShardCmd::Encoded(encoded(n)),
                _ => ShardCmd::Deliver(delivery(n)),
            };
            assert!(inbox.try_send(cmd).is_ok());
        }
        let back = stopped.recv().await.expect("the shard stops");
        let returned: Vec<u32> = back.undelivered.iter().map(|d| d.message).collect();
        let handled = handled.lock().unwrap_or_else(|e| e.into_inner()).clone();
        // Nothing lost or doubled, and nothing after the handoff handled.
        let expected_back: Vec<u32> = (3..(3 + INBOX_BATCH as u32 * 2)).collect();
        assert_eq!(returned, expected_back, "handled: {handled:?}");
        assert!(handled.iter().all(|n| *n < 3), "handled {handled:?}");
    }
}
