//! What the Collector itself refuses before it starts (`otelcol validate`), on the model read
//! by `config`: missing sections, undefined references, ambiguous connector ids and component
//! types the agents lack (here), pipeline rules (`pipelines`) and connector wiring
//! (`connectors`).

mod connectors;
mod pipelines;

use crate::catalog::{Catalog, Kind, TypeStatus};
use crate::config::{Config, Reference};
use crate::problem::{Problem, Severity};
use crate::rules;

pub fn validate(config: &Config<'_>, catalog: &Catalog, problems: &mut Vec<Problem>) {
    check_sections(config, problems);
    check_ambiguous_connectors(config, problems);
    check_types(config, catalog, problems);
    check_references(config, problems);
    pipelines::check(config, problems);
    connectors::check(config, catalog, problems);
}

fn check_sections(config: &Config<'_>, problems: &mut Vec<Problem>) {
    if Kind::ALL
        .iter()
        .all(|kind| config.components(*kind).is_empty())
    {
        problems.push(Problem::error(
            rules::EMPTY_CONFIG,
            config.start,
            "the configuration defines no component",
        ));
        return;
    }
    // Without these the Collector refuses to start (unless its `AllowNoPipelines` gate is on).
    for kind in [Kind::Receiver, Kind::Exporter] {
        if config.components(kind).is_empty() {
            let position = config
                .section_positions
                .get(&kind)
                .copied()
                .unwrap_or(config.start);
            problems.push(Problem::error(
                rules::MISSING_SECTION,
                position,
                format!("no {} is defined in {}", kind.noun(), kind.section()),
            ));
        }
    }
}

fn check_ambiguous_connectors(config: &Config<'_>, problems: &mut Vec<Problem>) {
    for connector in config.components(Kind::Connector) {
        for kind in [Kind::Receiver, Kind::Exporter] {
            if config.is_defined(kind, &connector.id) {
                problems.push(
                    Problem::error(
                        rules::AMBIGUOUS_CONNECTOR_ID,
                        connector.position,
                        format!(
                            "connectors::{id}: ambiguous id: both {} {id:?} and connector {id:?} are defined",
                            kind.noun(),
                            id = connector.id
                        ),
                    )
                    .with_hint(format!(
                        "rename the connector, e.g. to \"{}/connector\"",
                        connector.id
                    )),
                );
            }
        }
    }
}

fn check_types(config: &Config<'_>, catalog: &Catalog, problems: &mut Vec<Problem>) {
    for kind in Kind::ALL {
        for component in config.components(kind) {
            let path = format!("{}::{}", kind.section(), component.id);
            let problem = match catalog.type_status(kind, &component.component_type) {
                TypeStatus::Known => continue,
                TypeStatus::Unknown => Problem::new(
                    Severity::Warning,
                    rules::UNKNOWN_COMPONENT_TYPE,
                    component.position,
                    format!("{path}: unknown {} type {:?}", kind.noun(), component.component_type),
                )
                .with_hint("check the spelling; agents whose build lacks this type will refuse the configuration"),
                TypeStatus::RuledOut => Problem::error(
                    rules::UNKNOWN_COMPONENT_TYPE,
                    component.position,
                    format!(
                        "{path}: the agents have no {} of type {:?}",
                        kind.noun(),
                        component.component_type
                    ),
                )
                .with_hint("use a component the agents report in their available components"),
            };
            problems.push(problem);
        }
    }
}

fn check_references(config: &Config<'_>, problems: &mut Vec<Problem>) {
    for reference in &config.service_extensions {
        if !config.is_defined(Kind::Extension, &reference.id) {
            problems.push(undefined("service::extensions", "extension", reference));
        }
    }
    for pipeline in &config.pipelines {
        let path = format!("service::pipelines::{}", pipeline.id);
        let lists = [
            (&pipeline.receivers, Kind::Receiver),
            (&pipeline.processors, Kind::Processor),
            (&pipeline.exporters, Kind::Exporter),
        ];
        for (references, kind) in lists {
            // Connectors stand as receivers and exporters, never as processors.
            let connector_fits = kind != Kind::Processor;
            for reference in references {
                let defined = config.is_defined(kind, &reference.id)
                    || (connector_fits && config.is_defined(Kind::Connector, &reference.id));
                if !defined {
                    problems.push(undefined(&path, kind.noun(), reference));
                }
            }
        }
    }
}

fn undefined(path: &str, noun: &str, reference: &Reference) -> Problem {
    Problem::error(
        rules::UNDEFINED_COMPONENT,
        reference.position,
        format!(
            "{path}: references {noun} {:?}, which is not defined",
            reference.id
        ),
    )
}
