//! A [`Lease`] on a Kubernetes `coordination.k8s.io/v1` Lease object.
//!
//! The API server is usually reachable from both sides of a partition between
//! pods, which makes it a good arbiter. The algorithm is client-go's leader
//! election: create or take over with resourceVersion preconditions, renew
//! with one PUT per heartbeat, judge expiry on the local monotonic clock.
//! The fencing token is the resourceVersion of the write that began the
//! tenure, so it never goes back, even across a deleted Lease; every handle
//! watches the one Lease (a standby sees releases and expiries as they
//! happen, a holder sees its Lease deleted or overwritten at once). Timing
//! and loss detection come from [`lease_api::ManagedLease`], shared with
//! every backend.
//!
//! ```no_run
//! use lease_api::{Lease, LeaseSettings};
//! use lease_k8s::KubernetesLease;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let client = kube::Client::try_default().await?;
//! let owner = KubernetesLease::owner_from_hostname()?; // the pod name
//! let settings = LeaseSettings::builder("counter-coordinator", owner).build()?;
//! let lease = KubernetesLease::new(client, "default", settings)?;
//! if lease.acquire().await? {
//!     assert!(lease.check_alive());
//! }
//! # Ok(())
//! # }
//! ```
//!
//! RBAC: the service account needs `get`, `list`, `watch`, `create` and
//! `update` on `leases` in the namespace (see `deploy/kubernetes/rbac.yaml`);
//! list and watch keep a standby's view of the Lease current.

mod backend;
#[cfg(feature = "emulator")]
pub mod emulator;
#[cfg(feature = "envtest")]
pub mod envtest;
mod names;

use std::sync::Arc;

use lease_api::{
    BoxFuture, FencingToken, Lease, LeaseError, LeaseSettings, LeaseStatus, ManagedLease,
    SettingsError,
};
use tokio::sync::watch;

pub use backend::{KubernetesBackend, RELEASED, SUSPENDED, TENURE, WallClock};
pub use names::{is_dns1123_label, is_dns1123_subdomain};

/// One owner's handle on a Kubernetes Lease.
pub struct KubernetesLease {
    inner: ManagedLease<KubernetesBackend>,
}

impl KubernetesLease {
    /// A handle on the Lease `settings.lease_name()` in `namespace`.
    ///
    /// The lease name must be a DNS-1123 subdomain and the namespace a
    /// DNS-1123 label; the ttl is written as whole seconds, rounded up.
    pub fn new(
        client: kube::Client,
        namespace: impl Into<String>,
        settings: LeaseSettings,
    ) -> Result<Self, SettingsError> {
        Self::with_wall_clock(
            client,
            namespace,
            settings,
            Arc::new(k8s_openapi::jiff::Timestamp::now),
        )
    }

    /// Like [`new`](Self::new), writing timestamps from `wall_clock`.
    pub fn with_wall_clock(
        client: kube::Client,
        namespace: impl Into<String>,
        settings: LeaseSettings,
        wall_clock: WallClock,
    ) -> Result<Self, SettingsError> {
        let namespace = namespace.into();
        if !is_dns1123_subdomain(settings.lease_name()) {
            return Err(SettingsError::new(
                "lease_name",
                format!("{:?}", settings.lease_name()),
                "must be a DNS-1123 subdomain: lowercase letters, digits, '-' and '.', at most 253 characters",
            ));
        }
        if !is_dns1123_label(&namespace) {
            return Err(SettingsError::new(
                "namespace",
                format!("{namespace:?}"),
                "must be a DNS-1123 label: lowercase letters, digits and '-', at most 63 characters",
            ));
        }
        let backend = KubernetesBackend::new(client, namespace, wall_clock);
        Ok(Self {
            inner: ManagedLease::new(backend, settings),
        })
    }

    /// The owner name Kubernetes pods should use: `$HOSTNAME` (the pod name).
    pub fn owner_from_hostname() -> Result<String, SettingsError> {
        match std::env::var("HOSTNAME") {
            Ok(h) if !h.trim().is_empty() => Ok(h),
            Ok(_) | Err(_) => Err(SettingsError::new(
                "owner_name",
                "$HOSTNAME",
                "HOSTNAME is not set; set the owner explicitly",
            )),
        }
    }

    /// The local validity deadline, `Some` while held.
    pub fn valid_until(&self) -> Option<tokio::time::Instant> {
        self.inner.valid_until()
    }
}

impl Lease for KubernetesLease {
    fn settings(&self) -> &LeaseSettings {
        self.inner.settings()
    }

    fn acquire(&self) -> BoxFuture<'_, Result<bool, LeaseError>> {
        self.inner.acquire()
    }

    fn release(&self) -> BoxFuture<'_, Result<bool, LeaseError>> {
        self.inner.release()
    }

    fn check_alive(&self) -> bool {
        self.inner.check_alive()
    }

    fn status(&self) -> watch::Receiver<LeaseStatus> {
        self.inner.status()
    }

    fn fencing_token(&self) -> Option<FencingToken> {
        self.inner.fencing_token()
    }

    fn valid_until(&self) -> Option<tokio::time::Instant> {
        self.inner.valid_until()
    }

    fn succession(&self) -> Option<lease_api::Succession> {
        self.inner.succession()
    }

    fn suspend(
        &self,
        token: FencingToken,
    ) -> BoxFuture<'_, Result<lease_api::Suspension, LeaseError>> {
        self.inner.suspend(token)
    }

    fn observe(&self) {
        Lease::observe(&self.inner);
    }

    fn observed(&self) -> watch::Receiver<lease_api::Observation> {
        self.inner.observed()
    }
}
