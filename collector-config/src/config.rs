//! Reads the YAML tree into the Collector's model: components per section, `service`
//! extensions and pipelines. Shape problems found on the way (unknown keys, malformed ids,
//! wrong value types) are reported here; what the model means is checked in `validate`.

use std::collections::BTreeMap;

use crate::catalog::{Kind, Signal};
use crate::ids::{parse_component_id, parse_pipeline_id};
use crate::problem::Problem;
use crate::rules;
use crate::yaml::{Node, Position, Value};

/// A component defined in a section.
#[derive(Debug)]
pub struct Component<'a> {
    pub id: String,
    pub component_type: String,
    /// Where its key is.
    pub position: Position,
    /// Its settings, as written.
    pub settings: &'a Node,
}

/// A component id named in `service`.
#[derive(Debug, Clone)]
pub struct Reference {
    pub id: String,
    pub position: Position,
}

#[derive(Debug)]
pub struct Pipeline {
    pub id: String,
    pub signal: Signal,
    pub position: Position,
    pub receivers: Vec<Reference>,
    pub processors: Vec<Reference>,
    pub exporters: Vec<Reference>,
}

#[derive(Debug)]
pub struct Config<'a> {
    /// Where the document starts: where problems with no better place point.
    pub start: Position,
    /// Components per kind in document order; kinds whose section is absent have none.
    pub components: BTreeMap<Kind, Vec<Component<'a>>>,
    /// Where each present section's key is.
    pub section_positions: BTreeMap<Kind, Position>,
    pub service_extensions: Vec<Reference>,
    pub pipelines: Vec<Pipeline>,
    /// Where `service.pipelines` (or else `service`) is, if written.
    pub pipelines_position: Option<Position>,
}

impl Config<'_> {
    pub fn components(&self, kind: Kind) -> &[Component<'_>] {
        self.components.get(&kind).map_or(&[], Vec::as_slice)
    }

    pub fn is_defined(&self, kind: Kind, id: &str) -> bool {
        self.components(kind).iter().any(|c| c.id == id)
    }
}

const SERVICE_KEYS: [&str; 3] = ["extensions", "pipelines", "telemetry"];
const PIPELINE_KEYS: [&str; 3] = ["receivers", "processors", "exporters"];

/// Reads `root`; `None` when it is not a mapping at all (then nothing else can be checked).
pub fn read<'a>(root: &'a Node, problems: &mut Vec<Problem>) -> Option<Config<'a>> {
    let Some(entries) = root.as_mapping() else {
        problems.push(Problem::error(
            rules::INVALID_STRUCTURE,
            root.position,
            "the configuration must be a mapping of sections",
        ));
        return None;
    };
    let mut config = Config {
        start: root.position,
        components: BTreeMap::new(),
        section_positions: BTreeMap::new(),
        service_extensions: Vec::new(),
        pipelines: Vec::new(),
        pipelines_position: None,
    };
    for (key, value) in entries {
        let name = key.as_text().unwrap_or_default();
        if let Some(kind) = Kind::ALL.into_iter().find(|k| k.section() == name) {
            config.section_positions.insert(kind, key.position);
            let components = read_section(kind, value, problems);
            config.components.insert(kind, components);
        } else if name == "service" {
            read_service(key.position, value, &mut config, problems);
        } else {
            problems.push(
                Problem::error(
                    rules::UNKNOWN_SECTION,
                    key.position,
                    format!("unknown top-level section {name:?}"),
                )
                .with_hint(
                    "sections are receivers, processors, exporters, connectors, extensions and service",
                ),
            );
        }
    }
    Some(config)
}

fn read_section<'a>(
    kind: Kind,
    section: &'a Node,
    problems: &mut Vec<Problem>,
) -> Vec<Component<'a>> {
    if section.is_null() {
        return Vec::new();
    }
    let Some(entries) = section.as_mapping() else {
        problems.push(not_a_mapping(kind.section(), section.position));
        return Vec::new();
    };
    let mut components = Vec::new();
    for (key, settings) in entries {
        let text = key.as_text().unwrap_or_default();
        match parse_component_id(text) {
            Ok(id) => components.push(Component {
                id: id.id,
                component_type: id.component_type,
                position: key.position,
                settings,
            }),
            Err(message) => problems.push(Problem::error(
                rules::INVALID_ID,
                key.position,
                format!("{}: {message}", kind.section()),
            )),
        }
    }
    components
}

fn read_service(
    service_position: Position,
    service: &Node,
    config: &mut Config<'_>,
    problems: &mut Vec<Problem>,
) {
    config.pipelines_position = Some(service_position);
    if service.is_null() {
        return;
    }
    let Some(entries) = service.as_mapping() else {
        problems.push(not_a_mapping("service", service.position));
        return;
    };
    for (key, value) in entries {
        match key.as_text().unwrap_or_default() {
            "extensions" => {
                config.service_extensions = read_references("service::extensions", value, problems);
            }
            "pipelines" => {
                config.pipelines_position = Some(key.position);
                config.pipelines = read_pipelines(value, problems);
            }
            // Telemetry settings are the Collector's own business.
            "telemetry" => {}
            other => problems.push(unknown_key("service", other, key.position, &SERVICE_KEYS)),
        }
    }
}

fn read_pipelines(pipelines: &Node, problems: &mut Vec<Problem>) -> Vec<Pipeline> {
    if pipelines.is_null() {
        return Vec::new();
    }
    let Some(entries) = pipelines.as_mapping() else {
        problems.push(not_a_mapping("service::pipelines", pipelines.position));
        return Vec::new();
    };
    let mut result = Vec::new();
    for (key, body) in entries {
        let id = match parse_pipeline_id(key.as_text().unwrap_or_default()) {
            Ok(id) => id,
            Err(message) => {
                problems.push(Problem::error(
                    rules::INVALID_PIPELINE_ID,
                    key.position,
                    format!("service::pipelines: {message}"),
                ));
                continue;
            }
        };
        let mut pipeline = Pipeline {
            id: id.id,
            signal: id.signal,
            position: key.position,
            receivers: Vec::new(),
            processors: Vec::new(),
            exporters: Vec::new(),
        };
        let path = format!("service::pipelines::{}", pipeline.id);
        match body.as_mapping() {
            Some(entries) => {
                for (list_key, list) in entries {
                    let list_path = |name: &str| format!("{path}::{name}");
                    match list_key.as_text().unwrap_or_default() {
                        "receivers" => {
                            pipeline.receivers =
                                read_references(&list_path("receivers"), list, problems)
                        }
                        "processors" => {
                            pipeline.processors =
                                read_references(&list_path("processors"), list, problems)
                        }
                        "exporters" => {
                            pipeline.exporters =
                                read_references(&list_path("exporters"), list, problems)
                        }
                        other => problems.push(unknown_key(
                            &path,
                            other,
                            list_key.position,
                            &PIPELINE_KEYS,
                        )),
                    }
                }
            }
            None if body.is_null() => {}
            None => problems.push(not_a_mapping(&path, body.position)),
        }
        result.push(pipeline);
    }
    result
}

/// A list of component ids; malformed items are reported and left out.
fn read_references(path: &str, list: &Node, problems: &mut Vec<Problem>) -> Vec<Reference> {
    let items = match &list.value {
        Value::Sequence(items) => items.as_slice(),
        Value::Scalar(scalar) if scalar.is_null() => &[],
        _ => {
            problems.push(Problem::error(
                rules::INVALID_STRUCTURE,
                list.position,
                format!("{path}: must be a list of component ids"),
            ));
            return Vec::new();
        }
    };
    let mut references = Vec::new();
    for item in items {
        let Some(text) = item.as_scalar().map(|s| s.text.as_str()) else {
            problems.push(Problem::error(
                rules::INVALID_STRUCTURE,
                item.position,
                format!("{path}: each item must be a component id"),
            ));
            continue;
        };
        match parse_component_id(text) {
            Ok(id) => references.push(Reference {
                id: id.id,
                position: item.position,
            }),
            Err(message) => problems.push(Problem::error(
                rules::INVALID_ID,
                item.position,
                format!("{path}: {message}"),
            )),
        }
    }
    references
}

fn not_a_mapping(path: &str, position: Position) -> Problem {
    Problem::error(
        rules::INVALID_STRUCTURE,
        position,
        format!("{path}: must be a mapping"),
    )
}

fn unknown_key(path: &str, key: &str, position: Position, known: &[&str]) -> Problem {
    Problem::error(
        rules::UNKNOWN_KEY,
        position,
        format!("{path}: unknown key {key:?}"),
    )
    .with_hint(format!("known keys are {}", known.join(", ")))
}
