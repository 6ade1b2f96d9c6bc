//! Measured unavailability: the price of shard tenure as a user sees it.
//!
//! The checker's `unhosted` figure runs from a shard's stop to its next
//! start, which under light traffic includes waiting for the next message.
//! This probe asks one entity of every shard once per tick through a node of
//! a healthy majority (running, reaching a majority of the nodes both ways,
//! and the lease store); a shard is unavailable for a tick when that ask is
//! not answered within the tick. Ticks without a healthy majority are not
//! counted: nobody could serve then, tenure or not.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use sharding_core::ShardId;
use tokio::time::Instant;

/// What the probe measured over one run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Availability {
    /// Seconds during which a healthy majority existed (probed ticks).
    pub healthy_secs: f64,
    /// Shard-seconds unanswered while a healthy majority existed.
    pub unavailable_shard_secs: f64,
    /// The longest run of unanswered ticks of one shard, in seconds.
    pub worst_secs: f64,
}

/// Accumulates probe ticks; pure (times are passed in), so it is tested on
/// its own.
///
/// A tick's answer stands for the time since the previous tick: a shard
/// unanswered at a tick is counted unavailable for that whole span.
#[derive(Debug, Clone, Default)]
pub struct AvailabilityProbe {
    /// The previous tick (or when the probe was armed); `None` until armed.
    last: Option<Instant>,
    healthy: Duration,
    unavailable: Duration,
    /// How long each shard has been unanswered, tick after tick.
    streak: BTreeMap<ShardId, Duration>,
    worst: Duration,
}

impl AvailabilityProbe {
    /// Starts measuring at `now`.
    pub fn arm(&mut self, now: Instant) {
        self.last = Some(now);
    }

    /// Whether a tick is due at `now`.
    pub fn is_due(&self, now: Instant, tick: Duration) -> bool {
        self.last.is_some_and(|last| now >= last + tick)
    }

    /// The tick taken `at`: `(shard, answered)` for every shard, or `None`
    /// when no healthy majority existed (the span is not counted).
    pub fn record(&mut self, at: Instant, answers: Option<Vec<(ShardId, bool)>>) {
        let Some(last) = self.last.replace(at) else {
            return;
        };
        let Some(answers) = answers else {
            return;
        };
        let since = at.saturating_duration_since(last);
        self.healthy += since;
        for (shard, answered) in answers {
            let streak = self.streak.entry(shard).or_default();
            if answered {
                if !streak.is_zero() {
                    tracing::debug!(%shard, secs = streak.as_secs_f64(), "availability probe: answering again");
                }
                *streak = Duration::ZERO;
            } else {
                *streak += since;
                self.unavailable += since;
                self.worst = self.worst.max(*streak);
            }
        }
    }

    /// The totals so far.
    pub fn result(&self) -> Availability {
        Availability {
            healthy_secs: self.healthy.as_secs_f64(),
            unavailable_shard_secs: self.unavailable.as_secs_f64(),
            worst_secs: self.worst.as_secs_f64(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_unanswered_ticks_and_the_longest_run_of_one_shard() {
        let mut probe = AvailabilityProbe::default();
        let (a, b) = (ShardId(1), ShardId(2));
        let t0 = Instant::now();
        let at = |secs| t0 + Duration::from_secs(secs);
        // Not armed yet: nothing counts.
        probe.record(at(0), Some(vec![(a, false), (b, false)]));
        assert_eq!(probe.result(), Availability::default());
        probe.arm(at(0));
        assert!(!probe.is_due(at(0), Duration::from_secs(1)));
        assert!(probe.is_due(at(1), Duration::from_secs(1)));
        probe.record(at(1), Some(vec![(a, false), (b, true)]));
        probe.record(at(2), Some(vec![(a, false), (b, false)]));
        probe.record(at(5), Some(vec![(a, true), (b, false)]));
        // No healthy majority for 10 s: not counted, streaks kept.
        probe.record(at(15), None);
        probe.record(at(16), Some(vec![(a, false), (b, false)]));
        let r = probe.result();
        assert_eq!(r.healthy_secs, 6.0);
        assert_eq!(r.unavailable_shard_secs, 2.0 + 5.0 + 1.0);
        // b: 1 + 3 + 1 s.
        assert_eq!(r.worst_secs, 5.0);
    }

    #[test]
    fn a_shard_answering_every_tick_is_never_unavailable() {
        let mut probe = AvailabilityProbe::default();
        let t0 = Instant::now();
        probe.arm(t0);
        for i in 1..=10 {
            probe.record(
                t0 + Duration::from_millis(500 * i),
                Some(vec![(ShardId(0), true)]),
            );
        }
        assert_eq!(
            probe.result(),
            Availability {
                healthy_secs: 5.0,
                unavailable_shard_secs: 0.0,
                worst_secs: 0.0
            }
        );
    }
}
