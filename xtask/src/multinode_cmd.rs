//! `cargo xtask multinode`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use clap::{Args as ClapArgs, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use multinode::scenario::{self, LeaseMode, RunConfig, RunReport, Scenario};

use crate::report;

/// Options of `cargo xtask multinode`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Nemesis runs (seeds F..F+N, F from --first-seed); each named scenario
    /// runs max(1, N/20) seeds from F. Default 200 in paused time, 5 with
    /// `--lease k8s` (real time).
    #[arg(long)]
    seeds: Option<u64>,
    /// The first seed of `--seeds`, so a long sweep can be split into parts
    /// (`--seeds 5000 --first-seed 5001` runs 5001..=10000).
    #[arg(long, default_value_t = 1)]
    first_seed: u64,
    /// Run only this scenario (see --help for names).
    #[arg(long, value_parser = parse_scenario)]
    scenario: Option<Scenario>,
    /// Nodes per run (at least 3).
    #[arg(long, default_value_t = 5)]
    nodes: u64,
    /// The lease guarding the coordinator.
    #[arg(long, value_enum, default_value_t = LeaseArg::Memory)]
    lease: LeaseArg,
    /// Run exactly this seed (reproduces a failure).
    #[arg(long)]
    seed: Option<u64>,
    /// Also ask every shard once a second through a healthy majority and
    /// report the measured unavailability (`unavail s`, `worst s`).
    #[arg(long)]
    availability: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LeaseArg {
    /// The in-memory lease (paused time).
    Memory,
    /// The Kubernetes lease against the loopback API server (real time).
    K8s,
    /// No lease: shows the split brain (I1 broken is expected).
    None,
}

fn parse_scenario(name: &str) -> Result<Scenario, String> {
    Scenario::from_name(name).ok_or_else(|| {
        let names: Vec<_> = Scenario::ALL.iter().map(|s| s.name()).collect();
        format!("unknown scenario `{name}`; one of: {}", names.join(", "))
    })
}

pub fn run(args: Args) -> ExitCode {
    let lease = match args.lease {
        LeaseArg::Memory => LeaseMode::Memory,
        LeaseArg::None => LeaseMode::None,
        LeaseArg::K8s => LeaseMode::Kubernetes,
    };
    let seeds = args.seeds.unwrap_or(if lease == LeaseMode::Kubernetes {
        5
    } else {
        200
    });
    if args.nodes < 3 {
        eprintln!(
            "--nodes {} is too few: the scenarios need at least 3",
            args.nodes
        );
        return ExitCode::from(2);
    }
    let scenarios: Vec<Scenario> = match args.scenario {
        Some(s) => vec![s],
        None => Scenario::ALL.to_vec(),
    };
    let mut jobs = Vec::new();
    for &scenario in &scenarios {
        let seeds: Vec<u64> = match (args.seed, scenario) {
            (Some(seed), _) => vec![seed],
            (None, Scenario::Nemesis) => (0..seeds.max(1)).map(|i| args.first_seed + i).collect(),
            (None, _) => (0..(seeds / 20).max(1))
                .map(|i| args.first_seed + i)
                .collect(),
        };
        jobs.extend(seeds.into_iter().map(|seed| RunConfig {
            scenario,
            seed,
            nodes: args.nodes,
            lease,
            availability: args.availability,
        }));
    }
    // With KUBEBUILDER_ASSETS set, the Kubernetes lease runs against a real
    // kube-apiserver + etcd (kept alive until the runs end).
    let _real_api = if lease == LeaseMode::Kubernetes && lease_k8s::envtest::EnvTest::configured() {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("cannot build a runtime to start the API server: {e}");
                return ExitCode::FAILURE;
            }
        };
        match runtime.block_on(lease_k8s::envtest::EnvTest::start_from_env()) {
            Ok(Some(env)) => {
                println!(
                    "lease store: a real kube-apiserver at {} (KUBEBUILDER_ASSETS)",
                    env.url()
                );
                let env = std::sync::Arc::new(env);
                multinode::real_api::use_real_api_server(std::sync::Arc::clone(&env));
                Some((runtime, env))
            }
            Ok(None) => None,
            Err(e) => {
                eprintln!("KUBEBUILDER_ASSETS is set but the API server did not start: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    let started = std::time::Instant::now();
    // Real-time runs share the machine's clock: one at a time keeps them honest.
    let threads = if lease == LeaseMode::Kubernetes {
        1
    } else {
        parallelism()
    };
    let reports = run_all(&jobs, threads, lease);
    let elapsed = started.elapsed();

    let rows = report::rows(&scenarios, &reports, lease);
    print!("{}", report::table(&rows));
    let failed: Vec<&RunReport> = reports.iter().filter(|r| !r.passed).collect();
    let passed = reports.len() - failed.len();
    for r in &failed {
        println!(
            "FAILED {} seed {}: {}\n  reproduce: cargo xtask multinode --scenario {} --seed {} --nodes {} --lease {}",
            r.scenario,
            r.seed,
            r.invariants
                .iter()
                .filter(|i| i.starts_with("FAIL"))
                .cloned()
                .collect::<Vec<_>>()
                .join("; "),
            r.scenario,
            r.seed,
            r.nodes,
            lease_name(lease),
        );
    }

    let dir = target_dir().join("multinode");
    match report::write(&dir, &rows, &reports, lease) {
        Ok(()) => println!("report: {}", dir.join("report.html").display()),
        Err(e) => {
            eprintln!("could not write the report to {}: {e}", dir.display());
            return ExitCode::FAILURE;
        }
    }
    println!("{} runs in {:.1}s", reports.len(), elapsed.as_secs_f64());
    // The last line is the verdict.
    println!("{passed} passed, {} failed", failed.len());
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

pub fn lease_name(lease: LeaseMode) -> &'static str {
    match lease {
        LeaseMode::Memory => "memory",
        LeaseMode::None => "none",
        LeaseMode::Kubernetes => "k8s",
    }
}

/// Runs every job on all cores; each run has its own paused runtime.
fn parallelism() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn run_all(jobs: &[RunConfig], threads: usize, lease: LeaseMode) -> Vec<RunReport> {
    let next = AtomicUsize::new(0);
    let out = Mutex::new(Vec::with_capacity(jobs.len()));
    let progress = Progress::new(jobs.len());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(job) = jobs.get(i) else { break };
                    let report = scenario::run(*job);
                    progress.finished(&report, lease);
                    out.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((i, report));
                }
            });
        }
    });
    progress.done();
    let mut reports = out.into_inner().unwrap_or_else(|e| e.into_inner());
    reports.sort_by_key(|(i, _)| *i);
    reports.into_iter().map(|(_, r)| r).collect()
}

/// Progress on stderr: a bar on a terminal, a plain line every 10 % (and
/// every failure at once, with its seed) when not, as in CI.
struct Progress {
    bar: Option<ProgressBar>,
    total: usize,
    done: AtomicUsize,
    failed: AtomicUsize,
    started: std::time::Instant,
}

impl Progress {
    fn new(total: usize) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total as u64);
            let style = ProgressStyle::with_template(
                "{bar:40} {pos}/{len} runs  {msg}  {elapsed} elapsed, ~{eta} left",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar.set_message("0 failed");
            bar
        });
        Self {
            bar,
            total,
            done: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            started: std::time::Instant::now(),
        }
    }

    fn finished(&self, report: &RunReport, lease: LeaseMode) {
        let done = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        let failed = self.failed.load(Ordering::Relaxed) + usize::from(!report.passed);
        if !report.passed {
            self.failed.fetch_add(1, Ordering::Relaxed);
            let line = format!(
                "FAILED {} seed {} (reproduce: cargo xtask multinode --scenario {} --seed {} --nodes {} --lease {})",
                report.scenario,
                report.seed,
                report.scenario,
                report.seed,
                report.nodes,
                lease_name(lease)
            );
            match &self.bar {
                Some(bar) => bar.println(line),
                None => eprintln!("{line}"),
            }
        }
        match &self.bar {
            Some(bar) => {
                bar.set_message(format!("{failed} failed"));
                bar.inc(1);
            }
            None => {
                let step = (self.total / 10).max(1);
                if done % step == 0 || done == self.total {
                    let elapsed = self.started.elapsed().as_secs_f64();
                    let left = elapsed / done as f64 * (self.total - done) as f64;
                    eprintln!(
                        "progress: {done}/{} runs, {failed} failed, {elapsed:.0}s elapsed, ~{left:.0}s left",
                        self.total
                    );
                }
            }
        }
    }

    fn done(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
            root.canonicalize().unwrap_or(root).join("target")
        })
}
