//! The real OpenTelemetry Collector under its OpAMP supervisor ([`Supervisor`]).
//!
//! The binaries are `$REPO/target/interop/{otelcol,opampsupervisor}`, which
//! `scripts/build-collector.sh` builds (minutes, once) and links from its cache; the first
//! [`Supervisor`] of a test binary runs that script, which only checks the links when the build
//! is cached.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::json;
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
        Supervisor::start_with(ws_url, name, Uuid::now_v7(), json!({"insecure": true}))
    }

    /// [`Supervisor::start`] as instance `uid`, with `tls` as its `server.tls` settings (e.g.
    /// `ca_file`, `cert_file`, `key_file` for `wss://` with a client certificate).
    pub fn start_with(ws_url: &str, name: &str, uid: Uuid, tls: serde_json::Value) -> Supervisor {
        let (otelcol, opampsupervisor) = collector_binaries();
        let dir = tempfile::tempdir().expect("temp dir");
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage).expect("create the storage directory");
        // JSON is YAML: no YAML writer needed, and every string is quoted.
        let config = json!({
            "server": {
                "endpoint": ws_url,
                "tls": tls,
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
