//! What can go wrong in storage, shaped like what callers do about it.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database did not answer or refused the statement: try again later.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// A stored row does not decode into what was written.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// A stored column does not decode as its type.
    #[error("stored data is corrupt: {0}")]
    Undecodable(#[source] sqlx::Error),
    #[error("unsupported database url {0:?}: expected postgres:// or sqlite:")]
    UnsupportedUrl(String),
    #[error("cannot create the database directory {path}: {source}")]
    Directory {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("database migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("partition lease lost: another replica owns these agents now")]
    Fenced,
    /// A unique key is taken (e.g. a configuration name in its workspace).
    #[error("already exists: {0}")]
    Duplicate(String),
}

impl From<sqlx::Error> for StoreError {
    /// Rows that do not decode are corrupt; everything else (connection, I/O, TLS, pool
    /// timeouts, statements the server rejected, lock conflicts) is "try again later".
    fn from(error: sqlx::Error) -> Self {
        match error {
            sqlx::Error::ColumnDecode { .. }
            | sqlx::Error::Decode(_)
            | sqlx::Error::ColumnNotFound(_)
            | sqlx::Error::ColumnIndexOutOfBounds { .. }
            | sqlx::Error::TypeNotFound { .. } => StoreError::Undecodable(error),
            sqlx::Error::Database(ref database) if database.is_unique_violation() => {
                StoreError::Duplicate(database.message().to_owned())
            }
            other => StoreError::Unavailable(other),
        }
    }
}
