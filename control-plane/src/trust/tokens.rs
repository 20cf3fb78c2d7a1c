//! Bootstrap tokens: 32 random bytes, shown once, stored only as their SHA-256. The prefix
//! marks a string as an Ampora bootstrap token (for secret scanners, and so that an agent's
//! unrelated `Authorization` header is not taken for a failed enrolment).

use base64::Engine as _;
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};

pub const PREFIX: &str = "ampbt_";

/// A new token and the hash stored for it.
pub struct NewToken {
    pub token: String,
    pub hash: String,
}

pub fn generate() -> NewToken {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system's randomness");
    let token = format!(
        "{PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let hash = hash(&token);
    NewToken { token, hash }
}

/// What is stored of a token: lowercase hex SHA-256. A token has 256 bits of entropy, so a
/// fast hash is enough (nothing to brute-force).
pub fn hash(token: &str) -> String {
    Sha256::digest(token.trim().as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Whether `credential` is shaped like one of our tokens.
pub fn looks_like_token(credential: &str) -> bool {
    credential.trim().starts_with(PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_unique_prefixed_and_hashed() {
        let one = generate();
        let two = generate();
        assert_ne!(one.token, two.token);
        assert!(looks_like_token(&one.token));
        assert!(!looks_like_token("Bearer abc"));
        assert_eq!(one.hash, hash(&one.token));
        assert_eq!(one.hash.len(), 64);
        assert!(!one.hash.contains(&one.token[PREFIX.len()..]));
    }
}
