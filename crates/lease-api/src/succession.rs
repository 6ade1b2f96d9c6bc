//! How a tenure began relative to the one before it.
//!
//! A holder bounds what it promises others by its local validity deadline
//! ([`Lease::valid_until`](crate::Lease::valid_until)), which ends before its
//! term ends in the store (I2). A successor that began only after that term
//! ran out may therefore assume every such promise has ended: a shard
//! coordinator then re-homes unclaimed shards at once instead of waiting out
//! grants its predecessor might still have out (`docs/architecture.md`,
//! "Shard tenure").

/// What the store showed when our current tenure began.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Succession {
    /// Nobody held the lease before, or the previous holder's term ran out
    /// (a ttl without a renewal, judged as the store judges expiry) before
    /// our tenure began: promises it bounded by its validity have all ended.
    AfterTermEnded,
    /// The previous holder's term ran out as above, but a member suspended
    /// it first ([`Lease::suspend`](crate::Lease::suspend)): members that
    /// suspended it may act on the suspension for as long as their own
    /// rules allow after their last look at the record, so a user waits
    /// that out (a shard region's bridge, `docs/architecture.md`, "Shard
    /// tenure").
    AfterSuspendedTerm,
    /// Anything else: the previous holder released early, our own owner name
    /// was taken over from an earlier process, or the record was gone or
    /// cleared with no holder we saw. The previous holder may have promised
    /// past this instant.
    Unknown,
}

/// What the store shows after [`Lease::suspend`](crate::Lease::suspend).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Suspension {
    /// The tenure named is the record's latest and is suspended (by this
    /// call or an earlier one): its holder can renew it no more, and nobody
    /// has acquired the lease since.
    Suspended,
    /// The record shows a later tenure, a release, or no such tenure: the
    /// one named is over.
    Superseded,
    /// This backend cannot suspend a tenure.
    Unsupported,
}
