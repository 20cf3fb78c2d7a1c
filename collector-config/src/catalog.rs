//! Which component types exist, and which signals each connector bridges.
//!
//! The facts are data (`data/components.json`, embedded), because they change with every
//! Collector release; an agent's OpAMP `AvailableComponents` overrides them for the kinds it
//! reports.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

/// The five sections of a Collector configuration that define components.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Receiver,
    Processor,
    Exporter,
    Connector,
    Extension,
}

impl Kind {
    /// In the order the Collector's documentation lists the sections.
    pub const ALL: [Kind; 5] = [
        Kind::Receiver,
        Kind::Processor,
        Kind::Exporter,
        Kind::Connector,
        Kind::Extension,
    ];

    /// The top-level key of this kind's section.
    pub fn section(self) -> &'static str {
        match self {
            Kind::Receiver => "receivers",
            Kind::Processor => "processors",
            Kind::Exporter => "exporters",
            Kind::Connector => "connectors",
            Kind::Extension => "extensions",
        }
    }

    pub fn noun(self) -> &'static str {
        match self {
            Kind::Receiver => "receiver",
            Kind::Processor => "processor",
            Kind::Exporter => "exporter",
            Kind::Connector => "connector",
            Kind::Extension => "extension",
        }
    }
}

/// The data type a pipeline carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Signal {
    Traces,
    Metrics,
    Logs,
    Profiles,
}

impl Signal {
    pub const ALL: [Signal; 4] = [
        Signal::Traces,
        Signal::Metrics,
        Signal::Logs,
        Signal::Profiles,
    ];

    pub fn parse(text: &str) -> Option<Signal> {
        match text {
            "traces" => Some(Signal::Traces),
            "metrics" => Some(Signal::Metrics),
            "logs" => Some(Signal::Logs),
            "profiles" => Some(Signal::Profiles),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Traces => "traces",
            Signal::Metrics => "metrics",
            Signal::Logs => "logs",
            Signal::Profiles => "profiles",
        }
    }
}

/// The component types agents said they have (OpAMP `AvailableComponents`), per kind. A kind
/// present here is authoritative: a type outside it cannot run on those agents.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportedComponents {
    pub types: BTreeMap<Kind, BTreeSet<String>>,
}

/// What the catalog knows of one component type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypeStatus {
    Known,
    /// Not in the catalog, but nothing says the agents lack it.
    Unknown,
    /// The agents reported this kind's types and this one is not among them.
    RuledOut,
}

/// Known component types and connector signal pairs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalog {
    known: BTreeMap<Kind, BTreeSet<String>>,
    reported: BTreeMap<Kind, BTreeSet<String>>,
    connector_pairs: BTreeMap<String, BTreeSet<(Signal, Signal)>>,
    /// Deprecated type → its current name, per kind.
    aliases: BTreeMap<Kind, BTreeMap<String, String>>,
}

#[derive(Deserialize)]
struct CatalogData {
    receivers: BTreeSet<String>,
    processors: BTreeSet<String>,
    exporters: BTreeSet<String>,
    extensions: BTreeSet<String>,
    connectors: BTreeMap<String, BTreeSet<(Signal, Signal)>>,
    aliases: BTreeMap<Kind, BTreeMap<String, String>>,
}

const BUILTIN_DATA: &str = include_str!("../data/components.json");

impl Catalog {
    /// The embedded table of common core and contrib components, parsed once.
    pub fn builtin() -> Catalog {
        static BUILTIN: OnceLock<Catalog> = OnceLock::new();
        BUILTIN
            .get_or_init(|| {
                let data: CatalogData = serde_json::from_str(BUILTIN_DATA)
                    .expect("data/components.json is checked by the catalog tests");
                Catalog::from_data(data)
            })
            .clone()
    }

    fn from_data(data: CatalogData) -> Catalog {
        let known = BTreeMap::from([
            (Kind::Receiver, data.receivers),
            (Kind::Processor, data.processors),
            (Kind::Exporter, data.exporters),
            (Kind::Connector, data.connectors.keys().cloned().collect()),
            (Kind::Extension, data.extensions),
        ]);
        Catalog {
            known,
            reported: BTreeMap::new(),
            connector_pairs: data.connectors,
            aliases: data.aliases,
        }
    }

    /// This catalog narrowed to what agents reported: reported types become known, and for
    /// each reported kind every other type is ruled out.
    pub fn with_reported(&self, reported: &ReportedComponents) -> Catalog {
        let mut catalog = self.clone();
        for (kind, types) in &reported.types {
            catalog
                .known
                .entry(*kind)
                .or_default()
                .extend(types.iter().cloned());
            catalog.reported.insert(*kind, types.clone());
        }
        catalog
    }

    pub fn type_status(&self, kind: Kind, component_type: &str) -> TypeStatus {
        let names = self.names_of(kind, component_type);
        if let Some(reported) = self.reported.get(&kind) {
            return if names.iter().any(|n| reported.contains(*n)) {
                TypeStatus::Known
            } else {
                TypeStatus::RuledOut
            };
        }
        let known = self.known.get(&kind);
        if names.iter().any(|n| known.is_some_and(|k| k.contains(*n))) {
            TypeStatus::Known
        } else {
            TypeStatus::Unknown
        }
    }

    /// Whether a connector of this type can take `from` data in and give `to` data out;
    /// `None` when the catalog has no pairs for the type (then nothing is claimed).
    pub fn connector_supports(
        &self,
        connector_type: &str,
        from: Signal,
        to: Signal,
    ) -> Option<bool> {
        self.connector_pairs
            .get(connector_type)
            .map(|pairs| pairs.contains(&(from, to)))
    }

    /// The type itself and every name it is also known by (its current name if it is a
    /// deprecated alias, its aliases if it is current).
    fn names_of<'a>(&'a self, kind: Kind, component_type: &'a str) -> Vec<&'a str> {
        let mut names = vec![component_type];
        if let Some(aliases) = self.aliases.get(&kind) {
            for (alias, current) in aliases {
                if alias == component_type {
                    names.push(current);
                } else if current == component_type {
                    names.push(alias);
                }
            }
        }
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_data_parses_and_knows_core_components() {
        let catalog = Catalog::builtin();
        assert_eq!(
            catalog.type_status(Kind::Receiver, "otlp"),
            TypeStatus::Known
        );
        assert_eq!(
            catalog.type_status(Kind::Exporter, "otlp_grpc"),
            TypeStatus::Known
        );
        assert_eq!(
            catalog.type_status(Kind::Exporter, "otlp"),
            TypeStatus::Known
        );
        assert_eq!(
            catalog.type_status(Kind::Exporter, "nosuch"),
            TypeStatus::Unknown
        );
    }

    #[test]
    fn connector_pairs_come_from_data() {
        let catalog = Catalog::builtin();
        let supports = |t, from, to| catalog.connector_supports(t, from, to);
        assert_eq!(supports("forward", Signal::Logs, Signal::Logs), Some(true));
        assert_eq!(
            supports("forward", Signal::Logs, Signal::Metrics),
            Some(false)
        );
        assert_eq!(
            supports("spanmetrics", Signal::Traces, Signal::Metrics),
            Some(true)
        );
        assert_eq!(
            supports("spanmetrics", Signal::Metrics, Signal::Metrics),
            Some(false)
        );
        assert_eq!(
            supports("servicegraph", Signal::Traces, Signal::Metrics),
            Some(true)
        );
        assert_eq!(supports("count", Signal::Logs, Signal::Metrics), Some(true));
        assert_eq!(
            supports("routing", Signal::Traces, Signal::Traces),
            Some(true)
        );
        assert_eq!(
            supports("routing", Signal::Traces, Signal::Logs),
            Some(false)
        );
        assert_eq!(supports("mystery", Signal::Traces, Signal::Logs), None);
    }

    #[test]
    fn reported_kinds_rule_out_other_types_and_add_new_ones() {
        let reported = ReportedComponents {
            types: BTreeMap::from([(
                Kind::Exporter,
                BTreeSet::from(["otlp_grpc".to_string(), "vendorx".to_string()]),
            )]),
        };
        let catalog = Catalog::builtin().with_reported(&reported);
        assert_eq!(
            catalog.type_status(Kind::Exporter, "vendorx"),
            TypeStatus::Known
        );
        assert_eq!(
            catalog.type_status(Kind::Exporter, "debug"),
            TypeStatus::RuledOut
        );
        assert_eq!(
            catalog.type_status(Kind::Exporter, "mystery"),
            TypeStatus::RuledOut
        );
        // The deprecated alias runs wherever its current name does.
        assert_eq!(
            catalog.type_status(Kind::Exporter, "otlp"),
            TypeStatus::Known
        );
        // Kinds the agents did not report stay as the table says.
        assert_eq!(
            catalog.type_status(Kind::Receiver, "mystery"),
            TypeStatus::Unknown
        );
        assert_eq!(
            catalog.type_status(Kind::Receiver, "otlp"),
            TypeStatus::Known
        );
    }
}
