//! The components an agent reports (`AvailableComponents`), as the validator takes them.

use std::collections::{BTreeMap, BTreeSet};

use ampora_collector_config::{Kind, ReportedComponents};
use serde_json::Value;

use crate::agents::snapshot::AgentDetails;

/// The component types an agent reported, by kind: `None` when it reported none.
pub fn reported_components(details: &AgentDetails) -> Option<ReportedComponents> {
    details
        .available_components
        .as_ref()
        .and_then(types_by_kind)
}

/// The component types under each kind in an agent's stored `available_components`
/// (`{"components": {"receivers": {"sub_components": {"otlp": …}}, …}}`, as the Collector's
/// opamp extension reports them). `None` when the agent reported none of the kinds.
fn types_by_kind(available: &Value) -> Option<ReportedComponents> {
    let kinds = [
        ("receivers", Kind::Receiver),
        ("processors", Kind::Processor),
        ("exporters", Kind::Exporter),
        ("connectors", Kind::Connector),
        ("extensions", Kind::Extension),
    ];
    let components = available.get("components")?;
    let mut types = BTreeMap::new();
    for (name, kind) in kinds {
        let Some(listed) = components
            .get(name)
            .and_then(|kind| kind.get("sub_components"))
            .and_then(Value::as_object)
        else {
            continue;
        };
        types.insert(kind, listed.keys().cloned().collect::<BTreeSet<String>>());
    }
    (!types.is_empty()).then_some(ReportedComponents { types })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn reads_the_types_under_each_kind() {
        let available = json!({"hash": "ab", "components": {
            "receivers": {"metadata": {}, "sub_components": {"otlp": {}, "hostmetrics": {}}},
            "exporters": {"metadata": {}, "sub_components": {"debug": {}}},
            "other": {"sub_components": {"x": {}}},
        }});
        let reported = types_by_kind(&available).unwrap();
        assert_eq!(reported.types.len(), 2);
        assert!(reported.types[&Kind::Receiver].contains("hostmetrics"));
        assert!(reported.types[&Kind::Exporter].contains("debug"));
        assert!(types_by_kind(&json!({"components": {}})).is_none());
        assert!(reported_components(&AgentDetails::default()).is_none());
    }
}
