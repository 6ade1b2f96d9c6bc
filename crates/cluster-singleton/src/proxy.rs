//! The proxy: on every node, reaches the instance wherever it runs.
//!
//! One task per node owns the buffer. While it knows no running instance it
//! asks the leader (`Identify`) on an interval and keeps messages, bounded;
//! once the leader answers `Here`, it sends them in order, and keeps each
//! until the instance confirms it (`Delivered`, `Reply`). A message the
//! manager refuses (`NotHere`: no instance, or it is stopping) never reached
//! the instance and goes back to the front of the buffer; one sent to a node
//! that then vanished is not sent again (at-most-once): its `ask` times out.

use std::collections::{BTreeMap, VecDeque};
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use cluster::{ClusterView, Envelope, NodeId, Transport};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::protocol::{SingletonChannels, ToManager, ToProxy, encode};
use crate::{ProxySettings, Singleton};

/// Why a `tell` or an `ask` failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// The proxy's buffer is full (no instance known for a while, or it
    /// does not keep up); the message was dropped and counted.
    #[error("singleton proxy buffer is full ({capacity} messages); message dropped")]
    BufferFull {
        /// The configured buffer size.
        capacity: usize,
    },
    /// No answer in time (no instance, or it was lost on the way).
    #[error("no answer from the singleton within {0:?}")]
    Timeout(Duration),
    /// The message or the reply did not (de)serialize.
    #[error("singleton message codec: {0}")]
    Codec(String),
    /// The instance could not handle it.
    #[error("singleton refused the message: {0}")]
    Failed(String),
    /// The proxy has stopped (its node is shutting down).
    #[error("singleton proxy stopped")]
    Stopped,
}

type Answer = oneshot::Sender<Result<Vec<u8>, ProxyError>>;

struct Pending {
    id: u64,
    payload: Vec<u8>,
    /// `Some` for an ask.
    reply: Option<Answer>,
}

struct Shared {
    /// Messages accepted and not yet resolved (buffered or in flight).
    held: AtomicUsize,
    capacity: usize,
    next_id: AtomicU64,
    /// Messages dropped: buffer full, or unconfirmed tells given up on.
    dropped: AtomicU64,
}

impl Shared {
    fn resolved(&self) {
        self.held.fetch_sub(1, Ordering::AcqRel);
    }
}

/// This node's handle to the singleton. Cheap to clone.
pub struct SingletonProxy<S: Singleton> {
    commands: mpsc::UnboundedSender<Pending>,
    shared: Arc<Shared>,
    ask_timeout: Duration,
    _singleton: PhantomData<fn() -> S>,
}

impl<S: Singleton> Clone for SingletonProxy<S> {
    fn clone(&self) -> Self {
        Self {
            commands: self.commands.clone(),
            shared: Arc::clone(&self.shared),
            ask_timeout: self.ask_timeout,
            _singleton: PhantomData,
        }
    }
}

impl<S: Singleton> SingletonProxy<S> {
    /// Sends `message` to the singleton, at most once, without an answer.
    /// Kept while no instance runs; fails at once if the buffer is full.
    pub fn tell(&self, message: S::Message) -> Result<(), ProxyError> {
        self.submit(&message, None)
    }

    /// Sends `message` and waits for the singleton's answer (at most
    /// `ProxySettings::ask_timeout`).
    pub async fn ask(&self, message: S::Message) -> Result<S::Reply, ProxyError> {
        let (tx, rx) = oneshot::channel();
        self.submit(&message, Some(tx))?;
        match tokio::time::timeout(self.ask_timeout, rx).await {
            Ok(Ok(Ok(bytes))) => {
                postcard::from_bytes(&bytes).map_err(|e| ProxyError::Codec(e.to_string()))
            }
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(_)) => Err(ProxyError::Stopped),
            Err(_) => Err(ProxyError::Timeout(self.ask_timeout)),
        }
    }

    /// Messages dropped so far: buffer full, or tells never confirmed.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    fn submit(&self, message: &S::Message, reply: Option<Answer>) -> Result<(), ProxyError> {
        let payload = postcard::to_stdvec(message).map_err(|e| ProxyError::Codec(e.to_string()))?;
        let capacity = self.shared.capacity;
        let admitted = self
            .shared
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < capacity).then_some(n + 1)
            })
            .is_ok();
        if !admitted {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("singleton_proxy_dropped", "why" => "buffer_full").increment(1);
            tracing::warn!(capacity, "singleton proxy buffer full; message dropped");
            return Err(ProxyError::BufferFull { capacity });
        }
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        self.commands
            .send(Pending { id, payload, reply })
            .map_err(|_| {
                self.shared.resolved();
                ProxyError::Stopped
            })
    }
}

pub(crate) fn start<S: Singleton>(
    transport: Arc<dyn Transport>,
    view: ClusterView,
    channels: SingletonChannels,
    settings: ProxySettings,
) -> (SingletonProxy<S>, JoinHandle<()>) {
    let (commands, rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        held: AtomicUsize::new(0),
        capacity: settings.buffer_size,
        next_id: AtomicU64::new(0),
        dropped: AtomicU64::new(0),
    });
    let inbox = transport.subscribe(channels.proxy);
    let task = ProxyTask {
        node: transport.local_node(),
        transport,
        view,
        channels,
        settings: settings.clone(),
        shared: Arc::clone(&shared),
        target: None,
        buffer: VecDeque::new(),
        in_flight: BTreeMap::new(),
    };
    let handle = tokio::spawn(task.run(rx, inbox));
    let proxy = SingletonProxy {
        commands,
        shared,
        ask_timeout: settings.ask_timeout,
        _singleton: PhantomData,
    };
    (proxy, handle)
}

struct ProxyTask {
    node: NodeId,
    transport: Arc<dyn Transport>,
    view: ClusterView,
    channels: SingletonChannels,
    settings: ProxySettings,
    shared: Arc<Shared>,
    /// Where the instance runs, as far as we know.
    target: Option<NodeId>,
    /// Waiting for an instance, oldest first.
    buffer: VecDeque<Pending>,
    /// Sent, not yet confirmed: by id, with when it was sent and to whom.
    in_flight: BTreeMap<u64, (Pending, Instant, NodeId)>,
}

impl ProxyTask {
    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Pending>,
        mut inbox: mpsc::Receiver<Envelope>,
    ) {
        let mut view = self.view.watch();
        let mut tick = tokio::time::interval(self.settings.identify_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                Ok(()) = view.changed() => {
                    if self.target.is_some() && self.target != self.view.leader() {
                        self.target = None;
                        self.identify();
                    }
                }
                Some(envelope) = inbox.recv() => self.on_envelope(envelope),
                Some(pending) = commands.recv() => {
                    self.buffer.push_back(pending);
                    if self.target.is_none() {
                        self.identify();
                    }
                }
                _ = tick.tick() => {
                    self.expire();
                    if self.target.is_none() {
                        self.identify();
                    }
                }
                else => break,
            }
            self.flush();
        }
    }

    /// Asks the leader whether the instance runs there.
    fn identify(&self) {
        if let Some(leader) = self.view.leader() {
            self.send(leader, &ToManager::Identify);
        }
    }

    /// Sends what is buffered, in order, to the known instance.
    fn flush(&mut self) {
        let Some(target) = self.target else {
            return;
        };
        let now = Instant::now();
        while let Some(p) = self.buffer.pop_front() {
            self.send(
                target,
                &ToManager::Deliver {
                    id: p.id,
                    ask: p.reply.is_some(),
                    payload: p.payload.clone(),
                },
            );
            self.in_flight.insert(p.id, (p, now, target));
        }
    }

    fn on_envelope(&mut self, envelope: Envelope) {
        let from = envelope.from;
        let msg: ToProxy = match postcard::from_bytes(&envelope.payload) {
            Ok(m) => m,
            Err(error) => {
                metrics::counter!("singleton_bad_frames").increment(1);
                tracing::warn!(node = %self.node, %from, %error, "undecodable singleton message dropped");
                return;
            }
        };
        match msg {
            ToProxy::Here => {
                if self.view.leader() == Some(from) {
                    self.target = Some(from);
                }
            }
            ToProxy::NotHere { id } => {
                if self.target == Some(from) {
                    self.target = None;
                }
                // Never reached the instance: back to the front, in order.
                if let Some((p, _, _)) = id.and_then(|id| self.in_flight.remove(&id)) {
                    let at = self.buffer.partition_point(|b| b.id < p.id);
                    self.buffer.insert(at, p);
                }
            }
            ToProxy::Delivered { id } => {
                if self.in_flight.remove(&id).is_some() {
                    self.shared.resolved();
                }
            }
            ToProxy::Reply { id, payload } => self.resolve(id, Ok(payload)),
            ToProxy::Failed { id, reason } => self.resolve(id, Err(ProxyError::Failed(reason))),
        }
    }

    fn resolve(&mut self, id: u64, outcome: Result<Vec<u8>, ProxyError>) {
        if let Some((p, _, _)) = self.in_flight.remove(&id) {
            self.shared.resolved();
            if let Some(reply) = p.reply {
                let _ = reply.send(outcome);
            }
        }
    }

    /// Gives up on messages sent but unconfirmed for an ask timeout: their
    /// node may have crashed with them (at-most-once: not sent again).
    fn expire(&mut self) {
        let limit = self.settings.ask_timeout;
        let now = Instant::now();
        let expired: Vec<u64> = self
            .in_flight
            .iter()
            .filter(|(_, (_, sent, _))| now.duration_since(*sent) >= limit)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some((p, _, to)) = self.in_flight.remove(&id) {
                self.shared.resolved();
                match p.reply {
                    Some(reply) => {
                        let _ = reply.send(Err(ProxyError::Timeout(limit)));
                    }
                    None => {
                        self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                        metrics::counter!("singleton_proxy_dropped", "why" => "unconfirmed")
                            .increment(1);
                        tracing::debug!(node = %self.node, %to, id, "told message never confirmed; given up");
                    }
                }
            }
        }
        // Asks whose caller gave up leave the buffer too.
        let before = self.buffer.len();
        self.buffer
            .retain(|p| p.reply.as_ref().is_none_or(|r| !r.is_closed()));
        for _ in self.buffer.len()..before {
            self.shared.resolved();
        }
    }

    fn send(&self, to: NodeId, msg: &ToManager) {
        if let Some(bytes) = encode(msg) {
            if let Err(error) = self.transport.send(to, self.channels.manager, bytes) {
                tracing::debug!(node = %self.node, %to, %error, "singleton proxy message not sent");
            }
        }
    }
}
