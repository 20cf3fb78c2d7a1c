//! The real OpenTelemetry Collector under its OpAMP supervisor ([`Supervisor`]), and the
//! configuration API that pushes configs to agents ([`ConfigApi`]).
//!
//! The binaries are `$REPO/target/interop/{otelcol,opampsupervisor}`, which
//! `scripts/build-collector.sh` builds (minutes, once) and links from its cache; the first
//! [`Supervisor`] of a test binary runs that script, which only checks the links when the build
//! is cached.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{json, Value};
use uuid::Uuid;

use super::output::Output;

const INSTALL_HINT: &str = "run scripts/install-test-deps.sh (or scripts/build-collector.sh)";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `(otelcol, opampsupervisor)`, built by `scripts/build-collector.sh` (run once per test
/// binary, so the links follow the manifest checked out).
pub fn collector_binaries() -> &'static (PathBuf, PathBuf) {
    static BINARIES: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    BINARIES.get_or_init(|| {
        let output = Command::new("bash")
            .arg(repo().join("scripts/build-collector.sh"))
            .stdin(Stdio::null())
            .output()
            .expect("run scripts/build-collector.sh");
        assert!(
            output.status.success(),
            "scripts/build-collector.sh failed ({}): {INSTALL_HINT}\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
        );
        let interop = repo().join("target/interop");
        let binaries = (interop.join("otelcol"), interop.join("opampsupervisor"));
        for binary in [&binaries.0, &binaries.1] {
            assert!(
                binary.is_file(),
                "{} is missing: {INSTALL_HINT}",
                binary.display()
            );
        }
        binaries
    })
}

// === impl Supervisor ===

/// `opampsupervisor` running `otelcol`, connected to an OpAMP server over WebSocket, in a
/// temporary directory of its own (its config and its storage). Stopped on drop (SIGTERM, which
/// stops the Collector too), showing its output if the test is failing.
pub struct Supervisor {
    /// The instance uid it reports (set in its config).
    pub uid: Uuid,
    child: Child,
    output: Output,
    dir: tempfile::TempDir,
}

impl Supervisor {
    /// Starts the supervisor against `ws_url` (`ws://…/v1/opamp`), reporting `service.name`
    /// `name`. It accepts remote configs, reports them, its effective config, health and
    /// heartbeats, and validates a config with the Collector before running it.
    pub fn start(ws_url: &str, name: &str) -> Supervisor {
        let (otelcol, opampsupervisor) = collector_binaries();
        let uid = Uuid::now_v7();
        let dir = tempfile::tempdir().expect("temp dir");
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage).expect("create the storage directory");
        // JSON is YAML: no YAML writer needed, and every string is quoted.
        let config = json!({
            "server": {
                "endpoint": ws_url,
                "tls": {"insecure": true},
            },
            "capabilities": {
                "accepts_remote_config": true,
                "reports_effective_config": true,
                "reports_remote_config": true,
                "reports_health": true,
                "reports_heartbeat": true,
                "reports_own_metrics": false,
            },
            "agent": {
                "executable": otelcol,
                "instance_id": uid.to_string(),
                "validate_config": true,
                // On two busy cores the Collector can take longer than the defaults (3 s to
                // first connect to the supervisor, 5 s to be healthy on a new config, when the
                // supervisor reports APPLIED, or else FAILED "Config apply timeout exceeded").
                "bootstrap_timeout": "30s",
                "config_apply_timeout": "10s",
                // The default Prometheus endpoint of the Collector's own metrics (:8888) would
                // clash between Collectors running in parallel.
                "args": ["--set=service::telemetry::metrics::level=none"],
                "description": {
                    "identifying_attributes": {"service.name": name},
                    "non_identifying_attributes": {"os.type": "linux"},
                },
            },
            "storage": {"directory": storage},
            "telemetry": {
                "logs": {"level": "info", "output_paths": ["stderr"], "error_output_paths": ["stderr"]},
            },
        });
        let config_path = dir.path().join("supervisor.yaml");
        std::fs::write(&config_path, config.to_string()).expect("write supervisor.yaml");

        let mut child = Command::new(opampsupervisor)
            .arg("-config")
            .arg(&config_path)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {}: {error}", opampsupervisor.display()));
        let output = Output::new(5_000);
        output.capture("stdout", child.stdout.take().unwrap(), |_| {});
        output.capture("stderr", child.stderr.take().unwrap(), |_| {});
        Supervisor {
            uid,
            child,
            output,
            dir,
        }
    }

    /// Where the supervisor keeps its state, e.g. `effective.yaml`, the config the Collector runs.
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// `storage/effective.yaml`.
    pub fn effective_yaml(&self) -> PathBuf {
        self.storage().join("effective.yaml")
    }

    /// The running Collector: the supervisor's child process running `otelcol` (not its
    /// `validate` runs), if there is one now.
    pub fn collector_pid(&self) -> Option<u32> {
        let tasks = PathBuf::from(format!("/proc/{}/task", self.child.id()));
        let mut children = Vec::new();
        for task in std::fs::read_dir(tasks).ok()?.flatten() {
            let listed = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            children.extend(
                listed
                    .split_whitespace()
                    .filter_map(|pid| pid.parse::<u32>().ok()),
            );
        }
        children.into_iter().find(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|byte| *byte == 0).collect();
            args.first()
                .is_some_and(|exe| Path::new(&*String::from_utf8_lossy(exe)).ends_with("otelcol"))
                && !args.iter().any(|arg| *arg == b"validate")
        })
    }

    /// Sends `signal` (e.g. `HUP`) to the running Collector; panics if there is none.
    pub fn signal_collector(&self, signal: &str) {
        let pid = self
            .collector_pid()
            .unwrap_or_else(|| panic!("no Collector is running\n{}", self.output()));
        let sent = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .expect("kill(1)");
        assert!(sent.success(), "kill -{signal} {pid}: {sent}");
    }

    /// What the supervisor (and, through it, the Collector) printed so far.
    pub fn output(&self) -> String {
        self.output.text()
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        let collector = self.collector_pid();
        if super::terminate(&mut self.child, Duration::from_secs(10)).is_none() {
            // Killed: the Collector would only notice its parent is gone at its next poll.
            if let Some(pid) = collector {
                let _ = Command::new("kill")
                    .arg("-KILL")
                    .arg(pid.to_string())
                    .status();
            }
        }
        if std::thread::panicking() {
            let read = |name: &str| std::fs::read_to_string(self.storage().join(name));
            let effective = read("effective.yaml").unwrap_or_default();
            // The Collector's own output (the supervisor passes none of it through).
            let collector = read("agent.log").unwrap_or_default();
            let collector_tail: Vec<&str> = collector.lines().rev().take(100).collect();
            eprintln!(
                "---- output of opampsupervisor ({}) ----\n{}\n---- its effective.yaml ----\n\
                 {effective}\n---- the Collector's last lines (agent.log) ----\n{}",
                self.uid,
                self.output.text(),
                collector_tail
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
}

// === impl ConfigApi ===

/// A published configuration version.
#[derive(Debug, Clone)]
pub struct Published {
    pub configuration_id: i64,
    pub version: i64,
    /// Lowercase hex SHA-256 of the YAML.
    pub hash: String,
}

/// The configuration, assignment, drift and agent endpoints of one control-plane API, each
/// call panicking on an unexpected status with the body.
pub struct ConfigApi {
    base: String,
    http: reqwest::Client,
}

impl ConfigApi {
    /// `base` is `http://HOST:PORT` (where `/api/v1/…` lives).
    pub fn new(base: impl Into<String>) -> ConfigApi {
        ConfigApi {
            base: base.into(),
            http: reqwest::Client::new(),
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method.clone(), &url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|error| panic!("{method} {url}: {error}"));
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn expect(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        want: u16,
    ) -> Value {
        let (status, answer) = self.call(method.clone(), path, body.clone()).await;
        assert_eq!(
            status,
            want,
            "{method} {path} {}: answered {status} {answer:#}",
            body.map(|body| body.to_string()).unwrap_or_default()
        );
        answer
    }

    /// `POST /api/v1/configurations`: its id.
    pub async fn create_configuration(&self, name: &str, yaml: &str) -> i64 {
        let body = json!({
            "name": name,
            "description": format!("{name}, made by a test"),
            "labels": {"test": "collector"},
            "yaml": yaml,
        });
        let created = self
            .expect(
                reqwest::Method::POST,
                "/api/v1/configurations",
                Some(body),
                201,
            )
            .await;
        created["id"]
            .as_i64()
            .unwrap_or_else(|| panic!("POST /api/v1/configurations: id: {created:#}"))
    }

    /// `POST /api/v1/configurations/{id}/publish`, which must succeed.
    pub async fn publish(&self, configuration_id: i64) -> Published {
        let path = format!("/api/v1/configurations/{configuration_id}/publish");
        let published = self.expect(reqwest::Method::POST, &path, None, 201).await;
        let version = published["version"]
            .as_i64()
            .unwrap_or_else(|| panic!("POST {path}: version: {published:#}"));
        let hash = published["hash"]
            .as_str()
            .unwrap_or_else(|| panic!("POST {path}: hash: {published:#}"))
            .to_owned();
        Published {
            configuration_id,
            version,
            hash,
        }
    }

    /// `POST /api/v1/assignments` of `published` to the agent `uid`.
    pub async fn assign_to_agent(&self, published: &Published, uid: Uuid) {
        let body = json!({
            "configuration_id": published.configuration_id,
            "version": published.version,
            "target": {"instance_uid": uid.to_string()},
        });
        self.expect(
            reqwest::Method::POST,
            "/api/v1/assignments",
            Some(body),
            201,
        )
        .await;
    }

    /// Creates, publishes and assigns `yaml` to the agent `uid`: what was published.
    pub async fn push(&self, name: &str, yaml: &str, uid: Uuid) -> Published {
        let id = self.create_configuration(name, yaml).await;
        let published = self.publish(id).await;
        assert_eq!(
            published.hash,
            sha256_hex(yaml.as_bytes()),
            "the published hash is the SHA-256 of the YAML"
        );
        self.assign_to_agent(&published, uid).await;
        published
    }

    /// `GET /api/v1/agents/{uid}`, `None` while unknown.
    pub async fn agent(&self, uid: Uuid) -> Option<Value> {
        let path = format!("/api/v1/agents/{uid}");
        match self.call(reqwest::Method::GET, &path, None).await {
            (200, agent) => Some(agent),
            (404, _) => None,
            (status, body) => panic!("GET {path}: {status} {body:#}"),
        }
    }

    /// The agent's whole history (every page of `GET /api/v1/agents/{uid}/events`), newest
    /// first.
    pub async fn events(&self, uid: Uuid) -> Vec<Value> {
        let mut events = Vec::new();
        let mut page_token: Option<String> = None;
        loop {
            let mut path = format!("/api/v1/agents/{uid}/events?limit=1000");
            if let Some(token) = &page_token {
                path.push_str(&format!("&page_token={token}"));
            }
            let page = self.expect(reqwest::Method::GET, &path, None, 200).await;
            events.extend(page["events"].as_array().cloned().unwrap_or_default());
            match &page["next_page_token"] {
                Value::String(token) if !token.is_empty() => page_token = Some(token.clone()),
                _ => return events,
            }
        }
    }

    /// The payloads of the agent's `config_offered` events offering `hash`.
    pub async fn offers_of(&self, uid: Uuid, hash: &str) -> Vec<Value> {
        self.events(uid)
            .await
            .into_iter()
            .filter(|event| event["kind"] == "config_offered" && event["payload"]["hash"] == hash)
            .map(|event| event["payload"].clone())
            .collect()
    }

    /// `GET /api/v1/drift`.
    pub async fn drift(&self) -> Value {
        self.expect(reqwest::Method::GET, "/api/v1/drift", None, 200)
            .await
    }

    /// Polls the agent until `ready` holds for its snapshot (within `timeout`), which it
    /// returns; panics with the last snapshot and `context()` otherwise.
    pub async fn wait_agent(
        &self,
        uid: Uuid,
        what: &str,
        timeout: Duration,
        ready: impl Fn(&Value) -> bool,
        context: impl Fn() -> String,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let agent = self.agent(uid).await;
            if let Some(agent) = agent.as_ref().filter(|agent| ready(agent)) {
                return agent.clone();
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "agent {uid}: waited {timeout:?} for {what}; last snapshot: {agent:#?}\n{}",
                    context()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until the agent's drift state is `state`: its snapshot.
    pub async fn wait_drift(
        &self,
        uid: Uuid,
        state: &str,
        timeout: Duration,
        context: impl Fn() -> String,
    ) -> Value {
        self.wait_agent(
            uid,
            &format!("drift {state}"),
            timeout,
            |agent| agent["drift"]["state"] == state,
            context,
        )
        .await
    }

    /// Waits until the server has heard `count` more messages from the agent (its
    /// `sequence_num` and `last_seen` advanced that often): with nothing else to say, its
    /// heartbeats. Each one is a chance for the server to offer a config again.
    pub async fn wait_heartbeats(
        &self,
        uid: Uuid,
        count: u64,
        timeout: Duration,
        context: impl Fn() -> String,
    ) {
        let first = self
            .agent(uid)
            .await
            .unwrap_or_else(|| panic!("agent {uid} is unknown"));
        let sequence_num = |agent: &Value| agent["sequence_num"].as_u64().unwrap_or(0);
        let start = sequence_num(&first);
        let mut last_seen = first["last_seen"].clone();
        let mut beats = 0;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let agent = self.agent(uid).await.expect("the agent stays known");
            if agent["last_seen"] != last_seen {
                last_seen = agent["last_seen"].clone();
                beats += 1;
            }
            if beats >= count && sequence_num(&agent) >= start + count {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "agent {uid}: {beats} of {count} heartbeats within {timeout:?} (sequence_num \
                     {start} → {}); does the server set the heartbeat interval \
                     (AMPORA_AGENT_HEARTBEAT_INTERVAL)?\n{agent:#}\n{}",
                    sequence_num(&agent),
                    context()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Lowercase hex SHA-256, as the API gives config hashes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}
