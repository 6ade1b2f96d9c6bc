//! The counter-service processes, each started inside its node's namespace
//! (`ip netns exec` execs the program, so the child's pid is the service's
//! own: signals reach it directly).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::OpenOptions;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::net::{self, node_addr};

/// Pids alive right now, for the Ctrl-C handler.
static LIVE: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());

/// Cluster port on every node's address.
pub const CLUSTER_PORT: u16 = 7000;
/// HTTP port on every node's address.
pub const HTTP_PORT: u16 = 8080;

/// How to start a node: the binary, where its log goes, and the environment
/// every node shares.
pub struct Procs {
    bin: PathBuf,
    dir: PathBuf,
    nodes: u64,
    env: Vec<(String, String)>,
    children: BTreeMap<u64, Child>,
}

impl Procs {
    /// Nothing started yet.
    pub fn new(bin: PathBuf, dir: PathBuf, nodes: u64, env: Vec<(String, String)>) -> Self {
        Procs {
            bin,
            dir,
            nodes,
            env,
            children: BTreeMap::new(),
        }
    }

    /// Starts node `id` (its log appended to `node-<id>.log`), unless it runs.
    pub fn spawn(&mut self, id: u64) -> Result<(), String> {
        if let Some(child) = self.children.get_mut(&id)
            && matches!(child.try_wait(), Ok(None))
        {
            return Ok(());
        }
        let log_path = self.dir.join(format!("node-{id}.log"));
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("{}: {e}", log_path.display()))?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        let seeds: Vec<String> = (1..=self.nodes)
            .map(|n| format!("{n}={}:{CLUSTER_PORT}", node_addr(n)))
            .collect();
        let child = Command::new("ip")
            .args(["netns", "exec", &net::netns(id)])
            .arg(&self.bin)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("NODE_ID", id.to_string())
            .env("HOSTNAME", format!("node-{id}"))
            .env(
                "CLUSTER_LISTEN",
                format!("{}:{CLUSTER_PORT}", node_addr(id)),
            )
            .env("HTTP_LISTEN", format!("{}:{HTTP_PORT}", node_addr(id)))
            .env("SEEDS", seeds.join(","))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("starting node {id}: {e}"))?;
        live().insert(child.id() as i32);
        self.children.insert(id, child);
        Ok(())
    }

    /// `kill -9` node `id` and reap it.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.children.remove(&id) {
            let _ = child.kill();
            let _ = child.wait();
            live().remove(&(child.id() as i32));
        }
    }

    /// Sends `signal` to node `id`; false when it is not running.
    pub fn signal(&self, id: u64, signal: Signal) -> bool {
        self.children
            .get(&id)
            .is_some_and(|c| kill(Pid::from_raw(c.id() as i32), signal).is_ok())
    }

    /// Nodes whose process exited on its own (a crash), with the status.
    pub fn exited(&mut self) -> Vec<(u64, String)> {
        self.children
            .iter_mut()
            .filter_map(|(id, c)| match c.try_wait() {
                Ok(Some(status)) => Some((*id, status.to_string())),
                _ => None,
            })
            .collect()
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        let ids: Vec<u64> = self.children.keys().copied().collect();
        for id in ids {
            self.kill(id);
        }
    }
}

fn live() -> std::sync::MutexGuard<'static, BTreeSet<i32>> {
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Kills every process still alive (SIGKILL also ends a stopped one).
pub fn kill_all() {
    for pid in live().iter() {
        let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
    }
}

/// A helper process in the root namespace, killed on drop.
pub struct Reaped(Child);

impl Reaped {
    /// Starts `bin arg` and reads the first line it prints.
    pub fn spawn_with_line(
        bin: &std::path::Path,
        arg: &std::path::Path,
    ) -> Result<(Self, String), String> {
        use std::io::BufRead as _;
        let mut child = Command::new(bin)
            .arg(arg)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", bin.display()))?;
        live().insert(child.id() as i32);
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            std::io::BufReader::new(out)
                .read_line(&mut line)
                .map_err(|e| format!("{}: {e}", bin.display()))?;
        }
        Ok((Reaped(child), line))
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        live().remove(&(self.0.id() as i32));
    }
}
