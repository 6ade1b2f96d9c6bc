//! What every node did, timestamped with tokio time, for checkers and reports.

use std::sync::{Arc, Mutex};

use cluster::NodeId;
use cluster_singleton::{SingletonEvent, SingletonObserver};
use sharding_coordinator::{CoordinatorObserver, CoordinatorRecord};
use sharding_core::{RegionEvent, RegionObserver};
use tokio::time::Instant;

/// One recorded event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// When (tokio time).
    pub at: Instant,
    /// On which node.
    pub node: NodeId,
    /// What.
    pub kind: EventKind,
}

/// What was recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// From a coordinator.
    Coordinator(CoordinatorRecord),
    /// From a region.
    Region(RegionEvent),
    /// From the node's cluster singleton manager.
    Singleton(SingletonEvent),
    /// From the harness: node lifecycle and faults.
    Harness(HarnessEvent),
}

/// What the harness itself did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HarnessEvent {
    /// The node (re)started.
    NodeStarted,
    /// The node stopped (crash or graceful): its coordinator and shards are gone.
    NodeStopped,
    /// A fault began (free text, for reports).
    FaultStarted(String),
    /// Every fault ended: the network is whole and the store reachable.
    FaultsHealed,
}

/// A shared, append-only log; cheap to clone.
#[derive(Clone, Default)]
pub struct History {
    events: Arc<Mutex<Vec<Event>>>,
}

impl History {
    /// Appends an event now.
    pub fn push(&self, node: NodeId, kind: EventKind) {
        let event = Event {
            at: Instant::now(),
            node,
            kind,
        };
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(event);
    }

    /// Every event so far, in the order recorded.
    pub fn events(&self) -> Vec<Event> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn coordinator_observer(&self) -> CoordinatorObserver {
        let history = self.clone();
        Arc::new(move |_, node, record: &CoordinatorRecord| {
            history.push(node, EventKind::Coordinator(record.clone()));
        })
    }

    pub(crate) fn singleton_observer(&self) -> SingletonObserver {
        let history = self.clone();
        Arc::new(move |_, node, event: &SingletonEvent| {
            history.push(node, EventKind::Singleton(*event));
        })
    }

    pub(crate) fn region_observer(&self) -> RegionObserver {
        let history = self.clone();
        Arc::new(move |_, node, event: &RegionEvent| {
            history.push(node, EventKind::Region(event.clone()));
        })
    }
}
