//! Who a node is and where it can be reached.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A node's identity in the cluster. Ordered: the leader is the lowest `NodeId`
/// among the Up members of a node's view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node-{}", self.0)
    }
}

/// Where a node listens, as its transport understands it (`host:port` for TCP).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeAddr(pub String);

impl NodeAddr {
    /// The address as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for NodeAddr {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

impl From<std::net::SocketAddr> for NodeAddr {
    fn from(a: std::net::SocketAddr) -> Self {
        Self(a.to_string())
    }
}
