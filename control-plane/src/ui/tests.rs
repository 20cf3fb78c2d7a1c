//! The pages in process: requests through the API's router against a real (SQLite) store.

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::response::Response;
use futures::StreamExt;
use http_body_util::BodyExt;
use serde_json::json;
use time::OffsetDateTime;
use tower::ServiceExt;
use uuid::Uuid;

use crate::agents::merge::event_payload;
use crate::agents::snapshot::{
    AgentDetails, AgentHead, AgentRecord, AgentStatus, AgentSummary, Transport,
};
use crate::api::auth::SESSION_COOKIE;
use crate::api::{app, ApiState};
use crate::audit::AuditContext;
use crate::operators::{secrets, Role};
use crate::remote_config::ConfigTrack;
use crate::storage::{NewAccount, NewEvent, NewSession, WriteBatch};

const TIMEOUT: Duration = Duration::from_secs(30);

/// The session every page request of these tests carries: the account `ada`'s.
const SESSION_ID: &str = "ui-test-session";

/// The API tests' state, with the account `ada` signed in under [`SESSION_ID`].
async fn state() -> ApiState {
    let state = crate::api::tests::state().await;
    let now = OffsetDateTime::now_utc();
    let account = NewAccount {
        username: "ada".into(),
        password_hash: "not used: the session is made here".into(),
        role: Role::Viewer,
    };
    let audit = AuditContext::system();
    state
        .store
        .create_account(&account, now, &audit)
        .await
        .unwrap();
    let session = NewSession {
        id_hash: secrets::hash(SESSION_ID),
        username: "ada".into(),
        created_at: now,
        expires_at: now + time::Duration::hours(1),
    };
    state.store.create_session(&session, &audit).await.unwrap();
    state
}

fn record(uid: Uuid, name: &str, status: AgentStatus) -> AgentRecord {
    let now = OffsetDateTime::now_utc();
    AgentRecord {
        head: AgentHead {
            instance_uid: uid,
            status,
            transport: Transport::Websocket,
            gateway_id: "gw-1".into(),
            connection_id: 7,
            remote_addr: "127.0.0.1:4000".into(),
            sequence_num: 3,
            capabilities: 1,
            first_seen: now,
            last_seen: now,
            summary: AgentSummary {
                identifying_attributes: [("service.name".to_owned(), json!(name))]
                    .into_iter()
                    .collect(),
                ..AgentSummary::default()
            },
        },
        details: AgentDetails::default(),
        config: ConfigTrack::default(),
    }
}

async fn store(state: &ApiState, agents: &[AgentRecord], events: Vec<NewEvent>) {
    let batch = WriteBatch {
        agents: agents.iter().collect(),
        events,
        ..WriteBatch::default()
    };
    state.store.write(&batch).await.expect("stored");
}

fn event(
    uid: Uuid,
    at: OffsetDateTime,
    kind: &'static str,
    payload: serde_json::Value,
) -> NewEvent {
    NewEvent {
        instance_uid: uid,
        at,
        kind,
        payload: event_payload(&payload),
    }
}

/// `request` as ada's browser sends it.
async fn call(state: &ApiState, mut request: Request<Body>) -> Response {
    let cookie = format!("{SESSION_COOKIE}={SESSION_ID}").parse().unwrap();
    request.headers_mut().insert(header::COOKIE, cookie);
    app(state.clone(), TIMEOUT)
        .oneshot(request)
        .await
        .expect("infallible")
}

async fn page(state: &ApiState, uri: &str) -> (StatusCode, String) {
    let response = call(state, Request::get(uri).body(Body::empty()).unwrap()).await;
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(bytes.to_vec()).unwrap())
}

#[tokio::test]
async fn the_fleet_page_lists_filters_and_counts_agents() {
    let state = state().await;
    let (online, offline) = (Uuid::now_v7(), Uuid::now_v7());
    store(
        &state,
        &[
            record(online, "edge-a", AgentStatus::Online),
            record(offline, "core-<b>", AgentStatus::Offline),
        ],
        vec![],
    )
    .await;

    let (status, html) = page(&state, "/fleet").await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains(&format!("data-uid=\"{online}\"")), "{html}");
    assert!(html.contains(&format!("data-uid=\"{offline}\"")));
    assert!(html.contains("<span class=\"num\" data-count=\"total\">2</span>"));
    assert!(html.contains("data-count=\"online\">1<"));
    // Attribute values are escaped.
    assert!(html.contains("core-&#60;b&#62;") || html.contains("core-&lt;b&gt;"));
    assert!(!html.contains("core-<b>"));

    let (_, html) = page(&state, "/fleet?status=offline").await;
    assert!(!html.contains(&format!("data-uid=\"{online}\"")));
    assert!(html.contains(&format!("data-uid=\"{offline}\"")));
    let (_, html) = page(&state, "/fleet?q=EDGE").await;
    assert!(html.contains(&format!("data-uid=\"{online}\"")));
    assert!(!html.contains(&format!("data-uid=\"{offline}\"")));

    // A bad filter is told on the page, not a bare error.
    let (status, html) = page(&state, "/fleet?status=asleep").await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("status must be online or offline"));

    // A whole uid in the search box opens the agent.
    let response = call(
        &state,
        Request::get(format!("/fleet?q={online}"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        response.headers()[header::LOCATION],
        format!("/agents/{online}")
    );
}

#[tokio::test]
async fn the_agent_page_shows_its_history_and_its_past_state() {
    let state = state().await;
    let uid = Uuid::now_v7();
    let start = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
    let later = start + time::Duration::minutes(5);
    store(
        &state,
        &[record(uid, "edge-a", AgentStatus::Online)],
        vec![
            event(
                uid,
                start,
                "connected",
                json!({"transport": "websocket", "gateway_id": "gw-1"}),
            ),
            event(
                uid,
                start,
                "health",
                json!({"healthy": true, "status": "starting"}),
            ),
            event(
                uid,
                later,
                "health",
                json!({"healthy": false, "last_error": "exporter down"}),
            ),
        ],
    )
    .await;

    let (status, html) = page(&state, &format!("/agents/{uid}")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("exporter down"));
    assert!(!html.contains("id=\"past-state\""));

    let (_, html) = page(&state, &format!("/agents/{uid}?at=2023-11-14T22:14:00Z")).await;
    let past = &html[html.find("id=\"past-state\"").expect("a past state")..];
    assert!(past.contains("starting"), "{past}");
    assert!(!past.contains("exporter down"));
    assert!(past.contains("id=\"past-status\">online<"));

    let (status, html) = page(&state, &format!("/agents/{uid}?at=soon")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("is not a moment"));

    // Unknown agents and bad uids are HTML pages with their status.
    let (status, html) = page(&state, &format!("/agents/{}", Uuid::now_v7())).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(html.starts_with("<!doctype html>"), "{html}");
    let (status, _) = page(&state, "/agents/nope").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn pages_carry_the_viewers_csrf_token() {
    let state = state().await;
    let request = Request::get("/configurations").body(Body::empty()).unwrap();
    let response = call(&state, request).await;
    assert_eq!(response.headers()[header::CACHE_CONTROL], "no-store");
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let html = String::from_utf8(bytes.to_vec()).unwrap();
    let csrf = secrets::csrf_token(SESSION_ID);
    assert!(html.contains(&format!("<meta name=\"csrf-token\" content=\"{csrf}\">")));
    assert!(html.contains("ada"));
    // Without a session, a browser is sent to sign in, and back here afterwards.
    let anonymous = app(state.clone(), TIMEOUT)
        .oneshot(Request::get("/drift").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::SEE_OTHER);
    assert_eq!(anonymous.headers()[header::LOCATION], "/login?next=/drift");
}

#[tokio::test]
async fn assets_are_embedded_and_revalidated() {
    let state = state().await;
    let response = call(
        &state,
        Request::get("/ui/assets/app.js")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
    let etag = response.headers()[header::ETAG].clone();
    let again = call(
        &state,
        Request::get("/ui/assets/app.js")
            .header(header::IF_NONE_MATCH, etag)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    let (status, _) = page(&state, "/ui/assets/nope.js").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_live_feed_names_agents_that_change_and_ends_on_close() {
    let state = state().await;
    let (old, uid) = (Uuid::now_v7(), Uuid::now_v7());
    // A change from before the stream opened is not news.
    store(
        &state,
        &[record(uid, "a", AgentStatus::Online)],
        vec![event(
            old,
            OffsetDateTime::now_utc(),
            "connected",
            json!({}),
        )],
    )
    .await;
    let response = call(
        &state,
        Request::get("/ui/live").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "text/event-stream"
    );
    let mut body = response.into_body().into_data_stream();

    // A change written after the stream opened (by any replica: it is read from the database).
    store(
        &state,
        &[],
        vec![event(
            uid,
            OffsetDateTime::now_utc(),
            "offline",
            json!({"reason": "test"}),
        )],
    )
    .await;
    let mut seen = String::new();
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(chunk) = body.next().await {
            seen.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            if seen.contains(&uid.to_string()) {
                return;
            }
        }
    })
    .await;
    assert!(found.is_ok(), "no change event: {seen:?}");
    assert!(seen.contains("event: change"), "{seen}");
    assert!(!seen.contains(&old.to_string()), "{seen}");

    state.live.close();
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while body.next().await.is_some() {}
    })
    .await;
    assert!(ended.is_ok(), "the stream outlived the close");
}

#[tokio::test]
async fn pages_for_higher_roles_answer_a_viewer_with_a_403_page() {
    let state = state().await;
    for uri in ["/users", "/api-tokens", "/audit", "/enrolment"] {
        let (status, html) = page(&state, uri).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{uri}");
        assert!(html.contains("Forbidden"), "{uri}: {html}");
        assert!(html.contains("account:ada has viewer"), "{uri}: {html}");
        // The refusal, in ada's own frame, not the page's shell.
        assert!(!html.contains("data-table="), "{uri}: {html}");
        assert!(html.contains("data-action=\"logout\""), "{uri}: {html}");
    }
    // A viewer's navigation offers only what a viewer may open.
    let (status, html) = page(&state, "/fleet").await;
    assert_eq!(status, StatusCode::OK);
    for hidden in [
        "href=\"/users\"",
        "href=\"/api-tokens\"",
        "href=\"/audit\"",
        "href=\"/enrolment\"",
    ] {
        assert!(!html.contains(hidden), "{hidden} shown to a viewer");
    }

    // An admin opens them all, and is offered them.
    let now = OffsetDateTime::now_utc();
    let audit = AuditContext::system();
    let admin = NewAccount {
        username: "root".into(),
        password_hash: "not used: the session is made here".into(),
        role: Role::Admin,
    };
    state
        .store
        .create_account(&admin, now, &audit)
        .await
        .unwrap();
    let session = NewSession {
        id_hash: secrets::hash("ui-test-admin-session"),
        username: "root".into(),
        created_at: now,
        expires_at: now + time::Duration::hours(1),
    };
    state.store.create_session(&session, &audit).await.unwrap();
    for uri in ["/users", "/api-tokens", "/audit", "/enrolment"] {
        let request = Request::get(uri)
            .header(
                header::COOKIE,
                format!("{SESSION_COOKIE}=ui-test-admin-session"),
            )
            .body(Body::empty())
            .unwrap();
        let response = app(state.clone(), TIMEOUT).oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{uri}");
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let html = String::from_utf8(bytes.to_vec()).unwrap();
        assert!(html.contains("data-table="), "{uri}: {html}");
        for offered in [
            "href=\"/users\"",
            "href=\"/api-tokens\"",
            "href=\"/audit\"",
            "href=\"/enrolment\"",
        ] {
            assert!(html.contains(offered), "{offered} not offered to an admin");
        }
    }
}
