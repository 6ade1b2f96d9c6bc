//! Applies the faults active at an instant: the wanted state (rules per
//! namespace, dead, stopped and cut-off nodes) is computed from every active
//! fault together and the difference applied, so faults may overlap and each
//! heals only what no other active fault still wants.

use std::collections::{BTreeMap, BTreeSet};

use nix::sys::signal::Signal;

use super::fault::FaultKind;
use super::net::{Network, node_addr};
use super::procs::Procs;
use super::relay::Relay;

/// A fault in force, with its victims resolved.
#[derive(Clone, Debug)]
pub struct Active {
    /// What.
    pub kind: FaultKind,
    /// On whom.
    pub victims: Vec<u64>,
    /// For loss: the share dropped, in percent.
    pub loss_percent: u8,
}

/// What is applied now, and the means to change it.
pub struct Injector<'a> {
    net: &'a Network,
    relays: &'a [Vec<Relay>],
    procs: &'a mut Procs,
    nodes: u64,
    rules: BTreeMap<u64, String>,
    dead: BTreeSet<u64>,
    stopped: BTreeSet<u64>,
    cut: BTreeSet<u64>,
}

impl<'a> Injector<'a> {
    /// Nothing applied yet (the network is healed, every node runs).
    pub fn new(
        net: &'a Network,
        relays: &'a [Vec<Relay>],
        procs: &'a mut Procs,
        nodes: u64,
    ) -> Self {
        Injector {
            net,
            relays,
            procs,
            nodes,
            rules: BTreeMap::new(),
            dead: BTreeSet::new(),
            stopped: BTreeSet::new(),
            cut: BTreeSet::new(),
        }
    }

    /// Makes the world match `active`.
    pub fn reconcile<'f>(
        &mut self,
        active: impl Iterator<Item = &'f Active> + Clone,
    ) -> Result<(), String> {
        let of = |kinds: &[FaultKind]| -> BTreeSet<u64> {
            active
                .clone()
                .filter(|a| kinds.contains(&a.kind))
                .flat_map(|a| a.victims.iter().copied())
                .collect()
        };
        let dead = of(&[FaultKind::KillFast, FaultKind::KillSlow]);
        let stopped: BTreeSet<u64> = of(&[FaultKind::Pause]).difference(&dead).copied().collect();
        let cut = of(&[FaultKind::StoreCut]);
        for id in 1..=self.nodes {
            let rules: String = active
                .clone()
                .map(|a| rules_for(a, id, self.nodes))
                .collect();
            if self
                .rules
                .get(&id)
                .map_or(!rules.is_empty(), |r| *r != rules)
            {
                self.net.set_rules(id, &rules)?;
                self.rules.insert(id, rules);
            }
        }
        for &id in dead.difference(&self.dead) {
            self.procs.kill(id); // SIGKILL ends a stopped process too
            self.stopped.remove(&id);
        }
        for &id in self.dead.difference(&dead) {
            self.procs.spawn(id)?;
        }
        self.dead = dead;
        for &id in stopped.difference(&self.stopped) {
            if !self.procs.signal(id, Signal::SIGSTOP) {
                return Err(format!("SIGSTOP to node {id}: not running"));
            }
        }
        for &id in self.stopped.difference(&stopped) {
            self.procs.signal(id, Signal::SIGCONT);
        }
        self.stopped = stopped;
        for id in 1..=self.nodes {
            let want = cut.contains(&id);
            if want != self.cut.contains(&id) {
                for relay in &self.relays[id as usize - 1] {
                    relay.set_cut(want);
                }
            }
        }
        self.cut = cut;
        Ok(())
    }
}

fn addrs(ids: impl Iterator<Item = u64>) -> String {
    let list: Vec<String> = ids.map(|i| node_addr(i).to_string()).collect();
    format!("{{ {} }}", list.join(", "))
}

/// The nftables rules fault `a` wants in node `id`'s namespace.
pub fn rules_for(a: &Active, id: u64, nodes: u64) -> String {
    let victim = a.victims.contains(&id);
    let others = || (1..=nodes).filter(|n| !a.victims.contains(n));
    match a.kind {
        FaultKind::Partition => {
            let far = if victim {
                addrs(others())
            } else {
                addrs(a.victims.iter().copied())
            };
            format!(
                "add rule inet nemesis input ip saddr {far} drop\n\
                 add rule inet nemesis output ip daddr {far} drop\n"
            )
        }
        FaultKind::OneWay if victim => {
            format!(
                "add rule inet nemesis output ip daddr {} drop\n",
                addrs(others())
            )
        }
        FaultKind::Loss if victim => {
            let peers = addrs((1..=nodes).filter(|n| *n != id));
            format!(
                "add rule inet nemesis input ip saddr {peers} numgen random mod 100 < {} drop\n",
                a.loss_percent
            )
        }
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn active(kind: FaultKind, victims: &[u64]) -> Active {
        Active {
            kind,
            victims: victims.to_vec(),
            loss_percent: 40,
        }
    }

    #[test]
    fn a_partition_cuts_both_sides_and_a_one_way_cut_only_the_victims_sends() {
        let p = active(FaultKind::Partition, &[2]);
        assert!(rules_for(&p, 2, 3).contains("ip saddr { 10.213.0.11, 10.213.0.13 } drop"));
        assert!(rules_for(&p, 1, 3).contains("ip daddr { 10.213.0.12 } drop"));
        let one_way = active(FaultKind::OneWay, &[2]);
        assert_eq!(rules_for(&one_way, 1, 3), "");
        assert_eq!(
            rules_for(&one_way, 2, 3),
            "add rule inet nemesis output ip daddr { 10.213.0.11, 10.213.0.13 } drop\n"
        );
        let loss = active(FaultKind::Loss, &[3]);
        assert!(rules_for(&loss, 3, 3).contains("numgen random mod 100 < 40 drop"));
        for kind in [
            FaultKind::KillFast,
            FaultKind::KillSlow,
            FaultKind::Pause,
            FaultKind::StoreCut,
        ] {
            assert_eq!(rules_for(&active(kind, &[1]), 1, 3), "", "{kind:?}");
        }
    }
}
