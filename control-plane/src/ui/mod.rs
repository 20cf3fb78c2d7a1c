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
//! it back as `X-CSRF-Token` on every unsafe request. The server decides what a role may do:
//! the API refuses what a role may not change (the pages show its refusals), and a page for a
//! higher role (enrolment for operators; users, API tokens and audit for admins) answers a
//! 403 page ([`at_least`]); the navigation shows only the pages the role may open.

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

use axum::extract::{Request, State};
use axum::middleware::{from_fn_with_state, Next};
use axum::response::{Redirect, Response};
use axum::routing::get;
use axum::Router;

use crate::api::{ApiError, ApiState, Principal};
use crate::operators::Role;

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
        .route("/ui/live", get(live::live_get))
        .merge(
            Router::new()
                .route("/enrolment", get(admin::enrolment_page))
                .route_layer(from_fn_with_state(Role::Operator, at_least)),
        )
        .merge(
            Router::new()
                .route("/audit", get(admin::audit_page))
                .route("/users", get(admin::users_page))
                .route("/api-tokens", get(admin::api_tokens_page))
                .route_layer(from_fn_with_state(Role::Admin, at_least)),
        )
}

/// Route layer for pages of `role` and above (inside the session layer, which leaves the
/// [`Principal`]): anyone else gets a 403 page in their own frame, not the page's shell.
async fn at_least(State(role): State<Role>, request: Request, next: Next) -> Response {
    let refused = match request.extensions().get::<Principal>() {
        Some(principal) => principal.require(role).err(),
        None => Some(ApiError::Unauthorized("sign in".into())),
    };
    match refused {
        None => next.run(request).await,
        Some(error) => {
            let looking = view::Looking(request.extensions().get::<Viewer>().cloned());
            view::error_page(
                looking.frame("", "Not allowed"),
                error.status(),
                &error.to_string(),
            )
        }
    }
}

/// What anyone may fetch: the sign-in page and the assets.
pub fn public_router() -> Router<ApiState> {
    Router::new()
        .route("/login", get(admin::login_page))
        .route("/ui/assets/{file}", get(assets::asset_get))
}
