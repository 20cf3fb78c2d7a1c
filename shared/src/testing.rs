//! Test helpers: a throwaway `nats-server` on a free loopback port (Debian's `nats-server`).

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A NATS server for one test; killed on drop.
pub struct TestNats {
    port: u16,
    /// Cluster listen port and the other members' route URLs, for a cluster member.
    cluster: Option<(u16, Vec<String>)>,
    /// Certificate and key (PEM files) to serve TLS with.
    tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// A server configuration file (e.g. with authorization), passed as `-c`.
    config: Option<std::path::PathBuf>,
    child: Option<Child>,
}

impl TestNats {
    pub fn start() -> TestNats {
        let mut nats = TestNats {
            port: free_port(),
            cluster: None,
            tls: None,
            config: None,
            child: None,
        };
        nats.restart();
        nats
    }

    /// A server that requires TLS, with the given PEM certificate and key files.
    pub fn start_tls(cert: &std::path::Path, key: &std::path::Path) -> TestNats {
        let mut nats = TestNats {
            port: free_port(),
            cluster: None,
            tls: Some((cert.to_owned(), key.to_owned())),
            config: None,
            child: None,
        };
        nats.restart();
        nats
    }

    /// A server started with a configuration file (for authorization set-ups).
    pub fn start_with_config(config: &std::path::Path) -> TestNats {
        let mut nats = TestNats {
            port: free_port(),
            cluster: None,
            tls: None,
            config: Some(config.to_owned()),
            child: None,
        };
        nats.restart();
        nats
    }

    /// A cluster of `size` servers routed to each other.
    pub fn cluster(size: usize) -> Vec<TestNats> {
        let cluster_ports: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let mut members: Vec<TestNats> = cluster_ports
            .iter()
            .map(|own| {
                let routes = cluster_ports
                    .iter()
                    .filter(|other| *other != own)
                    .map(|other| format!("nats://127.0.0.1:{other}"))
                    .collect();
                TestNats {
                    port: free_port(),
                    cluster: Some((*own, routes)),
                    tls: None,
                    config: None,
                    child: None,
                }
            })
            .collect();
        for member in &mut members {
            member.restart();
        }
        members
    }

    /// The client URLs of several servers, as one comma-separated URL list.
    pub fn urls(servers: &[TestNats]) -> String {
        servers
            .iter()
            .map(TestNats::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts (again) on the same port, waiting until it accepts connections.
    pub fn restart(&mut self) {
        self.stop();
        let mut command = Command::new("nats-server");
        command.args(["-a", "127.0.0.1", "-p", &self.port.to_string()]);
        if let Some((cluster_port, routes)) = &self.cluster {
            command
                .args([
                    "--cluster_name",
                    "ampora-test",
                    "--cluster",
                    &format!("nats://127.0.0.1:{cluster_port}"),
                ])
                .args(["--routes", &routes.join(",")]);
        }
        if let Some(config) = &self.config {
            command.arg("-c").arg(config);
        }
        if let Some((cert, key)) = &self.tls {
            command
                .arg("--tls")
                .arg("--tlscert")
                .arg(cert)
                .arg("--tlskey")
                .arg(key);
        }
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nats-server not found: run scripts/install-test-deps.sh");
        let log = child.stderr.take().expect("piped stderr");
        self.child = Some(child);
        // The server logs to stderr; it takes clients once it says it is ready. The reader
        // keeps draining the log, so the server never blocks on a full pipe.
        let (ready, is_ready) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(log).lines().map_while(Result::ok) {
                if line.contains("Server is ready") {
                    let _ = ready.send(());
                }
            }
        });
        assert!(
            is_ready.recv_timeout(Duration::from_secs(10)).is_ok(),
            "nats-server did not start on port {}",
            self.port
        );
    }
}

impl Drop for TestNats {
    fn drop(&mut self) {
        self.stop();
    }
}
