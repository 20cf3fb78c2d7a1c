//! The pipeline graph's JSON shape and the SVG swimlane drawn from it.

use std::fs;
use std::path::Path;

use ampora_collector_config::{analyze, builtin_lint_rules, render_swimlane, Catalog, Graph};
use serde_json::json;

fn graph_of(corpus_file: &str) -> Graph {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus/valid")
        .join(corpus_file);
    let yaml = fs::read_to_string(path).unwrap();
    analyze(&yaml, &Catalog::builtin(), &builtin_lint_rules())
        .graph
        .expect("a readable configuration has a graph")
}

#[test]
fn graph_json_shows_fan_out_and_connectors() {
    let graph = graph_of("spanmetrics-servicegraph.yaml");
    assert_eq!(
        serde_json::to_value(&graph).unwrap(),
        json!({
            "pipelines": [
                {"id": "traces", "signal": "traces", "receivers": ["otlp"],
                 "processors": ["memory_limiter", "batch"],
                 "exporters": ["otlp_grpc", "spanmetrics", "servicegraph"]},
                {"id": "metrics", "signal": "metrics", "receivers": ["otlp", "spanmetrics", "servicegraph"],
                 "processors": ["memory_limiter", "batch"], "exporters": ["prometheusremotewrite"]},
            ],
            "connectors": [
                {"id": "spanmetrics", "from_pipelines": ["traces"], "to_pipelines": ["metrics"]},
                {"id": "servicegraph", "from_pipelines": ["traces"], "to_pipelines": ["metrics"]},
            ],
            "components": [
                {"kind": "receiver", "id": "otlp", "pipelines": ["traces", "metrics"]},
                {"kind": "processor", "id": "memory_limiter", "pipelines": ["traces", "metrics"]},
                {"kind": "processor", "id": "batch", "pipelines": ["traces", "metrics"]},
                {"kind": "exporter", "id": "otlp_grpc", "pipelines": ["traces"]},
                {"kind": "exporter", "id": "prometheusremotewrite", "pipelines": ["metrics"]},
                {"kind": "connector", "id": "spanmetrics", "pipelines": ["traces", "metrics"]},
                {"kind": "connector", "id": "servicegraph", "pipelines": ["traces", "metrics"]},
            ],
            "extensions": [],
        })
    );
}

#[test]
fn graph_lists_enabled_extensions() {
    let graph = graph_of("extensions.yaml");
    assert_eq!(
        graph.extensions,
        [
            "health_check",
            "pprof",
            "zpages",
            "file_storage/queue",
            "opamp"
        ]
    );
    let extension_components = graph
        .components
        .iter()
        .filter(|c| c.pipelines.is_empty())
        .count();
    assert_eq!(extension_components, 5);
}

#[test]
fn a_broken_but_readable_configuration_still_has_a_graph() {
    let analysis = analyze(
        "receivers:\n  otlp:\nservice:\n  pipelines:\n    traces:\n      receivers: [otlp]\n",
        &Catalog::builtin(),
        &[],
    );
    assert!(analysis.blocks_publish());
    assert_eq!(analysis.graph.unwrap().pipelines[0].receivers, ["otlp"]);
    assert!(analyze("a: [", &Catalog::builtin(), &[]).graph.is_none());
}

/// Every text in the document, concatenated per element.
fn texts(document: &roxmltree::Document<'_>) -> Vec<String> {
    document
        .descendants()
        .filter(|n| n.has_tag_name("text"))
        .map(|n| n.text().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn swimlane_is_xml_with_a_lane_per_pipeline_and_every_component() {
    let graph = graph_of("ten-pipelines.yaml");
    assert!(graph.pipelines.len() >= 10);
    let svg = render_swimlane(&graph);
    let document = roxmltree::Document::parse(&svg).expect("the swimlane is well-formed XML");
    let root = document.root_element();
    assert!(root.has_tag_name(("http://www.w3.org/2000/svg", "svg")));
    let texts = texts(&document);
    for pipeline in &graph.pipelines {
        assert!(texts.contains(&pipeline.id), "lane {}", pipeline.id);
        for id in pipeline
            .receivers
            .iter()
            .chain(&pipeline.processors)
            .chain(&pipeline.exporters)
        {
            assert!(texts.contains(id), "{id} in {}", pipeline.id);
        }
    }
    let lanes = document
        .descendants()
        .filter(|n| n.attribute("class") == Some("lane"))
        .count();
    assert_eq!(lanes, graph.pipelines.len());
    // One link per (exporting lane, receiving lane) of each connector.
    let links = document
        .descendants()
        .filter(|n| n.attribute("class") == Some("connector"))
        .map(|g| g.children().filter(|c| c.has_tag_name("path")).count())
        .collect::<Vec<_>>();
    let expected: Vec<usize> = graph
        .connectors
        .iter()
        .map(|c| c.from_pipelines.len() * c.to_pipelines.len())
        .collect();
    assert_eq!(links, expected);
    assert_eq!(
        links,
        vec![2, 1],
        "forward/fanout feeds two lanes, spanmetrics one"
    );
    // The canvas grows with its content: ten lanes are taller than two.
    let height = |svg: &str| {
        let document = roxmltree::Document::parse(svg).unwrap();
        document
            .root_element()
            .attribute("height")
            .unwrap()
            .parse::<f64>()
            .unwrap()
    };
    assert!(height(&svg) > 2.0 * height(&render_swimlane(&graph_of("forward-connector.yaml"))));
    assert!(
        !svg.contains("<script") && !svg.contains("href"),
        "self-contained"
    );
}

#[test]
fn swimlane_escapes_text() {
    let yaml = "\
receivers:
  otlp/<a&b>:
exporters:
  otlphttp/\"q\":
    endpoint: https://x.example.com
service:
  pipelines:
    logs/<x>:
      receivers: [otlp/<a&b>]
      exporters: [otlphttp/\"q\"]
";
    let graph = analyze(yaml, &Catalog::builtin(), &[]).graph.unwrap();
    let svg = render_swimlane(&graph);
    let document = roxmltree::Document::parse(&svg).expect("escaped ids keep the XML well-formed");
    let texts = texts(&document);
    for id in ["logs/<x>", "otlp/<a&b>", "otlphttp/\"q\""] {
        assert!(texts.iter().any(|t| t == id), "{id}");
    }
}
