//! Shared set-up: an emulated API server and a lease per owner, each owner
//! on its own endpoint so faults can hit one client only.

#![allow(dead_code, clippy::unwrap_used)] // not every test file uses every helper

use std::sync::Arc;
use std::time::Duration;

use lease_api::LeaseSettings;
use lease_k8s::KubernetesLease;
use lease_k8s::emulator::ApiServer;

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

/// Real-time tests with 2 s ttls run one at a time, so a busy machine
/// running several of them at once does not eat their timing margins.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}
