//! `ampora-loadtest` against `ampora serve`: simulated fleets over WebSocket and HTTP, split
//! over worker processes, half of them sent first to a dead address they must fail over from;
//! every agent ends up stored with the status it reported.

mod support;

use std::path::PathBuf;

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

#[tokio::test(flavor = "multi_thread")]
async fn simulated_fleets_reach_ampora_over_both_transports_and_fail_over() {
    let ampora = Ampora::start(&[]).await;
    let data = tempfile::tempdir().unwrap();
    for (transport, url) in [("ws", ampora.ws_url()), ("http", ampora.http_opamp_url())] {
        let fleet = format!("loadtest-{transport}");
        let live = url.split('/').nth(2).unwrap().to_owned();
        let dead_url = url.replace(&live, &dead_address());
        let report_path = data.path().join(format!("{transport}.json"));
        let output = tokio::process::Command::new(loadtest_binary())
            .args(["agents", "--url", &format!("{dead_url},{url}")])
            .args(["--agents", "100", "--workers", "2", "--ramp", "500"])
            .args([
                "--heartbeat",
                "1s",
                "--status-rate",
                "100",
                "--duration",
                "3s",
            ])
            .args(["--reconnect-jitter", "100ms", "--fleet", &fleet, "--report"])
            .arg(&report_path)
            .output()
            .await
            .unwrap();
        assert!(output.status.success(), "{transport}: {output:?}");
        let report: Value = serde_json::from_slice(&std::fs::read(&report_path).unwrap()).unwrap();
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
