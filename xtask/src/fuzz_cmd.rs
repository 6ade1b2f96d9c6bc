//! `cargo xtask fuzz --secs N`: the network decoders' property tests
//! (`tests/decoders.rs`, the generators CI runs) in release mode, with fresh
//! seeds until N seconds have passed. A failure prints the decoder, the
//! seed and the smallest input; rerun it with `PROPTEST_RNG_SEED=<seed>`.

use std::process::{Command, ExitCode};

/// Options of `cargo xtask fuzz`.
#[derive(clap::Args)]
pub struct Args {
    /// How long to keep generating inputs.
    #[arg(long, default_value_t = 60)]
    secs: u64,
    /// The first seed (default: from the clock, printed).
    #[arg(long)]
    seed: Option<u64>,
}

pub fn run(args: Args) -> ExitCode {
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(1)
    });
    println!(
        "fuzzing the network decoders for {} s from seed {seed}",
        args.secs
    );
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "test",
            "--release",
            "-p",
            "lease-sharding",
            "--test",
            "decoders",
            "--",
            "--nocapture",
        ])
        .env("FUZZ_SECS", args.secs.to_string())
        .env("PROPTEST_RNG_SEED", seed.to_string())
        .status();
    match status {
        Ok(s) if s.success() => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("fuzz: could not run cargo: {error}");
            ExitCode::FAILURE
        }
    }
}
