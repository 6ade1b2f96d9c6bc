//! Checks a recorded history against the invariants of `docs/architecture.md`.
//!
//! Pure: it reads events and the lease store's grants, nothing else, so it is
//! tested on hand-made histories (including bad ones it must flag).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use cluster::NodeId;
use lease_memory::Grant;
use sharding_coordinator::{CoordinatorRecord, Phase};
use sharding_core::{Epoch, RegionEvent, ShardId};
use tokio::time::Instant;

use cluster_singleton::SingletonEvent;

use crate::{Event, EventKind, HarnessEvent, owner_of};

/// The outcome of one invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// Holds.
    Ok,
    /// Does not apply (I2 without a lease).
    NotApplicable,
    /// Broken, with the first evidence.
    Violated(String),
}

impl Check {
    /// Whether the invariant is broken.
    pub fn is_violated(&self) -> bool {
        matches!(self, Check::Violated(_))
    }

    /// A short cell for tables.
    pub fn cell(&self) -> &'static str {
        match self {
            Check::Ok => "ok",
            Check::NotApplicable => "n/a",
            Check::Violated(_) => "FAIL",
        }
    }
}

/// What the checker needs besides the events.
#[derive(Debug, Clone)]
pub struct CheckInput<'a> {
    /// Every recorded event.
    pub events: &'a [Event],
    /// The lease store's grants; `None` when running without a lease.
    pub grants: Option<&'a [Grant]>,
    /// When the run started and ended.
    pub start: Instant,
    /// When the run ended.
    pub end: Instant,
    /// When the last fault ended, if there were faults.
    pub healed_at: Option<Instant>,
    /// I4's bound: ttl + heartbeat + recovery timeout (+ the tenure bound
    /// with a lease).
    pub recovery_bound: Duration,
    /// The final probe: every shard asked through every running node.
    pub probe: FinalProbe,
    /// The durable counters' increments and final values.
    pub writes: Writes,
}

/// What the workload wrote to the durable counters, and what the store
/// holds at the end: the lost-update check's input.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Writes {
    /// Per counter: increments of 1 whose ask was answered with success.
    pub acknowledged: BTreeMap<String, u64>,
    /// Per counter: increments of 1 sent, answered or not.
    pub attempted: BTreeMap<String, u64>,
    /// Per counter: the value in the store at the end (absent: never saved).
    pub finals: BTreeMap<String, i64>,
    /// Saves the store refused for a stale fencing token.
    pub fenced: usize,
}

/// No acknowledged increment is missing from the final value, and none
/// appears that was never sent: `acknowledged <= final <= attempted` for
/// every counter. (An increment saved whose answer was lost is in the value
/// without being acknowledged, so the value may exceed the acknowledged.)
pub fn check_writes(writes: &Writes) -> Check {
    for (counter, attempted) in &writes.attempted {
        let acknowledged = writes.acknowledged.get(counter).copied().unwrap_or(0);
        let value = writes.finals.get(counter).copied().unwrap_or(0);
        if value < 0 || (value as u64) < acknowledged {
            return Check::Violated(format!(
                "counter {counter} ends at {value} after {acknowledged} acknowledged increments: {} lost",
                acknowledged.saturating_sub(value.max(0) as u64)
            ));
        }
        if value as u64 > *attempted {
            return Check::Violated(format!(
                "counter {counter} ends at {value} after only {attempted} increments were sent"
            ));
        }
    }
    Check::Ok
}

/// What the final probe saw, once the faults had ended for the I4 bound.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FinalProbe {
    /// When the probe started, if it ran.
    pub at: Option<Instant>,
    /// `(shard, through node)` pairs whose ask was never answered.
    pub unreachable: Vec<(ShardId, NodeId)>,
    /// The shards' hosts once the probe had asked every shard.
    pub hosts: BTreeMap<ShardId, Vec<NodeId>>,
}

/// The checker's findings for one run.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// At most one active coordinator at any instant.
    pub i1: Check,
    /// Active only while the store names it holder.
    pub i2: Check,
    /// No region obeys a lower epoch than one it obeyed.
    pub i3: Check,
    /// One active coordinator and every shard answering, soon after the faults.
    pub i4: Check,
    /// No shard hosted on two nodes at any instant (with a lease; without
    /// one it is reported, and expected to break in a partition).
    pub i5: Check,
    /// The most coordinators active at one instant.
    pub max_active: usize,
    /// Total time shards spent hosted on two or more nodes at once (I5).
    pub double_hosted_shard_seconds: f64,
    /// Every such interval (the first 100): shard, hosts, from, until.
    pub double_hostings: Vec<DoubleHosting>,
    /// The price of safety: time shards spent with no host, from stopping
    /// on their last host to starting again anywhere (summed over shards).
    /// Includes waiting for the next message to the shard, so it bounds the
    /// unavailability from above under light traffic.
    pub unhosted_shard_seconds: f64,
    /// The longest single such gap of one shard.
    pub worst_outage: Duration,
    /// From the end of the faults to one stable active coordinator.
    pub failover: Option<Duration>,
    /// At most one cluster singleton instance running at any instant (with
    /// a lease; without one it is reported, and expected to break in a
    /// partition).
    pub i7: Check,
    /// The most singleton instances running at one instant.
    pub max_singletons: usize,
    /// Every acknowledged write in the store at the end (durable counters,
    /// with a lease; without one it is reported, and may break in a
    /// partition, where two coordinators can issue the same token).
    pub writes: Check,
    /// Saves refused by the store for a stale fencing token.
    pub fenced_writes: usize,
}

impl Verdict {
    /// Whether any of I1-I4 is broken.
    pub fn failed(&self) -> bool {
        self.i1.is_violated()
            || self.i2.is_violated()
            || self.i3.is_violated()
            || self.i4.is_violated()
            || self.i5.is_violated()
            || self.i7.is_violated()
            || self.writes.is_violated()
    }
}

/// Checks one run.
pub fn check(input: &CheckInput<'_>) -> Verdict {
    let active = active_intervals(input.events, input.end);
    let (max_active, i1) = check_i1(&active, input.start);
    let i2 = match input.grants {
        Some(grants) => check_i2(&active, grants, input.start),
        None => Check::NotApplicable,
    };
    let i3 = check_i3(input.events);
    let (failover, i4) = check_i4(&active, input);
    let (double_hosted_shard_seconds, double_hostings) = double_hosted(input.events, input.end);
    let first_double = double_hostings.iter().min_by_key(|d| d.2).cloned();
    let (unhosted, worst_outage) = outages(input.events);
    let i5 = match first_double {
        None => Check::Ok,
        Some((shard, nodes, from, until)) => {
            let secs = |t: Instant| t.duration_since(input.start).as_secs_f64();
            // Events of one instant are recorded in the order the
            // single-threaded simulation ran them: a start recorded before
            // another node's stop at the same instant was a real overlap,
            // if a short one, and fails the run like any other.
            if from == until {
                Check::Violated(format!(
                    "{shard} hosted on {nodes:?} at {:.3}s: started on one before it stopped on the other at the same instant (a real overlap: events of one instant are in the order they ran)",
                    secs(from)
                ))
            } else {
                Check::Violated(format!(
                    "{shard} hosted on {nodes:?} from {:.3}s to {:.3}s",
                    secs(from),
                    secs(until)
                ))
            }
        }
    };
    let (max_singletons, i7) = check_i7(input.events, input.start);
    Verdict {
        writes: check_writes(&input.writes),
        fenced_writes: input.writes.fenced,
        i1,
        i2,
        i3,
        i4,
        i5,
        i7,
        max_singletons,
        max_active,
        double_hosted_shard_seconds,
        double_hostings,
        unhosted_shard_seconds: unhosted.as_secs_f64(),
        worst_outage,
        failover,
    }
}

/// I7: replays singleton starts and stops (a node that stops or restarts
/// ends its instance) and reports the most instances at once, and the first
/// instant two ran.
fn check_i7(events: &[Event], start: Instant) -> (usize, Check) {
    let mut running: BTreeSet<NodeId> = BTreeSet::new();
    let mut max = 0;
    let mut first = Check::Ok;
    for e in events {
        match &e.kind {
            EventKind::Singleton(SingletonEvent::Started) => {
                running.insert(e.node);
            }
            EventKind::Singleton(SingletonEvent::Stopped)
            | EventKind::Harness(HarnessEvent::NodeStopped | HarnessEvent::NodeStarted) => {
                running.remove(&e.node);
            }
            _ => continue,
        }
        max = max.max(running.len());
        if running.len() > 1 && first == Check::Ok {
            first = Check::Violated(format!(
                "singleton instances on {running:?} at {:.1}s",
                e.at.duration_since(start).as_secs_f64()
            ));
        }
    }
    (max, first)
}

/// Per shard, the gaps between losing its last host and being started again.
fn outages(events: &[Event]) -> (Duration, Duration) {
    let mut hosts: BTreeMap<ShardId, BTreeSet<NodeId>> = BTreeMap::new();
    let mut empty_since: BTreeMap<ShardId, Instant> = BTreeMap::new();
    let (mut total, mut worst) = (Duration::ZERO, Duration::ZERO);
    let lose = |hosts: &mut BTreeMap<ShardId, BTreeSet<NodeId>>,
                empty_since: &mut BTreeMap<ShardId, Instant>,
                shard: ShardId,
                node: NodeId,
                at: Instant| {
        let set = hosts.entry(shard).or_default();
        if set.remove(&node) && set.is_empty() {
            empty_since.insert(shard, at);
        }
    };
    for e in events {
        match &e.kind {
            EventKind::Region(RegionEvent::ShardStarted(shard)) => {
                hosts.entry(*shard).or_default().insert(e.node);
                if let Some(from) = empty_since.remove(shard) {
                    let gap = e.at.duration_since(from);
                    total += gap;
                    worst = worst.max(gap);
                }
            }
            EventKind::Region(RegionEvent::ShardStopped(shard)) => {
                lose(&mut hosts, &mut empty_since, *shard, e.node, e.at);
            }
            EventKind::Harness(HarnessEvent::NodeStopped) => {
                let shards: Vec<ShardId> = hosts
                    .iter()
                    .filter(|(_, s)| s.contains(&e.node))
                    .map(|(k, _)| *k)
                    .collect();
                for shard in shards {
                    lose(&mut hosts, &mut empty_since, shard, e.node, e.at);
                }
            }
            _ => {}
        }
    }
    (total, worst)
}

/// `(node, from, until)`: when each coordinator was active.
type Interval = (NodeId, Instant, Instant);

fn active_intervals(events: &[Event], end: Instant) -> Vec<Interval> {
    let mut open: BTreeMap<NodeId, Instant> = BTreeMap::new();
    let mut out = Vec::new();
    for e in events {
        let closes = match &e.kind {
            EventKind::Coordinator(CoordinatorRecord::PhaseChanged { phase, .. }) => {
                if *phase == Phase::Active {
                    open.entry(e.node).or_insert(e.at);
                    false
                } else {
                    true
                }
            }
            EventKind::Harness(HarnessEvent::NodeStopped | HarnessEvent::NodeStarted) => true,
            _ => false,
        };
        if closes {
            if let Some(from) = open.remove(&e.node) {
                out.push((e.node, from, e.at));
            }
        }
    }
    out.extend(open.into_iter().map(|(node, from)| (node, from, end)));
    out
}

/// The most intervals open at one instant, and I1's verdict. An interval that
/// ends at the very instant another starts does not overlap it.
fn check_i1(active: &[Interval], start: Instant) -> (usize, Check) {
    let mut points: Vec<(Instant, i32, NodeId)> = Vec::new();
    for &(node, from, until) in active {
        if until > from {
            points.push((from, 1, node));
            points.push((until, -1, node));
        }
    }
    // Ends before starts at the same instant.
    points.sort_by_key(|&(at, delta, node)| (at, delta, node));
    let (mut now, mut max, mut first) = (0i32, 0i32, None);
    let mut open = BTreeSet::new();
    for (at, delta, node) in points {
        now += delta;
        if delta > 0 {
            open.insert(node);
        } else {
            open.remove(&node);
        }
        if now > max {
            max = now;
        }
        if now > 1 && first.is_none() {
            first = Some((at, open.clone()));
        }
    }
    let check = match first {
        Some((at, nodes)) => Check::Violated(format!(
            "{} coordinators active at once at {:.3}s: {nodes:?}",
            nodes.len(),
            since(start, at)
        )),
        None => Check::Ok,
    };
    (usize::try_from(max).unwrap_or(0), check)
}

/// Seconds from the start of the run to `at`, for messages.
fn since(start: Instant, at: Instant) -> f64 {
    at.saturating_duration_since(start).as_secs_f64()
}

fn check_i2(active: &[Interval], grants: &[Grant], start: Instant) -> Check {
    for &(node, from, until) in active {
        let owner = owner_of(node);
        let covered = grants
            .iter()
            .any(|g| g.owner == owner && g.from <= from && until <= g.until);
        if !covered && until > from {
            let own: Vec<String> = grants
                .iter()
                .filter(|g| g.owner == owner)
                .map(|g| {
                    format!(
                        "{:.3}s..{:.3}s",
                        since(start, g.from),
                        since(start, g.until)
                    )
                })
                .collect();
            return Check::Violated(format!(
                "{node} active from {:.3}s to {:.3}s without a covering grant (its grants: {})",
                since(start, from),
                since(start, until),
                own.join(", ")
            ));
        }
    }
    Check::Ok
}

fn check_i3(events: &[Event]) -> Check {
    let mut highest: BTreeMap<NodeId, Epoch> = BTreeMap::new();
    for e in events {
        match &e.kind {
            EventKind::Region(RegionEvent::DirectiveObeyed {
                epoch, kind, from, ..
            }) => {
                let max = highest.entry(e.node).or_default();
                if *epoch < *max {
                    return Check::Violated(format!(
                        "{} obeyed {kind} at {epoch} from {from} after obeying {max}",
                        e.node
                    ));
                }
                *max = *epoch;
            }
            // A restarted region starts with no memory of epochs.
            EventKind::Harness(HarnessEvent::NodeStarted) => {
                highest.remove(&e.node);
            }
            _ => {}
        }
    }
    Check::Ok
}

fn check_i4(active: &[Interval], input: &CheckInput<'_>) -> (Option<Duration>, Check) {
    let healed = input.healed_at.unwrap_or(input.start);
    let finals: Vec<&Interval> = active
        .iter()
        .filter(|(_, _, until)| *until >= input.end)
        .collect();
    let [last] = finals[..] else {
        let check = Check::Violated(format!(
            "{} coordinators active at the end of the run",
            finals.len()
        ));
        return (None, check);
    };
    // From `settled` on, `last` is the only active coordinator.
    let settled = active
        .iter()
        .filter(|i| *i != last && i.2 > healed)
        .map(|i| i.2)
        .chain([healed, last.1])
        .max()
        .unwrap_or(healed);
    let failover = settled.duration_since(healed);
    let check = if failover > input.recovery_bound {
        Check::Violated(format!(
            "one active coordinator only {failover:?} after the faults ended (bound {:?})",
            input.recovery_bound
        ))
    } else {
        probe_verdict(&input.probe, input.start).unwrap_or(Check::Ok)
    };
    (Some(failover), check)
}

/// I4's shard half, judged from every node: every shard has exactly one
/// host, and every shard answered through every node.
fn probe_verdict(probe: &FinalProbe, start: Instant) -> Option<Check> {
    let at = probe
        .at
        .map_or(0.0, |t| t.duration_since(start).as_secs_f64());
    if let Some((shard, nodes)) = probe.hosts.iter().find(|(_, n)| n.len() > 1) {
        let all = probe.hosts.values().filter(|n| n.len() > 1).count();
        return Some(Check::Violated(format!(
            "{shard} hosted on {nodes:?} at {at:.1}s ({all} double-hosted shards)"
        )));
    }
    if let Some((shard, node)) = probe.unreachable.first() {
        return Some(Check::Violated(format!(
            "{shard} unreachable through {node} at {at:.1}s ({} shard-node pairs unanswered)",
            probe.unreachable.len()
        )));
    }
    None
}

/// A shard, the nodes hosting it, and when that started and ended.
pub type DoubleHosting = (ShardId, Vec<NodeId>, Instant, Instant);

/// Intervals kept for reports; the total counts them all.
const KEPT_INTERVALS: usize = 100;

/// Sum over shards of the time hosted on two or more nodes, and the
/// intervals (I5's evidence).
fn double_hosted(events: &[Event], end: Instant) -> (f64, Vec<DoubleHosting>) {
    let mut hosts: BTreeMap<ShardId, BTreeSet<NodeId>> = BTreeMap::new();
    let mut since: BTreeMap<ShardId, (Instant, Vec<NodeId>)> = BTreeMap::new();
    let mut total = Duration::ZERO;
    let mut found: Vec<DoubleHosting> = Vec::new();
    let mut update = |hosts: &mut BTreeMap<ShardId, BTreeSet<NodeId>>,
                      shard: ShardId,
                      at: Instant,
                      change: &dyn Fn(&mut BTreeSet<NodeId>)| {
        let set = hosts.entry(shard).or_default();
        let was_double = set.len() >= 2;
        change(set);
        let is_double = set.len() >= 2;
        match (was_double, is_double) {
            (false, true) => {
                since.insert(shard, (at, set.iter().copied().collect()));
            }
            (true, false) => {
                if let Some((from, nodes)) = since.remove(&shard) {
                    total += at.duration_since(from);
                    if found.len() < KEPT_INTERVALS {
                        found.push((shard, nodes, from, at));
                    }
                }
            }
            _ => {}
        }
    };
    for e in events {
        match &e.kind {
            EventKind::Region(RegionEvent::ShardStarted(shard)) => {
                update(&mut hosts, *shard, e.at, &|s| {
                    s.insert(e.node);
                });
            }
            EventKind::Region(RegionEvent::ShardStopped(shard)) => {
                update(&mut hosts, *shard, e.at, &|s| {
                    s.remove(&e.node);
                });
            }
            EventKind::Harness(HarnessEvent::NodeStopped) => {
                let shards: Vec<ShardId> = hosts
                    .iter()
                    .filter(|(_, s)| s.contains(&e.node))
                    .map(|(k, _)| *k)
                    .collect();
                for shard in shards {
                    update(&mut hosts, shard, e.at, &|s| {
                        s.remove(&e.node);
                    });
                }
            }
            _ => {}
        }
    }
    for (shard, (from, nodes)) in since {
        total += end.duration_since(from);
        if found.len() < KEPT_INTERVALS {
            found.push((shard, nodes, from, end));
        }
    }
    (total.as_secs_f64(), found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lease_api::FencingToken;
    use sharding_coordinator::CoordinatorRecord::PhaseChanged;

    fn at(t0: Instant, s: u64) -> Instant {
        t0 + Duration::from_secs(s)
    }

    fn phase(t: Instant, node: u64, phase: Phase) -> Event {
        Event {
            at: t,
            node: NodeId(node),
            kind: EventKind::Coordinator(PhaseChanged { phase, epoch: None }),
        }
    }

    fn region(t: Instant, node: u64, e: RegionEvent) -> Event {
        Event {
            at: t,
            node: NodeId(node),
            kind: EventKind::Region(e),
        }
    }

    fn grant(owner: u64, token: u64, from: Instant, until: Instant) -> Grant {
        Grant {
            lease: "l".into(),
            owner: owner_of(NodeId(owner)),
            token: FencingToken::new(token),
            from,
            until,
        }
    }

    fn input<'a>(t0: Instant, events: &'a [Event], grants: Option<&'a [Grant]>) -> CheckInput<'a> {
        CheckInput {
            events,
            grants,
            start: t0,
            end: at(t0, 100),
            healed_at: Some(at(t0, 50)),
            recovery_bound: Duration::from_secs(38),
            probe: FinalProbe::default(),
            writes: Writes::default(),
        }
    }

    fn singleton(t: Instant, node: u64, e: SingletonEvent) -> Event {
        Event {
            at: t,
            node: NodeId(node),
            kind: EventKind::Singleton(e),
        }
    }

    #[test]
    fn i7_flags_two_singleton_instances_at_once_and_not_a_handover() {
        let t0 = Instant::now();
        let handover = [
            singleton(at(t0, 1), 1, SingletonEvent::Started),
            singleton(at(t0, 10), 1, SingletonEvent::Stopped),
            singleton(at(t0, 10), 2, SingletonEvent::Started),
            // A crash ends the instance without a Stopped event.
            Event {
                at: at(t0, 20),
                node: NodeId(2),
                kind: EventKind::Harness(HarnessEvent::NodeStopped),
            },
            singleton(at(t0, 30), 3, SingletonEvent::Started),
        ];
        let v = check(&input(t0, &handover, None));
        assert_eq!((v.max_singletons, v.i7), (1, Check::Ok));
        let overlap = [
            singleton(at(t0, 1), 1, SingletonEvent::Started),
            singleton(at(t0, 12), 4, SingletonEvent::Started),
            singleton(at(t0, 15), 1, SingletonEvent::Stopped),
        ];
        let v = check(&input(t0, &overlap, None));
        assert_eq!(v.max_singletons, 2);
        match v.i7 {
            Check::Violated(why) => assert!(why.contains("12.0s"), "{why}"),
            other => panic!("I7 not flagged: {other:?}"),
        }
    }

    #[test]
    fn a_clean_handover_passes() {
        let t0 = Instant::now();
        let events = [
            phase(at(t0, 1), 1, Phase::Active),
            phase(at(t0, 40), 1, Phase::Acquiring),
            phase(at(t0, 60), 2, Phase::Active),
        ];
        let grants = [
            grant(1, 1, t0, at(t0, 43)),
            grant(2, 2, at(t0, 55), at(t0, 200)),
        ];
        let v = check(&input(t0, &events, Some(&grants)));
        assert_eq!(
            (v.i1.clone(), v.i2.clone(), v.i3.clone(), v.i4.clone()),
            (Check::Ok, Check::Ok, Check::Ok, Check::Ok)
        );
        assert_eq!(v.max_active, 1);
        assert_eq!(v.failover, Some(Duration::from_secs(10)));
        assert!(!v.failed());
    }

    #[test]
    fn two_active_coordinators_break_i1() {
        let t0 = Instant::now();
        let events = [
            phase(at(t0, 1), 1, Phase::Active),
            phase(at(t0, 20), 4, Phase::Active),
            phase(at(t0, 30), 4, Phase::Standby),
        ];
        let v = check(&input(t0, &events, None));
        assert!(v.i1.is_violated(), "{:?}", v.i1);
        assert_eq!(v.max_active, 2);
        assert_eq!(v.i2, Check::NotApplicable);
    }

    #[test]
    fn a_crash_closes_the_interval() {
        let t0 = Instant::now();
        let events = [
            phase(at(t0, 1), 1, Phase::Active),
            Event {
                at: at(t0, 10),
                node: NodeId(1),
                kind: EventKind::Harness(HarnessEvent::NodeStopped),
            },
            phase(at(t0, 20), 2, Phase::Active),
        ];
        let v = check(&input(t0, &events, None));
        assert_eq!(v.i1, Check::Ok);
    }

    #[test]
    fn active_beyond_the_grant_breaks_i2() {
        let t0 = Instant::now();
        let events = [
            phase(at(t0, 1), 1, Phase::Active),
            phase(at(t0, 45), 1, Phase::Acquiring),
            phase(at(t0, 60), 2, Phase::Active),
        ];
        let grants = [
            grant(1, 1, t0, at(t0, 43)),
            grant(2, 2, at(t0, 50), at(t0, 200)),
        ];
        let v = check(&input(t0, &events, Some(&grants)));
        assert!(v.i2.is_violated(), "{:?}", v.i2);
        assert_eq!(v.i1, Check::Ok);
    }

    #[test]
    fn obeying_a_lower_epoch_breaks_i3_unless_restarted() {
        let t0 = Instant::now();
        let obey = |s, node, epoch| {
            region(
                at(t0, s),
                node,
                RegionEvent::DirectiveObeyed {
                    from: NodeId(1),
                    kind: "HostShard",
                    epoch: Epoch(epoch),
                    shard: Some(ShardId(1)),
                },
            )
        };
        let bad = [obey(1, 2, 5), obey(2, 2, 4)];
        assert!(check(&input(t0, &bad, None)).i3.is_violated());
        let restarted = [
            obey(1, 2, 5),
            Event {
                at: at(t0, 2),
                node: NodeId(2),
                kind: EventKind::Harness(HarnessEvent::NodeStarted),
            },
            obey(3, 2, 4),
        ];
        assert_eq!(check(&input(t0, &restarted, None)).i3, Check::Ok);
    }

    #[test]
    fn slow_or_missing_recovery_breaks_i4() {
        let t0 = Instant::now();
        let slow = [phase(at(t0, 95), 2, Phase::Active)];
        assert!(check(&input(t0, &slow, None)).i4.is_violated());
        let none: [Event; 0] = [];
        assert!(check(&input(t0, &none, None)).i4.is_violated());
        let fine = [phase(at(t0, 60), 2, Phase::Active)];
        assert_eq!(check(&input(t0, &fine, None)).i4, Check::Ok);
        let mut i = input(t0, &fine, None);
        i.probe.unreachable = vec![(ShardId(3), NodeId(2)), (ShardId(9), NodeId(4))];
        let why = check(&i).i4;
        assert!(
            matches!(&why, Check::Violated(w) if w.contains("shard-3") && w.contains("node-2")),
            "{why:?}"
        );
    }

    #[test]
    fn a_shard_hosted_twice_at_the_end_breaks_i4() {
        let t0 = Instant::now();
        let fine = [phase(at(t0, 60), 2, Phase::Active)];
        let mut i = input(t0, &fine, None);
        i.probe.hosts.insert(ShardId(1), vec![NodeId(1)]);
        i.probe.hosts.insert(ShardId(5), vec![NodeId(2), NodeId(3)]);
        let why = check(&i).i4;
        assert!(
            matches!(&why, Check::Violated(w) if w.contains("shard-5") && w.contains("1 double-hosted")),
            "{why:?}"
        );
        i.probe.hosts.insert(ShardId(5), vec![NodeId(3)]);
        assert_eq!(check(&i).i4, Check::Ok);
    }

    #[test]
    fn failover_counts_until_the_last_other_coordinator_stops() {
        let t0 = Instant::now();
        // Node 1 active throughout; node 4 (other side) active until 53 s,
        // 3 s after the faults ended at 50 s.
        let events = [
            phase(at(t0, 1), 1, Phase::Active),
            phase(at(t0, 20), 4, Phase::Active),
            phase(at(t0, 53), 4, Phase::Standby),
        ];
        let v = check(&input(t0, &events, None));
        assert_eq!(v.failover, Some(Duration::from_secs(3)));
        assert_eq!(v.i4, Check::Ok);
        assert!(v.i1.is_violated(), "two were active during the partition");
        // Still two at the end: I4 is broken.
        let both = [
            phase(at(t0, 1), 1, Phase::Active),
            phase(at(t0, 20), 4, Phase::Active),
        ];
        assert!(check(&input(t0, &both, None)).i4.is_violated());
    }

    #[test]
    fn double_hosting_is_measured() {
        let t0 = Instant::now();
        let s = ShardId(7);
        let events = [
            region(at(t0, 0), 1, RegionEvent::ShardStarted(s)),
            region(at(t0, 10), 2, RegionEvent::ShardStarted(s)),
            region(at(t0, 14), 1, RegionEvent::ShardStopped(s)),
            phase(at(t0, 60), 2, Phase::Active),
        ];
        let v = check(&input(t0, &events, None));
        assert!((v.double_hosted_shard_seconds - 4.0).abs() < 1e-9);
        let why = v.i5;
        assert!(
            matches!(&why, Check::Violated(w) if w.contains("shard-7") && w.contains("from 10.000s to 14.000s")),
            "{why:?}"
        );
    }

    #[test]
    fn a_handoff_that_stops_before_the_next_start_keeps_i5() {
        let t0 = Instant::now();
        let s = ShardId(7);
        let events = [
            region(at(t0, 0), 1, RegionEvent::ShardStarted(s)),
            region(at(t0, 10), 1, RegionEvent::ShardStopped(s)),
            region(at(t0, 10), 2, RegionEvent::ShardStarted(s)),
            phase(at(t0, 60), 2, Phase::Active),
        ];
        let v = check(&input(t0, &events, None));
        assert_eq!(v.i5, Check::Ok);
        assert_eq!(v.double_hosted_shard_seconds, 0.0);
        assert_eq!(v.worst_outage, Duration::ZERO);
    }

    #[test]
    fn a_start_recorded_before_another_nodes_stop_at_the_same_instant_is_a_real_overlap() {
        let t0 = Instant::now();
        let s = ShardId(7);
        let events = [
            region(at(t0, 0), 1, RegionEvent::ShardStarted(s)),
            region(at(t0, 10), 2, RegionEvent::ShardStarted(s)),
            region(at(t0, 10), 1, RegionEvent::ShardStopped(s)),
            phase(at(t0, 60), 2, Phase::Active),
        ];
        let v = check(&input(t0, &events, None));
        assert_eq!(v.double_hosted_shard_seconds, 0.0);
        let why = v.i5;
        assert!(
            matches!(&why, Check::Violated(w) if w.contains("at 10.000s") && w.contains("a real overlap")),
            "{why:?}"
        );
    }

    #[test]
    fn outages_are_measured_from_the_last_stop_to_the_next_start() {
        let t0 = Instant::now();
        let (a, b) = (ShardId(1), ShardId(2));
        let events = [
            region(at(t0, 0), 1, RegionEvent::ShardStarted(a)),
            region(at(t0, 0), 2, RegionEvent::ShardStarted(b)),
            Event {
                at: at(t0, 10),
                node: NodeId(1),
                kind: EventKind::Harness(HarnessEvent::NodeStopped),
            },
            region(at(t0, 27), 2, RegionEvent::ShardStarted(a)),
            region(at(t0, 30), 2, RegionEvent::ShardStopped(b)),
            region(at(t0, 35), 3, RegionEvent::ShardStarted(b)),
            phase(at(t0, 60), 2, Phase::Active),
        ];
        let v = check(&input(t0, &events, None));
        assert_eq!(v.worst_outage, Duration::from_secs(17));
        assert!((v.unhosted_shard_seconds - 22.0).abs() < 1e-9);
    }
}

#[cfg(test)]
mod write_tests {
    use super::*;

    fn writes(acked: u64, attempted: u64, value: Option<i64>) -> Writes {
        let c = || "c1".to_string();
        Writes {
            acknowledged: [(c(), acked)].into(),
            attempted: [(c(), attempted)].into(),
            finals: value.map(|v| (c(), v)).into_iter().collect(),
            fenced: 0,
        }
    }

    #[test]
    fn every_acknowledged_increment_must_be_in_the_final_value() {
        assert_eq!(check_writes(&writes(3, 5, Some(3))), Check::Ok);
        // Saved but the answer was lost: more than acknowledged, fine.
        assert_eq!(check_writes(&writes(3, 5, Some(5))), Check::Ok);
        // A lost update: 4 acknowledged, 3 in the store.
        let lost = check_writes(&writes(4, 5, Some(3)));
        assert!(
            matches!(&lost, Check::Violated(w) if w.contains("1 lost")),
            "{lost:?}"
        );
        // Never saved at all.
        assert!(check_writes(&writes(1, 1, None)).is_violated());
        // Invented: more than was ever sent.
        assert!(check_writes(&writes(1, 2, Some(3))).is_violated());
        assert_eq!(check_writes(&Writes::default()), Check::Ok);
    }
}
