//! What a [`TcpTransport`](super::TcpTransport) is configured with, and the
//! check that refuses a setting that cannot work.

use std::net::SocketAddr;
use std::time::Duration;

use crate::transport::tls::{TlsError, TlsSettings};
use crate::{NodeAddr, NodeId};

/// Settings of a [`TcpTransport`](super::TcpTransport).
#[derive(Debug, Clone)]
pub struct TcpSettings {
    /// Only peers presenting the same cluster name are accepted.
    pub cluster_name: String,
    /// This node.
    pub node: NodeId,
    /// Where to listen (`127.0.0.1:0` picks a free port).
    pub listen: SocketAddr,
    /// Mutual TLS between nodes (default none: plaintext, for development
    /// and tests on loopback only; without it anyone who reaches the port
    /// can join the cluster).
    pub tls: Option<TlsSettings>,
    /// Largest frame sent or accepted, in bytes (default 4 MiB).
    pub max_frame_size: usize,
    /// Frames queued per peer while it is slow or unreachable (default 10 000).
    pub send_queue: usize,
    /// Envelopes buffered per channel before received ones are dropped (default 65 536).
    pub inbox_capacity: usize,
    /// Limit on connecting plus handshaking, TLS included (default 5 s).
    pub handshake_timeout: Duration,
    /// Inbound connections still in their handshake; more are closed at
    /// once (default 64).
    pub max_pending_handshakes: usize,
    /// Established inbound connections from one peer (default 4: one in
    /// use, the rest for reconnects while a dead one times out).
    pub max_connections_per_peer: usize,
    /// Established inbound connections in all (default 1024).
    pub max_inbound_connections: usize,
    /// An inbound connection that carries nothing this long is closed; an
    /// outbound one closes itself after half of it without a frame and is
    /// opened again by the next frame (default 60 s).
    pub idle_timeout: Duration,
    /// A connection whose sent data stays unacknowledged this long is
    /// dropped by the kernel and dialled again (Linux `TCP_USER_TIMEOUT`;
    /// default 5 s). Bounds how long traffic stalls behind TCP's
    /// retransmission backoff after a network fault heals.
    pub unacked_timeout: Duration,
    /// First reconnect delay, doubled after each failure (default 100 ms).
    pub backoff_min: Duration,
    /// Largest reconnect delay (default 5 s).
    pub backoff_max: Duration,
    /// The address peers should dial to reach this node, sent in the
    /// handshake. Required when `listen` is a wildcard such as `0.0.0.0`;
    /// defaults to the bound address.
    pub advertise: Option<NodeAddr>,
    /// The node ids that may connect (`None`: any). A StatefulSet knows its
    /// ordinals: naming them keeps a holder of a valid certificate for
    /// another id (a lower one would lead every view) out of the cluster.
    /// A hello from any other id is refused ([`crate::RefusalReason::NotAllowed`]),
    /// and this node does not dial one either.
    pub allowed_nodes: Option<std::collections::BTreeSet<NodeId>>,
}

impl TcpSettings {
    /// Defaults for `node` of `cluster_name` listening on `listen`.
    pub fn new(cluster_name: impl Into<String>, node: NodeId, listen: SocketAddr) -> Self {
        Self {
            cluster_name: cluster_name.into(),
            node,
            listen,
            tls: None,
            max_frame_size: 4 * 1024 * 1024,
            send_queue: 10_000,
            inbox_capacity: 65_536,
            handshake_timeout: Duration::from_secs(5),
            max_pending_handshakes: 64,
            max_connections_per_peer: 4,
            max_inbound_connections: 1024,
            idle_timeout: Duration::from_secs(60),
            unacked_timeout: Duration::from_secs(5),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            advertise: None,
            allowed_nodes: None,
        }
    }

    /// Whether `node` may connect to this node.
    pub(crate) fn allows(&self, node: NodeId) -> bool {
        self.allowed_nodes
            .as_ref()
            .is_none_or(|allowed| allowed.contains(&node))
    }

    pub(crate) fn validate(&self) -> Result<(), BindError> {
        let bad = |field: &'static str, value: String, reason: &'static str| {
            Err(BindError::Setting {
                field,
                value,
                reason,
            })
        };
        if self.max_frame_size < 1024 {
            return bad(
                "max_frame_size",
                self.max_frame_size.to_string(),
                "must be at least 1024",
            );
        }
        for (field, value) in [
            ("send_queue", self.send_queue),
            ("inbox_capacity", self.inbox_capacity),
            ("max_pending_handshakes", self.max_pending_handshakes),
            ("max_connections_per_peer", self.max_connections_per_peer),
            ("max_inbound_connections", self.max_inbound_connections),
        ] {
            if value == 0 {
                return bad(field, "0".into(), "must be at least 1");
            }
        }
        for (field, value) in [
            ("handshake_timeout", self.handshake_timeout),
            ("idle_timeout", self.idle_timeout),
            ("unacked_timeout", self.unacked_timeout),
            ("backoff_min", self.backoff_min),
        ] {
            if value.is_zero() {
                return bad(field, format!("{value:?}"), "must be above zero");
            }
        }
        if let Some(allowed) = &self.allowed_nodes {
            if !allowed.contains(&self.node) {
                return bad(
                    "allowed_nodes",
                    format!("{allowed:?}"),
                    "must contain this node's own id",
                );
            }
        }
        if self.backoff_max < self.backoff_min {
            return bad(
                "backoff_max",
                format!("{:?}", self.backoff_max),
                "must not be below backoff_min",
            );
        }
        Ok(())
    }
}

/// Why a transport could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BindError {
    /// A setting cannot work.
    #[error("setting `{field}` = {value}: {reason}")]
    Setting {
        /// The field of [`TcpSettings`].
        field: &'static str,
        /// Its value.
        value: String,
        /// What it must be.
        reason: &'static str,
    },
    /// The TLS files could not be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The listener could not be bound.
    #[error("binding {addr}: {source}")]
    Io {
        /// The listen address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}
