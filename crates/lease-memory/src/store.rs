//! The shared store: lease records, injected faults and the grant history.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use lease_api::{
    AcquireOutcome, FencingToken, LeaseSettings, LostReason, RenewOutcome, Succession, Suspension,
};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::{InMemoryLease, MemoryBackend};

/// The lease store of one process; clones share the same state.
#[derive(Clone, Default)]
pub struct InMemoryLeaseStore {
    state: Arc<Mutex<StoreState>>,
}

/// One owner's tenure of one lease, as the store saw it: the ground truth the
/// invariant checker compares coordinators against (I2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The lease name.
    pub lease: String,
    /// Who held it.
    pub owner: String,
    /// The fencing token of this tenure.
    pub token: FencingToken,
    /// When the store granted it.
    pub from: Instant,
    /// When it ended (a release), or when its term ends or ended: the
    /// instant the store would give the lease to another owner. A
    /// revocation stops renewals but does not shorten the term.
    pub until: Instant,
}

#[derive(Default)]
struct StoreState {
    records: HashMap<String, Record>,
    faults: HashMap<String, Faults>,
    history: Vec<Grant>,
    calls: HashMap<String, CallCounts>,
    /// Every change of a record is pushed here, for watching handles.
    views: HashMap<String, watch::Sender<Option<RecordView>>>,
}

/// A record as watchers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RecordView {
    pub(crate) holder: Option<String>,
    pub(crate) token: u64,
    pub(crate) expires_at: Instant,
}

impl StoreState {
    /// Pushes the current state of `lease` to its watchers.
    fn publish(&mut self, lease: &str) {
        let view = self.records.get(lease).map(|r| RecordView {
            holder: r.holder.clone(),
            token: r.token,
            expires_at: r.expires_at,
        });
        self.views
            .entry(lease.to_owned())
            .or_insert_with(|| watch::channel(None).0)
            .send_replace(view);
    }
}

/// How many store calls one owner made (whether or not they got through).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallCounts {
    /// Acquire attempts.
    pub acquire: u64,
    /// Renew attempts.
    pub renew: u64,
    /// Release attempts.
    pub release: u64,
    /// Watches opened (each, not each event).
    pub watch: u64,
    /// Suspend attempts.
    pub suspend: u64,
}

struct Record {
    holder: Option<String>,
    token: u64,
    expires_at: Instant,
    /// Index of the current tenure in `history`.
    grant: usize,
    /// The last tenure ended by its holder's release, before its term.
    released: bool,
    /// The current tenure was suspended by a member: no more renewals.
    suspended: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum Reach {
    #[default]
    Connected,
    /// Calls fail at once, like a refused connection.
    Unreachable,
    /// Calls never get an answer, like a black-holed network.
    Hanging,
}

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Faults {
    pub(crate) reach: Reach,
    pub(crate) latency: Duration,
}

impl InMemoryLeaseStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// A handle for `settings.owner_name()` on this store.
    pub fn lease(&self, settings: LeaseSettings) -> InMemoryLease {
        InMemoryLease::new(MemoryBackend::new(self.clone()), settings)
    }

    /// Calls by `owner` fail at once (connection refused) until [`reconnect`](Self::reconnect).
    pub fn cut_off(&self, owner: &str) {
        self.lock()
            .faults
            .entry(owner.to_owned())
            .or_default()
            .reach = Reach::Unreachable;
    }

    /// Calls by `owner` never get an answer (they run into the operation
    /// timeout) until [`reconnect`](Self::reconnect).
    pub fn black_hole(&self, owner: &str) {
        self.lock()
            .faults
            .entry(owner.to_owned())
            .or_default()
            .reach = Reach::Hanging;
    }

    /// Every call by `owner` waits `latency` before it reaches the store.
    pub fn set_latency(&self, owner: &str, latency: Duration) {
        self.lock()
            .faults
            .entry(owner.to_owned())
            .or_default()
            .latency = latency;
    }

    /// Removes every fault injected for `owner`.
    pub fn reconnect(&self, owner: &str) {
        self.lock().faults.remove(owner);
    }

    /// Revokes the current tenure of `lease`, whoever holds it: the holder's
    /// next renew fails (a holder that watches learns it at once), but the
    /// lease is given to nobody else before the term the store granted has
    /// run out. A holder cut off from the store cannot hear of the
    /// revocation, and believes in its lease until its own expiry estimate,
    /// which ends before that term; so freeing the record at once would let
    /// a contender be active next to it (I1, I2). A release frees it at once:
    /// its holder has stopped. Returns the owner that lost it.
    pub fn revoke(&self, lease: &str) -> Option<String> {
        let now = Instant::now();
        let mut state = self.lock();
        let record = state.records.get_mut(lease)?;
        let holder = record.holder.take().filter(|_| record.expires_at > now)?;
        // The grant still ends at `expires_at`: nobody else holds it before.
        state.publish(lease);
        tracing::info!(lease, owner = %holder, "lease revoked in the store; free once its term ends");
        Some(holder)
    }

    /// A watch of `lease`'s record (`None` while it has never been written).
    pub(crate) fn subscribe(&self, lease: &str) -> watch::Receiver<Option<RecordView>> {
        let mut state = self.lock();
        if !state.views.contains_key(lease) {
            state.publish(lease);
        }
        state
            .views
            .get(lease)
            .map(watch::Sender::subscribe)
            .unwrap_or_else(|| watch::channel(None).1)
    }

    /// The current holder of `lease` and its token, if its tenure has not
    /// expired (or been revoked).
    pub fn holder(&self, lease: &str) -> Option<(String, FencingToken)> {
        let now = Instant::now();
        let state = self.lock();
        let record = state.records.get(lease)?;
        let holder = record.holder.as_ref().filter(|_| record.expires_at > now)?;
        Some((holder.clone(), FencingToken::new(record.token)))
    }

    /// Who held `lease` at instant `at`, according to the store.
    pub fn holder_at(&self, lease: &str, at: Instant) -> Option<String> {
        self.lock()
            .history
            .iter()
            .find(|g| g.lease == lease && g.from <= at && at < g.until)
            .map(|g| g.owner.clone())
    }

    /// Every tenure of every lease, in the order they were granted.
    pub fn history(&self) -> Vec<Grant> {
        self.lock().history.clone()
    }

    fn lock(&self) -> MutexGuard<'_, StoreState> {
        // Critical sections never panic; recover the data if one ever did.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The store calls `owner` has made so far.
    pub fn calls(&self, owner: &str) -> CallCounts {
        self.lock().calls.get(owner).copied().unwrap_or_default()
    }

    pub(crate) fn count_call(&self, owner: &str, count: impl FnOnce(&mut CallCounts)) {
        count(self.lock().calls.entry(owner.to_owned()).or_default());
    }

    pub(crate) fn faults(&self, owner: &str) -> Faults {
        self.lock().faults.get(owner).copied().unwrap_or_default()
    }

    pub(crate) fn acquire(&self, lease: &str, owner: &str, ttl: Duration) -> AcquireOutcome {
        let now = Instant::now();
        let mut state = self.lock();
        let StoreState {
            records, history, ..
        } = &mut *state;
        let record = records.entry(lease.to_owned()).or_insert_with(|| Record {
            holder: None,
            token: 0,
            expires_at: now,
            grant: usize::MAX,
            released: false,
            suspended: false,
        });
        let live = record.expires_at > now;
        // Our tenure follows a term that ran out unless its holder cut it
        // short: a release, or our owner name's earlier process, ended here.
        let mut succession = if record.released {
            Succession::Unknown
        } else if record.suspended {
            Succession::AfterSuspendedTerm
        } else {
            Succession::AfterTermEnded
        };
        match &record.holder {
            // Handles call this only when they do not hold the lease; the
            // same owner name then means a restarted process, which must
            // not continue its predecessor's tenure: it ends here.
            Some(holder) if live && holder == owner => {
                if let Some(grant) = history.get_mut(record.grant) {
                    grant.until = now;
                }
                succession = Succession::Unknown;
            }
            Some(holder) if live => return AcquireOutcome::HeldByOther(Some(holder.clone())),
            // Revoked, and its term not over: its holder may not know yet.
            None if live => {
                let previous = history.get(record.grant).map(|g| g.owner.clone());
                return AcquireOutcome::HeldByOther(previous);
            }
            _ => {}
        }
        // Free, expired or ours from a previous handle: a new tenure with a
        // strictly greater token.
        record.token += 1;
        record.holder = Some(owner.to_owned());
        record.expires_at = now + ttl;
        record.grant = history.len();
        record.released = false;
        record.suspended = false;
        history.push(Grant {
            lease: lease.to_owned(),
            owner: owner.to_owned(),
            token: FencingToken::new(record.token),
            from: now,
            until: record.expires_at,
        });
        let token = FencingToken::new(record.token);
        state.publish(lease);
        AcquireOutcome::Acquired(token, succession)
    }

    pub(crate) fn renew(
        &self,
        lease: &str,
        owner: &str,
        token: FencingToken,
        ttl: Duration,
    ) -> RenewOutcome {
        let now = Instant::now();
        let mut state = self.lock();
        let StoreState {
            records, history, ..
        } = &mut *state;
        let Some(record) = records.get_mut(lease) else {
            return RenewOutcome::Lost(LostReason::Revoked);
        };
        let ours = record.holder.as_deref() == Some(owner) && record.token == token.get();
        if ours && record.suspended {
            return RenewOutcome::Lost(LostReason::Suspended);
        }
        if !ours {
            return RenewOutcome::Lost(match &record.holder {
                Some(other) if record.expires_at > now => LostReason::TakenOver {
                    by: Some(other.clone()),
                },
                Some(_) => LostReason::Expired,
                None => LostReason::Revoked,
            });
        }
        if record.expires_at <= now {
            return RenewOutcome::Lost(LostReason::Expired);
        }
        record.expires_at = now + ttl;
        history[record.grant].until = record.expires_at;
        state.publish(lease);
        RenewOutcome::Renewed
    }

    /// Suspends tenure `token` of `lease` if it is the record's latest and
    /// was not released; its term is left as it was.
    pub(crate) fn suspend(&self, lease: &str, token: FencingToken) -> Suspension {
        let mut state = self.lock();
        let Some(record) = state.records.get_mut(lease) else {
            return Suspension::Superseded;
        };
        if record.token != token.get() || record.released || record.grant == usize::MAX {
            return Suspension::Superseded;
        }
        if !record.suspended {
            record.suspended = true;
            tracing::info!(lease, %token, "tenure suspended in the store");
        }
        Suspension::Suspended
    }

    pub(crate) fn release(&self, lease: &str, owner: &str, token: FencingToken) -> bool {
        let now = Instant::now();
        let mut state = self.lock();
        let StoreState {
            records, history, ..
        } = &mut *state;
        let Some(record) = records.get_mut(lease) else {
            return false;
        };
        let ours = record.holder.as_deref() == Some(owner)
            && record.token == token.get()
            && record.expires_at > now;
        if ours {
            record.holder = None;
            record.expires_at = now;
            record.released = true;
            history[record.grant].until = now;
            state.publish(lease);
        }
        ours
    }
}
