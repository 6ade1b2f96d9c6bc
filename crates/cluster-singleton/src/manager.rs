//! The manager: one task per node that decides whether the instance runs
//! here, runs it, and hands it over when leadership moves.
//!
//! It runs the instance only while this node leads its view, the lease gate
//! is open (the lease held, with one), and any previous leader that is still
//! a member has confirmed that its own instance stopped. It stops the
//! instance (awaiting `stopped`, bounded) before it gives the lease back or
//! confirms a handover, so two instances never overlap (I7).

use std::collections::BTreeSet;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cluster::{ClusterView, Envelope, NodeId, Transport};
use lease_api::gate::{GateCommand, GateEvent, GateState, LeaseGate};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until};

use crate::protocol::{SingletonChannels, ToManager, ToProxy, encode};
use crate::proxy::{self, SingletonProxy};
use crate::{Singleton, SingletonSettings};

/// What a node's manager reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SingletonEvent {
    /// The instance started on this node (before `started` ran).
    Started,
    /// The instance stopped on this node (after `stopped` returned or timed out).
    Stopped,
}

/// Receives singleton events: `(name, node, event)`. Must be cheap.
pub type SingletonObserver = Arc<dyn Fn(&str, NodeId, &SingletonEvent) + Send + Sync>;

/// A singleton on one node: its manager and this node's proxy.
pub struct ClusterSingleton<S: Singleton> {
    proxy: SingletonProxy<S>,
    running: watch::Receiver<bool>,
    shutdown: mpsc::Sender<oneshot::Sender<()>>,
    tasks: Vec<JoinHandle<()>>,
}

impl<S: Singleton> ClusterSingleton<S> {
    /// Starts this node's manager and proxy for the singleton in `settings`.
    /// Start it on every node, with the same name.
    pub fn start(
        transport: Arc<dyn Transport>,
        view: ClusterView,
        settings: SingletonSettings<S>,
    ) -> Result<Self, crate::SettingsError> {
        settings.validate()?;
        let channels = SingletonChannels::of(&settings.name);
        let (proxy, proxy_task) = proxy::start::<S>(
            Arc::clone(&transport),
            view.clone(),
            channels,
            settings.proxy.clone(),
        );
        let (running_tx, running) = watch::channel(false);
        let (shutdown, shutdown_rx) = mpsc::channel(1);
        let (gate_events, gate_rx) = mpsc::unbounded_channel();
        // A leader on the minority side leaves the lease to the majority for
        // a while (as the shard coordinator does).
        let minority_delay = if settings.lease.is_some() {
            settings.minority_lease_delay
        } else {
            Duration::ZERO
        };
        let owner = settings
            .lease
            .as_ref()
            .map_or_else(String::new, |l| l.settings().owner_name().to_owned());
        let gate = LeaseGate::new(settings.lease.is_some(), settings.lease_retry_interval)
            .with_minority_delay(minority_delay)
            .with_jitter_seed(&owner);
        // A warm standby: see a release or an expiry as it happens.
        if let Some(lease) = &settings.lease {
            lease.observe();
        }
        let inbox = transport.subscribe(channels.manager);
        let manager = Manager::<S> {
            node: transport.local_node(),
            transport,
            view,
            channels,
            gate,
            gate_leader: false,
            gate_quorum: true,
            last_members: BTreeSet::new(),
            departed: BTreeSet::new(),
            gate_events,
            release_pending: false,
            instance: None,
            awaiting_handover: BTreeSet::new(),
            next_handover_ask: Instant::now(),
            handed_over_to: None,
            running: running_tx,
            settings,
            _singleton: PhantomData,
        };
        let manager_task = tokio::spawn(manager.run(inbox, gate_rx, shutdown_rx));
        Ok(Self {
            proxy,
            running,
            shutdown,
            tasks: vec![manager_task, proxy_task],
        })
    }

    /// This node's proxy to the singleton, wherever it runs.
    pub fn proxy(&self) -> SingletonProxy<S> {
        self.proxy.clone()
    }

    /// Whether the instance runs on this node now.
    pub fn is_running_here(&self) -> bool {
        *self.running.borrow()
    }

    /// For a graceful leave: stops the instance here (if it runs), gives the
    /// lease back, and stops answering, so the next leader starts its own at
    /// once. Call it before leaving the membership. Bounded by `timeout`.
    pub async fn shutdown(&self, timeout: Duration) {
        let (done, wait) = oneshot::channel();
        if self.shutdown.send(done).await.is_ok()
            && tokio::time::timeout(timeout, wait).await.is_err()
        {
            tracing::warn!(?timeout, "singleton manager did not stop in time");
        }
    }
}

impl<S: Singleton> Drop for ClusterSingleton<S> {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// One message for the instance, and who waits for its answer.
struct Job {
    from: NodeId,
    id: u64,
    ask: bool,
    payload: Vec<u8>,
}

/// The instance running on this node.
struct Instance {
    jobs: mpsc::UnboundedSender<Job>,
    /// Cleared the instant it must stop: queued jobs are then refused, not
    /// handled (the lease may already be lost).
    open: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

struct Manager<S: Singleton> {
    node: NodeId,
    transport: Arc<dyn Transport>,
    view: ClusterView,
    channels: SingletonChannels,
    settings: SingletonSettings<S>,
    gate: LeaseGate,
    gate_leader: bool,
    /// The quorum last fed to the gate.
    gate_quorum: bool,
    /// The members of the view at the last step.
    last_members: BTreeSet<NodeId>,
    /// Nodes that left the view and have not come back: when they are as
    /// many as the members, this side is a minority.
    departed: BTreeSet<NodeId>,
    gate_events: mpsc::UnboundedSender<GateEvent>,
    /// The gate asked for a release; done once the instance has stopped.
    release_pending: bool,
    instance: Option<Instance>,
    /// We lead; these members have not confirmed that no instance of
    /// theirs runs (any of them may have led before us, in its own view).
    awaiting_handover: BTreeSet<NodeId>,
    /// When to ask them again (an absolute time: every loop turn would
    /// otherwise push a relative deadline back, and a busy manager never ask).
    next_handover_ask: Instant,
    /// We stopped our instance for this node's handover request: we do not
    /// run it again while it is a member.
    handed_over_to: Option<NodeId>,
    running: watch::Sender<bool>,
    _singleton: PhantomData<fn() -> S>,
}

impl<S: Singleton> Manager<S> {
    async fn run(
        mut self,
        mut inbox: mpsc::Receiver<Envelope>,
        mut gate_rx: mpsc::UnboundedReceiver<GateEvent>,
        mut shutdown: mpsc::Receiver<oneshot::Sender<()>>,
    ) {
        let mut view = self.view.watch();
        let mut lease_status = self.settings.lease.as_ref().map(|l| l.status());
        let mut lease_observed = self.settings.lease.as_ref().map(|l| l.observed());
        self.step().await;
        loop {
            let gate_retry = self.gate.next_retry();
            let handover_retry =
                (!self.awaiting_handover.is_empty()).then_some(self.next_handover_ask);
            let lease_check = self.lease_check_at();
            tokio::select! {
                biased;
                Some(done) = shutdown.recv() => {
                    self.shut_down().await;
                    let _ = done.send(());
                    return;
                }
                Ok(()) = view.changed() => {}
                Some(event) = gate_rx.recv() => self.feed_gate(event),
                Some(()) = lease_api::gate::lease_lost(&mut lease_status) => {}
                Some(()) = lease_api::gate::lease_freed(&mut lease_observed) => self.feed_gate(GateEvent::LeaseFreed),
                () = sleep_until(gate_retry.unwrap_or_else(Instant::now)), if gate_retry.is_some() => self.feed_gate(GateEvent::Tick),
                () = sleep_until(lease_check.unwrap_or_else(Instant::now)), if lease_check.is_some() => {}
                () = sleep_until(handover_retry.unwrap_or_else(Instant::now)), if handover_retry.is_some() => self.ask_for_handover(),
                Some(envelope) = inbox.recv() => self.on_envelope(envelope).await,
                else => break,
            }
            self.step().await;
        }
    }

    fn lease_alive(&self) -> bool {
        self.settings.lease.as_ref().is_none_or(|l| l.check_alive())
    }

    /// While running on a lease, look at `check_alive` once per heartbeat
    /// too, in case a loss is not published.
    fn lease_check_at(&self) -> Option<Instant> {
        self.instance.as_ref()?;
        let lease = self.settings.lease.as_ref()?;
        Some(Instant::now() + lease.settings().heartbeat_interval())
    }

    /// Every decision, in one place: feed the gate, then start or stop.
    async fn step(&mut self) {
        let state = self.view.state();
        let leading = state.leader() == Some(self.node);
        if leading != self.gate_leader {
            self.gate_leader = leading;
            if leading {
                // Whoever led before us may still run it: every other member
                // confirms that no instance of its own runs before ours does.
                self.awaiting_handover = state
                    .members
                    .keys()
                    .copied()
                    .filter(|m| *m != self.node)
                    .collect();
                self.ask_for_handover();
            } else {
                self.awaiting_handover.clear();
            }
            self.feed_gate(GateEvent::Leader(leading));
        }
        // Members that left (crashed, downed) have nothing to confirm; with
        // a lease, the gate waits for their lease to end anyway.
        self.awaiting_handover.retain(|m| state.contains(*m));
        let members: BTreeSet<NodeId> = state.members.keys().copied().collect();
        self.departed
            .extend(self.last_members.difference(&members).copied());
        self.departed.retain(|n| !members.contains(n));
        self.last_members = members;
        let quorum = state.members.len() > self.departed.len();
        if quorum != self.gate_quorum {
            self.gate_quorum = quorum;
            self.feed_gate(GateEvent::Quorum(quorum));
        }
        if self.handed_over_to.is_some_and(|p| !state.contains(p)) {
            self.handed_over_to = None;
        }
        if self.gate.state() == GateState::Held && !self.lease_alive() {
            self.feed_gate(GateEvent::LeaseLost);
        }
        let may_run = self.gate.is_open(self.lease_alive())
            && self.awaiting_handover.is_empty()
            && self.handed_over_to.is_none();
        if self.instance.is_some() && !may_run {
            self.stop_instance().await;
        }
        if self.instance.is_none() && self.release_pending {
            self.release_pending = false;
            self.release();
        }
        if self.instance.is_none() && may_run {
            self.start_instance();
        }
    }

    fn feed_gate(&mut self, event: GateEvent) {
        let Some(command) = self.gate.handle(event, Instant::now()) else {
            return;
        };
        let Some(lease) = self.settings.lease.clone() else {
            return;
        };
        match command {
            GateCommand::Acquire => {
                let events = self.gate_events.clone();
                let node = self.node;
                tokio::spawn(async move {
                    let outcome = match lease.acquire().await {
                        Ok(held) => GateEvent::Acquired(held),
                        Err(error) => {
                            tracing::warn!(%node, %error, "singleton lease acquire failed; retrying");
                            GateEvent::AcquireFailed
                        }
                    };
                    let _ = events.send(outcome);
                });
            }
            // Only once our instance has stopped (I7): `step` does it.
            GateCommand::Release => self.release_pending = true,
        }
    }

    fn release(&self) {
        let Some(lease) = self.settings.lease.clone() else {
            return;
        };
        let node = self.node;
        tokio::spawn(async move {
            match lease.release().await {
                Ok(released) => tracing::info!(%node, released, "singleton lease released"),
                Err(error) => {
                    tracing::warn!(%node, %error, "singleton lease release failed; it will expire")
                }
            }
        });
    }

    fn ask_for_handover(&mut self) {
        self.next_handover_ask = Instant::now() + self.settings.handover_retry_interval;
        for member in &self.awaiting_handover {
            tracing::debug!(node = %self.node, %member, "asking to hand the singleton over");
            self.send(*member, self.channels.manager, &ToManager::HandOverToMe);
        }
    }

    fn start_instance(&mut self) {
        tracing::info!(node = %self.node, name = %self.settings.name, "singleton starting here");
        self.observe(SingletonEvent::Started);
        let (jobs, rx) = mpsc::unbounded_channel();
        let open = Arc::new(AtomicBool::new(true));
        let instance = (self.settings.factory)();
        let task = tokio::spawn(run_instance(
            instance,
            rx,
            Arc::clone(&open),
            Arc::clone(&self.transport),
            self.channels,
        ));
        self.instance = Some(Instance { jobs, open, task });
        self.running.send_replace(true);
    }

    /// Stops the instance: nothing more is handled at once, then `stopped`
    /// runs, bounded by the stop timeout.
    async fn stop_instance(&mut self) {
        let Some(Instance { jobs, open, task }) = self.instance.take() else {
            return;
        };
        open.store(false, Ordering::Release);
        drop(jobs);
        let abort = task.abort_handle();
        if tokio::time::timeout(self.settings.stop_timeout, task)
            .await
            .is_err()
        {
            tracing::warn!(node = %self.node, name = %self.settings.name, timeout = ?self.settings.stop_timeout, "singleton did not stop in time; dropped");
            abort.abort();
        }
        self.running.send_replace(false);
        self.observe(SingletonEvent::Stopped);
        tracing::info!(node = %self.node, name = %self.settings.name, "singleton stopped here");
    }

    async fn shut_down(&mut self) {
        self.stop_instance().await;
        let Some(lease) = self.settings.lease.clone() else {
            return;
        };
        let limit = lease.settings().operation_timeout();
        if tokio::time::timeout(limit, lease.release()).await.is_err() {
            tracing::warn!(node = %self.node, "singleton lease release timed out; it will expire");
        }
    }

    async fn on_envelope(&mut self, envelope: Envelope) {
        let from = envelope.from;
        let msg: ToManager = match postcard::from_bytes(&envelope.payload) {
            Ok(m) => m,
            Err(error) => {
                metrics::counter!("singleton_bad_frames").increment(1);
                tracing::warn!(node = %self.node, %from, %error, "undecodable singleton message dropped");
                return;
            }
        };
        match msg {
            ToManager::Identify => {
                let answer = if self.instance.is_some() {
                    ToProxy::Here
                } else {
                    ToProxy::NotHere { id: None }
                };
                self.send(from, self.channels.proxy, &answer);
            }
            ToManager::Deliver { id, ask, payload } => {
                let refused = match &self.instance {
                    Some(instance) if self.lease_alive() => instance
                        .jobs
                        .send(Job {
                            from,
                            id,
                            ask,
                            payload,
                        })
                        .is_err(),
                    _ => true,
                };
                if refused {
                    self.send(
                        from,
                        self.channels.proxy,
                        &ToProxy::NotHere { id: Some(id) },
                    );
                }
            }
            ToManager::HandOverToMe => {
                if self.instance.is_some() {
                    tracing::info!(node = %self.node, to = %from, "handing the singleton over");
                    self.handed_over_to = Some(from);
                    self.stop_instance().await;
                } else if self.view.state().contains(from) && from != self.node {
                    self.handed_over_to = Some(from);
                }
                self.send(from, self.channels.manager, &ToManager::HandOverDone);
            }
            ToManager::HandOverDone => {
                self.awaiting_handover.remove(&from);
            }
        }
    }

    fn send<T: serde::Serialize>(&self, to: NodeId, channel: cluster::Channel, msg: &T) {
        if let Some(bytes) = encode(msg) {
            if let Err(error) = self.transport.send(to, channel, bytes) {
                tracing::debug!(node = %self.node, %to, %error, "singleton message not sent");
            }
        }
    }

    fn observe(&self, event: SingletonEvent) {
        if let Some(observer) = &self.settings.observer {
            observer(&self.settings.name, self.node, &event);
        }
    }
}

/// The instance's own task: one message at a time, until its job queue
/// closes; then `stopped`. A job that finds it closing is refused, so the
/// proxy may send it elsewhere.
async fn run_instance<S: Singleton>(
    mut instance: S,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    open: Arc<AtomicBool>,
    transport: Arc<dyn Transport>,
    channels: SingletonChannels,
) {
    let reply = |to: NodeId, msg: ToProxy| {
        if let Some(bytes) = encode(&msg) {
            let _ = transport.send(to, channels.proxy, bytes);
        }
    };
    instance.started().await;
    while let Some(job) = jobs.recv().await {
        if !open.load(Ordering::Acquire) {
            reply(job.from, ToProxy::NotHere { id: Some(job.id) });
            continue;
        }
        let message: S::Message = match postcard::from_bytes(&job.payload) {
            Ok(m) => m,
            Err(error) => {
                metrics::counter!("singleton_bad_messages").increment(1);
                reply(
                    job.from,
                    ToProxy::Failed {
                        id: job.id,
                        reason: format!("message did not decode: {error}"),
                    },
                );
                continue;
            }
        };
        let answer = instance.handle(message).await;
        let msg = if job.ask {
            match postcard::to_stdvec(&answer) {
                Ok(payload) => ToProxy::Reply {
                    id: job.id,
                    payload,
                },
                Err(error) => ToProxy::Failed {
                    id: job.id,
                    reason: format!("reply did not encode: {error}"),
                },
            }
        } else {
            ToProxy::Delivered { id: job.id }
        };
        reply(job.from, msg);
    }
    instance.stopped().await;
}
