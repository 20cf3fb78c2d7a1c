//! The deployment files are valid: systemd accepts the units (with the freshly built binary in
//! place of the installed one) and HAProxy accepts its configuration. (The cluster tests run
//! that HAProxy configuration for real.)

use std::path::PathBuf;
use std::process::Command;

fn deploy() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

#[test]
fn systemd_units_verify() {
    let dir = tempfile::tempdir().unwrap();
    for unit in [
        "ampora-gateway@.service",
        "ampora-control-plane@.service",
        "ampora-haproxy.service",
    ] {
        let text = std::fs::read_to_string(deploy().join("systemd").join(unit)).unwrap();
        let text = text.replace("/usr/local/bin/ampora", env!("CARGO_BIN_EXE_ampora"));
        // Instances of templates are verified under a concrete instance name.
        let name = unit.replace("@.", "@1.");
        std::fs::write(dir.path().join(&name), text).unwrap();
        let output = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(dir.path().join(&name))
            .output()
            .expect("systemd-analyze (Debian's systemd package)");
        let complaints = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success() && complaints.trim().is_empty(),
            "{unit}: {complaints}"
        );
    }
}

#[test]
fn haproxy_config_checks() {
    // Plain gateways, and TLS gateways whose health checks speak TLS.
    for check_tls in [String::new(), "check-ssl verify none".to_owned()] {
        let output = Command::new("haproxy")
            .args(["-c", "-f"])
            .arg(deploy().join("haproxy/haproxy.cfg"))
            .env("AMPORA_LB_LISTEN", "127.0.0.1:4320")
            .env("AMPORA_LB_STATS", "127.0.0.1:8404")
            .env("AMPORA_LB_MAXCONN", "1000")
            .env("AMPORA_GATEWAY_1", "127.0.0.1:4321")
            .env("AMPORA_GATEWAY_2", "127.0.0.1:4322")
            .env("AMPORA_GATEWAY_3", "127.0.0.1:4323")
            .env("AMPORA_LB_CHECK_TLS", &check_tls)
            .output()
            .expect("haproxy: run scripts/install-test-deps.sh");
        assert!(
            output.status.success(),
            "AMPORA_LB_CHECK_TLS={check_tls:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
