//! The Kubernetes lease against a real kube-apiserver (the envtest harness
//! of `lease_k8s::envtest`): each run in a fresh namespace, each node's
//! client through its own TCP proxy (so a node can be cut off from the
//! store), and the ground truth of who held which lease when recorded by an
//! admin watch of the namespace's Leases.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease as LeaseObject;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use lease_k8s::emulator::LeaseWrite;
use lease_k8s::envtest::{EnvTest, TcpProxy};
use tokio::task::JoinHandle;

static SERVER: OnceLock<Arc<EnvTest>> = OnceLock::new();

/// Makes every Kubernetes-lease run of this process use `env` instead of
/// the emulator. Set once (`cargo xtask multinode --lease k8s` does it when
/// `KUBEBUILDER_ASSETS` is set); later calls are ignored.
pub fn use_real_api_server(env: Arc<EnvTest>) {
    let _ = SERVER.set(env);
}

/// The real API server runs use, if one was set.
pub fn real_api_server() -> Option<Arc<EnvTest>> {
    SERVER.get().cloned()
}

/// Creates a fresh namespace for one run.
pub async fn fresh_namespace(env: &EnvTest) -> Result<String, String> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let name = format!(
        "multinode-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let client = env.client().map_err(|e| e.to_string())?;
    let namespaces: Api<Namespace> = Api::all(client);
    let mut namespace = Namespace::default();
    namespace.metadata.name = Some(name.clone());
    namespaces
        .create(&PostParams::default(), &namespace)
        .await
        .map_err(|e| format!("creating namespace {name}: {e}"))?;
    Ok(name)
}

/// One run's view of the real server.
pub(crate) struct RealStore {
    env: Arc<EnvTest>,
    pub(crate) namespace: String,
    proxies: Mutex<BTreeMap<String, TcpProxy>>,
    writes: Arc<Mutex<Vec<LeaseWrite>>>,
    recorder: JoinHandle<()>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl RealStore {
    /// Starts recording the namespace's Lease writes (call in a runtime).
    pub(crate) fn new(env: Arc<EnvTest>, namespace: String) -> Self {
        let writes = Arc::new(Mutex::new(Vec::new()));
        let recorder = tokio::spawn(record(
            Arc::clone(&env),
            namespace.clone(),
            Arc::clone(&writes),
        ));
        Self {
            env,
            namespace,
            proxies: Mutex::new(BTreeMap::new()),
            writes,
            recorder,
        }
    }

    /// A client for `owner` through its own proxy.
    pub(crate) fn client_for(&self, owner: &str) -> kube::Client {
        let mut proxies = lock(&self.proxies);
        if !proxies.contains_key(owner) {
            match self.env.proxy() {
                Ok(proxy) => {
                    proxies.insert(owner.to_owned(), proxy);
                }
                Err(e) => panic!("cannot start a proxy for {owner}: {e}"),
            }
        }
        let url = proxies
            .get(owner)
            .map(|p| p.url().to_owned())
            .unwrap_or_default();
        match self.env.client_via(&url) {
            Ok(client) => client,
            Err(e) => panic!("cannot build a client for {owner}: {e}"),
        }
    }

    pub(crate) fn cut(&self, owner: &str, cut: bool) {
        if let Some(proxy) = lock(&self.proxies).get(owner) {
            proxy.cut(cut);
        }
    }

    /// Every Lease write seen so far, in resourceVersion order.
    pub(crate) fn writes(&self) -> Vec<LeaseWrite> {
        lock(&self.writes).clone()
    }
}

impl Drop for RealStore {
    fn drop(&mut self) {
        self.recorder.abort();
    }
}

/// When a write happened, on this process's clock. A holder's write carries
/// its `renewTime`, stamped by its writer (a node of this process) just
/// before sending: the watch delivers it later, and a tenure recorded at
/// delivery would begin after its coordinator was already active. A write
/// without a holder (a release leaves `renewTime` alone) is stamped when
/// seen, which can only lengthen the tenure it ends.
fn write_time(spec: &k8s_openapi::api::coordination::v1::LeaseSpec) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    let renewed = spec
        .renew_time
        .as_ref()
        .filter(|_| spec.holder_identity.as_ref().is_some_and(|h| !h.is_empty()));
    let Some(renewed) = renewed else {
        return now;
    };
    let age = k8s_openapi::jiff::Timestamp::now().duration_since(renewed.0);
    match std::time::Duration::try_from(age) {
        Ok(age) => now.checked_sub(age).unwrap_or(now),
        Err(_) => now,
    }
}

/// The admin watch: every ADDED or MODIFIED Lease.
async fn record(env: Arc<EnvTest>, namespace: String, writes: Arc<Mutex<Vec<LeaseWrite>>>) {
    let Ok(client) = env.client() else {
        tracing::error!("no admin client for the lease recorder");
        return;
    };
    let api: Api<LeaseObject> = Api::namespaced(client, &namespace);
    let mut rv = match api.list(&ListParams::default()).await {
        Ok(list) => list.metadata.resource_version.unwrap_or_default(),
        Err(e) => {
            tracing::error!(%e, "lease recorder cannot list");
            return;
        }
    };
    loop {
        let mut events = match api.watch(&WatchParams::default().timeout(290), &rv).await {
            Ok(events) => events.boxed(),
            Err(e) => {
                tracing::warn!(%e, "lease recorder watch failed; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        while let Some(event) = events.next().await {
            let lease = match event {
                Ok(WatchEvent::Added(lease) | WatchEvent::Modified(lease)) => lease,
                Ok(WatchEvent::Deleted(lease)) => {
                    if let Some(v) = lease.metadata.resource_version {
                        rv = v;
                    }
                    continue;
                }
                Ok(WatchEvent::Bookmark(b)) => {
                    rv = b.metadata.resource_version;
                    continue;
                }
                Ok(WatchEvent::Error(status)) => {
                    tracing::error!(?status, "lease recorder watch error: writes may be missing");
                    break;
                }
                Err(e) => {
                    tracing::warn!(%e, "lease recorder watch broke; resuming");
                    break;
                }
            };
            let spec = lease.spec.clone().unwrap_or_default();
            let resource_version = lease.metadata.resource_version.clone();
            if let Some(v) = &resource_version {
                rv.clone_from(v);
            }
            lock(&writes).push(LeaseWrite {
                at: write_time(&spec),
                namespace: namespace.clone(),
                name: lease.metadata.name.clone().unwrap_or_default(),
                holder: spec.holder_identity.filter(|h| !h.is_empty()),
                duration_secs: spec.lease_duration_seconds.map(i64::from),
                transitions: spec.lease_transitions.map(i64::from),
                resource_version: resource_version.and_then(|v| v.parse().ok()),
            });
        }
    }
}
