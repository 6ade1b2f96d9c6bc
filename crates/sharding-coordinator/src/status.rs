//! What a coordinator reports about itself.

use cluster::NodeId;
use sharding_core::protocol::Directive;
use sharding_core::{Epoch, TypeName};

/// The coordinator's state, one variant per state of its state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Not the leader: a warm standby that answers nothing.
    Standby,
    /// Leader without the lease: passive, buffering requests, acquiring.
    Acquiring,
    /// Leader, collecting registrations before allocating anything.
    Recovering,
    /// Leader and serving.
    Active,
}

/// A snapshot for probes: the phase and, when active, the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoordinatorStatus {
    /// Current phase.
    pub phase: Phase,
    /// The epoch directives carry while active.
    pub epoch: Option<Epoch>,
}

/// What a coordinator did, for histories and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoordinatorRecord {
    /// The phase changed.
    PhaseChanged {
        /// The new phase.
        phase: Phase,
        /// The epoch in force, if active.
        epoch: Option<Epoch>,
    },
    /// A directive left this coordinator.
    DirectiveSent {
        /// The region it went to.
        to: NodeId,
        /// The directive.
        directive: Directive,
    },
}

/// Receives coordinator records; must be cheap, it runs on the coordinator task.
pub type CoordinatorObserver =
    std::sync::Arc<dyn Fn(&TypeName, NodeId, &CoordinatorRecord) + Send + Sync>;
