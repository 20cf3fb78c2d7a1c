//! The assignments in force, in memory on every replica: what each agent should run is looked
//! up on every message, so it must not cost a query.
//!
//! Every replica reloads the set when any replica announces a new assignment on the bus, and
//! also checks on a timer that it has the newest: an announcement lost on the at-most-once
//! bus delays an offer by at most that period, never loses it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ampora_shared::bus::Bus;
use futures::StreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{Assignment, Target};
use crate::storage::{AssignmentStore, Result};

/// The newest assignment per target.
#[derive(Debug, Default)]
pub struct AssignmentSet {
    direct: HashMap<Uuid, Arc<Assignment>>,
    /// Newest first.
    selected: Vec<Arc<Assignment>>,
    /// The newest assignment id in the set (0: none).
    newest: i64,
}

impl AssignmentSet {
    /// From every target's newest assignment.
    pub fn new(assignments: Vec<Assignment>) -> AssignmentSet {
        let mut set = AssignmentSet::default();
        for assignment in assignments {
            set.newest = set.newest.max(assignment.id);
            let assignment = Arc::new(assignment);
            match &assignment.target {
                Target::Agent(uid) => {
                    let newer = set
                        .direct
                        .get(uid)
                        .is_none_or(|known| known.id < assignment.id);
                    if newer {
                        set.direct.insert(*uid, assignment);
                    }
                }
                Target::Selector(_) => set.selected.push(assignment),
            }
        }
        set.selected.sort_by_key(|assignment| -assignment.id);
        set
    }

    pub fn newest_id(&self) -> i64 {
        self.newest
    }

    /// What agent `uid`, with these attribute pairs (sorted), should run: the newest
    /// assignment naming it or selecting it.
    pub fn resolve(&self, uid: &Uuid, attributes: &[(String, String)]) -> Option<Arc<Assignment>> {
        let direct = self.direct.get(uid);
        let selected = self
            .selected
            .iter()
            .find(|assignment| match &assignment.target {
                Target::Selector(selector) => selector.matches(attributes),
                Target::Agent(_) => false,
            });
        match (direct, selected) {
            (Some(direct), Some(selected)) if selected.id > direct.id => Some(selected.clone()),
            (Some(direct), _) => Some(direct.clone()),
            (None, selected) => selected.cloned(),
        }
    }
}

/// The current [`AssignmentSet`], shared by the API and the ingest workers of one replica.
#[derive(Clone)]
pub struct AssignmentWatch {
    sender: Arc<watch::Sender<Arc<AssignmentSet>>>,
}

impl Default for AssignmentWatch {
    fn default() -> Self {
        AssignmentWatch {
            sender: Arc::new(watch::Sender::new(Arc::new(AssignmentSet::default()))),
        }
    }
}

impl AssignmentWatch {
    pub fn current(&self) -> Arc<AssignmentSet> {
        self.sender.borrow().clone()
    }

    /// Wakes on every change of the set.
    pub fn subscribe(&self) -> watch::Receiver<Arc<AssignmentSet>> {
        self.sender.subscribe()
    }

    /// Reloads the set when the store holds a newer assignment than it.
    pub async fn refresh(&self, store: &dyn AssignmentStore) -> Result<()> {
        let newest = store.newest_assignment_id().await?;
        if newest <= self.current().newest_id() {
            return Ok(());
        }
        let set = AssignmentSet::new(store.current_assignments().await?);
        // Two refreshes may race: the set with the newer assignments stays.
        self.sender.send_if_modified(|current| {
            let newer = set.newest_id() > current.newest_id();
            if newer {
                *current = Arc::new(set);
            }
            newer
        });
        Ok(())
    }

    /// Keeps the set current until `shutdown`: on every announcement on `subject`, and every
    /// `period` in case one was lost.
    pub async fn keep_current(
        self,
        store: Arc<dyn crate::storage::Store>,
        bus: Arc<dyn Bus>,
        subject: String,
        period: Duration,
        shutdown: CancellationToken,
    ) {
        let mut announcements = match bus.subscribe(&subject).await {
            Ok(subscription) => Some(subscription),
            Err(error) => {
                tracing::warn!(%error, "cannot hear assignment announcements; polling only");
                None
            }
        };
        let mut timer = tokio::time::interval(period);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let heard = async {
                match announcements.as_mut() {
                    Some(subscription) => subscription.next().await.is_some(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = timer.tick() => {}
                alive = heard => if !alive {
                    announcements = None;
                },
            }
            if let Err(error) = self.refresh(store.as_ref()).await {
                tracing::warn!(%error, "cannot reload assignments");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use time::OffsetDateTime;

    use super::*;
    use crate::assignments::Selector;

    fn assignment(id: i64, target: Target) -> Assignment {
        Assignment {
            id,
            configuration_id: 1,
            version: id,
            hash: format!("{id:064x}"),
            yaml: Arc::from("receivers: {}"),
            target,
            created_at: OffsetDateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn the_newest_assignment_naming_or_selecting_an_agent_wins() {
        let uid = Uuid::from_u128(7);
        let prod = Target::Selector(Selector::parse("env=prod").unwrap());
        let team = Target::Selector(Selector::parse("team=a").unwrap());
        let set = AssignmentSet::new(vec![
            assignment(1, prod.clone()),
            assignment(2, Target::Agent(uid)),
            assignment(3, team),
        ]);
        let attributes = |list: &[(&str, &str)]| -> Vec<(String, String)> {
            list.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(set.newest_id(), 3);
        let prod_agent = attributes(&[("env", "prod")]);
        assert_eq!(set.resolve(&uid, &prod_agent).unwrap().id, 2);
        assert_eq!(set.resolve(&Uuid::from_u128(8), &prod_agent).unwrap().id, 1);
        let both = attributes(&[("env", "prod"), ("team", "a")]);
        assert_eq!(set.resolve(&uid, &both).unwrap().id, 3);
        assert!(set
            .resolve(&Uuid::from_u128(8), &attributes(&[("env", "dev")]))
            .is_none());
    }
}
