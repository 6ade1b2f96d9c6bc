//! Shard tenure: how long a region may keep hosting its shards without
//! hearing from the active coordinator (invariant I5).
//!
//! GFS's chunk lease, applied to a region's shards: the coordinator grants,
//! the region renews through periodic contact, and each side measures on its
//! own clock in the direction that keeps the region's belief shorter than
//! the coordinator's. A region stops its shards when its tenure lapses; the
//! coordinator re-homes them only once that tenure has surely ended.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::time::Instant;

use crate::Epoch;

/// Suspends, in the lease store, the tenure of the coordinator whose epoch
/// (its fencing token) is given, and resolves to whether the store now shows
/// that tenure suspended with nobody holding the lease after it. `false` on
/// any doubt (unreachable store, another tenure, a backend that cannot). A
/// region calls it when its coordinator stops answering, to bridge its
/// tenure until a successor re-grants (`docs/architecture.md`, "Shard
/// tenure").
pub type TenureSuspender = Arc<dyn Fn(Epoch) -> BoxFuture<'static, bool> + Send + Sync>;

/// Timing of shard tenure. Used only with a lease: without one two sides
/// of a partition would each grant tenures (and I6 keeps that path as it was).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TenureSettings {
    /// How long a grant lets a region host its shards, from the start of the
    /// renew request it answers (default 15 s: half the default lease ttl,
    /// and above membership's down-after, so a region the coordinator still
    /// counts as a member has renewed several times).
    pub tenure: Duration,
    /// How often a region renews (default 3 s: four renewals can be lost
    /// before a healthy region's tenure lapses).
    pub renew_interval: Duration,
    /// The largest relative rate difference between two nodes' clocks
    /// (default 0.01; NTP-disciplined clocks drift below 0.0005).
    pub clock_rate_bound: f64,
    /// Kept off the region's belief and added to the coordinator's wait
    /// (default 1 s): scheduling delays and the instant a lapse takes.
    pub margin: Duration,
    /// How long a region keeps hosting after a look at the lease store that
    /// found its coordinator's tenure suspended and nobody holding the lease
    /// after it (default 8 s; a region looks again every `renew_interval`).
    /// This bridges the gap after a coordinator crash until a successor
    /// re-grants, and is what that successor waits out for shards nobody
    /// claims (`docs/architecture.md`, "Shard tenure").
    pub bridge: Duration,
}

impl Default for TenureSettings {
    fn default() -> Self {
        Self {
            tenure: Duration::from_secs(15),
            renew_interval: Duration::from_secs(3),
            clock_rate_bound: 0.01,
            margin: Duration::from_secs(1),
            bridge: Duration::from_secs(8),
        }
    }
}

/// A tenure setting that cannot work, named.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid tenure setting `{field}`: {reason}")]
pub struct TenureError {
    /// The field.
    pub field: &'static str,
    /// Why.
    pub reason: String,
}

impl TenureSettings {
    /// Checks the settings; the error names the first bad field.
    pub fn validate(&self) -> Result<(), TenureError> {
        let bad = |field, reason: String| Err(TenureError { field, reason });
        if self.renew_interval.is_zero() {
            return bad("renew_interval", "must be positive".into());
        }
        if !(0.0..1.0).contains(&self.clock_rate_bound) {
            return bad(
                "clock_rate_bound",
                format!("{} must be in [0, 1)", self.clock_rate_bound),
            );
        }
        if self.tenure <= self.margin + self.renew_interval * 2 {
            return bad(
                "tenure",
                format!(
                    "{:?} must exceed margin ({:?}) + 2 x renew_interval ({:?}), or one lost renewal lapses it",
                    self.tenure, self.margin, self.renew_interval
                ),
            );
        }
        if self.bridge <= self.margin + self.renew_interval * 2 || self.bridge > self.tenure {
            return bad(
                "bridge",
                format!(
                    "{:?} must exceed margin ({:?}) + 2 x renew_interval ({:?}), or one slow look at the store lapses it, and stay at most tenure ({:?})",
                    self.bridge, self.margin, self.renew_interval, self.tenure
                ),
            );
        }
        Ok(())
    }

    /// Checks that grants fit under a lease of these timings: a coordinator
    /// grants only tenures that end before its lease's validity deadline,
    /// which in steady state lies at least `ttl - safety_margin - heartbeat`
    /// ahead.
    pub fn fits_under(
        &self,
        ttl: Duration,
        safety_margin: Duration,
        heartbeat: Duration,
    ) -> Result<(), TenureError> {
        let room = ttl.saturating_sub(safety_margin).saturating_sub(heartbeat);
        if self.bound() >= room {
            return Err(TenureError {
                field: "tenure",
                reason: format!(
                    "{:?} x (1 + {}) + {:?} must stay below the lease's ttl - safety margin - heartbeat ({room:?}), or no grant fits under the lease",
                    self.tenure, self.clock_rate_bound, self.margin
                ),
            });
        }
        Ok(())
    }

    /// How long the coordinator waits, after the last grant it sent a region,
    /// before that region's tenure has surely ended on every clock:
    /// `tenure x (1 + clock_rate_bound) + margin`.
    pub fn bound(&self) -> Duration {
        self.tenure.mul_f64(1.0 + self.clock_rate_bound) + self.margin
    }

    /// How long a coordinator whose lease followed a suspended tenure waits
    /// before placing a shard nobody claims, since it became active: every
    /// region bridging on the suspension looked at the store before we
    /// acquired, so its bridge ends within `bridge x (1 + clock_rate_bound)
    /// + margin`.
    pub fn bridge_bound(&self) -> Duration {
        self.bridge.mul_f64(1.0 + self.clock_rate_bound) + self.margin
    }
}

/// Renew requests remembered, to match grants to their start.
const IN_FLIGHT: usize = 16;

/// A region's side of its tenure: renew requests in flight and the local
/// deadline. Pure: the region's task feeds it and asks it.
#[derive(Debug, Clone)]
pub(crate) struct TenureClock {
    settings: TenureSettings,
    next_seq: u64,
    sent: VecDeque<(u64, Instant)>,
    valid_until: Option<Instant>,
}

impl TenureClock {
    pub(crate) fn new(settings: TenureSettings) -> Self {
        Self {
            settings,
            next_seq: 0,
            sent: VecDeque::new(),
            valid_until: None,
        }
    }

    pub(crate) fn settings(&self) -> &TenureSettings {
        &self.settings
    }

    /// A renew request leaves now; returns its sequence number.
    pub(crate) fn request(&mut self, now: Instant) -> u64 {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        if self.sent.len() == IN_FLIGHT {
            self.sent.pop_front();
        }
        self.sent.push_back((seq, now));
        seq
    }

    /// A grant answering request `seq` arrived: valid until that request's
    /// start + tenure - margin (never shortened). `false` for a grant that
    /// answers no request we remember (too old, or not ours).
    pub(crate) fn granted(&mut self, seq: u64) -> bool {
        let Some(&(_, started)) = self.sent.iter().find(|(s, _)| *s == seq) else {
            return false;
        };
        let until = started + self.settings.tenure - self.settings.margin;
        self.valid_until = Some(self.valid_until.map_or(until, |v| v.max(until)));
        // Older requests can only grant less.
        self.sent.retain(|(s, _)| *s > seq);
        true
    }

    /// Whether the region may host shards at `now`.
    pub(crate) fn is_valid(&self, now: Instant) -> bool {
        self.valid_until.is_some_and(|v| now < v)
    }

    /// When the tenure lapses, if it is held.
    pub(crate) fn valid_until(&self) -> Option<Instant> {
        self.valid_until
    }

    /// Whether the tenure is held at `now` but close enough to its end that
    /// the region should look at the store for a suspension to bridge on:
    /// two renew intervals or less left (two renewals unanswered).
    pub(crate) fn wants_bridge(&self, now: Instant) -> bool {
        self.valid_until
            .is_some_and(|v| now < v && v - now <= self.settings.renew_interval * 2)
    }

    /// A look at the store that started at `started` found our
    /// coordinator's tenure suspended and nobody after it; its answer came
    /// at `now`. Only an answer that came while the tenure still held
    /// bridges it (so the look saw the store before our coordinator could
    /// act on our lapse): then valid until `started + bridge - margin`, never
    /// shortened. Returns whether it bridged.
    pub(crate) fn bridged(&mut self, started: Instant, now: Instant) -> bool {
        if !self.is_valid(now) {
            return false;
        }
        let until = started + self.settings.bridge - self.settings.margin;
        self.valid_until = self.valid_until.map(|v| v.max(until));
        true
    }

    /// The tenure lapsed (or the region restarts its registration): nothing
    /// is held until the next grant.
    pub(crate) fn lapse(&mut self) {
        self.valid_until = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> TenureSettings {
        TenureSettings::default()
    }

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        assert_eq!(settings().validate(), Ok(()));
        let short = TenureSettings {
            tenure: Duration::from_secs(5),
            ..settings()
        };
        assert_eq!(short.validate().unwrap_err().field, "tenure");
        let rate = TenureSettings {
            clock_rate_bound: 1.5,
            ..settings()
        };
        assert_eq!(rate.validate().unwrap_err().field, "clock_rate_bound");
        let zero = TenureSettings {
            renew_interval: Duration::ZERO,
            ..settings()
        };
        assert_eq!(zero.validate().unwrap_err().field, "renew_interval");
        let bridge = TenureSettings {
            bridge: Duration::from_secs(6),
            ..settings()
        };
        assert_eq!(bridge.validate().unwrap_err().field, "bridge");
        let long = TenureSettings {
            bridge: Duration::from_secs(16),
            ..settings()
        };
        assert_eq!(long.validate().unwrap_err().field, "bridge");
        // The default lease: ttl 30 s, heartbeat 3 s; a 2 s lease has no room.
        let s = Duration::from_secs;
        assert_eq!(settings().fits_under(s(30), s(1), s(3)), Ok(()));
        assert_eq!(
            settings()
                .fits_under(s(2), Duration::from_millis(200), s(1))
                .unwrap_err()
                .field,
            "tenure"
        );
    }

    #[test]
    fn the_coordinator_waits_longer_than_any_region_believes() {
        let s = settings();
        // The region's belief, measured from its request's start, is tenure - margin;
        // the coordinator's wait from its (later) grant is tenure x 1.01 + margin.
        assert!(s.bound() > s.tenure - s.margin);
        assert_eq!(s.bound(), Duration::from_millis(16_150));
    }

    #[tokio::test(start_paused = true)]
    async fn a_grant_counts_from_the_start_of_the_request_it_answers() {
        let mut clock = TenureClock::new(settings());
        let t0 = Instant::now();
        assert!(!clock.is_valid(t0), "nothing held before a grant");
        let first = clock.request(t0);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(clock.granted(first));
        assert_eq!(clock.valid_until(), Some(t0 + Duration::from_secs(14)));
        assert!(clock.is_valid(t0 + Duration::from_secs(13)));
        assert!(!clock.is_valid(t0 + Duration::from_secs(14)));
        // A late answer to an older request never shortens it.
        let second = clock.request(t0 + Duration::from_secs(3));
        let third = clock.request(t0 + Duration::from_secs(6));
        assert!(clock.granted(third));
        assert!(!clock.granted(second), "older than the last grant");
        assert_eq!(clock.valid_until(), Some(t0 + Duration::from_secs(20)));
        assert!(!clock.granted(99), "answers nothing we sent");
        clock.lapse();
        assert!(!clock.is_valid(t0 + Duration::from_secs(7)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_bridge_counts_from_the_look_and_only_while_the_tenure_holds() {
        let s = Duration::from_secs;
        let mut clock = TenureClock::new(settings());
        let t0 = Instant::now();
        let seq = clock.request(t0);
        assert!(clock.granted(seq)); // valid until t0 + 14 s
        assert!(
            !clock.wants_bridge(t0 + s(7)),
            "8 s left: renewals may still come"
        );
        assert!(
            clock.wants_bridge(t0 + s(8)),
            "6 s left: two renewals unanswered"
        );
        // A look that started at 9 s and came back at 9.5 s: valid until 16 s.
        assert!(clock.bridged(t0 + s(9), t0 + Duration::from_millis(9_500)));
        assert_eq!(clock.valid_until(), Some(t0 + s(16)));
        // An early look never shortens it.
        assert!(clock.bridged(t0 + s(1), t0 + s(10)));
        assert_eq!(clock.valid_until(), Some(t0 + s(16)));
        // An answer after the end bridges nothing: the coordinator may
        // already have acted on the lapse.
        assert!(!clock.bridged(t0 + s(15), t0 + s(16)));
        assert_eq!(clock.valid_until(), Some(t0 + s(16)));
        assert_eq!(settings().bridge_bound(), Duration::from_millis(9_080));
    }
}
