//! The one SQL implementation of [`Store`](super::Store), stamped out for each sqlx backend.
//! Both dialects share every statement but the writes of an ingest round and one clause: `$N`
//! placeholders, `ON CONFLICT … DO UPDATE`, `RETURNING`. `$bulk` names the dialect's module
//! of round writes: its lease fence and its batch statements (PostgreSQL binds whole columns
//! as arrays; SQLite has no arrays and takes multi-row `VALUES`), and how it stores instance
//! uids (`uid_param`, `row_uid`: PostgreSQL's `uuid`, SQLite's text). `$lock_rows` is the
//! row-locking clause of queries that pick rows to update: `FOR UPDATE` on PostgreSQL (agents
//! are locked in `instance_uid` order, as batch upserts lock them, so the two do not
//! deadlock), nothing on SQLite (one writer at a time holds the whole database).
//!
//! Writes take agents sorted by uid, the last snapshot of an agent winning if a batch holds
//! several.

pub const AGENT_COLUMNS: &str =
    "instance_uid, status, transport, gateway_id, connection_id, remote_addr, \
     sequence_num, capabilities, first_seen, last_seen, summary";

/// The `ON CONFLICT` clause of both dialects' agent upserts: an existing row takes the new
/// snapshot, except `first_seen`, and keeps its stored details where the new row carries
/// [`KEEP_DETAILS`](super::rows::KEEP_DETAILS), which `keep_details` spells in the dialect
/// (a parameter or a literal).
pub fn agent_upsert_conflict(keep_details: &str) -> String {
    format!(
        " ON CONFLICT (instance_uid) DO UPDATE SET status = excluded.status, \
         transport = excluded.transport, gateway_id = excluded.gateway_id, \
         connection_id = excluded.connection_id, remote_addr = excluded.remote_addr, \
         sequence_num = excluded.sequence_num, capabilities = excluded.capabilities, \
         last_seen = excluded.last_seen, summary = excluded.summary, \
         details = CASE WHEN excluded.details = {keep_details} \
             THEN agents.details ELSE excluded.details END, \
         details_encoding = CASE WHEN excluded.details = {keep_details} \
             THEN agents.details_encoding ELSE excluded.details_encoding END"
    )
}

macro_rules! sql_store {
    ($store:ident, $db:ty, $row:ty, $lock_rows:literal, $bulk:ident) => {
        use std::collections::BTreeMap;

        use async_trait::async_trait;
        use sqlx::{QueryBuilder, Row};
        use time::OffsetDateTime;
        use uuid::Uuid;

        use crate::agents::history::EventKind;
        use crate::agents::merge::event_payload;
        use crate::agents::snapshot::{AgentHead, AgentRecord, AgentStatus, Transport};
        use crate::storage::encoding::{self, unavailable};
        use crate::storage::rows::{AgentColumns, AttributeColumns, EventColumns, Round, SeenColumns};
        use crate::storage::sql::AGENT_COLUMNS;
        use crate::storage::{
            AgentEvent, AgentQuery, EventQuery, Lease, NewEvent, Result, SeenUpdate, Store, StoreError,
            WriteBatch,
        };

        pub struct $store {
            pool: sqlx::Pool<$db>,
            gzip_threshold: usize,
        }

        fn head_from_row(row: &$row) -> Result<AgentHead> {
            let text = |column: &str| row.try_get::<String, _>(column).map_err(unavailable);
            let number = |column: &str| row.try_get::<i64, _>(column).map_err(unavailable);
            let status = text("status")?;
            let transport = text("transport")?;
            Ok(AgentHead {
                instance_uid: $bulk::row_uid(row, "instance_uid")?,
                status: AgentStatus::parse(&status)
                    .ok_or_else(|| StoreError::Corrupt(format!("agent status {status:?}")))?,
                transport: Transport::parse(&transport)
                    .ok_or_else(|| StoreError::Corrupt(format!("agent transport {transport:?}")))?,
                gateway_id: text("gateway_id")?,
                connection_id: number("connection_id")? as u64,
                remote_addr: text("remote_addr")?,
                sequence_num: number("sequence_num")? as u64,
                capabilities: number("capabilities")? as u64,
                first_seen: encoding::from_micros(number("first_seen")?)?,
                last_seen: encoding::from_micros(number("last_seen")?)?,
                summary: encoding::decode(text("summary")?.as_bytes(), encoding::JSON)?,
            })
        }

        fn record_from_row(row: &$row) -> Result<AgentRecord> {
            let details: Vec<u8> = row.try_get("details").map_err(unavailable)?;
            let details_encoding: String = row.try_get("details_encoding").map_err(unavailable)?;
            Ok(AgentRecord {
                head: head_from_row(row)?,
                details: encoding::decode(&details, &details_encoding)?,
            })
        }

        impl $store {
            /// Runs an `UPDATE … RETURNING instance_uid` that takes agents offline, and records an
            /// `offline` event for each, in one transaction.
            async fn mark_offline<'q>(
                &self,
                update: sqlx::query::Query<'q, $db, <$db as sqlx::Database>::Arguments<'q>>,
                now: OffsetDateTime,
                reason: &str,
            ) -> Result<Vec<Uuid>> {
                let mut transaction = self.pool.begin().await.map_err(unavailable)?;
                let rows = update.fetch_all(&mut *transaction).await.map_err(unavailable)?;
                let mut uids = rows
                    .iter()
                    .map(|row| $bulk::row_uid(row, "instance_uid"))
                    .collect::<Result<Vec<Uuid>>>()?;
                uids.sort();
                let events: Vec<NewEvent> = uids
                    .iter()
                    .map(|uid| NewEvent {
                        instance_uid: *uid,
                        at: now,
                        kind: EventKind::Offline.as_str(),
                        payload: event_payload(&serde_json::json!({ "reason": reason })),
                    })
                    .collect();
                if !events.is_empty() {
                    $bulk::insert_events(&mut transaction, &EventColumns::new(&events, self.gzip_threshold)).await?;
                }
                transaction.commit().await.map_err(unavailable)?;
                Ok(uids)
            }
        }

        #[async_trait]
        impl Store for $store {
            async fn get_agent(&self, uid: Uuid) -> Result<Option<AgentRecord>> {
                let row = sqlx::query(&format!(
                    "SELECT {AGENT_COLUMNS}, details, details_encoding FROM agents WHERE instance_uid = $1"
                ))
                .bind($bulk::uid_param(uid))
                .fetch_optional(&self.pool)
                .await
                .map_err(unavailable)?;
                row.as_ref().map(record_from_row).transpose()
            }

            async fn get_agents(&self, uids: &[Uuid]) -> Result<Vec<AgentRecord>> {
                if uids.is_empty() {
                    return Ok(Vec::new());
                }
                let mut connection = self.pool.acquire().await.map_err(unavailable)?;
                let rows = $bulk::select_agents(&mut connection, uids).await?;
                rows.iter().map(record_from_row).collect()
            }

            async fn write(&self, batch: &WriteBatch<'_>) -> Result<()> {
                if batch.is_empty() {
                    return Ok(());
                }
                // Sorted by uid (one lock order for every writer), the last snapshot of each agent.
                let agents: Vec<&AgentRecord> = batch
                    .agents
                    .iter()
                    .map(|record| (record.head.instance_uid, *record))
                    .collect::<BTreeMap<_, _>>()
                    .into_values()
                    .collect();
                let seen: Vec<&SeenUpdate> = batch
                    .seen
                    .iter()
                    .map(|seen| (seen.instance_uid, seen))
                    .collect::<BTreeMap<_, _>>()
                    .into_values()
                    .collect();
                let round = Round {
                    fence: batch.fence.as_ref(),
                    agents: AgentColumns::new(&agents, &batch.details_current, self.gzip_threshold),
                    attributes: AttributeColumns::new(&agents, &batch.attributes_current),
                    events: EventColumns::new(&batch.events, self.gzip_threshold),
                    seen: SeenColumns::new(&seen),
                };
                $bulk::write(&self.pool, &round).await
            }

            async fn mark_stale_offline(
                &self,
                transport: Transport,
                cutoff: OffsetDateTime,
                now: OffsetDateTime,
                reason: &str,
            ) -> Result<Vec<Uuid>> {
                let update = sqlx::query(concat!(
                    "UPDATE agents SET status = 'offline' WHERE instance_uid IN (\
                     SELECT instance_uid FROM agents \
                     WHERE transport = $1 AND status = 'online' AND last_seen < $2 \
                     ORDER BY instance_uid",
                    $lock_rows,
                    ") RETURNING instance_uid"
                ))
                .bind(transport.as_str())
                .bind(encoding::micros(cutoff));
                self.mark_offline(update, now, reason).await
            }

            async fn list_agents(&self, query: &AgentQuery) -> Result<Vec<AgentHead>> {
                let mut select = QueryBuilder::<$db>::new(format!("SELECT {AGENT_COLUMNS} FROM agents WHERE 1 = 1"));
                if let Some(status) = query.status {
                    select.push(" AND status = ").push_bind(status.as_str());
                }
                for (key, value) in &query.attributes {
                    select
                        .push(" AND EXISTS (SELECT 1 FROM agent_attributes a WHERE a.instance_uid = agents.instance_uid AND a.key = ")
                        .push_bind(key.clone())
                        .push(" AND a.value = ")
                        .push_bind(value.clone())
                        .push(")");
                }
                if let Some(after) = query.after {
                    select.push(" AND instance_uid > ").push_bind($bulk::uid_param(after));
                }
                select.push(" ORDER BY instance_uid LIMIT ").push_bind(i64::from(query.limit));
                let rows = select.build().fetch_all(&self.pool).await.map_err(unavailable)?;
                rows.iter().map(head_from_row).collect()
            }

            async fn list_events(&self, uid: Uuid, query: &EventQuery) -> Result<Vec<AgentEvent>> {
                let mut select = QueryBuilder::<$db>::new(
                    "SELECT id, instance_uid, at, kind, payload, payload_encoding FROM agent_events WHERE instance_uid = ",
                );
                select.push_bind($bulk::uid_param(uid));
                if let Some(before) = query.before {
                    select.push(" AND id < ").push_bind(before);
                }
                select.push(" ORDER BY id DESC LIMIT ").push_bind(i64::from(query.limit));
                let rows = select.build().fetch_all(&self.pool).await.map_err(unavailable)?;
                rows.iter()
                    .map(|row| {
                        let payload: Vec<u8> = row.try_get("payload").map_err(unavailable)?;
                        let payload_encoding: String = row.try_get("payload_encoding").map_err(unavailable)?;
                        Ok(AgentEvent {
                            id: row.try_get("id").map_err(unavailable)?,
                            instance_uid: $bulk::row_uid(row, "instance_uid")?,
                            at: encoding::from_micros(row.try_get("at").map_err(unavailable)?)?,
                            kind: row.try_get("kind").map_err(unavailable)?,
                            payload: encoding::decode(&payload, &payload_encoding)?,
                        })
                    })
                    .collect()
            }

            async fn ping(&self) -> Result<()> {
                sqlx::query("SELECT 1").execute(&self.pool).await.map_err(unavailable)?;
                Ok(())
            }

            async fn heartbeat_replica(&self, replica: &str, now: OffsetDateTime, expires_at: OffsetDateTime) -> Result<u32> {
                let mut transaction = self.pool.begin().await.map_err(unavailable)?;
                sqlx::query(
                    "INSERT INTO control_plane_replicas (replica_id, expires_at) VALUES ($1, $2) \
                     ON CONFLICT (replica_id) DO UPDATE SET expires_at = excluded.expires_at",
                )
                .bind(replica.to_owned())
                .bind(encoding::micros(expires_at))
                .execute(&mut *transaction)
                .await
                .map_err(unavailable)?;
                sqlx::query("DELETE FROM control_plane_replicas WHERE expires_at <= $1")
                    .bind(encoding::micros(now))
                    .execute(&mut *transaction)
                    .await
                    .map_err(unavailable)?;
                let live: i64 = sqlx::query("SELECT COUNT(*) AS live FROM control_plane_replicas")
                    .fetch_one(&mut *transaction)
                    .await
                    .map_err(unavailable)?
                    .try_get("live")
                    .map_err(unavailable)?;
                transaction.commit().await.map_err(unavailable)?;
                Ok(live.max(1) as u32)
            }

            async fn claim_partitions(
                &self,
                replica: &str,
                total: u16,
                want: u16,
                now: OffsetDateTime,
                expires_at: OffsetDateTime,
            ) -> Result<Vec<Lease>> {
                let now = encoding::micros(now);
                let expires_at = encoding::micros(expires_at);
                let mut transaction = self.pool.begin().await.map_err(unavailable)?;
                let known: i64 = sqlx::query("SELECT COUNT(*) AS known FROM partition_leases WHERE partition < $1")
                    .bind(i32::from(total))
                    .fetch_one(&mut *transaction)
                    .await
                    .map_err(unavailable)?
                    .try_get("known")
                    .map_err(unavailable)?;
                if known < i64::from(total) {
                    let mut missing = QueryBuilder::<$db>::new("INSERT INTO partition_leases (partition, owner, epoch, expires_at) ");
                    missing.push_values(0..total, |mut row, partition| {
                        row.push_bind(i32::from(partition)).push_bind("").push_bind(0i64).push_bind(0i64);
                    });
                    missing.push(" ON CONFLICT (partition) DO NOTHING");
                    missing.build().execute(&mut *transaction).await.map_err(unavailable)?;
                }

                let lease = |row: &$row| -> Result<Lease> {
                    let partition: i32 = row.try_get("partition").map_err(unavailable)?;
                    Ok(Lease { partition: partition as u16, epoch: row.try_get("epoch").map_err(unavailable)? })
                };
                let held = sqlx::query(
                    "SELECT partition, epoch FROM partition_leases \
                     WHERE owner = $1 AND expires_at > $2 AND partition < $3 ORDER BY partition",
                )
                .bind(replica.to_owned())
                .bind(now)
                .bind(i32::from(total))
                .fetch_all(&mut *transaction)
                .await
                .map_err(unavailable)?;
                let held = held.iter().map(lease).collect::<Result<Vec<Lease>>>()?;
                // Rows are locked in partition order, as fenced writes lock them, so the two
                // never deadlock.
                let mut leases = Vec::new();
                for (index, lease) in held.into_iter().enumerate() {
                    let keep = index < usize::from(want);
                    let update = if keep {
                        sqlx::query("UPDATE partition_leases SET expires_at = $1 WHERE partition = $2 AND owner = $3")
                            .bind(expires_at)
                    } else {
                        sqlx::query("UPDATE partition_leases SET owner = '', expires_at = 0 WHERE partition = $1 AND owner = $2")
                    };
                    update
                        .bind(i32::from(lease.partition))
                        .bind(replica.to_owned())
                        .execute(&mut *transaction)
                        .await
                        .map_err(unavailable)?;
                    if keep {
                        leases.push(lease);
                    }
                }
                let room = usize::from(want).saturating_sub(leases.len());
                if room > 0 {
                    // Locked first: a takeover waits for the old owner's writes in flight.
                    let free = sqlx::query(concat!(
                        "SELECT partition FROM partition_leases WHERE expires_at <= $1 AND partition < $2 \
                         ORDER BY partition LIMIT $3",
                        $lock_rows
                    ))
                    .bind(now)
                    .bind(i32::from(total))
                    .bind(room as i64)
                    .fetch_all(&mut *transaction)
                    .await
                    .map_err(unavailable)?;
                    for row in free {
                        let partition: i32 = row.try_get("partition").map_err(unavailable)?;
                        let taken = sqlx::query(
                            "UPDATE partition_leases SET owner = $1, epoch = epoch + 1, expires_at = $2 \
                             WHERE partition = $3 AND expires_at <= $4 RETURNING partition, epoch",
                        )
                        .bind(replica.to_owned())
                        .bind(expires_at)
                        .bind(partition)
                        .bind(now)
                        .fetch_optional(&mut *transaction)
                        .await
                        .map_err(unavailable)?;
                        if let Some(row) = taken {
                            leases.push(lease(&row)?);
                        }
                    }
                }
                transaction.commit().await.map_err(unavailable)?;
                leases.sort_by_key(|lease| lease.partition);
                Ok(leases)
            }

            async fn release_replica(&self, replica: &str) -> Result<()> {
                let mut transaction = self.pool.begin().await.map_err(unavailable)?;
                sqlx::query("UPDATE partition_leases SET owner = '', expires_at = 0 WHERE owner = $1")
                    .bind(replica.to_owned())
                    .execute(&mut *transaction)
                    .await
                    .map_err(unavailable)?;
                sqlx::query("DELETE FROM control_plane_replicas WHERE replica_id = $1")
                    .bind(replica.to_owned())
                    .execute(&mut *transaction)
                    .await
                    .map_err(unavailable)?;
                transaction.commit().await.map_err(unavailable)
            }

            async fn gateways_with_online_agents(&self) -> Result<Vec<String>> {
                let rows = sqlx::query(
                    "SELECT DISTINCT gateway_id FROM agents WHERE status = 'online' AND transport = 'websocket'",
                )
                .fetch_all(&self.pool)
                .await
                .map_err(unavailable)?;
                rows.iter()
                    .map(|row| row.try_get::<String, _>("gateway_id").map_err(unavailable))
                    .collect()
            }

            async fn mark_gateway_offline(&self, gateway_id: &str, now: OffsetDateTime, reason: &str) -> Result<Vec<Uuid>> {
                let update = sqlx::query(concat!(
                    "UPDATE agents SET status = 'offline' WHERE instance_uid IN (\
                     SELECT instance_uid FROM agents \
                     WHERE gateway_id = $1 AND status = 'online' AND transport = 'websocket' \
                     ORDER BY instance_uid",
                    $lock_rows,
                    ") RETURNING instance_uid"
                ))
                .bind(gateway_id.to_owned());
                self.mark_offline(update, now, reason).await
            }
        }
    };
}

pub(crate) use sql_store;
