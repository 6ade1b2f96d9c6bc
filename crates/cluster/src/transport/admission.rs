//! Who may hold a connection to this node, and how many: the caps that keep
//! strangers and misbehaving peers from exhausting memory or file handles,
//! and the reasons (counted) a connection was refused.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::NodeId;

/// Why an inbound connection was refused before it could carry messages.
/// Counted per reason in [`TcpTransport::refused`](super::TcpTransport::refused)
/// and the `cluster_handshake_refused_total{reason}` metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RefusalReason {
    /// Too many connections had not finished their handshake.
    TooManyPending,
    /// The handshake did not finish within the handshake timeout.
    Timeout,
    /// The TLS handshake failed: no client certificate, one not from the
    /// cluster's CA, an expired one, or a peer speaking plaintext.
    Tls,
    /// The peer's certificate does not carry the identity it claimed.
    Identity,
    /// The hello was not a hello (undecodable or larger than a hello may be).
    BadHello,
    /// Another protocol version.
    ProtocolVersion,
    /// Another cluster name.
    ClusterName,
    /// The peer already holds as many connections as one peer may.
    TooManyForPeer,
    /// This node already holds as many inbound connections as it may.
    TooManyConnections,
    /// The node id is not in the settings' allow-list
    /// ([`crate::TcpSettings::allowed_nodes`]).
    NotAllowed,
}

impl RefusalReason {
    /// Every reason, in the order of their counters.
    pub const ALL: [RefusalReason; 10] = [
        Self::TooManyPending,
        Self::Timeout,
        Self::Tls,
        Self::Identity,
        Self::BadHello,
        Self::ProtocolVersion,
        Self::ClusterName,
        Self::TooManyForPeer,
        Self::TooManyConnections,
        Self::NotAllowed,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TooManyPending => "too_many_pending",
            Self::Timeout => "timeout",
            Self::Tls => "tls",
            Self::Identity => "identity",
            Self::BadHello => "bad_hello",
            Self::ProtocolVersion => "protocol_version",
            Self::ClusterName => "cluster_name",
            Self::TooManyForPeer => "too_many_for_peer",
            Self::TooManyConnections => "too_many_connections",
            Self::NotAllowed => "not_allowed",
        }
    }

    /// Its counter: the declaration order, which `ALL` follows.
    fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for RefusalReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The caps and the refusal counters of one node.
pub(crate) struct Admission {
    pending: Arc<Semaphore>,
    per_peer: usize,
    total: usize,
    established: Arc<Mutex<Established>>,
    refused: [AtomicU64; RefusalReason::ALL.len()],
}

#[derive(Default)]
struct Established {
    total: usize,
    by_peer: HashMap<NodeId, usize>,
}

/// An established inbound connection's place in the caps; freed on drop.
pub(crate) struct PeerSlot {
    peer: NodeId,
    established: Arc<Mutex<Established>>,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut e = self.established.lock().unwrap_or_else(|e| e.into_inner());
        e.total = e.total.saturating_sub(1);
        if let Some(n) = e.by_peer.get_mut(&self.peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                e.by_peer.remove(&self.peer);
            }
        }
    }
}

impl Admission {
    pub(crate) fn new(max_pending: usize, per_peer: usize, total: usize) -> Self {
        Self {
            pending: Arc::new(Semaphore::new(max_pending)),
            per_peer,
            total,
            established: Arc::default(),
            refused: Default::default(),
        }
    }

    /// A place among the connections still shaking hands, if one is free.
    pub(crate) fn pending(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.pending).try_acquire_owned().ok()
    }

    /// A place for an established connection from `peer`, within both caps.
    pub(crate) fn establish(&self, peer: NodeId) -> Result<PeerSlot, RefusalReason> {
        let mut e = self.established.lock().unwrap_or_else(|e| e.into_inner());
        if e.total >= self.total {
            return Err(RefusalReason::TooManyConnections);
        }
        let n = e.by_peer.entry(peer).or_insert(0);
        if *n >= self.per_peer {
            return Err(RefusalReason::TooManyForPeer);
        }
        *n += 1;
        e.total += 1;
        Ok(PeerSlot {
            peer,
            established: Arc::clone(&self.established),
        })
    }

    pub(crate) fn count(&self, reason: RefusalReason) {
        self.refused[reason.index()].fetch_add(1, Ordering::Relaxed);
        metrics::counter!("cluster_handshake_refused_total", "reason" => reason.as_str())
            .increment(1);
    }

    pub(crate) fn refused(&self, reason: RefusalReason) -> u64 {
        self.refused[reason.index()].load(Ordering::Relaxed)
    }

    /// Established inbound connections right now.
    pub(crate) fn established(&self) -> usize {
        self.established
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_hold_and_free_on_drop() {
        let a = Admission::new(1, 2, 3);
        let p = a.pending().expect("one pending place");
        assert!(a.pending().is_none());
        drop(p);
        assert!(a.pending().is_some());

        let s1 = a.establish(NodeId(1)).expect("first");
        let _s2 = a.establish(NodeId(1)).expect("second");
        assert_eq!(
            a.establish(NodeId(1)).err(),
            Some(RefusalReason::TooManyForPeer)
        );
        let _s3 = a.establish(NodeId(2)).expect("another peer");
        assert_eq!(
            a.establish(NodeId(3)).err(),
            Some(RefusalReason::TooManyConnections)
        );
        drop(s1);
        assert_eq!(a.established(), 2);
        assert!(a.establish(NodeId(1)).is_ok());
    }

    #[test]
    fn every_reason_has_its_own_counter() {
        let a = Admission::new(1, 1, 1);
        for (i, reason) in RefusalReason::ALL.iter().enumerate() {
            for _ in 0..=i {
                a.count(*reason);
            }
        }
        for (i, reason) in RefusalReason::ALL.iter().enumerate() {
            assert_eq!(a.refused(*reason), i as u64 + 1, "{reason}");
        }
    }
}
