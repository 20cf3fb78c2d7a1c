//! How snapshots and events become columns: JSON, gzip'd above a threshold; times as Unix
//! microseconds and u64 counters as i64 bit patterns, the same on both backends.

use ampora_shared::codec;
use serde::de::DeserializeOwned;
use serde::Serialize;
use time::OffsetDateTime;

use super::{Result, StoreError};

pub const JSON: &str = "json";
pub const GZIP_JSON: &str = "gzip+json";
/// Stored payloads never inflate past this, however they were written.
const MAX_INFLATED: usize = 256 << 20;

pub fn encode<T: Serialize>(value: &T, gzip_threshold: usize) -> (Vec<u8>, &'static str) {
    compress(
        serde_json::to_vec(value).expect("snapshot types serialize"),
        gzip_threshold,
    )
}

/// Serialized JSON as stored: gzip'd above the threshold.
pub fn compress(json: Vec<u8>, gzip_threshold: usize) -> (Vec<u8>, &'static str) {
    if json.len() > gzip_threshold {
        (codec::gzip(&json), GZIP_JSON)
    } else {
        (json, JSON)
    }
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8], encoding: &str) -> Result<T> {
    let json = match encoding {
        JSON => std::borrow::Cow::Borrowed(bytes),
        GZIP_JSON => std::borrow::Cow::Owned(
            codec::gunzip_bounded(bytes, MAX_INFLATED)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
        ),
        other => {
            return Err(StoreError::Corrupt(format!(
                "unknown payload encoding {other:?}"
            )))
        }
    };
    serde_json::from_slice(&json).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub fn micros(at: OffsetDateTime) -> i64 {
    at.unix_timestamp_nanos().div_euclid(1_000) as i64
}

pub fn from_micros(micros: i64) -> Result<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000)
        .map_err(|e| StoreError::Corrupt(format!("timestamp {micros}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_payloads_stay_plain_and_large_ones_are_gzipped() {
        let small = serde_json::json!({"a": 1});
        let (bytes, encoding) = encode(&small, 100);
        assert_eq!(encoding, JSON);
        assert_eq!(
            decode::<serde_json::Value>(&bytes, encoding).unwrap(),
            small
        );
        let large = serde_json::json!({"body": "x".repeat(10_000)});
        let (bytes, encoding) = encode(&large, 100);
        assert_eq!(encoding, GZIP_JSON);
        assert!(bytes.len() < 1_000);
        assert_eq!(
            decode::<serde_json::Value>(&bytes, encoding).unwrap(),
            large
        );
        assert!(decode::<serde_json::Value>(b"{}", "zstd").is_err());
    }

    #[test]
    fn times_round_trip_at_microsecond_precision() {
        let at = OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_456_000).unwrap();
        assert_eq!(from_micros(micros(at)).unwrap(), at);
        let before_epoch = OffsetDateTime::from_unix_timestamp_nanos(-1_500).unwrap();
        assert_eq!(micros(before_epoch), -2, "rounds down, never towards zero");
    }
}
