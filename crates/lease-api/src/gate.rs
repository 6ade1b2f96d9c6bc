//! The lease gate: when a leader may act, as a sans-I/O state machine.
//!
//! It is the same machine as Akka's ClusterSingletonManager with a lease:
//! a leader first acquires the lease, retries on an interval while it cannot,
//! drops back the instant the lease is lost, and releases it when it stops
//! being leader. It performs no I/O: it answers each event with at most one
//! [`GateCommand`] for its owner to carry out, so both lease-guarded roles
//! embed the same machine: the shard coordinator and the cluster singleton.
//!
//! A leader that finds itself on the minority side of its cluster gives the
//! lease up and waits `minority_delay` before it asks for it again, so that
//! the majority side, which cannot act without the lease, gets it first
//! (the idea of Akka's lease-majority: a lease held by the few would stall
//! the many). If nobody else takes it, the minority takes it back after the
//! delay, so a cluster that really lost most of its nodes keeps serving.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::{LeaseStatus, Observation};

/// For the gate's owner's event loop: resolves when the lease status turns `Lost`; never without a lease.
pub async fn lease_lost(status: &mut Option<watch::Receiver<LeaseStatus>>) -> Option<()> {
    let Some(rx) = status else {
        return std::future::pending().await;
    };
    loop {
        if rx.changed().await.is_err() {
            *status = None;
            return None;
        }
        if matches!(*rx.borrow_and_update(), LeaseStatus::Lost(_)) {
            return Some(());
        }
    }
}

/// For the gate's owner's event loop: resolves each time the watched record
/// turns `Free` (released, deleted, or expired); never without a watch.
pub async fn lease_freed(observed: &mut Option<watch::Receiver<Observation>>) -> Option<()> {
    let Some(rx) = observed else {
        return std::future::pending().await;
    };
    loop {
        if rx.changed().await.is_err() {
            *observed = None;
            return None;
        }
        if matches!(*rx.borrow_and_update(), Observation::Free) {
            return Some(());
        }
    }
}

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
    /// The watch shows the lease free: a waiting leader tries at once
    /// rather than at its next retry.
    LeaseFreed,
    /// The owner's side of the cluster has (true) or has lost (false) a
    /// majority of the nodes it knew. Ignored without a lease (I6).
    Quorum(bool),
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
#[derive(Debug)]
pub struct LeaseGate {
    state: GateState,
    has_lease: bool,
    retry_interval: Duration,
    leader: bool,
    /// How long a leader without a majority leaves the lease to others.
    minority_delay: Duration,
    /// Since when the owner's side has been a minority, if it is.
    minority_since: Option<Instant>,
    /// Draws the retry jitter (seeded by the owner).
    jitter: rand::rngs::StdRng,
}

impl LeaseGate {
    /// A closed gate; `has_lease` false makes it follow leadership alone (I6).
    pub fn new(has_lease: bool, retry_interval: Duration) -> Self {
        Self {
            state: GateState::Standby,
            has_lease,
            retry_interval,
            leader: false,
            minority_delay: Duration::ZERO,
            minority_since: None,
            jitter: crate::jitter::rng_for(""),
        }
    }

    /// Seeds the jitter of acquire retries (each waits 1 to 1.5 retry
    /// intervals), so leaders of different nodes do not retry in step;
    /// give each owner its own seed, e.g. from its name.
    pub fn with_jitter_seed(mut self, owner: &str) -> Self {
        self.jitter = crate::jitter::rng_for(owner);
        self
    }

    fn jittered_retry(&mut self, now: Instant) -> Instant {
        now + crate::jitter::stretch(self.retry_interval, 0.5, &mut self.jitter)
    }

    /// Sets how long a leader on the minority side leaves the lease to the
    /// majority before it asks for it again (default zero: it never steps
    /// aside).
    pub fn with_minority_delay(mut self, delay: Duration) -> Self {
        self.minority_delay = delay;
        self
    }

    /// Whether an acquire may start now: with a majority, or once the
    /// minority delay has passed.
    fn may_acquire(&self, now: Instant) -> bool {
        self.minority_since
            .is_none_or(|since| now >= since + self.minority_delay)
    }

    /// Not acquiring before `now`'s earliest allowed attempt.
    fn wait_until(&self, at: Instant) -> GateState {
        let allowed = self
            .minority_since
            .map_or(at, |since| at.max(since + self.minority_delay));
        GateState::Acquiring {
            in_flight: false,
            retry_at: Some(allowed),
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
        match event {
            GateEvent::Leader(leader) => self.leader = leader,
            GateEvent::Quorum(_) if !self.has_lease => return None,
            GateEvent::Quorum(true) => self.minority_since = None,
            GateEvent::Quorum(false) => {
                self.minority_since.get_or_insert(now);
            }
            _ => {}
        }
        let may_acquire = self.may_acquire(now);
        let (next, command) = match (self.state, event) {
            (Standby, GateEvent::Leader(true)) if !self.has_lease => (Held, None),
            (Standby, GateEvent::Leader(true)) if may_acquire => {
                (Self::acquiring(), Some(GateCommand::Acquire))
            }
            (Standby, GateEvent::Leader(true)) => (self.wait_until(now), None),
            // An acquire that finishes after leadership was lost is given back.
            (Standby, GateEvent::Acquired(true)) => (Standby, Some(GateCommand::Release)),
            (Standby, _) => (Standby, None),

            (Acquiring { in_flight, .. }, GateEvent::Leader(false)) => {
                // A running acquire reports later and is released then.
                let _ = in_flight;
                (Standby, None)
            }
            (Acquiring { .. }, GateEvent::Acquired(true)) if may_acquire => (Held, None),
            // Won while leaving it to the majority: give it back.
            (Acquiring { .. }, GateEvent::Acquired(true)) => {
                (self.wait_until(now), Some(GateCommand::Release))
            }
            (Acquiring { .. }, GateEvent::Acquired(false) | GateEvent::AcquireFailed) => {
                let at = self.jittered_retry(now);
                (self.wait_until(at), None)
            }
            (
                Acquiring {
                    in_flight: false,
                    retry_at: Some(at),
                },
                GateEvent::Tick,
            ) if now >= at => {
                if may_acquire {
                    (Self::acquiring(), Some(GateCommand::Acquire))
                } else {
                    (self.wait_until(now), None)
                }
            }
            // The majority is back, or the watch shows the lease free: no
            // reason to wait any longer.
            (
                Acquiring {
                    in_flight: false, ..
                },
                GateEvent::Quorum(true),
            ) => (Self::acquiring(), Some(GateCommand::Acquire)),
            (
                Acquiring {
                    in_flight: false, ..
                },
                GateEvent::LeaseFreed,
            ) if may_acquire => (Self::acquiring(), Some(GateCommand::Acquire)),
            (state @ Acquiring { .. }, _) => (state, None),

            (Held, GateEvent::Leader(false)) if self.has_lease => {
                (Standby, Some(GateCommand::Release))
            }
            (Held, GateEvent::Leader(false)) => (Standby, None),
            // Lost: closed at once; try again right away, then on the interval.
            (Held, GateEvent::LeaseLost) if self.has_lease && may_acquire => {
                (Self::acquiring(), Some(GateCommand::Acquire))
            }
            (Held, GateEvent::LeaseLost) if self.has_lease => (self.wait_until(now), None),
            // A minority leader steps aside for the majority (has_lease:
            // Quorum never gets here without one).
            (Held, GateEvent::Quorum(false)) if !may_acquire => {
                (self.wait_until(now), Some(GateCommand::Release))
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
    fn refused_or_failed_acquire_retries_after_a_jittered_interval() {
        let now = Instant::now();
        let mut gate = LeaseGate::new(true, RETRY).with_jitter_seed("node-1");
        gate.handle(GateEvent::Leader(true), now);
        assert_eq!(gate.handle(GateEvent::Acquired(false), now), None);
        let first = gate.next_retry().unwrap();
        assert!(
            first >= now + RETRY && first < now + RETRY * 3 / 2,
            "{:?}",
            first - now
        );
        assert_eq!(
            gate.handle(GateEvent::Tick, now + RETRY / 2),
            None,
            "not due yet"
        );
        assert_eq!(
            gate.handle(GateEvent::Tick, first),
            Some(GateCommand::Acquire)
        );
        assert_eq!(gate.next_retry(), None, "in flight");
        assert_eq!(gate.handle(GateEvent::AcquireFailed, first), None);
        let second = gate.next_retry().unwrap();
        assert!(second >= first + RETRY && second < first + RETRY * 3 / 2);
        // Another owner retries on another schedule.
        let mut other = LeaseGate::new(true, RETRY).with_jitter_seed("node-2");
        other.handle(GateEvent::Leader(true), now);
        other.handle(GateEvent::Acquired(false), now);
        assert_ne!(other.next_retry(), Some(first));
    }

    #[test]
    fn a_freed_lease_is_tried_at_once() {
        let now = Instant::now();
        let mut gate = LeaseGate::new(true, RETRY);
        gate.handle(GateEvent::Leader(true), now);
        gate.handle(GateEvent::Acquired(false), now);
        assert_eq!(
            gate.handle(GateEvent::LeaseFreed, now + RETRY / 10),
            Some(GateCommand::Acquire)
        );
        assert_eq!(gate.handle(GateEvent::LeaseFreed, now), None, "in flight");
        gate.handle(GateEvent::Acquired(true), now);
        assert_eq!(gate.handle(GateEvent::LeaseFreed, now), None, "held");
        // Not leader: a free lease is none of our business.
        let mut standby = LeaseGate::new(true, RETRY);
        assert_eq!(standby.handle(GateEvent::LeaseFreed, now), None);
        // On the minority side the delay still holds.
        let mut minority = LeaseGate::new(true, RETRY).with_minority_delay(RETRY * 4);
        minority.handle(GateEvent::Leader(true), now);
        minority.handle(GateEvent::Quorum(false), now);
        assert_eq!(minority.handle(GateEvent::LeaseFreed, now + RETRY), None);
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

    const DELAY: Duration = Duration::from_secs(30);

    fn held_with_minority_delay(now: Instant) -> LeaseGate {
        let mut gate = LeaseGate::new(true, RETRY).with_minority_delay(DELAY);
        gate.handle(GateEvent::Leader(true), now);
        gate.handle(GateEvent::Acquired(true), now);
        assert!(gate.is_open(true));
        gate
    }

    #[test]
    fn a_minority_leader_releases_and_asks_again_only_after_the_delay() {
        let now = Instant::now();
        let mut gate = held_with_minority_delay(now);
        assert_eq!(
            gate.handle(GateEvent::Quorum(false), now),
            Some(GateCommand::Release)
        );
        assert!(!gate.is_open(true));
        assert_eq!(gate.next_retry(), Some(now + DELAY));
        assert_eq!(gate.handle(GateEvent::Tick, now + DELAY / 2), None);
        assert_eq!(
            gate.handle(GateEvent::Tick, now + DELAY),
            Some(GateCommand::Acquire)
        );
        // Nobody took it: the minority keeps it, and a repeated minority
        // report does not make it give the lease up again.
        assert_eq!(gate.handle(GateEvent::Acquired(true), now + DELAY), None);
        assert!(gate.is_open(true));
        assert_eq!(gate.handle(GateEvent::Quorum(false), now + DELAY), None);
        assert!(gate.is_open(true));
    }

    #[test]
    fn a_majority_again_asks_at_once() {
        let now = Instant::now();
        let mut gate = held_with_minority_delay(now);
        gate.handle(GateEvent::Quorum(false), now);
        assert_eq!(
            gate.handle(GateEvent::Quorum(true), now + RETRY),
            Some(GateCommand::Acquire)
        );
        gate.handle(GateEvent::Acquired(true), now + RETRY);
        assert!(gate.is_open(true));
    }

    #[test]
    fn a_new_leader_in_a_minority_waits_and_gives_back_an_early_win() {
        let now = Instant::now();
        let mut gate = LeaseGate::new(true, RETRY).with_minority_delay(DELAY);
        gate.handle(GateEvent::Quorum(false), now);
        assert_eq!(gate.handle(GateEvent::Leader(true), now), None);
        assert_eq!(gate.next_retry(), Some(now + DELAY));
        // A refused attempt never retries before the delay ends.
        let mut gate = LeaseGate::new(true, RETRY).with_minority_delay(DELAY);
        gate.handle(GateEvent::Leader(true), now);
        gate.handle(GateEvent::Quorum(false), now);
        assert_eq!(
            gate.handle(GateEvent::Acquired(true), now),
            Some(GateCommand::Release),
            "an acquire started with a majority lands in a minority"
        );
        assert_eq!(gate.next_retry(), Some(now + DELAY));
    }

    #[test]
    fn without_a_lease_quorum_changes_nothing() {
        let now = Instant::now();
        let mut gate = LeaseGate::new(false, RETRY).with_minority_delay(DELAY);
        gate.handle(GateEvent::Leader(true), now);
        assert_eq!(gate.handle(GateEvent::Quorum(false), now), None);
        assert!(gate.is_open(false));
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
