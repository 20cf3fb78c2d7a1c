//! Random secrets (session ids, API tokens, generated passwords) and how they are kept: only
//! their SHA-256, so a copy of the database signs no one in.

use rand::distr::{Alphanumeric, SampleString};
use rand::RngCore;

use crate::remote_config::sha256_hex;

/// Prefix of API tokens, so a leaked one is recognisable (e.g. by secret scanners).
const API_TOKEN_PREFIX: &str = "ampora_";

/// 32 random bytes as lowercase hex.
fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    // ThreadRng is a CSPRNG seeded from the operating system.
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// A new session id (the cookie's value).
pub fn new_session_id() -> String {
    random_hex()
}

/// A new API token, shown once.
pub fn new_api_token() -> String {
    format!("{API_TOKEN_PREFIX}{}", random_hex())
}

/// A password for the first admin when none is configured.
pub fn new_password() -> String {
    Alphanumeric.sample_string(&mut rand::rng(), 24)
}

/// How a session id or API token is stored and looked up.
pub fn hash(secret: &str) -> String {
    sha256_hex(secret.as_bytes())
}

/// The CSRF token of a session: derived from its id, so it needs no storage, and tells
/// nothing about the id. Unsafe requests with the session cookie must send it in
/// `X-CSRF-Token`; a page of another site can read neither the cookie nor this.
pub fn csrf_token(session_id: &str) -> String {
    sha256_hex(format!("ampora-csrf:{session_id}").as_bytes())
}

/// Compares without an early exit, so the time taken tells nothing about where they differ.
pub fn same(given: &str, expected: &str) -> bool {
    given.len() == expected.len()
        && given
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_fresh_and_kept_hashed() {
        let (a, b) = (new_session_id(), new_session_id());
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert!(new_api_token().starts_with("ampora_"));
        assert_ne!(hash(&a), a);
        assert_eq!(hash(&a), hash(&a));
        assert_eq!(new_password().len(), 24);
    }

    #[test]
    fn the_csrf_token_follows_the_session() {
        let id = new_session_id();
        assert!(same(&csrf_token(&id), &csrf_token(&id)));
        assert!(!same(&csrf_token(&id), &csrf_token(&new_session_id())));
        assert!(!same("", &csrf_token(&id)));
    }
}
