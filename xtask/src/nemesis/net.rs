//! The network the processes live on: one namespace per node, each joined by
//! a veth pair to one bridge in the root namespace, and nftables tables
//! inside the namespaces for the faults.
//!
//! Everything is named with [`PREFIX`], so a run (or a Ctrl-C) can sweep
//! away whatever an earlier, killed run left behind.

use std::io::Write as _;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

/// Names of every namespace, veth and bridge this suite creates start with it.
pub const PREFIX: &str = "nemesis";
const BRIDGE: &str = "nemesis0";
/// The bridge's address in the root namespace: the workload client's.
pub const ROOT_ADDR: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 1);

/// Node `id`'s address (ids start at 1).
pub fn node_addr(id: u64) -> Ipv4Addr {
    Ipv4Addr::new(10, 213, 0, 10 + id as u8)
}

/// Node `id`'s namespace name.
pub fn netns(id: u64) -> String {
    format!("{PREFIX}-{id}")
}

/// Runs `program args`, failing with its stderr.
pub fn sh(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Feeds `script` to `nft -f -` inside node `id`'s namespace (atomic).
pub fn nft(id: u64, script: &str) -> Result<(), String> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", &netns(id), "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run nft: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| format!("nft stdin: {e}"))?;
    }
    let out = child.wait_with_output().map_err(|e| format!("nft: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nft in {}: {}\nscript:\n{script}",
            netns(id),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The bridge and `nodes` namespaces; torn down on drop.
pub struct Network {
    nodes: u64,
}

impl Network {
    /// Sweeps leftovers, then builds the bridge and one namespace per node
    /// with loopback up, its veth on the bridge and an empty fault table.
    pub fn create(nodes: u64) -> Result<Self, String> {
        sweep();
        let net = Network { nodes };
        sh("ip", &["link", "add", BRIDGE, "type", "bridge"])?;
        sh(
            "ip",
            &["addr", "add", &format!("{ROOT_ADDR}/24"), "dev", BRIDGE],
        )?;
        sh("ip", &["link", "set", BRIDGE, "up"])?;
        for id in 1..=nodes {
            let ns = netns(id);
            let veth = format!("{PREFIX}v{id}");
            sh("ip", &["netns", "add", &ns])?;
            sh(
                "ip",
                &[
                    "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
                ],
            )?;
            sh("ip", &["link", "set", &veth, "master", BRIDGE, "up"])?;
            let addr = format!("{}/24", node_addr(id));
            sh("ip", &["-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
            sh("ip", &["-n", &ns, "link", "set", "eth0", "up"])?;
            sh("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
        }
        net.heal()?;
        Ok(net)
    }

    /// Removes every fault rule: each namespace gets a fresh, empty table.
    pub fn heal(&self) -> Result<(), String> {
        for id in 1..=self.nodes {
            nft(id, &table(""))?;
        }
        Ok(())
    }

    /// Replaces node `id`'s fault rules with `rules` (input and output
    /// chains, see [`table`]).
    pub fn set_rules(&self, id: u64, rules: &str) -> Result<(), String> {
        nft(id, &table(rules))
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        sweep();
    }
}

/// A whole `inet nemesis` table: created if missing, then replaced. `rules`
/// are `add rule inet nemesis <chain> ...` lines.
pub fn table(rules: &str) -> String {
    format!(
        "table inet nemesis {{}}\n\
         delete table inet nemesis\n\
         table inet nemesis {{\n\
         \x20 chain input {{ type filter hook input priority 0; policy accept; }}\n\
         \x20 chain output {{ type filter hook output priority 0; policy accept; }}\n\
         }}\n{rules}"
    )
}

/// Kills whatever still runs in this suite's namespaces (a run killed
/// without its cleanup leaves its nodes behind), then deletes every
/// namespace and link this suite names; errors are ignored (there may be
/// nothing to delete).
pub fn sweep() {
    if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            if name.starts_with(PREFIX) {
                if let Ok(pids) = Command::new("ip").args(["netns", "pids", name]).output() {
                    for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
                        if let Ok(pid) = pid.parse::<i32>() {
                            let _ = nix::sys::signal::kill(
                                nix::unistd::Pid::from_raw(pid),
                                nix::sys::signal::Signal::SIGKILL,
                            );
                        }
                    }
                }
                let _ = sh("ip", &["netns", "del", name]);
            }
        }
    }
    // A namespace whose processes were still dying lingers, and its veth
    // with it: delete the root ends (and the bridge) by name.
    if let Ok(out) = Command::new("ip").args(["-o", "link", "show"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split_whitespace().nth(1).unwrap_or("");
            let name = name.trim_end_matches(':').split('@').next().unwrap_or("");
            if name.starts_with(PREFIX) {
                let _ = sh("ip", &["link", "del", name]);
            }
        }
    }
}
