//! SQLite: the embedded store of `ampora serve`.

use std::str::FromStr;
use std::sync::Arc;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

mod bulk;

use super::sql::sql_store;
use super::StoreOptions;

sql_store!(SqliteStore, sqlx::Sqlite, sqlx::sqlite::SqliteRow, "", bulk);

pub async fn connect(url: &str, options: &StoreOptions) -> Result<Arc<dyn Store>> {
    let connect = SqliteConnectOptions::from_str(url)
        .map_err(|e| StoreError::UnsupportedUrl(format!("{url}: {e}")))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        // WAL with NORMAL loses at most the last commits on power loss, never consistency.
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(options.acquire_timeout)
        .foreign_keys(true);
    let in_memory = url.contains(":memory:") || url.contains("mode=memory");
    if !in_memory {
        // The file is created if missing; its directory too.
        if let Some(dir) = connect.get_filename().parent() {
            if !dir.as_os_str().is_empty() && !dir.exists() {
                std::fs::create_dir_all(dir).map_err(|e| {
                    StoreError::Unavailable(format!("creating {}: {e}", dir.display()))
                })?;
            }
        }
    }
    let pool = if in_memory {
        // An in-memory database lives as long as a connection to it: keep exactly one, forever.
        SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
    } else {
        // One writer at a time anyway; a few connections let reads run beside it (WAL).
        SqlitePoolOptions::new().max_connections(options.max_connections.clamp(1, 4))
    }
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
