//! The pipelines as a structure a UI can draw: what each pipeline runs in order, which
//! pipelines each connector joins, and where each component is used (fan-in and fan-out show
//! as components and connectors with several pipelines).

use serde::{Deserialize, Serialize};

use crate::catalog::{Kind, Signal};
use crate::config::{Config, Reference};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Graph {
    /// In document order.
    pub pipelines: Vec<PipelineNode>,
    pub connectors: Vec<ConnectorNode>,
    /// Every defined component, by kind then document order.
    pub components: Vec<ComponentNode>,
    /// The extensions `service.extensions` starts, in its order.
    pub extensions: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipelineNode {
    pub id: String,
    pub signal: Signal,
    pub receivers: Vec<String>,
    /// In the order data passes through them.
    pub processors: Vec<String>,
    pub exporters: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectorNode {
    pub id: String,
    /// Pipelines that export into the connector.
    pub from_pipelines: Vec<String>,
    /// Pipelines that receive from it.
    pub to_pipelines: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentNode {
    pub kind: Kind,
    pub id: String,
    /// Pipelines that list it (none for extensions).
    pub pipelines: Vec<String>,
}

pub fn build(config: &Config<'_>) -> Graph {
    let ids =
        |references: &[Reference]| references.iter().map(|r| r.id.clone()).collect::<Vec<_>>();
    let pipelines_listing = |id: &str, lists: fn(&crate::config::Pipeline) -> [&[Reference]; 2]| {
        config
            .pipelines
            .iter()
            .filter(|p| lists(p).iter().any(|list| list.iter().any(|r| r.id == id)))
            .map(|p| p.id.clone())
            .collect::<Vec<_>>()
    };
    let pipelines = config
        .pipelines
        .iter()
        .map(|p| PipelineNode {
            id: p.id.clone(),
            signal: p.signal,
            receivers: ids(&p.receivers),
            processors: ids(&p.processors),
            exporters: ids(&p.exporters),
        })
        .collect();
    let connectors = config
        .components(Kind::Connector)
        .iter()
        .map(|c| ConnectorNode {
            id: c.id.clone(),
            from_pipelines: pipelines_listing(&c.id, |p| [&p.exporters, &[]]),
            to_pipelines: pipelines_listing(&c.id, |p| [&p.receivers, &[]]),
        })
        .collect();
    let components = Kind::ALL
        .into_iter()
        .flat_map(|kind| config.components(kind).iter().map(move |c| (kind, c)))
        .map(|(kind, c)| ComponentNode {
            kind,
            id: c.id.clone(),
            pipelines: match kind {
                Kind::Receiver => pipelines_listing(&c.id, |p| [&p.receivers, &[]]),
                Kind::Processor => pipelines_listing(&c.id, |p| [&p.processors, &[]]),
                Kind::Exporter => pipelines_listing(&c.id, |p| [&p.exporters, &[]]),
                Kind::Connector => pipelines_listing(&c.id, |p| [&p.exporters, &p.receivers]),
                Kind::Extension => Vec::new(),
            },
        })
        .collect();
    Graph {
        pipelines,
        connectors,
        components,
        extensions: ids(&config.service_extensions),
    }
}
