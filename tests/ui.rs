//! The web UI in a real browser (Debian's headless Chromium over WebDriver) against a real
//! `ampora serve` with real agents (the opamp-go interop agent) connected.
//!
//! With `AMPORA_UI_SCREENSHOTS=1` the tests save what they see as `docs/screenshots/*.png`.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::auth::ADMIN_PASSWORD;
use support::browser::Browser;
use support::{Ampora, GoAgent};

const CONFIG: &str = "receivers:\n  otlp:\n    protocols:\n      grpc: {}\nprocessors:\n  batch: {}\nexporters:\n  debug: {}\nservice:\n  pipelines:\n    traces:\n      receivers: [otlp]\n      processors: [batch]\n      exporters: [debug]\n";

/// Signs in on the sign-in page the browser shows, as a user would, and waits for the page it
/// is sent to: `landing`.
async fn sign_in_here(browser: &Browser, username: &str, password: &str, landing: &str) {
    browser
        .wait_until(
            "the sign-in page",
            "location.pathname === '/login' && document.body.dataset.ready",
        )
        .await;
    browser.fill("#username", username).await;
    browser.fill("#password", password).await;
    browser.click("#login-form button[type=submit]").await;
    browser
        .wait_until(
            &format!("{landing} after signing in"),
            &format!("location.pathname === '{landing}' && document.body.dataset.ready"),
        )
        .await;
}

/// Opens the sign-in page and signs in: the fleet follows.
async fn sign_in(browser: &Browser, base: &str, username: &str, password: &str) {
    browser.goto(&format!("{base}/login")).await;
    sign_in_here(browser, username, password, "/fleet").await;
}

/// The page frame's sign-out control: back to the sign-in page.
async fn sign_out(browser: &Browser) {
    browser.click("[data-action=logout]").await;
    browser
        .wait_until("the sign-in page", "location.pathname === '/login'")
        .await;
}

/// A row of the fleet table, as a JavaScript expression.
fn row(uid: impl std::fmt::Display) -> String {
    format!("document.querySelector('tr[data-uid=\"{uid}\"]')")
}

#[tokio::test]
async fn the_fleet_follows_agents_live_and_an_agent_keeps_its_past() {
    let mut ampora = Ampora::start(&[]).await;
    let base = ampora.api_base();
    let browser = Browser::start().await;
    sign_in(&browser, &base, "admin", ADMIN_PASSWORD).await;

    // Agents appear on an open page as they connect, without a reload.
    browser.goto(&format!("{base}/fleet")).await;
    browser.wait_live().await;
    browser.mark_document().await;
    let edge = GoAgent::start("ws", &ampora.ws_url(), "ui-edge", &["zone=eu"]);
    browser
        .wait_until(
            "the WebSocket agent online",
            &format!("{}.dataset.status === 'online'", row(edge.uid)),
        )
        .await;
    let core = GoAgent::start("http", &ampora.http_opamp_url(), "ui-core", &["zone=us"]);
    browser
        .wait_until(
            "the HTTP agent online",
            &format!("{}.dataset.status === 'online'", row(core.uid)),
        )
        .await;
    browser
        .wait_until(
            "the counts",
            "document.querySelector('[data-count=online]').textContent === '2'",
        )
        .await;
    assert!(browser.same_document().await, "the page was reloaded");
    browser.screenshot("fleet").await;

    // Filters: by search text, then by transport.
    browser.fill("#q", "ui-edge").await;
    browser.click("form.filters button[type=submit]").await;
    browser
        .wait_until(
            "only the edge agent",
            &format!(
                "location.search.includes('q=ui-edge') && {} && !{}",
                row(edge.uid),
                row(core.uid)
            ),
        )
        .await;
    browser.goto(&format!("{base}/fleet")).await;
    browser.select("#transport", "http").await;
    browser.click("form.filters button[type=submit]").await;
    browser
        .wait_until(
            "only the HTTP agent",
            &format!(
                "location.search.includes('transport=http') && {} && !{}",
                row(core.uid),
                row(edge.uid)
            ),
        )
        .await;

    // An agent that stops turns offline on the open page.
    browser.goto(&format!("{base}/fleet")).await;
    browser.wait_live().await;
    browser.mark_document().await;
    let edge_uid = edge.uid;
    assert!(edge.stop().success());
    browser
        .wait_until(
            "the stopped agent offline",
            &format!("{}.dataset.status === 'offline'", row(edge_uid)),
        )
        .await;
    assert!(browser.same_document().await, "the page was reloaded");

    // Its page, and its state as it was when it connected: online then, offline now.
    browser.goto(&format!("{base}/agents/{edge_uid}")).await;
    browser
        .wait_until(
            "the agent's page",
            "document.querySelector('#agent-status').textContent === 'offline'",
        )
        .await;
    browser.screenshot("agent").await;
    browser
        .eval(
            // Found and followed in one step: the live page may re-render its history.
            "const row = Array.from(document.querySelectorAll('tr[data-event]')).reverse() \
             .find((r) => r.querySelector('.kind').textContent === 'connected'); \
             row.querySelector('a').click(); return true",
        )
        .await;
    browser
        .wait_until(
            "the past state",
            "document.querySelector('#past-status').textContent === 'online'",
        )
        .await;
    let now = browser
        .eval("return document.querySelector('#agent-status').textContent")
        .await;
    assert_eq!(now, json!("offline"));
    let described = browser
        .eval("return document.querySelector('#past-state').innerText")
        .await;
    assert!(
        described.as_str().unwrap().contains("ui-edge"),
        "{described}"
    );
    browser.screenshot("agent-past").await;

    // A configuration written in the editor, published, its pipelines drawn; then a mistake
    // shown at its line.
    browser.goto(&format!("{base}/configurations")).await;
    browser
        .wait_until("the page's script", "document.body.dataset.ready")
        .await;
    browser.fill("#new-name", "edge-traces").await;
    browser
        .fill("#new-description", "Traces from the edge")
        .await;
    browser.fill("#new-yaml", CONFIG).await;
    browser
        .click("#create-configuration button[type=submit]")
        .await;
    browser
        .wait_until(
            "the editor",
            "document.body.dataset.page === 'configuration' && \
             document.querySelector('#problems li:not(.muted)')",
        )
        .await;
    browser.click("[data-action=publish]").await;
    browser
        .wait_until(
            "version 1 drawn",
            "location.search.includes('version=1') && \
             document.querySelector('img.swimlane').complete && \
             document.querySelector('img.swimlane').naturalWidth > 0",
        )
        .await;
    let configuration_id: i64 = browser
        .eval("return Number(document.body.dataset.configuration)")
        .await
        .as_i64()
        .unwrap();
    browser.screenshot("configuration").await;
    browser
        .eval(
            "const d = document.querySelector('#draft'); \
             d.value = d.value.replace('exporters: [debug]', 'exporters: [nope]'); \
             d.dispatchEvent(new Event('input')); return true",
        )
        .await;
    let problem = browser
        .wait_until(
            "the problem at its line",
            "document.querySelector('#gutter .mark.error') && \
             document.querySelector('#problems li.error').textContent",
        )
        .await;
    assert!(problem.as_str().unwrap().contains("nope"), "{problem}");
    let marked_line = browser
        .eval("return document.querySelector('#gutter .mark.error').textContent")
        .await;
    assert_eq!(marked_line, json!("14"));
    browser.screenshot("configuration-problems").await;

    // Drift: the version assigned to the HTTP agent, which applies it.
    let assigned = ampora
        .http()
        .post(format!("{base}/api/v1/assignments"))
        .json(&json!({"configuration_id": configuration_id, "version": 1,
                      "target": {"instance_uid": core.uid}}))
        .send()
        .await
        .unwrap();
    assert_eq!(assigned.status(), 201, "{:?}", assigned.text().await);
    browser.goto(&format!("{base}/drift")).await;
    browser.wait_live().await;
    browser
        .wait_until(
            "the agent in sync",
            "document.querySelector('#drift .num.ok').textContent === '1'",
        )
        .await;
    browser.screenshot("drift").await;
    browser.goto(&format!("{base}/fleet")).await;
    browser
        .wait_until(
            "the fleet",
            &format!("{}.dataset.status === 'online'", row(core.uid)),
        )
        .await;
    browser.screenshot("fleet").await;

    // A page still following the live feed does not hold the server's shutdown up.
    browser.wait_live().await;
    drop(core);
    let stopped = ampora.terminate(Duration::from_secs(10));
    assert!(
        stopped.is_some_and(|status| status.success()),
        "ampora serve did not stop cleanly with a live page open: {stopped:?}"
    );
}

#[tokio::test]
async fn pages_show_refusals_and_missing_endpoints_clearly() {
    let ampora = Ampora::start(&[]).await;
    let base = ampora.api_base();
    let browser = Browser::start().await;
    // The sign-in page is served to anyone, with its labelled fields.
    browser.goto(&format!("{base}/login")).await;
    browser
        .wait_until(
            "the sign-in form",
            "document.body.dataset.ready && \
             document.querySelector('label[for=username]') && \
             document.querySelector('label[for=password]')",
        )
        .await;
    // A wrong password is refused, and told.
    browser.fill("#username", "admin").await;
    browser.fill("#password", "not the password").await;
    browser.click("#login-form button[type=submit]").await;
    let refused = browser
        .wait_until(
            "the refusal",
            "!document.querySelector('#flash').hidden && document.querySelector('#flash').textContent",
        )
        .await;
    assert!(
        refused
            .as_str()
            .unwrap()
            .contains("wrong username or password"),
        "{refused}"
    );
    sign_in_here(&browser, "admin", ADMIN_PASSWORD, "/fleet").await;

    // A configuration the server refuses (no name after trimming): its words are shown.
    browser.goto(&format!("{base}/configurations")).await;
    browser
        .wait_until("the page's script", "document.body.dataset.ready")
        .await;
    browser.fill("#new-name", " ").await;
    browser.fill("#new-yaml", CONFIG).await;
    browser
        .click("#create-configuration button[type=submit]")
        .await;
    let shown = browser
        .wait_until(
            "the refusal",
            "!document.querySelector('#flash').hidden && document.querySelector('#flash').textContent",
        )
        .await;
    assert!(shown.as_str().unwrap().contains("400"), "{shown}");
    let (_, listed) = ampora.get("/api/v1/configurations").await;
    assert_eq!(listed["configurations"], json!([]));
}

/// Accounts, roles, API tokens, enrolment and the audit log, through the pages (issue #21,
/// point 6), against a server whose first admin has the password [`ADMIN`] gives.
mod with_accounts {
    use super::*;

    /// The first account (always `admin`) and the password `ampora serve` is given for it.
    const ADMIN: (&str, &str) = ("admin", "correct horse battery staple");
    const ADMIN_ENV: &[(&str, &str)] = &[("AMPORA_ADMIN_PASSWORD", ADMIN.1)];
    const VIEWER: (&str, &str) = ("vera", "a long viewer password");

    /// The navigation's entries, as the page shows them.
    async fn navigation(browser: &Browser) -> String {
        browser
            .eval("return document.querySelector('header nav').innerText")
            .await
            .as_str()
            .unwrap()
            .to_owned()
    }

    #[tokio::test]
    async fn an_admin_makes_a_viewer_and_a_token_and_the_audit_shows_it() {
        let ampora = Ampora::start(ADMIN_ENV).await;
        let base = ampora.api_base();
        let browser = Browser::start().await;

        // Without a session, a page sends the browser to sign in, and back there afterwards.
        browser.goto(&format!("{base}/users")).await;
        browser
            .wait_until(
                "the sign-in page",
                "location.pathname === '/login' && location.search === '?next=/users' && \
                 document.body.dataset.ready",
            )
            .await;
        browser.screenshot("login").await;
        sign_in_here(&browser, ADMIN.0, ADMIN.1, "/users").await;
        let offered = navigation(&browser).await;
        for entry in ["Enrolment", "Users", "API tokens", "Audit"] {
            assert!(
                offered.contains(entry),
                "{entry} not offered to an admin: {offered}"
            );
        }

        // A viewer.
        browser
            .wait_until("the users", "document.querySelector('#users-table table')")
            .await;
        browser.fill("#user-name", VIEWER.0).await;
        browser.fill("#user-password", VIEWER.1).await;
        browser.select("#user-role", "viewer").await;
        browser.click("#create-user button[type=submit]").await;
        browser
            .wait_until(
                "the new user listed",
                "Array.from(document.querySelectorAll('#users-table tbody tr')).some((row) => \
                 row.cells[0].textContent === 'vera' && row.cells[1].textContent === 'viewer')",
            )
            .await;
        browser.screenshot("users").await;

        // An API token, shown once; it works, and only its listing stays on the page.
        browser.goto(&format!("{base}/api-tokens")).await;
        browser
            .wait_until("the page's script", "document.body.dataset.ready")
            .await;
        browser.fill("#token-name", "ci").await;
        browser.select("#token-role", "operator").await;
        browser.click("#create-api-token button[type=submit]").await;
        let token = browser
            .wait_until(
                "the token, once",
                "!document.querySelector('#secret').hidden && \
                 document.querySelector('#secret-value').textContent",
            )
            .await;
        let token = token.as_str().unwrap().to_owned();
        assert!(token.len() >= 20, "{token}");
        browser
            .wait_until(
                "the token listed",
                "Array.from(document.querySelectorAll('#api-tokens-table tbody tr')).some((row) => \
                 row.cells[0].textContent === 'ci' && row.cells[1].textContent === 'operator')",
            )
            .await;
        let configurations = support::auth::client_with(&token)
            .get(format!("{base}/api/v1/configurations"))
            .send()
            .await
            .unwrap();
        assert_eq!(configurations.status(), 200);
        browser.screenshot("api-tokens").await;
        browser.goto(&format!("{base}/api-tokens")).await;
        browser
            .wait_until(
                "the tokens",
                "document.querySelector('#api-tokens-table table')",
            )
            .await;
        let page = browser.eval("return document.body.innerHTML").await;
        assert!(
            !page.as_str().unwrap().contains(&token),
            "the token shown twice"
        );

        // Enrolment: a bootstrap token, shown once; an agent exchanges it for a certificate,
        // which the certificates list then shows, and the token is used.
        browser.goto(&format!("{base}/enrolment")).await;
        browser
            .wait_until(
                "the page's lists",
                "document.body.dataset.ready && \
                 !document.querySelector('#certificates-table').textContent.includes('Loading')",
            )
            .await;
        browser.fill("#bootstrap-labels", "zone=eu").await;
        browser
            .click("#create-bootstrap-token button[type=submit]")
            .await;
        let bootstrap = browser
            .wait_until(
                "the bootstrap token, once",
                "!document.querySelector('#secret').hidden && \
                 document.querySelector('#secret-value').textContent",
            )
            .await;
        browser
            .wait_until(
                "the token listed as active",
                "document.querySelector('#bootstrap-tokens-table tbody tr .badge.active')",
            )
            .await;
        let enrolled = reqwest::Client::new()
            .post(format!("{base}/api/v1/certificates"))
            .json(&json!({"token": bootstrap}))
            .send()
            .await
            .unwrap();
        assert_eq!(enrolled.status(), 201);
        let enrolled: Value = enrolled.json().await.unwrap();
        let agent = enrolled["instance_uid"].as_str().unwrap().to_owned();
        browser.goto(&format!("{base}/enrolment")).await;
        browser
            .wait_until(
                "the agent's certificate listed, and the token used",
                &format!(
                    "Array.from(document.querySelectorAll('#certificates-table tbody tr')).some((row) => \
                     row.cells[0].textContent === '{agent}' && row.textContent.includes('zone=eu') && \
                     row.querySelector('.badge.valid')) && \
                     document.querySelector('#bootstrap-tokens-table tbody tr .badge.used')"
                ),
            )
            .await;
        browser.screenshot("enrolment").await;
        sign_out(&browser).await;
        // The session is over: pages send the browser to sign in again.
        browser.goto(&format!("{base}/fleet")).await;
        browser
            .wait_until("the sign-in page", "location.pathname === '/login'")
            .await;

        // The viewer: offered only what a viewer may open; an admin page is refused with a
        // page that says so; an attempt to change something is refused by the server, and told.
        sign_in(&browser, &base, VIEWER.0, VIEWER.1).await;
        let offered = navigation(&browser).await;
        for entry in ["Enrolment", "Users", "API tokens", "Audit"] {
            assert!(
                !offered.contains(entry),
                "{entry} offered to a viewer: {offered}"
            );
        }
        browser.goto(&format!("{base}/users")).await;
        let refused = browser
            .wait_until(
                "the refusal page",
                "document.querySelector('#error-message') && document.body.innerText",
            )
            .await;
        let refused = refused.as_str().unwrap();
        assert!(refused.contains("Forbidden (403)"), "{refused}");
        assert!(refused.contains("needs the admin role"), "{refused}");
        browser.screenshot("forbidden").await;
        browser.goto(&format!("{base}/configurations")).await;
        browser
            .wait_until("the page's script", "document.body.dataset.ready")
            .await;
        browser.fill("#new-name", "not-allowed").await;
        browser.fill("#new-yaml", CONFIG).await;
        browser
            .click("#create-configuration button[type=submit]")
            .await;
        let refused = browser
            .wait_until(
                "the refusal",
                "!document.querySelector('#flash').hidden && \
                 document.querySelector('#flash').textContent",
            )
            .await;
        let refused = refused.as_str().unwrap();
        assert!(refused.contains("403"), "{refused}");
        assert!(refused.contains("needs the operator role"), "{refused}");
        assert_eq!(
            browser.eval("return location.pathname").await,
            json!("/configurations")
        );
        let (_, listed) = ampora.get("/api/v1/configurations").await;
        assert_eq!(listed["configurations"], json!([]));
        sign_out(&browser).await;

        // The audit shows those actions, by whom, and its chain verifies.
        sign_in(&browser, &base, ADMIN.0, ADMIN.1).await;
        browser.goto(&format!("{base}/audit")).await;
        let records: Value = browser
            .wait_until(
                "the audit records",
                "document.querySelector('#audit-table table') && \
                 document.querySelector('#audit-table').innerText",
            )
            .await;
        let records = records.as_str().unwrap();
        for expected in [
            "account:admin\taccount.create\taccount vera",
            "account:admin\tapi_token.create",
            "name: ci, role: operator",
            "account:admin\tbootstrap_token.create",
            "\tcertificate.enrol",
            "account:vera\tsession.login",
            "account:vera\tsession.logout",
        ] {
            assert!(records.contains(expected), "{expected:?} not in {records}");
        }
        assert!(!records.contains(&token), "the API token in the audit log");
        browser.click("[data-action=verify-audit]").await;
        let verified = browser
            .wait_until(
                "the chain verified",
                "document.querySelector('#verify-result.verified') && \
                 document.querySelector('#verify-result').textContent",
            )
            .await;
        assert!(
            verified.as_str().unwrap().starts_with("Chain verified:"),
            "{verified}"
        );
        // A filter narrows the records to one actor's.
        browser.fill("#audit-actor", "account:vera").await;
        browser.click("#audit-filters button[type=submit]").await;
        browser
            .wait_until(
                "only vera's records",
                "Array.from(document.querySelectorAll('#audit-table tbody tr')).every((row) => \
                 row.cells[2].textContent === 'account:vera') && \
                 document.querySelectorAll('#audit-table tbody tr').length === 2",
            )
            .await;
        browser.fill("#audit-actor", "").await;
        browser.click("#audit-filters button[type=submit]").await;
        browser
            .wait_until(
                "all records again",
                "Array.from(document.querySelectorAll('#audit-table tbody tr')).some((row) => \
                 row.cells[2].textContent === 'account:admin')",
            )
            .await;
        browser.screenshot("audit").await;
    }
}
