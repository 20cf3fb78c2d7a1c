//! Sign-in attempts, counted per account and per client address in fixed windows: a guessing
//! run against one account, or from one address, is refused for the rest of its window.
//! Memory is bounded: past [`MAX_KEYS`] windows, expired ones go first, then the oldest.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most accounts and addresses tracked at once.
pub const MAX_KEYS: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    attempts: u32,
}

pub struct LoginLimiter {
    windows: Mutex<HashMap<String, Window>>,
    window: Duration,
    per_account: u32,
    per_address: u32,
    max_keys: usize,
}

impl Default for LoginLimiter {
    /// 10 attempts per account and 50 per address every 5 minutes.
    fn default() -> Self {
        LoginLimiter::new(Duration::from_secs(300), 10, 50, MAX_KEYS)
    }
}

impl LoginLimiter {
    pub fn new(window: Duration, per_account: u32, per_address: u32, max_keys: usize) -> Self {
        LoginLimiter {
            windows: Mutex::new(HashMap::new()),
            window,
            per_account,
            per_address,
            max_keys,
        }
    }

    /// Counts an attempt to sign in as `username` from `address`; `Err(retry_after)` when
    /// either has used up its window (the attempt is then not counted).
    pub fn attempt(&self, username: &str, address: &str, now: Instant) -> Result<(), Duration> {
        let mut windows = self.windows.lock().expect("limiter lock");
        let keys = [
            (format!("account:{username}"), self.per_account),
            (format!("address:{address}"), self.per_address),
        ];
        let mut retry_after = None;
        for (key, limit) in &keys {
            if let Some(window) = windows.get(key) {
                let elapsed = now.saturating_duration_since(window.started);
                if elapsed < self.window && window.attempts >= *limit {
                    let wait = self.window - elapsed;
                    retry_after = Some(retry_after.map_or(wait, |other: Duration| other.max(wait)));
                }
            }
        }
        if let Some(wait) = retry_after {
            return Err(wait);
        }
        for (key, _) in keys {
            if !windows.contains_key(&key) && windows.len() >= self.max_keys {
                self.make_room(&mut windows, now);
            }
            let window = windows.entry(key).or_insert(Window {
                started: now,
                attempts: 0,
            });
            if now.saturating_duration_since(window.started) >= self.window {
                *window = Window {
                    started: now,
                    attempts: 0,
                };
            }
            window.attempts += 1;
        }
        Ok(())
    }

    /// A successful sign-in clears its account's count (not its address's).
    pub fn succeeded(&self, username: &str) {
        let mut windows = self.windows.lock().expect("limiter lock");
        windows.remove(&format!("account:{username}"));
    }

    fn make_room(&self, windows: &mut HashMap<String, Window>, now: Instant) {
        windows.retain(|_, window| now.saturating_duration_since(window.started) < self.window);
        while windows.len() >= self.max_keys {
            let oldest = windows
                .iter()
                .min_by_key(|(_, window)| window.started)
                .map(|(key, _)| key.clone());
            match oldest {
                Some(key) => windows.remove(&key),
                None => break,
            };
        }
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.windows.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_account_is_limited_whatever_the_address() {
        let limiter = LoginLimiter::new(Duration::from_secs(60), 3, 100, 100);
        let start = Instant::now();
        for n in 0..3 {
            assert!(limiter
                .attempt("ada", &format!("10.0.0.{n}"), start)
                .is_ok());
        }
        let wait = limiter.attempt("ada", "10.0.0.9", start).unwrap_err();
        assert_eq!(wait, Duration::from_secs(60));
        assert!(limiter.attempt("bob", "10.0.0.9", start).is_ok());
        // The window passes.
        let later = start + Duration::from_secs(60);
        assert!(limiter.attempt("ada", "10.0.0.9", later).is_ok());
    }

    #[test]
    fn an_address_is_limited_whatever_the_account() {
        let limiter = LoginLimiter::new(Duration::from_secs(60), 100, 2, 100);
        let now = Instant::now();
        assert!(limiter.attempt("a", "198.51.100.1", now).is_ok());
        assert!(limiter.attempt("b", "198.51.100.1", now).is_ok());
        assert!(limiter.attempt("c", "198.51.100.1", now).is_err());
        assert!(limiter.attempt("c", "198.51.100.2", now).is_ok());
    }

    #[test]
    fn success_clears_the_account() {
        let limiter = LoginLimiter::new(Duration::from_secs(60), 2, 100, 100);
        let now = Instant::now();
        limiter.attempt("ada", "a", now).unwrap();
        limiter.attempt("ada", "a", now).unwrap();
        limiter.succeeded("ada");
        assert!(limiter.attempt("ada", "a", now).is_ok());
    }

    #[test]
    fn memory_stays_bounded() {
        let limiter = LoginLimiter::new(Duration::from_secs(60), 5, 5, 10);
        let now = Instant::now();
        for n in 0..100 {
            limiter
                .attempt(&format!("user{n}"), "a", now + Duration::from_millis(n))
                .ok();
        }
        assert!(limiter.tracked() <= 10, "{}", limiter.tracked());
    }
}
