//! Judges a run's history (see `history.rs`) against the invariants, from
//! every node's own answers: I1 (one active coordinator), I5 (no shard on two
//! processes, with tenure), I7 (one cluster singleton instance), I4 (after the faults every counter answers
//! through every node, within the bound) and no acknowledged increment lost.
//!
//! A status answer is true at some instant between its request and its
//! answer, so one answer alone proves nothing about overlap. A node *surely*
//! had a thing from the answer of the first of a run of answers that say so
//! to the request of the last: two nodes' sure spans overlapping is a
//! violation, whatever the polling interval. A run ends when the process
//! restarts (its incarnation changes) or answers stop for longer than
//! [`MAX_GAP`] (a pause: what it believed meanwhile is unknown).

use std::collections::BTreeMap;
use std::time::Duration;

use multinode::checker::{Check, Writes, check_writes};

use super::fault::FaultKind;
use super::history::{OpKind, Outcome, RunHistory, Sample, Status};

/// Answers further apart than this do not make one run.
pub const MAX_GAP: Duration = Duration::from_secs(1);

/// The verdict of one run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// At most one active coordinator at any instant.
    pub i1: Check,
    /// No shard hosted by two processes at any instant.
    pub i5: Check,
    /// At most one cluster singleton instance at any instant.
    pub i7: Check,
    /// Convergence after the faults, within the bound.
    pub i4: Check,
    /// Every acknowledged increment in the final value (durable counters).
    pub writes: Check,
    /// Every fault kind applied at least once.
    pub faults: Check,
}

impl Verdict {
    /// Whether anything is broken.
    pub fn failed(&self) -> bool {
        [
            &self.i1,
            &self.i5,
            &self.i7,
            &self.i4,
            &self.writes,
            &self.faults,
        ]
        .iter()
        .any(|c| c.is_violated())
    }
}

/// Judges `history`; `bound` is I4's, from the heal.
pub fn check(history: &RunHistory, bound: Duration) -> Verdict {
    Verdict {
        i1: exclusive(
            &history.samples,
            |()| "an active coordinator".into(),
            active,
        ),
        i5: exclusive(&history.samples, |s| format!("shard {s}"), hosted),
        i7: exclusive(&history.samples, |()| "the singleton".into(), singleton),
        i4: converged(history, bound),
        writes: writes(history),
        faults: exercised(history),
    }
}

fn active(s: &Status) -> Vec<()> {
    if s.active { vec![()] } else { vec![] }
}

fn singleton(s: &Status) -> Vec<()> {
    if s.singleton { vec![()] } else { vec![] }
}

fn hosted(s: &Status) -> Vec<u32> {
    s.hosted.clone()
}

/// A span over which `node` surely had `key`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Span<K> {
    node: u64,
    key: K,
    from: Duration,
    to: Duration,
}

fn sure_spans<K: Ord + Copy>(samples: &[Sample], keys: impl Fn(&Status) -> Vec<K>) -> Vec<Span<K>> {
    let mut by_node: BTreeMap<u64, Vec<&Sample>> = BTreeMap::new();
    for s in samples {
        by_node.entry(s.node).or_default().push(s);
    }
    let mut spans = Vec::new();
    for (node, mut samples) in by_node {
        samples.sort_by_key(|s| s.sent);
        let mut open: BTreeMap<K, (Duration, Duration)> = BTreeMap::new();
        let close = |spans: &mut Vec<Span<K>>, key: K, (from, to): (Duration, Duration)| {
            if to > from {
                spans.push(Span {
                    node,
                    key,
                    from,
                    to,
                });
            }
        };
        let mut prev: Option<&Sample> = None;
        for s in samples {
            let broken = prev.is_some_and(|p| {
                p.status.incarnation != s.status.incarnation
                    || s.sent.saturating_sub(p.received) > MAX_GAP
            });
            let now = keys(&s.status);
            let ended: Vec<K> = open
                .keys()
                .filter(|k| broken || !now.contains(k))
                .copied()
                .collect();
            for k in ended {
                if let Some(v) = open.remove(&k) {
                    close(&mut spans, k, v);
                }
            }
            for k in now {
                open.entry(k).or_insert((s.received, s.sent)).1 = s.sent;
            }
            prev = Some(s);
        }
        for (k, v) in open {
            close(&mut spans, k, v);
        }
    }
    spans
}

/// No two nodes surely had the same key at once.
fn exclusive<K: Ord + Copy>(
    samples: &[Sample],
    what: impl Fn(K) -> String,
    keys: impl Fn(&Status) -> Vec<K>,
) -> Check {
    let mut spans = sure_spans(samples, keys);
    spans.sort_by_key(|s| (s.key, s.from));
    for (i, a) in spans.iter().enumerate() {
        for b in spans[i + 1..].iter().take_while(|b| b.key == a.key) {
            if b.node != a.node && b.from < a.to && a.from < b.to {
                return Check::Violated(format!(
                    "{} on node {} over {:.3}-{:.3} s and on node {} over {:.3}-{:.3} s",
                    what(a.key),
                    a.node,
                    a.from.as_secs_f64(),
                    a.to.as_secs_f64(),
                    b.node,
                    b.from.as_secs_f64(),
                    b.to.as_secs_f64()
                ));
            }
        }
    }
    Check::Ok
}

fn converged(history: &RunHistory, bound: Duration) -> Check {
    let probe = &history.probe;
    match probe.converged_at {
        Some(at) if at.saturating_sub(probe.healed_at) <= bound => Check::Ok,
        Some(at) => Check::Violated(format!(
            "converged {:.1} s after the heal, beyond the bound of {:.1} s",
            (at - probe.healed_at).as_secs_f64(),
            bound.as_secs_f64()
        )),
        None => Check::Violated(format!(
            "not converged {:.1} s after the heal: {}",
            bound.as_secs_f64(),
            probe.unconverged.join("; ")
        )),
    }
}

fn writes(history: &RunHistory) -> Check {
    if !history.durable {
        return Check::NotApplicable; // memory counters die with kill -9
    }
    let mut w = Writes::default();
    for op in history.ops.iter().filter(|o| o.kind == OpKind::Add) {
        *w.attempted.entry(op.counter.clone()).or_default() += 1;
        if matches!(op.outcome, Outcome::Ok(_)) {
            *w.acknowledged.entry(op.counter.clone()).or_default() += 1;
        }
    }
    w.finals = history.probe.finals.clone();
    if history.probe.converged_at.is_none() {
        return Check::NotApplicable; // no final values to judge; I4 says why
    }
    check_writes(&w)
}

fn exercised(history: &RunHistory) -> Check {
    let missing: Vec<&str> = FaultKind::ALL
        .iter()
        .filter(|k| !history.faults.iter().any(|f| f.kind == **k))
        .map(|k| k.name())
        .collect();
    if missing.is_empty() {
        Check::Ok
    } else {
        Check::Violated(format!("never applied: {}", missing.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::super::history::{AppliedFault, Op, Probe};
    use super::*;

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    /// Node `node` answered every 100 ms over `[from, to)` ms.
    fn polls(
        node: u64,
        inc: u64,
        from: u64,
        to: u64,
        status: impl Fn(u64) -> Status,
    ) -> Vec<Sample> {
        (from..to)
            .step_by(100)
            .map(|t| Sample {
                node,
                sent: ms(t),
                received: ms(t + 10),
                status: Status {
                    incarnation: inc,
                    ..status(t)
                },
            })
            .collect()
    }

    fn active() -> Status {
        Status {
            active: true,
            epoch: Some(1),
            ..Status::default()
        }
    }

    fn hosting(shards: &[u32]) -> Status {
        Status {
            hosted: shards.to_vec(),
            ..Status::default()
        }
    }

    #[test]
    fn two_active_coordinators_at_once_are_flagged_a_handover_is_not() {
        let mut samples = polls(1, 1, 0, 1000, |_| active());
        samples.extend(polls(2, 1, 1200, 2000, |_| active()));
        assert_eq!(
            exclusive(&samples, |()| "c".into(), super::active),
            Check::Ok
        );
        samples.extend(polls(3, 1, 500, 800, |_| active()));
        let c = exclusive(&samples, |()| "c".into(), super::active);
        assert!(c.is_violated(), "{c:?}");
    }

    #[test]
    fn one_answer_proves_no_overlap_but_two_do() {
        let mut samples = polls(1, 1, 0, 1000, |_| active());
        samples.push(Sample {
            node: 2,
            sent: ms(400),
            received: ms(450),
            status: active(),
        });
        assert_eq!(check_i1(&samples), Check::Ok);
        samples.push(Sample {
            node: 2,
            sent: ms(500),
            received: ms(510),
            status: active(),
        });
        assert!(check_i1(&samples).is_violated());
    }

    fn check_i1(samples: &[Sample]) -> Check {
        exclusive(samples, |()| "c".into(), super::active)
    }

    #[test]
    fn a_restart_or_a_pause_ends_a_run() {
        // Node 1 hosts shard 3, is killed at 1 s, restarts at 2 s and hosts
        // it again; node 2 hosted it in between.
        let mut samples = polls(1, 1, 0, 1000, |_| hosting(&[3]));
        samples.extend(polls(2, 1, 1000, 1900, |_| hosting(&[3])));
        samples.extend(polls(1, 2, 2000, 3000, |_| hosting(&[3])));
        let i5 = |s: &[Sample]| exclusive(s, |k| format!("shard {k}"), super::hosted);
        assert_eq!(i5(&samples), Check::Ok);
        // The same with no restart but 1 s without answers (SIGSTOP) is fine too.
        for s in samples.iter_mut().filter(|s| s.node == 1) {
            s.status.incarnation = 1;
        }
        assert_eq!(i5(&samples), Check::Ok);
        // Answering through the gap means it hosted all along: flagged.
        samples.extend(polls(1, 1, 1000, 2000, |_| hosting(&[3])));
        let c = i5(&samples);
        assert!(c.is_violated(), "{c:?}");
        assert!(format!("{c:?}").contains("shard 3"), "{c:?}");
    }

    #[test]
    fn two_singletons_at_once_fail_the_run() {
        let on = |_| Status {
            singleton: true,
            ..Status::default()
        };
        let mut h = RunHistory {
            faults: all_faults(),
            ..RunHistory::default()
        };
        h.probe.converged_at = Some(ms(0));
        h.samples = polls(1, 1, 0, 1000, on);
        h.samples.extend(polls(2, 1, 1100, 2000, on));
        assert_eq!(check(&h, Duration::from_secs(1)).i7, Check::Ok);
        h.samples.extend(polls(3, 1, 1500, 1800, on));
        let v = check(&h, Duration::from_secs(1));
        assert!(
            matches!(&v.i7, Check::Violated(m) if m.contains("the singleton")),
            "{v:?}"
        );
        assert!(v.failed());
    }

    #[test]
    fn different_shards_on_different_nodes_are_fine() {
        let mut samples = polls(1, 1, 0, 1000, |_| hosting(&[1, 2]));
        samples.extend(polls(2, 1, 0, 1000, |_| hosting(&[3])));
        assert_eq!(
            exclusive(&samples, |k| format!("shard {k}"), super::hosted),
            Check::Ok
        );
    }

    fn add(counter: &str, outcome: Outcome) -> Op {
        Op {
            node: 1,
            counter: counter.into(),
            kind: OpKind::Add,
            start: ms(0),
            end: ms(1),
            outcome,
        }
    }

    fn all_faults() -> Vec<AppliedFault> {
        FaultKind::ALL
            .iter()
            .map(|&kind| AppliedFault {
                kind,
                victims: vec![1],
                start: ms(0),
                end: ms(1),
            })
            .collect()
    }

    #[test]
    fn lost_acknowledged_increments_and_late_convergence_fail_the_run() {
        let mut h = RunHistory {
            ops: vec![
                add("a", Outcome::Ok(1)),
                add("a", Outcome::Ok(2)),
                add("a", Outcome::TimedOut),
            ],
            faults: all_faults(),
            probe: Probe {
                healed_at: ms(10_000),
                converged_at: Some(ms(15_000)),
                unconverged: vec![],
                finals: [("a".to_owned(), 2)].into(),
            },
            durable: true,
            ..RunHistory::default()
        };
        let bound = Duration::from_secs(10);
        assert!(!check(&h, bound).failed(), "{:?}", check(&h, bound));
        h.probe.finals.insert("a".into(), 1);
        assert!(check(&h, bound).writes.is_violated());
        h.durable = false;
        assert_eq!(check(&h, bound).writes, Check::NotApplicable);
        h.probe.converged_at = Some(ms(21_000));
        assert!(check(&h, bound).i4.is_violated());
        h.probe.converged_at = None;
        h.probe.unconverged = vec!["counter a through node 2: timed out".into()];
        let v = check(&h, bound);
        assert!(
            matches!(&v.i4, Check::Violated(m) if m.contains("through node 2")),
            "{v:?}"
        );
    }

    #[test]
    fn a_run_missing_a_fault_kind_fails() {
        let mut h = RunHistory {
            faults: all_faults(),
            ..RunHistory::default()
        };
        h.probe.converged_at = Some(ms(0));
        assert_eq!(check(&h, Duration::from_secs(1)).faults, Check::Ok);
        h.faults.retain(|f| f.kind != FaultKind::Pause);
        assert!(check(&h, Duration::from_secs(1)).faults.is_violated());
    }
}
