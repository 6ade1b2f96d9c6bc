//! The store calls of one owner, with the injected faults applied.

use std::future::Future;

use lease_api::{
    AcquireOutcome, BoxFuture, FencingToken, LeaseBackend, LeaseError, LeaseSettings, RenewOutcome,
};

use crate::InMemoryLeaseStore;
use crate::store::Reach;

/// [`LeaseBackend`] over an [`InMemoryLeaseStore`]; see [`crate::InMemoryLease`].
#[derive(Clone)]
pub struct MemoryBackend {
    store: InMemoryLeaseStore,
}

impl MemoryBackend {
    /// A backend for handles on `store`.
    pub fn new(store: InMemoryLeaseStore) -> Self {
        Self { store }
    }

    /// The store this backend talks to.
    pub fn store(&self) -> &InMemoryLeaseStore {
        &self.store
    }

    /// Runs `op` as if it crossed a network: latency first, then reachability.
    async fn call<T>(
        &self,
        settings: &LeaseSettings,
        op: impl FnOnce() -> T,
    ) -> Result<T, LeaseError> {
        let owner = settings.owner_name();
        let latency = self.store.faults(owner).latency;
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        match self.store.faults(owner).reach {
            Reach::Connected => Ok(op()),
            Reach::Unreachable => Err(LeaseError::Unavailable {
                lease: settings.lease_name().to_owned(),
                reason: format!("owner `{owner}` is cut off from the store"),
            }),
            Reach::Hanging => std::future::pending().await,
        }
    }
}

impl LeaseBackend for MemoryBackend {
    fn try_acquire<'a>(
        &'a self,
        settings: &'a LeaseSettings,
    ) -> BoxFuture<'a, Result<AcquireOutcome, LeaseError>> {
        self.store
            .count_call(settings.owner_name(), |c| c.acquire += 1);
        boxed(self.call(settings, || {
            self.store
                .acquire(settings.lease_name(), settings.owner_name(), settings.ttl())
        }))
    }

    fn renew<'a>(
        &'a self,
        settings: &'a LeaseSettings,
        token: FencingToken,
    ) -> BoxFuture<'a, Result<RenewOutcome, LeaseError>> {
        self.store
            .count_call(settings.owner_name(), |c| c.renew += 1);
        boxed(self.call(settings, move || {
            self.store.renew(
                settings.lease_name(),
                settings.owner_name(),
                token,
                settings.ttl(),
            )
        }))
    }

    fn release<'a>(
        &'a self,
        settings: &'a LeaseSettings,
        token: FencingToken,
    ) -> BoxFuture<'a, Result<bool, LeaseError>> {
        self.store
            .count_call(settings.owner_name(), |c| c.release += 1);
        boxed(self.call(settings, move || {
            self.store
                .release(settings.lease_name(), settings.owner_name(), token)
        }))
    }
}

fn boxed<'a, T>(fut: impl Future<Output = T> + Send + 'a) -> BoxFuture<'a, T> {
    Box::pin(fut)
}
