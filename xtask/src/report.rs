//! The multinode table, `report.json` and a self-contained `report.html`.

use std::fmt::Write as _;
use std::path::Path;

use multinode::availability::Availability;
use multinode::scenario::{LeaseMode, RunReport, Scenario};
use serde::Serialize;

/// One table row: a scenario summarised over its runs.
#[derive(Debug, Serialize)]
pub struct Row {
    scenario: &'static str,
    runs: usize,
    max_active: usize,
    invariants: [String; 7],
    /// The most singleton instances at one instant, over the runs.
    max_singletons: usize,
    double_hosted_shard_seconds: f64,
    /// Mean per run: shard-seconds with no host (stop to next start).
    unhosted_shard_seconds: f64,
    /// The worst single shard outage over the runs, in seconds.
    worst_outage_secs: f64,
    /// Mean per run, measured with `--availability`: shard-seconds
    /// unanswered while a healthy majority existed.
    unavailable_shard_seconds: Option<f64>,
    /// The longest such run of one shard over the runs, in seconds.
    worst_unavailable_secs: Option<f64>,
    failover_p50_ttls: Option<f64>,
    failover_p99_ttls: Option<f64>,
    asks_ok: u64,
    asks_failed: u64,
    /// Saves the store refused for a stale fencing token, over the runs.
    fenced_writes: usize,
    failed_runs: usize,
}

pub fn rows(scenarios: &[Scenario], reports: &[RunReport], lease: LeaseMode) -> Vec<Row> {
    scenarios
        .iter()
        .map(|s| {
            let runs: Vec<&RunReport> = reports.iter().filter(|r| r.scenario == s.name()).collect();
            let invariants = std::array::from_fn(|i| {
                let broken = runs
                    .iter()
                    .filter(|r| r.invariants[i].starts_with("FAIL"))
                    .count();
                let na = runs.iter().all(|r| r.invariants[i] == "n/a");
                match (broken, na) {
                    (0, true) => "n/a".to_owned(),
                    (0, false) => "ok".to_owned(),
                    // Without a lease, two coordinators (I1), shards on both
                    // sides (I5) and two singletons (I7) in a partition are
                    // the demonstration.
                    // Without a lease, equal tokens on both sides can
                    // lose writes too (6).
                    (n, _)
                        if (i == 0 || i == 4 || i == 5 || i == 6) && lease == LeaseMode::None =>
                    {
                        format!("broken {n}/{} (expected)", runs.len())
                    }
                    (n, _) => format!("FAIL {n}/{}", runs.len()),
                }
            });
            let mut failovers: Vec<f64> = runs.iter().filter_map(|r| r.failover_ttls).collect();
            failovers.sort_by(f64::total_cmp);
            let pct = |p: f64| {
                (!failovers.is_empty()).then(|| {
                    let idx = ((failovers.len() - 1) as f64 * p).round() as usize;
                    failovers[idx.min(failovers.len() - 1)]
                })
            };
            Row {
                scenario: s.name(),
                runs: runs.len(),
                max_active: runs.iter().map(|r| r.max_active).max().unwrap_or(0),
                max_singletons: runs.iter().map(|r| r.max_singletons).max().unwrap_or(0),
                invariants,
                double_hosted_shard_seconds: runs
                    .iter()
                    .map(|r| r.double_hosted_shard_seconds)
                    .sum::<f64>()
                    / runs.len().max(1) as f64,
                unhosted_shard_seconds: runs.iter().map(|r| r.unhosted_shard_seconds).sum::<f64>()
                    / runs.len().max(1) as f64,
                worst_outage_secs: runs.iter().map(|r| r.worst_outage_secs).fold(0.0, f64::max),
                unavailable_shard_seconds: measured(&runs, |a| a.unavailable_shard_secs)
                    .map(|v| v.iter().sum::<f64>() / v.len() as f64),
                worst_unavailable_secs: measured(&runs, |a| a.worst_secs)
                    .map(|v| v.into_iter().fold(0.0, f64::max)),
                failover_p50_ttls: pct(0.5),
                failover_p99_ttls: pct(0.99),
                asks_ok: runs.iter().map(|r| r.asks_ok).sum(),
                asks_failed: runs.iter().map(|r| r.asks_failed).sum(),
                fenced_writes: runs.iter().map(|r| r.fenced_writes).sum(),
                failed_runs: runs.iter().filter(|r| !r.passed).count(),
            }
        })
        .collect()
}

/// One availability figure of every run, if they were all measured.
fn measured(runs: &[&RunReport], f: impl Fn(&Availability) -> f64) -> Option<Vec<f64>> {
    let values: Option<Vec<f64>> = runs
        .iter()
        .map(|r| r.availability.as_ref().map(&f))
        .collect();
    values.filter(|v| !v.is_empty())
}

pub fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<34} {:>5} {:>6}  {:<24} {:<5} {:<5} {:<5} {:<9} {:<9} {:<9} {:>10} {:>10} {:>8} {:>9} {:>8} {:>8} {:>8} {:>8} {:>7} {:>6}",
        "scenario",
        "runs",
        "active",
        "I1",
        "I2",
        "I3",
        "I4",
        "I5",
        "I7",
        "writes",
        "dbl-host s",
        "unhosted s",
        "worst s",
        "unavail s",
        "worst un",
        "fo p50",
        "fo p99",
        "asks ok",
        "failed",
        "fenced"
    );
    let ttl = |v: Option<f64>| v.map_or("-".to_owned(), |x| format!("{x:.2}ttl"));
    let secs = |v: Option<f64>| v.map_or("-".to_owned(), |x| format!("{x:.1}"));
    for r in rows {
        let _ = writeln!(
            out,
            "{:<34} {:>5} {:>6}  {:<24} {:<5} {:<5} {:<5} {:<9} {:<9} {:<9} {:>10.1} {:>10.1} {:>8.1} {:>9} {:>8} {:>8} {:>8} {:>8} {:>7} {:>6}",
            r.scenario,
            r.runs,
            r.max_active,
            r.invariants[0],
            r.invariants[1],
            r.invariants[2],
            r.invariants[3],
            r.invariants[4],
            r.invariants[5],
            r.invariants[6],
            r.double_hosted_shard_seconds,
            r.unhosted_shard_seconds,
            r.worst_outage_secs,
            secs(r.unavailable_shard_seconds),
            secs(r.worst_unavailable_secs),
            ttl(r.failover_p50_ttls),
            ttl(r.failover_p99_ttls),
            r.asks_ok,
            r.asks_failed,
            r.fenced_writes,
        );
    }
    out
}

#[derive(Serialize)]
struct Json<'a> {
    lease: LeaseMode,
    rows: &'a [Row],
    /// Every run, without timelines.
    runs: Vec<RunSummary<'a>>,
    /// Failing runs and one sample run per scenario, with timelines.
    detailed: Vec<&'a RunReport>,
}

#[derive(Serialize)]
struct RunSummary<'a> {
    scenario: &'a str,
    seed: u64,
    passed: bool,
    max_active: usize,
    invariants: &'a [String; 7],
    failover_ttls: Option<f64>,
    double_hosted_shard_seconds: f64,
    history_digest: u64,
}

fn detailed(reports: &[RunReport]) -> Vec<&RunReport> {
    let mut out: Vec<&RunReport> = reports.iter().filter(|r| !r.passed).collect();
    let mut seen = std::collections::BTreeSet::new();
    for r in reports {
        if seen.insert(r.scenario) && r.passed {
            out.push(r);
        }
    }
    out
}

pub fn write(
    dir: &Path,
    rows: &[Row],
    reports: &[RunReport],
    lease: LeaseMode,
) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let json = Json {
        lease,
        rows,
        runs: reports
            .iter()
            .map(|r| RunSummary {
                scenario: r.scenario,
                seed: r.seed,
                passed: r.passed,
                max_active: r.max_active,
                invariants: &r.invariants,
                failover_ttls: r.failover_ttls,
                double_hosted_shard_seconds: r.double_hosted_shard_seconds,
                history_digest: r.history_digest,
            })
            .collect(),
        detailed: detailed(reports),
    };
    let text = serde_json::to_string_pretty(&json).map_err(std::io::Error::other)?;
    std::fs::write(dir.join("report.json"), text)?;
    std::fs::write(
        dir.join("report.html"),
        html(rows, &detailed(reports), lease),
    )?;
    Ok(())
}

/// Text made safe for HTML.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn html(rows: &[Row], runs: &[&RunReport], lease: LeaseMode) -> String {
    let mut out = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>multinode report</title><style>\
         body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}\
         td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px}.fail{background:#fdd}\
         .legend span{display:inline-block;margin-right:1em}.sw{width:12px;height:12px;display:inline-block;margin-right:4px}\
         </style></head><body>",
    );
    let _ = write!(
        out,
        "<h1>Split-brain suite (lease: {lease:?})</h1><table><tr>"
    );
    for h in [
        "scenario",
        "runs",
        "max active",
        "I1",
        "I2",
        "I3",
        "I4",
        "I5",
        "I7 (max singletons)",
        "acknowledged writes kept (fenced writes)",
        "double-hosted shard-s",
        "unhosted shard-s (stop to next start)",
        "worst shard outage s",
        "unavailable shard-s (healthy majority, measured)",
        "worst unavailable s",
        "failover p50 (ttl)",
        "failover p99 (ttl)",
        "asks ok",
        "asks failed",
    ] {
        let _ = write!(out, "<th>{h}</th>");
    }
    out.push_str("</tr>");
    for r in rows {
        let class = if r.failed_runs > 0 {
            " class=\"fail\""
        } else {
            ""
        };
        let f = |v: Option<f64>| v.map_or("-".to_owned(), |x| format!("{x:.2}"));
        let _ = write!(
            out,
            "<tr{class}><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{} ({})</td><td>{} ({})</td><td>{:.1}</td><td>{:.1}</td><td>{:.1}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            r.scenario,
            r.runs,
            r.max_active,
            escape(&r.invariants[0]),
            escape(&r.invariants[1]),
            escape(&r.invariants[2]),
            escape(&r.invariants[3]),
            escape(&r.invariants[4]),
            escape(&r.invariants[5]),
            r.max_singletons,
            escape(&r.invariants[6]),
            r.fenced_writes,
            r.double_hosted_shard_seconds,
            r.unhosted_shard_seconds,
            r.worst_outage_secs,
            f(r.unavailable_shard_seconds),
            f(r.worst_unavailable_secs),
            f(r.failover_p50_ttls),
            f(r.failover_p99_ttls),
            r.asks_ok,
            r.asks_failed
        );
    }
    out.push_str("</table>");
    out.push_str(
        "<p class=\"legend\"><span><i class=\"sw\" style=\"background:#9bd\"></i>sees itself as leader</span>\
         <span><i class=\"sw\" style=\"background:#2a2\"></i>active coordinator</span>\
         <span><i class=\"sw\" style=\"background:#e90\"></i>lease holder</span>\
         <span><i class=\"sw\" style=\"background:#fcc\"></i>fault in force</span></p>",
    );
    for run in runs {
        let verdict = if run.passed { "passed" } else { "FAILED" };
        let _ = write!(
            out,
            "<h2>{} seed {} ({verdict})</h2><p>{}</p>",
            run.scenario,
            run.seed,
            escape(&run.invariants.join(" | "))
        );
        out.push_str(&timeline_svg(run));
    }
    out.push_str("</body></html>\n");
    out
}

fn timeline_svg(run: &RunReport) -> String {
    let end = run.timeline.last().map_or(1.0, |s| s.t).max(1.0);
    let (left, width, row_h) = (70.0, 1000.0, 22.0);
    let x = |t: f64| left + t / end * width;
    let nodes = run.nodes as usize;
    let height = row_h * nodes as f64 + 40.0;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\" style=\"border:1px solid #eee\">",
        left + width + 20.0
    );
    for (from, to, what) in &run.faults {
        let _ = write!(
            svg,
            "<rect x=\"{:.1}\" y=\"0\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#fcc\"><title>{}</title></rect>",
            x(*from),
            (x(*to) - x(*from)).max(1.0),
            row_h * nodes as f64,
            escape(what)
        );
    }
    // I5: a red mark on the row of every node hosting a shard twice.
    for (from, to, what) in &run.double_hosting {
        for n in 1..=nodes {
            let name = format!("node-{n}");
            if !what.split([' ', ',']).any(|w| w == name) {
                continue;
            }
            let _ = write!(
                svg,
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"2\" fill=\"#d00\"><title>double-hosted: {}</title></rect>",
                x(*from),
                row_h * (n - 1) as f64 + 20.0,
                (x(*to) - x(*from)).max(1.0),
                escape(what)
            );
        }
    }
    for n in 1..=nodes {
        let y = row_h * (n - 1) as f64;
        let _ = write!(
            svg,
            "<text x=\"4\" y=\"{:.1}\" font-size=\"12\">node-{n}</text>",
            y + 15.0
        );
        for pair in run.timeline.windows(2) {
            let (s, next) = (&pair[0], &pair[1]);
            let (x0, w) = (x(s.t), (x(next.t) - x(s.t)).max(0.5));
            let id = n as u64;
            if s.leaders
                .iter()
                .any(|(node, leader)| *node == id && *leader == Some(id))
            {
                let _ = write!(
                    svg,
                    "<rect x=\"{x0:.1}\" y=\"{:.1}\" width=\"{w:.1}\" height=\"6\" fill=\"#9bd\"/>",
                    y + 2.0
                );
            }
            if s.active.contains(&id) {
                let _ = write!(
                    svg,
                    "<rect x=\"{x0:.1}\" y=\"{:.1}\" width=\"{w:.1}\" height=\"6\" fill=\"#2a2\"/>",
                    y + 8.0
                );
            }
            if s.holder.as_deref() == Some(&format!("node-{n}")) {
                let _ = write!(
                    svg,
                    "<rect x=\"{x0:.1}\" y=\"{:.1}\" width=\"{w:.1}\" height=\"6\" fill=\"#e90\"/>",
                    y + 14.0
                );
            }
        }
    }
    let axis_y = row_h * nodes as f64 + 15.0;
    let step = (end / 10.0).ceil().max(1.0);
    let mut t = 0.0;
    while t <= end {
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{axis_y:.1}\" font-size=\"10\">{t:.0}s</text>",
            x(t)
        );
        t += step;
    }
    svg.push_str("</svg>");
    svg
}
