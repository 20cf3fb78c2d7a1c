//! PostgreSQL: the production store.

use std::str::FromStr;
use std::sync::Arc;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

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

pub async fn connect(url: &str, options: &StoreOptions) -> Result<Arc<dyn Store>> {
    let connect = PgConnectOptions::from_str(url)
        .map_err(|e| StoreError::UnsupportedUrl(format!("{url}: {e}")))?
        // Statements are prepared once per connection, often while the tables are still empty;
        // a generic plan made then (a sequential scan of a table that later holds millions of
        // rows) would stay. Planning each execution for its parameters costs little here: the
        // batch statements bind arrays, so their plans do not grow with the batch.
        .options([("plan_cache_mode", "force_custom_plan")]);
    let pool = PgPoolOptions::new()
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
