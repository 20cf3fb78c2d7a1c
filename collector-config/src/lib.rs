//! Validates and lints OpenTelemetry Collector configurations before they are published to
//! agents, with a 1-based line and column for every problem, and draws their pipelines.
//!
//! # Layout
//!
//! [`analyze`] runs the stages in order:
//! - `yaml` reads the first YAML document with saphyr into a tree of positioned nodes (a
//!   syntax error stops here, at its position);
//! - `config` reads that tree into the Collector's model (sections, component ids, `service`
//!   extensions and pipelines; `ids` parses ids), reporting shape problems on the way;
//! - `validate` checks what the Collector itself refuses at start-up (references, pipelines,
//!   connectors, component types against the [`Catalog`]); `env_syntax` checks `${...}`;
//! - `lint` applies the effective [`LintRule`]s;
//! - `graph` builds the serializable [`Graph`], which `svg` draws ([`render_swimlane`]).
//!
//! Every problem carries a stable rule id from [`rules`].
//!
//! # Limits
//! - Only the first YAML document is read, as the Collector does.
//! - Anchors and aliases are resolved by saphyr; merge keys (`<<: *anchor`) are not: such a
//!   key is read as an ordinary key (an unknown section at the top level).
//! - Component settings are not checked: only the Collector knows each component's schema.
//! - Inside block or escaped scalars, a `${...}` problem points at the scalar's start.

mod catalog;
mod config;
mod env_syntax;
mod graph;
mod ids;
mod lint;
mod problem;
pub mod rules;
mod svg;
mod validate;
mod yaml;

pub use catalog::{Catalog, Kind, ReportedComponents, Signal, TypeStatus};
pub use graph::{ComponentNode, ConnectorNode, Graph, PipelineNode};
pub use lint::{builtin_lint_rules, LintRule};
pub use problem::{Analysis, Problem, Severity};
pub use svg::render_swimlane;

/// Everything this crate finds in `yaml`: validation against `catalog`, then the enabled
/// `rules`, and the pipeline graph when the document could be read.
pub fn analyze(yaml: &str, catalog: &Catalog, rules: &[LintRule]) -> Analysis {
    let mut problems = Vec::new();
    let graph = match yaml::parse_first_document(yaml) {
        Err(error) => {
            problems.push(problem::Problem::error(
                rules::YAML_SYNTAX,
                error.position,
                format!("invalid YAML: {}", error.message),
            ));
            None
        }
        Ok(None) => {
            problems.push(problem::Problem::error(
                rules::EMPTY_CONFIG,
                yaml::Position { line: 1, column: 1 },
                "the configuration is empty",
            ));
            None
        }
        Ok(Some(root)) => {
            env_syntax::check(&root, &mut problems);
            config::read(&root, &mut problems).map(|config| {
                validate::validate(&config, catalog, &mut problems);
                lint::lint(&config, &root, rules, &mut problems);
                graph::build(&config)
            })
        }
    };
    // Stable: problems at one place keep the order in which the stages found them.
    problems.sort_by_key(|p| (p.line, p.column));
    Analysis { problems, graph }
}
