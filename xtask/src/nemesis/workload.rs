//! The client in the root namespace: increments and reads through random
//! nodes, and every node's `/status` polled, all into one history.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::history::{Op, OpKind, Outcome, Sample, Status};
use super::net::node_addr;
use super::procs::HTTP_PORT;

/// Longer than the service's own ask timeout (2 s), so its 504 is seen.
const OP_TIMEOUT: Duration = Duration::from_secs(3);
const POLL_EVERY: Duration = Duration::from_millis(100);

/// The shared clock and the records.
#[derive(Clone)]
pub struct Recorder {
    start: Instant,
    samples: Arc<Mutex<Vec<Sample>>>,
    ops: Arc<Mutex<Vec<Op>>>,
}

impl Recorder {
    /// Time zero is now.
    pub fn new() -> Self {
        Recorder {
            start: Instant::now(),
            samples: Arc::default(),
            ops: Arc::default(),
        }
    }

    /// Time since the start.
    pub fn now(&self) -> Duration {
        self.start.elapsed()
    }

    /// What was recorded.
    pub fn take(&self) -> (Vec<Sample>, Vec<Op>) {
        let samples = std::mem::take(&mut *self.samples.lock().unwrap_or_else(|e| e.into_inner()));
        let ops = std::mem::take(&mut *self.ops.lock().unwrap_or_else(|e| e.into_inner()));
        (samples, ops)
    }

    /// The latest answer from any node that says its coordinator is active.
    pub fn active_coordinator(&self) -> Option<u64> {
        let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        samples
            .iter()
            .rev()
            .take(100)
            .find(|s| s.status.active)
            .map(|s| s.node)
    }
}

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .build()
        .into()
}

/// A node's base URL.
pub fn base(node: u64) -> String {
    format!("http://{}:{HTTP_PORT}", node_addr(node))
}

/// One request: `Ok((status, body))`, or how it failed.
pub fn call(
    agent: &ureq::Agent,
    post: bool,
    url: &str,
) -> Result<(u16, serde_json::Value), Outcome> {
    let response = if post {
        agent.post(url).send_empty()
    } else {
        agent.get(url).call()
    };
    match response {
        Ok(mut r) => {
            let status = r.status().as_u16();
            let body = r.body_mut().read_json().unwrap_or(serde_json::Value::Null);
            Ok((status, body))
        }
        Err(ureq::Error::Timeout(_)) => Err(Outcome::TimedOut),
        Err(e) => Err(Outcome::Failed(e.to_string())),
    }
}

/// Polls node `id`'s `/status` until `stop`.
pub fn poller(rec: Recorder, id: u64, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let agent = agent(Duration::from_millis(500));
        let url = format!("{}/status", base(id));
        while !stop.load(Ordering::Relaxed) {
            let sent = rec.now();
            if let Ok((200, body)) = call(&agent, false, &url)
                && let Some(status) = Status::from_json(&body)
            {
                let received = rec.now();
                rec.samples
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(Sample {
                        node: id,
                        sent,
                        received,
                        status,
                    });
            }
            std::thread::sleep(POLL_EVERY.saturating_sub(rec.now() - sent));
        }
    })
}

/// A client: 80 % increments, 20 % reads, of random counters through random
/// nodes, one at a time, until `stop`.
pub fn client(
    rec: Recorder,
    seed: u64,
    nodes: u64,
    counters: Arc<Vec<String>>,
    stop: Arc<AtomicBool>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut rng = StdRng::seed_from_u64(seed);
        let agent = agent(OP_TIMEOUT);
        while !stop.load(Ordering::Relaxed) {
            let node = rng.random_range(1..=nodes);
            let counter = counters[rng.random_range(0..counters.len())].clone();
            let kind = if rng.random_bool(0.8) {
                OpKind::Add
            } else {
                OpKind::Read
            };
            let url = match kind {
                OpKind::Add => format!("{}/counters/{counter}/add/1", base(node)),
                OpKind::Read => format!("{}/counters/{counter}", base(node)),
            };
            let start = rec.now();
            let outcome = match call(&agent, kind == OpKind::Add, &url) {
                Ok((200, body)) => match body.get("value").and_then(serde_json::Value::as_i64) {
                    Some(v) => Outcome::Ok(v),
                    None => Outcome::Failed(format!("200 without a value: {body}")),
                },
                // The service's own ask timeout: the add may have happened.
                Ok((504, _)) => Outcome::TimedOut,
                Ok((code, body)) => Outcome::Failed(format!("{code} {body}")),
                Err(o) => o,
            };
            let failed = !matches!(outcome, Outcome::Ok(_));
            let end = rec.now();
            rec.ops.lock().unwrap_or_else(|e| e.into_inner()).push(Op {
                node,
                counter,
                kind,
                start,
                end,
                outcome,
            });
            if failed {
                std::thread::sleep(Duration::from_millis(50)); // no hot loop on a dead node
            }
        }
    })
}
