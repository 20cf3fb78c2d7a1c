//! PostgreSQL: the production store.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::Connection;

mod bulk;

use super::sql::sql_store;
use super::StoreOptions;

sql_store!(
    PostgresStore,
    sqlx::Postgres,
    sqlx::postgres::PgRow,
    " FOR UPDATE",
    bulk
);

/// How long a pooled connection may sit idle and still be used without a check.
const CHECK_AFTER_IDLE: Duration = Duration::from_secs(1);

pub async fn connect(url: &str, options: &StoreOptions) -> Result<Arc<dyn Store>> {
    let connect = PgConnectOptions::from_str(url)
        .map_err(|e| StoreError::UnsupportedUrl(format!("{url}: {e}")))?
        // Statements are prepared once per connection, often while the tables are still empty;
        // a generic plan made then (a sequential scan of a table that later holds millions of
        // rows) would stay. Planning each execution for its parameters costs little here: the
        // batch statements bind arrays, so their plans do not grow with the batch.
        .options([("plan_cache_mode", "force_custom_plan")]);
    let pool = PgPoolOptions::new()
        // A connection that has sat idle is checked before use, one in constant use is not: at
        // full rate an ingest round is one statement, and the check would double its round
        // trips. Should a busy connection break, its round fails and its agents re-sync.
        .test_before_acquire(false)
        .before_acquire(|connection, metadata| {
            Box::pin(async move {
                if metadata.idle_for >= CHECK_AFTER_IDLE {
                    connection.ping().await?;
                }
                Ok(true)
            })
        })
        .max_connections(options.max_connections)
        .acquire_timeout(options.acquire_timeout)
        .connect_with(connect)
        .await
        .map_err(unavailable)?;
    sqlx::migrate!("../migrations/postgres")
        .run(&pool)
        .await
        .map_err(|e| StoreError::Migration(e.to_string()))?;
    Ok(Arc::new(PostgresStore {
        pool,
        gzip_threshold: options.gzip_threshold,
    }))
}
