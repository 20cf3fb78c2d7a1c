//! Third-party OpAMP clients as processes: the opamp-go agent and the PyPI client's agent,
//! both installed by `scripts/install-test-deps.sh`.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use uuid::Uuid;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn require(path: PathBuf) -> PathBuf {
    assert!(
        path.exists(),
        "{} is missing: run scripts/install-test-deps.sh",
        path.display()
    );
    path
}

/// A running third-party agent; SIGTERM on [`ExternalAgent::stop`], SIGKILL on drop.
pub struct ExternalAgent {
    pub uid: Uuid,
    child: Child,
}

impl ExternalAgent {
    fn start(mut command: Command) -> ExternalAgent {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start agent");
        let stdout = child.stdout.take().expect("stdout");
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = sender.send(line);
            }
        });
        let line = receiver
            .recv_timeout(Duration::from_secs(30))
            .expect("the agent printed its instance uid");
        let uid = line
            .strip_prefix("instance_uid=")
            .and_then(|text| Uuid::parse_str(text.trim()).ok())
            .unwrap_or_else(|| panic!("unexpected first line from the agent: {line:?}"));
        ExternalAgent { uid, child }
    }

    /// The opamp-go agent over `transport` ("ws" or "http").
    pub fn go(transport: &str, url: &str, name: &str, attrs: &[&str]) -> ExternalAgent {
        let mut command = Command::new(require(repo().join("target/interop/go-agent")));
        command.args([
            "-transport",
            transport,
            "-url",
            url,
            "-name",
            name,
            "-poll-interval",
            "500ms",
            "-heartbeat",
            "1s",
        ]);
        for attr in attrs {
            command.args(["-attr", attr]);
        }
        ExternalAgent::start(command)
    }

    /// The `opentelemetry-opamp-client` agent (HTTP).
    pub fn python(url: &str, name: &str, attrs: &[&str]) -> ExternalAgent {
        let mut command = Command::new(require(repo().join(".venv/bin/python")));
        command
            .arg(repo().join("tests/interop/python-agent/agent.py"))
            .args(["--url", url, "--name", name, "--poll-interval", "0.5"]);
        for attr in attrs {
            command.args(["--attr", attr]);
        }
        ExternalAgent::start(command)
    }

    /// Asks the agent to stop (it says goodbye if its library does) and waits for it.
    pub fn stop(mut self) {
        // SAFETY: kill has no memory-safety preconditions; the pid is our live child.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("agent {} did not stop within 10 s of SIGTERM", self.uid);
    }
}

impl Drop for ExternalAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
