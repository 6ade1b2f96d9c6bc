//! `cargo xtask nemesis`: the split-brain suite on real processes.
//!
//! N counter-service processes, each in its own network namespace on one
//! bridge, guarded by one lease store (the API server emulator, or the real
//! kube-apiserver when `KUBEBUILDER_ASSETS` is set) and, with a database
//! URL, durable counters in PostgreSQL. A seeded schedule partitions, cuts
//! one way, drops packets, `kill -9`s, SIGSTOPs and cuts the store off while
//! a client in the root namespace increments and reads counters and polls
//! every node's `/status`; the checker judges the history. Needs root,
//! iproute2 and nftables.

mod checker;
mod fault;
mod history;
mod inject;
mod net;
mod procs;
mod relay;
mod report;
mod workload;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::{Args as ClapArgs, ValueEnum};

use fault::{Fault, Timings};
use history::{AppliedFault, Probe, RunHistory};
use inject::{Active, Injector};
use net::Network;
use procs::Procs;
use relay::Relay;
use workload::Recorder;

/// Options of `cargo xtask nemesis`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Runs, with seeds 1..=N.
    #[arg(long, default_value_t = 20)]
    seeds: u64,
    /// Run exactly this seed (reproduces a failure).
    #[arg(long)]
    seed: Option<u64>,
    /// Processes per run (at least 3).
    #[arg(long, default_value_t = 5)]
    nodes: u64,
    /// Seconds of faults per run (every fault kind runs at least once,
    /// whatever this says).
    #[arg(long, default_value_t = 60)]
    secs: u64,
    /// PostgreSQL on this machine's loopback for durable counters (then the
    /// checker also demands every acknowledged increment in the final value).
    #[arg(long, env = "TEST_DATABASE_URL")]
    database_url: Option<String>,
    /// Run a deliberately broken build, to show the checker catching it;
    /// the command then succeeds only if every run fails.
    #[arg(long = "break", value_enum)]
    broken: Option<Break>,
}

/// What `--break` breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Break {
    /// The coordinator and the singleton run without their lease (its gate
    /// bypassed): a partition lets both sides activate one (I1, I5, I7).
    NoLease,
    /// Counters acknowledged from memory, not saved, judged as if durable:
    /// a `kill -9` loses acknowledged increments (the writes check).
    Volatile,
}

impl Break {
    /// Whether the checker caught what this breaks in `row`.
    fn caught(self, row: &report::Row) -> bool {
        match self {
            Break::NoLease => [&row.i1, &row.i5, &row.i7].iter().any(|c| *c == "FAIL"),
            Break::Volatile => row.writes == "FAIL",
        }
    }
}

/// The processes' timings: fast, so faults outlast them within seconds.
const LEASE_TTL: Duration = Duration::from_secs(2);
const LEASE_HEARTBEAT: Duration = Duration::from_millis(300);
const DOWN_AFTER: Duration = Duration::from_secs(3);
/// The service's fast-timing recovery timeout and tenure (main.rs).
const RECOVERY: Duration = Duration::from_millis(500);
const TENURE: Duration = Duration::from_millis(1100);
/// A restarted debug-build process: start, join, and its first lease round.
const RESTART_ALLOWANCE: Duration = Duration::from_secs(3);
const COUNTERS: usize = 16;
const CLIENTS: u64 = 4;

/// I4's bound from the heal: the store's ttl and heartbeat, down-after,
/// the coordinator's recovery, a tenure, and a process restart.
fn bound() -> Duration {
    LEASE_TTL + LEASE_HEARTBEAT + DOWN_AFTER + RECOVERY + TENURE + RESTART_ALLOWANCE
}

pub fn run(args: Args, target: PathBuf) -> ExitCode {
    if args.nodes < 3 || args.nodes > 200 {
        eprintln!("--nodes {} is out of range: 3..=200", args.nodes);
        return ExitCode::from(2);
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("cargo xtask nemesis needs root (network namespaces, nftables)");
        return ExitCode::from(2);
    }
    for tool in ["ip", "nft"] {
        if Command::new(tool).arg("-V").output().is_err() {
            eprintln!("cargo xtask nemesis needs `{tool}` (Debian: iproute2, nftables)");
            return ExitCode::from(2);
        }
    }
    let database_url = if args.broken.is_some() {
        None
    } else {
        args.database_url.clone()
    };
    let db_port = match database_url.as_deref().map(loopback_port).transpose() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("--database-url: {e}");
            return ExitCode::from(2);
        }
    };
    let bins = match build(&target) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    std::thread::spawn(|| {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        let signalled = rt.block_on(async {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut term), Ok(mut hup)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::hangup()),
            ) else {
                return tokio::signal::ctrl_c().await.is_ok();
            };
            tokio::select! {
                r = tokio::signal::ctrl_c() => r.is_ok(),
                _ = term.recv() => true,
                _ = hup.recv() => true,
            }
        });
        if signalled {
            procs::kill_all();
            net::sweep();
            eprintln!("interrupted: processes killed, namespaces removed");
            std::process::exit(130);
        }
    });
    let dir = target.join("nemesis");
    let _ = std::fs::remove_dir_all(&dir);
    let seeds: Vec<u64> = match args.seed {
        Some(s) => vec![s],
        None => (1..=args.seeds).collect(),
    };
    let mut rows = Vec::new();
    for seed in seeds {
        let run_dir = dir.join(format!("seed-{seed}"));
        let setup = Setup {
            seed,
            nodes: args.nodes,
            window: Duration::from_secs(args.secs),
            bins: &bins,
            dir: &run_dir,
            database_url: database_url.as_deref(),
            db_port,
            broken: args.broken,
        };
        let row = match run_one(&setup) {
            Ok(history) => {
                let verdict = checker::check(&history, bound());
                let row = report::Row::new(seed, &history, &verdict);
                if let Err(e) = report::write_run(&run_dir, &history) {
                    eprintln!("cannot write the history of seed {seed}: {e}");
                }
                row
            }
            Err(e) => report::Row::aborted(seed, e),
        };
        println!("{}", row.line());
        rows.push(row);
    }
    println!("\n{}", report::table(&rows));
    if let Err(e) = report::write(&dir, &rows, args.broken.is_some()) {
        eprintln!("cannot write the report: {e}");
    }
    println!("report: {}", dir.join("report.html").display());
    let failed = rows.iter().filter(|r| r.failed).count();
    match args.broken {
        None if failed == 0 => ExitCode::SUCCESS,
        None => {
            println!(
                "{failed} of {} runs FAILED (rerun one with --seed N)",
                rows.len()
            );
            ExitCode::FAILURE
        }
        Some(b) if rows.iter().all(|r| b.caught(r)) => {
            println!("--break {b:?}: the checker caught the broken build in every run");
            ExitCode::SUCCESS
        }
        Some(b) => {
            println!(
                "--break {b:?}: {} of {} runs passed a broken build: the checker has no teeth there",
                rows.len() - failed,
                rows.len()
            );
            ExitCode::FAILURE
        }
    }
}

/// `host:port` of a `postgres://user@host:port/db` URL; loopback only.
fn loopback_port(url: &str) -> Result<u16, String> {
    let rest = url
        .split_once("://")
        .map(|(_, r)| r)
        .ok_or_else(|| format!("`{url}` is not a postgres:// URL"))?;
    let host_port = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let host_port = host_port.split(['/', '?']).next().unwrap_or("");
    let (host, port) = host_port.rsplit_once(':').unwrap_or((host_port, "5432"));
    if !matches!(host, "127.0.0.1" | "localhost") {
        return Err(format!(
            "`{host}` is not loopback: the nodes reach the database through a relay to this machine's loopback"
        ));
    }
    port.parse().map_err(|e| format!("port `{port}`: {e}"))
}

struct Bins {
    service: PathBuf,
    emulator: PathBuf,
}

/// Builds the service and the emulator (debug, like the tests).
fn build(target: &Path) -> Result<Bins, String> {
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--quiet", "-p", "counter-service", "--bins"])
        .status()
        .map_err(|e| format!("cargo build: {e}"))?;
    if !status.success() {
        return Err("cargo build -p counter-service failed".into());
    }
    Ok(Bins {
        service: target.join("debug/counter-service"),
        emulator: target.join("debug/k8s-api-emulator"),
    })
}

struct Setup<'a> {
    seed: u64,
    nodes: u64,
    window: Duration,
    bins: &'a Bins,
    dir: &'a Path,
    database_url: Option<&'a str>,
    db_port: Option<u16>,
    broken: Option<Break>,
}

/// The lease store, kept running while held: the emulator's process, or
/// the real API server (with the runtime that started it).
enum Store {
    Emulator {
        _process: procs::Reaped,
    },
    Real {
        _api: lease_k8s::envtest::EnvTest,
        _runtime: tokio::runtime::Runtime,
    },
}

fn start_store(bins: &Bins, dir: &Path) -> Result<(Store, PathBuf, u16), String> {
    if lease_k8s::envtest::EnvTest::configured() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let env = rt
            .block_on(lease_k8s::envtest::EnvTest::start_from_env())
            .map_err(|e| format!("kube-apiserver: {e}"))?
            .ok_or("KUBEBUILDER_ASSETS is set but empty")?;
        let port = url_port(env.url())?;
        let kubeconfig = env.kubeconfig_path().to_owned();
        return Ok((
            Store::Real {
                _api: env,
                _runtime: rt,
            },
            kubeconfig,
            port,
        ));
    }
    let kubeconfig = dir.join("kubeconfig");
    let (child, url) = procs::Reaped::spawn_with_line(&bins.emulator, &kubeconfig)?;
    let port = url_port(url.trim())?;
    Ok((Store::Emulator { _process: child }, kubeconfig, port))
}

fn url_port(url: &str) -> Result<u16, String> {
    url.rsplit_once(':')
        .and_then(|(_, p)| p.trim_end_matches('/').parse().ok())
        .ok_or_else(|| format!("no port in the store's URL `{url}`"))
}

fn run_one(s: &Setup<'_>) -> Result<RunHistory, String> {
    std::fs::create_dir_all(s.dir).map_err(|e| format!("{}: {e}", s.dir.display()))?;
    let net = Network::create(s.nodes)?;
    let (_store, kubeconfig, store_port) = start_store(s.bins, s.dir)?;
    // Every node reaches the store (and the database) on its own loopback.
    let mut relays: Vec<Vec<Relay>> = Vec::new();
    for id in 1..=s.nodes {
        let mut mine = vec![Relay::start(&net::netns(id), store_port)?];
        if let Some(port) = s.db_port {
            mine.push(Relay::start(&net::netns(id), port)?);
        }
        relays.push(mine);
    }
    let mut env: Vec<(String, String)> = vec![
        ("KUBECONFIG".into(), kubeconfig.display().to_string()),
        ("LEASE_TTL_MS".into(), LEASE_TTL.as_millis().to_string()),
        (
            "LEASE_HEARTBEAT_MS".into(),
            LEASE_HEARTBEAT.as_millis().to_string(),
        ),
        ("MEMBERSHIP_HEARTBEAT_MS".into(), "200".into()),
        (
            "MEMBERSHIP_DOWN_AFTER_MS".into(),
            DOWN_AFTER.as_millis().to_string(),
        ),
        ("NUM_SHARDS".into(), "32".into()),
        ("RUST_LOG".into(), "info".into()),
        ("NO_COLOR".into(), "1".into()),
    ];
    env.push((
        "LEASE".into(),
        if s.broken == Some(Break::NoLease) {
            "none"
        } else {
            "kubernetes"
        }
        .into(),
    ));
    if let Some(url) = s.database_url {
        env.push(("DATABASE_URL".into(), url.into()));
    }
    let mut procs = Procs::new(s.bins.service.clone(), s.dir.to_owned(), s.nodes, env);
    for id in 1..=s.nodes {
        procs.spawn(id)?;
    }
    let rec = Recorder::new();
    let stop_polls = Arc::new(AtomicBool::new(false));
    let pollers: Vec<_> = (1..=s.nodes)
        .map(|id| workload::poller(rec.clone(), id, stop_polls.clone()))
        .collect();
    // Counter names unique to this run: rows of earlier runs in the
    // database carry tokens of an earlier lease store.
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let counters: Arc<Vec<String>> = Arc::new(
        (0..COUNTERS)
            .map(|k| format!("s{}-{nonce}-c{k}", s.seed))
            .collect(),
    );
    let stop_clients = Arc::new(AtomicBool::new(false));
    // Threads stop also when the run ends early with an error.
    let _stop = StopOnDrop(vec![stop_polls.clone(), stop_clients.clone()]);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            workload::client(
                rec.clone(),
                s.seed * 100 + c,
                s.nodes,
                counters.clone(),
                stop_clients.clone(),
            )
        })
        .collect();

    let timings = Timings {
        lease_ttl: LEASE_TTL,
        down_after: DOWN_AFTER,
    };
    let schedule = fault::schedule(s.seed, s.nodes, s.window, timings);
    // Every start and end in time order (an end first at a tie).
    let mut events: Vec<(Duration, bool, usize)> = schedule
        .iter()
        .enumerate()
        .flat_map(|(i, f)| [(f.start, true, i), (f.end(), false, i)])
        .collect();
    events.sort_by_key(|&(at, starts, i)| (at, starts, i));
    let mut active: Vec<Option<Active>> = vec![None; schedule.len()];
    let mut applied: Vec<Option<AppliedFault>> = vec![None; schedule.len()];
    {
        let mut injector = Injector::new(&net, &relays, &mut procs, s.nodes);
        for (at, starts, i) in events {
            sleep_until(&rec, at);
            let f = &schedule[i];
            if starts {
                let victims = victims(f, &rec, s.nodes);
                applied[i] = Some(AppliedFault {
                    kind: f.kind,
                    victims: victims.clone(),
                    start: rec.now(),
                    end: rec.now(),
                });
                active[i] = Some(Active {
                    kind: f.kind,
                    victims,
                    loss_percent: f.loss_percent,
                });
            } else {
                active[i] = None;
            }
            injector.reconcile(active.iter().flatten())?;
            if !starts && let Some(a) = applied[i].as_mut() {
                a.end = rec.now();
            }
        }
    }
    let applied: Vec<AppliedFault> = applied.into_iter().flatten().collect();
    let crashed = procs.exited();
    if !crashed.is_empty() {
        return Err(format!(
            "process exited on its own: {crashed:?} (see {})",
            s.dir.display()
        ));
    }
    let healed_at = rec.now();
    stop_clients.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.join();
    }
    let mut probe = probe(&counters, s.nodes, &rec, healed_at);
    probe.healed_at = healed_at;
    // Keep polling a little after convergence: I1/I5 hold after the heal too.
    std::thread::sleep(Duration::from_secs(1));
    stop_polls.store(true, Ordering::Relaxed);
    for p in pollers {
        let _ = p.join();
    }
    let (samples, ops) = rec.take();
    drop(procs);
    drop(relays);
    drop(net);
    Ok(RunHistory {
        samples,
        ops,
        faults: applied,
        probe,
        durable: s.database_url.is_some() || s.broken == Some(Break::Volatile),
    })
}

/// Raises every flag when dropped.
struct StopOnDrop(Vec<Arc<AtomicBool>>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        for flag in &self.0 {
            flag.store(true, Ordering::Relaxed);
        }
    }
}

fn sleep_until(rec: &Recorder, at: Duration) {
    std::thread::sleep(at.saturating_sub(rec.now()));
}

/// The fault's victims, with the active coordinator's node first if asked
/// and known.
fn victims(f: &Fault, rec: &Recorder, nodes: u64) -> Vec<u64> {
    let mut v = f.victims.clone();
    if f.on_coordinator
        && let Some(c) = rec.active_coordinator()
        && !v.contains(&c)
    {
        v[0] = c;
        v.sort_unstable();
    }
    v.retain(|n| (1..=nodes).contains(n));
    v
}

/// Asks every counter through every node until all answer with one value
/// per counter, and every node sees all nodes, one leader and one active
/// coordinator; or until the bound (plus a grace, to measure how late).
fn probe(counters: &[String], nodes: u64, rec: &Recorder, healed_at: Duration) -> Probe {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(3)))
        .http_status_as_error(false)
        .build()
        .into();
    let deadline = Instant::now() + bound() + Duration::from_secs(10);
    let mut problems = Vec::new();
    loop {
        problems.clear();
        let mut leaders = std::collections::BTreeSet::new();
        let mut active = Vec::new();
        for id in 1..=nodes {
            match workload::call(&agent, false, &format!("{}/status", workload::base(id))) {
                Ok((200, body)) => match history::Status::from_json(&body) {
                    Some(st) => {
                        if st.members.len() as u64 != nodes {
                            problems.push(format!("node {id} sees members {:?}", st.members));
                        }
                        leaders.insert(st.leader);
                        if st.active {
                            active.push(id);
                        }
                    }
                    None => problems.push(format!("node {id}: /status without the fields: {body}")),
                },
                other => problems.push(format!("node {id} /status: {other:?}")),
            }
        }
        if leaders.len() != 1 {
            problems.push(format!("leaders differ: {leaders:?}"));
        }
        if active.len() != 1 {
            problems.push(format!("active coordinators on {active:?}"));
        }
        let mut finals = std::collections::BTreeMap::new();
        for c in counters {
            let mut seen = std::collections::BTreeSet::new();
            for id in 1..=nodes {
                match workload::call(
                    &agent,
                    false,
                    &format!("{}/counters/{c}", workload::base(id)),
                ) {
                    Ok((200, body)) => {
                        match body.get("value").and_then(serde_json::Value::as_i64) {
                            Some(v) => {
                                seen.insert(v);
                            }
                            None => problems.push(format!("{c} through node {id}: {body}")),
                        }
                    }
                    other => problems.push(format!("{c} through node {id}: {other:?}")),
                }
            }
            if seen.len() > 1 {
                problems.push(format!("{c} reads differently through the nodes: {seen:?}"));
            }
            if let Some(v) = seen.first() {
                finals.insert(c.clone(), *v);
            }
        }
        if problems.is_empty() {
            return Probe {
                healed_at,
                converged_at: Some(rec.now()),
                unconverged: vec![],
                finals,
            };
        }
        if Instant::now() > deadline {
            problems.truncate(8);
            return Probe {
                healed_at,
                converged_at: None,
                unconverged: problems,
                finals,
            };
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}
