//! The heartbeat and local-validity logic, written once for every backend.
//!
//! A backend only knows how to talk to its store ([`LeaseBackend`]). Timing,
//! which is where lease implementations usually go wrong, lives here: the
//! validity deadline is measured from the *start* of the last successful
//! renew request, so the holder always stops believing before the store
//! stops granting (I2).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, sleep_until, timeout};

use futures::StreamExt;

use crate::{
    BoxFuture, BoxStream, FencingToken, Lease, LeaseError, LeaseSettings, LeaseStatus, LostReason,
    Observation, StoreEvent, Succession, Suspension,
};

/// What the store said to an acquire attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcquireOutcome {
    /// We hold the lease now, with this token (the same token if we already
    /// held it), and how our tenure followed the previous one.
    Acquired(FencingToken, Succession),
    /// Another owner holds an unexpired lease (named if the store says who).
    HeldByOther(Option<String>),
}

/// What the store said to a renew attempt that reached it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenewOutcome {
    /// The lease is ours for another ttl.
    Renewed,
    /// The store says the lease is no longer ours; retrying cannot help.
    Lost(LostReason),
}

/// Store I/O for one lease: the only part a backend writes.
///
/// Errors mean "no answer we can use" and are retried until the validity
/// deadline; a definite "not yours any more" is [`RenewOutcome::Lost`].
pub trait LeaseBackend: Send + Sync + 'static {
    /// Takes the lease if it is free, expired, or already ours.
    fn try_acquire<'a>(
        &'a self,
        settings: &'a LeaseSettings,
    ) -> BoxFuture<'a, Result<AcquireOutcome, LeaseError>>;

    /// Extends our tenure `token` by one ttl.
    fn renew<'a>(
        &'a self,
        settings: &'a LeaseSettings,
        token: FencingToken,
    ) -> BoxFuture<'a, Result<RenewOutcome, LeaseError>>;

    /// Frees the lease if the store still names us with `token`; `Ok(false)` otherwise.
    fn release<'a>(
        &'a self,
        settings: &'a LeaseSettings,
        token: FencingToken,
    ) -> BoxFuture<'a, Result<bool, LeaseError>>;

    /// Suspends the tenure `token` (see [`Lease::suspend`]); by default the
    /// backend cannot.
    fn suspend<'a>(
        &'a self,
        _settings: &'a LeaseSettings,
        _token: FencingToken,
    ) -> BoxFuture<'a, Result<Suspension, LeaseError>> {
        Box::pin(std::future::ready(Ok(Suspension::Unsupported)))
    }

    /// A watch of the record: its current state first, then every change,
    /// until the connection ends (the caller reconnects with backoff).
    /// `None` where the store cannot be watched.
    fn watch<'a>(
        &'a self,
        _settings: &'a LeaseSettings,
    ) -> Option<BoxStream<'a, Result<StoreEvent, LeaseError>>> {
        None
    }
}

/// A [`Lease`] built from a [`LeaseBackend`]: acquire, heartbeat, local
/// validity, loss detection and status publishing.
///
/// Dropping the handle stops renewing; the store then expires the lease after
/// its ttl. Call [`Lease::release`] first to hand it over sooner.
pub struct ManagedLease<B: LeaseBackend> {
    shared: Arc<Shared<B>>,
    /// Serialises acquire and release so they never interleave.
    op_lock: tokio::sync::Mutex<()>,
}

struct Shared<B> {
    backend: B,
    settings: LeaseSettings,
    /// Base instant for `deadline_nanos`.
    origin: Instant,
    /// Local validity deadline as nanoseconds after `origin`, plus one; 0 = not held.
    /// Atomic so that `check_alive` is a load and a clock read.
    deadline_nanos: AtomicU64,
    tenure: Mutex<Tenure>,
    status: watch::Sender<LeaseStatus>,
    observation: watch::Sender<Observation>,
    /// The watch task, once [`Lease::observe`] or an acquire started it.
    watcher: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Default)]
struct Tenure {
    token: Option<FencingToken>,
    /// How the tenure of `token` followed the previous one.
    succession: Option<Succession>,
    /// Bumped on every acquire, release and loss; a heartbeat task acts only
    /// while its generation is current.
    generation: u64,
    heartbeat: Option<JoinHandle<()>>,
}

impl<B: LeaseBackend> ManagedLease<B> {
    /// Wraps `backend`; nothing is sent to the store until [`Lease::acquire`].
    pub fn new(backend: B, settings: LeaseSettings) -> Self {
        let (status, _) = watch::channel(LeaseStatus::NotHeld);
        let (observation, _) = watch::channel(Observation::Unknown);
        Self {
            shared: Arc::new(Shared {
                backend,
                settings,
                origin: Instant::now(),
                deadline_nanos: AtomicU64::new(0),
                tenure: Mutex::new(Tenure::default()),
                status,
                observation,
                watcher: Mutex::new(None),
            }),
            op_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// The backend, for inspection in tests and metrics.
    pub fn backend(&self) -> &B {
        &self.shared.backend
    }

    /// The local validity deadline, `Some` while held.
    pub fn valid_until(&self) -> Option<Instant> {
        self.shared.deadline()
    }

    fn observe_inner(&self) {
        let mut watcher = self
            .shared
            .watcher
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if watcher.as_ref().is_none_or(JoinHandle::is_finished) {
            *watcher = Some(tokio::spawn(watch_store(Arc::clone(&self.shared))));
        }
    }

    async fn acquire_inner(&self) -> Result<bool, LeaseError> {
        // A holder watches too: a revocation is then seen at once.
        self.observe_inner();
        let _op = self.op_lock.lock().await;
        if self.check_alive() {
            return Ok(true);
        }
        let shared = &self.shared;
        let settings = &shared.settings;
        let start = Instant::now();
        let outcome = timeout(
            settings.operation_timeout(),
            shared.backend.try_acquire(settings),
        )
        .await
        .map_err(|_| timeout_error(settings, "acquire"))??;
        let (token, succession) = match outcome {
            AcquireOutcome::Acquired(token, succession) => (token, succession),
            AcquireOutcome::HeldByOther(by) => {
                tracing::debug!(lease = settings.lease_name(), owner = settings.owner_name(), holder = ?by, "lease held by another owner");
                return Ok(false);
            }
        };
        let deadline = start + settings.ttl() - settings.safety_margin();
        let mut tenure = shared.lock_tenure();
        if let Some(old) = tenure.heartbeat.take() {
            old.abort();
        }
        tenure.generation += 1;
        tenure.token = Some(token);
        tenure.succession = Some(succession);
        shared.set_deadline(Some(deadline));
        tenure.heartbeat = Some(tokio::spawn(heartbeat(
            Arc::clone(shared),
            tenure.generation,
            token,
        )));
        shared.status.send_replace(LeaseStatus::Held(token));
        tracing::info!(lease = settings.lease_name(), owner = settings.owner_name(), %token, "lease acquired");
        Ok(true)
    }

    async fn release_inner(&self) -> Result<bool, LeaseError> {
        let _op = self.op_lock.lock().await;
        let shared = &self.shared;
        let settings = &shared.settings;
        let token = {
            let mut tenure = shared.lock_tenure();
            if let Some(task) = tenure.heartbeat.take() {
                task.abort();
            }
            tenure.generation += 1;
            shared.set_deadline(None);
            tenure.token.take()
        };
        let Some(token) = token else {
            return Ok(false);
        };
        // Not ours from this instant on, whatever the store answers.
        shared.status.send_replace(LeaseStatus::NotHeld);
        let released = timeout(
            settings.operation_timeout(),
            shared.backend.release(settings, token),
        )
        .await
        .map_err(|_| timeout_error(settings, "release"))??;
        tracing::info!(lease = settings.lease_name(), owner = settings.owner_name(), %token, released, "lease released");
        Ok(released)
    }
}

impl<B> Shared<B> {
    fn lock_tenure(&self) -> MutexGuard<'_, Tenure> {
        // The critical sections never panic; recover the data if one ever did.
        self.tenure.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn deadline(&self) -> Option<Instant> {
        match self.deadline_nanos.load(Ordering::Acquire) {
            0 => None,
            n => Some(self.origin + std::time::Duration::from_nanos(n - 1)),
        }
    }

    fn set_deadline(&self, deadline: Option<Instant>) {
        let nanos = deadline.map_or(0, |d| {
            let since = d.saturating_duration_since(self.origin).as_nanos();
            u64::try_from(since).unwrap_or(u64::MAX - 1) + 1
        });
        self.deadline_nanos.store(nanos, Ordering::Release);
    }

    fn extend(&self, generation: u64, deadline: Instant) {
        let tenure = self.lock_tenure();
        if tenure.generation == generation {
            self.set_deadline(Some(deadline));
        }
    }

    fn lose(&self, generation: u64, reason: LostReason) {
        let mut tenure = self.lock_tenure();
        if tenure.generation != generation {
            return;
        }
        // Order matters: check_alive turns false before anyone hears of the loss.
        self.set_deadline(None);
        tenure.generation += 1;
        tenure.token = None;
        tenure.heartbeat = None;
        drop(tenure);
        self.status.send_replace(LeaseStatus::Lost(reason.clone()));
    }
}

impl<B: LeaseBackend> Lease for ManagedLease<B> {
    fn settings(&self) -> &LeaseSettings {
        &self.shared.settings
    }

    fn acquire(&self) -> BoxFuture<'_, Result<bool, LeaseError>> {
        Box::pin(self.acquire_inner())
    }

    fn release(&self) -> BoxFuture<'_, Result<bool, LeaseError>> {
        Box::pin(self.release_inner())
    }

    fn check_alive(&self) -> bool {
        self.shared
            .deadline()
            .is_some_and(|deadline| Instant::now() < deadline)
    }

    fn status(&self) -> watch::Receiver<LeaseStatus> {
        self.shared.status.subscribe()
    }

    fn fencing_token(&self) -> Option<FencingToken> {
        let token = self.shared.lock_tenure().token;
        token.filter(|_| self.check_alive())
    }

    fn valid_until(&self) -> Option<Instant> {
        self.shared.deadline()
    }

    fn suspend(&self, token: FencingToken) -> BoxFuture<'_, Result<Suspension, LeaseError>> {
        let shared = &self.shared;
        Box::pin(async move {
            timeout(
                shared.settings.operation_timeout(),
                shared.backend.suspend(&shared.settings, token),
            )
            .await
            .map_err(|_| timeout_error(&shared.settings, "suspend"))?
        })
    }

    fn succession(&self) -> Option<Succession> {
        let tenure = self.shared.lock_tenure();
        tenure
            .succession
            .filter(|_| tenure.token.is_some() && self.check_alive())
    }

    fn observe(&self) {
        self.observe_inner();
    }

    fn observed(&self) -> watch::Receiver<Observation> {
        self.shared.observation.subscribe()
    }
}

impl<B: LeaseBackend> Drop for ManagedLease<B> {
    fn drop(&mut self) {
        if let Some(task) = self.shared.lock_tenure().heartbeat.take() {
            task.abort();
        }
        let watcher = self
            .shared
            .watcher
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(task) = watcher {
            task.abort();
        }
    }
}

impl<B> Shared<B> {
    /// One state of the record from the watch: publish it, and end our
    /// tenure at once if the record no longer shows it.
    fn on_store_event(&self, event: &StoreEvent) {
        let tenure = self.lock_tenure();
        let generation = tenure.generation;
        let owner = self.settings.owner_name();
        let ours = |token: FencingToken| {
            event.tenure == Some(token)
                // The very write that began our tenure, which the watch may
                // report before the backend has recorded the tenure.
                || (event.revision == token.get() && event.holder.as_deref() == Some(owner))
        };
        // An event older than our tenure says nothing about it.
        let ended = tenure
            .token
            .filter(|token| event.revision >= token.get() && !ours(*token));
        drop(tenure);
        if let Some(token) = ended {
            let reason = match &event.holder {
                Some(holder) => LostReason::TakenOver {
                    by: Some(holder.clone()),
                },
                None => LostReason::Revoked,
            };
            let settings = &self.settings;
            tracing::warn!(lease = settings.lease_name(), owner = settings.owner_name(), %token, %reason, "lease lost (seen by the watch)");
            self.lose(generation, reason);
        }
        let observation = match &event.holder {
            Some(holder) => Observation::Held {
                holder: holder.clone(),
            },
            // Revoked or deleted behind its holder's back, whose term may
            // not be over: still held, as far as anyone may act on.
            None if event.expires_at.is_some_and(|at| at > Instant::now()) => {
                match &*self.observation.borrow() {
                    Observation::Held { holder } => Observation::Held {
                        holder: holder.clone(),
                    },
                    _ => Observation::Held {
                        holder: String::new(),
                    },
                }
            }
            None => Observation::Free,
        };
        self.observation.send_replace(observation);
    }
}

/// Keeps a watch on the record for the life of the handle, reconnecting
/// with jittered exponential backoff. A record that stops being renewed is
/// published `Free` once its ttl has passed on our clock.
async fn watch_store<B: LeaseBackend>(shared: Arc<Shared<B>>) {
    let settings = &shared.settings;
    let mut rng = crate::jitter::rng_for(settings.owner_name());
    let first_backoff =
        (settings.heartbeat_interval() / 4).max(std::time::Duration::from_millis(10));
    let max_backoff = settings.ttl() / 2;
    let mut backoff = first_backoff;
    loop {
        let Some(mut events) = shared.backend.watch(settings) else {
            return; // this store cannot be watched: acquire and renew still work
        };
        let mut expires_at: Option<Instant> = None;
        let mut connected = false;
        let opened = Instant::now();
        loop {
            let next = tokio::select! {
                item = events.next() => item,
                () = sleep_until(expires_at.unwrap_or(opened)), if expires_at.is_some() => {
                    expires_at = None;
                    shared.observation.send_replace(Observation::Free);
                    continue;
                }
                () = sleep_until(opened + settings.operation_timeout()), if !connected => {
                    Some(Err(timeout_error(settings, "watch")))
                }
            };
            match next {
                Some(Ok(event)) => {
                    connected = true;
                    backoff = first_backoff;
                    // A held record, or a revoked one whose term still runs.
                    expires_at = event
                        .expires_at
                        .filter(|at| event.holder.is_some() || *at > Instant::now());
                    shared.on_store_event(&event);
                }
                Some(Err(error)) => {
                    tracing::debug!(lease = settings.lease_name(), owner = settings.owner_name(), %error, "lease watch failed; reconnecting");
                    break;
                }
                None => break,
            }
        }
        drop(events);
        sleep(crate::jitter::stretch(backoff, 0.5, &mut rng)).await;
        backoff = (backoff * 2).min(max_backoff);
    }
}

fn timeout_error(settings: &LeaseSettings, operation: &'static str) -> LeaseError {
    LeaseError::Timeout {
        lease: settings.lease_name().to_owned(),
        operation,
        after: settings.operation_timeout(),
    }
}

/// Renews every heartbeat interval; on failure retries until the validity
/// deadline and then declares the lease lost. Never outlives its generation.
async fn heartbeat<B: LeaseBackend>(shared: Arc<Shared<B>>, generation: u64, token: FencingToken) {
    let settings = &shared.settings;
    let retry_every = settings.heartbeat_interval() / 2;
    loop {
        sleep(settings.heartbeat_interval()).await;
        let mut last_error: Option<String> = None;
        loop {
            let Some(deadline) = shared.deadline() else {
                return;
            };
            let start = Instant::now();
            if start >= deadline {
                last_error.get_or_insert_with(|| {
                    "validity deadline passed before a renew could start".into()
                });
                break;
            }
            let call = timeout(
                settings.operation_timeout(),
                shared.backend.renew(settings, token),
            );
            tokio::select! {
                // At a tie the deadline wins: when unsure, we do not hold the lease.
                biased;
                () = sleep_until(deadline) => {
                    last_error.get_or_insert_with(|| "renew still in flight at the validity deadline".into());
                    break;
                }
                answer = call => match answer {
                    Ok(Ok(RenewOutcome::Renewed)) => {
                        shared.extend(generation, start + settings.ttl() - settings.safety_margin());
                        last_error = None;
                    }
                    Ok(Ok(RenewOutcome::Lost(reason))) => {
                        tracing::warn!(lease = settings.lease_name(), owner = settings.owner_name(), %token, %reason, "lease lost");
                        shared.lose(generation, reason);
                        return;
                    }
                    Ok(Err(error)) => last_error = Some(error.to_string()),
                    Err(_) => last_error = Some(timeout_error(settings, "renew").to_string()),
                }
            }
            let Some(error) = &last_error else {
                break;
            };
            tracing::warn!(lease = settings.lease_name(), owner = settings.owner_name(), %token, %error, "lease renew failed, retrying until the validity deadline");
            tokio::select! {
                () = sleep(retry_every) => {}
                () = sleep_until(deadline) => {}
            }
        }
        if let Some(last_error) = last_error {
            let reason = LostReason::RenewFailed { last_error };
            tracing::warn!(lease = settings.lease_name(), owner = settings.owner_name(), %token, %reason, "lease lost");
            shared.lose(generation, reason);
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store that never answers: these tests feed watch events by hand.
    struct Silent;

    impl LeaseBackend for Silent {
        fn try_acquire<'a>(
            &'a self,
            _: &'a LeaseSettings,
        ) -> BoxFuture<'a, Result<AcquireOutcome, LeaseError>> {
            Box::pin(std::future::pending())
        }
        fn renew<'a>(
            &'a self,
            _: &'a LeaseSettings,
            _: FencingToken,
        ) -> BoxFuture<'a, Result<RenewOutcome, LeaseError>> {
            Box::pin(std::future::pending())
        }
        fn release<'a>(
            &'a self,
            _: &'a LeaseSettings,
            _: FencingToken,
        ) -> BoxFuture<'a, Result<bool, LeaseError>> {
            Box::pin(std::future::pending())
        }
    }

    fn holding(token: u64) -> ManagedLease<Silent> {
        let settings = LeaseSettings::builder("l", "me").build().expect("valid");
        let lease = ManagedLease::new(Silent, settings);
        lease.shared.lock_tenure().token = Some(FencingToken::new(token));
        lease
            .shared
            .set_deadline(Some(Instant::now() + std::time::Duration::from_secs(60)));
        lease
    }

    fn event(holder: Option<&str>, tenure: Option<u64>, revision: u64) -> StoreEvent {
        StoreEvent {
            holder: holder.map(str::to_owned),
            tenure: tenure.map(FencingToken::new),
            revision,
            expires_at: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_write_that_began_the_tenure_is_ours_even_before_the_backend_knows() {
        let lease = holding(10);
        lease.shared.on_store_event(&event(Some("me"), None, 10));
        assert!(lease.check_alive());
        // Older than the tenure: says nothing about it.
        lease.shared.on_store_event(&event(Some("other"), None, 9));
        assert!(lease.check_alive());
        lease
            .shared
            .on_store_event(&event(Some("me"), Some(10), 12));
        assert!(lease.check_alive());
    }

    #[tokio::test(start_paused = true)]
    async fn a_later_write_of_another_tenure_ends_ours() {
        // A restarted process under our owner name took it over.
        let lease = holding(10);
        lease.shared.on_store_event(&event(Some("me"), None, 11));
        assert!(!lease.check_alive());
        assert_eq!(
            *lease.status().borrow(),
            LeaseStatus::Lost(LostReason::TakenOver {
                by: Some("me".into())
            })
        );
        // Deleted or revoked.
        let lease = holding(10);
        lease.shared.on_store_event(&event(None, None, 10));
        assert!(!lease.check_alive());
        assert_eq!(*lease.observed().borrow(), Observation::Free);
    }
}
