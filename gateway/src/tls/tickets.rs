//! TLS session tickets that every gateway accepts: their keys come from a file the gateways
//! share, so an agent whose gateway went away resumes its session on another one instead of
//! paying for a full handshake (a certificate signature here, a verification on the agent).
//!
//! # The key file
//!
//! One key per line: 64 hexadecimal characters, i.e. 32 random bytes (`openssl rand -hex 32`,
//! or without openssl `head -c32 /dev/urandom | od -An -tx1 | tr -d ' \n'`). Blank lines and
//! lines starting with `#` are ignored. The first key encrypts new tickets; every key listed
//! decrypts. Rotating is two edits: put a new key first (keeping the old one after it), and
//! later drop the old one, which ends the tickets it encrypted. The file is re-read when its
//! content changes; a file that does not parse then is logged and the keys in use are kept.
//!
//! # A ticket
//!
//! `key id (8) ‖ nonce (12) ‖ ChaCha20-Poly1305(issued at ‖ rustls' session state) ‖ tag (16)`
//! with the key id as associated data and the issue time as big-endian Unix seconds. The AEAD
//! key and the key id are derived from the configured secret with HKDF-SHA256, so the secret
//! itself never keys anything and the clear id names a key without revealing it. The id picks
//! the one key to try; a ticket naming no current key, tampered, truncated or older than
//! [`TICKET_LIFETIME`] is refused and rustls falls back to a full handshake.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, NONCE_LEN};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};
use rustls::server::ProducesTickets;
use tokio_util::sync::CancellationToken;

/// How long a ticket resumes a session. rustls' own ticketer says 12 hours, but a WebSocket
/// agent holds the ticket of its last handshake for as long as it stays connected, which is
/// usually days when its gateway dies; so tickets live for TLS 1.3's maximum (RFC 8446 §4.6.1),
/// and rotating the key file is what retires them sooner. rustls does not check a ticket's age
/// on the server (only to decide on 0-RTT data, which the gateway does not accept), so
/// [`SharedTicketer`] does.
pub const TICKET_LIFETIME: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// HKDF salt: keys derived for Ampora's tickets are good for nothing else.
const KEY_DERIVATION_SALT: &[u8] = b"ampora gateway TLS session ticket key v1";
const SECRET_LEN: usize = 32;
const KEY_ID_LEN: usize = 8;
const ISSUED_AT_LEN: usize = 8;
const AEAD: &aead::Algorithm = &aead::CHACHA20_POLY1305;

/// Why a key file was refused. Displayed after the file's name.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("{0}")]
    Unreadable(#[from] std::io::Error),
    #[error(
        "line {line}: expected a key of 64 hexadecimal characters (32 random bytes, e.g. from \
         `openssl rand -hex 32`)"
    )]
    NotAKey { line: usize },
    #[error("no key in the file (one key of 64 hexadecimal characters per line)")]
    Empty,
}

/// A [`ProducesTickets`] whose keys can be replaced while it is in use.
pub struct SharedTicketer {
    keys: RwLock<Arc<TicketKeys>>,
    random: SystemRandom,
}

/// Loads the key file at `path` and re-reads it every `check_interval` until `shutdown`.
/// Spawns a task, so call it within a tokio runtime.
pub fn from_file(
    path: &Path,
    check_interval: Duration,
    shutdown: CancellationToken,
) -> Result<Arc<SharedTicketer>, KeyFileError> {
    let content = std::fs::read(path)?;
    let ticketer = Arc::new(SharedTicketer::new(TicketKeys::parse(&content)?));
    tokio::spawn(watch(
        ticketer.clone(),
        path.to_owned(),
        Ok(content),
        check_interval,
        shutdown,
    ));
    Ok(ticketer)
}

/// Re-reads the key file whenever `check_interval` has passed, and replaces the keys when its
/// content changed and parses. Content is compared rather than modification times, which can
/// miss a quick second write and do not follow a symbolic link swapped to a new file.
async fn watch(
    ticketer: Arc<SharedTicketer>,
    path: PathBuf,
    mut last_seen: Result<Vec<u8>, std::io::ErrorKind>,
    check_interval: Duration,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(check_interval) => {}
        }
        let seen = tokio::fs::read(&path).await.map_err(|e| e.kind());
        if seen == last_seen {
            continue;
        }
        let loaded = match &seen {
            Ok(content) => TicketKeys::parse(content),
            Err(kind) => Err(KeyFileError::Unreadable(std::io::Error::from(*kind))),
        };
        match loaded {
            Ok(keys) => {
                metrics::counter!("ampora_gateway_tls_ticket_key_reloads_total", "outcome" => "ok")
                    .increment(1);
                tracing::info!(path = %path.display(), keys = keys.keys.len(), "TLS ticket keys reloaded");
                ticketer.replace(keys);
            }
            Err(error) => {
                metrics::counter!("ampora_gateway_tls_ticket_key_reloads_total", "outcome" => "error")
                    .increment(1);
                tracing::warn!(path = %path.display(), %error, "TLS ticket key file not reloaded; the previous keys stay in use");
            }
        }
        last_seen = seen;
    }
}

// === impl SharedTicketer ===

impl SharedTicketer {
    fn new(keys: TicketKeys) -> SharedTicketer {
        SharedTicketer {
            keys: RwLock::new(Arc::new(keys)),
            random: SystemRandom::new(),
        }
    }

    fn replace(&self, keys: TicketKeys) {
        *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(keys);
    }

    fn keys(&self) -> Arc<TicketKeys> {
        self.keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn encrypt_at(&self, state: &[u8], now: u64) -> Option<Vec<u8>> {
        let keys = self.keys();
        let key = keys.encrypting();
        let mut nonce = [0u8; NONCE_LEN];
        self.random.fill(&mut nonce).ok()?;
        let mut ticket = Vec::with_capacity(
            KEY_ID_LEN + NONCE_LEN + ISSUED_AT_LEN + state.len() + AEAD.tag_len(),
        );
        ticket.extend_from_slice(&key.id);
        ticket.extend_from_slice(&nonce);
        let sealed_from = ticket.len();
        ticket.extend_from_slice(&now.to_be_bytes());
        ticket.extend_from_slice(state);
        let tag = key
            .aead
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(key.id),
                &mut ticket[sealed_from..],
            )
            .ok()?;
        ticket.extend_from_slice(tag.as_ref());
        Some(ticket)
    }

    fn decrypt_at(&self, ticket: &[u8], now: u64) -> Option<Vec<u8>> {
        let (id, rest) = ticket.split_at_checked(KEY_ID_LEN)?;
        let (nonce, sealed) = rest.split_at_checked(NONCE_LEN)?;
        let keys = self.keys();
        let key = keys.named(id)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut opened = sealed.to_vec();
        let plain = key
            .aead
            .open_in_place(nonce, Aad::from(id), &mut opened)
            .ok()?;
        let (issued_at, state) = plain.split_at_checked(ISSUED_AT_LEN)?;
        let issued_at = u64::from_be_bytes(issued_at.try_into().ok()?);
        if now.saturating_sub(issued_at) > TICKET_LIFETIME.as_secs() {
            return None;
        }
        Some(state.to_vec())
    }
}

impl ProducesTickets for SharedTicketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        TICKET_LIFETIME.as_secs() as u32
    }

    fn encrypt(&self, state: &[u8]) -> Option<Vec<u8>> {
        self.encrypt_at(state, unix_now())
    }

    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        self.decrypt_at(ticket, unix_now())
    }
}

impl std::fmt::Debug for SharedTicketer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Key ids only: the keys stay out of logs.
        let ids: Vec<String> = self.keys().keys.iter().map(|key| hex(&key.id)).collect();
        f.debug_struct("SharedTicketer")
            .field("key_ids", &ids)
            .finish()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// === impl TicketKeys ===

/// The keys of one version of the file, never empty; the first encrypts.
struct TicketKeys {
    keys: Vec<TicketKey>,
}

struct TicketKey {
    id: [u8; KEY_ID_LEN],
    aead: LessSafeKey,
}

impl TicketKeys {
    fn parse(content: &[u8]) -> Result<TicketKeys, KeyFileError> {
        let mut keys = Vec::new();
        for (index, line) in content.split(|&byte| byte == b'\n').enumerate() {
            let line = line.trim_ascii();
            if line.is_empty() || line.starts_with(b"#") {
                continue;
            }
            let secret = parse_secret(line).ok_or(KeyFileError::NotAKey { line: index + 1 })?;
            keys.push(TicketKey::derive(&secret));
        }
        if keys.is_empty() {
            return Err(KeyFileError::Empty);
        }
        Ok(TicketKeys { keys })
    }

    fn encrypting(&self) -> &TicketKey {
        &self.keys[0]
    }

    fn named(&self, id: &[u8]) -> Option<&TicketKey> {
        self.keys.iter().find(|key| key.id == id)
    }
}

impl TicketKey {
    fn derive(secret: &[u8; SECRET_LEN]) -> TicketKey {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, KEY_DERIVATION_SALT).extract(secret);
        // Expanding fails only for outputs longer than 255 hashes; these are 32 and 8 bytes.
        let aead_key: UnboundKey = prk
            .expand(&[b"ticket aead key"], AEAD)
            .expect("an HKDF output of 32 bytes")
            .into();
        let mut id = [0u8; KEY_ID_LEN];
        prk.expand(&[b"ticket key id"], KeyIdLength)
            .and_then(|okm| okm.fill(&mut id))
            .expect("an HKDF output of 8 bytes");
        TicketKey {
            id,
            aead: LessSafeKey::new(aead_key),
        }
    }
}

struct KeyIdLength;

impl hkdf::KeyType for KeyIdLength {
    fn len(&self) -> usize {
        KEY_ID_LEN
    }
}

fn parse_secret(line: &[u8]) -> Option<[u8; SECRET_LEN]> {
    if line.len() != 2 * SECRET_LEN {
        return None;
    }
    let mut secret = [0u8; SECRET_LEN];
    for (byte, pair) in secret.iter_mut().zip(line.chunks_exact(2)) {
        let pair = std::str::from_utf8(pair).ok()?;
        *byte = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";
    const NEW: &str = "A0B1C2D3E4F5061728394A5B6C7D8E9FA0B1C2D3E4F5061728394A5B6C7D8E9F";
    const NOW: u64 = 1_800_000_000;

    fn ticketer(file: &str) -> SharedTicketer {
        SharedTicketer::new(TicketKeys::parse(file.as_bytes()).unwrap())
    }

    #[test]
    fn a_ticket_decrypts_to_what_was_encrypted() {
        let ticketer = ticketer(OLD);
        let ticket = ticketer.encrypt_at(b"session state", NOW).unwrap();
        assert_eq!(
            ticketer.decrypt_at(&ticket, NOW + 60).as_deref(),
            Some(&b"session state"[..])
        );
        let again = ticketer.encrypt_at(b"session state", NOW).unwrap();
        assert_ne!(ticket, again, "a fresh nonce every time");
        assert!(ticketer.enabled());
        assert_eq!(ticketer.lifetime(), 604_800);
    }

    #[test]
    fn a_tampered_or_truncated_ticket_is_refused() {
        let ticketer = ticketer(OLD);
        let ticket = ticketer.encrypt_at(b"session state", NOW).unwrap();
        for at in [0, KEY_ID_LEN, KEY_ID_LEN + NONCE_LEN, ticket.len() - 1] {
            let mut tampered = ticket.clone();
            tampered[at] ^= 1;
            assert_eq!(ticketer.decrypt_at(&tampered, NOW), None, "byte {at}");
        }
        for length in [0, KEY_ID_LEN, KEY_ID_LEN + NONCE_LEN + 4, ticket.len() - 1] {
            assert_eq!(
                ticketer.decrypt_at(&ticket[..length], NOW),
                None,
                "{length} bytes"
            );
        }
    }

    #[test]
    fn a_ticket_under_a_key_not_in_the_file_is_refused() {
        let ticket = ticketer(OLD).encrypt_at(b"state", NOW).unwrap();
        assert_eq!(ticketer(NEW).decrypt_at(&ticket, NOW), None);
    }

    #[test]
    fn a_ticket_older_than_the_lifetime_is_refused() {
        let ticketer = ticketer(OLD);
        let ticket = ticketer.encrypt_at(b"state", NOW).unwrap();
        let lifetime = TICKET_LIFETIME.as_secs();
        assert!(ticketer.decrypt_at(&ticket, NOW + lifetime).is_some());
        assert_eq!(ticketer.decrypt_at(&ticket, NOW + lifetime + 1), None);
    }

    #[test]
    fn the_first_key_encrypts_and_every_key_decrypts() {
        let before = ticketer(OLD);
        let old_ticket = before.encrypt_at(b"old", NOW).unwrap();
        let rotated = ticketer(&format!("{NEW}\n{OLD}\n"));
        assert_eq!(
            rotated.decrypt_at(&old_ticket, NOW).as_deref(),
            Some(&b"old"[..])
        );
        let new_ticket = rotated.encrypt_at(b"new", NOW).unwrap();
        assert_eq!(before.decrypt_at(&new_ticket, NOW), None);
        assert_eq!(
            ticketer(NEW).decrypt_at(&new_ticket, NOW).as_deref(),
            Some(&b"new"[..])
        );
    }

    #[test]
    fn replaced_keys_apply_to_the_next_ticket() {
        let ticketer = ticketer(OLD);
        let old_ticket = ticketer.encrypt_at(b"old", NOW).unwrap();
        ticketer.replace(TicketKeys::parse(NEW.as_bytes()).unwrap());
        assert_eq!(ticketer.decrypt_at(&old_ticket, NOW), None);
        let new_ticket = ticketer.encrypt_at(b"new", NOW).unwrap();
        assert!(ticketer.decrypt_at(&new_ticket, NOW).is_some());
    }

    #[test]
    fn the_key_file_skips_comments_and_blank_lines_and_names_a_bad_line() {
        let file = format!("# rotated 2026-01-01\n\n  {NEW}  \r\n# the previous key\n{OLD}\n");
        assert_eq!(TicketKeys::parse(file.as_bytes()).unwrap().keys.len(), 2);

        let short = format!("# keys\n{NEW}\n{}\n", &OLD[..62]);
        let not_hex = format!("{}zz\n", &OLD[..62]);
        for (file, line) in [(short, 3), (not_hex, 1)] {
            let error = TicketKeys::parse(file.as_bytes()).err().unwrap();
            assert!(
                matches!(error, KeyFileError::NotAKey { line: l } if l == line),
                "{error}"
            );
            assert!(
                error.to_string().contains(&format!("line {line}:")),
                "{error}"
            );
        }
        assert!(matches!(
            TicketKeys::parse(b"# nothing yet\n\n"),
            Err(KeyFileError::Empty)
        ));
    }

    #[tokio::test]
    async fn the_file_is_read_again_when_it_changes_and_a_bad_version_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ticket-keys");
        std::fs::write(&path, OLD).unwrap();
        let stop = CancellationToken::new();
        let watched = from_file(&path, Duration::from_millis(10), stop.clone()).unwrap();
        let old_ticket = watched.encrypt_at(b"old", NOW).unwrap();

        let metrics = ampora_shared::telemetry::prometheus();
        let refused = || {
            metrics
                .render()
                .lines()
                .find_map(|line| {
                    line.strip_prefix(
                        "ampora_gateway_tls_ticket_key_reloads_total{outcome=\"error\"} ",
                    )?
                    .parse::<u64>()
                    .ok()
                })
                .unwrap_or(0)
        };
        let refused_before = refused();
        std::fs::write(&path, "not a key\n").unwrap();
        // The watcher counts the version it refused; by then it has kept the keys it had.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while refused() == refused_before {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the bad version was read within 5 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            watched.decrypt_at(&old_ticket, NOW).is_some(),
            "the previous keys stay in use"
        );

        std::fs::write(&path, NEW).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while watched.decrypt_at(&old_ticket, NOW).is_some() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "reloaded within 5 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let new_ticket = watched.encrypt_at(b"new", NOW).unwrap();
        assert!(ticketer(NEW).decrypt_at(&new_ticket, NOW).is_some());
        stop.cancel();
    }

    #[test]
    fn keys_are_derived_not_used_as_they_are() {
        let keys = TicketKeys::parse(OLD.as_bytes()).unwrap();
        let secret = parse_secret(OLD.as_bytes()).unwrap();
        assert_ne!(&keys.encrypting().id[..], &secret[..KEY_ID_LEN]);
        let plain = LessSafeKey::new(UnboundKey::new(AEAD, &secret).unwrap());
        let ticket = ticketer(OLD).encrypt_at(b"state", NOW).unwrap();
        let (id, rest) = ticket.split_at(KEY_ID_LEN);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let mut sealed = sealed.to_vec();
        let nonce = Nonce::try_assume_unique_for_key(nonce).unwrap();
        assert!(plain
            .open_in_place(nonce, Aad::from(id), &mut sealed)
            .is_err());
    }
}
