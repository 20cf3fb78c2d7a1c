//! The rules for accounts: what a username may be, and the first admin at first run.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use time::OffsetDateTime;

use super::{password, secrets, OperatorError, Passwords, Role};
use crate::audit::AuditContext;
use crate::storage::{NewAccount, Store};

/// The account made at first run.
pub const FIRST_ADMIN: &str = "admin";

/// Where the generated first password is written, in the data directory.
pub const INITIAL_PASSWORD_FILE: &str = "initial-admin-password";

/// Usernames are 1 to 64 of `a-z A-Z 0-9 . _ -`, so they are safe in paths and logs.
pub fn check_username(username: &str) -> Result<(), OperatorError> {
    let fine = !username.is_empty()
        && username.len() <= 64
        && username
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if fine {
        Ok(())
    } else {
        Err(OperatorError::Invalid(
            "a username must be 1 to 64 of a-z, A-Z, 0-9, '.', '_' and '-'".into(),
        ))
    }
}

/// What start-up found or did about the first account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FirstRun {
    /// Accounts exist: nothing done.
    AccountsExist,
    /// `admin` was created with the configured password.
    Created,
    /// `admin` was created with this generated password, also written to `file`.
    Generated { password: String, file: PathBuf },
}

/// When no account exists, creates `admin` with `configured` as its password, or a random one
/// written to `DATA_DIR/initial-admin-password` (mode 0600). Replicas starting together on one
/// database create it once.
pub async fn ensure_admin(
    store: &dyn Store,
    passwords: &Passwords,
    configured: Option<&str>,
    data_dir: &Path,
    now: OffsetDateTime,
) -> Result<FirstRun, OperatorError> {
    if store.count_accounts().await? > 0 {
        return Ok(FirstRun::AccountsExist);
    }
    let generated = configured.is_none().then(secrets::new_password);
    let password = configured.or(generated.as_deref()).unwrap_or_default();
    password::check(password)
        .map_err(|error| OperatorError::Invalid(format!("AMPORA_ADMIN_PASSWORD: {error}")))?;
    let account = NewAccount {
        username: FIRST_ADMIN.to_owned(),
        password_hash: passwords.hash(password).await?,
        role: Role::Admin,
    };
    if !store
        .create_first_account(&account, now, &AuditContext::system())
        .await?
    {
        return Ok(FirstRun::AccountsExist);
    }
    let Some(password) = generated else {
        return Ok(FirstRun::Created);
    };
    let file = data_dir.join(INITIAL_PASSWORD_FILE);
    write_private(&file, &password).map_err(|source| OperatorError::File {
        path: file.clone(),
        source,
    })?;
    Ok(FirstRun::Generated { password, file })
}

/// Writes `text` to a file only its owner may read.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    writeln!(file, "{text}")
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::storage::{self, StoreOptions};

    #[test]
    fn usernames_are_plain() {
        assert!(check_username("ada.lovelace_1-x").is_ok());
        for bad in ["", "a b", "ü", "a/b", &"x".repeat(65)] {
            assert!(check_username(bad).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn the_first_run_makes_admin_once() {
        let store = storage::connect("sqlite::memory:", StoreOptions::default())
            .await
            .unwrap();
        let passwords = Passwords::default();
        let dir = tempfile::tempdir().unwrap();
        let now = OffsetDateTime::now_utc();

        let first = ensure_admin(store.as_ref(), &passwords, None, dir.path(), now)
            .await
            .unwrap();
        let FirstRun::Generated { password, file } = first else {
            panic!("expected a generated password, got {first:?}");
        };
        assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), password);
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let admin = store.get_account(FIRST_ADMIN).await.unwrap().unwrap();
        assert_eq!(admin.role, Role::Admin);
        assert!(
            passwords
                .verify(&password, Some(&admin.password_hash))
                .await
        );

        let again = ensure_admin(
            store.as_ref(),
            &passwords,
            Some("another password"),
            dir.path(),
            now,
        )
        .await
        .unwrap();
        assert_eq!(again, FirstRun::AccountsExist);
        let admin = store.get_account(FIRST_ADMIN).await.unwrap().unwrap();
        assert!(
            passwords
                .verify(&password, Some(&admin.password_hash))
                .await
        );
    }

    #[tokio::test]
    async fn a_configured_password_is_used_and_checked() {
        let store = storage::connect("sqlite::memory:", StoreOptions::default())
            .await
            .unwrap();
        let passwords = Passwords::default();
        let dir = tempfile::tempdir().unwrap();
        let now = OffsetDateTime::now_utc();
        let short = ensure_admin(store.as_ref(), &passwords, Some("short"), dir.path(), now).await;
        assert!(matches!(short, Err(OperatorError::Invalid(_))), "{short:?}");
        let created = ensure_admin(
            store.as_ref(),
            &passwords,
            Some("configured password"),
            dir.path(),
            now,
        )
        .await
        .unwrap();
        assert_eq!(created, FirstRun::Created);
        assert!(!dir.path().join(INITIAL_PASSWORD_FILE).exists());
        let admin = store.get_account(FIRST_ADMIN).await.unwrap().unwrap();
        assert!(
            passwords
                .verify("configured password", Some(&admin.password_hash))
                .await
        );
    }
}
