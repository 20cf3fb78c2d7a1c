//! Agent-send → commit latency, read back from PostgreSQL itself: each health change carries
//! its send time (`status_time_unix_nano`), the control-plane stores it in the `health` history
//! row, and PostgreSQL (with `track_commit_timestamp = on`) knows when that row committed. So
//! the figure needs no help from Ampora's own metrics.

use anyhow::{bail, Context as _};
use serde::Serialize;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Row};

#[derive(Debug, Clone, Serialize)]
pub struct CommitLatency {
    /// Health changes committed in the window.
    pub committed: i64,
    /// `committed` over the span between the first and the last commit.
    pub committed_per_second: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// The same, per [`WINDOW_SECONDS`] of sending: shows whether the tail is a burst, a
    /// backlog left by the ramp, or spread over the run.
    pub windows: Vec<WindowLatency>,
}

pub const WINDOW_SECONDS: i64 = 10;

#[derive(Debug, Clone, Serialize)]
pub struct WindowLatency {
    /// Seconds from the start of the measured span to the start of this window.
    pub from_second: i64,
    pub committed: i64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Health rows the gateways received in `[from_unix_us, to_unix_us)`.
pub async fn measure(
    database_url: &str,
    from_unix_us: i64,
    to_unix_us: i64,
) -> anyhow::Result<CommitLatency> {
    // Reading millions of rows takes seconds by design; sqlx would log it as a slow statement.
    let mut connection = database_url
        .parse::<PgConnectOptions>()
        .context("parsing the database URL")?
        .disable_statement_logging()
        .connect()
        .await
        .context("connecting to PostgreSQL for the commit latency")?;
    let tracked: String = sqlx::query_scalar("SHOW track_commit_timestamp")
        .fetch_one(&mut connection)
        .await?;
    if tracked != "on" {
        bail!("PostgreSQL runs without track_commit_timestamp = on, so commit times are unknown");
    }
    let row = sqlx::query(&format!(
        "{LATENCIES}
         SELECT count(*) AS committed,
                coalesce(extract(epoch FROM max(committed) - min(committed))::float8, 0) AS span,
                coalesce(percentile_cont(ARRAY[0.5, 0.9, 0.99, 0.999]) WITHIN GROUP (ORDER BY ms),
                         ARRAY[0, 0, 0, 0]::float8[]) AS quantiles,
                coalesce(max(ms), 0) AS max_ms
         FROM latencies"
    ))
    .bind(from_unix_us)
    .bind(to_unix_us)
    .fetch_one(&mut connection)
    .await
    .context("reading commit times")?;
    let windows = sqlx::query(&format!(
        "{LATENCIES}
         SELECT floor((extract(epoch FROM sent)::float8 - $1::float8 / 1e6) / {WINDOW_SECONDS})::int8
                    * {WINDOW_SECONDS} AS from_second,
                count(*) AS committed,
                percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY ms) AS quantiles,
                max(ms) AS max_ms
         FROM latencies GROUP BY 1 ORDER BY 1"
    ))
    .bind(from_unix_us)
    .bind(to_unix_us)
    .fetch_all(&mut connection)
    .await
    .context("reading commit times per window")?
    .iter()
    .map(|row| {
        let quantiles: Vec<f64> = row.try_get("quantiles")?;
        Ok(WindowLatency {
            from_second: row.try_get("from_second")?,
            committed: row.try_get("committed")?,
            p50_ms: quantiles[0],
            p99_ms: quantiles[1],
            max_ms: row.try_get("max_ms")?,
        })
    })
    .collect::<Result<Vec<_>, sqlx::Error>>()?;
    let committed: i64 = row.try_get("committed")?;
    let span: f64 = row.try_get("span")?;
    let quantiles: Vec<f64> = row.try_get("quantiles")?;
    Ok(CommitLatency {
        committed,
        committed_per_second: if span > 0.0 {
            committed as f64 / span
        } else {
            0.0
        },
        p50_ms: quantiles[0],
        p90_ms: quantiles[1],
        p99_ms: quantiles[2],
        p999_ms: quantiles[3],
        max_ms: row.try_get("max_ms")?,
        windows,
    })
}

/// Each health change of the span with its commit time and its send → commit milliseconds.
const LATENCIES: &str = "WITH changes AS (
         SELECT pg_xact_commit_timestamp(xmin) AS committed,
                (convert_from(payload, 'UTF8')::jsonb ->> 'status_time')::timestamptz AS sent
         FROM agent_events
         WHERE kind = 'health' AND payload_encoding = 'json' AND at >= $1 AND at < $2
     ), latencies AS (
         SELECT committed, sent, extract(epoch FROM committed - sent)::float8 * 1000 AS ms
         FROM changes WHERE committed IS NOT NULL AND sent IS NOT NULL
     )";
