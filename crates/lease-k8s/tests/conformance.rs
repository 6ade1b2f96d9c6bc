//! The lease-api conformance suite against `KubernetesLease`, talking HTTP to
//! the emulated API server, in real time with a 2 s ttl.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{NS, client_for};
use lease_api::testkit::{self, ConformanceBackend};
use lease_api::{Lease, LeaseError, LeaseSettings};
use lease_k8s::KubernetesLease;
use lease_k8s::emulator::ApiServer;

struct K8s {
    server: ApiServer,
}

impl ConformanceBackend for K8s {
    fn template(&self) -> LeaseSettings {
        common::settings("template", "template")
    }

    fn create(&self, settings: LeaseSettings) -> Result<Arc<dyn Lease>, LeaseError> {
        let client = client_for(&self.server, settings.owner_name());
        Ok(Arc::new(KubernetesLease::new(client, NS, settings)?))
    }

    fn cut_off(&self, owner: &str) {
        self.server.cut(owner, true);
    }

    fn reconnect(&self, owner: &str) {
        self.server.heal(owner);
    }

    fn set_latency(&self, owner: &str, latency: Duration) {
        self.server.set_latency(owner, latency);
    }

    fn invalid_lease_name(&self) -> Option<String> {
        Some("Not_A_DNS_Name".into())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_lease_passes_the_suite() {
    let backend = K8s {
        server: ApiServer::new(),
    };
    testkit::run(&backend).await.assert_passed();
}
