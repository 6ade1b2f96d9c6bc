//! The lease contract that guards the shard coordinator.
//!
//! A [`Lease`] is a lock with a time to live held in a store outside the
//! cluster. Under a network partition two cluster leaders can exist; only the
//! one whose lease [`Lease::check_alive`] is true may act. Everything that makes
//! that safe lives here, once, so every backend inherits it:
//!
//! - [`LeaseSettings`]: validated at construction, errors name the field;
//! - [`Lease`]: the object-safe trait the coordinator holds as `Arc<dyn Lease>`;
//! - [`ManagedLease`]: the heartbeat and local-validity logic, written once over a
//!   small [`LeaseBackend`] that only does store I/O;
//! - [`FencingToken`]: strictly increases with every new tenure;
//! - [`gate::LeaseGate`]: when a leader may act, as a sans-I/O state machine
//!   shared by every lease-guarded role (the shard coordinator, the cluster
//!   singleton);
//! - `testkit` (feature): the conformance suite every backend must pass.
//!
//! ```
//! use std::time::Duration;
//! use lease_api::LeaseSettings;
//!
//! let settings = LeaseSettings::builder("shard-coordinator", "node-1")
//!     .ttl(Duration::from_secs(30))
//!     .heartbeat_interval(Duration::from_secs(3))
//!     .build()
//!     .expect("valid settings");
//! assert_eq!(settings.owner_name(), "node-1");
//!
//! let err = LeaseSettings::builder("", "node-1").build().unwrap_err();
//! assert_eq!(err.field(), "lease_name");
//! ```

mod error;
pub mod gate;
mod jitter;
mod lease;
mod managed;
mod observation;
mod settings;
mod status;
mod succession;
mod token;

#[cfg(feature = "testkit")]
pub mod testkit;

pub use error::{LeaseError, SettingsError};
pub use lease::Lease;
pub use managed::{AcquireOutcome, LeaseBackend, ManagedLease, RenewOutcome};
pub use observation::{Observation, StoreEvent};
pub use settings::{LeaseSettings, LeaseSettingsBuilder};
pub use status::{LeaseStatus, LostReason};
pub use succession::{Succession, Suspension};
pub use token::FencingToken;

/// A boxed, sendable future, the return type of the object-safe [`Lease`] methods.
pub type BoxFuture<'a, T> = futures::future::BoxFuture<'a, T>;

/// A boxed, sendable stream, the type of a backend's watch.
pub type BoxStream<'a, T> = futures::stream::BoxStream<'a, T>;
