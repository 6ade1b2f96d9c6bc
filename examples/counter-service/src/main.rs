//! A sharded counter service: copy it and replace the entity.
//!
//! Nodes talk TCP; the coordinator can be guarded by a Kubernetes Lease; an
//! HTTP API tells and asks counters and reports `/status` and `/metrics`.
//! A cluster singleton keeps the top counters (`/top`), fed by every node.
//! SIGTERM hands this node's shards and singleton off before exiting.

mod config;
mod http;

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use cluster::{Membership, MembershipSettings, NodeAddr, TcpSettings, TcpTransport};
use lease_api::{Lease, LeaseSettings};
use lease_k8s::KubernetesLease;
use serde::{Deserialize, Serialize};
use sharding_coordinator::{ClusterSharding, ShardingSettings};
use sharding_core::EntityId;
use sharding_core::durable::{Durable, DurableEntity, InMemoryStateStore, StateStore, StoreError};

use config::{Config, LeaseKind};

/// A message to a counter.
#[derive(Debug, Serialize, Deserialize)]
pub enum CounterMsg {
    /// Add to counter `id`; replies with the new value.
    Add {
        /// The counter.
        id: String,
        /// How much to add.
        amount: i64,
    },
    /// Reply with the value of counter `id`.
    Get {
        /// The counter.
        id: String,
    },
}

impl CounterMsg {
    fn id(&self) -> &str {
        match self {
            CounterMsg::Add { id, .. } | CounterMsg::Get { id } => id,
        }
    }
}

/// The entity: a counter whose value lives in the state store (PostgreSQL
/// with `DATABASE_URL`, else this process's memory), saved before every
/// answer under the fencing token of its shard's allocation.
#[derive(Default)]
pub struct Counter;

impl DurableEntity for Counter {
    type State = i64;
    type Message = CounterMsg;
    type Reply = i64;

    fn apply(&mut self, value: &mut i64, msg: CounterMsg) -> i64 {
        if let CounterMsg::Add { amount, .. } = msg {
            *value += amount;
        }
        *value
    }
}

/// Where the counters' states live.
#[derive(Clone)]
pub enum CounterStore {
    /// This process's memory: lost with the process (development only).
    Memory(InMemoryStateStore),
    /// PostgreSQL: survives any node.
    Postgres(durable_postgres::PgStateStore),
}

impl StateStore for CounterStore {
    async fn claim(
        &self,
        entity: &EntityId,
        token: sharding_core::FencingToken,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            CounterStore::Memory(s) => s.claim(entity, token).await,
            CounterStore::Postgres(s) => s.claim(entity, token).await,
        }
    }

    async fn save(
        &self,
        entity: &EntityId,
        token: sharding_core::FencingToken,
        state: Vec<u8>,
    ) -> Result<(), StoreError> {
        match self {
            CounterStore::Memory(s) => s.save(entity, token, state).await,
            CounterStore::Postgres(s) => s.save(entity, token, state).await,
        }
    }
}

/// The entity the region runs.
pub type DurableCounter = Durable<Counter, CounterStore>;

/// A message to the top-counters singleton.
#[derive(Debug, Serialize, Deserialize)]
pub enum TopMsg {
    /// Counter `id` now has `value`.
    Record {
        /// The counter.
        id: String,
        /// Its value after the last add.
        value: i64,
    },
    /// Reply with the `n` largest counters.
    Top {
        /// How many.
        n: usize,
    },
}

/// One instance in the whole cluster: the latest value of every counter
/// added to through any node (in memory; a new instance starts empty).
#[derive(Default)]
pub struct TopCounters {
    values: std::collections::BTreeMap<String, i64>,
}

impl cluster_singleton::Singleton for TopCounters {
    type Message = TopMsg;
    type Reply = Vec<(String, i64)>;

    async fn handle(&mut self, msg: TopMsg) -> Vec<(String, i64)> {
        match msg {
            TopMsg::Record { id, value } => {
                // Reports from different nodes may arrive out of order; a
                // counter only grows (adds are positive here), so keep the
                // largest value seen.
                let v = self.values.entry(id).or_insert(value);
                *v = (*v).max(value);
                Vec::new()
            }
            TopMsg::Top { n } => {
                let mut all: Vec<(String, i64)> =
                    self.values.iter().map(|(k, v)| (k.clone(), *v)).collect();
                all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
                all.truncate(n);
                all
            }
        }
    }
}

/// Everything the HTTP handlers need.
pub struct Node {
    config: Config,
    region: sharding_core::ShardRegion<DurableCounter>,
    top: cluster_singleton::ClusterSingleton<TopCounters>,
    sharding: ClusterSharding,
    view: cluster::ClusterView,
    lease: Option<Arc<dyn Lease>>,
    transport: Arc<TcpTransport>,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// Differs on every start of the process (its start time in ns), so a
    /// poller of `/status` tells a restart from a pause.
    incarnation: u64,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let config = Config::parse();
    match run(config).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "counter-service failed");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> Result<(), Box<dyn std::error::Error>> {
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;
    let node = cluster::NodeId(config.node_id);
    let mut tcp = TcpSettings::new(config.cluster_name.clone(), node, config.cluster_listen);
    tcp.advertise = config.cluster_advertise.clone().map(NodeAddr);
    tcp.tls = config.tls()?;
    tcp.allowed_nodes = (config.allowed_nodes.as_ref())
        .map(|ids| ids.iter().copied().map(cluster::NodeId).collect());
    // No connection should stall, or wait to be redialled, longer than the
    // failure detector waits before declaring a node down.
    let down_after = Config::ms(config.membership_down_after_ms);
    tcp.unacked_timeout = tcp.unacked_timeout.min(down_after / 2);
    tcp.backoff_max = tcp.backoff_max.min(down_after / 2);
    if let Some(warning) = config.plaintext_warning() {
        for _ in 0..3 {
            tracing::warn!("INSECURE: {warning}");
        }
    }
    let transport = Arc::new(TcpTransport::bind(tcp).await?);
    let advertise = config
        .cluster_advertise
        .clone()
        .map_or_else(|| NodeAddr::from(transport.local_addr()), NodeAddr);
    let mut membership = MembershipSettings::new(config.seeds.clone());
    membership.heartbeat_interval = Config::ms(config.membership_heartbeat_ms);
    membership.probe_timeout = Config::ms(config.membership_heartbeat_ms / 2);
    membership.down_after = Config::ms(config.membership_down_after_ms);
    membership.announce_interval = Config::ms(config.membership_heartbeat_ms * 2);
    let membership = Membership::start(transport.clone(), advertise, membership)?;

    let lease = kubernetes_lease(&config, &config.lease_name).await?;
    let top_lease = kubernetes_lease(&config, &format!("{}-top", config.lease_name)).await?;

    let store = match &config.database_url {
        Some(_) if config.lease == LeaseKind::None => {
            // Without a lease the fencing token is a term that starts over
            // with the cluster: rows of an earlier run would fence every
            // counter off.
            return Err("DATABASE_URL needs LEASE=kubernetes: durable counters are fenced by the lease's token, which only a lease keeps growing across restarts".into());
        }
        Some(url) => {
            let store = durable_postgres::PgStateStore::connect(url, "counter").await?;
            tracing::info!(table = store.table(), "counters persist in PostgreSQL");
            CounterStore::Postgres(store)
        }
        None => {
            tracing::warn!(
                "no DATABASE_URL: counters live in this process's memory and are lost with it"
            );
            CounterStore::Memory(InMemoryStateStore::new())
        }
    };
    let sharding = ClusterSharding::new(transport.clone(), membership.view());
    let mut settings = ShardingSettings::new("counter", |m: &CounterMsg| EntityId::from(m.id()), {
        let store = store.clone();
        move |_: &EntityId| DurableCounter::new(Counter, store.clone())
    });
    settings.region.num_shards = config.num_shards;
    settings.lease = lease.clone();
    if config.membership_down_after_ms < 10_000 {
        // Fast test timings: scale the sharding timers with them.
        settings.region.retry_interval = Duration::from_millis(200);
        settings.region.ask_timeout = Duration::from_secs(2);
        settings.coordinator.recovery_timeout = Duration::from_millis(500);
        settings.coordinator.lease_retry_interval = Duration::from_millis(500);
        settings.coordinator.minority_lease_delay = Config::ms(config.lease_ttl_ms);
        settings.coordinator.retry_interval = Duration::from_millis(200);
        settings.tenure = sharding_core::TenureSettings {
            tenure: Duration::from_millis(1000),
            renew_interval: Duration::from_millis(200),
            clock_rate_bound: 0.01,
            margin: Duration::from_millis(100),
            bridge: Duration::from_millis(600),
        };
    }
    let region = sharding.start(settings)?;
    let mut top = cluster_singleton::SingletonSettings::new("top-counters", TopCounters::default);
    top.lease = top_lease;
    if config.membership_down_after_ms < 10_000 {
        top.lease_retry_interval = Duration::from_millis(500);
        top.minority_lease_delay = Config::ms(config.lease_ttl_ms);
    }
    if let Some(l) = &top.lease {
        top.stop_timeout = top.stop_timeout.min(l.settings().safety_margin() / 2);
    }
    let top =
        cluster_singleton::ClusterSingleton::start(transport.clone(), membership.view(), top)?;
    let node = Arc::new(Node {
        config: config.clone(),
        region,
        top,
        sharding,
        view: membership.view(),
        lease,
        transport,
        metrics,
        incarnation: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    });

    let listener = tokio::net::TcpListener::bind(config.http_listen).await?;
    tracing::info!(http = %listener.local_addr()?, node = config.node_id, "counter-service up");
    let app = http::router(Arc::clone(&node));
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    shutdown_signal().await;
    tracing::info!("shutting down: handing shards off");
    node.region.shutdown(Duration::from_secs(60)).await;
    // The coordinator goes passive and gives its lease back, so the next
    // leader takes over at once.
    node.sharding.shutdown(Duration::from_secs(10)).await;
    node.top.shutdown(Duration::from_secs(10)).await;
    server.abort();
    // Tell the cluster at once, rather than letting it time us out.
    membership.leave().await;
    tracing::info!("bye");
    Ok(())
}

/// The Kubernetes lease called `name`, if the service runs with one.
async fn kubernetes_lease(
    config: &Config,
    name: &str,
) -> Result<Option<Arc<dyn Lease>>, Box<dyn std::error::Error>> {
    match config.lease {
        LeaseKind::None => Ok(None),
        LeaseKind::Kubernetes => {
            let owner = match &config.lease_owner {
                Some(o) => o.clone(),
                None => KubernetesLease::owner_from_hostname()?,
            };
            let ttl = Config::ms(config.lease_ttl_ms);
            let settings = LeaseSettings::builder(name, owner)
                .ttl(ttl)
                .heartbeat_interval(Config::ms(config.lease_heartbeat_ms))
                .operation_timeout((ttl / 6).min(Duration::from_secs(5)))
                .safety_margin(ttl / 10)
                .build()?;
            let client = kube::Client::try_default().await?;
            Ok(Some(Arc::new(KubernetesLease::new(
                client,
                config.lease_namespace.clone(),
                settings,
            )?)))
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
