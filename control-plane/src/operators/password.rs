//! Passwords as argon2id PHC strings. Hashing is deliberately slow and takes ~19 MiB, so it
//! runs on blocking threads, a few at a time: a burst of sign-ins queues instead of starving
//! the API or the memory.

use std::sync::{Arc, OnceLock};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rand::RngCore;
use tokio::sync::Semaphore;

use super::OperatorError;

/// Hashes computed at once.
const CONCURRENT_HASHES: usize = 2;

/// The shortest and longest passwords accepted (the longest bounds the hashing work).
pub const MIN_PASSWORD: usize = 12;
pub const MAX_PASSWORD: usize = 1024;

#[derive(Clone)]
pub struct Passwords {
    permits: Arc<Semaphore>,
}

impl Default for Passwords {
    fn default() -> Self {
        Passwords {
            permits: Arc::new(Semaphore::new(CONCURRENT_HASHES)),
        }
    }
}

/// Refuses passwords too short to resist guessing or too long to hash cheaply.
pub fn check(password: &str) -> Result<(), OperatorError> {
    let length = password.chars().count();
    if !(MIN_PASSWORD..=MAX_PASSWORD).contains(&length) {
        return Err(OperatorError::Invalid(format!(
            "a password must be {MIN_PASSWORD} to {MAX_PASSWORD} characters"
        )));
    }
    Ok(())
}

impl Passwords {
    /// The argon2id hash of `password` (OWASP's parameters: 19 MiB, 2 passes), salted.
    pub async fn hash(&self, password: &str) -> Result<String, OperatorError> {
        let password = password.to_owned();
        self.run(move || {
            let mut salt = [0u8; 16];
            rand::rng().fill_bytes(&mut salt);
            let salt = SaltString::encode_b64(&salt)
                .map_err(|error| OperatorError::Hashing(error.to_string()))?;
            Argon2::default()
                .hash_password(password.as_bytes(), &salt)
                .map(|hash| hash.to_string())
                .map_err(|error| OperatorError::Hashing(error.to_string()))
        })
        .await
    }

    /// Whether `password` matches `stored`. With no stored hash (no such account) a dummy is
    /// checked, so an unknown name takes as long to refuse as a wrong password.
    pub async fn verify(&self, password: &str, stored: Option<&str>) -> bool {
        let password = password.to_owned();
        let stored = stored.map(str::to_owned);
        let checked = self
            .run(move || {
                let known = stored.is_some();
                let stored = stored.as_deref().unwrap_or_else(|| dummy_hash());
                let Ok(parsed) = PasswordHash::new(stored) else {
                    return Ok(false);
                };
                let matches = Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok();
                Ok(known && matches)
            })
            .await;
        checked.unwrap_or(false)
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, OperatorError> + Send + 'static,
    ) -> Result<T, OperatorError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|error| OperatorError::Hashing(error.to_string()))?;
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|error| OperatorError::Hashing(error.to_string()))?
    }
}

/// A hash of a password nobody knows, made once.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        let salt = SaltString::encode_b64(b"ampora-no-account").expect("a valid salt");
        Argon2::default()
            .hash_password(super::secrets::new_password().as_bytes(), &salt)
            .expect("argon2 hashes")
            .to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_are_argon2id_salted_and_verify() {
        let passwords = Passwords::default();
        let hash = passwords.hash("correct horse battery").await.unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert_ne!(hash, passwords.hash("correct horse battery").await.unwrap());
        assert!(passwords.verify("correct horse battery", Some(&hash)).await);
        assert!(!passwords.verify("wrong horse battery", Some(&hash)).await);
        assert!(!passwords.verify("correct horse battery", None).await);
        assert!(!passwords.verify("x", Some("not a hash")).await);
    }

    #[test]
    fn passwords_have_bounds() {
        assert!(check("short").is_err());
        assert!(check(&"x".repeat(MAX_PASSWORD + 1)).is_err());
        assert!(check("twelve chars").is_ok());
    }
}
