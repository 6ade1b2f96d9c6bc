//! Deterministic jitter: contenders that retry on the same period spread
//! out instead of hitting the store in the same millisecond. Seeded (by the
//! owner name) so a run can be replayed.

use std::time::Duration;

/// A seed from a name (FNV-1a).
pub(crate) fn seed_from(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The `n`th number of the sequence `seed` (splitmix64), in [0, 1).
pub(crate) fn unit(seed: u64, n: u64) -> f64 {
    let mut z = seed.wrapping_add(n.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// `base` stretched by a factor in [1, 1 + `spread`).
pub(crate) fn stretch(base: Duration, spread: f64, seed: u64, n: u64) -> Duration {
    base.mul_f64(1.0 + spread * unit(seed, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_stay_in_range_and_differ_by_seed() {
        let a: Vec<f64> = (0..100).map(|n| unit(seed_from("node-1"), n)).collect();
        let b: Vec<f64> = (0..100).map(|n| unit(seed_from("node-2"), n)).collect();
        assert!(a.iter().chain(&b).all(|x| (0.0..1.0).contains(x)));
        assert_ne!(a, b);
        let mean = a.iter().sum::<f64>() / a.len() as f64;
        assert!((0.3..0.7).contains(&mean), "{mean}");
        let d = stretch(Duration::from_secs(1), 0.5, 7, 3);
        assert!(d >= Duration::from_secs(1) && d < Duration::from_millis(1500));
    }
}
