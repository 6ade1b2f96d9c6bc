//! The lease-api conformance suite against `KubernetesLease`, in real time
//! with a 2 s ttl: on the emulated API server, and on a real kube-apiserver
//! (cut-off and slowness through a TCP proxy per owner) when
//! `KUBEBUILDER_ASSETS` is set.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::Store;
use lease_api::testkit::{self, ConformanceBackend};
use lease_api::{Lease, LeaseError, LeaseSettings};

struct K8s {
    store: Store,
}

impl ConformanceBackend for K8s {
    fn template(&self) -> LeaseSettings {
        common::settings("template", "template")
    }

    fn create(&self, settings: LeaseSettings) -> Result<Arc<dyn Lease>, LeaseError> {
        let client = self.store.client_for(settings.owner_name());
        Ok(Arc::new(lease_k8s::KubernetesLease::new(
            client,
            common::NS,
            settings,
        )?))
    }

    fn cut_off(&self, owner: &str) {
        self.store.cut(owner);
    }

    fn reconnect(&self, owner: &str) {
        self.store.heal(owner);
    }

    fn set_latency(&self, owner: &str, latency: Duration) {
        self.store.set_latency(owner, latency);
    }

    fn invalid_lease_name(&self) -> Option<String> {
        Some("Not_A_DNS_Name".into())
    }

    /// An admin clears `holderIdentity` (the documented way to revoke; a
    /// deletion, which also loses any suspension mark, is checked in
    /// `kubernetes.rs`).
    fn revoke<'a>(&'a self, lease: &'a str) -> lease_api::BoxFuture<'a, bool> {
        Box::pin(async move {
            let Some(mut object) = self.store.get(lease).await else {
                return false;
            };
            object["spec"]["holderIdentity"] = serde_json::Value::Null;
            self.store.update(object).await == 200
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_lease_passes_the_suite_on_the_emulator() {
    let _serial = common::serial().await;
    let backend = K8s {
        store: Store::emulator(),
    };
    testkit::run(&backend).await.assert_passed();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_lease_passes_the_suite_on_a_real_api_server() {
    let _serial = common::serial().await;
    let Some(store) = Store::real().await else {
        return;
    };
    testkit::run(&K8s { store }).await.assert_passed();
}
