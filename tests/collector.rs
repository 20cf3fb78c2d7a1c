//! Config push end to end, with real clients: the OpenTelemetry Collector under its OpAMP
//! supervisor, the opamp-go agent (WebSocket and HTTP) and the PyPI `opentelemetry-opamp-client`
//! agent, on the production shape (NATS, PostgreSQL, a gateway and a control-plane behind
//! HAProxy).
//!
//! Each test creates a configuration, publishes it, assigns it to one agent by its instance uid
//! and follows what the agent does with it through the API: the config offered exactly once per
//! hash (the `config_offered` events, over several heartbeats), the agent's status, and the
//! drift state the server derives (`in_sync`, `failed`, `out_of_band`).
//!
//! Needs `target/interop/{otelcol,opampsupervisor}` (`scripts/build-collector.sh`), the Go
//! toolchain and `$REPO/.venv` (`scripts/install-test-deps.sh` sets all up); fails, never skips,
//! when they are missing. Every test has its own cluster, ports and directories.

mod support;

use std::time::Duration;

use serde_json::Value;
use uuid::Uuid;

use support::cluster::{Cluster, ClusterOptions};
use support::collector::Supervisor;
use support::config_api::{ConfigApi, Published};
use support::{ExternalAgent, GoAgent, PythonAgent};

/// Set on every role: agents that report heartbeats are told to send one every second.
const HEARTBEAT_EVERY_SECOND: &[(&str, &str)] = &[("AMPORA_AGENT_HEARTBEAT_INTERVAL", "1s")];

/// Heartbeats to wait through before saying a config was not offered again.
const HEARTBEATS: u64 = 5;
/// How long those may take (a heartbeat a second, and the agent's own polling).
const HEARTBEATS_WITHIN: Duration = Duration::from_secs(30);

/// How long an agent may take to connect, or to apply a config and report it: the Collector
/// validates a config, restarts with it, and the supervisor reports APPLIED seconds later.
const APPLY_WITHIN: Duration = Duration::from_secs(60);

/// A config the Collector runs: memory_limiter first, then batch (as its docs advise), an OTLP
/// exporter over TLS. The receiver takes any free port: Collectors run in parallel here.
const GOOD: &str = "\
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:0
processors:
  memory_limiter:
    check_interval: 1s
    limit_mib: 100
  batch: {}
exporters:
  otlp:
    endpoint: https://127.0.0.1:4317
service:
  pipelines:
    traces:
      receivers: [otlp]
      processors: [memory_limiter, batch]
      exporters: [otlp]
";

/// A config every static check passes and the Collector refuses at start: a memory_limiter
/// with no limit. The supervisor validates `--config new --config running` merged, so the bad
/// limiter is a named instance of its own that the running config cannot mend.
const COLLECTOR_REJECTS: &str = "\
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:0
processors:
  memory_limiter/strict:
    check_interval: 1s
    limit_mib: 0
  batch: {}
exporters:
  otlp:
    endpoint: https://127.0.0.1:4317
service:
  pipelines:
    traces:
      receivers: [otlp]
      processors: [memory_limiter/strict, batch]
      exporters: [otlp]
";

/// What the Collector says about [`COLLECTOR_REJECTS`] (memorylimiter's config check).
const COLLECTOR_ERROR: &str = "'limit_mib' or 'limit_percentage' must be greater than zero";

/// [`GOOD`] with a processor the interop agents cannot run (`batch/reject`): a valid
/// Collector config, so publishing takes it, that they refuse as a real agent refuses a
/// component it lacks.
fn agent_rejects() -> String {
    GOOD.replace("  batch: {}\n", "  batch: {}\n  batch/reject: {}\n")
        .replace(
            "[memory_limiter, batch]",
            "[memory_limiter, batch, batch/reject]",
        )
}

/// The text interop agents give for a config with a `batch/reject` processor.
const AGENT_ERROR: &str = "cannot run processor batch/reject";

/// One gateway and one control-plane over NATS and PostgreSQL, behind HAProxy, with the
/// heartbeat interval set; and its config API.
async fn cluster() -> (Cluster, ConfigApi) {
    let options = ClusterOptions {
        gateways: 1,
        control_planes: 1,
        nats_servers: 1,
        gateway_tls: false,
    };
    let mut cluster = Cluster::start_with_env(options, HEARTBEAT_EVERY_SECOND).await;
    let api = ConfigApi::new(cluster.api());
    (cluster, api)
}

fn status(agent: &Value) -> (&str, &str) {
    let status = &agent["remote_config_status"];
    (
        status["status"].as_str().unwrap_or_default(),
        status["last_remote_config_hash"]
            .as_str()
            .unwrap_or_default(),
    )
}

/// The body of the agent's effective config file `""`.
fn effective_body(agent: &Value) -> &str {
    agent["effective_config"]["files"][""]["body"]
        .as_str()
        .unwrap_or_default()
}

/// Waits until `uid` is online.
async fn online(api: &ConfigApi, uid: Uuid, context: impl Fn() -> String) -> Value {
    api.wait_agent(
        uid,
        "online",
        APPLY_WITHIN,
        |agent| agent["status"] == "online",
        context,
    )
    .await
}

/// Pushes `yaml` to `uid` and waits until its drift is `state`, the snapshot assigning the
/// pushed hash and the agent reporting `status` for it: what was published, the snapshot, and
/// the context to show should a later check fail.
async fn push_until(
    api: &ConfigApi,
    uid: Uuid,
    name: &str,
    yaml: &str,
    (state, status_name): (&str, &str),
    context: impl Fn() -> String,
) -> (Published, Value, String) {
    let published = api.push(name, yaml, uid).await;
    let agent = api.wait_drift(uid, state, APPLY_WITHIN, &context).await;
    let context = format!("{agent:#}\n{}", context());
    assert_eq!(
        agent["assigned_config_hash"],
        published.hash.as_str(),
        "{context}"
    );
    assert_eq!(
        status(&agent),
        (status_name, published.hash.as_str()),
        "{context}"
    );
    (published, agent, context)
}

/// Pushes `yaml` to `uid` and waits until its drift is `in_sync`: checks what the snapshot says
/// then (the assigned hash, the agent's APPLIED status for it, an effective config) and
/// returns it with what was published.
async fn push_in_sync(
    api: &ConfigApi,
    uid: Uuid,
    name: &str,
    yaml: &str,
    context: impl Fn() -> String,
) -> (Published, Value) {
    let (published, agent, context) =
        push_until(api, uid, name, yaml, ("in_sync", "APPLIED"), context).await;
    assert!(agent["effective_config_hash"].is_string(), "{context}");
    assert!(agent["drift"]["since"].is_string(), "{context}");
    (published, agent)
}

/// Pushes `yaml`, which the agent `uid` refuses, and waits until its drift is `failed`; checks
/// that the reason (and the agent's status) carries `error` and returns the snapshot.
async fn push_failed(
    api: &ConfigApi,
    uid: Uuid,
    name: &str,
    yaml: &str,
    error: &str,
    context: impl Fn() -> String,
) -> (Published, Value) {
    let (published, agent, context) =
        push_until(api, uid, name, yaml, ("failed", "FAILED"), context).await;
    let reported = agent["remote_config_status"]["error_message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        reported.contains(error),
        "status error {reported:?}: {context}"
    );
    let reason = agent["drift"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains(error), "drift reason {reason:?}: {context}");
    (published, agent)
}

/// After `HEARTBEATS` more heartbeats from `uid`, the server has offered each of `published`
/// exactly once (its `config_offered` events, with the version and configuration).
async fn offered_once(
    api: &ConfigApi,
    uid: Uuid,
    published: &[&Published],
    context: impl Fn() -> String,
) {
    api.wait_heartbeats(uid, HEARTBEATS, HEARTBEATS_WITHIN, &context)
        .await;
    for published in published {
        let offers = api.offers_of(uid, &published.hash).await;
        assert_eq!(
            offers.len(),
            1,
            "config {} offered {} times over {HEARTBEATS} heartbeats: {offers:#?}\nhistory: {:#?}\n{}",
            published.hash,
            offers.len(),
            api.events(uid).await,
            context()
        );
        assert_eq!(offers[0]["version"], published.version, "{offers:#?}");
        assert_eq!(
            offers[0]["configuration_id"], published.configuration_id,
            "{offers:#?}"
        );
    }
}

/// `GET /api/v1/drift` counts `uid` in `state` (its only agent) and, unless it is in sync,
/// lists it there: the dashboard lists drifting agents only.
async fn drift_lists(api: &ConfigApi, uid: Uuid, state: &str) {
    let drift = api.drift().await;
    assert_eq!(drift["counts"][state], 1, "counts.{state}: {drift:#}");
    let listed = drift["agents"]
        .as_array()
        .unwrap_or_else(|| panic!("agents: {drift:#}"));
    if state == "in_sync" {
        assert!(listed.is_empty(), "{drift:#}");
        return;
    }
    let listed = drift["agents"]
        .as_array()
        .unwrap_or_else(|| panic!("agents: {drift:#}"))
        .iter()
        .find(|entry| entry["instance_uid"] == uid.to_string().as_str())
        .unwrap_or_else(|| panic!("{uid} not in {drift:#}"));
    assert_eq!(listed["state"], state, "{drift:#}");
}

// === the Collector under its supervisor ===

/// The supervised Collector gets the config once, restarts with it and reports it APPLIED,
/// with an effective config made from it: in sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervisor_applies_a_config_and_is_in_sync() {
    let (cluster, api) = cluster().await;
    let supervisor = Supervisor::start(&cluster.ws_url(), "collector-in-sync");
    let uid = supervisor.uid;
    let context = || supervisor.output();
    online(&api, uid, context).await;
    let bootstrap_pid = wait_collector(&supervisor).await;

    let (published, agent) = push_in_sync(&api, uid, "in-sync", GOOD, context).await;
    let effective = effective_body(&agent);
    assert!(
        effective.contains("limit_mib: 100") && effective.contains("memory_limiter"),
        "the effective config is not the pushed one: {agent:#}"
    );
    let running = wait_collector(&supervisor).await;
    assert_ne!(
        running, bootstrap_pid,
        "the Collector did not restart with the new config"
    );

    offered_once(&api, uid, &[&published], context).await;
    let agent = api.agent(uid).await.unwrap();
    assert_eq!(agent["drift"]["state"], "in_sync", "{agent:#}");
    drift_lists(&api, uid, "in_sync").await;
}

/// A config the Collector refuses at start: FAILED with the Collector's own words, the old
/// config still running, and the config not offered again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervisor_rejects_a_config_and_it_is_not_offered_again() {
    let (cluster, api) = cluster().await;
    let supervisor = Supervisor::start(&cluster.ws_url(), "collector-failed");
    let uid = supervisor.uid;
    let context = || supervisor.output();
    online(&api, uid, context).await;
    wait_collector(&supervisor).await;

    let (published, _) = push_failed(
        &api,
        uid,
        "rejected",
        COLLECTOR_REJECTS,
        COLLECTOR_ERROR,
        context,
    )
    .await;
    offered_once(&api, uid, &[&published], context).await;
    let agent = api.agent(uid).await.unwrap();
    assert_eq!(agent["drift"]["state"], "failed", "{agent:#}");
    assert!(
        supervisor.collector_pid().is_some(),
        "the Collector should go on with its previous config"
    );
    drift_lists(&api, uid, "failed").await;
}

/// In sync, then someone edits the config the Collector runs and reloads it (SIGHUP): the
/// agent reports an effective config the server did not send, with no new remote config
/// status: out of band.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervisor_edited_by_hand_is_out_of_band() {
    let (cluster, api) = cluster().await;
    let supervisor = Supervisor::start(&cluster.ws_url(), "collector-out-of-band");
    let uid = supervisor.uid;
    let context = || supervisor.output();
    online(&api, uid, context).await;

    let (published, in_sync) = push_in_sync(&api, uid, "by-hand", GOOD, context).await;
    // Edit what the Collector runs, and have it reload that file.
    let path = supervisor.effective_yaml();
    let running = std::fs::read_to_string(&path).expect("read effective.yaml");
    assert!(
        running.contains("limit_mib: 100"),
        "effective.yaml:\n{running}"
    );
    std::fs::write(&path, running.replace("limit_mib: 100", "limit_mib: 150"))
        .expect("write effective.yaml");
    supervisor.signal_collector("HUP");

    let agent = api
        .wait_drift(uid, "out_of_band", APPLY_WITHIN, context)
        .await;
    assert!(
        effective_body(&agent).contains("limit_mib: 150"),
        "the edited config is not the effective one: {agent:#}"
    );
    assert_ne!(
        agent["effective_config_hash"], in_sync["effective_config_hash"],
        "{agent:#}"
    );
    assert_eq!(
        agent["assigned_config_hash"],
        published.hash.as_str(),
        "{agent:#}"
    );
    assert_eq!(
        status(&agent),
        ("APPLIED", published.hash.as_str()),
        "{agent:#}"
    );
    drift_lists(&api, uid, "out_of_band").await;
}

/// The running Collector's pid, once there is one.
async fn wait_collector(supervisor: &Supervisor) -> u32 {
    let deadline = tokio::time::Instant::now() + APPLY_WITHIN;
    loop {
        if let Some(pid) = supervisor.collector_pid() {
            return pid;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no Collector running after {APPLY_WITHIN:?}\n{}",
            supervisor.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// === the interop agents ===

/// `agent` applies a config (in sync, its effective config the pushed YAML), then refuses one
/// (failed with its error); each config was offered to it exactly once, as it counts and as the
/// server's history says.
async fn in_sync_then_failed(api: &ConfigApi, agent: &ExternalAgent) {
    let uid = agent.uid;
    let context = || agent.output();
    online(api, uid, context).await;

    let (good, snapshot) = push_in_sync(api, uid, "applied", GOOD, context).await;
    assert_eq!(effective_body(&snapshot), GOOD, "{snapshot:#}");

    let rejected = agent_rejects();
    let (bad, snapshot) = push_failed(api, uid, "rejected", &rejected, AGENT_ERROR, context).await;
    assert_eq!(
        effective_body(&snapshot),
        GOOD,
        "a refused config leaves the previous one running: {snapshot:#}"
    );

    offered_once(api, uid, &[&good, &bad], context).await;
    for published in [&good, &bad] {
        assert_eq!(
            agent.offers_of(&published.hash),
            1,
            "the agent counted offers {:?}\n{}",
            agent.offers(),
            agent.output()
        );
    }
    let snapshot = api.agent(uid).await.unwrap();
    assert_eq!(snapshot["drift"]["state"], "failed", "{snapshot:#}");
    drift_lists(api, uid, "failed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_agent_over_websocket_applies_and_refuses() {
    let (cluster, api) = cluster().await;
    let agent = GoAgent::start("ws", &cluster.ws_url(), "go-ws-config", &[]);
    in_sync_then_failed(&api, &agent).await;
    agent.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_agent_over_http_applies_and_refuses() {
    let (cluster, api) = cluster().await;
    let agent = GoAgent::start("http", &cluster.http_url(), "go-http-config", &[]);
    in_sync_then_failed(&api, &agent).await;
    agent.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_agent_applies_and_refuses() {
    let (cluster, api) = cluster().await;
    let agent = PythonAgent::start(&cluster.http_url(), "python-config", &[]);
    in_sync_then_failed(&api, &agent).await;
    agent.stop();
}
