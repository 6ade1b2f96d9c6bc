//! What a run recorded: status samples, workload operations, faults and
//! process lifecycle, with times from the run's start. The checker reads
//! nothing else.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use super::fault::FaultKind;

/// A node's `/status`, the parts the checker reads.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Status {
    /// Changes on every process start.
    pub incarnation: u64,
    /// Members in this node's view.
    pub members: Vec<u64>,
    /// The leader in this node's view.
    pub leader: Option<u64>,
    /// Whether this node's coordinator is active.
    pub active: bool,
    /// Its epoch, if it has one.
    pub epoch: Option<u64>,
    /// Whether this node believes it holds the coordinator's lease.
    pub lease_held: bool,
    /// Shards this node's region hosts.
    pub hosted: Vec<u32>,
    /// Whether the cluster singleton (top counters) runs here.
    pub singleton: bool,
}

impl Status {
    /// Reads the fields out of `/status`'s JSON; `None` if one is missing.
    pub fn from_json(v: &serde_json::Value) -> Option<Self> {
        let ids = |v: &serde_json::Value| -> Option<Vec<u64>> {
            v.as_array()?
                .iter()
                .map(serde_json::Value::as_u64)
                .collect()
        };
        Some(Status {
            incarnation: v.get("incarnation")?.as_u64()?,
            members: ids(v.get("members")?)?,
            leader: v.get("leader")?.as_u64(),
            active: v.get("coordinator")?.get("active")?.as_bool()?,
            epoch: v.get("coordinator")?.get("epoch")?.as_u64(),
            lease_held: v
                .get("lease")
                .and_then(|l| l.get("held"))
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(false),
            hosted: ids(v.get("hosted_shards")?)?
                .into_iter()
                .map(|s| s as u32)
                .collect(),
            singleton: v.get("singleton_running")?.as_bool()?,
        })
    }
}

/// One answered `/status` request: true at some instant in `[sent, received]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Sample {
    /// Which node answered.
    pub node: u64,
    /// When the request was sent.
    pub sent: Duration,
    /// When the answer arrived.
    pub received: Duration,
    /// What it said.
    pub status: Status,
}

/// A workload operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum OpKind {
    /// Add 1 (`POST /counters/{id}/add/1`).
    Add,
    /// Read (`GET /counters/{id}`).
    Read,
}

/// How an operation ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Outcome {
    /// Answered with success and the counter's value.
    Ok(i64),
    /// Answered with an error status (or refused at connect).
    Failed(String),
    /// No answer in time: it may or may not have taken effect.
    TimedOut,
}

/// One invocation and its outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Op {
    /// Through which node.
    pub node: u64,
    /// Which counter.
    pub counter: String,
    /// What.
    pub kind: OpKind,
    /// Invoked.
    pub start: Duration,
    /// Completed.
    pub end: Duration,
    /// How.
    pub outcome: Outcome,
}

/// A fault as it was applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AppliedFault {
    /// What.
    pub kind: FaultKind,
    /// On whom (after choosing the coordinator's node, if asked).
    pub victims: Vec<u64>,
    /// When it began.
    pub start: Duration,
    /// When it was healed.
    pub end: Duration,
}

/// The final probe: every counter asked through every node after the faults.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Probe {
    /// When the faults were healed and the workload stopped.
    pub healed_at: Duration,
    /// When every node answered for every counter with one value, and
    /// every node saw every node, one leader and one active coordinator.
    pub converged_at: Option<Duration>,
    /// What was still wrong at the deadline, if it never converged.
    pub unconverged: Vec<String>,
    /// Each counter's value in the converged sweep.
    pub finals: BTreeMap<String, i64>,
}

/// Everything one run recorded.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RunHistory {
    /// `/status` answers, in the order received.
    pub samples: Vec<Sample>,
    /// Workload operations, in the order completed.
    pub ops: Vec<Op>,
    /// Faults, in the order applied.
    pub faults: Vec<AppliedFault>,
    /// The final probe.
    pub probe: Probe,
    /// Whether counters were durable (PostgreSQL): only then must the final
    /// values hold every acknowledged increment.
    pub durable: bool,
}
