//! The audit log: who changed what, when and from where, written in the same transaction as
//! the change, hash-chained so that an altered, inserted or deleted entry is found.
//!
//! # Layout
//! - [`AuditContext`]: who and from where (account or API token, address, request id); every
//!   state-changing storage method takes one.
//! - [`Change`]: what changed (action, object, old and new values without secrets), made by
//!   the constructors here so each action is named once.
//! - [`chain`]: the canonical encoding and hash of an entry, and [`chain::Verifier`], which
//!   walks the chain.
//! - [`retention`]: the background job that archives old entries and purges older ones.
//!
//! The chain itself is written by `storage::audit::append`, inside the caller's transaction:
//! the one-row chain head is updated first, which serialises writers (PostgreSQL row lock;
//! SQLite has one writer), so replicas writing at once still make one order.

pub mod chain;
pub mod retention;

use serde::Serialize;
use serde_json::{json, Value};
use time::OffsetDateTime;

use crate::operators::{Actor, Role};

/// Who made a change, and from where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditContext {
    pub actor: Actor,
    /// The client's address (IP), empty when unknown.
    pub address: String,
    /// The request's `x-request-id`, empty outside a request.
    pub request_id: String,
}

impl AuditContext {
    /// The server acting on its own (e.g. creating the first admin at start-up).
    pub fn system() -> AuditContext {
        AuditContext {
            actor: Actor::System,
            address: String::new(),
            request_id: String::new(),
        }
    }
}

/// What one state change did. Values never carry secrets: passwords, tokens and
/// configurations' text (which may hold credentials) appear as `"[redacted]"` or a hash.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub action: &'static str,
    pub object_type: &'static str,
    pub object_id: String,
    pub old_value: Option<Value>,
    pub new_value: Option<Value>,
}

/// Stands in for a secret's value in an entry.
pub const REDACTED: &str = "[redacted]";

impl Change {
    pub fn new(
        action: &'static str,
        object_type: &'static str,
        object_id: impl Into<String>,
        old_value: Option<Value>,
        new_value: Option<Value>,
    ) -> Change {
        Change {
            action,
            object_type,
            object_id: object_id.into(),
            old_value,
            new_value,
        }
    }

    pub fn account_created(username: &str, role: Role) -> Change {
        let new = json!({"username": username, "role": role.as_str(), "password": REDACTED});
        Change::new("account.create", "account", username, None, Some(new))
    }

    /// `old_role`/`new_role` when the role changed; `password` when it did.
    pub fn account_updated(
        username: &str,
        old_role: Role,
        new_role: Role,
        password: bool,
    ) -> Change {
        let mut old = json!({"role": old_role.as_str()});
        let mut new = json!({"role": new_role.as_str()});
        if password {
            old["password"] = json!(REDACTED);
            new["password"] = json!(REDACTED);
        }
        Change::new("account.update", "account", username, Some(old), Some(new))
    }

    pub fn account_deleted(username: &str, role: Role) -> Change {
        let old = json!({"username": username, "role": role.as_str()});
        Change::new("account.delete", "account", username, Some(old), None)
    }

    pub fn signed_in(username: &str) -> Change {
        Change::new("session.login", "account", username, None, None)
    }

    pub fn signed_out(username: &str) -> Change {
        Change::new("session.logout", "account", username, None, None)
    }

    pub fn api_token_created(
        id: &str,
        name: &str,
        role: Role,
        expires_at: Option<OffsetDateTime>,
    ) -> Change {
        let new = json!({
            "name": name,
            "role": role.as_str(),
            "expires_at": expires_at.map(|at| at.unix_timestamp()),
            "token": REDACTED,
        });
        Change::new("api_token.create", "api_token", id, None, Some(new))
    }

    pub fn api_token_deleted(id: &str, name: &str, role: Role) -> Change {
        let old = json!({"name": name, "role": role.as_str()});
        Change::new("api_token.delete", "api_token", id, Some(old), None)
    }
}

// === configurations, lint rules, assignments ===

impl Change {
    /// The draft's text is not recorded (it may hold credentials), only its SHA-256.
    pub fn configuration_created(
        id: i64,
        workspace: &str,
        name: &str,
        description: &str,
        labels: &std::collections::BTreeMap<String, String>,
        draft_sha256: &str,
    ) -> Change {
        let new = json!({
            "workspace": workspace,
            "name": name,
            "description": description,
            "labels": labels,
            "draft_sha256": draft_sha256,
            "row_version": 1,
        });
        Change::new(
            "configuration.create",
            "configuration",
            id.to_string(),
            None,
            Some(new),
        )
    }

    pub fn draft_updated(id: i64, old: (i64, &str), new: (i64, &str)) -> Change {
        Change::new(
            "configuration.draft_update",
            "configuration",
            id.to_string(),
            Some(json!({"row_version": old.0, "draft_sha256": old.1})),
            Some(json!({"row_version": new.0, "draft_sha256": new.1})),
        )
    }

    pub fn published(id: i64, version: i64, hash: &str) -> Change {
        Change::new(
            "configuration.publish",
            "configuration",
            id.to_string(),
            None,
            Some(json!({"version": version, "hash": hash})),
        )
    }

    /// `old` and `new` as `{enabled, severity, message, hint}` objects.
    pub fn lint_rule_set(workspace: &str, rule: &str, old: Option<Value>, new: Value) -> Change {
        Change::new(
            "lint_rule.update",
            "lint_rule",
            format!("{workspace}/{rule}"),
            old,
            Some(new),
        )
    }

    /// `target` as the API shows it (`{"instance_uid": …}` or `{"selector": …}`).
    pub fn assignment_created(
        id: i64,
        configuration_id: i64,
        version: i64,
        hash: &str,
        target: Value,
    ) -> Change {
        let new = json!({
            "configuration_id": configuration_id,
            "version": version,
            "hash": hash,
            "target": target,
        });
        Change::new(
            "assignment.create",
            "assignment",
            id.to_string(),
            None,
            Some(new),
        )
    }
}

// === agent trust: the CA, bootstrap tokens, agents' certificates ===

impl Change {
    /// A CA as the log shows it: the SHA-256 of its certificate, never its key.
    fn ca_value(id: i64, certificate_sha256: &str, not_after: OffsetDateTime) -> Value {
        json!({
            "ca_id": id,
            "certificate_sha256": certificate_sha256,
            "not_after": not_after.unix_timestamp(),
        })
    }

    pub fn ca_created(id: i64, certificate_sha256: &str, not_after: OffsetDateTime) -> Change {
        let new = Change::ca_value(id, certificate_sha256, not_after);
        Change::new("ca.create", "ca", id.to_string(), None, Some(new))
    }

    pub fn ca_rotated(
        old_id: i64,
        id: i64,
        certificate_sha256: &str,
        not_after: OffsetDateTime,
    ) -> Change {
        let new = Change::ca_value(id, certificate_sha256, not_after);
        Change::new(
            "ca.rotate",
            "ca",
            id.to_string(),
            Some(json!({"ca_id": old_id})),
            Some(new),
        )
    }

    pub fn bootstrap_token_created(
        id: i64,
        labels: &std::collections::BTreeMap<String, String>,
        expires_at: OffsetDateTime,
    ) -> Change {
        let new = json!({
            "labels": labels,
            "expires_at": expires_at.unix_timestamp(),
            "token": REDACTED,
        });
        Change::new(
            "bootstrap_token.create",
            "bootstrap_token",
            id.to_string(),
            None,
            Some(new),
        )
    }

    pub fn bootstrap_token_revoked(id: i64) -> Change {
        Change::new(
            "bootstrap_token.revoke",
            "bootstrap_token",
            id.to_string(),
            Some(json!({"state": "active"})),
            Some(json!({"state": "revoked"})),
        )
    }

    /// A certificate stored for an agent: `certificate.enrol` with a bootstrap token,
    /// `certificate.renew` without.
    pub fn certificate_issued(
        fingerprint: &str,
        instance_uid: uuid::Uuid,
        ca_id: i64,
        token_id: Option<i64>,
        labels: &std::collections::BTreeMap<String, String>,
        not_after: OffsetDateTime,
    ) -> Change {
        let new = json!({
            "instance_uid": instance_uid,
            "ca_id": ca_id,
            "bootstrap_token_id": token_id,
            "labels": labels,
            "not_after": not_after.unix_timestamp(),
        });
        let action = if token_id.is_some() {
            "certificate.enrol"
        } else {
            "certificate.renew"
        };
        Change::new(action, "certificate", fingerprint, None, Some(new))
    }

    /// `reason`: the operator's, or `superseded` when a renewed certificate took its place.
    pub fn certificate_revoked(
        fingerprint: &str,
        instance_uid: uuid::Uuid,
        reason: &str,
    ) -> Change {
        Change::new(
            "certificate.revoke",
            "certificate",
            fingerprint,
            Some(json!({"instance_uid": instance_uid, "revoked": false})),
            Some(json!({"instance_uid": instance_uid, "revoked": true, "reason": reason})),
        )
    }
}

/// An entry as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditEntry {
    /// The position in the chain: 1, 2, 3, … without gaps.
    pub id: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub actor: String,
    pub action: String,
    pub object_type: String,
    pub object_id: String,
    pub old_value: Option<Value>,
    pub new_value: Option<Value>,
    pub address: String,
    pub request_id: String,
    pub prev_hash: String,
    pub hash: String,
}

/// Filters of `GET /api/v1/audit`; all given must hold.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub actor: Option<String>,
    pub action: Option<String>,
    pub object_type: Option<String>,
    pub object_id: Option<String>,
    /// At or after.
    pub since: Option<OffsetDateTime>,
    /// Before.
    pub until: Option<OffsetDateTime>,
    /// Entries with an id below this (the page token).
    pub before: Option<i64>,
    pub limit: u32,
}

/// What walking the chain found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verification {
    pub ok: bool,
    /// Entries that verified before the walk stopped.
    pub checked: u64,
    /// The first entry that is altered, missing or out of place.
    pub first_bad: Option<i64>,
}

/// What one retention run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Retained {
    pub archived: u64,
    pub purged: u64,
}
