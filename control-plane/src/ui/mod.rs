//! The web UI, served by the control-plane on its HTTP listener beside the API.
//!
//! Pages are rendered on the server (askama templates, checked at compile time) from the same
//! storage the API reads; a little JavaScript of our own (`assets/app.js`) sends forms with
//! `fetch`, and keeps open pages current through server-sent events ([`live`]). Assets are
//! embedded in the binary. Nothing comes from elsewhere.
//!
//! # Layout
//! - [`router`]: the pages behind a session — fleet, agent, configurations, drift, enrolment,
//!   audit, users, API tokens — and the live feed; [`public_router`]: sign-in and the assets.
//! - one module per page; `view` holds what several share (the page frame, times, errors).
//! - [`live`]: the change feed every open page follows, one database poller per replica.
//!
//! Who is looking comes from a [`Viewer`] the session layer puts in the request's extensions:
//! its CSRF token goes into every page (`<meta name="csrf-token">`), and the JavaScript sends
//! it back as `X-CSRF-Token` on every unsafe request. The server decides what a role may do;
//! the pages show its refusals.

mod admin;
mod agent;
mod assets;
mod configurations;
mod drift;
mod fleet;
pub mod live;
#[cfg(test)]
mod tests;
mod view;

use axum::response::Redirect;
use axum::routing::get;
use axum::Router;

use crate::api::ApiState;

pub use live::Live;
pub use view::Viewer;

/// The pages that need a session (the session layer wraps these), and the live feed.
pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/fleet") }))
        .route("/fleet", get(fleet::fleet_page))
        .route("/agents/{instance_uid}", get(agent::agent_page))
        .route("/configurations", get(configurations::configurations_page))
        .route(
            "/configurations/{id}",
            get(configurations::configuration_page),
        )
        .route("/drift", get(drift::drift_page))
        .route("/enrolment", get(admin::enrolment_page))
        .route("/audit", get(admin::audit_page))
        .route("/users", get(admin::users_page))
        .route("/api-tokens", get(admin::api_tokens_page))
        .route("/ui/live", get(live::live_get))
}

/// What anyone may fetch: the sign-in page and the assets.
pub fn public_router() -> Router<ApiState> {
    Router::new()
        .route("/login", get(admin::login_page))
        .route("/ui/assets/{file}", get(assets::asset_get))
}
