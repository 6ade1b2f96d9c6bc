//! The identity foca gossips about: a node, its address, and its incarnation.

use serde::{Deserialize, Serialize};

use crate::{NodeAddr, NodeId};

/// A member as SWIM knows it. `generation` grows on every restart and every
/// rejoin after being declared down, because SWIM treats a down identity as
/// final: only a newer identity of the same node can come back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct MemberId {
    pub(crate) node: NodeId,
    pub(crate) addr: NodeAddr,
    pub(crate) generation: u64,
}

impl foca::Identity for MemberId {
    type Addr = NodeId;

    fn renew(&self) -> Option<Self> {
        Some(Self {
            generation: self.generation + 1,
            ..self.clone()
        })
    }

    fn addr(&self) -> NodeId {
        self.node
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.generation > adversary.generation
    }
}
