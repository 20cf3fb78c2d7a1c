//! Connectors join pipelines: each must be an exporter in one pipeline and a receiver in
//! another whose signals it can bridge, and the pipelines they join must not loop.

use crate::catalog::{Catalog, Kind, Signal};
use crate::config::{Component, Config, Pipeline, Reference};
use crate::problem::Problem;
use crate::rules;

pub fn check(config: &Config<'_>, catalog: &Catalog, problems: &mut Vec<Problem>) {
    let links = links(config, catalog);
    check_matched(config, catalog, &links, problems);
    check_cycles(config, &links, problems);
}

/// Data flowing from pipeline `from` (where `connector` is an exporter, written at
/// `exporter_at`) into pipeline `to` (where it is a receiver), for a supported signal pair.
struct Link<'c> {
    from: usize,
    to: usize,
    connector: &'c str,
    exporter_at: &'c Reference,
}

/// The connector a pipeline reference stands for, unless the id also names a receiver or
/// exporter (that ambiguity is its own error).
fn connector<'a>(config: &'a Config<'_>, reference: &Reference) -> Option<&'a Component<'a>> {
    let ambiguous = config.is_defined(Kind::Receiver, &reference.id)
        || config.is_defined(Kind::Exporter, &reference.id);
    if ambiguous {
        return None;
    }
    config
        .components(Kind::Connector)
        .iter()
        .find(|c| c.id == reference.id)
}

/// Unknown connector types claim nothing, so they are taken to support every pair.
fn supports(catalog: &Catalog, connector: &Component<'_>, from: Signal, to: Signal) -> bool {
    catalog.connector_supports(&connector.component_type, from, to) != Some(false)
}

fn links<'c>(config: &'c Config<'_>, catalog: &Catalog) -> Vec<Link<'c>> {
    let mut links = Vec::new();
    for (from, exporting) in config.pipelines.iter().enumerate() {
        for reference in &exporting.exporters {
            let Some(component) = connector(config, reference) else {
                continue;
            };
            for (to, receiving) in config.pipelines.iter().enumerate() {
                let receives = receiving.receivers.iter().any(|r| r.id == reference.id);
                if receives && supports(catalog, component, exporting.signal, receiving.signal) {
                    links.push(Link {
                        from,
                        to,
                        connector: &reference.id,
                        exporter_at: reference,
                    });
                }
            }
        }
    }
    links
}

fn check_matched(
    config: &Config<'_>,
    catalog: &Catalog,
    links: &[Link<'_>],
    problems: &mut Vec<Problem>,
) {
    for (index, pipeline) in config.pipelines.iter().enumerate() {
        for reference in &pipeline.exporters {
            let Some(component) = connector(config, reference) else {
                continue;
            };
            if !links
                .iter()
                .any(|l| l.from == index && l.connector == reference.id)
            {
                problems.push(unmatched(
                    catalog, component, pipeline, reference, "exporter", "receiver",
                ));
            }
        }
        for reference in &pipeline.receivers {
            let Some(component) = connector(config, reference) else {
                continue;
            };
            if !links
                .iter()
                .any(|l| l.to == index && l.connector == reference.id)
            {
                problems.push(unmatched(
                    catalog, component, pipeline, reference, "receiver", "exporter",
                ));
            }
        }
    }
}

fn unmatched(
    catalog: &Catalog,
    component: &Component<'_>,
    pipeline: &Pipeline,
    reference: &Reference,
    side: &str,
    other_side: &str,
) -> Problem {
    let pairs: Vec<String> = Signal::ALL
        .iter()
        .flat_map(|from| Signal::ALL.iter().map(move |to| (*from, *to)))
        .filter(|(from, to)| {
            catalog.connector_supports(&component.component_type, *from, *to) == Some(true)
        })
        .map(|(from, to)| format!("{} -> {}", from.as_str(), to.as_str()))
        .collect();
    let problem = Problem::error(
        rules::CONNECTOR_UNMATCHED,
        reference.position,
        format!(
            "service::pipelines::{}: connector {:?} is used as {side} in a {} pipeline but as \
             {other_side} in no pipeline whose signal it supports",
            pipeline.id,
            reference.id,
            pipeline.signal.as_str()
        ),
    );
    if pairs.is_empty() {
        problem
    } else {
        problem.with_hint(format!(
            "a {:?} connector supports {}",
            component.component_type,
            pairs.join(", ")
        ))
    }
}

/// Depth-first search over pipelines; every edge back into the current path closes a cycle,
/// reported at the connector reference that closes it.
fn check_cycles(config: &Config<'_>, links: &[Link<'_>], problems: &mut Vec<Problem>) {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    fn visit(
        node: usize,
        links: &[Link<'_>],
        marks: &mut [Mark],
        path: &mut Vec<usize>,
        cycles: &mut Vec<(Vec<usize>, usize)>,
    ) {
        marks[node] = Mark::OnPath;
        path.push(node);
        for (index, link) in links.iter().enumerate().filter(|(_, l)| l.from == node) {
            match marks[link.to] {
                Mark::New => visit(link.to, links, marks, path, cycles),
                Mark::OnPath => {
                    let start = path.iter().position(|p| *p == link.to).unwrap_or(0);
                    cycles.push((path[start..].to_vec(), index));
                }
                Mark::Done => {}
            }
        }
        path.pop();
        marks[node] = Mark::Done;
    }

    let mut marks = vec![Mark::New; config.pipelines.len()];
    let mut cycles = Vec::new();
    for start in 0..config.pipelines.len() {
        if marks[start] == Mark::New {
            visit(start, links, &mut marks, &mut Vec::new(), &mut cycles);
        }
    }
    for (path, closing) in cycles {
        let closing = &links[closing];
        let mut steps: Vec<String> = Vec::new();
        for (position, pipeline) in path.iter().enumerate() {
            steps.push(config.pipelines[*pipeline].id.clone());
            let next = path.get(position + 1).copied().unwrap_or(path[0]);
            let via = links
                .iter()
                .find(|l| l.from == *pipeline && l.to == next)
                .map_or("?", |l| l.connector);
            steps.push(format!("[{via}]"));
        }
        steps.push(config.pipelines[path[0]].id.clone());
        problems.push(
            Problem::error(
                rules::PIPELINE_CYCLE,
                closing.exporter_at.position,
                format!(
                    "service::pipelines: cycle through connectors: {}",
                    steps.join(" -> ")
                ),
            )
            .with_hint("data must not flow back into a pipeline it came from"),
        );
    }
}
