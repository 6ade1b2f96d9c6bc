//! Lease settings, validated once at construction.

use std::time::Duration;

use crate::SettingsError;

/// How one owner uses one lease. Build it with [`LeaseSettings::builder`].
///
/// Defaults (`docs/architecture.md`, "Defaults"): ttl 30 s, heartbeat 3 s, operation
/// timeout 5 s, safety margin ttl / 10.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseSettings {
    lease_name: String,
    owner_name: String,
    ttl: Duration,
    heartbeat_interval: Duration,
    operation_timeout: Duration,
    safety_margin: Duration,
}

impl LeaseSettings {
    /// Default time to live of a lease record.
    pub const DEFAULT_TTL: Duration = Duration::from_secs(30);
    /// Default interval between renewals.
    pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(3);
    /// Default limit on one store call.
    pub const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_secs(5);

    /// Starts settings for `owner_name` using the lease `lease_name`.
    pub fn builder(
        lease_name: impl Into<String>,
        owner_name: impl Into<String>,
    ) -> LeaseSettingsBuilder {
        LeaseSettingsBuilder {
            lease_name: lease_name.into(),
            owner_name: owner_name.into(),
            ttl: Self::DEFAULT_TTL,
            heartbeat_interval: Self::DEFAULT_HEARTBEAT_INTERVAL,
            operation_timeout: Self::DEFAULT_OPERATION_TIMEOUT,
            safety_margin: None,
        }
    }

    /// The name of the lease record in the store.
    pub fn lease_name(&self) -> &str {
        &self.lease_name
    }

    /// Who this handle acquires the lease for (a node or pod name).
    pub fn owner_name(&self) -> &str {
        &self.owner_name
    }

    /// How long the store keeps the lease for its holder after a renewal.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// How often the holder renews.
    pub fn heartbeat_interval(&self) -> Duration {
        self.heartbeat_interval
    }

    /// How long one store call may take before it counts as failed.
    pub fn operation_timeout(&self) -> Duration {
        self.operation_timeout
    }

    /// How much earlier than the store the holder gives the lease up.
    ///
    /// The holder believes in its lease until `start of the last successful
    /// renew request + ttl - safety_margin`; the margin absorbs clock-rate drift
    /// between the holder and whoever judges expiry (invariant I2).
    pub fn safety_margin(&self) -> Duration {
        self.safety_margin
    }

    /// The same settings for another owner, e.g. to build a contender in tests.
    pub fn with_owner(&self, owner_name: impl Into<String>) -> Result<Self, SettingsError> {
        let mut next = self.clone();
        next.owner_name = owner_name.into();
        next.validate()?;
        Ok(next)
    }

    /// The same timing for another lease, e.g. a singleton's next to the
    /// coordinator's.
    pub fn with_name(&self, lease_name: impl Into<String>) -> Result<Self, SettingsError> {
        let mut next = self.clone();
        next.lease_name = lease_name.into();
        next.validate()?;
        Ok(next)
    }

    fn validate(&self) -> Result<(), SettingsError> {
        check_name("lease_name", &self.lease_name)?;
        check_name("owner_name", &self.owner_name)?;
        if self.ttl.is_zero() {
            return Err(SettingsError::new("ttl", "0s", "must be positive"));
        }
        if self.heartbeat_interval.is_zero() || self.heartbeat_interval >= self.ttl / 2 {
            return Err(SettingsError::new(
                "heartbeat_interval",
                format!("{:?}", self.heartbeat_interval),
                format!("must be positive and below ttl / 2 ({:?})", self.ttl / 2),
            ));
        }
        if self.safety_margin.is_zero() || self.safety_margin >= self.ttl / 2 {
            return Err(SettingsError::new(
                "safety_margin",
                format!("{:?}", self.safety_margin),
                format!("must be positive and below ttl / 2 ({:?})", self.ttl / 2),
            ));
        }
        // A renew started one heartbeat after the last must be able to finish
        // before the holder's validity deadline, or the lease flaps.
        let budget = self.ttl - self.safety_margin - self.heartbeat_interval;
        if self.operation_timeout.is_zero() || self.operation_timeout >= budget {
            return Err(SettingsError::new(
                "operation_timeout",
                format!("{:?}", self.operation_timeout),
                format!(
                    "must be positive and below ttl - safety_margin - heartbeat_interval ({budget:?})"
                ),
            ));
        }
        Ok(())
    }
}

fn check_name(field: &'static str, value: &str) -> Result<(), SettingsError> {
    if value.trim().is_empty() {
        return Err(SettingsError::new(
            field,
            format!("{value:?}"),
            "must not be empty",
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(SettingsError::new(
            field,
            format!("{value:?}"),
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// Builder for [`LeaseSettings`]; [`build`](Self::build) validates.
#[derive(Debug, Clone)]
#[must_use]
pub struct LeaseSettingsBuilder {
    lease_name: String,
    owner_name: String,
    ttl: Duration,
    heartbeat_interval: Duration,
    operation_timeout: Duration,
    safety_margin: Option<Duration>,
}

impl LeaseSettingsBuilder {
    /// Sets the time to live (default 30 s).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Sets the renew interval (default 3 s); must be below ttl / 2.
    pub fn heartbeat_interval(mut self, interval: Duration) -> Self {
        self.heartbeat_interval = interval;
        self
    }

    /// Sets the limit on one store call (default 5 s).
    pub fn operation_timeout(mut self, timeout: Duration) -> Self {
        self.operation_timeout = timeout;
        self
    }

    /// Sets the safety margin (default ttl / 10).
    pub fn safety_margin(mut self, margin: Duration) -> Self {
        self.safety_margin = Some(margin);
        self
    }

    /// Validates and returns the settings; the error names the bad field.
    pub fn build(self) -> Result<LeaseSettings, SettingsError> {
        let settings = LeaseSettings {
            safety_margin: self.safety_margin.unwrap_or(self.ttl / 10),
            lease_name: self.lease_name,
            owner_name: self.owner_name,
            ttl: self.ttl,
            heartbeat_interval: self.heartbeat_interval,
            operation_timeout: self.operation_timeout,
        };
        settings.validate()?;
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(builder: LeaseSettingsBuilder) -> &'static str {
        builder.build().unwrap_err().field()
    }

    #[test]
    fn defaults_are_valid() {
        let s = LeaseSettings::builder("l", "o").build().unwrap();
        assert_eq!(s.ttl(), Duration::from_secs(30));
        assert_eq!(s.heartbeat_interval(), Duration::from_secs(3));
        assert_eq!(s.operation_timeout(), Duration::from_secs(5));
        assert_eq!(s.safety_margin(), Duration::from_secs(3));
    }

    #[test]
    fn each_bad_field_is_named() {
        let b = || LeaseSettings::builder("l", "o");
        assert_eq!(field_of(LeaseSettings::builder("", "o")), "lease_name");
        assert_eq!(field_of(LeaseSettings::builder("l", "  ")), "owner_name");
        assert_eq!(field_of(LeaseSettings::builder("l\n", "o")), "lease_name");
        assert_eq!(field_of(b().ttl(Duration::ZERO)), "ttl");
        assert_eq!(
            field_of(b().heartbeat_interval(Duration::from_secs(15))),
            "heartbeat_interval"
        );
        assert_eq!(
            field_of(b().heartbeat_interval(Duration::ZERO)),
            "heartbeat_interval"
        );
        assert_eq!(
            field_of(b().operation_timeout(Duration::ZERO)),
            "operation_timeout"
        );
        assert_eq!(
            field_of(b().operation_timeout(Duration::from_secs(25))),
            "operation_timeout"
        );
        assert_eq!(field_of(b().safety_margin(Duration::ZERO)), "safety_margin");
    }

    #[test]
    fn error_message_names_field_and_value() {
        let err = LeaseSettings::builder("l", "o")
            .heartbeat_interval(Duration::from_secs(20))
            .build()
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("heartbeat_interval"), "{text}");
        assert!(text.contains("20s"), "{text}");
        assert_eq!(err.value(), "20s");
    }

    #[test]
    fn with_owner_keeps_timing() {
        let s = LeaseSettings::builder("l", "a").build().unwrap();
        let t = s.with_owner("b").unwrap();
        assert_eq!(t.owner_name(), "b");
        assert_eq!(t.ttl(), s.ttl());
        assert_eq!(s.with_owner("").unwrap_err().field(), "owner_name");
    }
}
