//! Draws a [`Graph`] as an SVG swimlane: one lane per pipeline, receivers → processors in
//! order → exporters, and connectors as dashed links from the lane that exports into them to
//! each lane that receives from them. Self-contained: generic font family, no scripts, no
//! external references; the canvas is sized from the labels it holds.

use std::fmt::Write;

use crate::catalog::Signal;
use crate::graph::{Graph, PipelineNode};

const FONT_SIZE: f64 = 12.0;
/// Width of one character of the monospace font at [`FONT_SIZE`], rounded up.
const CHAR_WIDTH: f64 = 7.5;
const BOX_HEIGHT: f64 = 26.0;
const BOX_PADDING: f64 = 10.0;
const ROW_GAP: f64 = 10.0;
const COLUMN_GAP: f64 = 36.0;
const LANE_PADDING: f64 = 14.0;
const MARGIN: f64 = 16.0;
/// Room right of the lanes for connector links to run through.
const LINK_GUTTER: f64 = 60.0;
/// Space between lanes, where connector links run across.
const LANE_GAP: f64 = 16.0;

/// Where one drawn box is; links attach to its left and right middles.
#[derive(Clone, Copy)]
struct Placed {
    x: f64,
    y: f64,
    width: f64,
}

impl Placed {
    fn left(self) -> (f64, f64) {
        (self.x, self.y + BOX_HEIGHT / 2.0)
    }
    fn right(self) -> (f64, f64) {
        (self.x + self.width, self.y + BOX_HEIGHT / 2.0)
    }
}

/// Column geometry shared by all lanes, so boxes of one stage line up.
struct Columns {
    label_width: f64,
    receiver_width: f64,
    processor_width: f64,
    processor_count: usize,
    exporter_width: f64,
}

impl Columns {
    fn measure(graph: &Graph) -> Columns {
        let widest = |pick: fn(&PipelineNode) -> &Vec<String>| {
            graph
                .pipelines
                .iter()
                .flat_map(|p| pick(p).iter())
                .map(|id| box_width(id))
                .fold(0.0, f64::max)
        };
        Columns {
            label_width: graph
                .pipelines
                .iter()
                .map(|p| text_width(&p.id).max(text_width(p.signal.as_str())) + BOX_PADDING)
                .fold(80.0, f64::max),
            receiver_width: widest(|p| &p.receivers),
            processor_width: widest(|p| &p.processors),
            processor_count: graph
                .pipelines
                .iter()
                .map(|p| p.processors.len())
                .max()
                .unwrap_or(0),
            exporter_width: widest(|p| &p.exporters),
        }
    }

    fn receivers_x(&self) -> f64 {
        MARGIN + self.label_width + COLUMN_GAP
    }

    fn processor_x(&self, index: usize) -> f64 {
        self.receivers_x()
            + self.receiver_width
            + COLUMN_GAP
            + index as f64 * (self.processor_width + COLUMN_GAP)
    }

    fn exporters_x(&self) -> f64 {
        self.processor_x(self.processor_count)
    }

    fn width(&self) -> f64 {
        self.exporters_x() + self.exporter_width + LINK_GUTTER + MARGIN
    }
}

fn text_width(text: &str) -> f64 {
    text.chars().count() as f64 * CHAR_WIDTH
}

fn box_width(text: &str) -> f64 {
    text_width(text) + 2.0 * BOX_PADDING
}

fn lane_height(pipeline: &PipelineNode) -> f64 {
    let rows = pipeline
        .receivers
        .len()
        .max(pipeline.exporters.len())
        .max(1) as f64;
    rows * BOX_HEIGHT + (rows - 1.0) * ROW_GAP + 2.0 * LANE_PADDING
}

fn signal_color(signal: Signal) -> &'static str {
    match signal {
        Signal::Traces => "#e8f0fe",
        Signal::Metrics => "#e6f4ea",
        Signal::Logs => "#fef7e0",
        Signal::Profiles => "#f3e8fd",
    }
}

/// The placed boxes of one lane, for drawing connector links afterwards.
struct Lane {
    top: f64,
    receivers: Vec<(String, Placed)>,
    exporters: Vec<(String, Placed)>,
}

/// The SVG document for `graph`.
pub fn render_swimlane(graph: &Graph) -> String {
    let columns = Columns::measure(graph);
    let connector_ids: Vec<&str> = graph.connectors.iter().map(|c| c.id.as_str()).collect();
    let mut body = String::new();
    let mut lanes = Vec::new();
    let mut top = MARGIN;
    for pipeline in &graph.pipelines {
        lanes.push(draw_lane(
            &mut body,
            pipeline,
            &columns,
            &connector_ids,
            top,
        ));
        top += lane_height(pipeline) + LANE_GAP;
    }
    draw_connector_links(&mut body, graph, &lanes, &columns);
    let width = columns.width();
    let height = top - LANE_GAP + MARGIN;
    let mut svg = String::new();
    let _ = write!(
        svg,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\" \
         viewBox=\"0 0 {width:.0} {height:.0}\" font-family=\"monospace\" font-size=\"{FONT_SIZE}\">\
         <defs><marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" markerWidth=\"6\" \
         markerHeight=\"6\" orient=\"auto\"><path d=\"M0,0L10,5L0,10z\" fill=\"#5f6368\"/></marker></defs>"
    );
    svg.push_str(&body);
    svg.push_str("</svg>");
    svg
}

fn draw_lane(
    out: &mut String,
    pipeline: &PipelineNode,
    columns: &Columns,
    connectors: &[&str],
    top: f64,
) -> Lane {
    let height = lane_height(pipeline);
    let lane_x = MARGIN;
    let lane_width = columns.exporters_x() + columns.exporter_width + COLUMN_GAP / 2.0 - lane_x;
    let _ = write!(
        out,
        "<g class=\"lane\"><rect x=\"{lane_x:.1}\" y=\"{top:.1}\" width=\"{lane_width:.1}\" height=\"{height:.1}\" \
         rx=\"6\" fill=\"{}\" stroke=\"#dadce0\"/>\
         <text x=\"{:.1}\" y=\"{:.1}\" font-weight=\"bold\">{}</text>\
         <text x=\"{:.1}\" y=\"{:.1}\" fill=\"#5f6368\">{}</text>",
        signal_color(pipeline.signal),
        lane_x + BOX_PADDING,
        top + height / 2.0 - 2.0,
        escape(&pipeline.id),
        lane_x + BOX_PADDING,
        top + height / 2.0 + FONT_SIZE,
        pipeline.signal.as_str(),
    );
    let middle_y = top + height / 2.0 - BOX_HEIGHT / 2.0;
    let stacked = |index: usize, count: usize| {
        let stack_height = count as f64 * BOX_HEIGHT + (count.max(1) - 1) as f64 * ROW_GAP;
        top + (height - stack_height) / 2.0 + index as f64 * (BOX_HEIGHT + ROW_GAP)
    };
    let place_column = |out: &mut String, ids: &[String], x: f64| -> Vec<(String, Placed)> {
        ids.iter()
            .enumerate()
            .map(|(index, id)| {
                let placed = Placed {
                    x,
                    y: stacked(index, ids.len()),
                    width: box_width(id),
                };
                draw_box(out, id, placed, connectors.contains(&id.as_str()));
                (id.clone(), placed)
            })
            .collect()
    };
    let receivers = place_column(out, &pipeline.receivers, columns.receivers_x());
    let processors: Vec<Placed> = pipeline
        .processors
        .iter()
        .enumerate()
        .map(|(index, id)| {
            let placed = Placed {
                x: columns.processor_x(index),
                y: middle_y,
                width: box_width(id),
            };
            draw_box(out, id, placed, false);
            placed
        })
        .collect();
    let exporters = place_column(out, &pipeline.exporters, columns.exporters_x());
    // Arrows: every receiver into the first processor, processors in order, the last one out
    // to every exporter (receivers straight to exporters when there is no processor).
    let firsts: Vec<Placed> = processors
        .first()
        .map_or_else(|| exporters.iter().map(|(_, p)| *p).collect(), |p| vec![*p]);
    let lasts: Vec<Placed> = processors
        .last()
        .map_or_else(|| receivers.iter().map(|(_, p)| *p).collect(), |p| vec![*p]);
    for (_, receiver) in &receivers {
        for first in &firsts {
            draw_arrow(out, receiver.right(), first.left());
        }
    }
    for pair in processors.windows(2) {
        draw_arrow(out, pair[0].right(), pair[1].left());
    }
    if !processors.is_empty() {
        for last in &lasts {
            for (_, exporter) in &exporters {
                draw_arrow(out, last.right(), exporter.left());
            }
        }
    }
    out.push_str("</g>");
    Lane {
        top,
        receivers,
        exporters,
    }
}

fn draw_box(out: &mut String, id: &str, placed: Placed, is_connector: bool) {
    let (fill, dash) = if is_connector {
        ("#fff4e5", " stroke-dasharray=\"4 3\"")
    } else {
        ("#ffffff", "")
    };
    let _ = write!(
        out,
        "<g class=\"component\"><title>{id}</title><rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{BOX_HEIGHT}\" \
         rx=\"4\" fill=\"{fill}\" stroke=\"#5f6368\"{dash}/><text x=\"{:.1}\" y=\"{:.1}\">{id}</text></g>",
        placed.x,
        placed.y,
        placed.width,
        placed.x + BOX_PADDING,
        placed.y + BOX_HEIGHT / 2.0 + FONT_SIZE / 3.0,
        id = escape(id),
    );
}

fn draw_arrow(out: &mut String, from: (f64, f64), to: (f64, f64)) {
    let _ = write!(
        out,
        "<line x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"#5f6368\" marker-end=\"url(#arrow)\"/>",
        from.0, from.1, to.0, to.1
    );
}

/// A dashed line from a connector's box as an exporter to its box as a receiver in each lane it
/// feeds: out through the right gutter, along the gap above the receiving lane, and in beside
/// the receivers column, so it crosses no box or label.
fn draw_connector_links(out: &mut String, graph: &Graph, lanes: &[Lane], columns: &Columns) {
    const PALETTE: [&str; 6] = [
        "#d93025", "#1a73e8", "#188038", "#e37400", "#9334e6", "#007b83",
    ];
    for (index, connector) in graph.connectors.iter().enumerate() {
        let color = PALETTE[index % PALETTE.len()];
        // Each connector its own track in the gutter, clear of the lanes' right edge, so
        // parallel links stay apart.
        let track = columns.exporters_x()
            + columns.exporter_width
            + COLUMN_GAP / 2.0
            + 8.0
            + 6.0 * (index % 8) as f64;
        let _ = write!(
            out,
            "<g class=\"connector\"><title>{}</title>",
            escape(&connector.id)
        );
        for exporting in lanes {
            for (_, exporter) in exporting
                .exporters
                .iter()
                .filter(|(id, _)| *id == connector.id)
            {
                for receiving in lanes {
                    for (_, receiver) in receiving
                        .receivers
                        .iter()
                        .filter(|(id, _)| *id == connector.id)
                    {
                        let (x1, y1) = exporter.right();
                        let (x2, y2) = receiver.left();
                        let gap = receiving.top - LANE_GAP / 2.0;
                        let entry = x2 - COLUMN_GAP / 2.0;
                        let _ = write!(
                            out,
                            "<path d=\"M{x1:.1},{y1:.1} H{track:.1} V{gap:.1} H{entry:.1} V{y2:.1} H{x2:.1}\" \
                             fill=\"none\" stroke=\"{color}\" stroke-dasharray=\"6 4\" marker-end=\"url(#arrow)\"/>"
                        );
                    }
                }
            }
        }
        out.push_str("</g>");
    }
}

/// XML text and attribute escaping.
fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&apos;"),
            _ => escaped.push(c),
        }
    }
    escaped
}
