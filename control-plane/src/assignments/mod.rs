//! Assignments: a published configuration version for one agent, or for every agent whose
//! attributes match a selector. The newest assignment that names or selects an agent is what
//! the agent should run; rollouts will drive assignments step by step.

mod selector;
mod set;

pub use selector::{Selector, SelectorError};
pub use set::{AssignmentSet, AssignmentWatch};

use std::sync::Arc;

use time::OffsetDateTime;
use uuid::Uuid;

/// Who an assignment is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Agent(Uuid),
    Selector(Selector),
}

/// One assignment, with the version's bytes and hash: what an agent it applies to is offered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// Grows with every assignment: the newest wins.
    pub id: i64,
    pub configuration_id: i64,
    pub version: i64,
    /// SHA-256 of `yaml`, lowercase hex.
    pub hash: String,
    pub yaml: Arc<str>,
    pub target: Target,
    pub created_at: OffsetDateTime,
}

/// An assignment to make.
#[derive(Debug, Clone)]
pub struct NewAssignment {
    pub configuration_id: i64,
    pub version: i64,
    pub target: Target,
}
