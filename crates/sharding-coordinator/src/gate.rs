//! The lease gate: when a leader may act, as a sans-I/O state machine.
//!
//! It is the same machine as Akka's ClusterSingletonManager with a lease:
//! a leader first acquires the lease, retries on an interval while it cannot,
//! drops back the instant the lease is lost, and releases it when it stops
//! being leader. It performs no I/O: it answers each event with at most one
//! [`GateCommand`] for its owner to carry out, so the coordinator embeds it
//! today and a lease-guarded cluster singleton can embed it later.

use std::time::Duration;

use tokio::time::Instant;

/// Where the gate is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateState {
    /// Not leader: closed.
    Standby,
    /// Leader, lease not held: closed. `in_flight` while an acquire runs;
    /// otherwise the next attempt is due at `retry_at`.
    Acquiring {
        /// An acquire is running.
        in_flight: bool,
        /// When the next attempt is due, if none is running.
        retry_at: Option<Instant>,
    },
    /// Leader and lease held (or no lease configured): open.
    Held,
}

/// Something that happened to the gate's owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateEvent {
    /// The owner's node became (true) or stopped being (false) the leader.
    Leader(bool),
    /// An acquire finished: `true` if the lease is ours now.
    Acquired(bool),
    /// An acquire failed with an error.
    AcquireFailed,
    /// The lease was lost (status `Lost`, or `check_alive` turned false).
    LeaseLost,
    /// Time passed; due retries fire.
    Tick,
}

/// What the owner must do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateCommand {
    /// Start `lease.acquire()` and report [`GateEvent::Acquired`] or [`GateEvent::AcquireFailed`].
    Acquire,
    /// Start `lease.release()`; its outcome is only logged, never awaited.
    Release,
}

/// The gate. Without a lease it opens as soon as its owner leads.
#[derive(Debug, Clone)]
pub struct LeaseGate {
    state: GateState,
    has_lease: bool,
    retry_interval: Duration,
    leader: bool,
}

impl LeaseGate {
    /// A closed gate; `has_lease` false makes it follow leadership alone (I6).
    pub fn new(has_lease: bool, retry_interval: Duration) -> Self {
        Self {
            state: GateState::Standby,
            has_lease,
            retry_interval,
            leader: false,
        }
    }

    /// The current state.
    pub fn state(&self) -> GateState {
        self.state
    }

    /// Whether the owner may act, given the lease's local `check_alive`.
    pub fn is_open(&self, lease_alive: bool) -> bool {
        self.state == GateState::Held && self.leader && (!self.has_lease || lease_alive)
    }

    /// When the owner should send [`GateEvent::Tick`] next, if ever.
    pub fn next_retry(&self) -> Option<Instant> {
        match self.state {
            GateState::Acquiring {
                in_flight: false,
                retry_at,
            } => retry_at,
            _ => None,
        }
    }

    /// Feeds one event; every transition of the gate is here.
    pub fn handle(&mut self, event: GateEvent, now: Instant) -> Option<GateCommand> {
        use GateState::{Acquiring, Held, Standby};
        if let GateEvent::Leader(leader) = event {
            self.leader = leader;
        }
        let (next, command) = match (self.state, event) {
            (Standby, GateEvent::Leader(true)) if !self.has_lease => (Held, None),
            (Standby, GateEvent::Leader(true)) => (Self::acquiring(), Some(GateCommand::Acquire)),
            // An acquire that finishes after leadership was lost is given back.
            (Standby, GateEvent::Acquired(true)) => (Standby, Some(GateCommand::Release)),
            (Standby, _) => (Standby, None),

            (Acquiring { in_flight, .. }, GateEvent::Leader(false)) => {
                // A running acquire reports later and is released then.
                let _ = in_flight;
                (Standby, None)
            }
            (Acquiring { .. }, GateEvent::Acquired(true)) => (Held, None),
            (Acquiring { .. }, GateEvent::Acquired(false) | GateEvent::AcquireFailed) => (
                Acquiring {
                    in_flight: false,
                    retry_at: Some(now + self.retry_interval),
                },
                None,
            ),
            (
                Acquiring {
                    in_flight: false,
                    retry_at: Some(at),
                },
                GateEvent::Tick,
            ) if now >= at => (Self::acquiring(), Some(GateCommand::Acquire)),
            (state @ Acquiring { .. }, _) => (state, None),

            (Held, GateEvent::Leader(false)) if self.has_lease => {
                (Standby, Some(GateCommand::Release))
            }
            (Held, GateEvent::Leader(false)) => (Standby, None),
            // Lost: closed at once; try again right away, then on the interval.
            (Held, GateEvent::LeaseLost) if self.has_lease => {
                (Self::acquiring(), Some(GateCommand::Acquire))
            }
            (Held, _) => (Held, None),
        };
        if next != self.state {
            tracing::debug!(from = ?self.state, to = ?next, ?event, "lease gate");
        }
        self.state = next;
        command
    }

    fn acquiring() -> GateState {
        GateState::Acquiring {
            in_flight: true,
            retry_at: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RETRY: Duration = Duration::from_secs(5);

    #[test]
    fn without_a_lease_the_gate_follows_leadership() {
        let now = Instant::now();
        let mut gate = LeaseGate::new(false, RETRY);
        assert!(!gate.is_open(false));
        assert_eq!(gate.handle(GateEvent::Leader(true), now), None);
        assert!(gate.is_open(false), "no lease: alive-ness is irrelevant");
        assert_eq!(gate.handle(GateEvent::LeaseLost, now), None);
        assert!(gate.is_open(false));
        assert_eq!(gate.handle(GateEvent::Leader(false), now), None);
        assert!(!gate.is_open(true));
    }

    #[test]
    fn leader_acquires_before_opening() {
        let now = Instant::now();
        let mut gate = LeaseGate::new(true, RETRY);
        assert_eq!(
            gate.handle(GateEvent::Leader(true), now),
            Some(GateCommand::Acquire)
        );
        assert!(!gate.is_open(true), "closed while the acquire runs");
        assert_eq!(gate.handle(GateEvent::Acquired(true), now), None);
        assert!(gate.is_open(true));
        assert!(
            !gate.is_open(false),
            "closed the instant the lease is not alive"
        );
    }

    #[test]
    fn refused_or_failed_acquire_retries_on_the_interval() {
        let now = Instant::now();
        let mut gate = LeaseGate::new(true, RETRY);
        gate.handle(GateEvent::Leader(true), now);
        assert_eq!(gate.handle(GateEvent::Acquired(false), now), None);
        assert_eq!(gate.next_retry(), Some(now + RETRY));
        assert_eq!(
            gate.handle(GateEvent::Tick, now + RETRY / 2),
            None,
            "not due yet"
        );
        assert_eq!(
            gate.handle(GateEvent::Tick, now + RETRY),
            Some(GateCommand::Acquire)
        );
        assert_eq!(gate.next_retry(), None, "in flight");
        assert_eq!(gate.handle(GateEvent::AcquireFailed, now + RETRY), None);
        assert_eq!(gate.next_retry(), Some(now + RETRY * 2));
    }

    #[test]
    fn lost_lease_closes_and_retries_at_once() {
        let now = Instant::now();
        let mut gate = LeaseGate::new(true, RETRY);
        gate.handle(GateEvent::Leader(true), now);
        gate.handle(GateEvent::Acquired(true), now);
        assert_eq!(
            gate.handle(GateEvent::LeaseLost, now),
            Some(GateCommand::Acquire)
        );
        assert!(!gate.is_open(true));
        gate.handle(GateEvent::Acquired(true), now);
        assert!(gate.is_open(true));
    }

    #[test]
    fn losing_leadership_releases() {
        let now = Instant::now();
        let mut gate = LeaseGate::new(true, RETRY);
        gate.handle(GateEvent::Leader(true), now);
        gate.handle(GateEvent::Acquired(true), now);
        assert_eq!(
            gate.handle(GateEvent::Leader(false), now),
            Some(GateCommand::Release)
        );
        assert_eq!(gate.state(), GateState::Standby);
    }

    #[test]
    fn an_acquire_that_lands_after_leadership_is_gone_is_released() {
        let now = Instant::now();
        let mut gate = LeaseGate::new(true, RETRY);
        gate.handle(GateEvent::Leader(true), now);
        assert_eq!(gate.handle(GateEvent::Leader(false), now), None);
        assert_eq!(
            gate.handle(GateEvent::Acquired(true), now),
            Some(GateCommand::Release)
        );
        assert!(!gate.is_open(true));
    }
}
