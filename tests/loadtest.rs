//! `ampora-loadtest` against `ampora serve`: simulated fleets over WebSocket and HTTP, split
//! over worker processes, half of them sent first to a dead address they must fail over from;
//! every agent ends up stored with the status it reported; and the send → commit latency the
//! tool reads back from PostgreSQL's own commit timestamps.

mod support;

use std::path::PathBuf;

use ampora_control_plane::testing::TestPostgres;
use serde_json::Value;
use support::Ampora;

/// Built beside `ampora` by `cargo build --workspace` (the test script builds all targets).
fn loadtest_binary() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_BIN_EXE_ampora")).with_file_name("ampora-loadtest");
    assert!(
        path.exists(),
        "{} is missing: run `cargo build -p ampora-loadtest` first",
        path.display()
    );
    path
}

fn dead_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// Runs `ampora-loadtest agents ARGS --report PATH` and returns the report.
async fn run_fleet(args: &[&str], report_path: &std::path::Path) -> Value {
    let output = tokio::process::Command::new(loadtest_binary())
        .arg("agents")
        .args(args)
        .arg("--report")
        .arg(report_path)
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{args:?}: {output:?}");
    serde_json::from_slice(&std::fs::read(report_path).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn simulated_fleets_reach_ampora_over_both_transports_and_fail_over() {
    let ampora = Ampora::start(&[]).await;
    let data = tempfile::tempdir().unwrap();
    for (transport, url) in [("ws", ampora.ws_url()), ("http", ampora.http_opamp_url())] {
        let fleet = format!("loadtest-{transport}");
        let live = url.split('/').nth(2).unwrap().to_owned();
        let dead_url = url.replace(&live, &dead_address());
        let report_path = data.path().join(format!("{transport}.json"));
        let urls = format!("{dead_url},{url}");
        let report = run_fleet(
            &[
                "--url",
                &urls,
                "--agents",
                "100",
                "--workers",
                "2",
                "--ramp",
                "500",
                "--heartbeat",
                "1s",
                "--status-rate",
                "100",
                "--duration",
                "3s",
                "--reconnect-jitter",
                "100ms",
                "--fleet",
                &fleet,
            ],
            &report_path,
        )
        .await;
        assert_eq!(report["ready"], 100, "{transport}: {report:#}");
        assert!(
            report["counters"]["connect_errors"].as_u64().unwrap() >= 50,
            "{transport}: half the agents started on the dead address: {report:#}"
        );
        assert!(
            report["counters"]["status_changes"].as_u64().unwrap() > 50,
            "{transport}: {report:#}"
        );
        assert_eq!(
            report["counters"]["server_errors"], 0,
            "{transport}: {report:#}"
        );

        let listed = ampora
            .agents(&format!("attr=loadtest.fleet={fleet}&limit=1000"))
            .await;
        let agents = listed["agents"].as_array().unwrap();
        assert_eq!(agents.len(), 100, "{transport}: {listed:#}");
        for agent in agents {
            let status = agent["health"]["status"].as_str().unwrap_or_default();
            assert!(status.starts_with("status-"), "{transport}: {agent:#}");
            assert_eq!(
                agent["transport"],
                if transport == "ws" {
                    "websocket"
                } else {
                    "http"
                }
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn send_to_commit_latency_is_read_back_from_postgres_commit_timestamps() {
    let postgres = TestPostgres::start();
    let mut admin = postgres.admin_connection().await;
    sqlx::query("ALTER SYSTEM SET track_commit_timestamp = on")
        .execute(&mut admin)
        .await
        .unwrap();
    drop(admin);
    postgres.restart();
    let database_url = postgres.create_database().await;
    let ampora = Ampora::start(&[("AMPORA_DATABASE_URL", &database_url)]).await;
    let data = tempfile::tempdir().unwrap();
    let report = run_fleet(
        &[
            "--url",
            &ampora.ws_url(),
            "--agents",
            "50",
            "--ramp",
            "500",
            "--status-rate",
            "100",
            "--duration",
            "4s",
            "--progress-interval",
            "500ms",
            "--database-url",
            &database_url,
        ],
        &data.path().join("report.json"),
    )
    .await;
    let commit = &report["commit_latency"];
    let committed = commit["committed"].as_i64().unwrap();
    assert!(
        (150..=600).contains(&committed),
        "~100 health changes/s from all ready (~0.5 s) to the end (4 s): {report:#}"
    );
    let (p50, max) = (
        commit["p50_ms"].as_f64().unwrap(),
        commit["max_ms"].as_f64().unwrap(),
    );
    assert!(p50 > 0.0 && p50 <= max && max < 10_000.0, "{commit:#}");
    assert!(
        commit["committed_per_second"].as_f64().unwrap() > 50.0,
        "{commit:#}"
    );
}
