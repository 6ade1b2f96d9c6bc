//! Membership: SWIM (foca) driven over our [`Transport`], with a leader view.
//!
//! foca is sans-I/O; this module feeds it received envelopes and timer events
//! and carries out what it asks for. Timers are tokio time and the RNG is
//! seeded, so the same code runs in deterministic paused-time simulations and
//! over real sockets.

mod driver;
pub(crate) mod identity;
mod view;

use std::num::{NonZeroU8, NonZeroUsize};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::{NodeAddr, NodeId, Transport};

pub use view::{ClusterEvent, ClusterState, ClusterView, Member, MemberStatus, ViewChanges};

/// Timing and seeding of membership. Defaults: the table in `docs/architecture.md`.
#[derive(Debug, Clone)]
pub struct MembershipSettings {
    /// Seed nodes to join through (this node may be one of them).
    pub seeds: Vec<(NodeId, NodeAddr)>,
    /// How often a random member is probed (default 1 s).
    pub heartbeat_interval: Duration,
    /// How long a direct probe may take before indirect probes (default 500 ms).
    pub probe_timeout: Duration,
    /// How long a suspect stays a member before it is declared down (default 10 s).
    pub down_after: Duration,
    /// How often to announce to seeds while alone, to random members, and to
    /// down members so that partitions heal (default 2 s).
    pub announce_interval: Duration,
    /// Seed of the RNG that picks probe targets.
    pub rng_seed: u64,
    /// Starting generation of this node's identity; must grow across restarts
    /// (default: milliseconds since the Unix epoch).
    pub generation: u64,
    /// How long a node that has heard from no other member waits before it
    /// considers itself joined alone, and may lead (default 5 s; a node with
    /// no seed but itself joins at once: it founds the cluster). Until it
    /// has joined it has no leader, so a restarted node never leads a
    /// cluster of one next to the cluster it belongs to.
    pub join_timeout: Duration,
}

impl MembershipSettings {
    /// Defaults, joining through `seeds`.
    pub fn new(seeds: Vec<(NodeId, NodeAddr)>) -> Self {
        let generation = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Self {
            seeds,
            heartbeat_interval: Duration::from_secs(1),
            probe_timeout: Duration::from_millis(500),
            down_after: Duration::from_secs(10),
            announce_interval: Duration::from_secs(2),
            rng_seed: generation,
            generation,
            join_timeout: Duration::from_secs(5),
        }
    }

    fn foca_config(&self) -> Result<foca::Config, MembershipError> {
        let positive = |field: &'static str, d: Duration| {
            if d.is_zero() {
                Err(MembershipError::InvalidSettings {
                    field,
                    reason: "must be positive".into(),
                })
            } else {
                Ok(d)
            }
        };
        positive("heartbeat_interval", self.heartbeat_interval)?;
        positive("probe_timeout", self.probe_timeout)?;
        positive("down_after", self.down_after)?;
        positive("announce_interval", self.announce_interval)?;
        if self.probe_timeout >= self.heartbeat_interval {
            return Err(MembershipError::InvalidSettings {
                field: "probe_timeout",
                reason: format!(
                    "{:?} must be below heartbeat_interval ({:?})",
                    self.probe_timeout, self.heartbeat_interval
                ),
            });
        }
        let mut config = foca::Config::simple();
        config.probe_period = self.heartbeat_interval;
        config.probe_rtt = self.probe_timeout;
        config.suspect_to_down_after = self.down_after;
        config.max_packet_size = NonZeroUsize::new(64 * 1024).unwrap_or(NonZeroUsize::MIN);
        config.max_transmissions = NonZeroU8::new(10).unwrap_or(NonZeroU8::MIN);
        config.notify_down_members = true;
        let every = |frequency, n| foca::PeriodicParams {
            frequency,
            num_members: NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN),
        };
        config.periodic_announce = Some(every(self.announce_interval * 5, 1));
        config.periodic_announce_to_down_members = Some(every(self.announce_interval, 2));
        config.periodic_gossip = Some(every(Duration::from_millis(200), 3));
        Ok(config)
    }
}

/// Why membership could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    /// A setting cannot be used.
    #[error("invalid membership setting `{field}`: {reason}")]
    InvalidSettings {
        /// The field.
        field: &'static str,
        /// Why.
        reason: String,
    },
}

/// A running membership agent. Dropping it stops the agent abruptly (as a
/// crash would); [`leave`](Self::leave) tells the cluster first.
pub struct Membership {
    view: ClusterView,
    leave: Option<mpsc::Sender<oneshot::Sender<()>>>,
    task: JoinHandle<()>,
}

impl Membership {
    /// Starts the agent for the node behind `transport`, advertised at `addr`.
    pub fn start(
        transport: Arc<dyn Transport>,
        addr: NodeAddr,
        settings: MembershipSettings,
    ) -> Result<Self, MembershipError> {
        let config = settings.foca_config()?;
        let (view, leave, task) = driver::spawn(transport, addr, settings, config);
        Ok(Self {
            view,
            leave: Some(leave),
            task,
        })
    }

    /// This node's view of the cluster.
    pub fn view(&self) -> ClusterView {
        self.view.clone()
    }

    /// Announces that this node leaves, then stops.
    pub async fn leave(mut self) {
        if let Some(leave) = self.leave.take() {
            let (done, wait) = oneshot::channel();
            if leave.send(done).await.is_ok() {
                let _ = wait.await;
            }
        }
        self.task.abort();
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.task.abort();
    }
}
