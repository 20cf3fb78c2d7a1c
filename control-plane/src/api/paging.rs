//! Pages of a listing: `limit`, `page_token` and `next_page_token`, alike on every endpoint.

use std::fmt::Display;
use std::str::FromStr;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

const MAX_LIMIT: u32 = 1000;

// === query parameters ===

/// `limit`: a page's size, 1 to [`MAX_LIMIT`], 100 when absent.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(try_from = "String")]
pub struct Limit(u32);

impl Limit {
    pub fn get(self) -> u32 {
        self.0
    }
}

impl Default for Limit {
    fn default() -> Self {
        Limit(100)
    }
}

impl TryFrom<String> for Limit {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        match text.parse::<u32>() {
            Ok(limit) if (1..=MAX_LIMIT).contains(&limit) => Ok(Limit(limit)),
            _ => Err(format!("limit must be a number from 1 to {MAX_LIMIT}")),
        }
    }
}

/// `page_token`: where the previous page ended; empty or absent for the first page.
pub fn page_token<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
{
    let text = String::deserialize(deserializer)?;
    if text.is_empty() {
        return Ok(None);
    }
    text.parse()
        .map(Some)
        .map_err(|_| D::Error::custom("bad page_token"))
}

/// A full page may have a next one, which starts after its last item.
pub fn next_page_token<T, K: Display>(
    page: &[T],
    limit: u32,
    key: impl Fn(&T) -> K,
) -> Option<String> {
    (page.len() == limit as usize)
        .then(|| page.last().map(|last| key(last).to_string()))
        .flatten()
}
