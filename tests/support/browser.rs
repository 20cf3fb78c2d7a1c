//! A real browser for UI tests: Debian's headless Chromium driven over WebDriver (chromedriver
//! on a free loopback port, a fresh profile directory), with waits that poll the page's DOM
//! within a bound. Killed, with its whole process group, on drop.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

use super::output::Output;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// How long a page may take to reach a condition a test waits for.
pub const WITHIN: Duration = Duration::from_secs(20);

/// Flags this machine needs (its network is closed: without them Chromium waits on
/// connections it cannot make), plus a window size for readable screenshots.
const FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,1000",
];

pub struct Browser {
    pub client: Client,
    driver: Child,
    output: Output,
    _profile: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

impl Browser {
    /// Starts chromedriver and a Chromium session with a fresh profile.
    pub async fn start() -> Browser {
        assert!(
            Path::new(CHROMIUM).is_file() && Path::new(CHROMEDRIVER).is_file(),
            "Chromium and chromedriver are not installed: run scripts/install-test-deps.sh"
        );
        let profile = tempfile::tempdir().expect("a profile directory");
        let port = free_port();
        let mut driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so that Chromium dies with it.
            .process_group(0)
            .spawn()
            .expect("start chromedriver");
        let output = Output::new(500);
        output.capture("stdout", driver.stdout.take().unwrap(), |_| {});
        output.capture("stderr", driver.stderr.take().unwrap(), |_| {});
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + WITHIN;
        loop {
            let ready = http
                .get(format!("{url}/status"))
                .send()
                .await
                .ok()
                .map(|response| response.json::<Value>());
            if let Some(body) = ready {
                if body.await.is_ok_and(|body| body["value"]["ready"] == true) {
                    break;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "chromedriver not ready within {WITHIN:?}\n{}",
                output.text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut args: Vec<String> = FLAGS.iter().map(|flag| (*flag).to_owned()).collect();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({"binary": CHROMIUM, "args": args}),
        );
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&url)
            .await
            .unwrap_or_else(|error| panic!("a Chromium session: {error}\n{}", output.text()));
        Browser {
            client,
            driver,
            output,
            _profile: profile,
        }
    }

    pub async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|error| panic!("open {url}: {error}"));
    }

    /// Runs `script` (a function body that `return`s) in the page.
    pub async fn eval(&self, script: &str) -> Value {
        self.client
            .execute(script, vec![])
            .await
            .unwrap_or_else(|error| panic!("script {script:?}: {error}"))
    }

    /// Polls `expression` (JavaScript) until it is truthy, within [`WITHIN`]; its value.
    pub async fn wait_until(&self, what: &str, expression: &str) -> Value {
        let script = format!("try {{ return ({expression}); }} catch (e) {{ return null; }}");
        let deadline = tokio::time::Instant::now() + WITHIN;
        loop {
            let value = self.eval(&script).await;
            let truthy = match &value {
                Value::Null => false,
                Value::Bool(ok) => *ok,
                Value::String(text) => !text.is_empty(),
                Value::Number(number) => number.as_f64() != Some(0.0),
                _ => true,
            };
            if truthy {
                return value;
            }
            if tokio::time::Instant::now() >= deadline {
                let url = self.client.current_url().await.map(|u| u.to_string());
                let body = self
                    .eval("return document.body ? document.body.innerText : ''")
                    .await;
                panic!(
                    "waited {WITHIN:?} for {what} ({expression}) on {url:?}; the page reads:\n{}",
                    body.as_str().unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits for the page's script to have run and its live feed to be open.
    pub async fn wait_live(&self) {
        self.wait_until(
            "the page's script",
            "document.body.dataset.ready === 'true'",
        )
        .await;
        self.wait_until(
            "the live feed to open",
            "document.body.dataset.live === 'open'",
        )
        .await;
    }

    /// Marks the current document: [`Browser::same_document`] then tells that no navigation
    /// or reload replaced it.
    pub async fn mark_document(&self) {
        self.eval("window.__amporaMark = 'kept'; return true").await;
    }

    pub async fn same_document(&self) -> bool {
        self.eval("return window.__amporaMark === 'kept'").await == json!(true)
    }

    pub async fn fill(&self, selector: &str, text: &str) {
        let field = self
            .client
            .find(Locator::Css(selector))
            .await
            .unwrap_or_else(|error| panic!("no {selector}: {error}"));
        field.clear().await.expect("clear a field");
        field.send_keys(text).await.expect("type into a field");
    }

    pub async fn click(&self, selector: &str) {
        self.client
            .find(Locator::Css(selector))
            .await
            .unwrap_or_else(|error| panic!("no {selector}: {error}"))
            .click()
            .await
            .unwrap_or_else(|error| panic!("click {selector}: {error}"));
    }

    pub async fn select(&self, selector: &str, value: &str) {
        self.client
            .find(Locator::Css(selector))
            .await
            .unwrap_or_else(|error| panic!("no {selector}: {error}"))
            .select_by_value(value)
            .await
            .unwrap_or_else(|error| panic!("select {value} in {selector}: {error}"));
    }

    /// Saves a screenshot as `docs/screenshots/{name}.png` when `AMPORA_UI_SCREENSHOTS=1`
    /// (so that test runs do not rewrite the documentation).
    pub async fn screenshot(&self, name: &str) {
        if std::env::var("AMPORA_UI_SCREENSHOTS").as_deref() != Ok("1") {
            return;
        }
        let png = self.client.screenshot().await.expect("a screenshot");
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/screenshots");
        std::fs::create_dir_all(&dir).expect("docs/screenshots");
        std::fs::write(dir.join(format!("{name}.png")), png).expect("write a screenshot");
    }

    /// What chromedriver printed (the newest lines).
    pub fn logs(&self) -> String {
        self.output.text()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The whole group: chromedriver and the Chromium processes it started.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.driver.id())])
            .status();
        let _ = self.driver.wait();
        if std::thread::panicking() {
            eprintln!("---- chromedriver ----\n{}", self.output.text());
        }
    }
}
