//! What analysis reports: problems with a rule id, a severity and a position.

use serde::{Deserialize, Serialize};

use crate::graph::Graph;
use crate::yaml::Position;

/// An error blocks publishing a configuration; a warning does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

impl Severity {
    /// The name it is written with (in JSON too): `error` or `warning`.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        }
    }

    pub fn parse(text: &str) -> Option<Severity> {
        [Severity::Error, Severity::Warning]
            .into_iter()
            .find(|severity| severity.as_str() == text)
    }
}

/// One finding, located at a 1-based line and column of the analysed YAML.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    pub severity: Severity,
    /// A stable id: a validation rule (`crate::rules`) or a lint rule.
    pub rule: String,
    pub message: String,
    pub hint: Option<String>,
    pub line: usize,
    pub column: usize,
}

impl Problem {
    pub(crate) fn error(rule: &str, position: Position, message: impl Into<String>) -> Problem {
        Problem::new(Severity::Error, rule, position, message)
    }

    pub(crate) fn new(
        severity: Severity,
        rule: &str,
        position: Position,
        message: impl Into<String>,
    ) -> Problem {
        Problem {
            severity,
            rule: rule.to_string(),
            message: message.into(),
            hint: None,
            line: position.line,
            column: position.column,
        }
    }

    pub(crate) fn with_hint(mut self, hint: impl Into<String>) -> Problem {
        self.hint = Some(hint.into());
        self
    }
}

/// The outcome of [`crate::analyze`].
#[derive(Debug, Clone, Serialize)]
pub struct Analysis {
    /// Sorted by (line, column); problems at one place keep the order they were found in.
    pub problems: Vec<Problem>,
    /// The pipelines as far as they could be read; `None` when the YAML itself is unreadable or
    /// not a mapping.
    pub graph: Option<Graph>,
}

impl Analysis {
    /// Whether any problem is an error: such a configuration must not be published.
    pub fn blocks_publish(&self) -> bool {
        self.problems.iter().any(|p| p.severity == Severity::Error)
    }
}
