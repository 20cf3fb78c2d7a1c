//! The production shape on one machine: NATS, PostgreSQL, several `ampora gateway` and
//! `ampora control-plane` processes, and HAProxy (with `deploy/haproxy/haproxy.cfg`) in front.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
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
        super::terminate(&mut child, within).is_some_and(|status| status.success())
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
    /// Gateways serve TLS (a self-signed certificate for `localhost` and `127.0.0.1`) and
    /// HAProxy checks their health over TLS, trusting that certificate.
    pub gateway_tls: bool,
}

/// A gateway's state as HAProxy's statistics report it.
#[derive(Debug)]
pub struct BackendServer {
    /// `gateway1`, `gateway2`, `gateway3`, as named in `deploy/haproxy/haproxy.cfg`.
    pub name: String,
    /// `UP`, `DOWN`, or a transition such as `UP 1/2`.
    pub status: String,
    /// The last health check's outcome: `L7OK` once `/healthz` answered 200.
    pub check: String,
}

pub struct Cluster {
    pub nats: Vec<TestNats>,
    pub postgres: TestPostgres,
    /// URL of this cluster's own database on `postgres`.
    pub database: String,
    pub gateways: Vec<Role>,
    pub control_planes: Vec<Role>,
    /// Sends an admin API token (good on every control-plane: they share the database).
    pub http: reqwest::Client,
    /// The bus prefix every role of this cluster uses.
    pub prefix: String,
    /// The gateways' self-signed certificate (PEM), with `gateway_tls`.
    pub gateway_certificate: Option<PathBuf>,
    haproxy: Child,
    lb_port: u16,
    stats_port: u16,
    /// HAProxy's working directory; also holds the gateways' certificate and key.
    _haproxy_dir: tempfile::TempDir,
}

/// A self-signed certificate for the gateways, written into `dir`: (certificate, key) paths.
fn gateway_certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let cert_path = dir.join("gateway-cert.pem");
    let key_path = dir.join("gateway-key.pem");
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert_path, key_path)
}

impl Cluster {
    pub async fn start(options: ClusterOptions) -> Cluster {
        Cluster::start_with_env(options, &[]).await
    }

    /// [`Cluster::start`] with `extra_env` set on every role (gateways and control-planes),
    /// over the test settings.
    pub async fn start_with_env(options: ClusterOptions, extra_env: &[(&str, &str)]) -> Cluster {
        let nats = if options.nats_servers > 1 {
            TestNats::cluster(options.nats_servers)
        } else {
            vec![TestNats::start()]
        };
        let postgres = TestPostgres::start();
        let database = postgres.create_database().await;
        let prefix = format!("t{}", uuid::Uuid::new_v4().simple());
        // Every control-plane replica seals and unseals the CA key with the same key: 32 bytes
        // in base64 are 43 digits (hex digits are base64 digits; the last one, '0', leaves the
        // unused bits clear) and a pad.
        let ca_kek = format!(
            "{}{}0=",
            uuid::Uuid::new_v4().simple(),
            &uuid::Uuid::new_v4().simple().to_string()[..10]
        );
        let common = |extra: &[(&str, String)]| -> Vec<(String, String)> {
            let mut env: Vec<(String, String)> = [
                ("AMPORA_NATS_URL", TestNats::urls(&nats)),
                ("AMPORA_BUS_PREFIX", prefix.clone()),
                ("AMPORA_CA_KEK", ca_kek.clone()),
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
            env.extend(
                extra_env
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string())),
            );
            env
        };
        let control_planes: Vec<Role> = (0..options.control_planes)
            .map(|i| {
                let env = common(&[
                    ("AMPORA_DATABASE_URL", database.clone()),
                    ("AMPORA_HTTP_LISTEN", "127.0.0.1:0".into()),
                    ("AMPORA_REPLICA_ID", format!("cp-{i}")),
                    ("AMPORA_ADMIN_PASSWORD", super::auth::ADMIN_PASSWORD.into()),
                ]);
                Role::start(&["control-plane"], env, "API:")
            })
            .collect();
        let haproxy_dir = tempfile::tempdir().unwrap();
        let certificate = options
            .gateway_tls
            .then(|| gateway_certificate(haproxy_dir.path()));
        let gateways: Vec<Role> = (0..options.gateways)
            .map(|i| {
                let mut env = common(&[
                    ("AMPORA_OPAMP_LISTEN", format!("127.0.0.1:{}", free_port())),
                    (
                        "AMPORA_GATEWAY_ID",
                        format!("gw-{i}-{}", uuid::Uuid::new_v4().simple()),
                    ),
                    // HAProxy (send-proxy-v2) connects from here.
                    ("AMPORA_PROXY_PROTOCOL_FROM", "127.0.0.1".into()),
                ]);
                if let Some((cert, key)) = &certificate {
                    env.push(("AMPORA_TLS_CERT".into(), cert.display().to_string()));
                    env.push(("AMPORA_TLS_KEY".into(), key.display().to_string()));
                }
                Role::start(&["gateway"], env, "OpAMP:")
            })
            .collect();

        let lb_port = free_port();
        let stats_port = free_port();
        let check_tls = match &certificate {
            Some((cert, _)) => format!("check-ssl verify required ca-file {}", cert.display()),
            None => String::new(),
        };
        let config = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/haproxy/haproxy.cfg");
        let mut haproxy = Command::new("haproxy");
        haproxy
            .args(["-db", "-f"])
            .arg(&config)
            .env("AMPORA_LB_LISTEN", format!("127.0.0.1:{lb_port}"))
            .env("AMPORA_LB_STATS", format!("127.0.0.1:{stats_port}"))
            .env("AMPORA_LB_CHECK_TLS", check_tls)
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
                .trim_start_matches("wss://")
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
        let http = match control_planes.first() {
            Some(control_plane) => {
                let api = control_plane.address.trim_end_matches("/api/v1/agents");
                super::auth::admin_client(api).await
            }
            None => reqwest::Client::new(),
        };
        let cluster = Cluster {
            nats,
            postgres,
            database,
            gateways,
            control_planes,
            http,
            prefix,
            gateway_certificate: certificate.map(|(cert, _)| cert),
            haproxy,
            lb_port,
            stats_port,
            _haproxy_dir: haproxy_dir,
        };
        cluster.wait_ready().await;
        cluster
    }

    /// Waits until every control-plane consumes agent traffic (its `/readyz`) and every gateway
    /// hears a control-plane (its metrics): a control-plane announces itself only after it has
    /// subscribed, so from then on no agent's first message goes unheard.
    async fn wait_ready(&self) {
        // The gateways' certificate is the self-signed one made above.
        let http = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .build()
            .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let ready = |url: String, what: &'static str| {
            let http = &http;
            async move {
                loop {
                    let answer = match http.get(&url).send().await {
                        Ok(response) if response.status().is_success() => {
                            response.text().await.unwrap_or_default()
                        }
                        _ => String::new(),
                    };
                    if answer.lines().any(|line| line.contains(what)) {
                        return;
                    }
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "{url} never showed {what:?}: {answer}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        for control_plane in &self.control_planes {
            let api = control_plane.address.trim_end_matches("/api/v1/agents");
            // 200 only when ready.
            ready(format!("{api}/readyz"), "ready").await;
        }
        // The replicas have split the partitions between them: until then an agent's first
        // message may land on a partition in handover, unheard.
        let replicas = self.control_planes.len();
        let partitions = usize::from(ampora_shared::subjects::DEFAULT_PARTITIONS);
        let fair_share = partitions.div_ceil(replicas.max(1));
        loop {
            let mut owned = Vec::new();
            for control_plane in &self.control_planes {
                let api = control_plane.address.trim_end_matches("/api/v1/agents");
                let text = match http.get(format!("{api}/metrics")).send().await {
                    Ok(response) => response.text().await.unwrap_or_default(),
                    Err(_) => String::new(),
                };
                let gauge = |name: &str| {
                    text.lines()
                        .find_map(|line| line.strip_prefix(name)?.trim().parse::<f64>().ok())
                        .unwrap_or(-1.0) as i64
                };
                owned.push((
                    gauge("ampora_control_plane_replicas_live "),
                    gauge("ampora_control_plane_partitions_owned "),
                ));
            }
            let settled = owned.iter().all(|(live, partitions)| {
                *live == replicas as i64 && (0..=fair_share as i64).contains(partitions)
            }) && owned.iter().map(|(_, partitions)| partitions).sum::<i64>()
                == partitions as i64;
            if settled || replicas == 0 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the control-planes never split the partitions: (replicas live, owned) {owned:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for gateway in &self.gateways {
            let metrics = gateway
                .address
                .replacen("ws", "http", 1)
                .replace("/v1/opamp", "/metrics");
            ready(metrics, "ampora_gateway_control_plane_available 1").await;
        }
    }

    /// The gateways as HAProxy sees them now (its statistics page, as CSV).
    pub async fn backend_servers(&self) -> Vec<BackendServer> {
        let csv = reqwest::get(format!("http://127.0.0.1:{}/stats;csv", self.stats_port))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let mut lines = csv.lines();
        let header: Vec<&str> = lines
            .next()
            .expect("a CSV header")
            .trim_start_matches("# ")
            .split(',')
            .collect();
        let column = |name: &str| header.iter().position(|c| *c == name).unwrap();
        let (proxy, server, status, check) = (
            column("pxname"),
            column("svname"),
            column("status"),
            column("check_status"),
        );
        lines
            .map(|line| line.split(',').collect::<Vec<&str>>())
            .filter(|fields| fields[proxy] == "gateways" && fields[server] != "BACKEND")
            .map(|fields| BackendServer {
                name: fields[server].to_owned(),
                status: fields[status].to_owned(),
                check: fields[check].to_owned(),
            })
            .collect()
    }

    /// Where HAProxy takes agents' connections.
    pub fn lb_addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.lb_port))
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
