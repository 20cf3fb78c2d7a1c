//! What every page shares: who is looking, the frame around each page, times as shown, and
//! errors as pages.

use std::convert::Infallible;

use askama::Template;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::api::ApiError;
use crate::operators::Role;
use crate::storage::StoreError;

/// The signed-in user, as the session layer puts it in the request's extensions.
#[derive(Debug, Clone, Default)]
pub struct Viewer {
    pub username: String,
    /// `viewer`, `operator` or `admin`.
    pub role: String,
    /// Sent back by the pages' scripts as `X-CSRF-Token` on unsafe requests.
    pub csrf_token: String,
}

/// The frame of a page: the navigation entry it belongs to, and who is looking.
#[derive(Debug, Clone)]
pub struct Frame {
    pub section: &'static str,
    pub title: String,
    pub csrf_token: String,
    pub username: String,
    pub role: String,
}

impl Frame {
    pub fn is(&self, section: &str) -> bool {
        self.section == section
    }

    /// Whether the one looking has at least `role` (`viewer`, `operator`, `admin`): the
    /// navigation offers only the pages they may open.
    pub fn may(&self, role: &str) -> bool {
        match (Role::parse(&self.role), Role::parse(role)) {
            (Some(has), Some(needed)) => has.allows(needed),
            _ => false,
        }
    }
}

/// Extracts the [`Viewer`] (absent without a session layer) for a page's [`Frame`].
pub struct Looking(pub Option<Viewer>);

impl Looking {
    pub fn frame(&self, section: &'static str, title: impl Into<String>) -> Frame {
        let viewer = self.0.clone().unwrap_or_default();
        Frame {
            section,
            title: title.into(),
            csrf_token: viewer.csrf_token,
            username: viewer.username,
            role: viewer.role,
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Looking {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Looking(parts.extensions.get::<Viewer>().cloned()))
    }
}

/// A rendered page, never cached: it shows live state and a CSRF token.
pub fn page(template: &impl Template) -> Result<Response, PageError> {
    let html = template
        .render()
        .map_err(|error| PageError::Internal(format!("rendering a page: {error}")))?;
    Ok((
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        Html(html),
    )
        .into_response())
}

/// A time as pages show it: UTC, to the second.
pub fn when(at: OffsetDateTime) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second()
    )
}

/// A time as machines read it (`<time datetime>`, links to a past moment).
pub fn rfc3339(at: OffsetDateTime) -> String {
    at.to_offset(time::UtcOffset::UTC)
        .replace_nanosecond(at.nanosecond() / 1_000_000 * 1_000_000)
        .unwrap_or(at)
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// A moment exactly, for links to the agent as it was then (a rounded one could fall before
/// the change it names).
pub fn moment(at: OffsetDateTime) -> String {
    at.to_offset(time::UtcOffset::UTC)
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// A JSON value in one line, cut at `max` characters.
pub fn compact(value: &serde_json::Value, max: usize) -> String {
    let text = match value {
        serde_json::Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    if text.chars().count() <= max {
        text
    } else {
        let mut cut: String = text.chars().take(max).collect();
        cut.push('…');
        cut
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    frame: Frame,
    status: u16,
    reason: &'a str,
    message: &'a str,
}

/// An HTML page telling `status` and `message`, in `frame` (the one looking's, when known).
pub fn error_page(frame: Frame, status: StatusCode, message: &str) -> Response {
    let body = ErrorPage {
        frame,
        status: status.as_u16(),
        reason: status.canonical_reason().unwrap_or("Error"),
        message,
    }
    .render()
    .unwrap_or_else(|_| message.to_owned());
    (
        status,
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        Html(body),
    )
        .into_response()
}

/// A page that could not be shown: an HTML page with the status and the reason.
#[derive(Debug, thiserror::Error)]
pub enum PageError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Api(#[from] ApiError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for PageError {
    fn from(error: StoreError) -> Self {
        PageError::Api(error.into())
    }
}

impl From<crate::configurations::ConfigurationError> for PageError {
    fn from(error: crate::configurations::ConfigurationError) -> Self {
        PageError::Api(error.into())
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let status = match &self {
            PageError::NotFound(_) => StatusCode::NOT_FOUND,
            PageError::Invalid(_) => StatusCode::BAD_REQUEST,
            PageError::Api(error) => error.status(),
            PageError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status.is_server_error() {
            tracing::warn!(error = %self, "page failed");
        }
        error_page(Looking(None).frame("", "Error"), status, &self.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_show_in_utc_to_the_second() {
        let at = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap()
            + time::Duration::milliseconds(1_234);
        assert_eq!(when(at), "2023-11-14 22:13:21 UTC");
        assert_eq!(rfc3339(at), "2023-11-14T22:13:21.234Z");
        let exact = at + time::Duration::microseconds(567);
        assert_eq!(moment(exact), "2023-11-14T22:13:21.234567Z");
    }

    #[test]
    fn long_values_are_cut() {
        assert_eq!(compact(&serde_json::json!("abc"), 5), "abc");
        assert_eq!(compact(&serde_json::json!({"k": "vvvv"}), 5), "{\"k\":…");
    }
}
