//! `cargo xtask <task>`: the project's own commands.
//!
//! - `multinode`: the split-brain suite (named scenarios and a seeded nemesis,
//!   in paused time), a table, `target/multinode/report.{json,html}`, and a
//!   non-zero exit on any broken invariant.
//! - `bench`: the benchmarks, each figure against its baseline.
//! - `certs`: a development CA and node certificates for mutual TLS.
//! - `fuzz`: the network decoders' property tests, for longer.
//! - `nemesis`: the split-brain suite on real processes in network
//!   namespaces (root, iproute2, nftables).

mod bench_cmd;
mod certs_cmd;
mod fuzz_cmd;
mod k8s_bench;
mod multinode_cmd;
mod nemesis;
mod report;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Run the multi-node split-brain suite.
    Multinode(multinode_cmd::Args),
    /// Run the benchmarks and print each figure against its baseline.
    Bench(bench_cmd::Args),
    /// Write a development CA and node certificates for mutual TLS.
    Certs(certs_cmd::Args),
    /// Fuzz the network decoders for a while (release build, fresh seeds).
    Fuzz(fuzz_cmd::Args),
    /// Run the split-brain suite on real processes in network namespaces (root).
    Nemesis(nemesis::Args),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().task {
        Task::Multinode(args) => multinode_cmd::run(args),
        Task::Bench(args) => bench_cmd::run(args, multinode_cmd::target_dir()),
        Task::Certs(args) => certs_cmd::run(args),
        Task::Fuzz(args) => fuzz_cmd::run(args),
        Task::Nemesis(args) => nemesis::run(args, multinode_cmd::target_dir()),
    }
}
