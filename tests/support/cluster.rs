//! The production shape on one machine: NATS, PostgreSQL, several `ampora gateway` and
//! `ampora control-plane` processes, and HAProxy (with `deploy/haproxy/haproxy.cfg`) in front.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ampora_control_plane::testing::TestPostgres;
use ampora_shared::testing::TestNats;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One `ampora` role process that can be killed and started again with the same settings.
pub struct Role {
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// The line prefix whose value is this role's address.
    ready_label: &'static str,
    child: Option<Child>,
    pub address: String,
}

impl Role {
    fn start(args: &[&str], env: Vec<(String, String)>, ready_label: &'static str) -> Role {
        let mut role = Role {
            args: args.iter().map(|a| a.to_string()).collect(),
            env,
            ready_label,
            child: None,
            address: String::new(),
        };
        role.restart();
        role
    }

    /// Starts the process (again) and waits for its ready line.
    pub fn restart(&mut self) {
        self.kill9();
        let mut child = Command::new(env!("CARGO_BIN_EXE_ampora"))
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "error".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start ampora");
        let stdout = child.stdout.take().unwrap();
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = sender.send(line);
            }
        });
        let label = self.ready_label;
        self.address = loop {
            let line = receiver
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("ampora {:?} did not print {label:?}", self.args));
            if let Some(value) = line.trim().strip_prefix(label) {
                break value.trim().to_owned();
            }
        };
        self.child = Some(child);
    }

    /// As a crash would: SIGKILL, no goodbye.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM; returns whether it exited successfully within `within`.
    pub fn terminate(&mut self, within: Duration) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        // SAFETY: kill has no memory-safety preconditions; the pid is our live child.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub struct ClusterOptions {
    pub gateways: usize,
    pub control_planes: usize,
    pub nats_servers: usize,
}

pub struct Cluster {
    pub nats: Vec<TestNats>,
    pub postgres: TestPostgres,
    /// URL of this cluster's own database on `postgres`.
    pub database: String,
    pub gateways: Vec<Role>,
    pub control_planes: Vec<Role>,
    haproxy: Child,
    lb_port: u16,
    _haproxy_dir: tempfile::TempDir,
}

impl Cluster {
    pub async fn start(options: ClusterOptions) -> Cluster {
        let nats = if options.nats_servers > 1 {
            TestNats::cluster(options.nats_servers)
        } else {
            vec![TestNats::start()]
        };
        let postgres = TestPostgres::start();
        let database = postgres.create_database().await;
        let prefix = format!("t{}", uuid::Uuid::new_v4().simple());
        let common = |extra: &[(&str, String)]| -> Vec<(String, String)> {
            let mut env: Vec<(String, String)> = [
                ("AMPORA_NATS_URL", TestNats::urls(&nats)),
                ("AMPORA_BUS_PREFIX", prefix.clone()),
                ("AMPORA_HEARTBEAT_INTERVAL", "250ms".into()),
                ("AMPORA_CONTROL_PLANE_TIMEOUT", "3s".into()),
                ("AMPORA_GATEWAY_TIMEOUT", "3s".into()),
                ("AMPORA_LEASE_TTL", "2s".into()),
                ("AMPORA_HEARTBEAT_TIMEOUT", "10s".into()),
                ("AMPORA_SWEEP_INTERVAL", "250ms".into()),
                ("AMPORA_WS_PING_INTERVAL", "1s".into()),
                ("AMPORA_WS_IDLE_TIMEOUT", "5s".into()),
                ("AMPORA_HTTP_REPLY_TIMEOUT", "3s".into()),
                ("AMPORA_SHUTDOWN_GRACE", "2s".into()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
            env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
            env
        };
        let control_planes = (0..options.control_planes)
            .map(|i| {
                let env = common(&[
                    ("AMPORA_DATABASE_URL", database.clone()),
                    ("AMPORA_HTTP_LISTEN", "127.0.0.1:0".into()),
                    ("AMPORA_REPLICA_ID", format!("cp-{i}")),
                ]);
                Role::start(&["control-plane"], env, "API:")
            })
            .collect();
        let gateways: Vec<Role> = (0..options.gateways)
            .map(|i| {
                let env = common(&[
                    ("AMPORA_OPAMP_LISTEN", format!("127.0.0.1:{}", free_port())),
                    (
                        "AMPORA_GATEWAY_ID",
                        format!("gw-{i}-{}", uuid::Uuid::new_v4().simple()),
                    ),
                ]);
                Role::start(&["gateway"], env, "OpAMP:")
            })
            .collect();

        let lb_port = free_port();
        let haproxy_dir = tempfile::tempdir().unwrap();
        let config = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/haproxy/haproxy.cfg");
        let mut haproxy = Command::new("haproxy");
        haproxy
            .args(["-db", "-f"])
            .arg(&config)
            .env("AMPORA_LB_LISTEN", format!("127.0.0.1:{lb_port}"))
            .env("AMPORA_LB_STATS", format!("127.0.0.1:{}", free_port()))
            .env("AMPORA_LB_MAXCONN", "4000")
            .current_dir(haproxy_dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for i in 0..3 {
            // The config names three gateways; fewer repeat the last.
            let gateway = &gateways[i.min(gateways.len() - 1)];
            let host_port = gateway
                .address
                .trim_start_matches("ws://")
                .trim_end_matches("/v1/opamp")
                .to_owned();
            haproxy.env(format!("AMPORA_GATEWAY_{}", i + 1), host_port);
        }
        let haproxy = haproxy
            .spawn()
            .expect("haproxy not found: run scripts/install-test-deps.sh");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", lb_port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "haproxy did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Cluster {
            nats,
            postgres,
            database,
            gateways,
            control_planes,
            haproxy,
            lb_port,
            _haproxy_dir: haproxy_dir,
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/v1/opamp", self.lb_port)
    }

    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1/opamp", self.lb_port)
    }

    /// The API of a running control-plane.
    pub fn api(&mut self) -> String {
        for role in &mut self.control_planes {
            if role.is_running() {
                return role.address.trim_end_matches("/api/v1/agents").to_owned();
            }
        }
        panic!("no control-plane is running");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.haproxy.kill();
        let _ = self.haproxy.wait();
    }
}
