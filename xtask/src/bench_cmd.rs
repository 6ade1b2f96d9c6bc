//! `cargo xtask bench`: every figure next to a baseline measured in the same run.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::time::Duration;

use clap::Args as ClapArgs;
use cluster::{Channel, Envelope, NodeId};
use lease_api::{Lease, LeaseSettings};
use lease_k8s::KubernetesLease;
use lease_k8s::emulator::ApiServer;
use multinode::{CounterMsg, HarnessSettings, MultiNode};
use serde::Serialize;
use sharding_coordinator::{CoordinatorRecord, Phase};
use sharding_core::protocol::{DataMsg, encode};
use sharding_core::{EntityId, ShardId};

/// Options of `cargo xtask bench`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    /// A fast smoke run (criterion --quick, 100 000 idle entities): numbers are rough.
    #[arg(long)]
    quick: bool,
}

#[derive(Debug, Serialize)]
struct Row {
    figure: String,
    value: f64,
    unit: &'static str,
    baseline: String,
    baseline_value: f64,
    /// value / baseline for throughputs; baseline / value for times.
    ratio: f64,
    target: &'static str,
}

struct Estimate {
    mean_ns: f64,
    elements: f64,
}

fn estimate(root: &Path, dir: &str) -> Option<Estimate> {
    let base = root.join("criterion").join(dir).join("new");
    let estimates: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(base.join("estimates.json")).ok()?).ok()?;
    let bench: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(base.join("benchmark.json")).ok()?).ok()?;
    Some(Estimate {
        mean_ns: estimates["mean"]["point_estimate"].as_f64()?,
        elements: bench["throughput"]["Elements"].as_f64().unwrap_or(1.0),
    })
}

fn per_second(e: &Estimate) -> f64 {
    e.elements / (e.mean_ns * 1e-9)
}

fn cargo_bench(package: &str, benches: &[&str], quick: bool) -> bool {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(["bench", "--quiet", "-p", package]);
    for b in benches {
        cmd.args(["--bench", b]);
    }
    cmd.arg("--");
    if quick {
        cmd.arg("--quick");
    }
    eprintln!("running: {cmd:?}");
    cmd.status().map(|s| s.success()).unwrap_or(false)
}

pub fn run(args: Args, target: PathBuf) -> ExitCode {
    let started = std::time::Instant::now();
    if !cargo_bench(
        "sharding-coordinator",
        &["routing", "remote", "durable"],
        args.quick,
    ) || !cargo_bench("sharding-core", &["coordinator"], args.quick)
    {
        eprintln!("cargo bench failed");
        return ExitCode::FAILURE;
    }
    let mut rows = Vec::new();
    for rt in ["current_thread", "multi_thread"] {
        let group = format!("local_tell_{rt}");
        throughput_row(
            &mut rows,
            &target,
            &format!("local tell ({rt})"),
            &format!("{group}/sharded"),
            &format!("{group}/raw_mpsc"),
            "raw tokio mpsc",
            ">= 0.5",
        );
        throughput_row(
            &mut rows,
            &target,
            &format!("local tell ({rt})"),
            &format!("{group}/sharded"),
            &format!("{group}/kameo"),
            "kameo tell",
            ">= 1.5",
        );
        throughput_row(
            &mut rows,
            &target,
            &format!("local ask round trip ({rt})"),
            &format!("local_ask_{rt}/sharded"),
            &format!("local_ask_{rt}/raw_oneshot"),
            "raw oneshot",
            ">= 0.7",
        );
    }
    throughput_row(
        &mut rows,
        &target,
        "remote tell over TCP",
        "remote_tell_multi_thread/sharded_tcp",
        "remote_tell_multi_thread/raw_framed_tcp",
        "raw framed TCP",
        ">= 0.4",
    );
    throughput_row(
        &mut rows,
        &target,
        "remote tell over mTLS",
        "remote_tell_multi_thread/sharded_mtls",
        "remote_tell_multi_thread/sharded_tcp",
        "the same over plaintext TCP",
        ">= 0.7",
    );
    // Only with TEST_DATABASE_URL (CI starts PostgreSQL).
    throughput_row(
        &mut rows,
        &target,
        "durable tell on PostgreSQL (32 entities, fenced saves)",
        "durable_tell/sharded_postgres",
        "durable_tell/raw_upsert",
        "raw single-row upserts, same pool and writers",
        "-",
    );
    // Bytes per message on the wire, to turn messages/s into bytes/s.
    let ours_frame = frame_size();
    let raw_frame = 4 + postcard_size();
    if let Some(row) = rows.iter().find(|r| r.figure == "remote tell over TCP") {
        let (v, b) = (
            row.value * ours_frame as f64,
            row.baseline_value * raw_frame as f64,
        );
        rows.push(Row {
            figure: format!("remote tell over TCP, bytes ({ours_frame} B/frame vs {raw_frame} B)"),
            value: v,
            unit: "B/s",
            baseline: "raw framed TCP".into(),
            baseline_value: b,
            ratio: v / b,
            target: "-",
        });
    }
    throughput_row(
        &mut rows,
        &target,
        "cold GetShardHome allocations (10k shards, 100 regions)",
        "coordinator_allocate/cold_get_shard_home",
        "coordinator_allocate/baseline_map_insert",
        "HashMap insert",
        "-",
    );
    throughput_row(
        &mut rows,
        &target,
        "rebalance plan (10k shards, 101 regions)",
        "coordinator_rebalance/plan",
        "coordinator_rebalance/baseline_count_shards",
        "count shards",
        "-",
    );

    for rt in ["current_thread", "multi_thread"] {
        throughput_row(
            &mut rows,
            &target,
            &format!("entity awaiting once per message ({rt})"),
            &format!("entity_yield_{rt}/yield"),
            &format!("entity_yield_{rt}/plain"),
            "plain entity",
            ">= 0.5",
        );
    }
    if let Some(times) = shard_concurrency() {
        rows.push(Row {
            figure: "1000 entities of one shard, 10 ms handler, 10 000 messages (paused time)"
                .into(),
            value: times,
            unit: "handler-times",
            baseline: "10 messages per entity, one after another".into(),
            baseline_value: 10.0,
            ratio: times / 10.0,
            target: "~ 1 (not 1000)",
        });
    }
    if let Some(wall) = idle_cluster_wall(1000) {
        rows.push(Row {
            figure: "1000 in-process nodes, 30 s of idle cluster time (one thread)".into(),
            value: wall,
            unit: "s wall",
            baseline: "30 s of cluster time".into(),
            baseline_value: 30.0,
            ratio: wall / 30.0,
            target: "<= 1",
        });
    }
    let (crash, partition) = failover();
    for (figure, v, target) in [
        // The lease's 1.1 ttl, plus the new coordinator's wait for its
        // predecessors' shard tenures (15 s x 1.01 + 1 s = 0.54 ttl).
        ("failover from leader crash", crash, "<= 1.65"),
        // The minority side takes over: detection (~0.4 ttl), its minority
        // lease delay (1 ttl), then the tenure wait (0.54 ttl).
        ("failover from partition + store cut", partition, "<= 2.1"),
    ] {
        rows.push(Row {
            figure: figure.into(),
            value: v,
            unit: "ttl",
            baseline: "lease ttl".into(),
            baseline_value: 1.0,
            ratio: v,
            target,
        });
    }
    let handovers = graceful_handovers();
    rows.push(Row {
        figure: format!(
            "singleton graceful handover, k8s lease (stopped -> started, {})",
            handovers.server
        ),
        value: handovers.singleton * 1000.0,
        unit: "ms",
        baseline: format!("lease ttl {:.0} ms", handovers.ttl * 1000.0),
        baseline_value: handovers.ttl * 1000.0,
        ratio: handovers.singleton / handovers.ttl,
        target: "-",
    });
    rows.push(Row {
        figure: format!(
            "coordinator graceful handover, k8s lease (left Active -> next Active, {})",
            handovers.server
        ),
        value: handovers.coordinator * 1000.0,
        unit: "ms",
        baseline: format!("lease ttl {:.0} ms", handovers.ttl * 1000.0),
        baseline_value: handovers.ttl * 1000.0,
        ratio: handovers.coordinator / handovers.ttl,
        target: "< 500 ms",
    });
    let (renewals, renew_interval) = idle_renewals();
    rows.push(Row {
        figure: "idle tenure renewals per region (5 nodes, 64 shards)".into(),
        value: renewals,
        unit: "/min",
        baseline: "one per renew interval".into(),
        baseline_value: 60.0 / renew_interval,
        ratio: renewals / (60.0 / renew_interval),
        target: "= 1",
    });
    let entities = if args.quick { 100_000 } else { 1_000_000 };
    if let Some(bytes) = idle_entity_bytes(entities) {
        rows.push(Row {
            figure: format!("memory per idle entity ({entities} entities)"),
            value: bytes,
            unit: "B",
            baseline: "256 B target".into(),
            baseline_value: 256.0,
            ratio: bytes / 256.0,
            target: "<= 1.0",
        });
    }
    match crate::k8s_bench::measure(args.quick) {
        Some(f) => {
            rows.push(Row {
                figure: format!(
                    "k8s lease takeover by a watching standby, holder killed ({})",
                    f.server
                ),
                value: f.takeover_ttl,
                unit: "ttl",
                baseline: "from last renew".into(),
                baseline_value: 1.0,
                ratio: f.takeover_ttl,
                target: "<= 1.1",
            });
            rows.push(Row {
                figure: format!(
                    "k8s lease handover, release -> standby holds ({})",
                    f.server
                ),
                value: f.handover_s * 1000.0,
                unit: "ms",
                baseline: format!("lease ttl {:.0} ms", f.ttl_s * 1000.0),
                baseline_value: f.ttl_s * 1000.0,
                ratio: f.handover_s / f.ttl_s,
                target: "< 500 ms",
            });
            rows.push(Row {
                figure: format!(
                    "k8s GET/LIST per minute by a watching standby ({} watch req.)",
                    f.standby_watches
                ),
                value: f.standby_polls_per_min,
                unit: "/min",
                baseline: "zero polling".into(),
                baseline_value: 0.0,
                ratio: f.standby_polls_per_min,
                target: "= 0",
            });
        }
        None => eprintln!("the Kubernetes lease standby figures could not be measured"),
    }
    let (per_renew, per_acquire) = k8s_calls(args.quick);
    rows.push(Row {
        figure: "Kubernetes API calls per renew".into(),
        value: per_renew,
        unit: "calls",
        baseline: "one call".into(),
        baseline_value: 1.0,
        ratio: per_renew,
        target: "= 1",
    });
    rows.push(Row {
        figure: "Kubernetes API calls per acquire (create)".into(),
        value: per_acquire,
        unit: "calls",
        baseline: "one call".into(),
        baseline_value: 1.0,
        ratio: per_acquire,
        target: "-",
    });

    println!(
        "{:<60} {:>14} {:>6}  {:<16} {:>14} {:>8}  target",
        "figure", "value", "unit", "baseline", "baseline", "ratio"
    );
    for r in &rows {
        println!(
            "{:<60} {:>14.1} {:>6}  {:<16} {:>14.1} {:>8.3}  {}",
            r.figure, r.value, r.unit, r.baseline, r.baseline_value, r.ratio, r.target
        );
    }
    println!(
        "machine: {} cores; took {:.0}s",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        started.elapsed().as_secs_f64()
    );
    let dir = target.join("bench");
    let written = std::fs::create_dir_all(&dir).and_then(|()| {
        let json = serde_json::to_string_pretty(&rows).map_err(std::io::Error::other)?;
        std::fs::write(dir.join("summary.json"), json)
    });
    match written {
        Ok(()) => {
            println!("summary: {}", dir.join("summary.json").display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("could not write the summary: {e}");
            ExitCode::FAILURE
        }
    }
}

fn throughput_row(
    rows: &mut Vec<Row>,
    root: &Path,
    figure: &str,
    ours: &str,
    base: &str,
    base_name: &str,
    target_text: &'static str,
) {
    let (Some(o), Some(b)) = (estimate(root, ours), estimate(root, base)) else {
        eprintln!("missing criterion results for {ours} or {base}");
        return;
    };
    let (ov, bv) = (per_second(&o), per_second(&b));
    rows.push(Row {
        figure: figure.into(),
        value: ov,
        unit: "/s",
        baseline: base_name.into(),
        baseline_value: bv,
        ratio: ov / bv,
        target: target_text,
    });
}

#[derive(Serialize)]
struct BenchMsg {
    id: u32,
}

fn postcard_size() -> usize {
    postcard::to_stdvec(&BenchMsg { id: 12_345 }).map_or(0, |v| v.len())
}

/// The frame a forwarded sharded `tell` puts on the wire (with its 4-byte length).
fn frame_size() -> usize {
    let msg = DataMsg::<BenchMsg, ()>::Deliver {
        shard: ShardId(17),
        entity: EntityId::from("12345"),
        reply_to: None,
        hops: 1,
        message: BenchMsg { id: 12_345 },
    };
    let Ok(bytes) = encode(&msg) else { return 0 };
    let envelope = Envelope {
        from: NodeId(1),
        to: NodeId(2),
        channel: Channel(1026),
        payload: bytes,
    };
    4 + envelope.encode().len()
}

/// Failover in paused time (exact, deterministic), as multiples of the ttl.
fn failover() -> (f64, f64) {
    let run = |partition: bool| -> f64 {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
        {
            Ok(rt) => rt,
            Err(_) => return f64::NAN,
        };
        rt.block_on(async move {
            let mut settings = HarnessSettings::with_memory_lease(1);
            settings.region.ask_timeout = Duration::from_secs(1);
            settings.region.passivate_after = Duration::from_secs(3600);
            let ttl = settings
                .lease
                .as_ref()
                .map_or(Duration::from_secs(30), |l| l.ttl());
            let tenure_bound = settings.tenure.bound();
            let mut h = MultiNode::start(5, settings);
            h.converge(Duration::from_secs(30)).await;
            // The first coordinator places no shard before its tenure wait.
            tokio::time::sleep(tenure_bound).await;
            for i in 0..200 {
                let _ = h
                    .region(NodeId(3))
                    .ask(CounterMsg::add(format!("e{i}"), 1))
                    .await;
            }
            let on_one = h.region(NodeId(1)).hosted_shards();
            let region = h.region(NodeId(4)).clone();
            let victim = (0..200)
                .map(|i| format!("e{i}"))
                .find(|e| on_one.contains(&region.shard_of(&EntityId::from(e.as_str()))))
                .unwrap_or_else(|| "e0".into());
            let t0 = tokio::time::Instant::now();
            if partition {
                h.partition(&[&[NodeId(1), NodeId(2), NodeId(3)], &[NodeId(4), NodeId(5)]]);
                for n in 1..=3 {
                    h.isolate_from_lease_store(NodeId(n));
                }
            } else {
                h.kill(NodeId(1));
            }
            loop {
                if h.region(NodeId(4))
                    .ask(CounterMsg::get(victim.clone()))
                    .await
                    .is_ok()
                {
                    break;
                }
                if t0.elapsed() > ttl * 10 {
                    return f64::NAN;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            t0.elapsed().as_secs_f64() / ttl.as_secs_f64()
        })
    };
    (run(false), run(true))
}

/// Graceful handovers with the Kubernetes lease in real time (timings
/// scaled down, ttl 2 s), on kube-apiserver when `KUBEBUILDER_ASSETS` is
/// set, else on the emulator: node 1 (leader, coordinator and singleton)
/// leaves gracefully. Seconds from its singleton's stop to the next one's
/// start, from its coordinator's leaving Active to the next coordinator's
/// Active (membership's leave, a lease release, a watch event and an
/// acquire), the lease ttl, and the server's name.
fn graceful_handovers() -> Handovers {
    let failed = Handovers {
        singleton: f64::NAN,
        coordinator: f64::NAN,
        ttl: f64::NAN,
        server: "-",
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(_) => return failed,
    };
    rt.block_on(async {
        let mut settings = HarnessSettings::with_kubernetes_lease(1);
        let mut server = "emulator";
        // Kept alive (in this scope) until the measurement is done.
        let env = match lease_k8s::envtest::EnvTest::start_from_env().await {
            Ok(env) => env.map(Arc::new),
            Err(e) => {
                eprintln!("KUBEBUILDER_ASSETS is set but the API server did not start: {e}");
                return failed;
            }
        };
        if let Some(env) = &env {
            match multinode::real_api::fresh_namespace(env).await {
                Ok(namespace) => {
                    settings.real_api = Some((Arc::clone(env), namespace));
                    server = "kube-apiserver";
                }
                Err(e) => {
                    eprintln!("{e}");
                    return failed;
                }
            }
        }
        let ttl = settings
            .lease
            .as_ref()
            .map_or(f64::NAN, |l| l.ttl().as_secs_f64());
        let mut h = MultiNode::start(5, settings);
        h.converge(Duration::from_secs(10)).await;
        for _ in 0..300 {
            if h.singleton_running() == vec![NodeId(1)] && h.active_coordinators() == vec![NodeId(1)] {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        h.stop_gracefully(NodeId(1), Duration::from_secs(5)).await;
        for _ in 0..2000 {
            if !h.singleton_running().is_empty() && !h.active_coordinators().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let events = h.history().events();
        let last = |node: u64, want: &dyn Fn(&multinode::EventKind) -> bool| {
            events
                .iter()
                .rev()
                .find_map(|e| (e.node == NodeId(node) && want(&e.kind)).then_some(e.at))
        };
        let singleton = |node: u64, want: multinode::SingletonEvent| {
            last(node, &|k| *k == multinode::EventKind::Singleton(want))
        };
        let phase = |node: u64, active: bool| {
            last(node, &|k| {
                matches!(k, multinode::EventKind::Coordinator(CoordinatorRecord::PhaseChanged { phase, .. })
                    if (*phase == Phase::Active) == active)
            })
        };
        let between = |from: Option<tokio::time::Instant>, to: Option<tokio::time::Instant>| match (from, to) {
            (Some(from), Some(to)) if to >= from => (to - from).as_secs_f64(),
            _ => f64::NAN,
        };
        Handovers {
            singleton: between(
                singleton(1, multinode::SingletonEvent::Stopped),
                singleton(2, multinode::SingletonEvent::Started),
            ),
            coordinator: between(phase(1, false), phase(2, true)),
            ttl,
            server,
        }
    })
}

struct Handovers {
    singleton: f64,
    coordinator: f64,
    ttl: f64,
    server: &'static str,
}

/// Tenure grants per region per minute in an idle 5-node cluster with the
/// memory lease (paused time): the whole cost of tenure when nothing moves.
fn idle_renewals() -> (f64, f64) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
    {
        Ok(rt) => rt,
        Err(_) => return (f64::NAN, f64::NAN),
    };
    rt.block_on(async {
        let settings = HarnessSettings::with_memory_lease(1);
        let interval = settings.tenure.renew_interval.as_secs_f64();
        let h = MultiNode::start(5, settings);
        h.converge(Duration::from_secs(30)).await;
        tokio::time::sleep(Duration::from_secs(30)).await;
        let count = |h: &MultiNode| {
            h.history()
                .events()
                .iter()
                .filter(|e| {
                    matches!(
                        e.kind,
                        multinode::EventKind::Coordinator(
                            sharding_coordinator::CoordinatorRecord::DirectiveSent {
                                directive: sharding_core::protocol::Directive::TenureGranted { .. },
                                ..
                            }
                        )
                    )
                })
                .count()
        };
        let before = count(&h);
        tokio::time::sleep(Duration::from_secs(600)).await;
        let grants = (count(&h) - before) as f64;
        (grants / 5.0 / 10.0, interval)
    })
}

/// Runs the release-built example in its own process, so RSS is its alone.
fn idle_entity_bytes(count: u64) -> Option<f64> {
    example_json("idle_entities", &[&count.to_string()], "bytes_per_entity")
}

/// Runs a release-built example of `sharding-coordinator` that prints one
/// JSON line, and reads `key` from it.
fn example_json(example: &str, args: &[&str], key: &str) -> Option<f64> {
    let output = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "run",
            "--quiet",
            "--release",
            "-p",
            "sharding-coordinator",
            "--example",
            example,
            "--",
        ])
        .args(args)
        .output()
        .ok()?;
    let line = String::from_utf8_lossy(&output.stdout);
    let json: serde_json::Value = serde_json::from_str(line.trim()).ok()?;
    json[key].as_f64()
}

/// API calls per renew and per first acquire, from the emulator's counters.
fn k8s_calls(quick: bool) -> (f64, f64) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(_) => return (f64::NAN, f64::NAN),
    };
    rt.block_on(async move {
        let server = ApiServer::new();
        let Ok(endpoint) = server.endpoint("bench") else {
            return (f64::NAN, f64::NAN);
        };
        let Ok(url) = endpoint.url.parse() else {
            return (f64::NAN, f64::NAN);
        };
        let Ok(client) = kube::Client::try_from(kube::Config::new(url)) else {
            return (f64::NAN, f64::NAN);
        };
        let settings = LeaseSettings::builder("bench-lease", "bench")
            .ttl(Duration::from_secs(2))
            .heartbeat_interval(Duration::from_millis(200))
            .operation_timeout(Duration::from_millis(500))
            .safety_margin(Duration::from_millis(200))
            .build();
        let Ok(settings) = settings else {
            return (f64::NAN, f64::NAN);
        };
        let Ok(lease) = KubernetesLease::new(client, "default", settings) else {
            return (f64::NAN, f64::NAN);
        };
        let lease = Arc::new(lease);
        if !matches!(lease.acquire().await, Ok(true)) {
            return (f64::NAN, f64::NAN);
        }
        let after_acquire = server.counts("bench");
        let window = if quick { 10u32 } else { 50 };
        tokio::time::sleep(Duration::from_millis(200) * window + Duration::from_millis(100)).await;
        let later = server.counts("bench");
        // The holder's own watch (one LIST, one WATCH) is not a renew call.
        let calls = (later.get + later.create + later.update + later.delete
            - after_acquire.get
            - after_acquire.create
            - after_acquire.update
            - after_acquire.delete) as f64;
        let renews = (later.update - after_acquire.update) as f64;
        (
            calls / renews.max(1.0),
            (after_acquire.get + after_acquire.create) as f64,
        )
    })
}

/// Handler-times `examples/shard_concurrency` takes (paused time, so exact).
fn shard_concurrency() -> Option<f64> {
    example_json("shard_concurrency", &[], "handler_times")
}

/// Wall seconds `examples/idle_cluster` takes for 30 s of an idle cluster of
/// `nodes` (membership's cost per message must not grow with the cluster).
fn idle_cluster_wall(nodes: u32) -> Option<f64> {
    let output = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "run",
            "--release",
            "--quiet",
            "-p",
            "cluster",
            "--example",
            "idle_cluster",
            "--",
        ])
        .arg(nodes.to_string())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let wall = text
        .split("idle took ")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok();
    if wall.is_none() {
        eprintln!("idle_cluster printed nothing usable: {text}");
    }
    wall
}
