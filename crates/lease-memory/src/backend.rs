//! The store calls of one owner, with the injected faults applied.

use std::future::Future;

use lease_api::{
    AcquireOutcome, BoxFuture, BoxStream, FencingToken, LeaseBackend, LeaseError, LeaseSettings,
    RenewOutcome, StoreEvent, Suspension,
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

    fn suspend<'a>(
        &'a self,
        settings: &'a LeaseSettings,
        token: FencingToken,
    ) -> BoxFuture<'a, Result<Suspension, LeaseError>> {
        self.store
            .count_call(settings.owner_name(), |c| c.suspend += 1);
        boxed(self.call(settings, move || {
            self.store.suspend(settings.lease_name(), token)
        }))
    }

    /// Every change of the record, pushed by the store; an owner cut off
    /// from the store (or black-holed) gets an error instead and reconnects.
    fn watch<'a>(
        &'a self,
        settings: &'a LeaseSettings,
    ) -> Option<BoxStream<'a, Result<StoreEvent, LeaseError>>> {
        self.store
            .count_call(settings.owner_name(), |c| c.watch += 1);
        let rx = self.store.subscribe(settings.lease_name());
        let events = futures::stream::unfold((rx, true), move |(mut rx, first)| async move {
            if !first && rx.changed().await.is_err() {
                return None;
            }
            let view = rx.borrow_and_update().clone();
            let owner = settings.owner_name();
            let faults = self.store.faults(owner);
            if !faults.latency.is_zero() {
                tokio::time::sleep(faults.latency).await;
            }
            if faults.reach != Reach::Connected {
                let error = LeaseError::Unavailable {
                    lease: settings.lease_name().to_owned(),
                    reason: format!("owner `{owner}` is cut off from the store"),
                };
                return Some((Err(error), (rx, false)));
            }
            let event = match view {
                Some(view) => StoreEvent {
                    tenure: view.holder.as_ref().map(|_| FencingToken::new(view.token)),
                    holder: view.holder,
                    revision: view.token,
                    expires_at: Some(view.expires_at),
                },
                None => StoreEvent {
                    holder: None,
                    tenure: None,
                    revision: 0,
                    expires_at: None,
                },
            };
            Some((Ok(event), (rx, false)))
        });
        Some(Box::pin(events))
    }
}

fn boxed<'a, T>(fut: impl Future<Output = T> + Send + 'a) -> BoxFuture<'a, T> {
    Box::pin(fut)
}
