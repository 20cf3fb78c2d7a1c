//! The pages whose data others' endpoints serve (sign-in, users, API tokens, audit,
//! enrolment): a frame rendered here, filled by `app.js` over those endpoints with `fetch`.

use askama::Template;
use axum::response::Response;

use super::view::{self, Frame, Looking, PageError};

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    frame: Frame,
}

#[derive(Template)]
#[template(path = "users.html")]
struct UsersPage {
    frame: Frame,
}

#[derive(Template)]
#[template(path = "api_tokens.html")]
struct ApiTokensPage {
    frame: Frame,
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    frame: Frame,
}

#[derive(Template)]
#[template(path = "enrolment.html")]
struct EnrolmentPage {
    frame: Frame,
}

/// `GET /login`
pub async fn login_page(looking: Looking) -> Result<Response, PageError> {
    view::page(&LoginPage {
        frame: looking.frame("login", "Sign in"),
    })
}

/// `GET /users` (admin)
pub async fn users_page(looking: Looking) -> Result<Response, PageError> {
    view::page(&UsersPage {
        frame: looking.frame("users", "Users"),
    })
}

/// `GET /api-tokens` (admin)
pub async fn api_tokens_page(looking: Looking) -> Result<Response, PageError> {
    view::page(&ApiTokensPage {
        frame: looking.frame("api-tokens", "API tokens"),
    })
}

/// `GET /audit` (admin)
pub async fn audit_page(looking: Looking) -> Result<Response, PageError> {
    view::page(&AuditPage {
        frame: looking.frame("audit", "Audit"),
    })
}

/// `GET /enrolment` (operator; certificates for admins)
pub async fn enrolment_page(looking: Looking) -> Result<Response, PageError> {
    view::page(&EnrolmentPage {
        frame: looking.frame("enrolment", "Enrolment"),
    })
}
