//! The in-memory [`StateStore`]: the same token rules as a database, for
//! tests and the in-process suite, optionally with a history of every
//! write attempt so a checker can tell whether an acknowledged write was
//! lost.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use super::{StateStore, StoreError};
use crate::{EntityId, FencingToken};

/// One save attempt, as the store saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreWrite {
    /// The entity.
    pub entity: EntityId,
    /// The writer's token.
    pub token: FencingToken,
    /// The state it tried to save.
    pub state: Vec<u8>,
    /// Whether it landed (false: fenced or unavailable).
    pub accepted: bool,
}

#[derive(Default)]
struct Inner {
    rows: HashMap<EntityId, (FencingToken, Option<Vec<u8>>)>,
    /// Every save attempt, when asked for ([`InMemoryStateStore::with_history`]).
    history: Option<Vec<StoreWrite>>,
    fenced: usize,
    unavailable: bool,
    /// Saves of these entities under a token up to the one given wait
    /// (a writer paused on its way to the database).
    held: HashMap<EntityId, (FencingToken, Arc<Notify>)>,
    waiting: usize,
}

/// Rows in memory behind a lock; clones share them.
#[derive(Clone, Default)]
pub struct InMemoryStateStore {
    inner: Arc<Mutex<Inner>>,
}

impl InMemoryStateStore {
    /// An empty store (keeping only the rows: memory stays bounded by the
    /// number of entities).
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store that also records every save attempt (its memory
    /// grows with every write: for tests and the suite's checker).
    pub fn with_history() -> Self {
        let store = Self::default();
        store.lock().history = Some(Vec::new());
        store
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The saved state of `entity`, if any.
    pub fn state(&self, entity: &EntityId) -> Option<Vec<u8>> {
        self.lock().rows.get(entity).and_then(|(_, s)| s.clone())
    }

    /// The token in `entity`'s row, if it has one.
    pub fn token(&self, entity: &EntityId) -> Option<FencingToken> {
        self.lock().rows.get(entity).map(|(t, _)| *t)
    }

    /// Every save attempt so far, in order (empty unless made
    /// [`with_history`](Self::with_history)).
    pub fn history(&self) -> Vec<StoreWrite> {
        self.lock().history.clone().unwrap_or_default()
    }

    /// Save attempts refused for a higher token so far.
    pub fn fenced_writes(&self) -> usize {
        self.lock().fenced
    }

    /// From now on, saves of `entity` under the token its row holds now
    /// (or a lower one) wait until [`release`](Self::release): the write of
    /// an incarnation that paused on its way to the database. Saves under a
    /// newer token pass.
    pub fn hold(&self, entity: &EntityId) {
        let mut inner = self.lock();
        let token = inner.rows.get(entity).map(|(t, _)| *t).unwrap_or_default();
        inner
            .held
            .insert(entity.clone(), (token, Arc::new(Notify::new())));
    }

    /// Lets the held saves of `entity` proceed; each is then judged against
    /// the row as it is now.
    pub fn release(&self, entity: &EntityId) {
        if let Some((_, gate)) = self.lock().held.remove(entity) {
            gate.notify_waiters();
        }
    }

    /// Saves waiting in [`hold`](Self::hold) right now.
    pub fn held_saves(&self) -> usize {
        self.lock().waiting
    }

    /// Makes every operation fail with [`StoreError::Unavailable`] (a
    /// database that is down) or succeed again.
    pub fn set_available(&self, available: bool) {
        self.lock().unavailable = !available;
    }
}

impl StateStore for InMemoryStateStore {
    async fn claim(
        &self,
        entity: &EntityId,
        token: FencingToken,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let mut inner = self.lock();
        if inner.unavailable {
            return Err(StoreError::Unavailable(
                "in-memory store switched off".into(),
            ));
        }
        let row = inner.rows.entry(entity.clone()).or_insert((token, None));
        if row.0 > token {
            return Err(StoreError::Fenced {
                entity: entity.clone(),
                stored: row.0.to_string(),
                writer: token,
            });
        }
        row.0 = token;
        Ok(row.1.clone())
    }

    async fn save(
        &self,
        entity: &EntityId,
        token: FencingToken,
        state: Vec<u8>,
    ) -> Result<(), StoreError> {
        let gate = {
            let inner = self.lock();
            inner
                .held
                .get(entity)
                .filter(|(up_to, _)| token <= *up_to)
                .map(|(_, gate)| Arc::clone(gate))
        };
        if let Some(gate) = gate {
            let released = gate.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            // Registered before checking again: a release in between is not missed.
            if self.lock().held.contains_key(entity) {
                self.lock().waiting += 1;
                released.await;
                self.lock().waiting -= 1;
            }
        }
        let mut inner = self.lock();
        if inner.unavailable {
            return Err(StoreError::Unavailable(
                "in-memory store switched off".into(),
            ));
        }
        let stored = inner.rows.get(entity).map(|(t, _)| *t);
        let accepted = stored.is_none_or(|s| s <= token);
        if let Some(history) = &mut inner.history {
            history.push(StoreWrite {
                entity: entity.clone(),
                token,
                state: state.clone(),
                accepted,
            });
        }
        if !accepted {
            inner.fenced += 1;
            return Err(StoreError::Fenced {
                entity: entity.clone(),
                stored: stored.map(|s| s.to_string()).unwrap_or_default(),
                writer: token,
            });
        }
        inner.rows.insert(entity.clone(), (token, Some(state)));
        Ok(())
    }
}
