//! Operators: local accounts with roles, their sessions, API tokens for automation, and the
//! guard on sign-in attempts.
//!
//! # Layout
//! - [`Role`] and [`Actor`]: what a caller may do, and who it is (as the audit log names it).
//! - [`password`]: argon2id hashing, a few at a time off the async threads.
//! - [`secrets`]: random session ids and API tokens, kept only as SHA-256; the CSRF token a
//!   session's id implies.
//! - [`rate_limit`]: sign-in attempts per account and per address, in bounded memory.
//! - [`accounts`]: the rules for accounts (names, passwords, the first admin at first run).
//!
//! The HTTP side (cookies, bearer tokens, the role each route wants) is `api::auth`.

pub mod accounts;
pub mod password;
pub mod rate_limit;
pub mod secrets;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use accounts::{ensure_admin, FirstRun};
pub use password::Passwords;
pub use rate_limit::LoginLimiter;

/// What a caller may do; each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads everything an operator sees.
    Viewer,
    /// Also changes configurations, assignments, rollouts and bootstrap tokens.
    Operator,
    /// Everything, including accounts, API tokens, certificates, settings and the audit log.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    /// Whether this role is allowed what `needed` is.
    pub fn allows(self, needed: Role) -> bool {
        self >= needed
    }
}

/// Who did something: an account (signed in), an API token, an agent enrolling with a
/// bootstrap token or renewing with its certificate, or the server itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    Account(String),
    ApiToken(String),
    BootstrapToken(i64),
    Agent(uuid::Uuid),
    System,
}

/// `account:NAME`, `api-token:ID`, `bootstrap-token:ID`, `agent:UID` or `system`: how the
/// audit log stores and filters actors.
impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Actor::Account(name) => write!(f, "account:{name}"),
            Actor::ApiToken(id) => write!(f, "api-token:{id}"),
            Actor::BootstrapToken(id) => write!(f, "bootstrap-token:{id}"),
            Actor::Agent(uid) => write!(f, "agent:{uid}"),
            Actor::System => f.write_str("system"),
        }
    }
}

/// The operators' side of the API's state: settings and the in-memory guards.
#[derive(Clone)]
pub struct Operators {
    /// A session lasts this long from sign-in.
    pub session_ttl: Duration,
    pub passwords: Passwords,
    pub limiter: Arc<LoginLimiter>,
}

impl Operators {
    pub fn new(session_ttl: Duration) -> Operators {
        Operators {
            session_ttl,
            passwords: Passwords::default(),
            limiter: Arc::new(LoginLimiter::default()),
        }
    }
}

impl Default for Operators {
    fn default() -> Self {
        Operators::new(crate::config::ControlPlaneConfig::default().session_ttl)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("{0}")]
    Invalid(String),
    #[error("password hashing failed: {0}")]
    Hashing(String),
    #[error("cannot write {path}: {source}")]
    File {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] crate::storage::StoreError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_include_the_ones_below() {
        assert!(Role::Admin.allows(Role::Operator));
        assert!(Role::Operator.allows(Role::Viewer));
        assert!(!Role::Viewer.allows(Role::Operator));
        assert!(!Role::Operator.allows(Role::Admin));
        for role in [Role::Viewer, Role::Operator, Role::Admin] {
            assert_eq!(Role::parse(role.as_str()), Some(role));
        }
        assert_eq!(Role::parse("root"), None);
    }

    #[test]
    fn actors_read_as_stored() {
        assert_eq!(Actor::Account("ada".into()).to_string(), "account:ada");
        assert_eq!(Actor::ApiToken("t1".into()).to_string(), "api-token:t1");
        assert_eq!(Actor::BootstrapToken(7).to_string(), "bootstrap-token:7");
        let uid = uuid::Uuid::nil();
        assert_eq!(
            Actor::Agent(uid).to_string(),
            "agent:00000000-0000-0000-0000-000000000000"
        );
        assert_eq!(Actor::System.to_string(), "system");
    }
}
