//! `/configurations`: the list, and one configuration's editor (inline problems at their lines,
//! save, publish), its versions, the swimlane picture and diffs between versions.

use askama::Template;
use axum::extract::{Path, State};
use axum::response::Response;
use axum_extra::extract::{Query, QueryRejection};
use serde::Deserialize;

use super::view::{self, Frame, Looking, PageError};
use crate::api::ApiState;
use crate::configurations::{self, DEFAULT_WORKSPACE};
use crate::storage::ConfigurationVersion;

/// Configurations per page of the list.
const PAGE_SIZE: u32 = 100;

pub struct ConfigurationRow {
    pub id: i64,
    pub name: String,
    pub description: String,
    pub labels: String,
    pub versions: usize,
    pub newest: Option<i64>,
    pub updated: String,
}

#[derive(Template)]
#[template(path = "configurations.html")]
struct ConfigurationsPage {
    frame: Frame,
    rows: Vec<ConfigurationRow>,
    next_page: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
pub struct ListParams {
    #[serde(default)]
    after: i64,
}

/// `GET /configurations?after=`
pub async fn configurations_page(
    State(state): State<ApiState>,
    looking: Looking,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Response, PageError> {
    let params = params.map(|Query(params)| params).unwrap_or_default();
    let listed = state
        .store
        .list_configurations(DEFAULT_WORKSPACE, params.after, PAGE_SIZE)
        .await?;
    let ids: Vec<i64> = listed
        .iter()
        .map(|configuration| configuration.id)
        .collect();
    let versions = state.store.list_versions(&ids).await?;
    let rows = listed
        .iter()
        .map(|configuration| {
            let own: Vec<&ConfigurationVersion> = versions
                .iter()
                .filter(|version| version.configuration_id == configuration.id)
                .collect();
            ConfigurationRow {
                id: configuration.id,
                name: configuration.name.clone(),
                description: configuration.description.clone(),
                labels: configuration
                    .labels
                    .iter()
                    .map(|(key, value)| format!("{key}={value}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                versions: own.len(),
                newest: own.last().map(|version| version.version),
                updated: view::when(configuration.updated_at),
            }
        })
        .collect();
    let next_page = (listed.len() == PAGE_SIZE as usize)
        .then(|| listed.last().map(|configuration| configuration.id))
        .flatten();
    view::page(&ConfigurationsPage {
        frame: looking.frame("configurations", "Configurations"),
        rows,
        next_page,
    })
}

pub struct VersionRow {
    pub version: i64,
    pub hash: String,
    pub created: String,
}

#[derive(Template)]
#[template(path = "configuration.html")]
struct ConfigurationPage {
    frame: Frame,
    id: i64,
    name: String,
    description: String,
    draft: String,
    row_version: i64,
    /// Newest first.
    versions: Vec<VersionRow>,
    /// The version whose pipelines are drawn.
    shown: Option<i64>,
    from: i64,
    to: i64,
    diff: Option<Vec<DiffLine>>,
}

/// One line of a unified diff, with its class (`add`, `del`, `hunk` or empty).
pub struct DiffLine {
    pub class: &'static str,
    pub text: String,
}

fn diff_lines(diff: &str) -> Vec<DiffLine> {
    diff.lines()
        .map(|line| DiffLine {
            class: match line.as_bytes().first() {
                Some(b'+') if !line.starts_with("+++") => "add",
                Some(b'-') if !line.starts_with("---") => "del",
                Some(b'@') => "hunk",
                _ => "",
            },
            text: line.to_owned(),
        })
        .collect()
}

#[derive(Debug, Default, Deserialize)]
pub struct EditorParams {
    /// Draw this version (default: the newest).
    #[serde(default)]
    version: Option<i64>,
    #[serde(default)]
    from: Option<i64>,
    #[serde(default)]
    to: Option<i64>,
}

/// `GET /configurations/{id}?version=&from=&to=`
pub async fn configuration_page(
    State(state): State<ApiState>,
    looking: Looking,
    Path(id): Path<i64>,
    params: Result<Query<EditorParams>, QueryRejection>,
) -> Result<Response, PageError> {
    let params = params.map(|Query(params)| params).unwrap_or_default();
    let store = state.store.as_ref();
    let configuration = configurations::get(store, id).await?;
    let mut versions = store.list_versions(&[id]).await?;
    versions.reverse();
    let newest = versions.first().map(|version| version.version);
    let diff = match (params.from, params.to) {
        (Some(from), Some(to)) => Some(diff_lines(
            &configurations::diff(store, id, from, to).await?,
        )),
        _ => None,
    };
    view::page(&ConfigurationPage {
        frame: looking.frame("configurations", configuration.name.clone()),
        id,
        name: configuration.name,
        description: configuration.description,
        draft: configuration.draft,
        row_version: configuration.row_version,
        shown: params.version.or(newest),
        from: params
            .from
            .unwrap_or_else(|| newest.map_or(1, |n| (n - 1).max(1))),
        to: params.to.or(newest).unwrap_or(1),
        versions: versions
            .iter()
            .map(|version| VersionRow {
                version: version.version,
                hash: version.hash.clone(),
                created: view::when(version.created_at),
            })
            .collect(),
        diff,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_lines_are_classed() {
        let lines = diff_lines("--- version 1\n+++ version 2\n@@ -1 +1 @@\n-a: 1\n+a: 2\n b: 3\n");
        let classes: Vec<&str> = lines.iter().map(|line| line.class).collect();
        assert_eq!(classes, ["", "", "hunk", "del", "add", ""]);
    }
}
