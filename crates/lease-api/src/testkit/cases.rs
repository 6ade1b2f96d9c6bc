//! The conformance cases, one function each.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::{Instant, sleep};

use super::ConformanceBackend;
use crate::{
    Lease, LeaseError, LeaseSettings, LeaseStatus, LostReason, Observation, Succession, Suspension,
};

/// One conformance case; the letters follow the foundation issue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Case {
    /// a. Acquire on a free lease: true, alive, token present.
    AcquireFree,
    /// b. A second owner's acquire is false while the first holds it.
    SecondOwnerRefused,
    /// c. Re-acquire by the holder is idempotent, token unchanged.
    ReacquireIdempotent,
    /// d. Release, then another owner acquires with a strictly greater token,
    /// and its tenure's succession is `Unknown` (a releaser may have
    /// promised past its release).
    ReleaseThenOtherAcquires,
    /// e. Release by a non-holder is `Ok(false)` and leaves the holder alone.
    ReleaseByNonHolder,
    /// f. A holder cut off from the store is lost strictly before anyone else is granted it.
    CutOffLostBeforeTakeover,
    /// g. After the expiry another owner acquires, its tenure's succession is
    /// `AfterTermEnded`, and the old holder stays out.
    OtherAcquiresAfterExpiry,
    /// h. Heartbeats keep the lease alive across 10 x ttl.
    HeartbeatsKeepAlive,
    /// i. Not alive before the first acquire nor after release.
    NotAliveUnlessHeld,
    /// j. A renew answered later than the operation timeout counts as failed.
    SlowRenewFails,
    /// k. Invalid settings are rejected with the field named.
    InvalidSettingsRejected,
    /// l. N owners acquire at once: exactly one gets true.
    ConcurrentAcquireOneWins,
    /// m. A new handle of the holder's owner (a restarted process) that
    /// acquires the live lease starts a new tenure with a greater token,
    /// whose succession is `Unknown` (its predecessor's term had not ended).
    RestartedOwnerNewToken,
    /// n. A lease revoked (deleted) in the store is `Lost` at its holder
    /// within half a heartbeat (through the watch, not at the next renew).
    RevocationSeenAtOnce,
    /// o. An observing standby sees a release as `Free` within half a heartbeat.
    ObserverSeesRelease,
    /// p. An observing standby sees a silent holder's lease `Free` one ttl
    /// after its last renew (not before), and takes it at once.
    ObserverSeesExpiry,
    /// q. A lease revoked (deleted) while its holder is cut off from the
    /// store, so that it cannot hear of it, is not free to a contender
    /// that saw it held until its holder has surely stopped believing in
    /// it; then the contender gets it with a greater token, and its
    /// succession is `AfterTermEnded`.
    RevokedWhileCutOff,
    /// r. A member suspends the holder's tenure: the holder is `Lost` at
    /// its next renew, nobody acquires before the term ends, a second
    /// suspension still answers `Suspended`, the next tenure reports
    /// `AfterSuspendedTerm`, and suspending the old tenure then answers
    /// `Superseded`. Skipped where the backend cannot suspend.
    SuspendedTenure,
}

impl Case {
    /// Every case, in the order [`super::run`] runs them.
    pub const ALL: &'static [Case] = &[
        Case::AcquireFree,
        Case::SecondOwnerRefused,
        Case::ReacquireIdempotent,
        Case::ReleaseThenOtherAcquires,
        Case::ReleaseByNonHolder,
        Case::CutOffLostBeforeTakeover,
        Case::OtherAcquiresAfterExpiry,
        Case::HeartbeatsKeepAlive,
        Case::NotAliveUnlessHeld,
        Case::SlowRenewFails,
        Case::InvalidSettingsRejected,
        Case::ConcurrentAcquireOneWins,
        Case::RestartedOwnerNewToken,
        Case::RevocationSeenAtOnce,
        Case::ObserverSeesRelease,
        Case::ObserverSeesExpiry,
        Case::RevokedWhileCutOff,
        Case::SuspendedTenure,
    ];

    /// A stable snake_case name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Case::AcquireFree => "a_acquire_free",
            Case::SecondOwnerRefused => "b_second_owner_refused",
            Case::ReacquireIdempotent => "c_reacquire_idempotent",
            Case::ReleaseThenOtherAcquires => "d_release_then_other_acquires",
            Case::ReleaseByNonHolder => "e_release_by_non_holder",
            Case::CutOffLostBeforeTakeover => "f_cut_off_lost_before_takeover",
            Case::OtherAcquiresAfterExpiry => "g_other_acquires_after_expiry",
            Case::HeartbeatsKeepAlive => "h_heartbeats_keep_alive",
            Case::NotAliveUnlessHeld => "i_not_alive_unless_held",
            Case::SlowRenewFails => "j_slow_renew_fails",
            Case::InvalidSettingsRejected => "k_invalid_settings_rejected",
            Case::ConcurrentAcquireOneWins => "l_concurrent_acquire_one_wins",
            Case::RestartedOwnerNewToken => "m_restarted_owner_new_token",
            Case::RevocationSeenAtOnce => "n_revocation_seen_at_once",
            Case::ObserverSeesRelease => "o_observer_sees_release",
            Case::ObserverSeesExpiry => "p_observer_sees_expiry",
            Case::RevokedWhileCutOff => "q_revoked_while_cut_off",
            Case::SuspendedTenure => "r_suspended_tenure",
        }
    }

    pub(super) async fn run(self, backend: &dyn ConformanceBackend) -> Result<(), String> {
        let mut fx = Fixture::new(backend, self);
        let outcome = match self {
            Case::AcquireFree => acquire_free(&mut fx).await,
            Case::SecondOwnerRefused => second_owner_refused(&mut fx).await,
            Case::ReacquireIdempotent => reacquire_idempotent(&mut fx).await,
            Case::ReleaseThenOtherAcquires => release_then_other_acquires(&mut fx).await,
            Case::ReleaseByNonHolder => release_by_non_holder(&mut fx).await,
            Case::CutOffLostBeforeTakeover => cut_off_lost_before_takeover(&mut fx).await,
            Case::OtherAcquiresAfterExpiry => other_acquires_after_expiry(&mut fx).await,
            Case::HeartbeatsKeepAlive => heartbeats_keep_alive(&mut fx).await,
            Case::NotAliveUnlessHeld => not_alive_unless_held(&mut fx).await,
            Case::SlowRenewFails => slow_renew_fails(&mut fx).await,
            Case::InvalidSettingsRejected => invalid_settings_rejected(&mut fx),
            Case::ConcurrentAcquireOneWins => concurrent_acquire_one_wins(&mut fx).await,
            Case::RestartedOwnerNewToken => restarted_owner_new_token(&mut fx).await,
            Case::RevocationSeenAtOnce => revocation_seen_at_once(&mut fx).await,
            Case::ObserverSeesRelease => observer_sees_release(&mut fx).await,
            Case::ObserverSeesExpiry => observer_sees_expiry(&mut fx).await,
            Case::RevokedWhileCutOff => revoked_while_cut_off(&mut fx).await,
            Case::SuspendedTenure => suspended_tenure(&mut fx).await,
        };
        fx.cleanup().await;
        outcome
    }
}

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

/// Fresh lease and owner names per case, and cleanup of what the case touched.
struct Fixture<'a> {
    backend: &'a dyn ConformanceBackend,
    template: LeaseSettings,
    lease_name: String,
    leases: Vec<Arc<dyn Lease>>,
}

static RUN_COUNTER: AtomicU64 = AtomicU64::new(0);

impl<'a> Fixture<'a> {
    fn new(backend: &'a dyn ConformanceBackend, case: Case) -> Self {
        let n = RUN_COUNTER.fetch_add(1, Ordering::Relaxed);
        let letter = &case.name()[..1];
        Self {
            backend,
            template: backend.template(),
            lease_name: format!("conformance-{letter}-{n}"),
            leases: Vec::new(),
        }
    }

    fn owner(&self, i: usize) -> String {
        format!("{}-owner-{i}", self.lease_name)
    }

    fn settings(&self, lease_name: &str, owner: &str) -> Result<LeaseSettings, String> {
        let t = &self.template;
        LeaseSettings::builder(lease_name, owner)
            .ttl(t.ttl())
            .heartbeat_interval(t.heartbeat_interval())
            .operation_timeout(t.operation_timeout())
            .safety_margin(t.safety_margin())
            .build()
            .map_err(|e| format!("template settings rejected: {e}"))
    }

    /// A handle for owner `i` on this case's lease.
    fn lease(&mut self, i: usize) -> Result<Arc<dyn Lease>, String> {
        let settings = self.settings(&self.lease_name, &self.owner(i))?;
        let lease = self
            .backend
            .create(settings)
            .map_err(|e| format!("create for owner {i} failed: {e}"))?;
        self.leases.push(Arc::clone(&lease));
        Ok(lease)
    }

    fn ttl(&self) -> Duration {
        self.template.ttl()
    }

    fn heartbeat(&self) -> Duration {
        self.template.heartbeat_interval()
    }

    /// Polling step: fine enough to see any overlap of a heartbeat's length.
    fn step(&self) -> Duration {
        (self.heartbeat() / 4).max(Duration::from_millis(5))
    }

    async fn cleanup(&mut self) {
        for (i, lease) in self.leases.iter().enumerate() {
            self.backend.reconnect(lease.settings().owner_name());
            if let Err(e) = lease.release().await {
                tracing::debug!(owner = i, error = %e, "release during cleanup failed");
            }
        }
        self.leases.clear();
    }
}

async fn acquire(lease: &Arc<dyn Lease>) -> Result<bool, String> {
    lease
        .acquire()
        .await
        .map_err(|e| format!("acquire by `{}` failed: {e}", lease.settings().owner_name()))
}

async fn acquire_free(fx: &mut Fixture<'_>) -> Result<(), String> {
    let a = fx.lease(1)?;
    ensure!(acquire(&a).await?, "acquire on a free lease returned false");
    ensure!(a.check_alive(), "check_alive is false right after acquire");
    let token = a.fencing_token();
    ensure!(token.is_some(), "no fencing token right after acquire");
    let status = a.status().borrow().clone();
    ensure!(
        matches!(status, LeaseStatus::Held(t) if Some(t) == token),
        "status is {status:?}, expected Held({token:?})"
    );
    Ok(())
}

async fn second_owner_refused(fx: &mut Fixture<'_>) -> Result<(), String> {
    let a = fx.lease(1)?;
    let b = fx.lease(2)?;
    ensure!(acquire(&a).await?, "first acquire returned false");
    ensure!(!acquire(&b).await?, "second owner acquired a held lease");
    ensure!(!b.check_alive(), "refused owner reports check_alive");
    ensure!(b.fencing_token().is_none(), "refused owner has a token");
    ensure!(
        a.check_alive(),
        "holder lost the lease to a refused contender"
    );
    Ok(())
}

async fn reacquire_idempotent(fx: &mut Fixture<'_>) -> Result<(), String> {
    let a = fx.lease(1)?;
    let b = fx.lease(2)?;
    ensure!(acquire(&a).await?, "first acquire returned false");
    let first = a.fencing_token();
    ensure!(
        acquire(&a).await?,
        "re-acquire by the holder returned false"
    );
    ensure!(a.check_alive(), "holder not alive after re-acquire");
    ensure!(
        a.fencing_token() == first,
        "token changed on re-acquire: {first:?} -> {:?}",
        a.fencing_token()
    );
    ensure!(
        !acquire(&b).await?,
        "re-acquire freed the lease for another owner"
    );
    Ok(())
}

async fn restarted_owner_new_token(fx: &mut Fixture<'_>) -> Result<(), String> {
    let before = fx.lease(1)?;
    ensure!(acquire(&before).await?, "first acquire returned false");
    let first = before.fencing_token().ok_or("holder has no token")?;
    // The process restarts under the same owner name (a StatefulSet pod):
    // the store cannot tell it from its predecessor, only the handle can.
    drop(fx.leases.pop());
    drop(before);
    let after = fx.lease(1)?;
    ensure!(
        acquire(&after).await?,
        "the restarted owner could not acquire its own live lease"
    );
    let second = after
        .fencing_token()
        .ok_or("restarted holder has no token")?;
    ensure!(
        second > first,
        "a restarted owner continued its predecessor's tenure: token {first} -> {second}"
    );
    ensure!(
        after.succession() == Some(Succession::Unknown),
        "a restarted owner's takeover of its live lease reports {:?}, not Unknown: its predecessor may still have promises out",
        after.succession()
    );
    let other = fx.lease(2)?;
    ensure!(
        !acquire(&other).await?,
        "the new tenure left the lease free for another owner"
    );
    Ok(())
}

async fn release_then_other_acquires(fx: &mut Fixture<'_>) -> Result<(), String> {
    let a = fx.lease(1)?;
    let b = fx.lease(2)?;
    ensure!(acquire(&a).await?, "first acquire returned false");
    let first = a.fencing_token().ok_or("holder has no token")?;
    let released = a
        .release()
        .await
        .map_err(|e| format!("release failed: {e}"))?;
    ensure!(released, "release by the holder returned false");
    ensure!(!a.check_alive(), "check_alive still true after release");
    ensure!(
        acquire(&b).await?,
        "other owner could not acquire a released lease"
    );
    let second = b.fencing_token().ok_or("new holder has no token")?;
    ensure!(
        second > first,
        "token did not increase on change of holder: {first} -> {second}"
    );
    ensure!(
        b.succession() == Some(Succession::Unknown),
        "a tenure after a release reports {:?}, not Unknown: the releaser's term had not ended",
        b.succession()
    );
    Ok(())
}

async fn release_by_non_holder(fx: &mut Fixture<'_>) -> Result<(), String> {
    let a = fx.lease(1)?;
    let b = fx.lease(2)?;
    let c = fx.lease(3)?;
    ensure!(acquire(&a).await?, "first acquire returned false");
    let released = b
        .release()
        .await
        .map_err(|e| format!("release by a non-holder was an error: {e}"))?;
    ensure!(!released, "release by a non-holder returned true");
    ensure!(
        a.check_alive(),
        "holder lost the lease after a non-holder's release"
    );
    ensure!(
        !acquire(&c).await?,
        "a non-holder's release freed the holder's lease"
    );
    Ok(())
}

/// Cuts owner 1 off while it holds the lease and polls owner 2's acquire until
/// it succeeds. Returns (instant owner 1's loss was published, start of owner 2's
/// winning acquire, owner 2's handle).
async fn cut_off_and_take_over(
    fx: &mut Fixture<'_>,
) -> Result<(Instant, Instant, Instant, Arc<dyn Lease>, Arc<dyn Lease>), String> {
    let a = fx.lease(1)?;
    let b = fx.lease(2)?;
    ensure!(acquire(&a).await?, "first acquire returned false");
    let mut status = a.status();
    let lost_at = tokio::spawn(async move {
        loop {
            if matches!(*status.borrow_and_update(), LeaseStatus::Lost(_)) {
                return Some(Instant::now());
            }
            if status.changed().await.is_err() {
                return None;
            }
        }
    });
    let cut_at = Instant::now();
    fx.backend.cut_off(a.settings().owner_name());
    let give_up = cut_at + fx.ttl() * 3;
    let won_at = loop {
        ensure!(
            !(a.check_alive() && b.check_alive()),
            "two owners alive at once"
        );
        ensure!(Instant::now() < give_up, "no takeover within 3 x ttl");
        let attempt = Instant::now();
        // Errors while the store settles are tolerated; only success ends the loop.
        if matches!(b.acquire().await, Ok(true)) {
            break attempt;
        }
        ensure!(
            !(a.check_alive() && b.check_alive()),
            "two owners alive at once"
        );
        sleep(fx.step()).await;
    };
    ensure!(
        !a.check_alive(),
        "cut-off holder still alive after takeover"
    );
    let lost_at = match tokio::time::timeout(fx.ttl(), lost_at).await {
        Ok(Ok(Some(at))) => at,
        _ => return Err("cut-off holder never published Lost".into()),
    };
    Ok((cut_at, lost_at, won_at, a, b))
}

async fn cut_off_lost_before_takeover(fx: &mut Fixture<'_>) -> Result<(), String> {
    let (cut_at, lost_at, won_at, _, _) = cut_off_and_take_over(fx).await?;
    ensure!(
        lost_at < won_at,
        "Lost published {:?} after the cut, but the other owner's winning acquire started at {:?}",
        lost_at - cut_at,
        won_at - cut_at
    );
    Ok(())
}

async fn other_acquires_after_expiry(fx: &mut Fixture<'_>) -> Result<(), String> {
    let bound = fx.ttl() + fx.heartbeat() + fx.template.operation_timeout() + fx.step() * 2;
    let (cut_at, _, won_at, a, b) = cut_off_and_take_over(fx).await?;
    ensure!(
        won_at - cut_at <= bound,
        "takeover took {:?} after the cut, more than ttl + heartbeat + timeout ({bound:?})",
        won_at - cut_at
    );
    fx.backend.reconnect(a.settings().owner_name());
    ensure!(
        !acquire(&a).await?,
        "old holder re-acquired a lease another owner holds"
    );
    ensure!(b.check_alive(), "new holder not alive");
    ensure!(
        b.succession() == Some(Succession::AfterTermEnded),
        "a tenure taken after the holder's term ran out reports {:?}, not AfterTermEnded",
        b.succession()
    );
    Ok(())
}

async fn heartbeats_keep_alive(fx: &mut Fixture<'_>) -> Result<(), String> {
    let a = fx.lease(1)?;
    let b = fx.lease(2)?;
    ensure!(acquire(&a).await?, "first acquire returned false");
    let token = a.fencing_token();
    let start = Instant::now();
    let end = start + fx.ttl() * 10;
    let mut next_contend = start;
    while Instant::now() < end {
        ensure!(
            a.check_alive(),
            "lease not alive {:?} after acquire",
            Instant::now() - start
        );
        if Instant::now() >= next_contend {
            ensure!(!acquire(&b).await?, "contender acquired a renewed lease");
            next_contend += fx.ttl() / 2;
        }
        sleep(fx.heartbeat() / 2).await;
    }
    ensure!(a.fencing_token() == token, "token changed while renewing");
    Ok(())
}

async fn not_alive_unless_held(fx: &mut Fixture<'_>) -> Result<(), String> {
    let a = fx.lease(1)?;
    ensure!(!a.check_alive(), "alive before the first acquire");
    ensure!(
        a.fencing_token().is_none(),
        "token before the first acquire"
    );
    ensure!(
        *a.status().borrow() == LeaseStatus::NotHeld,
        "status before acquire is {:?}",
        *a.status().borrow()
    );
    ensure!(acquire(&a).await?, "acquire returned false");
    let released = a
        .release()
        .await
        .map_err(|e| format!("release failed: {e}"))?;
    ensure!(released, "release by the holder returned false");
    ensure!(!a.check_alive(), "alive after release");
    ensure!(a.fencing_token().is_none(), "token after release");
    ensure!(
        *a.status().borrow() == LeaseStatus::NotHeld,
        "status after release is {:?}",
        *a.status().borrow()
    );
    let again = a
        .release()
        .await
        .map_err(|e| format!("second release was an error: {e}"))?;
    ensure!(!again, "second release returned true");
    Ok(())
}

async fn slow_renew_fails(fx: &mut Fixture<'_>) -> Result<(), String> {
    let a = fx.lease(1)?;
    ensure!(acquire(&a).await?, "acquire returned false");
    let slow_at = Instant::now();
    let latency = fx.template.operation_timeout() + fx.heartbeat();
    fx.backend.set_latency(a.settings().owner_name(), latency);
    // The last successful renew started no later than `slow_at`, so the lease
    // must be gone by then + ttl (the store's expiry) at the latest.
    let deadline = slow_at + fx.ttl();
    while a.check_alive() {
        ensure!(
            Instant::now() < deadline,
            "renews slower than the operation timeout kept the lease alive past the ttl"
        );
        sleep(fx.step()).await;
    }
    // Lost is published at the same instant check_alive turned false; allow
    // the publishing task one scheduling step, no more.
    let mut status = a.status();
    let published = tokio::time::timeout(
        fx.step(),
        status.wait_for(|s| matches!(s, LeaseStatus::Lost(_))),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    ensure!(
        published,
        "status after slow renews is {:?}, expected Lost",
        *status.borrow()
    );
    Ok(())
}

fn invalid_settings_rejected(fx: &mut Fixture<'_>) -> Result<(), String> {
    let t = fx.template.clone();
    let checks: [(&str, Result<LeaseSettings, crate::SettingsError>); 4] = [
        ("lease_name", LeaseSettings::builder("", "o").build()),
        ("owner_name", LeaseSettings::builder("l", "").build()),
        (
            "heartbeat_interval",
            LeaseSettings::builder("l", "o")
                .ttl(t.ttl())
                .heartbeat_interval(t.ttl())
                .build(),
        ),
        (
            "operation_timeout",
            LeaseSettings::builder("l", "o")
                .operation_timeout(Duration::ZERO)
                .build(),
        ),
    ];
    for (field, result) in checks {
        match result {
            Ok(_) => return Err(format!("settings with a bad `{field}` were accepted")),
            Err(e) => ensure!(
                e.field() == field,
                "error names `{}`, expected `{field}`",
                e.field()
            ),
        }
    }
    if let Some(bad_name) = fx.backend.invalid_lease_name() {
        let settings = fx.settings(&bad_name, &fx.owner(1))?;
        match fx.backend.create(settings) {
            Ok(_) => return Err(format!("backend accepted lease name {bad_name:?}")),
            Err(LeaseError::InvalidSettings(e)) => ensure!(
                e.field() == "lease_name",
                "bad lease name reported as field `{}`",
                e.field()
            ),
            Err(other) => {
                return Err(format!(
                    "bad lease name gave {other}, expected InvalidSettings"
                ));
            }
        }
    }
    Ok(())
}

async fn concurrent_acquire_one_wins(fx: &mut Fixture<'_>) -> Result<(), String> {
    const OWNERS: usize = 5;
    let leases = (1..=OWNERS)
        .map(|i| fx.lease(i))
        .collect::<Result<Vec<_>, _>>()?;
    let answers = futures::future::join_all(leases.iter().map(|l| l.acquire())).await;
    let mut winners = 0;
    for (i, answer) in answers.into_iter().enumerate() {
        match answer {
            Ok(true) => winners += 1,
            Ok(false) => {}
            Err(e) => return Err(format!("concurrent acquire by owner {} failed: {e}", i + 1)),
        }
    }
    ensure!(
        winners == 1,
        "{winners} of {OWNERS} concurrent acquires won"
    );
    let alive = leases.iter().filter(|l| l.check_alive()).count();
    ensure!(alive == 1, "{alive} owners alive after concurrent acquire");
    Ok(())
}

/// Waits up to `limit` for `lease`'s observation to satisfy `check`.
async fn observed_within(
    lease: &Arc<dyn Lease>,
    limit: Duration,
    check: impl Fn(&Observation) -> bool,
) -> Result<Instant, String> {
    let mut rx = lease.observed();
    let outcome = tokio::time::timeout(limit, rx.wait_for(|o| check(o)))
        .await
        .map(|r| r.is_ok());
    match outcome {
        Ok(true) => Ok(Instant::now()),
        Ok(false) => Err("the observation channel closed".into()),
        Err(_) => Err(format!(
            "observation is still {:?} after {limit:?}",
            *rx.borrow()
        )),
    }
}

async fn revocation_seen_at_once(fx: &mut Fixture<'_>) -> Result<(), String> {
    let a = fx.lease(1)?;
    let b = fx.lease(2)?;
    ensure!(acquire(&a).await?, "acquire on a free lease returned false");
    let first = a.fencing_token();
    // Let the holder's watch connect; the revocation comes well before its
    // next renew.
    sleep(fx.step()).await;
    let lease_name = fx.lease_name.clone();
    if !fx.backend.revoke(&lease_name).await {
        tracing::info!("backend cannot revoke; case n not applicable");
        return Ok(());
    }
    let mut status = a.status();
    let lost = tokio::time::timeout(
        fx.heartbeat() / 2,
        status.wait_for(|s| matches!(s, LeaseStatus::Lost(_))),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    ensure!(
        lost,
        "the holder still believes after half a heartbeat: status {:?}",
        *status.borrow()
    );
    ensure!(
        !a.check_alive(),
        "check_alive after the revocation was seen"
    );
    let _ = (b, first);
    Ok(())
}

async fn revoked_while_cut_off(fx: &mut Fixture<'_>) -> Result<(), String> {
    let a = fx.lease(1)?;
    let b = fx.lease(2)?;
    ensure!(acquire(&a).await?, "acquire on a free lease returned false");
    let first = a.fencing_token();
    b.observe();
    let holder = a.settings().owner_name().to_owned();
    observed_within(
        &b,
        fx.ttl(),
        |o| matches!(o, Observation::Held { holder: h } if *h == holder),
    )
    .await?;
    fx.backend.cut_off(&holder);
    let lease_name = fx.lease_name.clone();
    if !fx.backend.revoke(&lease_name).await {
        tracing::info!("backend cannot revoke; case q not applicable");
        return Ok(());
    }
    let revoked = Instant::now();
    ensure!(
        a.check_alive(),
        "the cut-off holder heard of the revocation (the case needs it not to)"
    );
    // The contender may have it only once the holder has stopped acting.
    let end = revoked + fx.ttl() * 3;
    loop {
        ensure!(Instant::now() < end, "the revoked lease never became free");
        let alive = a.check_alive();
        if acquire(&b).await? {
            ensure!(
                !alive && !a.check_alive(),
                "acquired {:?} after the revocation while its cut-off holder still believes in it",
                revoked.elapsed()
            );
            break;
        }
        sleep(fx.step()).await;
    }
    ensure!(
        b.fencing_token() > first,
        "token after revocation {:?} is not above {first:?}",
        b.fencing_token()
    );
    ensure!(
        b.succession() == Some(Succession::AfterTermEnded),
        "a tenure taken once the revoked holder's term ran out reports {:?}, not AfterTermEnded",
        b.succession()
    );
    Ok(())
}

async fn observer_sees_release(fx: &mut Fixture<'_>) -> Result<(), String> {
    let a = fx.lease(1)?;
    let b = fx.lease(2)?;
    ensure!(acquire(&a).await?, "acquire on a free lease returned false");
    b.observe();
    let holder = a.settings().owner_name().to_owned();
    observed_within(
        &b,
        fx.ttl(),
        |o| matches!(o, Observation::Held { holder: h } if *h == holder),
    )
    .await?;
    ensure!(!acquire(&b).await?, "acquired a held lease");
    let released = Instant::now();
    ensure!(
        a.release()
            .await
            .map_err(|e| format!("release failed: {e}"))?,
        "release returned false"
    );
    let free = observed_within(&b, fx.heartbeat() / 2, |o| *o == Observation::Free).await?;
    tracing::debug!(after = ?free - released, "release observed");
    ensure!(acquire(&b).await?, "a lease observed free was refused");
    Ok(())
}

async fn observer_sees_expiry(fx: &mut Fixture<'_>) -> Result<(), String> {
    let a = fx.lease(1)?;
    let b = fx.lease(2)?;
    ensure!(acquire(&a).await?, "acquire on a free lease returned false");
    b.observe();
    observed_within(&b, fx.ttl(), |o| matches!(o, Observation::Held { .. })).await?;
    // Some renewals, then silence.
    sleep(fx.heartbeat() * 2).await;
    let silent_from = Instant::now();
    fx.backend.cut_off(a.settings().owner_name());
    let free = observed_within(&b, fx.ttl() * 2, |o| *o == Observation::Free).await?;
    let after = free - silent_from;
    // The last renew was at most a heartbeat before the silence began.
    ensure!(
        after + fx.heartbeat() + fx.step() >= fx.ttl(),
        "observed free {after:?} after the holder fell silent: before its ttl"
    );
    ensure!(
        after <= fx.ttl() + fx.heartbeat(),
        "observed free only {after:?} after the holder fell silent (ttl {:?})",
        fx.ttl()
    );
    ensure!(
        !a.check_alive(),
        "the silent holder still believes when the lease is observed free"
    );
    ensure!(acquire(&b).await?, "a lease observed expired was refused");
    Ok(())
}

async fn suspended_tenure(fx: &mut Fixture<'_>) -> Result<(), String> {
    let a = fx.lease(1)?;
    let b = fx.lease(2)?;
    ensure!(acquire(&a).await?, "acquire on a free lease returned false");
    let token = a.fencing_token().ok_or("holder has no token")?;
    let suspend = |lease: &Arc<dyn Lease>| {
        let lease = Arc::clone(lease);
        async move {
            lease
                .suspend(token)
                .await
                .map_err(|e| format!("suspend failed: {e}"))
        }
    };
    let suspended = Instant::now();
    match suspend(&b).await? {
        Suspension::Unsupported => {
            tracing::info!("backend cannot suspend; case r not applicable");
            return Ok(());
        }
        Suspension::Superseded => return Err("the holder's live tenure was superseded".into()),
        Suspension::Suspended => {}
    }
    let mut status = a.status();
    let lost_by = fx.heartbeat() + fx.template.operation_timeout() + fx.step() * 2;
    let lost = tokio::time::timeout(lost_by, async {
        loop {
            if let LeaseStatus::Lost(reason) = status.borrow_and_update().clone() {
                return Some(reason);
            }
            if status.changed().await.is_err() {
                return None;
            }
        }
    })
    .await
    .map_err(|_| format!("the suspended holder was not lost within {lost_by:?}"))?;
    ensure!(
        lost == Some(LostReason::Suspended),
        "the suspended holder was lost for {lost:?}, not the suspension"
    );
    ensure!(
        suspend(&b).await? == Suspension::Suspended,
        "a second suspension of the same tenure did not answer Suspended"
    );
    // The term still runs: nobody acquires before it ends.
    let end = suspended + fx.ttl() * 3;
    loop {
        ensure!(
            Instant::now() < end,
            "the suspended lease never became free"
        );
        if acquire(&b).await? {
            ensure!(
                suspended.elapsed() + fx.step() >= fx.ttl() - fx.template.safety_margin(),
                "acquired {:?} after the suspension, before the suspended term ran out",
                suspended.elapsed()
            );
            break;
        }
        sleep(fx.step()).await;
    }
    ensure!(
        b.succession() == Some(Succession::AfterSuspendedTerm),
        "the tenure after a suspended one reports {:?}, not AfterSuspendedTerm",
        b.succession()
    );
    ensure!(
        suspend(&a).await? == Suspension::Superseded,
        "suspending a tenure after the next began did not answer Superseded"
    );
    ensure!(
        b.check_alive(),
        "the new holder was hurt by a stale suspension"
    );
    Ok(())
}
