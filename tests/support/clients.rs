//! Third-party OpAMP clients as processes: the opamp-go agent (`tests/interop/go-agent`) and the
//! agent on the PyPI `opentelemetry-opamp-client` (`tests/interop/python-agent/agent.py`).
//!
//! Both print `instance_uid=<uuid>` as their first stdout line and exit 0 on SIGTERM; they print
//! `offer hash=<hex>` for each remote config the server offers (kept in
//! [`ExternalAgent::offers`]), then `applied hash=<hex>` or `failed hash=<hex> error=<text>`.
//! `scripts/install-test-deps.sh` installs what they need (the Go toolchain must be on the
//! machine; the venv lives at `$REPO/.venv`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::Duration;

use uuid::Uuid;

use super::output::Output;

const INSTALL_HINT: &str = "run scripts/install-test-deps.sh";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Go toolchain: `go` on PATH, else the usual install location.
fn go_tool() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("go"))
            .find(|candidate| candidate.is_file())
    });
    on_path.or_else(|| {
        let fallback = PathBuf::from("/usr/local/go/bin/go");
        fallback.is_file().then_some(fallback)
    })
}

/// `$REPO/target/interop/go-agent`, built once per test binary when Go is available (cheap when
/// nothing changed: Go's build cache), else as `scripts/install-test-deps.sh` left it.
pub fn go_agent_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let binary = repo().join("target/interop/go-agent");
        let Some(go) = go_tool() else {
            assert!(
                binary.is_file(),
                "the opamp-go interop agent is not built and there is no Go toolchain \
                 (`go` on PATH or /usr/local/go/bin/go): {INSTALL_HINT}"
            );
            return binary;
        };
        std::fs::create_dir_all(binary.parent().unwrap()).expect("create target/interop");
        // Build beside the target and rename over it: another test process may be running the
        // old binary, and a rename never disturbs it.
        let partial = binary.with_extension(format!("partial-{}", std::process::id()));
        let output = Command::new(&go)
            .args(["build", "-buildvcs=false", "-o"])
            .arg(&partial)
            .arg(".")
            .current_dir(repo().join("tests/interop/go-agent"))
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|error| panic!("cannot run {}: {error}", go.display()));
        assert!(
            output.status.success(),
            "go build of tests/interop/go-agent failed ({}); {INSTALL_HINT}\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
        );
        std::fs::rename(&partial, &binary).expect("move the go-agent binary into place");
        binary
    })
}

/// `$REPO/.venv/bin/python` with `opentelemetry-opamp-client` importable.
pub fn python_venv() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let python = repo().join(".venv/bin/python");
        assert!(
            python.exists(),
            "{} is missing (the venv with opentelemetry-opamp-client): {INSTALL_HINT}",
            python.display()
        );
        let output = Command::new(&python)
            .args(["-c", "import opentelemetry._opamp"])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|error| panic!("cannot run {}: {error}", python.display()));
        assert!(
            output.status.success(),
            "opentelemetry-opamp-client does not import in {}: {INSTALL_HINT}\n{}",
            python.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        python
    })
}

/// A running third-party agent. [`ExternalAgent::stop`] sends SIGTERM and expects exit 0;
/// dropping it kills the process (and shows its output if the test is failing).
pub struct ExternalAgent {
    pub uid: Uuid,
    label: String,
    child: Child,
    output: Output,
    /// The config hashes offered, hex, in the order the offers came.
    offers: Arc<Mutex<Vec<String>>>,
}

impl ExternalAgent {
    fn start(label: String, mut command: Command) -> ExternalAgent {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {label} ({command:?}): {error}"));
        let output = Output::new(2_000);
        let (first_line_tx, first_line_rx) = mpsc::channel();
        let offers = Arc::new(Mutex::new(Vec::new()));
        let offered = offers.clone();
        output.capture("stdout", child.stdout.take().unwrap(), move |line| {
            if let Some(hash) = line.trim().strip_prefix("offer hash=") {
                offered.lock().unwrap().push(hash.to_owned());
            }
            let _ = first_line_tx.send(line);
        });
        output.capture("stderr", child.stderr.take().unwrap(), |_| {});
        let line = match first_line_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => line,
            Err(error) => {
                let _ = child.kill();
                let status = child.wait().ok();
                panic!(
                    "{label} printed no first line ({error}; exit status {status:?})\n{}",
                    output.text()
                );
            }
        };
        let uid = line
            .trim()
            .strip_prefix("instance_uid=")
            .and_then(|text| Uuid::parse_str(text).ok())
            .unwrap_or_else(|| {
                let _ = child.kill();
                panic!(
                    "{label}: first line is not instance_uid=<uuid>: {line:?}\n{}",
                    output.text()
                )
            });
        assert_eq!(
            line.trim(),
            format!("instance_uid={uid}"),
            "{label} must print the uid in lowercase canonical form"
        );
        ExternalAgent {
            uid,
            label,
            child,
            output,
            offers,
        }
    }

    /// The opamp-go agent over `transport` (`"ws"` or `"http"`), polling every 500 ms over HTTP
    /// and sending a heartbeat every second over WebSocket. `attrs` are `key=value`
    /// non-identifying attributes.
    pub fn go(transport: &str, url: &str, name: &str, attrs: &[&str]) -> ExternalAgent {
        let mut command = Command::new(go_agent_binary());
        command.args(["-transport", transport, "-url", url, "-name", name]);
        command.args(["-poll-interval", "500ms", "-heartbeat", "1s"]);
        for attr in attrs {
            command.args(["-attr", attr]);
        }
        ExternalAgent::start(format!("opamp-go agent {name:?} ({transport})"), command)
    }

    /// The opamp-go agent with these arguments exactly (`-url`, `-token`, `-cert`, …), under
    /// `label` in failure output.
    pub fn go_with_args(label: &str, args: &[&str]) -> ExternalAgent {
        let mut command = Command::new(go_agent_binary());
        command.args(args);
        ExternalAgent::start(format!("opamp-go agent {label:?}"), command)
    }

    /// The `opentelemetry-opamp-client` agent with these arguments exactly (`--url`, …).
    pub fn python_with_args(label: &str, args: &[&str]) -> ExternalAgent {
        let mut command = Command::new(python_venv());
        command
            .arg("-u")
            .arg(repo().join("tests/interop/python-agent/agent.py"))
            .args(args);
        ExternalAgent::start(format!("python agent {label:?}"), command)
    }

    /// The `opentelemetry-opamp-client` agent (HTTP only), heartbeating every 500 ms.
    pub fn python(url: &str, name: &str, attrs: &[&str]) -> ExternalAgent {
        let mut command = Command::new(python_venv());
        command
            .arg("-u")
            .arg(repo().join("tests/interop/python-agent/agent.py"))
            .args(["--url", url, "--name", name, "--poll-interval", "0.5"]);
        for attr in attrs {
            command.args(["--attr", attr]);
        }
        ExternalAgent::start(format!("python agent {name:?}"), command)
    }

    /// The config hashes the server offered so far (hex), one per offer, oldest first.
    pub fn offers(&self) -> Vec<String> {
        self.offers.lock().unwrap().clone()
    }

    /// How many times the config with this `hash` (hex) was offered so far.
    pub fn offers_of(&self, hash: &str) -> usize {
        self.offers()
            .iter()
            .filter(|offered| *offered == hash)
            .count()
    }

    /// What the agent printed so far (stdout and stderr).
    pub fn output(&self) -> String {
        self.output.text()
    }

    /// Sends SIGTERM (the agent says goodbye if its library does) and waits up to 10 s for it
    /// to exit; panics unless it exits 0.
    pub fn stop(mut self) -> ExitStatus {
        let Some(status) = super::terminate(&mut self.child, Duration::from_secs(10)) else {
            panic!(
                "{} did not exit within 10 s of SIGTERM\n{}",
                self.label,
                self.output.text()
            )
        };
        assert!(
            status.success(),
            "{} exited with {status} after SIGTERM\n{}",
            self.label,
            self.output.text()
        );
        status
    }
}

impl Drop for ExternalAgent {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- output of {} ({}) ----\n{}",
                self.label,
                self.uid,
                self.output.text()
            );
        }
    }
}

/// The opamp-go agent (`tests/interop/go-agent`).
pub struct GoAgent;

impl GoAgent {
    /// Starts it over `transport` (`"ws"` or `"http"`) against `url`, with `service.name`
    /// `name` and non-identifying `attrs` (`key=value`); the uid is in [`ExternalAgent::uid`].
    pub fn start(transport: &str, url: &str, name: &str, attrs: &[&str]) -> ExternalAgent {
        ExternalAgent::go(transport, url, name, attrs)
    }
}

/// The agent on the PyPI `opentelemetry-opamp-client` (`tests/interop/python-agent`).
pub struct PythonAgent;

impl PythonAgent {
    /// Starts it against the OpAMP HTTP `url` with `service.name` `name` and non-identifying
    /// `attrs` (`key=value`); the uid is in [`ExternalAgent::uid`].
    pub fn start(url: &str, name: &str, attrs: &[&str]) -> ExternalAgent {
        ExternalAgent::python(url, name, attrs)
    }
}
