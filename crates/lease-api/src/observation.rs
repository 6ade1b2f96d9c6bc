//! What a handle sees of the store's record while it watches it.
//!
//! A standby that watches the record (instead of polling it, or ignoring it
//! until it leads) starts its expiry clock at the holder's last renew it
//! saw, hears of a release at once, and a holder that watches hears of a
//! revocation or an overwrite at once instead of at its next renew.

use tokio::time::Instant;

use crate::FencingToken;

/// One state of the record, as a backend's watch reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreEvent {
    /// The holder the record names (`None`: released, cleared or deleted).
    pub holder: Option<String>,
    /// The tenure the record shows, if it is one this backend began (its
    /// token); `None` for anyone else's.
    pub tenure: Option<FencingToken>,
    /// The record's position in the store's history, on the same scale as
    /// fencing tokens: a tenure's token is the revision of the write that
    /// began it, so an event below a token is older than that tenure.
    pub revision: u64,
    /// When the record expires if no renew is seen, on this process's clock.
    /// For a record that names no holder: until when it is still not free
    /// (revoked or deleted behind its holder's back, which may not have
    /// heard of it yet); `None` when it is free now (released).
    pub expires_at: Option<Instant>,
}

/// What a handle last saw of the record ([`crate::Lease::observed`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Observation {
    /// Not watching (yet), or the backend cannot watch.
    #[default]
    Unknown,
    /// `holder` holds it, as far as the watch shows; also while a record
    /// revoked or deleted behind its holder's back may still be acted on
    /// by that holder (then `holder` is the last holder seen, or empty).
    Held {
        /// The owner the record names.
        holder: String,
    },
    /// Nobody holds it: released, or expired without a renew.
    Free,
}
