//! The configuration, assignment, drift and agent endpoints of a control-plane's API, as the
//! config-push tests drive them.

use std::time::Duration;

use serde_json::{json, Value};
use uuid::Uuid;

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
    /// Signed in at the first call, as `admin` (see [`super::auth`]).
    http: tokio::sync::OnceCell<reqwest::Client>,
}

impl ConfigApi {
    /// `base` is `http://HOST:PORT` (where `/api/v1/…` lives).
    pub fn new(base: impl Into<String>) -> ConfigApi {
        ConfigApi {
            base: base.into(),
            http: tokio::sync::OnceCell::new(),
        }
    }

    async fn http(&self) -> &reqwest::Client {
        self.http
            .get_or_init(|| super::auth::admin_client(&self.base))
            .await
    }

    /// One request: the status and the body (JSON, or the text as a JSON string).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let url = format!("{}{path}", self.base);
        let mut request = self.http().await.request(method.clone(), &url);
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
        self.assign(published, json!({"instance_uid": uid.to_string()}))
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

    /// `POST /api/v1/assignments` of `published` to `target` (`{"instance_uid": …}` or
    /// `{"selector": …}`).
    pub async fn assign(&self, published: &Published, target: Value) {
        let body = json!({
            "configuration_id": published.configuration_id,
            "version": published.version,
            "target": target,
        });
        self.expect(
            reqwest::Method::POST,
            "/api/v1/assignments",
            Some(body),
            201,
        )
        .await;
    }

    /// Replaces the draft of configuration `id` (at its current row version) and publishes it.
    pub async fn publish_edit(&self, id: i64, yaml: &str) -> Published {
        let path = format!("/api/v1/configurations/{id}");
        let current = self.expect(reqwest::Method::GET, &path, None, 200).await;
        let body = json!({"yaml": yaml, "row_version": current["row_version"]});
        self.expect(
            reqwest::Method::PUT,
            &format!("{path}/draft"),
            Some(body),
            200,
        )
        .await;
        self.publish(id).await
    }

    /// The hashes of every config offered to the agent, oldest first.
    pub async fn offered_hashes(&self, uid: Uuid) -> Vec<String> {
        let mut hashes: Vec<String> = self
            .events(uid)
            .await
            .into_iter()
            .filter(|event| event["kind"] == "config_offered")
            .filter_map(|event| event["payload"]["hash"].as_str().map(str::to_owned))
            .collect();
        hashes.reverse();
        hashes
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

    /// Polls `GET /api/v1/drift` until `ready` holds for it (within `timeout`); panics with the
    /// last body otherwise.
    pub async fn wait_fleet_drift(
        &self,
        what: &str,
        timeout: Duration,
        ready: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let drift = self.drift().await;
            if ready(&drift) {
                return drift;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("waited {timeout:?} for {what}; last GET /api/v1/drift: {drift:#}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
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
