//! `/api/v1/configurations`, `/api/v1/validate` and `/api/v1/lint-rules`: authoring,
//! validation, publishing and the pictures of published versions.

use std::collections::BTreeMap;

use ampora_collector_config::{render_swimlane, Analysis, Graph, LintRule, Problem};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use super::auth::Principal;
use super::extract::{JsonBody, Path, Query};
use super::paging::{next_page_token, page_token, Limit};
use super::{ApiError, ApiState};
use crate::configurations::{self, reported_components, Draft, LintRuleUpdate, DEFAULT_WORKSPACE};
use crate::storage::{Configuration, ConfigurationVersion};

// === requests ===

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    yaml: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DraftRequest {
    yaml: String,
    row_version: i64,
}

/// `?instance_uid=…`: validate against the components that agent reported.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ValidateQuery {
    #[serde(default)]
    instance_uid: Option<Uuid>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidateRequest {
    yaml: String,
    #[serde(default)]
    instance_uid: Option<Uuid>,
}

/// `GET /api/v1/configurations?limit=…&page_token=…`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    #[serde(default)]
    limit: Limit,
    #[serde(default, deserialize_with = "page_token")]
    page_token: Option<i64>,
}

/// `?from=V&to=W`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiffQuery {
    from: i64,
    to: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LintRuleRequest {
    enabled: Option<bool>,
    severity: Option<String>,
    message: Option<String>,
    hint: Option<String>,
}

// === responses ===

#[derive(Debug, Serialize)]
pub struct VersionSummary {
    version: i64,
    hash: String,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
}

impl From<ConfigurationVersion> for VersionSummary {
    fn from(version: ConfigurationVersion) -> Self {
        VersionSummary {
            version: version.version,
            hash: version.hash,
            created_at: version.created_at,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ConfigurationView {
    id: i64,
    name: String,
    description: String,
    labels: BTreeMap<String, String>,
    /// The draft.
    yaml: String,
    row_version: i64,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    updated_at: OffsetDateTime,
    versions: Vec<VersionSummary>,
}

impl ConfigurationView {
    fn new(configuration: Configuration, versions: Vec<ConfigurationVersion>) -> Self {
        ConfigurationView {
            id: configuration.id,
            name: configuration.name,
            description: configuration.description,
            labels: configuration.labels,
            yaml: configuration.draft,
            row_version: configuration.row_version,
            created_at: configuration.created_at,
            updated_at: configuration.updated_at,
            versions: versions.into_iter().map(VersionSummary::from).collect(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ConfigurationsPage {
    configurations: Vec<ConfigurationView>,
    next_page_token: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct DraftView {
    id: i64,
    row_version: i64,
}

#[derive(Debug, Serialize)]
pub struct ValidationView {
    problems: Vec<Problem>,
    /// The pipelines as a graph; absent when the YAML could not be read as a config.
    graph: Option<Graph>,
}

impl From<Analysis> for ValidationView {
    fn from(analysis: Analysis) -> Self {
        ValidationView {
            problems: analysis.problems,
            graph: analysis.graph,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct PublishView {
    version: i64,
    hash: String,
    /// Warnings: they did not block publishing.
    problems: Vec<Problem>,
}

#[derive(Debug, Serialize)]
pub struct VersionView {
    configuration_id: i64,
    version: i64,
    yaml: String,
    hash: String,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    graph: Option<Graph>,
}

#[derive(Debug, Serialize)]
pub struct LintRulesView {
    rules: Vec<LintRule>,
}

// === handlers ===

pub async fn configuration_create(
    State(state): State<ApiState>,
    principal: Principal,
    JsonBody(request): JsonBody<CreateRequest>,
) -> Result<(StatusCode, Json<ConfigurationView>), ApiError> {
    let draft = Draft {
        name: request.name,
        description: request.description,
        labels: request.labels,
        yaml: request.yaml,
    };
    let configuration = configurations::create(
        state.store.as_ref(),
        draft,
        OffsetDateTime::now_utc(),
        &principal.audit,
    )
    .await?;
    tracing::info!(configuration_id = configuration.id, name = %configuration.name, "configuration created");
    Ok((
        StatusCode::CREATED,
        Json(ConfigurationView::new(configuration, Vec::new())),
    ))
}

pub async fn configurations_list(
    State(state): State<ApiState>,
    Query(query): Query<ListQuery>,
) -> Result<Json<ConfigurationsPage>, ApiError> {
    let limit = query.limit.get();
    let after = query.page_token.unwrap_or(0);
    let listed = state
        .store
        .list_configurations(DEFAULT_WORKSPACE, after, limit)
        .await?;
    let next_page_token = next_page_token(&listed, limit, |c| c.id);
    let ids: Vec<i64> = listed
        .iter()
        .map(|configuration| configuration.id)
        .collect();
    let mut versions = state
        .store
        .list_versions(&ids)
        .await?
        .into_iter()
        .peekable();
    let configurations = listed
        .into_iter()
        .map(|configuration| {
            // Versions come by configuration, in the page's order.
            let mut own = Vec::new();
            while let Some(version) =
                versions.next_if(|version| version.configuration_id == configuration.id)
            {
                own.push(version);
            }
            ConfigurationView::new(configuration, own)
        })
        .collect();
    Ok(Json(ConfigurationsPage {
        configurations,
        next_page_token,
    }))
}

pub async fn configuration_get(
    State(state): State<ApiState>,
    Path(id): Path<i64>,
) -> Result<Json<ConfigurationView>, ApiError> {
    let store = state.store.as_ref();
    let configuration = configurations::get(store, id).await?;
    let versions = store.list_versions(&[id]).await?;
    Ok(Json(ConfigurationView::new(configuration, versions)))
}

pub async fn draft_put(
    State(state): State<ApiState>,
    principal: Principal,
    Path(id): Path<i64>,
    JsonBody(request): JsonBody<DraftRequest>,
) -> Result<Json<DraftView>, ApiError> {
    let row_version = configurations::update_draft(
        state.store.as_ref(),
        id,
        &request.yaml,
        request.row_version,
        OffsetDateTime::now_utc(),
        &principal.audit,
    )
    .await?;
    Ok(Json(DraftView { id, row_version }))
}

pub async fn configuration_validate(
    State(state): State<ApiState>,
    Path(id): Path<i64>,
    Query(query): Query<ValidateQuery>,
) -> Result<Json<ValidationView>, ApiError> {
    let configuration = configurations::get(state.store.as_ref(), id).await?;
    validate(&state, &configuration.draft, query.instance_uid).await
}

pub async fn validate_post(
    State(state): State<ApiState>,
    JsonBody(request): JsonBody<ValidateRequest>,
) -> Result<Json<ValidationView>, ApiError> {
    validate(&state, &request.yaml, request.instance_uid).await
}

/// Validates `yaml`, against the components agent `instance_uid` reported when one is named.
async fn validate(
    state: &ApiState,
    yaml: &str,
    instance_uid: Option<Uuid>,
) -> Result<Json<ValidationView>, ApiError> {
    let store = state.store.as_ref();
    let reported = match instance_uid {
        Some(uid) => {
            let record = store
                .get_agent(uid)
                .await?
                .ok_or_else(|| ApiError::NotFound(format!("no agent {uid}")))?;
            reported_components(&record.details)
        }
        None => None,
    };
    let analysis =
        configurations::validate(store, DEFAULT_WORKSPACE, yaml, reported.as_ref()).await?;
    Ok(Json(analysis.into()))
}

pub async fn configuration_publish(
    State(state): State<ApiState>,
    principal: Principal,
    Path(id): Path<i64>,
) -> Result<(StatusCode, Json<PublishView>), ApiError> {
    let publication = configurations::publish(
        state.store.as_ref(),
        id,
        OffsetDateTime::now_utc(),
        &principal.audit,
    )
    .await?;
    let status = if publication.created {
        tracing::info!(configuration_id = id, version = publication.version, hash = %publication.hash, "configuration published");
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(PublishView {
            version: publication.version,
            hash: publication.hash,
            problems: publication.problems,
        }),
    ))
}

pub async fn version_get(
    State(state): State<ApiState>,
    Path((id, version)): Path<(i64, i64)>,
) -> Result<Json<VersionView>, ApiError> {
    let version = configurations::get_version(state.store.as_ref(), id, version).await?;
    let graph = configurations::graph_of(&version.yaml);
    Ok(Json(VersionView {
        configuration_id: version.configuration_id,
        version: version.version,
        yaml: version.yaml,
        hash: version.hash,
        created_at: version.created_at,
        graph,
    }))
}

/// The two versions as unified diff text.
pub async fn diff_get(
    State(state): State<ApiState>,
    Path(id): Path<i64>,
    Query(query): Query<DiffQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let diff = configurations::diff(state.store.as_ref(), id, query.from, query.to).await?;
    Ok(([(header::CONTENT_TYPE, "text/x-diff; charset=utf-8")], diff))
}

pub async fn swimlane_get(
    State(state): State<ApiState>,
    Path((id, version)): Path<(i64, i64)>,
) -> Result<impl IntoResponse, ApiError> {
    let version = configurations::get_version(state.store.as_ref(), id, version).await?;
    let graph = configurations::graph_of(&version.yaml).ok_or_else(|| {
        ApiError::Invalid(format!(
            "version {} of configuration {id} has no pipelines to draw",
            version.version
        ))
    })?;
    Ok((
        [(header::CONTENT_TYPE, "image/svg+xml")],
        render_swimlane(&graph),
    ))
}

pub async fn lint_rules_list(
    State(state): State<ApiState>,
) -> Result<Json<LintRulesView>, ApiError> {
    let rules =
        configurations::effective_lint_rules(state.store.as_ref(), DEFAULT_WORKSPACE).await?;
    Ok(Json(LintRulesView { rules }))
}

pub async fn lint_rule_put(
    State(state): State<ApiState>,
    principal: Principal,
    Path(id): Path<String>,
    JsonBody(request): JsonBody<LintRuleRequest>,
) -> Result<Json<LintRule>, ApiError> {
    let update = LintRuleUpdate {
        enabled: request.enabled,
        severity: request.severity,
        message: request.message,
        hint: request.hint,
    };
    let rule = configurations::set_lint_rule(
        state.store.as_ref(),
        DEFAULT_WORKSPACE,
        &id,
        update,
        OffsetDateTime::now_utc(),
        &principal.audit,
    )
    .await?;
    tracing::info!(rule = %rule.id, enabled = rule.enabled, "lint rule changed");
    Ok(Json(rule))
}
