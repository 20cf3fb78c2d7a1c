//! API errors, mapped to HTTP in exactly one place: every error the API sends, its own or the
//! framework's, is `{"error": "..."}` with the status it names.

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::rejection::PathRejection;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{BoxError, Json};
use serde::Serialize;

use ampora_collector_config::Problem;

use crate::configurations::ConfigurationError;
use crate::operators::OperatorError;
use crate::storage::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Invalid(String),
    /// No credentials, or credentials that are not valid (now).
    #[error("{0}")]
    Unauthorized(String),
    /// Authenticated, but the role does not allow it (or a session's CSRF token is missing);
    /// or a credential that does not grant what was asked (e.g. a used bootstrap token).
    #[error("{0}")]
    Forbidden(String),
    #[error("{message}")]
    TooManyRequests {
        message: String,
        retry_after: std::time::Duration,
    },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// A write guarded by a row version that is no longer current: the body names the current
    /// one, so the client can reload and merge.
    #[error("{message}")]
    Stale { message: String, current: i64 },
    /// Input well-formed but refused for what it says: the body lists the problems.
    #[error("{message}")]
    Refused {
        message: String,
        problems: Vec<Problem>,
    },
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            ApiError::Invalid(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) | ApiError::Stale { .. } => StatusCode::CONFLICT,
            ApiError::Refused { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Unavailable(e) => ApiError::Unavailable(e.to_string()),
            StoreError::Duplicate(what) => ApiError::Conflict(format!("already exists: {what}")),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<ConfigurationError> for ApiError {
    fn from(error: ConfigurationError) -> Self {
        let message = error.to_string();
        match error {
            ConfigurationError::NotFound(_) | ConfigurationError::NoVersion { .. } => {
                ApiError::NotFound(message)
            }
            ConfigurationError::Stale { current } => ApiError::Stale { message, current },
            ConfigurationError::Duplicate(_) => ApiError::Conflict(message),
            ConfigurationError::Invalid(_) => ApiError::Invalid(message),
            ConfigurationError::Refused(problems) => ApiError::Refused { message, problems },
            ConfigurationError::Store(error) => error.into(),
        }
    }
}

impl From<OperatorError> for ApiError {
    fn from(error: OperatorError) -> Self {
        match error {
            OperatorError::Invalid(message) => ApiError::Invalid(message),
            OperatorError::Store(error) => error.into(),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

/// A JSON body that is not what the endpoint takes (not JSON, wrong fields, wrong type).
impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(rejection: axum::extract::rejection::JsonRejection) -> Self {
        ApiError::Invalid(rejection.body_text())
    }
}

/// A path segment that is not what the route wants (not a UUID, not UTF-8).
impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        if rejection.status().is_client_error() {
            ApiError::Invalid(rejection.body_text())
        } else {
            ApiError::Internal(rejection.body_text())
        }
    }
}

/// A query string that does not fit the endpoint's parameters.
impl From<axum_extra::extract::QueryRejection> for ApiError {
    fn from(rejection: axum_extra::extract::QueryRejection) -> Self {
        ApiError::Invalid(rejection.body_text())
    }
}

/// The body of every API error: the message, and for some errors what the client needs to
/// act on it.
#[derive(Serialize, Default)]
struct ErrorBody<'a> {
    error: &'a str,
    /// The current row version, when the client's was stale.
    #[serde(skip_serializing_if = "Option::is_none")]
    row_version: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    problems: Option<&'a [Problem]>,
}

fn error_response(status: StatusCode, message: &str) -> Response {
    let body = ErrorBody {
        error: message,
        ..ErrorBody::default()
    };
    (status, Json(body)).into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(error = %self, "API request failed");
        }
        let message = self.to_string();
        let body = match &self {
            ApiError::Stale { current, .. } => ErrorBody {
                error: &message,
                row_version: Some(*current),
                problems: None,
            },
            ApiError::Refused { problems, .. } => ErrorBody {
                error: &message,
                row_version: None,
                problems: Some(problems),
            },
            _ => ErrorBody {
                error: &message,
                ..ErrorBody::default()
            },
        };
        let mut response = (status, Json(body)).into_response();
        if let ApiError::TooManyRequests { retry_after, .. } = &self {
            let seconds = retry_after.as_secs().max(1).to_string();
            let value = HeaderValue::from_str(&seconds).expect("digits");
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }
}

/// Gives a JSON body to the errors the API's layers answer themselves (a request not complete
/// within its timeout, a body over the limit), keeping their status and headers.
pub fn json_error_body<B>(response: Response<B>) -> Response
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value == HeaderValue::from_static("application/json"));
    // The web UI's error pages are HTML already.
    let is_html = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"text/html"));
    if is_json || is_html || !(status.is_client_error() || status.is_server_error()) {
        return response.map(Body::new);
    }
    let (mut parts, _) = response.into_parts();
    let reason = status.canonical_reason().unwrap_or("request failed");
    let json = error_response(status, &reason.to_ascii_lowercase());
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.extend(json.headers().clone());
    Response::from_parts(parts, json.into_body())
}
