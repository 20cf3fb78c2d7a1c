//! axum's extractors with their rejections turned into [`ApiError`], so a request the
//! framework refuses gets the same `{"error": ...}` as one the handler refuses.

use axum::extract::{FromRequest, FromRequestParts};

use super::ApiError;

/// A path parameter; one that does not parse (or is not UTF-8) is a 400.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);

/// Query parameters; repeated keys fill a `Vec` field (`attr=a=1&attr=b=2`), and a struct
/// with `deny_unknown_fields` refuses parameters it does not name.
#[derive(FromRequestParts)]
#[from_request(via(axum_extra::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

/// A JSON body; one that is not JSON, or not the endpoint's shape, is a 400.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct JsonBody<T>(pub T);
