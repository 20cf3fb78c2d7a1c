//! The binary's edges: bad configuration is refused with exit status 64 and a message naming it.

use std::process::Command;

fn ampora(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let (code, _, stderr) = ampora_output(args, env);
    (code, stderr)
}

/// Exit status, standard output and standard error.
fn ampora_output(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let data = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_ampora"))
        .args(args)
        .env("AMPORA_DATA_DIR", data.path())
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn bad_listen_address_is_a_usage_error() {
    let (code, stderr) = ampora(&["serve"], &[("AMPORA_OPAMP_LISTEN", "not-an-address")]);
    assert_eq!(code, 64, "{stderr}");
    assert!(
        stderr.contains("opamp-listen") || stderr.contains("AMPORA_OPAMP_LISTEN"),
        "{stderr}"
    );
}

#[test]
fn unsupported_database_url_is_a_usage_error() {
    let (code, stderr) = ampora(
        &["serve"],
        &[("AMPORA_DATABASE_URL", "mysql://localhost/x")],
    );
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("AMPORA_DATABASE_URL"), "{stderr}");
}

#[test]
fn unusable_operator_settings_are_usage_errors() {
    let listen = [
        ("AMPORA_OPAMP_LISTEN", "127.0.0.1:0"),
        ("AMPORA_HTTP_LISTEN", "127.0.0.1:0"),
    ];
    let (code, stderr) = ampora(
        &["serve"],
        &[&listen[..], &[("AMPORA_ADMIN_PASSWORD", "short")]].concat(),
    );
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("AMPORA_ADMIN_PASSWORD"), "{stderr}");
    assert!(
        !stderr.contains("short"),
        "the password is not echoed: {stderr}"
    );
    for (variable, value) in [
        ("AMPORA_AUDIT_HOT_DAYS", "0"),
        ("AMPORA_AUDIT_RETAIN_DAYS", "seven years"),
        ("AMPORA_SESSION_TTL", "0s"),
    ] {
        let (code, stderr) = ampora(&["serve"], &[(variable, value)]);
        assert_eq!(code, 64, "{variable}={value}: {stderr}");
        let flag = variable
            .trim_start_matches("AMPORA_")
            .to_lowercase()
            .replace('_', "-");
        assert!(
            stderr.contains(variable) || stderr.contains(&flag),
            "{variable}: {stderr}"
        );
    }
}

#[test]
fn separate_roles_need_nats() {
    let (code, stderr) = ampora(&["gateway"], &[]);
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("nats"), "{stderr}");
}

#[test]
fn help_is_not_an_error() {
    let (code, _) = ampora(&["--help"], &[]);
    assert_eq!(code, 0);
}

#[test]
fn zero_sized_queues_and_buffers_are_usage_errors() {
    for (variable, flag) in [
        ("AMPORA_CONNECTION_QUEUE", "--connection-queue"),
        ("AMPORA_WS_READ_BUFFER", "--ws-read-buffer"),
        ("AMPORA_INGEST_QUEUE", "--ingest-queue"),
        ("AMPORA_BUS_QUEUE", "--bus-queue"),
    ] {
        let (code, stderr) = ampora(&["serve"], &[(variable, "0")]);
        assert_eq!(code, 64, "{variable}: {stderr}");
        assert!(stderr.contains(flag), "{variable}: {stderr}");
    }
}

#[test]
fn zero_config_push_periods_are_usage_errors() {
    for (variable, value, flag) in [
        (
            "AMPORA_ASSIGNMENT_CHECK_INTERVAL",
            "0s",
            "--assignment-check-interval",
        ),
        (
            "AMPORA_OFFER_RETRY_INTERVAL",
            "0s",
            "--offer-retry-interval",
        ),
        (
            "AMPORA_AGENT_HEARTBEAT_INTERVAL",
            "500ms",
            "--agent-heartbeat-interval",
        ),
    ] {
        let (code, stderr) = ampora(&["serve"], &[(variable, value)]);
        assert_eq!(code, 64, "{variable}: {stderr}");
        assert!(stderr.contains(flag), "{variable}: {stderr}");
    }
}

#[test]
fn unusable_tls_files_are_refused_before_ready() {
    let missing = tempfile::tempdir().unwrap();
    let cert = missing.path().join("cert.pem");
    let key = missing.path().join("key.pem");
    let (code, stdout, stderr) = ampora_output(
        &[
            "serve",
            "--opamp-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ],
        &[
            ("AMPORA_TLS_CERT", cert.to_str().unwrap()),
            ("AMPORA_TLS_KEY", key.to_str().unwrap()),
        ],
    );
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("cert.pem"), "{stderr}");
    assert!(!stdout.contains("ready"), "said ready first: {stdout}");
}

/// `ampora configs validate FILE` on a file: exit status, standard output, standard error.
fn validate(yaml: &str, extra: &[&str]) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("collector.yaml");
    std::fs::write(&file, yaml).unwrap();
    let mut args = vec!["configs", "validate", file.to_str().unwrap()];
    args.extend_from_slice(extra);
    ampora_output(&args, &[])
}

const VALID: &str = "\
receivers:
  otlp:
    protocols:
      grpc: {}
processors:
  memory_limiter:
    check_interval: 1s
    limit_mib: 512
  batch: {}
exporters:
  otlp:
    endpoint: https://collector.example:4317
service:
  pipelines:
    traces:
      receivers: [otlp]
      processors: [memory_limiter, batch]
      exporters: [otlp]
";

#[test]
fn configs_validate_passes_a_sound_config_with_no_server() {
    let (code, stdout, stderr) = validate(VALID, &[]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(stdout, "");
    assert!(stderr.ends_with("0 error(s), 0 warning(s)\n"), "{stderr}");
}

#[test]
fn configs_validate_fails_on_an_error_and_says_where() {
    let broken = VALID.replace("exporters: [otlp]", "exporters: [otlphttp/missing]");
    let (code, stdout, stderr) = validate(&broken, &[]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stdout.lines().any(|line| line.ends_with(
            "collector.yaml:18:19: error [undefined-component] service::pipelines::traces: \
             references exporter \"otlphttp/missing\", which is not defined"
        )),
        "{stdout}"
    );

    let (code, stdout, _) = validate(&broken, &["-o", "json"]);
    assert_eq!(code, 1);
    let body: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let problem = body["problems"]
        .as_array()
        .unwrap()
        .iter()
        .find(|problem| problem["severity"] == "error")
        .unwrap();
    assert_eq!(
        (
            problem["rule"].as_str(),
            problem["line"].as_u64(),
            problem["column"].as_u64()
        ),
        (Some("undefined-component"), Some(18), Some(19))
    );
    // Warnings alone do not fail it.
    let (code, stdout, _) = validate(
        &VALID.replace(
            "processors: [memory_limiter, batch]",
            "processors: [memory_limiter]",
        ),
        &[],
    );
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("warning [batch-processor]"), "{stdout}");
}

#[test]
fn configs_validate_says_when_it_cannot_read_the_file() {
    let (code, _, stderr) = ampora_output(&["configs", "validate", "/no/such/collector.yaml"], &[]);
    assert_eq!(code, 66, "{stderr}");
    assert!(
        stderr.contains("cannot read /no/such/collector.yaml"),
        "{stderr}"
    );
}

#[test]
fn a_bad_ca_key_encryption_key_is_a_usage_error() {
    let (code, stderr) = ampora(&["serve"], &[("AMPORA_CA_KEK", "c2hvcnQ=")]);
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("AMPORA_CA_KEK"), "{stderr}");
    assert!(stderr.contains("32 bytes"), "{stderr}");
    let (code, stderr) = ampora(&["serve"], &[("AMPORA_CA_KEK_FILE", "/nonexistent/ca.kek")]);
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("AMPORA_CA_KEK_FILE"), "{stderr}");
}

#[test]
fn a_plain_gateway_on_a_public_address_refuses_to_start_without_the_insecure_flag() {
    let roles: [&[&str]; 2] = [&["gateway", "--nats-url", "nats://127.0.0.1:1"], &["serve"]];
    for role in roles {
        let (code, stderr) = ampora(role, &[("AMPORA_OPAMP_LISTEN", "0.0.0.0:0")]);
        assert_eq!(code, 64, "{role:?}: {stderr}");
        assert!(
            stderr.contains("not a loopback address") && stderr.contains("--insecure"),
            "{role:?}: {stderr}"
        );
    }
}

#[test]
fn client_authentication_needs_tls_and_a_known_mode() {
    let (code, stderr) = ampora(&["serve"], &[("AMPORA_TLS_CLIENT_AUTH", "required")]);
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("tls-cert"), "{stderr}");
    let (code, stderr) = ampora(
        &["serve", "--tls-cert", "c.pem", "--tls-key", "k.pem"],
        &[("AMPORA_TLS_CLIENT_AUTH", "sometimes")],
    );
    assert_eq!(code, 64, "{stderr}");
    assert!(
        stderr.contains("`none`, `optional` or `required`"),
        "{stderr}"
    );
    let (code, stderr) = ampora(&["serve"], &[("AMPORA_PROXY_PROTOCOL_FROM", "10.0.0.0/40")]);
    assert_eq!(code, 64, "{stderr}");
    assert!(
        stderr.contains("neither an IP address nor a CIDR"),
        "{stderr}"
    );
}
