//! Durable entities: state loaded when an incarnation starts and saved
//! after every message, each write carrying the fencing token of the shard
//! allocation the incarnation runs under.
//!
//! A lease and shard tenure keep one *running* writer per entity, but a
//! process that wakes from a pause, or a write already on its way, can still
//! reach storage after its tenure ended. So the store compares tokens: an
//! incarnation first *claims* its entity's row (raising the row's token to
//! its own, refused if the row holds a higher one), and every save succeeds
//! only while the row's token is not above the writer's. Once a newer
//! incarnation has claimed the row, nothing an older one writes lands: the
//! store refuses it ([`StoreError::Fenced`]), the older incarnation refuses
//! every later message, and its caller gets an error, never a false success.
//! An acknowledged message is one whose state was saved.
//!
//! ```
//! use sharding_core::durable::{Durable, DurableEntity, InMemoryStateStore};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Add(i64);
//!
//! struct Counter;
//!
//! impl DurableEntity for Counter {
//!     type State = i64;
//!     type Message = Add;
//!     type Reply = i64;
//!     fn apply(&mut self, state: &mut i64, Add(n): Add) -> i64 {
//!         *state += n;
//!         *state
//!     }
//! }
//!
//! let store = InMemoryStateStore::new();
//! // The factory given to `ShardingSettings::new`:
//! let factory = move |_: &sharding_core::EntityId| Durable::new(Counter, store.clone());
//! # let _ = factory;
//! ```

mod memory;

use std::future::Future;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::entity::EntityContext;
use crate::{Entity, EntityId, FencingToken};

pub use memory::{InMemoryStateStore, StoreWrite};

/// An entity whose state lives in a [`StateStore`]. `apply` changes the
/// state in memory; the adapter [`Durable`] saves it before replying.
pub trait DurableEntity: Send + 'static {
    /// The stored state (one row per entity); `Default` for a new entity.
    type State: Serialize + DeserializeOwned + Default + Clone + Send + Sync + 'static;
    /// What the entity receives.
    type Message: Serialize + DeserializeOwned + Send + 'static;
    /// What it answers when the new state is saved.
    type Reply: Serialize + DeserializeOwned + Send + 'static;

    /// Applies `message` to `state` and returns the reply. Runs on a copy:
    /// if the save fails, the entity keeps the state it had.
    fn apply(&mut self, state: &mut Self::State, message: Self::Message) -> Self::Reply;
}

/// Why a store refused or failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The row holds a higher token: a newer incarnation owns the entity.
    #[error("write to `{entity}` under {writer} fenced: the store holds {stored}")]
    Fenced {
        /// The entity.
        entity: EntityId,
        /// The token in the store, when known.
        stored: String,
        /// The writer's token.
        writer: FencingToken,
    },
    /// The store could not be reached or failed; nothing was written.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The stored state does not decode as this entity's state.
    #[error("stored state of `{entity}` is unreadable: {detail}")]
    Corrupt {
        /// The entity.
        entity: EntityId,
        /// Why.
        detail: String,
    },
}

/// Storage for one entity type's states, one row per entity, guarded by
/// fencing tokens (see the module docs for the two operations' contract).
pub trait StateStore: Send + Sync + 'static {
    /// Raises the row's token to `token` (creating the row if missing) and
    /// returns the saved state, if any; [`StoreError::Fenced`] if the row
    /// holds a higher token.
    fn claim(
        &self,
        entity: &EntityId,
        token: FencingToken,
    ) -> impl Future<Output = Result<Option<Vec<u8>>, StoreError>> + Send;

    /// Saves `state` if the row's token is not above `token`, in one
    /// conditional write; [`StoreError::Fenced`] otherwise.
    fn save(
        &self,
        entity: &EntityId,
        token: FencingToken,
        state: Vec<u8>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// What a durable entity answers instead of its reply when the state could
/// not be saved: the message was not acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum DurableError {
    /// This incarnation was fenced off by a newer one; it refuses every
    /// message until it stops. Retry: the next attempt reaches the new home.
    #[error("fenced: {0}")]
    Fenced(String),
    /// The store failed or could not be reached; nothing was saved.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The stored state does not decode.
    #[error("stored state unreadable: {0}")]
    Corrupt(String),
}

impl From<StoreError> for DurableError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Fenced { .. } => DurableError::Fenced(e.to_string()),
            StoreError::Unavailable(detail) => DurableError::Unavailable(detail),
            StoreError::Corrupt { .. } => DurableError::Corrupt(e.to_string()),
        }
    }
}

/// Decodes a stored state that must be all of `bytes` (a state of another
/// type may decode from a prefix).
fn decode_state<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    match postcard::take_from_bytes(bytes) {
        Ok((state, [])) => Ok(state),
        Ok((_, rest)) => Err(format!("{} bytes left over", rest.len())),
        Err(e) => Err(e.to_string()),
    }
}

/// Runs a [`DurableEntity`] as an [`Entity`]: claims the row when the
/// incarnation starts, saves after every message, replies only once saved.
pub struct Durable<D: DurableEntity, S: StateStore> {
    entity: D,
    store: Arc<S>,
    context: Option<EntityContext>,
    state: Option<D::State>,
    /// Set once fenced: this incarnation never writes again.
    fenced: Option<DurableError>,
}

impl<D: DurableEntity, S: StateStore> Durable<D, S> {
    /// `entity` with its state in `store`.
    pub fn new(entity: D, store: impl Into<Arc<S>>) -> Self {
        Self {
            entity,
            store: store.into(),
            context: None,
            state: None,
            fenced: None,
        }
    }

    /// Claims the row and decodes its state (default when never saved).
    async fn load(&mut self) -> Result<(), DurableError> {
        let Some(context) = &self.context else {
            return Err(DurableError::Unavailable("entity not started".into()));
        };
        match self.store.claim(&context.id, context.token).await {
            Ok(bytes) => {
                let state = match bytes {
                    None => D::State::default(),
                    Some(bytes) => decode_state::<D::State>(&bytes).map_err(|detail| {
                        DurableError::from(StoreError::Corrupt {
                            entity: context.id.clone(),
                            detail,
                        })
                    })?,
                };
                self.state = Some(state);
                Ok(())
            }
            Err(error) => Err(self.failed(error)),
        }
    }

    /// Turns a store error into the reply, remembering a fence for good.
    fn failed(&mut self, error: StoreError) -> DurableError {
        let fenced = matches!(error, StoreError::Fenced { .. });
        let reply = DurableError::from(error);
        if fenced {
            metrics::counter!("sharding_durable_fenced_writes_total").increment(1);
            tracing::warn!(error = %reply, "durable entity fenced off by a newer incarnation; it refuses every further message");
            self.fenced = Some(reply.clone());
        } else {
            tracing::warn!(error = %reply, "durable entity state not loaded or saved; message not acknowledged");
        }
        reply
    }
}

impl<D: DurableEntity, S: StateStore> Entity for Durable<D, S>
where
    D::State: Send,
{
    type Message = D::Message;
    type Reply = Result<D::Reply, DurableError>;

    async fn started_in(&mut self, context: &EntityContext) {
        self.context = Some(context.clone());
        // A failure here is retried on the first message.
        let _ = self.load().await;
    }

    async fn handle(&mut self, message: D::Message) -> Result<D::Reply, DurableError> {
        if let Some(fenced) = &self.fenced {
            return Err(fenced.clone());
        }
        if self.state.is_none() {
            self.load().await?;
        }
        let (Some(state), Some(context)) = (&self.state, &self.context) else {
            return Err(DurableError::Unavailable("state not loaded".into()));
        };
        let mut next = state.clone();
        let reply = self.entity.apply(&mut next, message);
        let bytes = postcard::to_stdvec(&next)
            .map_err(|e| DurableError::Corrupt(format!("state does not encode: {e}")))?;
        let (id, token) = (context.id.clone(), context.token);
        match self.store.save(&id, token, bytes).await {
            Ok(()) => {
                self.state = Some(next);
                Ok(reply)
            }
            Err(error) => Err(self.failed(error)),
        }
    }
}
