//! Lint rules per workspace: the built-in rules with the operators' settings over them.

use ampora_collector_config::{builtin_lint_rules, LintRule, Severity};
use time::OffsetDateTime;

use super::{ConfigurationError, Result};
use crate::audit::AuditContext;
use crate::storage::{LintRuleSetting, Store};

/// The rules in force in `workspace`: every built-in rule, as an operator last set it.
pub async fn effective_lint_rules(store: &dyn Store, workspace: &str) -> Result<Vec<LintRule>> {
    let settings = store.lint_rule_settings(workspace).await?;
    let mut rules = builtin_lint_rules();
    for rule in &mut rules {
        if let Some(setting) = settings.iter().find(|setting| setting.rule == rule.id) {
            rule.enabled = setting.enabled;
            rule.severity = parse_severity(&setting.severity)?;
            rule.message.clone_from(&setting.message);
            rule.hint.clone_from(&setting.hint);
        }
    }
    Ok(rules)
}

/// A change to one rule; what is absent stays as it is.
#[derive(Debug, Clone, Default)]
pub struct LintRuleUpdate {
    pub enabled: Option<bool>,
    pub severity: Option<String>,
    pub message: Option<String>,
    pub hint: Option<String>,
}

/// Changes rule `id` in `workspace`; returns the rule as it now stands.
pub async fn set_lint_rule(
    store: &dyn Store,
    workspace: &str,
    id: &str,
    update: LintRuleUpdate,
    now: OffsetDateTime,
    audit: &AuditContext,
) -> Result<LintRule> {
    let mut rule = effective_lint_rules(store, workspace)
        .await?
        .into_iter()
        .find(|rule| rule.id == id)
        .ok_or_else(|| ConfigurationError::Invalid(format!("no lint rule {id:?}")))?;
    if let Some(enabled) = update.enabled {
        rule.enabled = enabled;
    }
    if let Some(severity) = update.severity {
        rule.severity = parse_severity(&severity)?;
    }
    if let Some(message) = update.message {
        rule.message = message;
    }
    if let Some(hint) = update.hint {
        rule.hint = hint;
    }
    let setting = LintRuleSetting {
        rule: rule.id.clone(),
        enabled: rule.enabled,
        severity: rule.severity.as_str().to_owned(),
        message: rule.message.clone(),
        hint: rule.hint.clone(),
    };
    store
        .put_lint_rule_setting(workspace, &setting, now, audit)
        .await?;
    Ok(rule)
}

fn parse_severity(text: &str) -> Result<Severity> {
    Severity::parse(text).ok_or_else(|| {
        ConfigurationError::Invalid(format!("severity must be error or warning, not {text:?}"))
    })
}
