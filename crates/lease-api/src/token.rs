//! Fencing tokens: how a region tells a current coordinator from a stale one.

use std::fmt;

/// A number that strictly increases with every new tenure of the lease: every
/// change of holder, and every acquire by a handle that did not hold it (a
/// restarted process under its predecessor's owner name).
///
/// Directives carry the token of the coordinator that issued them; a receiver
/// that has seen a higher token refuses them (invariant I3). Tokens of one
/// lease are totally ordered; tokens of different leases are not comparable in
/// any meaningful way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FencingToken(u64);

impl FencingToken {
    /// Wraps a raw token value as stored by a backend.
    pub const fn new(value: u64) -> Self {
        Self(value)
    }

    /// The raw value.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}
