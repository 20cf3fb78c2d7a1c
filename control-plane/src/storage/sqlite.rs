//! SQLite: the embedded store of `ampora serve`.

use std::str::FromStr;
use std::sync::Arc;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use super::sql::sql_store;
use super::StoreOptions;

sql_store!(SqliteStore, sqlx::Sqlite, sqlx::sqlite::SqliteRow);

pub async fn connect(url: &str, options: &StoreOptions) -> Result<Arc<dyn Store>> {
    let connect = SqliteConnectOptions::from_str(url)
        .map_err(|e| StoreError::UnsupportedUrl(format!("{url}: {e}")))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        // WAL with NORMAL loses at most the last commits on power loss, never consistency.
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(options.acquire_timeout)
        .foreign_keys(true);
    // Each in-memory connection would be its own empty database.
    let max_connections = if url.contains(":memory:") {
        1
    } else {
        options.max_connections.min(4)
    };
    let pool = SqlitePoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(options.acquire_timeout)
        .connect_with(connect)
        .await
        .map_err(unavailable)?;
    sqlx::migrate!("../migrations/sqlite")
        .run(&pool)
        .await
        .map_err(|e| StoreError::Migration(e.to_string()))?;
    Ok(Arc::new(SqliteStore {
        pool,
        gzip_threshold: options.gzip_threshold,
    }))
}
