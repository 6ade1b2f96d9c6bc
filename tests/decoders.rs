//! Every decoder that reads bytes from the network, fed random and mutated
//! bytes: it answers with a typed error or a value, never panics, and never
//! allocates more than the input justifies (a length claimed inside a frame
//! must not make the node reserve memory for it).
//!
//! One test, so the allocation counter sees only the decoder under test.
//! The seed is fixed (the same cases in CI every run); `PROPTEST_RNG_SEED`
//! picks another, `FUZZ_CASES` sets the cases per decoder, and `FUZZ_SECS`
//! keeps going with fresh seeds for that long (`cargo xtask fuzz`). A failure
//! prints the decoder, the seed and the smallest input found.

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::time::{Duration, Instant};

use cluster::fuzzing::Decoder;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};

#[global_allocator]
static HEAP: cap::Cap<std::alloc::System> = cap::Cap::new(std::alloc::System, usize::MAX);

/// Bytes a decoder may allocate for an input of `len` bytes: a generous
/// multiple of the input (decoded values are larger than their encoding)
/// plus room for an error message. Far below what a claimed length of
/// megabytes would reserve.
fn budget(len: usize) -> usize {
    64 * len + 16 * 1024
}

fn decoders() -> Vec<Decoder> {
    let mut all = cluster::fuzzing::decoders();
    all.extend(sharding_core::fuzzing::decoders());
    all.extend(cluster_singleton::fuzzing::decoders());
    all
}

#[derive(Debug, Clone)]
enum Mutation {
    FlipBit(usize, u8),
    Set(usize, u8),
    /// A varint of 2^35 - 1: a huge claimed length or count.
    HugeVarint(usize),
    Truncate(usize),
    Duplicate(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, v)| Mutation::Set(i, v)),
        any::<usize>().prop_map(Mutation::HugeVarint),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), 1usize..16).prop_map(|(i, n)| Mutation::Duplicate(i, n)),
    ]
}

fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let at = |i: usize, len: usize| if len == 0 { 0 } else { i % len };
        match *m {
            Mutation::FlipBit(i, bit) if !bytes.is_empty() => {
                let i = at(i, bytes.len());
                bytes[i] ^= 1 << bit;
            }
            Mutation::Set(i, v) if !bytes.is_empty() => {
                let i = at(i, bytes.len());
                bytes[i] = v;
            }
            Mutation::HugeVarint(i) => {
                let i = at(i, bytes.len() + 1);
                bytes.splice(i..i, [0xff, 0xff, 0xff, 0xff, 0x7f]);
            }
            Mutation::Truncate(i) => bytes.truncate(at(i, bytes.len() + 1)),
            Mutation::Duplicate(i, n) if !bytes.is_empty() => {
                let i = at(i, bytes.len());
                let end = (i + n).min(bytes.len());
                let copy = bytes[i..end].to_vec();
                bytes.splice(i..i, copy);
            }
            _ => {}
        }
    }
    bytes
}

fn inputs(samples: Vec<Vec<u8>>) -> BoxedStrategy<Vec<u8>> {
    let random = proptest::collection::vec(any::<u8>(), 0..512);
    if samples.is_empty() {
        return random.boxed();
    }
    let mutated = (
        proptest::sample::select(samples),
        proptest::collection::vec(mutation(), 1..6),
    )
        .prop_map(|(sample, mutations)| mutate(sample, &mutations));
    prop_oneof![1 => random, 3 => mutated].boxed()
}

/// Runs `cases` cases of every decoder from `seed`; the first failure as text.
fn run(seed: u64, cases: u32) -> Result<(), String> {
    for decoder in decoders() {
        let config = Config {
            cases,
            rng_seed: RngSeed::Fixed(seed),
            failure_persistence: None,
            ..Config::default()
        };
        let mut runner = TestRunner::new(config);
        let decode = decoder.decode;
        let result = runner.run(&inputs(decoder.samples.clone()), |bytes| {
            let before = HEAP.total_allocated();
            let _ = decode(&bytes);
            let used = HEAP.total_allocated() - before;
            if used > budget(bytes.len()) {
                return Err(TestCaseError::fail(format!(
                    "allocated {used} bytes for {} input bytes",
                    bytes.len()
                )));
            }
            Ok(())
        });
        if let Err(error) = result {
            return Err(format!("decoder `{}`, seed {seed}: {error}", decoder.name));
        }
    }
    Ok(())
}

fn env<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[test]
fn network_decoders_refuse_bad_bytes_without_panic_or_large_allocations() {
    the_budget_catches_a_decoder_that_trusts_a_claimed_length();
    let cases = env("FUZZ_CASES").unwrap_or(2000);
    let mut seed = env("PROPTEST_RNG_SEED").unwrap_or(0x00de_c0de);
    let deadline = env::<u64>("FUZZ_SECS").map(|s| Instant::now() + Duration::from_secs(s));
    let mut rounds = 0u64;
    loop {
        if let Err(failure) = run(seed, cases) {
            panic!("{failure}");
        }
        rounds += 1;
        match deadline {
            Some(deadline) if Instant::now() < deadline => seed = seed.wrapping_add(1),
            _ => break,
        }
    }
    eprintln!(
        "{} decoders, {rounds} round(s) of {cases} cases each, last seed {seed}",
        decoders().len()
    );
}

/// The check has teeth: a decoder that reserves what its input claims
/// goes over the budget. (Part of the one test, not beside it: a test
/// running in parallel would allocate under the counter.)
fn the_budget_catches_a_decoder_that_trusts_a_claimed_length() {
    fn trusting(bytes: &[u8]) -> Result<(), String> {
        let claimed = postcard::from_bytes::<u32>(bytes).map_err(|e| e.to_string())? as usize;
        let v: Vec<u8> = Vec::with_capacity(claimed.min(64 << 20));
        std::hint::black_box(v);
        Ok(())
    }
    let before = HEAP.total_allocated();
    trusting(&postcard::to_stdvec(&(16u32 << 20)).unwrap()).unwrap();
    let used = HEAP.total_allocated() - before;
    assert!(used > budget(5), "{used}");
}
