//! The wire messages between proxies and managers, and their channels.

use cluster::Channel;
use serde::{Deserialize, Serialize};

/// The two channels of a named singleton: its managers' and its proxies'.
///
/// Derived from a stable hash of the name (FNV-1a) so every node agrees
/// without configuration; in 64..1024, below the sharding channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SingletonChannels {
    /// Where managers listen.
    pub manager: Channel,
    /// Where proxies listen.
    pub proxy: Channel,
}

impl SingletonChannels {
    /// The channels of the singleton called `name`.
    pub fn of(name: &str) -> Self {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for b in name.bytes() {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        let base = 64 + u16::try_from(hash % 480).unwrap_or(0) * 2;
        Self {
            manager: Channel(base),
            proxy: Channel(base + 1),
        }
    }
}

/// To a node's singleton manager.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum ToManager {
    /// A proxy asks whether the instance runs here.
    Identify,
    /// A message for the instance, from a proxy; `ask` if a reply is wanted.
    Deliver {
        id: u64,
        ask: bool,
        payload: Vec<u8>,
    },
    /// A new leader asks the previous one to stop its instance first.
    HandOverToMe,
    /// The previous leader's answer: no instance runs there any more.
    HandOverDone,
}

/// To a node's proxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum ToProxy {
    /// The instance runs on the sender.
    Here,
    /// It does not: message `id` (if any) was not handled and may be sent
    /// elsewhere (at-most-once holds: it never reached the instance).
    NotHere { id: Option<u64> },
    /// A told message reached the instance.
    Delivered { id: u64 },
    /// The answer to an ask.
    Reply { id: u64, payload: Vec<u8> },
    /// The message could not be handled (it did not decode).
    Failed { id: u64, reason: String },
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Option<bytes::Bytes> {
    match postcard::to_stdvec(value) {
        Ok(v) => Some(bytes::Bytes::from(v)),
        Err(error) => {
            tracing::error!(%error, "singleton protocol message did not encode");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_are_stable_distinct_and_below_sharding() {
        let a = SingletonChannels::of("scheduler");
        assert_eq!(a, SingletonChannels::of("scheduler"));
        assert_ne!(a, SingletonChannels::of("billing"));
        assert_eq!(a.proxy.0, a.manager.0 + 1);
        assert!(a.manager.0 >= 64 && a.proxy.0 < 1024);
    }

    #[test]
    fn garbage_is_a_typed_error() {
        assert!(postcard::from_bytes::<ToManager>(&[0xff, 0xff]).is_err());
        assert!(postcard::from_bytes::<ToProxy>(&[]).is_err());
    }
}
