//! Per-channel inboxes of one node, and the node's traffic counters.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use tokio::sync::mpsc;

use super::{EnvelopeHandler, HANDLER_BATCH};
use crate::{Channel, Envelope, NodeId};

/// Who gets a channel's envelopes.
enum Subscriber {
    /// A task, through a bounded queue.
    Queue(mpsc::Sender<Envelope>),
    /// A function called on the receiving task.
    Handler(EnvelopeHandler),
}

/// A snapshot of one node's transport counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// Envelopes accepted by `send`.
    pub sent: u64,
    /// Envelopes handed to a subscriber.
    pub delivered: u64,
    /// Sends refused because a peer queue was full.
    pub dropped_queue_full: u64,
    /// Frames lost in a write that failed (the connection broke under
    /// them; at most once, so they are not sent again).
    pub lost_in_failed_writes: u64,
    /// Received envelopes for a channel nobody subscribed to.
    pub dropped_no_subscriber: u64,
    /// Received envelopes whose subscriber's inbox was full.
    pub dropped_inbox_full: u64,
    /// Frames that could not be decoded (the connection was closed).
    pub bad_frames: u64,
    /// Peers refused at the handshake (wrong cluster or protocol version).
    pub refused_handshakes: u64,
}

/// Envelopes for handlers, read together from one connection and not yet
/// handed over; one group per channel, in arrival order.
/// The groups (and their buffers) stay from one batch to the next, until a
/// subscription changes.
#[derive(Default)]
pub(crate) struct Gathered {
    groups: Vec<(Channel, EnvelopeHandler, Vec<Envelope>)>,
    /// `Inboxes::generation` when the groups were looked up.
    generation: u64,
}

impl Gathered {
    fn position(&self, channel: Channel) -> Option<usize> {
        self.groups.iter().position(|(c, _, _)| *c == channel)
    }
}

/// Routes received envelopes to the subscriber of their channel.
pub(crate) struct Inboxes {
    node: NodeId,
    capacity: usize,
    /// Read for every envelope received; foldhash, not SipHash, for that.
    subscribers: RwLock<HashMap<Channel, Subscriber, foldhash::fast::FixedState>>,
    /// Raised by every subscription, so gathered groups are looked up again.
    generation: AtomicU64,
    pub(crate) sent: AtomicU64,
    delivered: AtomicU64,
    pub(crate) dropped_queue_full: AtomicU64,
    pub(crate) lost_in_failed_writes: AtomicU64,
    dropped_no_subscriber: AtomicU64,
    dropped_inbox_full: AtomicU64,
    pub(crate) bad_frames: AtomicU64,
    pub(crate) refused_handshakes: AtomicU64,
}

impl Inboxes {
    pub(crate) fn new(node: NodeId, capacity: usize) -> Self {
        Self {
            node,
            capacity: capacity.max(1),
            subscribers: RwLock::new(HashMap::default()),
            generation: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            dropped_queue_full: AtomicU64::new(0),
            lost_in_failed_writes: AtomicU64::new(0),
            dropped_no_subscriber: AtomicU64::new(0),
            dropped_inbox_full: AtomicU64::new(0),
            bad_frames: AtomicU64::new(0),
            refused_handshakes: AtomicU64::new(0),
        }
    }

    pub(crate) fn subscribe(&self, channel: Channel) -> mpsc::Receiver<Envelope> {
        let (tx, rx) = mpsc::channel(self.capacity);
        self.subscribers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(channel, Subscriber::Queue(tx));
        self.generation.fetch_add(1, Ordering::Release);
        rx
    }

    pub(crate) fn subscribe_handler(&self, channel: Channel, handler: EnvelopeHandler) {
        self.subscribers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(channel, Subscriber::Handler(handler));
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Hands `envelope` to its channel's subscriber; a drop is counted and logged.
    pub(crate) fn deliver(&self, envelope: Envelope) {
        let mut one = Gathered {
            generation: self.generation.load(Ordering::Acquire),
            ..Gathered::default()
        };
        self.gather(envelope, &mut one);
        self.flush(&mut one);
    }

    /// Like [`deliver`](Self::deliver), except that envelopes for a handler
    /// wait in `gathered` for [`flush`](Self::flush), which the caller runs
    /// before it awaits anything.
    pub(crate) fn gather(&self, envelope: Envelope, gathered: &mut Gathered) {
        let channel = envelope.channel;
        let generation = self.generation.load(Ordering::Acquire);
        if gathered.generation != generation {
            self.flush(gathered);
            gathered.groups.clear();
            gathered.generation = generation;
        }
        // Looked up before: no lock, no lookup.
        if let Some(i) = gathered.position(channel) {
            gathered.groups[i].2.push(envelope);
            if gathered.groups[i].2.len() >= HANDLER_BATCH {
                self.flush(gathered);
            }
            return;
        }
        // A read lock and no sender clone: this runs for every received message.
        let subscribers = self.subscribers.read().unwrap_or_else(|e| e.into_inner());
        let sender = match subscribers.get(&channel) {
            Some(Subscriber::Queue(sender)) => sender,
            Some(Subscriber::Handler(handler)) => {
                let handler = Arc::clone(handler);
                drop(subscribers);
                gathered.groups.push((channel, handler, vec![envelope]));
                return;
            }
            None => {
                self.dropped_no_subscriber.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(node = %self.node, ?channel, from = %envelope.from, "dropped: no subscriber for channel");
                return;
            }
        };
        match sender.try_send(envelope) {
            Ok(()) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err(mpsc::error::TrySendError::Full(e)) => {
                self.dropped_inbox_full.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(node = %self.node, ?channel, from = %e.from, capacity = self.capacity, "dropped: inbox full");
            }
            Err(mpsc::error::TrySendError::Closed(e)) => {
                self.dropped_no_subscriber.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(node = %self.node, ?channel, from = %e.from, "dropped: subscriber gone");
            }
        }
    }

    /// Calls each handler with what was gathered for it. Handlers run
    /// without the lock: one may send, and a send to this node delivers here.
    pub(crate) fn flush(&self, gathered: &mut Gathered) {
        for (_, handler, batch) in &mut gathered.groups {
            if !batch.is_empty() {
                self.delivered
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                handler(batch);
                batch.clear();
            }
        }
    }

    pub(crate) fn stats(&self) -> TransportStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        TransportStats {
            sent: get(&self.sent),
            delivered: get(&self.delivered),
            dropped_queue_full: get(&self.dropped_queue_full),
            lost_in_failed_writes: get(&self.lost_in_failed_writes),
            dropped_no_subscriber: get(&self.dropped_no_subscriber),
            dropped_inbox_full: get(&self.dropped_inbox_full),
            bad_frames: get(&self.bad_frames),
            refused_handshakes: get(&self.refused_handshakes),
        }
    }
}
