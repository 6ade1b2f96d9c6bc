//! Errors of lease operations and of settings validation.

use std::time::Duration;

/// A setting that cannot be used, with the field it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid lease setting `{field}` = {value}: {reason}")]
pub struct SettingsError {
    field: &'static str,
    value: String,
    reason: String,
}

impl SettingsError {
    /// Builds an error for `field` holding `value`, explaining `reason`.
    pub fn new(field: &'static str, value: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field,
            value: value.into(),
            reason: reason.into(),
        }
    }

    /// The name of the offending field, as spelled in [`crate::LeaseSettings`].
    pub fn field(&self) -> &'static str {
        self.field
    }

    /// The rejected value, rendered for humans.
    pub fn value(&self) -> &str {
        &self.value
    }
}

/// Why a lease operation did not complete.
///
/// "Another owner holds the lease" is not an error: `acquire` answers `Ok(false)`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LeaseError {
    /// The store did not answer within the operation timeout.
    #[error("lease `{lease}`: {operation} timed out after {after:?}")]
    Timeout {
        /// The lease name.
        lease: String,
        /// `acquire`, `renew` or `release`.
        operation: &'static str,
        /// The operation timeout that elapsed.
        after: Duration,
    },
    /// The store could not be reached.
    #[error("lease `{lease}`: store unavailable: {reason}")]
    Unavailable {
        /// The lease name.
        lease: String,
        /// What the transport reported.
        reason: String,
    },
    /// The store answered with something the backend could not use.
    #[error("lease `{lease}`: backend error: {source}")]
    Backend {
        /// The lease name.
        lease: String,
        /// The backend's own error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// The settings cannot be used with this backend.
    #[error(transparent)]
    InvalidSettings(#[from] SettingsError),
}
