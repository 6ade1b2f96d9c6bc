//! PostgreSQL storage for durable entities ([`sharding_core::durable`]).
//!
//! One table per entity type (`durable_<type>`), one row per entity: the
//! entity id, the fencing token of the last incarnation that claimed it
//! (epoch and allocation), the state (postcard bytes) and when it changed.
//! A claim and a save are each a single `INSERT ... ON CONFLICT DO UPDATE
//! ... WHERE` statement whose condition is the token comparison, so the
//! database itself refuses a stale incarnation's write: no read-then-write
//! race between nodes, whatever their clocks or pauses.
//!
//! tokio-postgres (the maintained async driver of the rust-postgres
//! project) with the deadpool pool: a small dependency tree and plain SQL,
//! where sqlx would add a query layer and compile-time checks we do not
//! need for two statements.
//!
//! ```no_run
//! # async fn demo() -> Result<(), durable_postgres::PgStoreError> {
//! let store = durable_postgres::PgStateStore::connect(
//!     "postgres://app@db:5432/app",
//!     "counter",
//! )
//! .await?; // creates `durable_counter` if missing
//! # Ok(()) }
//! ```

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use sharding_core::durable::{StateStore, StoreError};
use sharding_core::{EntityId, FencingToken};

/// Why the store could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PgStoreError {
    /// The connection string does not parse.
    #[error("database URL: {0}")]
    Url(String),
    /// The entity type's name cannot name a table.
    #[error(
        "entity type `{0}` cannot name a table: use lowercase letters, digits and `_` (at most 48)"
    )]
    TypeName(String),
    /// The pool could not be built.
    #[error("connection pool: {0}")]
    Pool(String),
    /// The table could not be created (database down, no permission).
    #[error("creating table `{table}`: {detail}")]
    Migrate {
        /// The table.
        table: String,
        /// The database's answer.
        detail: String,
    },
}

/// Durable entity states of one entity type in PostgreSQL.
#[derive(Clone)]
pub struct PgStateStore {
    pool: Pool,
    table: String,
    claim_sql: String,
    save_sql: String,
}

impl std::fmt::Debug for PgStateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStateStore")
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

/// The table of `type_name`: `durable_<type_name>`.
pub fn table_name(type_name: &str) -> Result<String, PgStoreError> {
    let ok = !type_name.is_empty()
        && type_name.len() <= 48
        && type_name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(format!("durable_{type_name}"))
    } else {
        Err(PgStoreError::TypeName(type_name.to_owned()))
    }
}

/// The table, for users who run migrations themselves.
pub fn create_table_sql(table: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {table} (
            entity_id TEXT PRIMARY KEY,
            token_epoch BIGINT NOT NULL,
            token_allocation BIGINT NOT NULL,
            state BYTEA,
            updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )"
    )
}

impl PgStateStore {
    /// Connects a pool (16 connections) to `url` and creates the table of
    /// `type_name` if it is missing.
    pub async fn connect(url: &str, type_name: &str) -> Result<Self, PgStoreError> {
        let config: tokio_postgres::Config = url
            .parse()
            .map_err(|e: tokio_postgres::Error| PgStoreError::Url(e.to_string()))?;
        let manager = Manager::from_config(
            config,
            tokio_postgres::NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(16)
            .build()
            .map_err(|e| PgStoreError::Pool(e.to_string()))?;
        Self::with_pool(pool, type_name).await
    }

    /// Uses `pool` and creates the table of `type_name` if it is missing.
    pub async fn with_pool(pool: Pool, type_name: &str) -> Result<Self, PgStoreError> {
        let table = table_name(type_name)?;
        let migrate = |detail: String| PgStoreError::Migrate {
            table: table.clone(),
            detail,
        };
        let client = pool.get().await.map_err(|e| migrate(e.to_string()))?;
        // Nodes starting together would race on CREATE TABLE IF NOT
        // EXISTS (duplicate type or key errors): one at a time, per table.
        let migration = format!(
            "BEGIN; SELECT pg_advisory_xact_lock(hashtext('{table}')); {}; COMMIT;",
            create_table_sql(&table)
        );
        if let Err(e) = client.batch_execute(&migration).await {
            // Leave the pooled connection usable.
            let _ = client.batch_execute("ROLLBACK").await;
            return Err(migrate(db_error(&e)));
        }
        let fenced_unless_newer = format!(
            "WHERE ({table}.token_epoch, {table}.token_allocation) \
             <= (EXCLUDED.token_epoch, EXCLUDED.token_allocation)"
        );
        let claim_sql = format!(
            "INSERT INTO {table} (entity_id, token_epoch, token_allocation) VALUES ($1, $2, $3) \
             ON CONFLICT (entity_id) DO UPDATE SET token_epoch = EXCLUDED.token_epoch, \
             token_allocation = EXCLUDED.token_allocation {fenced_unless_newer} RETURNING state"
        );
        let save_sql = format!(
            "INSERT INTO {table} (entity_id, token_epoch, token_allocation, state) \
             VALUES ($1, $2, $3, $4) \
             ON CONFLICT (entity_id) DO UPDATE SET token_epoch = EXCLUDED.token_epoch, \
             token_allocation = EXCLUDED.token_allocation, state = EXCLUDED.state, \
             updated_at = now() {fenced_unless_newer}"
        );
        Ok(Self {
            pool,
            table,
            claim_sql,
            save_sql,
        })
    }

    /// The table this store writes.
    pub fn table(&self) -> &str {
        &self.table
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool
            .get()
            .await
            .map_err(|e| StoreError::Unavailable(format!("{}: {e}", self.table)))
    }

    /// The token stored for `entity`, for an error message.
    async fn stored_token(&self, client: &deadpool_postgres::Object, entity: &EntityId) -> String {
        let sql = format!(
            "SELECT token_epoch, token_allocation FROM {} WHERE entity_id = $1",
            self.table
        );
        match client.query_opt(&sql, &[&entity.as_str()]).await {
            Ok(Some(row)) => {
                let (epoch, allocation): (i64, i64) = (row.get(0), row.get(1));
                format!("epoch-{epoch}/{allocation}")
            }
            _ => "a higher token".into(),
        }
    }
}

/// The token as two `BIGINT`s (epochs stay below 2^48; an allocation number
/// above `i64::MAX` would take longer than the universe to reach).
fn columns(entity: &EntityId, token: FencingToken) -> Result<(i64, i64), StoreError> {
    let convert = |v: u64| {
        i64::try_from(v).map_err(|_| StoreError::Corrupt {
            entity: entity.clone(),
            detail: format!("token {token} does not fit a BIGINT"),
        })
    };
    Ok((convert(token.epoch.0)?, convert(token.allocation)?))
}

fn unavailable(table: &str, e: tokio_postgres::Error) -> StoreError {
    StoreError::Unavailable(format!("{table}: {}", db_error(&e)))
}

/// The database's own message and code when it answered, else the error.
fn db_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

impl StateStore for PgStateStore {
    async fn claim(
        &self,
        entity: &EntityId,
        token: FencingToken,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let (epoch, allocation) = columns(entity, token)?;
        let client = self.client().await?;
        let row = client
            .query_opt(&self.claim_sql, &[&entity.as_str(), &epoch, &allocation])
            .await
            .map_err(|e| unavailable(&self.table, e))?;
        match row {
            Some(row) => row
                .try_get::<_, Option<Vec<u8>>>(0)
                .map_err(|e| StoreError::Corrupt {
                    entity: entity.clone(),
                    detail: e.to_string(),
                }),
            None => Err(StoreError::Fenced {
                entity: entity.clone(),
                stored: self.stored_token(&client, entity).await,
                writer: token,
            }),
        }
    }

    async fn save(
        &self,
        entity: &EntityId,
        token: FencingToken,
        state: Vec<u8>,
    ) -> Result<(), StoreError> {
        let (epoch, allocation) = columns(entity, token)?;
        let client = self.client().await?;
        let written = client
            .execute(
                &self.save_sql,
                &[&entity.as_str(), &epoch, &allocation, &state],
            )
            .await
            .map_err(|e| unavailable(&self.table, e))?;
        if written == 1 {
            Ok(())
        } else {
            tracing::warn!(table = %self.table, %entity, %token, "stale write refused by the database");
            Err(StoreError::Fenced {
                entity: entity.clone(),
                stored: self.stored_token(&client, entity).await,
                writer: token,
            })
        }
    }
}
