//! What a user implements.

use std::future::Future;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The user's actor: one instance in the whole cluster.
///
/// Messages and replies cross the network, so they are serde types. The
/// instance handles one message at a time.
pub trait Singleton: Send + 'static {
    /// What it receives.
    type Message: Serialize + DeserializeOwned + Send + 'static;
    /// What it answers (to `ask`; discarded for `tell`).
    type Reply: Serialize + DeserializeOwned + Send + 'static;

    /// Called once when the instance starts on this node, before any message.
    fn started(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Handles one message.
    fn handle(&mut self, message: Self::Message) -> impl Future<Output = Self::Reply> + Send;

    /// Called once when the instance stops here (leadership or lease lost,
    /// handover, shutdown); bounded by `SingletonSettings::stop_timeout`.
    fn stopped(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }
}
