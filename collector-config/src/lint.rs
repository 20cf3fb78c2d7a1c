//! Advice beyond what the Collector refuses. Each rule has a stable id, and a workspace may
//! switch it off or change its severity, message and hint; [`crate::analyze`] takes the
//! effective set. A finding's message is `subject: rule message`, so an overridden message
//! still says where.

use serde::{Deserialize, Serialize};

use crate::catalog::Kind;
use crate::config::{Config, Pipeline, Reference};
use crate::problem::{Problem, Severity};
use crate::rules;
use crate::yaml::{Node, Position, Value};

/// One lint rule as a workspace has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LintRule {
    pub id: String,
    pub enabled: bool,
    pub severity: Severity,
    pub message: String,
    pub hint: String,
}

/// The rules this crate knows, with their defaults. All are warnings: each has legitimate
/// exceptions (a debug exporter while diagnosing, a collector behind a gateway that batches),
/// so none blocks publishing until a workspace says so.
///
/// `plaintext-endpoint` looks at exporters' `endpoint` (an `http://` URL, or `tls.insecure:
/// true`) and exempts loopback hosts (`localhost`, `127.0.0.0/8`, `::1`), whose traffic never
/// leaves the machine (an agent-local sidecar), and `${...}` endpoints, unknown until the agent
/// resolves them. `secret-literal` flags keys ending in password, passwd, secret, token,
/// api_key, apikey, authorization, secret_key or private_key (case and `-`/`_` ignored) whose
/// value is a non-empty literal with no `${...}`.
pub fn builtin_lint_rules() -> Vec<LintRule> {
    let rule = |id: &str, message: &str, hint: &str| LintRule {
        id: id.to_string(),
        enabled: true,
        severity: Severity::Warning,
        message: message.to_string(),
        hint: hint.to_string(),
    };
    vec![
        rule(
            rules::MEMORY_LIMITER_FIRST,
            "memory_limiter is not the first processor",
            "put memory_limiter first in processors, so data is refused before the Collector runs out of memory",
        ),
        rule(
            rules::BATCH_PROCESSOR,
            "no batch processor",
            "add the batch processor (after memory_limiter) so exporters send fewer, larger requests",
        ),
        rule(
            rules::NO_DEBUG_EXPORTER,
            "the debug exporter writes telemetry into the Collector's own log",
            "remove the debug exporter outside of troubleshooting",
        ),
        rule(
            rules::PLAINTEXT_ENDPOINT,
            "telemetry leaves the host unencrypted",
            "use an https:// endpoint and drop tls.insecure: true (loopback endpoints are exempt)",
        ),
        rule(
            rules::SECRET_LITERAL,
            "a secret is written as a literal value",
            "read it from the environment instead, e.g. ${env:API_TOKEN}",
        ),
        rule(
            rules::UNUSED_COMPONENT,
            "defined but not used",
            "add it to a pipeline (extensions: to service::extensions) or remove it",
        ),
    ]
}

/// A rule's finding before the rule's wording is applied.
struct Finding {
    position: Position,
    subject: String,
}

pub fn lint(config: &Config<'_>, root: &Node, rules: &[LintRule], problems: &mut Vec<Problem>) {
    for rule in rules.iter().filter(|r| r.enabled) {
        let findings = match rule.id.as_str() {
            rules::MEMORY_LIMITER_FIRST => memory_limiter_first(config),
            rules::BATCH_PROCESSOR => batch_processor(config),
            rules::NO_DEBUG_EXPORTER => debug_exporters(config),
            rules::PLAINTEXT_ENDPOINT => plaintext_endpoints(config),
            rules::SECRET_LITERAL => secret_literals(root),
            rules::UNUSED_COMPONENT => unused_components(config),
            // A stored override of a rule this version no longer has.
            _ => continue,
        };
        for finding in findings {
            let mut problem = Problem::new(
                rule.severity,
                &rule.id,
                finding.position,
                format!("{}: {}", finding.subject, rule.message),
            );
            if !rule.hint.is_empty() {
                problem = problem.with_hint(rule.hint.clone());
            }
            problems.push(problem);
        }
    }
}

fn component_type(reference: &Reference) -> &str {
    reference.id.split('/').next().unwrap_or_default()
}

fn pipeline_subject(pipeline: &Pipeline) -> String {
    format!("service::pipelines::{}", pipeline.id)
}

fn memory_limiter_first(config: &Config<'_>) -> Vec<Finding> {
    let mut findings = Vec::new();
    for pipeline in &config.pipelines {
        let is_limiter = |r: &&Reference| component_type(r) == "memory_limiter";
        match pipeline.processors.iter().position(|r| is_limiter(&r)) {
            Some(0) => {}
            Some(index) => findings.push(Finding {
                position: pipeline.processors[index].position,
                subject: pipeline_subject(pipeline),
            }),
            None => findings.push(Finding {
                position: pipeline.position,
                subject: pipeline_subject(pipeline),
            }),
        }
    }
    findings
}

fn batch_processor(config: &Config<'_>) -> Vec<Finding> {
    config
        .pipelines
        .iter()
        .filter(|p| !p.processors.iter().any(|r| component_type(r) == "batch"))
        .map(|p| Finding {
            position: p.position,
            subject: pipeline_subject(p),
        })
        .collect()
}

fn debug_exporters(config: &Config<'_>) -> Vec<Finding> {
    config
        .components(Kind::Exporter)
        .iter()
        .filter(|c| c.component_type == "debug")
        .map(|c| Finding {
            position: c.position,
            subject: format!("exporters::{}", c.id),
        })
        .collect()
}

fn plaintext_endpoints(config: &Config<'_>) -> Vec<Finding> {
    let mut findings = Vec::new();
    for exporter in config.components(Kind::Exporter) {
        let Some(endpoint) = exporter.settings.get("endpoint") else {
            continue;
        };
        let Some(url) = endpoint.as_text() else {
            continue;
        };
        // A value from the environment is unknown here; loopback traffic never leaves the host.
        if url.contains("${") || is_loopback(url) {
            continue;
        }
        let subject = format!("exporters::{}", exporter.id);
        if url.to_ascii_lowercase().starts_with("http://") {
            findings.push(Finding {
                position: endpoint.position,
                subject: format!("{subject}::endpoint"),
            });
        }
        let insecure = exporter
            .settings
            .get("tls")
            .and_then(|tls| tls.get("insecure"));
        if let Some(insecure) = insecure.filter(|n| n.as_text() == Some("true")) {
            findings.push(Finding {
                position: insecure.position,
                subject: format!("{subject}::tls::insecure"),
            });
        }
    }
    findings
}

/// Whether an endpoint (`scheme://host:port/path` or `host:port`) names this host.
fn is_loopback(endpoint: &str) -> bool {
    let without_scheme = endpoint
        .split_once("://")
        .map_or(endpoint, |(_, rest)| rest);
    let authority = without_scheme.split('/').next().unwrap_or_default();
    let host_port = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let host = match host_port.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or_default(),
        None => host_port.split(':').next().unwrap_or_default(),
    };
    let host = host.to_ascii_lowercase();
    host == "localhost" || host == "::1" || host.starts_with("127.")
}

/// Key endings that name a secret (`bearer_token`, `client_secret`, `x-api-key`, ...); a
/// `token_file` or `password_file` names where one is kept, which is fine.
const SECRET_KEY_ENDINGS: [&str; 9] = [
    "password",
    "passwd",
    "secret",
    "token",
    "api_key",
    "apikey",
    "authorization",
    "secret_key",
    "private_key",
];

fn secret_literals(root: &Node) -> Vec<Finding> {
    let mut findings = Vec::new();
    collect_secret_literals(root, &mut Vec::new(), &mut findings);
    findings
}

fn collect_secret_literals(node: &Node, path: &mut Vec<String>, findings: &mut Vec<Finding>) {
    match &node.value {
        Value::Scalar(_) => {}
        Value::Sequence(items) => items
            .iter()
            .for_each(|item| collect_secret_literals(item, path, findings)),
        Value::Mapping(entries) => {
            for (key, value) in entries {
                let key_text = key.as_scalar().map(|s| s.text.clone()).unwrap_or_default();
                path.push(key_text.clone());
                let normalized = key_text.to_ascii_lowercase().replace('-', "_");
                let sensitive = SECRET_KEY_ENDINGS
                    .iter()
                    .any(|ending| normalized.ends_with(ending));
                let literal = value
                    .as_text()
                    .is_some_and(|v| !v.is_empty() && !v.contains("${"));
                if sensitive && literal {
                    findings.push(Finding {
                        position: value.position,
                        subject: path.join("::"),
                    });
                }
                collect_secret_literals(value, path, findings);
                path.pop();
            }
        }
    }
}

fn unused_components(config: &Config<'_>) -> Vec<Finding> {
    let used_in_pipelines = |id: &str, kind: Kind| {
        config.pipelines.iter().any(|p| {
            let lists: &[&Vec<Reference>] = match kind {
                Kind::Receiver => &[&p.receivers],
                Kind::Processor => &[&p.processors],
                Kind::Exporter => &[&p.exporters],
                Kind::Connector => &[&p.receivers, &p.exporters],
                Kind::Extension => &[],
            };
            lists.iter().any(|list| list.iter().any(|r| r.id == id))
        })
    };
    let mut findings = Vec::new();
    for kind in Kind::ALL {
        for component in config.components(kind) {
            let used = match kind {
                Kind::Extension => config
                    .service_extensions
                    .iter()
                    .any(|r| r.id == component.id),
                _ => used_in_pipelines(&component.id, kind),
            };
            if !used {
                findings.push(Finding {
                    position: component.position,
                    subject: format!("{}::{}", kind.section(), component.id),
                });
            }
        }
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_endpoints() {
        for endpoint in [
            "http://localhost:4318",
            "127.0.0.1:4317",
            "http://[::1]:4318/v1",
            "https://u:p@127.0.0.2",
        ] {
            assert!(is_loopback(endpoint), "{endpoint}");
        }
        for endpoint in [
            "http://collector:4318",
            "10.0.0.1:4317",
            "http://[2001:db8::1]:4318",
        ] {
            assert!(!is_loopback(endpoint), "{endpoint}");
        }
    }

    #[test]
    fn builtin_rule_ids_are_unique() {
        let rules = builtin_lint_rules();
        let ids: std::collections::BTreeSet<_> = rules.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids.len(), rules.len());
    }
}
