//! Nodes, transports and membership: the ground the sharding layer stands on.
//!
//! - [`NodeId`] orders nodes; the leader of a view is its lowest member.
//! - [`Transport`] moves [`Envelope`]s: over an [`InProcessNetwork`] that tests
//!   can partition, cut one way, isolate, slow down and heal, or over
//!   [`TcpTransport`].
//! - [`Membership`] runs SWIM (foca) over a transport and publishes a
//!   [`ClusterView`]. Under a partition each side downs the other and elects
//!   its own leader: the split brain that a lease must defend against.
//!
//! ```
//! use std::sync::Arc;
//! use cluster::{InProcessNetwork, Membership, MembershipSettings, NodeAddr, NodeId};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let network = InProcessNetwork::new(7);
//! let seeds = vec![(NodeId(1), NodeAddr::from("inproc:1"))];
//! let nodes: Vec<Membership> = (1..=3)
//!     .map(|i| {
//!         let transport = Arc::new(network.join(NodeId(i)));
//!         let mut settings = MembershipSettings::new(seeds.clone());
//!         settings.rng_seed = i;
//!         Membership::start(transport, NodeAddr(format!("inproc:{i}")), settings).unwrap()
//!     })
//!     .collect();
//! tokio::time::sleep(std::time::Duration::from_secs(5)).await;
//! assert!(nodes.iter().all(|m| m.view().leader() == Some(NodeId(1))));
//! # }
//! ```

mod envelope;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod membership;
mod node;
pub mod transport;

pub use envelope::{BytesFlavor, Channel, Envelope, FrameError, PROTOCOL_VERSION};
pub use membership::{
    ClusterEvent, ClusterState, ClusterView, Member, MemberStatus, Membership, MembershipSettings,
    ViewChanges,
};
pub use node::{NodeAddr, NodeId};
pub use transport::{
    BindError, EnvelopeHandler, HANDLER_BATCH, InProcessNetwork, InProcessTransport, LinkFaults,
    PayloadWriter, PeerLine, RefusalReason, SendError, TcpSettings, TcpTransport, TlsError,
    TlsSettings, Transport, TransportStats, node_identity,
};
