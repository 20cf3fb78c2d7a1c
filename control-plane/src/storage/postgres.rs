//! PostgreSQL: the production store.

use std::sync::Arc;

use sqlx::postgres::PgPoolOptions;

use super::sql::sql_store;
use super::StoreOptions;

sql_store!(
    PostgresStore,
    sqlx::Postgres,
    sqlx::postgres::PgRow,
    " FOR UPDATE",
    "SELECT partition FROM partition_leases \
     WHERE partition = $1 AND owner = $2 AND epoch = $3 AND expires_at > $4 FOR KEY SHARE"
);

pub async fn connect(url: &str, options: &StoreOptions) -> Result<Arc<dyn Store>> {
    let pool = PgPoolOptions::new()
        .max_connections(options.max_connections)
        .acquire_timeout(options.acquire_timeout)
        .connect(url)
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
