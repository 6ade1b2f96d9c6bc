//! Shared by the process-level tests: processes that die with the test,
//! HTTP helpers, and the API server emulator.

#![allow(clippy::unwrap_used, dead_code)] // test helpers: a panic is the failure report

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A child process killed (SIGKILL) when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .http_status_as_error(false)
        .build()
        .into()
}

pub fn get_json(agent: &ureq::Agent, url: &str) -> Option<(u16, Value)> {
    let mut response = agent.get(url).call().ok()?;
    let status = response.status().as_u16();
    let body: Value = response.body_mut().read_json().ok()?;
    Some((status, body))
}

pub fn post_json(agent: &ureq::Agent, url: &str) -> Option<(u16, Value)> {
    let mut response = agent.post(url).send_empty().ok()?;
    let status = response.status().as_u16();
    let body: Value = response.body_mut().read_json().unwrap_or(Value::Null);
    Some((status, body))
}

pub fn eventually(limit: Duration, what: &str, mut pred: impl FnMut() -> bool) {
    let start = Instant::now();
    while !pred() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub struct Node {
    pub id: u64,
    pub http: String,
    pub proc: Option<Proc>,
}

/// The API server emulator in its own process, writing `dir/kubeconfig`.
/// The lease store the processes share: a real kube-apiserver when
/// `KUBEBUILDER_ASSETS` is set (envtest), else the emulator in its own process.
pub enum Store {
    Emulator(Proc),
    Real(lease_k8s::envtest::EnvTest),
}

/// Starts the lease store; returns it (stopped on drop) and a kubeconfig.
pub fn start_store(dir: &Path) -> (Store, PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    if lease_k8s::envtest::EnvTest::configured() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let env = runtime
            .block_on(lease_k8s::envtest::EnvTest::start_from_env())
            .unwrap()
            .unwrap();
        let kubeconfig = env.kubeconfig_path().to_owned();
        return (Store::Real(env), kubeconfig);
    }
    let kubeconfig = dir.join("kubeconfig");
    let mut emulator = Command::new(env!("CARGO_BIN_EXE_k8s-api-emulator"))
        .arg(&kubeconfig)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut url = String::new();
    BufReader::new(emulator.stdout.take().unwrap())
        .read_line(&mut url)
        .unwrap();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    (Store::Emulator(Proc(emulator)), kubeconfig)
}

/// Starts counter-service node `id` with the Kubernetes lease and fast
/// timings; `down_after_ms` is membership's down-after.
pub fn spawn_node(
    id: u64,
    cluster_port: u16,
    http_port: u16,
    seeds: &str,
    kubeconfig: &Path,
    down_after_ms: u64,
) -> Proc {
    spawn_node_with(
        id,
        cluster_port,
        http_port,
        seeds,
        kubeconfig,
        down_after_ms,
        &[],
    )
}

/// [`spawn_node`] with more environment variables (TLS files, say).
pub fn spawn_node_with(
    id: u64,
    cluster_port: u16,
    http_port: u16,
    seeds: &str,
    kubeconfig: &Path,
    down_after_ms: u64,
    env: &[(&str, &Path)],
) -> Proc {
    let child = Command::new(env!("CARGO_BIN_EXE_counter-service"))
        .envs(env.iter().copied())
        .env("NODE_ID", id.to_string())
        .env("CLUSTER_LISTEN", format!("127.0.0.1:{cluster_port}"))
        .env("SEEDS", seeds)
        .env("HTTP_LISTEN", format!("127.0.0.1:{http_port}"))
        .env("LEASE", "kubernetes")
        .env("KUBECONFIG", kubeconfig)
        .env("HOSTNAME", format!("node-{id}"))
        .env("LEASE_TTL_MS", "2000")
        .env("LEASE_HEARTBEAT_MS", "300")
        .env("MEMBERSHIP_HEARTBEAT_MS", "200")
        .env("MEMBERSHIP_DOWN_AFTER_MS", down_after_ms.to_string())
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    Proc(child)
}
