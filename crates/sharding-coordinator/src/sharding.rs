//! `ClusterSharding`: the one entry point that starts a region and its
//! coordinator for an entity type on a node.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cluster::{ClusterView, Transport};
use sharding_core::protocol::TypeChannels;
use sharding_core::{Entity, Epoch, RegionConfig, ShardRegion, TenureSuspender, TypeName};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::coordinator::{Coordinator, Parts};
use crate::{CoordinatorStatus, Phase, ShardingSettings};

/// Why an entity type could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    /// The type already runs on this node.
    #[error("entity type `{0}` is already started on this node")]
    AlreadyStarted(TypeName),
    /// Two type names map to the same channels; rename one.
    #[error("entity types `{0}` and `{1}` hash to the same channel; rename one")]
    ChannelClash(TypeName, TypeName),
    /// `num_shards` must be positive.
    #[error("invalid setting `num_shards` = 0 for `{0}`: must be positive")]
    ZeroShards(TypeName),
    /// The shard tenure settings cannot work (checked only with a lease).
    #[error("entity type `{0}`: {1}")]
    InvalidTenure(TypeName, sharding_core::TenureError),
}

/// A probe on one coordinator.
#[derive(Clone)]
pub struct CoordinatorHandle {
    status: watch::Receiver<CoordinatorStatus>,
}

impl CoordinatorHandle {
    /// The current status.
    pub fn status(&self) -> CoordinatorStatus {
        *self.status.borrow()
    }

    /// Whether this coordinator is active now.
    pub fn is_active(&self) -> bool {
        self.status.borrow().phase == Phase::Active
    }

    /// A watch of status changes.
    pub fn watch(&self) -> watch::Receiver<CoordinatorStatus> {
        self.status.clone()
    }
}

struct Started {
    channels: TypeChannels,
    coordinator: CoordinatorHandle,
    stop: mpsc::Sender<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

/// Sharding on one node: start entity types, get their regions.
///
/// ```no_run
/// # use std::sync::Arc;
/// # use cluster::{ClusterView, Transport};
/// # use sharding_coordinator::{ClusterSharding, ShardingSettings};
/// # use sharding_core::{Entity, EntityId};
/// # #[derive(serde::Serialize, serde::Deserialize)] struct Add { id: String, n: i64 }
/// # struct Counter(i64);
/// # impl Entity for Counter { type Message = Add; type Reply = i64;
/// #   async fn handle(&mut self, m: Add) -> i64 { self.0 += m.n; self.0 } }
/// # async fn demo(transport: Arc<dyn Transport>, view: ClusterView) {
/// let sharding = ClusterSharding::new(transport, view);
/// let counters = sharding
///     .start(ShardingSettings::new(
///         "counter",
///         |m: &Add| EntityId::from(&m.id),
///         |_id: &EntityId| Counter(0),
///     ))
///     .unwrap();
/// let total = counters.ask(Add { id: "a".into(), n: 2 }).await.unwrap();
/// # }
/// ```
pub struct ClusterSharding {
    transport: Arc<dyn Transport>,
    view: ClusterView,
    types: Mutex<HashMap<TypeName, Started>>,
}

impl ClusterSharding {
    /// Sharding for the node behind `transport`, following `view`.
    pub fn new(transport: Arc<dyn Transport>, view: ClusterView) -> Self {
        Self {
            transport,
            view,
            types: Mutex::new(HashMap::new()),
        }
    }

    /// Starts the region and the coordinator of an entity type on this node.
    pub fn start<E: Entity>(
        &self,
        settings: ShardingSettings<E>,
    ) -> Result<ShardRegion<E>, StartError> {
        let type_name = settings.type_name.clone();
        if settings.region.num_shards == 0 {
            return Err(StartError::ZeroShards(type_name));
        }
        // Tenure only with a lease (I5); without one the path is unchanged (I6).
        let tenure = settings.lease.is_some().then_some(settings.tenure);
        if let (Some(tenure), Some(lease)) = (&tenure, &settings.lease) {
            tenure
                .validate()
                .and_then(|()| {
                    let l = lease.settings();
                    tenure.fits_under(l.ttl(), l.safety_margin(), l.heartbeat_interval())
                })
                .map_err(|e| StartError::InvalidTenure(type_name.clone(), e))?;
        }
        let channels = TypeChannels::of(&type_name);
        let mut types = self.types.lock().unwrap_or_else(|e| e.into_inner());
        if types.contains_key(&type_name) {
            return Err(StartError::AlreadyStarted(type_name));
        }
        if let Some((other, _)) = types.iter().find(|(_, s)| s.channels == channels) {
            return Err(StartError::ChannelClash(other.clone(), type_name));
        }
        // The region bridges its tenure on a suspension of its coordinator's
        // lease tenure, through this node's own handle of that lease.
        let suspender = tenure.and(settings.lease.clone()).map(|lease| {
            Arc::new(move |epoch: Epoch| {
                let lease = Arc::clone(&lease);
                Box::pin(async move {
                    matches!(
                        lease.suspend(lease_api::FencingToken::new(epoch.0)).await,
                        Ok(lease_api::Suspension::Suspended)
                    )
                }) as lease_api::BoxFuture<'static, bool>
            }) as TenureSuspender
        });
        let spawned = Coordinator::spawn(Parts {
            type_name: type_name.clone(),
            transport: Arc::clone(&self.transport),
            view: self.view.clone(),
            settings: settings.coordinator,
            lease: settings.lease,
            observer: settings.coordinator_observer,
            tenure,
        });
        let region = ShardRegion::start(
            RegionConfig {
                type_name: type_name.clone(),
                extractor: settings.extractor,
                factory: settings.factory,
                settings: settings.region,
                observer: settings.region_observer,
                tenure,
                suspender,
            },
            Arc::clone(&self.transport),
            self.view.clone(),
        );
        types.insert(
            type_name,
            Started {
                channels,
                coordinator: CoordinatorHandle {
                    status: spawned.status,
                },
                stop: spawned.stop,
                task: spawned.task,
            },
        );
        Ok(region)
    }

    /// The coordinator of `type_name` on this node.
    pub fn coordinator(&self, type_name: &TypeName) -> Option<CoordinatorHandle> {
        let types = self.types.lock().unwrap_or_else(|e| e.into_inner());
        types.get(type_name).map(|s| s.coordinator.clone())
    }

    /// This node's view of the cluster.
    pub fn view(&self) -> &ClusterView {
        &self.view
    }

    /// Stops every coordinator on this node for a graceful leave: each goes
    /// passive and gives its lease back, so the next leader acquires it at
    /// once instead of waiting a ttl for it to expire. Call it after the
    /// regions' [`ShardRegion::shutdown`] (their handoffs need the active
    /// coordinator) and before leaving the membership. Returns when every
    /// coordinator has stopped or `timeout` passed.
    pub async fn shutdown(&self, timeout: Duration) {
        let stops: Vec<_> = {
            let types = self.types.lock().unwrap_or_else(|e| e.into_inner());
            types.values().map(|s| s.stop.clone()).collect()
        };
        let all = async {
            for stop in stops {
                let (done, wait) = oneshot::channel();
                if stop.send(done).await.is_ok() {
                    let _ = wait.await;
                }
            }
        };
        if tokio::time::timeout(timeout, all).await.is_err() {
            tracing::warn!(?timeout, "coordinators did not all stop in time");
        }
    }
}

impl Drop for ClusterSharding {
    fn drop(&mut self) {
        let types = self.types.get_mut().unwrap_or_else(|e| e.into_inner());
        for started in types.values() {
            started.task.abort();
        }
    }
}
