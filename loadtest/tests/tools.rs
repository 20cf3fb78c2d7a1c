//! The load generator against its own bare references, over real TLS sockets: a fleet split
//! over worker processes and source addresses, and the handshake client.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

const LOADTEST: &str = env!("CARGO_BIN_EXE_ampora-loadtest");

struct Certificates {
    dir: tempfile::TempDir,
}

impl Certificates {
    fn new() -> Certificates {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let server_key = rcgen::KeyPair::generate().unwrap();
        let server = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&server_key, &issuer)
            .unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.path().join("server.pem"), server.pem()).unwrap();
        std::fs::write(dir.path().join("server.key"), server_key.serialize_pem()).unwrap();
        let client_key = rcgen::KeyPair::generate().unwrap();
        let mut client = rcgen::CertificateParams::new(vec!["agent".to_owned()]).unwrap();
        client.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let client = client.signed_by(&client_key, &issuer).unwrap();
        std::fs::write(dir.path().join("client.pem"), client.pem()).unwrap();
        std::fs::write(dir.path().join("client.key"), client_key.serialize_pem()).unwrap();
        Certificates { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// A reference server on a free port; killed on drop.
struct Reference {
    child: Child,
    port: u16,
}

impl Reference {
    fn start(kind: &str, certificates: &Certificates) -> Reference {
        Reference::start_with(kind, certificates, &[])
    }

    fn start_with(
        kind: &str,
        certificates: &Certificates,
        extra: &[&std::ffi::OsStr],
    ) -> Reference {
        let mut child = Command::new(LOADTEST)
            .args(["reference", kind, "--listen", "127.0.0.1:0", "--cert"])
            .arg(certificates.path("server.pem"))
            .arg("--key")
            .arg(certificates.path("server.key"))
            .args(extra)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .rsplit(':')
            .next()
            .and_then(|port| port.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        Reference { child, port }
    }
}

impl Drop for Reference {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(args: &[&str], ca: &Path) -> String {
    let output = Command::new(LOADTEST)
        .args(args)
        .arg("--ca")
        .arg(ca)
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(output.status.success(), "{args:?} failed: {output:?}");
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn a_tls_fleet_over_two_workers_and_several_sources_is_held_and_reported() {
    let certificates = Certificates::new();
    let server = Reference::start("ws-server", &certificates);
    let report_path = certificates.path("report.json");
    let url = format!("wss://localhost:{}/v1/opamp", server.port);
    let summary = run(
        &[
            "agents",
            "--url",
            &url,
            "--agents",
            "300",
            "--workers",
            "2",
            "--ramp",
            "600",
            "--sources",
            "127.0.0.1,127.0.0.2-127.0.0.3",
            "--heartbeat",
            "1s",
            "--status-rate",
            "200",
            // Every agent's first handshake is a full one (no agent has a ticket yet), which
            // takes a while on a busy machine in a debug build: the run lasts until the fleet
            // is ready (bounded), then long enough for heartbeats; "all ready" is seen only at
            // a progress tick, so ticks come often.
            "--duration",
            "60s",
            "--after-ready",
            "3s",
            "--progress-interval",
            "500ms",
            "--report",
            report_path.to_str().unwrap(),
        ],
        &certificates.path("ca.pem"),
    );
    assert!(summary.contains("all agents ready"), "{summary}");
    let report: Value = serde_json::from_slice(&std::fs::read(&report_path).unwrap()).unwrap();
    assert_eq!(report["workers"], 2);
    assert_eq!(report["agents"], 300);
    assert_eq!(report["connected"], 300, "{report:#}");
    assert_eq!(report["ready"], 300, "{report:#}");
    assert_eq!(report["counters"]["connect_errors"], 0);
    assert_eq!(report["counters"]["tls_full_handshakes"], 300);
    assert_eq!(report["counters"]["tls_resumed_handshakes"], 0);
    assert_eq!(report["counters"]["full_states"], 300);
    assert!(
        report["counters"]["status_changes"].as_u64().unwrap() > 100,
        "{report:#}"
    );
    assert!(
        report["counters"]["heartbeats"].as_u64().unwrap() > 300,
        "{report:#}"
    );
    assert_eq!(report["latency"]["connect"]["count"], 300);
    assert_eq!(report["latency"]["first_reply"]["count"], 300);
    assert!(report["steady_rates"]["sent_per_second"].as_f64().unwrap() > 100.0);
    assert!(
        report["reconnect_storm_seconds"].is_null(),
        "nothing was lost"
    );
}

#[test]
fn the_handshake_client_counts_full_tls_handshakes() {
    let certificates = Certificates::new();
    let server = Reference::start("tls-accept", &certificates);
    let target = format!("127.0.0.1:{}", server.port);
    let line = run(
        &[
            "reference",
            "handshakes",
            "--target",
            &target,
            "--server-name",
            "localhost",
            "--concurrency",
            "4",
            "--duration",
            "2s",
        ],
        &certificates.path("ca.pem"),
    );
    let result: Value = serde_json::from_str(line.trim()).unwrap();
    assert!(result["handshakes"].as_u64().unwrap() > 10, "{result}");
    assert!(result["per_second"].as_f64().unwrap() > 5.0, "{result}");
    assert_eq!(result["errors"], 0, "{result}");
}

#[test]
fn the_handshake_client_presents_a_client_certificate_to_a_reference_requiring_one() {
    let certificates = Certificates::new();
    let ca = certificates.path("ca.pem");
    let server = Reference::start_with(
        "tls-accept",
        &certificates,
        &["--client-ca".as_ref(), ca.as_os_str()],
    );
    let target = format!("127.0.0.1:{}", server.port);
    let (cert, key) = (
        certificates.path("client.pem"),
        certificates.path("client.key"),
    );
    let line = run(
        &[
            "reference",
            "handshakes",
            "--target",
            &target,
            "--server-name",
            "localhost",
            "--client-cert",
            cert.to_str().unwrap(),
            "--client-key",
            key.to_str().unwrap(),
            "--concurrency",
            "4",
            "--duration",
            "2s",
        ],
        &ca,
    );
    let result: Value = serde_json::from_str(line.trim()).unwrap();
    assert!(result["handshakes"].as_u64().unwrap() > 10, "{result}");
    assert_eq!(result["errors"], 0, "{result}");
}
