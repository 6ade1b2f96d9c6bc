//! The store calls on a `coordination.k8s.io/v1` Lease, client-go's way.
//!
//! - Expiry of another holder is judged on this process's monotonic clock:
//!   `leaseDurationSeconds` after we last saw the record change. Remote
//!   timestamps are written, never compared with the local clock.
//! - A renew is one PUT with the cached resourceVersion; no GET before it.
//! - Taking over or releasing is a PUT with the observed resourceVersion; a
//!   409 means someone else moved first.
//! - A record that names no holder is free at once only if its holder
//!   released it: the release marks the record with the tenure it ends
//!   ([`RELEASED`]). One deleted, or cleared by someone else (an operator,
//!   a GitOps prune), cannot prove its holder stopped, since a holder cut
//!   off from the API server hears of neither: it is free only one ttl
//!   after the holder's last renew we saw ("The lease contract" in
//!   `docs/architecture.md`).
//! - The fencing token is the resourceVersion of the write that began the
//!   tenure (the create, or the takeover PUT), not `leaseTransitions`. The
//!   API server stamps every write of a resource with a resourceVersion
//!   above every earlier one (etcd's revision, one counter for the whole
//!   store; comparable by contract since Kubernetes 1.35, KEP-5504), and a
//!   deletion does not reset it. So a Lease deleted and re-created (an admin,
//!   a namespace clean-up, a GitOps prune) gives its next holder a token
//!   above every token any earlier holder had, even when that holder never
//!   saw the old object. `leaseTransitions` still counts holders for humans.
//! - A member suspends a tenure ([`lease_api::Lease::suspend`]) by marking
//!   the record with that tenure's token ([`SUSPENDED`]), a PUT on the
//!   resourceVersion it read, so it is ordered with every renew: the holder
//!   renews a marked record no more, and since the mark changes nothing a
//!   holder writes, nobody's expiry clock restarts for it. The record names
//!   its tenure's token ([`TENURE`], written by the holder's renewals; until
//!   the first, the token is the record's own resourceVersion).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease as LeaseObject, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use lease_api::{
    AcquireOutcome, BoxFuture, BoxStream, FencingToken, LeaseBackend, LeaseError, LeaseSettings,
    LostReason, RenewOutcome, StoreEvent, Succession, Suspension,
};
use tokio::time::Instant;

/// The annotation a release writes: the `leaseTransitions` of the tenure it
/// ends. A cleared record without it (or with an older tenure's) was not
/// released by its holder.
pub const RELEASED: &str = "lease-sharding.dev/released-tenure";

/// The annotation naming the current tenure's fencing token, written by its
/// holder's renewals, so that a member can name the tenure it suspends.
pub const TENURE: &str = "lease-sharding.dev/tenure";

/// The annotation a suspension writes: the token of the tenure suspended.
/// A record whose mark equals its current tenure's token renews no more.
pub const SUSPENDED: &str = "lease-sharding.dev/suspended-tenure";

/// The wall clock used to write `acquireTime` and `renewTime` (never to judge
/// expiry). Replaceable in tests to show that a skewed clock is harmless.
pub type WallClock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// [`LeaseBackend`] over the Kubernetes API; see [`crate::KubernetesLease`].
pub struct KubernetesBackend {
    api: Api<LeaseObject>,
    namespace: String,
    wall_clock: WallClock,
    observed: Mutex<Option<Observed>>,
    /// The last holder we saw renew, and when: how long a record deleted
    /// or cleared behind its back may still be acted on.
    last_held: Mutex<Option<LastHeld>>,
    /// The tenure we hold, by token: what the record must still show for
    /// it to be ours (a renew carries only the token).
    held: Mutex<Option<Tenure>>,
}

/// What identifies our tenure in the record: its object (uid) and its
/// holder count. The token alone cannot: every renew moves the resourceVersion.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Tenure {
    token: FencingToken,
    uid: Option<String>,
    transitions: u64,
}

/// A holder as last seen: its name, when its record last changed on our
/// clock (its last renew we saw) and the ttl it wrote.
#[derive(Debug, Clone)]
struct LastHeld {
    holder: String,
    changed_at: Instant,
    ttl: Option<Duration>,
}

/// The record as last seen, and when it last changed on our clock.
#[derive(Clone)]
struct Observed {
    lease: LeaseObject,
    changed_at: Instant,
}

fn holder(lease: &LeaseObject) -> Option<&str> {
    lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.as_deref())
        .filter(|h| !h.is_empty())
}

/// Whether `lease` names no holder because its last holder released it.
fn released(lease: &LeaseObject) -> bool {
    let marked = lease
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(RELEASED));
    marked.is_some_and(|t| *t == transitions(lease).to_string())
}

fn annotation<'a>(lease: &'a LeaseObject, key: &str) -> Option<&'a str> {
    lease
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

/// The token of the tenure `lease` shows: its [`TENURE`] mark, or before the
/// holder's first renew wrote one, the resourceVersion of the write that
/// began it (the record's own). `None` if it names no holder.
fn current_tenure(lease: &LeaseObject) -> Option<u64> {
    holder(lease)?;
    tenure_token(lease)
}

fn tenure_token(lease: &LeaseObject) -> Option<u64> {
    match annotation(lease, TENURE) {
        Some(mark) => mark.parse().ok(),
        None => Some(revision(lease)),
    }
}

/// Whether the tenure `lease` shows (or last showed, if cleared by someone
/// else) was suspended.
fn suspended(lease: &LeaseObject) -> bool {
    let Some(mark) = annotation(lease, SUSPENDED) else {
        return false;
    };
    mark.parse::<u64>()
        .ok()
        .is_some_and(|m| Some(m) == tenure_token(lease))
}

/// Whether `after` differs from `before` only by a suspension: the same
/// object and spec (no holder wrote), and a suspension mark it lacked.
fn is_suspension(before: &LeaseObject, after: &LeaseObject) -> bool {
    before.metadata.uid == after.metadata.uid
        && before.spec == after.spec
        && annotation(after, SUSPENDED).is_some()
        && annotation(before, SUSPENDED) != annotation(after, SUSPENDED)
}

fn set_annotation(lease: &mut LeaseObject, key: &str, value: String) {
    lease
        .metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(key.to_owned(), value);
}

fn transitions(lease: &LeaseObject) -> u64 {
    let t = lease
        .spec
        .as_ref()
        .and_then(|s| s.lease_transitions)
        .unwrap_or(0);
    u64::try_from(t).unwrap_or(0)
}

fn resource_version(lease: &LeaseObject) -> Option<&str> {
    lease.metadata.resource_version.as_deref()
}

/// The token of a tenure begun by the write that returned `lease`.
fn token_of(settings: &LeaseSettings, lease: &LeaseObject) -> Result<FencingToken, LeaseError> {
    let rv = resource_version(lease).unwrap_or("");
    // A positive decimal without leading zeros, as KEP-5504 specifies.
    let parsed = rv
        .parse::<u64>()
        .ok()
        .filter(|n| *n > 0 && !rv.starts_with('0') && !rv.starts_with('+'));
    match parsed {
        Some(n) => Ok(FencingToken::new(n)),
        None => Err(LeaseError::Backend {
            lease: settings.lease_name().to_owned(),
            source: format!(
                "resourceVersion {rv:?} of the written Lease is not a positive integer; the fencing token needs comparable resource versions"
            )
            .into(),
        }),
    }
}

fn revision(lease: &LeaseObject) -> u64 {
    resource_version(lease)
        .and_then(|rv| rv.parse().ok())
        .unwrap_or(0)
}

/// The `leaseDurationSeconds` the record carries, if a valid one.
fn written_ttl(lease: &LeaseObject) -> Option<Duration> {
    lease
        .spec
        .as_ref()
        .and_then(|s| s.lease_duration_seconds)
        .and_then(|s| u64::try_from(s).ok())
        .map(Duration::from_secs)
}

fn their_ttl(lease: &LeaseObject, settings: &LeaseSettings) -> Duration {
    written_ttl(lease).unwrap_or(settings.ttl())
}

/// How long a watch request stays open before the server ends it (the
/// backend then resumes from the last resourceVersion it saw).
const WATCH_TIMEOUT_SECS: u32 = 290;

fn uid(lease: &LeaseObject) -> Option<String> {
    lease.metadata.uid.clone()
}

fn duration_secs(settings: &LeaseSettings) -> i32 {
    // Whole seconds, rounded up: the store never believes in less than our ttl.
    let secs = settings.ttl().as_secs() + u64::from(settings.ttl().subsec_nanos() > 0);
    i32::try_from(secs).unwrap_or(i32::MAX)
}

fn is_status(error: &kube::Error, check: fn(&kube::core::Status) -> bool) -> bool {
    matches!(error, kube::Error::Api(status) if check(status))
}

fn lease_error(settings: &LeaseSettings, error: kube::Error) -> LeaseError {
    let lease = settings.lease_name().to_owned();
    match error {
        kube::Error::Api(status) if status.code < 500 => LeaseError::Backend {
            lease,
            source: Box::new(kube::Error::Api(status)),
        },
        other => LeaseError::Unavailable {
            lease,
            reason: other.to_string(),
        },
    }
}

impl KubernetesBackend {
    pub(crate) fn new(client: kube::Client, namespace: String, wall_clock: WallClock) -> Self {
        Self {
            api: Api::namespaced(client, &namespace),
            namespace,
            wall_clock,
            observed: Mutex::new(None),
            last_held: Mutex::new(None),
            held: Mutex::new(None),
        }
    }

    fn last_held(&self) -> MutexGuard<'_, Option<LastHeld>> {
        self.last_held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Until when a record that names no holder (`current`; `None`: there
    /// is none) is not free, and whose it may still be: the last holder
    /// we saw, one ttl after its last renew we saw, unless it released it.
    /// A cleared record we never saw held counts from when we first saw it.
    fn fenced_until(
        &self,
        settings: &LeaseSettings,
        current: Option<&LeaseObject>,
    ) -> Option<(String, Instant)> {
        if let Some(lease) = current {
            if holder(lease).is_some() || released(lease) {
                return None;
            }
        }
        let last = self.last_held().clone();
        let until = match (last, current) {
            // Ours: we ended that tenure ourselves (lost, or a restarted
            // pod's predecessor, which is gone).
            (Some(last), _) if last.holder == settings.owner_name() => return None,
            (Some(last), _) => {
                let ttl = last.ttl.unwrap_or(settings.ttl());
                (last.holder, last.changed_at + ttl)
            }
            (None, Some(lease)) => {
                let seen = self.observe(lease).changed_at;
                let ttl = their_ttl(lease, settings).max(settings.ttl());
                (String::new(), seen + ttl)
            }
            // Never written, as far as we know: a cold start.
            (None, None) => return None,
        };
        (Instant::now() < until.1).then_some(until)
    }

    fn held(&self) -> MutexGuard<'_, Option<Tenure>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the tenure begun by the write that returned `lease`.
    fn begin_tenure(
        &self,
        settings: &LeaseSettings,
        lease: &LeaseObject,
        succession: Succession,
    ) -> Result<AcquireOutcome, LeaseError> {
        let token = token_of(settings, lease)?;
        *self.held() = Some(Tenure {
            token,
            uid: uid(lease),
            transitions: transitions(lease),
        });
        Ok(AcquireOutcome::Acquired(token, succession))
    }

    /// How a tenure taken now follows the last one, for a record with no
    /// holder (`current`; `None`: deleted) that [`Self::fenced_until`] calls
    /// free. Its term surely ran out only if we saw it held, or saw it
    /// cleared, a ttl ago; a release may leave promises out, and so may our
    /// own earlier tenure. A deleted record may have carried a suspension
    /// we never saw, whose suspenders may still act on it: unknown.
    fn succession_after(
        &self,
        settings: &LeaseSettings,
        current: Option<&LeaseObject>,
    ) -> Succession {
        let Some(current) = current else {
            return Succession::Unknown;
        };
        if released(current) {
            return Succession::Unknown;
        }
        match self.last_held().as_ref() {
            Some(last) if last.holder == settings.owner_name() => Succession::Unknown,
            _ if suspended(current) => Succession::AfterSuspendedTerm,
            _ => Succession::AfterTermEnded,
        }
    }

    /// Whether `lease` still shows the tenure `token`.
    fn shows_tenure(
        &self,
        settings: &LeaseSettings,
        lease: &LeaseObject,
        token: FencingToken,
    ) -> bool {
        let held = self.held();
        let Some(tenure) = held.as_ref().filter(|t| t.token == token) else {
            return false;
        };
        holder(lease) == Some(settings.owner_name())
            && uid(lease) == tenure.uid
            && transitions(lease) == tenure.transitions
    }

    /// The namespace of the lease.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    fn observed(&self) -> MutexGuard<'_, Option<Observed>> {
        self.observed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Remembers what the server showed; the clock restarts only on a
    /// change. An answer older than what we saw (a watch event overtaken by
    /// a PUT's response) changes nothing.
    fn observe(&self, lease: &LeaseObject) -> Observed {
        let mut observed = self.observed();
        let unchanged = observed.as_ref().is_some_and(|o| {
            resource_version(&o.lease) == resource_version(lease)
                || (o.lease.metadata.uid == lease.metadata.uid
                    && revision(&o.lease) > revision(lease))
        });
        // A suspension is no renewal: the term runs from the holder's last.
        let kept = observed
            .as_ref()
            .filter(|o| is_suspension(&o.lease, lease))
            .map(|o| o.changed_at);
        if let (false, Some(changed_at)) = (unchanged, kept) {
            *observed = Some(Observed {
                lease: lease.clone(),
                changed_at,
            });
        } else if !unchanged {
            let now = Instant::now();
            *observed = Some(Observed {
                lease: lease.clone(),
                changed_at: now,
            });
            if let Some(h) = holder(lease) {
                *self.last_held() = Some(LastHeld {
                    holder: h.to_owned(),
                    changed_at: now,
                    ttl: written_ttl(lease),
                });
            }
        }
        observed.clone().unwrap_or_else(|| Observed {
            lease: lease.clone(),
            changed_at: Instant::now(),
        })
    }

    fn now(&self) -> MicroTime {
        MicroTime((self.wall_clock)())
    }

    async fn create(
        &self,
        settings: &LeaseSettings,
        succession: Succession,
    ) -> Result<AcquireOutcome, LeaseError> {
        let now = self.now();
        let lease = LeaseObject {
            metadata: ObjectMeta {
                name: Some(settings.lease_name().to_owned()),
                namespace: Some(self.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(settings.owner_name().to_owned()),
                lease_duration_seconds: Some(duration_secs(settings)),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        match self.api.create(&PostParams::default(), &lease).await {
            Ok(created) => {
                self.observe(&created);
                self.begin_tenure(settings, &created, succession)
            }
            // Another owner created it first: not an error, just not ours.
            Err(e) if is_status(&e, kube::core::Status::is_already_exists) => {
                Ok(AcquireOutcome::HeldByOther(None))
            }
            Err(e) => Err(lease_error(settings, e)),
        }
    }

    /// PUT `lease` as changed by `edit`; `Ok(None)` on a 409.
    async fn replace(
        &self,
        settings: &LeaseSettings,
        mut lease: LeaseObject,
        edit: impl FnOnce(&mut LeaseSpec),
    ) -> Result<Option<LeaseObject>, kube::Error> {
        edit(lease.spec.get_or_insert_with(LeaseSpec::default));
        match self
            .api
            .replace(settings.lease_name(), &PostParams::default(), &lease)
            .await
        {
            Ok(written) => {
                self.observe(&written);
                Ok(Some(written))
            }
            Err(e) if is_status(&e, kube::core::Status::is_conflict) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn try_acquire_inner(
        &self,
        settings: &LeaseSettings,
    ) -> Result<AcquireOutcome, LeaseError> {
        let current = match self.api.get_opt(settings.lease_name()).await {
            Ok(Some(lease)) => lease,
            Ok(None) => {
                // Deleted behind its holder's back, which may not know yet.
                if let Some((h, _)) = self.fenced_until(settings, None) {
                    return Ok(AcquireOutcome::HeldByOther(
                        Some(h).filter(|h| !h.is_empty()),
                    ));
                }
                let succession = self.succession_after(settings, None);
                return self.create(settings, succession).await;
            }
            Err(e) => return Err(lease_error(settings, e)),
        };
        let observed = self.observe(&current);
        let owner = settings.owner_name();
        match holder(&current) {
            // Only a handle that does not hold the lease acquires; our owner
            // name on a live record is a predecessor (a restarted pod), whose
            // tenure we end with a new token rather than continue.
            Some(h) if h == owner => self.take_over(settings, current, Succession::Unknown).await,
            Some(h) => {
                // Our clock, since we saw the record change: never theirs.
                if Instant::now() < observed.changed_at + their_ttl(&current, settings) {
                    return Ok(AcquireOutcome::HeldByOther(Some(h.to_owned())));
                }
                // Silent for its whole ttl on our clock: its term ran out.
                let succession = if suspended(&current) {
                    Succession::AfterSuspendedTerm
                } else {
                    Succession::AfterTermEnded
                };
                self.take_over(settings, current, succession).await
            }
            None => match self.fenced_until(settings, Some(&current)) {
                // Cleared, not released: its holder may not know yet.
                Some((h, _)) => Ok(AcquireOutcome::HeldByOther(
                    Some(h).filter(|h| !h.is_empty()),
                )),
                None => {
                    let succession = self.succession_after(settings, Some(&current));
                    self.take_over(settings, current, succession).await
                }
            },
        }
    }

    async fn take_over(
        &self,
        settings: &LeaseSettings,
        current: LeaseObject,
        succession: Succession,
    ) -> Result<AcquireOutcome, LeaseError> {
        let next_transitions = i32::try_from(transitions(&current) + 1).unwrap_or(i32::MAX);
        let now = self.now();
        let owner = settings.owner_name().to_owned();
        let ttl = duration_secs(settings);
        let mut current = current;
        // The marks belong to the tenure that ends here; ours is named by
        // this write's resourceVersion until our first renew.
        if let Some(a) = current.metadata.annotations.as_mut() {
            a.remove(TENURE);
            a.remove(SUSPENDED);
        }
        let written = self
            .replace(settings, current, |spec| {
                spec.holder_identity = Some(owner);
                spec.lease_duration_seconds = Some(ttl);
                spec.acquire_time = Some(now.clone());
                spec.renew_time = Some(now);
                spec.lease_transitions = Some(next_transitions);
            })
            .await
            .map_err(|e| lease_error(settings, e))?;
        match written {
            Some(lease) => self.begin_tenure(settings, &lease, succession),
            // 409: another contender won the race.
            None => Ok(AcquireOutcome::HeldByOther(None)),
        }
    }

    /// Reads the record after a 409 and says whether it is still ours.
    async fn still_ours(
        &self,
        settings: &LeaseSettings,
        token: FencingToken,
    ) -> Result<Result<LeaseObject, LostReason>, LeaseError> {
        match self.api.get_opt(settings.lease_name()).await {
            Ok(None) => Ok(Err(LostReason::Revoked)),
            Ok(Some(lease)) => {
                self.observe(&lease);
                if self.shows_tenure(settings, &lease, token) {
                    return Ok(Ok(lease));
                }
                match holder(&lease) {
                    Some(h) => Ok(Err(LostReason::TakenOver {
                        by: Some(h.to_owned()),
                    })),
                    None => Ok(Err(LostReason::Revoked)),
                }
            }
            Err(e) => Err(lease_error(settings, e)),
        }
    }

    async fn renew_inner(
        &self,
        settings: &LeaseSettings,
        token: FencingToken,
    ) -> Result<RenewOutcome, LeaseError> {
        let cached = self.observed().as_ref().map(|o| o.lease.clone());
        let mut lease = match cached {
            Some(lease) if self.shows_tenure(settings, &lease, token) => lease,
            _ => match self.still_ours(settings, token).await? {
                Ok(lease) => lease,
                Err(reason) => return Ok(RenewOutcome::Lost(reason)),
            },
        };
        // One PUT in steady state; after a 409, one read and one more try.
        for _ in 0..2 {
            if suspended(&lease) {
                return Ok(RenewOutcome::Lost(LostReason::Suspended));
            }
            // Names our tenure for members that may suspend it.
            set_annotation(&mut lease, TENURE, token.get().to_string());
            let now = self.now();
            match self
                .replace(settings, lease, |spec| spec.renew_time = Some(now))
                .await
            {
                Ok(Some(_)) => return Ok(RenewOutcome::Renewed),
                Ok(None) => match self.still_ours(settings, token).await? {
                    Ok(fresh) => lease = fresh,
                    Err(reason) => return Ok(RenewOutcome::Lost(reason)),
                },
                Err(e) if is_status(&e, kube::core::Status::is_not_found) => {
                    return Ok(RenewOutcome::Lost(LostReason::Revoked));
                }
                Err(e) => return Err(lease_error(settings, e)),
            }
        }
        Err(LeaseError::Unavailable {
            lease: settings.lease_name().to_owned(),
            reason: "renew kept conflicting".into(),
        })
    }

    async fn release_inner(
        &self,
        settings: &LeaseSettings,
        token: FencingToken,
    ) -> Result<bool, LeaseError> {
        let cached = self.observed().as_ref().map(|o| o.lease.clone());
        let mut lease = match cached {
            Some(lease) if self.shows_tenure(settings, &lease, token) => lease,
            _ => match self.still_ours(settings, token).await? {
                Ok(lease) => lease,
                Err(_) => return Ok(false),
            },
        };
        for _ in 0..3 {
            // Marked as this tenure's release: a contender takes it at once.
            let tenure = transitions(&lease).to_string();
            lease
                .metadata
                .annotations
                .get_or_insert_with(Default::default)
                .insert(RELEASED.to_owned(), tenure);
            let cleared = self
                .replace(settings, lease, |spec| {
                    spec.holder_identity = None;
                    // As client-go does: a contender need not wait a full ttl.
                    spec.lease_duration_seconds = Some(1);
                })
                .await;
            match cleared {
                Ok(Some(_)) => return Ok(true),
                Ok(None) => match self.still_ours(settings, token).await? {
                    Ok(fresh) => lease = fresh,
                    Err(_) => return Ok(false),
                },
                Err(e) if is_status(&e, kube::core::Status::is_not_found) => return Ok(false),
                Err(e) => return Err(lease_error(settings, e)),
            }
        }
        Ok(false)
    }
}

impl KubernetesBackend {
    /// Marks tenure `token` suspended if the record still shows it: a PUT
    /// on the resourceVersion read, so a renew and the mark never cross.
    async fn suspend_inner(
        &self,
        settings: &LeaseSettings,
        token: FencingToken,
    ) -> Result<Suspension, LeaseError> {
        for _ in 0..3 {
            let mut lease = match self.api.get_opt(settings.lease_name()).await {
                Ok(Some(lease)) => lease,
                Ok(None) => return Ok(Suspension::Superseded),
                Err(e) => return Err(lease_error(settings, e)),
            };
            self.observe(&lease);
            if current_tenure(&lease) != Some(token.get()) {
                return Ok(Suspension::Superseded);
            }
            if suspended(&lease) {
                return Ok(Suspension::Suspended);
            }
            set_annotation(&mut lease, TENURE, token.get().to_string());
            set_annotation(&mut lease, SUSPENDED, token.get().to_string());
            match self.replace(settings, lease, |_| {}).await {
                Ok(Some(_)) => {
                    tracing::info!(lease = settings.lease_name(), %token, "tenure suspended in the Lease");
                    return Ok(Suspension::Suspended);
                }
                // Moved since we read it (a renew, say): look again.
                Ok(None) => {}
                Err(e) if is_status(&e, kube::core::Status::is_not_found) => {
                    return Ok(Suspension::Superseded);
                }
                Err(e) => return Err(lease_error(settings, e)),
            }
        }
        Err(LeaseError::Unavailable {
            lease: settings.lease_name().to_owned(),
            reason: "suspend kept conflicting".into(),
        })
    }

    /// What a watch reports for `lease` (`None`: absent or deleted at `rev`).
    fn store_event(
        &self,
        settings: &LeaseSettings,
        lease: Option<&LeaseObject>,
        rev: u64,
    ) -> StoreEvent {
        let Some(lease) = lease else {
            return StoreEvent {
                holder: None,
                tenure: None,
                revision: rev,
                expires_at: self.fenced_until(settings, None).map(|(_, at)| at),
            };
        };
        let observed = self.observe(lease);
        let held = self.held().as_ref().map(|t| t.token);
        let tenure = held.filter(|token| self.shows_tenure(settings, lease, *token));
        let expires_at = match holder(lease) {
            Some(_) => Some(observed.changed_at + their_ttl(lease, settings)),
            None => self.fenced_until(settings, Some(lease)).map(|(_, at)| at),
        };
        StoreEvent {
            holder: holder(lease).map(str::to_owned),
            tenure,
            revision: revision(lease),
            expires_at,
        }
    }

    /// A list of the one Lease (its state, and a resourceVersion to watch
    /// from), then a watch of it from there, reopened after each server
    /// timeout from the last resourceVersion seen. An error ends the stream
    /// (a 410 Gone included): the caller reconnects, which lists again.
    fn watch_inner<'a>(
        &'a self,
        settings: &'a LeaseSettings,
    ) -> BoxStream<'a, Result<StoreEvent, LeaseError>> {
        let fields = format!("metadata.name={}", settings.lease_name());
        futures::stream::unfold(WatchState::Start, move |mut state| {
            let fields = fields.clone();
            async move {
                loop {
                    state = match state {
                        WatchState::Done => return None,
                        WatchState::Start => {
                            let listed =
                                self.api.list(&ListParams::default().fields(&fields)).await;
                            let list = match listed {
                                Ok(list) => list,
                                Err(e) => {
                                    return Some((Err(lease_error(settings, e)), WatchState::Done));
                                }
                            };
                            let rv = list.metadata.resource_version.clone().unwrap_or_default();
                            let event = self.store_event(
                                settings,
                                list.items.first(),
                                rv.parse().unwrap_or(0),
                            );
                            return Some((Ok(event), WatchState::Reopen { rv }));
                        }
                        WatchState::Reopen { rv } => {
                            let params = WatchParams::default()
                                .fields(&fields)
                                .timeout(WATCH_TIMEOUT_SECS);
                            match self.api.watch(&params, &rv).await {
                                Ok(events) => WatchState::Watching {
                                    rv,
                                    events: events.boxed(),
                                },
                                Err(e) => {
                                    return Some((Err(lease_error(settings, e)), WatchState::Done));
                                }
                            }
                        }
                        WatchState::Watching { rv, mut events } => match events.next().await {
                            // The server's timeout: resume where we were.
                            None => WatchState::Reopen { rv },
                            Some(Err(e)) => {
                                return Some((Err(lease_error(settings, e)), WatchState::Done));
                            }
                            Some(Ok(WatchEvent::Added(lease) | WatchEvent::Modified(lease))) => {
                                let rv = resource_version(&lease).unwrap_or(&rv).to_owned();
                                let event = self.store_event(settings, Some(&lease), 0);
                                return Some((Ok(event), WatchState::Watching { rv, events }));
                            }
                            Some(Ok(WatchEvent::Deleted(lease))) => {
                                let rv = resource_version(&lease).unwrap_or(&rv).to_owned();
                                let event = self.store_event(settings, None, revision(&lease));
                                return Some((Ok(event), WatchState::Watching { rv, events }));
                            }
                            Some(Ok(WatchEvent::Bookmark(bookmark))) => WatchState::Watching {
                                rv: bookmark.metadata.resource_version,
                                events,
                            },
                            Some(Ok(WatchEvent::Error(status))) => {
                                let error = LeaseError::Unavailable {
                                    lease: settings.lease_name().to_owned(),
                                    reason: format!(
                                        "watch ended by the server: {} {}",
                                        status.code, status.message
                                    ),
                                };
                                return Some((Err(error), WatchState::Done));
                            }
                        },
                    };
                }
            }
        })
        .boxed()
    }
}

/// Where a watch of one Lease is.
enum WatchState<'a> {
    Start,
    Reopen {
        rv: String,
    },
    Watching {
        rv: String,
        events: BoxStream<'a, Result<WatchEvent<LeaseObject>, kube::Error>>,
    },
    Done,
}

impl LeaseBackend for KubernetesBackend {
    fn try_acquire<'a>(
        &'a self,
        settings: &'a LeaseSettings,
    ) -> BoxFuture<'a, Result<AcquireOutcome, LeaseError>> {
        Box::pin(self.try_acquire_inner(settings))
    }

    fn renew<'a>(
        &'a self,
        settings: &'a LeaseSettings,
        token: FencingToken,
    ) -> BoxFuture<'a, Result<RenewOutcome, LeaseError>> {
        Box::pin(self.renew_inner(settings, token))
    }

    fn release<'a>(
        &'a self,
        settings: &'a LeaseSettings,
        token: FencingToken,
    ) -> BoxFuture<'a, Result<bool, LeaseError>> {
        Box::pin(self.release_inner(settings, token))
    }

    fn suspend<'a>(
        &'a self,
        settings: &'a LeaseSettings,
        token: FencingToken,
    ) -> BoxFuture<'a, Result<Suspension, LeaseError>> {
        Box::pin(self.suspend_inner(settings, token))
    }

    fn watch<'a>(
        &'a self,
        settings: &'a LeaseSettings,
    ) -> Option<BoxStream<'a, Result<StoreEvent, LeaseError>>> {
        Some(self.watch_inner(settings))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(rv: &str) -> LeaseObject {
        LeaseObject {
            metadata: ObjectMeta {
                resource_version: Some(rv.to_owned()),
                ..ObjectMeta::default()
            },
            spec: None,
        }
    }

    #[test]
    fn the_token_is_the_resource_version_and_a_bad_one_is_a_typed_error() {
        let settings = LeaseSettings::builder("l", "me").build().expect("valid");
        assert_eq!(
            token_of(&settings, &written("4711")).ok(),
            Some(FencingToken::new(4711))
        );
        for bad in [
            "",
            "0",
            "007",
            "+5",
            "abc",
            "12a",
            "99999999999999999999999",
        ] {
            match token_of(&settings, &written(bad)) {
                Err(LeaseError::Backend { lease, source }) => {
                    assert_eq!(lease, "l");
                    assert!(source.to_string().contains(&format!("{bad:?}")), "{source}");
                }
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
    }
}
