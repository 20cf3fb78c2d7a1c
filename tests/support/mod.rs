//! Process-level test harness: runs the real `ampora serve` binary on free loopback ports with
//! its own data directory, reads its ready lines, and talks to its API; also starts the
//! third-party interop agents ([`GoAgent`], [`PythonAgent`]) and the real Collector under its
//! OpAMP supervisor ([`collector::Supervisor`]).
//!
//! Include it from an integration test with `mod support;`.

#![allow(dead_code)]

pub mod auth;
pub mod browser;
mod clients;
pub mod cluster;
pub mod collector;
pub mod config_api;
pub mod fleet;
mod output;
mod process;
pub mod trust;

#[allow(unused_imports)]
pub use clients::{go_agent_binary, python_venv, ExternalAgent, GoAgent, PythonAgent};
#[allow(unused_imports)]
pub use process::terminate;

use std::fmt::Display;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;

use output::Output;

/// How long `ampora serve` may take to print its ready lines.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// An `ampora serve` process on free loopback ports with its own temporary data directory
/// (SQLite); killed on drop. Its stdout and stderr are kept and shown when a test fails.
pub struct Ampora {
    child: Child,
    ws_url: String,
    http_opamp_url: String,
    api_base: String,
    output: Output,
    /// Sends an admin API token with every request.
    http: reqwest::Client,
    /// The first account's password, when the server made one up at its first start.
    generated_password: Option<String>,
    /// The data directory, when it is this server's own.
    _data_dir: Option<tempfile::TempDir>,
}

impl Ampora {
    /// Starts `ampora serve` with `AMPORA_DATA_DIR` a fresh temp dir, both listeners on
    /// `127.0.0.1:0`, `AMPORA_ADMIN_PASSWORD` [`auth::ADMIN_PASSWORD`], `RUST_LOG` from the
    /// environment (else `info`), then `extra_env` (which wins; `("AMPORA_ADMIN_PASSWORD", "")`
    /// lets the server make one up), waits up to 30 s for the ready lines, and makes an admin
    /// API token for [`Ampora::http`].
    pub async fn start(extra_env: &[(&str, &str)]) -> Ampora {
        let data_dir = tempfile::tempdir().expect("temp dir");
        let mut ampora = Ampora::start_in(data_dir.path(), extra_env).await;
        ampora._data_dir = Some(data_dir);
        ampora
    }

    /// [`Ampora::start`] on the data directory given, which outlives the server (so another
    /// may start on it after this one).
    pub async fn start_in(data_dir: &Path, extra_env: &[(&str, &str)]) -> Ampora {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ampora"));
        command
            .arg("serve")
            .env("AMPORA_DATA_DIR", data_dir)
            .env("AMPORA_OPAMP_LISTEN", "127.0.0.1:0")
            .env("AMPORA_HTTP_LISTEN", "127.0.0.1:0")
            .env("AMPORA_ADMIN_PASSWORD", auth::ADMIN_PASSWORD)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("NO_COLOR", "1")
            .envs(extra_env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("start ampora serve");
        let output = Output::new(5_000);
        let (lines_tx, mut lines_rx) = mpsc::channel(64);
        output.capture("stdout", child.stdout.take().unwrap(), move |line| {
            // Once the ready lines are read nobody listens: the rest is only kept.
            let _ = lines_tx.blocking_send(line);
        });
        let stderr = output.capture("stderr", child.stderr.take().unwrap(), |_| {});

        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        let mut banner = false;
        let (mut ws_url, mut http_opamp_url, mut api) = (None, None, None);
        let (mut sign_in, mut generated_password) = (false, None);
        while ws_url.is_none() || http_opamp_url.is_none() || api.is_none() || !sign_in {
            let line = match tokio::time::timeout_at(deadline, lines_rx.recv()).await {
                Ok(Some(line)) => line,
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "ampora serve printed no ready lines within {READY_TIMEOUT:?}\n{}",
                        output.text()
                    );
                }
                Ok(None) => {
                    let status = child.wait();
                    // Everything it printed on stderr, to the end, before showing it.
                    let _ = stderr.join();
                    panic!(
                        "ampora serve closed its stdout before it was ready (exit: {status:?})\n{}",
                        output.text()
                    );
                }
            };
            let line = line.trim();
            if line == "Ampora is ready." {
                banner = true;
            } else if let Some(value) = line.strip_prefix("OpAMP WebSocket:") {
                ws_url = Some(value.trim().to_owned());
            } else if let Some(value) = line.strip_prefix("OpAMP HTTP:") {
                http_opamp_url = Some(value.trim().to_owned());
            } else if let Some(value) = line.strip_prefix("API:") {
                api = Some(value.trim().to_owned());
            } else if let Some(value) =
                line.strip_prefix("First run: created the account admin with password ")
            {
                generated_password = Some(value.trim().to_owned());
            } else if line.starts_with("Sign in:") {
                sign_in = true;
            }
        }
        let (ws_url, http_opamp_url, api) =
            (ws_url.unwrap(), http_opamp_url.unwrap(), api.unwrap());
        assert!(banner, "no \"Ampora is ready.\" line\n{}", output.text());
        // `wss://` and `https://` with AMPORA_TLS_CERT.
        assert!(
            (ws_url.starts_with("ws://") || ws_url.starts_with("wss://"))
                && ws_url.ends_with("/v1/opamp"),
            "OpAMP WebSocket: {ws_url:?}"
        );
        assert!(
            (http_opamp_url.starts_with("http://") || http_opamp_url.starts_with("https://"))
                && http_opamp_url.ends_with("/v1/opamp"),
            "OpAMP HTTP: {http_opamp_url:?}"
        );
        let api_base = api
            .strip_suffix("/api/v1/agents")
            .unwrap_or_else(|| panic!("API: {api:?} does not end in /api/v1/agents"))
            .to_owned();
        let configured = extra_env
            .iter()
            .rev()
            .find(|(name, value)| *name == "AMPORA_ADMIN_PASSWORD" && !value.is_empty())
            .map(|(_, value)| *value);
        let password = generated_password
            .as_deref()
            .or(configured)
            .unwrap_or(auth::ADMIN_PASSWORD);
        let http = auth::client_with(&auth::api_token(&api_base, password, "admin").await);
        Ampora {
            child,
            ws_url,
            http_opamp_url,
            api_base,
            output,
            http,
            generated_password,
            _data_dir: None,
        }
    }

    /// SIGTERM, then waits up to `within` for the exit: its status, or `None` if it had to be
    /// killed.
    pub fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        terminate(&mut self.child, within)
    }

    /// `ws://127.0.0.1:PORT/v1/opamp` (`wss://` with TLS).
    pub fn ws_url(&self) -> String {
        self.ws_url.clone()
    }

    /// `http://127.0.0.1:PORT/v1/opamp` (`https://` with TLS).
    pub fn http_opamp_url(&self) -> String {
        self.http_opamp_url.clone()
    }

    /// `http://127.0.0.1:PORT`, where `/api/v1/…`, `/healthz` and `/readyz` live.
    pub fn api_base(&self) -> String {
        self.api_base.clone()
    }

    /// A client that sends an admin API token with every request.
    pub fn http(&self) -> reqwest::Client {
        self.http.clone()
    }

    /// The password the server printed for `admin` at its first start, if it made one up.
    pub fn generated_password(&self) -> Option<&str> {
        self.generated_password.as_deref()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the server printed so far (the newest lines).
    pub fn logs(&self) -> String {
        self.output.text()
    }

    /// `GET {api_base}{path}`: the status and the body as JSON (`Value::Null` if it is not JSON).
    pub async fn get(&self, path: &str) -> (reqwest::StatusCode, Value) {
        let url = format!("{}{path}", self.api_base);
        let response = self
            .http
            .get(&url)
            .send()
            .await
            .unwrap_or_else(|error| panic!("GET {url}: {error}"));
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// `GET /api/v1/agents?{query}` (`query` like `status=online&attr=service.name=x`, may be
    /// empty); panics unless 200.
    pub async fn agents(&self, query: &str) -> Value {
        let query = query.trim_start_matches('?');
        let path = if query.is_empty() {
            "/api/v1/agents".to_owned()
        } else {
            format!("/api/v1/agents?{query}")
        };
        let (status, body) = self.get(&path).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    /// `GET /api/v1/agents/{uid}`: the full snapshot, or `None` for 404; panics otherwise.
    pub async fn agent(&self, uid: impl Display) -> Option<Value> {
        let path = format!("/api/v1/agents/{uid}");
        let (status, body) = self.get(&path).await;
        match status.as_u16() {
            200 => Some(body),
            404 => None,
            _ => panic!("GET {path}: {status} {body}"),
        }
    }

    /// Same as [`Ampora::agent`].
    pub async fn agent_json(&self, uid: uuid::Uuid) -> Option<Value> {
        self.agent(uid).await
    }

    /// Polls `GET /api/v1/agents` until `ready` holds for its JSON body, which it returns;
    /// panics with the last body (and the server's output) after `timeout`.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        ready: impl Fn(&Value) -> bool,
    ) -> Value {
        self.wait_for_query("", what, timeout, ready).await
    }

    /// [`Ampora::wait_for`] on `GET /api/v1/agents?{query}`.
    pub async fn wait_for_query(
        &self,
        query: &str,
        what: &str,
        timeout: Duration,
        ready: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let body = self.agents(query).await;
            if ready(&body) {
                return body;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("waited {timeout:?} for {what}; last GET /api/v1/agents?{query}: {body:#}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Polls the agent's snapshot until `ready` holds (20 s at most); panics with the last
    /// snapshot otherwise.
    pub async fn wait_agent(
        &self,
        uid: uuid::Uuid,
        what: &str,
        ready: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let last = self.agent(uid).await;
            if last.as_ref().is_some_and(&ready) {
                return last.unwrap();
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("agent {uid} never became {what}; last snapshot: {last:#?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The entry for `uid` in a `GET /api/v1/agents` body, if listed.
pub fn listed_agent(agents: &Value, uid: impl Display) -> Option<&Value> {
    let uid = uid.to_string();
    agents["agents"]
        .as_array()?
        .iter()
        .find(|agent| agent["instance_uid"] == uid.as_str())
}

impl Drop for Ampora {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "---- output of ampora serve (pid {}) ----\n{}",
                self.child.id(),
                self.output.text()
            );
        }
    }
}
