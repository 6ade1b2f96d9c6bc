//! The lease status published to watchers.

use std::fmt;

use crate::FencingToken;

/// What a lease handle currently believes about its lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseStatus {
    /// Not held: never acquired, or released.
    NotHeld,
    /// Held with this fencing token.
    Held(FencingToken),
    /// Was held and is no longer; published the instant the loss is known.
    Lost(LostReason),
}

/// Why a held lease was lost.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LostReason {
    /// Renewals kept failing until the local validity deadline passed.
    RenewFailed {
        /// The last renew error seen, rendered.
        last_error: String,
    },
    /// The store shows another owner as holder.
    TakenOver {
        /// The owner the store names, if it names one.
        by: Option<String>,
    },
    /// The store no longer has a record of us holding it (revoked or deleted).
    Revoked,
    /// The store's record expired before our renew reached it.
    Expired,
    /// A member suspended our tenure ([`crate::Lease::suspend`]): it can
    /// renew no more.
    Suspended,
}

impl fmt::Display for LostReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::RenewFailed { last_error } => {
                write!(
                    f,
                    "renewals failed until the validity deadline: {last_error}"
                )
            }
            Self::TakenOver { by: Some(by) } => write!(f, "taken over by `{by}`"),
            Self::TakenOver { by: None } => write!(f, "taken over by another owner"),
            Self::Revoked => write!(f, "revoked in the store"),
            Self::Expired => write!(f, "expired in the store before a renew reached it"),
            Self::Suspended => write!(f, "suspended in the store by a member"),
        }
    }
}
