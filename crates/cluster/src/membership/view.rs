//! The local view of the cluster that the rest of the system consumes.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::{Notify, broadcast, watch};

use crate::{NodeAddr, NodeId};

/// How a member looks from this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberStatus {
    /// Answering probes.
    Up,
    /// Missed a probe; still counted as a member until declared down.
    Suspect,
}

/// One member of the local view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The node.
    pub node: NodeId,
    /// Where it listens.
    pub addr: NodeAddr,
    /// Up or suspect.
    pub status: MemberStatus,
    /// Which life of the node this is: it changes when the node restarts,
    /// and when it rejoins after being declared down. A node seen under a new
    /// incarnation has lost (or may have lost) what its last one knew.
    pub incarnation: u64,
}

/// A snapshot of this node's view: members (self included) and the leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterState {
    /// This node.
    pub local: NodeId,
    /// Every member this node considers part of the cluster, self included.
    pub members: BTreeMap<NodeId, Member>,
    /// Whether this node has joined: it heard from another member, or its
    /// join timeout passed without any (the first node of a cluster).
    pub joined: bool,
}

impl ClusterState {
    /// The lowest `NodeId` among the members of this view; `None` until this
    /// node has joined, so that a restarted node does not lead a cluster of
    /// one while the others are still there (it would allocate shards they
    /// host).
    ///
    /// Suspects count: SWIM has not declared them down yet. Two views that
    /// disagree (a partition) give two leaders; that is the split brain the
    /// lease guards against.
    pub fn leader(&self) -> Option<NodeId> {
        if !self.joined {
            return None;
        }
        self.members.keys().next().copied()
    }

    /// The leader and its incarnation: a leader that restarted under the same
    /// id is a new coordinator, which the regions must register with again.
    pub fn leader_incarnation(&self) -> Option<(NodeId, u64)> {
        let leader = self.leader()?;
        self.members.get(&leader).map(|m| (leader, m.incarnation))
    }

    /// The incarnation of `node` in this view, if it is a member.
    pub fn incarnation(&self, node: NodeId) -> Option<u64> {
        self.members.get(&node).map(|m| m.incarnation)
    }

    /// Whether `node` is a member of this view.
    pub fn contains(&self, node: NodeId) -> bool {
        self.members.contains_key(&node)
    }
}

/// A change in the local view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterEvent {
    /// A node joined the view.
    MemberUp(NodeId),
    /// A node was declared down or left.
    MemberDown(NodeId),
    /// The leader of this view changed.
    LeaderChanged {
        /// The previous leader.
        from: Option<NodeId>,
        /// The new leader.
        to: Option<NodeId>,
    },
}

/// A cheap, cloneable handle on this node's view of the cluster.
#[derive(Clone)]
pub struct ClusterView {
    state: watch::Receiver<Arc<ClusterState>>,
    events: broadcast::Sender<ClusterEvent>,
    changed: Arc<Notify>,
}

/// Waits for new snapshots of a [`ClusterView`], from [`ClusterView::watch`].
///
/// Waiters are woken in a fixed order (a `Notify`), not in the random order
/// of a `watch` channel's waiters, so that a seeded simulation in paused
/// time replays the same history: which of a node's tasks sees a view
/// change first decides what it sends first.
pub struct ViewChanges {
    state: watch::Receiver<Arc<ClusterState>>,
    changed: Arc<Notify>,
}

impl ViewChanges {
    /// Resolves when a snapshot newer than the last one seen here is
    /// published; `Err` once membership has stopped.
    pub async fn changed(&mut self) -> Result<(), watch::error::RecvError> {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            // Registered before looking, so a publish in between is not missed.
            notified.as_mut().enable();
            if self.state.has_changed()? {
                self.state.borrow_and_update();
                return Ok(());
            }
            notified.await;
        }
    }

    /// The current snapshot.
    pub fn state(&self) -> Arc<ClusterState> {
        Arc::clone(&self.state.borrow())
    }
}

impl ClusterView {
    pub(crate) fn new(
        state: watch::Receiver<Arc<ClusterState>>,
        events: broadcast::Sender<ClusterEvent>,
        changed: Arc<Notify>,
    ) -> Self {
        Self {
            state,
            events,
            changed,
        }
    }

    /// This node.
    pub fn local(&self) -> NodeId {
        self.state.borrow().local
    }

    /// The current snapshot.
    pub fn state(&self) -> Arc<ClusterState> {
        Arc::clone(&self.state.borrow())
    }

    /// This node's own incarnation (its membership generation now).
    pub fn local_incarnation(&self) -> u64 {
        let state = self.state.borrow();
        state.incarnation(state.local).unwrap_or(0)
    }

    /// The leader of this node's view.
    pub fn leader(&self) -> Option<NodeId> {
        self.state.borrow().leader()
    }

    /// Whether this node leads its own view. Cheap: a read of the snapshot.
    pub fn is_leader(&self) -> bool {
        let state = self.state.borrow();
        state.leader() == Some(state.local)
    }

    /// The members of this view, self included, in `NodeId` order.
    pub fn members(&self) -> Vec<NodeId> {
        self.state.borrow().members.keys().copied().collect()
    }

    /// Waits for new snapshots from now on.
    pub fn watch(&self) -> ViewChanges {
        let mut state = self.state.clone();
        state.borrow_and_update();
        ViewChanges {
            state,
            changed: Arc::clone(&self.changed),
        }
    }

    /// Member up/down and leader-change events from now on.
    pub fn events(&self) -> broadcast::Receiver<ClusterEvent> {
        self.events.subscribe()
    }
}
