//! Each built-in lint rule fires where it should, stays quiet where it should, and obeys the
//! workspace's enabled flag, severity, message and hint.

use ampora_collector_config::{
    analyze, builtin_lint_rules, rules, Catalog, LintRule, Problem, Severity,
};

const CLEAN: &str = "\
receivers:
  otlp:
processors:
  memory_limiter:
  batch:
exporters:
  otlp_grpc:
    endpoint: https://backend.example.com:4317
service:
  pipelines:
    traces:
      receivers: [otlp]
      processors: [memory_limiter, batch]
      exporters: [otlp_grpc]
";

/// The problems `rules` raise (validation problems of the snippets left aside).
fn lint_problems(yaml: &str, rules: &[LintRule]) -> Vec<Problem> {
    let analysis = analyze(yaml, &Catalog::builtin(), rules);
    analysis
        .problems
        .into_iter()
        .filter(|p| rules.iter().any(|r| r.id == p.rule))
        .collect()
}

/// (rule, line, column) of each problem.
fn found(problems: &[Problem]) -> Vec<(&str, usize, usize)> {
    problems
        .iter()
        .map(|p| (p.rule.as_str(), p.line, p.column))
        .collect()
}

fn only(id: &str) -> Vec<LintRule> {
    builtin_lint_rules()
        .into_iter()
        .filter(|r| r.id == id)
        .collect()
}

#[test]
fn a_clean_configuration_has_no_lint_problem() {
    assert_eq!(lint_problems(CLEAN, &builtin_lint_rules()), vec![]);
}

#[test]
fn memory_limiter_must_come_first() {
    let late = CLEAN.replace("[memory_limiter, batch]", "[batch, memory_limiter]");
    assert_eq!(
        found(&lint_problems(&late, &only(rules::MEMORY_LIMITER_FIRST))),
        vec![("memory-limiter-first", 13, 27)]
    );
    let missing = CLEAN.replace("[memory_limiter, batch]", "[batch]");
    let problems = lint_problems(&missing, &only(rules::MEMORY_LIMITER_FIRST));
    assert_eq!(found(&problems), vec![("memory-limiter-first", 11, 5)]);
    assert_eq!(
        problems[0].message,
        "service::pipelines::traces: memory_limiter is not the first processor"
    );
    assert_eq!(problems[0].severity, Severity::Warning);
}

#[test]
fn every_pipeline_needs_batch() {
    let yaml = CLEAN.replace("[memory_limiter, batch]", "[memory_limiter]");
    assert_eq!(
        found(&lint_problems(&yaml, &only(rules::BATCH_PROCESSOR))),
        vec![("batch-processor", 11, 5)]
    );
    let named = CLEAN
        .replace("  batch:", "  batch/big:")
        .replace(", batch]", ", batch/big]");
    assert_eq!(lint_problems(&named, &only(rules::BATCH_PROCESSOR)), vec![]);
}

#[test]
fn debug_exporter_is_a_warning() {
    let yaml = CLEAN
        .replace("exporters:\n", "exporters:\n  debug/verbose:\n")
        .replace("[otlp_grpc]", "[otlp_grpc, debug/verbose]");
    let analysis = analyze(&yaml, &Catalog::builtin(), &builtin_lint_rules());
    assert_eq!(found(&analysis.problems), vec![("no-debug-exporter", 7, 3)]);
    assert!(!analysis.blocks_publish());
}

#[test]
fn plaintext_endpoints_outside_loopback() {
    let yaml = "\
exporters:
  otlphttp/remote:
    endpoint: http://collector.example.com:4318
  otlphttp/local:
    endpoint: http://127.0.0.1:4318
  otlp_grpc/insecure:
    endpoint: collector.example.com:4317
    tls:
      insecure: true
  otlp_grpc/local:
    endpoint: localhost:4317
    tls:
      insecure: true
  otlp_grpc/env:
    endpoint: ${env:ENDPOINT}
  otlp_grpc/secure:
    endpoint: https://127.0.0.1:4317
";
    let problems = lint_problems(yaml, &only(rules::PLAINTEXT_ENDPOINT));
    assert_eq!(
        found(&problems),
        vec![("plaintext-endpoint", 3, 15), ("plaintext-endpoint", 9, 17)]
    );
    assert_eq!(
        problems[1].message,
        "exporters::otlp_grpc/insecure::tls::insecure: telemetry leaves the host unencrypted"
    );
}

#[test]
fn secret_literals_but_not_environment_references() {
    let yaml = "\
extensions:
  bearertokenauth:
    token: abc123
  basicauth/client:
    client_auth:
      username: ops
      password: hunter2
exporters:
  otlphttp:
    headers:
      X-API-Key: k-123
      Authorization: ${env:AUTH}
      x-tenant: blue
    tls:
      key_file: /etc/otel/key.pem
";
    let problems = lint_problems(yaml, &only(rules::SECRET_LITERAL));
    assert_eq!(
        found(&problems),
        vec![
            ("secret-literal", 3, 12),
            ("secret-literal", 7, 17),
            ("secret-literal", 11, 18)
        ]
    );
    assert_eq!(
        problems[0].message,
        "extensions::bearertokenauth::token: a secret is written as a literal value"
    );
    assert_eq!(
        problems[0].hint.as_deref(),
        Some("read it from the environment instead, e.g. ${env:API_TOKEN}")
    );
}

#[test]
fn unused_components_are_warned_about() {
    let yaml = CLEAN
        .replace("receivers:\n", "receivers:\n  zipkin:\n")
        .replace(
            "exporters:\n",
            "connectors:\n  forward:\nextensions:\n  pprof:\nexporters:\n",
        );
    let problems = lint_problems(&yaml, &only(rules::UNUSED_COMPONENT));
    assert_eq!(
        found(&problems),
        vec![
            ("unused-component", 2, 3),
            ("unused-component", 8, 3),
            ("unused-component", 10, 3)
        ]
    );
    assert_eq!(
        problems[0].message,
        "receivers::zipkin: defined but not used"
    );
}

#[test]
fn rules_can_be_disabled_and_reworded_and_made_errors() {
    let yaml = CLEAN
        .replace("[memory_limiter, batch]", "[memory_limiter]")
        .replace("  batch:\n", "");
    let mut rules = builtin_lint_rules();
    let batch = rules
        .iter_mut()
        .find(|r| r.id == rules::BATCH_PROCESSOR)
        .unwrap();
    batch.enabled = false;
    assert_eq!(analyze(&yaml, &Catalog::builtin(), &rules).problems, vec![]);

    let batch = rules
        .iter_mut()
        .find(|r| r.id == rules::BATCH_PROCESSOR)
        .unwrap();
    batch.enabled = true;
    batch.severity = Severity::Error;
    batch.message = "batch is mandatory here".to_string();
    batch.hint = String::new();
    let analysis = analyze(&yaml, &Catalog::builtin(), &rules);
    assert!(analysis.blocks_publish());
    assert_eq!(
        analysis.problems,
        vec![Problem {
            severity: Severity::Error,
            rule: "batch-processor".to_string(),
            message: "service::pipelines::traces: batch is mandatory here".to_string(),
            hint: None,
            line: 10,
            column: 5,
        }]
    );
}

#[test]
fn builtin_rules_default_to_warnings_and_serialize_lowercase() {
    let rules = builtin_lint_rules();
    let ids: Vec<&str> = rules.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            rules::MEMORY_LIMITER_FIRST,
            rules::BATCH_PROCESSOR,
            rules::NO_DEBUG_EXPORTER,
            rules::PLAINTEXT_ENDPOINT,
            rules::SECRET_LITERAL,
            rules::UNUSED_COMPONENT
        ]
    );
    assert!(rules
        .iter()
        .all(|r| r.enabled && r.severity == Severity::Warning));
    let json = serde_json::to_value(&rules[0]).unwrap();
    assert_eq!(json["severity"], "warning");
    let back: LintRule = serde_json::from_value(json).unwrap();
    assert_eq!(back, rules[0]);
}
