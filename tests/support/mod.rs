//! Runs the real `ampora` binary for integration tests and reads its ready lines.

#![allow(dead_code)]

mod clients;
pub mod cluster;
pub mod fleet;

#[allow(unused_imports)]
pub use clients::ExternalAgent;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// An `ampora serve` process on free loopback ports with its own data directory; killed on drop.
pub struct Ampora {
    child: Child,
    ws_url: String,
    http_opamp_url: String,
    api_base: String,
    _data_dir: tempfile::TempDir,
}

impl Ampora {
    pub async fn start(extra_env: &[(&str, &str)]) -> Ampora {
        let data_dir = tempfile::tempdir().expect("temp dir");
        let mut command = Command::new(env!("CARGO_BIN_EXE_ampora"));
        command
            .arg("serve")
            .env("AMPORA_DATA_DIR", data_dir.path())
            .env("AMPORA_OPAMP_LISTEN", "127.0.0.1:0")
            .env("AMPORA_HTTP_LISTEN", "127.0.0.1:0")
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "error".into()),
            )
            .envs(extra_env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = command.spawn().expect("start ampora serve");
        let stdout = child.stdout.take().expect("stdout");
        let (lines_tx, lines_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let field = |label: &str| -> String {
            loop {
                let line = lines_rx
                    .recv_timeout(Duration::from_secs(30))
                    .unwrap_or_else(|_| panic!("ampora serve did not print {label:?} within 30 s"));
                if let Some(value) = line.trim().strip_prefix(label) {
                    return value.trim().to_owned();
                }
            }
        };
        let ws_url = field("OpAMP WebSocket:");
        let http_opamp_url = field("OpAMP HTTP:");
        let api = field("API:");
        let api_base = api.trim_end_matches("/api/v1/agents").to_owned();
        Ampora {
            child,
            ws_url,
            http_opamp_url,
            api_base,
            _data_dir: data_dir,
        }
    }

    pub fn ws_url(&self) -> String {
        self.ws_url.clone()
    }

    pub fn http_opamp_url(&self) -> String {
        self.http_opamp_url.clone()
    }

    /// `http://127.0.0.1:PORT`, where `/api/v1/…`, `/healthz` and `/readyz` live.
    pub fn api_base(&self) -> String {
        self.api_base.clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `GET /api/v1/agents/{uid}`, or `None` for 404.
    pub async fn agent_json(&self, uid: uuid::Uuid) -> Option<serde_json::Value> {
        let response = reqwest::get(format!("{}/api/v1/agents/{uid}", self.api_base))
            .await
            .expect("API request");
        (response.status() == 200).then_some(response.json().await.expect("JSON body"))
    }

    /// Polls the agent's snapshot until `ready` holds; panics with the last snapshot otherwise.
    pub async fn wait_agent(
        &self,
        uid: uuid::Uuid,
        what: &str,
        ready: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let mut last = None;
        while tokio::time::Instant::now() < deadline {
            last = self.agent_json(uid).await;
            if last.as_ref().is_some_and(&ready) {
                return last.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("agent {uid} never became {what}; last snapshot: {last:#?}");
    }
}

impl Drop for Ampora {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
