//! The object-safe lease trait the coordinator holds as `Arc<dyn Lease>`.

use tokio::sync::watch;

use crate::{
    BoxFuture, FencingToken, LeaseError, LeaseSettings, LeaseStatus, Observation, Succession,
    Suspension,
};

/// One owner's handle on a lease in an external store.
///
/// Contract (checked by the `testkit` conformance suite):
/// - [`acquire`](Self::acquire) is idempotent for the holder and answers
///   `Ok(false)` while another owner holds an unexpired lease; once acquired the
///   handle renews every heartbeat interval until released or lost.
/// - [`check_alive`](Self::check_alive) is true only while held and before the
///   local validity deadline, which always falls before the store would grant
///   the lease to anyone else (I2).
/// - A loss flips `check_alive` to false at once and publishes
///   [`LeaseStatus::Lost`].
/// - [`release`](Self::release) of a lease we do not hold is `Ok(false)`.
/// - [`fencing_token`](Self::fencing_token) strictly increases with every new
///   tenure: every change of holder, and every acquire by a handle that did
///   not hold the lease (a restarted process under the same owner name),
///   even when the store forgot the lease in between (a deleted record).
/// - Where the backend can watch, a handle that [`observe`](Self::observe)s
///   publishes what the record shows in [`observed`](Self::observed) (a
///   release as `Free` at once, a silent holder as `Free` once its ttl has
///   passed since the last renew seen), and a holder publishes `Lost` as
///   soon as the watch shows a revocation or another holder.
pub trait Lease: Send + Sync + 'static {
    /// The settings this handle was built with.
    fn settings(&self) -> &LeaseSettings;

    /// Tries to take the lease; `Ok(true)` means we hold it now.
    fn acquire(&self) -> BoxFuture<'_, Result<bool, LeaseError>>;

    /// Gives the lease up if we hold it; `Ok(false)` if we did not.
    fn release(&self) -> BoxFuture<'_, Result<bool, LeaseError>>;

    /// Whether we hold the lease right now. Local and cheap: no I/O.
    fn check_alive(&self) -> bool;

    /// A watch of the lease status; `Lost` is pushed the moment it is known.
    fn status(&self) -> watch::Receiver<LeaseStatus>;

    /// The token of our current tenure, `Some` only while held.
    fn fencing_token(&self) -> Option<FencingToken>;

    /// The local validity deadline while held: `check_alive` turns false
    /// then unless a renewal moves it. `None` when not held, or when the
    /// backend cannot say. Users of the lease bound what they promise others
    /// by it (a coordinator grants no shard tenure that outlives it).
    fn valid_until(&self) -> Option<tokio::time::Instant> {
        None
    }

    /// How our current tenure followed the previous one, `Some` only while
    /// held. A backend that cannot tell answers [`Succession::Unknown`], the
    /// safe answer: a user then waits out whatever its predecessor may
    /// still have promised.
    fn succession(&self) -> Option<Succession> {
        self.fencing_token().map(|_| Succession::Unknown)
    }

    /// Suspends the tenure `token` in the store, whoever holds it: from the
    /// write on, its holder's renewals fail (`Lost`), while the term it was
    /// given still runs (nobody else acquires before it ends, and the
    /// suspension does not restart anyone's expiry clock). A compare-and-set
    /// on what the store showed: once it answers
    /// [`Suspension::Suspended`], no renewal of that tenure succeeded after
    /// the record was read. The next holder's tenure reports
    /// [`Succession::AfterSuspendedTerm`]. Default: unsupported.
    fn suspend(&self, token: FencingToken) -> BoxFuture<'_, Result<Suspension, LeaseError>> {
        let _ = token;
        Box::pin(std::future::ready(Ok(Suspension::Unsupported)))
    }

    /// Starts watching the store's record, also while not holding the lease
    /// (a warm standby). Idempotent; a no-op where the backend cannot watch.
    fn observe(&self) {}

    /// What the watch last showed; stays `Unknown` without [`observe`](Self::observe).
    fn observed(&self) -> watch::Receiver<Observation> {
        watch::channel(Observation::Unknown).1
    }
}
