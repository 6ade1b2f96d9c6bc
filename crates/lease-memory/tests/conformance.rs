//! The lease-api conformance suite against the in-memory store, in paused time,
//! plus proof that the suite rejects broken backends.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use lease_api::testkit::{self, Case, ConformanceBackend};
use lease_api::{
    AcquireOutcome, BoxFuture, FencingToken, Lease, LeaseBackend, LeaseError, LeaseSettings,
    LeaseStatus, ManagedLease, RenewOutcome,
};
use lease_memory::{InMemoryLease, InMemoryLeaseStore, MemoryBackend};
use tokio::sync::watch;

/// Which way a cut-off owner's calls misbehave.
#[derive(Clone, Copy)]
enum CutMode {
    Refused,
    BlackHole,
}

struct Memory {
    store: InMemoryLeaseStore,
    cut: CutMode,
}

impl Memory {
    fn new(cut: CutMode) -> Self {
        Self {
            store: InMemoryLeaseStore::new(),
            cut,
        }
    }
}

impl ConformanceBackend for Memory {
    fn template(&self) -> LeaseSettings {
        LeaseSettings::builder("template", "template")
            .build()
            .expect("valid settings")
    }

    fn create(&self, settings: LeaseSettings) -> Result<Arc<dyn Lease>, LeaseError> {
        Ok(Arc::new(self.store.lease(settings)))
    }

    fn cut_off(&self, owner: &str) {
        match self.cut {
            CutMode::Refused => self.store.cut_off(owner),
            CutMode::BlackHole => self.store.black_hole(owner),
        }
    }

    fn reconnect(&self, owner: &str) {
        self.store.reconnect(owner);
    }

    fn set_latency(&self, owner: &str, latency: Duration) {
        self.store.set_latency(owner, latency);
    }

    fn revoke<'a>(&'a self, lease: &'a str) -> BoxFuture<'a, bool> {
        Box::pin(async move { self.store.revoke(lease).is_some() })
    }
}

/// Broken on purpose: the same store, but no watch, so a holder hears of a
/// revocation only at its next renew and a standby sees nothing.
struct NoWatch(MemoryBackend);

impl LeaseBackend for NoWatch {
    fn try_acquire<'a>(
        &'a self,
        settings: &'a LeaseSettings,
    ) -> BoxFuture<'a, Result<AcquireOutcome, LeaseError>> {
        self.0.try_acquire(settings)
    }
    fn renew<'a>(
        &'a self,
        settings: &'a LeaseSettings,
        token: FencingToken,
    ) -> BoxFuture<'a, Result<RenewOutcome, LeaseError>> {
        self.0.renew(settings, token)
    }
    fn release<'a>(
        &'a self,
        settings: &'a LeaseSettings,
        token: FencingToken,
    ) -> BoxFuture<'a, Result<bool, LeaseError>> {
        self.0.release(settings, token)
    }
}

struct Polling(Memory);

impl ConformanceBackend for Polling {
    fn template(&self) -> LeaseSettings {
        self.0.template()
    }
    fn create(&self, settings: LeaseSettings) -> Result<Arc<dyn Lease>, LeaseError> {
        let backend = NoWatch(MemoryBackend::new(self.0.store.clone()));
        Ok(Arc::new(ManagedLease::new(backend, settings)))
    }
    fn cut_off(&self, owner: &str) {
        self.0.cut_off(owner);
    }
    fn reconnect(&self, owner: &str) {
        self.0.reconnect(owner);
    }
    fn set_latency(&self, owner: &str, latency: Duration) {
        self.0.set_latency(owner, latency);
    }
    fn revoke<'a>(&'a self, lease: &'a str) -> BoxFuture<'a, bool> {
        self.0.revoke(lease)
    }
}

#[tokio::test(start_paused = true)]
async fn suite_rejects_a_lease_that_does_not_watch() {
    let report = testkit::run(&Polling(Memory::new(CutMode::Refused))).await;
    let failed = report.failed_cases();
    for case in [
        Case::RevocationSeenAtOnce,
        Case::ObserverSeesRelease,
        Case::ObserverSeesExpiry,
    ] {
        assert!(failed.contains(&case), "{case:?} passed:\n{report}");
    }
    assert!(
        !failed.contains(&Case::CutOffLostBeforeTakeover),
        "{report}"
    );
}

#[tokio::test(start_paused = true)]
async fn in_memory_lease_passes_the_suite_with_refused_calls() {
    let report = testkit::run(&Memory::new(CutMode::Refused)).await;
    assert_eq!(report.results().len(), Case::ALL.len());
    report.assert_passed();
}

#[tokio::test(start_paused = true)]
async fn in_memory_lease_passes_the_suite_with_black_holed_calls() {
    testkit::run(&Memory::new(CutMode::BlackHole))
        .await
        .assert_passed();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_acquire_on_a_multi_thread_runtime() {
    let backend = Memory::new(CutMode::Refused);
    for _ in 0..20 {
        testkit::run_only(&backend, &[Case::ConcurrentAcquireOneWins])
            .await
            .assert_passed();
    }
}

/// Broken on purpose: believes in its lease forever once acquired.
struct IgnoresExpiry {
    inner: InMemoryLease,
    ever_held: AtomicBool,
}

impl Lease for IgnoresExpiry {
    fn settings(&self) -> &LeaseSettings {
        self.inner.settings()
    }
    fn acquire(&self) -> BoxFuture<'_, Result<bool, LeaseError>> {
        Box::pin(async {
            let won = self.inner.acquire().await?;
            self.ever_held.fetch_or(won, Ordering::SeqCst);
            Ok(won)
        })
    }
    fn release(&self) -> BoxFuture<'_, Result<bool, LeaseError>> {
        Box::pin(async {
            self.ever_held.store(false, Ordering::SeqCst);
            self.inner.release().await
        })
    }
    fn check_alive(&self) -> bool {
        self.ever_held.load(Ordering::SeqCst)
    }
    fn status(&self) -> watch::Receiver<LeaseStatus> {
        self.inner.status()
    }
    fn fencing_token(&self) -> Option<FencingToken> {
        self.inner.fencing_token()
    }
}

struct BrokenExpiry(Memory);

impl ConformanceBackend for BrokenExpiry {
    fn template(&self) -> LeaseSettings {
        self.0.template()
    }
    fn create(&self, settings: LeaseSettings) -> Result<Arc<dyn Lease>, LeaseError> {
        Ok(Arc::new(IgnoresExpiry {
            inner: self.0.store.lease(settings),
            ever_held: AtomicBool::new(false),
        }))
    }
    fn cut_off(&self, owner: &str) {
        self.0.cut_off(owner);
    }
    fn reconnect(&self, owner: &str) {
        self.0.reconnect(owner);
    }
    fn set_latency(&self, owner: &str, latency: Duration) {
        self.0.set_latency(owner, latency);
    }
}

#[tokio::test(start_paused = true)]
async fn suite_rejects_a_lease_that_ignores_expiry() {
    let report = testkit::run(&BrokenExpiry(Memory::new(CutMode::Refused))).await;
    let failed = report.failed_cases();
    assert!(failed.contains(&Case::CutOffLostBeforeTakeover), "{report}");
    assert!(failed.contains(&Case::SlowRenewFails), "{report}");
}

/// Broken on purpose: every acquire wins, as if the store had no lock.
struct NoMutualExclusion {
    settings: LeaseSettings,
    held: AtomicBool,
    status: watch::Sender<LeaseStatus>,
}

impl Lease for NoMutualExclusion {
    fn settings(&self) -> &LeaseSettings {
        &self.settings
    }
    fn acquire(&self) -> BoxFuture<'_, Result<bool, LeaseError>> {
        self.held.store(true, Ordering::SeqCst);
        self.status
            .send_replace(LeaseStatus::Held(FencingToken::new(1)));
        Box::pin(async { Ok(true) })
    }
    fn release(&self) -> BoxFuture<'_, Result<bool, LeaseError>> {
        let was = self.held.swap(false, Ordering::SeqCst);
        self.status.send_replace(LeaseStatus::NotHeld);
        Box::pin(async move { Ok(was) })
    }
    fn check_alive(&self) -> bool {
        self.held.load(Ordering::SeqCst)
    }
    fn status(&self) -> watch::Receiver<LeaseStatus> {
        self.status.subscribe()
    }
    fn fencing_token(&self) -> Option<FencingToken> {
        self.check_alive().then(|| FencingToken::new(1))
    }
}

struct BrokenExclusion;

impl ConformanceBackend for BrokenExclusion {
    fn template(&self) -> LeaseSettings {
        LeaseSettings::builder("template", "template")
            .build()
            .expect("valid settings")
    }
    fn create(&self, settings: LeaseSettings) -> Result<Arc<dyn Lease>, LeaseError> {
        Ok(Arc::new(NoMutualExclusion {
            settings,
            held: AtomicBool::new(false),
            status: watch::channel(LeaseStatus::NotHeld).0,
        }))
    }
    fn cut_off(&self, _: &str) {}
    fn reconnect(&self, _: &str) {}
    fn set_latency(&self, _: &str, _: Duration) {}
}

#[tokio::test(start_paused = true)]
async fn suite_rejects_a_lease_without_mutual_exclusion() {
    let report = testkit::run(&BrokenExclusion).await;
    let failed = report.failed_cases();
    for case in [
        Case::SecondOwnerRefused,
        Case::ReleaseThenOtherAcquires,
        Case::CutOffLostBeforeTakeover,
        Case::ConcurrentAcquireOneWins,
    ] {
        assert!(failed.contains(&case), "{case:?} passed:\n{report}");
    }
    assert!(!failed.contains(&Case::InvalidSettingsRejected), "{report}");
}
