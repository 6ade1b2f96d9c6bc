//! The nemesis table, `target/nemesis/report.{json,html}` and each run's
//! `seed-N/history.json`.

use std::fmt::Write as _;
use std::path::Path;

use multinode::checker::Check;
use serde::Serialize;

use super::checker::{self, Verdict};
use super::history::{OpKind, Outcome, RunHistory};
use crate::report::escape;

/// One run, summarised.
#[derive(Debug, Serialize)]
pub struct Row {
    seed: u64,
    /// Whether the run failed (an invariant broken, or it could not run).
    pub failed: bool,
    faults: usize,
    adds_ok: usize,
    ops_failed: usize,
    ops_timed_out: usize,
    /// I1's cell.
    pub i1: String,
    /// I5's cell.
    pub i5: String,
    /// I7's cell.
    pub i7: String,
    i4: String,
    converged_secs: Option<f64>,
    /// The writes check's cell.
    pub writes: String,
    all_faults: String,
    /// The first evidence of a failure.
    evidence: Option<String>,
    #[serde(skip)]
    timeline: String,
}

fn cell(c: &Check) -> String {
    c.cell().to_owned()
}

impl Row {
    /// A run that completed, judged.
    pub fn new(seed: u64, h: &RunHistory, v: &Verdict) -> Self {
        let count = |f: &dyn Fn(&Outcome) -> bool| h.ops.iter().filter(|o| f(&o.outcome)).count();
        let evidence = [&v.i1, &v.i5, &v.i7, &v.i4, &v.writes, &v.faults]
            .into_iter()
            .find_map(|c| match c {
                Check::Violated(m) => Some(m.clone()),
                _ => None,
            });
        Row {
            seed,
            failed: v.failed(),
            faults: h.faults.len(),
            adds_ok: h
                .ops
                .iter()
                .filter(|o| o.kind == OpKind::Add && matches!(o.outcome, Outcome::Ok(_)))
                .count(),
            ops_failed: count(&|o| matches!(o, Outcome::Failed(_))),
            ops_timed_out: count(&|o| matches!(o, Outcome::TimedOut)),
            i1: cell(&v.i1),
            i5: cell(&v.i5),
            i7: cell(&v.i7),
            i4: cell(&v.i4),
            converged_secs: h
                .probe
                .converged_at
                .map(|at| (at - h.probe.healed_at).as_secs_f64()),
            writes: cell(&v.writes),
            all_faults: cell(&v.faults),
            evidence,
            timeline: timeline(h),
        }
    }

    /// A run that could not be carried out.
    pub fn aborted(seed: u64, error: String) -> Self {
        Row {
            seed,
            failed: true,
            faults: 0,
            adds_ok: 0,
            ops_failed: 0,
            ops_timed_out: 0,
            i1: "-".into(),
            i5: "-".into(),
            i7: "-".into(),
            i4: "-".into(),
            converged_secs: None,
            writes: "-".into(),
            all_faults: "-".into(),
            evidence: Some(format!("aborted: {error}")),
            timeline: String::new(),
        }
    }

    /// One line for the progress log.
    pub fn line(&self) -> String {
        format!(
            "seed {:>3}: {} faults, {} adds ok, {} failed, {} timed out; I1 {} I5 {} I7 {} I4 {} ({}) writes {} faults {}{}",
            self.seed,
            self.faults,
            self.adds_ok,
            self.ops_failed,
            self.ops_timed_out,
            self.i1,
            self.i5,
            self.i7,
            self.i4,
            self.converged_secs
                .map_or("-".into(), |s| format!("{s:.1} s")),
            self.writes,
            self.all_faults,
            self.evidence
                .as_ref()
                .map_or(String::new(), |e| format!("\n    {e}")),
        )
    }
}

/// The table's columns; the HTML report adds the evidence.
const COLUMNS: [&str; 12] = [
    "seed",
    "faults",
    "adds ok",
    "failed",
    "timed out",
    "I1",
    "I5",
    "I7",
    "I4",
    "converged s",
    "writes",
    "all kinds",
];

impl Row {
    /// The cells under [`COLUMNS`].
    fn cells(&self) -> [String; 12] {
        [
            self.seed.to_string(),
            self.faults.to_string(),
            self.adds_ok.to_string(),
            self.ops_failed.to_string(),
            self.ops_timed_out.to_string(),
            self.i1.clone(),
            self.i5.clone(),
            self.i7.clone(),
            self.i4.clone(),
            self.converged_secs
                .map_or("-".into(), |s| format!("{s:.1}")),
            self.writes.clone(),
            self.all_faults.clone(),
        ]
    }
}

/// The table printed at the end.
pub fn table(rows: &[Row]) -> String {
    let line = |cells: &[String]| format!("| {} |\n", cells.join(" | "));
    let mut out = line(&COLUMNS.map(String::from));
    out.push_str(&line(&COLUMNS.map(|c| {
        if c.starts_with('I') || c == "writes" || c == "all kinds" {
            "---"
        } else {
            "---:"
        }
        .to_owned()
    })));
    for r in rows {
        out.push_str(&line(&r.cells()));
    }
    out
}

/// A run's whole history, for a closer look at a failure.
pub fn write_run(dir: &Path, h: &RunHistory) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let text = serde_json::to_string(h).map_err(std::io::Error::other)?;
    std::fs::write(dir.join("history.json"), text)
}

/// `report.json` and `report.html`.
pub fn write(dir: &Path, rows: &[Row], broken: bool) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let text = serde_json::to_string_pretty(rows).map_err(std::io::Error::other)?;
    std::fs::write(dir.join("report.json"), text)?;
    let mut html = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>nemesis report</title><style>\
         body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}\
         td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px}.fail{background:#fdd}\
         .legend span{display:inline-block;margin-right:1em}.sw{width:12px;height:12px;display:inline-block;margin-right:4px}\
         </style></head><body>",
    );
    let _ = write!(
        html,
        "<h1>Split-brain suite on real processes{}</h1><table><tr>",
        if broken {
            " (deliberately broken build)"
        } else {
            ""
        }
    );
    for h in COLUMNS.iter().chain(&["evidence"]) {
        let _ = write!(html, "<th>{h}</th>");
    }
    html.push_str("</tr>");
    for r in rows {
        let _ = write!(
            html,
            "<tr{}>",
            if r.failed { " class=\"fail\"" } else { "" }
        );
        for cell in r.cells() {
            let _ = write!(html, "<td>{cell}</td>");
        }
        let evidence = escape(r.evidence.as_deref().unwrap_or(""));
        let _ = write!(html, "<td>{evidence}</td></tr>");
    }
    html.push_str(
        "</table><p class=\"legend\"><span><i class=\"sw\" style=\"background:#2a2\"></i>active coordinator</span>\
         <span><i class=\"sw\" style=\"background:#88f\"></i>answering /status</span>\
         <span><i class=\"sw\" style=\"background:#f66;opacity:.5\"></i>fault on the node</span>\
         <span><i class=\"sw\" style=\"background:#000\"></i>heal</span></p>",
    );
    for r in rows.iter().filter(|r| !r.timeline.is_empty()) {
        let _ = write!(html, "<h3>seed {}</h3>{}", r.seed, r.timeline);
    }
    html.push_str("</body></html>");
    std::fs::write(dir.join("report.html"), html)
}

/// Per node: when it answered, when its coordinator was surely active, and
/// the faults on it; one pixel per 100 ms.
fn timeline(h: &RunHistory) -> String {
    let end = h
        .samples
        .iter()
        .map(|s| s.received)
        .chain(h.probe.converged_at)
        .max()
        .unwrap_or_default();
    let px = |d: std::time::Duration| 60.0 + d.as_secs_f64() * 10.0;
    let nodes: std::collections::BTreeSet<u64> = h.samples.iter().map(|s| s.node).collect();
    let width = px(end) + 20.0;
    let height = 20.0 * nodes.len() as f64 + 30.0;
    let mut svg = format!(
        "<svg width=\"{width:.0}\" height=\"{height:.0}\" xmlns=\"http://www.w3.org/2000/svg\" font-size=\"11\">"
    );
    for (row, node) in nodes.iter().enumerate() {
        let y = 10.0 + 20.0 * row as f64;
        let _ = write!(
            svg,
            "<text x=\"4\" y=\"{:.0}\">node {node}</text>",
            y + 11.0
        );
        for s in h.samples.iter().filter(|s| s.node == *node) {
            let color = if s.status.active { "#2a2" } else { "#88f" };
            let _ = write!(
                svg,
                "<rect x=\"{:.1}\" y=\"{y:.0}\" width=\"1\" height=\"14\" fill=\"{color}\"/>",
                px(s.sent)
            );
        }
        for f in h.faults.iter().filter(|f| f.victims.contains(node)) {
            let _ = write!(
                svg,
                "<rect x=\"{:.1}\" y=\"{y:.0}\" width=\"{:.1}\" height=\"14\" fill=\"#f66\" opacity=\".5\"><title>{}</title></rect>",
                px(f.start),
                px(f.end) - px(f.start),
                f.kind.name()
            );
        }
    }
    let heal = px(h.probe.healed_at);
    let _ = write!(
        svg,
        "<line x1=\"{heal:.1}\" x2=\"{heal:.1}\" y1=\"0\" y2=\"{height:.0}\" stroke=\"#000\"/>"
    );
    for f in &h.faults {
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.0}\">{}</text>",
            px(f.start),
            height - 4.0,
            f.kind.name()
        );
    }
    let _ = checker::MAX_GAP; // the timeline draws answers; the checker's spans read them the same way
    svg.push_str("</svg>");
    svg
}
