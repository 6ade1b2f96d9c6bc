//! Shared set-up: a lease store per test file (the emulated API server, or a
//! real kube-apiserver when `KUBEBUILDER_ASSETS` is set) and a client per
//! owner, each owner on its own endpoint or proxy so faults hit one client.

#![allow(dead_code, clippy::unwrap_used)] // not every test file uses every helper

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease as LeaseObject;
use kube::api::{Api, DeleteParams, PostParams};
use lease_api::LeaseSettings;
use lease_k8s::KubernetesLease;
use lease_k8s::emulator::{ApiServer, RequestCounts, Verb};
use lease_k8s::envtest::{EnvTest, TcpProxy};
use serde_json::Value;

pub const NS: &str = "default";

/// Short real-time settings: leaseDurationSeconds is whole seconds.
pub fn settings(lease: &str, owner: &str) -> LeaseSettings {
    LeaseSettings::builder(lease, owner)
        .ttl(Duration::from_secs(2))
        .heartbeat_interval(Duration::from_millis(300))
        .operation_timeout(Duration::from_millis(500))
        .safety_margin(Duration::from_millis(200))
        .build()
        .unwrap()
}

pub fn client_for(server: &ApiServer, endpoint: &str) -> kube::Client {
    let endpoint = server.endpoint(endpoint).unwrap();
    let config = kube::Config::new(endpoint.url.parse().unwrap());
    kube::Client::try_from(config).unwrap()
}

pub fn lease(server: &ApiServer, name: &str, owner: &str) -> Arc<KubernetesLease> {
    Arc::new(KubernetesLease::new(client_for(server, owner), NS, settings(name, owner)).unwrap())
}

/// Logs to the test output, filtered by `RUST_LOG`.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Real-time tests with 2 s ttls run one at a time, so a busy machine
/// running several of them at once does not eat their timing margins.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    init_tracing();
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// The real API server of this test binary, started once; `None` (and a
/// note on stderr) when `KUBEBUILDER_ASSETS` is unset.
pub async fn real_server() -> Option<&'static EnvTest> {
    static ENV: tokio::sync::OnceCell<Option<EnvTest>> = tokio::sync::OnceCell::const_new();
    let env = ENV
        .get_or_init(|| async {
            match EnvTest::start_from_env().await {
                Ok(env) => env,
                Err(e) => panic!("KUBEBUILDER_ASSETS is set but the API server did not start: {e}"),
            }
        })
        .await
        .as_ref();
    if env.is_none() {
        eprintln!(
            "skipped: KUBEBUILDER_ASSETS is not set (no real kube-apiserver to test against)"
        );
    }
    env
}

/// A lease store under test: the emulator or the real API server.
pub enum Store {
    Emulator(ApiServer),
    Real {
        env: &'static EnvTest,
        proxies: Mutex<BTreeMap<String, Arc<TcpProxy>>>,
    },
}

impl Store {
    pub fn emulator() -> Self {
        Self::Emulator(ApiServer::new())
    }

    pub async fn real() -> Option<Self> {
        let env = real_server().await?;
        Some(Self::Real {
            env,
            proxies: Mutex::new(BTreeMap::new()),
        })
    }

    pub fn is_real(&self) -> bool {
        matches!(self, Self::Real { .. })
    }

    fn proxy(&self, owner: &str) -> Option<Arc<TcpProxy>> {
        match self {
            Self::Emulator(_) => None,
            Self::Real { env, proxies } => Some(Arc::clone(
                proxies
                    .lock()
                    .unwrap()
                    .entry(owner.to_owned())
                    .or_insert_with(|| Arc::new(env.proxy().unwrap())),
            )),
        }
    }

    /// A client for `owner` through its own endpoint or proxy.
    pub fn client_for(&self, owner: &str) -> kube::Client {
        match self {
            Self::Emulator(server) => client_for(server, owner),
            Self::Real { env, .. } => env.client_via(self.proxy(owner).unwrap().url()).unwrap(),
        }
    }

    pub fn lease(&self, name: &str, owner: &str) -> Arc<KubernetesLease> {
        self.lease_with(settings(name, owner))
    }

    pub fn lease_with(&self, settings: LeaseSettings) -> Arc<KubernetesLease> {
        let client = self.client_for(settings.owner_name());
        Arc::new(KubernetesLease::new(client, NS, settings).unwrap())
    }

    pub fn cut(&self, owner: &str) {
        match self {
            Self::Emulator(server) => server.cut(owner, true),
            Self::Real { .. } => self.proxy(owner).unwrap().cut(true),
        }
    }

    pub fn heal(&self, owner: &str) {
        match self {
            Self::Emulator(server) => server.heal(owner),
            Self::Real { .. } => self.proxy(owner).unwrap().heal(),
        }
    }

    pub fn set_latency(&self, owner: &str, latency: Duration) {
        match self {
            Self::Emulator(server) => server.set_latency(owner, latency),
            Self::Real { .. } => self.proxy(owner).unwrap().set_latency(latency),
        }
    }

    /// The whole store unreachable (every owner cut) or back.
    pub fn set_down(&self, down: bool) {
        match self {
            Self::Emulator(server) => server.set_down(down),
            Self::Real { proxies, .. } => {
                for proxy in proxies.lock().unwrap().values() {
                    proxy.cut(down);
                }
            }
        }
    }

    fn admin(&self) -> Api<LeaseObject> {
        match self {
            Self::Emulator(server) => Api::namespaced(client_for(server, "admin"), NS),
            Self::Real { env, .. } => Api::namespaced(env.client().unwrap(), NS),
        }
    }

    /// The stored Lease as JSON, read by an admin.
    pub async fn get(&self, name: &str) -> Option<Value> {
        let lease = self.admin().get_opt(name).await.unwrap()?;
        Some(serde_json::to_value(lease).unwrap())
    }

    /// An admin PUT of `object`; the HTTP status.
    pub async fn update(&self, object: Value) -> u16 {
        let lease: LeaseObject = serde_json::from_value(object).unwrap();
        let name = lease.metadata.name.clone().unwrap();
        match self
            .admin()
            .replace(&name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => 200,
            Err(kube::Error::Api(status)) => status.code,
            Err(e) => panic!("admin update: {e}"),
        }
    }

    /// An admin DELETE; the HTTP status.
    pub async fn delete(&self, name: &str) -> u16 {
        match self.admin().delete(name, &DeleteParams::default()).await {
            Ok(_) => 200,
            Err(kube::Error::Api(status)) => status.code,
            Err(e) => panic!("admin delete: {e}"),
        }
    }

    /// Lease requests the store has answered: by `owner` on the emulator;
    /// by everyone on the real server (from its `/metrics`), which is the
    /// same while one owner acts.
    pub async fn lease_requests(&self, owner: &str) -> RequestCounts {
        match self {
            Self::Emulator(server) => server.counts(owner),
            Self::Real { env, .. } => metrics_counts(env).await,
        }
    }

    pub fn emulator_server(&self) -> Option<&ApiServer> {
        match self {
            Self::Emulator(server) => Some(server),
            Self::Real { .. } => None,
        }
    }

    /// An emulator-only admin write (the real server has no such back door).
    pub fn apply(&self, verb: Verb, name: &str, body: Option<Value>) -> Option<u16> {
        self.emulator_server()
            .map(|s| s.apply(verb, NS, Some(name), body).status)
    }
}

async fn metrics_counts(env: &EnvTest) -> RequestCounts {
    let client = env.client().unwrap();
    let request = http::Request::get("/metrics").body(Vec::new()).unwrap();
    let text = client.request_text(request).await.unwrap();
    let mut counts = RequestCounts::default();
    for line in text.lines() {
        if !line.starts_with("apiserver_request_total{") || !line.contains("resource=\"leases\"") {
            continue;
        }
        let value: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        let n = value as u64;
        let verb = line
            .split("verb=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or("");
        match verb {
            "GET" => counts.get += n,
            "LIST" => counts.list += n,
            "POST" => counts.create += n,
            "PUT" => counts.update += n,
            "DELETE" => counts.delete += n,
            "WATCH" => counts.watch += n,
            _ => {}
        }
    }
    counts
}
