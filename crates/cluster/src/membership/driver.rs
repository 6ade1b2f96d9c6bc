//! The task that drives foca: inputs in, effects out, view published.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use foca::{Foca, NoCustomBroadcast, OwnedNotification, PostcardCodec, State, Timer};
use futures::StreamExt;
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::{Notify, broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::time::DelayQueue;

use super::MembershipSettings;
use super::identity::MemberId;
use super::view::{ClusterEvent, ClusterState, ClusterView, Member, MemberStatus};
use crate::{Channel, Envelope, NodeAddr, NodeId, Transport};

type Swim = Foca<MemberId, PostcardCodec, StdRng, NoCustomBroadcast>;

/// What foca asked for during one call, carried out right after it.
#[derive(Default)]
struct Effects {
    sends: Vec<(MemberId, Bytes)>,
    timers: Vec<(Timer<MemberId>, Duration)>,
    notifications: Vec<OwnedNotification<MemberId>>,
}

impl foca::Runtime<MemberId> for Effects {
    fn notify(&mut self, notification: foca::Notification<'_, MemberId>) {
        self.notifications.push(notification.to_owned());
    }

    fn send_to(&mut self, to: MemberId, data: &[u8]) {
        self.sends.push((to, Bytes::copy_from_slice(data)));
    }

    fn submit_after(&mut self, event: Timer<MemberId>, after: Duration) {
        self.timers.push((event, after));
    }
}

struct Driver {
    swim: Swim,
    transport: Arc<dyn Transport>,
    timers: DelayQueue<Timer<MemberId>>,
    effects: Effects,
    seeds: Vec<MemberId>,
    state: watch::Sender<Arc<ClusterState>>,
    events: broadcast::Sender<ClusterEvent>,
    /// Wakes [`ClusterView::watch`]ers, in a fixed order.
    changed: Arc<Notify>,
    /// Heard from another member, or the join timeout passed.
    joined: bool,
    /// SWIM is connected: active since the last rejoin, idle or defunct.
    connected: bool,
    /// The members as published, kept up to date from foca's notifications
    /// (so a message that changes nothing costs nothing here, whatever the
    /// cluster's size) and reconciled with foca's list on each announce
    /// tick: suspicion, which foca does not notify, shows in the view at
    /// most one announce interval late.
    members: BTreeMap<NodeId, Member>,
    /// A member changed since the last publish (`joined` is compared at
    /// publish instead: it is one flag).
    dirty: bool,
}

pub(super) fn spawn(
    transport: Arc<dyn Transport>,
    addr: NodeAddr,
    settings: MembershipSettings,
    config: foca::Config,
) -> (
    ClusterView,
    mpsc::Sender<oneshot::Sender<()>>,
    JoinHandle<()>,
) {
    let local = transport.local_node();
    let identity = MemberId {
        node: local,
        addr: addr.clone(),
        generation: settings.generation,
    };
    let mut members = BTreeMap::new();
    members.insert(
        local,
        Member {
            node: local,
            addr,
            status: MemberStatus::Up,
            incarnation: settings.generation,
        },
    );
    let (state, state_rx) = watch::channel(Arc::new(ClusterState {
        local,
        members: members.clone(),
        joined: false,
    }));
    let (events, _) = broadcast::channel(1024);
    let changed = Arc::new(Notify::new());
    let view = ClusterView::new(state_rx, events.clone(), Arc::clone(&changed));
    let inbox = transport.subscribe(Channel::MEMBERSHIP);
    let seeds = settings
        .seeds
        .iter()
        .filter(|(node, _)| *node != local)
        .map(|(node, addr)| MemberId {
            node: *node,
            addr: addr.clone(),
            generation: 0,
        })
        .collect();
    let driver = Driver {
        swim: Foca::new(
            identity,
            config,
            StdRng::seed_from_u64(settings.rng_seed),
            PostcardCodec,
        ),
        transport,
        timers: DelayQueue::new(),
        effects: Effects::default(),
        seeds,
        state,
        events,
        changed,
        joined: false,
        connected: false,
        members,
        dirty: false,
    };
    let (leave_tx, leave_rx) = mpsc::channel(1);
    let task = tokio::spawn(driver.run(
        inbox,
        leave_rx,
        settings.announce_interval,
        settings.join_timeout,
    ));
    (view, leave_tx, task)
}

impl Driver {
    async fn run(
        mut self,
        mut inbox: mpsc::Receiver<Envelope>,
        mut leave: mpsc::Receiver<oneshot::Sender<()>>,
        announce_interval: Duration,
        join_timeout: Duration,
    ) {
        let local = self.transport.local_node();
        tracing::info!(node = %local, seeds = self.seeds.len(), "membership starting");
        if self.seeds.is_empty() {
            // No other seed to ask: this node founds the cluster.
            self.joined = true;
        }
        self.announce_to_seeds();
        let mut rejoin = tokio::time::interval(announce_interval);
        rejoin.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let join_deadline = tokio::time::sleep(join_timeout);
        tokio::pin!(join_deadline);
        loop {
            // Biased, in a fixed order, so a seeded simulation replays exactly.
            tokio::select! {
                biased;
                () = &mut join_deadline, if !self.joined => {
                    tracing::info!(node = %local, ?join_timeout, "no member answered; joined alone");
                    self.joined = true;
                }
                Some(expired) = self.timers.next(), if !self.timers.is_empty() => {
                    let result = self.swim.handle_timer(expired.into_inner(), &mut self.effects);
                    if let Err(error) = result {
                        tracing::debug!(node = %local, %error, "membership timer failed");
                    }
                }
                _ = rejoin.tick() => {
                    self.reconcile();
                    // Alone (never joined, or everyone else went away), or
                    // cut off by SWIM itself (after a rejoin under a new
                    // generation it waits for a message to that generation,
                    // and peers that rejoined too may never send one): knock
                    // on the seeds and every known member again.
                    if !self.connected || self.swim.iter_members().next().is_none() {
                        self.announce_to_seeds();
                        self.announce_to_members();
                    }
                }
                Some(done) = leave.recv() => {
                    if let Err(error) = self.swim.leave_cluster(&mut self.effects) {
                        tracing::debug!(node = %local, %error, "leave failed");
                    }
                    self.apply_effects();
                    tracing::info!(node = %local, "left the cluster");
                    let _ = done.send(());
                    return;
                }
                Some(envelope) = inbox.recv() => {
                    let result = self.swim.handle_data(&envelope.payload, &mut self.effects);
                    if let Err(error) = result {
                        tracing::debug!(node = %local, from = %envelope.from, %error, "membership message ignored");
                    }
                }
            }
            self.apply_effects();
        }
    }

    fn announce_to_members(&mut self) {
        let members: Vec<MemberId> = self.swim.iter_members().map(|m| m.id().clone()).collect();
        for member in members {
            if let Err(error) = self.swim.announce(member, &mut self.effects) {
                tracing::debug!(%error, "announce failed");
            }
        }
        self.apply_effects();
    }

    fn announce_to_seeds(&mut self) {
        for seed in self.seeds.clone() {
            if let Err(error) = self.swim.announce(seed, &mut self.effects) {
                tracing::debug!(%error, "announce failed");
            }
        }
        self.apply_effects();
    }

    fn apply_effects(&mut self) {
        for (to, data) in self.effects.sends.drain(..) {
            self.transport.learn_address(to.node, &to.addr);
            if let Err(error) = self.transport.send(to.node, Channel::MEMBERSHIP, data) {
                tracing::debug!(to = %to.node, %error, "membership send failed");
            }
        }
        for (timer, after) in self.effects.timers.drain(..) {
            self.timers.insert(timer, after);
        }
        let local = self.transport.local_node();
        for note in std::mem::take(&mut self.effects.notifications) {
            match note {
                OwnedNotification::MemberUp(id) => self.set_member(&id, MemberStatus::Up),
                OwnedNotification::Rename(_, id) => self.set_member(&id, MemberStatus::Up),
                OwnedNotification::MemberDown(id)
                    if self
                        .members
                        .get(&id.node)
                        .is_some_and(|m| m.incarnation == id.generation) =>
                {
                    self.members.remove(&id.node);
                    self.dirty = true;
                }
                OwnedNotification::Active => {
                    self.connected = true;
                    self.joined = true;
                    tracing::info!(node = %local, "joined the cluster");
                }
                OwnedNotification::Idle => {
                    self.connected = false;
                    tracing::info!(node = %local, "no other member reachable")
                }
                OwnedNotification::Rejoin(id) => {
                    self.connected = false;
                    self.set_member(&id, MemberStatus::Up);
                    tracing::info!(node = %local, generation = id.generation, "declared down; rejoined with a new generation")
                }
                OwnedNotification::Defunct => {
                    self.connected = false;
                    tracing::warn!(node = %local, "declared down")
                }
                // Only with foca's unstable notifications, which we leave off.
                #[allow(unreachable_patterns)]
                _ => {}
            }
        }
        self.publish();
    }

    fn set_member(&mut self, id: &MemberId, status: MemberStatus) {
        let member = Member {
            node: id.node,
            addr: id.addr.clone(),
            status,
            incarnation: id.generation,
        };
        if self.members.get(&id.node) != Some(&member) {
            self.members.insert(id.node, member);
            self.dirty = true;
        }
    }

    /// Brings the members in line with foca's list: suspicion (which foca
    /// does not notify), and anything a notification did not say. Allocates
    /// only for what differs.
    fn reconcile(&mut self) {
        let identity = self.swim.identity().clone();
        self.set_member(&identity, MemberStatus::Up);
        let mut seen = 1;
        let mut differs: Vec<(MemberId, MemberStatus)> = Vec::new();
        for member in self.swim.iter_members() {
            let id = member.id();
            let status = match member.state() {
                State::Suspect => MemberStatus::Suspect,
                _ => MemberStatus::Up,
            };
            seen += 1;
            // An address changes only with a new generation (a rename).
            let same = self
                .members
                .get(&id.node)
                .is_some_and(|m| m.status == status && m.incarnation == id.generation);
            if !same {
                differs.push((id.clone(), status));
            }
        }
        for (id, status) in differs {
            self.set_member(&id, status);
        }
        if seen != self.members.len() {
            // Members foca no longer lists.
            let listed: BTreeSet<NodeId> = self
                .swim
                .iter_members()
                .map(|m| m.id().node)
                .chain([identity.node])
                .collect();
            self.members.retain(|node, _| listed.contains(node));
            self.dirty = true;
        }
    }

    /// Publishes the view if it changed, and announces what changed.
    fn publish(&mut self) {
        if !self.dirty && self.state.borrow().joined == self.joined {
            return;
        }
        self.dirty = false;
        let members = self.members.clone();
        let old = Arc::clone(&self.state.borrow());
        if old.members == members && old.joined == self.joined {
            return;
        }
        let next = ClusterState {
            local: old.local,
            members,
            joined: self.joined,
        };
        let local = old.local;
        for (node, member) in &next.members {
            match old.members.get(node) {
                None => {
                    // Gossip may introduce a member we never exchanged a
                    // message with: make it reachable for every subsystem.
                    self.transport.learn_address(*node, &member.addr);
                    tracing::info!(%local, member = %node, addr = %member.addr, "member up");
                    let _ = self.events.send(ClusterEvent::MemberUp(*node));
                }
                Some(before) if before.incarnation != member.incarnation => {
                    tracing::info!(%local, member = %node, from = before.incarnation, to = member.incarnation, "member has a new incarnation");
                }
                Some(before) if before.status != member.status => {
                    if member.status == MemberStatus::Suspect {
                        tracing::info!(%local, member = %node, "member suspected");
                    } else {
                        tracing::info!(%local, member = %node, "member no longer suspected");
                    }
                }
                Some(_) => {}
            }
        }
        for node in old.members.keys().filter(|n| !next.members.contains_key(n)) {
            tracing::info!(%local, member = %node, "member down");
            let _ = self.events.send(ClusterEvent::MemberDown(*node));
        }
        let (from, to) = (old.leader(), next.leader());
        if from != to {
            tracing::info!(%local, ?from, ?to, "leader changed");
            let _ = self.events.send(ClusterEvent::LeaderChanged { from, to });
        }
        self.state.send_replace(Arc::new(next));
        self.changed.notify_waiters();
    }
}
