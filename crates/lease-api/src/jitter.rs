//! Deterministic jitter: contenders that retry on the same period spread
//! out instead of hitting the store in the same millisecond. Seeded (by the
//! owner name) with the workspace's seeded RNG, so a run can be replayed.

use std::hash::{Hash, Hasher};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// A seeded RNG for `name` (the same name, the same sequence).
pub(crate) fn rng_for(name: &str) -> StdRng {
    // DefaultHasher::new() uses fixed keys: stable within a build.
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    name.hash(&mut hasher);
    StdRng::seed_from_u64(hasher.finish())
}

/// `base` stretched by a factor drawn from [1, 1 + `spread`).
pub(crate) fn stretch(base: Duration, spread: f64, rng: &mut StdRng) -> Duration {
    base.mul_f64(1.0 + spread * rng.random_range(0.0..1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stretches_stay_in_range_and_differ_by_name() {
        let base = Duration::from_secs(1);
        let (mut a, mut b) = (rng_for("node-1"), rng_for("node-2"));
        let xs: Vec<Duration> = (0..100).map(|_| stretch(base, 0.5, &mut a)).collect();
        let ys: Vec<Duration> = (0..100).map(|_| stretch(base, 0.5, &mut b)).collect();
        assert!(
            xs.iter()
                .chain(&ys)
                .all(|d| *d >= base && *d < base * 3 / 2)
        );
        assert_ne!(xs, ys);
        let again: Vec<Duration> = {
            let mut a = rng_for("node-1");
            (0..100).map(|_| stretch(base, 0.5, &mut a)).collect()
        };
        assert_eq!(xs, again, "seeded: replayable");
    }
}
