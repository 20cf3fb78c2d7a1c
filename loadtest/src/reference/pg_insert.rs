//! Raw PostgreSQL batch writes shaped like Ampora's ingest commit: per transaction, upsert a
//! batch of agent snapshots and append as many events, as one hand-written bulk statement. It
//! exists so Ampora's ingest rate has a ceiling to be read against: what the database takes
//! from one writer (or `--connections` writers) on this machine.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use rand::distr::{Alphanumeric, SampleString};
use rand::Rng;
use sqlx::{Connection, PgConnection};
use tokio::time::Instant;
use uuid::Uuid;

use super::{per_second, round2, spawn_progress};

/// Agents the upserts cycle through, so after the first pass every upsert updates a row.
const DISTINCT_AGENTS: usize = 100_000;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// postgres://user:password@host:port/database
    #[arg(long)]
    database_url: String,
    /// Agent rows upserted, and event rows inserted, per transaction.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    batch: u32,
    /// How long to write.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Bytes of each agent summary and each event payload.
    #[arg(long, default_value_t = 300)]
    payload_size: usize,
    /// Writers in parallel, one connection each (Ampora writes from one per partition worker).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    connections: u32,
}

/// A uniquely named pair of ordinary (logged) tables with Ampora's keys and indexes: temporary
/// tables skip the write-ahead log and would flatter the database.
struct Tables {
    agents: String,
    events: String,
}

impl Tables {
    fn unique() -> Tables {
        let tag = &uuid::Uuid::new_v4().simple().to_string()[..12];
        Tables {
            agents: format!("loadtest_ref_{tag}_agents"),
            events: format!("loadtest_ref_{tag}_events"),
        }
    }

    fn create_sql(&self) -> String {
        let Tables { agents, events } = self;
        format!(
            "CREATE TABLE {agents} (\
                 instance_uid UUID PRIMARY KEY, status TEXT NOT NULL, transport TEXT NOT NULL, \
                 sequence_num BIGINT NOT NULL, first_seen BIGINT NOT NULL, \
                 last_seen BIGINT NOT NULL, summary TEXT NOT NULL); \
             CREATE INDEX {agents}_status ON {agents} (status, instance_uid); \
             CREATE INDEX {agents}_liveness ON {agents} (transport, status, last_seen); \
             CREATE TABLE {events} (\
                 id BIGSERIAL PRIMARY KEY, instance_uid UUID NOT NULL, at BIGINT NOT NULL, \
                 kind TEXT NOT NULL, payload BYTEA NOT NULL); \
             CREATE INDEX {events}_by_agent ON {events} (instance_uid, id);"
        )
    }

    /// One statement, so one round trip and one implicit transaction: the upsert runs as a
    /// data-modifying CTE, which PostgreSQL always executes to completion.
    fn write_sql(&self) -> String {
        let Tables { agents, events } = self;
        format!(
            "WITH upserted AS (\
                 INSERT INTO {agents} \
                     (instance_uid, status, transport, sequence_num, first_seen, last_seen, summary) \
                 SELECT uid, 'online', 'websocket', seq, seen, seen, summary \
                 FROM UNNEST($1::uuid[], $2::int8[], $3::int8[], $4::text[]) AS v(uid, seq, seen, summary) \
                 ON CONFLICT (instance_uid) DO UPDATE SET status = excluded.status, \
                     transport = excluded.transport, sequence_num = excluded.sequence_num, \
                     last_seen = excluded.last_seen, summary = excluded.summary) \
             INSERT INTO {events} (instance_uid, at, kind, payload) \
             SELECT uid, at, 'status', payload \
             FROM UNNEST($1::uuid[], $3::int8[], $5::bytea[]) AS v(uid, at, payload)"
        )
    }

    fn drop_sql(&self) -> String {
        format!("DROP TABLE IF EXISTS {}, {}", self.agents, self.events)
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let connections = args.connections as usize;
    let batch = args.batch as usize;
    if batch * connections > DISTINCT_AGENTS {
        // A batch upserting one agent twice is refused by PostgreSQL.
        bail!(
            "--batch {batch} × --connections {connections} exceeds the {DISTINCT_AGENTS} distinct agents"
        );
    }
    let mut admin = PgConnection::connect(&args.database_url)
        .await
        .context("connecting to --database-url")?;
    let tables = Tables::unique();
    sqlx::raw_sql(&tables.create_sql())
        .execute(&mut admin)
        .await
        .context("creating the reference tables")?;
    let outcome = write_for(&args, &tables).await;
    let dropped = sqlx::raw_sql(&tables.drop_sql())
        .execute(&mut admin)
        .await
        .with_context(|| {
            format!(
                "dropping the reference tables {} and {}",
                tables.agents, tables.events
            )
        });
    let (commits, seconds) = outcome?;
    dropped?;

    let rows = commits * batch as u64;
    println!(
        "{}",
        serde_json::json!({
            "reference": "pg-insert",
            "rows": rows,
            "commits": commits,
            "seconds": round2(seconds),
            "rows_per_second": round2(per_second(rows, seconds)),
            "commits_per_second": round2(per_second(commits, seconds)),
            "batch": batch,
            "connections": connections,
        })
    );
    Ok(())
}

/// Runs the writers until `--duration` is over; returns the commits and the seconds they took.
async fn write_for(args: &Args, tables: &Tables) -> anyhow::Result<(u64, f64)> {
    let connections = args.connections as usize;
    let mut agents: Vec<Uuid> = (0..DISTINCT_AGENTS).map(|_| Uuid::new_v4()).collect();
    agents.sort_unstable();
    let mut writers = Vec::with_capacity(connections);
    for index in 0..connections {
        let connection = PgConnection::connect(&args.database_url)
            .await
            .with_context(|| format!("connecting writer {index}"))?;
        // Disjoint shares, as Ampora's partitions are: writers never wait on each other's rows.
        let share = agents
            .iter()
            .skip(index)
            .step_by(connections)
            .cloned()
            .collect();
        writers.push((connection, share));
    }

    let commits = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let _progress = spawn_progress(Duration::from_secs(1), {
        let commits = commits.clone();
        let mut commits_before = 0;
        move || {
            let commits_now = commits.load(Ordering::Relaxed);
            let line = format!(
                "{:>5.1}s commits/s: {}",
                started.elapsed().as_secs_f64(),
                commits_now - commits_before
            );
            commits_before = commits_now;
            line
        }
    });
    let deadline = started + args.duration;
    let handles: Vec<_> = writers
        .into_iter()
        .map(|(connection, share)| {
            let writer = Writer {
                connection,
                share,
                batch: args.batch as usize,
                payload_size: args.payload_size,
                sql: tables.write_sql(),
            };
            tokio::spawn(writer.run_until(deadline, commits.clone()))
        })
        .collect();
    let mut first_error = None;
    for handle in handles {
        if let Err(error) = handle
            .await
            .context("a writer panicked")
            .and_then(|done| done)
        {
            first_error.get_or_insert(error);
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    match first_error {
        Some(error) => Err(error),
        None => Ok((commits.load(Ordering::Relaxed), seconds)),
    }
}

struct Writer {
    connection: PgConnection,
    /// The agents this writer upserts, sorted, in turn.
    share: Vec<Uuid>,
    batch: usize,
    payload_size: usize,
    sql: String,
}

impl Writer {
    async fn run_until(mut self, deadline: Instant, commits: Arc<AtomicU64>) -> anyhow::Result<()> {
        let (summaries, payloads) = random_contents(self.batch, self.payload_size);
        let mut next_agent = 0;
        let mut sequence_num = 0i64;
        while Instant::now() < deadline {
            let mut uids: Vec<Uuid> = (0..self.batch)
                .map(|offset| self.share[(next_agent + offset) % self.share.len()])
                .collect();
            // One lock order for every transaction, as Ampora's writer sorts its batch.
            uids.sort_unstable();
            next_agent = (next_agent + self.batch) % self.share.len();
            sequence_num += 1;
            let now = unix_micros();
            sqlx::query(&self.sql)
                .bind(&uids[..])
                .bind(vec![sequence_num; self.batch])
                .bind(vec![now; self.batch])
                .bind(&summaries)
                .bind(&payloads)
                .execute(&mut self.connection)
                .await
                .context("writing a batch")?;
            commits.fetch_add(1, Ordering::Relaxed);
        }
        self.connection
            .close()
            .await
            .context("closing a writer connection")
    }
}

/// Random summaries and payloads, so that nothing compresses better than the real ones would.
fn random_contents(rows: usize, size: usize) -> (Vec<String>, Vec<Vec<u8>>) {
    let mut rng = rand::rng();
    let summaries = (0..rows)
        .map(|_| Alphanumeric.sample_string(&mut rng, size))
        .collect();
    let payloads = (0..rows)
        .map(|_| {
            let mut payload = vec![0u8; size];
            rng.fill(&mut payload[..]);
            payload
        })
        .collect();
    (summaries, payloads)
}

fn unix_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_micros() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_fit_postgres_identifiers() {
        let tables = Tables::unique();
        for name in [&tables.agents, &tables.events] {
            // The longest derived name is an index: `<agents>_liveness`.
            assert!(name.len() + "_liveness".len() <= 63, "{name}");
            assert!(name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'));
        }
        assert_ne!(tables.agents, Tables::unique().agents);
    }
}
