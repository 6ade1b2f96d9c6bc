//! The faults and their seeded schedule: every kind once per run in a
//! seeded order, then more at random while the run lasts. Pure, so the
//! schedule of a seed is the same on every machine.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use serde::Serialize;

/// What a fault does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum FaultKind {
    /// The victims and the others drop each other's packets.
    Partition,
    /// The victims' packets to the others are dropped; the reverse flows.
    OneWay,
    /// The victims drop a share of their peers' packets at random.
    Loss,
    /// `kill -9`, restarted before membership's down-after.
    KillFast,
    /// `kill -9`, restarted after membership's down-after.
    KillSlow,
    /// SIGSTOP past the lease ttl, then SIGCONT: a stop-the-world pause.
    Pause,
    /// The victims lose the lease store (and the database) but not each other.
    StoreCut,
}

impl FaultKind {
    /// Every kind; each run exercises all of them.
    pub const ALL: [FaultKind; 7] = [
        FaultKind::Partition,
        FaultKind::OneWay,
        FaultKind::Loss,
        FaultKind::KillFast,
        FaultKind::KillSlow,
        FaultKind::Pause,
        FaultKind::StoreCut,
    ];

    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Partition => "partition",
            FaultKind::OneWay => "one-way",
            FaultKind::Loss => "loss",
            FaultKind::KillFast => "kill-9 fast restart",
            FaultKind::KillSlow => "kill-9 slow restart",
            FaultKind::Pause => "SIGSTOP",
            FaultKind::StoreCut => "store cut",
        }
    }
}

/// One scheduled fault.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Fault {
    /// What.
    pub kind: FaultKind,
    /// When it starts, from the run's start.
    pub start: Duration,
    /// How long it lasts (for kills: how long the node stays dead).
    pub duration: Duration,
    /// The nodes it hits (one side of a partition).
    pub victims: Vec<u64>,
    /// Whether the node running the active coordinator, when known at the
    /// start, replaces the first victim (faults that matter most there).
    pub on_coordinator: bool,
    /// For loss: the share of packets dropped, in percent.
    pub loss_percent: u8,
}

impl Fault {
    /// When it ends.
    pub fn end(&self) -> Duration {
        self.start + self.duration
    }
}

/// The timings the schedule is built around.
#[derive(Clone, Copy, Debug)]
pub struct Timings {
    /// The lease ttl.
    pub lease_ttl: Duration,
    /// Membership's down-after.
    pub down_after: Duration,
}

/// When the first fault may start: the cluster has formed.
pub const WARMUP: Duration = Duration::from_secs(6);

/// The schedule for `seed`: every kind once in a seeded order, then random
/// kinds while they fit in `window`. A third of the faults start while the
/// one before still holds (two at once at most); the others follow a gap.
pub fn schedule(seed: u64, nodes: u64, window: Duration, t: Timings) -> Vec<Fault> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut kinds = FaultKind::ALL.to_vec();
    kinds.shuffle(&mut rng);
    let mut faults: Vec<Fault> = Vec::new();
    let mut at = WARMUP;
    let mut i = 0;
    loop {
        let kind = match kinds.get(i) {
            Some(k) => *k,
            None => FaultKind::ALL[rng.random_range(0..FaultKind::ALL.len())],
        };
        let fault = make(&mut rng, kind, at, nodes, t);
        if i >= kinds.len() && fault.end() > window {
            break;
        }
        // The fault before this one: the next may overlap this one only
        // once that one has ended.
        let earlier_end = faults.last().map_or(Duration::ZERO, Fault::end);
        at = if rng.random_bool(1.0 / 3.0) {
            let inside = fault.start + fault.duration.mul_f64(rng.random_range(0.3..0.8));
            inside.max(earlier_end + Duration::from_millis(100))
        } else {
            fault.end().max(earlier_end) + Duration::from_millis(rng.random_range(1500..3000))
        };
        faults.push(fault);
        i += 1;
    }
    faults
}

fn make(rng: &mut StdRng, kind: FaultKind, start: Duration, nodes: u64, t: Timings) -> Fault {
    let ms = |rng: &mut StdRng, lo: Duration, extra_ms: u64| {
        lo + Duration::from_millis(rng.random_range(0..=extra_ms))
    };
    let minority = rng.random_range(1..=((nodes - 1) / 2).max(1));
    let victims_of = |rng: &mut StdRng, count: u64| {
        let mut all: Vec<u64> = (1..=nodes).collect();
        all.shuffle(rng);
        all.truncate(count as usize);
        all.sort_unstable();
        all
    };
    let (duration, count) = match kind {
        // Longer than ttl + down-after: the minority's coordinator lapses
        // and the majority declares it down and takes over.
        FaultKind::Partition => (ms(rng, t.lease_ttl + t.down_after, 1500), minority),
        FaultKind::OneWay | FaultKind::Loss => (
            ms(rng, t.lease_ttl + Duration::from_secs(1), 2000),
            minority,
        ),
        FaultKind::KillFast => (
            ms(
                rng,
                Duration::from_millis(300),
                (t.down_after.as_millis() as u64 / 2).max(1),
            ),
            1,
        ),
        FaultKind::KillSlow => (ms(rng, t.down_after + Duration::from_secs(1), 2000), 1),
        FaultKind::Pause | FaultKind::StoreCut => (
            ms(rng, t.lease_ttl + Duration::from_secs(1), 2000),
            if kind == FaultKind::StoreCut {
                minority
            } else {
                1
            },
        ),
    };
    Fault {
        kind,
        start,
        duration,
        victims: victims_of(rng, count),
        on_coordinator: rng.random_bool(0.5),
        loss_percent: if kind == FaultKind::Loss {
            rng.random_range(30..=70)
        } else {
            0
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timings = Timings {
        lease_ttl: Duration::from_secs(2),
        down_after: Duration::from_secs(3),
    };

    #[test]
    fn every_kind_runs_once_per_seed_and_at_most_two_faults_overlap() {
        let mut overlapping = 0;
        for seed in 0..200 {
            let faults = schedule(seed, 5, Duration::from_secs(60), T);
            for kind in FaultKind::ALL {
                assert!(
                    faults.iter().any(|f| f.kind == kind),
                    "seed {seed}: no {kind:?}"
                );
            }
            for (i, f) in faults.iter().enumerate() {
                let at_once = faults[..i].iter().filter(|e| e.end() > f.start).count();
                assert!(
                    at_once <= 1,
                    "seed {seed}: three faults at once at {:?}",
                    f.start
                );
            }
            if faults.windows(2).any(|p| p[0].end() > p[1].start) {
                overlapping += 1;
            }
            for f in &faults {
                assert!(
                    !f.victims.is_empty() && f.victims.len() <= 2,
                    "seed {seed}: {f:?}"
                );
                assert!(f.victims.iter().all(|v| (1..=5).contains(v)));
            }
            let kill_fast = faults.iter().filter(|f| f.kind == FaultKind::KillFast);
            assert!(
                kill_fast.into_iter().all(|f| f.duration < T.down_after),
                "seed {seed}"
            );
            let slow = faults.iter().filter(|f| f.kind == FaultKind::KillSlow);
            assert!(
                slow.into_iter().all(|f| f.duration > T.down_after),
                "seed {seed}"
            );
        }
        assert!(
            overlapping > 150,
            "only {overlapping} of 200 schedules overlap faults"
        );
    }

    #[test]
    fn a_seed_gives_one_schedule_and_seeds_differ() {
        let a = schedule(7, 5, Duration::from_secs(60), T);
        assert_eq!(a, schedule(7, 5, Duration::from_secs(60), T));
        assert_ne!(a, schedule(8, 5, Duration::from_secs(60), T));
    }
}
