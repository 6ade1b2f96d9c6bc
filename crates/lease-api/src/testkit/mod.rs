//! The conformance suite every lease backend runs (feature `testkit`).
//!
//! A backend implements [`ConformanceBackend`] (make leases over one shared
//! store, cut an owner off, slow an owner down) and calls [`run`] from one
//! test. The suite uses tokio time only, so in-memory backends run it with
//! paused time and networked ones in real time with short ttls.
//!
//! ```no_run
//! # use lease_api::testkit::{self, ConformanceBackend};
//! # async fn example(backend: &dyn ConformanceBackend) {
//! testkit::run(backend).await.assert_passed();
//! # }
//! ```

mod cases;
mod report;

use std::sync::Arc;
use std::time::Duration;

use crate::{BoxFuture, Lease, LeaseError, LeaseSettings};

pub use cases::Case;
pub use report::{CaseResult, ConformanceReport};

/// What the suite needs from a backend under test.
pub trait ConformanceBackend: Send + Sync {
    /// Settings whose timing (ttl, heartbeat, timeout, margin) every case uses;
    /// the suite substitutes its own lease and owner names.
    fn template(&self) -> LeaseSettings;

    /// A handle for `settings.owner_name()` on the shared store.
    fn create(&self, settings: LeaseSettings) -> Result<Arc<dyn Lease>, LeaseError>;

    /// From now on, calls by `owner` do not reach the store (they fail or hang).
    fn cut_off(&self, owner: &str);

    /// Undoes [`cut_off`](Self::cut_off) and [`set_latency`](Self::set_latency) for `owner`.
    fn reconnect(&self, owner: &str);

    /// Every call by `owner` takes at least `latency` before it is answered.
    fn set_latency(&self, owner: &str, latency: Duration);

    /// A lease name the backend cannot store, if it has such names.
    fn invalid_lease_name(&self) -> Option<String> {
        None
    }

    /// Ends `lease`'s current tenure in the store behind its holder's back
    /// (a revocation, a deleted record); `false` where the store has no
    /// such operation (case n then does not apply).
    fn revoke<'a>(&'a self, _lease: &'a str) -> BoxFuture<'a, bool> {
        Box::pin(async { false })
    }
}

/// Runs every case of the suite in order and reports each outcome.
pub async fn run(backend: &dyn ConformanceBackend) -> ConformanceReport {
    run_only(backend, Case::ALL).await
}

/// Runs the given cases in order.
pub async fn run_only(backend: &dyn ConformanceBackend, cases: &[Case]) -> ConformanceReport {
    let mut results = Vec::with_capacity(cases.len());
    for &case in cases {
        tracing::info!(case = case.name(), "conformance case starting");
        let outcome = case.run(backend).await;
        if let Err(failure) = &outcome {
            tracing::error!(case = case.name(), %failure, "conformance case failed");
        }
        results.push(CaseResult { case, outcome });
    }
    ConformanceReport::new(results)
}
