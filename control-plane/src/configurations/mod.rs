//! Authoring configurations: drafts guarded by row versions, validation and lint with
//! positions, publishing immutable content-addressed versions, diffs and pictures.
//!
//! The analysis itself (what the Collector would refuse, the lint rules, the pipeline graph)
//! is the `ampora-collector-config` crate's; this module brings it the workspace's lint rule
//! settings and the agents' reported components, and stores what comes out.

mod components;
mod lint_rules;

pub use components::reported_components;
pub use lint_rules::{effective_lint_rules, set_lint_rule, LintRuleUpdate};

use std::collections::BTreeMap;
use std::sync::OnceLock;

use ampora_collector_config::{
    analyze, rules, Analysis, Catalog, Graph, Problem, ReportedComponents, Severity,
};
use time::OffsetDateTime;

use crate::audit::AuditContext;
use crate::remote_config::sha256_hex;
use crate::storage::{
    Configuration, ConfigurationVersion, Guarded, NewConfiguration, Published, Store, StoreError,
};

/// The one workspace until operators' workspaces exist.
pub const DEFAULT_WORKSPACE: &str = "default";

/// Largest configuration accepted, in bytes: far above any real Collector config.
pub const MAX_YAML_BYTES: usize = 512 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ConfigurationError {
    #[error("no configuration {0}")]
    NotFound(i64),
    #[error("configuration {id} has no version {version}")]
    NoVersion { id: i64, version: i64 },
    #[error("the draft changed meanwhile: its row version is now {current}")]
    Stale { current: i64 },
    #[error("a configuration named {0:?} exists already")]
    Duplicate(String),
    #[error("{0}")]
    Invalid(String),
    #[error("the configuration has problems that block publishing")]
    Refused(Vec<Problem>),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub type Result<T, E = ConfigurationError> = std::result::Result<T, E>;

/// The components table in the repository, parsed once.
fn builtin_catalog() -> &'static Catalog {
    static CATALOG: OnceLock<Catalog> = OnceLock::new();
    CATALOG.get_or_init(Catalog::builtin)
}

/// Validates and lints `yaml` with the workspace's lint rules, against the components
/// `reported` by the agents it is for, when known.
pub async fn validate(
    store: &dyn Store,
    workspace: &str,
    yaml: &str,
    reported: Option<&ReportedComponents>,
) -> Result<Analysis> {
    check_size(yaml)?;
    let rules = effective_lint_rules(store, workspace).await?;
    let analysis = match reported {
        Some(reported) => analyze(yaml, &builtin_catalog().with_reported(reported), &rules),
        None => analyze(yaml, builtin_catalog(), &rules),
    };
    Ok(analysis)
}

fn check_size(yaml: &str) -> Result<()> {
    if yaml.len() > MAX_YAML_BYTES {
        return Err(ConfigurationError::Invalid(format!(
            "the configuration is {} bytes; at most {MAX_YAML_BYTES} are accepted",
            yaml.len()
        )));
    }
    Ok(())
}

/// A configuration to create, as the operator gives it.
#[derive(Debug, Clone)]
pub struct Draft {
    pub name: String,
    pub description: String,
    pub labels: BTreeMap<String, String>,
    pub yaml: String,
}

pub async fn create(
    store: &dyn Store,
    draft: Draft,
    now: OffsetDateTime,
    audit: &AuditContext,
) -> Result<Configuration> {
    let name = draft.name.trim();
    if name.is_empty() || name.len() > 200 {
        return Err(ConfigurationError::Invalid(
            "name must be 1 to 200 characters".into(),
        ));
    }
    check_size(&draft.yaml)?;
    let new = NewConfiguration {
        workspace: DEFAULT_WORKSPACE.to_owned(),
        name: name.to_owned(),
        description: draft.description,
        labels: draft.labels,
        draft: draft.yaml,
    };
    match store.create_configuration(&new, now, audit).await {
        Err(StoreError::Duplicate(_)) => Err(ConfigurationError::Duplicate(new.name)),
        other => Ok(other?),
    }
}

pub async fn get(store: &dyn Store, id: i64) -> Result<Configuration> {
    store
        .get_configuration(id)
        .await?
        .ok_or(ConfigurationError::NotFound(id))
}

/// Replaces the draft when `row_version` is current; returns the new row version.
pub async fn update_draft(
    store: &dyn Store,
    id: i64,
    yaml: &str,
    row_version: i64,
    now: OffsetDateTime,
    audit: &AuditContext,
) -> Result<i64> {
    check_size(yaml)?;
    guarded(
        id,
        store
            .update_draft(id, yaml, row_version, now, audit)
            .await?,
    )
}

fn guarded<T>(id: i64, outcome: Guarded<T>) -> Result<T> {
    match outcome {
        Guarded::Done(value) => Ok(value),
        Guarded::Stale { current } => Err(ConfigurationError::Stale { current }),
        Guarded::NotFound => Err(ConfigurationError::NotFound(id)),
    }
}

/// What publishing gave: the version (new, or the newest when it had the same bytes).
#[derive(Debug, Clone)]
pub struct Publication {
    pub version: i64,
    pub hash: String,
    pub created: bool,
    /// Warnings that did not block publishing.
    pub problems: Vec<Problem>,
}

/// Publishes the draft as the next version, unless validation or an error-severity lint rule
/// refuses it. The hash is SHA-256 over the draft's bytes exactly: what agents are sent.
pub async fn publish(
    store: &dyn Store,
    id: i64,
    now: OffsetDateTime,
    audit: &AuditContext,
) -> Result<Publication> {
    let configuration = get(store, id).await?;
    let analysis = validate(store, &configuration.workspace, &configuration.draft, None).await?;
    if analysis.blocks_publish() {
        return Err(ConfigurationError::Refused(analysis.problems));
    }
    let hash = sha256_hex(configuration.draft.as_bytes());
    let Published { version, created } = guarded(
        id,
        store
            .publish(
                id,
                configuration.row_version,
                &configuration.draft,
                &hash,
                now,
                audit,
            )
            .await?,
    )?;
    Ok(Publication {
        version,
        hash,
        created,
        problems: analysis.problems,
    })
}

pub async fn get_version(store: &dyn Store, id: i64, version: i64) -> Result<ConfigurationVersion> {
    store
        .get_version(id, version)
        .await?
        .ok_or(ConfigurationError::NoVersion { id, version })
}

/// The problems that keep version `version` of configuration `id` from running on an agent that
/// reported these components: component types it does not have.
pub async fn missing_components(
    store: &dyn Store,
    id: i64,
    version: i64,
    reported: &ReportedComponents,
) -> Result<Vec<Problem>> {
    let version = get_version(store, id, version).await?;
    let catalog = builtin_catalog().with_reported(reported);
    Ok(analyze(&version.yaml, &catalog, &[])
        .problems
        .into_iter()
        .filter(|problem| {
            problem.rule == rules::UNKNOWN_COMPONENT_TYPE && problem.severity == Severity::Error
        })
        .collect())
}

/// Two versions as a unified diff of their text.
pub async fn diff(store: &dyn Store, id: i64, from: i64, to: i64) -> Result<String> {
    let (old, new) = (
        get_version(store, id, from).await?,
        get_version(store, id, to).await?,
    );
    Ok(similar::TextDiff::from_lines(&old.yaml, &new.yaml)
        .unified_diff()
        .context_radius(3)
        .header(&format!("version {from}"), &format!("version {to}"))
        .to_string())
}

/// A version's pipeline graph (`None` when its YAML is not a configuration at all).
pub fn graph_of(yaml: &str) -> Option<Graph> {
    analyze(yaml, builtin_catalog(), &[]).graph
}
