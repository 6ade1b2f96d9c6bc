//! The local view of the cluster that the rest of the system consumes.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::{broadcast, watch};

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
}

/// A snapshot of this node's view: members (self included) and the leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterState {
    /// This node.
    pub local: NodeId,
    /// Every member this node considers part of the cluster, self included.
    pub members: BTreeMap<NodeId, Member>,
}

impl ClusterState {
    /// The lowest `NodeId` among the members of this view.
    ///
    /// Suspects count: SWIM has not declared them down yet. Two views that
    /// disagree (a partition) give two leaders; that is the split brain the
    /// lease guards against.
    pub fn leader(&self) -> Option<NodeId> {
        self.members.keys().next().copied()
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
}

impl ClusterView {
    pub(crate) fn new(
        state: watch::Receiver<Arc<ClusterState>>,
        events: broadcast::Sender<ClusterEvent>,
    ) -> Self {
        Self { state, events }
    }

    /// This node.
    pub fn local(&self) -> NodeId {
        self.state.borrow().local
    }

    /// The current snapshot.
    pub fn state(&self) -> Arc<ClusterState> {
        Arc::clone(&self.state.borrow())
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

    /// A watch that changes with every new snapshot.
    pub fn watch(&self) -> watch::Receiver<Arc<ClusterState>> {
        self.state.clone()
    }

    /// Member up/down and leader-change events from now on.
    pub fn events(&self) -> broadcast::Receiver<ClusterEvent> {
        self.events.subscribe()
    }
}
