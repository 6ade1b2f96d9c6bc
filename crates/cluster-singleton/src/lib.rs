//! One instance of a user's actor in the whole cluster, and a proxy on
//! every node that reaches it.
//!
//! The instance runs on the leader of the membership view. With a lease
//! (`SingletonSettings::lease`), only the leader that holds it runs the
//! instance, so two instances never overlap even when a partition gives two
//! leaders (I7); the lease part is the same [`lease_api::gate::LeaseGate`] that
//! guards the shard coordinator. When leadership moves, the new leader first
//! asks the previous one to stop its instance (and waits while that node is
//! still a member), then starts its own.
//!
//! ```
//! # use std::sync::Arc;
//! # use std::time::Duration;
//! use cluster::{InProcessNetwork, Membership, MembershipSettings, NodeAddr, NodeId};
//! use cluster_singleton::{ClusterSingleton, Singleton, SingletonSettings};
//!
//! /// Counts what it is told; one per cluster.
//! #[derive(Default)]
//! struct Tally(u64);
//!
//! impl Singleton for Tally {
//!     type Message = u64;
//!     type Reply = u64;
//!     async fn handle(&mut self, n: u64) -> u64 {
//!         self.0 += n;
//!         self.0
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let network = InProcessNetwork::new(7);
//! let transport = Arc::new(network.join(NodeId(1)));
//! let membership = Membership::start(
//!     transport.clone(),
//!     NodeAddr("inproc:1".into()),
//!     MembershipSettings::new(vec![(NodeId(1), NodeAddr("inproc:1".into()))]),
//! )?;
//! let singleton = ClusterSingleton::start(
//!     transport,
//!     membership.view(),
//!     SingletonSettings::new("tally", Tally::default),
//! )?;
//! let total = singleton.proxy().ask(5).await?;
//! assert_eq!(total, 5);
//! # Ok(())
//! # }
//! ```

#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod manager;
mod protocol;
mod proxy;
mod settings;
mod singleton;

pub use manager::{ClusterSingleton, SingletonEvent, SingletonObserver};
pub use protocol::SingletonChannels;
pub use proxy::{ProxyError, SingletonProxy};
pub use settings::{ProxySettings, SettingsError, SingletonSettings};
pub use singleton::Singleton;
