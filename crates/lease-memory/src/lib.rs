//! An in-memory lease store: the external store, played inside one process.
//!
//! [`InMemoryLeaseStore`] is shared by every node of a test or simulation (it
//! is cheap to clone); each node gets its own handle from
//! [`InMemoryLeaseStore::lease`]. Everything runs on tokio time, so tests with
//! paused time are exact. The store can inject the faults that matter for
//! split-brain testing (an owner cut off, slow calls, a revoked lease) and keeps
//! the ground truth of who held which lease when ([`Grant`]).
//!
//! ```
//! use lease_api::{Lease, LeaseSettings};
//! use lease_memory::InMemoryLeaseStore;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let store = InMemoryLeaseStore::new();
//! let a = store.lease(LeaseSettings::builder("coordinator", "node-a").build().unwrap());
//! let b = store.lease(LeaseSettings::builder("coordinator", "node-b").build().unwrap());
//! assert!(a.acquire().await.unwrap());
//! assert!(!b.acquire().await.unwrap());
//! assert_eq!(store.holder("coordinator").map(|(owner, _)| owner), Some("node-a".to_string()));
//! # }
//! ```

mod backend;
mod store;

pub use backend::MemoryBackend;
pub use store::{CallCounts, Grant, InMemoryLeaseStore};

/// One owner's lease on an [`InMemoryLeaseStore`].
pub type InMemoryLease = lease_api::ManagedLease<MemoryBackend>;
