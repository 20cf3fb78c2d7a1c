//! The catalog decides unknown component types (warning, or error when the agents' reported
//! components rule a type out) and which connector signal pairs are valid.

use std::collections::{BTreeMap, BTreeSet};

use ampora_collector_config::{
    analyze, rules, Catalog, Kind, Problem, ReportedComponents, Severity,
};

const UNKNOWN_TYPES: &str = "\
receivers:
  otlp:
  acmereceiver:
exporters:
  otlp_grpc:
    endpoint: backend.example.com:4317
service:
  pipelines:
    traces:
      receivers: [otlp, acmereceiver]
      exporters: [otlp_grpc]
";

fn reported(kind: Kind, types: &[&str]) -> ReportedComponents {
    ReportedComponents {
        types: BTreeMap::from([(
            kind,
            types.iter().map(|t| t.to_string()).collect::<BTreeSet<_>>(),
        )]),
    }
}

fn type_problems(yaml: &str, catalog: &Catalog) -> Vec<Problem> {
    analyze(yaml, catalog, &[])
        .problems
        .into_iter()
        .filter(|p| p.rule == rules::UNKNOWN_COMPONENT_TYPE)
        .collect()
}

#[test]
fn an_unknown_type_is_a_warning_by_default() {
    let problems = type_problems(UNKNOWN_TYPES, &Catalog::builtin());
    assert_eq!(problems.len(), 1);
    assert_eq!(
        (problems[0].severity, problems[0].line, problems[0].column),
        (Severity::Warning, 3, 3)
    );
    assert_eq!(
        problems[0].message,
        "receivers::acmereceiver: unknown receiver type \"acmereceiver\""
    );
    assert!(!analyze(UNKNOWN_TYPES, &Catalog::builtin(), &[]).blocks_publish());
}

#[test]
fn reported_components_turn_an_unknown_type_into_an_error() {
    let catalog =
        Catalog::builtin().with_reported(&reported(Kind::Receiver, &["otlp", "hostmetrics"]));
    let problems = type_problems(UNKNOWN_TYPES, &catalog);
    assert_eq!(problems.len(), 1);
    assert_eq!(
        (problems[0].severity, problems[0].line, problems[0].column),
        (Severity::Error, 3, 3)
    );
    assert_eq!(
        problems[0].message,
        "receivers::acmereceiver: the agents have no receiver of type \"acmereceiver\""
    );
    assert!(analyze(UNKNOWN_TYPES, &catalog, &[]).blocks_publish());
}

#[test]
fn reported_components_make_a_vendor_type_known() {
    let catalog =
        Catalog::builtin().with_reported(&reported(Kind::Receiver, &["otlp", "acmereceiver"]));
    assert_eq!(type_problems(UNKNOWN_TYPES, &catalog), vec![]);
}

#[test]
fn reported_components_rule_out_even_builtin_types() {
    let catalog = Catalog::builtin().with_reported(&reported(Kind::Exporter, &["otlphttp"]));
    let problems = type_problems(UNKNOWN_TYPES, &catalog);
    let errors: Vec<_> = problems
        .iter()
        .map(|p| (p.severity, p.line, p.message.as_str()))
        .collect();
    assert_eq!(
        errors,
        vec![
            (
                Severity::Warning,
                3,
                "receivers::acmereceiver: unknown receiver type \"acmereceiver\""
            ),
            (
                Severity::Error,
                5,
                "exporters::otlp_grpc: the agents have no exporter of type \"otlp_grpc\""
            ),
        ]
    );
}

fn connector_config(connector: &str, from: &str, to: &str) -> String {
    format!(
        "\
receivers:
  otlp:
exporters:
  otlp_grpc:
    endpoint: backend.example.com:4317
connectors:
  {connector}:
service:
  pipelines:
    {from}/in:
      receivers: [otlp]
      exporters: [{connector}]
    {to}/out:
      receivers: [{connector}]
      exporters: [otlp_grpc]
"
    )
}

fn connector_errors(yaml: &str, catalog: &Catalog) -> usize {
    analyze(yaml, catalog, &[])
        .problems
        .iter()
        .filter(|p| p.rule == rules::CONNECTOR_UNMATCHED)
        .count()
}

#[test]
fn connector_signal_pairs_come_from_the_data() {
    let catalog = Catalog::builtin();
    let cases = [
        ("forward", "logs", "logs", 0),
        ("forward", "logs", "metrics", 2),
        ("spanmetrics", "traces", "metrics", 0),
        ("spanmetrics", "logs", "metrics", 2),
        ("servicegraph", "traces", "metrics", 0),
        ("count", "logs", "metrics", 0),
        ("count", "metrics", "metrics", 0),
        ("count", "traces", "logs", 2),
        ("routing", "metrics", "metrics", 0),
        ("routing", "metrics", "traces", 2),
    ];
    for (connector, from, to, errors) in cases {
        assert_eq!(
            connector_errors(&connector_config(connector, from, to), &catalog),
            errors,
            "{connector} {from}->{to}"
        );
    }
}

#[test]
fn a_connector_type_without_pairs_is_not_second_guessed() {
    let catalog = Catalog::builtin().with_reported(&reported(Kind::Connector, &["vendorbridge"]));
    let yaml = connector_config("vendorbridge", "logs", "traces");
    assert_eq!(connector_errors(&yaml, &catalog), 0);
    assert!(!analyze(&yaml, &catalog, &[]).blocks_publish());
}

#[test]
fn unsupported_pair_hint_lists_what_the_connector_does() {
    let yaml = connector_config("spanmetrics", "logs", "metrics");
    let analysis = analyze(&yaml, &Catalog::builtin(), &[]);
    let hints: Vec<_> = analysis
        .problems
        .iter()
        .filter_map(|p| p.hint.as_deref())
        .collect();
    assert_eq!(
        hints,
        vec!["a \"spanmetrics\" connector supports traces -> metrics"; 2]
    );
}
