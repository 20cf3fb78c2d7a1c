//! Rows as the stores read them, and how they become domain types. Instance uids are generic:
//! PostgreSQL stores a `uuid`, SQLite its hyphenated text.

use uuid::Uuid;

use super::assignments::TrackRow;
use super::encoding;
use super::{AgentEvent, Lease, Result, StoreError};
use crate::agents::snapshot::{AgentDetails, AgentHead, AgentRecord, AgentStatus, Transport};

/// The columns every agent query reads, in table order.
pub const AGENT_COLUMNS: &str =
    "instance_uid, status, transport, gateway_id, connection_id, remote_addr, \
     sequence_num, capabilities, first_seen, last_seen, summary";

/// An agent's head: everything but its details.
#[derive(sqlx::FromRow)]
pub struct HeadRow<Uid> {
    pub instance_uid: Uid,
    pub status: String,
    pub transport: String,
    pub gateway_id: String,
    pub connection_id: i64,
    pub remote_addr: String,
    pub sequence_num: i64,
    pub capabilities: i64,
    pub first_seen: i64,
    pub last_seen: i64,
    pub summary: String,
}

/// An agent's whole row, with what the server keeps of its config answers (from
/// `agent_configs`). Details are absent (`NULL`) when the agent was first stored by a write
/// that kept its details.
#[derive(sqlx::FromRow)]
pub struct AgentRow<Uid> {
    #[sqlx(flatten)]
    pub head: HeadRow<Uid>,
    pub details: Option<Vec<u8>>,
    pub details_encoding: Option<String>,
    #[sqlx(flatten)]
    pub track: TrackRow,
}

#[derive(sqlx::FromRow)]
pub struct EventRow<Uid> {
    pub id: i64,
    pub instance_uid: Uid,
    pub at: i64,
    pub kind: String,
    pub payload: Vec<u8>,
    pub payload_encoding: String,
}

#[derive(sqlx::FromRow)]
pub struct LeaseRow {
    pub partition: i32,
    pub epoch: i64,
}

/// A row holding just an instance uid (`RETURNING instance_uid`).
#[derive(sqlx::FromRow)]
pub struct UidRow<Uid> {
    pub instance_uid: Uid,
}

impl<Uid: Into<Uuid>> TryFrom<HeadRow<Uid>> for AgentHead {
    type Error = StoreError;

    fn try_from(row: HeadRow<Uid>) -> Result<AgentHead> {
        Ok(AgentHead {
            instance_uid: row.instance_uid.into(),
            status: AgentStatus::parse(&row.status)
                .ok_or_else(|| StoreError::Corrupt(format!("agent status {:?}", row.status)))?,
            transport: Transport::parse(&row.transport).ok_or_else(|| {
                StoreError::Corrupt(format!("agent transport {:?}", row.transport))
            })?,
            gateway_id: row.gateway_id,
            connection_id: row.connection_id as u64,
            remote_addr: row.remote_addr,
            sequence_num: row.sequence_num as u64,
            capabilities: row.capabilities as u64,
            first_seen: encoding::from_micros(row.first_seen)?,
            last_seen: encoding::from_micros(row.last_seen)?,
            summary: encoding::decode(row.summary.as_bytes(), encoding::JSON)?,
        })
    }
}

impl<Uid: Into<Uuid>> TryFrom<AgentRow<Uid>> for AgentRecord {
    type Error = StoreError;

    fn try_from(row: AgentRow<Uid>) -> Result<AgentRecord> {
        let details = match (row.details, row.details_encoding) {
            (Some(details), Some(details_encoding)) => {
                encoding::decode(&details, &details_encoding)?
            }
            _ => AgentDetails::default(),
        };
        Ok(AgentRecord {
            head: row.head.try_into()?,
            details,
            config: row.track.try_into()?,
        })
    }
}

impl<Uid: Into<Uuid>> TryFrom<EventRow<Uid>> for AgentEvent {
    type Error = StoreError;

    fn try_from(row: EventRow<Uid>) -> Result<AgentEvent> {
        Ok(AgentEvent {
            id: row.id,
            instance_uid: row.instance_uid.into(),
            at: encoding::from_micros(row.at)?,
            kind: row.kind,
            payload: encoding::decode(&row.payload, &row.payload_encoding)?,
        })
    }
}

impl From<LeaseRow> for Lease {
    fn from(row: LeaseRow) -> Lease {
        Lease {
            partition: row.partition as u16,
            epoch: row.epoch,
        }
    }
}

/// Converts every row, failing on the first that does not convert.
pub fn convert<Row, T: TryFrom<Row, Error = StoreError>>(rows: Vec<Row>) -> Result<Vec<T>> {
    rows.into_iter().map(T::try_from).collect()
}

/// The uids of `rows`, sorted.
pub fn sorted_uids<Uid: Into<Uuid>>(rows: Vec<UidRow<Uid>>) -> Vec<Uuid> {
    let mut uids: Vec<Uuid> = rows
        .into_iter()
        .map(|row| row.instance_uid.into())
        .collect();
    uids.sort();
    uids
}
