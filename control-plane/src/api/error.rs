//! API errors, mapped to HTTP in exactly one place: every error the API sends, its own or the
//! framework's, is `{"error": "..."}` with the status it names.

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::rejection::PathRejection;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{BoxError, Json};
use serde::Serialize;

use crate::storage::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::Invalid(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
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
            other => ApiError::Internal(other.to_string()),
        }
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

/// The body of every API error.
#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
}

fn error_response(status: StatusCode, message: &str) -> Response {
    (status, Json(ErrorBody { error: message })).into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(error = %self, "API request failed");
        }
        error_response(status, &self.to_string())
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
    if is_json || !(status.is_client_error() || status.is_server_error()) {
        return response.map(Body::new);
    }
    let (mut parts, _) = response.into_parts();
    let reason = status.canonical_reason().unwrap_or("request failed");
    let json = error_response(status, &reason.to_ascii_lowercase());
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.extend(json.headers().clone());
    Response::from_parts(parts, json.into_body())
}
