//! Live updates for open pages: server-sent events telling which agents changed.
//!
//! Every change to an agent is a history row in the database, whichever replica wrote it (an
//! ingest worker, a presence sweep, a dead gateway's clean-up). So one poller per replica
//! reads the history rows newer than the last it saw, every [`POLL_INTERVAL`], and broadcasts
//! the uids that changed to the pages open on this replica; a page on replica A sees what
//! replica B applied within one interval. The database's load is one indexed range read per
//! interval per replica, whatever the number of open pages, and none while no page is open:
//! the poller starts with the first stream and stops after the last.
//!
//! PostgreSQL hands out ids before commit, so a row may become visible after a higher one: each
//! read goes back [`OVERLAP`] ids before the highest seen and skips the rows already sent.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use serde::Serialize;
use tokio::sync::{broadcast, Mutex};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::api::ApiState;
use crate::storage::Store;

/// How often the poller reads new history rows.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// How far back before the highest id seen each read goes.
const OVERLAP: i64 = 512;

/// Most history rows read per interval; beyond it a change says `many`.
const MAX_ROWS: u32 = 2_000;

/// Most uids one change names; beyond it a change says `many` (pages reload what they show).
const MAX_UIDS: usize = 200;

/// Changes buffered per open stream; a page that falls behind is told `many`.
const STREAM_QUEUE: usize = 64;

/// Which agents changed since the last change sent.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Change {
    pub agents: Arc<[Uuid]>,
    /// More changed than are named: a page should reload what it shows.
    pub many: bool,
}

/// The change feed of this replica; cheap to clone.
#[derive(Clone)]
pub struct Live {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    /// The running poller's channel; `None` while no page is open.
    sender: Mutex<Option<broadcast::Sender<Change>>>,
    closed: CancellationToken,
}

impl Live {
    pub fn new(store: Arc<dyn Store>) -> Live {
        Live {
            inner: Arc::new(Inner {
                store,
                sender: Mutex::new(None),
                closed: CancellationToken::new(),
            }),
        }
    }

    /// Ends every stream and the poller (the server is shutting down: open streams would
    /// otherwise hold their connections until the drain times out).
    pub fn close(&self) {
        self.inner.closed.cancel();
    }

    /// Follows the changes from now on; starts the poller if none runs.
    pub async fn subscribe(&self) -> broadcast::Receiver<Change> {
        let mut sender = self.inner.sender.lock().await;
        if let Some(sender) = sender.as_ref() {
            return sender.subscribe();
        }
        // Where "now" is, before the stream opens: a change made after the page that opened
        // it saw the stream open is never missed.
        let newest = match self.inner.store.newest_change().await {
            Ok(newest) => Some(newest),
            Err(error) => {
                tracing::warn!(%error, "live updates: reading the newest change");
                None
            }
        };
        let (new_sender, receiver) = broadcast::channel(STREAM_QUEUE);
        *sender = Some(new_sender.clone());
        tokio::spawn(poll(self.inner.clone(), new_sender, newest));
        receiver
    }
}

/// Reads new history rows until the last stream is gone or the server closes.
async fn poll(inner: Arc<Inner>, sender: broadcast::Sender<Change>, start: Option<i64>) {
    let mut sent: BTreeSet<i64> = BTreeSet::new();
    let mut highest = None;
    if let Some(start) = start {
        highest = Some(start);
        settle(inner.store.as_ref(), start, &mut sent).await;
    }
    let mut interval = tokio::time::interval(POLL_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = inner.closed.cancelled() => break,
            _ = interval.tick() => {}
        }
        {
            let mut current = inner.sender.lock().await;
            if sender.receiver_count() == 0 {
                *current = None;
                break;
            }
        }
        let Some(from) = highest else {
            match inner.store.newest_change().await {
                Ok(newest) => {
                    highest = Some(newest);
                    settle(inner.store.as_ref(), newest, &mut sent).await;
                }
                Err(error) => tracing::warn!(%error, "live updates: reading the newest change"),
            }
            continue;
        };
        let rows = match inner
            .store
            .changes_since((from - OVERLAP).max(0), MAX_ROWS)
            .await
        {
            Ok(rows) => rows,
            Err(error) => {
                tracing::warn!(%error, "live updates: reading changes");
                continue;
            }
        };
        metrics::counter!("ampora_ui_live_polls_total").increment(1);
        let mut many = rows.len() == MAX_ROWS as usize;
        let mut agents: Vec<Uuid> = Vec::new();
        for row in rows {
            highest = Some(highest.unwrap_or(0).max(row.event_id));
            if sent.insert(row.event_id) && !agents.contains(&row.instance_uid) {
                agents.push(row.instance_uid);
            }
        }
        if many {
            // Behind by more than a read: skip to the newest and let pages reload.
            if let Ok(newest) = inner.store.newest_change().await {
                highest = Some(newest);
            }
        }
        let floor = highest.unwrap_or(0) - OVERLAP;
        sent = sent.split_off(&floor);
        if agents.len() > MAX_UIDS {
            agents.truncate(MAX_UIDS);
            many = true;
        }
        if !agents.is_empty() || many {
            // No receiver left is found on the next tick.
            let _ = sender.send(Change {
                agents: agents.into(),
                many,
            });
        }
    }
}

/// Marks the rows visible up to `start` as sent: they are not news. Rows below it that become
/// visible later (PostgreSQL's ids are handed out before commit) still are.
async fn settle(store: &dyn Store, start: i64, sent: &mut BTreeSet<i64>) {
    match store
        .changes_since((start - OVERLAP).max(0), MAX_ROWS)
        .await
    {
        Ok(rows) => sent.extend(
            rows.iter()
                .map(|row| row.event_id)
                .filter(|&id| id <= start),
        ),
        Err(error) => tracing::warn!(%error, "live updates: reading recent changes"),
    }
}

/// Counts open streams while one lives.
struct StreamGauge;

impl StreamGauge {
    fn open() -> StreamGauge {
        metrics::gauge!("ampora_ui_live_streams").increment(1.0);
        StreamGauge
    }
}

impl Drop for StreamGauge {
    fn drop(&mut self) {
        metrics::gauge!("ampora_ui_live_streams").decrement(1.0);
    }
}

/// `GET /ui/live`: `change` events (`{"agents": [uid, …], "many": bool}`) as agents change.
pub async fn live_get(
    State(state): State<ApiState>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let live = state.live;
    let receiver = live.subscribe().await;
    let stream = futures::stream::unfold(
        (receiver, live, StreamGauge::open()),
        |(mut receiver, live, gauge)| async move {
            let change = tokio::select! {
                _ = live.inner.closed.cancelled() => return None,
                received = receiver.recv() => match received {
                    Ok(change) => change,
                    Err(broadcast::error::RecvError::Lagged(_)) => Change {
                        many: true,
                        ..Change::default()
                    },
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
            };
            let event = Event::default()
                .event("change")
                .json_data(&change)
                .unwrap_or_else(|_| Event::default().event("change").data("{\"many\":true}"));
            Some((Ok(event), (receiver, live, gauge)))
        },
    );
    Sse::new(stream).keep_alive(KeepAlive::default())
}
