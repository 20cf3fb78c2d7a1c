//! The hash chain: each entry's hash is SHA-256 over a canonical encoding of its fields and
//! the previous entry's hash, so changing, inserting or removing any entry breaks every link
//! after it.

use serde_json::Value;

use super::Verification;
use crate::remote_config::sha256_hex;

/// The "previous hash" of the first entry ever written.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The fields an entry's hash covers, as stored (values as their stored JSON text).
pub struct Fields<'a> {
    pub id: i64,
    pub at_micros: i64,
    pub actor: &'a str,
    pub action: &'a str,
    pub object_type: &'a str,
    pub object_id: &'a str,
    pub old_value: Option<&'a str>,
    pub new_value: Option<&'a str>,
    pub address: &'a str,
    pub request_id: &'a str,
    pub prev_hash: &'a str,
}

impl Fields<'_> {
    /// SHA-256 over a JSON array of the fields in a fixed order: strings are escaped, so no
    /// two different entries encode alike.
    pub fn hash(&self) -> String {
        let canonical = Value::Array(vec![
            self.id.into(),
            self.at_micros.into(),
            self.actor.into(),
            self.action.into(),
            self.object_type.into(),
            self.object_id.into(),
            self.old_value.map_or(Value::Null, Value::from),
            self.new_value.map_or(Value::Null, Value::from),
            self.address.into(),
            self.request_id.into(),
            self.prev_hash.into(),
        ]);
        sha256_hex(canonical.to_string().as_bytes())
    }
}

/// The hash of an entry as it is stored, recomputed.
pub fn rehash(entry: &StoredEntry) -> String {
    entry.fields().hash()
}

/// An entry's columns exactly as stored (values as JSON text), for hashing and verifying.
#[derive(Debug, Clone)]
pub struct StoredEntry {
    pub id: i64,
    pub at_micros: i64,
    pub actor: String,
    pub action: String,
    pub object_type: String,
    pub object_id: String,
    pub old_value: Option<String>,
    pub new_value: Option<String>,
    pub address: String,
    pub request_id: String,
    pub prev_hash: String,
    pub hash: String,
}

impl StoredEntry {
    fn fields(&self) -> Fields<'_> {
        Fields {
            id: self.id,
            at_micros: self.at_micros,
            actor: &self.actor,
            action: &self.action,
            object_type: &self.object_type,
            object_id: &self.object_id,
            old_value: self.old_value.as_deref(),
            new_value: self.new_value.as_deref(),
            address: &self.address,
            request_id: &self.request_id,
            prev_hash: &self.prev_hash,
        }
    }
}

/// Walks entries in chain order from the anchor (the newest purged entry, or the genesis) to
/// the head, stopping at the first that does not follow.
pub struct Verifier {
    next_id: i64,
    prev_hash: String,
    last_id: i64,
    last_hash: String,
    checked: u64,
    first_bad: Option<i64>,
}

impl Verifier {
    /// From the anchor (`anchor_id`, `anchor_hash`) to the head the chain records.
    pub fn new(anchor_id: i64, anchor_hash: &str, last_id: i64, last_hash: &str) -> Verifier {
        Verifier {
            next_id: anchor_id + 1,
            prev_hash: anchor_hash.to_owned(),
            last_id,
            last_hash: last_hash.to_owned(),
            checked: 0,
            first_bad: None,
        }
    }

    /// Takes the next entry; false once the chain is broken (the rest need not be read).
    pub fn check(&mut self, entry: &StoredEntry) -> bool {
        if self.first_bad.is_some() {
            return false;
        }
        if entry.id > self.last_id {
            // Past the head: nobody wrote it through the chain.
            self.first_bad = Some(entry.id);
            return false;
        }
        if entry.id != self.next_id {
            // A missing entry is reported by its id; an extra one by its own.
            self.first_bad = Some(entry.id.min(self.next_id));
            return false;
        }
        if entry.prev_hash != self.prev_hash || rehash(entry) != entry.hash {
            self.first_bad = Some(entry.id);
            return false;
        }
        self.prev_hash.clone_from(&entry.hash);
        self.next_id += 1;
        self.checked += 1;
        true
    }

    /// Ends the walk: entries missing at the end, or a head that is not the last entry, are
    /// breaks too.
    pub fn finish(mut self) -> Verification {
        if self.first_bad.is_none()
            && (self.next_id != self.last_id + 1 || self.prev_hash != self.last_hash)
        {
            self.first_bad = Some(self.next_id.min(self.last_id));
        }
        Verification {
            ok: self.first_bad.is_none(),
            checked: self.checked,
            first_bad: self.first_bad,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: i64) -> Vec<StoredEntry> {
        let mut prev = GENESIS.to_owned();
        (1..=n)
            .map(|id| {
                let mut entry = StoredEntry {
                    id,
                    at_micros: id * 1000,
                    actor: "account:admin".into(),
                    action: "account.create".into(),
                    object_type: "account".into(),
                    object_id: format!("user{id}"),
                    old_value: None,
                    new_value: Some(r#"{"role":"viewer"}"#.into()),
                    address: "127.0.0.1".into(),
                    request_id: format!("r{id}"),
                    prev_hash: prev.clone(),
                    hash: String::new(),
                };
                entry.hash = rehash(&entry);
                prev.clone_from(&entry.hash);
                entry
            })
            .collect()
    }

    fn verify(entries: &[StoredEntry], last_id: i64, last_hash: &str) -> Verification {
        let mut verifier = Verifier::new(0, GENESIS, last_id, last_hash);
        for entry in entries {
            if !verifier.check(entry) {
                break;
            }
        }
        verifier.finish()
    }

    #[test]
    fn an_intact_chain_verifies() {
        let entries = chain(5);
        let last = entries[4].hash.clone();
        assert_eq!(
            verify(&entries, 5, &last),
            Verification {
                ok: true,
                checked: 5,
                first_bad: None
            }
        );
        assert!(verify(&[], 0, GENESIS).ok);
    }

    #[test]
    fn altered_inserted_and_deleted_entries_are_found() {
        let entries = chain(5);
        let last = entries[4].hash.clone();

        let mut altered = entries.clone();
        altered[2].new_value = Some(r#"{"role":"admin"}"#.into());
        assert_eq!(verify(&altered, 5, &last).first_bad, Some(3));

        let mut deleted = entries.clone();
        deleted.remove(1);
        assert_eq!(verify(&deleted, 5, &last).first_bad, Some(2));

        let mut truncated = entries.clone();
        truncated.pop();
        assert_eq!(verify(&truncated, 5, &last).first_bad, Some(5));

        // An entry slipped in with a well-formed hash but after the recorded head.
        let mut appended = entries.clone();
        let mut extra = appended[4].clone();
        extra.id = 6;
        extra.prev_hash = last.clone();
        extra.hash = rehash(&extra);
        appended.push(extra);
        let verification = verify(&appended, 5, &last);
        assert_eq!(verification.first_bad, Some(6));
        assert_eq!(verification.checked, 5);
    }
}
