//! What a singleton needs to start, validated.

use std::sync::Arc;
use std::time::Duration;

use lease_api::Lease;

use crate::Singleton;
use crate::manager::SingletonObserver;

/// A setting that cannot work; names the field and the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid singleton setting `{field}` = {value}: {why}")]
pub struct SettingsError {
    /// The field.
    pub field: &'static str,
    /// Its value, rendered.
    pub value: String,
    /// Why it is refused.
    pub why: &'static str,
}

/// How each node's proxy reaches the singleton.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxySettings {
    /// Messages kept while no instance is known (and sent but not yet
    /// confirmed); beyond it `tell` and `ask` fail with `BufferFull`.
    pub buffer_size: usize,
    /// How often the proxy asks the leader whether the instance runs there,
    /// while it knows of none.
    pub identify_interval: Duration,
    /// How long an `ask` waits for its answer (and a `tell` for its
    /// delivery to be confirmed, before it counts as dropped).
    pub ask_timeout: Duration,
}

impl Default for ProxySettings {
    fn default() -> Self {
        Self {
            buffer_size: 10_000,
            identify_interval: Duration::from_millis(500),
            ask_timeout: Duration::from_secs(5),
        }
    }
}

/// Everything needed to start a singleton on a node.
pub struct SingletonSettings<S: Singleton> {
    /// Its name: the same on every node; it picks the channels.
    pub name: String,
    /// Builds the instance when this node starts running it.
    pub factory: Arc<dyn Fn() -> S + Send + Sync>,
    /// With a lease, only the leader holding it runs the instance (I7).
    pub lease: Option<Arc<dyn Lease>>,
    /// How long `stopped` may take before the instance is dropped anyway.
    /// With a lease it must end before the store could give the lease to
    /// another node: below the lease's safety margin.
    pub stop_timeout: Duration,
    /// How often a leader retries acquiring the lease.
    pub lease_retry_interval: Duration,
    /// With a lease: how long a leader on the minority side of a partition
    /// leaves the lease to the majority before asking for it again; keep it
    /// at least the lease's ttl (see the coordinator's setting of the same
    /// name).
    pub minority_lease_delay: Duration,
    /// How often a new leader asks the previous one to hand over.
    pub handover_retry_interval: Duration,
    /// The proxy's settings.
    pub proxy: ProxySettings,
    /// Receives start and stop events (tests and the multinode harness).
    pub observer: Option<SingletonObserver>,
}

impl<S: Singleton> SingletonSettings<S> {
    /// Defaults: no lease, stop timeout 2 s, lease retry 5 s, minority lease
    /// delay 30 s (the default lease ttl), handover retry 1 s, the proxy's
    /// defaults.
    pub fn new(name: impl Into<String>, factory: impl Fn() -> S + Send + Sync + 'static) -> Self {
        Self {
            name: name.into(),
            factory: Arc::new(factory),
            lease: None,
            stop_timeout: Duration::from_secs(2),
            lease_retry_interval: Duration::from_secs(5),
            minority_lease_delay: Duration::from_secs(30),
            handover_retry_interval: Duration::from_secs(1),
            proxy: ProxySettings::default(),
            observer: None,
        }
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let bad = |field, value: String, why| Err(SettingsError { field, value, why });
        if self.name.is_empty() {
            return bad("name", "\"\"".into(), "must not be empty");
        }
        for (field, d) in [
            ("lease_retry_interval", self.lease_retry_interval),
            ("handover_retry_interval", self.handover_retry_interval),
            ("proxy.identify_interval", self.proxy.identify_interval),
            ("proxy.ask_timeout", self.proxy.ask_timeout),
        ] {
            if d.is_zero() {
                return bad(field, format!("{d:?}"), "must be positive");
            }
        }
        if self.proxy.buffer_size == 0 {
            return bad("proxy.buffer_size", "0".into(), "must be positive");
        }
        if let Some(lease) = &self.lease {
            let margin = lease.settings().safety_margin();
            if self.stop_timeout >= margin {
                return bad(
                    "stop_timeout",
                    format!("{:?}", self.stop_timeout),
                    "must be below the lease's safety margin, so an instance that lost the lease has stopped before anyone else can hold it",
                );
            }
        }
        Ok(())
    }
}
