//! Kubernetes lease figures for `cargo xtask bench`: takeover by a watching
//! standby, handover on release, and the API calls a standby makes. On a
//! real kube-apiserver when `KUBEBUILDER_ASSETS` is set, else on the emulator.

use std::sync::Arc;
use std::time::Duration;

use lease_api::{Lease, LeaseSettings, Observation};
use lease_k8s::KubernetesLease;
use lease_k8s::emulator::ApiServer;
use lease_k8s::envtest::{EnvTest, TcpProxy};
use tokio::time::Instant;

/// What the figures were measured on.
pub struct Figures {
    /// "kube-apiserver" or "emulator".
    pub server: &'static str,
    /// Takeover by a watching standby, from the silent holder's last renew, in ttls.
    pub takeover_ttl: f64,
    /// Release by the holder -> a watching standby holds it, in seconds.
    pub handover_s: f64,
    /// The ttl used.
    pub ttl_s: f64,
    /// GET/LIST calls per minute by a watching standby (emulator counters).
    pub standby_polls_per_min: f64,
    /// Watch requests the standby opened in that minute window.
    pub standby_watches: f64,
}

fn settings(name: &str, owner: &str, ttl: Duration) -> Option<LeaseSettings> {
    LeaseSettings::builder(name, owner)
        .ttl(ttl)
        .heartbeat_interval(ttl / 10)
        .operation_timeout(Duration::from_millis(500))
        .safety_margin(Duration::from_millis(200))
        .build()
        .ok()
}

enum Server {
    Real(EnvTest, Vec<TcpProxy>),
    Emulated(ApiServer),
}

impl Server {
    fn client(&mut self, owner: &str) -> Option<kube::Client> {
        match self {
            Server::Real(env, proxies) => {
                let proxy = env.proxy().ok()?;
                let client = env.client_via(proxy.url()).ok();
                proxies.push(proxy);
                client
            }
            Server::Emulated(api) => {
                let url = api.endpoint(owner).ok()?.url.parse().ok()?;
                kube::Client::try_from(kube::Config::new(url)).ok()
            }
        }
    }

    fn lease(&mut self, name: &str, owner: &str, ttl: Duration) -> Option<Arc<KubernetesLease>> {
        let client = self.client(owner)?;
        KubernetesLease::new(client, "default", settings(name, owner, ttl)?)
            .ok()
            .map(Arc::new)
    }
}

async fn observed_free(lease: &KubernetesLease, limit: Duration) -> bool {
    let mut rx = lease.observed();
    tokio::time::timeout(limit, rx.wait_for(|o| *o == Observation::Free))
        .await
        .is_ok_and(|r| r.is_ok())
}

/// Holder stops renewing (its handle dropped, as a `kill -9` would); a
/// watching standby takes over. Measured from the holder's last renew,
/// which is its validity deadline minus (ttl - margin).
async fn takeover(server: &mut Server, ttl: Duration, round: u32) -> Option<f64> {
    let name = format!("bench-takeover-{round}");
    let holder = server.lease(&name, "holder", ttl)?;
    let standby = server.lease(&name, "standby", ttl)?;
    if !matches!(holder.acquire().await, Ok(true)) {
        return None;
    }
    standby.observe();
    tokio::time::sleep(ttl / 2 + ttl / 7).await;
    let valid_until = holder.valid_until()?;
    let last_renew = valid_until - (ttl - Duration::from_millis(200));
    drop(holder);
    if !observed_free(&standby, ttl * 3).await {
        return None;
    }
    if !matches!(standby.acquire().await, Ok(true)) {
        return None;
    }
    Some((Instant::now() - last_renew).as_secs_f64() / ttl.as_secs_f64())
}

async fn handover(server: &mut Server, ttl: Duration, round: u32) -> Option<f64> {
    let name = format!("bench-handover-{round}");
    let holder = server.lease(&name, "holder", ttl)?;
    let standby = server.lease(&name, "standby", ttl)?;
    if !matches!(holder.acquire().await, Ok(true)) {
        return None;
    }
    standby.observe();
    let mut rx = standby.observed();
    let seen = tokio::time::timeout(ttl, rx.wait_for(|o| matches!(o, Observation::Held { .. })));
    if !seen.await.is_ok_and(|r| r.is_ok()) {
        return None;
    }
    let start = Instant::now();
    if !matches!(holder.release().await, Ok(true)) {
        return None;
    }
    if !observed_free(&standby, ttl).await {
        return None;
    }
    if !matches!(standby.acquire().await, Ok(true)) {
        return None;
    }
    Some(start.elapsed().as_secs_f64())
}

/// GET/LIST calls a watching standby makes while another holds the lease.
async fn standby_calls(window: Duration) -> Option<(f64, f64)> {
    let api = ApiServer::new();
    let mut server = Server::Emulated(api.clone());
    let ttl = Duration::from_secs(2);
    let holder = server.lease("bench-standby", "holder", ttl)?;
    let standby = server.lease("bench-standby", "standby", ttl)?;
    if !matches!(holder.acquire().await, Ok(true)) {
        return None;
    }
    standby.observe();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = api.counts("standby");
    tokio::time::sleep(window).await;
    let after = api.counts("standby");
    let per_min = 60.0 / window.as_secs_f64();
    let polls = (after.get + after.list - before.get - before.list) as f64 * per_min;
    Some((polls, after.watch as f64))
}

/// Median of `rounds` runs of each figure.
pub fn measure(quick: bool) -> Option<Figures> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    rt.block_on(async move {
        let (mut server, name) = match EnvTest::start_from_env().await {
            Ok(Some(env)) => (Server::Real(env, Vec::new()), "kube-apiserver"),
            Ok(None) => (Server::Emulated(ApiServer::new()), "emulator"),
            Err(e) => {
                eprintln!("KUBEBUILDER_ASSETS is set but the API server did not start: {e}");
                return None;
            }
        };
        let ttl = Duration::from_secs(2);
        let rounds = if quick { 3 } else { 7 };
        let mut takeovers = Vec::new();
        let mut handovers = Vec::new();
        for round in 0..rounds {
            takeovers.push(takeover(&mut server, ttl, round).await?);
            handovers.push(handover(&mut server, ttl, round).await?);
        }
        let window = if quick {
            Duration::from_secs(3)
        } else {
            Duration::from_secs(10)
        };
        let (polls, watches) = standby_calls(window).await?;
        Some(Figures {
            server: name,
            takeover_ttl: median(&mut takeovers),
            handover_s: median(&mut handovers),
            ttl_s: ttl.as_secs_f64(),
            standby_polls_per_min: polls,
            standby_watches: watches,
        })
    })
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}
